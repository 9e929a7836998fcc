/*
 * release.c — giving device memory back to the driver.
 *
 * Owns: which segments go back (those holding no live block: all of them for empty-cache and
 * the OOM path; for the thresholds, the fewest and smallest idle ones that cover what must
 * go), returning them outside the heap's lock (a segment the driver refuses to free stays
 * cached), empty-cache from any thread (with the device's primary context made current), and
 * the two policies that release on their own: garbage_collection_threshold (before growing past
 * a fraction of the device) and release_threshold_mb (cached bytes kept at most).
 */
#include <stdlib.h>

#include "internal.h"

/* Takes segment s (no live block) out of the heap onto *out. */
static void unlink_segment(struct heap *h, struct segment *s, struct segment **out)
{
    for (struct block *b = s->first, *bn; b; b = bn) {
        bn = b->next;
        block_detach(h, b);
        block_recycle(h, b);
    }
    segmap_remove(s->base);
    if (s->prev)
        s->prev->next = s->next;
    else
        h->segments = s->next;
    if (s->next)
        s->next->prev = s->prev;
    size_t held = segment_reserved(s);
    stat_add(&h->st.reserved_bytes, -(int64_t)held);
    if (s->kind == SEGMENT_EXPANDABLE) {
        stat_add(&h->st.mapped_bytes, -(int64_t)held);
        stat_add(&h->st.unmapped_reserved_va_bytes, -(int64_t)(s->size - held));
    }
    stat_add(&h->st.segments, -1);
    stat_add(&h->st.host_metadata_bytes, -(int64_t)sizeof *s);
    s->next = *out;
    *out = s;
}

/* Whether s is one free block reusable on every stream (not a pending or stream-ordered
 * free that a later sync or event would merge into something larger). */
static bool segment_is_idle(const struct heap *h, const struct segment *s)
{
    const struct block *b = s->first;
    return s->nblocks == 1 && b->state == BLOCK_FREE && b->index == &h->global[s->pool];
}

/* The idle segment to release next towards `want` bytes: the smallest that covers it alone,
 * else the largest. NULL if none. */
static struct segment *release_candidate(struct heap *h, size_t want)
{
    struct segment *cover = NULL, *largest = NULL;
    for (struct segment *s = h->segments; s; s = s->next) {
        if (!segment_is_idle(h, s))
            continue;
        if (s->size >= want && (!cover || s->size < cover->size))
            cover = s;
        if (!largest || s->size > largest->size)
            largest = s;
    }
    return cover ? cover : largest;
}

/* Takes segments without a live block out of the heap onto *out — every one (want ==
 * SIZE_MAX), or the fewest and smallest that add up to `want` bytes. The caller destroys them
 * after dropping the lock. */
static void take_free_segments(struct heap *h, struct segment **out, size_t want)
{
    for (struct segment *s = h->segments, *next; want == SIZE_MAX && s; s = next) {
        next = s->next;
        if (s->nlive == 0 && (s->kind == SEGMENT_CLASSIC || segment_is_idle(h, s)))
            unlink_segment(h, s, out);
    }
    for (size_t taken = 0; want != SIZE_MAX && taken < want;) {
        struct segment *s = release_candidate(h, want - taken);
        if (!s)
            break;
        taken += s->size;
        unlink_segment(h, s, out);
    }
}

/* Puts back a segment the driver refused to free; lock not held. */
static void readd_segment(struct heap *h, struct segment *s)
{
    heap_lock(h);
    *s = (struct segment){.base = s->base,
                          .size = s->size,
                          .kind = s->kind,
                          .vr = s->vr,
                          .mapped_end = s->size,
                          .pool = s->pool};
    if (heap_add_segment(h, s))
        s = NULL;
    heap_unlock(h);
    if (s)
        log_error("segment %#llx lost: no host memory to keep its record",
                  (unsigned long long)s->base);
}

/* Returns taken segments to the driver; lock not held. A segment the driver will not free
 * goes back into the heap as cached memory (its error in *err), and only those it freed count
 * as device frees. Returns the bytes released. */
static size_t destroy_segments(struct heap *h, struct segment *s, CUresult *err)
{
    size_t bytes = 0;
    uint64_t freed = 0;
    while (s) {
        struct segment *next = s->next;
        size_t held = segment_reserved(s);
        CUresult r = segment_destroy(s);
        if (r == CUDA_SUCCESS) {
            bytes += held;
            freed++;
            free(s);
        } else {
            if (err && *err == CUDA_SUCCESS)
                *err = r;
            log_error("giving back segment %#llx failed (%d); keeping it cached",
                      (unsigned long long)s->base, (int)r);
            readd_segment(h, s);
        }
        s = next;
    }
    if (freed) {
        heap_lock(h);
        h->st.num_device_free += freed;
        heap_unlock(h);
    }
    return bytes;
}

/* Releases cached segments of h (all, or the fewest, smallest idle ones covering `want`
 * bytes); lock not held. Returns bytes released. */
