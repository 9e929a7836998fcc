/*
 * test_heap.c — the caching allocator (lib/heap.c and friends) in-process on the emulated
 * device: caching, statistics, lookups, foreign pointers, empty-cache, the segment map, OOM
 * release-and-retry, and the steady state of a training-like loop making no driver calls.
 */
#include <signal.h>
#include <sys/wait.h>

#include "heaptest.h"

static void setup(void)
{
    ht_setup("1G");
}

TestSuite(heap, .init = setup, .timeout = 60);

/* The heap's own placement and layout, without thread regions (thread_cache:false): which
 * blocks merge, the largest free block, a segment's blocks. */
static void setup_shared(void)
{
    setenv("FRAGLESS_CONF", HT_SEGMENTS ",thread_cache:false", 1);
    ht_setup("1G");
}

TestSuite(heap_shared, .init = setup_shared, .timeout = 60);

Test(heap_shared, small_requests_share_a_segment_and_are_cached)
{
    CUdeviceptr p[8];
    uint64_t before = ht_calls("cuMemAlloc_v2");
    for (int i = 0; i < 8; i++)
        p[i] = ht_alloc(1000 + (size_t)i, NULL, HEAP_SYNC);
    cr_assert_eq(ht_calls("cuMemAlloc_v2") - before, 1, "8 small requests, one segment");
    for (int i = 1; i < 8; i++)
        cr_assert_eq(p[i] % 512, 0);
    fragless_stats_t s = ht_stats(0);
    cr_assert_eq(s.allocated_bytes.current, 8 * 1024);
    cr_assert_eq(s.requested_bytes.current, 8 * 1000 + 28);
    cr_assert_eq(s.reserved_bytes.current, 2 * FL_MiB);
    cr_assert_eq(s.reserved_unallocated_bytes.current, 2 * FL_MiB - 8 * 1024);
    cr_assert_eq(s.segments.current, 1);
    cr_assert_eq(s.num_cache_misses, 1);
    cr_assert_eq(s.num_cache_hits, 7);
    cr_assert_eq(s.num_device_alloc, 1);
    for (int i = 0; i < 8; i++)
        ht_free(p[i], NULL, HEAP_ASYNC);
    s = ht_stats(0);
    cr_assert_eq(s.allocated_bytes.current, 0);
    cr_assert_eq(s.allocated_bytes.peak, 8 * 1024);
    cr_assert_eq(s.num_frees, 8);
    /* freed on the legacy stream: merged among themselves, not yet with the global rest */
    cr_assert_eq(s.largest_free_block_bytes.current, 2 * FL_MiB - 8 * 1024);
    cr_assert(heap_is_valid());
}

Test(heap, memory_is_usable_and_blocks_do_not_overlap)
{
    size_t sizes[] = {1, 512, 4097, FL_MiB, FL_MiB + 1, 7 * FL_MiB, 12 * FL_MiB};
    CUdeviceptr p[7];
    for (int i = 0; i < 7; i++) {
        p[i] = ht_alloc(sizes[i], NULL, HEAP_SYNC);
        memset((void *)(uintptr_t)p[i], i + 1, sizes[i]);
    }
    for (int i = 0; i < 7; i++) {
        for (int j = 0; j < i; j++)
            cr_assert(!ht_overlap(p[i], sizes[i], p[j], sizes[j]));
        unsigned char *c = (unsigned char *)(uintptr_t)p[i];
        cr_assert(c[0] == i + 1 && c[sizes[i] - 1] == i + 1);
    }
    for (int i = 0; i < 7; i++)
        ht_free(p[i], NULL, HEAP_SYNC);
}

Test(heap, zero_bytes_gets_a_unique_block)
{
    CUdeviceptr a = ht_alloc(0, NULL, HEAP_SYNC);
    CUdeviceptr b = ht_alloc(0, NULL, HEAP_SYNC);
    cr_assert_neq(a, b);
    ht_free(a, NULL, HEAP_SYNC);
    ht_free(b, NULL, HEAP_SYNC);
}

