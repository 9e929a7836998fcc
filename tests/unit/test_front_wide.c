/*
 * test_front_wide.c — device-wide requests (heap_alloc with HEAP_SYNC: cudaMalloc, cuMemAlloc)
 * served by the thread fronts from regions keyed REGION_DEVICE_WIDE (lib/front.c, region.c),
 * on the emulated device's simulated GPU work: their frees wait for a device sync that began
 * after them, a stream-ordered free waits for its stream before a device-wide request gets it,
 * a region given back goes to the global index (no stream pool of its own), the thread's
 * batched sync counts only frees no sync covered yet, statistics and look-ups stay exact from
 * any thread, and a sync the driver refuses makes nothing reusable. Each test names the bug it
 * catches.
 */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>

#include "heaptest.h"

#define WORK_US 250000 /* simulated work before a fill lands: outlives a test's probes */

static void setup(void)
{
    ht_setup("1G");
}

TestSuite(front_wide, .init = setup, .timeout = 30);

/* The same rules with the heap alone serving (thread_cache:false). */
static void setup_shared(void)
{
    setenv("FRAGLESS_CONF", HT_SEGMENTS ",thread_cache:false", 1);
    ht_setup("1G");
}

TestSuite(front_wide_shared, .init = setup_shared, .timeout = 30);

static struct heap *heap0(void)
{
    return heap_find(0);
}

static int held(void)
{
    return heap0()->held;
}

/* Whether s still has work in flight. */
static bool running(CUstream s)
{
    CUresult (*query)(CUstream) = (CUresult(*)(CUstream))(uintptr_t)ht_sym("cuStreamQuery");
    CUresult r = query(s);
    cr_assert(r == CUDA_SUCCESS || r == CUDA_ERROR_NOT_READY, "stream query: %d", (int)r);
    return r == CUDA_ERROR_NOT_READY;
}

/* One device sync made by the heap, as its own slow path or another thread's would. */
static CUresult heap_sync(void)
{
    struct heap *h = heap0();
    heap_lock(h);
    CUresult r = reuse_device_sync(h);
    heap_unlock(h);
    return r;
}

/* Two blocks, small and large pool, that a fill may write. */
static const size_t xsize[2] = {256 * 1024, 4 * FL_MiB};

/* Blocks on (s, mode) that make the next requests of each pool on it come from regions (a
 * fresh heap serves the first itself from a new segment, whose rest a region then takes). */
static void anchor(CUdeviceptr a[2], CUstream s, enum heap_mode mode)
{
    a[0] = ht_alloc(4096, s, mode);
    a[1] = ht_alloc(2 * FL_MiB, s, mode);
}

static void unanchor(const CUdeviceptr a[2], CUstream s, enum heap_mode mode)
{
    ht_free(a[0], s, mode);
    ht_free(a[1], s, mode);
}

/* Allocates x (xsize) on (s, mode), from two new regions when `regions`. */
static void take_x(CUdeviceptr x[2], CUstream s, enum heap_mode mode, bool regions)
{
    int before = held();
    for (int i = 0; i < 2; i++)
        x[i] = ht_alloc(xsize[i], s, mode);
    if (regions)
        cr_assert_eq(held(), before + 2, "x is not carved from two regions");
}

/* A fill on `writer` landing after WORK_US over both blocks of x. */
static void fill_x(const CUdeviceptr x[2], CUstream writer)
{
    ht_work(writer, WORK_US);
    for (int i = 0; i < 2; i++)
        ht_fill(writer, x[i], 0xab, xsize[i], 0);
}

/* Anchors a and blocks x on (s, mode) (x from two new regions when `regions`), a fill on
 * `writer` over x, and x freed on (s, mode) while the fill is in flight. */
static void free_in_flight(CUdeviceptr a[2], CUdeviceptr x[2], CUstream s, enum heap_mode mode,
                           CUstream writer, bool regions)
{
    anchor(a, s, mode);
    take_x(x, s, mode, regions);
    fill_x(x, writer);
    for (int i = 1; i >= 0; i--)
        ht_free(x[i], s, mode);
}

/* Requests of xsize's sizes on (s, mode) while `writer` still fills x: none may overlap x.
 * Each is written by the host, and freed on (s, mode). */
static void probe(const CUdeviceptr x[2], CUstream s, enum heap_mode mode, CUstream writer)
{
    CUdeviceptr y[2];
    for (int i = 0; i < 2; i++) {
        y[i] = ht_alloc(xsize[i], s, mode);
        memset((void *)(uintptr_t)y[i], 0x11, xsize[i]);
    }
    cr_assert(running(writer), "the fill landed before the probes: the test proves nothing");
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++)
            cr_assert(!ht_overlap(y[i], xsize[i], x[j], xsize[j]),
                      "a %s request got x[%d]'s memory while the fill writes it",
                      mode == HEAP_SYNC ? "device-wide" : "stream-ordered", j);
    for (int i = 1; i >= 0; i--)
        ht_free(y[i], s, mode);
}

