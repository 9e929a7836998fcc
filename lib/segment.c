/*
 * segment.c — where a heap's memory comes from.
 *
 * Owns: creating and destroying segments. A classic segment is one cuMemAlloc allocation,
 * released with cuMemFree (which itself waits for the device work that may still touch it).
 * The heap sees only struct segment and these calls; expandable (VMM) segments are the second
 * kind: a reserved range (expand.c creates them) whose mapped part grows and shrinks under the
 * blocks; destroying one unmaps and releases its pages and frees the range.
 */
#include <stdlib.h>

#include "internal.h"

CUresult segment_create(size_t size, enum heap_pool_kind pool, struct segment **out)
{
    struct segment *s = calloc(1, sizeof *s);
    if (!s)
        return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = drv_mem_alloc(&s->base, size);
    if (r != CUDA_SUCCESS)
        goto free_record;
    s->size = size;
    s->kind = SEGMENT_CLASSIC;
    s->pool = pool;
    *out = s;
    return CUDA_SUCCESS;

free_record:
    free(s);
    return r;
}

CUresult segment_destroy(struct segment *s)
{
    if (s->kind == SEGMENT_CLASSIC)
        return drv_mem_free(s->base);
    CUresult r = vrange_release(s->vr);
    if (r == CUDA_SUCCESS)
        s->vr = NULL;
    return r;
}

size_t segment_reserved(const struct segment *s)
{
    return s->kind == SEGMENT_CLASSIC ? s->size : vrange_mapped_bytes(s->vr);
}
