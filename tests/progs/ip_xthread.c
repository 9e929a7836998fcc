/*
 * ip_xthread.c — the heap's promises when the thread that frees, looks up, empties or runs
 * out of memory is not the one that allocated: what a per-thread cache in front of the heap
 * (docs/frontend.md) must keep. Two long-lived worker threads, A and B, run the CUDA calls
 * handed to them one job at a time, so every interleaving is fixed; main hands out the jobs
 * and reads the statistics. The simulated fill kernels and device-fault count of the emulated
 * device (fragless_emu_stream_fill, fragless_emu_faults) show whether freed memory was handed
 * out, unmapped or released while earlier work could still write it.
 *
 * Modes (argument 1):
 *   rule1-xthread[-async], rule1-xthread-300k, -64k, -4k  a block allocated by A (plain;
 *       -async: on s1; the smaller sizes: both) and written later by a fill on s1, freed by B
 *       (cudaFree, cudaFreeAsync on s1, on s2); then A or B allocates the same size (plain,
 *       on s1, on s2); 20 MiB, 300 KiB, 64 KiB, 4 KiB blocks
 *   rule1-ptds[-64k]  the same where B frees on its per-thread default stream (PTDS) or Y is
 *       allocated on the allocating thread's (20 MiB: X on s1; 64 KiB: both)
 *   rule1-ptds-x[-64k]  X allocated and written on A's PTDS, freed and allocated again in
 *       every way (20 MiB: not on s2)
 *   remote-free    1000 blocks of mixed sizes allocated by A, freed by B
 *   lookup         A allocates, B looks the blocks up through interior pointers, also after A
 *                  exited
 *   concurrent     while A allocates and frees, B looks up, checks and frees A's older blocks
 *   exit           a thread allocates, frees on its PTDS while fills run, and exits; main
 *                  allocates (no overlap while the fills run), frees what it left, empties
 *                  the cache
 *   empty-cache    A's freed blocks are cached while A lives; main's empty-cache returns them
 *   oom            (FRAGLESS_EMU_MEM=64M) memory cached by one thread serves another's request
 *   streamdestroy  blocks of a destroyed stream, freed by another thread while fills still
 *                  write them, are not handed out on the stream created next
 */
#include <pthread.h>

#include "ip_prog.h"

typedef int (*emu_fill_fn)(CUstream, CUdeviceptr, int, size_t, uint64_t);
typedef uint64_t (*emu_faults_fn)(void);
typedef int (*empty_cache_fn)(int, size_t *);

/* ---- worker threads ------------------------------------------------------------------- */

typedef void (*job_fn)(void *);

struct worker {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    job_fn job; /* set by run_on, cleared by the worker when the job is done */
    void *arg;
    bool quit;
};

static struct worker wa, wb;

