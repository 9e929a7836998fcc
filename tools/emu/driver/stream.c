/*
 * stream.c — streams and the simulated time model. Each stream has a "busy until" time
 * (CLOCK_MONOTONIC ns): queued simulated work ends then. The legacy default stream orders
 * with every blocking stream of its context (not with CU_STREAM_NON_BLOCKING ones); the
 * per-thread default stream is a blocking stream of its own per thread. Query and
 * synchronize compare with / sleep until that time. Also fragless_emu_stream_work.
 */
#include <stdlib.h>
#include <string.h>

#include "emu.h"

/* cuda.h maps cuStreamDestroy to _v2; the library exports both. */
#undef cuStreamDestroy
CUresult cuStreamDestroy(CUstream hStream);

static __thread struct emu_stream *per_thread[EMU_MAX_DEVICES];

static bool stream_blocking(const struct emu_stream *s)
{
    return !(s->flags & CU_STREAM_NON_BLOCKING);
}

static bool stream_is_legacy(const struct emu_stream *s)
{
    return s == &s->ctx->legacy;
}

/* Per context (one per device): when the work queued on its destroyed streams ends, all of
 * them and its blocking ones (emulator lock held). A destroyed stream's queued work still runs
 * to completion, as on a GPU: a context synchronization waits for it, and so does the legacy
 * stream for a destroyed blocking stream's. */
static uint64_t gone_until[EMU_MAX_DEVICES], gone_blocking_until[EMU_MAX_DEVICES];

/* The last destroyed stream's memory, kept for the next stream created (emulator lock held):
 * like a real driver, the emulated one hands a destroyed stream's handle out again, which is
 * what anything that remembers streams by handle must survive. */
static struct emu_stream *spare_stream;

static struct emu_stream *stream_new(struct emu_ctx *ctx, unsigned flags, int priority)
{
    struct emu_stream *s = spare_stream;

    spare_stream = NULL;
    if (s)
        memset(s, 0, sizeof *s);
    else
        s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->magic = EMU_MAGIC_STREAM;
    s->ctx = ctx;
    s->flags = flags;
    s->priority = priority;
    s->key = s;
    HASH_ADD_PTR(emu.streams, key, s);
    return s;
}

static void stream_free(struct emu_stream *s)
{
    struct emu_alloc *a, *tmp;
    int dev = s->ctx->device;

    if (s->busy_until > gone_until[dev])
        gone_until[dev] = s->busy_until;
    if (stream_blocking(s) && s->busy_until > gone_blocking_until[dev])
        gone_blocking_until[dev] = s->busy_until;

    HASH_ITER(hh, emu.allocs, a, tmp)
    if (a->free_stream == s)
        a->free_stream = NULL;
    HASH_DEL(emu.streams, s);
    s->magic = 0;
    free(spare_stream);
    spare_stream = s;
}

static struct emu_stream *stream_per_thread(struct emu_ctx *ctx)
{
    struct emu_stream *s = per_thread[ctx->device];

    if (s && s->ctx == ctx)
        return s;
    s = stream_new(ctx, CU_STREAM_DEFAULT, 0);
    if (s) {
        s->implicit = true;
        s->per_thread = true;
        per_thread[ctx->device] = s;
    }
    return s;
}

CUresult emu_stream_resolve(struct emu_ctx *ctx, CUstream h, bool ptds, struct emu_stream **out)
{
    struct emu_stream *s = NULL;

    if (h == CU_STREAM_LEGACY || (!h && !ptds)) {
        *out = &ctx->legacy;
        return CUDA_SUCCESS;
    }
    if (h == CU_STREAM_PER_THREAD || !h) {
        *out = stream_per_thread(ctx);
        return *out ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
    }
    HASH_FIND_PTR(emu.streams, &h, s);
    if (!s || s->magic != EMU_MAGIC_STREAM)
        return CUDA_ERROR_INVALID_HANDLE;
    *out = s;
    return CUDA_SUCCESS;
}

