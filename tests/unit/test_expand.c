/*
 * test_expand.c — expandable (VMM) segments in the heap (lib/expand.c) on the emulated
 * device: one reserved range per pool, pages mapped on demand, pages moved from ready free
 * blocks before new ones are created (never from blocks stream work may still touch), live
 * data intact through thousands of grow/shrink/move cycles, empty-cache down to what live
 * blocks need, the thresholds, and the choice by the device's VMM attribute.
 */
/* 2 MiB pages: the figures below count pages of 2 MiB */
#define HT_SEGMENTS "expandable_segments:true,page_size_mb:2"
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

/* Device-wide frees of n blocks. */
static void free_all(CUdeviceptr *p, int n)
{
    for (int i = 0; i < n; i++)
        ht_free(p[i], NULL, HEAP_SYNC);
}

Test(expand, pages_of_ready_free_blocks_move_before_new_ones_are_created)
{
    /* 8 blocks of 32 MiB, every other one freed: 64 pages free in holes of 16 */
    CUdeviceptr p[8], odd[4];
    for (int i = 0; i < 8; i++)
        p[i] = ht_alloc(32 * FL_MiB, NULL, HEAP_SYNC);
    for (int i = 0; i < 4; i++)
        odd[i] = p[2 * i + 1];
    free_all(odd, 4);
    for (int i = 0; i < 8; i += 2)
        memset((void *)(uintptr_t)p[i], i + 1, 32 * FL_MiB);
    fragless_stats_t before = ht_stats(0);
    cr_assert_eq(before.pages_created, 128);
    /* 100 MiB fits no hole: once the pending frees are settled (one device sync: 128 MiB
     * pending pays for it) the last hole has merged with the free tail, so the block starts
     * there on 16 mapped pages and takes the other 34 from the holes */
    CUdeviceptr big = ht_alloc(100 * FL_MiB, NULL, HEAP_SYNC);
    fragless_stats_t st = ht_stats(0);
    cr_assert_eq(st.pages_moved - before.pages_moved, 34);
    cr_assert_eq(st.pages_created, 128, "no page created");
    cr_assert_eq(st.num_device_syncs - before.num_device_syncs, 1);
    cr_assert_eq(st.reserved_bytes.current, 256 * FL_MiB);
    cr_assert_eq(st.reserved_unallocated_bytes.current, 28 * FL_MiB);
    memset((void *)(uintptr_t)big, 0x77, 100 * FL_MiB);
    for (int i = 0; i < 8; i += 2) {
        unsigned char *c = (unsigned char *)(uintptr_t)p[i];
        cr_assert(c[0] == i + 1 && c[32 * FL_MiB - 1] == i + 1, "live data unchanged");
    }
    cr_assert(heap_is_valid());
}

Test(expand, pages_of_frees_with_pending_work_are_not_moved)
{
    CUstream s = ht_stream(), t = ht_stream();
    CUdeviceptr a = ht_alloc(64 * FL_MiB, s, HEAP_ASYNC);
    CUdeviceptr keep = ht_alloc(2 * FL_MiB, s, HEAP_ASYNC);
    /* long work on s writes a, then a is freed on s: its pages may be touched until then */
    ht_fill(s, a, 0x3c, 64 * FL_MiB, 200000);
    ht_free(a, s, HEAP_ASYNC);
    fragless_stats_t before = ht_stats(0);
    CUdeviceptr b = ht_alloc(64 * FL_MiB, t, HEAP_ASYNC);
    fragless_stats_t st = ht_stats(0);
    cr_assert(!ht_overlap(a, 64 * FL_MiB, b, 64 * FL_MiB));
    cr_assert_eq(st.pages_moved, before.pages_moved, "no page of a stream-ordered free moved");
    cr_assert_eq(st.pages_created - before.pages_created, 32);
    cr_assert_eq(drv_stream_synchronize(s), CUDA_SUCCESS);
    cr_assert_eq(ht_faults(), 0, "the fill found its pages mapped");
    ht_free(b, t, HEAP_ASYNC);
    ht_free(keep, s, HEAP_ASYNC);
    cr_assert(heap_is_valid());
    ht_stream_destroy(s);
    ht_stream_destroy(t);
}