static void *worker_loop(void *p)
{
    struct worker *w = p;
    CHECK(cudaSetDevice(0) == cudaSuccess, "cudaSetDevice on a worker");
    pthread_mutex_lock(&w->lock);
    for (;;) {
        while (!w->job && !w->quit)
            pthread_cond_wait(&w->cond, &w->lock);
        if (!w->job)
            break;
        pthread_mutex_unlock(&w->lock);
        w->job(w->arg);
        pthread_mutex_lock(&w->lock);
        w->job = NULL;
        pthread_cond_broadcast(&w->cond);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

static void worker_start(struct worker *w)
{
    memset(w, 0, sizeof *w);
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    CHECK(pthread_create(&w->thread, NULL, worker_loop, w) == 0, "pthread_create");
}

/* Starts job(arg) on w (idle). */
static void run_start(struct worker *w, job_fn job, void *arg)
{
    pthread_mutex_lock(&w->lock);
    w->job = job;
    w->arg = arg;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

/* Waits until w's job is done. */
static void run_wait(struct worker *w)
{
    pthread_mutex_lock(&w->lock);
    while (w->job)
        pthread_cond_wait(&w->cond, &w->lock);
    pthread_mutex_unlock(&w->lock);
}

/* Runs job(arg) on w and waits until it is done. */
static void run_on(struct worker *w, job_fn job, void *arg)
{
    run_start(w, job, arg);
    run_wait(w);
}

/* The thread exits (and with it whatever it holds per thread). */
static void worker_stop(struct worker *w)
{
    pthread_mutex_lock(&w->lock);
    w->quit = true;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
    CHECK(pthread_join(w->thread, NULL) == 0, "pthread_join");
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->lock);
}

/* ---- shared helpers ------------------------------------------------------------------- */

static emu_fill_fn fill;
static emu_faults_fn faults;

static bool overlap(CUdeviceptr a, size_t an, CUdeviceptr b, size_t bn)
{
    return a < b + bn && b < a + an;
}

static cudaStream_t new_stream(void)
{
    cudaStream_t s = NULL;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess, "stream");
    return s;
}

/* Stream-ordered on s when `async`, else cudaMalloc. */
static CUdeviceptr alloc(bool async, cudaStream_t s, size_t n)
{
    void *p = NULL;
    if (async)
        CHECK(cudaMallocAsync(&p, n, s) == cudaSuccess, "cudaMallocAsync(%zu)", n);
    else
        CHECK(cudaMalloc(&p, n) == cudaSuccess, "cudaMalloc(%zu)", n);
    return (CUdeviceptr)(uintptr_t)p;
}

static void release(bool async, cudaStream_t s, CUdeviceptr d)
{
    if (async)
        CHECK(cudaFreeAsync((void *)(uintptr_t)d, s) == cudaSuccess, "cudaFreeAsync");
    else
        CHECK(cudaFree((void *)(uintptr_t)d) == cudaSuccess, "cudaFree");
}

/* Returns the bytes released (none before fragless has used the device). */
static size_t empty_cache(void)
{
    empty_cache_fn empty = (empty_cache_fn)dlsym(RTLD_DEFAULT, "fragless_empty_cache");
    size_t released = 0;
    CHECK(empty, "fragless_empty_cache");
    int rc = empty(0, &released);
    CHECK(rc == 0 || rc == FRAGLESS_ENODEV, "fragless_empty_cache: %d", rc);
    return released;
}

/* Fails unless the n bytes at d all read `byte`. One thread at a time (its buffer is static). */
static void expect_bytes(const char *what, CUdeviceptr d, size_t n, unsigned char byte)
{
    static unsigned char buf[(size_t)20 << 20];
    CHECK(n <= sizeof buf, "buffer");
    CHECK(cudaMemcpy(buf, (void *)(uintptr_t)d, n, cudaMemcpyDeviceToHost) == cudaSuccess,
          "%s: read back", what);
    for (size_t i = 0; i < n; i++)
        CHECK(buf[i] == byte, "%s: byte %zu is %#x, not %#x: overwritten", what, i, buf[i], byte);
}

/* A size from 512 B to 4 MiB, spread over the powers of two, not a multiple of 512. */
static size_t mixed_size(unsigned i)
{
    uint32_t h = (i + 1) * 2654435761u;
    size_t n = (size_t)1 << (9 + h % 13);
    return n + (h >> 8) % n;
}

#define BYTES(x) ((unsigned long long)(x))

/* ---- rule1-xthread -------------------------------------------------------------------- */

#define FILL_USEC 20000

/* PTDS: the calling thread's per-thread default stream (cudaStreamPerThread), one handle that
 * names another stream on every thread. */
enum free_way { FREE_PLAIN, FREE_ON_S1, FREE_ON_S2, FREE_ON_PTDS };
enum alloc_way { ALLOC_PLAIN, ALLOC_ON_S1, ALLOC_ON_S2, ALLOC_ON_PTDS };

static cudaStream_t s1, s2;

/* One case: X allocated by A (plain, on s1 or on A's PTDS), written by a fill on s1 (on A's
 * PTDS for X there) that ends at `done`, freed by B; then Y of the same size allocated by A
 * or B. */
struct r1_case {
    size_t size;
    enum alloc_way x_way; /* not ALLOC_ON_S2 */
    enum free_way how;
    enum alloc_way y_way;
    bool y_by_b; /* Y allocated by B (the thread that freed X), else by A */
    CUdeviceptr x, y;
    cudaEvent_t done;
    bool reused;
    char name[200];
    unsigned npads; /* blocks allocated before X and live until the end */
};

/* Small blocks (up to 1 MiB) are packed into 2 MiB classic segments: X is allocated after
 * blocks (of at most 1 MiB each) that fill the rest of its segment, so that only X or new
 * memory can serve Y. */
#define R1_SEGMENT   ((size_t)2 << 20)
#define R1_SMALL_MAX ((size_t)1 << 20)
static struct {
    CUdeviceptr p;
    size_t n;
} pads[R1_SEGMENT / R1_SMALL_MAX + 1];

static unsigned r1_pads(size_t size)
{
    unsigned n = 0;
    for (size_t rest = size <= R1_SMALL_MAX ? R1_SEGMENT - size : 0; rest; n++) {
        pads[n].n = rest < R1_SMALL_MAX ? rest : R1_SMALL_MAX;
        rest -= pads[n].n;
    }
    return n;
}

static cudaStream_t stream_of(enum alloc_way w)
{
    static const cudaStream_t *const by_way[] = {NULL, &s1, &s2, NULL};
    return w == ALLOC_ON_PTDS ? cudaStreamPerThread : by_way[w] ? *by_way[w] : 0;
}

/* The stream X is allocated and written on (the calling thread's PTDS for ALLOC_ON_PTDS). */
static cudaStream_t x_stream(const struct r1_case *c)
{
    return c->x_way == ALLOC_ON_PTDS ? cudaStreamPerThread : s1;
}

static void r1_alloc_and_fill(void *arg)
{
    struct r1_case *c = arg;
    cudaStream_t xs = x_stream(c);
    bool async = c->x_way != ALLOC_PLAIN;
    for (unsigned i = 0; i < c->npads; i++)
        pads[i].p = alloc(async, xs, pads[i].n);
    c->x = alloc(async, xs, c->size);
    CHECK(cudaStreamSynchronize(xs) == cudaSuccess, "sync");
    CHECK(fill((CUstream)xs, c->x, 0x11, c->size, FILL_USEC) == 0, "queue the fill");
    CHECK(cudaEventRecord(c->done, xs) == cudaSuccess, "record");
}

static void r1_free(void *arg)
{
    struct r1_case *c = arg;
    cudaStream_t fs = stream_of((enum alloc_way)c->how);
    /* a stream-ordered free is ordered after the fill, as a program must */
    if (c->how != FREE_PLAIN)
        CHECK(cudaStreamWaitEvent(fs, c->done, 0) == cudaSuccess, "wait event");
    release(c->how != FREE_PLAIN, fs, c->x);
}

/* Reuse at once is allowed only on the stream of a stream-ordered free (a PTDS is B's only
 * on B). */
static bool r1_reuse_is_ordered(const struct r1_case *c)
{
    if (c->how == FREE_PLAIN || (int)c->how != (int)c->y_way)
        return false;
    return c->how != FREE_ON_PTDS || c->y_by_b;
}

static void r1_realloc(void *arg)
{
    struct r1_case *c = arg;
    cudaStream_t ys = stream_of(c->y_way);
    c->y = alloc(c->y_way != ALLOC_PLAIN, ys, c->size);
    c->reused = overlap(c->x, c->size, c->y, c->size);
    /* catches a block freed by another thread handed out while the fill may still write it */
    CHECK(!c->reused || r1_reuse_is_ordered(c) || cudaEventQuery(c->done) == cudaSuccess,
          "%s: the block was handed out again while the fill may still write it", c->name);
    CHECK(cudaMemsetAsync((void *)(uintptr_t)c->y, 0x22, c->size, ys) == cudaSuccess, "memset");
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "%s: sync (device fault?)", c->name);
    /* catches reuse on a stream not ordered after the fill: the fill lands in the new block */
    expect_bytes(c->name, c->y, c->size, 0x22);
    release(c->y_way != ALLOC_PLAIN, ys, c->y);
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "sync");
}

