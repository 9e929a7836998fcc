/*
 * test_heap_threads.c — the heap's API used by several threads, black-box, on the emulated
 * device: blocks freed, looked up and counted by another thread than the one that allocated
 * them (also after it exited); rule 1 across threads; statistics exact from any thread;
 * empty-cache, the OOM path and stream destroy reaching memory another thread still caches;
 * a storm with cross-thread frees; the driver refusing allocations while two threads work.
 * Written against the observable contract of a per-thread front end (docs/frontend.md): each
 * test holds with or without one, and the comment above it names the front-end bug it catches.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>

#include "heapfaults.h" /* spec_calls; includes heaptest.h */

#define EXPANDABLE "expandable_segments:true,page_size_mb:2"
#define FILL_US    300000 /* simulated work before a fill lands: outlives a probe's allocations */

/* A device of this test's own with the segment kind `conf`, and what FRAGLESS_CONF says if it
 * is set (to run the suite with other settings, e.g. FRAGLESS_CONF=thread_cache:false). */
static void setup_kind(const char *conf, const char *mem)
{
    const char *more = getenv("FRAGLESS_CONF");
    char all[512];
    snprintf(all, sizeof all, "%s%s%s", conf, more && *more ? "," : "", more ? more : "");
    setenv("FRAGLESS_CONF", all, 1);
    ht_setup(mem);
}

/* Test `name` (a function) on classic segments, and as name_expandable on expandable ones,
 * on a device of `mem` bytes. */
