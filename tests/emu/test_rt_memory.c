/*
 * test_rt_memory.c — the emulated runtime's memory calls on the emulated device: cudaFree(NULL)
 * as the first call, cudaMalloc/cudaFree, copies and sets in every direction (synchronous, on
 * a stream, per-thread default stream forms), stream-ordered allocation, cudaMemGetInfo,
 * out-of-memory mapping with a small device, and cudaPointerGetAttributes.
 */
#include <criterion/criterion.h>
#include <cuda.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fragless_emu.h"
#include "testutil.h"

cudaError_t cudaMemcpy_ptds(void *, const void *, size_t, enum cudaMemcpyKind);
cudaError_t cudaMemset_ptds(void *, int, size_t);
cudaError_t cudaMemcpyAsync_ptsz(void *, const void *, size_t, enum cudaMemcpyKind, cudaStream_t);
cudaError_t cudaMemsetAsync_ptsz(void *, int, size_t, cudaStream_t);
cudaError_t cudaMallocAsync_ptsz(void **, size_t, cudaStream_t);
cudaError_t cudaFreeAsync_ptsz(void *, cudaStream_t);

#define MiB ((size_t)1 << 20)

Test(rt_memory, free_null_first_initializes_the_context)
{
    CUcontext ctx = NULL;
    cr_assert_eq(cudaFree(NULL), cudaSuccess);
    cr_assert_eq(cuCtxGetCurrent(&ctx), CUDA_SUCCESS);
    cr_assert_not_null(ctx, "cudaFree(NULL) must make the primary context current");
    CUcontext primary = NULL;
    cr_assert_eq(cuDevicePrimaryCtxRetain(&primary, 0), CUDA_SUCCESS);
    cr_assert_eq(ctx, primary);
    cr_assert_eq(cuDevicePrimaryCtxRelease(0), CUDA_SUCCESS);
}

Test(rt_memory, malloc_free_goes_through_the_driver)
{
    void *p = NULL;
    uint64_t allocs = fragless_emu_calls("cuMemAlloc_v2");
    uint64_t frees = fragless_emu_calls("cuMemFree_v2");
    cr_assert_eq(cudaMalloc(&p, 3 * MiB), cudaSuccess);
    cr_assert_not_null(p);
    cr_assert_eq(fragless_emu_calls("cuMemAlloc_v2"), allocs + 1);
    cr_assert_eq(cudaFree(p), cudaSuccess);
    cr_assert_eq(fragless_emu_calls("cuMemFree_v2"), frees + 1);
}

Test(rt_memory, malloc_zero_and_bad_arguments)
{
    void *p = (void *)1;
    cr_assert_eq(cudaMalloc(&p, 0), cudaSuccess);
    cr_assert_null(p);
    cr_assert_eq(cudaMalloc(NULL, 16), cudaErrorInvalidValue);
    cr_assert_eq(cudaGetLastError(), cudaErrorInvalidValue);
    int host;
    cr_assert_eq(cudaFree(&host), cudaErrorInvalidValue);
}

Test(rt_memory, double_free_is_invalid_value)
{
    void *p = NULL;
    cr_assert_eq(cudaMalloc(&p, MiB), cudaSuccess);
    cr_assert_eq(cudaFree(p), cudaSuccess);
    cr_assert_eq(cudaFree(p), cudaErrorInvalidValue);
}

static void fill_pattern(unsigned char *b, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        b[i] = (unsigned char)(i * 31u + seed);
}

Test(rt_memory, memcpy_round_trips_every_kind)
{
    const size_t n = MiB + 123;
    unsigned char *src = malloc(n), *back = malloc(n), *hcopy = malloc(n);
    fill_pattern(src, n, 7);
    void *a = NULL, *b = NULL;
    cr_assert_eq(cudaMalloc(&a, n), cudaSuccess);
    cr_assert_eq(cudaMalloc(&b, n), cudaSuccess);
    cr_assert_eq(cudaMemcpy(a, src, n, cudaMemcpyHostToDevice), cudaSuccess);
    cr_assert_eq(cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice), cudaSuccess);
    cr_assert_eq(cudaMemcpy(back, b, n, cudaMemcpyDeviceToHost), cudaSuccess);
    cr_assert_eq(memcmp(src, back, n), 0);
    memset(back, 0, n);
    cr_assert_eq(cudaMemcpy(back, a, n, cudaMemcpyDefault), cudaSuccess);
    cr_assert_eq(memcmp(src, back, n), 0);
    cr_assert_eq(cudaMemcpy(hcopy, src, n, cudaMemcpyHostToHost), cudaSuccess);
    cr_assert_eq(memcmp(src, hcopy, n), 0);
    cr_assert_eq(cudaFree(a), cudaSuccess);
    cr_assert_eq(cudaFree(b), cudaSuccess);
    free(src);
    free(back);
    free(hcopy);
}