Test(expand, a_training_loop_makes_no_driver_calls_once_warm)
{
    static const size_t sizes[] = {512, 70000, FL_MiB, 3 * FL_MiB + 512, 40 * FL_MiB, 7 * FL_MiB};
    CUstream s = ht_stream();
    CUdeviceptr p[6];
    uint64_t calls = 0;
    for (int step = 0; step < 50; step++) {
        if (step == 2)
            calls = ht_calls("*");
        for (int i = 0; i < 6; i++)
            p[i] = ht_alloc(sizes[i], s, HEAP_ASYNC);
        ht_work(s, 10);
        for (int i = 5; i >= 0; i--)
            ht_free(p[i], s, HEAP_ASYNC);
    }
    cr_assert_eq(ht_calls("*"), calls, "steady state: no driver call");
    ht_stream_destroy(s);
}

/* One cycle of the churn: frees a random live block (checking its pattern) or allocates one
 * and writes its pattern. */
struct churn {
    CUdeviceptr p[64];
    size_t n[64];
    unsigned seed;
};

static bool pattern_intact(const struct churn *c, int i)
{
    const unsigned char *m = (const unsigned char *)(uintptr_t)c->p[i];
    size_t step = c->n[i] / 61 + 1;
    for (size_t k = 0; k < c->n[i]; k += step)
        if (m[k] != (unsigned char)(i * 37 + k))
            return false;
    return m[c->n[i] - 1] == (unsigned char)(i * 37 + c->n[i] - 1);
}

static void churn_once(struct churn *c, CUstream *streams)
{
    int i = rand_r(&c->seed) % 64;
    CUstream s = streams[i % 3];
    enum heap_mode mode = i % 5 == 0 ? HEAP_SYNC : HEAP_ASYNC;
    if (c->p[i]) {
        cr_assert(pattern_intact(c, i), "block %d changed", i);
        ht_free(c->p[i], s, mode);
        c->p[i] = 0;
        return;
    }
    unsigned r = (unsigned)rand_r(&c->seed);
    c->n[i] = r % 3 == 0 ? 1 + r % 4096 : (size_t)(1 + r % 24) * FL_MiB / 2 + r % 1000;
    c->p[i] = ht_alloc(c->n[i], s, mode);
    unsigned char *m = (unsigned char *)(uintptr_t)c->p[i];
    size_t step = c->n[i] / 61 + 1;
    for (size_t k = 0; k < c->n[i]; k += step)
        m[k] = (unsigned char)(i * 37 + k);
    m[c->n[i] - 1] = (unsigned char)(i * 37 + c->n[i] - 1);
}

Test(expand, live_data_intact_through_thousands_of_grow_shrink_move_cycles)
{
    CUstream streams[3] = {ht_stream(), ht_stream(), NULL};
    struct churn c = {.seed = 12345};
    for (int cycle = 0; cycle < 4000; cycle++) {
        churn_once(&c, streams);
        if (cycle % 500 == 499)
            cr_assert_eq(heap_empty_cache(0, NULL), CUDA_SUCCESS);
    }
    fragless_stats_t st = ht_stats(0);
    cr_log_info("moved %llu created %llu released %llu", (unsigned long long)st.pages_moved,
                (unsigned long long)st.pages_created, (unsigned long long)st.pages_released);
    cr_assert_gt(st.pages_moved, 100);
    cr_assert_gt(st.pages_released, 10);
    for (int i = 0; i < 64; i++)
        if (c.p[i]) {
            cr_assert(pattern_intact(&c, i), "block %d changed", i);
            ht_free(c.p[i], NULL, HEAP_SYNC);
        }
    cr_assert_eq(heap_empty_cache(0, NULL), CUDA_SUCCESS);
    cr_assert_eq(ht_stats(0).reserved_bytes.current, 0);
    cr_assert_eq(ht_faults(), 0);
    ht_stream_destroy(streams[0]);
    ht_stream_destroy(streams[1]);
    cr_assert_eq(ht_audit(), 0);
}