/* ---- rule 1: device-wide frees wait for a device sync ---- */

/* Catches a device-wide region that takes a plain free (cudaFree) as one in stream order
 * (free_in marking it ENTRY_FREE, not pending): x carved again at once, or, once the region is
 * given back, handed to a stream-ordered request, while another stream's fill writes it. */
static void plain_free_waits_for_a_sync(bool regions)
{
    CUstream s = ht_stream(), t = ht_stream();
    CUdeviceptr a[2], x[2];
    free_in_flight(a, x, NULL, HEAP_SYNC, t, regions);
    probe(x, NULL, HEAP_SYNC, t);
    probe(x, s, HEAP_ASYNC, t);
    front_reclaim(0, true, NULL); /* the regions go back: x waits in the heap */
    probe(x, NULL, HEAP_SYNC, t);
    probe(x, s, HEAP_ASYNC, t);
    /* a sync that began after the frees: x may be handed out again */
    cr_assert_eq(heap_sync(), CUDA_SUCCESS);
    cr_assert(!running(t));
    front_reclaim(0, true, NULL);
    uint64_t allocs = ht_calls("cuMemAlloc_v2");
    CUdeviceptr q = ht_alloc(xsize[1], NULL, HEAP_SYNC);
    cr_assert_eq(q, x[1], "x's memory not reused after the sync");
    cr_assert_eq(ht_calls("cuMemAlloc_v2"), allocs);
    cr_assert_eq(((unsigned char *)(uintptr_t)q)[xsize[1] - 1], 0xab, "the sync waited");
    ht_free(q, NULL, HEAP_SYNC);
    unanchor(a, NULL, HEAP_SYNC);
    cr_assert_eq(ht_faults(), 0);
    ht_stream_destroy(s);
    ht_stream_destroy(t);
}

Test(front_wide, plain_free_waits_for_a_sync)
{
    plain_free_waits_for_a_sync(true);
}

Test(front_wide_shared, plain_free_waits_for_a_sync)
{
    plain_free_waits_for_a_sync(false);
}

/* A device sync made by another thread (its context current). */
static CUcontext sync_ctx;
static CUresult sync_result;

static void *syncer(void *arg)
{
    (void)arg;
    sync_result = drv_ctx_set_current(sync_ctx);
    if (sync_result == CUDA_SUCCESS)
        sync_result = heap_sync();
    return NULL;
}

/* Catches a plain free's ticket taken from the syncs done (or compared with >=): a sync that
 * began before the free, while the fill queued after it had not started, taken as covering
 * it. */
Test(front_wide, a_sync_begun_before_the_free_does_not_cover_it)
{
    CUstream s = ht_stream(), t = ht_stream(), u = ht_stream();
    CUdeviceptr a[2], x[2];
    anchor(a, NULL, HEAP_SYNC);
    take_x(x, NULL, HEAP_SYNC, true);
    ht_work(u, 150000); /* what the other thread's sync waits for */
    cr_assert_eq(drv_ctx_get_current(&sync_ctx), CUDA_SUCCESS);
    uint64_t syncs = ht_calls("cuCtxSynchronize");
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, syncer, NULL), 0);
    while (ht_calls("cuCtxSynchronize") == syncs)
        sched_yield();
    usleep(50000); /* the sync is waiting for u's work */
    fill_x(x, t);
    for (int i = 1; i >= 0; i--)
        ht_free(x[i], NULL, HEAP_SYNC);
    cr_assert_eq(pthread_join(th, NULL), 0);
    cr_assert_eq(sync_result, CUDA_SUCCESS);
    cr_assert_eq(atomic_load(&heap0()->syncs_done), 1);
    front_reclaim(0, true, NULL);
    probe(x, NULL, HEAP_SYNC, t);
    probe(x, s, HEAP_ASYNC, t);
    unanchor(a, NULL, HEAP_SYNC);
    cr_assert_eq(drv_ctx_synchronize(), CUDA_SUCCESS);
    cr_assert_eq(ht_faults(), 0);
    ht_stream_destroy(s);
    ht_stream_destroy(t);
    ht_stream_destroy(u);
}

/* ---- rule 1: stream-ordered frees before device-wide requests ---- */

/* Catches device-wide requests keyed by the stream they pass (NULL, as cudaMalloc does), not
 * REGION_DEVICE_WIDE: they carve from the legacy stream's region, where x freed on that stream
 * is free at once, while the legacy stream's fill still writes it. Also catches a given-back
 * stream region's rest put in the global index (put_spare's device-wide case taken for all). */
