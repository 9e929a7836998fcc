/*
 * test_drv_api_basic.c — driver conformance, written only against the CUDA driver API
 * documentation (no fragless_emu_* calls), so the same binary can run against a real
 * libcuda.so.1: initialization, devices, primary contexts and the context stack, cuMemAlloc
 * and friends, pointer attributes, error names, streams and events without simulated work.
 */
#include <criterion/criterion.h>
#include <cuda.h>
#include <stdint.h>
#include <string.h>

#define CK(call) cr_assert_eq((call), CUDA_SUCCESS, "%s", #call)

static CUcontext ctx;

static void setup(void)
{
    CUdevice dev;
    CK(cuInit(0));
    CK(cuDeviceGet(&dev, 0));
    CK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CK(cuCtxSetCurrent(ctx));
}

static void teardown(void)
{
    cuCtxSetCurrent(NULL);
    cuDevicePrimaryCtxRelease(0);
}

Test(drv_api_init, before_init_calls_fail)
{
    int n = -1, v = 0;
    CUdeviceptr p;
    cr_expect_eq(cuDeviceGetCount(&n), CUDA_ERROR_NOT_INITIALIZED);
    cr_expect_eq(cuMemAlloc(&p, 4096), CUDA_ERROR_NOT_INITIALIZED);
    CK(cuDriverGetVersion(&v));
    cr_expect_geq(v, 13000);
    cr_expect_eq(cuInit(1), CUDA_ERROR_INVALID_VALUE);
}

Test(drv_api_init, devices)
{
    int n = 0, major = 0, vmm = -1, pools = -1;
    CUdevice dev;
    char name[256] = "";
    size_t total = 0;
    CUuuid uuid;

    CK(cuInit(0));
    CK(cuDeviceGetCount(&n));
    cr_assert_geq(n, 1);
    CK(cuDeviceGet(&dev, 0));
    cr_expect_eq(cuDeviceGet(&dev, n), CUDA_ERROR_INVALID_DEVICE);
    CK(cuDeviceGetName(name, sizeof name, 0));
    cr_expect_gt(strlen(name), 0);
    CK(cuDeviceTotalMem(&total, 0));
    cr_expect_gt(total, (size_t)1 << 30);
    CK(cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, 0));
    cr_expect_geq(major, 3);
    CK(cuDeviceGetAttribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, 0));
    cr_expect(vmm == 0 || vmm == 1);
    CK(cuDeviceGetAttribute(&pools, CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED, 0));
    cr_expect(pools == 0 || pools == 1);
    cr_expect_eq(cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_MAX, 0),
                 CUDA_ERROR_INVALID_VALUE);
    cr_expect_eq(cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_WARP_SIZE, n),
                 CUDA_ERROR_INVALID_DEVICE);
    CK(cuDeviceGetUuid(&uuid, 0));
}

Test(drv_api_init, context_stack)
{
    CUcontext c = NULL, got = (CUcontext)1, popped = NULL;
    CUdevice dev = -1;
    unsigned flags;
    int active = -1;
    CUdeviceptr p;

    CK(cuInit(0));
    CK(cuCtxGetCurrent(&got));
    cr_expect_null(got);
    cr_expect_eq(cuMemAlloc(&p, 4096), CUDA_ERROR_INVALID_CONTEXT);
    cr_expect_eq(cuCtxSynchronize(), CUDA_ERROR_INVALID_CONTEXT);
    cr_expect_eq(cuDevicePrimaryCtxRelease(0), CUDA_ERROR_INVALID_CONTEXT);
    CK(cuDevicePrimaryCtxGetState(0, &flags, &active));
    cr_expect_eq(active, 0);
    CK(cuDevicePrimaryCtxRetain(&c, 0));
    CK(cuDevicePrimaryCtxGetState(0, &flags, &active));
    cr_expect_eq(active, 1);
    CK(cuCtxPushCurrent(c));
    CK(cuCtxGetCurrent(&got));
    cr_expect_eq(got, c);
    CK(cuCtxGetDevice(&dev));
    cr_expect_eq(dev, 0);
    CK(cuCtxSynchronize());
    CK(cuCtxPopCurrent(&popped));
    cr_expect_eq(popped, c);
    cr_expect_eq(cuCtxPopCurrent(&popped), CUDA_ERROR_INVALID_CONTEXT);
    CK(cuCtxSetCurrent(c));
    CK(cuCtxSetCurrent(NULL));
    CK(cuCtxGetCurrent(&got));
    cr_expect_null(got);
    CK(cuDevicePrimaryCtxRelease(0));
}

Test(drv_api_mem, alloc_write_read_free, .init = setup, .fini = teardown)
{
    CUdeviceptr p = 0, base = 0;
    size_t size = 0, free_before, free_after, total;
    unsigned char in[4096], out[4096 + 64];

    CK(cuMemGetInfo(&free_before, &total));
    cr_expect_leq(free_before, total);
    CK(cuMemAlloc(&p, 3 << 20));
    cr_expect_eq(p % 256, 0, "alignment");
    CK(cuMemGetInfo(&free_after, &total));
    cr_expect_leq(free_after, free_before - (3 << 20));
    memset(in, 0x5a, sizeof in);
    CK(cuMemcpyHtoD(p + 100, in, sizeof in));
    CK(cuMemcpyDtoH(out, p + 100, sizeof out));
    cr_expect_eq(memcmp(in, out, sizeof in), 0);
    CK(cuMemsetD8(p, 0x11, 4096));
    CK(cuMemsetD32(p + 4096, 0x01020304u, 16));
    CK(cuMemcpyDtoH(out, p, 4096 + 64));
    cr_expect_eq(out[0], 0x11);
    cr_expect_eq(out[4095], 0x11);
    cr_expect_eq(out[4096], 0x04);
    CK(cuMemGetAddressRange(&base, &size, p + 12345));
    cr_expect_eq(base, p);
    cr_expect_eq(size, 3 << 20);
    CK(cuMemFree(p));
    cr_expect_eq(cuMemFree(p), CUDA_ERROR_INVALID_VALUE, "double free");
}

