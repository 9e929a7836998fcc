/*
 * block.c — the blocks of a heap: creating and recycling their records, splitting a free
 * block to serve a request, merging a freed block with its free neighbours, moving blocks
 * between the free indexes and the pending list, and each block's share of the statistics.
 *
 * Every change to a block goes through block_account(): a block's share is removed before it
 * changes and added back after, so the heap's levels always equal the sum over its blocks
 * (which heap_is_valid() checks). A "detached" block is one in no index or list whose share is
 * not counted; it exists only inside one locked heap operation. Called with the heap's lock.
 */
#include <stdlib.h>

#include "internal.h"

struct block *block_new(struct heap *h)
{
    struct block *b = h->spare;
    if (b) {
        h->spare = b->lnext;
    } else {
        /* the live map keeps room for every record: inserting a live block never fails */
        int64_t grown;
        if (!livemap_reserve(&h->live, h->records + 1, &grown))
            return NULL;
        stat_add(&h->st.host_metadata_bytes, grown);
        b = malloc(sizeof *b);
        if (!b)
            return NULL;
        h->records++;
        stat_add(&h->st.host_metadata_bytes, (int64_t)sizeof *b);
    }
    *b = (struct block){0};
    return b;
}

void block_recycle(struct heap *h, struct block *b)
{
    b->lnext = h->spare;
    h->spare = b;
}

static bool index_is_global(const struct heap *h, const struct freeindex *fi)
{
    return fi == &h->global[POOL_SMALL] || fi == &h->global[POOL_LARGE];
}

/* Freed but not yet reusable on every stream: pending a sync, or in a stream pool. */
static bool block_is_inactive_active(const struct heap *h, const struct block *b)
{
    return b->state == BLOCK_SYNC_PENDING ||
           (b->state == BLOCK_FREE && b->index && !index_is_global(h, b->index));
}

void block_account(struct heap *h, const struct block *b, int sign)
{
    int64_t size = sign * (int64_t)b->size;
    stat_add(&h->st.blocks, sign);
    if (b->state == BLOCK_LIVE) {
        stat_add(&h->st.allocated_bytes, size);
        stat_add(&h->st.requested_bytes, sign * (int64_t)b->requested);
        stat_add(&h->st.active_bytes, size);
        return;
    }
    if (block_is_inactive_active(h, b))
        stat_add(&h->st.active_bytes, size);
    else if (b->prev || b->next) /* inactive and part of a split segment */
        stat_add(&h->st.inactive_split_bytes, size);
}

/* Splits the tail beyond `rounded` off b (detached) into a new block; false if no record. */
static bool split_tail(struct heap *h, struct block *b, size_t rounded)
{
    struct block *r = block_new(h);
    if (!r)
        return false;
    r->ptr = b->ptr + rounded;
    r->size = b->size - rounded;
    r->seg = b->seg;
    r->state = BLOCK_FREE;
    r->free_seq = b->free_seq;
    r->prev = b;
    r->next = b->next;
    if (b->next)
        b->next->prev = r;
    b->next = r;
    b->size = rounded;
    b->seg->nblocks++;
    return true;
}

void block_take(struct heap *h, struct block *b, size_t rounded, size_t requested)
{
    struct freeindex *fi = b->index;
    block_detach(h, b);
    if (size_should_split(b->size, rounded, b->seg->pool, h->max_split) &&
        split_tail(h, b, rounded)) {
        fi_insert(fi, b->next);
        block_account(h, b->next, +1);
    }
    b->state = BLOCK_LIVE;
    b->requested = requested;
    b->seg->nlive++;
    b->seg->live_bytes += b->size;
    block_account(h, b, +1);
}

void block_unlive(struct heap *h, struct block *b)
{
    block_account(h, b, -1);
    b->seg->nlive--;
    b->seg->live_bytes -= b->size;
    b->state = BLOCK_FREE;
    b->requested = 0;
}

void block_detach(struct heap *h, struct block *b)
{
    block_account(h, b, -1);
    if (b->state == BLOCK_SYNC_PENDING) {
        if (b->lprev)
            b->lprev->lnext = b->lnext;
        else
            h->pending = b->lnext;
        if (b->lnext)
            b->lnext->lprev = b->lprev;
        b->lprev = b->lnext = NULL;
        h->pending_bytes -= b->size;
        b->state = BLOCK_FREE;
    } else if (b->index) {
        fi_remove(b->index, b);
    }
}

static bool mergeable(const struct block *n, const struct freeindex *fi)
{
    return n && n->state == BLOCK_FREE && n->index == fi;
}

/* b absorbs its neighbour n (free in the same index); n's record is recycled. */
static void absorb(struct heap *h, struct block *b, struct block *n)
{
    block_detach(h, n);
    if (n == b->prev) {
        b->ptr = n->ptr;
        b->prev = n->prev;
        if (n->prev)
            n->prev->next = b;
        else
            b->seg->first = b;
    } else {
        b->next = n->next;
        if (n->next)
            n->next->prev = b;
    }
    b->size += n->size;
    if (n->free_seq > b->free_seq)
        b->free_seq = n->free_seq;
    b->seg->nblocks--;
    block_recycle(h, n);
}

void block_release_to(struct heap *h, struct block *b, struct freeindex *fi)
{
    if (mergeable(b->prev, fi))
        absorb(h, b, b->prev);
    if (mergeable(b->next, fi))
        absorb(h, b, b->next);
    b->state = BLOCK_FREE;
    fi_insert(fi, b);
    block_account(h, b, +1);
}

void block_pend(struct heap *h, struct block *b)
{
    b->state = BLOCK_SYNC_PENDING;
    b->index = NULL;
    b->lprev = NULL;
    b->lnext = h->pending;
    if (h->pending)
        h->pending->lprev = b;
    h->pending = b;
    h->pending_bytes += b->size;
    block_account(h, b, +1);
}
