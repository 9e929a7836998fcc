/*
 * ip_faults.c — the interposer's failure paths, driven by the emulated device's fault
 * injection. argv[1]:
 *   "init-fails"   run with FRAGLESS_EMU_FAIL=cuInit@1: fragless cannot initialize, so every
 *                  call reaches the real functions (which retry cuInit) and nothing is served;
 *   "oom"          run with a small FRAGLESS_EMU_MEM: an allocation larger than the device
 *                  fails with each API's out-of-memory error, the runtime's calls leave
 *                  cudaErrorMemoryAllocation as the runtime's last error (read once), fragless
 *                  counts exactly those three, and a small allocation still works;
 *   "capture-query" once a capture was begun (and ended) in the process, stream-ordered
 *                  calls ask cuStreamIsCapturing; it fails once: the stream-ordered call
 *                  returns that error (as the runtime's code) and the next one is served;
 *   "ctx-state"    cuDevicePrimaryCtxGetState fails once: fragless cannot tell the context
 *                  is primary, so that allocation goes to the real function; the next is
 *                  served;
 *   "stream-ctx"   (FRAGLESS_EMU_DEVICES=2) stream-ordered calls on a stream of device 1
 *                  while device 0 is current: cuStreamGetCtx or the switch to the stream's
 *                  context failing returns that error and changes nothing; the switch back
 *                  failing leaves the stream's context current, with an error message. (A
 *                  stream's context is asked once and then remembered until some stream is
 *                  destroyed: destroying a scratch stream makes the free ask again.)
 */
#include "ip_prog.h"

typedef int (*emu_fail_fn)(const char *);
typedef size_t (*emu_used_fn)(int);

static void arm(const char *spec)
{
    emu_fail_fn fail = (emu_fail_fn)dlsym(RTLD_DEFAULT, "fragless_emu_fail");
    CHECK(fail && fail(spec) == 0, "arm %s", spec);
}

static void init_fails(void)
{
    void *p = NULL;
    CHECK(cudaMalloc(&p, 1 << 20) == cudaSuccess, "the real cudaMalloc");
    ip_touch_rt(p, 1 << 20);
    CHECK(cudaFree(p) == cudaSuccess, "the real cudaFree");
    fragless_stats_t s;
    CHECK(ip_stats(0, &s) == FRAGLESS_ENODEV, "fragless served nothing");
}

/* The runtime's last error is `e` (as cudaPeekAtLastError and once from cudaGetLastError),
 * then cleared, as after the real runtime's failed call. */
static void expect_last_error(cudaError_t e)
{
    CHECK(cudaPeekAtLastError() == e, "peek: %d, want %d", (int)cudaPeekAtLastError(), (int)e);
    cudaError_t got = cudaGetLastError();
    CHECK(got == e, "last error %d, want %d", (int)got, (int)e);
    CHECK(cudaGetLastError() == cudaSuccess, "cleared by reading it");
}

static void oom(void)
{
    const size_t huge = (size_t)1 << 30;
    void *p = NULL;
    CUdeviceptr d = 0;
    emu_used_fn used = (emu_used_fn)dlsym(RTLD_DEFAULT, "fragless_emu_used");
    CHECK(used != NULL, "fragless_emu_used");
    CHECK(cudaGetLastError() == cudaSuccess, "no error yet");
    size_t held = used(0);
    CHECK(cudaMalloc(&p, huge) == cudaErrorMemoryAllocation, "cudaMalloc OOM");
    CHECK(used(0) == held, "the failed call holds nothing more: %zu -> %zu", held, used(0));
    expect_last_error(cudaErrorMemoryAllocation);
    CHECK(cudaMallocAsync(&p, huge, 0) == cudaErrorMemoryAllocation, "cudaMallocAsync OOM");
    expect_last_error(cudaErrorMemoryAllocation);
    CHECK(cuMemAlloc(&d, huge) == CUDA_ERROR_OUT_OF_MEMORY, "cuMemAlloc OOM");
    expect_last_error(cudaSuccess);
    fragless_stats_t s = ip_stats0();
    CHECK(s.num_ooms == 3, "num_ooms %llu", (unsigned long long)s.num_ooms);
    CHECK(cudaMalloc(&p, 1 << 20) == cudaSuccess, "a small one still works");
    CHECK(cudaFree(p) == cudaSuccess, "cudaFree");
}

static void capture_query(void)
{
    cudaStream_t s = NULL;
    void *p = NULL;
    cudaGraph_t graph = NULL;
    CHECK(cudaStreamCreate(&s) == cudaSuccess, "stream");
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed) == cudaSuccess, "capture");
    CHECK(cudaStreamEndCapture(s, &graph) == cudaSuccess && graph, "end capture");
    CHECK(cudaGraphDestroy(graph) == cudaSuccess, "graph destroy");
    arm("cuStreamIsCapturing@1=CUDA_ERROR_INVALID_HANDLE");
    CHECK(cudaMallocAsync(&p, 4096, s) == cudaErrorInvalidResourceHandle, "query error");
    fragless_stats_t before = ip_stats0();
    CHECK(cudaMallocAsync(&p, 4096, s) == cudaSuccess, "cudaMallocAsync");
    CHECK(cudaFreeAsync(p, s) == cudaSuccess, "cudaFreeAsync");
    CHECK(cudaStreamSynchronize(s) == cudaSuccess, "sync");
    fragless_stats_t after = ip_stats0();
    ip_expect_served(&before, &after, 1, 1);
    CHECK(cudaStreamDestroy(s) == cudaSuccess, "stream destroy");
}

