/*
 * test_heap_storm.c — a randomized multi-threaded storm on the caching allocator, in-process
 * on the emulated device: sizes 1 B … 64 MiB, several streams (shared, legacy, per-thread),
 * stream-ordered and plain frees, empty-cache now and then. Every block gets a pattern (written on
 * its stream when it was allocated stream-ordered, from the host otherwise) that is checked before
 * its free; a simulated kernel is queued on some blocks just before their free, so a block handed
 * out before that kernel completes gets its pattern overwritten. No two live blocks may overlap,
 * the invariant walker runs after every operation (FRAGLESS_CHECK), and at the end the cache
 * is emptied and the emulated device's leak audit must be clean.
 */
#include <pthread.h>

#include "heaptest.h"

#define THREADS   4
#define OPS       700
#define MAX_LIVE  20
#define NSTREAMS  3
#define MARK      64   /* bytes of pattern at each end of a block */
#define LATE_BYTE 0xee /* what a late kernel writes; never a pattern byte */

struct live {
    CUdeviceptr p;
    size_t n;
    unsigned char tag;
    CUstream stream;
    enum heap_mode mode;
};

static CUcontext ctx;
static CUstream streams[NSTREAMS];
static pthread_mutex_t ranges_lock = PTHREAD_MUTEX_INITIALIZER;
static struct live ranges[THREADS * MAX_LIVE];
static int nranges;

static uint64_t next_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static size_t random_size(uint64_t *rng)
{
    unsigned e = (unsigned)(next_rand(rng) % 27); /* up to 2^26 = 64 MiB */
    size_t base = (size_t)1 << e;
    size_t n = base + next_rand(rng) % base;
    return n > 64 * FL_MiB ? 64 * FL_MiB : n;
}

/* Registers a new live range; false if it overlaps one already live. */
static bool claim(const struct live *l)
{
    bool ok = true;
    pthread_mutex_lock(&ranges_lock);
    for (int i = 0; i < nranges; i++)
        if (ht_overlap(ranges[i].p, ranges[i].n, l->p, l->n))
            ok = false;
    ranges[nranges++] = *l;
    pthread_mutex_unlock(&ranges_lock);
    return ok;
}

static void unclaim(CUdeviceptr p)
{
    pthread_mutex_lock(&ranges_lock);
    for (int i = 0; i < nranges; i++)
        if (ranges[i].p == p) {
            ranges[i] = ranges[--nranges];
            break;
        }
    pthread_mutex_unlock(&ranges_lock);
}

static size_t mark_len(size_t n)
{
    return n < MARK ? n : MARK;
}

static void write_pattern(const struct live *l)
{
    size_t m = mark_len(l->n);
    if (l->mode == HEAP_ASYNC) {
        ht_fill(l->stream, l->p, l->tag, m, 0);
        ht_fill(l->stream, l->p + l->n - m, l->tag, m, 0);
        return;
    }
    memset((void *)(uintptr_t)l->p, l->tag, m);
    memset((void *)(uintptr_t)(l->p + l->n - m), l->tag, m);
}

static bool pattern_ok(const struct live *l)
{
    if (l->mode == HEAP_ASYNC && drv_stream_synchronize(l->stream) != CUDA_SUCCESS)
        return false;
    size_t m = mark_len(l->n);
    const unsigned char *head = (const unsigned char *)(uintptr_t)l->p;
    const unsigned char *tail = (const unsigned char *)(uintptr_t)(l->p + l->n - m);
    for (size_t i = 0; i < m; i++)
        if (head[i] != l->tag || tail[i] != l->tag)
            return false;
    return true;
}

struct worker {
    int id;
    int errors;
    char what[160];
};

#define STORM_FAIL(w, ...)                                 \
    do {                                                   \
        snprintf((w)->what, sizeof(w)->what, __VA_ARGS__); \
        (w)->errors++;                                     \
        return;                                            \
    } while (0)

/* 0..NSTREAMS-1: the shared streams; NSTREAMS: the legacy stream; NSTREAMS+1: the thread's
 * per-thread default stream; NSTREAMS+2: none (a plain allocation or free). */
static CUstream pick_stream(int si)
{
    if (si < NSTREAMS)
        return streams[si];
    return si == NSTREAMS + 1 ? CU_STREAM_PER_THREAD : NULL;
}

