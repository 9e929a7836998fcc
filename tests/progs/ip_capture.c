/*
 * ip_capture.c — fragless asks whether a stream is capturing only once a capture has been
 * begun in the process, and it notices a capture begun through any entry point. argv[1]:
 *   "none"         no capture is ever begun: stream-ordered pairs on a created stream ask
 *                  nothing but cuCtxGetCurrent once the stream's context is known (at most two
 *                  such calls per pair, no cuStreamIsCapturing, no cuStreamGetCtx) and are
 *                  served;
 *   HOW            a capture begun on a created stream through HOW — "runtime"
 *                  (cudaStreamBeginCapture), "runtime-ptsz", "driver" (cuStreamBeginCapture_v2
 *                  called directly), "driver-ptsz", "procaddr" (the pointer cuGetProcAddress
 *                  hands out), "procaddr-ptsz" (per-thread default stream flavour),
 *                  "entry-point" (cudaGetDriverEntryPointByVersion), "dlsym", CUDA 10.0's
 *                  mode-less form "driver-v1", "driver-v1-ptsz", "procaddr-v1" (asked for
 *                  version 10000): before it no
 *                  pair asks cuStreamIsCapturing; under it, stream-ordered allocations go to
 *                  the real allocator and a fragless block freed on the stream is refused by
 *                  both APIs; after it ends, pairs are served again (and still ask);
 *   "to-graph" / "runtime-to-graph"  cuStreamBeginCaptureToGraph / cudaStreamBeginCaptureToGraph,
 *                  which the emulated device lacks: the call fails, but from then on
 *                  stream-ordered calls ask whether their stream is capturing.
 */
#include "ip_prog.h"

typedef uint64_t (*emu_calls_fn)(const char *);
typedef CUresult (*begin_fn)(CUstream, CUstreamCaptureMode);
typedef CUresult (*begin_v1_fn)(CUstream);
typedef CUresult (*to_graph_fn)(CUstream, CUgraph, const CUgraphNode *, const CUgraphEdgeData *,
                                size_t, CUstreamCaptureMode);
typedef cudaError_t (*rt_begin_fn)(cudaStream_t, enum cudaStreamCaptureMode);
typedef cudaError_t (*rt_to_graph_fn)(cudaStream_t, cudaGraph_t, const cudaGraphNode_t *,
                                      const cudaGraphEdgeData *, size_t,
                                      enum cudaStreamCaptureMode);

static uint64_t calls(const char *name)
{
    emu_calls_fn fn = (emu_calls_fn)dlsym(RTLD_DEFAULT, "fragless_emu_calls");
    CHECK(fn != NULL, "fragless_emu_calls");
    return fn(name);
}

static void *must(const char *name)
{
    void *p = dlsym(RTLD_DEFAULT, name);
    CHECK(p != NULL, "%s exported", name);
    return p;
}

/* `n` stream-ordered pairs on s, all served by fragless. */
static void served_pairs(cudaStream_t s, int n)
{
    fragless_stats_t before = ip_stats0();
    for (int i = 0; i < n; i++) {
        void *p = NULL;
        CHECK(cudaMallocAsync(&p, 5000, s) == cudaSuccess, "cudaMallocAsync");
        CHECK(cudaFreeAsync(p, s) == cudaSuccess, "cudaFreeAsync");
    }
    fragless_stats_t after = ip_stats0();
    ip_expect_served(&before, &after, (unsigned)n, (unsigned)n);
}

/* The calls a stream-ordered pair could make to learn its stream's context and state (all
 * of fragless's calls but those of its statistics thread, which "*" would count too). */
static const char *const context_calls[] = {"cuCtxGetCurrent", "cuCtxSetCurrent", "cuCtxGetDevice",
                                            "cuStreamGetCtx", "cuStreamIsCapturing"};

static uint64_t context_calls_made(void)
{
    uint64_t n = 0;
    for (size_t i = 0; i < sizeof context_calls / sizeof context_calls[0]; i++)
        n += calls(context_calls[i]);
    return n;
}