Test(drv_api_mem, bad_arguments, .init = setup, .fini = teardown)
{
    CUdeviceptr p;
    int local;
    cr_expect_eq(cuMemAlloc(&p, 0), CUDA_ERROR_INVALID_VALUE);
    cr_expect_eq(cuMemAlloc(NULL, 4096), CUDA_ERROR_INVALID_VALUE);
    cr_expect_eq(cuMemFree((CUdeviceptr)(uintptr_t)&local), CUDA_ERROR_INVALID_VALUE);
    cr_expect_eq(cuMemAlloc(&p, (size_t)1 << 62), CUDA_ERROR_OUT_OF_MEMORY);
    CK(cuMemAlloc(&p, 4096));
    cr_expect_eq(cuMemsetD32(p, 0, (size_t)1 << 62), CUDA_ERROR_INVALID_VALUE);
    cr_expect_eq(cuMemsetD32(p + 2, 0, 4), CUDA_ERROR_INVALID_VALUE, "misaligned");
    cr_expect_eq(cuMemcpyHtoD(p + 4000, &local, 4096), CUDA_ERROR_INVALID_VALUE, "past the end");
    CK(cuMemFree(p));
}

Test(drv_api_mem, pointer_attributes, .init = setup, .fini = teardown)
{
    CUdeviceptr p, start = 0;
    unsigned int type = 0;
    int ordinal = -1, local = 0;
    CUcontext c = NULL;
    size_t size = 0;

    CK(cuMemAlloc(&p, 1 << 20));
    CK(cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, p + 10));
    cr_expect_eq(type, CU_MEMORYTYPE_DEVICE);
    CK(cuPointerGetAttribute(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, p));
    cr_expect_eq(ordinal, 0);
    CK(cuPointerGetAttribute(&c, CU_POINTER_ATTRIBUTE_CONTEXT, p));
    cr_expect_eq(c, ctx);
    CK(cuPointerGetAttribute(&start, CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, p + 77));
    cr_expect_eq(start, p);
    CK(cuPointerGetAttribute(&size, CU_POINTER_ATTRIBUTE_RANGE_SIZE, p + 77));
    cr_expect_eq(size, 1 << 20);
    cr_expect_eq(cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
                                       (CUdeviceptr)(uintptr_t)&local),
                 CUDA_ERROR_INVALID_VALUE);
    CK(cuMemFree(p));
}

Test(drv_api_misc, error_names)
{
    const char *s = NULL;
    CK(cuGetErrorName(CUDA_ERROR_OUT_OF_MEMORY, &s));
    cr_expect_str_eq(s, "CUDA_ERROR_OUT_OF_MEMORY");
    CK(cuGetErrorString(CUDA_ERROR_INVALID_VALUE, &s));
    cr_expect_gt(strlen(s), 0);
    cr_expect_eq(cuGetErrorName((CUresult)123456, &s), CUDA_ERROR_INVALID_VALUE);
}

Test(drv_api_stream, streams_and_events, .init = setup, .fini = teardown)
{
    CUstream s, nb;
    CUevent a, b, notime;
    CUcontext c = NULL;
    unsigned flags = 7;
    float ms = -1;

    CK(cuStreamCreate(&s, CU_STREAM_DEFAULT));
    CK(cuStreamCreate(&nb, CU_STREAM_NON_BLOCKING));
    CK(cuStreamGetFlags(nb, &flags));
    cr_expect_eq(flags, CU_STREAM_NON_BLOCKING);
    CK(cuStreamGetCtx(s, &c));
    cr_expect_eq(c, ctx);
    CK(cuEventCreate(&a, CU_EVENT_DEFAULT));
    CK(cuEventCreate(&b, CU_EVENT_DEFAULT));
    CK(cuEventCreate(&notime, CU_EVENT_DISABLE_TIMING));
    CK(cuEventQuery(a)); /* never recorded: complete */
    CK(cuEventRecord(a, s));
    CK(cuEventRecord(b, s));
    CK(cuEventRecord(notime, s));
    CK(cuStreamWaitEvent(nb, b, 0));
    CK(cuStreamSynchronize(nb));
    CK(cuEventSynchronize(b));
    CK(cuEventQuery(b));
    CK(cuEventElapsedTime(&ms, a, b));
    cr_expect_geq(ms, 0);
    cr_expect_eq(cuEventElapsedTime(&ms, a, notime), CUDA_ERROR_INVALID_HANDLE);
    CK(cuStreamQuery(s));
    CK(cuStreamSynchronize(NULL));
    CK(cuStreamSynchronize(CU_STREAM_LEGACY));
    CK(cuStreamSynchronize(CU_STREAM_PER_THREAD));
    CK(cuEventDestroy(a));
    CK(cuEventDestroy(b));
    CK(cuEventDestroy(notime));
    CK(cuStreamDestroy(s));
    CK(cuStreamDestroy(nb));
}