static void stream_free_waits_before_plain_requests(CUstream s, bool regions)
{
    CUdeviceptr a[2], x[2];
    free_in_flight(a, x, s, HEAP_ASYNC, s, regions);
    probe(x, NULL, HEAP_SYNC, s);
    probe(x, NULL, HEAP_SYNC, s); /* from the regions the first probe left */
    front_reclaim(0, true, NULL);
    probe(x, NULL, HEAP_SYNC, s);
    cr_assert_eq(drv_stream_synchronize(s), CUDA_SUCCESS);
    unanchor(a, s, HEAP_ASYNC);
    cr_assert_eq(ht_faults(), 0);
    cr_assert(heap_is_valid());
}

Test(front_wide, legacy_stream_free_waits_before_plain_requests)
{
    stream_free_waits_before_plain_requests(NULL, true);
}

Test(front_wide, stream_free_waits_before_plain_requests)
{
    CUstream s = ht_stream();
    stream_free_waits_before_plain_requests(s, true);
    ht_stream_destroy(s);
}

Test(front_wide_shared, stream_free_waits_before_plain_requests)
{
    CUstream s = ht_stream();
    stream_free_waits_before_plain_requests(s, false);
    ht_stream_destroy(s);
}

/* ---- giving device-wide regions back ---- */

/* A thread that allocates x device-wide, frees the small one, and exits. */
struct leaver {
    CUcontext ctx;
    CUdeviceptr x[2];
    int regions;
    CUresult r;
};

static void *leaver(void *arg)
{
    struct leaver *l = arg;
    if ((l->r = drv_ctx_set_current(l->ctx)) != CUDA_SUCCESS)
        return NULL;
    int before = held();
    for (int i = 0; i < 2 && l->r == CUDA_SUCCESS; i++)
        l->r = heap_alloc(0, xsize[i], NULL, HEAP_SYNC, &l->x[i]);
    l->regions = held() - before;
    if (l->r == CUDA_SUCCESS)
        l->r = heap_free(l->x[0], NULL, HEAP_SYNC, NULL);
    return NULL;
}

/* The rest of a given-back large device-wide region (behind x1, `rest` bytes) serves a plain
 * request at once: no new segment and no device sync. */
static void rest_serves_at_once(CUdeviceptr x1, size_t rest)
{
    uint64_t allocs = ht_calls("cuMemAlloc_v2"), syncs = ht_calls("cuCtxSynchronize");
    CUdeviceptr q = ht_alloc(rest, NULL, HEAP_SYNC);
    cr_assert_eq(q, x1 + xsize[1], "the region's rest is not where a plain request looks");
    cr_assert_eq(ht_calls("cuMemAlloc_v2"), allocs, "a new segment");
    cr_assert_eq(ht_calls("cuCtxSynchronize"), syncs, "a device sync");
    ht_free(q, NULL, HEAP_SYNC);
}

/* Catches a given-back device-wide region's unused memory put in a stream pool keyed
 * REGION_DEVICE_WIDE (put_spare without its device-wide case): a pool for no stream, whose
 * memory no plain request finds. The region goes back as its thread exits. */
Test(front_wide, exited_threads_region_goes_to_the_global_index)
{
    CUdeviceptr a[2];
    anchor(a, NULL, HEAP_SYNC); /* the 20 MiB segment's rest: 18 MiB, the large region */
    struct leaver l = {0};
    cr_assert_eq(drv_ctx_get_current(&l.ctx), CUDA_SUCCESS);
    int streams = heap0()->nstreams;
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, leaver, &l), 0);
    cr_assert_eq(pthread_join(t, NULL), 0);
    cr_assert_eq(l.r, CUDA_SUCCESS);
    cr_assert_eq(l.regions, 2, "the thread's blocks are not carved from regions");
    cr_assert_eq(held(), 0, "the exited thread still holds regions");
    cr_assert_eq(heap0()->nstreams, streams, "a stream pool made for device-wide memory");
    rest_serves_at_once(l.x[1], 18 * FL_MiB - xsize[1]);
    ht_free(l.x[1], NULL, HEAP_SYNC); /* the exited thread's block, the heap's now */
    unanchor(a, NULL, HEAP_SYNC);
    cr_assert(heap_is_valid());
}