Test(heap, lookup_answers_for_interior_pointers_of_live_blocks)
{
    CUdeviceptr p = ht_alloc(10000, NULL, HEAP_SYNC);
    CUdeviceptr base = 0;
    size_t size = 0;
    int dev = -1;
    cr_assert(heap_lookup(p + 9999, &base, &size, &dev));
    cr_assert_eq(base, p);
    cr_assert_eq(size, 10000);
    cr_assert_eq(dev, 0);
    cr_assert(heap_lookup(p, NULL, NULL, NULL));
    ht_free(p, NULL, HEAP_SYNC);
    cr_assert(!heap_lookup(p, &base, &size, &dev));
    cr_assert(!heap_lookup(0x1000, &base, &size, &dev));
}

Test(heap, foreign_and_bad_frees)
{
    CUdeviceptr real = 0;
    cr_assert_eq(drv_mem_alloc(&real, 4096), CUDA_SUCCESS);
    bool foreign = false;
    cr_assert_eq(heap_free(real, NULL, HEAP_SYNC, &foreign), CUDA_SUCCESS);
    cr_assert(foreign);
    cr_assert_eq(ht_stats(0).num_foreign_frees, 1);
    cr_assert_eq(drv_mem_free(real), CUDA_SUCCESS);

    CUdeviceptr p = ht_alloc(4096, NULL, HEAP_SYNC);
    cr_assert_eq(heap_free(p + 512, NULL, HEAP_SYNC, &foreign), CUDA_ERROR_INVALID_VALUE);
    cr_assert(!foreign);
    ht_free(p, NULL, HEAP_SYNC);
    cr_assert_eq(heap_free(p, NULL, HEAP_SYNC, &foreign), CUDA_ERROR_INVALID_VALUE,
                 "double free is refused");
    cr_assert(heap_is_valid());
}

Test(heap, bad_arguments)
{
    CUdeviceptr p;
    cr_assert_eq(heap_alloc(0, 512, NULL, HEAP_SYNC, NULL), CUDA_ERROR_INVALID_VALUE);
    cr_assert_eq(heap_alloc(-1, 512, NULL, HEAP_SYNC, &p), CUDA_ERROR_INVALID_DEVICE);
    cr_assert_eq(heap_alloc(0, SIZE_MAX, NULL, HEAP_SYNC, &p), CUDA_ERROR_OUT_OF_MEMORY);
    fragless_stats_t s = {.size = 4};
    cr_assert_eq(heap_get_stats(0, &s), FRAGLESS_EINVAL);
    cr_assert_eq(heap_get_stats(FL_MAX_DEVICES, &s), FRAGLESS_ENODEV);
    s.size = sizeof s;
    cr_assert_eq(heap_get_stats(1, &s), FRAGLESS_ENODEV, "never used");
    cr_assert_eq(heap_reset_peaks(-2), FRAGLESS_ENODEV);
    size_t released = 1;
    cr_assert_eq(heap_empty_cache(-5, &released), CUDA_ERROR_INVALID_DEVICE);
}

Test(heap, stats_copy_respects_an_older_callers_size)
{
    ht_free(ht_alloc(4096, NULL, HEAP_SYNC), NULL, HEAP_SYNC);
    fragless_stats_t s;
    memset(&s, 0xee, sizeof s);
    s.size = (uint32_t)offsetof(fragless_stats_t, active_bytes);
    cr_assert_eq(heap_get_stats(0, &s), 0);
    cr_assert_eq(s.version, FRAGLESS_STATS_VERSION);
    cr_assert_eq(s.reserved_bytes.current, 2 * FL_MiB);
    cr_assert_eq(s.active_bytes.current, 0xeeeeeeeeeeeeeeeeull, "beyond size: untouched");
}

Test(heap, reset_peaks)
{
    CUdeviceptr p = ht_alloc(FL_MiB, NULL, HEAP_SYNC);
    ht_free(p, NULL, HEAP_ASYNC);
    cr_assert_eq(ht_stats(0).allocated_bytes.peak, FL_MiB);
    cr_assert_eq(heap_reset_peaks(-1), 0);
    cr_assert_eq(ht_stats(0).allocated_bytes.peak, 0);
    cr_assert_eq(ht_stats(0).reserved_bytes.peak, 2 * FL_MiB);
}

