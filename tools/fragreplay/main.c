/*
 * main.c — fragreplay: replays RMM CSV allocation traces through fragless.
 *
 * Owns: the command line, finding and selecting the emulated device (--emu re-executes this
 * program with LD_LIBRARY_PATH and FRAGLESS_EMU_MEM set, since the dynamic loader reads them
 * only at start), and running each --conf in its own child process (fragless reads
 * FRAGLESS_CONF once per process): the child is this program again, told by
 * FRAGLESS_REPLAY_FD where to write its struct result.
 */
#include "replay.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define DEFAULT_CAPACITY "141G"
#define ENV_EMU          "FRAGLESS_REPLAY_EMU"
#define ENV_FD           "FRAGLESS_REPLAY_FD"
#define MAX_CONFS        16

struct opts {
    bool emu, json;
    const char *capacity;
    const char *plot;
    int device;
    char *confs[MAX_CONFS];
    int nconfs;
    char **files;
    int nfiles;
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: fragreplay [--emu [--capacity SIZE]] [--conf STRING]... [--device N]\n"
            "                  [--json] [--plot FILE.svg] TRACE.csv...\n"
            "Replays RMM CSV allocation traces (Thread,Time,Action,Pointer,Size,Stream) "
            "through fragless.\n"
            "  --emu            on the emulated device instead of a GPU\n"
            "  --capacity SIZE  emulated device memory (default " DEFAULT_CAPACITY ", an H200)\n"
            "  --conf STRING    FRAGLESS_CONF for one replay; repeat to compare "
            "configurations\n"
            "  --device N       device to replay on (default 0)\n"
            "  --json           JSON instead of the summary table\n"
            "  --plot FILE.svg  requested, allocated and reserved bytes over the trace's "
            "time\n"
            "Several traces are merged by time onto one device, each with its own pointers.\n"
            "Exit status: 0; 1 when a replay failed; 2 for bad usage or a malformed trace.\n");
}

/* SIZE: digits with an optional K/M/G/T suffix (KiB/MiB/... and KB/MB/... too). */
static bool parse_size(const char *s, unsigned long long *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || errno || *s == '-')
        return false;
    static const char units[] = "KMGT";
    const char *u = *end ? strchr(units, *end) : NULL;
    if (*end && !u)
        return false;
    if (u) {
        for (int i = 0; i <= u - units; i++) {
            if (v > ULLONG_MAX / 1024)
                return false;
            v *= 1024;
        }
        end++;
        if (strcmp(end, "") != 0 && strcmp(end, "iB") != 0 && strcmp(end, "B") != 0)
            return false;
    }
    *out = v;
    return v > 0;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
    memset(o, 0, sizeof *o);
    o->capacity = DEFAULT_CAPACITY;
    int i = 1;
    for (; i < argc && argv[i][0] == '-' && argv[i][1]; i++) {
        const char *a = argv[i];
        bool has_val = i + 1 < argc;
        if (!strcmp(a, "--")) {
            i++;
            break;
        } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(a, "--emu")) {
            o->emu = true;
        } else if (!strcmp(a, "--json")) {
            o->json = true;
        } else if (!strcmp(a, "--capacity") && has_val) {
            o->capacity = argv[++i];
        } else if (!strcmp(a, "--plot") && has_val) {
            o->plot = argv[++i];
        } else if (!strcmp(a, "--device") && has_val) {
            char *end;
            long d = strtol(argv[++i], &end, 10);
            if (*end || d < 0 || d > 1023) {
                fprintf(stderr, "fragreplay: --device %s: not a device number\n", argv[i]);
                return -1;
            }
            o->device = (int)d;
        } else if (!strcmp(a, "--conf") && has_val) {
            if (o->nconfs == MAX_CONFS) {
                fprintf(stderr, "fragreplay: at most %d --conf\n", MAX_CONFS);
                return -1;
            }
            o->confs[o->nconfs++] = argv[++i];
        } else {
            fprintf(stderr, "fragreplay: %s: unknown option or missing value\n", a);
            usage(stderr);
            return -1;
        }
    }
    o->files = argv + i;
    o->nfiles = argc - i;
    if (o->nfiles == 0) {
        usage(stderr);
        return -1;
    }
    return 0;
}

static bool is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* build/emu next to the binary, or PREFIX/lib/fragless/emu when installed in PREFIX/bin. */
static int find_emu(char *dir, size_t len)
{
    char exe[PATH_MAX], lib[PATH_MAX + 64];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return -1;
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    *slash = 0;
    const char *cands[] = {"%s/emu", "%s/../lib/fragless/emu"};
    for (size_t i = 0; i < 2; i++) {
        snprintf(dir, len, cands[i], exe);
        snprintf(lib, sizeof lib, "%s/libcuda.so.1", dir);
        if (is_file(lib))
            return 0;
    }
    fprintf(stderr,
            "fragreplay: --emu: no emulated device (libcuda.so.1) in %s/emu or "
            "%s/../lib/fragless/emu\n",
            exe, exe);
    return -1;
}

