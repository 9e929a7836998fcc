/*
 * memory.c — device memory through the runtime: cudaMalloc/cudaFree (cudaFree(NULL) only
 * initializes), the stream-ordered cudaMallocAsync/cudaFreeAsync, cudaMemGetInfo, copies and
 * sets (synchronous and on a stream), and cudaPointerGetAttributes. Copies use the driver's
 * unified-addressing cuMemcpy, which takes host and device pointers alike.
 */
#include "rt.h"

#include <stdint.h>

RT_EXPORT cudaError_t cudaMalloc(void **devPtr, size_t size)
{
    if (!devPtr)
        return rt_ret(cudaErrorInvalidValue);
    cudaError_t e = rt_enter();
    if (e != cudaSuccess)
        return rt_ret(e);
    CUdeviceptr p = 0;
    if (size > 0) {
        CUresult r = rt_drv()->mem_alloc(&p, size);
        if (r != CUDA_SUCCESS)
            return rt_ret_drv(r);
    }
    *devPtr = (void *)(uintptr_t)p;
    return cudaSuccess;
}

RT_EXPORT cudaError_t cudaFree(void *devPtr)
{
    cudaError_t e = rt_enter();
    if (e != cudaSuccess || !devPtr)
        return rt_ret(e);
    return rt_ret_drv(rt_drv()->mem_free((CUdeviceptr)(uintptr_t)devPtr));
}

static cudaError_t malloc_async(enum rt_stream_mode mode, void **devPtr, size_t size,
                                cudaStream_t stream)
{
    const struct rt_driver *drv;
    if (!devPtr)
        return rt_ret(cudaErrorInvalidValue);
    cudaError_t e = rt_enter_mode(mode, &drv);
    if (e != cudaSuccess)
        return rt_ret(e);
    RT_NEED(drv, mem_alloc_async);
    CUdeviceptr p = 0;
    CUresult r = drv->mem_alloc_async(&p, size, (CUstream)stream);
    if (r != CUDA_SUCCESS)
        return rt_ret_drv(r);
    *devPtr = (void *)(uintptr_t)p;
    return cudaSuccess;
}

static cudaError_t free_async(enum rt_stream_mode mode, void *devPtr, cudaStream_t stream)
{
    const struct rt_driver *drv;
    cudaError_t e = rt_enter_mode(mode, &drv);
    if (e != cudaSuccess)
        return rt_ret(e);
    RT_NEED(drv, mem_free_async);
    return rt_ret_drv(drv->mem_free_async((CUdeviceptr)(uintptr_t)devPtr, (CUstream)stream));
}

RT_EXPORT cudaError_t cudaMallocAsync(void **devPtr, size_t size, cudaStream_t hStream)
{
    return malloc_async(RT_LEGACY, devPtr, size, hStream);
}

RT_EXPORT cudaError_t cudaMallocAsync_ptsz(void **devPtr, size_t size, cudaStream_t hStream)
{
    return malloc_async(RT_PER_THREAD, devPtr, size, hStream);
}

RT_EXPORT cudaError_t cudaFreeAsync(void *devPtr, cudaStream_t hStream)
{
    return free_async(RT_LEGACY, devPtr, hStream);
}

RT_EXPORT cudaError_t cudaFreeAsync_ptsz(void *devPtr, cudaStream_t hStream)
{
    return free_async(RT_PER_THREAD, devPtr, hStream);
}

RT_EXPORT cudaError_t cudaMemGetInfo(size_t *free, size_t *total)
{
    if (!free || !total)
        return rt_ret(cudaErrorInvalidValue);
    cudaError_t e = rt_enter();
    if (e != cudaSuccess)
        return rt_ret(e);
    return rt_ret_drv(rt_drv()->mem_get_info(free, total));
}

static bool valid_kind(enum cudaMemcpyKind kind)
{
    return kind >= cudaMemcpyHostToHost && kind <= cudaMemcpyDefault;
}

/* Shared by the four copy entry points; stream is ignored when !async. */
static cudaError_t copy(enum rt_stream_mode mode, bool async, void *dst, const void *src,
                        size_t count, enum cudaMemcpyKind kind, cudaStream_t stream)
{
    const struct rt_driver *drv;
    if (!valid_kind(kind))
        return rt_ret(cudaErrorInvalidMemcpyDirection);
    cudaError_t e = rt_enter_mode(mode, &drv);
    if (e != cudaSuccess || count == 0)
        return rt_ret(e);
    CUdeviceptr d = (CUdeviceptr)(uintptr_t)dst, s = (CUdeviceptr)(uintptr_t)src;
    CUresult r =
        async ? drv->memcpy_async(d, s, count, (CUstream)stream) : drv->memcpy(d, s, count);
    return rt_ret_drv(r);
}

