/*
 * heap.c — the per-device caching allocator: the heap_* API of internal.h.
 *
 * Owns: one heap per device (created on first use) with its lock, its segments, its map of
 * live blocks, its free indexes and statistics; the allocation path (cached block → stream
 * pools' completed frees → batched device sync → new segment → OOM: release what is cached
 * and retry once); frees (into the stream's pool for stream-ordered frees, onto the pending
 * list for cudaFree/cuMemFree); lookups, empty-cache, the segment map for fragstat, the
 * invariant walker and fork handlers. Giving memory back is release.c's.
 *
 * Locking: a mutex per heap, never held across a driver call that can block or allocate
 * (cuMemAlloc, cuMemFree, cuCtxSynchronize); event record/query, which return at once, are
 * made under it. Lock order: heap lock, then the segment map's lock.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static pthread_mutex_t heaps_lock = PTHREAD_MUTEX_INITIALIZER;
static struct heap *_Atomic heaps[FL_MAX_DEVICES];

/* Whether device supports VMM (then expandable segments are its default). */
static bool device_has_vmm(int device, size_t *mem)
{
    int vmm = 0;
    return drv_init() == CUDA_SUCCESS && drv_has(DRV_FEATURE_VMM) &&
           drv_device_get_attribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
                                    (CUdevice)device) == CUDA_SUCCESS &&
           vmm && drv_device_total_mem(mem, (CUdevice)device) == CUDA_SUCCESS;
}

/* garbage_collection_threshold in bytes of the device; 0 if off or the device's memory is
 * unknown. */
static size_t gc_limit_of(struct heap *h)
{
    double fraction = h->cfg->garbage_collection_threshold;
    if (fraction <= 0)
        return 0;
    if (!h->device_mem &&
        (drv_init() != CUDA_SUCCESS ||
         drv_device_total_mem(&h->device_mem, (CUdevice)h->device) != CUDA_SUCCESS))
        return 0;
    return (size_t)(fraction * (double)h->device_mem);
}

/* expandable_segments: auto and true mean expandable where the device supports VMM; else
 * classic, said once (a warning if the user asked for expandable). */
static void pick_segments(struct heap *h)
{
    int want = h->cfg->expandable_segments;
    h->expandable = want != 0 && device_has_vmm(h->device, &h->device_mem);
    h->max_split = h->expandable ? SIZE_MAX : h->cfg->max_split_size;
    h->gc_limit = gc_limit_of(h);
    /* a thread's region holds cached memory that release_threshold_mb could not give back */
    h->serve_fronts = h->cfg->thread_cache && h->cfg->release_threshold == SIZE_MAX;
    if (want == 1 && !h->expandable)
        log_warn("expandable_segments:true: device %d has no virtual memory management; it "
                 "uses classic (cuMemAlloc) segments",
                 h->device);
    else if (want == -1 && !h->expandable)
        log_info("device %d has no virtual memory management: classic (cuMemAlloc) segments",
                 h->device);
}

static struct heap *heap_create(int device)
{
    struct heap *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->device = device;
    h->cfg = config_get();
    pick_segments(h);
    for (int k = 0; k < POOL_KINDS; k++)
        fi_init(&h->global[k]);
    stat_add(&h->st.host_metadata_bytes, (int64_t)sizeof *h);
    return h;
}

static FL_COLD struct heap *heap_make(int device);

/* The heap of `device`; created on first use when `create`. */
static inline struct heap *heap_of(int device, bool create)
{
    if (!fl_device_in_range(device))
        return NULL;
    struct heap *h = atomic_load_explicit(&heaps[device], memory_order_acquire);
    if (FL_LIKELY(h) || !create)
        return h;
    return heap_make(device);
}

/* heap_of's first use of a device: its heap made, once. */
static FL_COLD struct heap *heap_make(int device)
{
    struct heap *h;
    pthread_mutex_lock(&heaps_lock);
    h = atomic_load_explicit(&heaps[device], memory_order_relaxed);
    if (!h) {
        h = heap_create(device);
        atomic_store_explicit(&heaps[device], h, memory_order_release);
    }
    pthread_mutex_unlock(&heaps_lock);
    return h;
}

struct heap *heap_find(int device)
{
    return heap_of(device, false);
}