static void no_capture(cudaStream_t s)
{
    const int n = 50;
    served_pairs(s, 1); /* learns the stream's context */
    uint64_t made = context_calls_made(), queries = calls("cuStreamIsCapturing");
    uint64_t ctx_queries = calls("cuStreamGetCtx");
    served_pairs(s, n);
    made = context_calls_made() - made;
    CHECK(calls("cuStreamIsCapturing") == queries, "no capture query without a capture");
    CHECK(calls("cuStreamGetCtx") == ctx_queries, "the stream's context is remembered");
    CHECK(made <= 2 * (uint64_t)n, "%llu context calls for %d pairs", (unsigned long long)made, n);
}

static void *procaddr(const char *name, int version, cuuint64_t flags)
{
    void *fn = NULL;
    CUdriverProcAddressQueryResult st;
    CHECK(cuGetProcAddress(name, &fn, version, flags, &st) == CUDA_SUCCESS && fn,
          "cuGetProcAddress(%s, %d)", name, version);
    return fn;
}

static CUresult begin_by_procaddr(CUstream s, cuuint64_t flags)
{
    begin_fn fn = (begin_fn)procaddr("cuStreamBeginCapture", 13000, flags);
    return fn(s, CU_STREAM_CAPTURE_MODE_RELAXED);
}

static CUresult begin_by_entry_point(CUstream s)
{
    void *fn = NULL;
    enum cudaDriverEntryPointQueryResult st;
    CHECK(cudaGetDriverEntryPointByVersion("cuStreamBeginCapture", &fn, 13000, cudaEnableDefault,
                                           &st) == cudaSuccess &&
              fn,
          "cudaGetDriverEntryPointByVersion");
    return ((begin_fn)fn)(s, CU_STREAM_CAPTURE_MODE_RELAXED);
}

