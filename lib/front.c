/*
 * front.c — thread fronts: each thread serves its own allocations from regions it holds,
 * without the device's heap lock (docs/frontend.md).
 *
 * Owns: one front per thread that allocates through fragless (made on its first allocation,
 * kept in a registry that only grows; a later thread reuses a dead thread's front), its
 * regions, its share of the statistics, and giving regions back to the heap.
 *
 * A region is a free block the heap handed over (region.c; BLOCK_HELD there), keyed by device,
 * stream and pool; device-wide requests (cudaMalloc, cuMemAlloc) have regions of their own,
 * keyed REGION_DEVICE_WIDE, taken from the heap's global index. Requests of up to 32 MiB are
 * carved from a region's front in order, and a block freed at the top of the stack of carved
 * blocks is given back at once, with every block below it that is free too — the
 * alloc-then-free pattern costs a few stores. Rule 1 (DESIGN.md §4): a block freed on the
 * region's own stream may be carved again at once (stream order); any other free — device-wide
 * (every free of a device-wide region's block), on another stream, or from another thread on
 * its per-thread default stream — waits for a device sync that began after it (the heap's sync
 * counters). A region that cannot serve a request while frees in it wait is set aside and
 * another one taken (a thread may hold several for one key); once the waiting frees in the
 * thread's regions on a device reach the heap's batch, the thread makes that sync, as the heap
 * does for its own pending frees.
 *
 * Regions go back to the heap (their live blocks becoming the heap's) when one no longer
 * serves its thread, when the thread exits, and for every thread at once (front_reclaim)
 * before the heap grows, on empty-cache and OOM, and when a stream or context goes.
 *
 * Statistics: a front counts what its thread carved (allocated, requested bytes, blocks) and
 * its allocations and frees; readers add them to the heap's (merged on read). Peaks: each
 * front also keeps the highest (and for reserved-but-unallocated the lowest allocated) level
 * since the heap last looked, and the heap folds these into its peaks under its lock
 * (front_fold). With one thread carving on a device that is exact; with several (at once or
 * taking turns between two folds) the sum of their highest levels may exceed the true peak,
 * never fall below it.
 *
 * Locking: a front's lock guards its regions and statistics. Its thread takes it on every call
 * (uncontended); other threads take it to free or look up its blocks and to take its regions
 * back. Order: a front's lock, then a heap's lock; never a front's lock while holding a heap's
 * lock, and never two fronts' locks except in front_lock_all (registry order: the walker and
 * fork). The statistics are atomics written under the front's lock and read by the heap's fold
 * without it.
 */
#include <pthread.h>
#include <stdlib.h>

#include "internal.h"

#define FRONT_REGIONS     8
/* Most regions a thread holds for one (device, stream, pool): the rest set aside while frees
 * in them wait for a device sync. */
#define KEY_REGIONS       4
#define FRONT_DEVICES     4
/* Larger requests go to the heap: a region of their size would hold too much. */
#define FRONT_MAX_REQUEST (32 * FL_MiB)
/* What a region asks for: a small segment's worth for small requests; for large ones twice
 * the request, within these bounds. */
#define REGION_SMALL      SIZE_SMALL_SEGMENT
#define REGION_LARGE_MIN  SIZE_LARGE_SEGMENT
#define REGION_LARGE_MAX  (64 * FL_MiB)
/* Block records a region takes from the heap at a time (one per piece it may give back). */
#define STASH_CHUNK       32
#define ENTRIES_MIN       32

enum entry_state {
    ENTRY_LIVE,   /* handed out */
    ENTRY_FREE,   /* freed on the region's stream: may be carved again once at the top */
    ENTRY_PENDING /* freed otherwise: may be carved again after a device sync */
};

/* A carved block. Entries tile [0, top) of their region in address order. */
struct entry {
    size_t off, size, requested;
    uint64_t ticket; /* pending: the heap's syncs begun when it was freed */
    enum entry_state state;
};

/* A front's statistics for one device; atomics, see the top of the file. */
struct dstat {
    _Atomic int device; /* -1: unused (written under that device's heap lock) */
    _Atomic int64_t allocated, requested, blocks;
    _Atomic int64_t hi_allocated, hi_requested, hi_blocks, lo_allocated;
    _Atomic int64_t allocs, frees, host;
    _Atomic int64_t pending; /* bytes of pending entries in its regions */
};

