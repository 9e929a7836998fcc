/*
 * test_rt_faults.c — every driver call behind the emulated runtime failing, by the emulated
 * driver's fault injection: the runtime call returns the driver's error mapped to its
 * cudaError_t, writes no out-parameter, works again once the fault is gone, and leaves nothing
 * behind (leak audit clean). Initialization-time faults each get a fresh process.
 */
#include <criterion/criterion.h>
#include <cuda.h>
#include <cuda_runtime_api.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "fragless_emu.h"
#include "testutil.h"

#define MiB ((size_t)1 << 20)

/* The injected error: distinctive, and its runtime counterpart has the same value. */
#define INJECTED     "CUDA_ERROR_NOT_PERMITTED"
#define INJECTED_ERR cudaErrorNotPermitted

static cudaError_t call_malloc(void)
{
    void *p = (void *)1;
    cudaError_t e = cudaMalloc(&p, MiB);
    if (e == cudaSuccess)
        cudaFree(p);
    else
        cr_assert_eq(p, (void *)1);
    return e;
}

static cudaError_t call_free(void)
{
    void *p = NULL;
    cr_assert_eq(cudaMalloc(&p, MiB), cudaSuccess);
    cudaError_t e = cudaFree(p);
    if (e != cudaSuccess)
        cr_assert_eq(cudaFree(p), cudaSuccess, "a failed cudaFree keeps the allocation");
    return e;
}

static cudaError_t call_mem_get_info(void)
{
    size_t f, t;
    return cudaMemGetInfo(&f, &t);
}

/* Runs op on a fresh 1 MiB buffer and frees it. */
static cudaError_t with_buffer(cudaError_t (*op)(void *))
{
    void *p = NULL;
    cr_assert_eq(cudaMalloc(&p, MiB), cudaSuccess);
    cudaError_t e = op(p);
    cr_assert_eq(cudaFree(p), cudaSuccess);
    return e;
}

static cudaError_t op_memcpy(void *p)
{
    static char h[4096];
    return cudaMemcpy(p, h, sizeof h, cudaMemcpyHostToDevice);
}

static cudaError_t op_memcpy_async(void *p)
{
    static char h[4096];
    cudaError_t e = cudaMemcpyAsync(h, p, sizeof h, cudaMemcpyDeviceToHost, NULL);
    cr_assert_eq(cudaStreamSynchronize(NULL), cudaSuccess);
    return e;
}

static cudaError_t op_memset(void *p)
{
    return cudaMemset(p, 1, MiB);
}

static cudaError_t op_memset_async(void *p)
{
    cudaError_t e = cudaMemsetAsync(p, 1, MiB, NULL);
    cr_assert_eq(cudaStreamSynchronize(NULL), cudaSuccess);
    return e;
}

static cudaError_t op_pointer_attributes(void *p)
{
    struct cudaPointerAttributes a = {.type = cudaMemoryTypeManaged};
    cudaError_t e = cudaPointerGetAttributes(&a, p);
    if (e != cudaSuccess)
        cr_assert_eq(a.type, cudaMemoryTypeManaged, "failed call must leave *attributes");
    return e;
}

static cudaError_t call_memcpy(void)
{
    return with_buffer(op_memcpy);
}

static cudaError_t call_memcpy_async(void)
{
    return with_buffer(op_memcpy_async);
}

static cudaError_t call_memset(void)
{
    return with_buffer(op_memset);
}

static cudaError_t call_memset_async(void)
{
    return with_buffer(op_memset_async);
}

static cudaError_t call_pointer_attributes(void)
{
    return with_buffer(op_pointer_attributes);
}

static cudaError_t call_malloc_async(void)
{
    void *p = (void *)1;
    cudaError_t e = cudaMallocAsync(&p, MiB, NULL);
    if (e == cudaSuccess)
        cr_assert_eq(cudaFreeAsync(p, NULL), cudaSuccess);
    else
        cr_assert_eq(p, (void *)1);
    cr_assert_eq(cudaStreamSynchronize(NULL), cudaSuccess);
    return e;
}

static cudaError_t call_free_async(void)
{
    void *p = NULL;
    cr_assert_eq(cudaMallocAsync(&p, MiB, NULL), cudaSuccess);
    cudaError_t e = cudaFreeAsync(p, NULL);
    if (e != cudaSuccess)
        cr_assert_eq(cudaFreeAsync(p, NULL), cudaSuccess);
    cr_assert_eq(cudaStreamSynchronize(NULL), cudaSuccess);
    return e;
}