static void r1_free_pads(void *arg)
{
    struct r1_case *c = arg;
    for (unsigned i = 0; i < c->npads; i++)
        release(c->x_way != ALLOC_PLAIN, x_stream(c), pads[i].p);
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "sync");
}

static const char *const free_names[] = {"cudaFree", "cudaFreeAsync on s1", "cudaFreeAsync on s2",
                                         "cudaFreeAsync on its PTDS"};
static const char *const alloc_names[] = {"cudaMalloc", "cudaMallocAsync on s1",
                                          "cudaMallocAsync on s2", "cudaMallocAsync on its PTDS"};

/* Sets of ways (bit 1 << way) that a mode runs. */
#define BIT(way) (1u << (way))
#define ALL_WAYS 0xfu
#define NO_PTDS  0x7u

/* Returns whether X was reused. */
static bool r1_run(struct r1_case *c)
{
    struct worker *by = c->y_by_b ? &wb : &wa;
    snprintf(c->name, sizeof c->name, "%zu B: A %s, B %s, %s %s", c->size, alloc_names[c->x_way],
             free_names[c->how], c->y_by_b ? "B" : "A", alloc_names[c->y_way]);
    empty_cache(); /* only X can serve Y */
    CHECK(cudaEventCreate(&c->done) == cudaSuccess, "event");
    run_on(&wa, r1_alloc_and_fill, c);
    run_on(&wb, r1_free, c);
    run_on(by, r1_realloc, c);
    run_on(&wb, r1_free_pads, c);
    CHECK(cudaEventDestroy(c->done) == cudaSuccess, "event");
    return c->reused;
}

/* Every case with X allocated, freed and Y allocated in the ways of x_ways, free_ways and
 * y_ways; ptds: only those where one of them is on a per-thread default stream, else only
 * those where none is. */
static void mode_rule1(size_t size, unsigned x_ways, unsigned free_ways, unsigned y_ways, bool ptds)
{
    s1 = new_stream();
    s2 = new_stream();
    fragless_stats_t before = ip_stats0();
    unsigned cases = 0, reused = 0, npads = 0;
    for (int xw = ALLOC_PLAIN; xw <= ALLOC_ON_PTDS; xw++)
        for (int how = FREE_PLAIN; how <= FREE_ON_PTDS; how++)
            for (int by = 0; by < 2; by++)
                for (int yw = ALLOC_PLAIN; yw <= ALLOC_ON_PTDS; yw++) {
                    bool on_ptds =
                        xw == ALLOC_ON_PTDS || how == FREE_ON_PTDS || yw == ALLOC_ON_PTDS;
                    if (!(x_ways >> xw & 1) || !(free_ways >> how & 1) || !(y_ways >> yw & 1) ||
                        on_ptds != ptds)
                        continue;
                    struct r1_case c = {.size = size,
                                        .x_way = xw,
                                        .how = how,
                                        .y_way = yw,
                                        .y_by_b = by,
                                        .npads = r1_pads(size)};
                    reused += r1_run(&c);
                    cases++;
                    npads += c.npads;
                }
    fragless_stats_t after = ip_stats0();
    /* catches allocations or frees of another thread's blocks not counted */
    ip_expect_served(&before, &after, 2 * cases + npads, 2 * cases + npads);
    /* catches bytes of blocks freed by another thread still counted as allocated */
    CHECK(after.allocated_bytes.current == before.allocated_bytes.current,
          "allocated %llu, was %llu", BYTES(after.allocated_bytes.current),
          BYTES(before.allocated_bytes.current));
    CHECK(cudaStreamDestroy(s1) == cudaSuccess && cudaStreamDestroy(s2) == cudaSuccess, "end");
    printf("%zu B: %u of %u cases reused the freed block\n", size, reused, cases);
}

/* ---- remote-free ---------------------------------------------------------------------- */

#define NBLOCKS 1000

struct blk {
    CUdeviceptr p;
    size_t n;
    bool async;
};

static struct blk blks[NBLOCKS];
static cudaStream_t sa, sb;

/* Allocates blks[0..count) of size_of(i) (even: cudaMalloc, odd: cudaMallocAsync on sa,
 * created on first use) on the calling thread. */
static void alloc_sized(unsigned count, size_t (*size_of)(unsigned))
{
    if (!sa)
        sa = new_stream();
    for (unsigned i = 0; i < count; i++) {
        blks[i] = (struct blk){0, size_of(i), i % 2 == 1};
        blks[i].p = alloc(blks[i].async, sa, blks[i].n);
    }
}

static void alloc_blocks(void *arg)
{
    (void)arg;
    alloc_sized(NBLOCKS, mixed_size);
}

/* Frees blks: plain ones by cudaFree, stream-ordered ones on sa or sb in turn. */
static void free_blocks(void *arg)
{
    (void)arg;
    if (!sb)
        sb = new_stream();
    for (unsigned i = 0; i < NBLOCKS; i++)
        release(blks[i].async, i % 4 == 1 ? sa : sb, blks[i].p);
}

static int by_address(const void *a, const void *b)
{
    const struct blk *x = a, *y = b;
    return x->p < y->p ? -1 : x->p > y->p;
}