struct region {
    struct heap *h; /* NULL: slot unused */
    struct dstat *ds;
    CUstream stream;
    enum heap_pool_kind pool;
    struct block *blk; /* the held block */
    CUdeviceptr base;
    size_t size, top;
    size_t live;    /* bytes of live entries (also in blk->carved, for fragstat's map) */
    int64_t blocks; /* blocks it adds to the heap's one held block (in ds->blocks) */
    size_t pending; /* bytes of pending entries */
    uint64_t seen;  /* the heap's syncs done when settle last looked */
    struct entry *e;
    uint32_t n, cap;
    struct block *stash; /* block records for giving the region back */
    uint32_t nstash;
};

struct front {
    struct fl_lock lock;
    struct front *_Atomic next; /* registry */
    _Atomic bool alive;         /* a thread owns it */
    struct region r[FRONT_REGIONS];
    struct region *mru; /* where its thread last carved: looked at first (a hint) */
    struct dstat ds[FRONT_DEVICES];
};

static struct front *_Atomic registry;
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_key_t exit_key;
static pthread_once_t exit_once = PTHREAD_ONCE_INIT;
static FL_HOT_TLS _Thread_local struct front *mine;

/* ---- statistics ------------------------------------------------------------------------ */

static inline int64_t ld(_Atomic int64_t *a)
{
    return atomic_load_explicit(a, memory_order_relaxed);
}

/* Adds d to a level written only under its front's lock. */
static inline void add(_Atomic int64_t *a, int64_t d)
{
    atomic_store_explicit(a, ld(a) + d, memory_order_relaxed);
}

static inline void raise_hi(_Atomic int64_t *hi, int64_t v)
{
    if (v > ld(hi))
        atomic_store_explicit(hi, v, memory_order_relaxed);
}

static void count_carve(struct dstat *d, size_t size, size_t requested)
{
    add(&d->allocated, (int64_t)size);
    add(&d->requested, (int64_t)requested);
    add(&d->allocs, 1);
    raise_hi(&d->hi_allocated, ld(&d->allocated));
    raise_hi(&d->hi_requested, ld(&d->requested));
}

static void count_free(struct dstat *d, size_t size, size_t requested)
{
    add(&d->allocated, -(int64_t)size);
    add(&d->requested, -(int64_t)requested);
    add(&d->frees, 1);
    if (ld(&d->allocated) < ld(&d->lo_allocated))
        atomic_store_explicit(&d->lo_allocated, ld(&d->allocated), memory_order_relaxed);
}

static struct dstat *dstat_of(struct front *f, int device)
{
    for (int i = 0; i < FRONT_DEVICES; i++)
        if (atomic_load_explicit(&f->ds[i].device, memory_order_relaxed) == device)
            return &f->ds[i];
    return NULL;
}

/* f's statistics slot for h's device, made if need be; NULL if f has none left. Heap lock
 * held. */
static struct dstat *dstat_take(struct front *f, struct heap *h)
{
    struct dstat *d = dstat_of(f, h->device);
    if (d)
        return d;
    d = dstat_of(f, -1);
    if (!d)
        return NULL;
    atomic_store_explicit(&d->hi_allocated, 0, memory_order_relaxed);
    atomic_store_explicit(&d->hi_requested, 0, memory_order_relaxed);
    atomic_store_explicit(&d->hi_blocks, 0, memory_order_relaxed);
    atomic_store_explicit(&d->lo_allocated, INT64_MAX, memory_order_relaxed);
    atomic_store_explicit(&d->device, h->device, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->fronts, 1, memory_order_relaxed);
    return d;
}

/* f's slot for h's device goes, its counters into the heap's (no region of f is on h).
 * Heap lock held. */
static void dstat_drop(struct heap *h, struct dstat *d)
{
    h->st.num_allocs += (uint64_t)ld(&d->allocs);
    h->st.num_cache_hits += (uint64_t)ld(&d->allocs);
    h->st.num_frees += (uint64_t)ld(&d->frees);
    stat_add(&h->st.host_metadata_bytes, ld(&d->host));
    atomic_store_explicit(&d->device, -1, memory_order_relaxed);
    atomic_store_explicit(&d->allocs, 0, memory_order_relaxed);
    atomic_store_explicit(&d->frees, 0, memory_order_relaxed);
    atomic_store_explicit(&d->host, 0, memory_order_relaxed);
    atomic_fetch_sub_explicit(&h->fronts, 1, memory_order_relaxed);
}

void front_sum(const struct heap *h, struct front_sum *s)
{
    *s = (struct front_sum){0};
    for (struct front *f = atomic_load_explicit(&registry, memory_order_acquire); f;
         f = atomic_load_explicit(&f->next, memory_order_acquire)) {
        struct dstat *d = dstat_of(f, h->device);
        if (!d)
            continue;
        s->allocated += ld(&d->allocated);
        s->requested += ld(&d->requested);
        s->blocks += ld(&d->blocks);
        s->allocs += ld(&d->allocs);
        s->frees += ld(&d->frees);
        s->host += ld(&d->host);
    }
}

