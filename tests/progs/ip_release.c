/*
 * ip_release.c — a driver-API program whose last cuDevicePrimaryCtxRelease destroys the
 * primary context while fragless holds a stream pool with a recorded event: the pools go
 * (their blocks wait for a device sync) without fragless destroying the event the driver
 * already destroyed with the context (its handle may be another event's by then). Run with
 * FRAGLESS_EMU_MEM=12M so that a second stream's allocation needs the first's freed page and
 * records the first stream's event. Then the device is used again in a new primary context.
 */
#include "ip_prog.h"

typedef uint64_t (*emu_calls_fn)(const char *);

#define SIZE ((size_t)8 << 20)

int main(void)
{
    emu_calls_fn calls = (emu_calls_fn)dlsym(RTLD_DEFAULT, "fragless_emu_calls");
    if (!calls) {
        printf("ok release skipped: needs the emulated device's call counts\n");
        return 0;
    }
    CUdevice dev = 0;
    CUcontext ctx = NULL;
    CUstream s1 = NULL, s2 = NULL;
    CUdeviceptr a = 0, b = 0;
    CHECK(cuInit(0) == CUDA_SUCCESS && cuDeviceGet(&dev, 0) == CUDA_SUCCESS, "init");
    CHECK(cuDevicePrimaryCtxRetain(&ctx, dev) == CUDA_SUCCESS, "retain");
    CHECK(cuCtxSetCurrent(ctx) == CUDA_SUCCESS, "set current");
    CHECK(cuStreamCreate(&s1, CU_STREAM_NON_BLOCKING) == CUDA_SUCCESS &&
              cuStreamCreate(&s2, CU_STREAM_NON_BLOCKING) == CUDA_SUCCESS,
          "streams");
    CHECK(cuMemAllocAsync(&a, SIZE, s1) == CUDA_SUCCESS, "alloc on s1");
    CHECK(cuMemFreeAsync(a, s1) == CUDA_SUCCESS, "free on s1");
    uint64_t records = calls("cuEventRecord");
    CHECK(cuMemAllocAsync(&b, SIZE, s2) == CUDA_SUCCESS, "alloc on s2");
    CHECK(calls("cuEventRecord") > records, "s2's allocation did not wait on s1's event");
    CHECK(cuMemFreeAsync(b, s2) == CUDA_SUCCESS, "free on s2");
    CHECK(cuStreamSynchronize(s1) == CUDA_SUCCESS && cuStreamSynchronize(s2) == CUDA_SUCCESS,
          "sync");

    uint64_t destroys = calls("cuEventDestroy_v2");
    CHECK(cuDevicePrimaryCtxRelease(dev) == CUDA_SUCCESS, "release");
    unsigned int flags = 0;
    int active = 1;
    CHECK(cuDevicePrimaryCtxGetState(dev, &flags, &active) == CUDA_SUCCESS && !active,
          "the last release did not destroy the primary context");
    CHECK(calls("cuEventDestroy_v2") == destroys,
          "fragless destroyed %llu event(s) the context took with it",
          (unsigned long long)(calls("cuEventDestroy_v2") - destroys));

    /* the device works again in a new primary context, with the old blocks reusable */
    CHECK(cuDevicePrimaryCtxRetain(&ctx, dev) == CUDA_SUCCESS, "retain again");
    CHECK(cuCtxSetCurrent(ctx) == CUDA_SUCCESS, "set current");
    CUstream s3 = NULL;
    CHECK(cuStreamCreate(&s3, CU_STREAM_NON_BLOCKING) == CUDA_SUCCESS, "stream");
    CUdeviceptr c = 0;
    CHECK(cuMemAllocAsync(&c, SIZE, s3) == CUDA_SUCCESS, "alloc in the new context");
    CHECK(cuMemFreeAsync(c, s3) == CUDA_SUCCESS && cuStreamSynchronize(s3) == CUDA_SUCCESS,
          "free in the new context");
    CHECK(cuStreamDestroy(s3) == CUDA_SUCCESS, "destroy");
    printf("ok release\n");
    return 0;
}