CUresult emu_current_stream(CUstream h, bool ptds, struct emu_ctx **ctx, struct emu_stream **s)
{
    CUresult r = emu_current(ctx);

    return r == CUDA_SUCCESS ? emu_stream_resolve(*ctx, h, ptds, s) : r;
}

uint64_t emu_stream_order(struct emu_stream *s)
{
    struct emu_stream *o, *tmp;
    uint64_t t = s->busy_until;

    if (stream_is_legacy(s)) {
        if (gone_blocking_until[s->ctx->device] > t)
            t = gone_blocking_until[s->ctx->device];
        HASH_ITER(hh, emu.streams, o, tmp)
        if (o->ctx == s->ctx && stream_blocking(o) && o->busy_until > t)
            t = o->busy_until;
    } else if (stream_blocking(s) && s->ctx->legacy.busy_until > t) {
        t = s->ctx->legacy.busy_until;
    }
    s->busy_until = t;
    return t;
}

uint64_t emu_stream_enqueue(struct emu_stream *s, uint64_t usec)
{
    uint64_t start = emu_stream_order(s), now = emu_now();

    if (s->capture_status == CU_STREAM_CAPTURE_STATUS_ACTIVE)
        return start; /* captured into a graph, not run */
    if (start < now)
        start = now;
    s->busy_until = start + usec * 1000u;
    return s->busy_until;
}

uint64_t emu_ctx_point(struct emu_ctx *ctx)
{
    struct emu_stream *s, *tmp;
    uint64_t t = ctx->legacy.busy_until;

    if (gone_until[ctx->device] > t)
        t = gone_until[ctx->device];
    HASH_ITER(hh, emu.streams, s, tmp)
    if (s->ctx == ctx && s->busy_until > t)
        t = s->busy_until;
    return t;
}

void emu_device_advance(void)
{
    uint64_t now, next_fill, next_free;

    if (atomic_load_explicit(&emu.due, memory_order_relaxed) == UINT64_MAX)
        return;
    now = emu_now();
    if (now < atomic_load_explicit(&emu.due, memory_order_relaxed))
        return;
    next_fill = emu_fills_apply(now);
    next_free = emu_pool_advance(now);
    atomic_store_explicit(&emu.due, next_fill < next_free ? next_fill : next_free,
                          memory_order_release);
}

void emu_device_note_due(uint64_t at)
{
    if (at < atomic_load_explicit(&emu.due, memory_order_relaxed))
        atomic_store_explicit(&emu.due, at, memory_order_release);
}

bool emu_device_due(void)
{
    uint64_t due = atomic_load_explicit(&emu.due, memory_order_acquire);

    return due != UINT64_MAX && emu_now() >= due;
}

void emu_wait_locked(uint64_t t)
{
    if (t > emu_now()) {
        emu_unlock();
        emu_sleep_until(t);
        emu_lock();
    }
    emu_device_advance();
}

void emu_streams_teardown(struct emu_ctx *ctx)
{
    struct emu_stream *s, *tmp;

    HASH_ITER(hh, emu.streams, s, tmp)
    {
        if (s->ctx != ctx)
            continue;
        if (s->implicit) {
            s->busy_until = 0;
            s->capture_status = CU_STREAM_CAPTURE_STATUS_NONE;
        } else {
            stream_free(s);
        }
    }
    gone_until[ctx->device] = 0; /* its work was waited for */
    gone_blocking_until[ctx->device] = 0;
}

/* ---- entry points ---------------------------------------------------------------------- */

static CUresult stream_create(CUstream *ph, unsigned flags, int priority)
{
    CUresult r;
    struct emu_ctx *c = NULL;
    struct emu_stream *s;

    emu_lock();
    r = emu_current(&c);
    if (r == CUDA_SUCCESS && (!ph || (flags & ~(unsigned)CU_STREAM_NON_BLOCKING)))
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS) {
        priority = priority > 0 ? 0 : priority < -5 ? -5 : priority;
        s = stream_new(c, flags, priority);
        if (!s)
            r = CUDA_ERROR_OUT_OF_MEMORY;
        else
            *ph = (CUstream)s;
    }
    emu_unlock();
    return r;
}

