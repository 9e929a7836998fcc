/*
 * ip_prog.h — shared by the interposer's test programs (tests/progs/ip_*.c): failing loudly,
 * and reading fragless's statistics through dlsym, as a program that does not link
 * libfragless would.
 */
#ifndef IP_PROG_H
#define IP_PROG_H

#include <dlfcn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cuda.h>
#include <cuda_runtime_api.h>

#include "fragless.h"

/* Prints what failed and exits 1. */
#define CHECK(cond, ...)                                                    \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                   \
            fputc('\n', stderr);                                            \
            exit(1);                                                        \
        }                                                                   \
    } while (0)

typedef int (*ip_get_stats_fn)(int, fragless_stats_t *);

/* fragless_get_stats from the preloaded library; exits 2 when it is not there. */
static inline int ip_stats(int device, fragless_stats_t *s)
{
    ip_get_stats_fn fn = (ip_get_stats_fn)dlsym(RTLD_DEFAULT, "fragless_get_stats");
    if (!fn) {
        fprintf(stderr, "fragless is not loaded\n");
        exit(2);
    }
    memset(s, 0, sizeof *s);
    s->size = sizeof *s;
    return fn(device, s);
}

/* A device's statistics; all zero while fragless has not used the device. */
static inline fragless_stats_t ip_stats_of(int device)
{
    fragless_stats_t s;
    int rc = ip_stats(device, &s);
    if (rc == FRAGLESS_ENODEV)
        memset(&s, 0, sizeof s);
    else
        CHECK(rc == 0, "fragless_get_stats(%d) = %d", device, rc);
    return s;
}

/* Device 0's statistics, as ip_stats_of. */
static inline fragless_stats_t ip_stats0(void)
{
    return ip_stats_of(0);
}

/* Fails unless exactly `allocs` allocations and `frees` frees went through fragless
 * between the two snapshots. */
static inline void ip_expect_served(const fragless_stats_t *before, const fragless_stats_t *after,
                                    unsigned allocs, unsigned frees)
{
    CHECK(after->num_allocs == before->num_allocs + allocs, "num_allocs %llu -> %llu, want +%u",
          (unsigned long long)before->num_allocs, (unsigned long long)after->num_allocs, allocs);
    CHECK(after->num_frees == before->num_frees + frees, "num_frees %llu -> %llu, want +%u",
          (unsigned long long)before->num_frees, (unsigned long long)after->num_frees, frees);
}

/* Writes a pattern into device memory and reads it back, through the runtime. */
static inline void ip_touch_rt(void *p, size_t n)
{
    unsigned char last = 0;
    CHECK(cudaMemset(p, 0xa5, n) == cudaSuccess, "cudaMemset");
    CHECK(cudaMemcpy(&last, (char *)p + n - 1, 1, cudaMemcpyDeviceToHost) == cudaSuccess,
          "cudaMemcpy");
    CHECK(last == 0xa5, "pattern read back: %#x", last);
}

/* The same through the driver API. */
static inline void ip_touch_drv(CUdeviceptr p, size_t n)
{
    unsigned char last = 0;
    CHECK(cuMemsetD8(p, 0x5a, n) == CUDA_SUCCESS, "cuMemsetD8");
    CHECK(cuMemcpyDtoH(&last, p + n - 1, 1) == CUDA_SUCCESS, "cuMemcpyDtoH");
    CHECK(last == 0x5a, "pattern read back: %#x", last);
}

typedef CUresult (*ip_alloc_fn)(CUdeviceptr *, size_t);
typedef CUresult (*ip_free_fn)(CUdeviceptr);

/* Allocates, touches and frees `n` bytes through the given entry points (a context must be
 * current); fails unless both calls went through fragless. */
static inline void ip_round_trip_drv(ip_alloc_fn alloc, ip_free_fn release, size_t n)
{
    fragless_stats_t before = ip_stats0();
    CUdeviceptr p = 0;
    CHECK(alloc(&p, n) == CUDA_SUCCESS, "alloc");
    ip_touch_drv(p, n);
    CHECK(release(p) == CUDA_SUCCESS, "free");
    fragless_stats_t after = ip_stats0();
    ip_expect_served(&before, &after, 1, 1);
}

/* In a forked child: one allocation and free through the runtime; prints "child: <result>"
 * (any valid code: the driver may refuse a forked child) and exits 0. */
static inline void ip_child_allocates_and_exits(void)
{
    void *q = NULL;
    cudaError_t e = cudaMalloc(&q, 4096);
    if (e == cudaSuccess)
        e = cudaFree(q);
    printf("child: %d\n", (int)e);
    fflush(stdout);
    _exit(0);
}

#endif