Test(heap, empty_cache_releases_only_segments_without_live_blocks)
{
    CUdeviceptr keep = ht_alloc(4096, NULL, HEAP_SYNC);
    CUdeviceptr big = ht_alloc(30 * FL_MiB, NULL, HEAP_SYNC);
    CUdeviceptr mid = ht_alloc(5 * FL_MiB, NULL, HEAP_SYNC);
    ht_free(big, NULL, HEAP_SYNC); /* pending a sync: cuMemFree waits for its work itself */
    ht_free(mid, NULL, HEAP_ASYNC);
    size_t released = 0;
    cr_assert_eq(heap_empty_cache(0, &released), CUDA_SUCCESS);
    cr_assert_eq(released, 30 * FL_MiB + 20 * FL_MiB);
    fragless_stats_t s = ht_stats(0);
    cr_assert_eq(s.reserved_bytes.current, 2 * FL_MiB);
    cr_assert_eq(s.num_empty_cache, 1);
    cr_assert_eq(s.empty_cache_released_bytes, released);
    cr_assert_eq(s.num_device_free, 2);
    ht_free(keep, NULL, HEAP_SYNC);
    cr_assert_eq(heap_empty_cache(-1, &released), CUDA_SUCCESS);
    cr_assert_eq(released, 2 * FL_MiB);
    cr_assert_eq(ht_stats(0).reserved_bytes.current, 0);
    cr_assert_eq(ht_audit(), 0);
    cr_assert_eq(heap_empty_cache(0, &released), CUDA_SUCCESS);
    cr_assert_eq(released, 0, "nothing cached: nothing released");
}

static void *empty_from_thread(void *arg)
{
    size_t *released = arg;
    CUcontext c = (CUcontext)1;
    if (drv_ctx_get_current(&c) != CUDA_SUCCESS || c != NULL)
        return (void *)1;
    if (heap_empty_cache(-1, released) != CUDA_SUCCESS)
        return (void *)2;
    if (drv_ctx_get_current(&c) != CUDA_SUCCESS || c != NULL)
        return (void *)3; /* the thread's (absent) context is restored */
    return NULL;
}

Test(heap, empty_cache_works_from_a_thread_without_a_context)
{
    ht_free(ht_alloc(FL_MiB, NULL, HEAP_SYNC), NULL, HEAP_ASYNC);
    size_t released = 0;
    pthread_t t;
    void *ret;
    pthread_create(&t, NULL, empty_from_thread, &released);
    pthread_join(t, &ret);
    cr_assert_null(ret, "thread step %p failed", ret);
    cr_assert_eq(released, 2 * FL_MiB);
    cr_assert_eq(ht_audit(), 0);
}

Test(heap_shared, segment_info_maps_what_is_allocated)
{
    CUdeviceptr a = ht_alloc(FL_MiB, NULL, HEAP_SYNC);
    ht_alloc(FL_MiB / 2, NULL, HEAP_SYNC);
    struct heap_segment_info info[4];
    cr_assert_eq(heap_segment_info(0, info, 4), 1);
    cr_assert_eq(info[0].base, a);
    cr_assert_eq(info[0].size, 2 * FL_MiB);
    cr_assert_eq(info[0].allocated, FL_MiB + FL_MiB / 2);
    cr_assert_eq(info[0].free_mapped, FL_MiB / 2);
    cr_assert_eq(info[0].blocks, 3);
    cr_assert_str_eq(info[0].map,
                     "################################################................");
    cr_assert_eq(heap_segment_info(0, NULL, 0), 1);
    /* a 512 B block alone in the last 32 KiB slice: partly allocated */
    ht_alloc(512, NULL, HEAP_SYNC);
    cr_assert_eq(heap_segment_info(0, info, 4), 1);
    cr_assert_eq(info[0].map[48], '+');
    cr_assert_eq(info[0].map[49], '.');
    cr_assert_eq(heap_segment_info(3, info, 4), 0);
}

