/*
 * bench_emu.c — what one call of the driver's cheap entry points costs (median ns per call),
 * straight against libcuda.so.1 (no fragless): the context and device queries an allocator
 * makes on every request, the capture and event queries, and one ordinary entry point
 * (cuCtxGetStreamPriorityRange, which passes the emulator's full gate) for comparison.
 * Meant for the emulated device (build/emu), where it shows the emulator's own cost per call;
 * it runs unchanged on a GPU.
 *
 *   LD_LIBRARY_PATH=build/emu build/bench/bench_emu
 */
#include <cuda.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "benchutil.h"

#define CALLS 20000
#define REPS  15

static CUstream stream;
static CUevent event;
static CUdeviceptr dptr;

static void check(CUresult r, const char *what)
{
    if (r != CUDA_SUCCESS) {
        fprintf(stderr, "bench_emu: %s failed (%d)\n", what, (int)r);
        exit(1);
    }
}

static CUresult call_ctx_get_current(void)
{
    CUcontext c;
    return cuCtxGetCurrent(&c);
}

static CUresult call_ctx_get_device(void)
{
    CUdevice d;
    return cuCtxGetDevice(&d);
}

static CUresult call_ctx_set_current(void)
{
    CUcontext c;
    CUresult r = cuCtxGetCurrent(&c);
    return r == CUDA_SUCCESS ? cuCtxSetCurrent(c) : r;
}

static CUresult call_driver_version(void)
{
    int v;
    return cuDriverGetVersion(&v);
}

static CUresult call_device_attribute(void)
{
    int v;
    return cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0);
}

static CUresult call_is_capturing(void)
{
    CUstreamCaptureStatus st;
    return cuStreamIsCapturing(stream, &st);
}

static CUresult call_event_query(void)
{
    return cuEventQuery(event);
}

static CUresult call_pointer_attribute(void)
{
    CUcontext c;
    return cuPointerGetAttribute(&c, CU_POINTER_ATTRIBUTE_CONTEXT, dptr);
}

static CUresult call_priority_range(void)
{
    int lo, hi;
    return cuCtxGetStreamPriorityRange(&lo, &hi);
}

struct row {
    const char *label;
    CUresult (*call)(void);
    int calls; /* driver calls per call of `call` */
};

static const struct row rows[] = {
    {"cuCtxGetCurrent", call_ctx_get_current, 1},
    {"cuCtxGetDevice", call_ctx_get_device, 1},
    {"cuCtxGetCurrent+cuCtxSetCurrent", call_ctx_set_current, 2},
    {"cuDriverGetVersion", call_driver_version, 1},
    {"cuDeviceGetAttribute", call_device_attribute, 1},
    {"cuStreamIsCapturing (created stream)", call_is_capturing, 1},
    {"cuEventQuery (recorded, complete)", call_event_query, 1},
    {"cuPointerGetAttribute (CONTEXT)", call_pointer_attribute, 1},
    {"cuCtxGetStreamPriorityRange (full gate)", call_priority_range, 1},
};

/* One pass of CALLS calls: ns per call. */
static double pass(const struct row *r)
{
    uint64_t t0 = bench_clock_ns(CLOCK_MONOTONIC);
    for (int i = 0; i < CALLS; i++)
        check(r->call(), r->label);
    return (double)(bench_clock_ns(CLOCK_MONOTONIC) - t0) / CALLS;
}

int main(void)
{
    CUcontext ctx;
    CUdevice dev;

    check(cuInit(0), "cuInit");
    check(cuDeviceGet(&dev, 0), "cuDeviceGet");
    check(cuDevicePrimaryCtxRetain(&ctx, dev), "cuDevicePrimaryCtxRetain");
    check(cuCtxSetCurrent(ctx), "cuCtxSetCurrent");
    check(cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
    check(cuEventCreate(&event, CU_EVENT_DISABLE_TIMING), "cuEventCreate");
    check(cuEventRecord(event, stream), "cuEventRecord");
    check(cuStreamSynchronize(stream), "cuStreamSynchronize");
    check(cuMemAlloc(&dptr, 4096), "cuMemAlloc");
    printf("bench_emu: median ns per call, %d calls x %d passes\n", CALLS, REPS);
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        double v[REPS];
        pass(&rows[i]);
        for (int r = 0; r < REPS; r++)
            v[r] = pass(&rows[i]);
        printf("%-44s %6.0f ns (%d driver call%s)\n", rows[i].label, bench_median(v, REPS),
               rows[i].calls, rows[i].calls > 1 ? "s" : "");
    }
    check(cuMemFree(dptr), "cuMemFree");
    check(cuEventDestroy(event), "cuEventDestroy");
    check(cuStreamDestroy(stream), "cuStreamDestroy");
    check(cuDevicePrimaryCtxRelease(dev), "cuDevicePrimaryCtxRelease");
    return 0;
}
