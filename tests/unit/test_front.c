/*
 * test_front.c — the thread front (lib/front.c) through the heap's API, one thread at a time,
 * on the emulated device: a thread's regions retired when their stream or context goes (also
 * when the new stream gets the old handle), frees that are not the region's own stream order
 * waiting for their work, statistics and peaks exact while a region carves, an exited thread's
 * regions given back, double and interior frees of carved blocks refused. Each test names the
 * front-end bug it catches.
 */
#include <pthread.h>
#include <stdio.h>

#include "heaptest.h"

#define FILL_US 300000 /* simulated work before a fill lands: outlives the test's allocations */

static void setup(void)
{
    ht_setup("1G");
}

TestSuite(front, .init = setup, .timeout = 30);

/* An event recorded on s now. */
static CUevent mark(CUstream s)
{
    CUevent e;
    cr_assert_eq(drv_event_create(&e, CU_EVENT_DISABLE_TIMING), CUDA_SUCCESS);
    cr_assert_eq(drv_event_record(e, s), CUDA_SUCCESS);
    return e;
}

static bool done(CUevent e)
{
    CUresult r = drv_event_query(e);
    cr_assert(r == CUDA_SUCCESS || r == CUDA_ERROR_NOT_READY, "event query: %d", (int)r);
    return r == CUDA_SUCCESS;
}

/* Waits for e (its stream may be gone: an event is waited for by itself) and destroys it. */
static void wait_for(CUevent e)
{
    CUresult (*sync)(CUevent) = (CUresult(*)(CUevent))(uintptr_t)ht_sym("cuEventSynchronize");
    cr_assert_eq(sync(e), CUDA_SUCCESS);
    cr_assert_eq(drv_event_destroy(e), CUDA_SUCCESS);
}

static int held(void)
{
    return heap_find(0)->held;
}

/* Blocks in the heap's hands on s that make the thread's next requests of each pool come from
 * a region (a fresh heap serves a request itself from a new segment; the next one on s takes
 * the segment's rest as a region). */
struct anchors {
    CUdeviceptr small, large;
};

static struct anchors anchor(CUstream s)
{
    return (struct anchors){ht_alloc(4096, s, HEAP_ASYNC), ht_alloc(2 * FL_MiB, s, HEAP_ASYNC)};
}

static void unanchor(struct anchors a, CUstream s)
{
    ht_free(a.small, s, HEAP_ASYNC);
    ht_free(a.large, s, HEAP_ASYNC);
}

/* ---- rule 1: what a region may carve again ---- */

static const size_t xsize[2] = {256 * 1024, 4 * FL_MiB};

/* Carves x (xsize) on s from two regions, has a fill on `writer` write them, and frees them on
 * (free_s, mode); returns an event that completes when the fill landed. */
static CUevent carve_fill_free(CUstream s, CUdeviceptr x[2], CUstream writer, CUstream free_s,
                               enum heap_mode mode)
{
    int before = held();
    for (int i = 0; i < 2; i++)
        x[i] = ht_alloc(xsize[i], s, HEAP_ASYNC);
    cr_assert_eq(held(), before + 2, "x is not carved from two regions");
    ht_work(writer, FILL_US);
    for (int i = 0; i < 2; i++)
        ht_fill(writer, x[i], 0xab, xsize[i], 0);
    CUevent landed = mark(writer);
    for (int i = 1; i >= 0; i--)
        ht_free(x[i], free_s, mode);
    return landed;
}

/* Allocates xsize's sizes on s while the fill is in flight: none may overlap x. Each is
 * written with a tag, checked once the fill landed, then freed. */