/* The same, the region going back on empty-cache (every thread's regions). */
Test(front_wide, empty_cache_gives_wide_regions_to_the_global_index)
{
    CUdeviceptr a[2], x[2];
    anchor(a, NULL, HEAP_SYNC);
    take_x(x, NULL, HEAP_SYNC, true);
    ht_free(x[0], NULL, HEAP_SYNC);
    int streams = heap0()->nstreams;
    cr_assert_eq(heap_empty_cache(0, NULL), CUDA_SUCCESS);
    cr_assert_eq(held(), 0);
    cr_assert_eq(heap0()->nstreams, streams, "a stream pool made for device-wide memory");
    rest_serves_at_once(x[1], 18 * FL_MiB - xsize[1]);
    ht_free(x[1], NULL, HEAP_SYNC);
    unanchor(a, NULL, HEAP_SYNC);
}

/* ---- batched syncs ---- */

/* Sizes of a plain loop: both pools, or the large one only. */
static const size_t mixed_sizes[] = {4096,       3 * FL_MiB,  300 * 1024, 9 * FL_MiB,
                                     700 * 1024, 20 * FL_MiB, 1500,       6 * FL_MiB};
static const size_t large_sizes[] = {3 * FL_MiB, 9 * FL_MiB, 20 * FL_MiB, 6 * FL_MiB,
                                     2 * FL_MiB + 4096};

/* A cudaMalloc/cudaFree loop of mixed sizes (each block written by a short fill, freed after
 * the next is allocated); returns the device syncs it made, *freed the bytes it freed. */
static uint64_t plain_loop(const size_t *sizes, size_t nsizes, int n, size_t *freed)
{
    CUstream s = ht_stream();
    uint64_t syncs = ht_calls("cuCtxSynchronize");
    size_t prev_size = 0;
    CUdeviceptr prev = 0;
    *freed = 0;
    for (int i = 0; i < n; i++) {
        size_t size = sizes[i % nsizes];
        CUdeviceptr p = ht_alloc(size, NULL, HEAP_SYNC);
        ht_fill(s, p, i & 0xff, 512, 20);
        if (prev)
            ht_free(prev, NULL, HEAP_SYNC);
        *freed += prev ? size_round(prev_size, config_get()) : 0;
        prev = p;
        prev_size = size;
    }
    ht_free(prev, NULL, HEAP_SYNC);
    cr_assert_eq(ht_faults(), 0);
    ht_stream_destroy(s);
    return ht_calls("cuCtxSynchronize") - syncs;
}

/* Asserts `syncs` is about one per 64 MiB freed (a sync per batch, no more). */
static void assert_batched(uint64_t syncs, size_t freed)
{
    uint64_t batches = freed / (64 * FL_MiB);
    cr_log_info("%zu MiB freed: %llu syncs", freed / FL_MiB, (unsigned long long)syncs);
    cr_assert_gt(batches, 8, "too little freed to measure");
    cr_assert_leq(syncs, batches + 2, "%llu syncs for %llu batches", (unsigned long long)syncs,
                  (unsigned long long)batches);
}

/* Catches a thread that syncs whenever its device-wide region is full, whatever is pending
 * (the batch test in sync_if_pays gone), or regions given back to a stream pool of their own,
 * whose memory only a sync brings back. */
Test(front_wide, plain_loop_syncs_once_per_batch)
{
    size_t freed;
    uint64_t syncs = plain_loop(mixed_sizes, FL_ARRAY_SIZE(mixed_sizes), 300, &freed);
    cr_assert_gt(syncs, 0);
    assert_batched(syncs, freed);
}

/* Catches settle() that leaves the entries a sync covered pending: 64 MiB freed below blocks
 * kept live at the top of the thread's four device-wide regions (as many as one key may have)
 * still count toward its batch after another thread's sync covered them, and the next request
 * its full regions cannot serve syncs again (then every one that fills a region). */
Test(front_wide, covered_frees_below_live_blocks_leave_the_batch)
{
    CUdeviceptr w = ht_alloc(512 * FL_MiB, NULL, HEAP_SYNC); /* the heap's own */
    ht_free(w, NULL, HEAP_SYNC);
    cr_assert_eq(heap_sync(), CUDA_SUCCESS); /* 512 MiB free: room for the regions */
    enum { REGIONS = 4 };
    CUdeviceptr pin[REGIONS], tmp[2];
    int before = held();
    for (int r = 0; r < REGIONS; r++) { /* a 20 MiB region: 16 MiB freed, below 4 MiB kept */
        for (int k = 0; k < 2; k++)
            tmp[k] = ht_alloc(8 * FL_MiB, NULL, HEAP_SYNC);
        pin[r] = ht_alloc(4 * FL_MiB, NULL, HEAP_SYNC);
        cr_assert_eq(pin[r], tmp[0] + 16 * FL_MiB, "not carved from one region");
        for (int k = 0; k < 2; k++)
            ht_free(tmp[k], NULL, HEAP_SYNC);
    }
    cr_assert_eq(held(), before + REGIONS, "not %d regions", REGIONS);
    cr_assert_eq(drv_ctx_get_current(&sync_ctx), CUDA_SUCCESS);
    pthread_t th; /* another thread's sync covers every free */
    cr_assert_eq(pthread_create(&th, NULL, syncer, NULL), 0);
    cr_assert_eq(pthread_join(th, NULL), 0);
    cr_assert_eq(sync_result, CUDA_SUCCESS);
    uint64_t syncs = ht_calls("cuCtxSynchronize");
    ht_free(ht_alloc(6 * FL_MiB, NULL, HEAP_SYNC), NULL, HEAP_SYNC);
    cr_assert_eq(ht_calls("cuCtxSynchronize"), syncs, "a sync for frees a sync covered");
    size_t freed;
    syncs = plain_loop(large_sizes, FL_ARRAY_SIZE(large_sizes), 200, &freed);
    assert_batched(syncs, freed);
    for (int r = 0; r < REGIONS; r++)
        ht_free(pin[r], NULL, HEAP_SYNC);
}