static cudaError_t call_stream_create(void)
{
    cudaStream_t s = (cudaStream_t)1;
    cudaError_t e = cudaStreamCreate(&s);
    if (e == cudaSuccess)
        cr_assert_eq(cudaStreamDestroy(s), cudaSuccess);
    else
        cr_assert_eq(s, (cudaStream_t)1);
    return e;
}

/* Runs op on a fresh non-blocking stream and destroys it. */
static cudaError_t with_stream(cudaError_t (*op)(cudaStream_t))
{
    cudaStream_t s;
    cr_assert_eq(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
    cudaError_t e = op(s);
    cr_assert_eq(cudaStreamDestroy(s), cudaSuccess);
    return e;
}

static cudaError_t op_stream_sync(cudaStream_t s)
{
    return cudaStreamSynchronize(s);
}

static cudaError_t op_stream_query(cudaStream_t s)
{
    return cudaStreamQuery(s);
}

static cudaError_t op_stream_wait_event(cudaStream_t s)
{
    cudaEvent_t ev;
    cr_assert_eq(cudaEventCreate(&ev), cudaSuccess);
    cr_assert_eq(cudaEventRecord(ev, NULL), cudaSuccess);
    cudaError_t e = cudaStreamWaitEvent(s, ev, 0);
    cr_assert_eq(cudaEventDestroy(ev), cudaSuccess);
    return e;
}

static cudaError_t op_capture(cudaStream_t s)
{
    cudaGraph_t g = NULL;
    enum cudaStreamCaptureStatus st;
    cudaError_t e = cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed);
    if (e != cudaSuccess)
        return e;
    e = cudaStreamIsCapturing(s, &st);
    cudaError_t end = cudaStreamEndCapture(s, &g);
    if (end != cudaSuccess) {
        cr_assert_eq(cudaStreamEndCapture(s, &g), cudaSuccess);
        e = e != cudaSuccess ? e : end;
    }
    cudaError_t destroy = cudaGraphDestroy(g);
    if (destroy != cudaSuccess) {
        cr_assert_eq(cudaGraphDestroy(g), cudaSuccess);
        e = e != cudaSuccess ? e : destroy;
    }
    return e;
}

static cudaError_t call_stream_destroy(void)
{
    cudaStream_t s;
    cr_assert_eq(cudaStreamCreate(&s), cudaSuccess);
    cudaError_t e = cudaStreamDestroy(s);
    if (e != cudaSuccess)
        cr_assert_eq(cudaStreamDestroy(s), cudaSuccess, "a failed destroy keeps the stream");
    return e;
}

static cudaError_t call_stream_sync(void)
{
    return with_stream(op_stream_sync);
}

static cudaError_t call_stream_query(void)
{
    return with_stream(op_stream_query);
}

static cudaError_t call_stream_wait_event(void)
{
    return with_stream(op_stream_wait_event);
}

static cudaError_t call_capture(void)
{
    return with_stream(op_capture);
}

/* Creates two events, records both on the default stream, runs op, destroys them. */
static cudaError_t with_events(cudaError_t (*op)(cudaEvent_t, cudaEvent_t))
{
    cudaEvent_t a, b;
    cr_assert_eq(cudaEventCreate(&a), cudaSuccess);
    cr_assert_eq(cudaEventCreate(&b), cudaSuccess);
    cudaError_t e = op(a, b);
    cr_assert_eq(cudaEventDestroy(a), cudaSuccess);
    cr_assert_eq(cudaEventDestroy(b), cudaSuccess);
    return e;
}

static cudaError_t op_event_record(cudaEvent_t a, cudaEvent_t b)
{
    (void)b;
    return cudaEventRecord(a, NULL);
}

static cudaError_t op_event_query(cudaEvent_t a, cudaEvent_t b)
{
    (void)b;
    return cudaEventQuery(a);
}

static cudaError_t op_event_sync(cudaEvent_t a, cudaEvent_t b)
{
    (void)b;
    return cudaEventSynchronize(a);
}

