/*
 * test_heap_streams.c — stream-ordered safety (DESIGN.md §4 rule 1) on the emulated device's
 * simulated GPU work: a freed block is never handed out while work issued before its free may
 * still touch it — on one stream, across streams, and after cudaFree-style frees — and the
 * waiting is batched: a plain free/alloc loop does not synchronize the device per call.
 */
#include <time.h>

#include "heaptest.h"

static void setup(void)
{
    ht_setup("1G");
}

TestSuite(streams, .init = setup, .timeout = 60);

/* The heap's stream pools themselves, without thread regions (thread_cache:false). */
static void setup_shared(void)
{
    setenv("FRAGLESS_CONF", HT_SEGMENTS ",thread_cache:false", 1);
    ht_setup("1G");
}

TestSuite(streams_shared, .init = setup_shared, .timeout = 60);

#define FILL_US 200000 /* 200 ms of simulated work before the fill lands */

Test(streams, same_stream_reuses_at_once)
{
    CUstream s = ht_stream();
    CUdeviceptr p = ht_alloc(FL_MiB, s, HEAP_ASYNC);
    ht_fill(s, p, 0xab, 4096, FILL_US);
    ht_free(p, s, HEAP_ASYNC);
    uint64_t calls = ht_calls("*");
    CUdeviceptr q = ht_alloc(FL_MiB, s, HEAP_ASYNC);
    cr_assert_eq(q, p, "work on the same stream is ordered: reuse is immediate");
    cr_assert_eq(ht_calls("*"), calls, "and costs no driver call");
    ht_free(q, s, HEAP_ASYNC);
    ht_stream_destroy(s);
}

Test(streams, other_stream_waits_for_the_event)
{
    CUstream s = ht_stream(), t = ht_stream();
    CUdeviceptr p = ht_alloc(FL_MiB, s, HEAP_ASYNC);
    ht_fill(s, p, 0xab, FL_MiB, FILL_US);
    ht_free(p, s, HEAP_ASYNC);
    /* while the fill is in flight, t must get other memory */
    CUdeviceptr q = ht_alloc(FL_MiB, t, HEAP_ASYNC);
    cr_assert(!ht_overlap(q, FL_MiB, p, FL_MiB), "handed out while s still writes it");
    memset((void *)(uintptr_t)q, 0x11, FL_MiB);
    CUdeviceptr sync_q = ht_alloc(FL_MiB, NULL, HEAP_SYNC);
    cr_assert(!ht_overlap(sync_q, FL_MiB, p, FL_MiB));
    /* once s's work is done, the block becomes reusable everywhere */
    cr_assert_eq(drv_stream_synchronize(s), CUDA_SUCCESS);
    CUdeviceptr r[2];
    r[0] = ht_alloc(FL_MiB, t, HEAP_ASYNC); /* the rest of sync_q's segment comes first */
    r[1] = ht_alloc(FL_MiB, t, HEAP_ASYNC);
    cr_assert(r[0] == p || r[1] == p);
    cr_assert_eq(((unsigned char *)(uintptr_t)p)[FL_MiB - 1], 0xab);
    cr_assert_eq(((unsigned char *)(uintptr_t)q)[0], 0x11);
    cr_assert_eq(ht_faults(), 0);
    ht_free(q, t, HEAP_ASYNC);
    ht_free(r[0], t, HEAP_ASYNC);
    ht_free(r[1], t, HEAP_ASYNC);
    ht_free(sync_q, NULL, HEAP_SYNC);
    size_t released;
    cr_assert_eq(heap_empty_cache(-1, &released), CUDA_SUCCESS);
    ht_stream_destroy(s);
    ht_stream_destroy(t);
    cr_assert_eq(ht_audit(), 0, "events and segments released");
}

