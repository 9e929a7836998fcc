/*
 * test_drv_emu_time.c — the simulated time model with the emulator's test API: work queued
 * on streams keeps queries NOT_READY until it completes, the legacy default stream orders
 * with blocking streams only, events and cuStreamWaitEvent order work, fill kernels write
 * when their work completes, and a fill that lands on unmapped or freed memory is a device
 * fault that makes the context unusable until reset.
 */
#include <criterion/criterion.h>
#include <cuda.h>
#include <pthread.h>
#include <string.h>

#include "fragless_emu.h"
#include "testutil.h"

#define CK(call) cr_assert_eq((call), CUDA_SUCCESS, "%s", #call)

/* Long enough that "right after queueing" is always before completion. */
#define WORK_US 300000

static void setup(void)
{
    CUcontext ctx;
    tu_emu_isolate();
    CK(cuInit(0));
    CK(cuDevicePrimaryCtxRetain(&ctx, 0));
    CK(cuCtxSetCurrent(ctx));
}

TestSuite(drv_emu_time, .init = setup);

/* A cuMemAlloc'ed MiB, zeroed; its host view. */
static unsigned char *zeroed_mib(CUdeviceptr *p)
{
    CK(cuMemAlloc(p, 1 << 20));
    return memset((void *)(uintptr_t)*p, 0, 1 << 20);
}

/* Checks that zeroed_mib's MiB at p holds `byte` at both ends, then frees it. */
static void expect_filled_then_free(CUdeviceptr p, unsigned char byte, const char *what)
{
    const unsigned char *host = (const unsigned char *)(uintptr_t)p;
    cr_expect_eq(host[0], byte, "%s", what);
    cr_expect_eq(host[(1 << 20) - 1], byte, "%s", what);
    CK(cuMemFree(p));
    cr_expect_eq(fragless_emu_faults(), 0);
}

Test(drv_emu_time, work_completes_at_its_time)
{
    CUstream s;
    CUevent a, b;
    float ms = 0;

    CK(cuStreamCreate(&s, CU_STREAM_DEFAULT));
    CK(cuEventCreate(&a, 0));
    CK(cuEventCreate(&b, 0));
    CK(cuEventRecord(a, s));
    CK(fragless_emu_stream_work(s, WORK_US));
    CK(cuEventRecord(b, s));
    cr_expect_eq(cuStreamQuery(s), CUDA_ERROR_NOT_READY);
    cr_expect_eq(cuEventQuery(b), CUDA_ERROR_NOT_READY);
    cr_expect_eq(cuEventElapsedTime(&ms, a, b), CUDA_ERROR_NOT_READY);
    CK(cuStreamSynchronize(s));
    CK(cuStreamQuery(s));
    CK(cuEventQuery(b));
    CK(cuEventElapsedTime(&ms, a, b));
    cr_expect_geq(ms, WORK_US / 1000.0f - 0.01f);
}

Test(drv_emu_time, legacy_stream_orders_with_blocking_streams_only)
{
    CUstream blocking, nonblocking;
    CUevent on_legacy, on_nb;

    CK(cuStreamCreate(&blocking, CU_STREAM_DEFAULT));
    CK(cuStreamCreate(&nonblocking, CU_STREAM_NON_BLOCKING));
    CK(cuEventCreate(&on_legacy, CU_EVENT_DISABLE_TIMING));
    CK(cuEventCreate(&on_nb, CU_EVENT_DISABLE_TIMING));
    CK(fragless_emu_stream_work(blocking, WORK_US));
    CK(cuEventRecord(on_legacy, NULL));
    CK(cuEventRecord(on_nb, nonblocking));
    cr_expect_eq(cuEventQuery(on_legacy), CUDA_ERROR_NOT_READY, "legacy waits for blocking");
    CK(cuEventQuery(on_nb));
    CK(cuStreamSynchronize(NULL));
    CK(cuStreamQuery(blocking));

    /* and a blocking stream waits for the legacy stream's work */
    CK(fragless_emu_stream_work(CU_STREAM_LEGACY, WORK_US));
    CK(cuEventRecord(on_nb, blocking));
    cr_expect_eq(cuEventQuery(on_nb), CUDA_ERROR_NOT_READY);
    CK(cuCtxSynchronize());
    CK(cuEventQuery(on_nb));
}