/* FRAGLESS_CHECK set (and not "0"): check every invariant after every operation. */
static inline bool check_enabled(void)
{
    static _Atomic int enabled = -1;
    int e = atomic_load_explicit(&enabled, memory_order_relaxed);
    if (FL_UNLIKELY(e < 0)) {
        const char *v = getenv("FRAGLESS_CHECK");
        e = v && *v && strcmp(v, "0") != 0;
        atomic_store_explicit(&enabled, e, memory_order_relaxed);
    }
    return e;
}

static FL_COLD void check_now(void)
{
    if (!heap_is_valid()) {
        log_error("heap invariant violated (FRAGLESS_CHECK); aborting");
        abort();
    }
}

static inline void check(void)
{
    if (FL_UNLIKELY(check_enabled()))
        check_now();
}

void heap_check_if_enabled(void)
{
    check();
}

/* heap_settle with thread fronts on the device: their carved levels count in the peaks. */
static void settle_with_fronts(struct heap *h)
{
    fragless_stats_t *st = &h->st;
    struct front_sum hi;
    int64_t lo; /* threads' lowest carved bytes since the last fold */
    front_fold(h, &hi, &lo);
    st->reserved_unallocated_bytes.current =
        st->reserved_bytes.current - st->allocated_bytes.current;
    raise_peak(&st->reserved_unallocated_bytes,
               st->reserved_unallocated_bytes.current - (uint64_t)lo);
    raise_peak(&st->allocated_bytes, st->allocated_bytes.current + (uint64_t)hi.allocated);
    raise_peak(&st->requested_bytes, st->requested_bytes.current + (uint64_t)hi.requested);
    raise_peak(&st->blocks, st->blocks.current + (uint64_t)hi.blocks);
    level_peak(&st->active_bytes);
    level_peak(&st->inactive_split_bytes);
}

/* Brings the derived level and the peaks of the blocks' levels up to date; end of every
 * operation, lock held. */
void heap_settle(struct heap *h)
{
    if (atomic_load_explicit(&h->fronts, memory_order_relaxed)) {
        settle_with_fronts(h);
        return;
    }
    fragless_stats_t *st = &h->st;
    stat_set(&st->reserved_unallocated_bytes,
             st->reserved_bytes.current - st->allocated_bytes.current);
    level_peak(&st->allocated_bytes);
    level_peak(&st->requested_bytes);
    level_peak(&st->active_bytes);
    level_peak(&st->inactive_split_bytes);
    level_peak(&st->blocks);
}

uint64_t heap_allocated(const struct heap *h)
{
    struct front_sum s = {0};
    if (atomic_load_explicit(&h->fronts, memory_order_relaxed))
        front_sum(h, &s);
    return h->st.allocated_bytes.current + (uint64_t)s.allocated;
}

/* ---- allocation ----------------------------------------------------------------------- */

/* Free blocks looked at for one that needs fewer new pages than a best fit that needs some. */
#define FIT_MAPPED_LIMIT 16

/* The best free block of fi for `rounded` bytes; *backed: whether its first `rounded` bytes
 * are wholly mapped (always for classic segments). */
static struct block *fit_in(const struct heap *h, struct freeindex *fi, size_t rounded,
                            bool *backed)
{
    struct block *b = fi_best_fit(fi, rounded);
    size_t need = b ? expand_pages_needed(b, rounded) : 0;
    if (need) {
        struct block *cheaper = fi_fit_cheapest(fi, rounded, expand_pages_needed, FIT_MAPPED_LIMIT);
        size_t cheaper_need = cheaper ? expand_pages_needed(cheaper, rounded) : SIZE_MAX;
        if (cheaper_need < need) {
            b = cheaper;
            need = cheaper_need;
        }
    }
    *backed = need == 0;
    if (b && !size_block_fits(b->size, rounded, h->max_split))
        return NULL;
    return b;
}

/* A free block this request may use now: the stream's own frees, then the global ones;
 * *backed as fit_in says. */
struct block *heap_find_cached(struct heap *h, enum heap_pool_kind k, size_t rounded,
                               CUstream stream, enum heap_mode mode, bool *backed)
{
    if (mode == HEAP_ASYNC) {
        struct stream_pool *sp = reuse_stream_pool(h, stream, false);
        struct block *b = sp ? fit_in(h, &sp->index[k], rounded, backed) : NULL;
        if (b)
            return b;
    }
    return fit_in(h, &h->global[k], rounded, backed);
}

