/*
 * size.c — the heap's size policy.
 *
 * Owns: how a request is rounded (512 B blocks, roundup_power2_divisions as PyTorch defines
 * it), which pool serves it (small: up to 1 MiB, packed into 2 MiB segments; large: the
 * rest), how big a new segment is, and the max_split_size_mb rules for using and splitting
 * free blocks. Pure functions of their arguments; unit-tested in tests/unit/test_size.c.
 */
#include "internal.h"

/* Requests above this cannot be represented (no device has 2^56 bytes). */
#define SIZE_MAX_REQUEST ((size_t)1 << 56)

static unsigned log2_floor(size_t v)
{
    return 63u - (unsigned)__builtin_clzll((unsigned long long)v);
}

static bool is_pow2(size_t v)
{
    return v && !(v & (v - 1));
}

size_t size_rp2_next_division(size_t size, size_t divisions)
{
    if (is_pow2(size) || divisions < 2)
        return size;
    size_t floor2 = (size_t)1 << log2_floor(size);
    size_t step = floor2 >> log2_floor(divisions);
    if (step == 0)
        return floor2 << 1;
    size_t down = size & ~(step - 1);
    return down == size ? size : down + step;
}

size_t size_round(size_t size, const struct config *c)
{
    if (size > SIZE_MAX_REQUEST)
        return 0;
    if (size < SIZE_MIN_BLOCK)
        return SIZE_MIN_BLOCK;
    uint32_t div = c ? config_rp2_divisions(c, size) : 0;
    if (div > 1 && size > SIZE_MIN_BLOCK * div)
        return size_rp2_next_division(size, div);
    return (size + SIZE_MIN_BLOCK - 1) & ~(SIZE_MIN_BLOCK - 1);
}

enum heap_pool_kind size_pool(size_t rounded)
{
    return rounded <= SIZE_SMALL_MAX ? POOL_SMALL : POOL_LARGE;
}

size_t size_segment(size_t rounded, size_t max_split)
{
    if (rounded <= SIZE_SMALL_MAX)
        return SIZE_SMALL_SEGMENT;
    /* Oversize blocks are never split: their segment holds them alone. */
    if (rounded < SIZE_MIN_LARGE_ALLOC && rounded < max_split)
        return SIZE_LARGE_SEGMENT;
    return (rounded + SIZE_SEGMENT_ROUND - 1) & ~(SIZE_SEGMENT_ROUND - 1);
}

bool size_block_fits(size_t block_size, size_t rounded, size_t max_split)
{
    if (block_size < rounded)
        return false;
    /* Oversize blocks (>= max_split_size) never serve ordinary requests ... */
    if (rounded < max_split && block_size >= max_split)
        return false;
    /* ... and oversize requests only take blocks not much larger than they are. */
    if (rounded >= max_split && block_size - rounded >= SIZE_LARGE_BUFFER)
        return false;
    return true;
}

bool size_should_split(size_t block_size, size_t rounded, enum heap_pool_kind pool,
                       size_t max_split)
{
    size_t rest = block_size - rounded;
    if (pool == POOL_SMALL)
        return rest >= SIZE_MIN_BLOCK;
    return rounded < max_split && rest > SIZE_SMALL_MAX;
}
