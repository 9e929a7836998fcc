/*
 * region.c — the heap's side of thread regions (front.c): handing a cached free block to a
 * thread as a held region, keeping the block records its pieces will need, and taking the
 * region back as the pieces the thread carved.
 *
 * A held block (BLOCK_HELD) is one block of its segment to every other part of the heap: in
 * no index, not in the live map, counted as active (no other stream or thread may use it) and
 * as one block. What its thread carved inside it is counted by front.c. Pages of a held block
 * are all mapped (expandable segments): carving never maps. Giving a region back replaces the
 * held block by its pieces in address order — live ones join the live map, pending ones wait
 * for a device sync, the rest is free on the region's stream — using records the region
 * already holds, so it cannot fail.
 * Called with the heap's lock.
 */
#include "internal.h"

/* Whether b's memory is wholly mapped and ready (always for classic segments). */
static bool wholly_backed(const struct block *b)
{
    return b->seg->kind != SEGMENT_EXPANDABLE || expand_pages_needed(b, b->size) == 0;
}

bool region_stash(struct heap *h, struct block **stash, uint32_t *n, uint32_t want)
{
    while (*n < want) {
        struct block *b = block_new(h);
        if (!b)
            return false;
        b->lnext = *stash;
        *stash = b;
        (*n)++;
    }
    return true;
}

void region_unstash(struct heap *h, struct block **stash, uint32_t *n)
{
    while (*stash) {
        struct block *b = *stash;
        *stash = b->lnext;
        block_recycle(h, b);
    }
    *n = 0;
}

struct block *region_take(struct heap *h, size_t rounded, size_t want, CUstream stream,
                          struct front *owner)
{
    if (atomic_load_explicit(&h->reclaiming, memory_order_relaxed))
        return NULL; /* a request out of memory needs what regions gave back */
    bool backed;     /* no event query or record: the heap's own path makes those */
    enum heap_pool_kind pool = size_pool(rounded);
    enum heap_mode mode = stream == REGION_DEVICE_WIDE ? HEAP_SYNC : HEAP_ASYNC;
    struct block *b = heap_find_cached(h, pool, want, stream, mode, &backed);
    if (!b || !backed) /* a block of `want` bytes, else the best fit of the request's */
        b = heap_find_cached(h, pool, rounded, stream, mode, &backed);
    if (!b || !backed)
        return NULL;
    size_t size = want < b->size ? want : b->size;
    if (size < rounded)
        size = rounded;
    /* a held block is wholly mapped: cut it where the pages end, or hold only what is */
    if (b->seg->kind == SEGMENT_EXPANDABLE && expand_pages_needed(b, size))
        size = rounded;
    if (!size_should_split(b->size, size, b->seg->pool, h->max_split) && !wholly_backed(b))
        return NULL;
    b = block_take(h, b, size, 0);
    block_account(h, b, -1);
    b->seg->live_bytes -= b->size;
    b->state = BLOCK_HELD;
    b->owner = owner;
    block_account(h, b, +1);
    h->held++;
    return b;
}

void region_open(struct heap *h, struct block *b)
{
    block_account(h, b, -1);
    b->seg->nlive--;
    b->state = BLOCK_FREE;
    b->owner = NULL;
    b->index = NULL;
    b->lprev = b->lnext = NULL;
    h->held--;
}

/* Where a piece that is neither live nor pending goes: a device-wide region's to the global
 * index (it came from there, and its frees a sync covered are ready everywhere); else the
 * region's stream pool (a per-thread default stream's only from its own thread), else it waits
 * for a device sync. */
static void put_spare(struct heap *h, struct block *b, const struct region_home *home)
{
    struct stream_pool *sp = NULL;
    if (home->stream == REGION_DEVICE_WIDE) { /* from the global index, ready everywhere */
        b->free_seq = ++h->free_seq;
        block_release_to(h, b, &h->global[b->seg->pool]);
        return;
    }
    if (home->stream != CU_STREAM_PER_THREAD || home->own_thread)
        sp = reuse_stream_pool(h, home->stream, !home->in_fork_child);
    b->free_seq = ++h->free_seq; /* after what the stream's recorded event covers */
    if (sp) {
        block_release_to(h, b, &sp->index[b->seg->pool]);
    } else {
        block_pend(h, b);
    }
}

void region_piece(struct heap *h, struct block **rest, size_t size, size_t requested,
                  enum piece_kind kind, const struct region_home *home, struct block **stash)
{
    struct block *b = *rest;
    if (size < b->size) { /* cut the head off into a record of the stash */
        struct block *head = *stash;
        *stash = head->lnext;
        block_cut_head(b, head, size);
        b = head;
    } else {
        *rest = NULL;
    }
    switch (kind) {
    case PIECE_LIVE:
        b->state = BLOCK_LIVE;
        b->requested = requested;
        b->seg->nlive++;
        b->seg->live_bytes += b->size;
        livemap_insert(&h->live, b);
        block_account(h, b, +1);
        return;
    case PIECE_PENDING:
        b->free_seq = ++h->free_seq;
        block_pend(h, b);
        return;
    case PIECE_SPARE:
        put_spare(h, b, home);
        return;
    }
}
