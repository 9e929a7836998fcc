/*
 * ip_runtime.c — the runtime API path: cudaMalloc/cudaFree/cudaMemGetInfo reach fragless.
 * argv[1]: "alloc" (default), "free-null-first" (cudaFree(NULL) is the first CUDA call),
 * "null-out" (NULL out-pointers get the documented error), "passthrough" (run with
 * FRAGLESS_CONF=passthrough:true: nothing goes through fragless), "ipc" (an IPC handle for a
 * fragless pointer is refused).
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

static void passthrough(void)
{
    fragless_stats_t s;
    void *p = NULL;
    CHECK(cudaMalloc(&p, 1 << 20) == cudaSuccess, "cudaMalloc");
    ip_touch_rt(p, 1 << 20);
    CHECK(ip_stats(0, &s) == FRAGLESS_EDISABLED, "stats say pass-through");
    CHECK(cudaFree(p) == cudaSuccess, "cudaFree");
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

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "alloc";
    if (strcmp(mode, "free-null-first") == 0) {
        CHECK(cudaFree(NULL) == cudaSuccess, "cudaFree(NULL) first");
        alloc_and_free();
    } else if (strcmp(mode, "null-out") == 0) {
        null_out();
    } else if (strcmp(mode, "passthrough") == 0) {
        passthrough();
    } else if (strcmp(mode, "ipc") == 0) {
        ipc();
    } else {
        alloc_and_free();
    }
    printf("ok %s\n", mode);
    return 0;
}
