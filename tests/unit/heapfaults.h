/*
 * heapfaults.h — the fault-injection workload the heap's fault suites share (classic:
 * test_heap_faults.c, expandable: test_expand_faults.c): allocations and frees of mixed sizes
 * on two streams and the legacy one, stream-ordered and device-wide, with work pending on the
 * freed blocks and an empty-cache per round; heap_is_valid() after every step.
 */
#ifndef FRAGLESS_HEAPFAULTS_H
#define FRAGLESS_HEAPFAULTS_H

#include "heaptest.h"

/* Whether with_faults() asserts that the workload made the call its spec fails. */
#ifndef HT_FAULTS_MUST_REACH
#define HT_FAULTS_MUST_REACH 0
#endif

#define SLOTS 24

/* Allocates `size` on st (counting a refusal in *failures); 0 if refused. */
static inline CUdeviceptr try_alloc(size_t size, CUstream st, enum heap_mode mode, size_t *failures)
{
    CUdeviceptr p = 0;
    if (heap_alloc(0, size, st, mode, &p) != CUDA_SUCCESS) {
        cr_assert_eq(p, 0);
        (*failures)++;
    }
    cr_assert(heap_is_valid());
    return p;
}

static inline void try_free(CUdeviceptr p, CUstream st, enum heap_mode mode)
{
    if (p)
        cr_assert_eq(heap_free(p, st, mode, NULL), CUDA_SUCCESS);
    cr_assert(heap_is_valid());
}

static inline void try_empty_cache(size_t *failures)
{
    size_t released;
    if (heap_empty_cache(0, &released) != CUDA_SUCCESS)
        (*failures)++;
    cr_assert(heap_is_valid());
}

/* Frees that later allocations must wait for: a block freed on s wanted on t (the heap records
 * an event on s's pool and queries it), then 80 MiB freed by plain frees and wanted again
 * (enough pending to pay for a device sync). 40 MiB fits no block the rounds leave free (each
 * round ends with an empty-cache); the empty-cache before the plain frees drops the first
 * part's segment. */
static inline void cross_and_sync(CUstream s, CUstream t, size_t *failures)
{
    const size_t big = 40 * FL_MiB;
    try_free(try_alloc(big, s, HEAP_ASYNC, failures), s, HEAP_ASYNC);
    try_free(try_alloc(big, t, HEAP_ASYNC, failures), t, HEAP_ASYNC);

    try_empty_cache(failures);
    CUdeviceptr a = try_alloc(big, NULL, HEAP_SYNC, failures);
    CUdeviceptr b = try_alloc(big, NULL, HEAP_SYNC, failures);
    try_free(a, NULL, HEAP_SYNC);
    try_free(b, NULL, HEAP_SYNC);
    try_free(try_alloc(big, NULL, HEAP_SYNC, failures), NULL, HEAP_SYNC);
}

static inline CUresult run_workload(CUstream s, CUstream t, CUdeviceptr *slot, size_t *failures)
{
    static const size_t sizes[] = {512, 3000, FL_MiB, 2 * FL_MiB, 9 * FL_MiB, 24 * FL_MiB};
    CUstream streams[] = {s, t, NULL};
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < SLOTS; i++) {
            CUstream st = streams[(i + round) % 3];
            enum heap_mode mode = (i + round) % 4 == 3 ? HEAP_SYNC : HEAP_ASYNC;
            if (slot[i]) {
                if (mode == HEAP_ASYNC)
                    ht_fill(st, slot[i], 0x5a, 512, 50);
                bool foreign = true;
                CUresult r = heap_free(slot[i], st, mode, &foreign);
                if (r != CUDA_SUCCESS || foreign)
                    return r != CUDA_SUCCESS ? r : CUDA_ERROR_UNKNOWN;
                slot[i] = 0;
            } else {
                CUresult r = heap_alloc(0, sizes[(i * 7 + round) % 6], st, mode, &slot[i]);
                if (r != CUDA_SUCCESS) {
                    cr_assert_eq(slot[i], 0);
                    (*failures)++;
                }
            }
            cr_assert(heap_is_valid());
        }
        size_t released;
        if (heap_empty_cache(0, &released) != CUDA_SUCCESS)
            (*failures)++;
        cr_assert(heap_is_valid());
    }
    cross_and_sync(s, t, failures);
    return CUDA_SUCCESS;
}

/* Calls of the entry point a spec's first rule names (NAME@N...), and that N (1 for '*'). */
static inline uint64_t spec_calls(const char *spec, uint64_t *nth)
{
    char name[64];
    size_t n = strcspn(spec, "@");
    cr_assert_lt(n, sizeof name);
    memcpy(name, spec, n);
    name[n] = '\0';
    *nth = spec[n] == '@' && spec[n + 1] != '*' ? strtoull(spec + n + 1, NULL, 10) : 1;
    return ht_calls(name);
}

static inline void with_faults(const char *spec, bool must_fail)
{
    ht_setup("512M");
    CUstream s = ht_stream(), t = ht_stream();
    CUdeviceptr slot[SLOTS] = {0};
    size_t failures = 0;
    uint64_t nth, before = spec_calls(spec, &nth);
    cr_assert_eq(ht_fail(spec), 0, "bad spec %s", spec);
    cr_assert_eq(run_workload(s, t, slot, &failures), CUDA_SUCCESS);
    cr_assert_eq(ht_fail(NULL), 0);
    if (HT_FAULTS_MUST_REACH)
        cr_assert_geq(spec_calls(spec, &nth) - before, nth, "the fault %s was never reached", spec);
    cr_log_info("%s: %zu calls failed", spec, failures);
    if (must_fail)
        cr_assert_gt(failures, 0, "the fault %s was never hit", spec);
    /* without faults the same heap works and gives everything back */
    cr_assert_eq(run_workload(s, t, slot, &failures), CUDA_SUCCESS);
    for (int i = 0; i < SLOTS; i++)
        if (slot[i])
            ht_free(slot[i], NULL, HEAP_SYNC);
    size_t released;
    cr_assert_eq(heap_empty_cache(-1, &released), CUDA_SUCCESS);
    cr_assert(heap_is_valid());
    fragless_stats_t st = ht_stats(0);
    cr_assert_eq(st.reserved_bytes.current, 0);
    cr_assert_eq(st.allocated_bytes.current, 0);
    cr_assert_eq(ht_faults(), 0);
    ht_stream_destroy(s);
    ht_stream_destroy(t);
    cr_assert_eq(ht_audit(), 0, "leak audit after %s", spec);
}

#endif