/* Hands out free block b (an expandable segment's once it is wholly mapped: `backed` says
 * its first `rounded` bytes are, so a block taken at exactly that size needs no look at its
 * pages); lock held. On failure b is free again where it was. */
static CUresult serve(struct heap *h, struct block *b, size_t rounded, size_t size, bool backed,
                      CUdeviceptr *out)
{
    struct freeindex *fi = b->index;
    b = block_take(h, b, rounded, size);
    if (b->seg->kind == SEGMENT_EXPANDABLE && !(backed && b->size == rounded)) {
        CUresult r = expand_back(h, b);
        if (r != CUDA_SUCCESS) {
            block_unlive(h, b);
            block_release_to(h, b, fi);
            return r;
        }
    }
    livemap_insert(&h->live, b);
    h->st.num_allocs++;
    *out = b->ptr;
    return CUDA_SUCCESS;
}

/* The cache's answer, trying what costs no blocking driver call first, then a device sync
 * when enough is pending for it to pay. An expandable segment's block that would need new
 * pages counts as a miss here: frees that completed may hold pages to use or move. Lock held
 * (dropped around a sync). */
static struct block *cached_block(struct heap *h, size_t rounded, CUstream stream,
                                  enum heap_mode mode, bool *backed)
{
    struct block *b = heap_find_cached(h, size_pool(rounded), rounded, stream, mode, backed);
    if (b && *backed)
        return b;
    reuse_collect(h);
    b = heap_find_cached(h, size_pool(rounded), rounded, stream, mode, backed);
    /* an expandable heap's sync pays once enough is pending to move its pages */
    size_t want = h->expandable ? 0 : rounded;
    if ((b && *backed) || !reuse_sync_pays(h, want))
        return b;
    /* the lock was dropped around the sync, even a failed one: look again */
    reuse_device_sync(h);
    return heap_find_cached(h, size_pool(rounded), rounded, stream, mode, backed);
}

/* Makes new segment s part of the heap with one free block; false if out of host memory. */
bool heap_add_segment(struct heap *h, struct segment *s)
{
    struct block *b = block_new(h);
    if (!b)
        return false;
    if (!segmap_insert(s, h->device)) {
        block_recycle(h, b);
        return false;
    }
    b->ptr = s->base;
    b->size = s->size;
    b->seg = s;
    s->first = b;
    s->nblocks = 1;
    s->prev = NULL;
    s->next = h->segments;
    if (h->segments)
        h->segments->prev = s;
    h->segments = s;
    size_t held = segment_reserved(s);
    stat_add(&h->st.reserved_bytes, (int64_t)held);
    if (s->kind == SEGMENT_EXPANDABLE) {
        stat_add(&h->st.mapped_bytes, (int64_t)held);
        stat_add(&h->st.unmapped_reserved_va_bytes, (int64_t)(s->size - held));
    }
    stat_add(&h->st.segments, 1);
    stat_add(&h->st.host_metadata_bytes, (int64_t)sizeof *s);
    block_release_to(h, b, &h->global[s->pool]);
    return true;
}

static double mib(uint64_t bytes)
{
    return (double)bytes / (double)FL_MiB;
}

static void log_oom(struct heap *h, size_t size)
{
    uint64_t reserved = h->st.reserved_bytes.current;
    uint64_t allocated = heap_allocated(h);
    log_error("out of memory on device %d: tried to allocate %.2f MiB; fragless holds %.2f MiB "
              "reserved, %.2f MiB allocated, %.2f MiB reserved but unallocated",
              h->device, mib(size), mib(reserved), mib(allocated), mib(reserved - allocated));
}

/* Out of memory: every thread's regions go back, and no thread takes a new one until the
 * request is served or has failed (its memory is this request's). Lock not held. */
static void reclaim_begin(struct heap *h)
{
    atomic_fetch_add_explicit(&h->reclaiming, 1, memory_order_relaxed);
    front_reclaim(h->device, true, NULL);
}

static void reclaim_end(struct heap *h)
{
    atomic_fetch_sub_explicit(&h->reclaiming, 1, memory_order_relaxed);
}

/* The driver refused a segment: release what is cached, retry once, then look again in the
 * cache after a device sync. Lock not held; on success *ptr is set. */
