/*
 * test_expand.c — expandable (VMM) segments in the heap (lib/expand.c) on the emulated
 * device: one reserved range per pool, pages mapped on demand, pages moved from ready free
 * blocks before new ones are created (never from blocks stream work may still touch), live
 * data intact through thousands of grow/shrink/move cycles, empty-cache down to what live
 * blocks need, the thresholds, and the choice by the device's VMM attribute.
 */
#define HT_SEGMENTS "expandable_segments:true"
#include "heaptest.h"

static void setup(void)
{
    ht_setup("1G");
}

TestSuite(expand, .init = setup, .timeout = 60);

Test(expand, one_range_per_pool_and_reserved_is_mapped_bytes)
{
    CUdeviceptr a = ht_alloc(3 * FL_MiB, NULL, HEAP_SYNC);
    CUdeviceptr b = ht_alloc(5 * FL_MiB, NULL, HEAP_SYNC);
    CUdeviceptr s = ht_alloc(1000, NULL, HEAP_SYNC);
    fragless_stats_t st = ht_stats(0);
    cr_assert_eq(st.segments.current, 2, "one range per pool");
    cr_assert_eq(ht_calls("cuMemAddressReserve"), 2);
    cr_assert_eq(ht_calls("cuMemAlloc_v2"), 0);
    /* a at 0..3 MiB, b at 3..8 MiB: 4 pages; the small pool's one page */
    cr_assert_eq(st.reserved_bytes.current, 10 * FL_MiB);
    cr_assert_eq(st.mapped_bytes.current, 10 * FL_MiB);
    cr_assert_eq(st.unmapped_reserved_va_bytes.current, 2 * FL_GiB - 10 * FL_MiB);
    cr_assert_eq(st.pages_created, 5);
    memset((void *)(uintptr_t)a, 1, 3 * FL_MiB);
    memset((void *)(uintptr_t)b, 2, 5 * FL_MiB);
    memset((void *)(uintptr_t)s, 3, 1000);
    CUdeviceptr base = 0;
    size_t size = 0;
    cr_assert(heap_lookup(b + 4 * FL_MiB, &base, &size, NULL));
    cr_assert_eq(base, b);
    cr_assert_eq(size, 5 * FL_MiB);
    ht_free(a, NULL, HEAP_SYNC);
    ht_free(b, NULL, HEAP_SYNC);
    ht_free(s, NULL, HEAP_SYNC);
    cr_assert(heap_is_valid());
}