#define BOTH_KINDS(name, mem)                       \
    Test(threads, name, .timeout = 60)              \
    {                                               \
        setup_kind(HT_SEGMENTS, mem);               \
        name();                                     \
    }                                               \
    Test(threads, name##_expandable, .timeout = 60) \
    {                                               \
        setup_kind(EXPANDABLE, mem);                \
        name();                                     \
    }

/* Every thread done with the device: empty-cache returns everything, the streams go, and the
 * emulated device saw no fault and holds nothing. */
static void end_clean(CUstream *streams, int n)
{
    size_t released;
    cr_assert_eq(heap_empty_cache(-1, &released), CUDA_SUCCESS);
    cr_assert_eq(ht_stats(0).reserved_bytes.current, 0);
    for (int i = 0; i < n; i++)
        ht_stream_destroy(streams[i]);
    cr_assert_eq(ht_faults(), 0, "a fill wrote memory given back to the driver");
    cr_assert_eq(ht_audit(), 0, "leak audit");
}

/* The bytes a block of `size` adds to allocated_bytes: the sizes below are small-pool ones
 * (blocks exactly rounded) or multiples of 2 MiB (large free blocks are then multiples of
 * 2 MiB too, always split exactly). */
static size_t rounded(size_t size)
{
    return size_round(size, config_get());
}

/* ---- errors seen on threads that run on their own (Criterion asserts only on the test's
 *      thread): the first is kept, the test's thread asserts none happened ---- */

static pthread_mutex_t errors_lock = PTHREAD_MUTEX_INITIALIZER;
static int errors;
static char first_error[256];

#define THREAD_ERROR(...)                                           \
    do {                                                            \
        pthread_mutex_lock(&errors_lock);                           \
        if (!errors++)                                              \
            snprintf(first_error, sizeof first_error, __VA_ARGS__); \
        pthread_mutex_unlock(&errors_lock);                         \
    } while (0)

static void assert_no_thread_errors(void)
{
    pthread_mutex_lock(&errors_lock);
    int n = errors;
    pthread_mutex_unlock(&errors_lock);
    cr_assert_eq(n, 0, "%d errors on other threads, first: %s", n, first_error);
}

/* ---- workers: threads that stay alive (so their caches stay theirs) and run the calls the
 *      test's thread gives them, one at a time, while it waits ---- */

struct worker {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    void (*job)(void *);
    void *arg;
    bool quit;
    CUcontext ctx;
};

static void *worker_loop(void *arg)
{
    struct worker *w = arg;
    drv_ctx_set_current(w->ctx);
    pthread_mutex_lock(&w->lock);
    while (!w->quit) {
        if (!w->job) {
            pthread_cond_wait(&w->cond, &w->lock);
            continue;
        }
        void (*job)(void *) = w->job;
        void *job_arg = w->arg;
        pthread_mutex_unlock(&w->lock);
        job(job_arg);
        pthread_mutex_lock(&w->lock);
        w->job = NULL;
        pthread_cond_broadcast(&w->cond);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

static void worker_start(struct worker *w)
{
    *w = (struct worker){0};
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    cr_assert_eq(drv_ctx_get_current(&w->ctx), CUDA_SUCCESS);
    cr_assert_eq(pthread_create(&w->thread, NULL, worker_loop, w), 0);
}

/* Runs job(arg) on w's thread and returns when it is done. */
static void worker_run(struct worker *w, void (*job)(void *), void *arg)
{
    pthread_mutex_lock(&w->lock);
    w->job = job;
    w->arg = arg;
    pthread_cond_broadcast(&w->cond);
    while (w->job)
        pthread_cond_wait(&w->cond, &w->lock);
    pthread_mutex_unlock(&w->lock);
}

/* Ends w's thread (its exit is a thread exit for the heap), if it still runs. */
static void worker_stop(struct worker *w)
{
    if (w->quit)
        return;
    pthread_mutex_lock(&w->lock);
    w->quit = true;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->thread, NULL);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->cond);
}

/* One heap call made on some thread; its results are asserted on the test's thread. */
enum call_kind { CALL_ALLOC, CALL_FREE, CALL_LOOKUP, CALL_FILL };

struct call {
    enum call_kind kind;
    size_t size;
    CUstream stream;
    enum heap_mode mode;
    CUdeviceptr p;
    CUresult r;
    bool foreign;
    bool found;
    CUdeviceptr base;
    size_t found_size;
    int device;
};

static int (*emu_fill)(CUstream, CUdeviceptr, int, size_t, uint64_t);

static void call_run(void *arg)
{
    struct call *c = arg;
    switch (c->kind) {
    case CALL_ALLOC:
        c->r = heap_alloc(0, c->size, c->stream, c->mode, &c->p);
        break;
    case CALL_FREE:
        c->foreign = true;
        c->r = heap_free(c->p, c->stream, c->mode, &c->foreign);
        break;
    case CALL_LOOKUP:
        c->found = heap_lookup(c->p, &c->base, &c->found_size, &c->device);
        break;
    case CALL_FILL:
        c->r = (CUresult)emu_fill(c->stream, c->p, 0xab, c->size, FILL_US);
        break;
    }
}

/* Runs c on w's thread, or on this one when w is NULL. */
static void call_on(struct worker *w, struct call *c)
{
    if (w)
        worker_run(w, call_run, c);
    else
        call_run(c);
}

static CUdeviceptr w_alloc(struct worker *w, size_t size, CUstream s, enum heap_mode mode)
{
    struct call c = {.kind = CALL_ALLOC, .size = size, .stream = s, .mode = mode};
    call_on(w, &c);
    cr_assert_eq(c.r, CUDA_SUCCESS, "heap_alloc(%zu) = %d", size, (int)c.r);
    cr_assert_neq(c.p, 0);
    return c.p;
}

static void w_free(struct worker *w, CUdeviceptr p, CUstream s, enum heap_mode mode)
{
    struct call c = {.kind = CALL_FREE, .p = p, .stream = s, .mode = mode};
    call_on(w, &c);
    cr_assert_eq(c.r, CUDA_SUCCESS, "heap_free(%#llx) = %d", (unsigned long long)p, (int)c.r);
    cr_assert(!c.foreign, "heap_free(%#llx): foreign", (unsigned long long)p);
}

/* A fill of n bytes at p on s, landing FILL_US from now (on w's thread: its per-thread
 * default stream is its own). */
static void w_fill(struct worker *w, CUstream s, CUdeviceptr p, size_t n)
{
    if (!emu_fill)
        emu_fill = (int (*)(CUstream, CUdeviceptr, int, size_t, uint64_t))(uintptr_t)ht_sym(
            "fragless_emu_stream_fill");
    struct call c = {.kind = CALL_FILL, .p = p, .size = n, .stream = s};
    call_on(w, &c);
    cr_assert_eq(c.r, CUDA_SUCCESS);
}

/* An event recorded on s now. */
static CUevent event_record(CUstream s)
{
    CUresult (*create)(CUevent *, unsigned) =
        (CUresult(*)(CUevent *, unsigned))(uintptr_t)ht_sym("cuEventCreate");
    CUresult (*record)(CUevent, CUstream) =
        (CUresult(*)(CUevent, CUstream))(uintptr_t)ht_sym("cuEventRecord");
    CUevent e;
    cr_assert_eq(create(&e, CU_EVENT_DISABLE_TIMING), CUDA_SUCCESS);
    cr_assert_eq(record(e, s), CUDA_SUCCESS);
    return e;
}

/* Waits for event e and destroys it. */
static void event_wait(CUevent e)
{
    CUresult (*sync)(CUevent) = (CUresult(*)(CUevent))(uintptr_t)ht_sym("cuEventSynchronize");
    CUresult (*destroy)(CUevent) = (CUresult(*)(CUevent))(uintptr_t)ht_sym("cuEventDestroy_v2");
    cr_assert_eq(sync(e), CUDA_SUCCESS);
    cr_assert_eq(destroy(e), CUDA_SUCCESS);
}

/* Asserts that heap_lookup(p) on w's thread finds the live block base+size of device 0. */
static void assert_lookup(struct worker *w, CUdeviceptr p, CUdeviceptr base, size_t size)
{
    struct call c = {.kind = CALL_LOOKUP, .p = p};
    call_on(w, &c);
    cr_assert(c.found, "lookup of %#llx (block %#llx+%zu) failed", (unsigned long long)p,
              (unsigned long long)base, size);
    cr_assert_eq(c.base, base);
    cr_assert_eq(c.found_size, size);
    cr_assert_eq(c.device, 0);
}

static bool lookup_finds(struct worker *w, CUdeviceptr p, CUdeviceptr *base)
{
    struct call c = {.kind = CALL_LOOKUP, .p = p};
    call_on(w, &c);
    *base = c.base;
    return c.found;
}

/* ---- probes: blocks taken while a fill may still be in flight on a freed block, each
 *      written with its own byte; a probe given the freed block too early has its bytes
 *      overwritten when the fill lands ---- */

#define PROBES 2
#define BLK    ((size_t)65536) /* the blocks rule 1 is tested on: many fit in a small segment */

struct probe {
    CUdeviceptr p[PROBES];
    unsigned char tag;
    CUstream stream;
    enum heap_mode mode;
    struct worker *w;
};

/* Where probes allocate: on w's thread (NULL: the test's), on stream s, in mode. */
struct probe_at {
    struct worker *w;
    CUstream s;
    enum heap_mode mode;
};

/* Takes PROBES blocks of 1 MiB at each of the n places, place i's written with tag0 + i. */
static void probes_take(struct probe *pr, const struct probe_at *at, int n, unsigned char tag0)
{
    for (int i = 0; i < n; i++) {
        pr[i] = (struct probe){
            .tag = (unsigned char)(tag0 + i), .stream = at[i].s, .mode = at[i].mode, .w = at[i].w};
        for (int k = 0; k < PROBES; k++) {
            pr[i].p[k] = w_alloc(at[i].w, BLK, at[i].s, at[i].mode);
            memset((void *)(uintptr_t)pr[i].p[k], pr[i].tag, BLK);
        }
    }
}

/* After the fills landed: every probe's bytes are its own; then frees them. */
static void probes_check(struct probe *pr, int n)
{
    for (int i = 0; i < n; i++)
        for (int k = 0; k < PROBES; k++) {
            const unsigned char *c = (const unsigned char *)(uintptr_t)pr[i].p[k];
            for (size_t j = 0; j < BLK; j++)
                cr_assert_eq(c[j], pr[i].tag,
                             "probe %#llx (tag %#x) byte %zu overwritten: handed out while a "
                             "fill issued before a free could still write it",
                             (unsigned long long)pr[i].p[k], pr[i].tag, j);
            w_free(pr[i].w, pr[i].p[k], pr[i].stream, pr[i].mode);
        }
}

/* Two workers and three streams on a device of the test's own (classic segments). */
struct scene {
    struct worker a, b;
    CUstream s, t, u;
    CUdeviceptr warm; /* a block warm_up left live */
};

/* The cache warm, as in a program past its first steps (a thread cache builds its regions
 * from cached memory): 8 MiB of small-pool and 60 MiB of large-pool blocks freed on a stream of
 * their own, then made reusable everywhere by a request on another stream that misses (its
 * look at the other streams' frees finds their work done). */
static CUdeviceptr warm_up(void)
{
    CUstream w = ht_stream();
    CUdeviceptr p[11];
    for (int i = 0; i < 11; i++)
        p[i] = ht_alloc(i < 8 ? FL_MiB : 20 * FL_MiB, w, HEAP_ASYNC);
    for (int i = 0; i < 11; i++)
        ht_free(p[i], w, HEAP_ASYNC);
    CUdeviceptr keep = ht_alloc(512, NULL, HEAP_SYNC);
    heap_stream_destroyed(w);
    ht_stream_destroy(w);
    return keep;
}

static void scene_start(struct scene *x)
{
    setup_kind(HT_SEGMENTS, "1G");
    x->s = ht_stream();
    x->t = ht_stream();
    x->u = ht_stream();
    x->warm = warm_up();
    worker_start(&x->a);
    worker_start(&x->b);
}

static void scene_end(struct scene *x)
{
    cr_assert_eq(ht_faults(), 0, "a fill wrote memory given back to the driver");
    cr_assert(heap_is_valid());
    worker_stop(&x->a);
    worker_stop(&x->b);
    ht_free(x->warm, NULL, HEAP_SYNC);
}

/* Mixed sizes (small ones rounded, large ones multiples of 2 MiB). */
static const size_t mix[] = {512, 3000, 65536, FL_MiB, 2 * FL_MiB, 700, 6 * FL_MiB, 8 * FL_MiB};
#define NMIX (sizeof mix / sizeof mix[0])

/* ---- remote frees ---- */

/* A frees B's blocks: a remote free lost, filed in the wrong thread's cache or counted twice
 * shows as statistics that do not come back to zero, memory empty-cache cannot return while
 * both threads live, or a leak in the emulated device's audit. */
static void remote_free_returns_everything(void)
{
    CUstream s = ht_stream(), t = ht_stream();
    struct worker a, b;
    worker_start(&a);
    worker_start(&b);
    enum { N = 24 };
    CUdeviceptr p[N];
    size_t alloc_sum = 0, req_sum = 0;
    for (int i = 0; i < N; i++) {
        size_t n = mix[i % NMIX];
        CUstream st = i % 3 == 0 ? NULL : i % 3 == 1 ? s : CU_STREAM_PER_THREAD;
        p[i] = w_alloc(&a, n, st, i % 3 == 0 ? HEAP_SYNC : HEAP_ASYNC);
        alloc_sum += rounded(n);
        req_sum += n;
    }
    fragless_stats_t st = ht_stats(0);
    cr_assert_eq(st.allocated_bytes.current, alloc_sum);
    cr_assert_eq(st.requested_bytes.current, req_sum);
    for (int i = 0; i < N; i++) {
        int how = (i / 3) % 3;
        w_free(&b, p[i], how == 0 ? NULL : how == 1 ? s : t, how == 0 ? HEAP_SYNC : HEAP_ASYNC);
    }
    cr_assert(heap_is_valid());
    st = ht_stats(0);
    cr_assert_eq(st.allocated_bytes.current, 0);
    cr_assert_eq(st.requested_bytes.current, 0);
    cr_assert_eq(st.num_allocs, N);
    cr_assert_eq(st.num_frees, N);
    /* both threads alive: whatever they cache must go back */
    size_t released = 0;
    cr_assert_eq(heap_empty_cache(-1, &released), CUDA_SUCCESS);
    st = ht_stats(0);
    cr_assert_eq(st.reserved_bytes.current, 0, "%llu bytes still reserved",
                 (unsigned long long)st.reserved_bytes.current);
    cr_assert_eq(st.active_bytes.current, 0);
    /* the heap works on: A's blocks again, freed by B on A's stream */
    for (int i = 0; i < N; i++)
        p[i] = w_alloc(&a, mix[i % NMIX], s, HEAP_ASYNC);
    for (int i = 0; i < N; i++)
        w_free(&b, p[i], s, HEAP_ASYNC);
    cr_assert(heap_is_valid());
    cr_assert_eq(ht_stats(0).allocated_bytes.current, 0);
    worker_stop(&a);
    worker_stop(&b);
    end_clean((CUstream[]){s, t}, 2);
}

BOTH_KINDS(remote_free_returns_everything, "1G")

/* ---- rule 1 across threads ---- */

#define MAX_PLACES 8

/* A allocates 1 MiB on s; a fill on `fill` writes it; B frees it (on free_s in mode); then
 * probes at every place of `at`, checked once the fill landed. */
static void remote_free_then_probe(struct scene *x, CUstream fill, CUstream free_s,
                                   enum heap_mode mode, const struct probe_at *at, int n)
{
    struct probe pr[MAX_PLACES];
    cr_assert_leq(n, MAX_PLACES);
    CUdeviceptr p = w_alloc(&x->a, BLK, x->s, HEAP_ASYNC);
    w_fill(NULL, fill, p, BLK);
    w_free(&x->b, p, free_s, mode);
    probes_take(pr, at, n, 0x11);
    cr_assert_eq(drv_stream_synchronize(fill), CUDA_SUCCESS);
    probes_check(pr, n);
    scene_end(x);
}

/* B frees A's block on S while a fill runs on S: a front end that files a remote
 * stream-ordered free in a region not keyed by S (B's current one, or A's of another stream),
 * or makes it reusable by plain allocations, hands it out before the fill landed. */
Test(threads, remote_stream_free_is_reused_elsewhere_only_after_its_work, .timeout = 60)
{
    struct scene x;
    scene_start(&x);
    const struct probe_at at[] = {{&x.a, x.t, HEAP_ASYNC},
                                  {&x.a, NULL, HEAP_SYNC},
                                  {&x.b, x.t, HEAP_ASYNC},
                                  {&x.b, NULL, HEAP_SYNC},
                                  {NULL, CU_STREAM_PER_THREAD, HEAP_ASYNC}};
    remote_free_then_probe(&x, x.s, x.s, HEAP_ASYNC, at, 5);
}

/* B frees A's stream-ordered block with cudaFree while another stream's fill writes it: a
 * remote plain free drained into A's region for S (reused at once on S) or into B's cache
 * breaks rule 1's device-sync promise. */
Test(threads, remote_plain_free_waits_for_a_device_sync, .timeout = 60)
{
    struct scene x;
    scene_start(&x);
    const struct probe_at at[] = {{&x.a, x.s, HEAP_ASYNC}, {&x.a, NULL, HEAP_SYNC},
                                  {&x.b, x.s, HEAP_ASYNC}, {&x.b, NULL, HEAP_SYNC},
                                  {&x.b, x.t, HEAP_ASYNC}, {NULL, x.s, HEAP_ASYNC}};
    remote_free_then_probe(&x, x.u, NULL, HEAP_SYNC, at, 6);
}

/* A allocates 1 MiB on S and 1 MiB on its per-thread stream, a fill writes each, and A frees
 * each on its stream. */
static void own_frees_while_filled(struct scene *x)
{
    CUdeviceptr p = w_alloc(&x->a, BLK, x->s, HEAP_ASYNC);
    w_fill(NULL, x->s, p, BLK);
    w_free(&x->a, p, x->s, HEAP_ASYNC);
    CUdeviceptr q = w_alloc(&x->a, BLK, CU_STREAM_PER_THREAD, HEAP_ASYNC);
    w_fill(&x->a, CU_STREAM_PER_THREAD, q, BLK);
    w_free(&x->a, q, CU_STREAM_PER_THREAD, HEAP_ASYNC);
}

/* A's block on its per-thread stream, freed by B on B's per-thread stream while B's fill
 * writes it: the same handle (CU_STREAM_PER_THREAD) names two streams, so a front end that
 * takes it for A's stream reuses the block on A's stream before the fill landed. */
Test(threads, remote_free_on_another_threads_per_thread_stream, .timeout = 60)
{
    struct scene x;
    scene_start(&x);
    CUdeviceptr p = w_alloc(&x.a, BLK, CU_STREAM_PER_THREAD, HEAP_ASYNC);
    w_fill(&x.b, CU_STREAM_PER_THREAD, p, BLK);
    w_free(&x.b, p, CU_STREAM_PER_THREAD, HEAP_ASYNC);
    const struct probe_at at[] = {{&x.a, CU_STREAM_PER_THREAD, HEAP_ASYNC},
                                  {NULL, CU_STREAM_PER_THREAD, HEAP_ASYNC},
                                  {&x.a, NULL, HEAP_SYNC}};
    struct probe pr[3];
    probes_take(pr, at, 3, 0x71);
    cr_assert_eq(drv_ctx_synchronize(), CUDA_SUCCESS);
    probes_check(pr, 3);
    scene_end(&x);
}

/* A frees its own block on S (LIFO back into its region) while S's fill runs, then on its
 * per-thread stream: other threads, A's other streams, plain allocations, and everyone after
 * an empty-cache returned A's regions, must wait for the work. */
Test(threads, own_stream_free_is_not_reused_by_others_early, .timeout = 60)
{
    struct scene x;
    scene_start(&x);
    own_frees_while_filled(&x);
    const struct probe_at at[] = {{&x.b, x.t, HEAP_ASYNC},
                                  {&x.b, NULL, HEAP_SYNC},
                                  {&x.b, CU_STREAM_PER_THREAD, HEAP_ASYNC},
                                  {&x.a, x.t, HEAP_ASYNC},
                                  {&x.a, NULL, HEAP_SYNC}};
    struct probe pr[7];
    probes_take(pr, at, 5, 0x31);
    size_t released;
    cr_assert_eq(heap_empty_cache(0, &released), CUDA_SUCCESS);
    const struct probe_at after[] = {{&x.b, x.t, HEAP_ASYNC}, {NULL, NULL, HEAP_SYNC}};
    probes_take(pr + 5, after, 2, 0x36);
    cr_assert_eq(drv_ctx_synchronize(), CUDA_SUCCESS);
    probes_check(pr, 7);
    scene_end(&x);
}

/* A's region for S holds a block, and its per-thread stream's another, each freed while a
 * fill writes it, when A exits: a front end that gives an exited thread's regions back as plain
 * free memory, or leaves them to a new thread (glibc gives it the dead one's thread-local storage),
 * hands them out before the fills landed. */
Test(threads, exited_threads_stream_frees_wait_for_their_work, .timeout = 60)
{
    struct scene x;
    scene_start(&x);
    own_frees_while_filled(&x);
    worker_stop(&x.a);
    struct worker c;
    worker_start(&c);
    const struct probe_at at[] = {{&c, CU_STREAM_PER_THREAD, HEAP_ASYNC},
                                  {&c, x.t, HEAP_ASYNC},
                                  {&x.b, x.t, HEAP_ASYNC},
                                  {&x.b, NULL, HEAP_SYNC},
                                  {&x.b, CU_STREAM_PER_THREAD, HEAP_ASYNC},
                                  {NULL, x.u, HEAP_ASYNC}};
    struct probe pr[6];
    probes_take(pr, at, 6, 0x51);
    cr_assert_eq(drv_ctx_synchronize(), CUDA_SUCCESS);
    probes_check(pr, 6);
    worker_stop(&c);
    scene_end(&x);
}

/* A context reset while A's region for S holds p, freed on S while S's fill runs: every
 * stream's frees then wait for a device sync, also on S itself (S may be a new stream with
 * the old handle); a front end that keeps A's region across the reset hands p out on S. */
Test(threads, context_reset_retires_other_threads_stream_frees, .timeout = 60)
{
    struct scene x;
    scene_start(&x);
    CUdeviceptr p = w_alloc(&x.a, BLK, x.s, HEAP_ASYNC);
    w_fill(NULL, x.s, p, BLK);
    w_free(&x.a, p, x.s, HEAP_ASYNC);
    heap_streams_reset(false);
    const struct probe_at at[] = {{&x.a, x.s, HEAP_ASYNC},
                                  {&x.b, x.s, HEAP_ASYNC},
                                  {&x.b, NULL, HEAP_SYNC},
                                  {NULL, x.s, HEAP_ASYNC}};
    struct probe pr[4];
    probes_take(pr, at, 4, 0x61);
    fragless_stats_t st = ht_stats(0);
    cr_assert_geq(st.active_bytes.current, st.allocated_bytes.current + BLK, "p pending");
    cr_assert_eq(drv_stream_synchronize(x.s), CUDA_SUCCESS);
    probes_check(pr, 4);
    scene_end(&x);
}

/* ---- statistics ---- */

struct step {
    int alloc; /* index of the block to allocate, or -1 */
    int free;  /* index of the block to free, or -1 */
    size_t size;
    CUstream stream;
    enum heap_mode mode;
};

/* A allocates and frees while the test's thread reads: a front end that keeps its deltas in
 * the thread (published later, or on its slow path) shows stale currents or peaks. */
static void stats_exact_from_another_thread(void)
{
    CUstream s = ht_stream(), t = ht_stream();
    struct worker a;
    worker_start(&a);
    const struct step steps[] = {
        {0, -1, 1000, NULL, HEAP_SYNC},
        {1, -1, 2 * FL_MiB, s, HEAP_ASYNC},
        {2, -1, 512, s, HEAP_ASYNC},
        {3, -1, 65536, NULL, HEAP_SYNC},
        {-1, 1, 0, s, HEAP_ASYNC},
        {4, -1, 8 * FL_MiB, s, HEAP_ASYNC},
        {-1, 0, 0, NULL, HEAP_SYNC},
        {5, -1, 3000, CU_STREAM_PER_THREAD, HEAP_ASYNC},
        {-1, 2, 0, t, HEAP_ASYNC},
        {-1, 4, 0, s, HEAP_ASYNC},
        {6, -1, 4 * FL_MiB, t, HEAP_ASYNC},
        {7, -1, 700, s, HEAP_ASYNC},
        {-1, 6, 0, t, HEAP_ASYNC},
        {-1, 3, 0, NULL, HEAP_SYNC},
        {-1, 5, 0, CU_STREAM_PER_THREAD, HEAP_ASYNC},
        {-1, 7, 0, NULL, HEAP_SYNC},
    };
    CUdeviceptr p[8] = {0};
    size_t size[8] = {0};
    uint64_t alloc = 0, req = 0, alloc_peak = 0, req_peak = 0, allocs = 0, frees = 0;
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        const struct step *x = &steps[i];
        if (x->alloc >= 0) {
            p[x->alloc] = w_alloc(&a, x->size, x->stream, x->mode);
            size[x->alloc] = x->size;
            alloc += rounded(x->size);
            req += x->size;
            allocs++;
        } else {
            w_free(&a, p[x->free], x->stream, x->mode);
            alloc -= rounded(size[x->free]);
            req -= size[x->free];
            frees++;
        }
        alloc_peak = alloc > alloc_peak ? alloc : alloc_peak;
        req_peak = req > req_peak ? req : req_peak;
        fragless_stats_t st = ht_stats(0);
        cr_assert_eq(st.allocated_bytes.current, alloc, "step %zu", i);
        cr_assert_eq(st.requested_bytes.current, req, "step %zu", i);
        cr_assert_eq(st.allocated_bytes.peak, alloc_peak, "step %zu", i);
        cr_assert_eq(st.requested_bytes.peak, req_peak, "step %zu", i);
        cr_assert_geq(st.active_bytes.current, st.allocated_bytes.current);
        cr_assert_eq(st.num_allocs, allocs);
        cr_assert_eq(st.num_frees, frees);
        cr_assert_eq(st.num_cache_hits + st.num_cache_misses, allocs, "step %zu", i);
        if (i == 6) { /* peaks restart from what is allocated now */
            cr_assert_eq(heap_reset_peaks(0), FRAGLESS_OK);
            alloc_peak = alloc;
            req_peak = req;
            st = ht_stats(0);
            cr_assert_eq(st.allocated_bytes.peak, alloc);
            cr_assert_eq(st.requested_bytes.peak, req);
        }
    }
    cr_assert_eq(alloc, 0);
    worker_stop(&a);
    fragless_stats_t st = ht_stats(0);
    cr_assert_eq(st.allocated_bytes.current, 0);
    cr_assert_eq(st.reserved_unallocated_bytes.current, st.reserved_bytes.current);
    ht_stream_destroy(s);
    ht_stream_destroy(t);
}

