/*
 * rule_reentry.c — DESIGN §4 rule 3's re-entry clause: CUDA calls made while fragless is in
 * the middle of its first initialization, on the initializing thread itself, as a driver
 * (or a tool injected into it) that calls hooked names while being loaded would make them.
 *
 * This program defines dlopen (the executable comes first in symbol lookup, so fragless's own
 * dlopen of libcuda.so.1 lands here, under fragless's init and driver-load locks). The first
 * time libcuda is opened it calls hooked entry points — cuMemAlloc, cudaMalloc/cudaFree,
 * cuGetProcAddress, cuMemGetInfo — and only then loads the library. Every one of them must
 * return (no self-deadlock, no recursion) with a valid code, and afterwards the program's own
 * first allocation must be served by fragless.
 */
#include <pthread.h>
#include <unistd.h>

#include "ip_prog.h"

typedef void *(*dlopen_fn)(const char *, int);

static bool armed;
static bool inside;
static int reentered;
static CUresult drv_alloc_result = CUDA_SUCCESS, proc_result = CUDA_SUCCESS,
                info_result = CUDA_SUCCESS;
static cudaError_t rt_alloc_result = cudaSuccess, rt_free_result = cudaSuccess;
static void *proc_fn;

static void *real_dlopen(const char *file, int mode)
{
    static dlopen_fn fn;
    if (!fn)
        fn = (dlopen_fn)dlvsym(RTLD_NEXT, "dlopen", "GLIBC_2.34");
    if (!fn)
        fn = (dlopen_fn)dlvsym(RTLD_NEXT, "dlopen", "GLIBC_2.2.5");
    return fn ? fn(file, mode) : NULL;
}

/* The calls a driver loading under fragless's initialization might make. */
static void reenter(void)
{
    CUdeviceptr d = 0;
    drv_alloc_result = cuMemAlloc(&d, 4096);
    if (drv_alloc_result == CUDA_SUCCESS)
        cuMemFree(d);
    void *p = NULL;
    rt_alloc_result = cudaMalloc(&p, 4096);
    if (rt_alloc_result == cudaSuccess)
        rt_free_result = cudaFree(p);
    proc_result =
        cuGetProcAddress("cuMemAlloc", &proc_fn, 12000, CU_GET_PROC_ADDRESS_DEFAULT, NULL);
    size_t free_b = 0, total_b = 0;
    info_result = cuMemGetInfo(&free_b, &total_b);
    reentered++;
}

__attribute__((visibility("default"))) void *dlopen(const char *file, int mode)
{
    if (armed && !inside && file && strstr(file, "libcuda.so")) {
        inside = true;
        armed = false;
        reenter();
        inside = false;
    }
    return real_dlopen(file, mode);
}

/* A code the CUDA headers define (not a stray value from a confused hook). */
static bool valid_cu(CUresult r)
{
    const char *name = NULL;
    return cuGetErrorName(r, &name) == CUDA_SUCCESS && name;
}

int main(void)
{
    alarm(30);
    armed = true;
    fragless_stats_t before = ip_stats0();
    void *p = NULL;
    CHECK(cudaMalloc(&p, 1 << 20) == cudaSuccess, "the first allocation");
    CHECK(reentered == 1, "fragless opened libcuda during its first initialization (%d)",
          reentered);
    CHECK(valid_cu(drv_alloc_result), "cuMemAlloc inside init: %d", (int)drv_alloc_result);
    CHECK(valid_cu(proc_result), "cuGetProcAddress inside init: %d", (int)proc_result);
    CHECK(proc_result != CUDA_SUCCESS || proc_fn, "cuGetProcAddress succeeded without a function");
    CHECK(valid_cu(info_result), "cuMemGetInfo inside init: %d", (int)info_result);
    CHECK(rt_alloc_result == cudaSuccess || rt_alloc_result == cudaErrorInitializationError ||
              rt_alloc_result == cudaErrorNoDevice,
          "cudaMalloc inside init: %d", (int)rt_alloc_result);
    CHECK(rt_free_result == cudaSuccess, "cudaFree inside init: %d", (int)rt_free_result);
    ip_touch_rt(p, 1 << 20);
    CHECK(cudaFree(p) == cudaSuccess, "cudaFree");
    fragless_stats_t after = ip_stats0();
    ip_expect_served(&before, &after, 1, 1);
    printf("ok reentry: cuMemAlloc %d, cudaMalloc %d, cuGetProcAddress %d, cuMemGetInfo %d\n",
           (int)drv_alloc_result, (int)rt_alloc_result, (int)proc_result, (int)info_result);
    return 0;
}
