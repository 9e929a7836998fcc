/*
 * test_size.c — the heap's size policy (lib/size.c): 512 B rounding, PyTorch's
 * roundup_power2_divisions, pools, segment sizes and the max_split_size rules. Pure.
 */
#include <criterion/criterion.h>
#include <stdint.h>

#include "internal.h"

static struct config conf(uint32_t divisions)
{
    struct config c;
    config_defaults(&c);
    for (int i = 0; i < CONF_RP2_INTERVALS; i++)
        c.roundup_power2_divisions[i] = divisions;
    return c;
}

Test(size, rounds_to_512_bytes)
{
    struct config c = conf(0);
    cr_assert_eq(size_round(0, &c), 512);
    cr_assert_eq(size_round(1, &c), 512);
    cr_assert_eq(size_round(512, &c), 512);
    cr_assert_eq(size_round(513, &c), 1024);
    cr_assert_eq(size_round(3 * FL_MiB + 1, &c), 3 * FL_MiB + 512);
}

Test(size, absurd_requests_cannot_be_represented)
{
    struct config c = conf(0);
    cr_assert_eq(size_round(SIZE_MAX, &c), 0);
    cr_assert_eq(size_round(SIZE_MAX - 100, &c), 0);
}

Test(size, next_division_as_pytorch_defines_it)
{
    /* PyTorch's documentation: 1200 with 4 divisions lies in [1024, 2048) whose divisions are
     * 1024, 1280, 1536, 1792: it rounds to 1280. */
    cr_assert_eq(size_rp2_next_division(1200, 4), 1280);
    cr_assert_eq(size_rp2_next_division(1280, 4), 1280);
    cr_assert_eq(size_rp2_next_division(1024, 4), 1024);
    cr_assert_eq(size_rp2_next_division(1025, 1), 1025);
    cr_assert_eq(size_rp2_next_division(5 * FL_MiB + 1, 4), 6 * FL_MiB);
    cr_assert_eq(size_rp2_next_division(5 * FL_MiB + 1, 2), 6 * FL_MiB);
    cr_assert_eq(size_rp2_next_division(5 * FL_MiB + 1, 8), 5 * FL_MiB + FL_MiB / 2);
}

Test(size, divisions_apply_only_above_512_per_division)
{
    struct config c = conf(4);
    /* 1200 <= 512 * 4: plain 512 B rounding */
    cr_assert_eq(size_round(1200, &c), 1536);
    cr_assert_eq(size_round(5 * FL_MiB + 1, &c), 6 * FL_MiB);
    cr_assert_eq(size_round(8 * FL_MiB, &c), 8 * FL_MiB);
}

Test(size, divisions_are_looked_up_per_power_of_two_interval)
{
    struct config c = conf(0);
    c.roundup_power2_divisions[22] = 2; /* [4 MiB, 8 MiB) */
    cr_assert_eq(size_round(5 * FL_MiB + 1, &c), 6 * FL_MiB);
    cr_assert_eq(size_round(9 * FL_MiB + 1, &c), 9 * FL_MiB + 512);
    cr_assert_eq(config_rp2_divisions(&c, 5 * FL_MiB), 2);
    cr_assert_eq(config_rp2_divisions(&c, 9 * FL_MiB), 0);
}

Test(size, pools_and_segment_sizes)
{
    cr_assert_eq(size_pool(512), POOL_SMALL);
    cr_assert_eq(size_pool(FL_MiB), POOL_SMALL);
    cr_assert_eq(size_pool(FL_MiB + 512), POOL_LARGE);
    cr_assert_eq(size_segment(512, SIZE_MAX), 2 * FL_MiB);
    cr_assert_eq(size_segment(FL_MiB, SIZE_MAX), 2 * FL_MiB);
    cr_assert_eq(size_segment(FL_MiB + 512, SIZE_MAX), 20 * FL_MiB);
    cr_assert_eq(size_segment(10 * FL_MiB - 512, SIZE_MAX), 20 * FL_MiB);
    cr_assert_eq(size_segment(10 * FL_MiB, SIZE_MAX), 10 * FL_MiB);
    cr_assert_eq(size_segment(33 * FL_MiB + 512, SIZE_MAX), 34 * FL_MiB);
    /* an oversize request's block is never split: its segment is its own size */
    cr_assert_eq(size_segment(5 * FL_MiB, 4 * FL_MiB), 6 * FL_MiB);
}

Test(size, max_split_size_rules)
{
    size_t ms = 8 * FL_MiB;
    cr_assert(size_block_fits(4 * FL_MiB, 2 * FL_MiB, ms));
    cr_assert(!size_block_fits(FL_MiB, 2 * FL_MiB, ms));
    /* oversize blocks do not serve ordinary requests */
    cr_assert(!size_block_fits(9 * FL_MiB, 2 * FL_MiB, ms));
    cr_assert(size_block_fits(9 * FL_MiB, 2 * FL_MiB, SIZE_MAX));
    /* oversize requests take oversize blocks within 20 MiB */
    cr_assert(size_block_fits(20 * FL_MiB, 10 * FL_MiB, ms));
    cr_assert(!size_block_fits(30 * FL_MiB, 10 * FL_MiB, ms));
    /* splitting: small pool keeps any 512 B rest, large only rests above 1 MiB and never
     * for oversize requests */
    cr_assert(size_should_split(2 * FL_MiB, 2 * FL_MiB - 512, POOL_SMALL, ms));
    cr_assert(!size_should_split(2 * FL_MiB, 2 * FL_MiB, POOL_SMALL, ms));
    cr_assert(!size_should_split(3 * FL_MiB, 2 * FL_MiB, POOL_LARGE, ms));
    cr_assert(size_should_split(4 * FL_MiB, 2 * FL_MiB, POOL_LARGE, ms));
    cr_assert(!size_should_split(40 * FL_MiB, 10 * FL_MiB, POOL_LARGE, ms));
}
