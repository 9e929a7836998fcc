/*
 * rule_fork_init.c — DESIGN §4 rule 5 at its hardest point: a fork while another thread is in
 * the middle of fragless's very first initialization. Run with FRAGLESS_CONF=verbose:3.
 *
 * The initializing thread is held inside initialization, deterministically: stderr is a full
 * pipe, so the first debug line fragless writes while loading the driver (under its init and
 * driver-load locks) blocks in write(2). The main thread waits until /proc shows that thread
 * blocked in write on fd 2, then forks. The child (stderr restored, an alarm as a watchdog)
 * must get through its own first CUDA call: any valid result, no hang. The parent then
 * drains the pipe and the first thread's allocation must succeed.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ip_prog.h"

static _Atomic pid_t init_tid;
static _Atomic bool init_done;
static cudaError_t init_result = cudaErrorUnknown;

static void *first_call(void *arg)
{
    (void)arg;
    void *p = NULL;
    atomic_store(&init_tid, (pid_t)syscall(SYS_gettid));
    init_result = cudaMalloc(&p, 4096);
    if (init_result == cudaSuccess)
        init_result = cudaFree(p);
    atomic_store(&init_done, true);
    return NULL;
}

/* Whether thread `tid` is blocked in write(2) on fd 2 (/proc/self/task/TID/syscall reads
 * "1 0x2 ..." on x86-64). */
static bool blocked_writing_stderr(pid_t tid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/self/task/%d/syscall", (int)tid);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    bool yes = fgets(line, sizeof line, f) && strncmp(line, "1 0x2 ", 6) == 0;
    fclose(f);
    return yes;
}

/* Makes fd 2 a pipe that is full (writes to it block); returns the read end. */
static int full_stderr_pipe(void)
{
    int fds[2];
    CHECK(pipe(fds) == 0, "pipe");
    CHECK(fcntl(fds[1], F_SETFL, O_NONBLOCK) == 0, "nonblock");
    char buf[4096];
    memset(buf, 'x', sizeof buf);
    while (write(fds[1], buf, sizeof buf) > 0 || errno == EINTR)
        ;
    while (write(fds[1], buf, 1) > 0)
        ;
    CHECK(fcntl(fds[1], F_SETFL, 0) == 0, "blocking again");
    CHECK(dup2(fds[1], 2) == 2, "dup2");
    close(fds[1]);
    return fds[0];
}

static void child(int saved_stderr)
{
    dup2(saved_stderr, 2);
    alarm(20);
    ip_child_allocates_and_exits();
}

int main(void)
{
    /* Parse the configuration (it prints itself at verbose levels) before stderr is full. */
    fragless_stats_t s;
    CHECK(ip_stats(0, &s) == FRAGLESS_ENODEV, "nothing served yet");
    fflush(stderr);
    int saved = dup(2);
    CHECK(saved >= 0, "dup");
    int drain = full_stderr_pipe();

    pthread_t t;
    CHECK(pthread_create(&t, NULL, first_call, NULL) == 0, "thread");
    pid_t tid = 0;
    for (int i = 0; i < 20000 && !(tid && blocked_writing_stderr(tid)); i++) {
        tid = atomic_load(&init_tid);
        usleep(500);
    }
    CHECK(tid && blocked_writing_stderr(tid), "the first call is held inside initialization");
    CHECK(!atomic_load(&init_done), "still initializing");

    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0)
        child(saved);
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid, "wait");

    dup2(saved, 2);
    char buf[4096];
    while (!atomic_load(&init_done)) {
        fcntl(drain, F_SETFL, O_NONBLOCK);
        if (read(drain, buf, sizeof buf) <= 0)
            usleep(1000);
    }
    pthread_join(t, NULL);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "the child finished its first CUDA call (status %#x)", status);
    CHECK(init_result == cudaSuccess, "the first call: %d", (int)init_result);
    CHECK(ip_stats(0, &s) == 0 && s.num_allocs == 1, "served by fragless");
    printf("ok fork-init\n");
    return 0;
}