static cudaError_t op_event_elapsed(cudaEvent_t a, cudaEvent_t b)
{
    float ms = -1;
    cr_assert_eq(cudaEventRecord(a, NULL), cudaSuccess);
    cr_assert_eq(cudaEventRecord(b, NULL), cudaSuccess);
    cr_assert_eq(cudaEventSynchronize(b), cudaSuccess);
    cudaError_t e = cudaEventElapsedTime(&ms, a, b);
    if (e != cudaSuccess)
        cr_assert_eq(ms, -1.0f);
    return e;
}

static cudaError_t call_event_create(void)
{
    cudaEvent_t ev = (cudaEvent_t)1;
    cudaError_t e = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
    if (e == cudaSuccess)
        cr_assert_eq(cudaEventDestroy(ev), cudaSuccess);
    else
        cr_assert_eq(ev, (cudaEvent_t)1);
    return e;
}

static cudaError_t call_event_record(void)
{
    return with_events(op_event_record);
}

static cudaError_t call_event_query(void)
{
    return with_events(op_event_query);
}

static cudaError_t call_event_sync(void)
{
    return with_events(op_event_sync);
}

static cudaError_t call_event_destroy(void)
{
    cudaEvent_t ev;
    cr_assert_eq(cudaEventCreate(&ev), cudaSuccess);
    cudaError_t e = cudaEventDestroy(ev);
    if (e != cudaSuccess)
        cr_assert_eq(cudaEventDestroy(ev), cudaSuccess, "a failed destroy keeps the event");
    return e;
}

static cudaError_t call_event_elapsed(void)
{
    return with_events(op_event_elapsed);
}

static cudaError_t call_device_sync(void)
{
    return cudaDeviceSynchronize();
}

static cudaError_t call_device_reset(void)
{
    return cudaDeviceReset();
}

static cudaError_t call_attribute(void)
{
    int v = -7;
    cudaError_t e = cudaDeviceGetAttribute(&v, cudaDevAttrWarpSize, 0);
    if (e != cudaSuccess)
        cr_assert_eq(v, -7);
    return e;
}

static cudaError_t call_properties(void)
{
    struct cudaDeviceProp p;
    p.major = -7;
    cudaError_t e = cudaGetDeviceProperties(&p, 0);
    if (e != cudaSuccess)
        cr_assert_eq(p.major, -7, "a failed call leaves *prop");
    return e;
}

static cudaError_t call_can_access_peer(void)
{
    int can = -7;
    return cudaDeviceCanAccessPeer(&can, 0, 1);
}

/* Enables device 0's access to device 1 and turns it off again. */
static cudaError_t call_enable_peer(void)
{
    cudaError_t e = cudaDeviceEnablePeerAccess(1, 0);
    if (e != cudaSuccess)
        return e;
    CUcontext peer;
    cr_assert_eq(cuDevicePrimaryCtxRetain(&peer, 1), CUDA_SUCCESS);
    cr_assert_eq(cuCtxDisablePeerAccess(peer), CUDA_SUCCESS);
    cr_assert_eq(cuDevicePrimaryCtxRelease(1), CUDA_SUCCESS);
    return e;
}

static cudaError_t call_driver_version(void)
{
    int v;
    return cudaDriverGetVersion(&v);
}

struct fault_case {
    const char *function; /* driver entry point, as exported */
    cudaError_t (*call)(void);
};

