/*
 * capture.c — stream capture, as far as an allocator sees it: begin/end capture, whether a
 * stream is capturing (work queued on a capturing stream is recorded, not run), capture info,
 * and the graph objects capture produces (created and destroyed; never launched here).
 */
#include <stdlib.h>

#include "emu.h"

/* cuda.h maps cuStreamGetCaptureInfo to _v3 and cuStreamBeginCapture to _v2; the library
 * exports every version. */
#undef cuStreamGetCaptureInfo
#undef cuStreamBeginCapture
CUresult cuStreamBeginCapture(CUstream hStream);
CUresult cuStreamBeginCapture_ptsz(CUstream hStream);
CUresult cuStreamGetCaptureInfo(CUstream hStream, CUstreamCaptureStatus *status, cuuint64_t *id);
CUresult cuStreamGetCaptureInfo_ptsz(CUstream hStream, CUstreamCaptureStatus *status,
                                     cuuint64_t *id);

static CUresult capture_stream(CUstream h, bool ptds, struct emu_stream **out)
{
    struct emu_ctx *c = NULL;
    return emu_current_stream(h, ptds, &c, out);
}

static CUresult begin_capture(CUstream h, CUstreamCaptureMode mode, bool ptds)
{
    CUresult r;
    struct emu_stream *s = NULL;

    emu_lock();
    r = capture_stream(h, ptds, &s);
    if (r == CUDA_SUCCESS && s == &s->ctx->legacy)
        r = CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    else if (r == CUDA_SUCCESS &&
             (mode < CU_STREAM_CAPTURE_MODE_GLOBAL || mode > CU_STREAM_CAPTURE_MODE_RELAXED))
        r = CUDA_ERROR_INVALID_VALUE;
    else if (r == CUDA_SUCCESS && s->capture_status != CU_STREAM_CAPTURE_STATUS_NONE)
        r = CUDA_ERROR_ILLEGAL_STATE;
    if (r == CUDA_SUCCESS) {
        s->capture_status = CU_STREAM_CAPTURE_STATUS_ACTIVE;
        s->capture_id = emu.next_capture_id++;
    }
    emu_unlock();
    return r;
}

/* CUDA 10.0's forms, without a mode: every capture then was global. */
EMU_API CUresult cuStreamBeginCapture(CUstream hStream)
{
    EMU_ENTER(cuStreamBeginCapture);
    return begin_capture(hStream, CU_STREAM_CAPTURE_MODE_GLOBAL, false);
}

EMU_API CUresult cuStreamBeginCapture_ptsz(CUstream hStream)
{
    EMU_ENTER(cuStreamBeginCapture_ptsz);
    return begin_capture(hStream, CU_STREAM_CAPTURE_MODE_GLOBAL, true);
}

EMU_API CUresult cuStreamBeginCapture_v2(CUstream hStream, CUstreamCaptureMode mode)
{
    EMU_ENTER(cuStreamBeginCapture_v2);
    return begin_capture(hStream, mode, false);
}

EMU_API CUresult cuStreamBeginCapture_v2_ptsz(CUstream hStream, CUstreamCaptureMode mode)
{
    EMU_ENTER(cuStreamBeginCapture_v2_ptsz);
    return begin_capture(hStream, mode, true);
}

static CUresult end_capture(CUstream h, CUgraph *phGraph, bool ptds)
{
    CUresult r;
    struct emu_stream *s = NULL;
    struct emu_graph *g = NULL;

    emu_lock();
    r = capture_stream(h, ptds, &s);
    if (r == CUDA_SUCCESS && !phGraph)
        r = CUDA_ERROR_INVALID_VALUE;
    else if (r == CUDA_SUCCESS && s->capture_status == CU_STREAM_CAPTURE_STATUS_NONE)
        r = CUDA_ERROR_ILLEGAL_STATE;
    if (r == CUDA_SUCCESS && !(g = calloc(1, sizeof *g)))
        r = CUDA_ERROR_OUT_OF_MEMORY;
    if (r == CUDA_SUCCESS) {
        g->magic = EMU_MAGIC_GRAPH;
        g->key = g;
        HASH_ADD_PTR(emu.graphs, key, g);
        s->capture_status = CU_STREAM_CAPTURE_STATUS_NONE;
        *phGraph = (CUgraph)g;
    }
    emu_unlock();
    return r;
}

EMU_API CUresult cuStreamEndCapture(CUstream hStream, CUgraph *phGraph)
{
    EMU_ENTER(cuStreamEndCapture);
    return end_capture(hStream, phGraph, false);
}

EMU_API CUresult cuStreamEndCapture_ptsz(CUstream hStream, CUgraph *phGraph)
{
    EMU_ENTER(cuStreamEndCapture_ptsz);
    return end_capture(hStream, phGraph, true);
}