BOTH_KINDS(stats_exact_from_another_thread, "1G")

#define PAR_BLOCKS 40

struct par {
    pthread_barrier_t *barrier;
    CUcontext ctx;
    CUstream stream;
    int id;
    size_t alloc_sum, req_sum;   /* of the blocks live at the first barrier */
    size_t half_alloc, half_req; /* of those still live at the second */
    uint64_t allocs, frees;
};

static size_t par_size(int id, int i)
{
    static const size_t sizes[] = {512, 1500, 4096, 100000, FL_MiB, 2 * FL_MiB, 4 * FL_MiB};
    return sizes[(size_t)(i + id) % (sizeof sizes / sizeof sizes[0])];
}

static bool par_alloc(struct par *a, size_t n, CUdeviceptr *p)
{
    CUresult r = heap_alloc(0, n, a->stream, HEAP_ASYNC, p);
    if (r != CUDA_SUCCESS) {
        THREAD_ERROR("thread %d: heap_alloc(%zu) = %d", a->id, n, (int)r);
        return false;
    }
    a->allocs++;
    return true;
}

static void par_free(struct par *a, CUdeviceptr p, enum heap_mode mode)
{
    bool foreign = true;
    CUresult r = heap_free(p, mode == HEAP_ASYNC ? a->stream : NULL, mode, &foreign);
    if (r != CUDA_SUCCESS || foreign)
        THREAD_ERROR("thread %d: heap_free(%#llx) = %d", a->id, (unsigned long long)p, (int)r);
    a->frees++;
}

