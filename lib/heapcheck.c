/*
 * heapcheck.c — the heap's invariant walker (heap_is_valid(), run after every operation when
 * FRAGLESS_CHECK is set).
 *
 * Checks, for one heap: blocks tile each segment exactly in address order; no two adjacent
 * blocks are free in the same index (they would have been merged); every free block sits in a
 * well-formed index of this heap, every pending block on the pending list, every live block in
 * the live map; per-segment counts; and every level statistic equals the sum over the blocks.
 * Expandable segments: the page layer's own walker, and every block that is live, pending or
 * in a stream pool wholly mapped (pages move or go back only from ready free blocks).
 */
#include "internal.h"

/* Sums over the blocks, compared with the heap's statistics at the end. */
struct tally {
    uint64_t reserved, mapped, segments, blocks, allocated, requested, active, inactive_split;
    uint64_t live, free_in_index, pending, pending_bytes;
};

/* Logs a violation in heap h (in scope) and fails the check. */
#define FAIL(fmt, ...)                                                      \
    do {                                                                    \
        log_error("heap check, device %d: " fmt, h->device, ##__VA_ARGS__); \
        return false;                                                       \
    } while (0)

static bool index_belongs(const struct heap *h, const struct freeindex *fi, bool *global)
{
    *global = fi == &h->global[POOL_SMALL] || fi == &h->global[POOL_LARGE];
    if (*global)
        return true;
    for (int i = 0; i < h->nstreams; i++)
        if (fi == &h->streams[i]->index[POOL_SMALL] || fi == &h->streams[i]->index[POOL_LARGE])
            return true;
    return false;
}

static bool check_block(const struct heap *h, const struct block *b, struct tally *t)
{
    bool global = false;
    t->blocks++;
    switch (b->state) {
    case BLOCK_LIVE: {
        if (livemap_find(&h->live, b->ptr) != b)
            FAIL("live block %#llx not in the live map", (unsigned long long)b->ptr);
        t->live++;
        t->allocated += b->size;
        t->requested += b->requested;
        t->active += b->size;
        return true;
    }
    case BLOCK_FREE:
        if (!b->index || !index_belongs(h, b->index, &global))
            FAIL("free block %#llx in no index of this heap", (unsigned long long)b->ptr);
        t->free_in_index++;
        if (!global)
            t->active += b->size;
        else if (b->prev || b->next)
            t->inactive_split += b->size;
        return true;
    case BLOCK_SYNC_PENDING:
        t->pending++;
        t->pending_bytes += b->size;
        t->active += b->size;
        return true;
    case BLOCK_HELD: /* a thread's region: front_check looks inside */
        if (!b->owner)
            FAIL("held block %#llx has no thread", (unsigned long long)b->ptr);
        t->active += b->size;
        return true;
    }
    return true;
}

static bool check_segment(const struct heap *h, const struct segment *s, struct tally *t)
{
    CUdeviceptr at = s->base;
    uint32_t n = 0, live = 0;
    size_t live_bytes = 0;
    const struct block *prev = NULL;
    for (const struct block *b = s->first; b; prev = b, b = b->next) {
        if (b->seg != s || b->prev != prev || b->ptr != at || b->size == 0)
            FAIL("segment %#llx: block %#llx out of place", (unsigned long long)s->base,
                 (unsigned long long)b->ptr);
        if (prev && prev->state == BLOCK_FREE && b->state == BLOCK_FREE && prev->index == b->index)
            FAIL("adjacent free blocks %#llx and %#llx not merged", (unsigned long long)prev->ptr,
                 (unsigned long long)b->ptr);
        if (!check_block(h, b, t))
            return false;
        at += b->size;
        n++;
        live += b->state == BLOCK_LIVE || b->state == BLOCK_HELD;
        live_bytes += b->state == BLOCK_LIVE ? b->size : 0;
    }
    if (at != s->base + s->size || n != s->nblocks || live != s->nlive ||
        live_bytes != s->live_bytes)
        FAIL("segment %#llx: blocks do not add up", (unsigned long long)s->base);
    if (s->kind == SEGMENT_EXPANDABLE && !expand_segment_is_valid(h, s))
        FAIL("expandable segment %#llx: range invalid, or a block not ready is not wholly mapped",
             (unsigned long long)s->base);
    t->reserved += segment_reserved(s);
    t->mapped += s->kind == SEGMENT_EXPANDABLE ? segment_reserved(s) : 0;
    t->segments++;
    return true;
}

static bool check_indexes(const struct heap *h, const struct tally *t)
{
    size_t count = 0;
    for (int k = 0; k < POOL_KINDS; k++) {
        if (!fi_is_valid(&h->global[k]))
            FAIL("global index %d malformed", k);
        count += h->global[k].count;
        for (int i = 0; i < h->nstreams; i++) {
            if (!fi_is_valid(&h->streams[i]->index[k]))
                FAIL("stream index %d of stream %p malformed", k, (void *)h->streams[i]->stream);
            count += h->streams[i]->index[k].count;
        }
    }
    if (count != t->free_in_index)
        FAIL("indexes hold %zu blocks, segments %llu", count, (unsigned long long)t->free_in_index);
    uint64_t n = 0, bytes = 0;
    const struct block *prev = NULL;
    for (const struct block *b = h->pending; b; prev = b, b = b->lnext, n++) {
        if (b->state != BLOCK_SYNC_PENDING || b->lprev != prev)
            FAIL("pending list malformed at %#llx", (unsigned long long)b->ptr);
        bytes += b->size;
    }
    if (n != t->pending || bytes != t->pending_bytes || bytes != h->pending_bytes)
        FAIL("pending list does not match the blocks");
    if (h->live.count != t->live)
        FAIL("live map holds %zu blocks, segments %llu", h->live.count,
             (unsigned long long)t->live);
    return true;
}

static bool check_stats(const struct heap *h, const struct tally *t)
{
    const fragless_stats_t *s = &h->st;
    if (t->allocated > t->reserved)
        FAIL("more bytes allocated than reserved");
    if (s->reserved_unallocated_bytes.peak > s->reserved_bytes.peak)
        FAIL("reserved-but-unallocated peaked above reserved");
        /* reserved-but-unallocated less what threads carved: front_check */
#define PEAK_BELOW_(name, help)                                                       \
    if (s->name.peak < s->name.current && &s->name != &s->reserved_unallocated_bytes) \
        FAIL("%s: peak below the current level", #name);
#define SKIP_COUNTER_(name, help)
    FRAGLESS_STATS_FIELDS(PEAK_BELOW_, SKIP_COUNTER_)
#undef PEAK_BELOW_
#undef SKIP_COUNTER_
    if (s->reserved_bytes.current != t->reserved || s->segments.current != t->segments ||
        s->blocks.current != t->blocks || s->allocated_bytes.current != t->allocated ||
        s->requested_bytes.current != t->requested || s->active_bytes.current != t->active ||
        s->inactive_split_bytes.current != t->inactive_split ||
        s->reserved_unallocated_bytes.current != t->reserved - t->allocated ||
        s->mapped_bytes.current != t->mapped)
        FAIL("statistics differ from the sum over blocks");
    return true;
}

bool heap_check(struct heap *h)
{
    struct tally t = {0};
    for (const struct segment *s = h->segments; s; s = s->next)
        if (!check_segment(h, s, &t))
            return false;
    return check_indexes(h, &t) && check_stats(h, &t);
}