/* Begins a capture on s through `how`; false for an unknown way. */
static bool begin(const char *how, cudaStream_t s)
{
    const enum cudaStreamCaptureMode relaxed = cudaStreamCaptureModeRelaxed;
    const CUstreamCaptureMode drelaxed = CU_STREAM_CAPTURE_MODE_RELAXED;
    CUresult r = CUDA_ERROR_UNKNOWN;
    if (strcmp(how, "runtime") == 0)
        r = (CUresult)cudaStreamBeginCapture(s, relaxed);
    else if (strcmp(how, "runtime-ptsz") == 0)
        r = (CUresult)((rt_begin_fn)must("cudaStreamBeginCapture_ptsz"))(s, relaxed);
    else if (strcmp(how, "driver") == 0)
        r = cuStreamBeginCapture_v2((CUstream)s, drelaxed);
    else if (strcmp(how, "driver-ptsz") == 0)
        r = ((begin_fn)must("cuStreamBeginCapture_v2_ptsz"))((CUstream)s, drelaxed);
    else if (strcmp(how, "procaddr") == 0)
        r = begin_by_procaddr((CUstream)s, CU_GET_PROC_ADDRESS_DEFAULT);
    else if (strcmp(how, "procaddr-ptsz") == 0)
        r = begin_by_procaddr((CUstream)s, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
    else if (strcmp(how, "entry-point") == 0)
        r = begin_by_entry_point((CUstream)s);
    else if (strcmp(how, "dlsym") == 0)
        r = ((begin_fn)must("cuStreamBeginCapture_v2"))((CUstream)s, drelaxed);
    else if (strcmp(how, "driver-v1") == 0)
        r = ((begin_v1_fn)must("cuStreamBeginCapture"))((CUstream)s);
    else if (strcmp(how, "driver-v1-ptsz") == 0)
        r = ((begin_v1_fn)must("cuStreamBeginCapture_ptsz"))((CUstream)s);
    else if (strcmp(how, "procaddr-v1") == 0)
        r = ((begin_v1_fn)procaddr("cuStreamBeginCapture", 10000, 0))((CUstream)s);
    else
        return false;
    CHECK(r == CUDA_SUCCESS, "capture begun through %s: %d", how, (int)r);
    return true;
}

static void under_capture(cudaStream_t s, void *mine)
{
    fragless_stats_t before = ip_stats0();
    void *g = NULL;
    CUdeviceptr d = 0;
    CHECK(cudaMallocAsync(&g, 4096, s) == cudaSuccess, "cudaMallocAsync under capture");
    CHECK(cuMemAllocAsync(&d, 4096, (CUstream)s) == CUDA_SUCCESS, "cuMemAllocAsync under capture");
    CHECK(cudaFreeAsync(g, s) == cudaSuccess, "cudaFreeAsync under capture");
    CHECK(cuMemFreeAsync(d, (CUstream)s) == CUDA_SUCCESS, "cuMemFreeAsync under capture");
    CHECK(cudaFreeAsync(mine, s) == cudaErrorStreamCaptureUnsupported,
          "a fragless block freed under capture is refused");
    CHECK(cuMemFreeAsync((CUdeviceptr)(uintptr_t)mine, (CUstream)s) ==
              CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
          "by the driver API too");
    fragless_stats_t after = ip_stats0();
    ip_expect_served(&before, &after, 0, 0);
}

static void captured(const char *how, cudaStream_t s)
{
    void *mine = NULL;
    CHECK(cudaMalloc(&mine, 4096) == cudaSuccess, "cudaMalloc");
    uint64_t queries = calls("cuStreamIsCapturing");
    served_pairs(s, 3);
    CHECK(calls("cuStreamIsCapturing") == queries, "no capture query before a capture");
    CHECK(begin(how, s), "unknown way %s", how);
    under_capture(s, mine);
    cudaGraph_t graph = NULL;
    CHECK(cudaStreamEndCapture(s, &graph) == cudaSuccess && graph, "end capture");
    CHECK(cudaGraphDestroy(graph) == cudaSuccess, "graph destroy");
    queries = calls("cuStreamIsCapturing");
    served_pairs(s, 3);
    CHECK(calls("cuStreamIsCapturing") > queries, "capture queries once a capture was begun");
    CHECK(cudaFree(mine) == cudaSuccess, "cudaFree");
}

static void to_graph(bool runtime, cudaStream_t s)
{
    uint64_t queries = calls("cuStreamIsCapturing");
    served_pairs(s, 3);
    CHECK(calls("cuStreamIsCapturing") == queries, "no capture query before a capture");
    if (runtime) {
        rt_to_graph_fn fn = (rt_to_graph_fn)must("cudaStreamBeginCaptureToGraph");
        CHECK(fn(s, NULL, NULL, NULL, 0, cudaStreamCaptureModeRelaxed) != cudaSuccess,
              "the emulated runtime has no cudaStreamBeginCaptureToGraph");
    } else {
        to_graph_fn fn = (to_graph_fn)must("cuStreamBeginCaptureToGraph");
        CHECK(fn((CUstream)s, NULL, NULL, NULL, 0, CU_STREAM_CAPTURE_MODE_RELAXED) ==
                  CUDA_ERROR_NOT_SUPPORTED,
              "the emulated driver has no cuStreamBeginCaptureToGraph");
    }
    served_pairs(s, 3);
    CHECK(calls("cuStreamIsCapturing") > queries, "capture queries once a capture was begun");
}

int main(int argc, char **argv)
{
    const char *how = argc > 1 ? argv[1] : "";
    if (!dlsym(RTLD_DEFAULT, "fragless_emu_calls")) {
        printf("ok %s skipped: needs the emulated device's call counts\n", how);
        return 0;
    }
    cudaStream_t s = NULL;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess, "stream");
    if (strcmp(how, "none") == 0)
        no_capture(s);
    else if (strcmp(how, "to-graph") == 0 || strcmp(how, "runtime-to-graph") == 0)
        to_graph(how[0] == 'r', s);
    else
        captured(how, s);
    CHECK(cudaStreamSynchronize(s) == cudaSuccess && cudaStreamDestroy(s) == cudaSuccess, "end");
    printf("ok %s\n", how);
    return 0;
}
