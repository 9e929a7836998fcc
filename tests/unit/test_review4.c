/*
 * test_review4.c — review of 95f5f2b (device-wide requests carved from thread regions keyed
 * REGION_DEVICE_WIDE) on the emulated device.
 *
 * What holds (regression tests): a rule-1 oracle under random device-wide and stream-ordered
 * traffic on one and four threads (cross-thread frees, the legacy and per-thread default
 * streams, classic, expandable, tight memory); another thread's device-wide regions never make
 * a request fail and go back on empty-cache; a fork child with another thread's device-wide
 * regions is valid; statistics exact after every device-wide step; an exited thread's pending
 * device-wide frees wait for their work.
 *
 * What does not (disabled, each names its finding): pending device-wide frees held in regions
 * and in the heap each below their own 64 MiB batch (reserved peak of a plain loop far above
 * thread_cache:false with expandable segments); the thread's batched sync made with its
 * front lock held (another thread's look-up, and another device's allocation, wait for the
 * whole device sync). The thread_cache:false runs of the same tests pass: the bars are fair.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/wait.h>

#include "heaptest.h"

TestSuite(review4, .timeout = 120);

#define CLASSIC    "expandable_segments:false"
#define EXPANDABLE "expandable_segments:true"
#define NO_FRONTS  ",thread_cache:false"

static void setup_with(const char *conf, const char *mem)
{
    setenv("FRAGLESS_CONF", conf, 1);
    ht_setup(mem);
}

static CUresult stream_query(CUstream s)
{
    CUresult (*q)(CUstream) = (CUresult(*)(CUstream))(uintptr_t)ht_sym("cuStreamQuery");
    return q(s);
}

/* ---- a rule-1 oracle: a freed block whose work has not landed is handed out again only
 * on the stream it was freed on, in that stream's order ---- */

struct gone {
    CUdeviceptr p;
    size_t n;
    CUevent ev; /* recorded after the work that writes the block */
    CUstream fill_s, free_s;
    enum heap_mode free_mode;
    pthread_t thread; /* the freeing thread: a per-thread default stream is its own */
};

#define GONE_MAX 20000
static struct gone gone[GONE_MAX];
static int ngone;
static pthread_mutex_t gone_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int violations, failed_allocs;
static CUcontext sctx;
static CUstream streams[4];
static int stress_iters = 3000;
static bool default_streams; /* streams[2], [3]: the legacy and per-thread default ones */

struct live {
    CUdeviceptr p;
    size_t n;
    CUstream fill_s;
    CUevent ev;
    pthread_t filler;
};

#define SHARED_MAX 64
static struct live shared_live[SHARED_MAX]; /* blocks handed between threads */
static int nshared;

static void prune_locked(void)
{
    int k = 0;
    for (int i = 0; i < ngone; i++) {
        if (drv_event_query(gone[i].ev) == CUDA_SUCCESS) {
            drv_event_destroy(gone[i].ev);
            continue;
        }
        gone[k++] = gone[i];
    }
    ngone = k;
}

static void check_new(CUdeviceptr q, size_t n, CUstream s, enum heap_mode mode)
{
    pthread_mutex_lock(&gone_lock);
    for (int i = 0; i < ngone; i++) {
        const struct gone *g = &gone[i];
        if (!ht_overlap(q, n, g->p, g->n))
            continue;
        bool in_order = mode == HEAP_ASYNC && g->free_mode == HEAP_ASYNC && g->free_s == s &&
                        g->fill_s == s &&
                        (s != CU_STREAM_PER_THREAD || pthread_equal(g->thread, pthread_self()));
        if (!in_order && drv_event_query(g->ev) == CUDA_ERROR_NOT_READY &&
            atomic_fetch_add(&violations, 1) < 5)
            fprintf(stderr,
                    "rule 1: %#llx+%zu (mode %d, stream %p) overlaps %#llx+%zu freed (mode %d, "
                    "stream %p) while its work on %p runs\n",
                    (unsigned long long)q, n, (int)mode, (void *)s, (unsigned long long)g->p, g->n,
                    (int)g->free_mode, (void *)g->free_s, (void *)g->fill_s);
    }
    pthread_mutex_unlock(&gone_lock);
}

