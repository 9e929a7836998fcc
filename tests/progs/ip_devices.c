/*
 * ip_devices.c — stream-ordered calls use the stream's device, not the thread's current one
 * (run with FRAGLESS_EMU_DEVICES=2): with device 0 current, cudaMallocAsync, cuMemAllocAsync
 * and the per-thread forms on a stream of device 1 allocate on device 1 (the pointer's device
 * ordinal and fragless's per-device statistics say so), frees on that stream are counted on
 * device 1, the caller's current context is unchanged afterwards, and the default streams
 * still follow the current device.
 */
#include "ip_prog.h"

typedef cudaError_t (*malloc_async_fn)(void **, size_t, cudaStream_t);
typedef cudaError_t (*free_async_fn)(void *, cudaStream_t);

static int device_of(CUdeviceptr p)
{
    int ordinal = -1;
    CHECK(cuPointerGetAttribute(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, p) == CUDA_SUCCESS,
          "device ordinal of %#llx", (unsigned long long)p);
    return ordinal;
}

/* Device 0 is the runtime's current device and its primary context the current context. */
static void expect_device0_current(CUcontext ctx0)
{
    int dev = -1;
    CUcontext cur = NULL;
    CHECK(cudaGetDevice(&dev) == cudaSuccess && dev == 0, "current device %d", dev);
    CHECK(cuCtxGetCurrent(&cur) == CUDA_SUCCESS && cur == ctx0, "current context changed");
}

static void on_other_device(cudaStream_t s1, CUcontext ctx0)
{
    const size_t n = 1 << 20;
    malloc_async_fn malloc_ptsz = (malloc_async_fn)dlsym(RTLD_DEFAULT, "cudaMallocAsync_ptsz");
    free_async_fn free_ptsz = (free_async_fn)dlsym(RTLD_DEFAULT, "cudaFreeAsync_ptsz");
    CHECK(malloc_ptsz && free_ptsz, "the _ptsz forms are exported");
    fragless_stats_t before0 = ip_stats_of(0), before1 = ip_stats_of(1);
    void *a = NULL, *b = NULL;
    CUdeviceptr c = 0;
    CHECK(cudaMallocAsync(&a, n, s1) == cudaSuccess, "cudaMallocAsync on device 1's stream");
    expect_device0_current(ctx0);
    CHECK(malloc_ptsz(&b, n, s1) == cudaSuccess, "cudaMallocAsync_ptsz");
    CHECK(cuMemAllocAsync(&c, n, (CUstream)s1) == CUDA_SUCCESS, "cuMemAllocAsync");
    expect_device0_current(ctx0);
    CHECK(device_of((CUdeviceptr)(uintptr_t)a) == 1, "cudaMallocAsync: device 1");
    CHECK(device_of((CUdeviceptr)(uintptr_t)b) == 1, "cudaMallocAsync_ptsz: device 1");
    CHECK(device_of(c) == 1, "cuMemAllocAsync: device 1");
    CHECK(cudaStreamSynchronize(s1) == cudaSuccess, "sync");
    ip_touch_drv(c, n);
    CHECK(cudaFreeAsync(a, s1) == cudaSuccess, "cudaFreeAsync");
    CHECK(free_ptsz(b, s1) == cudaSuccess, "cudaFreeAsync_ptsz");
    CHECK(cuMemFreeAsync(c, (CUstream)s1) == CUDA_SUCCESS, "cuMemFreeAsync");
    expect_device0_current(ctx0);
    CHECK(cudaStreamSynchronize(s1) == cudaSuccess, "sync");
    fragless_stats_t after0 = ip_stats_of(0), after1 = ip_stats_of(1);
    ip_expect_served(&before1, &after1, 3, 3);
    ip_expect_served(&before0, &after0, 0, 0);
}

static void on_default_streams(CUcontext ctx0)
{
    fragless_stats_t before = ip_stats_of(0);
    void *a = NULL;
    CUdeviceptr c = 0;
    CHECK(cudaMallocAsync(&a, 4096, NULL) == cudaSuccess, "legacy default stream");
    CHECK(cuMemAllocAsync(&c, 4096, CU_STREAM_PER_THREAD) == CUDA_SUCCESS, "per-thread stream");
    CHECK(device_of((CUdeviceptr)(uintptr_t)a) == 0 && device_of(c) == 0, "device 0");
    CHECK(cudaFreeAsync(a, NULL) == cudaSuccess, "free");
    CHECK(cuMemFreeAsync(c, CU_STREAM_PER_THREAD) == CUDA_SUCCESS, "free");
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "sync");
    expect_device0_current(ctx0);
    fragless_stats_t after = ip_stats_of(0);
    ip_expect_served(&before, &after, 2, 2);
}

int main(void)
{
    int count = 0;
    CHECK(cudaGetDeviceCount(&count) == cudaSuccess, "device count");
    if (count < 2) {
        printf("ok devices skipped: needs two devices, has %d\n", count);
        return 0;
    }
    cudaStream_t s1 = NULL;
    CHECK(cudaSetDevice(1) == cudaSuccess, "device 1");
    CHECK(cudaStreamCreate(&s1) == cudaSuccess, "stream on device 1");
    CHECK(cudaSetDevice(0) == cudaSuccess, "device 0");
    CHECK(cudaFree(NULL) == cudaSuccess, "device 0's context");
    CUcontext ctx0 = NULL;
    CHECK(cuCtxGetCurrent(&ctx0) == CUDA_SUCCESS && ctx0, "device 0's context");
    on_other_device(s1, ctx0);
    on_default_streams(ctx0);
    CHECK(cudaSetDevice(1) == cudaSuccess && cudaStreamDestroy(s1) == cudaSuccess, "destroy");
    printf("ok devices\n");
    return 0;
}
