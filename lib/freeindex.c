/*
 * freeindex.c — the index of free blocks: segregated fit with two-level bitmaps (as TLSF).
 *
 * Owns: classes of block sizes (exact below 16 KiB, then 32 classes per power of two, each
 * about 3 % wide), one unsorted list per class, a bitmap of non-empty classes per power of two
 * and one of non-empty powers. Finding a fit is a few bit operations plus a bounded look at one
 * list; no operation ever scans all free blocks. Knows nothing of streams or heaps.
 */
#include <string.h>

#include "internal.h"

/* Blocks of the request's own class looked at for the closest fit before taking a larger
 * class (whose every block fits). */
#define FI_SCAN_LIMIT 8

struct fi_class {
    unsigned fl, sl;
};

static unsigned log2_floor(uint64_t v)
{
    return 63u - (unsigned)__builtin_clzll(v);
}

/* Class of a size (a multiple of SIZE_MIN_BLOCK). */
static struct fi_class class_of(size_t size)
{
    uint64_t u = size / SIZE_MIN_BLOCK;
    struct fi_class c = {0, (unsigned)u};
    if (u >= FI_SL) {
        unsigned lg = log2_floor(u);
        c.fl = lg - FI_SL_LOG2 + 1;
        c.sl = (unsigned)(u >> (lg - FI_SL_LOG2)) & (FI_SL - 1);
    }
    if (c.fl >= FI_FL) {
        c.fl = FI_FL - 1;
        c.sl = FI_SL - 1;
    }
    return c;
}

void fi_init(struct freeindex *fi)
{
    memset(fi, 0, sizeof *fi);
}

void fi_insert(struct freeindex *fi, struct block *b)
{
    struct fi_class c = class_of(b->size);
    b->fi_fl = (uint16_t)c.fl;
    b->fi_sl = (uint16_t)c.sl;
    struct block **head = &fi->heads[c.fl][c.sl];
    b->lprev = NULL;
    b->lnext = *head;
    if (*head)
        (*head)->lprev = b;
    *head = b;
    fi->sl_bitmap[c.fl] |= 1u << c.sl;
    fi->fl_bitmap |= (uint64_t)1 << c.fl;
    b->index = fi;
    fi->bytes += b->size;
    fi->count++;
}

void fi_remove(struct freeindex *fi, struct block *b)
{
    struct fi_class c = {b->fi_fl, b->fi_sl};
    if (b->lprev)
        b->lprev->lnext = b->lnext;
    else
        fi->heads[c.fl][c.sl] = b->lnext;
    if (b->lnext)
        b->lnext->lprev = b->lprev;
    if (!fi->heads[c.fl][c.sl]) {
        fi->sl_bitmap[c.fl] &= ~(1u << c.sl);
        if (!fi->sl_bitmap[c.fl])
            fi->fl_bitmap &= ~((uint64_t)1 << c.fl);
    }
    b->lprev = b->lnext = NULL;
    b->index = NULL;
    fi->bytes -= b->size;
    fi->count--;
}

/* b moves from the class it was filed under to its own. Kept out of line: fi_resize's common
 * case (same class) stays a few instructions. */
static __attribute__((noinline)) void reclass(struct freeindex *fi, struct block *b,
                                              size_t old_size)
{
    size_t size = b->size;
    b->size = old_size;
    fi_remove(fi, b);
    b->size = size;
    fi_insert(fi, b);
}

void fi_resize(struct freeindex *fi, struct block *b, size_t old_size)
{
    struct fi_class now = class_of(b->size);
    if (FL_LIKELY(now.fl == b->fi_fl && now.sl == b->fi_sl))
        fi->bytes += b->size - old_size;
    else
        reclass(fi, b, old_size);
}

/* The smallest block of at least `size` among the first FI_SCAN_LIMIT of a list. */
static struct block *closest_in(struct block *b, size_t size)
{
    struct block *best = NULL;
    for (int n = 0; b && n < FI_SCAN_LIMIT; b = b->lnext, n++)
        if (b->size >= size && (!best || b->size < best->size))
            best = b;
    return best;
}

