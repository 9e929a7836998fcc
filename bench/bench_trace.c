/*
 * bench_trace.c — what recording a trace costs per allocation event.
 *
 * Usage (under LD_PRELOAD of libfragless): bench_trace [PAIRS]. Times PAIRS (default
 * 200000) cudaMalloc/cudaFree pairs of 1 MiB — after the first, every one is served from
 * fragless's cache, so the time is fragless's own path — seven times, and prints the median
 * in nanoseconds per event (two events per pair):
 *   ns_per_event=N
 * bench/run.sh runs it without and with FRAGLESS_CONF=trace:PATH; the difference is the
 * recorder's cost per event.
 */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "benchutil.h"

#define REPS 7

int main(int argc, char **argv)
{
    char *end = NULL;
    long pairs = argc > 1 ? strtol(argv[1], &end, 10) : 200000;
    if (argc > 2 || (end && (*end || end == argv[1])) || pairs < 1) {
        fprintf(stderr, "usage: bench_trace [PAIRS] (PAIRS a count of at least 1)\n");
        return 2;
    }
    double ns[REPS];
    void *p;
    if (cudaMalloc(&p, 1 << 20) != cudaSuccess || cudaFree(p) != cudaSuccess) {
        fprintf(stderr, "bench_trace: cudaMalloc failed\n");
        return 1;
    }
    for (int r = 0; r < REPS; r++) {
        uint64_t t0 = bench_clock_ns(CLOCK_MONOTONIC);
        for (long i = 0; i < pairs; i++) {
            if (cudaMalloc(&p, 1 << 20) != cudaSuccess || cudaFree(p) != cudaSuccess) {
                fprintf(stderr, "bench_trace: cudaMalloc/cudaFree failed\n");
                return 1;
            }
        }
        ns[r] = (double)(bench_clock_ns(CLOCK_MONOTONIC) - t0) / (2.0 * (double)pairs);
    }
    printf("ns_per_event=%.1f\n", bench_median(ns, REPS));
    return 0;
}
