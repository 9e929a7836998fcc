/*
 * copy.c — cuMemcpy* and cuMemset* (plain, Async, and the per-thread-stream variants). A
 * copy or set waits until its stream's earlier simulated work has completed, then runs on
 * the host at once (an async call finishing early is allowed). Device ranges must be
 * allocated memory (CUDA_ERROR_INVALID_VALUE otherwise); touching memory that is mapped but
 * not accessible is a device fault, as on a GPU.
 */
#include <stdint.h>
#include <string.h>

#include "emu.h"

enum op_kind { OP_COPY, OP_SET8, OP_SET32 };

/* What one call does; a side whose pointer is on the device has *_dev set. `unified`
 * (cuMemcpy) lets either side be host memory. */
struct op {
    enum op_kind kind;
    CUdeviceptr dst, src;
    size_t n; /* bytes */
    uint32_t value;
    bool dst_dev, src_dev, unified;
};

static CUresult device_range(struct emu_ctx *c, CUdeviceptr p, size_t n, bool unified)
{
    if (emu_range_accessible(p, n, emu_now(), -1))
        return CUDA_SUCCESS;
    if (emu_range_known(p, n)) {
        emu_device_fault(c);
        return CUDA_ERROR_ILLEGAL_ADDRESS;
    }
    return unified ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

static void op_apply(const struct op *o)
{
    void *dst = (void *)(uintptr_t)o->dst;

    if (o->kind == OP_COPY) {
        memmove(dst, (const void *)(uintptr_t)o->src, o->n);
    } else if (o->kind == OP_SET8) {
        memset(dst, (int)o->value, o->n);
    } else {
        for (size_t i = 0; i < o->n / 4; i++)
            memcpy((char *)dst + 4 * i, &o->value, 4);
    }
}

static CUresult op_run(const struct op *o, CUstream h, bool ptds)
{
    CUresult r;
    struct emu_ctx *c = NULL;
    struct emu_stream *s = NULL;

    emu_lock();
    r = emu_current_stream(h, ptds, &c, &s);
    if (r == CUDA_SUCCESS && o->kind == OP_SET32 && o->dst % 4)
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS && s->capture_status == CU_STREAM_CAPTURE_STATUS_ACTIVE) {
        emu_unlock();
        return CUDA_SUCCESS; /* captured, not run */
    }
    if (r == CUDA_SUCCESS) {
        emu_wait_locked(emu_stream_order(s));
        r = c->sticky;
    }
    if (r == CUDA_SUCCESS && o->n && o->dst_dev)
        r = device_range(c, o->dst, o->n, o->unified);
    if (r == CUDA_SUCCESS && o->n && o->src_dev)
        r = device_range(c, o->src, o->n, o->unified);
    if (r == CUDA_SUCCESS && o->n)
        op_apply(o);
    emu_unlock();
    return r;
}

static CUresult copy(CUdeviceptr dst, bool dd, CUdeviceptr src, bool sd, size_t n, CUstream h,
                     bool ptds)
{
    struct op o = {.kind = OP_COPY, .dst = dst, .src = src, .n = n, .dst_dev = dd, .src_dev = sd};
    return op_run(&o, h, ptds);
}

static CUresult copy_unified(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream h, bool ptds)
{
    struct op o = {.kind = OP_COPY,
                   .dst = dst,
                   .src = src,
                   .n = n,
                   .dst_dev = true,
                   .src_dev = true,
                   .unified = true};
    return op_run(&o, h, ptds);
}

static CUresult set(CUdeviceptr dst, uint32_t value, size_t count, bool wide, CUstream h, bool ptds)
{
    struct op o = {.kind = wide ? OP_SET32 : OP_SET8,
                   .dst = dst,
                   .value = value,
                   .n = wide ? count * 4 : count,
                   .dst_dev = true};
    if (wide && count > SIZE_MAX / 4)
        return CUDA_ERROR_INVALID_VALUE;
    return op_run(&o, h, ptds);
}

#define HOST(p) ((CUdeviceptr)(uintptr_t)(p))

EMU_API CUresult cuMemcpy(CUdeviceptr dst, CUdeviceptr src, size_t n)
{
    EMU_ENTER(cuMemcpy);
    return copy_unified(dst, src, n, NULL, false);
}

EMU_API CUresult cuMemcpy_ptds(CUdeviceptr dst, CUdeviceptr src, size_t n)
{
    EMU_ENTER(cuMemcpy_ptds);
    return copy_unified(dst, src, n, NULL, true);
}

EMU_API CUresult cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream hStream)
{
    EMU_ENTER(cuMemcpyAsync);
    return copy_unified(dst, src, n, hStream, false);
}