/* Allocates PAR_BLOCKS blocks, waits; frees every other one, waits; frees the rest, and does
 * some alloc/free pairs. */
static void *par_thread(void *arg)
{
    struct par *a = arg;
    CUdeviceptr p[PAR_BLOCKS] = {0};
    drv_ctx_set_current(a->ctx);
    for (int i = 0; i < PAR_BLOCKS; i++)
        if (par_alloc(a, par_size(a->id, i), &p[i])) {
            a->alloc_sum += rounded(par_size(a->id, i));
            a->req_sum += par_size(a->id, i);
        }
    a->half_alloc = a->alloc_sum;
    a->half_req = a->req_sum;
    pthread_barrier_wait(a->barrier);
    pthread_barrier_wait(a->barrier);
    for (int i = 0; i < PAR_BLOCKS; i += 2)
        if (p[i]) {
            par_free(a, p[i], i % 4 ? HEAP_ASYNC : HEAP_SYNC);
            a->half_alloc -= rounded(par_size(a->id, i));
            a->half_req -= par_size(a->id, i);
        }
    pthread_barrier_wait(a->barrier);
    pthread_barrier_wait(a->barrier);
    for (int i = 1; i < PAR_BLOCKS; i += 2)
        if (p[i])
            par_free(a, p[i], i % 3 ? HEAP_ASYNC : HEAP_SYNC);
    for (int i = 0; i < 100; i++) {
        CUdeviceptr q;
        if (par_alloc(a, par_size(a->id, i), &q))
            par_free(a, q, HEAP_ASYNC);
    }
    return NULL;
}

/* Two threads allocate at once: a front end whose thread deltas are lost or double-counted
 * when they meet (or read without the other thread's) breaks the exact currents, and one that
 * resets only its own thread's peaks leaves a stale peak after heap_reset_peaks. */
Test(threads, stats_with_two_threads_at_once, .timeout = 60)
{
    setup_kind(HT_SEGMENTS, "1G");
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, 3);
    struct par a[2];
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        a[i] = (struct par){.barrier = &barrier, .stream = ht_stream(), .id = i};
        cr_assert_eq(drv_ctx_get_current(&a[i].ctx), CUDA_SUCCESS);
        pthread_create(&t[i], NULL, par_thread, &a[i]);
    }
    pthread_barrier_wait(&barrier); /* every block allocated */
    fragless_stats_t st = ht_stats(0);
    size_t full = a[0].alloc_sum + a[1].alloc_sum;
    cr_assert_eq(st.allocated_bytes.current, full);
    cr_assert_eq(st.requested_bytes.current, a[0].req_sum + a[1].req_sum);
    cr_assert_geq(st.allocated_bytes.peak, full);
    cr_assert_eq(st.num_allocs, 2 * PAR_BLOCKS);
    pthread_barrier_wait(&barrier);
    pthread_barrier_wait(&barrier); /* half freed */
    st = ht_stats(0);
    cr_assert_eq(st.allocated_bytes.current, a[0].half_alloc + a[1].half_alloc);
    cr_assert_eq(st.requested_bytes.current, a[0].half_req + a[1].half_req);
    cr_assert_geq(st.allocated_bytes.peak, full);
    cr_assert_eq(heap_reset_peaks(0), FRAGLESS_OK);
    st = ht_stats(0);
    cr_assert_eq(st.allocated_bytes.peak, st.allocated_bytes.current);
    cr_assert_eq(st.requested_bytes.peak, st.requested_bytes.current);
    cr_assert_eq(st.active_bytes.peak, st.active_bytes.current);
    pthread_barrier_wait(&barrier);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    assert_no_thread_errors();
    st = ht_stats(0);
    cr_assert_eq(st.allocated_bytes.current, 0);
    cr_assert_eq(st.requested_bytes.current, 0);
    cr_assert_geq(st.allocated_bytes.peak, a[0].half_alloc + a[1].half_alloc);
    cr_assert_eq(st.num_allocs, a[0].allocs + a[1].allocs);
    cr_assert_eq(st.num_frees, a[0].frees + a[1].frees);
    cr_assert_eq(st.num_allocs, st.num_frees);
    cr_assert_eq(st.num_cache_hits + st.num_cache_misses, st.num_allocs);
    cr_assert_eq(heap_reset_peaks(-1), FRAGLESS_OK);
    st = ht_stats(0);
    cr_assert_eq(st.allocated_bytes.peak, 0);
    cr_assert_eq(st.requested_bytes.peak, 0);
    cr_assert(heap_is_valid());
    pthread_barrier_destroy(&barrier);
    for (int i = 0; i < 2; i++)
        ht_stream_destroy(a[i].stream);
}

