/*
 * test_block.c — blocks (lib/block.c): split on take, merge on release, pending frees, stream
 * indexes that do not merge with the global one, and the statistics that follow each block;
 * every step checked by the invariant walker (lib/heapcheck.c). No driver: the heap and its
 * segment are built by hand around a fake address range.
 */
#include <criterion/criterion.h>
#include <stdlib.h>

#include "internal.h"

static struct config conf;
static struct heap h;
static struct segment seg;
static struct stream_pool sp;

static void settle(void)
{
    heap_settle(&h);
}

static void setup(void)
{
    config_defaults(&conf);
    h = (struct heap){.cfg = &conf};
    fi_init(&h.global[POOL_SMALL]);
    fi_init(&h.global[POOL_LARGE]);
    fi_init(&sp.index[POOL_SMALL]);
    fi_init(&sp.index[POOL_LARGE]);
    static struct stream_pool *streams[1];
    streams[0] = &sp;
    h.streams = streams;
    h.nstreams = 1;
    seg = (struct segment){.base = 0x7f0000000000ull, .size = 2 * FL_MiB, .pool = POOL_SMALL};
    struct block *b = block_new(&h);
    *b = (struct block){.ptr = seg.base, .size = seg.size, .seg = &seg};
    seg.first = b;
    seg.nblocks = 1;
    h.segments = &seg;
    stat_add(&h.st.reserved_bytes, (int64_t)seg.size);
    stat_add(&h.st.segments, 1);
    block_release_to(&h, b, &h.global[POOL_SMALL]);
    settle();
    cr_assert(heap_check(&h));
}

TestSuite(block, .init = setup);

static struct block *take(size_t size)
{
    struct block *b = fi_best_fit(&h.global[POOL_SMALL], size);
    cr_assert_not_null(b);
    b = block_take(&h, b, size, size - 10);
    livemap_insert(&h.live, b);
    settle();
    cr_assert(heap_check(&h));
    return b;
}

static void give_back(struct block *b, struct freeindex *fi)
{
    livemap_remove(&h.live, b);
    block_unlive(&h, b);
    if (fi)
        block_release_to(&h, b, fi);
    else
        block_pend(&h, b);
    settle();
    cr_assert(heap_check(&h));
}

Test(block, take_splits_and_release_merges)
{
    struct block *a = take(4096);
    struct block *b = take(8192);
    cr_assert_eq(a->ptr, seg.base);
    cr_assert_eq(b->ptr, seg.base + 4096);
    cr_assert_eq(seg.nblocks, 3);
    cr_assert_eq(h.st.allocated_bytes.current, 4096 + 8192);
    cr_assert_eq(h.st.requested_bytes.current, 4096 + 8192 - 20);
    cr_assert_eq(h.st.inactive_split_bytes.current, 2 * FL_MiB - 4096 - 8192);
    give_back(a, &h.global[POOL_SMALL]);
    cr_assert_eq(seg.nblocks, 3); /* its neighbour is live: nothing to merge */
    cr_assert_eq(h.st.inactive_split_bytes.current, 2 * FL_MiB - 8192);
    give_back(b, &h.global[POOL_SMALL]);
    cr_assert_eq(seg.nblocks, 1);
    cr_assert_eq(h.st.blocks.current, 1);
    cr_assert_eq(h.st.inactive_split_bytes.current, 0);
    cr_assert_eq(h.st.allocated_bytes.current, 0);
    cr_assert_eq(h.st.allocated_bytes.peak, 4096 + 8192);
    cr_assert_eq(h.st.reserved_unallocated_bytes.current, 2 * FL_MiB);
}

Test(block, exact_fit_does_not_split)
{
    struct block *a = take(2 * FL_MiB);
    cr_assert_eq(seg.nblocks, 1);
    cr_assert_eq(a->size, 2 * FL_MiB);
}

Test(block, pending_blocks_do_not_merge_until_released)
{
    struct block *a = take(4096);
    struct block *b = take(4096);
    give_back(a, NULL);
    cr_assert_eq(h.pending_bytes, 4096);
    cr_assert_eq(h.st.active_bytes.current, 8192);
    cr_assert_eq(h.st.inactive_split_bytes.current, 2 * FL_MiB - 8192, "pending is active");
    give_back(b, &h.global[POOL_SMALL]);
    cr_assert_eq(seg.nblocks, 2);
    block_detach(&h, a);
    block_release_to(&h, a, &h.global[POOL_SMALL]);
    cr_assert(heap_check(&h));
    cr_assert_eq(seg.nblocks, 1);
    cr_assert_eq(h.st.active_bytes.current, 0);
    cr_assert_null(h.pending);
}

Test(block, stream_blocks_merge_only_with_their_stream)
{
    struct block *a = take(4096);
    struct block *b = take(4096);
    struct block *c = take(4096);
    give_back(a, &sp.index[POOL_SMALL]);
    give_back(b, &sp.index[POOL_SMALL]);
    cr_assert_eq(sp.index[POOL_SMALL].count, 1); /* a and b merged */
    give_back(c, &h.global[POOL_SMALL]);         /* c merges with the global rest only */
    cr_assert_eq(seg.nblocks, 2);
    cr_assert_eq(h.st.active_bytes.current, 8192);
    struct block *ab = seg.first;
    cr_assert_eq(ab->size, 8192);
    block_detach(&h, ab);
    block_release_to(&h, ab, &h.global[POOL_SMALL]);
    cr_assert(heap_check(&h));
    cr_assert_eq(seg.nblocks, 1);
}

Test(block, walker_catches_wrong_statistics)
{
    take(4096);
    h.st.allocated_bytes.current += 512;
    cr_assert(!heap_check(&h));
}

Test(block, walker_catches_unmerged_neighbours)
{
    struct block *a = take(4096);
    livemap_remove(&h.live, a);
    block_unlive(&h, a);
    /* put it in the index by hand, without merging with its free neighbour */
    a->state = BLOCK_FREE;
    fi_insert(&h.global[POOL_SMALL], a);
    block_account(&h, a, +1);
    settle();
    cr_assert(!heap_check(&h));
}
