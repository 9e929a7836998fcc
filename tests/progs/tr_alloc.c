/*
 * tr_alloc.c — a program whose allocations the trace tests record and replay.
 *
 * Usage: tr_alloc [EVENTS [empty]]. Makes EVENTS (default 3000) allocation events in a fixed
 * pseudo-random order: cudaMalloc/cudaFree, cudaMallocAsync/cudaFreeAsync on two streams and
 * cuMemAlloc/cuMemFree, sizes from 1 KiB to 64 MiB, at most 48 blocks live. Prints what it
 * did as the trace should state it: "events=N allocs=N frees=N peak_requested=BYTES". With
 * "empty" it also calls fragless_empty_cache() (found with dlsym: the program does not link
 * libfragless) half way through.
 */
#include <cuda.h>
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 48

enum how { SYNC_RT, ASYNC_RT, DRIVER };

struct slot {
    void *p;
    size_t size;
    enum how how;
    cudaStream_t stream;
};

typedef int (*empty_cache_fn)(int, size_t *);

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static uint64_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static size_t pick_size(void)
{
    unsigned shift = 10 + (unsigned)(next() % 17); /* 1 KiB .. 64 MiB */
    size_t base = (size_t)1 << shift;
    return base + (size_t)(next() % base) / 2;
}

static int take(struct slot *s, cudaStream_t streams[2])
{
    s->size = pick_size();
    s->how = (enum how)(next() % 3);
    s->stream = streams[next() % 2];
    if (s->how == SYNC_RT)
        return cudaMalloc(&s->p, s->size) != cudaSuccess;
    if (s->how == ASYNC_RT)
        return cudaMallocAsync(&s->p, s->size, s->stream) != cudaSuccess;
    CUdeviceptr d;
    int rc = cuMemAlloc(&d, s->size) != CUDA_SUCCESS;
    s->p = (void *)(uintptr_t)d;
    return rc;
}

static int give(struct slot *s)
{
    int rc;
    if (s->how == SYNC_RT)
        rc = cudaFree(s->p) != cudaSuccess;
    else if (s->how == ASYNC_RT)
        rc = cudaFreeAsync(s->p, s->stream) != cudaSuccess;
    else
        rc = cuMemFree((CUdeviceptr)(uintptr_t)s->p) != CUDA_SUCCESS;
    s->p = NULL;
    return rc;
}

int main(int argc, char **argv)
{
    long events = argc > 1 ? atol(argv[1]) : 3000;
    empty_cache_fn empty = NULL;
    if (argc > 2 && strcmp(argv[2], "empty") == 0)
        empty = (empty_cache_fn)(uintptr_t)dlsym(RTLD_DEFAULT, "fragless_empty_cache");
    struct slot slots[SLOTS] = {0};
    cudaStream_t streams[2];
    long allocs = 0, frees = 0;
    size_t live = 0, peak = 0;
    if (cudaStreamCreate(&streams[0]) != cudaSuccess ||
        cudaStreamCreate(&streams[1]) != cudaSuccess) {
        fprintf(stderr, "tr_alloc: cudaStreamCreate failed\n");
        return 1;
    }
    while (allocs + frees < events) {
        struct slot *s = &slots[next() % SLOTS];
        bool freeing = s->p != NULL;
        size_t size = s->size;
        if (freeing ? give(s) : take(s, streams)) {
            fprintf(stderr, "tr_alloc: %s failed at event %ld\n", freeing ? "free" : "alloc",
                    allocs + frees);
            return 1;
        }
        live = freeing ? live - size : live + s->size;
        peak = live > peak ? live : peak;
        *(freeing ? &frees : &allocs) += 1;
        if (empty && allocs + frees == events / 2 && empty(0, NULL) != 0) {
            fprintf(stderr, "tr_alloc: fragless_empty_cache failed\n");
            return 1;
        }
    }
    for (int i = 0; i < SLOTS; i++) {
        if (slots[i].p && give(&slots[i]) == 0)
            frees++;
    }
    cudaDeviceSynchronize();
    printf("events=%ld allocs=%ld frees=%ld peak_requested=%zu\n", allocs + frees, allocs, frees,
           peak);
    return 0;
}