static CUresult recover(struct heap *h, size_t rounded, size_t size, CUstream stream,
                        enum heap_mode mode, struct segment **seg, CUdeviceptr *ptr)
{
    reclaim_begin(h);
    size_t released = release_free_segments(h, SIZE_MAX);
    heap_lock(h);
    h->st.num_alloc_retries++;
    release_count_automatic(h, released); /* as expand_recover counts its release */
    heap_unlock(h);
    CUresult r = segment_create(size_segment(rounded, h->max_split), size_pool(rounded), seg);
    if (r != CUDA_ERROR_OUT_OF_MEMORY) {
        reclaim_end(h);
        return r;
    }
    heap_lock(h);
    struct block *b = NULL;
    bool backed;
    if (reuse_has_pending(h) && reuse_device_sync(h) == CUDA_SUCCESS)
        b = heap_find_cached(h, size_pool(rounded), rounded, stream, mode, &backed);
    if (b && serve(h, b, rounded, size, false, ptr) == CUDA_SUCCESS) {
        h->st.num_cache_hits++;
        r = CUDA_SUCCESS;
    } else {
        h->st.num_ooms++;
        log_oom(h, size);
    }
    heap_unlock(h);
    reclaim_end(h);
    return r;
}

/* Backing a block of an expandable segment failed: release every cached page, make pending
 * frees reusable (a device sync) and try once more. Lock held. */
static CUresult expand_recover(struct heap *h, size_t rounded, size_t size, CUstream stream,
                               enum heap_mode mode, CUdeviceptr *out)
{
    h->st.num_alloc_retries++;
    release_count_automatic(h, expand_release(h, SIZE_MAX, NULL));
    if (reuse_has_pending(h)) /* the sync settles the statistics before it drops the lock */
        reuse_device_sync(h);
    reuse_collect(h);
    bool backed;
    struct block *b = heap_find_cached(h, size_pool(rounded), rounded, stream, mode, &backed);
    CUresult r = b ? serve(h, b, rounded, size, false, out) : CUDA_ERROR_OUT_OF_MEMORY;
    if (r == CUDA_SUCCESS) {
        h->st.num_cache_hits++;
    } else if (r == CUDA_ERROR_OUT_OF_MEMORY) {
        h->st.num_ooms++;
        log_oom(h, size);
    }
    return r;
}

/* Takes h's lock and makes new segment s part of the heap. Without host memory for its
 * records, s goes back to the driver and the lock is not held. */
static CUresult lock_and_add(struct heap *h, struct segment *s)
{
    heap_lock(h);
    if (heap_add_segment(h, s)) {
        h->st.num_device_alloc++;
        return CUDA_SUCCESS;
    }
    heap_unlock(h);
    log_error("out of host memory for a segment record");
    if (segment_destroy(s) == CUDA_SUCCESS)
        free(s);
    return CUDA_ERROR_OUT_OF_MEMORY;
}

/* An expandable heap's request that no free block fits (its first, or the ranges are full):
 * another range. Lock not held. */
static CUresult alloc_range(struct heap *h, size_t rounded, size_t size, CUstream stream,
                            enum heap_mode mode, CUdeviceptr *out)
{
    struct segment *s = NULL;
    CUresult r = expand_segment_create(h, size_pool(rounded), rounded, &s);
    if (r == CUDA_SUCCESS)
        r = lock_and_add(h, s);
    if (r != CUDA_SUCCESS)
        return r;
    h->st.num_cache_misses++;
    r = serve(h, s->first, rounded, size, false, out);
    if (r != CUDA_SUCCESS)
        r = expand_recover(h, rounded, size, stream, mode, out);
    heap_unlock(h);
    return r;
}

/* No cached block fits: a new segment from the driver. Lock not held. */
static CUresult alloc_segment(struct heap *h, size_t rounded, size_t size, CUstream stream,
                              enum heap_mode mode, CUdeviceptr *out)
{
    if (h->expandable)
        return alloc_range(h, rounded, size, stream, mode, out);
    struct segment *s = NULL;
    CUdeviceptr ptr = 0;
    size_t seg_size = size_segment(rounded, h->max_split);
    release_before_growing(h, seg_size);
    CUresult r = segment_create(seg_size, size_pool(rounded), &s);
    if (r == CUDA_ERROR_OUT_OF_MEMORY)
        r = recover(h, rounded, size, stream, mode, &s, &ptr);
    if (r != CUDA_SUCCESS)
        return r;
    if (!s) {
        *out = ptr;
        return CUDA_SUCCESS;
    }
    r = lock_and_add(h, s);
    if (r != CUDA_SUCCESS)
        return r;
    h->st.num_cache_misses++;
    serve(h, s->first, rounded, size, false, out); /* classic: cannot fail */
    heap_unlock(h);
    release_to_threshold(h);
    return CUDA_SUCCESS;
}