Test(rt_memory, memcpy_bad_kind_and_zero_count)
{
    char h[8] = {0};
    void *d = NULL;
    cr_assert_eq(cudaMalloc(&d, 8), cudaSuccess);
    cr_assert_eq(cudaMemcpy(d, h, 8, (enum cudaMemcpyKind)9), cudaErrorInvalidMemcpyDirection);
    cr_assert_eq(cudaMemcpy(d, h, 0, cudaMemcpyHostToDevice), cudaSuccess);
    cr_assert_eq(cudaFree(d), cudaSuccess);
}

Test(rt_memory, memset_and_async_copies_on_a_stream)
{
    const size_t n = 64 * 1024;
    unsigned char *h = malloc(n);
    void *d = NULL;
    cudaStream_t s;
    cr_assert_eq(cudaStreamCreate(&s), cudaSuccess);
    cr_assert_eq(cudaMalloc(&d, n), cudaSuccess);
    cr_assert_eq(cudaMemset(d, 0xab, n), cudaSuccess);
    cr_assert_eq(cudaMemcpy(h, d, n, cudaMemcpyDeviceToHost), cudaSuccess);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(h[i], 0xab);
    cr_assert_eq(cudaMemsetAsync(d, 0x5c, n / 2, s), cudaSuccess);
    cr_assert_eq(cudaMemcpyAsync(h, d, n, cudaMemcpyDeviceToHost, s), cudaSuccess);
    cr_assert_eq(cudaStreamSynchronize(s), cudaSuccess);
    cr_assert_eq(h[0], 0x5c);
    cr_assert_eq(h[n / 2 - 1], 0x5c);
    cr_assert_eq(h[n / 2], 0xab);
    cr_assert_eq(cudaFree(d), cudaSuccess);
    cr_assert_eq(cudaStreamDestroy(s), cudaSuccess);
    free(h);
}

Test(rt_memory, per_thread_default_stream_forms)
{
    const size_t n = 4096;
    unsigned char h[4096], back[4096];
    fill_pattern(h, n, 3);
    void *d = NULL;
    cr_assert_eq(cudaMallocAsync_ptsz(&d, n, NULL), cudaSuccess);
    cr_assert_eq(cudaMemset_ptds(d, 1, n), cudaSuccess);
    cr_assert_eq(cudaMemcpy_ptds(d, h, n, cudaMemcpyHostToDevice), cudaSuccess);
    cr_assert_eq(cudaMemsetAsync_ptsz(d, 9, 16, NULL), cudaSuccess);
    cr_assert_eq(cudaMemcpyAsync_ptsz(back, d, n, cudaMemcpyDeviceToHost, NULL), cudaSuccess);
    cr_assert_eq(cudaStreamSynchronize(cudaStreamPerThread), cudaSuccess);
    cr_assert_eq(back[0], 9);
    cr_assert_eq(memcmp(back + 16, h + 16, n - 16), 0);
    cr_assert_eq(cudaFreeAsync_ptsz(d, NULL), cudaSuccess);
    cr_assert_eq(cudaStreamSynchronize(cudaStreamPerThread), cudaSuccess);
}

Test(rt_memory, malloc_async_and_free_async)
{
    cudaStream_t s;
    void *p = NULL;
    cr_assert_eq(cudaStreamCreate(&s), cudaSuccess);
    uint64_t before = fragless_emu_calls("cuMemAllocAsync");
    cr_assert_eq(cudaMallocAsync(&p, 2 * MiB, s), cudaSuccess);
    cr_assert_not_null(p);
    cr_assert_eq(fragless_emu_calls("cuMemAllocAsync"), before + 1);
    cr_assert_eq(cudaMemsetAsync(p, 0, 2 * MiB, s), cudaSuccess);
    cr_assert_eq(cudaFreeAsync(p, s), cudaSuccess);
    cr_assert_eq(cudaStreamSynchronize(s), cudaSuccess);
    cr_assert_eq(cudaMallocAsync(NULL, 16, s), cudaErrorInvalidValue);
    cr_assert_eq(cudaStreamDestroy(s), cudaSuccess);
}