static void take_clear_of(const CUdeviceptr x[2], CUstream s, CUevent landed)
{
    CUdeviceptr y[2];
    for (int i = 0; i < 2; i++) {
        y[i] = ht_alloc(xsize[i], s, HEAP_ASYNC);
        memset((void *)(uintptr_t)y[i], 0x11 + i, xsize[i]);
    }
    cr_assert(!done(landed), "the fill landed before the probes: the test proves nothing");
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++)
            cr_assert(!ht_overlap(y[i], xsize[i], x[j], xsize[j]),
                      "y[%d] %#llx overlaps x[%d] %#llx while the fill writes it", i,
                      (unsigned long long)y[i], j, (unsigned long long)x[j]);
    wait_for(landed);
    for (int i = 0; i < 2; i++) {
        const unsigned char *b = (const unsigned char *)(uintptr_t)y[i];
        cr_assert(b[0] == 0x11 + i && b[xsize[i] / 2] == 0x11 + i && b[xsize[i] - 1] == 0x11 + i,
                  "y[%d] overwritten by the fill", i);
        ht_free(y[i], s, HEAP_ASYNC);
    }
    cr_assert_eq(ht_faults(), 0);
    cr_assert(heap_is_valid());
}

/* Catches a stream destroy that leaves the destroying thread's own region for the stream in
 * place: the next stream, which gets the old handle, carves x again while the fill writes it. */
Test(front, own_region_retired_when_its_stream_is_destroyed)
{
    CUstream s = ht_stream();
    struct anchors a = anchor(s);
    CUdeviceptr x[2];
    CUevent landed = carve_fill_free(s, x, s, s, HEAP_ASYNC);
    unanchor(a, s);
    heap_stream_destroyed(s); /* as the interposer's hook does, before the driver's destroy */
    ht_stream_destroy(s);
    CUstream s2 = ht_stream();
    cr_assert_eq(s2, s, "the emulated device gives the destroyed stream's handle back");
    take_clear_of(x, s2, landed);
    ht_stream_destroy(s2);
}

/* Catches a context reset that leaves the calling thread's own regions in place: the stream
 * (maybe a new one with an old handle) carves x again at once. */
Test(front, own_region_retired_when_the_context_goes)
{
    CUstream s = ht_stream();
    struct anchors a = anchor(s);
    CUdeviceptr x[2];
    CUevent landed = carve_fill_free(s, x, s, s, HEAP_ASYNC);
    heap_streams_reset(false);
    take_clear_of(x, s, landed);
    unanchor(a, s);
    ht_stream_destroy(s);
}

/* Catches a region that takes a free on another stream as one in its own stream's order
 * (ENTRY_FREE instead of pending): s carves x again while t's fill still writes it. */
Test(front, free_on_another_stream_waits_for_its_work)
{
    CUstream s = ht_stream(), t = ht_stream();
    struct anchors a = anchor(s);
    CUdeviceptr x[2];
    CUevent landed = carve_fill_free(s, x, t, t, HEAP_ASYNC);
    fragless_stats_t st = ht_stats(0);
    cr_assert_eq(st.allocated_bytes.current, 4096 + 2 * FL_MiB, "x's frees counted at once");
    take_clear_of(x, s, landed);
    unanchor(a, s);
    ht_stream_destroy(s);
    ht_stream_destroy(t);
}

/* Catches a region that takes a device-wide free (cudaFree, stream NULL) of a block carved on
 * the legacy stream (also NULL) as a free in that stream's order: the legacy stream does not
 * wait for a non-blocking stream's work, so carving x again at once breaks rule 1. */
Test(front, plain_free_of_a_legacy_stream_block_waits_for_a_sync)
{
    CUstream t = ht_stream(); /* non-blocking */
    struct anchors a = anchor(NULL);
    CUdeviceptr x[2];
    CUevent landed = carve_fill_free(NULL, x, t, NULL, HEAP_SYNC);
    take_clear_of(x, NULL, landed);
    unanchor(a, NULL);
    ht_stream_destroy(t);
}

/* ---- statistics ---- */

/* One step of a fixed sequence: allocate block `slot` (size > 0) or free it (size 0). */
struct op {
    int slot;
    size_t size;
};

#define SLOTS 8

