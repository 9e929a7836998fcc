/*
 * event.c — events in the simulated time model: a record captures the time at which the
 * stream's queued work completes; query says CUDA_ERROR_NOT_READY until then, synchronize
 * sleeps until then, elapsed time is the difference of two such times.
 */
#include <stdlib.h>

#include "emu.h"

/* cuda.h maps cuEventElapsedTime to _v2; the library exports both. */
#undef cuEventElapsedTime
CUresult cuEventElapsedTime(float *pMilliseconds, CUevent hStart, CUevent hEnd);

#define EVENT_FLAGS (CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING | CU_EVENT_INTERPROCESS)

CUresult emu_event_find(CUevent h, struct emu_event **out)
{
    struct emu_event *e = NULL;

    if (h)
        HASH_FIND_PTR(emu.events, &h, e);
    if (!e || e->magic != EMU_MAGIC_EVENT)
        return CUDA_ERROR_INVALID_HANDLE;
    *out = e;
    return CUDA_SUCCESS;
}

static void event_free(struct emu_event *e)
{
    HASH_DEL(emu.events, e);
    e->magic = 0;
    free(e);
}

void emu_events_teardown(struct emu_ctx *ctx)
{
    struct emu_event *e, *tmp;

    HASH_ITER(hh, emu.events, e, tmp)
    if (e->ctx == ctx)
        event_free(e);
}

EMU_API CUresult cuEventCreate(CUevent *phEvent, unsigned int Flags)
{
    CUresult r;
    struct emu_ctx *c = NULL;
    struct emu_event *e;

    EMU_ENTER(cuEventCreate);
    emu_lock();
    r = emu_current(&c);
    if (r == CUDA_SUCCESS && (!phEvent || (Flags & ~(unsigned)EVENT_FLAGS)))
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS && (Flags & CU_EVENT_INTERPROCESS) && !(Flags & CU_EVENT_DISABLE_TIMING))
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS && !(e = calloc(1, sizeof *e)))
        r = CUDA_ERROR_OUT_OF_MEMORY;
    if (r == CUDA_SUCCESS) {
        e->magic = EMU_MAGIC_EVENT;
        e->ctx = c;
        e->flags = Flags;
        e->key = e;
        HASH_ADD_PTR(emu.events, key, e);
        *phEvent = (CUevent)e;
    }
    emu_unlock();
    return r;
}

EMU_API CUresult cuEventDestroy_v2(CUevent hEvent)
{
    CUresult r;
    struct emu_event *e = NULL;

    EMU_ENTER(cuEventDestroy_v2);
    emu_lock();
    r = emu_check_init();
    if (r == CUDA_SUCCESS)
        r = emu_event_find(hEvent, &e);
    if (r == CUDA_SUCCESS)
        event_free(e);
    emu_unlock();
    return r;
}

static CUresult event_record(CUevent h, CUstream hs, unsigned flags, bool ptds)
{
    CUresult r;
    struct emu_ctx *c = NULL;
    struct emu_stream *s = NULL;
    struct emu_event *e = NULL;
    uint64_t now;

    emu_lock();
    r = emu_current(&c);
    if (r == CUDA_SUCCESS)
        r = emu_event_find(h, &e);
    if (r == CUDA_SUCCESS)
        r = emu_stream_resolve(c, hs, ptds, &s);
    if (r == CUDA_SUCCESS && (flags & ~(unsigned)CU_EVENT_RECORD_EXTERNAL))
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS && s->capture_status == CU_STREAM_CAPTURE_STATUS_NONE) {
        now = emu_now();
        e->at = emu_stream_order(s);
        if (e->at < now)
            e->at = now;
        e->recorded = true;
    }
    emu_unlock();
    emu_latency("cuEventRecord", 0);
    return r;
}

EMU_API CUresult cuEventRecord(CUevent hEvent, CUstream hStream)
{
    EMU_ENTER(cuEventRecord);
    return event_record(hEvent, hStream, 0, false);
}

EMU_API CUresult cuEventRecord_ptsz(CUevent hEvent, CUstream hStream)
{
    EMU_ENTER(cuEventRecord_ptsz);
    return event_record(hEvent, hStream, 0, true);
}

EMU_API CUresult cuEventRecordWithFlags(CUevent hEvent, CUstream hStream, unsigned int flags)
{
    EMU_ENTER(cuEventRecordWithFlags);
    return event_record(hEvent, hStream, flags, false);
}

EMU_API CUresult cuEventRecordWithFlags_ptsz(CUevent hEvent, CUstream hStream, unsigned int flags)
{
    EMU_ENTER(cuEventRecordWithFlags_ptsz);
    return event_record(hEvent, hStream, flags, true);
}

EMU_API CUresult cuEventQuery(CUevent hEvent)
{
    CUresult r;
    struct emu_event *e = NULL;
    struct emu_ctx *c = NULL;

    EMU_FAST_ENTER(cuEventQuery);
    emu_lock();
    r = emu_current(&c);
    if (r == CUDA_SUCCESS)
        r = emu_event_find(hEvent, &e);
    if (r == CUDA_SUCCESS && e->recorded && emu_now() < e->at)
        r = CUDA_ERROR_NOT_READY;
    else if (r == CUDA_SUCCESS) /* the work it covers done: its fills written before the answer */
        emu_device_advance();
    emu_unlock();
    emu_latency("cuEventQuery", 0);
    return r;
}

EMU_API CUresult cuEventSynchronize(CUevent hEvent)
{
    CUresult r;
    struct emu_event *e = NULL;
    struct emu_ctx *c = NULL;

    EMU_ENTER(cuEventSynchronize);
    emu_lock();
    r = emu_current(&c);
    if (r == CUDA_SUCCESS)
        r = emu_event_find(hEvent, &e);
    if (r == CUDA_SUCCESS && e->recorded) {
        emu_wait_locked(e->at);
        r = c->sticky;
    }
    emu_unlock();
    return r;
}

static CUresult event_elapsed(float *ms, CUevent hs, CUevent he)
{
    CUresult r;
    struct emu_event *s = NULL, *e = NULL;
    struct emu_ctx *c = NULL;
    uint64_t now;

    emu_lock();
    r = emu_current(&c);
    if (r == CUDA_SUCCESS && !ms)
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS)
        r = emu_event_find(hs, &s);
    if (r == CUDA_SUCCESS)
        r = emu_event_find(he, &e);
    if (r == CUDA_SUCCESS &&
        (!s->recorded || !e->recorded || ((s->flags | e->flags) & CU_EVENT_DISABLE_TIMING)))
        r = CUDA_ERROR_INVALID_HANDLE;
    now = emu_now();
    if (r == CUDA_SUCCESS && (now < s->at || now < e->at))
        r = CUDA_ERROR_NOT_READY;
    if (r == CUDA_SUCCESS)
        *ms = (float)(((double)e->at - (double)s->at) / 1e6);
    emu_unlock();
    return r;
}

EMU_API CUresult cuEventElapsedTime(float *pMilliseconds, CUevent hStart, CUevent hEnd)
{
    EMU_ENTER(cuEventElapsedTime);
    return event_elapsed(pMilliseconds, hStart, hEnd);
}

EMU_API CUresult cuEventElapsedTime_v2(float *pMilliseconds, CUevent hStart, CUevent hEnd)
{
    EMU_ENTER(cuEventElapsedTime_v2);
    return event_elapsed(pMilliseconds, hStart, hEnd);
}