Test(expand, empty_cache_after_fragmentation_leaves_at_most_a_page_per_pool)
{
    CUstream s = ht_stream();
    CUdeviceptr big[40], small[100];
    for (int i = 0; i < 40; i++)
        big[i] = ht_alloc((size_t)(i % 5 + 1) * 2 * FL_MiB, s, HEAP_ASYNC);
    for (int i = 0; i < 100; i++)
        small[i] = ht_alloc(4000 + (size_t)i * 100, s, HEAP_ASYNC);
    ht_fill(s, big[3], 1, 4096, 1000); /* work still pending on a freed block */
    for (int i = 0; i < 40; i++)
        if (i % 7 != 0)
            ht_free(big[i], s, HEAP_ASYNC);
    for (int i = 10; i < 100; i++)
        ht_free(small[i], s, HEAP_ASYNC);
    fragless_stats_t st = ht_stats(0);
    size_t released = 0;
    cr_assert_eq(heap_empty_cache(0, &released), CUDA_SUCCESS);
    fragless_stats_t after = ht_stats(0);
    cr_assert_eq(after.reserved_bytes.current, st.reserved_bytes.current - released);
    cr_assert_leq(after.reserved_bytes.current - after.allocated_bytes.current, 2 * 2 * FL_MiB,
                  "%llu reserved, %llu allocated", (unsigned long long)after.reserved_bytes.current,
                  (unsigned long long)after.allocated_bytes.current);
    cr_assert_eq(after.mapped_bytes.current, after.reserved_bytes.current);
    cr_assert_eq(ht_faults(), 0, "the pending fill ran before its pages went");
    struct heap_segment_info info[4];
    cr_assert_eq(heap_segment_info(0, info, 4), 2);
    for (int i = 0; i < 2; i++) {
        cr_assert(info[i].expandable);
        cr_assert_eq(info[i].unmapped, info[i].size - (info[i].allocated + info[i].free_mapped));
        cr_assert(strchr(info[i].map, ' '), "%s", info[i].map);
    }
    for (int i = 0; i < 40; i += 7)
        ht_free(big[i], s, HEAP_ASYNC);
    for (int i = 0; i < 10; i++)
        ht_free(small[i], s, HEAP_ASYNC);
    cr_assert_eq(heap_empty_cache(0, NULL), CUDA_SUCCESS);
    after = ht_stats(0);
    cr_assert_eq(after.reserved_bytes.current, 0);
    cr_assert_eq(after.segments.current, 0, "empty reservations freed");
    ht_stream_destroy(s);
    cr_assert_eq(ht_audit(), 0);
}

Test(expand, the_walker_sees_a_live_block_not_wholly_mapped)
{
    CUdeviceptr a = ht_alloc(8 * FL_MiB, NULL, HEAP_SYNC);
    struct segment *s = NULL;
    cr_assert(segmap_find(a, NULL, &s));
    cr_assert(heap_is_valid());
    /* take a page from under the live block behind the heap's back */
    cr_assert_eq(vrange_unmap(s->vr, a - s->base, 2 * FL_MiB, true), CUDA_SUCCESS);
    cr_assert_not(heap_is_valid());
    cr_assert_eq(vrange_map(s->vr, a - s->base, 2 * FL_MiB), CUDA_SUCCESS);
    cr_assert(heap_is_valid());
}