static bool oracle_alloc(struct live *l, size_t n, CUstream s, enum heap_mode mode, unsigned *seed)
{
    CUdeviceptr p = 0;
    if (heap_alloc(0, n, s, mode, &p) != CUDA_SUCCESS) {
        atomic_fetch_add(&failed_allocs, 1);
        return false;
    }
    check_new(p, n, s, mode);
    /* work that writes p: on s (stream-ordered) or on any stream (device-wide) */
    l->fill_s = mode == HEAP_ASYNC ? s : streams[rand_r(seed) % 4];
    ht_fill(l->fill_s, p, 0x5a, n < 4096 ? n : 4096, (uint64_t)(rand_r(seed) % 3000));
    cr_assert_eq(drv_event_create(&l->ev, CU_EVENT_DISABLE_TIMING), CUDA_SUCCESS);
    cr_assert_eq(drv_event_record(l->ev, l->fill_s), CUDA_SUCCESS);
    l->filler = pthread_self();
    l->p = p;
    l->n = n;
    return true;
}

/* Registered before the free: an allocation racing it sees it at worst early, never late. */
static void oracle_free(struct live *l, CUstream s, enum heap_mode mode)
{
    pthread_mutex_lock(&gone_lock);
    if (ngone == GONE_MAX)
        prune_locked();
    cr_assert_lt(ngone, GONE_MAX);
    gone[ngone++] = (struct gone){l->p, l->n, l->ev, l->fill_s, s, mode, pthread_self()};
    pthread_mutex_unlock(&gone_lock);
    cr_assert_eq(heap_free(l->p, s, mode, NULL), CUDA_SUCCESS);
    l->p = 0;
}

static const size_t stress_sizes[] = {
    512, 4096, 100000, FL_MiB, 2 * FL_MiB, 8 * FL_MiB, 3 * FL_MiB + 4096, 20 * FL_MiB};

/* Random allocations (device-wide or on one of 4 streams) and frees (device-wide, or on the
 * block's own stream), some blocks handed to another thread to free. */
static void *stresser(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    drv_ctx_set_current(sctx);
    struct live mine[16] = {0};
    for (int it = 0; it < stress_iters; it++) {
        int k = rand_r(&seed) % 16, what = rand_r(&seed) % 8;
        enum heap_mode mode = what < 4 ? HEAP_SYNC : HEAP_ASYNC;
        if (!mine[k].p) {
            CUstream s = mode == HEAP_SYNC ? NULL : streams[what % 4];
            oracle_alloc(&mine[k], stress_sizes[rand_r(&seed) % 8], s, mode, &seed);
        } else if (what == 7) {
            pthread_mutex_lock(&gone_lock);
            struct live other = {0};
            if (nshared == SHARED_MAX || (nshared && rand_r(&seed) % 2))
                other = shared_live[--nshared];
            shared_live[nshared++] = mine[k];
            pthread_mutex_unlock(&gone_lock);
            mine[k] = other;
        } else {
            /* another thread's per-thread stream is not ordered after the work: device-wide */
            if (mine[k].fill_s == CU_STREAM_PER_THREAD &&
                !pthread_equal(mine[k].filler, pthread_self()))
                mode = HEAP_SYNC;
            oracle_free(&mine[k], mode == HEAP_SYNC ? NULL : mine[k].fill_s, mode);
        }
    }
    for (int k = 0; k < 16; k++)
        if (mine[k].p)
            oracle_free(&mine[k], NULL, HEAP_SYNC);
    return NULL;
}

static void stress(int threads)
{
    cr_assert_eq(drv_ctx_get_current(&sctx), CUDA_SUCCESS);
    for (int i = 0; i < 4; i++)
        streams[i] = ht_stream();
    if (default_streams) { /* the legacy and per-thread default streams too */
        streams[2] = NULL;
        streams[3] = CU_STREAM_PER_THREAD;
    }
    pthread_t t[4];
    for (int i = 0; i < threads; i++)
        pthread_create(&t[i], NULL, stresser, (void *)(uintptr_t)(i + 1));
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    while (nshared)
        oracle_free(&shared_live[--nshared], NULL, HEAP_SYNC);
    cr_log_info("%d threads: %d failed allocations, %llu syncs", threads,
                atomic_load(&failed_allocs), (unsigned long long)ht_calls("cuCtxSynchronize"));
    cr_assert_eq(ht_faults(), 0);
    cr_assert_eq(atomic_load(&violations), 0, "%d rule-1 violations", atomic_load(&violations));
    cr_assert(heap_is_valid());
}

