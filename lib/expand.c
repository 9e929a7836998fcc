/*
 * expand.c — expandable (VMM) segments: the heap's side of the page layer (vmm.c).
 *
 * Owns: creating a heap's expandable segments (one reserved range per pool, at least as large
 * as the device; another one only if a request finds no room), backing a block with physical
 * pages when it is handed out, and the policy of where those pages come from: pages lying
 * wholly inside READY free blocks (in a global index: no stream work may touch them, DESIGN.md
 * §4 rules 1 and 7) move to where they are needed before any page is created; what stays
 * free-but-mapped is a cache that empty-cache, the thresholds and the OOM path release.
 * Invariant (heapcheck.c checks it): every block that is live, pending or in a stream pool is
 * wholly mapped; only blocks in a global index may be partly unmapped. Called with the heap's
 * lock held; the page layer's driver calls are made under it.
 */
#include <stdlib.h>

#include "internal.h"

static size_t page_down(size_t v, size_t ps)
{
    return v / ps * ps;
}

static size_t page_up(size_t v, size_t ps)
{
    return (v + ps - 1) / ps * ps;
}

/* Bytes mapped in all of h's expandable segments. */
static size_t heap_mapped(const struct heap *h)
{
    size_t bytes = 0;
    for (const struct segment *s = h->segments; s; s = s->next)
        bytes += s->kind == SEGMENT_EXPANDABLE ? vrange_mapped_bytes(s->vr) : 0;
    return bytes;
}

/* Brings the mapping levels up to date after mapping changed from `before` bytes. The derived
 * reserved-but-unallocated level is left to the end of the operation (heap_settle): in the
 * middle of an allocation the block already counts as allocated while its pages are not all
 * mapped yet. */
static void account_mapped(struct heap *h, size_t before)
{
    int64_t delta = (int64_t)heap_mapped(h) - (int64_t)before;
    stat_add(&h->st.reserved_bytes, delta);
    stat_add(&h->st.mapped_bytes, delta);
    stat_add(&h->st.unmapped_reserved_va_bytes, -delta);
}

CUresult expand_segment_create(struct heap *h, enum heap_pool_kind pool, size_t min,
                               struct segment **out)
{
    struct segment *s = calloc(1, sizeof *s);
    if (!s)
        return CUDA_ERROR_OUT_OF_MEMORY;
    size_t va = h->device_mem > min ? h->device_mem : min;
    CUresult r = vrange_reserve(h->device, va, 0, &s->vr);
    if (r != CUDA_SUCCESS)
        goto free_record;
    s->base = vrange_base(s->vr);
    s->size = vrange_size(s->vr);
    s->kind = SEGMENT_EXPANDABLE;
    s->pool = pool;
    *out = s;
    return CUDA_SUCCESS;

free_record:
    free(s);
    return r;
}

/* Whether b is free in its pool's global index: no stream work may touch it. */
static bool block_is_ready(const struct heap *h, const struct block *b)
{
    return b->state == BLOCK_FREE && b->index == &h->global[b->seg->pool];
}

/* The pages lying wholly inside ready free block b that may be mapped: [*off, return). */
static size_t ready_span(const struct block *b, size_t *off)
{
    const struct segment *s = b->seg;
    size_t ps = vrange_page_size(s->vr);
    size_t start = page_up(b->ptr - s->base, ps);
    size_t end = page_down(b->ptr - s->base + b->size, ps);
    end = end < s->mapped_end ? end : s->mapped_end;
    *off = start;
    return end > start ? end : start;
}

/* Where page moving takes its pages from: a walk over the ready free blocks of the heap's
 * expandable segments in address order, and the mapped run found last. */
struct source {
    size_t page_size; /* of the destination: pages move only between ranges of one size */
    struct segment *seg;
    struct block *blk;
    size_t pos, end; /* the rest of blk's span */
};

/* The next run of mapped pages in a ready free block: *off, *len in src->seg. */
static bool source_next(const struct heap *h, struct source *src, size_t *off, size_t *len)
{
    for (;;) {
        if (src->blk) {
            *off = vrange_next_run(src->seg->vr, src->pos, src->end, true, len);
            if (*len)
                return true;
            src->blk = src->blk->next;
        } else {
            src->seg = src->seg ? src->seg->next : h->segments;
            if (!src->seg)
                return false;
            if (src->seg->kind != SEGMENT_EXPANDABLE ||
                vrange_page_size(src->seg->vr) != src->page_size)
                continue;
            src->blk = src->seg->first;
        }
        while (src->blk && !block_is_ready(h, src->blk))
            src->blk = src->blk->next;
        if (src->blk)
            src->end = ready_span(src->blk, &src->pos);
    }
}

/* Moves up to `budget` bytes of pages from ready free blocks into the empty pages of
 * dst[first, end). Stops quietly at the first failed move (the caller creates the rest).
 * Returns the bytes moved. */