void front_fold(const struct heap *h, struct front_sum *hi, int64_t *lo_allocated)
{
    *hi = (struct front_sum){0};
    *lo_allocated = 0;
    for (struct front *f = atomic_load_explicit(&registry, memory_order_acquire); f;
         f = atomic_load_explicit(&f->next, memory_order_acquire)) {
        struct dstat *d = dstat_of(f, h->device);
        if (!d)
            continue;
        int64_t a = ld(&d->allocated), r = ld(&d->requested), b = ld(&d->blocks);
        int64_t ha = atomic_exchange_explicit(&d->hi_allocated, 0, memory_order_relaxed);
        int64_t hr = atomic_exchange_explicit(&d->hi_requested, 0, memory_order_relaxed);
        int64_t hb = atomic_exchange_explicit(&d->hi_blocks, 0, memory_order_relaxed);
        int64_t la = atomic_exchange_explicit(&d->lo_allocated, INT64_MAX, memory_order_relaxed);
        hi->allocated += ha > a ? ha : a;
        hi->requested += hr > r ? hr : r;
        hi->blocks += hb > b ? hb : b;
        *lo_allocated += la < a ? la : a;
    }
}

/* ---- regions --------------------------------------------------------------------------- */

static bool ticket_done(const struct heap *h, uint64_t ticket)
{
    return atomic_load_explicit(&h->syncs_done, memory_order_acquire) > ticket;
}

static void set_pending(struct region *r, size_t pending)
{
    add(&r->ds->pending, (int64_t)pending - (int64_t)r->pending);
    r->pending = pending;
}

size_t front_pending(const struct heap *h)
{
    int64_t sum = 0;
    for (struct front *f = atomic_load_explicit(&registry, memory_order_acquire); f;
         f = atomic_load_explicit(&f->next, memory_order_acquire)) {
        struct dstat *d = dstat_of(f, h->device);
        sum += d ? ld(&d->pending) : 0;
    }
    return (size_t)sum;
}

/* The blocks r adds to the held block the heap counts: its entries, less the held block's own
 * when they fill it (no free rest). */
static int64_t blocks_of(const struct region *r)
{
    return (int64_t)r->n - (r->n && r->top == r->size);
}

/* Brings r's share of ds->blocks up to date after its entries or top changed. */
static void count_blocks(struct region *r)
{
    int64_t now = blocks_of(r);
    if (now == r->blocks)
        return;
    add(&r->ds->blocks, now - r->blocks);
    raise_hi(&r->ds->hi_blocks, ld(&r->ds->blocks));
    r->blocks = now;
}

/* Gives back the free blocks at the top of r's stack, and the pending ones a sync covered. */
static void pop(struct region *r)
{
    while (r->n) {
        struct entry *e = &r->e[r->n - 1];
        if (e->state == ENTRY_PENDING && ticket_done(r->h, e->ticket))
            set_pending(r, r->pending - e->size);
        else if (e->state != ENTRY_FREE)
            break;
        r->top = e->off;
        r->n--;
    }
    count_blocks(r);
}

static void set_live(struct region *r, size_t live)
{
    r->live = live;
    atomic_store_explicit(&r->blk->carved, live, memory_order_relaxed);
}

static bool carve(struct region *r, size_t rounded, size_t size, CUdeviceptr *out)
{
    if (FL_UNLIKELY(r->size - r->top < rounded || r->n == r->cap || r->n >= r->nstash))
        return false;
    r->e[r->n++] = (struct entry){.off = r->top, .size = rounded, .requested = size};
    *out = r->base + r->top;
    r->top += rounded;
    set_live(r, r->live + rounded);
    count_carve(r->ds, rounded, size);
    count_blocks(r);
    return true;
}

/* The region of f serving (h, stream, pool); NULL if none. */
static struct region *region_for(struct front *f, const struct heap *h, CUstream stream,
                                 enum heap_pool_kind pool)
{
    for (int i = 0; i < FRONT_REGIONS; i++) {
        struct region *r = &f->r[i];
        if (r->h == h && r->pool == pool && r->stream == stream)
            return r;
    }
    return NULL;
}