Test(review4, rule1_oracle_one_thread)
{
    setup_with(CLASSIC, "1G");
    stress_iters = 6000;
    stress(1);
}

Test(review4, rule1_oracle_four_threads)
{
    setup_with(CLASSIC, "1G");
    stress(4);
}

Test(review4, rule1_oracle_four_threads_default_streams)
{
    setup_with(CLASSIC, "1G");
    default_streams = true;
    stress(4);
}

Test(review4, rule1_oracle_four_threads_expandable)
{
    setup_with(EXPANDABLE, "1G");
    stress(4);
}

Test(review4, rule1_oracle_four_threads_out_of_memory_often)
{
    setup_with(CLASSIC, "256M");
    stress(4);
}

/* ---- memory another thread's device-wide regions hold ---- */

struct hoarder {
    CUcontext ctx;
    atomic_int stage; /* 1: B's frees are done; 2: B may exit */
    CUresult r;
};

/* B: 30 device-wide 2 MiB blocks from its regions, all freed (pending there), then idle. */
static void *hoard(void *arg)
{
    struct hoarder *b = arg;
    drv_ctx_set_current(b->ctx);
    CUdeviceptr p[30];
    for (int i = 0; i < 30 && b->r == CUDA_SUCCESS; i++)
        b->r = heap_alloc(0, 2 * FL_MiB, NULL, HEAP_SYNC, &p[i]);
    for (int i = 0; i < 30 && b->r == CUDA_SUCCESS; i++)
        heap_free(p[i], NULL, HEAP_SYNC, NULL);
    atomic_store(&b->stage, 1);
    while (atomic_load(&b->stage) != 2)
        usleep(1000);
    return NULL;
}

/* Sets the heap up (conf, capacity mem) and starts B; returns once B's frees are done. */
static void hoarder_begin(const char *conf, const char *mem, struct hoarder *b, pthread_t *t)
{
    setup_with(conf, mem);
    cr_assert_eq(drv_ctx_get_current(&b->ctx), CUDA_SUCCESS);
    pthread_create(t, NULL, hoard, b);
    while (atomic_load(&b->stage) != 1)
        usleep(1000);
    cr_assert_eq(b->r, CUDA_SUCCESS);
    cr_assert_gt(heap_find(0)->held, 0, "B holds no region: the test proves nothing");
}

static void hoarder_end(struct hoarder *b, pthread_t t)
{
    atomic_store(&b->stage, 2);
    pthread_join(t, NULL);
}

static void large_request_beside_hoarder(const char *conf)
{
    struct hoarder b = {0};
    pthread_t t;
    hoarder_begin(conf, "128M", &b, &t);
    CUdeviceptr p = 0;
    CUresult r = heap_alloc(0, 100 * FL_MiB, NULL, HEAP_SYNC, &p);
    hoarder_end(&b, t);
    cr_assert_eq(r, CUDA_SUCCESS, "100 MiB failed while B's regions hold its frees");
    ht_free(p, NULL, HEAP_SYNC);
}

Test(review4, another_threads_device_wide_regions_do_not_fail_a_request)
{
    large_request_beside_hoarder(CLASSIC);
}

Test(review4, another_threads_device_wide_regions_do_not_fail_a_request_expandable)
{
    large_request_beside_hoarder(EXPANDABLE);
}

static void empty_cache_beside_hoarder(const char *conf)
{
    struct hoarder b = {0};
    pthread_t t;
    hoarder_begin(conf, "1G", &b, &t);
    size_t released = 0;
    cr_assert_eq(heap_empty_cache(-1, &released), CUDA_SUCCESS);
    fragless_stats_t st = ht_stats(0);
    hoarder_end(&b, t);
    cr_assert_eq(st.reserved_bytes.current, 0, "%llu bytes kept",
                 (unsigned long long)st.reserved_bytes.current);
    cr_assert_eq(heap_find(0)->held, 0);
}

Test(review4, empty_cache_takes_back_another_threads_device_wide_regions)
{
    empty_cache_beside_hoarder(CLASSIC);
}

