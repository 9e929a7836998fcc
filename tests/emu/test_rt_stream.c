/*
 * test_rt_stream.c — streams, events and stream capture through the emulated runtime, with
 * simulated in-flight work queued by the emulated driver's fragless_emu_stream_work.
 */
#include <criterion/criterion.h>
#include <cuda.h>
#include <cuda_runtime_api.h>
#include <stdint.h>
#include <time.h>

#include "fragless_emu.h"
#include "testutil.h"

cudaError_t cudaStreamQuery_ptsz(cudaStream_t);
cudaError_t cudaStreamSynchronize_ptsz(cudaStream_t);
cudaError_t cudaEventRecord_ptsz(cudaEvent_t, cudaStream_t);
cudaError_t cudaStreamWaitEvent_ptsz(cudaStream_t, cudaEvent_t, unsigned int);
cudaError_t cudaStreamBeginCapture_ptsz(cudaStream_t, enum cudaStreamCaptureMode);
cudaError_t cudaStreamEndCapture_ptsz(cudaStream_t, cudaGraph_t *);
cudaError_t cudaStreamIsCapturing_ptsz(cudaStream_t, enum cudaStreamCaptureStatus *);

/* Simulated work long enough that the checks right after queuing it run before it ends. */
#define BUSY_USEC 200000

static void busy(cudaStream_t s)
{
    cr_assert_eq(fragless_emu_stream_work((CUstream)s, BUSY_USEC), 0);
}

Test(rt_stream, query_and_synchronize_follow_simulated_work)
{
    cudaStream_t s;
    cr_assert_eq(cudaStreamCreate(&s), cudaSuccess);
    cr_assert_eq(cudaStreamQuery(s), cudaSuccess);
    busy(s);
    cr_assert_eq(cudaStreamQuery(s), cudaErrorNotReady);
    cr_assert_eq(cudaGetLastError(), cudaSuccess, "cudaErrorNotReady is not a last error");
    cr_assert_eq(cudaStreamSynchronize(s), cudaSuccess);
    cr_assert_eq(cudaStreamQuery(s), cudaSuccess);
    cr_assert_eq(cudaStreamDestroy(s), cudaSuccess);
}

Test(rt_stream, create_with_flags_and_priority)
{
    cudaStream_t a, b;
    cr_assert_eq(cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking), cudaSuccess);
    cr_assert_eq(cudaStreamCreateWithPriority(&b, cudaStreamDefault, -1), cudaSuccess);
    unsigned int flags = 0;
    cr_assert_eq(cuStreamGetFlags((CUstream)a, &flags), CUDA_SUCCESS);
    cr_assert_eq(flags, CU_STREAM_NON_BLOCKING);
    int least, greatest, prio = 99;
    cr_assert_eq(cuCtxGetStreamPriorityRange(&least, &greatest), CUDA_SUCCESS);
    cr_assert_eq(cuStreamGetPriority((CUstream)b, &prio), CUDA_SUCCESS);
    cr_assert(prio <= least && prio >= greatest, "priority %d outside [%d, %d]", prio, greatest,
              least);
    cr_assert_eq(cudaStreamDestroy(a), cudaSuccess);
    cr_assert_eq(cudaStreamDestroy(b), cudaSuccess);
    cr_assert_eq(cudaStreamCreate(NULL), cudaErrorInvalidValue);
}

