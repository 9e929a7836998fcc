/*
 * ip_runtime.c — the runtime API path: cudaMalloc/cudaFree/cudaMemGetInfo reach fragless.
 * argv[1]: "alloc" (default), "free-null-first" (cudaFree(NULL) is the first CUDA call),
 * "null-out" (NULL out-pointers get the documented error), "passthrough" (run with
 * FRAGLESS_CONF=passthrough:true: nothing goes through fragless), "ipc" (an IPC handle for a
 * fragless pointer is refused), "api" (the public C API's argument checks and answers before
 * and after first use).
 */
#include "ip_prog.h"

static void alloc_and_free(void)
{
    fragless_stats_t before = ip_stats0();
    void *p = NULL;
    CHECK(cudaMalloc(&p, 3 << 20) == cudaSuccess, "cudaMalloc");
    CHECK(p != NULL, "pointer");
    ip_touch_rt(p, 3 << 20);
    fragless_stats_t mid = ip_stats0();
    CHECK(mid.allocated_bytes.current >= before.allocated_bytes.current + (3 << 20),
          "allocated_bytes %llu", (unsigned long long)mid.allocated_bytes.current);
    size_t free_b = 0, total_b = 0;
    CHECK(cudaMemGetInfo(&free_b, &total_b) == cudaSuccess, "cudaMemGetInfo");
    CHECK(total_b > 0 && free_b <= total_b, "free %zu total %zu", free_b, total_b);
    CHECK(cudaFree(p) == cudaSuccess, "cudaFree");
    fragless_stats_t after = ip_stats0();
    ip_expect_served(&before, &after, 1, 1);
    CHECK(after.driver_calls > 0, "driver calls counted");
}

static void null_out(void)
{
    CHECK(cudaMalloc(NULL, 16) == cudaErrorInvalidValue, "cudaMalloc(NULL)");
    CHECK(cudaMallocAsync(NULL, 16, 0) == cudaErrorInvalidValue, "cudaMallocAsync(NULL)");
    CHECK(cudaMemGetInfo(NULL, NULL) == cudaErrorInvalidValue, "cudaMemGetInfo(NULL)");
    void *p = NULL;
    CHECK(cudaMalloc(&p, 16) == cudaSuccess, "cudaMalloc");
    CHECK(cudaIpcGetMemHandle(NULL, p) != cudaSuccess, "cudaIpcGetMemHandle(NULL)");
    CUdeviceptr d = 0;
    CHECK(cuMemAlloc(NULL, 16) == CUDA_ERROR_INVALID_VALUE, "cuMemAlloc(NULL)");
    CHECK(cuMemAllocAsync(NULL, 16, NULL) == CUDA_ERROR_INVALID_VALUE, "cuMemAllocAsync(NULL)");
    CHECK(cuMemGetInfo(NULL, NULL) == CUDA_ERROR_INVALID_VALUE, "cuMemGetInfo(NULL)");
    CHECK(cuPointerGetAttribute(NULL, CU_POINTER_ATTRIBUTE_RANGE_SIZE, (CUdeviceptr)p) ==
              CUDA_ERROR_INVALID_VALUE,
          "cuPointerGetAttribute(NULL)");
    CHECK(cuMemGetAddressRange(NULL, NULL, (CUdeviceptr)p) == CUDA_SUCCESS,
          "cuMemGetAddressRange(NULL, NULL) is allowed");
    CHECK(cuMemAlloc(&d, 0) == CUDA_ERROR_INVALID_VALUE, "cuMemAlloc(0) as the driver says");
    CHECK(cudaFree(p) == cudaSuccess, "cudaFree");
}

typedef uint64_t (*emu_calls_fn)(const char *);

static void passthrough(void)
{
    fragless_stats_t s;
    void *p = NULL;
    CHECK(cudaMalloc(&p, 1 << 20) == cudaSuccess, "cudaMalloc");
    ip_touch_rt(p, 1 << 20);
    CHECK(ip_stats(0, &s) == FRAGLESS_EDISABLED, "stats say pass-through");
    CHECK(cudaFree(p) == cudaSuccess, "cudaFree");
    /* On the emulated device: every call reaches the driver (fragless would cache instead). */
    emu_calls_fn calls = (emu_calls_fn)dlsym(RTLD_DEFAULT, "fragless_emu_calls");
    if (!calls)
        return;
    uint64_t allocs = calls("cuMemAlloc_v2"), frees = calls("cuMemFree_v2");
    for (int i = 0; i < 3; i++) {
        CHECK(cudaMalloc(&p, 1 << 20) == cudaSuccess, "cudaMalloc");
        CHECK(cudaFree(p) == cudaSuccess, "cudaFree");
    }
    CHECK(calls("cuMemAlloc_v2") == allocs + 3 && calls("cuMemFree_v2") == frees + 3,
          "the driver saw %llu allocations and %llu frees, want 3 and 3",
          (unsigned long long)(calls("cuMemAlloc_v2") - allocs),
          (unsigned long long)(calls("cuMemFree_v2") - frees));
}

