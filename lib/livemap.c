/*
 * livemap.c — a heap's map of live blocks, keyed by address: what heap_free and pointer
 * queries use to find the block a program hands back.
 *
 * An open-addressing table (linear probing, backward-shift deletion: no tombstones) of block
 * pointers. Inserts and removals never allocate: the table grows only when the heap makes a
 * new block record (livemap_reserve, from block_new), to at least twice the records there are,
 * and live blocks are at most all records, so the table is never more than half full. It never
 * shrinks (block records are never freed either). Called with the heap's lock.
 */
#include <stdlib.h>

#include "internal.h"

#define LIVEMAP_MIN_SLOTS 64

/* Block addresses are multiples of 512: the low bits carry nothing. */
static size_t slot_of(const struct livemap *m, CUdeviceptr ptr)
{
    return (size_t)(((uint64_t)(ptr >> 9) * 0x9E3779B97F4A7C15ull) >> m->shift);
}

static void put(struct livemap *m, struct block *b)
{
    size_t i = slot_of(m, b->ptr);
    while (m->slots[i])
        i = (i + 1) & m->mask;
    m->slots[i] = b;
}

bool livemap_reserve(struct livemap *m, size_t records, int64_t *grown_bytes)
{
    *grown_bytes = 0;
    if (records * 2 <= m->mask + 1 && m->slots)
        return true;
    size_t n = m->slots ? (m->mask + 1) * 2 : LIVEMAP_MIN_SLOTS;
    while (n < records * 2)
        n *= 2;
    struct block **slots = calloc(n, sizeof *slots);
    if (!slots)
        return false;
    struct livemap old = *m;
    m->slots = slots;
    m->mask = n - 1;
    m->shift = (unsigned)__builtin_clzll((unsigned long long)n) + 1;
    for (size_t i = 0; old.slots && i <= old.mask; i++)
        if (old.slots[i])
            put(m, old.slots[i]);
    free(old.slots);
    *grown_bytes = (int64_t)((n - (old.slots ? old.mask + 1 : 0)) * sizeof *slots);
    return true;
}

void livemap_insert(struct livemap *m, struct block *b)
{
    put(m, b);
    m->count++;
}

struct block *livemap_find(const struct livemap *m, CUdeviceptr ptr)
{
    if (!m->slots)
        return NULL;
    for (size_t i = slot_of(m, ptr);; i = (i + 1) & m->mask) {
        struct block *b = m->slots[i];
        if (!b || b->ptr == ptr)
            return b;
    }
}

/* Whether slot j's entry, whose home is `home`, may move back into the hole at i: true unless
 * its home lies cyclically in (i, j]. */
static bool may_fill(size_t i, size_t j, size_t home)
{
    return i <= j ? home <= i || home > j : home <= i && home > j;
}

void livemap_remove(struct livemap *m, struct block *b)
{
    size_t i = slot_of(m, b->ptr);
    while (m->slots[i] != b)
        i = (i + 1) & m->mask;
    for (size_t j = (i + 1) & m->mask; m->slots[j]; j = (j + 1) & m->mask) {
        if (may_fill(i, j, slot_of(m, m->slots[j]->ptr))) {
            m->slots[i] = m->slots[j];
            i = j;
        }
    }
    m->slots[i] = NULL;
    m->count--;
}