/* The region of f holding ptr; NULL if none. */
static struct region *region_holding(struct front *f, CUdeviceptr ptr)
{
    struct region *r = f->mru; /* an unused slot has size 0: holds nothing */
    if (r && ptr - r->base < r->size)
        return r;
    for (int i = 0; i < FRONT_REGIONS; i++) {
        r = &f->r[i];
        if (ptr - r->base < r->size)
            return r;
    }
    return NULL;
}

/* The entry of r containing offset off; NULL if none (beyond the top). */
static struct entry *entry_at(struct region *r, size_t off)
{
    if (!r->n || off >= r->top)
        return NULL;
    struct entry *last = &r->e[r->n - 1];
    if (off >= last->off)
        return last;
    uint32_t lo = 0, hi = r->n - 1; /* the entry is in [lo, hi) */
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (r->e[mid].off <= off)
            lo = mid;
        else
            hi = mid;
    }
    return &r->e[lo];
}

/* Frees the block at ptr in r (f's lock held); `own`: the calling thread is r's. */
static enum front_result free_in(struct region *r, CUdeviceptr ptr, CUstream stream,
                                 enum heap_mode mode, bool own)
{
    struct entry *e = entry_at(r, ptr - r->base);
    if (!e || e->off != ptr - r->base || e->state != ENTRY_LIVE)
        return FRONT_BAD;
    bool same_stream = mode == HEAP_ASYNC && stream == r->stream && stream != REGION_DEVICE_WIDE &&
                       (stream != CU_STREAM_PER_THREAD || own);
    if (same_stream) {
        e->state = ENTRY_FREE;
    } else {
        e->state = ENTRY_PENDING;
        e->ticket = atomic_load(&r->h->syncs_begun);
        set_pending(r, r->pending + e->size);
    }
    set_live(r, r->live - e->size);
    count_free(r->ds, e->size, e->requested);
    if (same_stream && e == &r->e[r->n - 1]) /* else nothing pops before a sync (or the top) */
        pop(r);
    return FRONT_DONE;
}

/* Whether r's entry array has room for one more (grown if need be; f's lock held). */
static bool entries_room(struct region *r)
{
    if (r->n < r->cap)
        return true;
    uint32_t cap = r->cap ? r->cap * 2 : ENTRIES_MIN;
    struct entry *e = realloc(r->e, cap * sizeof *e);
    if (!e)
        return false;
    add(&r->ds->host, (int64_t)((cap - r->cap) * sizeof *e));
    r->e = e;
    r->cap = cap;
    return true;
}

/* Gives r back to its heap: its live blocks become the heap's, the rest is freed as `home`
 * says (its stream is r's). Front lock held. */
static void give_back(struct region *r, struct region_home home)
{
    struct heap *h = r->h;
    home.stream = r->stream;
    heap_lock(h);
    struct block *rest = r->blk;
    region_open(h, rest);
    int64_t live = 0, requested = 0;
    for (uint32_t i = 0; i < r->n;) {
        struct entry *e = &r->e[i];
        size_t size = e->size;
        enum piece_kind kind = PIECE_LIVE;
        if (e->state == ENTRY_LIVE) {
            live += (int64_t)e->size;
            requested += (int64_t)e->requested;
            i++;
        } else { /* a run of frees of one kind is one piece */
            bool pend = e->state == ENTRY_PENDING && !ticket_done(h, e->ticket);
            kind = pend ? PIECE_PENDING : PIECE_SPARE;
            size = 0;
            for (; i < r->n && r->e[i].state != ENTRY_LIVE; i++) {
                const struct entry *x = &r->e[i];
                if ((x->state == ENTRY_PENDING && !ticket_done(h, x->ticket)) != pend)
                    break;
                size += x->size;
            }
        }
        region_piece(h, &rest, size, e->requested, kind, &home, &r->stash);
    }
    if (rest)
        region_piece(h, &rest, rest->size, 0, PIECE_SPARE, &home, &r->stash);
    add(&r->ds->allocated, -live);
    add(&r->ds->requested, -requested);
    add(&r->ds->blocks, -r->blocks);
    set_pending(r, 0);
    region_unstash(h, &r->stash, &r->nstash);
    heap_unlock(h);
    add(&r->ds->host, -(int64_t)(r->cap * sizeof *r->e));
    free(r->e);
    *r = (struct region){0};
}

/* A new region in free slot r for a request of `rounded` bytes (for large requests, of at
 * least `at_least` bytes within the bounds above); false if the heap has no
 * cached block for one (it then serves the request itself). Front lock held. */