RT_EXPORT cudaError_t cudaMemcpy(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind)
{
    return copy(RT_LEGACY, false, dst, src, count, kind, NULL);
}

RT_EXPORT cudaError_t cudaMemcpy_ptds(void *dst, const void *src, size_t count,
                                      enum cudaMemcpyKind kind)
{
    return copy(RT_PER_THREAD, false, dst, src, count, kind, NULL);
}

RT_EXPORT cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count,
                                      enum cudaMemcpyKind kind, cudaStream_t stream)
{
    return copy(RT_LEGACY, true, dst, src, count, kind, stream);
}

RT_EXPORT cudaError_t cudaMemcpyAsync_ptsz(void *dst, const void *src, size_t count,
                                           enum cudaMemcpyKind kind, cudaStream_t stream)
{
    return copy(RT_PER_THREAD, true, dst, src, count, kind, stream);
}

static cudaError_t set(enum rt_stream_mode mode, bool async, void *devPtr, int value, size_t count,
                       cudaStream_t stream)
{
    const struct rt_driver *drv;
    cudaError_t e = rt_enter_mode(mode, &drv);
    if (e != cudaSuccess || count == 0)
        return rt_ret(e);
    CUdeviceptr d = (CUdeviceptr)(uintptr_t)devPtr;
    unsigned char byte = (unsigned char)value;
    CUresult r = async ? drv->memset_d8_async(d, byte, count, (CUstream)stream)
                       : drv->memset_d8(d, byte, count);
    return rt_ret_drv(r);
}

RT_EXPORT cudaError_t cudaMemset(void *devPtr, int value, size_t count)
{
    return set(RT_LEGACY, false, devPtr, value, count, NULL);
}

RT_EXPORT cudaError_t cudaMemset_ptds(void *devPtr, int value, size_t count)
{
    return set(RT_PER_THREAD, false, devPtr, value, count, NULL);
}

RT_EXPORT cudaError_t cudaMemsetAsync(void *devPtr, int value, size_t count, cudaStream_t stream)
{
    return set(RT_LEGACY, true, devPtr, value, count, stream);
}

RT_EXPORT cudaError_t cudaMemsetAsync_ptsz(void *devPtr, int value, size_t count,
                                           cudaStream_t stream)
{
    return set(RT_PER_THREAD, true, devPtr, value, count, stream);
}

static CUresult pointer_attr(void *out, CUpointer_attribute attr, const void *ptr)
{
    return rt_drv()->pointer_get_attribute(out, attr, (CUdeviceptr)(uintptr_t)ptr);
}

/* A pointer the driver does not know is unregistered host memory (CUDA 11 and later). */
static void fill_unregistered(struct cudaPointerAttributes *a, const void *ptr)
{
    a->type = cudaMemoryTypeUnregistered;
    a->device = cudaInvalidDeviceId;
    a->devicePointer = NULL;
    a->hostPointer = (void *)ptr;
}

RT_EXPORT cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes *attributes,
                                               const void *ptr)
{
    if (!attributes)
        return rt_ret(cudaErrorInvalidValue);
    cudaError_t e = rt_enter();
    if (e != cudaSuccess)
        return rt_ret(e);
    RT_NEED(rt_drv(), pointer_get_attribute);
    struct cudaPointerAttributes a = {0};
    unsigned int type = 0;
    CUresult r = pointer_attr(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, ptr);
    if (r == CUDA_ERROR_INVALID_VALUE) {
        fill_unregistered(attributes, ptr);
        return cudaSuccess;
    }
    int ordinal = 0;
    CUdeviceptr dp = 0;
    void *hp = NULL;
    if (r == CUDA_SUCCESS)
        r = pointer_attr(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, ptr);
    if (r == CUDA_SUCCESS)
        r = pointer_attr(&dp, CU_POINTER_ATTRIBUTE_DEVICE_POINTER, ptr);
    if (r == CUDA_SUCCESS && type != CU_MEMORYTYPE_DEVICE)
        r = pointer_attr(&hp, CU_POINTER_ATTRIBUTE_HOST_POINTER, ptr);
    if (r != CUDA_SUCCESS)
        return rt_ret_drv(r);
    a.type = type == CU_MEMORYTYPE_DEVICE ? cudaMemoryTypeDevice : cudaMemoryTypeHost;
    a.device = ordinal;
    a.devicePointer = (void *)(uintptr_t)dp;
    a.hostPointer = hp;
    *attributes = a;
    return cudaSuccess;
}