/* Fails if two of the live blocks overlap. */
static void expect_disjoint(void)
{
    static struct blk sorted[NBLOCKS];
    memcpy(sorted, blks, sizeof sorted);
    qsort(sorted, NBLOCKS, sizeof sorted[0], by_address);
    for (unsigned i = 1; i < NBLOCKS; i++)
        CHECK(sorted[i - 1].p + sorted[i - 1].n <= sorted[i].p,
              "live blocks %#llx+%zu and %#llx overlap", BYTES(sorted[i - 1].p), sorted[i - 1].n,
              BYTES(sorted[i].p));
}

static uint64_t blocks_requested(void)
{
    uint64_t sum = 0;
    for (unsigned i = 0; i < NBLOCKS; i++)
        sum += blks[i].n;
    return sum;
}

static void mode_remote_free(void)
{
    fragless_stats_t s0 = ip_stats0();
    run_on(&wa, alloc_blocks, NULL);
    fragless_stats_t s1s = ip_stats0();
    /* catches a thread cache handing out one range twice */
    expect_disjoint();
    /* catches statistics of A's allocations not visible to another thread */
    CHECK(s1s.requested_bytes.current == s0.requested_bytes.current + blocks_requested(),
          "requested %llu, want %llu", BYTES(s1s.requested_bytes.current),
          BYTES(s0.requested_bytes.current + blocks_requested()));
    ip_expect_served(&s0, &s1s, NBLOCKS, 0);
    run_on(&wb, free_blocks, NULL);
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "sync");
    fragless_stats_t s2s = ip_stats0();
    /* catches remote frees lost or not yet counted when the free returns */
    ip_expect_served(&s1s, &s2s, 0, NBLOCKS);
    CHECK(s2s.allocated_bytes.current == s0.allocated_bytes.current &&
              s2s.requested_bytes.current == s0.requested_bytes.current,
          "allocated %llu (was %llu), requested %llu (was %llu) after B freed A's blocks",
          BYTES(s2s.allocated_bytes.current), BYTES(s0.allocated_bytes.current),
          BYTES(s2s.requested_bytes.current), BYTES(s0.requested_bytes.current));
    /* A again, then its own frees: its cache must take back what B freed */
    run_on(&wa, alloc_blocks, NULL);
    expect_disjoint();
    run_on(&wa, free_blocks, NULL);
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "sync");
    empty_cache();
    fragless_stats_t s3s = ip_stats0();
    ip_expect_served(&s2s, &s3s, NBLOCKS, NBLOCKS);
    /* catches remotely freed blocks never merged back, so never released */
    CHECK(s3s.reserved_bytes.current == 0 && s3s.allocated_bytes.current == 0,
          "reserved %llu, allocated %llu after everything was freed and the cache emptied",
          BYTES(s3s.reserved_bytes.current), BYTES(s3s.allocated_bytes.current));
    CHECK(cudaStreamDestroy(sa) == cudaSuccess && cudaStreamDestroy(sb) == cudaSuccess, "end");
}

/* ---- lookup --------------------------------------------------------------------------- */

static const size_t lookup_sizes[] = {4096, 300 << 10, (5 << 20) + 123, (size_t)20 << 20};
#define NLOOKUP (2 * sizeof lookup_sizes / sizeof lookup_sizes[0])
static struct blk lk[NLOOKUP];

static void lookup_alloc(void *arg)
{
    (void)arg;
    sa = new_stream();
    for (unsigned i = 0; i < NLOOKUP; i++) {
        lk[i] = (struct blk){0, lookup_sizes[i / 2], i % 2 == 1};
        lk[i].p = alloc(lk[i].async, sa, lk[i].n);
    }
}

static void expect_range(const struct blk *b, CUdeviceptr at)
{
    CUdeviceptr base = 0;
    size_t size = 0;
    CHECK(cuMemGetAddressRange(&base, &size, at) == CUDA_SUCCESS, "cuMemGetAddressRange");
    /* catches a lookup that only finds blocks of the calling thread's cache */
    CHECK(base == b->p && size == b->n, "range of %#llx: %#llx+%zu, want %#llx+%zu", BYTES(at),
          BYTES(base), size, BYTES(b->p), b->n);
    CHECK(cuPointerGetAttribute(&base, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, at) == CUDA_SUCCESS &&
              cuPointerGetAttribute(&size, CU_POINTER_ATTRIBUTE_RANGE_SIZE, at) == CUDA_SUCCESS,
          "cuPointerGetAttribute");
    CHECK(base == b->p && size == b->n, "attribute range of %#llx: %#llx+%zu", BYTES(at),
          BYTES(base), size);
    struct cudaPointerAttributes a;
    CHECK(cudaPointerGetAttributes(&a, (void *)(uintptr_t)at) == cudaSuccess,
          "cudaPointerGetAttributes");
    CHECK(a.type == cudaMemoryTypeDevice && a.device == 0 &&
              a.devicePointer == (void *)(uintptr_t)at,
          "cudaPointerGetAttributes(%#llx): type %d device %d pointer %p", BYTES(at), (int)a.type,
          a.device, a.devicePointer);
}

static void lookup_all(void *arg)
{
    (void)arg;
    for (unsigned i = 0; i < NLOOKUP; i++) {
        expect_range(&lk[i], lk[i].p);
        expect_range(&lk[i], lk[i].p + 1);
        expect_range(&lk[i], lk[i].p + lk[i].n / 2);
        expect_range(&lk[i], lk[i].p + lk[i].n - 1);
    }
}