Test(drv_emu_time, stream_wait_event_orders)
{
    CUstream s1, s2;
    CUevent done, after;

    CK(cuStreamCreate(&s1, CU_STREAM_NON_BLOCKING));
    CK(cuStreamCreate(&s2, CU_STREAM_NON_BLOCKING));
    CK(cuEventCreate(&done, 0));
    CK(cuEventCreate(&after, 0));
    CK(fragless_emu_stream_work(s1, WORK_US));
    CK(cuEventRecord(done, s1));
    CK(cuStreamWaitEvent(s2, done, 0));
    CK(cuEventRecord(after, s2));
    cr_expect_eq(cuEventQuery(after), CUDA_ERROR_NOT_READY);
    cr_expect_eq(cuStreamQuery(s2), CUDA_ERROR_NOT_READY);
    CK(cuEventSynchronize(after));
    CK(cuStreamQuery(s1));
}

Test(drv_emu_time, fill_writes_when_its_work_completes)
{
    CUstream s;
    CUdeviceptr p;
    unsigned char *host;
    unsigned char out[64];

    CK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    host = zeroed_mib(&p);
    CK(fragless_emu_stream_fill(s, p, 0x77, 1 << 20, WORK_US));
    cr_expect_eq(host[0], 0, "not yet written");
    CK(cuMemcpyDtoHAsync(out, p, sizeof out, s)); /* ordered after the fill */
    cr_expect_eq(out[0], 0x77);
    expect_filled_then_free(p, 0x77, "the copy waited for the fill");
}

Test(drv_emu_time, mem_free_waits_for_the_device)
{
    CUstream s;
    CUdeviceptr p;

    CK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CK(cuMemAlloc(&p, 1 << 20));
    CK(fragless_emu_stream_fill(s, p, 1, 1 << 20, WORK_US));
    CK(cuMemFree(p)); /* waits, so the fill lands before the memory goes */
    CK(cuCtxSynchronize());
    cr_expect_eq(fragless_emu_faults(), 0);
}

/* Catches a context sync that forgets work queued on a stream destroyed since (the stream
 * leaves the list the sync point reads; its work still runs on a GPU). */
Test(drv_emu_time, ctx_sync_waits_for_a_destroyed_streams_work)
{
    CUstream s, again;
    CUdeviceptr p;
    unsigned char *host;

    CK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    host = zeroed_mib(&p);
    CK(fragless_emu_stream_fill(s, p, 0x5a, 1 << 20, WORK_US));
    CK(cuStreamDestroy(s)); /* returns at once; the fill still runs */
    cr_expect_eq(host[0], 0, "not yet written");
    CK(cuStreamCreate(&again, CU_STREAM_NON_BLOCKING)); /* may take s's handle: no matter */
    CK(cuStreamDestroy(again));
    CK(cuCtxSynchronize());
    expect_filled_then_free(p, 0x5a, "the sync returned before the destroyed stream's fill");
}

/* Catches the legacy stream not ordering after a destroyed blocking stream's work. */
Test(drv_emu_time, legacy_stream_waits_for_a_destroyed_blocking_streams_work)
{
    CUstream blocking;
    CUevent on_legacy;
    CUdeviceptr p;

    CK(cuStreamCreate(&blocking, CU_STREAM_DEFAULT));
    CK(cuEventCreate(&on_legacy, CU_EVENT_DISABLE_TIMING));
    zeroed_mib(&p);
    CK(fragless_emu_stream_fill(blocking, p, 0x6b, 1 << 20, WORK_US));
    CK(cuStreamDestroy(blocking));
    CK(cuEventRecord(on_legacy, CU_STREAM_LEGACY));
    cr_expect_eq(cuEventQuery(on_legacy), CUDA_ERROR_NOT_READY, "legacy waits for it");
    CK(cuStreamSynchronize(CU_STREAM_LEGACY));
    CK(cuEventDestroy(on_legacy));
    expect_filled_then_free(p, 0x6b, "the legacy stream did not wait for the fill");
}

Test(drv_emu_time, fill_after_unmap_faults_and_sticks)
{
    CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = 0}};
    CUmemAccessDesc rw = {.location = prop.location, .flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    size_t g = 2 << 20;
    CUdeviceptr va, p;
    CUmemGenericAllocationHandle h;
    CUstream s;

    CK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CK(cuMemAddressReserve(&va, g, 0, 0, 0));
    CK(cuMemCreate(&h, g, &prop, 0));
    CK(cuMemMap(va, g, 0, h, 0));
    CK(cuMemSetAccess(va, g, &rw, 1));
    CK(fragless_emu_stream_fill(s, va, 9, g, WORK_US));
    CK(cuMemUnmap(va, g)); /* does not wait for the kernel: the bug we want to see */
    cr_expect_eq(cuStreamSynchronize(s), CUDA_ERROR_ILLEGAL_ADDRESS);
    cr_expect_eq(fragless_emu_faults(), 1);
    cr_expect_eq(cuMemAlloc(&p, 4096), CUDA_ERROR_ILLEGAL_ADDRESS, "sticky");
    cr_expect_eq(cuCtxSynchronize(), CUDA_ERROR_ILLEGAL_ADDRESS, "sticky");
    CK(cuDevicePrimaryCtxReset(0));
    CK(cuMemAlloc(&p, 4096));
    CK(cuMemFree(p));
    CK(cuMemRelease(h));
    CK(cuMemAddressFree(va, g));
}