static bool region_new(struct front *f, struct region *r, struct heap *h, size_t rounded,
                       size_t at_least, CUstream stream, enum heap_pool_kind pool)
{
    size_t want = REGION_SMALL;
    if (pool == POOL_LARGE) {
        want = 2 * rounded > at_least ? 2 * rounded : at_least;
        want = want < REGION_LARGE_MIN ? REGION_LARGE_MIN : want;
        want = want > REGION_LARGE_MAX ? REGION_LARGE_MAX : want;
    }
    if (want >= h->max_split) /* blocks of max_split_size_mb or more are never split */
        want = rounded;
    heap_lock(h);
    struct dstat *d = dstat_take(f, h);
    /* the block first: a cache with none for a region costs no block records */
    struct block *b = d ? region_take(h, rounded, want, stream, f) : NULL;
    bool stashed = b && region_stash(h, &r->stash, &r->nstash, STASH_CHUNK);
    heap_unlock(h);
    if (!b)
        return false;
    *r = (struct region){.h = h,
                         .ds = d,
                         .stream = stream,
                         .pool = pool,
                         .blk = b,
                         .base = b->ptr,
                         .size = b->size,
                         .stash = r->stash,
                         .nstash = r->nstash};
    if (!stashed) /* no host memory: back at once (with nothing carved it needs no record) */
        give_back(r, (struct region_home){.own_thread = true});
    return stashed;
}

/* Marks free every pending entry of r that a device sync covered since r last looked (free
 * entries may be carved again once at the top: every stream may use them now), and pops. */
static void settle(struct region *r)
{
    uint64_t done = atomic_load_explicit(&r->h->syncs_done, memory_order_acquire);
    if (done != r->seen && r->pending) {
        size_t pending = r->pending;
        for (uint32_t i = 0; i < r->n; i++) {
            struct entry *e = &r->e[i];
            if (e->state == ENTRY_PENDING && done > e->ticket) {
                e->state = ENTRY_FREE;
                pending -= e->size;
            }
        }
        set_pending(r, pending);
    }
    r->seen = done;
    pop(r);
}

/* settle for every region of f on heap h. */
static void settle_all(struct front *f, const struct heap *h)
{
    for (int i = 0; i < FRONT_REGIONS; i++)
        if (f->r[i].h == h)
            settle(&f->r[i]);
}

/* Two slots trade regions (only f->mru keeps a slot's address: a hint, checked on use). */
static void swap_regions(struct region *a, struct region *b)
{
    struct region t = *a;
    *a = *b;
    *b = t;
}

static bool same_key(const struct region *a, const struct region *b)
{
    return a->h == b->h && a->pool == b->pool && a->stream == b->stream;
}

/* Settles every region of f serving what `first` (the first of them in f) serves, and moves one
 * with room for `rounded` bytes into first's slot, where region_for finds it; false if none
 * has room. Front lock held. */
static bool room_in(struct front *f, struct region *first, size_t rounded)
{
    for (struct region *q = first; q < f->r + FRONT_REGIONS; q++) {
        if (q != first && !same_key(q, first))
            continue;
        settle(q);
        if (q->size - q->top < rounded)
            continue;
        if (q != first)
            swap_regions(first, q);
        return true;
    }
    return false;
}

/* Regions of f serving what r serves. */
static int regions_like(const struct front *f, const struct region *r)
{
    int n = 0;
    for (int i = 0; i < FRONT_REGIONS; i++)
        n += same_key(&f->r[i], r);
    return n;
}

/* A device sync for a request r cannot serve, made by the thread as the heap makes its own:
 * once the frees waiting in the thread's regions on r's device (those no sync covered yet)
 * reach the heap's batch. The sync is made without the front's lock (other threads may free
 * or look up the thread's blocks, or take its regions back, meanwhile; the lock is not held
 * across a driver call), so the thread's first region for the request is looked up again
 * after it (*r; NULL if it went back). True if a sync was made (a failed one pops nothing).
 * Front lock held. */
static bool sync_if_pays(struct front *f, struct region **r, CUstream stream,
                         enum heap_pool_kind pool)
{
    struct heap *h = (*r)->h;
    if (!reuse_sync_pays_region((size_t)ld(&(*r)->ds->pending)))
        return false;
    settle_all(f, h); /* frees a sync already covered do not count */
    if (!reuse_sync_pays_region((size_t)ld(&(*r)->ds->pending)))
        return false;
    lock_give(&f->lock);
    heap_lock(h);
    reuse_device_sync(h);
    heap_unlock(h);
    lock_take(&f->lock);
    settle_all(f, h);
    *r = region_for(f, h, stream, pool);
    return true;
}