/* ---- statistics and look-ups from any thread ---- */

/* Expected levels, kept by the test. */
struct expect {
    int64_t allocated, requested, allocs, frees;
    int64_t peak_allocated, peak_requested;
};

/* What went wrong, for checks made in threads other than the test's (asserted after). */
static char why[256];

#define FAIL_IF(cond, ...)                          \
    do {                                            \
        if (cond) {                                 \
            snprintf(why, sizeof why, __VA_ARGS__); \
            return false;                           \
        }                                           \
    } while (0)

static bool stats_are(const struct expect *e, const char *when)
{
    fragless_stats_t st = {.size = sizeof st};
    FAIL_IF(heap_get_stats(0, &st) != 0, "%s: no statistics", when);
    FAIL_IF(st.allocated_bytes.current != (uint64_t)e->allocated, "%s: allocated %llu, not %lld",
            when, (unsigned long long)st.allocated_bytes.current, (long long)e->allocated);
    FAIL_IF(st.requested_bytes.current != (uint64_t)e->requested, "%s: requested %llu, not %lld",
            when, (unsigned long long)st.requested_bytes.current, (long long)e->requested);
    FAIL_IF(st.num_allocs != (uint64_t)e->allocs, "%s: %llu allocations, not %lld", when,
            (unsigned long long)st.num_allocs, (long long)e->allocs);
    FAIL_IF(st.num_frees != (uint64_t)e->frees, "%s: %llu frees, not %lld", when,
            (unsigned long long)st.num_frees, (long long)e->frees);
    FAIL_IF(st.allocated_bytes.peak != (uint64_t)e->peak_allocated ||
                st.requested_bytes.peak != (uint64_t)e->peak_requested,
            "%s: peaks %llu, %llu, not %lld, %lld", when,
            (unsigned long long)st.allocated_bytes.peak,
            (unsigned long long)st.requested_bytes.peak, (long long)e->peak_allocated,
            (long long)e->peak_requested);
    return true;
}

static const size_t stat_sizes[] = {1000, 3 * FL_MiB + 100, 70000, 5 * FL_MiB, 513};
#define NSTAT FL_ARRAY_SIZE(stat_sizes)

static CUdeviceptr stat_p[NSTAT];
static struct expect expect;
static CUcontext stat_ctx;

/* Allocates block i (device-wide), or frees it, the expected levels following; then checks
 * the statistics. */
static bool stat_alloc(size_t i, const char *when)
{
    FAIL_IF(heap_alloc(0, stat_sizes[i], NULL, HEAP_SYNC, &stat_p[i]) != CUDA_SUCCESS,
            "%s: block %zu not allocated", when, i);
    expect.allocated += (int64_t)size_round(stat_sizes[i], config_get());
    expect.requested += (int64_t)stat_sizes[i];
    expect.allocs++;
    if (expect.allocated > expect.peak_allocated)
        expect.peak_allocated = expect.allocated;
    if (expect.requested > expect.peak_requested)
        expect.peak_requested = expect.requested;
    return stats_are(&expect, when);
}

static bool stat_free(size_t i, const char *when)
{
    FAIL_IF(heap_free(stat_p[i], NULL, HEAP_SYNC, NULL) != CUDA_SUCCESS, "%s: block %zu not freed",
            when, i);
    expect.allocated -= (int64_t)size_round(stat_sizes[i], config_get());
    expect.requested -= (int64_t)stat_sizes[i];
    expect.frees++;
    return stats_are(&expect, when);
}

