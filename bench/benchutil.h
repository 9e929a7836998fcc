/*
 * benchutil.h — the clock and the median shared by every benchmark in bench/, so that all of
 * them read time the same way and mean the same thing by "median".
 *
 *   bench_clock_ns(CLOCK_MONOTONIC)    wall time in ns (or any other clock_gettime clock,
 *                                      e.g. CLOCK_THREAD_CPUTIME_ID for a thread's CPU time)
 *   bench_median(v, n)                 the median of v[0..n): sorts v in place and returns the
 *                                      middle value for odd n, the mean of the two middle values
 *                                      for even n, and NAN for n < 1
 *
 * bench/run.sh computes its shell-side medians by the same rule.
 */
#ifndef FRAGLESS_BENCHUTIL_H
#define FRAGLESS_BENCHUTIL_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

/* Nanoseconds on `clock`. */
static inline uint64_t bench_clock_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The median of v[0..n), by the rule above; v is left sorted. */
static inline double bench_median(double *v, int n)
{
    if (n < 1)
        return NAN;
    qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

#endif