/* Tests that set their own device capacity or configuration before the first driver call. */
TestSuite(heap_env, .timeout = 60);

Test(heap_env, max_split_size_keeps_oversize_blocks_whole)
{
    setenv("FRAGLESS_CONF", HT_SEGMENTS ",max_split_size_mb:32", 1);
    ht_setup("1G");
    CUdeviceptr big = ht_alloc(64 * FL_MiB, NULL, HEAP_SYNC);
    ht_free(big, NULL, HEAP_ASYNC);
    /* an ordinary request does not carve the oversize block */
    CUdeviceptr small = ht_alloc(4 * FL_MiB, NULL, HEAP_ASYNC);
    cr_assert(!ht_overlap(small, 4 * FL_MiB, big, 64 * FL_MiB));
    /* an oversize request within 20 MiB of it takes it whole */
    CUdeviceptr again = ht_alloc(50 * FL_MiB, NULL, HEAP_ASYNC);
    cr_assert_eq(again, big);
    fragless_stats_t s = ht_stats(0);
    cr_assert_eq(s.allocated_bytes.current, 64 * FL_MiB + 4 * FL_MiB);
}

Test(heap_env, oom_releases_cache_and_retries)
{
    ht_setup("64M");
    CUdeviceptr a = ht_alloc(40 * FL_MiB, NULL, HEAP_SYNC);
    ht_free(a, NULL, HEAP_ASYNC);
    CUdeviceptr b = ht_alloc(48 * FL_MiB, NULL, HEAP_SYNC);
    fragless_stats_t s = ht_stats(0);
    cr_assert_eq(s.num_alloc_retries, 1);
    cr_assert_eq(s.num_ooms, 0);
    cr_assert_eq(s.num_device_free, 1);
    cr_assert_eq(s.num_empty_cache, 1, "the OOM path's release counts as an empty-cache");
    cr_assert_eq(s.empty_cache_released_bytes, 40 * FL_MiB);
    cr_assert_eq(s.reserved_bytes.current, 48 * FL_MiB);
    ht_free(b, NULL, HEAP_SYNC);
}

Test(heap_env, oom_fails_cleanly_when_the_cache_cannot_help)
{
    ht_setup("64M");
    CUdeviceptr a = ht_alloc(40 * FL_MiB, NULL, HEAP_SYNC);
    CUdeviceptr p = 0;
    cr_assert_eq(heap_alloc(0, 30 * FL_MiB, NULL, HEAP_SYNC, &p), CUDA_ERROR_OUT_OF_MEMORY);
    fragless_stats_t s = ht_stats(0);
    cr_assert_eq(s.num_alloc_retries, 1);
    cr_assert_eq(s.num_ooms, 1);
    cr_assert_eq(s.allocated_bytes.current, 40 * FL_MiB);
    cr_assert(heap_is_valid());
    ht_free(a, NULL, HEAP_SYNC);
    size_t released;
    cr_assert_eq(heap_empty_cache(-1, &released), CUDA_SUCCESS);
    cr_assert_eq(ht_audit(), 0);
}

Test(heap_env, oom_uses_pending_frees_after_one_sync)
{
    ht_setup("24M");
    /* two 8 MiB blocks of one 20 MiB segment; one stays live, so the segment stays */
    CUdeviceptr a = ht_alloc(8 * FL_MiB, NULL, HEAP_SYNC);
    CUdeviceptr b = ht_alloc(8 * FL_MiB, NULL, HEAP_SYNC);
    ht_free(b, NULL, HEAP_SYNC);
    uint64_t syncs = ht_calls("cuCtxSynchronize");
    CUdeviceptr c = ht_alloc(8 * FL_MiB, NULL, HEAP_SYNC);
    cr_assert_eq(c, b, "the pending block was reused after a sync");
    cr_assert_eq(ht_calls("cuCtxSynchronize") - syncs, 1);
    fragless_stats_t s = ht_stats(0);
    cr_assert_eq(s.num_device_syncs, 1);
    cr_assert_eq(s.num_alloc_retries, 1);
    cr_assert_eq(s.num_ooms, 0);
    ht_free(a, NULL, HEAP_SYNC);
    ht_free(c, NULL, HEAP_SYNC);
}