EMU_API CUresult cuStreamCreate(CUstream *phStream, unsigned int Flags)
{
    EMU_ENTER(cuStreamCreate);
    return stream_create(phStream, Flags, 0);
}

EMU_API CUresult cuStreamCreateWithPriority(CUstream *phStream, unsigned int flags, int priority)
{
    EMU_ENTER(cuStreamCreateWithPriority);
    return stream_create(phStream, flags, priority);
}

static CUresult stream_destroy(CUstream hStream)
{
    CUresult r;
    struct emu_ctx *c = NULL;
    struct emu_stream *s = NULL;

    emu_lock();
    r = emu_current_stream(hStream, false, &c, &s);
    if (r == CUDA_SUCCESS && s->implicit)
        r = CUDA_ERROR_INVALID_HANDLE;
    if (r == CUDA_SUCCESS)
        stream_free(s); /* queued work still completes: fills are queued apart */
    emu_unlock();
    return r;
}

EMU_API CUresult cuStreamDestroy_v2(CUstream hStream)
{
    EMU_ENTER(cuStreamDestroy_v2);
    return stream_destroy(hStream);
}

/* The pre-4.0 name, which the driver still exports. */
EMU_API CUresult cuStreamDestroy(CUstream hStream)
{
    EMU_ENTER(cuStreamDestroy);
    return stream_destroy(hStream);
}

static CUresult stream_synchronize(CUstream h, bool ptds)
{
    CUresult r;
    struct emu_ctx *c = NULL;
    struct emu_stream *s = NULL;

    emu_lock();
    r = emu_current_stream(h, ptds, &c, &s);
    if (r == CUDA_SUCCESS && s->capture_status != CU_STREAM_CAPTURE_STATUS_NONE)
        r = CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    if (r == CUDA_SUCCESS) {
        emu_wait_locked(stream_is_legacy(s) ? emu_stream_order(s) : s->busy_until);
        emu_pool_trim(c->device);
        r = c->sticky;
    }
    emu_unlock();
    return r;
}

EMU_API CUresult cuStreamSynchronize(CUstream hStream)
{
    EMU_ENTER(cuStreamSynchronize);
    return stream_synchronize(hStream, false);
}

EMU_API CUresult cuStreamSynchronize_ptsz(CUstream hStream)
{
    EMU_ENTER(cuStreamSynchronize_ptsz);
    return stream_synchronize(hStream, true);
}

static CUresult stream_query(CUstream h, bool ptds)
{
    CUresult r;
    struct emu_ctx *c = NULL;
    struct emu_stream *s = NULL;
    uint64_t t;

    emu_lock();
    r = emu_current_stream(h, ptds, &c, &s);
    if (r == CUDA_SUCCESS && s->capture_status != CU_STREAM_CAPTURE_STATUS_NONE)
        r = CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    if (r == CUDA_SUCCESS) {
        t = stream_is_legacy(s) ? emu_stream_order(s) : s->busy_until;
        r = emu_now() < t ? CUDA_ERROR_NOT_READY : CUDA_SUCCESS;
        if (r == CUDA_SUCCESS) /* the stream's work done: its fills written before the answer */
            emu_device_advance();
    }
    emu_unlock();
    emu_latency("cuStreamQuery", 0);
    return r;
}

EMU_API CUresult cuStreamQuery(CUstream hStream)
{
    EMU_FAST_ENTER(cuStreamQuery);
    return stream_query(hStream, false);
}

EMU_API CUresult cuStreamQuery_ptsz(CUstream hStream)
{
    EMU_FAST_ENTER(cuStreamQuery_ptsz);
    return stream_query(hStream, true);
}

static CUresult stream_wait_event(CUstream h, CUevent e, unsigned flags, bool ptds)
{
    CUresult r;
    struct emu_ctx *c = NULL;
    struct emu_stream *s = NULL;
    struct emu_event *ev = NULL;

    emu_lock();
    r = emu_current_stream(h, ptds, &c, &s);
    if (r == CUDA_SUCCESS)
        r = emu_event_find(e, &ev);
    if (r == CUDA_SUCCESS && (flags & ~(unsigned)CU_EVENT_WAIT_EXTERNAL))
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS && ev->recorded && emu_stream_order(s) < ev->at)
        s->busy_until = ev->at;
    emu_unlock();
    return r;
}