typedef CUresult (*ipc_fn)(CUipcMemHandle *, CUdeviceptr);

static void ipc(void)
{
    void *p = NULL;
    cudaIpcMemHandle_t h;
    CHECK(cudaMalloc(&p, 1 << 20) == cudaSuccess, "cudaMalloc");
    CHECK(cudaIpcGetMemHandle(&h, p) == cudaErrorNotSupported, "runtime IPC refused");
    /* The driver's form, through fragless's export (the emulated driver has none). */
    ipc_fn drv_ipc = (ipc_fn)dlsym(RTLD_DEFAULT, "cuIpcGetMemHandle");
    CUipcMemHandle dh;
    CHECK(drv_ipc && drv_ipc(&dh, (CUdeviceptr)p) == CUDA_ERROR_NOT_SUPPORTED,
          "driver IPC refused");
    CHECK(cudaFree(p) == cudaSuccess, "cudaFree");
}

typedef int (*reset_fn)(int);
typedef int (*empty_fn)(int, size_t *);
typedef const char *(*version_fn)(void);

static void api(void)
{
    ip_get_stats_fn get = (ip_get_stats_fn)dlsym(RTLD_DEFAULT, "fragless_get_stats");
    reset_fn reset = (reset_fn)dlsym(RTLD_DEFAULT, "fragless_reset_peak_stats");
    empty_fn empty = (empty_fn)dlsym(RTLD_DEFAULT, "fragless_empty_cache");
    version_fn version = (version_fn)dlsym(RTLD_DEFAULT, "fragless_version");
    CHECK(get && reset && empty && version, "API exported");
    CHECK(strcmp(version(), FRAGLESS_VERSION_STRING) == 0, "version %s", version());
    fragless_stats_t s;
    memset(&s, 0, sizeof s);
    s.size = sizeof s;
    CHECK(get(0, NULL) == FRAGLESS_EINVAL, "NULL");
    CHECK(get(0, &s) == FRAGLESS_ENODEV, "before any CUDA use");
    CHECK(get(-1, &s) == FRAGLESS_ENODEV && get(100000, &s) == FRAGLESS_ENODEV, "no device");
    CHECK(reset(0) == FRAGLESS_ENODEV && empty(0, NULL) == FRAGLESS_ENODEV, "unused device");
    size_t released = 99;
    CHECK(reset(-1) == 0 && empty(-1, &released) == 0 && released == 0, "all devices: none");
    s.size = 8;
    CHECK(get(0, &s) == FRAGLESS_EINVAL, "size smaller than the header");

    void *p = NULL;
    CHECK(cudaMalloc(&p, 1 << 20) == cudaSuccess, "cudaMalloc");
    /* An older caller's struct: the header and the first statistic only. */
    unsigned char buf[sizeof s + 16];
    size_t old_size = offsetof(fragless_stats_t, allocated_bytes) + sizeof(fragless_stat_t);
    memset(buf, 0xee, sizeof buf);
    ((fragless_stats_t *)buf)->size = (uint32_t)old_size;
    CHECK(get(0, (fragless_stats_t *)buf) == 0, "old size");
    fragless_stats_t *old = (fragless_stats_t *)buf;
    CHECK(old->version == FRAGLESS_STATS_VERSION && old->size == old_size, "version %u size %u",
          old->version, old->size);
    CHECK(old->allocated_bytes.current >= 1 << 20, "allocated %llu",
          (unsigned long long)old->allocated_bytes.current);
    CHECK(buf[old_size] == 0xee, "nothing written beyond the caller's size");
    CHECK(cudaFree(p) == cudaSuccess, "cudaFree");
    CHECK(reset(0) == 0 && reset(-1) == 0, "reset peaks");
    CHECK(empty(0, &released) == 0 && empty(-1, NULL) == 0, "empty cache");
    s.size = sizeof s;
    CHECK(get(0, &s) == 0 && s.allocated_bytes.peak == s.allocated_bytes.current,
          "peak reset: %llu vs %llu", (unsigned long long)s.allocated_bytes.peak,
          (unsigned long long)s.allocated_bytes.current);
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "alloc";
    if (strcmp(mode, "free-null-first") == 0) {
        CHECK(cudaFree(NULL) == cudaSuccess, "cudaFree(NULL) first");
        CUcontext ctx = NULL;
        CHECK(cuCtxGetCurrent(&ctx) == CUDA_SUCCESS && ctx,
              "the real cudaFree(NULL) made the runtime's context current");
        alloc_and_free();
    } else if (strcmp(mode, "null-out") == 0) {
        null_out();
    } else if (strcmp(mode, "passthrough") == 0) {
        passthrough();
    } else if (strcmp(mode, "ipc") == 0) {
        ipc();
    } else if (strcmp(mode, "api") == 0) {
        api();
    } else {
        alloc_and_free();
    }
    printf("ok %s\n", mode);
    return 0;
}