/* Expected levels and peaks, kept by the test. */
struct model {
    CUdeviceptr p[SLOTS];
    size_t size[SLOTS];
    int64_t allocated, requested, blocks;
    int64_t peak_allocated, peak_requested, peak_unallocated;
};

static int64_t max64(int64_t a, int64_t b)
{
    return a > b ? a : b;
}

/* A model starting from the heap's statistics now. */
static struct model model_from(const fragless_stats_t *st)
{
    return (struct model){.allocated = (int64_t)st->allocated_bytes.current,
                          .requested = (int64_t)st->requested_bytes.current,
                          .peak_allocated = (int64_t)st->allocated_bytes.peak,
                          .peak_requested = (int64_t)st->requested_bytes.peak,
                          .peak_unallocated = (int64_t)st->reserved_unallocated_bytes.peak};
}

/* Runs o on s (HEAP_ASYNC), the model following. */
static void step(struct model *m, struct op o, CUstream s)
{
    size_t r = size_round(o.size ? o.size : m->size[o.slot], config_get());
    if (o.size) {
        m->p[o.slot] = ht_alloc(o.size, s, HEAP_ASYNC);
        m->size[o.slot] = o.size;
        m->allocated += (int64_t)r;
        m->requested += (int64_t)o.size;
        m->blocks++;
    } else {
        ht_free(m->p[o.slot], s, HEAP_ASYNC);
        m->allocated -= (int64_t)r;
        m->requested -= (int64_t)m->size[o.slot];
        m->blocks--;
    }
    m->peak_allocated = max64(m->peak_allocated, m->allocated);
    m->peak_requested = max64(m->peak_requested, m->requested);
}

/* Asserts the heap's statistics are the model's (reserved, which the model does not know, is
 * taken from st: every state between two reads has the reserved bytes of the later read). */
static void assert_model(struct model *m, const fragless_stats_t *st, const char *when)
{
    int64_t reserved = (int64_t)st->reserved_bytes.current;
    cr_assert_eq(st->allocated_bytes.current, (uint64_t)m->allocated, "%s: allocated", when);
    cr_assert_eq(st->requested_bytes.current, (uint64_t)m->requested, "%s: requested", when);
    cr_assert_eq(st->allocated_bytes.peak, (uint64_t)m->peak_allocated, "%s: allocated peak", when);
    cr_assert_eq(st->requested_bytes.peak, (uint64_t)m->peak_requested, "%s: requested peak", when);
    cr_assert_eq(st->reserved_unallocated_bytes.current, (uint64_t)(reserved - m->allocated),
                 "%s: reserved but unallocated", when);
    cr_assert_eq(st->reserved_unallocated_bytes.peak, (uint64_t)m->peak_unallocated,
                 "%s: reserved-but-unallocated peak", when);
    cr_assert_geq(st->blocks.peak, st->blocks.current, "%s: blocks peak", when);
}

/* Mixed sizes up to 32 MiB (large ones multiples of 2 MiB: split exactly) on one stream, on a
 * fresh heap: the first of each pool served by the heap from a new segment, the next ones
 * carved from regions; the heap's own blocks (slots 0 and 1 at first) freed while carved ones
 * are live; 32 MiB, which takes the regions back before the heap grows. */
static const struct op seq[] = {
    {0, 4096},  {1, 2 * FL_MiB}, {2, 512},    {3, 6 * FL_MiB},  {4, 3000}, {1, 0},
    {5, 65536}, {4, 0},          {6, FL_MiB}, {7, 8 * FL_MiB},  {3, 0},    {1, 2 * FL_MiB},
    {2, 0},     {0, 0},          {4, 700},    {3, 32 * FL_MiB}, {5, 0},    {6, 0},
    {7, 0},     {1, 0},          {3, 0},      {4, 0},
};

/* Catches a heap that folds the threads' carved bytes into its peaks without their levels
 * (heap_settle without front_fold's hi and lo terms): peaks below what was allocated, or a
 * reserved-but-unallocated peak counting carved bytes as unallocated, read after every step. */