/* carve, with the block records and entries it needs first. Front lock held. */
static bool carve_grown(struct region *r, size_t rounded, size_t size, CUdeviceptr *out)
{
    if (r->n + 1 >= r->nstash) {
        heap_lock(r->h);
        region_stash(r->h, &r->stash, &r->nstash, r->nstash + STASH_CHUNK);
        heap_unlock(r->h);
    }
    return entries_room(r) && carve(r, rounded, size, out);
}

/* A free slot of f for a new region: an unused one, else the last region other than `keep`
 * that holds nothing live, given back; NULL if none. Front lock held. */
static struct region *slot_for_new(struct front *f, const struct region *keep)
{
    for (int i = 0; i < FRONT_REGIONS; i++)
        if (!f->r[i].h)
            return &f->r[i];
    for (int i = FRONT_REGIONS - 1; i >= 0; i--) {
        struct region *q = &f->r[i];
        if (q != keep && !q->live) {
            give_back(q, (struct region_home){.own_thread = true});
            return q;
        }
    }
    return NULL;
}

/* Whether region i of f is set aside: an earlier one serves the same requests first. */
static bool set_aside(const struct front *f, int i)
{
    for (int j = 0; j < i; j++)
        if (same_key(&f->r[j], &f->r[i]))
            return true;
    return false;
}

/* Gives back every region of f set aside that holds nothing live (but `slot`), for the heap to
 * make a new region `slot` of: what the thread set aside while frees in it waited may be what
 * it needs; false if there was none. Front lock held. */
static bool give_back_idle(struct front *f, const struct region *slot)
{
    bool any = false;
    for (int i = FRONT_REGIONS - 1; i > 0; i--) {
        struct region *q = &f->r[i];
        if (q->h && q != slot && !q->live && set_aside(f, i)) {
            give_back(q, (struct region_home){.own_thread = true});
            any = true;
        }
    }
    return any;
}

/* The request on f's slow path; r: f's first region for it, if any. One of the thread's
 * regions for the request that has room once what a sync covered is popped (after a sync of
 * its own when sync_if_pays says so); else a new region: r set aside while what is in it is
 * in use, when its key may have one more region, or in r's place when r holds nothing live.
 * False: the heap serves it. Front lock held (given up around a sync). */
static bool serve_slow(struct front *f, struct region *r, struct heap *h, size_t rounded,
                       size_t size, CUstream stream, enum heap_pool_kind pool, CUdeviceptr *out)
{
    if (r && room_in(f, r, rounded))
        return carve_grown(r, rounded, size, out);
    if (r && sync_if_pays(f, &r, stream, pool) && r && room_in(f, r, rounded))
        return carve_grown(r, rounded, size, out);
    size_t grown = r ? r->size : 0; /* a region replaced is replaced by a larger one */
    struct region *slot = NULL;
    if (r && r->pending && regions_like(f, r) < KEY_REGIONS)
        slot = slot_for_new(f, r);
    if (r && !slot) {
        if (r->live) /* what is live stays where it is: the heap serves this one */
            return false;
        give_back(r, (struct region_home){.own_thread = true});
        slot = r;
    }
    if (!r)
        slot = slot_for_new(f, NULL);
    if (!slot ||
        (!region_new(f, slot, h, rounded, grown, stream, pool) &&
         !(give_back_idle(f, slot) && region_new(f, slot, h, rounded, grown, stream, pool))))
        return false;
    if (r && slot != r) { /* the new region first, r set aside */
        swap_regions(r, slot);
        slot = r;
    }
    return entries_room(slot) && carve(slot, rounded, size, out);
}

/* ---- threads --------------------------------------------------------------------------- */

/* Every region of f goes back, and its statistics into the heaps'. Front lock held. */
static void retire(struct front *f, struct region_home home)
{
    for (int i = 0; i < FRONT_REGIONS; i++)
        if (f->r[i].h)
            give_back(&f->r[i], home);
    for (int i = 0; i < FRONT_DEVICES; i++) {
        int device = atomic_load_explicit(&f->ds[i].device, memory_order_relaxed);
        struct heap *h = device >= 0 ? heap_find(device) : NULL;
        if (!h)
            continue;
        heap_lock(h);
        dstat_drop(h, &f->ds[i]);
        heap_unlock(h);
    }
    atomic_store(&f->alive, false);
}

static void on_thread_exit(void *arg)
{
    struct front *f = arg;
    lock_take(&f->lock);
    /* a per-thread default stream's frees wait for a sync: its pool goes with the thread */
    retire(f, (struct region_home){.own_thread = false});
    lock_give(&f->lock);
    mine = NULL;
    heap_check_if_enabled();
}

