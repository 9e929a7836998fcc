/*
 * testutil.c — running programs for integration tests and isolating emulated devices.
 */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

const char *tu_build(void)
{
    const char *b = getenv("FRAGLESS_BUILD");
    return b && *b ? b : "build";
}

const char *tu_path(const char *rel)
{
    static char bufs[8][1024];
    static int next;
    char *b = bufs[next++ & 7];
    snprintf(b, sizeof bufs[0], "%s/%s", tu_build(), rel);
    return b;
}

void tu_emu_isolate(void)
{
    char name[96];
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    snprintf(name, sizeof name, "fltest-iso-%d-%ld", (int)getpid(), (long)ts.tv_nsec);
    setenv("FRAGLESS_EMU_NAME", name, 1);
}

static char **build_env(bool preload, const char *const env[])
{
    size_t n = 0, extra = 0;
    while (environ[n])
        n++;
    while (env && env[extra])
        extra++;
    char **e = calloc(n + extra + 2, sizeof *e);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (preload && strncmp(environ[i], "LD_PRELOAD=", 11) == 0)
            continue;
        e[k++] = environ[i];
    }
    if (preload) {
        static char pre[2048];
        const char *p = getenv("FRAGLESS_TEST_PRELOAD");
        if (!p || !*p)
            p = tu_path("libfragless.so");
        snprintf(pre, sizeof pre, "LD_PRELOAD=%s", p);
        e[k++] = pre;
    }
    for (size_t i = 0; i < extra; i++) {
        /* a later "K=V" replaces an inherited K */
        size_t klen = strcspn(env[i], "=");
        for (size_t j = 0; j < k; j++) {
            if (strncmp(e[j], env[i], klen + 1) == 0) {
                e[j] = e[--k];
                break;
            }
        }
        e[k++] = (char *)env[i];
    }
    e[k] = NULL;
    return e;
}

static void append(char **buf, size_t *len, const char *data, size_t n)
{
    *buf = realloc(*buf, *len + n + 1);
    memcpy(*buf + *len, data, n);
    *len += n;
    (*buf)[*len] = 0;
}

int tu_run(struct tu_result *r, bool preload, const char *const argv[], const char *const env[],
           int timeout_s)
{
    int out[2], err[2];
    memset(r, 0, sizeof *r);
    r->out = calloc(1, 1);
    r->err = calloc(1, 1);
    if (pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC))
        return r->status = -1;
    char **e = build_env(preload, env);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(out[1], 1);
        dup2(err[1], 2);
        execve(argv[0], (char *const *)argv, e);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    free(e);
    close(out[1]);
    close(err[1]);
    if (pid < 0) { /* not a run: waitpid below would report some other child, or status 0 */
        close(out[0]);
        close(err[0]);
        return r->status = -1;
    }
    size_t olen = 0, elen = 0;
    struct pollfd p[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
    int open_fds = 2;
    time_t deadline = time(NULL) + (timeout_s > 0 ? timeout_s : 60);
    bool killed = false;
    while (open_fds > 0) {
        int left = (int)(deadline - time(NULL));
        if (left <= 0 && !killed) {
            kill(pid, SIGKILL);
            killed = true;
        }
        if (poll(p, 2, left > 0 ? left * 1000 : 1000) < 0 && errno != EINTR)
            break;
        for (int i = 0; i < 2; i++) {
            if (p[i].fd < 0 || !(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            char buf[4096];
            ssize_t n = read(p[i].fd, buf, sizeof buf);
            if (n <= 0) {
                close(p[i].fd);
                p[i].fd = -1;
                open_fds--;
            } else if (i == 0) {
                append(&r->out, &olen, buf, (size_t)n);
            } else {
                append(&r->err, &elen, buf, (size_t)n);
            }
        }
    }
    int st = 0;
    waitpid(pid, &st, 0);
    r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return r->status;
}

void tu_result_free(struct tu_result *r)
{
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
}