Test(streams, the_caller_is_never_blocked_for_an_event)
{
    CUstream s = ht_stream(), t = ht_stream();
    /* two 1 MiB blocks fill a small segment: nothing else is cached */
    CUdeviceptr p = ht_alloc(FL_MiB, s, HEAP_ASYNC);
    CUdeviceptr keep = ht_alloc(FL_MiB, s, HEAP_ASYNC);
    ht_work(s, 2000000); /* 2 s */
    ht_free(p, s, HEAP_ASYNC);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    CUdeviceptr q = ht_alloc(FL_MiB, t, HEAP_ASYNC);
    clock_gettime(CLOCK_MONOTONIC, &b);
    cr_assert_neq(q, p);
    double waited = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    cr_assert_lt(waited, 1.0, "allocation waited %.3f s for the stream", waited);
    cr_assert_eq(ht_calls("cuEventSynchronize") + ht_calls("cuStreamSynchronize") +
                     ht_calls("cuCtxSynchronize"),
                 0);
    ht_free(q, t, HEAP_ASYNC);
    ht_free(keep, s, HEAP_ASYNC);
}

Test(streams, plain_free_is_not_reused_before_a_sync)
{
    CUstream s = ht_stream();
    CUdeviceptr p = ht_alloc(FL_MiB, NULL, HEAP_SYNC);
    ht_fill(s, p, 0xcd, FL_MiB, FILL_US);
    ht_free(p, NULL, HEAP_SYNC);
    for (int i = 0; i < 4; i++) {
        CUdeviceptr q = ht_alloc(FL_MiB, NULL, HEAP_SYNC);
        if (ht_overlap(q, FL_MiB, p, FL_MiB))
            cr_assert_eq(((unsigned char *)(uintptr_t)p)[FL_MiB - 1], 0xcd,
                         "reused before the work issued before the free completed");
        CUdeviceptr r = ht_alloc(FL_MiB, s, HEAP_ASYNC);
        if (ht_overlap(r, FL_MiB, p, FL_MiB))
            cr_assert_eq(((unsigned char *)(uintptr_t)p)[FL_MiB - 1], 0xcd);
    }
    cr_assert_eq(ht_faults(), 0);
}

Test(streams, large_pending_frees_are_reused_after_one_sync)
{
    CUstream s = ht_stream();
    CUdeviceptr p = ht_alloc(64 * FL_MiB, NULL, HEAP_SYNC);
    ht_fill(s, p, 0xcd, 4096, FILL_US);
    ht_free(p, NULL, HEAP_SYNC);
    uint64_t syncs = ht_calls("cuCtxSynchronize");
    CUdeviceptr q = ht_alloc(64 * FL_MiB, NULL, HEAP_SYNC);
    cr_assert_eq(q, p, "64 MiB pending: a sync pays");
    cr_assert_eq(ht_calls("cuCtxSynchronize") - syncs, 1);
    cr_assert_eq(((unsigned char *)(uintptr_t)q)[0], 0xcd, "the sync waited for the fill");
    cr_assert_eq(ht_stats(0).num_device_syncs, 1);
    ht_free(q, NULL, HEAP_SYNC);
}

Test(streams, plain_free_alloc_loop_does_not_sync_per_call)
{
    CUstream s = ht_stream();
    enum { N = 400 };
    uint64_t syncs = ht_calls("cuCtxSynchronize");
    uint64_t allocs = ht_calls("cuMemAlloc_v2");
    CUdeviceptr prev = 0;
    for (int i = 0; i < N; i++) {
        CUdeviceptr p = ht_alloc(FL_MiB, NULL, HEAP_SYNC);
        ht_fill(s, p, i & 0xff, 512, 20);
        if (prev)
            ht_free(prev, NULL, HEAP_SYNC);
        prev = p;
    }
    ht_free(prev, NULL, HEAP_SYNC);
    uint64_t n_syncs = ht_calls("cuCtxSynchronize") - syncs;
    uint64_t n_allocs = ht_calls("cuMemAlloc_v2") - allocs;
    cr_log_info("%d free/alloc pairs: %llu syncs, %llu segment allocations", N,
                (unsigned long long)n_syncs, (unsigned long long)n_allocs);
    cr_assert_gt(n_syncs, 0);
    cr_assert_leq(n_syncs, N / 32, "%llu syncs", (unsigned long long)n_syncs);
    cr_assert_leq(n_allocs, N / 8);
    cr_assert_eq(ht_stats(0).num_device_syncs, n_syncs);
    cr_assert_eq(ht_faults(), 0);
}