/* heap_lookup of block i's byte `at` gives the block's start and requested size. */
static bool stat_lookup(size_t i, size_t at, const char *when)
{
    CUdeviceptr base = 0;
    size_t size = 0;
    int device = -1;
    FAIL_IF(!heap_lookup(stat_p[i] + at, &base, &size, &device), "%s: block %zu not found", when,
            i);
    FAIL_IF(base != stat_p[i] || size != stat_sizes[i] || device != 0,
            "%s: block %zu looked up as %#llx, %zu bytes (not %#llx, %zu)", when, i,
            (unsigned long long)base, size, (unsigned long long)stat_p[i], stat_sizes[i]);
    return true;
}

/* Another thread: looks up an interior pointer of every odd block, then frees it. */
static bool remote_lookup_and_free(void)
{
    const char *when = "another thread";
    FAIL_IF(drv_ctx_set_current(stat_ctx) != CUDA_SUCCESS, "no context");
    if (!stats_are(&expect, when))
        return false;
    for (size_t i = 1; i < NSTAT; i += 2)
        if (!stat_lookup(i, stat_sizes[i] / 2, when) || !stat_free(i, when))
            return false;
    return true;
}

/* A thread that allocates every block and exits. */
static bool alloc_and_exit(void)
{
    FAIL_IF(drv_ctx_set_current(stat_ctx) != CUDA_SUCCESS, "no context");
    for (size_t i = 0; i < NSTAT; i++)
        if (!stat_alloc(i, "a thread that exits"))
            return false;
    return true;
}

static void *run_body(void *fn)
{
    bool (*body)(void) = (bool (*)(void))(uintptr_t)fn;
    return body() ? fn : NULL;
}

static void run_thread(bool (*body)(void))
{
    pthread_t t;
    void *ok = NULL;
    cr_assert_eq(pthread_create(&t, NULL, run_body, (void *)(uintptr_t)body), 0);
    cr_assert_eq(pthread_join(t, &ok), 0);
    cr_assert_not_null(ok, "%s", why);
}

/* Catches device-wide frees of carved blocks counted only when they pop (count_free kept for
 * stream-order frees), or a look-up answering a carved block's rounded size: levels, counts
 * and look-ups read right after each call, by the allocating thread, by another thread while
 * the blocks sit in the first's regions, and after the allocating thread exited. */
Test(front_wide, stats_and_lookups_exact_from_any_thread)
{
    cr_assert_eq(drv_ctx_get_current(&stat_ctx), CUDA_SUCCESS);
    CUdeviceptr a[2];
    anchor(a, NULL, HEAP_SYNC);
    fragless_stats_t st = ht_stats(0);
    expect = (struct expect){.allocated = (int64_t)st.allocated_bytes.current,
                             .requested = (int64_t)st.requested_bytes.current,
                             .allocs = (int64_t)st.num_allocs,
                             .frees = (int64_t)st.num_frees,
                             .peak_allocated = (int64_t)st.allocated_bytes.peak,
                             .peak_requested = (int64_t)st.requested_bytes.peak};
    int before = held();
    for (size_t i = 0; i < NSTAT; i++)
        cr_assert(stat_alloc(i, "the allocating thread"), "%s", why);
    cr_assert_eq(held(), before + 2, "not carved from the thread's regions");
    run_thread(remote_lookup_and_free);
    for (size_t i = 0; i < NSTAT; i += 2)
        cr_assert(stat_lookup(i, 0, "the allocating thread") &&
                      stat_free(i, "the allocating thread"),
                  "%s", why);
    run_thread(alloc_and_exit);
    for (size_t i = 0; i < NSTAT; i++)
        cr_assert(stat_lookup(i, stat_sizes[i] - 1, "after its thread exited") &&
                      stat_free(i, "after its thread exited"),
                  "%s", why);
    unanchor(a, NULL, HEAP_SYNC);
}

/* ---- a sync the driver refuses ---- */

/* Catches a refused device sync taken as done (syncs_done raised, or a front counting the
 * syncs begun as covering): the pending 64 MiB batch in the thread's device-wide region carved
 * again, or handed out once the region went back, while a fill still writes it. */
