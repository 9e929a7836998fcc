/*
 * stream.c — streams and stream capture: create (flags, priority), destroy, synchronize,
 * query, wait on an event, begin/end/is-capturing, and destroying the captured graph.
 * cudaStream_t, cudaEvent_t and cudaGraph_t are the driver's handles; the flag and enum
 * values are the driver's too.
 */
#include "rt.h"

static cudaError_t create(cudaStream_t *pStream, unsigned int flags, int priority)
{
    if (!pStream)
        return rt_ret(cudaErrorInvalidValue);
    cudaError_t e = rt_enter();
    if (e != cudaSuccess)
        return rt_ret(e);
    const struct rt_driver *drv = rt_drv();
    CUstream s = NULL;
    CUresult r = drv->stream_create_prio ? drv->stream_create_prio(&s, flags, priority)
                                         : drv->stream_create(&s, flags);
    if (r != CUDA_SUCCESS)
        return rt_ret_drv(r);
    *pStream = (cudaStream_t)s;
    return cudaSuccess;
}

RT_EXPORT cudaError_t cudaStreamCreate(cudaStream_t *pStream)
{
    return create(pStream, cudaStreamDefault, 0);
}

RT_EXPORT cudaError_t cudaStreamCreateWithFlags(cudaStream_t *pStream, unsigned int flags)
{
    return create(pStream, flags, 0);
}

RT_EXPORT cudaError_t cudaStreamCreateWithPriority(cudaStream_t *pStream, unsigned int flags,
                                                   int priority)
{
    return create(pStream, flags, priority);
}

RT_EXPORT cudaError_t cudaStreamDestroy(cudaStream_t stream)
{
    cudaError_t e = rt_enter();
    if (e != cudaSuccess)
        return rt_ret(e);
    return rt_ret_drv(rt_drv()->stream_destroy((CUstream)stream));
}

static cudaError_t stream_sync(enum rt_stream_mode mode, cudaStream_t stream)
{
    const struct rt_driver *drv;
    cudaError_t e = rt_enter_mode(mode, &drv);
    if (e != cudaSuccess)
        return rt_ret(e);
    return rt_ret_drv(drv->stream_synchronize((CUstream)stream));
}

static cudaError_t stream_query(enum rt_stream_mode mode, cudaStream_t stream)
{
    const struct rt_driver *drv;
    cudaError_t e = rt_enter_mode(mode, &drv);
    if (e != cudaSuccess)
        return rt_ret(e);
    return rt_ret_drv(drv->stream_query((CUstream)stream));
}

static cudaError_t wait_event(enum rt_stream_mode mode, cudaStream_t stream, cudaEvent_t event,
                              unsigned int flags)
{
    const struct rt_driver *drv;
    cudaError_t e = rt_enter_mode(mode, &drv);
    if (e != cudaSuccess)
        return rt_ret(e);
    return rt_ret_drv(drv->stream_wait_event((CUstream)stream, (CUevent)event, flags));
}

RT_EXPORT cudaError_t cudaStreamSynchronize(cudaStream_t stream)
{
    return stream_sync(RT_LEGACY, stream);
}

RT_EXPORT cudaError_t cudaStreamSynchronize_ptsz(cudaStream_t stream)
{
    return stream_sync(RT_PER_THREAD, stream);
}

RT_EXPORT cudaError_t cudaStreamQuery(cudaStream_t stream)
{
    return stream_query(RT_LEGACY, stream);
}

RT_EXPORT cudaError_t cudaStreamQuery_ptsz(cudaStream_t stream)
{
    return stream_query(RT_PER_THREAD, stream);
}

RT_EXPORT cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event,
                                          unsigned int flags)
{
    return wait_event(RT_LEGACY, stream, event, flags);
}

RT_EXPORT cudaError_t cudaStreamWaitEvent_ptsz(cudaStream_t stream, cudaEvent_t event,
                                               unsigned int flags)
{
    return wait_event(RT_PER_THREAD, stream, event, flags);
}

static cudaError_t begin_capture(enum rt_stream_mode mode, cudaStream_t stream,
                                 enum cudaStreamCaptureMode capture_mode)
{
    const struct rt_driver *drv;
    cudaError_t e = rt_enter_mode(mode, &drv);
    if (e != cudaSuccess)
        return rt_ret(e);
    RT_NEED(drv, stream_begin_capture);
    return rt_ret_drv(
        drv->stream_begin_capture((CUstream)stream, (CUstreamCaptureMode)capture_mode));
}

static cudaError_t end_capture(enum rt_stream_mode mode, cudaStream_t stream, cudaGraph_t *graph)
{
    const struct rt_driver *drv;
    if (!graph)
        return rt_ret(cudaErrorInvalidValue);
    cudaError_t e = rt_enter_mode(mode, &drv);
    if (e != cudaSuccess)
        return rt_ret(e);
    RT_NEED(drv, stream_end_capture);
    return rt_ret_drv(drv->stream_end_capture((CUstream)stream, (CUgraph *)graph));
}

static cudaError_t is_capturing(enum rt_stream_mode mode, cudaStream_t stream,
                                enum cudaStreamCaptureStatus *status)
{
    const struct rt_driver *drv;
    if (!status)
        return rt_ret(cudaErrorInvalidValue);
    cudaError_t e = rt_enter_mode(mode, &drv);
    if (e != cudaSuccess)
        return rt_ret(e);
    RT_NEED(drv, stream_is_capturing);
    CUstreamCaptureStatus s = CU_STREAM_CAPTURE_STATUS_NONE;
    CUresult r = drv->stream_is_capturing((CUstream)stream, &s);
    if (r != CUDA_SUCCESS)
        return rt_ret_drv(r);
    *status = (enum cudaStreamCaptureStatus)s;
    return cudaSuccess;
}

RT_EXPORT cudaError_t cudaStreamBeginCapture(cudaStream_t stream, enum cudaStreamCaptureMode mode)
{
    return begin_capture(RT_LEGACY, stream, mode);
}

RT_EXPORT cudaError_t cudaStreamBeginCapture_ptsz(cudaStream_t stream,
                                                  enum cudaStreamCaptureMode mode)
{
    return begin_capture(RT_PER_THREAD, stream, mode);
}

RT_EXPORT cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t *pGraph)
{
    return end_capture(RT_LEGACY, stream, pGraph);
}

RT_EXPORT cudaError_t cudaStreamEndCapture_ptsz(cudaStream_t stream, cudaGraph_t *pGraph)
{
    return end_capture(RT_PER_THREAD, stream, pGraph);
}

RT_EXPORT cudaError_t cudaStreamIsCapturing(cudaStream_t stream,
                                            enum cudaStreamCaptureStatus *pCaptureStatus)
{
    return is_capturing(RT_LEGACY, stream, pCaptureStatus);
}

RT_EXPORT cudaError_t cudaStreamIsCapturing_ptsz(cudaStream_t stream,
                                                 enum cudaStreamCaptureStatus *pCaptureStatus)
{
    return is_capturing(RT_PER_THREAD, stream, pCaptureStatus);
}

RT_EXPORT cudaError_t cudaGraphDestroy(cudaGraph_t graph)
{
    cudaError_t e = rt_enter();
    if (e != cudaSuccess)
        return rt_ret(e);
    RT_NEED(rt_drv(), graph_destroy);
    return rt_ret_drv(rt_drv()->graph_destroy((CUgraph)graph));
}