static void ctx_state(void)
{
    void *p = NULL;
    CHECK(cudaFree(NULL) == cudaSuccess, "runtime up");
    arm("cuDevicePrimaryCtxGetState@1=CUDA_ERROR_UNKNOWN");
    fragless_stats_t before = ip_stats0();
    CHECK(cudaMalloc(&p, 1 << 20) == cudaSuccess, "passed through");
    CHECK(cudaFree(p) == cudaSuccess, "freed by the real function");
    fragless_stats_t mid = ip_stats0();
    ip_expect_served(&before, &mid, 0, 0);
    CHECK(cudaMalloc(&p, 1 << 20) == cudaSuccess, "served");
    CHECK(cudaFree(p) == cudaSuccess, "cudaFree");
    fragless_stats_t after = ip_stats0();
    ip_expect_served(&mid, &after, 1, 1);
}

/* Arms a failure of the next call (which = 1) or the one after (2) of entry point `name`:
 * the emulated device counts a rule's calls from when it is armed. */
static void arm_next(const char *name, int which, const char *code)
{
    char spec[128];
    snprintf(spec, sizeof spec, "%s@%d=%s", name, which, code);
    arm(spec);
}

static void expect_context(CUcontext want, const char *what)
{
    CUcontext cur = NULL;
    CHECK(cuCtxGetCurrent(&cur) == CUDA_SUCCESS && cur == want, "%s", what);
}

static void stream_ctx(void)
{
    cudaStream_t s1 = NULL;
    void *p = NULL;
    CUcontext ctx0 = NULL, ctx1 = NULL;
    CHECK(cudaSetDevice(1) == cudaSuccess && cudaStreamCreate(&s1) == cudaSuccess, "s1");
    CHECK(cuCtxGetCurrent(&ctx1) == CUDA_SUCCESS, "device 1's context");
    CHECK(cudaSetDevice(0) == cudaSuccess && cudaFree(NULL) == cudaSuccess, "device 0");
    CHECK(cuCtxGetCurrent(&ctx0) == CUDA_SUCCESS && ctx0 != ctx1, "device 0's context");

    arm_next("cuStreamGetCtx", 1, "CUDA_ERROR_INVALID_HANDLE");
    CHECK(cudaMallocAsync(&p, 4096, s1) == cudaErrorInvalidResourceHandle, "stream query fails");
    arm_next("cuCtxSetCurrent", 1, "CUDA_ERROR_INVALID_CONTEXT");
    cudaError_t e = cudaMallocAsync(&p, 4096, s1);
    CHECK(e == cudaErrorDeviceUninitialized, "switch fails: %d", (int)e);
    expect_context(ctx0, "a failed switch changes nothing");
    fragless_stats_t s;
    CHECK(ip_stats(1, &s) == FRAGLESS_ENODEV, "nothing served on device 1");

    arm_next("cuCtxSetCurrent", 2, "CUDA_ERROR_INVALID_CONTEXT");
    CHECK(cudaMallocAsync(&p, 4096, s1) == cudaSuccess, "served; the restore fails");
    expect_context(ctx1, "the stream's context stays current (and an error says so)");
    CHECK(cudaSetDevice(0) == cudaSuccess, "back to device 0");

    cudaStream_t scratch = NULL;
    CHECK(cudaStreamCreate(&scratch) == cudaSuccess && cudaStreamDestroy(scratch) == cudaSuccess,
          "scratch stream");
    arm_next("cuStreamGetCtx", 1, "CUDA_ERROR_INVALID_HANDLE");
    CHECK(cudaFreeAsync(p, s1) == cudaErrorInvalidResourceHandle, "free: stream query fails");
    CHECK(ip_stats(1, &s) == 0 && s.num_frees == 0 && s.num_allocs == 1, "still allocated");
    CHECK(cudaFreeAsync(p, s1) == cudaSuccess, "free");
    CHECK(cudaStreamSynchronize(s1) == cudaSuccess && cudaStreamDestroy(s1) == cudaSuccess, "end");
    CHECK(ip_stats(1, &s) == 0 && s.num_frees == 1, "freed on device 1");
    expect_context(ctx0, "device 0's context is current");
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    if (!dlsym(RTLD_DEFAULT, "fragless_emu_fail")) {
        printf("ok %s skipped: needs the emulated device's fault injection\n", mode);
        return 0;
    }
    if (strcmp(mode, "init-fails") == 0)
        init_fails();
    else if (strcmp(mode, "oom") == 0)
        oom();
    else if (strcmp(mode, "capture-query") == 0)
        capture_query();
    else if (strcmp(mode, "ctx-state") == 0)
        ctx_state();
    else if (strcmp(mode, "stream-ctx") == 0)
        stream_ctx();
    else
        CHECK(false, "unknown mode %s", mode);
    printf("ok %s\n", mode);
    return 0;
}