static void exit_key_create(void)
{
    pthread_key_create(&exit_key, on_thread_exit);
}

/* The calling thread's front, made (or a dead thread's taken) on first use; NULL without
 * host memory. */
static struct front *front_mine(void)
{
    pthread_once(&exit_once, exit_key_create);
    pthread_mutex_lock(&registry_lock);
    struct front *f = atomic_load_explicit(&registry, memory_order_relaxed);
    while (f && atomic_load(&f->alive))
        f = atomic_load_explicit(&f->next, memory_order_relaxed);
    if (!f) {
        f = calloc(1, sizeof *f);
        if (f) {
            for (int i = 0; i < FRONT_DEVICES; i++)
                atomic_init(&f->ds[i].device, -1);
            atomic_store_explicit(&f->next, atomic_load(&registry), memory_order_relaxed);
            atomic_store_explicit(&registry, f, memory_order_release);
        }
    }
    if (f)
        atomic_store(&f->alive, true);
    pthread_mutex_unlock(&registry_lock);
    if (f && pthread_setspecific(exit_key, f) != 0) {
        atomic_store(&f->alive, false);
        f = NULL;
    }
    mine = f;
    return f;
}

bool front_alloc(struct heap *h, size_t rounded, size_t size, CUstream stream, enum heap_mode mode,
                 CUdeviceptr *out)
{
    if (!h->serve_fronts || rounded > FRONT_MAX_REQUEST || rounded >= h->max_split)
        return false;
    struct front *f = mine;
    if (FL_UNLIKELY(!f) && !(f = front_mine()))
        return false;
    enum heap_pool_kind pool = size_pool(rounded);
    stream = mode == HEAP_ASYNC ? stream : REGION_DEVICE_WIDE;
    lock_take(&f->lock);
    struct region *r = f->mru;
    bool ok =
        r && r->h == h && r->stream == stream && r->pool == pool && carve(r, rounded, size, out);
    if (!ok) {
        r = region_for(f, h, stream, pool);
        ok = (r && carve(r, rounded, size, out)) ||
             serve_slow(f, r, h, rounded, size, stream, pool, out);
        f->mru = ok ? region_for(f, h, stream, pool) : NULL;
    }
    lock_give(&f->lock);
    return ok;
}

bool front_carve(struct heap *h, size_t rounded, size_t size, CUstream stream, CUdeviceptr *out)
{
    struct front *f = mine;
    if (!f || rounded > FRONT_MAX_REQUEST || rounded >= h->max_split)
        return false;
    enum heap_pool_kind pool = size_pool(rounded);
    lock_take(&f->lock);
    struct region *r = f->mru;
    if (!(r && r->h == h && r->stream == stream && r->pool == pool))
        r = f->mru = region_for(f, h, stream, pool);
    bool ok = r && carve(r, rounded, size, out);
    lock_give(&f->lock);
    return ok;
}

enum front_result front_free_own(CUdeviceptr ptr, CUstream stream, enum heap_mode mode)
{
    struct front *f = mine;
    if (!f)
        return FRONT_NONE;
    lock_take(&f->lock);
    struct region *r = region_holding(f, ptr);
    enum front_result res = r ? free_in(r, ptr, stream, mode, true) : FRONT_NONE;
    lock_give(&f->lock);
    return res;
}

enum front_result front_free_in(struct front *f, CUdeviceptr ptr, CUstream stream,
                                enum heap_mode mode)
{
    lock_take(&f->lock);
    struct region *r = region_holding(f, ptr);
    enum front_result res = r ? free_in(r, ptr, stream, mode, f == mine) : FRONT_NONE;
    lock_give(&f->lock);
    return res;
}

enum front_result front_lookup_in(struct front *f, CUdeviceptr ptr, CUdeviceptr *base, size_t *size)
{
    lock_take(&f->lock);
    struct region *r = region_holding(f, ptr);
    struct entry *e = r ? entry_at(r, ptr - r->base) : NULL;
    enum front_result res = !r ? FRONT_NONE : e && e->state == ENTRY_LIVE ? FRONT_DONE : FRONT_BAD;
    if (res == FRONT_DONE) {
        *base = r->base + e->off;
        *size = e->requested;
    }
    lock_give(&f->lock);
    return res;
}

void front_reclaim(int device, bool any_stream, CUstream stream)
{
    for (struct front *f = atomic_load_explicit(&registry, memory_order_acquire); f;
         f = atomic_load_explicit(&f->next, memory_order_acquire)) {
        lock_take(&f->lock);
        for (int i = 0; i < FRONT_REGIONS; i++) {
            struct region *r = &f->r[i];
            if (r->h && (device == -1 || r->h->device == device) &&
                (any_stream || r->stream == stream))
                give_back(r, (struct region_home){.own_thread = f == mine});
        }
        lock_give(&f->lock);
    }
}

