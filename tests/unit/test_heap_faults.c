/*
 * test_heap_faults.c — the driver refusing at each step the heap takes (segment allocation,
 * event create/record/query, device sync, segment free, the primary context of empty-cache):
 * every call either succeeds another way or fails with a proper CUresult, the heap stays
 * valid after each, and once the faults are cleared and everything freed the emulated
 * device's leak audit is clean.
 */
#include "heaptest.h"

#define SLOTS 24

static CUresult run_workload(CUstream s, CUstream t, CUdeviceptr *slot, size_t *failures)
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
    return CUDA_SUCCESS;
}

static void with_faults(const char *spec, bool must_fail)
{
    ht_setup("512M");
    CUstream s = ht_stream(), t = ht_stream();
    CUdeviceptr slot[SLOTS] = {0};
    size_t failures = 0;
    cr_assert_eq(ht_fail(spec), 0, "bad spec %s", spec);
    cr_assert_eq(run_workload(s, t, slot, &failures), CUDA_SUCCESS);
    cr_assert_eq(ht_fail(NULL), 0);
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

TestSuite(faults, .timeout = 120);

Test(faults, first_segment_allocation)
{
    /* refused once: the retry after releasing the cache succeeds */
    with_faults("cuMemAlloc_v2@1", false);
}

Test(faults, every_segment_allocation_out_of_memory)
{
    with_faults("cuMemAlloc_v2@*", true);
    /* counted as OOMs, each after one retry */
}

Test(faults, segment_allocation_other_error)
{
    with_faults("cuMemAlloc_v2@3+=CUDA_ERROR_UNKNOWN", true);
}

Test(faults, event_create)
{
    with_faults("cuEventCreate@*", false);
}

Test(faults, event_record)
{
    with_faults("cuEventRecord@*=CUDA_ERROR_INVALID_HANDLE", false);
}

Test(faults, event_query)
{
    with_faults("cuEventQuery@*=CUDA_ERROR_LAUNCH_FAILED", false);
}

Test(faults, device_sync)
{
    with_faults("cuCtxSynchronize@*=CUDA_ERROR_UNKNOWN", false);
}

Test(faults, segment_free)
{
    with_faults("cuMemFree_v2@1=CUDA_ERROR_UNKNOWN", true);
}

Test(faults, primary_context_of_empty_cache)
{
    with_faults("cuDevicePrimaryCtxRetain@*=CUDA_ERROR_UNKNOWN", true);
}

Test(faults, oom_counts_and_error_code)
{
    ht_setup("512M");
    cr_assert_eq(ht_fail("cuMemAlloc_v2@*"), 0);
    CUdeviceptr p = 0;
    cr_assert_eq(heap_alloc(0, 4096, NULL, HEAP_SYNC, &p), CUDA_ERROR_OUT_OF_MEMORY);
    cr_assert_eq(p, 0);
    fragless_stats_t st = ht_stats(0);
    cr_assert_eq(st.num_ooms, 1);
    cr_assert_eq(st.num_alloc_retries, 1);
    cr_assert_eq(st.reserved_bytes.current, 0);
    cr_assert_eq(ht_fail(NULL), 0);
    cr_assert_eq(ht_audit(), 0);
}