Test(heap, steady_training_loop_makes_no_driver_calls)
{
    CUstream s = ht_stream();
    size_t sizes[] = {4096, 300000, FL_MiB, 3 * FL_MiB, 8 * FL_MiB + 512, 25 * FL_MiB, 777};
    CUdeviceptr p[7];
    uint64_t calls = 0;
    for (int step = 0; step < 30; step++) {
        if (step == 3)
            calls = ht_calls("*");
        for (int i = 0; i < 7; i++) {
            p[i] = ht_alloc(sizes[i], s, HEAP_ASYNC);
            ht_fill(s, p[i], step, 64, 10);
        }
        for (int i = 6; i >= 0; i--)
            ht_free(p[i], s, HEAP_ASYNC);
    }
    cr_assert_eq(ht_calls("*"), calls, "driver calls in the steady state");
    cr_assert_eq(ht_faults(), 0);
    size_t released;
    cr_assert_eq(heap_empty_cache(-1, &released), CUDA_SUCCESS);
    ht_stream_destroy(s);
    cr_assert_eq(ht_audit(), 0);
}

static volatile int hammering;

static void *hammer(void *arg)
{
    drv_ctx_set_current((CUcontext)arg);
    while (hammering) {
        CUdeviceptr p;
        if (heap_alloc(0, 4096, NULL, HEAP_ASYNC, &p) == CUDA_SUCCESS)
            heap_free(p, NULL, HEAP_ASYNC, NULL);
    }
    return NULL;
}

Test(heap, fork_leaves_the_child_usable_locks)
{
    pthread_atfork(heap_atfork_prepare, heap_atfork_parent, heap_atfork_child);
    CUdeviceptr p = ht_alloc(10000, NULL, HEAP_SYNC);
    CUcontext ctx;
    cr_assert_eq(drv_ctx_get_current(&ctx), CUDA_SUCCESS);
    hammering = 1;
    pthread_t t;
    pthread_create(&t, NULL, hammer, ctx);
    for (int i = 0; i < 20; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            /* no CUDA in a forked child; only the heap's own state and locks */
            fragless_stats_t s = {.size = sizeof s};
            CUdeviceptr base = 0;
            bool ok = heap_lookup(p + 1, &base, NULL, NULL) && base == p &&
                      heap_get_stats(0, &s) == 0 && heap_is_valid();
            _exit(ok ? 0 : 1);
        }
        int status = ht_reap(pid);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child %d: status %d", i, status);
    }
    hammering = 0;
    pthread_join(t, NULL);
    ht_free(p, NULL, HEAP_SYNC);
}

/* 100 MiB freed on s and idle, then 120 MiB asked for on t: the idle segment cannot serve it. */
static fragless_stats_t grow_past_idle_segment(void)
{
    CUstream s = ht_stream(), t = ht_stream();
    CUdeviceptr a = ht_alloc(100 * FL_MiB, s, HEAP_ASYNC);
    ht_free(a, s, HEAP_ASYNC);
    CUdeviceptr b = ht_alloc(120 * FL_MiB, t, HEAP_ASYNC);
    fragless_stats_t st = ht_stats(0);
    ht_free(b, t, HEAP_ASYNC);
    return st;
}

Test(heap_env, garbage_collection_threshold_releases_idle_segments_before_growing)
{
    setenv("FRAGLESS_CONF", HT_SEGMENTS ",garbage_collection_threshold:0.5", 1);
    ht_setup("256M");
    fragless_stats_t st = grow_past_idle_segment();
    cr_assert_eq(st.reserved_bytes.current, 120 * FL_MiB, "128 MiB limit kept");
    cr_assert_eq(st.num_empty_cache, 1);
    cr_assert_eq(st.empty_cache_released_bytes, 100 * FL_MiB);
    cr_assert_eq(st.num_device_free, 1);
    cr_assert_eq(st.num_alloc_retries, 0, "no OOM was needed");
}

