/*
 * ip_ctxcache.c — the interposer remembers each device's primary context, so that a call made
 * in it asks the driver nothing but cuCtxGetCurrent, and forgets it whenever the driver may
 * destroy that context. argv[1]:
 *   "steady"       after the first call, allocations (plain, stream-ordered on a created and on
 *                  the default stream) and cudaMemGetInfo make no cuCtxGetDevice call, and are
 *                  served;
 *   "forget" HOW   after the context was remembered, HOW resets or releases the primary
 *                  context: "runtime" (cudaDeviceReset, through the runtime's own table of
 *                  driver entry points), "driver" (cuDevicePrimaryCtxReset called directly),
 *                  "procaddr" (cuDevicePrimaryCtxReset from cuGetProcAddress), "release"
 *                  (cuDevicePrimaryCtxRetain, then cuDevicePrimaryCtxRelease from
 *                  cuGetProcAddress): the next call asks the driver again (cuCtxGetDevice), the
 *                  one after does not, and allocations are still served;
 *   "bad-device"   the hooks pass the driver's error for a device that does not exist.
 */
#include "ip_prog.h"

typedef uint64_t (*emu_calls_fn)(const char *);
typedef CUresult (*device_fn)(CUdevice);

static uint64_t get_device_calls(void)
{
    emu_calls_fn calls = (emu_calls_fn)dlsym(RTLD_DEFAULT, "fragless_emu_calls");
    CHECK(calls != NULL, "fragless_emu_calls");
    return calls("cuCtxGetDevice");
}

static void mem_get_info(void)
{
    size_t free_b = 0, total_b = 0;
    CHECK(cudaMemGetInfo(&free_b, &total_b) == cudaSuccess && total_b > 0, "cudaMemGetInfo");
}

static void plain_pair(void)
{
    void *p = NULL;
    CHECK(cudaMalloc(&p, 3 << 20) == cudaSuccess, "cudaMalloc");
    ip_touch_rt(p, 3 << 20);
    CHECK(cudaFree(p) == cudaSuccess, "cudaFree");
}

static void async_pair(cudaStream_t s)
{
    void *p = NULL;
    CHECK(cudaMallocAsync(&p, 5000, s) == cudaSuccess, "cudaMallocAsync");
    CHECK(cudaFreeAsync(p, s) == cudaSuccess, "cudaFreeAsync");
}

static void steady(void)
{
    cudaStream_t s = NULL;
    CHECK(cudaStreamCreate(&s) == cudaSuccess, "stream");
    plain_pair();
    fragless_stats_t before = ip_stats0();
    uint64_t queries = get_device_calls();
    for (int i = 0; i < 50; i++) {
        plain_pair();
        async_pair(s);
        async_pair(NULL);
        mem_get_info();
    }
    CHECK(get_device_calls() == queries, "cuCtxGetDevice called %llu times",
          (unsigned long long)(get_device_calls() - queries));
    fragless_stats_t after = ip_stats0();
    ip_expect_served(&before, &after, 150, 150);
    CHECK(cudaStreamSynchronize(s) == cudaSuccess && cudaStreamDestroy(s) == cudaSuccess, "stream");
}

static device_fn proc(const char *name)
{
    void *fn = NULL;
    CHECK(cuGetProcAddress(name, &fn, 13000, CU_GET_PROC_ADDRESS_DEFAULT, NULL) == CUDA_SUCCESS &&
              fn,
          "cuGetProcAddress(%s)", name);
    return (device_fn)fn;
}

static void reset_or_release(const char *how)
{
    CUcontext ctx = NULL;
    if (strcmp(how, "runtime") == 0) {
        CHECK(cudaDeviceReset() == cudaSuccess, "cudaDeviceReset");
    } else if (strcmp(how, "driver") == 0) {
        CHECK(cuDevicePrimaryCtxReset(0) == CUDA_SUCCESS, "cuDevicePrimaryCtxReset");
    } else if (strcmp(how, "procaddr") == 0) {
        CHECK(proc("cuDevicePrimaryCtxReset")(0) == CUDA_SUCCESS, "reset from cuGetProcAddress");
    } else if (strcmp(how, "release") == 0) {
        CHECK(cuDevicePrimaryCtxRetain(&ctx, 0) == CUDA_SUCCESS, "retain");
        CHECK(proc("cuDevicePrimaryCtxRelease")(0) == CUDA_SUCCESS, "release");
    } else {
        CHECK(false, "unknown way %s", how);
    }
}

static void forget(const char *how)
{
    mem_get_info();
    uint64_t queries = get_device_calls();
    mem_get_info();
    CHECK(get_device_calls() == queries, "remembered");
    reset_or_release(how);
    queries = get_device_calls();
    mem_get_info();
    CHECK(get_device_calls() > queries, "forgotten after %s", how);
    queries = get_device_calls();
    mem_get_info();
    CHECK(get_device_calls() == queries, "remembered again");
    fragless_stats_t before = ip_stats0();
    plain_pair();
    fragless_stats_t after = ip_stats0();
    ip_expect_served(&before, &after, 1, 1);
}

static void bad_device(void)
{
    CHECK(cudaFree(NULL) == cudaSuccess, "runtime up");
    CHECK(cuDevicePrimaryCtxReset(-1) == CUDA_ERROR_INVALID_DEVICE, "reset(-1)");
    CHECK(cuDevicePrimaryCtxRelease(1000) == CUDA_ERROR_INVALID_DEVICE, "release(1000)");
    plain_pair();
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "steady") == 0)
        steady();
    else if (strcmp(mode, "forget") == 0 && argc > 2)
        forget(argv[2]);
    else if (strcmp(mode, "bad-device") == 0)
        bad_device();
    else
        CHECK(false, "unknown mode %s", mode);
    printf("ok\n");
    return 0;
}