Test(drv_emu_time, fill_on_inaccessible_mapping_faults)
{
    CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = 0}};
    size_t g = 2 << 20;
    CUdeviceptr va;
    CUmemGenericAllocationHandle h;

    CK(cuMemAddressReserve(&va, g, 0, 0, 0));
    CK(cuMemCreate(&h, g, &prop, 0));
    CK(cuMemMap(va, g, 0, h, 0));
    CK(fragless_emu_stream_fill(NULL, va, 9, 64, 0));
    cr_expect_eq(cuCtxSynchronize(), CUDA_ERROR_ILLEGAL_ADDRESS);
    cr_expect_eq(fragless_emu_faults(), 1);
}

Test(drv_emu_time, stream_ordered_free_keeps_block_until_the_stream_reaches_it)
{
    CUstream s, other;
    CUdeviceptr p;

    CK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CK(cuStreamCreate(&other, CU_STREAM_NON_BLOCKING));
    CK(cuMemAllocAsync(&p, 1 << 20, s));
    CK(fragless_emu_stream_fill(s, p, 5, 1 << 20, WORK_US));
    CK(cuMemFreeAsync(p, s)); /* after the fill in stream order: fine */
    CK(cuStreamSynchronize(s));
    cr_expect_eq(fragless_emu_faults(), 0);

    CK(cuMemAllocAsync(&p, 1 << 20, s));
    CK(cuMemFreeAsync(p, s));
    CK(cuStreamSynchronize(s));
    CK(fragless_emu_stream_fill(other, p, 5, 64, 0)); /* use after free */
    cr_expect_eq(cuStreamSynchronize(other), CUDA_ERROR_ILLEGAL_ADDRESS);
    cr_expect_eq(fragless_emu_faults(), 1);
}

Test(drv_emu_time, captured_work_does_not_run)
{
    CUstream s;
    CUgraph g;
    CUstreamCaptureStatus st;
    cuuint64_t id = 0;
    CUdeviceptr p;

    CK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CK(cuMemAlloc(&p, 4096));
    memset((void *)(uintptr_t)p, 0, 4096);
    CK(cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_GLOBAL));
    CK(cuStreamIsCapturing(s, &st));
    cr_expect_eq(st, CU_STREAM_CAPTURE_STATUS_ACTIVE);
    CK(cuStreamGetCaptureInfo(s, &st, &id, NULL, NULL, NULL, NULL));
    cr_expect_eq(st, CU_STREAM_CAPTURE_STATUS_ACTIVE);
    cr_expect_gt(id, 0);
    cr_expect_eq(cuStreamBeginCapture(s, CU_STREAM_CAPTURE_MODE_GLOBAL), CUDA_ERROR_ILLEGAL_STATE);
    cr_expect_eq(cuStreamBeginCapture(NULL, CU_STREAM_CAPTURE_MODE_GLOBAL),
                 CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "not the legacy stream");
    CK(fragless_emu_stream_fill(s, p, 3, 4096, WORK_US));
    cr_expect_eq(cuStreamSynchronize(s), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
    CK(cuStreamEndCapture(s, &g));
    CK(cuStreamIsCapturing(s, &st));
    cr_expect_eq(st, CU_STREAM_CAPTURE_STATUS_NONE);
    CK(cuStreamQuery(s));
    CK(cuCtxSynchronize());
    cr_expect_eq(*(unsigned char *)(uintptr_t)p, 0);
    CK(cuGraphDestroy(g));
    CK(cuMemFree(p));
}

/* Exported per-thread-stream variants (cuda.h declares them only under
 * CUDA_API_PER_THREAD_DEFAULT_STREAM). */
CUresult cuStreamQuery_ptsz(CUstream hStream);
CUresult cuStreamSynchronize_ptsz(CUstream hStream);