EMU_API CUresult cuMemcpyAsync_ptsz(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream hStream)
{
    EMU_ENTER(cuMemcpyAsync_ptsz);
    return copy_unified(dst, src, n, hStream, true);
}

EMU_API CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t n)
{
    EMU_ENTER(cuMemcpyHtoD_v2);
    return copy(dst, true, HOST(src), false, n, NULL, false);
}

EMU_API CUresult cuMemcpyHtoD_v2_ptds(CUdeviceptr dst, const void *src, size_t n)
{
    EMU_ENTER(cuMemcpyHtoD_v2_ptds);
    return copy(dst, true, HOST(src), false, n, NULL, true);
}

EMU_API CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t n)
{
    EMU_ENTER(cuMemcpyDtoH_v2);
    return copy(HOST(dst), false, src, true, n, NULL, false);
}

EMU_API CUresult cuMemcpyDtoH_v2_ptds(void *dst, CUdeviceptr src, size_t n)
{
    EMU_ENTER(cuMemcpyDtoH_v2_ptds);
    return copy(HOST(dst), false, src, true, n, NULL, true);
}

EMU_API CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n)
{
    EMU_ENTER(cuMemcpyDtoD_v2);
    return copy(dst, true, src, true, n, NULL, false);
}

EMU_API CUresult cuMemcpyDtoD_v2_ptds(CUdeviceptr dst, CUdeviceptr src, size_t n)
{
    EMU_ENTER(cuMemcpyDtoD_v2_ptds);
    return copy(dst, true, src, true, n, NULL, true);
}

EMU_API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t n, CUstream s)
{
    EMU_ENTER(cuMemcpyHtoDAsync_v2);
    return copy(dst, true, HOST(src), false, n, s, false);
}

EMU_API CUresult cuMemcpyHtoDAsync_v2_ptsz(CUdeviceptr dst, const void *src, size_t n, CUstream s)
{
    EMU_ENTER(cuMemcpyHtoDAsync_v2_ptsz);
    return copy(dst, true, HOST(src), false, n, s, true);
}

EMU_API CUresult cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t n, CUstream s)
{
    EMU_ENTER(cuMemcpyDtoHAsync_v2);
    return copy(HOST(dst), false, src, true, n, s, false);
}

EMU_API CUresult cuMemcpyDtoHAsync_v2_ptsz(void *dst, CUdeviceptr src, size_t n, CUstream s)
{
    EMU_ENTER(cuMemcpyDtoHAsync_v2_ptsz);
    return copy(HOST(dst), false, src, true, n, s, true);
}

EMU_API CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s)
{
    EMU_ENTER(cuMemcpyDtoDAsync_v2);
    return copy(dst, true, src, true, n, s, false);
}

EMU_API CUresult cuMemcpyDtoDAsync_v2_ptsz(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s)
{
    EMU_ENTER(cuMemcpyDtoDAsync_v2_ptsz);
    return copy(dst, true, src, true, n, s, true);
}

EMU_API CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char uc, size_t n)
{
    EMU_ENTER(cuMemsetD8_v2);
    return set(dst, uc, n, false, NULL, false);
}

EMU_API CUresult cuMemsetD8_v2_ptds(CUdeviceptr dst, unsigned char uc, size_t n)
{
    EMU_ENTER(cuMemsetD8_v2_ptds);
    return set(dst, uc, n, false, NULL, true);
}

EMU_API CUresult cuMemsetD32_v2(CUdeviceptr dst, unsigned int ui, size_t n)
{
    EMU_ENTER(cuMemsetD32_v2);
    return set(dst, ui, n, true, NULL, false);
}

EMU_API CUresult cuMemsetD32_v2_ptds(CUdeviceptr dst, unsigned int ui, size_t n)
{
    EMU_ENTER(cuMemsetD32_v2_ptds);
    return set(dst, ui, n, true, NULL, true);
}

EMU_API CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char uc, size_t n, CUstream s)
{
    EMU_ENTER(cuMemsetD8Async);
    return set(dst, uc, n, false, s, false);
}

EMU_API CUresult cuMemsetD8Async_ptsz(CUdeviceptr dst, unsigned char uc, size_t n, CUstream s)
{
    EMU_ENTER(cuMemsetD8Async_ptsz);
    return set(dst, uc, n, false, s, true);
}

EMU_API CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned int ui, size_t n, CUstream s)
{
    EMU_ENTER(cuMemsetD32Async);
    return set(dst, ui, n, true, s, false);
}

EMU_API CUresult cuMemsetD32Async_ptsz(CUdeviceptr dst, unsigned int ui, size_t n, CUstream s)
{
    EMU_ENTER(cuMemsetD32Async_ptsz);
    return set(dst, ui, n, true, s, true);
}