static CUresult is_capturing(CUstream h, CUstreamCaptureStatus *status, uint64_t *id, bool ptds)
{
    CUresult r;
    struct emu_stream *s = NULL;

    emu_lock();
    r = capture_stream(h, ptds, &s);
    if (r == CUDA_SUCCESS && !status)
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS) {
        *status = (CUstreamCaptureStatus)s->capture_status;
        if (id)
            *id = s->capture_id;
    }
    emu_unlock();
    return r;
}

EMU_API CUresult cuStreamIsCapturing(CUstream hStream, CUstreamCaptureStatus *captureStatus)
{
    EMU_FAST_ENTER(cuStreamIsCapturing);
    return is_capturing(hStream, captureStatus, NULL, false);
}

EMU_API CUresult cuStreamIsCapturing_ptsz(CUstream hStream, CUstreamCaptureStatus *captureStatus)
{
    EMU_FAST_ENTER(cuStreamIsCapturing_ptsz);
    return is_capturing(hStream, captureStatus, NULL, true);
}

static CUresult capture_info(CUstream h, CUstreamCaptureStatus *status, cuuint64_t *id,
                             CUgraph *graph, const CUgraphNode **deps,
                             const CUgraphEdgeData **edges, size_t *ndeps, bool ptds)
{
    CUresult r = is_capturing(h, status, id, ptds);

    if (r != CUDA_SUCCESS)
        return r;
    if (graph)
        *graph = NULL;
    if (deps)
        *deps = NULL;
    if (edges)
        *edges = NULL;
    if (ndeps)
        *ndeps = 0;
    return CUDA_SUCCESS;
}

EMU_API CUresult cuStreamGetCaptureInfo(CUstream hStream, CUstreamCaptureStatus *status,
                                        cuuint64_t *id)
{
    EMU_FAST_ENTER(cuStreamGetCaptureInfo);
    return capture_info(hStream, status, id, NULL, NULL, NULL, NULL, false);
}

EMU_API CUresult cuStreamGetCaptureInfo_ptsz(CUstream hStream, CUstreamCaptureStatus *status,
                                             cuuint64_t *id)
{
    EMU_FAST_ENTER(cuStreamGetCaptureInfo_ptsz);
    return capture_info(hStream, status, id, NULL, NULL, NULL, NULL, true);
}

EMU_API CUresult cuStreamGetCaptureInfo_v2(CUstream hStream, CUstreamCaptureStatus *status,
                                           cuuint64_t *id, CUgraph *graph, const CUgraphNode **deps,
                                           size_t *ndeps)
{
    EMU_FAST_ENTER(cuStreamGetCaptureInfo_v2);
    return capture_info(hStream, status, id, graph, deps, NULL, ndeps, false);
}

EMU_API CUresult cuStreamGetCaptureInfo_v2_ptsz(CUstream hStream, CUstreamCaptureStatus *status,
                                                cuuint64_t *id, CUgraph *graph,
                                                const CUgraphNode **deps, size_t *ndeps)
{
    EMU_FAST_ENTER(cuStreamGetCaptureInfo_v2_ptsz);
    return capture_info(hStream, status, id, graph, deps, NULL, ndeps, true);
}

EMU_API CUresult cuStreamGetCaptureInfo_v3(CUstream hStream, CUstreamCaptureStatus *status,
                                           cuuint64_t *id, CUgraph *graph, const CUgraphNode **deps,
                                           const CUgraphEdgeData **edges, size_t *ndeps)
{
    EMU_FAST_ENTER(cuStreamGetCaptureInfo_v3);
    return capture_info(hStream, status, id, graph, deps, edges, ndeps, false);
}

EMU_API CUresult cuStreamGetCaptureInfo_v3_ptsz(CUstream hStream, CUstreamCaptureStatus *status,
                                                cuuint64_t *id, CUgraph *graph,
                                                const CUgraphNode **deps,
                                                const CUgraphEdgeData **edges, size_t *ndeps)
{
    EMU_FAST_ENTER(cuStreamGetCaptureInfo_v3_ptsz);
    return capture_info(hStream, status, id, graph, deps, edges, ndeps, true);
}

EMU_API CUresult cuGraphDestroy(CUgraph hGraph)
{
    CUresult r;
    struct emu_graph *g = NULL;

    EMU_ENTER(cuGraphDestroy);
    emu_lock();
    r = emu_check_init();
    if (r == CUDA_SUCCESS && hGraph)
        HASH_FIND_PTR(emu.graphs, &hGraph, g);
    if (r == CUDA_SUCCESS && !g)
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS) {
        HASH_DEL(emu.graphs, g);
        free(g);
    }
    emu_unlock();
    return r;
}