/* The per-thread default stream is a blocking stream of its own in each thread. */
Test(drv_emu_time, per_thread_default_stream)
{
    CUstream nb;
    CUevent e;

    CK(cuStreamCreate(&nb, CU_STREAM_NON_BLOCKING));
    CK(cuEventCreate(&e, CU_EVENT_DISABLE_TIMING));
    CK(fragless_emu_stream_work(CU_STREAM_PER_THREAD, WORK_US));
    cr_expect_eq(cuStreamQuery_ptsz(NULL), CUDA_ERROR_NOT_READY, "NULL means per-thread");
    cr_expect_eq(cuStreamQuery(CU_STREAM_PER_THREAD), CUDA_ERROR_NOT_READY);
    CK(cuEventRecord(e, nb));
    CK(cuEventQuery(e));
    CK(cuEventRecord(e, CU_STREAM_LEGACY)); /* legacy waits for the blocking per-thread one */
    cr_expect_eq(cuEventQuery(e), CUDA_ERROR_NOT_READY);
    CK(cuStreamSynchronize_ptsz(NULL));
    CK(cuEventSynchronize(e));
}

struct worker {
    CUcontext ctx;
    int rounds;
    CUresult rc;
};

static void *worker_run(void *arg)
{
    struct worker *w = arg;
    CUdeviceptr p;
    CUstream s;

    w->rc = cuCtxSetCurrent(w->ctx);
    for (int i = 0; i < w->rounds && w->rc == CUDA_SUCCESS; i++) {
        w->rc = cuStreamCreate(&s, CU_STREAM_NON_BLOCKING);
        if (w->rc == CUDA_SUCCESS)
            w->rc = cuMemAllocAsync(&p, 4096 + (size_t)i, s);
        if (w->rc == CUDA_SUCCESS)
            w->rc = fragless_emu_stream_fill(s, p, i & 0xff, 4096, 10);
        if (w->rc == CUDA_SUCCESS)
            w->rc = cuMemFreeAsync(p, s);
        if (w->rc == CUDA_SUCCESS)
            w->rc = cuStreamSynchronize(s);
        if (w->rc == CUDA_SUCCESS)
            w->rc = cuStreamDestroy(s);
        if (w->rc == CUDA_SUCCESS)
            w->rc = cuMemAlloc(&p, 8192);
        if (w->rc == CUDA_SUCCESS)
            w->rc = cuMemFree(p);
    }
    return NULL;
}

Test(drv_emu_time, threads_share_the_device_safely)
{
    pthread_t t[4];
    struct worker w[4];
    CUcontext ctx;

    CK(cuCtxGetCurrent(&ctx));
    for (int i = 0; i < 4; i++) {
        w[i] = (struct worker){.ctx = ctx, .rounds = 200};
        cr_assert_eq(pthread_create(&t[i], NULL, worker_run, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        cr_expect_eq(w[i].rc, CUDA_SUCCESS, "worker %d: %d", i, (int)w[i].rc);
    }
    CK(cuCtxSynchronize());
    cr_expect_eq(fragless_emu_faults(), 0);
    cr_expect_eq(fragless_emu_audit(-1), 0);
    cr_expect_eq(fragless_emu_used(0), 0);
}

/* An event or stream query that answers "done" answers after the fills that work made are
 * written (a query once answered before applying them: the fill landed on a later call). */
Test(drv_emu_time, queries_answer_done_only_with_the_fills_written)
{
    CUstream s;
    CUevent e;
    CUdeviceptr p;
    volatile unsigned char *host;
    int early_event = 0, early_stream = 0;

    CK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
    CK(cuEventCreate(&e, CU_EVENT_DISABLE_TIMING));
    host = zeroed_mib(&p);
    for (int i = 0; i < 400; i++) {
        unsigned char b = (unsigned char)(i % 250 + 1);
        CK(fragless_emu_stream_fill(s, p, b, 4096, 30));
        CK(cuEventRecord(e, s));
        CUresult r;
        while ((r = cuEventQuery(e)) == CUDA_ERROR_NOT_READY)
            ;
        CK(r);
        early_event += host[0] != b;
        b = (unsigned char)(b ^ 0xff);
        CK(fragless_emu_stream_fill(s, p, b, 4096, 30));
        while ((r = cuStreamQuery(s)) == CUDA_ERROR_NOT_READY)
            ;
        CK(r);
        early_stream += host[0] != b;
    }
    cr_expect_eq(early_event, 0, "%d of 400 event queries answered before their fill", early_event);
    cr_expect_eq(early_stream, 0, "%d of 400 stream queries answered before their fill",
                 early_stream);
    CK(cuEventDestroy(e));
    CK(cuStreamDestroy(s));
    CK(cuMemFree(p));
    cr_expect_eq(fragless_emu_faults(), 0);
}