Test(expand, a_request_no_hole_fits_takes_the_holes_pages_on_a_full_device)
{
    /* 1 GiB device: 48 blocks of 20 MiB (960 MiB), every other one freed: 480 MiB free in
     * holes of 20 MiB. 400 MiB fits no hole and the device has 64 MiB left: its pages come
     * from the holes. */
    CUdeviceptr p[48];
    for (int i = 0; i < 48; i++)
        p[i] = ht_alloc(20 * FL_MiB, NULL, HEAP_ASYNC);
    for (int i = 1; i < 48; i += 2)
        ht_free(p[i], NULL, HEAP_ASYNC);
    CUdeviceptr big = ht_alloc(400 * FL_MiB, NULL, HEAP_ASYNC);
    memset((void *)(uintptr_t)big, 0x5e, 400 * FL_MiB);
    fragless_stats_t st = ht_stats(0);
    cr_assert_eq(st.num_ooms, 0);
    cr_assert_leq(st.reserved_bytes.current, 960 * FL_MiB + 64 * FL_MiB);
    /* more than the device holds: a clean OOM, the heap as it was */
    CUdeviceptr none = 0;
    cr_assert_eq(heap_alloc(0, 200 * FL_MiB, NULL, HEAP_ASYNC, &none), CUDA_ERROR_OUT_OF_MEMORY);
    cr_assert_eq(none, 0);
    st = ht_stats(0);
    cr_assert_eq(st.num_ooms, 1);
    cr_assert_eq(st.allocated_bytes.current, 24 * 20 * FL_MiB + 400 * FL_MiB);
    cr_assert(heap_is_valid());
    ht_free(big, NULL, HEAP_ASYNC);
    for (int i = 0; i < 48; i += 2)
        ht_free(p[i], NULL, HEAP_ASYNC);
    cr_assert_eq(heap_empty_cache(0, NULL), CUDA_SUCCESS);
    cr_assert_eq(ht_stats(0).reserved_bytes.current, 0);
    cr_assert_eq(ht_audit(), 0);
}

TestSuite(expand_env, .timeout = 60);

/* 8 blocks of 32 MiB, every other one freed, then 100 MiB: its pages moved or created. */
static fragless_stats_t holes_then_big(void)
{
    CUdeviceptr p[8], odd[4];
    for (int i = 0; i < 8; i++)
        p[i] = ht_alloc(32 * FL_MiB, NULL, HEAP_SYNC);
    for (int i = 0; i < 4; i++)
        odd[i] = p[2 * i + 1];
    free_all(odd, 4);
    ht_alloc(100 * FL_MiB, NULL, HEAP_SYNC);
    cr_assert(heap_is_valid());
    return ht_stats(0);
}

Test(expand_env, without_page_moving_free_blocks_keep_their_pages)
{
    setenv("FRAGLESS_CONF", HT_SEGMENTS ",page_moving:false", 1);
    ht_setup("1G");
    fragless_stats_t st = holes_then_big();
    cr_assert_eq(st.pages_moved, 0);
    cr_assert_eq(st.pages_created, 128 + 34);
    cr_assert_eq(st.reserved_bytes.current, 324 * FL_MiB);
}

Test(expand_env, free_mapped_keep_mb_lets_the_cache_hold_that_much)
{
    setenv("FRAGLESS_CONF", HT_SEGMENTS ",free_mapped_keep_mb:100", 1);
    ht_setup("1G");
    fragless_stats_t st = holes_then_big();
    /* 28 MiB cached and 68 MiB to map stay within the 100 MiB the cache may hold: created */
    cr_assert_eq(st.pages_moved, 0);
    cr_assert_eq(st.pages_created, 128 + 34);
    cr_assert_eq(st.reserved_unallocated_bytes.current, 96 * FL_MiB);
}