CUresult heap_alloc(int device, size_t size, CUstream stream, enum heap_mode mode, CUdeviceptr *out)
{
    if (!out)
        return CUDA_ERROR_INVALID_VALUE;
    struct heap *h = heap_of(device, true);
    if (!h)
        return fl_device_in_range(device) ? CUDA_ERROR_OUT_OF_MEMORY : CUDA_ERROR_INVALID_DEVICE;
    size_t rounded = size_round(size, h->cfg);
    if (FL_LIKELY(rounded) && front_alloc(h, rounded, size, stream, mode, out)) {
        check();
        return CUDA_SUCCESS;
    }
    heap_lock(h);
    if (FL_UNLIKELY(!rounded)) {
        h->st.num_ooms++;
        log_oom(h, size);
        heap_unlock(h);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    bool backed;
    struct block *b = cached_block(h, rounded, stream, mode, &backed);
    if (!b && h->held) { /* threads give their regions back before a new segment or range */
        heap_unlock(h);
        front_reclaim(device, true, NULL);
        heap_lock(h);
        b = cached_block(h, rounded, stream, mode, &backed);
    }
    CUresult r = b ? serve(h, b, rounded, size, backed, out) : CUDA_SUCCESS;
    bool reclaiming = b && r == CUDA_ERROR_OUT_OF_MEMORY && h->held;
    if (reclaiming) { /* no pages: threads' regions first */
        heap_unlock(h);
        reclaim_begin(h);
        heap_lock(h);
        b = cached_block(h, rounded, stream, mode, &backed);
        r = b ? serve(h, b, rounded, size, backed, out) : CUDA_SUCCESS;
    }
    if (b && r != CUDA_SUCCESS)
        r = expand_recover(h, rounded, size, stream, mode, out);
    else if (b)
        h->st.num_cache_hits++;
    heap_unlock(h);
    if (!b)
        r = alloc_segment(h, rounded, size, stream, mode, out);
    if (reclaiming)
        reclaim_end(h);
    check();
    if (FL_UNLIKELY(r == CUDA_ERROR_OUT_OF_MEMORY))
        report_oom(device, size);
    return r;
}

/* ---- free ----------------------------------------------------------------------------- */

/* A free of a pointer fragless does not own: counted on the current context's device. */
static void count_foreign(void)
{
    CUdevice dev;
    if (drv_ctx_get_device(&dev) != CUDA_SUCCESS)
        return;
    struct heap *h = heap_of((int)dev, true);
    if (!h)
        return;
    heap_lock(h);
    h->st.num_foreign_frees++;
    heap_unlock(h);
}

/* Where a freed block goes: its stream's pool (stream-ordered frees), else the pending list
 * (device-wide frees, or no pool to be had). */
static void put_freed(struct heap *h, struct block *b, CUstream stream, enum heap_mode mode)
{
    struct stream_pool *sp = NULL;
    if (mode == HEAP_ASYNC)
        sp = reuse_stream_pool(h, stream, true);
    if (sp)
        block_release_to(h, b, &sp->index[b->seg->pool]);
    else
        block_pend(h, b);
}

/* The device of the calling thread's last free: its heap's live map is looked in first. */
static FL_HOT_TLS _Thread_local int free_hint;

/* The live block at ptr in the heap of the calling thread's last free, with that heap locked
 * (*hp); NULL, nothing locked, if it is not there. Spares most frees the segment map. */
static struct block *find_hinted(CUdeviceptr ptr, struct heap **hp)
{
    struct heap *h = heap_of(free_hint, false);
    if (!h)
        return NULL;
    heap_lock(h);
    struct block *b = livemap_find(&h->live, ptr);
    if (!b) {
        heap_unlock(h);
        return NULL;
    }
    *hp = h;
    return b;
}

/* The live block at ptr in the heap the segment map names, that heap locked (*hp). NULL,
 * nothing locked, with *hp NULL if no heap owns ptr, else *hp set (a double free?). */
static struct block *find_mapped(CUdeviceptr ptr, struct heap **hp)
{
    int device;
    *hp = segmap_find(ptr, &device, NULL) ? heap_of(device, false) : NULL;
    if (!*hp)
        return NULL;
    heap_lock(*hp);
    struct block *b = livemap_find(&(*hp)->live, ptr);
    if (!b)
        heap_unlock(*hp);
    else
        free_hint = device;
    return b;
}

static struct block *block_containing(struct heap *h, CUdeviceptr ptr);

/* The thread front holding ptr in a region of heap h, or NULL; *live: ptr is a live block's
 * start now (its region went back since the caller looked). */
static struct front *holder_of(struct heap *h, CUdeviceptr ptr, bool *live)
{
    heap_lock(h);
    struct block *b = block_containing(h, ptr);
    struct front *f = b && b->state == BLOCK_HELD ? b->owner : NULL;
    *live = b && b->state == BLOCK_LIVE && b->ptr == ptr;
    heap_unlock(h);
    return f;
}

bool heap_alloc_own(int device, size_t size, CUstream stream, CUdeviceptr *out)
{
    struct heap *h = heap_of(device, false);
    size_t rounded = h && h->serve_fronts ? size_round(size, h->cfg) : 0;
    if (!rounded || !front_carve(h, rounded, size, stream, out))
        return false;
    check();
    return true;
}

bool heap_free_own(CUdeviceptr ptr, CUstream stream)
{
    if (front_free_own(ptr, stream, HEAP_ASYNC) != FRONT_DONE)
        return false;
    check();
    return true;
}

/* How many times a free or look-up looks again after a region it found went back. */
#define HELD_RETRIES 8

CUresult heap_free(CUdeviceptr ptr, CUstream stream, enum heap_mode mode, bool *foreign)
{
    bool ignored;
    foreign = foreign ? foreign : &ignored;
    *foreign = false;
    enum front_result fr = ptr ? front_free_own(ptr, stream, mode) : FRONT_NONE;
    struct heap *h = NULL;
    struct block *b = NULL;
    for (int tries = 0; fr == FRONT_NONE && tries < HELD_RETRIES; tries++) {
        b = ptr ? find_hinted(ptr, &h) : NULL;
        if (!b && ptr)
            b = find_mapped(ptr, &h);
        bool live = false;
        struct front *f = !b && h ? holder_of(h, ptr, &live) : NULL;
        if (live)
            continue; /* the heap's now: look again */
        if (!f)
            break;
        fr = front_free_in(f, ptr, stream, mode); /* another thread's block */
    }
    if (fr == FRONT_DONE) {
        check();
        return CUDA_SUCCESS;
    }
    if (fr == FRONT_NONE && !h) {
        *foreign = true;
        if (ptr)
            count_foreign();
        return CUDA_SUCCESS;
    }
    if (!b) {
        log_error("free of %#llx: not the start of a live fragless block (double free?)",
                  (unsigned long long)ptr);
        return CUDA_ERROR_INVALID_VALUE;
    }
    livemap_remove(&h->live, b);
    block_unlive(h, b);
    b->free_seq = ++h->free_seq;
    put_freed(h, b, stream, mode);
    h->st.num_frees++;
    heap_unlock(h);
    release_to_threshold(h);
    check();
    return CUDA_SUCCESS;
}

/* ---- streams that go away ------------------------------------------------------------- */

/* reuse_retire(key) in the heap of every device. */
static void retire_pools(CUstream key, const char *why, bool context_gone)
{
    for (int d = 0; d < FL_MAX_DEVICES; d++) {
        struct heap *h = heap_of(d, false);
        if (!h)
            continue;
        heap_lock(h);
        reuse_retire(h, key, why, context_gone);
        heap_unlock(h);
    }
}

void heap_stream_destroyed(CUstream stream)
{
    if (!stream || stream == CU_STREAM_LEGACY || stream == CU_STREAM_PER_THREAD)
        return;
    front_reclaim(-1, false, stream);
    retire_pools(stream, "it is destroyed", false);
}

void heap_streams_reset(bool context_gone)
{
    front_reclaim(-1, true, NULL);
    retire_pools(NULL, "its context goes", context_gone);
}

/* ---- queries -------------------------------------------------------------------------- */

/* The block holding ptr (lock held): the live map for a block's own address, else a walk of
 * the segment the segment map names (valid while the lock is held). */
static struct block *block_containing(struct heap *h, CUdeviceptr ptr)
{
    struct segment *s;
    struct block *b = livemap_find(&h->live, ptr);
    if (b || !segmap_find(ptr, NULL, &s))
        return b;
    for (b = s->first; b; b = b->next)
        if (ptr - b->ptr < b->size)
            return b;
    return NULL;
}

bool heap_lookup(CUdeviceptr ptr, CUdeviceptr *base, size_t *size, int *device)
{
    int dev;
    struct heap *h = segmap_find(ptr, &dev, NULL) ? heap_of(dev, false) : NULL;
    if (!h)
        return false;
    CUdeviceptr at = 0;
    size_t requested = 0;
    enum front_result fr = FRONT_NONE;
    for (int tries = 0; fr == FRONT_NONE && tries < HELD_RETRIES; tries++) {
        heap_lock(h);
        struct block *b = block_containing(h, ptr);
        struct front *f = b && b->state == BLOCK_HELD ? b->owner : NULL;
        if (b && b->state == BLOCK_LIVE) {
            at = b->ptr;
            requested = b->requested;
            fr = FRONT_DONE;
        } else if (!f) {
            fr = FRONT_BAD;
        }
        heap_unlock(h);
        if (f) /* in a thread's region: its carved block */
            fr = front_lookup_in(f, ptr, &at, &requested);
    }
    if (fr != FRONT_DONE)
        return false;
    if (base)
        *base = at;
    if (size)
        *size = requested;
    if (device)
        *device = dev;
    return true;
}

size_t heap_cached_bytes(int device)
{
    struct heap *h = heap_of(device, false);
    if (!h)
        return 0;
    heap_lock(h);
    size_t bytes = h->st.reserved_bytes.current - heap_allocated(h);
    heap_unlock(h);
    return bytes;
}

static size_t largest_free(const struct heap *h)
{
    size_t best = 0;
    for (int k = 0; k < POOL_KINDS; k++) {
        size_t l = fi_largest(&h->global[k]);
        best = l > best ? l : best;
        for (int i = 0; i < h->nstreams; i++) {
            l = fi_largest(&h->streams[i]->index[k]);
            best = l > best ? l : best;
        }
    }
    return best;
}

int heap_get_stats(int device, fragless_stats_t *out)
{
    struct heap *h = heap_of(device, false);
    if (!h)
        return FRAGLESS_ENODEV; /* no such device, or fragless has not used it */
    struct front_sum fs = {0};
    heap_lock(h);
    if (atomic_load_explicit(&h->fronts, memory_order_relaxed)) {
        front_sum(h, &fs); /* then the fold: the peaks cover these */
        heap_settle(h);
    }
    stat_set(&h->st.largest_free_block_bytes, largest_free(h));
    fragless_stats_t snap = h->st;
    heap_unlock(h);
    snap.allocated_bytes.current += (uint64_t)fs.allocated;
    snap.requested_bytes.current += (uint64_t)fs.requested;
    snap.blocks.current += (uint64_t)fs.blocks;
    snap.reserved_unallocated_bytes.current -= (uint64_t)fs.allocated;
    snap.host_metadata_bytes.current += (uint64_t)fs.host;
    snap.num_allocs += (uint64_t)fs.allocs;
    snap.num_cache_hits += (uint64_t)fs.allocs;
    snap.num_frees += (uint64_t)fs.frees;
    snap.driver_calls = drv_call_count();
    snap.driver_ns = drv_call_ns();
    vmm_page_counters(device, &snap.pages_created, &snap.pages_released, &snap.pages_moved);
    return stats_copy_out(&snap, device, out);
}

int heap_reset_peaks(int device)
{
    if (device != -1 && !fl_device_in_range(device))
        return FRAGLESS_ENODEV;
    for (int d = 0; d < FL_MAX_DEVICES; d++) {
        struct heap *h = heap_of(d, false);
        if (!h || (device != -1 && d != device))
            continue;
        heap_lock(h);
        stats_reset_peaks(&h->st);
        /* with what threads carved: the next fold raises them to the merged levels */
        h->st.reserved_unallocated_bytes.peak = h->st.reserved_bytes.current - heap_allocated(h);
        heap_unlock(h);
    }
    return FRAGLESS_OK;
}

/* ---- fragstat's map ------------------------------------------------------------------- */

/* Bytes of b handed out: a live block's size, what a thread carved from a held block (drawn
 * at its start, where a thread's region carves first). */
static size_t held_or_live(const struct block *b)
{
    if (b->state == BLOCK_HELD)
        return atomic_load_explicit(&b->carved, memory_order_relaxed);
    return b->state == BLOCK_LIVE ? b->size : 0;
}

/* What the blocks of s hold handed out. */
static size_t segment_used(const struct heap *h, const struct segment *s)
{
    size_t used = s->live_bytes;
    for (const struct block *b = h->held ? s->first : NULL; b; b = b->next)
        used += b->state == BLOCK_HELD ? held_or_live(b) : 0;
    return used;
}

static void fill_map(const struct segment *s, char *map)
{
    size_t live[HEAP_SEG_MAP_CHARS] = {0};
    size_t slice = (s->size + HEAP_SEG_MAP_CHARS - 1) / HEAP_SEG_MAP_CHARS;
    for (const struct block *b = s->first; b; b = b->next) {
        size_t used = held_or_live(b);
        for (size_t off = b->ptr - s->base; off < b->ptr - s->base + used;) {
            size_t i = off / slice;
            size_t end = (i + 1) * slice;
            size_t stop = b->ptr - s->base + used;
            live[i] += (stop < end ? stop : end) - off;
            off = end;
        }
    }
    for (int i = 0; i < HEAP_SEG_MAP_CHARS; i++) {
        size_t width = s->size - (size_t)i * slice < slice ? s->size - (size_t)i * slice : slice;
        bool unmapped =
            s->kind == SEGMENT_EXPANDABLE && vrange_ready_in(s->vr, (size_t)i * slice, width) == 0;
        map[i] = live[i] ? (live[i] >= width ? '#' : '+') : unmapped ? ' ' : '.';
    }
    map[HEAP_SEG_MAP_CHARS] = '\0';
}

int heap_segment_info(int device, struct heap_segment_info *out, int max)
{
    struct heap *h = heap_of(device, false);
    if (!h)
        return 0;
    int n = 0;
    heap_lock(h);
    for (struct segment *s = h->segments; s; s = s->next, n++) {
        if (!out || n >= max)
            continue;
        struct heap_segment_info *i = &out[n];
        size_t held = segment_reserved(s), used = segment_used(h, s);
        *i = (struct heap_segment_info){.base = s->base,
                                        .size = s->size,
                                        .allocated = used,
                                        .free_mapped = held > used ? held - used : 0,
                                        .unmapped = s->size - held,
                                        .blocks = s->nblocks,
                                        .expandable = s->kind == SEGMENT_EXPANDABLE};
        fill_map(s, i->map);
    }
    heap_unlock(h);
    return n;
}

bool heap_is_valid(void)
{
    bool ok = true;
    front_lock_all();
    for (int d = 0; d < FL_MAX_DEVICES && ok; d++) {
        struct heap *h = heap_of(d, false);
        if (!h)
            continue;
        heap_lock(h);
        ok = heap_check(h) && front_check(h);
        heap_unlock(h);
    }
    front_unlock_all();
    return ok;
}

/* ---- fork ----------------------------------------------------------------------------- */

void heap_atfork_prepare(void)
{
    front_atfork_prepare();
    pthread_mutex_lock(&heaps_lock);
    for (int d = 0; d < FL_MAX_DEVICES; d++)
        if (heaps[d])
            heap_lock(heaps[d]);
    segmap_atfork_prepare();
}

void heap_atfork_parent(void)
{
    segmap_atfork_parent();
    for (int d = FL_MAX_DEVICES - 1; d >= 0; d--)
        if (heaps[d])
            lock_give(&heaps[d]->lock);
    pthread_mutex_unlock(&heaps_lock);
    front_atfork_parent();
}

void heap_atfork_child(void)
{
    segmap_atfork_child();
    for (int d = 0; d < FL_MAX_DEVICES; d++)
        if (heaps[d])
            lock_reset(&heaps[d]->lock);
    pthread_mutex_init(&heaps_lock, NULL);
    front_atfork_child();
}