Test(review4, empty_cache_takes_back_another_threads_device_wide_regions_expandable)
{
    empty_cache_beside_hoarder(EXPANDABLE);
}

/* ---- fork while another thread carves device-wide blocks ---- */

static volatile int hammering;

static void *dw_hammer(void *arg)
{
    drv_ctx_set_current((CUcontext)arg);
    CUdeviceptr ring[4] = {0};
    for (int i = 0; hammering; i++) {
        if (ring[i % 4])
            heap_free(ring[i % 4], NULL, HEAP_SYNC, NULL);
        ring[i % 4] = 0;
        heap_alloc(0, (i % 3) ? 4096 : 3 * FL_MiB, NULL, HEAP_SYNC, &ring[i % 4]);
    }
    for (int i = 0; i < 4; i++)
        if (ring[i])
            heap_free(ring[i], NULL, HEAP_SYNC, NULL);
    return NULL;
}

Test(review4, fork_child_is_valid_with_another_threads_device_wide_regions)
{
    setup_with(CLASSIC, "1G");
    pthread_atfork(heap_atfork_prepare, heap_atfork_parent, heap_atfork_child);
    ht_free(ht_alloc(10000, NULL, HEAP_SYNC), NULL, HEAP_SYNC);
    CUdeviceptr p = ht_alloc(10000, NULL, HEAP_SYNC); /* carved from a region */
    cr_assert_gt(heap_find(0)->held, 0);
    CUcontext ctx;
    cr_assert_eq(drv_ctx_get_current(&ctx), CUDA_SUCCESS);
    hammering = 1;
    pthread_t t;
    pthread_create(&t, NULL, dw_hammer, ctx);
    for (int i = 0; i < 20; i++) {
        pid_t pid = fork();
        if (pid == 0) { /* no CUDA in the child: the heap's state and locks only */
            CUdeviceptr base = 0;
            bool ok = heap_lookup(p + 1, &base, NULL, NULL) && base == p && heap_is_valid() &&
                      heap_free(p, NULL, HEAP_SYNC, NULL) == CUDA_SUCCESS && heap_is_valid();
            _exit(ok ? 0 : 1);
        }
        int status = ht_reap(pid);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child %d: status %d", i, status);
    }
    hammering = 0;
    pthread_join(t, NULL);
    ht_free(p, NULL, HEAP_SYNC);
    cr_assert(heap_is_valid());
}

/* ---- statistics of device-wide steps ---- */

struct op {
    int slot;
    size_t size; /* 0: free the slot */
};

#define SLOTS 8

struct model {
    CUdeviceptr p[SLOTS];
    size_t size[SLOTS];
    int64_t allocated, requested, peak_allocated, peak_requested, peak_unallocated;
};

static int64_t max64(int64_t a, int64_t b)
{
    return a > b ? a : b;
}

static void step(struct model *m, struct op o)
{
    size_t r = size_round(o.size ? o.size : m->size[o.slot], config_get());
    if (o.size) {
        m->p[o.slot] = ht_alloc(o.size, NULL, HEAP_SYNC);
        m->size[o.slot] = o.size;
        m->allocated += (int64_t)r;
        m->requested += (int64_t)o.size;
    } else {
        ht_free(m->p[o.slot], NULL, HEAP_SYNC);
        m->allocated -= (int64_t)r;
        m->requested -= (int64_t)m->size[o.slot];
    }
    m->peak_allocated = max64(m->peak_allocated, m->allocated);
    m->peak_requested = max64(m->peak_requested, m->requested);
}

/* Regions of both pools, set aside while their frees wait, 64 MiB of pending frees (the
 * thread's own sync), a 40 MiB request the heap serves. */
static const struct op dseq[] = {
    {0, 4096},        {1, 2 * FL_MiB},  {2, 512},         {3, 6 * FL_MiB},  {4, 3000},
    {1, 0},           {5, 65536},       {4, 0},           {6, FL_MiB},      {7, 8 * FL_MiB},
    {3, 0},           {1, 2 * FL_MiB},  {2, 0},           {0, 0},           {4, 700},
    {3, 32 * FL_MiB}, {5, 0},           {6, 0},           {7, 0},           {1, 0},
    {3, 0},           {4, 0},           {0, 30 * FL_MiB}, {0, 0},           {1, 30 * FL_MiB},
    {1, 0},           {2, 30 * FL_MiB}, {2, 0},           {3, 30 * FL_MiB}, {3, 0},
    {0, 30 * FL_MiB}, {0, 0},           {1, 30 * FL_MiB}, {1, 0},           {0, 4096},
    {1, 4096},        {0, 0},           {2, 40 * FL_MiB}, {1, 0},           {2, 0},
};