/* ---- lookups ---- */

/* The test's thread and B look up A's blocks: a front end whose live table only its owner
 * reads fails them, one that reports a region's uncarved tail or a freed (cached) block as
 * live answers where it must not. */
Test(threads, lookup_from_other_threads, .timeout = 60)
{
    setup_kind(HT_SEGMENTS, "1G");
    CUstream s = ht_stream();
    struct worker a, b;
    worker_start(&a);
    worker_start(&b);
    const size_t n[3] = {3000, 6 * FL_MiB, 512};
    CUdeviceptr p[3];
    p[0] = w_alloc(&a, n[0], NULL, HEAP_SYNC);
    p[1] = w_alloc(&a, n[1], s, HEAP_ASYNC);
    p[2] = w_alloc(&a, n[2], CU_STREAM_PER_THREAD, HEAP_ASYNC);
    for (int i = 0; i < 3; i++) {
        const size_t off[] = {0, 1, n[i] / 2, n[i] - 1};
        for (int k = 0; k < 4; k++) {
            assert_lookup(NULL, p[i] + off[k], p[i], n[i]);
            assert_lookup(&b, p[i] + off[k], p[i], n[i]);
        }
        CUdeviceptr base = 0;
        if (lookup_finds(&b, p[i] + rounded(n[i]), &base))
            cr_assert_neq(base, p[i], "lookup past the end of block %d found it", i);
    }
    /* freed by its owner (its cache may keep it): no longer a live block */
    w_free(&a, p[0], NULL, HEAP_SYNC);
    w_free(&a, p[1], s, HEAP_ASYNC);
    CUdeviceptr base;
    for (int i = 0; i < 2; i++) {
        cr_assert(!lookup_finds(NULL, p[i], &base), "freed block %d still found", i);
        cr_assert(!lookup_finds(&b, p[i] + 1, &base), "freed block %d still found", i);
    }
    /* its owner exits: the block it left live is still found, and freed by another thread */
    worker_stop(&a);
    assert_lookup(&b, p[2] + 100, p[2], n[2]);
    w_free(&b, p[2], CU_STREAM_PER_THREAD, HEAP_ASYNC);
    cr_assert(!lookup_finds(NULL, p[2], &base));
    worker_stop(&b);
    cr_assert(heap_is_valid());
    ht_stream_destroy(s);
}

/* ---- thread exit ---- */

struct leaver {
    CUcontext ctx;
    CUstream s;
    CUdeviceptr p[12];
    size_t n[12];
    CUresult r;
};

/* Allocates 12 blocks (plain, on s, on its per-thread stream) and keeps them; allocates and
 * frees others so that its cache holds memory; exits. */
static void *leaver_thread(void *arg)
{
    struct leaver *l = arg;
    drv_ctx_set_current(l->ctx);
    for (int i = 0; i < 12 && l->r == CUDA_SUCCESS; i++) {
        CUstream st = i % 3 == 0 ? NULL : i % 3 == 1 ? l->s : CU_STREAM_PER_THREAD;
        l->n[i] = mix[(size_t)i % NMIX];
        l->r = heap_alloc(0, l->n[i], st, i % 3 ? HEAP_ASYNC : HEAP_SYNC, &l->p[i]);
        CUdeviceptr q = 0;
        if (l->r == CUDA_SUCCESS)
            l->r = heap_alloc(0, mix[(size_t)(i + 3) % NMIX], st, HEAP_ASYNC, &q);
        if (l->r == CUDA_SUCCESS)
            l->r = heap_free(q, st, HEAP_ASYNC, NULL);
    }
    return NULL;
}

/* A thread exits leaving live blocks and cached memory: a front end that drops the exited
 * thread's live table or region loses the blocks (frees fail, lookups miss, statistics drift)
 * or keeps its cache forever (empty-cache cannot return it). */
static void exited_threads_blocks(void)
{
    struct leaver l = {.s = ht_stream()};
    cr_assert_eq(drv_ctx_get_current(&l.ctx), CUDA_SUCCESS);
    pthread_t t;
    pthread_create(&t, NULL, leaver_thread, &l);
    pthread_join(t, NULL);
    cr_assert_eq(l.r, CUDA_SUCCESS);
    size_t alloc = 0, req = 0;
    for (int i = 0; i < 12; i++) {
        alloc += rounded(l.n[i]);
        req += l.n[i];
        assert_lookup(NULL, l.p[i] + l.n[i] - 1, l.p[i], l.n[i]);
    }
    fragless_stats_t st = ht_stats(0);
    cr_assert_eq(st.allocated_bytes.current, alloc);
    cr_assert_eq(st.requested_bytes.current, req);
    cr_assert_eq(st.num_allocs, 24);
    cr_assert_eq(st.num_frees, 12);
    CUstream t2 = ht_stream();
    for (int i = 0; i < 12; i++) {
        CUstream st2 = i % 3 == 0 ? NULL : i % 3 == 1 ? l.s : t2;
        ht_free(l.p[i], st2, i % 2 ? HEAP_ASYNC : HEAP_SYNC);
    }
    cr_assert(heap_is_valid());
    st = ht_stats(0);
    cr_assert_eq(st.allocated_bytes.current, 0);
    cr_assert_eq(st.requested_bytes.current, 0);
    end_clean((CUstream[]){l.s, t2}, 2);
}

BOTH_KINDS(exited_threads_blocks, "1G")

/* ---- empty-cache and OOM reach other threads' caches ---- */

/* A (alive) freed what it allocated but one small block: a front end whose empty-cache
 * returns only the calling thread's regions leaves A's cached memory reserved. */
static void empty_cache_takes_another_threads_cache(void)
{
    CUstream s = ht_stream();
    struct worker a;
    worker_start(&a);
    CUdeviceptr keep = w_alloc(&a, 512, s, HEAP_ASYNC);
    CUdeviceptr p[16];
    for (int i = 0; i < 16; i++) {
        CUstream st = i % 3 == 0 ? NULL : i % 3 == 1 ? s : CU_STREAM_PER_THREAD;
        p[i] = w_alloc(&a, mix[(size_t)i % NMIX], st, i % 3 ? HEAP_ASYNC : HEAP_SYNC);
    }
    for (int i = 15; i >= 0; i--) {
        CUstream st = i % 3 == 0 ? NULL : i % 3 == 1 ? s : CU_STREAM_PER_THREAD;
        w_free(&a, p[i], st, i % 3 ? HEAP_ASYNC : HEAP_SYNC);
    }
    fragless_stats_t before = ht_stats(0);
    size_t released = 0;
    cr_assert_eq(heap_empty_cache(0, &released), CUDA_SUCCESS);
    fragless_stats_t st = ht_stats(0);
    /* classic: keep's 2 MiB small segment; expandable: the 2 MiB page holding it */
    cr_assert_eq(st.reserved_bytes.current, 2 * FL_MiB, "%llu bytes reserved",
                 (unsigned long long)st.reserved_bytes.current);
    cr_assert_eq(released, before.reserved_bytes.current - st.reserved_bytes.current);
    cr_assert_eq(st.allocated_bytes.current, 512);
    assert_lookup(NULL, keep + 7, keep, 512);
    w_free(&a, keep, s, HEAP_ASYNC);
    cr_assert_eq(heap_empty_cache(0, &released), CUDA_SUCCESS);
    cr_assert_eq(ht_stats(0).reserved_bytes.current, 0);
    cr_assert(heap_is_valid());
    worker_stop(&a);
    end_clean(&s, 1);
}

BOTH_KINDS(empty_cache_takes_another_threads_cache, "1G")

/* A (alive) caches 48 MiB of a 64 MiB device; the test's thread then needs 40 MiB: a front
 * end whose OOM path does not take other threads' regions back fails the request. */
