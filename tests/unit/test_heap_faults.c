/*
 * test_heap_faults.c — the driver refusing at each step the heap takes (segment allocation,
 * event create/record/query, device sync, segment free, the primary context of empty-cache):
 * every call either succeeds another way or fails with a proper CUresult, the heap stays
 * valid after each, and once the faults are cleared and everything freed the emulated
 * device's leak audit is clean.
 */
#define HT_FAULTS_MUST_REACH 1
#include "heapfaults.h"

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

Test(faults, refused_segment_free_keeps_it_cached_and_uncounted)
{
    ht_setup("512M");
    ht_free(ht_alloc(8 * FL_MiB, NULL, HEAP_SYNC), NULL, HEAP_SYNC);
    fragless_stats_t st = ht_stats(0);
    size_t held = st.reserved_bytes.current, released = 1;
    cr_assert_eq(st.num_device_alloc, 1);
    cr_assert_eq(ht_fail("cuMemFree_v2@1=CUDA_ERROR_UNKNOWN"), 0);
    cr_assert_eq(heap_empty_cache(0, &released), CUDA_ERROR_UNKNOWN);
    st = ht_stats(0);
    cr_assert_eq(released, 0);
    cr_assert_eq(st.reserved_bytes.current, held, "the segment stays cached");
    cr_assert_eq(st.num_device_alloc, 1, "putting it back is not an allocation");
    cr_assert_eq(st.num_device_free, 0, "nothing was freed");
    cr_assert(heap_is_valid());
    cr_assert_eq(ht_fail(NULL), 0);
    cr_assert_eq(heap_empty_cache(0, &released), CUDA_SUCCESS);
    st = ht_stats(0);
    cr_assert_eq(released, held);
    cr_assert_eq(st.num_device_free, 1);
    cr_assert_eq(st.reserved_bytes.current, 0);
    cr_assert_eq(ht_audit(), 0);
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