/* ---- the walker and fork --------------------------------------------------------------- */

void front_lock_all(void)
{
    pthread_mutex_lock(&registry_lock);
    for (struct front *f = atomic_load(&registry); f; f = atomic_load(&f->next))
        lock_take(&f->lock);
}

void front_unlock_all(void)
{
    for (struct front *f = atomic_load(&registry); f; f = atomic_load(&f->next))
        lock_give(&f->lock);
    pthread_mutex_unlock(&registry_lock);
}

/* Logs a violation in heap h (in scope) and fails the check. */
#define FAIL(fmt, ...)                                                       \
    do {                                                                     \
        log_error("front check, device %d: " fmt, h->device, ##__VA_ARGS__); \
        return false;                                                        \
    } while (0)

static bool region_is_valid(const struct heap *h, const struct region *r, struct front_sum *t,
                            size_t *pending_sum)
{
    size_t at = 0, pending = 0;
    if (r->blk->state != BLOCK_HELD || r->base != r->blk->ptr || r->size != r->blk->size ||
        r->top > r->size || r->n > r->cap || r->n > r->nstash)
        FAIL("region %#llx does not match its held block", (unsigned long long)r->base);
    for (uint32_t i = 0; i < r->n; i++) {
        const struct entry *e = &r->e[i];
        if (e->off != at || e->size == 0 || e->requested > e->size)
            FAIL("region %#llx: entry %u out of place", (unsigned long long)r->base, i);
        at += e->size;
        pending += e->state == ENTRY_PENDING ? e->size : 0;
        if (e->state == ENTRY_LIVE) {
            t->allocated += (int64_t)e->size;
            t->requested += (int64_t)e->requested;
        }
    }
    if (at != r->top || pending != r->pending)
        FAIL("region %#llx: entries do not add up", (unsigned long long)r->base);
    if (r->n && r->e[r->n - 1].state == ENTRY_FREE)
        FAIL("region %#llx: a free block at the top", (unsigned long long)r->base);
    if (r->blocks != blocks_of(r))
        FAIL("region %#llx: its blocks are miscounted", (unsigned long long)r->base);
    t->blocks += r->blocks;
    *pending_sum += r->pending;
    return true;
}

bool front_check(const struct heap *h)
{
    struct front_sum t = {0}, s;
    size_t pending = 0;
    int held = 0;
    for (struct front *f = atomic_load(&registry); f; f = atomic_load(&f->next)) {
        for (int i = 0; i < FRONT_REGIONS; i++) {
            const struct region *r = &f->r[i];
            if (r->h != h)
                continue;
            if (r->blk->owner != f || r->ds != dstat_of(f, h->device))
                FAIL("region %#llx held by another front", (unsigned long long)r->base);
            if (!region_is_valid(h, r, &t, &pending))
                return false;
            held++;
        }
    }
    front_sum(h, &s);
    if (pending != front_pending(h))
        FAIL("threads' pending bytes differ from the sum over regions");
    if (held != h->held)
        FAIL("%d regions held, the heap counts %d", held, h->held);
    if (t.allocated != s.allocated || t.requested != s.requested || t.blocks != s.blocks)
        FAIL("thread statistics differ from the sum over regions");
    const fragless_stats_t *st = &h->st;
    if (st->allocated_bytes.current + (uint64_t)s.allocated > st->allocated_bytes.peak ||
        st->requested_bytes.current + (uint64_t)s.requested > st->requested_bytes.peak ||
        st->blocks.current + (uint64_t)s.blocks > st->blocks.peak ||
        st->reserved_unallocated_bytes.current - (uint64_t)s.allocated >
            st->reserved_unallocated_bytes.peak)
        FAIL("a peak below the current level with what threads carved");
    return true;
}

void front_atfork_prepare(void)
{
    front_lock_all();
}

void front_atfork_parent(void)
{
    front_unlock_all();
}

/* The child has only the forking thread: every other front's regions go back (their live
 * blocks stay valid, as the heap's). Heap locks already reset. */
void front_atfork_child(void)
{
    pthread_mutex_init(&registry_lock, NULL);
    for (struct front *f = atomic_load(&registry); f; f = atomic_load(&f->next)) {
        lock_reset(&f->lock);
        if (f != mine && atomic_load(&f->alive))
            retire(f, (struct region_home){.in_fork_child = true});
    }
}