static void oom_takes_back_another_threads_cache(void)
{
    CUstream s = ht_stream();
    struct worker a;
    worker_start(&a);
    CUdeviceptr p[20];
    for (int i = 0; i < 20; i++)
        p[i] = w_alloc(&a, i < 4 ? 8 * FL_MiB : FL_MiB / 2, i % 2 ? s : CU_STREAM_PER_THREAD,
                       HEAP_ASYNC);
    for (int i = 0; i < 20; i++) {
        int how = i % 3;
        w_free(&a, p[i],
               how == 0   ? NULL
               : how == 1 ? s
                          : CU_STREAM_PER_THREAD,
               how ? HEAP_ASYNC : HEAP_SYNC);
    }
    cr_assert_geq(ht_stats(0).reserved_bytes.current, 40 * FL_MiB);
    CUdeviceptr big = ht_alloc(40 * FL_MiB, NULL, HEAP_SYNC);
    CUdeviceptr more = ht_alloc(16 * FL_MiB, s, HEAP_ASYNC);
    fragless_stats_t st = ht_stats(0);
    cr_assert_eq(st.num_ooms, 0);
    cr_assert_eq(st.allocated_bytes.current, 56 * FL_MiB);
    /* and A gets memory too (a new 2 MiB small segment: 58 MiB of 64) */
    CUdeviceptr back = w_alloc(&a, FL_MiB, CU_STREAM_PER_THREAD, HEAP_ASYNC);
    w_free(&a, back, CU_STREAM_PER_THREAD, HEAP_ASYNC);
    ht_free(big, NULL, HEAP_SYNC);
    ht_free(more, s, HEAP_ASYNC);
    cr_assert(heap_is_valid());
    worker_stop(&a);
    end_clean(&s, 1);
}

BOTH_KINDS(oom_takes_back_another_threads_cache, "64M")

/* ---- stream destroy ---- */

/* A's blocks on S, all written by a fill on S; the top six freed (three by the test's thread,
 * three by A), then S destroyed (its handle comes back for the next stream): a front end that
 * does not retire A's region for S carves them again on the new stream before the fill. */
Test(threads, destroyed_stream_with_another_threads_blocks, .timeout = 60)
{
    struct scene x;
    scene_start(&x);
    CUdeviceptr p[8];
    for (int i = 0; i < 8; i++)
        p[i] = w_alloc(&x.a, BLK, x.s, HEAP_ASYNC);
    ht_work(x.s, FILL_US);
    for (int i = 0; i < 8; i++)
        ht_fill(x.s, p[i], 0xab, BLK, 0);
    for (int i = 2; i < 5; i++)
        ht_free(p[i], x.s, HEAP_ASYNC);
    for (int i = 7; i >= 5; i--)
        w_free(&x.a, p[i], x.s, HEAP_ASYNC);
    /* an event recorded before the destroy tells when the fills landed (a device sync would
     * wait for them too, but would end the scene) */
    CUevent done = event_record(x.s);
    heap_stream_destroyed(x.s);
    ht_stream_destroy(x.s);
    x.s = ht_stream(); /* the emulated device gives the old handle back */
    const struct probe_at at[] = {{&x.a, x.s, HEAP_ASYNC},
                                  {&x.a, NULL, HEAP_SYNC},
                                  {&x.b, x.s, HEAP_ASYNC},
                                  {&x.b, NULL, HEAP_SYNC},
                                  {NULL, x.t, HEAP_ASYNC}};
    struct probe pr[5];
    probes_take(pr, at, 5, 0x41);
    cr_assert(heap_is_valid());
    event_wait(done);
    probes_check(pr, 5);
    /* the rest: live, found, freed by their owner on the legacy stream */
    for (int i = 0; i < 2; i++) {
        assert_lookup(&x.b, p[i] + 5, p[i], BLK);
        w_free(&x.a, p[i], CU_STREAM_LEGACY, HEAP_ASYNC);
    }
    scene_end(&x);
    fragless_stats_t st = ht_stats(0);
    cr_assert_eq(st.allocated_bytes.current, 0);
    cr_assert_eq(st.num_frees, st.num_allocs);
    end_clean((CUstream[]){x.s, x.t, x.u}, 3);
}

/* ---- a storm with cross-thread frees ---- */

#define STORM_THREADS 4
#define STORM_OPS     1200
#define STORM_LIVE    16
#define HANDOFF_MAX   64
#define MARK          8    /* bytes of a block's tag at its start */
#define LATE_BYTE     0xee /* what a kernel still running at a free writes; never a tag */

struct sblock {
    CUdeviceptr p;
    size_t rounded;
    size_t size;
    unsigned char tag;
    CUstream stream; /* where its tag was written (mode HEAP_ASYNC), else from the host */
    enum heap_mode mode;
};

/* Live blocks of every thread (no two may overlap) and blocks handed to another thread to
 * free, under one lock. */
static pthread_mutex_t storm_lock = PTHREAD_MUTEX_INITIALIZER;
static struct sblock storm_live[STORM_THREADS * STORM_LIVE + HANDOFF_MAX];
static int storm_nlive;
static struct sblock handoff[HANDOFF_MAX];
static int nhandoff;
static atomic_int storm_running;

struct stormer {
    int id;
    CUcontext ctx;
    CUstream own[2];
    uint64_t rng;
    uint64_t allocs, frees;
    bool failed;
};

static uint64_t next_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* 0 now and then, else 1 B ... 16 MiB, log-uniform. */
static size_t storm_size(uint64_t *rng)
{
    if (next_rand(rng) % 50 == 0)
        return 0;
    size_t base = (size_t)1 << (next_rand(rng) % 25);
    size_t n = base + next_rand(rng) % base;
    return n > 16 * FL_MiB ? 16 * FL_MiB : n;
}

/* Registers b as live; false if it overlaps a live block. */
static bool storm_claim(const struct sblock *b)
{
    bool ok = true;
    pthread_mutex_lock(&storm_lock);
    for (int i = 0; i < storm_nlive; i++)
        ok = ok && !ht_overlap(storm_live[i].p, storm_live[i].rounded, b->p, b->rounded);
    storm_live[storm_nlive++] = *b;
    pthread_mutex_unlock(&storm_lock);
    return ok;
}

static void storm_unclaim(CUdeviceptr p)
{
    pthread_mutex_lock(&storm_lock);
    for (int i = 0; i < storm_nlive; i++)
        if (storm_live[i].p == p) {
            storm_live[i] = storm_live[--storm_nlive];
            break;
        }
    pthread_mutex_unlock(&storm_lock);
}

/* Picks where an operation goes: one of the thread's streams, its per-thread stream, the
 * legacy stream, or none (plain). */
static CUstream storm_stream(struct stormer *w, enum heap_mode *mode)
{
    unsigned k = (unsigned)(next_rand(&w->rng) % 5);
    *mode = k < 4 ? HEAP_ASYNC : HEAP_SYNC;
    return k < 2 ? w->own[k] : k == 2 ? CU_STREAM_PER_THREAD : NULL;
}

static void storm_alloc(struct stormer *w, struct sblock *b, int op)
{
    b->size = storm_size(&w->rng);
    b->rounded = rounded(b->size);
    b->stream = storm_stream(w, &b->mode);
    b->tag = (unsigned char)((w->id * STORM_OPS + op) % 0x7f + 1);
    CUresult r = heap_alloc(0, b->size, b->stream, b->mode, &b->p);
    if (r != CUDA_SUCCESS) {
        THREAD_ERROR("thread %d: heap_alloc(%zu) = %d", w->id, b->size, (int)r);
        w->failed = true;
        return;
    }
    w->allocs++;
    if (!storm_claim(b)) {
        THREAD_ERROR("thread %d: block %#llx+%zu overlaps a live one", w->id,
                     (unsigned long long)b->p, b->rounded);
        w->failed = true;
    }
    if (b->mode == HEAP_ASYNC)
        emu_fill(b->stream, b->p, b->tag, MARK, 0);
    else
        memset((void *)(uintptr_t)b->p, b->tag, MARK);
}

/* The allocating thread checks b's tag (a late kernel of a block's previous owner overwrote
 * it if the block was handed out too early). */
static void storm_check(struct stormer *w, const struct sblock *b)
{
    if (b->mode == HEAP_ASYNC && drv_stream_synchronize(b->stream) != CUDA_SUCCESS) {
        THREAD_ERROR("thread %d: stream synchronize failed", w->id);
        w->failed = true;
        return;
    }
    const unsigned char *c = (const unsigned char *)(uintptr_t)b->p;
    for (int i = 0; i < MARK; i++)
        if (c[i] != b->tag) {
            THREAD_ERROR("thread %d: tag of %#llx+%zu overwritten (%#x, not %#x)", w->id,
                         (unsigned long long)b->p, b->size, c[i], b->tag);
            w->failed = true;
            return;
        }
}

/* Frees b on this thread (its own block or one handed to it), a kernel still writing it at
 * times. */
