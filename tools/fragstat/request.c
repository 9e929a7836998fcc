/*
 * request.c — --empty-cache: asking a process, through its page, to release its cache.
 *
 * Owns: the requester's side of the protocol in include/fragless_shm.h. The page is mapped
 * shared so that the futex words work across processes; a SIGBUS (the owner truncated the file
 * under us) aborts the request instead of the program.
 */
#include "fragstat.h"

#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "pageio.h"

#define REQUEST_TIMEOUT_NS 1000000000ll

static sigjmp_buf bus_jump;

static void on_sigbus(int sig)
{
    (void)sig;
    siglongjmp(bus_jump, 1);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

/* Posts the request; returns its id. */
static uint32_t post(fragless_shm_page_t *pg, unsigned device)
{
    _Atomic uint64_t *req = (_Atomic uint64_t *)&pg->request;
    uint64_t old = atomic_load(req), want;
    do {
        want = FRAGLESS_SHM_REQ_MAKE(FRAGLESS_SHM_REQ_ID(old) + 1, FRAGLESS_SHM_REQ_EMPTY_CACHE,
                                     device);
    } while (!atomic_compare_exchange_weak(req, &old, want));
    atomic_fetch_add((_Atomic uint32_t *)&pg->wake, 1);
    pio_futex_wake(&pg->wake);
    return FRAGLESS_SHM_REQ_ID(want);
}

/* Waits until a response with id ≥ `id` is there; false after the timeout. */
static bool await(fragless_shm_page_t *pg, uint32_t id, int64_t deadline)
{
    _Atomic uint32_t *resp = (_Atomic uint32_t *)&pg->response_id;
    for (;;) {
        uint32_t r = atomic_load(resp);
        if ((int32_t)(r - id) >= 0)
            return true;
        int64_t left = deadline - now_ns();
        if (left <= 0)
            return false;
        pio_futex_wait(&pg->response_id, r, left);
    }
}

static int run_request(fragless_shm_page_t *pg, int32_t pid, int device, FILE *out)
{
    int64_t start = now_ns();
    uint32_t id = post(pg, device < 0 ? FRAGLESS_SHM_REQ_ALL_DEVICES : (unsigned)device);
    if (!await(pg, id, start + REQUEST_TIMEOUT_NS)) {
        fprintf(stderr,
                "fragstat: pid %d did not answer within 1 s (stopped, or not using "
                "fragless's page thread?)\n",
                (int)pid);
        return FS_EXIT_FAILED;
    }
    int64_t status = atomic_load((_Atomic int64_t *)&pg->response_status);
    uint64_t released = atomic_load((_Atomic uint64_t *)&pg->response_released);
    double ms = (double)(now_ns() - start) / 1e6;
    if (status != 0) {
        fprintf(stderr, "fragstat: pid %d could not empty its cache (error %lld)\n", (int)pid,
                (long long)status);
        return FS_EXIT_FAILED;
    }
    char h[24];
    fprintf(out, "pid %d: released %s (%llu bytes) in %.1f ms\n", (int)pid,
            pio_human(released, h, sizeof h), (unsigned long long)released, ms);
    return FS_EXIT_OK;
}

int fs_empty_cache(const char *dir, int32_t pid, int device, FILE *out)
{
    int fd = fs_open_page(dir, pid);
    if (fd < 0)
        return -fd;
    void *map = mmap(NULL, sizeof(fragless_shm_page_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        fprintf(stderr, "fragstat: cannot map the page of pid %d: %s\n", (int)pid, strerror(errno));
        return FS_EXIT_FAILED;
    }
    struct sigaction sa = {.sa_handler = on_sigbus}, old;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, &old);
    int rc = FS_EXIT_FAILED;
    if (sigsetjmp(bus_jump, 1) == 0)
        rc = run_request(map, pid, device, out);
    else
        fprintf(stderr, "fragstat: the page of pid %d was truncated during the request\n",
                (int)pid);
    sigaction(SIGBUS, &old, NULL);
    munmap(map, sizeof(fragless_shm_page_t));
    return rc;
}
