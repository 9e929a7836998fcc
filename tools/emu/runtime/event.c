/*
 * event.c — events: create (with the driver's flag values), record on a stream, query,
 * synchronize, destroy, and the elapsed time between two recorded events.
 */
#include "rt.h"

static cudaError_t create(cudaEvent_t *event, unsigned int flags)
{
    if (!event)
        return rt_ret(cudaErrorInvalidValue);
    cudaError_t e = rt_enter();
    if (e != cudaSuccess)
        return rt_ret(e);
    CUevent ev = NULL;
    CUresult r = rt_drv()->event_create(&ev, flags);
    if (r != CUDA_SUCCESS)
        return rt_ret_drv(r);
    *event = (cudaEvent_t)ev;
    return cudaSuccess;
}

RT_EXPORT cudaError_t cudaEventCreate(cudaEvent_t *event)
{
    return create(event, cudaEventDefault);
}

RT_EXPORT cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned int flags)
{
    return create(event, flags);
}

static cudaError_t record(enum rt_stream_mode mode, cudaEvent_t event, cudaStream_t stream)
{
    const struct rt_driver *drv;
    cudaError_t e = rt_enter_mode(mode, &drv);
    if (e != cudaSuccess)
        return rt_ret(e);
    return rt_ret_drv(drv->event_record((CUevent)event, (CUstream)stream));
}

RT_EXPORT cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream)
{
    return record(RT_LEGACY, event, stream);
}

RT_EXPORT cudaError_t cudaEventRecord_ptsz(cudaEvent_t event, cudaStream_t stream)
{
    return record(RT_PER_THREAD, event, stream);
}

RT_EXPORT cudaError_t cudaEventQuery(cudaEvent_t event)
{
    cudaError_t e = rt_enter();
    if (e != cudaSuccess)
        return rt_ret(e);
    return rt_ret_drv(rt_drv()->event_query((CUevent)event));
}

RT_EXPORT cudaError_t cudaEventSynchronize(cudaEvent_t event)
{
    cudaError_t e = rt_enter();
    if (e != cudaSuccess)
        return rt_ret(e);
    return rt_ret_drv(rt_drv()->event_synchronize((CUevent)event));
}

RT_EXPORT cudaError_t cudaEventDestroy(cudaEvent_t event)
{
    cudaError_t e = rt_enter();
    if (e != cudaSuccess)
        return rt_ret(e);
    return rt_ret_drv(rt_drv()->event_destroy((CUevent)event));
}

RT_EXPORT cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t end)
{
    if (!ms)
        return rt_ret(cudaErrorInvalidValue);
    cudaError_t e = rt_enter();
    if (e != cudaSuccess)
        return rt_ret(e);
    return rt_ret_drv(rt_drv()->event_elapsed_time(ms, (CUevent)start, (CUevent)end));
}