static void storm_free(struct stormer *w, const struct sblock *b)
{
    enum heap_mode mode;
    CUstream s = storm_stream(w, &mode);
    storm_unclaim(b->p);
    if (next_rand(&w->rng) % 3 == 0)
        emu_fill(mode == HEAP_ASYNC ? s : w->own[0], b->p, LATE_BYTE, MARK,
                 next_rand(&w->rng) % 300);
    bool foreign = true;
    CUresult r = heap_free(b->p, s, mode, &foreign);
    if (r != CUDA_SUCCESS || foreign) {
        THREAD_ERROR("thread %d: heap_free(%#llx) = %d", w->id, (unsigned long long)b->p, (int)r);
        w->failed = true;
    }
    w->frees++;
}

/* Hands b to whichever thread frees next from the queue; false if the queue is full. */
static bool storm_hand_off(const struct sblock *b)
{
    pthread_mutex_lock(&storm_lock);
    bool ok = nhandoff < HANDOFF_MAX;
    if (ok)
        handoff[nhandoff++] = *b;
    pthread_mutex_unlock(&storm_lock);
    return ok;
}

static bool storm_take_handed(struct sblock *b)
{
    pthread_mutex_lock(&storm_lock);
    bool ok = nhandoff > 0;
    if (ok)
        *b = handoff[--nhandoff];
    pthread_mutex_unlock(&storm_lock);
    return ok;
}

/* Its own block i: checked, then freed here or (one in five) handed to another thread. */
static void storm_release(struct stormer *w, struct sblock *live, int *n, int i)
{
    struct sblock b = live[i];
    live[i] = live[--*n];
    storm_check(w, &b);
    if (w->failed)
        return;
    if (next_rand(&w->rng) % 5 == 0 && storm_hand_off(&b))
        return;
    storm_free(w, &b);
}

/* Looks up a random live block of any thread at a random offset (the storm's lock held, so
 * that it stays live). */
static void storm_lookup(struct stormer *w)
{
    pthread_mutex_lock(&storm_lock);
    if (storm_nlive > 0) {
        const struct sblock *b = &storm_live[next_rand(&w->rng) % (uint64_t)storm_nlive];
        CUdeviceptr at = b->p + next_rand(&w->rng) % (b->size ? b->size : 1), base = 0;
        size_t size = 0;
        int device = -1;
        if (!heap_lookup(at, &base, &size, &device) || base != b->p || size != b->size ||
            device != 0)
            THREAD_ERROR("thread %d: lookup of %#llx in %#llx+%zu: %#llx+%zu on %d", w->id,
                         (unsigned long long)at, (unsigned long long)b->p, b->size,
                         (unsigned long long)base, size, device);
    }
    pthread_mutex_unlock(&storm_lock);
}

static void storm_step(struct stormer *w, struct sblock *live, int *n, int op)
{
    struct sblock b;
    if (next_rand(&w->rng) % 4 == 0)
        storm_lookup(w);
    if (next_rand(&w->rng) % 4 == 0 && storm_take_handed(&b)) {
        storm_free(w, &b);
    } else if (*n < STORM_LIVE && (*n == 0 || next_rand(&w->rng) % 2)) {
        storm_alloc(w, &live[*n], op);
        *n += !w->failed;
    } else {
        storm_release(w, live, n, (int)(next_rand(&w->rng) % (uint64_t)*n));
    }
    if (next_rand(&w->rng) % 150 == 0 && heap_empty_cache(0, NULL) != CUDA_SUCCESS) {
        THREAD_ERROR("thread %d: empty-cache failed", w->id);
        w->failed = true;
    }
}

static void *storm_thread(void *arg)
{
    struct stormer *w = arg;
    struct sblock live[STORM_LIVE];
    int n = 0;
    drv_ctx_set_current(w->ctx);
    for (int op = 0; op < STORM_OPS && !w->failed; op++)
        storm_step(w, live, &n, op);
    while (n > 0 && !w->failed)
        storm_release(w, live, &n, n - 1);
    atomic_fetch_sub(&storm_running, 1);
    return NULL;
}

/* While the storm runs: every snapshot's peaks are at least its currents (a front end that
 * publishes a thread's allocations before raising the peaks breaks this). */
static void storm_watch_stats(void)
{
    int snapshots = 0;
    while (atomic_load(&storm_running) > 0) {
        fragless_stats_t st = {.size = sizeof st};
        if (heap_get_stats(0, &st) != 0) /* no allocation yet */
            continue;
        cr_assert_geq(st.allocated_bytes.peak, st.allocated_bytes.current);
        cr_assert_geq(st.requested_bytes.peak, st.requested_bytes.current);
        cr_assert_geq(st.active_bytes.peak, st.active_bytes.current);
        cr_assert_geq(st.reserved_bytes.peak, st.reserved_bytes.current);
        snapshots++;
        usleep(200);
    }
    cr_log_info("storm: %d statistics snapshots", snapshots);
}

/* 4 threads, 2 streams each, their per-thread and the legacy stream, sizes 0 .. 16 MiB, a
 * fifth of the frees made by another thread, kernels still writing at some frees: a front end
 * that hands a block out twice, loses a remote free, reuses a block before its kernel ended or
 * keeps memory after the threads are done shows as an overlap, a tag overwritten, statistics
 * that do not come back, a device fault or a leak. */
static void storm_with_remote_frees(void)
{
    emu_fill = (int (*)(CUstream, CUdeviceptr, int, size_t, uint64_t))(uintptr_t)ht_sym(
        "fragless_emu_stream_fill");
    struct stormer w[STORM_THREADS];
    pthread_t t[STORM_THREADS];
    CUstream streams[2 * STORM_THREADS];
    atomic_store(&storm_running, STORM_THREADS);
    for (int i = 0; i < STORM_THREADS; i++) {
        w[i] = (struct stormer){.id = i, .rng = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 7)};
        cr_assert_eq(drv_ctx_get_current(&w[i].ctx), CUDA_SUCCESS);
        w[i].own[0] = streams[2 * i] = ht_stream();
        w[i].own[1] = streams[2 * i + 1] = ht_stream();
        pthread_create(&t[i], NULL, storm_thread, &w[i]);
    }
    storm_watch_stats();
    uint64_t allocs = 0, frees = 0;
    for (int i = 0; i < STORM_THREADS; i++) {
        pthread_join(t[i], NULL);
        allocs += w[i].allocs;
        frees += w[i].frees;
    }
    assert_no_thread_errors();
    struct sblock b;
    while (storm_take_handed(&b)) {
        storm_unclaim(b.p);
        ht_free(b.p, NULL, HEAP_SYNC);
        frees++;
    }
    cr_assert_eq(storm_nlive, 0);
    cr_assert(heap_is_valid());
    fragless_stats_t st = ht_stats(0);
    cr_assert_eq(st.allocated_bytes.current, 0);
    cr_assert_eq(st.requested_bytes.current, 0);
    cr_assert_eq(st.num_allocs, allocs);
    cr_assert_eq(st.num_frees, frees);
    cr_assert_eq(allocs, frees);
    cr_assert_eq(st.num_cache_hits + st.num_cache_misses, allocs);
    cr_log_info("storm: %llu allocs, %llu hits, %llu syncs, peak reserved %.1f MiB",
                (unsigned long long)allocs, (unsigned long long)st.num_cache_hits,
                (unsigned long long)st.num_device_syncs, (double)st.reserved_bytes.peak / FL_MiB);
    end_clean(streams, 2 * STORM_THREADS);
}

BOTH_KINDS(storm_with_remote_frees, "4G")

/* ---- the fast path against empty-cache ---- */

#define HAMMER_THREADS 2
#define HAMMER_OPS     3000
#define HAMMER_LIVE    4

/* Short-lived small blocks, LIFO, on the thread's stream or its per-thread stream, each
 * tagged from the host (no kernel runs) and checked before its free. */
static void *hammer_thread(void *arg)
{
    static const size_t sizes[] = {512, 4096, 65536, FL_MiB};
    struct stormer *w = arg;
    struct sblock live[HAMMER_LIVE];
    int n = 0;
    drv_ctx_set_current(w->ctx);
    for (int op = 0; op < HAMMER_OPS && !w->failed; op++) {
        if (n < HAMMER_LIVE && (n == 0 || next_rand(&w->rng) % 3)) {
            struct sblock *b = &live[n];
            b->size = sizes[next_rand(&w->rng) % 4];
            b->rounded = b->size;
            b->stream = op % 7 ? w->own[0] : CU_STREAM_PER_THREAD;
            b->mode = HEAP_ASYNC;
            b->tag = (unsigned char)(op % 0x7f + 1);
            if (heap_alloc(0, b->size, b->stream, HEAP_ASYNC, &b->p) != CUDA_SUCCESS) {
                THREAD_ERROR("thread %d: allocation %d failed", w->id, op);
                w->failed = true;
                break;
            }
            w->allocs++;
            if (!storm_claim(b)) {
                THREAD_ERROR("thread %d: block %#llx overlaps a live one", w->id,
                             (unsigned long long)b->p);
                w->failed = true;
            }
            n++;
            memset((void *)(uintptr_t)b->p, b->tag, MARK);
        } else {
            struct sblock *b = &live[--n];
            storm_check(w, b);
            storm_unclaim(b->p);
            if (heap_free(b->p, b->stream, HEAP_ASYNC, NULL) != CUDA_SUCCESS) {
                THREAD_ERROR("thread %d: free %d failed", w->id, op);
                w->failed = true;
            }
            w->frees++;
        }
    }
    for (int i = 0; i < n; i++, w->frees++) {
        storm_unclaim(live[i].p);
        heap_free(live[i].p, live[i].stream, HEAP_ASYNC, NULL);
    }
    atomic_fetch_sub(&storm_running, 1);
    return NULL;
}