static void storm_alloc(struct worker *w, uint64_t *rng, struct live *l, int op)
{
    int si = (int)(next_rand(rng) % (NSTREAMS + 3));
    l->n = random_size(rng);
    l->mode = si <= NSTREAMS + 1 ? HEAP_ASYNC : HEAP_SYNC;
    l->stream = pick_stream(si);
    l->tag = (unsigned char)(((w->id * OPS + op) % 0x7f) + 1);
    CUresult r = heap_alloc(0, l->n, l->stream, l->mode, &l->p);
    if (r != CUDA_SUCCESS)
        STORM_FAIL(w, "heap_alloc(%zu) = %d", l->n, (int)r);
    if (!claim(l))
        STORM_FAIL(w, "block %#llx+%zu overlaps a live one", (unsigned long long)l->p, l->n);
    write_pattern(l);
}

static void storm_free(struct worker *w, uint64_t *rng, struct live *l)
{
    if (!pattern_ok(l))
        STORM_FAIL(w, "pattern of %#llx+%zu overwritten", (unsigned long long)l->p, l->n);
    unclaim(l->p);
    int si = (int)(next_rand(rng) % (NSTREAMS + 3));
    CUstream s = pick_stream(si);
    enum heap_mode mode = si <= NSTREAMS + 1 ? HEAP_ASYNC : HEAP_SYNC;
    /* a kernel still using the block when it is freed */
    if (next_rand(rng) % 3 == 0)
        ht_fill(mode == HEAP_ASYNC ? s : streams[0], l->p, LATE_BYTE, mark_len(l->n),
                next_rand(rng) % 300);
    bool foreign = true;
    if (heap_free(l->p, s, mode, &foreign) != CUDA_SUCCESS || foreign)
        STORM_FAIL(w, "heap_free(%#llx) failed", (unsigned long long)l->p);
}

static void *storm(void *arg)
{
    struct worker *w = arg;
    struct live live[MAX_LIVE];
    int n = 0;
    uint64_t rng = 0x9e3779b97f4a7c15ull * (uint64_t)(w->id + 1);
    drv_ctx_set_current(ctx);
    for (int op = 0; op < OPS && !w->errors; op++) {
        if (n < MAX_LIVE && (n == 0 || next_rand(&rng) % 2)) {
            storm_alloc(w, &rng, &live[n], op);
            n += !w->errors;
        } else {
            int i = (int)(next_rand(&rng) % (uint64_t)n);
            storm_free(w, &rng, &live[i]);
            live[i] = live[--n];
        }
        if (next_rand(&rng) % 250 == 0) {
            size_t released;
            if (heap_empty_cache(0, &released) != CUDA_SUCCESS)
                snprintf(w->what, sizeof w->what, "empty_cache failed"), w->errors++;
        }
    }
    while (n > 0 && !w->errors)
        storm_free(w, &rng, &live[--n]);
    return NULL;
}

Test(storm, threads_streams_sizes_and_frees, .timeout = 240)
{
    ht_setup("8G");
    cr_assert_eq(drv_ctx_get_current(&ctx), CUDA_SUCCESS);
    for (int i = 0; i < NSTREAMS; i++)
        streams[i] = ht_stream();
    pthread_t t[THREADS];
    struct worker w[THREADS] = {0};
    for (int i = 0; i < THREADS; i++) {
        w[i].id = i;
        pthread_create(&t[i], NULL, storm, &w[i]);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < THREADS; i++)
        cr_expect_eq(w[i].errors, 0, "thread %d: %s", i, w[i].what);
    cr_assert(heap_is_valid());
    cr_assert_eq(ht_faults(), 0, "a kernel wrote memory that was no longer its block's");
    fragless_stats_t s = ht_stats(0);
    cr_assert_eq(s.allocated_bytes.current, 0);
    cr_assert_gt(s.num_cache_hits, s.num_cache_misses);
    cr_log_info("storm: %llu allocs, %llu hits, %llu misses, %llu syncs, peak reserved %.1f MiB, "
                "peak allocated %.1f MiB",
                (unsigned long long)s.num_allocs, (unsigned long long)s.num_cache_hits,
                (unsigned long long)s.num_cache_misses, (unsigned long long)s.num_device_syncs,
                (double)s.reserved_bytes.peak / FL_MiB, (double)s.allocated_bytes.peak / FL_MiB);
    size_t released;
    cr_assert_eq(heap_empty_cache(-1, &released), CUDA_SUCCESS);
    cr_assert_eq(ht_stats(0).reserved_bytes.current, 0);
    for (int i = 0; i < NSTREAMS; i++)
        ht_stream_destroy(streams[i]);
    cr_assert_eq(ht_audit(), 0, "leak audit");
}