Test(front, stats_exact_after_every_step)
{
    CUstream s = ht_stream();
    struct model m = {0};
    int regions = 0;
    for (size_t i = 0; i < sizeof seq / sizeof *seq; i++) {
        step(&m, seq[i], s);
        fragless_stats_t st = ht_stats(0);
        m.peak_unallocated =
            max64(m.peak_unallocated, (int64_t)st.reserved_bytes.current - m.allocated);
        char when[32];
        snprintf(when, sizeof when, "after step %zu", i);
        assert_model(&m, &st, when);
        regions = held() > regions ? held() : regions;
    }
    cr_assert(regions > 0, "no region carved: the test proves nothing about fronts");
    ht_stream_destroy(s);
}

/* Catches peaks that only see the levels at the moments the heap looks (front_fold without
 * the fronts' high and low marks since the last fold): steps carved from regions with no
 * statistics read in between, the lowest level after a heap block was freed, then one read. */
Test(front, peaks_between_reads)
{
    /* the walker after every call (tests/run.sh) takes the heap's lock, which folds */
    unsetenv("FRAGLESS_CHECK");
    CUstream s = ht_stream();
    struct anchors a = anchor(s);
    /* regions for both pools, as large as they come, before the measured steps */
    ht_free(ht_alloc(512, s, HEAP_ASYNC), s, HEAP_ASYNC);
    ht_free(ht_alloc(2 * FL_MiB, s, HEAP_ASYNC), s, HEAP_ASYNC);
    CUdeviceptr k = ht_alloc(4096, s, HEAP_ASYNC);
    ht_free(a.large, s, HEAP_ASYNC); /* the heap looks, with k carved */
    int regions = held();
    fragless_stats_t st = ht_stats(0);
    struct model m = model_from(&st);
    m.p[5] = k;
    m.size[5] = 4096;
    int64_t low = m.allocated;
    const struct op ops[] = {{0, 4096}, {1, 6 * FL_MiB}, {2, 100000}, {5, 0}, {3, 8 * FL_MiB},
                             {2, 0},    {3, 0},          {1, 0},      {0, 0}, {4, 512}};
    for (size_t i = 0; i < sizeof ops / sizeof *ops; i++) {
        step(&m, ops[i], s);
        low = m.allocated < low ? m.allocated : low;
    }
    cr_assert_eq(held(), regions, "a step left the regions: the heap looked in between");
    fragless_stats_t after = ht_stats(0);
    cr_assert_eq(after.reserved_bytes.current, st.reserved_bytes.current, "no segment added");
    m.peak_unallocated = max64(m.peak_unallocated, (int64_t)after.reserved_bytes.current - low);
    assert_model(&m, &after, "after the steps");
    ht_free(m.p[4], s, HEAP_ASYNC);
    ht_free(a.small, s, HEAP_ASYNC);
    ht_stream_destroy(s);
}

/* ---- thread exit ---- */

/* What a thread that exits allocated and freed on its stream s, in context ctx; r: the first
 * error. */
struct leaver {
    CUstream s;
    CUresult r;
    CUcontext ctx;
};

static const size_t leaver_sizes[] = {4096, 2 * FL_MiB, 256 * 1024, 4 * FL_MiB};

/* Allocates and frees on s from both pools (the second request of each from a region), and
 * exits. */
static void *leaver(void *arg)
{
    CUdeviceptr p[4];
    struct leaver *l = arg;
    if ((l->r = drv_ctx_set_current(l->ctx)) != CUDA_SUCCESS)
        return NULL;
    for (int i = 0; i < 4 && l->r == CUDA_SUCCESS; i++)
        l->r = heap_alloc(0, leaver_sizes[i], l->s, HEAP_ASYNC, &p[i]);
    for (int i = 3; i >= 0 && l->r == CUDA_SUCCESS; i--)
        l->r = heap_free(p[i], l->s, HEAP_ASYNC, NULL);
    return NULL;
}

