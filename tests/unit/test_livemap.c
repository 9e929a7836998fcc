/*
 * test_livemap.c — a heap's live-block map (lib/livemap.c): every inserted block is found
 * until it is removed, removals in any order keep every other block findable (backward-shift
 * deletion across the table's wrap-around included), growth keeps every entry, and the table
 * stays at most half full for the records reserved.
 */
#include <criterion/criterion.h>
#include <stdlib.h>

#include "internal.h"

#define N 5000

static struct block blocks[N];

static void check_all(const struct livemap *m, const bool *in)
{
    for (int i = 0; i < N; i++)
        cr_assert_eq(livemap_find(m, blocks[i].ptr), in[i] ? &blocks[i] : NULL, "block %d", i);
}

/* Addresses as the heap makes them: multiples of 512, some in runs, some far apart. */
static void make_blocks(void)
{
    uint64_t s = 0x9d2c5680u;
    for (int i = 0; i < N; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        CUdeviceptr base = i % 3 ? 0x7f0000000000ull : 0x7e0000000000ull + (s % 4096) * FL_MiB;
        blocks[i] = (struct block){.ptr = base + (CUdeviceptr)i * 512};
    }
}

Test(livemap, grows_with_records_and_finds_every_live_block)
{
    make_blocks();
    struct livemap m = {0};
    bool in[N] = {0};
    int64_t total = 0;
    cr_assert_null(livemap_find(&m, blocks[0].ptr));
    for (int i = 0; i < N; i++) {
        int64_t grown;
        cr_assert(livemap_reserve(&m, (size_t)i + 1, &grown));
        total += grown;
        cr_assert_geq(m.mask + 1, 2 * ((size_t)i + 1));
        livemap_insert(&m, &blocks[i]);
        in[i] = true;
    }
    cr_assert_eq(m.count, N);
    cr_assert_eq(total, (int64_t)((m.mask + 1) * sizeof *m.slots));
    check_all(&m, in);
    free(m.slots);
}

Test(livemap, removals_in_any_order_keep_the_rest)
{
    make_blocks();
    struct livemap m = {0};
    bool in[N] = {0};
    int64_t grown;
    /* a small table (N/8 live at most) so that probe runs are long and wrap around */
    cr_assert(livemap_reserve(&m, N / 8, &grown));
    uint64_t s = 12345;
    int live = 0;
    for (int step = 0; step < 20 * N; step++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        int i = (int)(s % N);
        if (in[i]) {
            livemap_remove(&m, &blocks[i]);
            in[i] = false;
            live--;
        } else if (live < N / 8) {
            livemap_insert(&m, &blocks[i]);
            in[i] = true;
            live++;
        }
        if (step % 997 == 0)
            check_all(&m, in);
        cr_assert_eq(m.count, (size_t)live);
    }
    check_all(&m, in);
    for (int i = 0; i < N; i++)
        if (in[i])
            livemap_remove(&m, &blocks[i]);
    cr_assert_eq(m.count, 0);
    for (size_t i = 0; i <= m.mask; i++)
        cr_assert_null(m.slots[i]);
    free(m.slots);
}