EMU_API CUresult cuStreamWaitEvent(CUstream hStream, CUevent hEvent, unsigned int Flags)
{
    EMU_ENTER(cuStreamWaitEvent);
    return stream_wait_event(hStream, hEvent, Flags, false);
}

EMU_API CUresult cuStreamWaitEvent_ptsz(CUstream hStream, CUevent hEvent, unsigned int Flags)
{
    EMU_ENTER(cuStreamWaitEvent_ptsz);
    return stream_wait_event(hStream, hEvent, Flags, true);
}

/* Resolves h for a query that needs no work done: the stream's context, flags, priority. */
static CUresult stream_get(CUstream h, bool ptds, struct emu_stream *out)
{
    CUresult r;
    struct emu_ctx *c = NULL;
    struct emu_stream *s = NULL;

    emu_lock();
    r = emu_current_stream(h, ptds, &c, &s);
    if (r == CUDA_SUCCESS)
        *out = *s;
    emu_unlock();
    return r;
}

static CUresult stream_get_ctx(CUstream h, CUcontext *pctx, bool ptds)
{
    struct emu_stream s;
    CUresult r = pctx ? stream_get(h, ptds, &s) : CUDA_ERROR_INVALID_VALUE;

    if (r == CUDA_SUCCESS)
        *pctx = (CUcontext)s.ctx;
    return r;
}

EMU_API CUresult cuStreamGetCtx(CUstream hStream, CUcontext *pctx)
{
    EMU_FAST_ENTER(cuStreamGetCtx);
    return stream_get_ctx(hStream, pctx, false);
}

EMU_API CUresult cuStreamGetCtx_ptsz(CUstream hStream, CUcontext *pctx)
{
    EMU_FAST_ENTER(cuStreamGetCtx_ptsz);
    return stream_get_ctx(hStream, pctx, true);
}

static CUresult stream_get_priority(CUstream h, int *priority, bool ptds)
{
    struct emu_stream s;
    CUresult r = priority ? stream_get(h, ptds, &s) : CUDA_ERROR_INVALID_VALUE;

    if (r == CUDA_SUCCESS)
        *priority = s.priority;
    return r;
}

EMU_API CUresult cuStreamGetPriority(CUstream hStream, int *priority)
{
    EMU_FAST_ENTER(cuStreamGetPriority);
    return stream_get_priority(hStream, priority, false);
}

EMU_API CUresult cuStreamGetPriority_ptsz(CUstream hStream, int *priority)
{
    EMU_FAST_ENTER(cuStreamGetPriority_ptsz);
    return stream_get_priority(hStream, priority, true);
}

static CUresult stream_get_flags(CUstream h, unsigned int *flags, bool ptds)
{
    struct emu_stream s;
    CUresult r = flags ? stream_get(h, ptds, &s) : CUDA_ERROR_INVALID_VALUE;

    if (r == CUDA_SUCCESS)
        *flags = s.flags;
    return r;
}

EMU_API CUresult cuStreamGetFlags(CUstream hStream, unsigned int *flags)
{
    EMU_FAST_ENTER(cuStreamGetFlags);
    return stream_get_flags(hStream, flags, false);
}

EMU_API CUresult cuStreamGetFlags_ptsz(CUstream hStream, unsigned int *flags)
{
    EMU_FAST_ENTER(cuStreamGetFlags_ptsz);
    return stream_get_flags(hStream, flags, true);
}

EMU_API int fragless_emu_stream_work(CUstream hStream, uint64_t usec)
{
    CUresult r;
    struct emu_ctx *c = NULL;
    struct emu_stream *s = NULL;

    emu_config();
    emu_lock();
    r = emu_current_stream(hStream, false, &c, &s);
    if (r == CUDA_SUCCESS)
        emu_stream_enqueue(s, usec);
    emu_unlock();
    return r;
}