Test(streams, per_thread_default_stream_reuses_on_its_own_thread)
{
    CUdeviceptr p = ht_alloc(4096, CU_STREAM_PER_THREAD, HEAP_ASYNC);
    ht_fill(CU_STREAM_PER_THREAD, p, 0x77, 4096, FILL_US);
    ht_free(p, CU_STREAM_PER_THREAD, HEAP_ASYNC);
    uint64_t calls = ht_calls("*");
    CUdeviceptr q = ht_alloc(4096, CU_STREAM_PER_THREAD, HEAP_ASYNC);
    cr_assert_eq(q, p, "this thread's stream is ordered after the fill");
    cr_assert_eq(ht_calls("*"), calls);
    ht_free(q, CU_STREAM_PER_THREAD, HEAP_ASYNC);
}

struct ptds_arg {
    CUcontext ctx;
    CUdeviceptr got[2];
    int n;
    bool free_them;
};

static void *ptds_thread(void *arg)
{
    struct ptds_arg *a = arg;
    drv_ctx_set_current(a->ctx);
    for (int i = 0; i < a->n; i++)
        if (heap_alloc(0, FL_MiB, CU_STREAM_PER_THREAD, HEAP_ASYNC, &a->got[i]) != CUDA_SUCCESS)
            a->got[i] = 0;
    for (int i = 0; a->free_them && i < a->n; i++)
        heap_free(a->got[i], CU_STREAM_PER_THREAD, HEAP_ASYNC, NULL);
    return NULL;
}

Test(streams, other_threads_never_get_a_threads_per_thread_frees)
{
    struct ptds_arg a = {.n = 2};
    cr_assert_eq(drv_ctx_get_current(&a.ctx), CUDA_SUCCESS);
    /* this thread's frees, with its per-thread stream still writing them */
    CUdeviceptr p = ht_alloc(FL_MiB, CU_STREAM_PER_THREAD, HEAP_ASYNC);
    CUdeviceptr q = ht_alloc(FL_MiB, CU_STREAM_PER_THREAD, HEAP_ASYNC);
    ht_fill(CU_STREAM_PER_THREAD, p, 0x77, FL_MiB, FILL_US);
    ht_free(p, CU_STREAM_PER_THREAD, HEAP_ASYNC);
    ht_free(q, CU_STREAM_PER_THREAD, HEAP_ASYNC);
    pthread_t t;
    pthread_create(&t, NULL, ptds_thread, &a);
    pthread_join(t, NULL);
    for (int i = 0; i < 2; i++) {
        cr_assert_neq(a.got[i], 0);
        cr_assert(!ht_overlap(a.got[i], FL_MiB, p, 2 * FL_MiB), "another thread got them");
    }
    cr_assert_eq(ht_faults(), 0);
    cr_assert(heap_is_valid());
}

Test(streams, an_exited_threads_per_thread_frees_wait_for_a_sync)
{
    struct ptds_arg a = {.n = 2, .free_them = true};
    cr_assert_eq(drv_ctx_get_current(&a.ctx), CUDA_SUCCESS);
    pthread_t t;
    pthread_create(&t, NULL, ptds_thread, &a);
    pthread_join(t, NULL);
    /* its pool went with it: the blocks are pending, not reusable on a new thread's stream */
    fragless_stats_t s = ht_stats(0);
    cr_assert_eq(s.active_bytes.current, 2 * FL_MiB);
    cr_assert(heap_is_valid());
    /* a new thread (glibc reuses the dead one's thread-local storage, so its pool key) */
    struct ptds_arg b = {.ctx = a.ctx, .n = 2, .free_them = true};
    pthread_create(&t, NULL, ptds_thread, &b);
    pthread_join(t, NULL);
    for (int i = 0; i < 2; i++)
        cr_assert(!ht_overlap(b.got[i], FL_MiB, a.got[0], 2 * FL_MiB),
                  "a new thread got an exited thread's frees");
    size_t released;
    cr_assert_eq(heap_empty_cache(-1, &released), CUDA_SUCCESS);
    cr_assert_eq(released, 4 * FL_MiB);
    cr_assert_eq(ht_audit(), 0, "the exited threads' events were destroyed");
}