Test(review4, device_wide_stats_exact_after_every_step)
{
    setup_with(CLASSIC, "1G");
    struct model m = {0};
    int regions = 0;
    for (size_t i = 0; i < sizeof dseq / sizeof *dseq; i++) {
        step(&m, dseq[i]);
        fragless_stats_t st = ht_stats(0);
        int64_t reserved = (int64_t)st.reserved_bytes.current;
        m.peak_unallocated = max64(m.peak_unallocated, reserved - m.allocated);
        regions = heap_find(0)->held > regions ? heap_find(0)->held : regions;
        cr_assert_eq(st.allocated_bytes.current, (uint64_t)m.allocated, "step %zu", i);
        cr_assert_eq(st.requested_bytes.current, (uint64_t)m.requested, "step %zu", i);
        cr_assert_eq(st.allocated_bytes.peak, (uint64_t)m.peak_allocated, "step %zu", i);
        cr_assert_eq(st.requested_bytes.peak, (uint64_t)m.peak_requested, "step %zu", i);
        cr_assert_eq(st.reserved_unallocated_bytes.current, (uint64_t)(reserved - m.allocated));
        cr_assert_eq(st.reserved_unallocated_bytes.peak, (uint64_t)m.peak_unallocated, "step %zu",
                     i);
        cr_assert_geq(st.blocks.peak, st.blocks.current);
    }
    cr_assert_gt(regions, 1, "no region carved: the test proves nothing about fronts");
}

/* ---- thread exit ---- */

struct exiter {
    CUcontext ctx;
    CUstream w;
    CUdeviceptr freed[8], kept;
    CUevent landed;
};

static size_t exiter_size(int i)
{
    return i % 2 ? 2 * FL_MiB : 64 * 1024;
}

/* Carves 8 device-wide blocks, has w write them (landing in 400 ms), frees them, exits. */
static void *exiter(void *arg)
{
    struct exiter *x = arg;
    drv_ctx_set_current(x->ctx);
    for (int i = 0; i < 8; i++) {
        x->freed[i] = ht_alloc(exiter_size(i), NULL, HEAP_SYNC);
        ht_fill(x->w, x->freed[i], 0xee, 4096, i ? 0 : 400000);
    }
    x->kept = ht_alloc(2 * FL_MiB, NULL, HEAP_SYNC);
    drv_event_create(&x->landed, CU_EVENT_DISABLE_TIMING);
    drv_event_record(x->landed, x->w);
    for (int i = 0; i < 8; i++)
        heap_free(x->freed[i], NULL, HEAP_SYNC, NULL);
    return NULL;
}

Test(review4, exited_threads_device_wide_frees_wait_for_their_work)
{
    setup_with(CLASSIC, "1G");
    struct exiter x = {.w = ht_stream()};
    cr_assert_eq(drv_ctx_get_current(&x.ctx), CUDA_SUCCESS);
    ht_free(ht_alloc(4096, NULL, HEAP_SYNC), NULL, HEAP_SYNC); /* cached: regions next */
    ht_free(ht_alloc(2 * FL_MiB, NULL, HEAP_SYNC), NULL, HEAP_SYNC);
    pthread_t t;
    pthread_create(&t, NULL, exiter, &x);
    pthread_join(t, NULL);
    cr_assert_eq(heap_find(0)->held, 0, "the exited thread holds regions");
    CUdeviceptr y[16];
    for (int i = 0; i < 16; i++) {
        y[i] = ht_alloc(exiter_size(i), NULL, HEAP_SYNC);
        for (int j = 0; j < 8; j++)
            cr_assert(!ht_overlap(y[i], exiter_size(i), x.freed[j], exiter_size(j)),
                      "the exited thread's pending free handed out while its work runs");
    }
    cr_assert_eq(drv_event_query(x.landed), CUDA_ERROR_NOT_READY, "landed: proves nothing");
    fragless_stats_t st = ht_stats(0);
    cr_assert_eq(st.allocated_bytes.current, 2 * FL_MiB + 8 * (2 * FL_MiB + 64 * 1024));
    ht_free(x.kept, NULL, HEAP_SYNC);
    for (int i = 0; i < 16; i++)
        ht_free(y[i], NULL, HEAP_SYNC);
    cr_assert_eq(ht_faults(), 0);
    cr_assert(heap_is_valid());
}