/* First non-empty class strictly above c, or fl == FI_FL if none. */
static struct fi_class next_class(const struct freeindex *fi, struct fi_class c)
{
    uint32_t sl = c.sl + 1 < FI_SL ? fi->sl_bitmap[c.fl] & (~0u << (c.sl + 1)) : 0;
    if (sl)
        return (struct fi_class){c.fl, (unsigned)__builtin_ctz(sl)};
    uint64_t fl = c.fl + 1 < 64 ? fi->fl_bitmap & (~(uint64_t)0 << (c.fl + 1)) : 0;
    if (!fl)
        return (struct fi_class){FI_FL, 0};
    unsigned f = (unsigned)__builtin_ctzll(fl);
    return (struct fi_class){f, (unsigned)__builtin_ctz(fi->sl_bitmap[f])};
}

struct block *fi_best_fit(const struct freeindex *fi, size_t size)
{
    struct fi_class c = class_of(size);
    struct block *b = closest_in(fi->heads[c.fl][c.sl], size);
    if (b)
        return b;
    c = next_class(fi, c);
    if (c.fl >= FI_FL)
        return NULL;
    /* every block of a higher class fits; take the closest of the first few */
    return closest_in(fi->heads[c.fl][c.sl], size);
}

struct block *fi_fit_cheapest(const struct freeindex *fi, size_t size,
                              size_t (*cost)(const struct block *b, size_t size), unsigned limit)
{
    struct block *best = NULL;
    size_t best_cost = SIZE_MAX;
    unsigned seen = 0;
    for (struct fi_class c = class_of(size); c.fl < FI_FL && seen < limit; c = next_class(fi, c))
        for (struct block *b = fi->heads[c.fl][c.sl]; b && seen < limit; b = b->lnext, seen++) {
            size_t k = b->size >= size ? cost(b, size) : SIZE_MAX;
            if (k < best_cost) {
                best = b;
                best_cost = k;
            }
            if (best_cost == 0)
                return best;
        }
    return best;
}

size_t fi_largest(const struct freeindex *fi)
{
    if (!fi->fl_bitmap)
        return 0;
    unsigned f = log2_floor(fi->fl_bitmap);
    unsigned s = log2_floor(fi->sl_bitmap[f]);
    size_t best = 0;
    for (const struct block *b = fi->heads[f][s]; b; b = b->lnext)
        if (b->size > best)
            best = b->size;
    return best;
}

void fi_take_upto(struct freeindex *fi, uint64_t seq, struct block **out)
{
    uint64_t fls = fi->fl_bitmap;
    while (fls) {
        unsigned f = (unsigned)__builtin_ctzll(fls);
        fls &= fls - 1;
        uint32_t sls = fi->sl_bitmap[f];
        while (sls) {
            unsigned s = (unsigned)__builtin_ctz(sls);
            sls &= sls - 1;
            struct block *b = fi->heads[f][s];
            while (b) {
                struct block *next = b->lnext;
                if (b->free_seq <= seq) {
                    fi_remove(fi, b);
                    b->lnext = *out;
                    *out = b;
                }
                b = next;
            }
        }
    }
}

static bool class_is_valid(const struct freeindex *fi, unsigned f, unsigned s, size_t *bytes,
                           size_t *count)
{
    const struct block *prev = NULL;
    bool bit = fi->sl_bitmap[f] & (1u << s);
    if (bit != (fi->heads[f][s] != NULL))
        return false;
    for (const struct block *b = fi->heads[f][s]; b; prev = b, b = b->lnext) {
        struct fi_class c = class_of(b->size);
        if (b->lprev != prev || b->index != fi || b->state != BLOCK_FREE || c.fl != f ||
            c.sl != s || b->fi_fl != f || b->fi_sl != s)
            return false;
        *bytes += b->size;
        (*count)++;
    }
    return true;
}

bool fi_is_valid(const struct freeindex *fi)
{
    size_t bytes = 0, count = 0;
    for (unsigned f = 0; f < FI_FL; f++) {
        if (((fi->fl_bitmap >> f) & 1) != (fi->sl_bitmap[f] != 0))
            return false;
        for (unsigned s = 0; s < FI_SL; s++)
            if (!class_is_valid(fi, f, s, &bytes, &count))
                return false;
    }
    return bytes == fi->bytes && count == fi->count;
}
