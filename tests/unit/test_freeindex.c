/*
 * test_freeindex.c — the segregated-fit index of free blocks (lib/freeindex.c): best fit,
 * bitmaps, largest block, removal, taking blocks by free sequence. Pure (blocks on the stack).
 */
#include <criterion/criterion.h>

#include "internal.h"

#define N 64

static struct freeindex fi;
static struct block blocks[N];

static struct block *add(int i, size_t size)
{
    blocks[i] = (struct block){.ptr = 0x100000 + (CUdeviceptr)i * 0x1000000, .size = size};
    fi_insert(&fi, &blocks[i]);
    return &blocks[i];
}

static void setup(void)
{
    fi_init(&fi);
}

TestSuite(freeindex, .init = setup);

Test(freeindex, empty_finds_nothing)
{
    cr_assert_null(fi_best_fit(&fi, 512));
    cr_assert_eq(fi_largest(&fi), 0);
    cr_assert(fi_is_valid(&fi));
}

Test(freeindex, best_fit_is_the_smallest_that_fits)
{
    add(0, 4096);
    add(1, 512);
    add(2, 64 * FL_MiB);
    add(3, 3 * FL_MiB);
    add(4, 2 * FL_MiB + 512);
    cr_assert(fi_is_valid(&fi));
    cr_assert_eq(fi_best_fit(&fi, 512), &blocks[1]);
    cr_assert_eq(fi_best_fit(&fi, 1024), &blocks[0]);
    cr_assert_eq(fi_best_fit(&fi, 4096), &blocks[0]);
    cr_assert_eq(fi_best_fit(&fi, 2 * FL_MiB), &blocks[4]);
    cr_assert_eq(fi_best_fit(&fi, 2 * FL_MiB + 1024), &blocks[3]);
    cr_assert_eq(fi_best_fit(&fi, 3 * FL_MiB + 512), &blocks[2]);
    cr_assert_null(fi_best_fit(&fi, 64 * FL_MiB + 512));
    cr_assert_eq(fi_largest(&fi), 64 * FL_MiB);
    cr_assert_eq(fi.count, 5);
    cr_assert_eq(fi.bytes, 4096 + 512 + 64 * FL_MiB + 3 * FL_MiB + 2 * FL_MiB + 512);
}

Test(freeindex, same_class_picks_a_block_that_fits)
{
    /* 33 MiB and 33.5 MiB share a class; a 33.25 MiB request must get the larger */
    add(0, 33 * FL_MiB);
    add(1, 33 * FL_MiB + FL_MiB / 2);
    struct block *b = fi_best_fit(&fi, 33 * FL_MiB + FL_MiB / 4);
    cr_assert_eq(b, &blocks[1]);
    cr_assert_eq(fi_best_fit(&fi, 33 * FL_MiB), &blocks[0]);
}

Test(freeindex, removal_clears_bitmaps)
{
    add(0, 8192);
    add(1, 8192);
    add(2, 40 * FL_MiB);
    fi_remove(&fi, &blocks[0]);
    cr_assert(fi_is_valid(&fi));
    cr_assert_eq(fi_best_fit(&fi, 8192), &blocks[1]);
    fi_remove(&fi, &blocks[1]);
    cr_assert_eq(fi_best_fit(&fi, 8192), &blocks[2]);
    fi_remove(&fi, &blocks[2]);
    cr_assert_eq(fi.fl_bitmap, 0);
    cr_assert_eq(fi.count, 0);
    cr_assert_eq(fi.bytes, 0);
    cr_assert(fi_is_valid(&fi));
}

Test(freeindex, many_sizes_every_fit_is_large_enough_and_close)
{
    for (int i = 0; i < N; i++)
        add(i, (size_t)512 * (1 + (size_t)i * i * 37));
    cr_assert(fi_is_valid(&fi));
    for (size_t want = 512; want < (size_t)512 * 200000; want = want * 5 / 4 + 512) {
        want &= ~(size_t)511;
        struct block *b = fi_best_fit(&fi, want);
        size_t best = 0;
        for (int i = 0; i < N; i++)
            if (blocks[i].size >= want && (!best || blocks[i].size < best))
                best = blocks[i].size;
        if (!best) {
            cr_assert_null(b);
            continue;
        }
        cr_assert_not_null(b);
        cr_assert_geq(b->size, want);
        /* within one class (about 1/32) of the true best fit */
        cr_assert_leq(b->size, best + best / 16, "want %zu got %zu best %zu", want, b->size, best);
    }
}

Test(freeindex, invalid_index_is_detected)
{
    add(0, 8192);
    fi.count = 2;
    cr_assert(!fi_is_valid(&fi));
}

Test(freeindex, take_upto_moves_only_older_frees)
{
    add(0, 4096)->free_seq = 1;
    add(1, 8192)->free_seq = 5;
    add(2, 30 * FL_MiB)->free_seq = 3;
    struct block *list = NULL;
    fi_take_upto(&fi, 3, &list);
    int n = 0;
    for (struct block *b = list; b; b = b->lnext, n++)
        cr_assert_leq(b->free_seq, 3);
    cr_assert_eq(n, 2);
    cr_assert_eq(fi.count, 1);
    cr_assert_eq(fi_best_fit(&fi, 512), &blocks[1]);
    cr_assert(fi_is_valid(&fi));
}

static size_t cost_by_ptr(const struct block *b, size_t size)
{
    (void)size;
    return (size_t)(b->ptr >> 24) % 3; /* blocks 0, 3, 6 ... cost 0 */
}

Test(freeindex, cheapest_fit_looks_at_a_bounded_number_of_blocks)
{
    add(1, 4 * FL_MiB);  /* cost 1 */
    add(2, 8 * FL_MiB);  /* cost 2 */
    add(4, 16 * FL_MiB); /* cost 1 */
    add(5, 2 * FL_MiB);  /* too small */
    cr_assert_eq(fi_fit_cheapest(&fi, 3 * FL_MiB, cost_by_ptr, 8), &blocks[1]);
    add(3, 64 * FL_MiB); /* cost 0: found when enough blocks are looked at */
    cr_assert_eq(fi_fit_cheapest(&fi, 3 * FL_MiB, cost_by_ptr, 8), &blocks[3]);
    cr_assert_eq(fi_fit_cheapest(&fi, 3 * FL_MiB, cost_by_ptr, 2), &blocks[1]);
    cr_assert_null(fi_fit_cheapest(&fi, 65 * FL_MiB, cost_by_ptr, 8));
    cr_assert(fi_is_valid(&fi));
}