Test(rt_memory, mem_get_info_follows_allocations)
{
    tu_emu_isolate();
    setenv("FRAGLESS_EMU_MEM", "256M", 1);
    size_t free0, total, free1;
    void *p = NULL;
    cr_assert_eq(cudaMemGetInfo(&free0, &total), cudaSuccess);
    cr_assert_eq(total, 256 * MiB);
    cr_assert_eq(cudaMalloc(&p, 64 * MiB), cudaSuccess);
    cr_assert_eq(cudaMemGetInfo(&free1, &total), cudaSuccess);
    cr_assert_geq(free0 - free1, 64 * MiB);
    cr_assert_eq(cudaFree(p), cudaSuccess);
    cr_assert_eq(cudaMemGetInfo(NULL, &total), cudaErrorInvalidValue);
}

Test(rt_memory, out_of_memory_maps_to_memory_allocation)
{
    tu_emu_isolate();
    setenv("FRAGLESS_EMU_MEM", "64M", 1);
    void *p = NULL, *q = (void *)1;
    cr_assert_eq(cudaMalloc(&p, 32 * MiB), cudaSuccess);
    cr_assert_eq(cudaMalloc(&q, 48 * MiB), cudaErrorMemoryAllocation);
    cr_assert_eq(cudaGetLastError(), cudaErrorMemoryAllocation);
    cr_assert_eq(cudaGetLastError(), cudaSuccess);
    cr_assert_eq(cudaFree(p), cudaSuccess);
    cr_assert_eq(cudaMalloc(&q, 48 * MiB), cudaSuccess);
    cr_assert_eq(cudaFree(q), cudaSuccess);
}

Test(rt_memory, pointer_attributes)
{
    void *d = NULL;
    int host = 0;
    struct cudaPointerAttributes a;
    cr_assert_eq(cudaMalloc(&d, MiB), cudaSuccess);
    cr_assert_eq(cudaPointerGetAttributes(&a, (char *)d + 100), cudaSuccess);
    cr_assert_eq(a.type, cudaMemoryTypeDevice);
    cr_assert_eq(a.device, 0);
    cr_assert_eq(a.devicePointer, (char *)d + 100);
    cr_assert_null(a.hostPointer);
    cr_assert_eq(cudaPointerGetAttributes(&a, &host), cudaSuccess);
    cr_assert_eq(a.type, cudaMemoryTypeUnregistered);
    cr_assert_null(a.devicePointer);
    cr_assert_eq(a.hostPointer, &host);
    cr_assert_eq(cudaPointerGetAttributes(NULL, d), cudaErrorInvalidValue);
    cr_assert_eq(cudaFree(d), cudaSuccess);
}

Test(rt_memory, failed_driver_allocation_leaves_nothing)
{
    tu_emu_isolate();
    void *p = (void *)1;
    cr_assert_eq(fragless_emu_fail("cuMemAlloc_v2@1"), 0);
    cr_assert_eq(cudaMalloc(&p, MiB), cudaErrorMemoryAllocation);
    cr_assert_eq(p, (void *)1, "a failed cudaMalloc must not write *devPtr");
    cr_assert_eq(fragless_emu_used(0), 0);
}

Test(rt_memory, ipc_forwards_to_the_driver_or_is_not_supported)
{
    void *d = NULL;
    cudaIpcMemHandle_t h;
    cr_assert_eq(cudaMalloc(&d, MiB), cudaSuccess);
    cudaError_t e = cudaIpcGetMemHandle(&h, d);
    if (!dlsym(RTLD_DEFAULT, "cuIpcGetMemHandle")) {
        void *p = NULL;
        cr_assert_eq(e, cudaErrorNotSupported);
        cr_assert_eq(cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess),
                     cudaErrorNotSupported);
        cr_assert_eq(cudaIpcCloseMemHandle(d), cudaErrorNotSupported);
    } else {
        cr_assert_eq(e, cudaSuccess);
        cr_assert_neq(cudaIpcCloseMemHandle(d), cudaSuccess, "d was not opened from a handle");
    }
    cr_assert_eq(cudaIpcGetMemHandle(NULL, d), cudaErrorInvalidValue);
    cr_assert_eq(cudaFree(d), cudaSuccess);
}