/* Re-executes this program with the emulated device selected. */
static int enter_emu(const struct opts *o, char **argv)
{
    char dir[PATH_MAX], cap[32], path[2 * PATH_MAX];
    unsigned long long bytes;
    if (!parse_size(o->capacity, &bytes)) {
        fprintf(stderr, "fragreplay: --capacity %s: not a size (e.g. 80G, 24GiB, 512M)\n",
                o->capacity);
        return 2;
    }
    if (find_emu(dir, sizeof dir) != 0)
        return 2;
    const char *old = getenv("LD_LIBRARY_PATH");
    snprintf(path, sizeof path, "%s%s%s", dir, old && *old ? ":" : "", old ? old : "");
    snprintf(cap, sizeof cap, "%llu", bytes);
    setenv("LD_LIBRARY_PATH", path, 1);
    setenv("FRAGLESS_EMU_MEM", cap, 1);
    setenv(ENV_EMU, "1", 1);
    execv("/proc/self/exe", argv);
    fprintf(stderr, "fragreplay: re-executing with the emulated device: %s\n", strerror(errno));
    return 2;
}

/* The child's side: replay under the FRAGLESS_CONF it was given, write the result. */
static int child_main(const struct opts *o, int fd)
{
    static struct rtrace t;
    static struct result r;
    char err[1024];
    if (rtrace_load(&t, o->files, o->nfiles, err, sizeof err) != 0) {
        snprintf(r.error, sizeof r.error, "%.*s", (int)sizeof r.error - 1, err);
        r.status = -1;
    } else {
        run_replay(&t, o->device, &r);
    }
    const char *p = (const char *)&r;
    size_t left = sizeof r;
    while (left > 0) {
        ssize_t k = write(fd, p, left);
        if (k <= 0 && errno != EINTR)
            return 1;
        p += k > 0 ? k : 0;
        left -= k > 0 ? (size_t)k : 0;
    }
    rtrace_free(&t);
    return r.status == 0 ? 0 : 1;
}

static bool read_all(int fd, void *buf, size_t len)
{
    char *p = buf;
    while (len > 0) {
        ssize_t k = read(fd, p, len);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return false;
        p += k;
        len -= (size_t)k;
    }
    return true;
}

/* Runs one configuration in a child process; returns 0 with *r filled. */
static int run_child(char **argv, const char *conf, int index, struct result *r)
{
    int fds[2];
    if (pipe(fds) != 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        char fdstr[16], name[64];
        close(fds[0]);
        snprintf(fdstr, sizeof fdstr, "%d", fds[1]);
        setenv(ENV_FD, fdstr, 1);
        if (conf)
            setenv("FRAGLESS_CONF", conf, 1);
        if (getenv(ENV_EMU)) { /* a fresh emulated device per configuration */
            snprintf(name, sizeof name, "fragreplay-%d-%d", (int)getppid(), index);
            setenv("FRAGLESS_EMU_NAME", name, 1);
        }
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    close(fds[1]);
    bool got = pid > 0 && read_all(fds[0], r, sizeof *r);
    close(fds[0]);
    int st = 0;
    if (pid > 0)
        waitpid(pid, &st, 0);
    if (!got) {
        memset(r, 0, sizeof *r);
        r->status = -1;
        snprintf(r->error, sizeof r->error, "the replay process died (%s %d)",
                 WIFSIGNALED(st) ? "signal" : "exit status",
                 WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
    }
    return r->status;
}

static int run_all(const struct opts *o, char **argv, const struct rtrace *t)
{
    static struct result results[MAX_CONFS];
    const struct result *res[MAX_CONFS];
    char *confs[MAX_CONFS];
    int n = o->nconfs ? o->nconfs : 1, failed = 0;
    const char *inherited = getenv("FRAGLESS_CONF");
    for (int i = 0; i < n; i++) {
        confs[i] = o->nconfs ? o->confs[i] : (char *)(inherited ? inherited : "");
        if (run_child(argv, o->nconfs ? confs[i] : NULL, i, &results[i]) != 0) {
            fprintf(stderr, "fragreplay: conf \"%s\": %s\n", confs[i], results[i].error);
            failed++;
        }
        res[i] = &results[i];
    }
    struct replay_setup s = {o->files, o->nfiles, o->device, getenv(ENV_EMU) != NULL, 0};
    const char *mem = getenv("FRAGLESS_EMU_MEM");
    s.capacity = s.emulated && mem ? strtoull(mem, NULL, 10) : 0;
    if (o->json)
        report_json(&s, t, confs, res, n);
    else
        report_table(&s, t, confs, res, n);
    if (o->plot && plot_svg(o->plot, t, confs, res, n) != 0)
        failed++;
    return failed ? 1 : 0;
}

int main(int argc, char **argv)
{
    struct opts o;
    static struct rtrace t;
    char err[1024];
    if (parse_args(argc, argv, &o) != 0)
        return 2;
    const char *fd = getenv(ENV_FD);
    if (fd) {
        unsetenv(ENV_FD);
        return child_main(&o, atoi(fd));
    }
    if (o.emu && !getenv(ENV_EMU))
        return enter_emu(&o, argv);
    if (rtrace_load(&t, o.files, o.nfiles, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    if (t.unknown_frees)
        fprintf(stderr,
                "fragreplay: %llu free%s of pointers the trace never allocated (first at %s): "
                "skipped\n",
                (unsigned long long)t.unknown_frees, t.unknown_frees == 1 ? "" : "s",
                t.first_unknown);
    int rc = run_all(&o, argv, &t);
    rtrace_free(&t);
    return rc;
}