Test(front_wide, a_refused_sync_makes_nothing_reusable)
{
    CUstream t = ht_stream();
    CUdeviceptr w = ht_alloc(128 * FL_MiB, NULL, HEAP_SYNC); /* the heap's own */
    ht_free(w, NULL, HEAP_SYNC);
    cr_assert_eq(heap_sync(), CUDA_SUCCESS); /* 128 MiB free: room for a 64 MiB region */
    int before = held();
    CUdeviceptr x = ht_alloc(32 * FL_MiB, NULL, HEAP_SYNC);
    CUdeviceptr y = ht_alloc(32 * FL_MiB, NULL, HEAP_SYNC);
    cr_assert_eq(held(), before + 1, "x and y not carved from one region");
    cr_assert_eq(y, x + 32 * FL_MiB);
    ht_work(t, WORK_US);
    ht_fill(t, x, 0xab, 64 * FL_MiB, 0);
    ht_free(x, NULL, HEAP_SYNC);
    ht_free(y, NULL, HEAP_SYNC); /* 64 MiB pending: the next request syncs */
    uint64_t syncs = ht_calls("cuCtxSynchronize"), done = ht_stats(0).num_device_syncs;
    cr_assert_eq(ht_fail("cuCtxSynchronize@1=CUDA_ERROR_UNKNOWN"), 0);
    CUdeviceptr c = ht_alloc(32 * FL_MiB, NULL, HEAP_SYNC);
    cr_assert_eq(ht_calls("cuCtxSynchronize"), syncs + 1, "no sync tried: the test proves nothing");
    cr_assert(!ht_overlap(c, 32 * FL_MiB, x, 64 * FL_MiB) || !running(t),
              "carved again after a refused sync while the fill writes it");
    front_reclaim(0, true, NULL);
    cr_assert_eq(ht_fail("cuCtxSynchronize@*=CUDA_ERROR_UNKNOWN"), 0);
    CUdeviceptr d = ht_alloc(32 * FL_MiB, NULL, HEAP_SYNC);
    cr_assert(running(t), "the fill landed: the test proves nothing");
    cr_assert(!ht_overlap(d, 32 * FL_MiB, x, 64 * FL_MiB),
              "handed out from the heap after a refused sync while the fill writes it");
    cr_assert_eq(ht_fail(""), 0);
    cr_assert_eq(ht_stats(0).num_device_syncs, done);
    cr_assert(heap_is_valid());
    ht_free(d, NULL, HEAP_SYNC);
    ht_free(c, NULL, HEAP_SYNC);
    cr_assert_eq(heap_sync(), CUDA_SUCCESS);
    cr_assert_eq(ht_faults(), 0);
    ht_stream_destroy(t);
    cr_assert_eq(heap_empty_cache(-1, NULL), CUDA_SUCCESS);
    cr_assert_eq(ht_audit(), 0);
}

/* ---- two threads trading device-wide blocks ---- */

#define TRADE_ROUNDS  600
#define TRADE_KEEP    48 /* blocks a trader keeps before handing the oldest on */
#define TRADE_FILL_US 200

static const size_t trade_sizes[] = {512, 4096, 65536, 300 * 1024, FL_MiB, 3 * FL_MiB, 1500};

/* A block and the tag the host wrote at its ends. */
struct traded {
    CUdeviceptr p;
    size_t size;
    uint32_t tag;
};

/* A trader's inbox: blocks the other thread handed on, for this one to check and free. */
struct inbox {
    pthread_mutex_t lock;
    struct traded b[TRADE_ROUNDS];
    int head, tail;
};

struct trader {
    int id;
    bool stream_frees; /* every third free stream-ordered on the trader's stream */
    struct inbox *in, *out;
    CUstream s;
    atomic_int *done;
    char err[128];
};

/* fragless_emu_stream_fill, found before the threads start (ht_sym asserts). */
static int (*trade_fill)(CUstream, CUdeviceptr, int, size_t, uint64_t);

static void tag_block(struct traded *t)
{
    memcpy((void *)(uintptr_t)t->p, &t->tag, sizeof t->tag);
    memcpy((void *)(uintptr_t)(t->p + t->size - sizeof t->tag), &t->tag, sizeof t->tag);
}

static bool tag_intact(const struct traded *t)
{
    uint32_t a, b;
    memcpy(&a, (const void *)(uintptr_t)t->p, sizeof a);
    memcpy(&b, (const void *)(uintptr_t)(t->p + t->size - sizeof b), sizeof b);
    return a == t->tag && b == t->tag;
}

/* Checks one block of the inbox, has a fill on the trader's stream write it, and frees it
 * while the fill is in flight (plainly, or with stream_frees every third one stream-ordered);
 * false on a bad tag or call. */
static bool consume(struct trader *tr, bool *got)
{
    struct traded t = {0};
    pthread_mutex_lock(&tr->in->lock);
    *got = tr->in->head != tr->in->tail;
    if (*got)
        t = tr->in->b[tr->in->head++];
    pthread_mutex_unlock(&tr->in->lock);
    if (!*got)
        return true;
    if (!tag_intact(&t)) {
        snprintf(tr->err, sizeof tr->err, "trader %d: block %#llx (tag %u) overwritten", tr->id,
                 (unsigned long long)t.p, t.tag);
        return false;
    }
    bool ok = trade_fill(tr->s, t.p, 0xee, t.size, TRADE_FILL_US) == 0;
    if (!tr->stream_frees || t.tag % 3)
        ok = ok && heap_free(t.p, NULL, HEAP_SYNC, NULL) == CUDA_SUCCESS;
    else
        ok = ok && heap_free(t.p, tr->s, HEAP_ASYNC, NULL) == CUDA_SUCCESS;
    if (!ok)
        snprintf(tr->err, sizeof tr->err, "trader %d: fill or free failed", tr->id);
    return ok;
}