/* ---- finding 1: pending frees held beyond one batch ---- */

/* A plain loop keeping 3 blocks of 2 MiB live: the reserved peak. A sync-per-free allocator
 * reserves the 6 MiB live; the batch lets pending frees hold 64 MiB more. */
static uint64_t plain_loop_reserved_peak(const char *conf)
{
    setup_with(conf, "4G");
    CUstream s = ht_stream();
    CUdeviceptr ring[3] = {0};
    for (int i = 0; i < 1500; i++) {
        CUdeviceptr p = ht_alloc(2 * FL_MiB, NULL, HEAP_SYNC);
        ht_fill(s, p, i & 0xff, 512, 20);
        if (ring[i % 3])
            ht_free(ring[i % 3], NULL, HEAP_SYNC);
        ring[i % 3] = p;
    }
    for (int i = 0; i < 3; i++)
        ht_free(ring[i], NULL, HEAP_SYNC);
    return ht_stats(0).reserved_bytes.peak;
}

/* 64 MiB batch + 6 MiB live + 26 MiB of slack (page and segment granularity). */
#define PLAIN_LOOP_BOUND (96 * FL_MiB)

Test(review4, plain_loop_pending_held_within_one_batch_without_fronts)
{
    uint64_t peak = plain_loop_reserved_peak(EXPANDABLE NO_FRONTS);
    cr_assert_leq(peak, PLAIN_LOOP_BOUND, "reserved peak %llu MiB", (unsigned long long)peak >> 20);
}

/* Finding 1 (front.c:536 sync_if_pays, reuse.c:188 reuse_sync_pays): a thread's regions and
 * the heap each hold pending device-wide frees up to their own 64 MiB batch (set-aside regions
 * give theirs to the heap's list, which syncs only on a heap miss), so the plain loop's
 * reserved peak is 168-184 MiB with expandable segments (72 MiB with thread_cache:false). */
Test(review4, plain_loop_pending_held_within_one_batch)
{
    uint64_t peak = plain_loop_reserved_peak(EXPANDABLE);
    cr_assert_leq(peak, PLAIN_LOOP_BOUND, "reserved peak %llu MiB", (unsigned long long)peak >> 20);
}

/* ---- finding 2: the thread's batched sync holds its front lock ---- */

static CUstream long_s;       /* busy for 1 s: the sync lasts that long */
static uint64_t syncs_before; /* cuCtxSynchronize calls before the sync */
static CUcontext main_ctx;

static void wait_for_the_sync(void)
{
    while (ht_calls("cuCtxSynchronize") == syncs_before)
        usleep(1000);
    usleep(20000); /* the syncing thread is inside cuCtxSynchronize */
}

/* 160 MiB ready in the global index, then device-wide 2 MiB pairs until one makes a device
 * sync (the thread's own with fronts, the heap's without), with long_s busy for 1 s. */
static void pairs_until_a_sync(void)
{
    CUdeviceptr big = ht_alloc(200 * FL_MiB, NULL, HEAP_SYNC);
    ht_free(big, NULL, HEAP_SYNC);
    CUdeviceptr mid = ht_alloc(40 * FL_MiB, NULL, HEAP_SYNC); /* the heap syncs */
    ht_free(mid, NULL, HEAP_SYNC);
    uint64_t s0 = ht_calls("cuCtxSynchronize");
    ht_work(long_s, 1000000);
    syncs_before = s0;
}

static void run_pairs(void)
{
    for (int n = 0; n < 200 && ht_calls("cuCtxSynchronize") == syncs_before; n++)
        ht_free(ht_alloc(2 * FL_MiB, NULL, HEAP_SYNC), NULL, HEAP_SYNC);
    cr_assert_neq(ht_calls("cuCtxSynchronize"), syncs_before, "no sync: proves nothing");
}

