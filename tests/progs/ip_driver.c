/*
 * ip_driver.c — the driver API path: cuMemAlloc_v2/cuMemFree_v2 reach fragless in the
 * primary context, cuMemGetAddressRange and cuPointerGetAttribute answer with the block's
 * own base and size, and without a current context the driver's error comes back.
 */
#include "ip_prog.h"

int main(void)
{
    CUdevice dev = 0;
    CUcontext ctx = NULL;
    CUdeviceptr p = 0;
    CHECK(cuInit(0) == CUDA_SUCCESS, "cuInit");
    CHECK(cuMemAlloc(&p, 1 << 20) == CUDA_ERROR_INVALID_CONTEXT, "no context yet");
    CHECK(cuDeviceGet(&dev, 0) == CUDA_SUCCESS, "cuDeviceGet");
    CHECK(cuDevicePrimaryCtxRetain(&ctx, dev) == CUDA_SUCCESS, "retain");
    CHECK(cuCtxSetCurrent(ctx) == CUDA_SUCCESS, "set current");

    size_t free_b = 0, total_b = 0;
    CHECK(cuMemGetInfo(&free_b, &total_b) == CUDA_SUCCESS, "cuMemGetInfo");
    CHECK(total_b > 0 && free_b <= total_b, "free %zu total %zu", free_b, total_b);
    fragless_stats_t before = ip_stats0();
    const size_t n = (5 << 20) + 123;
    CHECK(cuMemAlloc(&p, n) == CUDA_SUCCESS, "cuMemAlloc");
    ip_touch_drv(p, n);
    CUdeviceptr base = 0;
    size_t size = 0;
    CHECK(cuMemGetAddressRange(&base, &size, p + 100) == CUDA_SUCCESS, "address range");
    CHECK(base == p && size == n, "range %#llx+%zu, want %#llx+%zu", (unsigned long long)base, size,
          (unsigned long long)p, n);
    CHECK(cuPointerGetAttribute(&base, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, p + 7) ==
              CUDA_SUCCESS,
          "range start");
    CHECK(base == p, "range start %#llx", (unsigned long long)base);
    CHECK(cuPointerGetAttribute(&size, CU_POINTER_ATTRIBUTE_RANGE_SIZE, p) == CUDA_SUCCESS,
          "range size");
    CHECK(size == n, "range size %zu", size);
    int ordinal = -1;
    CHECK(cuPointerGetAttribute(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, p) == CUDA_SUCCESS,
          "other attributes come from the driver");
    CHECK(ordinal == 0, "device ordinal %d", ordinal);
    CHECK(cuMemFree(p) == CUDA_SUCCESS, "cuMemFree");
    fragless_stats_t after = ip_stats0();
    ip_expect_served(&before, &after, 1, 1);
    CHECK(cuDevicePrimaryCtxRelease(dev) == CUDA_SUCCESS, "release");
    printf("ok driver\n");
    return 0;
}