Test(streams_shared, frees_of_a_destroyed_stream_wait_for_a_sync)
{
    CUstream s = ht_stream(), t = ht_stream();
    CUdeviceptr a = ht_alloc(FL_MiB, s, HEAP_ASYNC);
    CUdeviceptr b = ht_alloc(FL_MiB, s, HEAP_ASYNC);
    ht_free(a, s, HEAP_ASYNC);
    ht_free(b, s, HEAP_ASYNC);
    ht_stream_destroy(s);
    /* t's miss looks at s's pool: its event cannot be recorded any more, so its blocks move
     * to the pending list (a device sync makes them reusable) and the pool goes */
    uint64_t records = ht_calls("cuEventRecord");
    CUdeviceptr c = ht_alloc(2 * FL_MiB, t, HEAP_ASYNC);
    CUdeviceptr d = ht_alloc(19 * FL_MiB, t, HEAP_ASYNC); /* misses too */
    CUdeviceptr e = ht_alloc(FL_MiB, t, HEAP_ASYNC);      /* and again */
    cr_assert(!ht_overlap(e, FL_MiB, a, 2 * FL_MiB));
    cr_assert_eq(ht_calls("cuEventRecord") - records, 1, "no second try on the dead stream");
    cr_assert(heap_is_valid());
    fragless_stats_t st = ht_stats(0);
    cr_assert_eq(st.active_bytes.current, st.allocated_bytes.current + 2 * FL_MiB, "a, b pending");
    cr_assert_eq(st.num_cache_misses, 4);
    ht_free(c, t, HEAP_ASYNC);
    ht_free(d, t, HEAP_ASYNC);
    ht_free(e, t, HEAP_ASYNC);
    size_t released;
    cr_assert_eq(heap_empty_cache(-1, &released), CUDA_SUCCESS);
    cr_assert_eq(released, st.reserved_bytes.current);
    ht_stream_destroy(t);
    cr_assert_eq(ht_audit(), 0);
}

/* A stream's handle can come back for the next stream created after it is destroyed (the
 * emulated device gives it): the interposer tells the heap before the destroy, and the old
 * stream's frees then wait for a device sync instead of going to the new stream at once. */
Test(streams, a_destroyed_streams_frees_do_not_go_to_a_stream_with_its_handle)
{
    CUstream s = ht_stream();
    CUdeviceptr a = ht_alloc(FL_MiB, s, HEAP_ASYNC);
    ht_fill(s, a, 0x5a, 4096, 200000); /* writes a for 200 ms */
    ht_free(a, s, HEAP_ASYNC);
    heap_stream_destroyed(s);
    ht_stream_destroy(s);
    CUstream t = ht_stream();
    cr_assert_eq(t, s, "the emulated device gives the destroyed stream's handle back");
    CUdeviceptr b = ht_alloc(FL_MiB, t, HEAP_ASYNC);
    cr_assert(!ht_overlap(a, FL_MiB, b, FL_MiB), "a went to the new stream while written");
    cr_assert(heap_is_valid());
    ht_free(b, t, HEAP_ASYNC);
    ht_stream_destroy(t);
}

/* A context reset (or release) takes every stream pool of its device with it. */
Test(streams, a_context_reset_sends_every_stream_pool_to_the_pending_list)
{
    CUstream s = ht_stream();
    CUdeviceptr a = ht_alloc(FL_MiB, s, HEAP_ASYNC);
    ht_fill(s, a, 0x5a, 4096, 200000);
    ht_free(a, s, HEAP_ASYNC);
    fragless_stats_t st = ht_stats(0);
    uint64_t active = st.active_bytes.current;
    heap_streams_reset(false);
    CUdeviceptr b = ht_alloc(FL_MiB, s, HEAP_ASYNC);
    cr_assert(!ht_overlap(a, FL_MiB, b, FL_MiB), "a was reused on its stream after the reset");
    st = ht_stats(0);
    cr_assert_eq(st.active_bytes.current, active + FL_MiB, "a pending, b live");
    cr_assert(heap_is_valid());
    ht_free(b, s, HEAP_ASYNC);
    ht_stream_destroy(s);
}
