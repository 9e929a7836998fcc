/*
 * ip_streams.c — fragless remembers each stream's context, and forgets it whenever a stream
 * or a context may have been destroyed, so that a new stream (possibly with the handle of a
 * destroyed one) is served from its own device's heap. argv[1]:
 *   "steady"       pairs on a created stream ask cuStreamGetCtx once, then not again, until
 *                  a stream is destroyed;
 *   "destroy" HOW  (FRAGLESS_EMU_DEVICES=2) with device 0 current, a stream of device 1 is used
 *                  (its context remembered), then destroyed through HOW — "runtime"
 *                  (cudaStreamDestroy), "driver" (cuStreamDestroy_v2 called directly),
 *                  "procaddr" (cuStreamDestroy from cuGetProcAddress), "driver-v1" (the
 *                  pre-4.0 cuStreamDestroy), "procaddr-v1" (the same asked for version 3000)
 *                  — and a stream is created
 *                  on device 0 (the emulated device tends to give it the same handle): pairs on
 *                  it are served on device 0, and the caller's context stays current;
 *   "reset" HOW    a stream of device 0 is used, the primary context is reset through HOW —
 *                  "runtime" (cudaDeviceReset), "driver" (cuDevicePrimaryCtxReset), "release"
 *                  (cuDevicePrimaryCtxRelease_v2 of the runtime's reference) — and a new
 *                  stream (the emulated device tends to give it the same handle) has its
 *                  context asked again, and pairs on it are served in the new context, which
 *                  stays current.
 */
#include "ip_prog.h"

typedef uint64_t (*emu_calls_fn)(const char *);
typedef CUresult (*destroy_fn)(CUstream);

static uint64_t calls(const char *name)
{
    emu_calls_fn fn = (emu_calls_fn)dlsym(RTLD_DEFAULT, "fragless_emu_calls");
    CHECK(fn != NULL, "fragless_emu_calls");
    return fn(name);
}

static int device_of(void *p)
{
    int ordinal = -1;
    CHECK(cuPointerGetAttribute(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                                (CUdeviceptr)(uintptr_t)p) == CUDA_SUCCESS,
          "device ordinal of %p", p);
    return ordinal;
}

static CUcontext current(void)
{
    CUcontext ctx = NULL;
    CHECK(cuCtxGetCurrent(&ctx) == CUDA_SUCCESS && ctx, "a current context");
    return ctx;
}

/* A pair on s served by fragless on `device`, with the caller's context current after. */
static void pair_on(cudaStream_t s, int device)
{
    CUcontext ctx = current();
    fragless_stats_t before = ip_stats_of(device);
    void *p = NULL;
    CHECK(cudaMallocAsync(&p, 6000, s) == cudaSuccess, "cudaMallocAsync");
    CHECK(device_of(p) == device, "allocated on device %d, want %d", device_of(p), device);
    CHECK(current() == ctx, "the caller's context is current after the allocation");
    ip_touch_drv((CUdeviceptr)(uintptr_t)p, 6000);
    CHECK(cudaFreeAsync(p, s) == cudaSuccess, "cudaFreeAsync");
    CHECK(current() == ctx, "the caller's context is current after the free");
    CHECK(cudaStreamSynchronize(s) == cudaSuccess, "sync");
    fragless_stats_t after = ip_stats_of(device);
    ip_expect_served(&before, &after, 1, 1);
}

static cudaStream_t new_stream(void)
{
    cudaStream_t s = NULL;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess, "stream");
    return s;
}

static void steady(void)
{
    cudaStream_t s = new_stream();
    pair_on(s, 0);
    uint64_t queries = calls("cuStreamGetCtx");
    for (int i = 0; i < 20; i++)
        pair_on(s, 0);
    CHECK(calls("cuStreamGetCtx") == queries, "the stream's context is remembered");
    cudaStream_t other = new_stream();
    CHECK(cudaStreamDestroy(other) == cudaSuccess, "destroy another stream");
    pair_on(s, 0);
    CHECK(calls("cuStreamGetCtx") == queries + 1, "asked again after a stream was destroyed");
    CHECK(cudaStreamDestroy(s) == cudaSuccess, "destroy");
}

