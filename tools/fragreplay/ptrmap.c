/*
 * ptrmap.c — the map from a trace's pointers to allocation ids.
 *
 * Open addressing with linear probing and backward-shift deletion (no tombstones), so a
 * trace that reuses addresses millions of times keeps short probe runs. Keys are never 0:
 * the parser refuses null pointers before they get here.
 */
#include "replay.h"

#include <stdlib.h>

static size_t slot_of(uint64_t key, size_t cap)
{
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;
    key ^= key >> 33;
    return (size_t)key & (cap - 1);
}

int ptrmap_init(struct ptrmap *m)
{
    m->cap = 1024;
    m->len = 0;
    m->keys = calloc(m->cap, sizeof *m->keys);
    m->vals = calloc(m->cap, sizeof *m->vals);
    if (!m->keys || !m->vals) {
        ptrmap_destroy(m);
        return -1;
    }
    return 0;
}

void ptrmap_destroy(struct ptrmap *m)
{
    free(m->keys);
    free(m->vals);
    m->keys = NULL;
    m->vals = NULL;
    m->cap = m->len = 0;
}

static void place(uint64_t *keys, uint32_t *vals, size_t cap, uint64_t key, uint32_t val)
{
    size_t i = slot_of(key, cap);
    while (keys[i])
        i = (i + 1) & (cap - 1);
    keys[i] = key;
    vals[i] = val;
}

static int grow(struct ptrmap *m)
{
    size_t cap = m->cap * 2;
    uint64_t *keys = calloc(cap, sizeof *keys);
    uint32_t *vals = calloc(cap, sizeof *vals);
    if (!keys || !vals) {
        free(keys);
        free(vals);
        return -1;
    }
    for (size_t i = 0; i < m->cap; i++) {
        if (m->keys[i])
            place(keys, vals, cap, m->keys[i], m->vals[i]);
    }
    free(m->keys);
    free(m->vals);
    m->keys = keys;
    m->vals = vals;
    m->cap = cap;
    return 0;
}

int ptrmap_put(struct ptrmap *m, uint64_t key, uint32_t val)
{
    if ((m->len + 1) * 2 > m->cap && grow(m) != 0)
        return -1;
    place(m->keys, m->vals, m->cap, key, val);
    m->len++;
    return 0;
}

static bool find(const struct ptrmap *m, uint64_t key, size_t *at)
{
    size_t i = slot_of(key, m->cap);
    while (m->keys[i]) {
        if (m->keys[i] == key) {
            *at = i;
            return true;
        }
        i = (i + 1) & (m->cap - 1);
    }
    return false;
}

bool ptrmap_get(const struct ptrmap *m, uint64_t key, uint32_t *val)
{
    size_t i;
    if (!find(m, key, &i))
        return false;
    *val = m->vals[i];
    return true;
}

/* Whether the entry at `j` (home `h`) may move back to the hole at `i`. */
static bool may_fill(size_t i, size_t j, size_t h)
{
    if (i <= j)
        return h <= i || h > j;
    return h <= i && h > j;
}

bool ptrmap_del(struct ptrmap *m, uint64_t key)
{
    size_t i;
    if (!find(m, key, &i))
        return false;
    size_t mask = m->cap - 1;
    for (size_t j = (i + 1) & mask; m->keys[j]; j = (j + 1) & mask) {
        if (may_fill(i, j, slot_of(m->keys[j], m->cap))) {
            m->keys[i] = m->keys[j];
            m->vals[i] = m->vals[j];
            i = j;
        }
    }
    m->keys[i] = 0;
    m->len--;
    return true;
}
