/*
 * block.c — the blocks of a heap: creating and recycling their records, splitting a free
 * block to serve a request, merging a freed block with its free neighbours, moving blocks
 * between the free indexes and the pending list, and each block's share of the statistics
 * (block_account, inline in internal.h).
 *
 * Every change to a block goes through block_account(): a block's share is removed before it
 * changes and added back after, so the heap's levels always equal the sum over its blocks
 * (which heap_is_valid() checks). Their peaks are raised by heap_settle() at the end of the
 * operation: what happens in between is never seen. A "detached" block is one in no index or list
 * whose share is not counted; it exists only inside one locked heap operation. Called with the
 * heap's lock.
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

void block_cut_head(struct block *b, struct block *f, size_t size)
{
    *f = (struct block){.ptr = b->ptr,
                        .size = size,
                        .seg = b->seg,
                        .prev = b->prev,
                        .next = b,
                        .state = BLOCK_FREE};
    if (b->prev)
        b->prev->next = f;
    else
        b->seg->first = f;
    b->prev = f;
    b->ptr += size;
    b->size -= size;
    b->seg->nblocks++;
}

/* Splits the first `rounded` bytes off free block b (accounted, in its index) into a new
 * detached block, which it returns; b keeps the rest, and its place in the index when its
 * size class does not change (fi_resize). NULL if there is no record for it. */
static struct block *split_head(struct heap *h, struct block *b, size_t rounded)
{
    struct block *f = block_new(h);
    if (!f)
        return NULL;
    size_t old = b->size;
    block_account(h, b, -1);
    block_cut_head(b, f, rounded);
    f->free_seq = b->free_seq;
    fi_resize(b->index, b, old);
    block_account(h, b, +1);
    return f;
}

struct block *block_take(struct heap *h, struct block *b, size_t rounded, size_t requested)
{
    struct block *f = NULL;
    if (size_should_split(b->size, rounded, b->seg->pool, h->max_split))
        f = split_head(h, b, rounded);
    if (!f) {
        block_detach(h, b);
        f = b;
    }
    f->state = BLOCK_LIVE;
    f->requested = requested;
    f->seg->nlive++;
    f->seg->live_bytes += f->size;
    block_account(h, f, +1);
    return f;
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

/* keep grows over its detached neighbour n (no share, in no index), whose record is
 * recycled; keep's place in an index is the caller's to fix. */
static void swallow(struct heap *h, struct block *keep, struct block *n)
{
    if (n == keep->prev) {
        keep->ptr = n->ptr;
        keep->prev = n->prev;
        if (n->prev)
            n->prev->next = keep;
        else
            keep->seg->first = keep;
    } else {
        keep->next = n->next;
        if (n->next)
            n->next->prev = keep;
    }
    keep->size += n->size;
    if (n->free_seq > keep->free_seq)
        keep->free_seq = n->free_seq;
    keep->seg->nblocks--;
    block_recycle(h, n);
}

/* Detached b merges into its free neighbours in fi: the lower one keeps its record and, when
 * its size class does not change, its place in the index. */
void block_release_to(struct heap *h, struct block *b, struct freeindex *fi)
{
    struct block *p = mergeable(b->prev, fi) ? b->prev : NULL;
    struct block *n = mergeable(b->next, fi) ? b->next : NULL;
    b->state = BLOCK_FREE;
    if (!p && !n) {
        fi_insert(fi, b);
        block_account(h, b, +1);
        return;
    }
    struct block *keep = p ? p : n;
    size_t old = keep->size;
    block_account(h, keep, -1);
    swallow(h, keep, b);
    if (p && n) {
        block_detach(h, n);
        swallow(h, keep, n);
    }
    fi_resize(fi, keep, old);
    block_account(h, keep, +1);
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
