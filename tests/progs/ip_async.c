/*
 * ip_async.c — the stream-ordered calls reach fragless: cudaMallocAsync/cudaFreeAsync (and
 * their per-thread-stream _ptsz forms), cuMemAllocAsync/cuMemFreeAsync; a stream under graph
 * capture goes to the real stream-ordered allocator, and a fragless block freed on a
 * capturing stream is refused (by either API) rather than freed out of order; a free on a
 * destroyed stream fails and frees nothing.
 */
#include "ip_prog.h"

typedef cudaError_t (*malloc_async_fn)(void **, size_t, cudaStream_t);
typedef cudaError_t (*free_async_fn)(void *, cudaStream_t);

static void *must(const char *name)
{
    void *p = dlsym(RTLD_DEFAULT, name);
    CHECK(p != NULL, "%s exported", name);
    return p;
}

static void served(cudaStream_t s)
{
    const size_t n = 1 << 20;
    malloc_async_fn malloc_ptsz = (malloc_async_fn)must("cudaMallocAsync_ptsz");
    free_async_fn free_ptsz = (free_async_fn)must("cudaFreeAsync_ptsz");
    fragless_stats_t before = ip_stats0();
    void *a = NULL, *b = NULL;
    CUdeviceptr c = 0;
    CHECK(cudaMallocAsync(&a, n, s) == cudaSuccess, "cudaMallocAsync");
    CHECK(malloc_ptsz(&b, n, NULL) == cudaSuccess, "cudaMallocAsync_ptsz");
    CHECK(cuMemAllocAsync(&c, n, (CUstream)s) == CUDA_SUCCESS, "cuMemAllocAsync");
    CHECK(cudaStreamSynchronize(s) == cudaSuccess, "sync");
    ip_touch_rt(a, n);
    ip_touch_rt(b, n);
    ip_touch_drv(c, n);
    CHECK(cudaFreeAsync(a, s) == cudaSuccess, "cudaFreeAsync");
    CHECK(free_ptsz(b, NULL) == cudaSuccess, "cudaFreeAsync_ptsz");
    CHECK(cuMemFreeAsync(c, (CUstream)s) == CUDA_SUCCESS, "cuMemFreeAsync");
    CHECK(cudaStreamSynchronize(s) == cudaSuccess, "sync");
    fragless_stats_t after = ip_stats0();
    ip_expect_served(&before, &after, 3, 3);
}

static void captured(cudaStream_t s)
{
    void *mine = NULL, *g = NULL;
    CHECK(cudaMalloc(&mine, 4096) == cudaSuccess, "cudaMalloc");
    fragless_stats_t before = ip_stats0();
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed) == cudaSuccess, "capture");
    CHECK(cudaMallocAsync(&g, 4096, s) == cudaSuccess, "cudaMallocAsync under capture");
    CHECK(cudaFreeAsync(g, s) == cudaSuccess, "cudaFreeAsync under capture");
    CHECK(cudaFreeAsync(mine, s) == cudaErrorStreamCaptureUnsupported,
          "a fragless block freed under capture is refused");
    CUdeviceptr d = 0;
    CHECK(cuMemAllocAsync(&d, 4096, (CUstream)s) == CUDA_SUCCESS, "cuMemAllocAsync under capture");
    CHECK(cuMemFreeAsync(d, (CUstream)s) == CUDA_SUCCESS, "cuMemFreeAsync under capture");
    CHECK(cuMemFreeAsync((CUdeviceptr)(uintptr_t)mine, (CUstream)s) ==
              CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,
          "the driver API refuses it too");
    cudaGraph_t graph = NULL;
    cudaStreamEndCapture(s, &graph);
    if (graph)
        cudaGraphDestroy(graph);
    fragless_stats_t after = ip_stats0();
    ip_expect_served(&before, &after, 0, 0);
    CHECK(cudaFree(mine) == cudaSuccess, "cudaFree");
}

/* A stream-ordered free on a destroyed stream gets the driver's error and frees nothing, also
 * for a block the calling thread carved from its own region (whose free needs no driver). */
static void destroyed_stream(cudaStream_t s)
{
    cudaStream_t gone = NULL;
    CUdeviceptr a = 0, p = 0;
    CHECK(cuMemAllocAsync(&a, 4096, (CUstream)s) == CUDA_SUCCESS, "cuMemAllocAsync a");
    CHECK(cuMemAllocAsync(&p, 4096, (CUstream)s) == CUDA_SUCCESS, "cuMemAllocAsync p");
    CHECK(cudaStreamCreate(&gone) == cudaSuccess, "stream");
    CHECK(cuMemFreeAsync(a, (CUstream)gone) == CUDA_SUCCESS, "free on a live stream");
    CHECK(cudaStreamDestroy(gone) == cudaSuccess, "stream destroy");
    fragless_stats_t before = ip_stats0();
    CUresult r = cuMemFreeAsync(p, (CUstream)gone);
    CHECK(r != CUDA_SUCCESS, "a free on a destroyed stream succeeded");
    fragless_stats_t after = ip_stats0();
    ip_expect_served(&before, &after, 0, 0);
    CHECK(cuMemFreeAsync(p, (CUstream)s) == CUDA_SUCCESS, "p is still live");
    CHECK(cudaStreamSynchronize(s) == cudaSuccess, "sync");
}

int main(void)
{
    cudaStream_t s = NULL;
    CHECK(cudaStreamCreate(&s) == cudaSuccess, "stream");
    served(s);
    destroyed_stream(s);
    captured(s);
    CHECK(cudaStreamDestroy(s) == cudaSuccess, "stream destroy");
    printf("ok async\n");
    return 0;
}