static void *trade(void *arg)
{
    struct trader *tr = arg;
    struct traded keep[TRADE_KEEP];
    int n = 0;
    bool got = false;
    drv_ctx_set_current(sync_ctx);
    for (int i = 0; i < TRADE_ROUNDS && !tr->err[0]; i++) {
        struct traded t = {.size = trade_sizes[(i * 3 + tr->id) % FL_ARRAY_SIZE(trade_sizes)],
                           .tag = (uint32_t)(i * 2 + tr->id)};
        if (heap_alloc(0, t.size, NULL, HEAP_SYNC, &t.p) != CUDA_SUCCESS) {
            snprintf(tr->err, sizeof tr->err, "trader %d: allocation %d failed", tr->id, i);
            break;
        }
        tag_block(&t);
        if (n == TRADE_KEEP) { /* the oldest goes to the other trader, checked first */
            struct traded old = keep[i % TRADE_KEEP];
            if (!tag_intact(&old)) {
                snprintf(tr->err, sizeof tr->err, "trader %d: own block %#llx overwritten", tr->id,
                         (unsigned long long)old.p);
                break;
            }
            pthread_mutex_lock(&tr->out->lock);
            tr->out->b[tr->out->tail++] = old;
            pthread_mutex_unlock(&tr->out->lock);
        } else {
            n++;
        }
        keep[i % TRADE_KEEP] = t;
        if (!consume(tr, &got))
            break;
    }
    atomic_fetch_add(tr->done, 1);
    for (bool last = false; !last && !tr->err[0];) {
        last = atomic_load(tr->done) == 2; /* no more is handed on: empty the inbox once more */
        while (consume(tr, &got) && got)
            ;
    }
    for (int k = 0; k < n && !tr->err[0]; k++)
        if (!tag_intact(&keep[k]) || heap_free(keep[k].p, NULL, HEAP_SYNC, NULL) != CUDA_SUCCESS)
            snprintf(tr->err, sizeof tr->err, "trader %d: kept block %#llx", tr->id,
                     (unsigned long long)keep[k].p);
    return NULL;
}

/* Two traders (stream_frees: some frees stream-ordered) until both are done; then every
 * block is checked, freed, and no fill has landed on freed memory. */
static void run_traders(bool stream_frees)
{
    static struct inbox box[2];
    atomic_int done = 0;
    struct trader tr[2];
    cr_assert_eq(drv_ctx_get_current(&sync_ctx), CUDA_SUCCESS);
    trade_fill = (int (*)(CUstream, CUdeviceptr, int, size_t, uint64_t))(uintptr_t)ht_sym(
        "fragless_emu_stream_fill");
    for (int i = 0; i < 2; i++) {
        pthread_mutex_init(&box[i].lock, NULL);
        box[i].head = box[i].tail = 0;
        tr[i] = (struct trader){.id = i,
                                .stream_frees = stream_frees,
                                .in = &box[i],
                                .out = &box[1 - i],
                                .s = ht_stream(),
                                .done = &done};
    }
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, trade, &tr[i]), 0);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(pthread_join(t[i], NULL), 0);
    for (int i = 0; i < 2; i++)
        cr_assert_eq(tr[i].err[0], 0, "%s", tr[i].err);
    cr_assert_eq(drv_ctx_synchronize(), CUDA_SUCCESS);
    cr_assert_eq(ht_faults(), 0);
    cr_assert(heap_is_valid());
    fragless_stats_t st = ht_stats(0);
    cr_assert_eq(st.allocated_bytes.current, 0);
    cr_log_info("%llu device syncs", (unsigned long long)st.num_device_syncs);
    for (int i = 0; i < 2; i++)
        ht_stream_destroy(tr[i].s);
}

/* Catches any early reuse of a plainly freed block the single-thread tests miss: two threads
 * each allocate device-wide blocks, tag their ends, keep the last few and hand the oldest to
 * the other thread, which checks the tags, has a fill write the block and frees it while the
 * fill is in flight. A block handed out again before that fill landed loses its tag. */
Test(front_wide, traders_never_see_a_block_written_after_its_free)
{
    run_traders(false);
}

/* The same with every third free stream-ordered on the freeing thread's stream. (It found an
 * emulator bug: cuEventQuery answered CUDA_SUCCESS before the fills due by then were written;
 * drv_emu_time::queries_answer_done_only_with_the_fills_written.) */
Test(front_wide, traders_with_stream_frees_never_see_a_block_written_after_its_free)
{
    run_traders(true);
}
