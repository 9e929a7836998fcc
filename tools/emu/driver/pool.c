/*
 * pool.c — stream-ordered allocation (cuMemAllocAsync/cuMemFreeAsync): one simple pool per
 * device. A free takes effect when its stream reaches it; until then the block stays usable
 * by work queued before it. A freed block is reused at once on the stream that freed it, on
 * other streams only once the free has taken effect. Like the default pool (release
 * threshold 0), free blocks go back to the device at the next synchronization.
 */
#include "emu.h"

static size_t round_up(size_t v, size_t a)
{
    return (v + a - 1) / a * a;
}

uint64_t emu_pool_advance(uint64_t now)
{
    struct emu_alloc *a, *tmp;
    uint64_t next = UINT64_MAX;

    HASH_ITER(hh, emu.allocs, a, tmp)
    {
        if (a->kind != EMU_ALLOC_ASYNC || a->state != EMU_ASYNC_FREEING)
            continue;
        if (a->free_at <= now) {
            a->state = EMU_ASYNC_POOLED;
            a->free_stream = NULL;
        } else if (a->free_at < next) {
            next = a->free_at;
        }
    }
    return next;
}

void emu_pool_trim(int device)
{
    struct emu_alloc *a, *tmp;

    emu_device_advance();
    HASH_ITER(hh, emu.allocs, a, tmp)
    {
        if (a->kind == EMU_ALLOC_ASYNC && a->state == EMU_ASYNC_POOLED && a->device == device) {
            HASH_DEL(emu.allocs, a);
            emu_alloc_unmap(a);
        }
    }
}

void emu_pool_teardown(struct emu_ctx *ctx)
{
    struct emu_alloc *a, *tmp;

    HASH_ITER(hh, emu.allocs, a, tmp)
    {
        if (a->kind == EMU_ALLOC_ASYNC && a->device == ctx->device) {
            HASH_DEL(emu.allocs, a);
            emu_alloc_unmap(a);
        }
    }
}

static struct emu_alloc *pool_find(int device, size_t charged, struct emu_stream *s)
{
    struct emu_alloc *a, *tmp;

    HASH_ITER(hh, emu.allocs, a, tmp)
    {
        if (a->kind != EMU_ALLOC_ASYNC || a->device != device || a->charged != charged)
            continue;
        if (a->state == EMU_ASYNC_POOLED || (a->state == EMU_ASYNC_FREEING && a->free_stream == s))
            return a;
    }
    return NULL;
}

static CUresult alloc_async(CUdeviceptr *dptr, size_t size, CUstream hs, bool ptds)
{
    CUresult r;
    struct emu_ctx *c = NULL;
    struct emu_stream *s = NULL;
    struct emu_alloc *a = NULL;

    emu_lock();
    r = emu_current(&c);
    if (r == CUDA_SUCCESS && (!dptr || size == 0))
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS)
        r = emu_stream_resolve(c, hs, ptds, &s);
    if (r == CUDA_SUCCESS && !(a = pool_find(c->device, round_up(size, EMU_ALLOC_ALIGN), s))) {
        r = emu_alloc_map(size, &a, c->device);
        if (r == CUDA_SUCCESS) {
            a->kind = EMU_ALLOC_ASYNC;
            HASH_ADD(hh, emu.allocs, base, sizeof a->base, a);
        }
    }
    if (r == CUDA_SUCCESS) {
        a->ctx = c;
        a->size = size;
        a->state = EMU_ASYNC_LIVE;
        a->free_stream = NULL;
        *dptr = a->base;
    }
    emu_unlock();
    emu_latency("cuMemAllocAsync", 0);
    return r;
}

EMU_API CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
{
    EMU_ENTER(cuMemAllocAsync);
    return alloc_async(dptr, bytesize, hStream, false);
}

EMU_API CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
{
    EMU_ENTER(cuMemAllocAsync_ptsz);
    return alloc_async(dptr, bytesize, hStream, true);
}

static CUresult free_async(CUdeviceptr dptr, CUstream hs, bool ptds)
{
    CUresult r;
    struct emu_ctx *c = NULL;
    struct emu_stream *s = NULL;
    struct emu_alloc *a = NULL;

    emu_lock();
    r = emu_current_stream(hs, ptds, &c, &s);
    if (r == CUDA_SUCCESS) {
        HASH_FIND(hh, emu.allocs, &dptr, sizeof dptr, a);
        if (!a || a->kind != EMU_ALLOC_ASYNC || a->state != EMU_ASYNC_LIVE)
            r = CUDA_ERROR_INVALID_VALUE;
    }
    if (r == CUDA_SUCCESS) {
        a->state = EMU_ASYNC_FREEING;
        a->free_stream = s;
        a->free_at = emu_stream_enqueue(s, 0);
        emu_device_note_due(a->free_at);
    }
    emu_unlock();
    emu_latency("cuMemFreeAsync", 0);
    return r;
}

EMU_API CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream)
{
    EMU_ENTER(cuMemFreeAsync);
    return free_async(dptr, hStream, false);
}

EMU_API CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream hStream)
{
    EMU_ENTER(cuMemFreeAsync_ptsz);
    return free_async(dptr, hStream, true);
}