Test(rt_stream, device_synchronize_waits_for_every_stream)
{
    cudaStream_t s;
    cr_assert_eq(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
    busy(s);
    cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
    cr_assert_eq(cudaStreamQuery(s), cudaSuccess);
    cr_assert_eq(cudaStreamDestroy(s), cudaSuccess);
}

Test(rt_stream, events_record_query_synchronize_elapsed)
{
    cudaStream_t s;
    cudaEvent_t start, end;
    cr_assert_eq(cudaStreamCreate(&s), cudaSuccess);
    cr_assert_eq(cudaEventCreate(&start), cudaSuccess);
    cr_assert_eq(cudaEventCreateWithFlags(&end, cudaEventBlockingSync), cudaSuccess);
    cr_assert_eq(cudaEventRecord(start, s), cudaSuccess);
    busy(s);
    cr_assert_eq(cudaEventRecord(end, s), cudaSuccess);
    cr_assert_eq(cudaEventQuery(end), cudaErrorNotReady);
    cr_assert_eq(cudaEventSynchronize(end), cudaSuccess);
    cr_assert_eq(cudaEventQuery(end), cudaSuccess);
    float ms = 0;
    cr_assert_eq(cudaEventElapsedTime(&ms, start, end), cudaSuccess);
    cr_assert(ms >= BUSY_USEC / 1000.0f * 0.99f, "elapsed %f ms, queued %d us", ms, BUSY_USEC);
    cr_assert_eq(cudaEventElapsedTime(NULL, start, end), cudaErrorInvalidValue);
    cr_assert_eq(cudaEventDestroy(start), cudaSuccess);
    cr_assert_eq(cudaEventDestroy(end), cudaSuccess);
    cr_assert_eq(cudaStreamDestroy(s), cudaSuccess);
}

Test(rt_stream, timing_disabled_event_has_no_elapsed_time)
{
    cudaEvent_t a, b;
    cr_assert_eq(cudaEventCreateWithFlags(&a, cudaEventDisableTiming), cudaSuccess);
    cr_assert_eq(cudaEventCreate(&b), cudaSuccess);
    cr_assert_eq(cudaEventRecord(a, NULL), cudaSuccess);
    cr_assert_eq(cudaEventRecord(b, NULL), cudaSuccess);
    cr_assert_eq(cudaEventSynchronize(b), cudaSuccess);
    float ms;
    cr_assert_eq(cudaEventElapsedTime(&ms, a, b), cudaErrorInvalidResourceHandle);
    cr_assert_eq(cudaEventDestroy(a), cudaSuccess);
    cr_assert_eq(cudaEventDestroy(b), cudaSuccess);
}

Test(rt_stream, wait_event_orders_another_stream)
{
    cudaStream_t producer, consumer;
    cudaEvent_t ev, done;
    cr_assert_eq(cudaStreamCreateWithFlags(&producer, cudaStreamNonBlocking), cudaSuccess);
    cr_assert_eq(cudaStreamCreateWithFlags(&consumer, cudaStreamNonBlocking), cudaSuccess);
    cr_assert_eq(cudaEventCreate(&ev), cudaSuccess);
    cr_assert_eq(cudaEventCreate(&done), cudaSuccess);
    busy(producer);
    cr_assert_eq(cudaEventRecord(ev, producer), cudaSuccess);
    cr_assert_eq(cudaStreamWaitEvent(consumer, ev, 0), cudaSuccess);
    cr_assert_eq(cudaEventRecord(done, consumer), cudaSuccess);
    cr_assert_eq(cudaEventQuery(done), cudaErrorNotReady,
                 "work after the wait must not complete before the producer's");
    cr_assert_eq(cudaStreamSynchronize(consumer), cudaSuccess);
    cr_assert_eq(cudaEventQuery(ev), cudaSuccess);
    cr_assert_eq(cudaEventDestroy(ev), cudaSuccess);
    cr_assert_eq(cudaEventDestroy(done), cudaSuccess);
    cr_assert_eq(cudaStreamDestroy(producer), cudaSuccess);
    cr_assert_eq(cudaStreamDestroy(consumer), cudaSuccess);
}

Test(rt_stream, per_thread_default_stream_forms)
{
    cudaEvent_t ev;
    cr_assert_eq(cudaEventCreate(&ev), cudaSuccess);
    busy(cudaStreamPerThread);
    cr_assert_eq(cudaStreamQuery_ptsz(NULL), cudaErrorNotReady,
                 "stream 0 of a _ptsz call is the per-thread default stream");
    cr_assert_eq(cudaEventRecord_ptsz(ev, NULL), cudaSuccess);
    cr_assert_eq(cudaStreamWaitEvent_ptsz(NULL, ev, 0), cudaSuccess);
    cr_assert_eq(cudaStreamSynchronize_ptsz(NULL), cudaSuccess);
    cr_assert_eq(cudaEventQuery(ev), cudaSuccess);
    cr_assert_eq(cudaStreamQuery_ptsz(NULL), cudaSuccess);
    cr_assert_eq(cudaEventDestroy(ev), cudaSuccess);
}

Test(rt_stream, capture_begin_is_capturing_end)
{
    cudaStream_t s;
    cudaGraph_t g = NULL;
    enum cudaStreamCaptureStatus st = cudaStreamCaptureStatusActive;
    cr_assert_eq(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
    cr_assert_eq(cudaStreamIsCapturing(s, &st), cudaSuccess);
    cr_assert_eq(st, cudaStreamCaptureStatusNone);
    cr_assert_eq(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal), cudaSuccess);
    cr_assert_eq(cudaStreamIsCapturing(s, &st), cudaSuccess);
    cr_assert_eq(st, cudaStreamCaptureStatusActive);
    cr_assert_eq(cudaStreamEndCapture(s, &g), cudaSuccess);
    cr_assert_not_null(g);
    cr_assert_eq(cudaStreamIsCapturing(s, &st), cudaSuccess);
    cr_assert_eq(st, cudaStreamCaptureStatusNone);
    cr_assert_eq(cudaGraphDestroy(g), cudaSuccess);
    cr_assert_eq(cudaStreamEndCapture(s, NULL), cudaErrorInvalidValue);
    cr_assert_eq(cudaStreamIsCapturing(s, NULL), cudaErrorInvalidValue);
    cr_assert_eq(cudaStreamDestroy(s), cudaSuccess);
}

Test(rt_stream, capture_per_thread_forms)
{
    cudaStream_t s;
    cudaGraph_t g = NULL;
    enum cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    cr_assert_eq(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
    cr_assert_eq(cudaStreamBeginCapture_ptsz(s, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    cr_assert_eq(cudaStreamIsCapturing_ptsz(s, &st), cudaSuccess);
    cr_assert_eq(st, cudaStreamCaptureStatusActive);
    cr_assert_eq(cudaStreamEndCapture_ptsz(s, &g), cudaSuccess);
    cr_assert_eq(cudaGraphDestroy(g), cudaSuccess);
    cr_assert_eq(cudaStreamDestroy(s), cudaSuccess);
}

Test(rt_stream, destroyed_or_bogus_handles_are_refused)
{
    cudaEvent_t ev;
    cr_assert_eq(cudaEventCreate(&ev), cudaSuccess);
    cr_assert_eq(cudaEventDestroy(ev), cudaSuccess);
    cr_assert_neq(cudaEventQuery(ev), cudaSuccess);
    cr_assert_eq(cudaEventCreate(NULL), cudaErrorInvalidValue);
}
