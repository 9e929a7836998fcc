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

#define REPS 7

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    long pairs = argc > 1 ? atol(argv[1]) : 200000;
    double ns[REPS];
    void *p;
    if (cudaMalloc(&p, 1 << 20) != cudaSuccess || cudaFree(p) != cudaSuccess) {
        fprintf(stderr, "bench_trace: cudaMalloc failed\n");
        return 1;
    }
    for (int r = 0; r < REPS; r++) {
        double t0 = now_ns();
        for (long i = 0; i < pairs; i++) {
            if (cudaMalloc(&p, 1 << 20) != cudaSuccess || cudaFree(p) != cudaSuccess) {
                fprintf(stderr, "bench_trace: cudaMalloc/cudaFree failed\n");
                return 1;
            }
        }
        ns[r] = (now_ns() - t0) / (2.0 * (double)pairs);
    }
    qsort(ns, REPS, sizeof ns[0], cmp);
    printf("ns_per_event=%.1f\n", ns[REPS / 2]);
    return 0;
}