Test(expand_env, free_mapped_keep_mb_moves_what_the_cache_cannot_hold)
{
    setenv("FRAGLESS_CONF", HT_SEGMENTS ",free_mapped_keep_mb:40", 1);
    ht_setup("1G");
    fragless_stats_t st = holes_then_big();
    /* 28 MiB cached + 68 MiB to map is 56 MiB over 40: 28 pages move, 6 are created */
    cr_assert_eq(st.pages_moved, 28);
    cr_assert_eq(st.pages_created, 128 + 6);
    cr_assert_eq(st.reserved_unallocated_bytes.current, 40 * FL_MiB);
}

Test(expand_env, release_threshold_keeps_at_most_that_much_cached)
{
    setenv("FRAGLESS_CONF", HT_SEGMENTS ",page_moving:false,release_threshold_mb:16", 1);
    ht_setup("1G");
    CUdeviceptr p[8];
    for (int i = 0; i < 8; i++)
        p[i] = ht_alloc(32 * FL_MiB, NULL, HEAP_ASYNC);
    for (int i = 0; i < 8; i += 2)
        ht_free(p[i], NULL, HEAP_ASYNC);
    cr_assert_eq(drv_ctx_synchronize(), CUDA_SUCCESS);
    ht_alloc(512, NULL, HEAP_ASYNC); /* collects the completed frees */
    ht_free(p[1], NULL, HEAP_ASYNC);
    fragless_stats_t st = ht_stats(0);
    cr_assert_leq(st.reserved_unallocated_bytes.current, 16 * FL_MiB + 32 * FL_MiB + 2 * FL_MiB,
                  "%llu cached", (unsigned long long)st.reserved_unallocated_bytes.current);
    cr_assert_gt(st.num_empty_cache, 0);
    cr_assert_gt(st.pages_released, 0);
}

Test(expand_env, garbage_collection_threshold_releases_before_mapping_past_it)
{
    setenv("FRAGLESS_CONF",
           HT_SEGMENTS ",page_moving:false,"
                       "garbage_collection_threshold:0.3",
           1);
    ht_setup("1G");
    fragless_stats_t st = holes_then_big();
    cr_assert_leq(st.reserved_bytes.current, (size_t)(0.3 * (double)FL_GiB) + 2 * FL_MiB);
    cr_assert_gt(st.pages_released, 0);
}

Test(expand_env, auto_is_expandable_where_the_device_has_vmm)
{
    setenv("FRAGLESS_CONF", "expandable_segments:auto", 1);
    ht_setup("1G");
    ht_alloc(FL_MiB * 3, NULL, HEAP_SYNC);
    cr_assert_eq(ht_calls("cuMemAddressReserve"), 1);
    cr_assert_eq(ht_calls("cuMemAlloc_v2"), 0);
    /* page_size_mb's default: 8 MiB pages */
    cr_assert_eq(ht_stats(0).mapped_bytes.current, 8 * FL_MiB);
}

Test(expand_env, auto_is_classic_without_vmm)
{
    setenv("FRAGLESS_CONF", "expandable_segments:auto", 1);
    setenv("FRAGLESS_EMU_VMM", "0", 1);
    ht_setup("1G");
    ht_alloc(FL_MiB * 3, NULL, HEAP_SYNC);
    cr_assert_eq(ht_calls("cuMemAddressReserve"), 0);
    cr_assert_eq(ht_calls("cuMemAlloc_v2"), 1);
    fragless_stats_t st = ht_stats(0);
    cr_assert_eq(st.mapped_bytes.current, 0);
    cr_assert_eq(st.reserved_bytes.current, 20 * FL_MiB);
}

Test(expand_env, asked_for_but_without_vmm_is_classic)
{
    setenv("FRAGLESS_CONF", "expandable_segments:true", 1);
    setenv("FRAGLESS_EMU_VMM", "0", 1);
    ht_setup("1G");
    ht_alloc(FL_MiB * 3, NULL, HEAP_SYNC);
    cr_assert_eq(ht_calls("cuMemAlloc_v2"), 1);
}