static CUdeviceptr victim;
static atomic_int looked = -1; /* 1: the look-up returned only after the synced work */

static void *looker(void *arg)
{
    (void)arg;
    drv_ctx_set_current(main_ctx);
    wait_for_the_sync();
    CUdeviceptr base = 0;
    bool found = heap_lookup(victim, &base, NULL, NULL);
    atomic_store(&looked, !found || stream_query(long_s) == CUDA_SUCCESS);
    return NULL;
}

static void lookup_during_a_sync(const char *conf)
{
    setup_with(conf, "1G");
    cr_assert_eq(drv_ctx_get_current(&main_ctx), CUDA_SUCCESS);
    long_s = ht_stream();
    pairs_until_a_sync();
    victim = ht_alloc(2 * FL_MiB, NULL, HEAP_SYNC); /* a region's with fronts */
    pthread_t t;
    pthread_create(&t, NULL, looker, NULL);
    run_pairs();
    pthread_join(t, NULL);
    cr_assert_eq(atomic_load(&looked), 0, "another thread's look-up waited for the device sync");
    ht_free(victim, NULL, HEAP_SYNC);
}

Test(review4, lookup_during_a_heap_sync_does_not_wait_without_fronts)
{
    lookup_during_a_sync(CLASSIC NO_FRONTS);
}

/* Finding 2 (front.c:543-545 sync_if_pays): the thread makes its batched sync holding its
 * front lock, so every other thread that looks up or frees one of its blocks (cudaFreeAsync,
 * cuMemGetAddressRange, cudaPointerGetAttributes) or takes regions back waits for the whole
 * device sync. */
Test(review4, lookup_during_a_fronts_sync_does_not_wait)
{
    lookup_during_a_sync(CLASSIC);
}

static atomic_int dev1_ready, dev1_waited = -1;

/* Device 1's thread: a region there, then a 40 MiB request (a heap miss: front_reclaim)
 * while device 0's thread syncs. */
static void *dev1_thread(void *arg)
{
    (void)arg;
    CUcontext c1;
    CUdeviceptr a = 0, b = 0, big = 0;
    bool ok = drv_primary_ctx_retain(&c1, 1) == CUDA_SUCCESS &&
              drv_ctx_set_current(c1) == CUDA_SUCCESS &&
              heap_alloc(1, 2 * FL_MiB, NULL, HEAP_SYNC, &a) == CUDA_SUCCESS &&
              heap_alloc(1, 2 * FL_MiB, NULL, HEAP_SYNC, &b) == CUDA_SUCCESS;
    atomic_store(&dev1_ready, ok ? 1 : -1);
    if (!ok)
        return NULL;
    wait_for_the_sync();
    ok = heap_alloc(1, 40 * FL_MiB, NULL, HEAP_SYNC, &big) == CUDA_SUCCESS;
    atomic_store(&dev1_waited, !ok || stream_query(long_s) == CUDA_SUCCESS);
    heap_free(big, NULL, HEAP_SYNC, NULL);
    heap_free(b, NULL, HEAP_SYNC, NULL);
    heap_free(a, NULL, HEAP_SYNC, NULL);
    drv_primary_ctx_release(1);
    return NULL;
}

static void device1_during_device0_sync(const char *conf)
{
    setenv("FRAGLESS_EMU_DEVICES", "2", 1);
    setup_with(conf, "1G");
    long_s = ht_stream();
    pairs_until_a_sync();
    pthread_t t;
    pthread_create(&t, NULL, dev1_thread, NULL);
    while (!atomic_load(&dev1_ready))
        usleep(1000);
    cr_assert_eq(atomic_load(&dev1_ready), 1);
    run_pairs();
    pthread_join(t, NULL);
    cr_assert_eq(atomic_load(&dev1_waited), 0, "device 1's allocation waited for device 0's sync");
}

Test(review4, device1_allocation_during_device0_heap_sync_does_not_wait_without_fronts)
{
    device1_during_device0_sync(CLASSIC NO_FRONTS);
}

/* Finding 2 also couples devices: front_reclaim (device 1's heap miss) takes every front's
 * lock, also that of a thread syncing device 0 under it (front.c:762). */
Test(review4, device1_allocation_during_device0_fronts_sync_does_not_wait)
{
    device1_during_device0_sync(CLASSIC);
}