size_t release_free_segments(struct heap *h, size_t want)
{
    struct segment *list = NULL;
    size_t bytes = 0;
    heap_lock(h);
    if (!h->expandable || want == SIZE_MAX)
        take_free_segments(h, &list, want);
    if (h->expandable)
        bytes = expand_release(h, want, NULL);
    heap_unlock(h);
    return bytes + destroy_segments(h, list, NULL);
}

void release_count_automatic(struct heap *h, size_t released)
{
    if (!released)
        return;
    h->st.num_empty_cache++;
    h->st.empty_cache_released_bytes += released;
}

/* release_count_automatic with the lock not held. */
static void count_automatic(struct heap *h, size_t released)
{
    if (!released)
        return;
    heap_lock(h);
    release_count_automatic(h, released);
    heap_unlock(h);
}

/* garbage_collection_threshold: growing by seg_size would take what is reserved past the
 * configured fraction of the device's memory, so first give back the excess from segments
 * that are one idle free block (counted as an automatic empty-cache). Lock not held. */
void release_before_growing(struct heap *h, size_t seg_size)
{
    if (h->expandable)
        return; /* expand.c collects before it maps */
    size_t limit = h->gc_limit;
    if (!limit)
        return;
    heap_lock(h);
    size_t reserved = h->st.reserved_bytes.current;
    heap_unlock(h);
    if (reserved + seg_size <= limit)
        return;
    count_automatic(h, release_free_segments(h, reserved + seg_size - limit));
}

/* release_threshold_mb: keeps at most that many cached (reserved, unallocated) bytes by giving
 * back segments that are one idle free block. Lock not held. */
void release_to_threshold(struct heap *h)
{
    size_t keep = h->cfg->release_threshold;
    if (FL_LIKELY(keep == SIZE_MAX))
        return;
    heap_lock(h);
    size_t cached = h->st.reserved_bytes.current - heap_allocated(h);
    heap_unlock(h);
    if (cached > keep)
        count_automatic(h, release_free_segments(h, cached - keep));
}

#define EMPTY_MAX_EVENTS 64

/* Expandable segments unmap only pages of ready free blocks: before empty-cache, wait for the
 * work that could touch the pending and stream-ordered frees (one device sync), then make
 * them ready. Lock held (dropped around the sync). */
static void settle_frees(struct heap *h)
{
    if (reuse_has_pending(h)) /* pending frees, or any stream pool holding a block */
        reuse_device_sync(h);
    reuse_collect(h);
}

/* Releases h's cached segments and idle events with the device's primary context current
 * (any thread may ask), restoring the caller's context after. */
static CUresult empty_one(struct heap *h, size_t *released)
{
    CUcontext prev = NULL, primary = NULL;
    CUevent events[EMPTY_MAX_EVENTS];
    CUresult r = drv_primary_ctx_retain(&primary, (CUdevice)h->device);
    if (r != CUDA_SUCCESS)
        return r;
    r = drv_ctx_get_current(&prev);
    if (r != CUDA_SUCCESS)
        goto release_primary;
    r = drv_ctx_set_current(primary);
    if (r != CUDA_SUCCESS)
        goto release_primary;

    struct segment *list = NULL;
    size_t bytes = 0;
    heap_lock(h);
    if (h->expandable)
        settle_frees(h);
    take_free_segments(h, &list, SIZE_MAX);
    if (h->expandable)
        bytes = expand_release(h, SIZE_MAX, &r);
    int nevents = reuse_drop_idle(h, events, EMPTY_MAX_EVENTS);
    heap_unlock(h);
    bytes += destroy_segments(h, list, &r);
    heap_lock(h);
    h->st.num_empty_cache++;
    h->st.empty_cache_released_bytes += bytes;
    heap_unlock(h);
    for (int i = 0; i < nevents; i++)
        drv_event_destroy(events[i]);
    *released += bytes;

    drv_ctx_set_current(prev);
release_primary:
    drv_primary_ctx_release((CUdevice)h->device);
    return r;
}

CUresult heap_empty_cache(int device, size_t *released)
{
    size_t bytes = 0;
    CUresult r = CUDA_SUCCESS;
    if (device != -1 && !fl_device_in_range(device))
        return CUDA_ERROR_INVALID_DEVICE;
    front_reclaim(device, true, NULL); /* what threads hold in their regions too */
    for (int d = 0; d < FL_MAX_DEVICES; d++) {
        struct heap *h = heap_find(d);
        if (!h || (device != -1 && d != device))
            continue;
        size_t one = 0;
        CUresult rd = empty_one(h, &one);
        /* recorded here, so the C API, fragstat's requests and every caller appear in a trace */
        trace_record(d, TRACE_EMPTY_CACHE, 0, one, NULL);
        bytes += one;
        if (rd != CUDA_SUCCESS && r == CUDA_SUCCESS)
            r = rd;
    }
    if (released)
        *released = bytes;
    heap_check_if_enabled();
    return r;
}