static void lookup_free_all(void *arg)
{
    (void)arg;
    for (unsigned i = 0; i < NLOOKUP; i++)
        release(lk[i].async, sa, lk[i].p);
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "sync");
    for (unsigned i = 0; i < NLOOKUP; i++) {
        if (lk[i].n % (2 << 20) == 0)
            continue; /* the driver's own range could have the same size */
        CUdeviceptr base = 0;
        size_t size = 0;
        CUresult r = cuMemGetAddressRange(&base, &size, lk[i].p + 1);
        /* catches a freed block still found (a stale entry of a per-thread live table) */
        CHECK(r != CUDA_SUCCESS || size != lk[i].n, "freed %#llx+%zu still found as %#llx+%zu",
              BYTES(lk[i].p), lk[i].n, BYTES(base), size);
    }
}

static void mode_lookup(void)
{
    run_on(&wa, lookup_alloc, NULL);
    run_on(&wb, lookup_all, NULL);
    lookup_all(NULL); /* main too */
    worker_stop(&wa);
    run_on(&wb, lookup_all, NULL); /* after the allocating thread exited */
    run_on(&wb, lookup_free_all, NULL);
    CHECK(cudaStreamDestroy(sa) == cudaSuccess, "end");
}

/* ---- concurrent --------------------------------------------------------------------- */

#define CHURN 4000

/* Bytes each live block of the concurrent mode holds: 0x80 | its index. */
static unsigned char tag_of(unsigned i)
{
    return (unsigned char)(0x80 | (i & 0x7f));
}

/* A size from 512 B to 256 KiB. */
static size_t small_size(unsigned i)
{
    return 512 + mixed_size(i) % (256 << 10);
}

static void tagged_alloc(void *arg)
{
    (void)arg;
    alloc_sized(NBLOCKS, small_size);
    for (unsigned i = 0; i < NBLOCKS; i++)
        CHECK(cudaMemsetAsync((void *)(uintptr_t)blks[i].p, tag_of(i), blks[i].n, sa) ==
                  cudaSuccess,
              "tag");
    CHECK(cudaStreamSynchronize(sa) == cudaSuccess, "sync");
}

/* A: allocates, writes 0x01 over, looks up and frees blocks, plain and on sa. */
static void churn(void *arg)
{
    (void)arg;
    for (unsigned i = 0; i < CHURN; i++) {
        size_t n = small_size(i + NBLOCKS);
        bool async = i % 2;
        CUdeviceptr p = alloc(async, sa, n);
        CHECK(cudaMemsetAsync((void *)(uintptr_t)p, 0x01, n, async ? sa : 0) == cudaSuccess,
              "memset");
        CUdeviceptr base = 0;
        size_t size = 0;
        CHECK(cuMemGetAddressRange(&base, &size, p + n / 2) == CUDA_SUCCESS && base == p &&
                  size == n,
              "own block %#llx+%zu found as %#llx+%zu", BYTES(p), n, BYTES(base), size);
        release(async, sa, p);
    }
}

/* B, meanwhile: looks up, checks and frees A's tagged blocks. */
static void check_and_free(void *arg)
{
    (void)arg;
    static unsigned char buf[(256 << 10) + 512]; /* small_size() at most */
    sb = new_stream();
    for (unsigned i = 0; i < NBLOCKS; i++) {
        const struct blk *b = &blks[i];
        CUdeviceptr base = 0;
        size_t size = 0;
        /* catches a lookup racing with the owner's allocations and frees */
        CHECK(cuMemGetAddressRange(&base, &size, b->p + b->n - 1) == CUDA_SUCCESS && base == b->p &&
                  size == b->n,
              "block %u %#llx+%zu found as %#llx+%zu", i, BYTES(b->p), b->n, BYTES(base), size);
        CHECK(cudaMemcpy(buf, (void *)(uintptr_t)b->p, b->n, cudaMemcpyDeviceToHost) == cudaSuccess,
              "read");
        for (size_t k = 0; k < b->n; k++)
            /* catches A's churn handed (part of) a live block of A's */
            CHECK(buf[k] == tag_of(i), "block %u byte %zu is %#x: handed out while live", i, k,
                  buf[k]);
        release(b->async, i % 4 == 1 ? sa : sb, b->p);
    }
}

static void mode_concurrent(void)
{
    fragless_stats_t s0 = ip_stats0();
    run_on(&wa, tagged_alloc, NULL);
    run_start(&wa, churn, NULL);
    run_start(&wb, check_and_free, NULL);
    run_wait(&wa);
    run_wait(&wb);
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "sync");
    fragless_stats_t s1s = ip_stats0();
    /* catches counts lost when the owner and a remote thread free at once */
    ip_expect_served(&s0, &s1s, NBLOCKS + CHURN, NBLOCKS + CHURN);
    CHECK(s1s.allocated_bytes.current == s0.allocated_bytes.current &&
              s1s.requested_bytes.current == s0.requested_bytes.current,
          "allocated %llu (was %llu), requested %llu (was %llu)",
          BYTES(s1s.allocated_bytes.current), BYTES(s0.allocated_bytes.current),
          BYTES(s1s.requested_bytes.current), BYTES(s0.requested_bytes.current));
    empty_cache();
    CHECK(ip_stats0().reserved_bytes.current == 0, "reserved after everything was freed");
    CHECK(cudaStreamDestroy(sa) == cudaSuccess && cudaStreamDestroy(sb) == cudaSuccess, "end");
}

/* ---- exit ----------------------------------------------------------------------------- */

#define EXIT_KEEP      200
#define EXIT_FILL_USEC 50000

/* Blocks the exiting thread frees on its per-thread default stream while fills still write
 * them. */
static const size_t exit_fill_sizes[] = {64 << 10, (size_t)20 << 20};
#define NEXIT_FILL (sizeof exit_fill_sizes / sizeof exit_fill_sizes[0])
static CUdeviceptr exit_filled[NEXIT_FILL];
static cudaEvent_t exit_done;