/* Catches a thread exit that keeps the thread's regions held: memory no thread can carve
 * from, counted active, that the heap's batched device sync does not make reusable. */
Test(front, thread_exit_gives_its_regions_back)
{
    struct leaver l = {.s = ht_stream()};
    cr_assert_eq(drv_ctx_get_current(&l.ctx), CUDA_SUCCESS);
    /* a plain free, after the thread, that the next plain allocation gets through a batched
     * device sync: a hit, so the heap takes no region back on the way, while it collects
     * what the thread freed on its stream */
    CUdeviceptr p = ht_alloc(64 * FL_MiB, NULL, HEAP_SYNC);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, leaver, &l), 0);
    cr_assert_eq(pthread_join(t, NULL), 0);
    cr_assert_eq(l.r, CUDA_SUCCESS);
    ht_free(p, NULL, HEAP_SYNC);
    CUdeviceptr q = ht_alloc(64 * FL_MiB, NULL, HEAP_SYNC);
    cr_assert_eq(q, p, "not served by the sync");
    fragless_stats_t st = ht_stats(0);
    cr_assert_eq(st.allocated_bytes.current, 64 * FL_MiB);
    cr_assert_eq(st.active_bytes.current, st.allocated_bytes.current,
                 "%llu bytes active but not allocated",
                 (unsigned long long)(st.active_bytes.current - st.allocated_bytes.current));
    cr_assert_eq(held(), 0, "the exited thread still holds regions");
    ht_free(q, NULL, HEAP_SYNC);
    ht_stream_destroy(l.s);
}

/* ---- bad frees ---- */

/* Catches a region that takes a double free of a carved block freed below the top, a free of
 * an interior pointer, or of a block already given back from the top, as a free: counted
 * twice, and its bytes carved twice. */
Test(front, double_and_interior_frees_of_carved_blocks_are_refused)
{
    CUstream s = ht_stream();
    struct anchors a = anchor(s);
    CUdeviceptr p[3];
    int before = held();
    for (int i = 0; i < 3; i++)
        p[i] = ht_alloc(8192, s, HEAP_ASYNC);
    cr_assert_eq(held(), before + 1, "not carved from one region");
    ht_free(p[1], s, HEAP_ASYNC); /* below the top: stays in the region, free */
    fragless_stats_t st = ht_stats(0);
    bool foreign = true;
    cr_assert_eq(heap_free(p[1], s, HEAP_ASYNC, &foreign), CUDA_ERROR_INVALID_VALUE);
    cr_assert(!foreign);
    cr_assert_eq(heap_free(p[0] + 512, s, HEAP_ASYNC, &foreign), CUDA_ERROR_INVALID_VALUE);
    cr_assert(!heap_lookup(p[1], NULL, NULL, NULL), "a freed carved block is found");
    ht_free(p[2], s, HEAP_ASYNC); /* the top: p[2] and p[1] go back */
    cr_assert_eq(heap_free(p[2], s, HEAP_ASYNC, &foreign), CUDA_ERROR_INVALID_VALUE);
    cr_assert_eq(heap_free(p[1], s, HEAP_ASYNC, &foreign), CUDA_ERROR_INVALID_VALUE);
    fragless_stats_t after = ht_stats(0);
    cr_assert_eq(after.num_frees, st.num_frees + 1, "only p[2]'s free counts");
    cr_assert_eq(after.allocated_bytes.current, st.allocated_bytes.current - 8192);
    CUdeviceptr q = ht_alloc(8192, s, HEAP_ASYNC);
    CUdeviceptr r = ht_alloc(8192, s, HEAP_ASYNC);
    cr_assert(q != p[0] && r != p[0] && q != r, "a block handed out twice");
    ht_free(r, s, HEAP_ASYNC);
    ht_free(q, s, HEAP_ASYNC);
    ht_free(p[0], s, HEAP_ASYNC);
    unanchor(a, s);
    ht_stream_destroy(s);
}