/* Two threads allocate and free small blocks as fast as they can while the test's thread
 * empties the cache, checks the heap and looks their blocks up: a front end whose regions
 * are taken back under a thread that is carving from them (the owner not seeing the
 * "returned" state) hands a block out twice or frees memory under a live block. */
static void fast_path_against_empty_cache(void)
{
    struct stormer w[HAMMER_THREADS], watcher = {.id = -1, .rng = 12345};
    pthread_t t[HAMMER_THREADS];
    CUstream streams[HAMMER_THREADS];
    atomic_store(&storm_running, HAMMER_THREADS);
    for (int i = 0; i < HAMMER_THREADS; i++) {
        w[i] = (struct stormer){.id = i, .rng = 0x2545f4914f6cdd1dull * (uint64_t)(i + 1)};
        cr_assert_eq(drv_ctx_get_current(&w[i].ctx), CUDA_SUCCESS);
        w[i].own[0] = streams[i] = ht_stream();
        pthread_create(&t[i], NULL, hammer_thread, &w[i]);
    }
    int rounds = 0;
    while (atomic_load(&storm_running) > 0) {
        cr_assert_eq(heap_empty_cache(0, NULL), CUDA_SUCCESS);
        cr_assert(heap_is_valid());
        storm_lookup(&watcher);
        /* a snapshot taken while regions go back: what is live at most, never torn */
        fragless_stats_t st = {.size = sizeof st};
        if (heap_get_stats(0, &st) != 0) /* no allocation yet */
            continue;
        cr_assert_leq(st.allocated_bytes.current, HAMMER_THREADS * HAMMER_LIVE * FL_MiB);
        cr_assert_leq(st.requested_bytes.current, st.allocated_bytes.current);
        cr_assert_leq(st.allocated_bytes.current, st.reserved_bytes.current);
        rounds++;
    }
    uint64_t allocs = 0, frees = 0;
    for (int i = 0; i < HAMMER_THREADS; i++) {
        pthread_join(t[i], NULL);
        allocs += w[i].allocs;
        frees += w[i].frees;
    }
    assert_no_thread_errors();
    cr_log_info("fast path: %llu allocations against %d empty-caches", (unsigned long long)allocs,
                rounds);
    fragless_stats_t st = ht_stats(0);
    cr_assert_eq(st.allocated_bytes.current, 0);
    cr_assert_eq(st.num_allocs, allocs);
    cr_assert_eq(st.num_frees, frees);
    end_clean(streams, HAMMER_THREADS);
}

BOTH_KINDS(fast_path_against_empty_cache, "1G")

/* ---- the driver refusing while two threads work ---- */

#define FAULT_SLOTS 12
#define FAULT_OPS   240

struct faulter {
    int id;
    CUcontext ctx;
    CUstream s;
    CUresult expect; /* what a refused allocation returns (CUDA_SUCCESS: none may fail) */
    uint64_t allocs, frees, refused;
};

/* One slot: freed if it holds a block, else an allocation that may be refused. */
static void fault_step(struct faulter *w, CUdeviceptr *slot, int op)
{
    static const size_t sizes[] = {512, 3000, FL_MiB, 2 * FL_MiB, 9 * FL_MiB, 24 * FL_MiB};
    enum heap_mode mode = op % 3 ? HEAP_ASYNC : HEAP_SYNC;
    CUstream s = mode == HEAP_ASYNC ? w->s : NULL;
    if (*slot) {
        CUresult r = heap_free(*slot, s, mode, NULL);
        if (r != CUDA_SUCCESS)
            THREAD_ERROR("thread %d: heap_free = %d", w->id, (int)r);
        *slot = 0;
        w->frees++;
        return;
    }
    size_t n = sizes[(size_t)(op * 7 + w->id) % (sizeof sizes / sizeof sizes[0])];
    CUresult r = heap_alloc(0, n, s, mode, slot);
    if (r == CUDA_SUCCESS) {
        w->allocs++;
    } else if (r == w->expect && *slot == 0) {
        w->refused++;
    } else {
        THREAD_ERROR("thread %d: heap_alloc(%zu) = %d (expected %d), ptr %#llx", w->id, n, (int)r,
                     (int)w->expect, (unsigned long long)*slot);
        *slot = 0;
    }
}

static void *fault_thread(void *arg)
{
    struct faulter *w = arg;
    CUdeviceptr slot[FAULT_SLOTS] = {0};
    drv_ctx_set_current(w->ctx);
    for (int op = 0; op < FAULT_OPS; op++) {
        fault_step(w, &slot[(op * 5 + w->id) % FAULT_SLOTS], op);
        if (op % 40 == 39 && heap_empty_cache(0, NULL) != CUDA_SUCCESS)
            THREAD_ERROR("thread %d: empty-cache failed", w->id);
    }
    for (int i = 0; i < FAULT_SLOTS; i++)
        if (slot[i])
            fault_step(w, &slot[i], i);
    return NULL;
}

/* Two threads allocate and free (each its own stream and plain) with empty-cache now and
 * then, while the driver refuses as `spec` says: a front end whose slow path loses a block or
 * a region on a refused step, returns another error than the driver's, or counts a refused
 * request shows here, or leaks in the audit. */
static void two_threads_with_faults(const char *conf, const char *spec, CUresult expect)
{
    setup_kind(conf, "512M");
    struct faulter w[2];
    pthread_t t[2];
    uint64_t nth, before = spec_calls(spec, &nth);
    cr_assert_eq(ht_fail(spec), 0, "bad spec %s", spec);
    for (int i = 0; i < 2; i++) {
        w[i] = (struct faulter){.id = i, .s = ht_stream(), .expect = expect};
        cr_assert_eq(drv_ctx_get_current(&w[i].ctx), CUDA_SUCCESS);
        pthread_create(&t[i], NULL, fault_thread, &w[i]);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    cr_assert_eq(ht_fail(NULL), 0);
    assert_no_thread_errors();
    cr_assert_geq(spec_calls(spec, &nth) - before, nth, "the fault %s was never reached", spec);
    uint64_t refused = w[0].refused + w[1].refused;
    cr_log_info("%s: %llu allocations refused", spec, (unsigned long long)refused);
    if (expect != CUDA_SUCCESS)
        cr_assert_gt(refused, 0, "%s was never hit", spec);
    cr_assert(heap_is_valid());
    fragless_stats_t st = ht_stats(0);
    cr_assert_eq(st.allocated_bytes.current, 0);
    cr_assert_eq(st.requested_bytes.current, 0);
    cr_assert_eq(st.num_allocs, w[0].allocs + w[1].allocs);
    cr_assert_eq(st.num_frees, w[0].frees + w[1].frees);
    if (expect == CUDA_ERROR_OUT_OF_MEMORY)
        cr_assert_eq(st.num_ooms, refused);
    end_clean((CUstream[]){w[0].s, w[1].s}, 2);
}

Test(threads, faults_segment_allocation_out_of_memory, .timeout = 60)
{
    two_threads_with_faults(HT_SEGMENTS, "cuMemAlloc_v2@4+", CUDA_ERROR_OUT_OF_MEMORY);
}

Test(threads, faults_segment_allocation_other_error, .timeout = 60)
{
    two_threads_with_faults(HT_SEGMENTS, "cuMemAlloc_v2@3+=CUDA_ERROR_UNKNOWN", CUDA_ERROR_UNKNOWN);
}

Test(threads, faults_page_creation_out_of_memory, .timeout = 60)
{
    two_threads_with_faults(EXPANDABLE, "cuMemCreate@6+", CUDA_ERROR_OUT_OF_MEMORY);
}

Test(threads, faults_events_refused, .timeout = 60)
{
    two_threads_with_faults(HT_SEGMENTS,
                            "cuEventRecord@2+=CUDA_ERROR_INVALID_HANDLE,cuEventCreate@3+,"
                            "cuEventQuery@*=CUDA_ERROR_LAUNCH_FAILED",
                            CUDA_SUCCESS);
}