static void exit_free_filled(void)
{
    for (unsigned k = 0; k < NEXIT_FILL; k++)
        exit_filled[k] = alloc(true, cudaStreamPerThread, exit_fill_sizes[k]);
    CHECK(cudaStreamSynchronize(cudaStreamPerThread) == cudaSuccess, "sync");
    for (unsigned k = 0; k < NEXIT_FILL; k++)
        CHECK(fill(CU_STREAM_PER_THREAD, exit_filled[k], 0x11, exit_fill_sizes[k],
                   EXIT_FILL_USEC) == 0,
              "fill");
    CHECK(cudaEventRecord(exit_done, cudaStreamPerThread) == cudaSuccess, "record");
    for (unsigned k = 0; k < NEXIT_FILL; k++)
        release(true, cudaStreamPerThread, exit_filled[k]);
}

/* On main after the thread exited: the same sizes, plain and on a new stream, overlap the
 * exited thread's freed blocks only once their fills are done. */
static void exit_reuse(void)
{
    cudaStream_t s = new_stream();
    CUdeviceptr y[2 * NEXIT_FILL];
    for (unsigned i = 0; i < 2 * NEXIT_FILL; i++) {
        size_t n = exit_fill_sizes[i / 2];
        y[i] = alloc(i % 2, s, n);
        bool done = cudaEventQuery(exit_done) == cudaSuccess;
        for (unsigned k = 0; k < NEXIT_FILL; k++)
            /* catches an exited thread's stream-ordered frees made reusable everywhere */
            CHECK(done || !overlap(y[i], n, exit_filled[k], exit_fill_sizes[k]),
                  "block %u overlaps the exited thread's freed block %u while its fill runs", i, k);
        CHECK(cudaMemsetAsync((void *)(uintptr_t)y[i], 0x22, n, i % 2 ? s : 0) == cudaSuccess,
              "memset");
    }
    CHECK(cudaEventSynchronize(exit_done) == cudaSuccess && cudaDeviceSynchronize() == cudaSuccess,
          "sync (device fault?)");
    for (unsigned i = 0; i < 2 * NEXIT_FILL; i++) {
        expect_bytes("block allocated after the thread exited", y[i], exit_fill_sizes[i / 2], 0x22);
        release(i % 2, s, y[i]);
    }
    CHECK(cudaDeviceSynchronize() == cudaSuccess && cudaStreamDestroy(s) == cudaSuccess, "end");
}

/* Allocates EXIT_KEEP blocks it leaves live, some it frees itself (so that its cache holds
 * memory when it exits), and some it frees on its PTDS while fills write them. */
static void exit_alloc(void *arg)
{
    (void)arg;
    alloc_sized(EXIT_KEEP, mixed_size);
    for (unsigned i = 0; i < 50; i++) {
        bool async = i % 2;
        release(async, sa, alloc(async, sa, mixed_size(i + EXIT_KEEP)));
    }
    exit_free_filled();
}

static void mode_exit(void)
{
    const size_t keep = (3 << 20) + 5;
    CUdeviceptr live = alloc(false, 0, keep);
    CHECK(cudaMemset((void *)(uintptr_t)live, 0x33, keep) == cudaSuccess, "memset");
    empty_cache();
    fragless_stats_t s0 = ip_stats0();
    CHECK(cudaEventCreateWithFlags(&exit_done, cudaEventDisableTiming) == cudaSuccess, "event");
    run_on(&wa, exit_alloc, NULL);
    worker_stop(&wa);
    exit_reuse();
    CHECK(cudaEventDestroy(exit_done) == cudaSuccess, "event");
    /* catches blocks of an exited thread that can no longer be freed */
    for (unsigned i = 0; i < EXIT_KEEP; i++)
        release(blks[i].async, sa, blks[i].p);
    CHECK(cudaDeviceSynchronize() == cudaSuccess && cudaStreamDestroy(sa) == cudaSuccess, "sync");
    size_t released = empty_cache();
    fragless_stats_t s1s = ip_stats0();
    unsigned served = EXIT_KEEP + 50 + 3 * NEXIT_FILL;
    ip_expect_served(&s0, &s1s, served, served);
    /* catches memory held for an exited thread that empty-cache does not return */
    CHECK(s1s.reserved_bytes.current == s0.reserved_bytes.current &&
              s1s.allocated_bytes.current == s0.allocated_bytes.current,
          "reserved %llu (was %llu), allocated %llu (was %llu), released %zu",
          BYTES(s1s.reserved_bytes.current), BYTES(s0.reserved_bytes.current),
          BYTES(s1s.allocated_bytes.current), BYTES(s0.allocated_bytes.current), released);
    /* catches a live block's pages released with the exited thread's memory */
    expect_bytes("main's live block", live, keep, 0x33);
    release(false, 0, live);
    empty_cache();
    CHECK(ip_stats0().reserved_bytes.current == 0, "reserved after everything was freed");
}

/* ---- empty-cache ---------------------------------------------------------------------- */

static const size_t cache_sizes[] = {4096, 64 << 10, 300 << 10, (5 << 20) + 123, (size_t)20 << 20};
#define NCACHE (2 * sizeof cache_sizes / sizeof cache_sizes[0])

/* Allocates and frees (plain and on sa) without a sync: all of it stays cached. */
static void cache_cycle(void *arg)
{
    (void)arg;
    if (!sa)
        sa = new_stream();
    CUdeviceptr p[NCACHE];
    for (unsigned i = 0; i < NCACHE; i++) {
        p[i] = alloc(i % 2, sa, cache_sizes[i / 2]);
        ip_touch_rt((void *)(uintptr_t)p[i], cache_sizes[i / 2]);
    }
    for (unsigned i = 0; i < NCACHE; i++)
        release(i % 2, sa, p[i]);
}