static void destroy(cudaStream_t s, const char *how)
{
    void *fn = NULL;
    if (strcmp(how, "runtime") == 0) {
        CHECK(cudaStreamDestroy(s) == cudaSuccess, "cudaStreamDestroy");
    } else if (strcmp(how, "driver") == 0) {
        CHECK(cuStreamDestroy_v2((CUstream)s) == CUDA_SUCCESS, "cuStreamDestroy_v2");
    } else if (strcmp(how, "driver-v1") == 0) {
        fn = dlsym(RTLD_DEFAULT, "cuStreamDestroy");
        CHECK(fn && ((destroy_fn)fn)((CUstream)s) == CUDA_SUCCESS, "cuStreamDestroy");
    } else if (strcmp(how, "procaddr") == 0 || strcmp(how, "procaddr-v1") == 0) {
        int version = strcmp(how, "procaddr") == 0 ? 13000 : 3000;
        CUresult r = cuGetProcAddress("cuStreamDestroy", &fn, version, 0, NULL);
        CHECK(r == CUDA_SUCCESS && fn, "cuGetProcAddress(cuStreamDestroy, %d)", version);
        CHECK(((destroy_fn)fn)((CUstream)s) == CUDA_SUCCESS, "cuStreamDestroy from procaddr");
    } else {
        CHECK(false, "unknown way %s", how);
    }
}

static void destroyed(const char *how)
{
    int count = 0;
    CHECK(cudaGetDeviceCount(&count) == cudaSuccess && count >= 2, "two devices: %d", count);
    CHECK(cudaSetDevice(1) == cudaSuccess, "device 1");
    cudaStream_t s1 = new_stream();
    CHECK(cudaSetDevice(0) == cudaSuccess && cudaFree(NULL) == cudaSuccess, "device 0");
    pair_on(s1, 1);
    destroy(s1, how);
    cudaStream_t s0 = new_stream();
    printf("stream handle %s\n", s0 == s1 ? "reused" : "not reused");
    pair_on(s0, 0);
    pair_on(s0, 0);
    CHECK(cudaStreamDestroy(s0) == cudaSuccess, "destroy");
}

static void reset(const char *how)
{
    CUcontext ctx = NULL;
    cudaStream_t s = new_stream();
    pair_on(s, 0);
    CHECK(cudaStreamDestroy(s) == cudaSuccess, "destroy");
    s = new_stream();
    pair_on(s, 0); /* remembered in this epoch */
    if (strcmp(how, "runtime") == 0) {
        CHECK(cudaDeviceReset() == cudaSuccess, "cudaDeviceReset");
    } else if (strcmp(how, "driver") == 0) {
        CHECK(cuDevicePrimaryCtxReset(0) == CUDA_SUCCESS, "cuDevicePrimaryCtxReset");
    } else if (strcmp(how, "release") == 0) {
        CHECK(cuDevicePrimaryCtxRelease(0) == CUDA_SUCCESS, "release the runtime's reference");
        CHECK(cuDevicePrimaryCtxRetain(&ctx, 0) == CUDA_SUCCESS && cuCtxSetCurrent(ctx) == 0,
              "a new primary context");
    } else {
        CHECK(false, "unknown way %s", how);
    }
    cudaStream_t t = new_stream();
    printf("stream handle %s\n", t == s ? "reused" : "not reused");
    uint64_t queries = calls("cuStreamGetCtx");
    pair_on(t, 0);
    CHECK(calls("cuStreamGetCtx") > queries, "the new stream's context is asked after %s", how);
    CHECK(cudaStreamDestroy(t) == cudaSuccess, "destroy");
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    if (!dlsym(RTLD_DEFAULT, "fragless_emu_calls")) {
        printf("ok %s skipped: needs the emulated device's call counts\n", mode);
        return 0;
    }
    if (strcmp(mode, "steady") == 0)
        steady();
    else if (strcmp(mode, "destroy") == 0 && argc > 2)
        destroyed(argv[2]);
    else if (strcmp(mode, "reset") == 0 && argc > 2)
        reset(argv[2]);
    else
        CHECK(false, "unknown mode %s", mode);
    printf("ok %s\n", mode);
    return 0;
}