Test(heap_env, without_a_threshold_the_cache_is_kept)
{
    ht_setup("256M");
    fragless_stats_t st = grow_past_idle_segment();
    cr_assert_eq(st.reserved_bytes.current, 220 * FL_MiB);
    cr_assert_eq(st.num_empty_cache, 0);
    cr_assert_eq(st.num_device_free, 0);
}

Test(heap_env, release_threshold_gives_back_idle_cache)
{
    setenv("FRAGLESS_CONF", HT_SEGMENTS ",release_threshold_mb:16", 1);
    ht_setup("1G");
    fragless_stats_t st = grow_past_idle_segment();
    cr_assert_eq(st.reserved_bytes.current, 120 * FL_MiB, "the idle 100 MiB went back");
    cr_assert_eq(st.num_device_free, 1);
    cr_assert_eq(st.num_empty_cache, 1);
    cr_assert_eq(st.empty_cache_released_bytes, 100 * FL_MiB);
    /* what is freed but not yet idle (b, on t's pool) stays until it is */
    cr_assert_eq(ht_stats(0).reserved_bytes.current, 120 * FL_MiB);
}

Test(heap_env, roundup_power2_divisions_from_the_configuration)
{
    setenv("FRAGLESS_CONF", HT_SEGMENTS ",roundup_power2_divisions:4", 1);
    ht_setup("1G");
    CUdeviceptr p = ht_alloc(5 * FL_MiB + 1, NULL, HEAP_SYNC);
    fragless_stats_t s = ht_stats(0);
    cr_assert_eq(s.allocated_bytes.current, 6 * FL_MiB);
    cr_assert_eq(s.requested_bytes.current, 5 * FL_MiB + 1);
    CUdeviceptr base;
    size_t size;
    cr_assert(heap_lookup(p + 6 * FL_MiB - 1, &base, &size, NULL), "the rounded tail is its");
    cr_assert_eq(size, 5 * FL_MiB + 1);
    ht_free(p, NULL, HEAP_SYNC);
}

Test(heap_env, each_device_has_its_own_heap)
{
    setenv("FRAGLESS_EMU_DEVICES", "2", 1);
    ht_setup("256M");
    CUcontext ctx1;
    cr_assert_eq(drv_primary_ctx_retain(&ctx1, 1), CUDA_SUCCESS);
    CUdeviceptr p0 = ht_alloc(FL_MiB, NULL, HEAP_SYNC);
    cr_assert_eq(drv_ctx_set_current(ctx1), CUDA_SUCCESS);
    CUdeviceptr p1 = 0;
    cr_assert_eq(heap_alloc(1, 3 * FL_MiB, NULL, HEAP_SYNC, &p1), CUDA_SUCCESS);
    int dev = -1;
    cr_assert(heap_lookup(p1, NULL, NULL, &dev));
    cr_assert_eq(dev, 1);
    cr_assert(heap_lookup(p0, NULL, NULL, &dev));
    cr_assert_eq(dev, 0);
    fragless_stats_t s1 = {.size = sizeof s1};
    cr_assert_eq(heap_get_stats(1, &s1), 0);
    cr_assert_eq(s1.allocated_bytes.current, 3 * FL_MiB);
    cr_assert_eq(ht_stats(0).allocated_bytes.current, FL_MiB);
    /* a free with no context current still finds device 1's heap by the pointer */
    cr_assert_eq(drv_ctx_set_current(NULL), CUDA_SUCCESS);
    ht_free(p1, NULL, HEAP_SYNC);
    ht_free(p0, NULL, HEAP_SYNC);
    size_t released = 0;
    cr_assert_eq(heap_empty_cache(-1, &released), CUDA_SUCCESS);
    cr_assert_eq(released, 2 * FL_MiB + 20 * FL_MiB);
    cr_assert_eq(heap_get_stats(1, &s1), 0);
    cr_assert_eq(s1.reserved_bytes.current, 0);
    cr_assert_eq(drv_primary_ctx_release(1), CUDA_SUCCESS);
    cr_assert_eq(ht_audit(), 0);
}