static const struct fault_case cases[] = {
    {"cuMemAlloc_v2", call_malloc},
    {"cuMemFree_v2", call_free},
    {"cuCtxGetCurrent", call_malloc},
    {"cuMemGetInfo_v2", call_mem_get_info},
    {"cuMemcpy", call_memcpy},
    {"cuMemcpyAsync", call_memcpy_async},
    {"cuMemsetD8_v2", call_memset},
    {"cuMemsetD8Async", call_memset_async},
    {"cuPointerGetAttribute", call_pointer_attributes},
    {"cuMemAllocAsync", call_malloc_async},
    {"cuMemFreeAsync", call_free_async},
    {"cuStreamCreateWithPriority", call_stream_create},
    {"cuStreamDestroy_v2", call_stream_destroy},
    {"cuStreamSynchronize", call_stream_sync},
    {"cuStreamQuery", call_stream_query},
    {"cuStreamWaitEvent", call_stream_wait_event},
    {"cuStreamBeginCapture_v2", call_capture},
    {"cuStreamIsCapturing", call_capture},
    {"cuStreamEndCapture", call_capture},
    {"cuGraphDestroy", call_capture},
    {"cuEventCreate", call_event_create},
    {"cuEventRecord", call_event_record},
    {"cuEventQuery", call_event_query},
    {"cuEventSynchronize", call_event_sync},
    {"cuEventDestroy_v2", call_event_destroy},
    {"cuEventElapsedTime_v2", call_event_elapsed},
    {"cuCtxSynchronize", call_device_sync},
    {"cuDevicePrimaryCtxReset_v2", call_device_reset},
    {"cuDeviceGetAttribute", call_attribute},
    {"cuDeviceGetName", call_properties},
    {"cuDeviceTotalMem_v2", call_properties},
    {"cuDeviceGetUuid_v2", call_properties},
    {"cuDeviceCanAccessPeer", call_can_access_peer},
    {"cuCtxEnablePeerAccess", call_enable_peer},
    {"cuDriverGetVersion", call_driver_version},
};

static int leaks(void)
{
    int fd = open("/dev/null", O_WRONLY);
    cr_assert_geq(fd, 0);
    int n = fragless_emu_audit(fd);
    close(fd);
    return n;
}

Test(rt_faults, every_driver_failure_reaches_the_caller)
{
    tu_emu_isolate();
    setenv("FRAGLESS_EMU_DEVICES", "2", 1);
    cr_assert_eq(cudaFree(NULL), cudaSuccess);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct fault_case *c = &cases[i];
        char spec[128];
        snprintf(spec, sizeof spec, "%s@1=" INJECTED, c->function);
        uint64_t before = fragless_emu_calls(c->function);
        cr_assert_eq(fragless_emu_fail(spec), 0, "%s", spec);
        cudaError_t e = c->call();
        cr_assert_gt(fragless_emu_calls(c->function), before, "%s was not called", c->function);
        cr_assert_eq(e, INJECTED_ERR, "%s failing: got %s", c->function, cudaGetErrorName(e));
        cr_assert_eq(cudaGetLastError(), INJECTED_ERR, "%s", c->function);
        cr_assert_eq(fragless_emu_fail(NULL), 0);
        e = c->call();
        cr_assert_eq(e, cudaSuccess, "%s again: %s", c->function, cudaGetErrorName(e));
        cr_assert_eq(leaks(), 0, "after %s", c->function);
    }
}

/* A fault while the runtime starts: the first call fails with the driver's error. */
static void fails_at_start(const char *function, bool recovers)
{
    char spec[128];
    snprintf(spec, sizeof spec, "%s@1=" INJECTED, function);
    cr_assert_eq(fragless_emu_fail(spec), 0);
    cr_assert_eq(cudaFree(NULL), INJECTED_ERR, "%s failing", function);
    cr_assert_eq(cudaFree(NULL), recovers ? cudaSuccess : INJECTED_ERR, "%s fixed", function);
}

Test(rt_faults, driver_version_at_start_is_final)
{
    fails_at_start("cuDriverGetVersion", false);
}

Test(rt_faults, device_count_at_start)
{
    fails_at_start("cuDeviceGetCount", true);
}

Test(rt_faults, primary_context_retain_at_start)
{
    fails_at_start("cuDevicePrimaryCtxRetain", true);
    cr_assert_eq(fragless_emu_calls("cuDevicePrimaryCtxRetain"), 2);
}

Test(rt_faults, set_current_at_start)
{
    fails_at_start("cuCtxSetCurrent", true);
}

Test(rt_faults, device_get_at_start)
{
    fails_at_start("cuDeviceGet", true);
}

Test(rt_faults, per_thread_table_lookup_failure_is_final)
{
    cudaError_t cudaStreamQuery_ptsz(cudaStream_t);
    cr_assert_eq(cudaFree(NULL), cudaSuccess);
    cr_assert_eq(fragless_emu_fail("cuGetProcAddress_v2@1=" INJECTED), 0);
    cr_assert_eq(cudaStreamQuery_ptsz(NULL), INJECTED_ERR);
    cr_assert_eq(cudaStreamQuery_ptsz(NULL), INJECTED_ERR);
    cr_assert_eq(cudaStreamQuery(NULL), cudaSuccess, "the legacy table is unaffected");
}