static size_t move_pages(struct heap *h, struct segment *dst, size_t first, size_t end,
                         size_t budget)
{
    size_t ps = vrange_page_size(dst->vr);
    struct source src = {.page_size = ps};
    size_t moved = 0, soff = 0, slen = 0, dlen = 0;
    size_t d = vrange_next_run(dst->vr, first, end, false, &dlen);
    while (dlen && moved < budget) {
        if (!slen && !source_next(h, &src, &soff, &slen))
            break;
        size_t n = dlen < slen ? dlen : slen;
        size_t left = page_up(budget - moved, ps);
        n = n < left ? n : left;
        if (vrange_move(src.seg->vr, soff, dst->vr, d, n) != CUDA_SUCCESS)
            break;
        moved += n;
        soff += n;
        slen -= n;
        src.pos = soff;
        d += n;
        dlen -= n;
        if (!dlen)
            d = vrange_next_run(dst->vr, d, end, false, &dlen);
    }
    return moved;
}

/* How much of `need` new bytes should come from pages moved rather than created: everything
 * beyond what free_mapped_keep_mb lets the cache hold. */
static size_t move_budget(const struct heap *h, size_t need)
{
    if (!h->cfg->page_moving)
        return 0;
    size_t cached = h->st.reserved_bytes.current - heap_allocated(h);
    size_t keep = h->cfg->free_mapped_keep;
    if (keep != SIZE_MAX && cached + need > keep)
        return cached + need - keep < need ? cached + need - keep : need;
    return 0;
}

/* garbage_collection_threshold: mapping `need` more bytes would pass the limit. */
static void collect_before_mapping(struct heap *h, size_t need)
{
    size_t reserved = h->st.reserved_bytes.current;
    if (!h->gc_limit || reserved + need <= h->gc_limit)
        return;
    release_count_automatic(h, expand_release(h, reserved + need - h->gc_limit, NULL));
}

/* Whether every page below s's mapped_end is ready (mapped with access set; no page at or
 * beyond it is mapped): then nothing below it needs a page. Ready, not only mapped: a page
 * whose access could not be set is repaired by the vrange_map that a need makes. */
static bool mapped_below_end(const struct segment *s)
{
    return vrange_ready_bytes(s->vr) == s->mapped_end;
}

size_t expand_pages_needed(const struct block *b, size_t rounded)
{
    const struct segment *s = b->seg;
    if (s->kind != SEGMENT_EXPANDABLE)
        return 0;
    if (b->ptr - s->base + rounded <= s->mapped_end && mapped_below_end(s))
        return 0;
    size_t ps = vrange_page_size(s->vr);
    size_t first = page_down(b->ptr - s->base, ps);
    size_t end = page_up(b->ptr - s->base + rounded, ps);
    return end - first - vrange_ready_in(s->vr, first, end - first);
}

CUresult expand_back(struct heap *h, struct block *b)
{
    struct segment *s = b->seg;
    size_t ps = vrange_page_size(s->vr);
    size_t first = page_down(b->ptr - s->base, ps);
    size_t end = page_up(b->ptr - s->base + b->size, ps);
    size_t need = end - first - vrange_ready_in(s->vr, first, end - first);
    if (!need)
        return CUDA_SUCCESS;
    size_t before = heap_mapped(h);
    size_t moved = move_pages(h, s, first, end, move_budget(h, need));
    account_mapped(h, before); /* moves keep the total, unless undoing one failed */
    collect_before_mapping(h, need - moved);
    before = heap_mapped(h);
    CUresult r = vrange_map(s->vr, first, end - first);
    if (end > s->mapped_end) /* pages moved in stay mapped even if mapping the rest failed */
        s->mapped_end = end;
    account_mapped(h, before);
    return r;
}

size_t expand_release(struct heap *h, size_t want, CUresult *err)
{
    size_t before = heap_mapped(h), released = 0;
    CUresult r;
    for (struct segment *s = h->segments; s && released < want; s = s->next) {
        if (s->kind != SEGMENT_EXPANDABLE)
            continue;
        size_t ps = vrange_page_size(s->vr);
        for (struct block *b = s->first; b && released < want; b = b->next) {
            size_t off, end;
            if (!block_is_ready(h, b) || (end = ready_span(b, &off)) == off)
                continue;
            if (want != SIZE_MAX && end - off > page_up(want - released, ps))
                end = off + page_up(want - released, ps);
            size_t had = vrange_mapped_bytes(s->vr);
            r = vrange_unmap(s->vr, off, end - off, false);
            if (r != CUDA_SUCCESS && err && *err == CUDA_SUCCESS)
                *err = r;
            released += had - vrange_mapped_bytes(s->vr);
        }
    }
    size_t spare = 0;
    if (want == SIZE_MAX) {
        r = vmm_release_spare(h->device, &spare);
        if (r != CUDA_SUCCESS && err && *err == CUDA_SUCCESS)
            *err = r;
    }
    account_mapped(h, before);
    return released;
}

/* Whether every page b touches is mapped. */
static bool block_mapped(const struct block *b)
{
    const struct segment *s = b->seg;
    size_t ps = vrange_page_size(s->vr);
    size_t first = page_down(b->ptr - s->base, ps);
    size_t end = page_up(b->ptr - s->base + b->size, ps);
    return vrange_ready_in(s->vr, first, end - first) == end - first;
}

bool expand_segment_is_valid(const struct heap *h, const struct segment *s)
{
    if (!vrange_is_valid(s->vr) || s->base != vrange_base(s->vr) || s->size != vrange_size(s->vr))
        return false;
    for (const struct block *b = s->first; b; b = b->next)
        if (!block_is_ready(h, b) && !block_mapped(b))
            return false;
    return true;
}