static void mode_empty_cache(void)
{
    run_on(&wa, cache_cycle, NULL);
    fragless_stats_t s0 = ip_stats0();
    CHECK(s0.allocated_bytes.current == 0 && s0.reserved_bytes.current > 0,
          "A's blocks are freed and cached: allocated %llu reserved %llu",
          BYTES(s0.allocated_bytes.current), BYTES(s0.reserved_bytes.current));
    size_t released = empty_cache();
    fragless_stats_t s1s = ip_stats0();
    /* catches empty-cache that skips memory cached by another (living) thread */
    CHECK(s1s.reserved_bytes.current == 0 && released == s0.reserved_bytes.current,
          "reserved %llu after empty-cache from main (released %zu of %llu)",
          BYTES(s1s.reserved_bytes.current), released, BYTES(s0.reserved_bytes.current));
    /* catches a thread cache carving from memory empty-cache gave back (touching it fails) */
    run_on(&wa, cache_cycle, NULL);
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "sync");
    empty_cache();
    CHECK(ip_stats0().reserved_bytes.current == 0, "reserved after the second empty-cache");
    CHECK(cudaStreamDestroy(sa) == cudaSuccess, "end");
}

/* ---- oom ------------------------------------------------------------------------------ */

#define OOM_BLOCK ((size_t)4 << 20)
#define OOM_TOTAL ((size_t)48 << 20)

static void oom_cycle(void *arg)
{
    (void)arg;
    if (!sa)
        sa = new_stream();
    CUdeviceptr p[OOM_TOTAL / OOM_BLOCK];
    for (unsigned i = 0; i < OOM_TOTAL / OOM_BLOCK; i++)
        p[i] = alloc(i % 2, sa, OOM_BLOCK);
    for (unsigned i = 0; i < OOM_TOTAL / OOM_BLOCK; i++)
        release(i % 2, sa, p[i]);
}

static CUdeviceptr oom_big;

static void oom_big_async(void *arg)
{
    (void)arg;
    /* catches main's pending cudaFree (another thread's) not reclaimed by A's OOM path */
    oom_big = alloc(true, sa, OOM_TOTAL);
    ip_touch_rt((void *)(uintptr_t)oom_big, OOM_TOTAL);
    release(true, sa, oom_big);
    CHECK(cudaStreamSynchronize(sa) == cudaSuccess, "sync");
}

static void mode_oom(void)
{
    run_on(&wa, oom_cycle, NULL);
    /* catches memory cached by A that main's request cannot get back */
    CUdeviceptr big = alloc(false, 0, OOM_TOTAL);
    ip_touch_rt((void *)(uintptr_t)big, OOM_TOTAL);
    release(false, 0, big);
    run_on(&wa, oom_big_async, NULL);
    run_on(&wa, oom_cycle, NULL);
    run_on(&wb, oom_cycle, NULL);
    /* B's cache and A's cache both hold freed memory: main again */
    big = alloc(false, 0, OOM_TOTAL);
    release(false, 0, big);
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "sync");
    fragless_stats_t s = ip_stats0();
    CHECK(s.allocated_bytes.current == 0 && s.num_ooms == 0, "allocated %llu, %llu OOMs",
          BYTES(s.allocated_bytes.current), BYTES(s.num_ooms));
    CHECK(cudaStreamDestroy(sa) == cudaSuccess, "end");
}

/* ---- streamdestroy -------------------------------------------------------------------- */

static const size_t sd_sizes[] = {4096, 64 << 10, 300 << 10, (2 << 20) + 7, (size_t)20 << 20};
#define NSD     (2 * sizeof sd_sizes / sizeof sd_sizes[0])
#define SD_FILL 50000
static struct blk sd_old[NSD], sd_new[NSD];
static cudaEvent_t sd_done;
static cudaStream_t sd_t;

/* A: NSD blocks on sa, each written later by a fill on sa. */
static void sd_alloc(void *arg)
{
    (void)arg;
    sa = new_stream();
    for (unsigned i = 0; i < NSD; i++) {
        sd_old[i] = (struct blk){0, sd_sizes[i / 2], true};
        sd_old[i].p = alloc(true, sa, sd_old[i].n);
    }
    CHECK(cudaStreamSynchronize(sa) == cudaSuccess, "sync");
    for (unsigned i = 0; i < NSD; i++)
        CHECK(fill((CUstream)sa, sd_old[i].p, 0x11, sd_old[i].n, SD_FILL) == 0, "fill");
    CHECK(cudaEventRecord(sd_done, sa) == cudaSuccess, "record");
}

/* B: frees the even ones on sa, then destroys sa. */
static void sd_free_and_destroy(void *arg)
{
    (void)arg;
    for (unsigned i = 0; i < NSD; i += 2)
        release(true, sa, sd_old[i].p);
    CHECK(cudaStreamDestroy(sa) == cudaSuccess, "destroy");
}

/* On the calling thread: every other new block, on the new stream sd_t. */
static void sd_realloc(void *arg)
{
    unsigned first = *(const unsigned *)arg;
    if (!sd_t) {
        sd_t = new_stream();
        printf("the new stream %s the destroyed one's handle\n",
               sd_t == sa ? "has" : "does not have");
    }
    for (unsigned i = first; i < NSD; i += 2) {
        sd_new[i] = (struct blk){0, sd_sizes[i / 2], true};
        sd_new[i].p = alloc(true, sd_t, sd_new[i].n);
        bool done = cudaEventQuery(sd_done) == cudaSuccess;
        for (unsigned j = 0; j < NSD; j++) {
            bool hit = overlap(sd_new[i].p, sd_new[i].n, sd_old[j].p, sd_old[j].n);
            /* catches a live block of the destroyed stream handed out again */
            CHECK(!hit || j % 2 == 0, "new block %u overlaps live old block %u", i, j);
            /* catches a block freed on a destroyed stream reused on its successor too early */
            CHECK(!hit || done, "new block %u overlaps freed block %u while its fill runs", i, j);
        }
        CHECK(cudaMemsetAsync((void *)(uintptr_t)sd_new[i].p, 0x22, sd_new[i].n, sd_t) ==
                  cudaSuccess,
              "memset");
    }
}

static void mode_streamdestroy(void)
{
    CHECK(cudaEventCreateWithFlags(&sd_done, cudaEventDisableTiming) == cudaSuccess, "event");
    run_on(&wa, sd_alloc, NULL);
    run_on(&wb, sd_free_and_destroy, NULL);
    unsigned zero = 0, one = 1;
    run_on(&wa, sd_realloc, &zero);
    run_on(&wb, sd_realloc, &one);
    /* the fills ran on a destroyed stream: wait for them by their event (the emulated
     * device's cudaDeviceSynchronize forgets a destroyed stream's queued work) */
    CHECK(cudaEventSynchronize(sd_done) == cudaSuccess && cudaDeviceSynchronize() == cudaSuccess,
          "sync (device fault?)");
    char what[64];
    for (unsigned i = 0; i < NSD; i++) {
        snprintf(what, sizeof what, "new block %u", i);
        expect_bytes(what, sd_new[i].p, sd_new[i].n, 0x22);
        release(true, sd_t, sd_new[i].p);
    }
    for (unsigned i = 1; i < NSD; i += 2) {
        snprintf(what, sizeof what, "old live block %u", i);
        expect_bytes(what, sd_old[i].p, sd_old[i].n, 0x11);
        release(false, 0, sd_old[i].p);
    }
    CHECK(cudaDeviceSynchronize() == cudaSuccess && cudaStreamDestroy(sd_t) == cudaSuccess &&
              cudaEventDestroy(sd_done) == cudaSuccess,
          "end");
    CHECK(ip_stats0().allocated_bytes.current == 0, "allocated after everything was freed");
}

/* ---- main ----------------------------------------------------------------------------- */

static void rule1_20m_plain(void)
{
    mode_rule1((size_t)20 << 20, BIT(ALLOC_PLAIN), NO_PTDS, NO_PTDS, false);
}

static void rule1_20m_async(void)
{
    mode_rule1((size_t)20 << 20, BIT(ALLOC_ON_S1), NO_PTDS, NO_PTDS, false);
}

static void rule1_small(size_t size)
{
    mode_rule1(size, BIT(ALLOC_PLAIN) | BIT(ALLOC_ON_S1), NO_PTDS, NO_PTDS, false);
}

static void rule1_300k(void)
{
    rule1_small(300 << 10);
}

static void rule1_64k(void)
{
    rule1_small(64 << 10);
}

static void rule1_4k(void)
{
    rule1_small(4 << 10);
}

static void rule1_ptds_20m(void)
{
    mode_rule1((size_t)20 << 20, BIT(ALLOC_ON_S1), ALL_WAYS, ALL_WAYS, true);
}

static void rule1_ptds_64k(void)
{
    mode_rule1(64 << 10, BIT(ALLOC_PLAIN) | BIT(ALLOC_ON_S1), ALL_WAYS, ALL_WAYS, true);
}

/* X on A's PTDS: three ways of freeing and allocating again (s2 is as s1) at 20 MiB. */
static void rule1_ptds_x_20m(void)
{
    mode_rule1((size_t)20 << 20, BIT(ALLOC_ON_PTDS),
               BIT(FREE_PLAIN) | BIT(FREE_ON_S1) | BIT(FREE_ON_PTDS),
               BIT(ALLOC_PLAIN) | BIT(ALLOC_ON_S1) | BIT(ALLOC_ON_PTDS), true);
}

static void rule1_ptds_x_64k(void)
{
    mode_rule1(64 << 10, BIT(ALLOC_ON_PTDS), ALL_WAYS, ALL_WAYS, true);
}

static const struct mode {
    const char *name;
    void (*run)(void);
} modes[] = {
    {"rule1-xthread", rule1_20m_plain},
    {"rule1-xthread-async", rule1_20m_async},
    {"rule1-xthread-300k", rule1_300k},
    {"rule1-xthread-64k", rule1_64k},
    {"rule1-xthread-4k", rule1_4k},
    {"rule1-ptds", rule1_ptds_20m},
    {"rule1-ptds-64k", rule1_ptds_64k},
    {"rule1-ptds-x", rule1_ptds_x_20m},
    {"rule1-ptds-x-64k", rule1_ptds_x_64k},
    {"remote-free", mode_remote_free},
    {"lookup", mode_lookup},
    {"concurrent", mode_concurrent},
    {"exit", mode_exit},
    {"empty-cache", mode_empty_cache},
    {"oom", mode_oom},
    {"streamdestroy", mode_streamdestroy},
};

int main(int argc, char **argv)
{
    const char *name = argc > 1 ? argv[1] : "";
    const struct mode *mode = NULL;
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
        if (strcmp(modes[i].name, name) == 0)
            mode = &modes[i];
    CHECK(mode, "unknown mode \"%s\"", name);
    fill = (emu_fill_fn)dlsym(RTLD_DEFAULT, "fragless_emu_stream_fill");
    faults = (emu_faults_fn)dlsym(RTLD_DEFAULT, "fragless_emu_faults");
    if (!fill || !faults) {
        printf("ok xthread skipped: needs the emulated device's simulated kernels\n");
        return 0;
    }
    CHECK(cudaSetDevice(0) == cudaSuccess && cudaFree(NULL) == cudaSuccess, "init");
    worker_start(&wa);
    worker_start(&wb);
    mode->run();
    /* catches freed memory unmapped or released while a fill could still write it */
    CHECK(faults() == 0, "%llu simulated device faults", BYTES(faults()));
    if (!wa.quit)
        worker_stop(&wa);
    worker_stop(&wb);
    printf("ok xthread %s\n", name);
    return 0;
}
