/*
 * heaptest.h — helpers for the heap's suites that run on the emulated device in-process:
 * the emulated libcuda's test API and the few driver calls the tests make themselves (streams),
 * found on the libcuda.so.1 that driver.c loaded, and a per-test device and context.
 */
#ifndef FRAGLESS_HEAPTEST_H
#define FRAGLESS_HEAPTEST_H

#include <criterion/criterion.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fragless_emu.h"
#include "internal.h"
#include "testutil.h"

static inline void *ht_sym(const char *name)
{
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    cr_assert_not_null(lib, "libcuda.so.1 not loaded");
    void *f = dlsym(lib, name);
    cr_assert_not_null(f, "%s not found in the emulated libcuda", name);
    return f;
}

/* The segment kind the heap's suites test (a suite may define it before including this):
 * classic by default; the expandable suites set "expandable_segments:true". */
#ifndef HT_SEGMENTS
#define HT_SEGMENTS "expandable_segments:false"
#endif

/* A device of this test's own (capacity `mem`, e.g. "256M"; NULL = default), driver
 * initialized, device 0's primary context current. FRAGLESS_CONF, unless the test set it,
 * is HT_SEGMENTS. */
static inline void ht_setup(const char *mem)
{
    tu_emu_isolate();
    setenv("FRAGLESS_CONF", HT_SEGMENTS, 0);
    if (mem)
        setenv("FRAGLESS_EMU_MEM", mem, 1);
    cr_assert_eq(drv_init(), CUDA_SUCCESS);
    CUcontext ctx;
    cr_assert_eq(drv_primary_ctx_retain(&ctx, 0), CUDA_SUCCESS);
    cr_assert_eq(drv_ctx_set_current(ctx), CUDA_SUCCESS);
}

static inline CUstream ht_stream(void)
{
    CUresult (*create)(CUstream *, unsigned int) =
        (CUresult(*)(CUstream *, unsigned))(uintptr_t)ht_sym("cuStreamCreate");
    CUstream s;
    cr_assert_eq(create(&s, CU_STREAM_NON_BLOCKING), CUDA_SUCCESS);
    return s;
}

static inline void ht_stream_destroy(CUstream s)
{
    CUresult (*destroy)(CUstream) = (CUresult(*)(CUstream))(uintptr_t)ht_sym("cuStreamDestroy_v2");
    cr_assert_eq(destroy(s), CUDA_SUCCESS);
}

static inline uint64_t ht_calls(const char *name)
{
    uint64_t (*calls)(const char *) =
        (uint64_t(*)(const char *))(uintptr_t)ht_sym("fragless_emu_calls");
    return calls(name);
}

static inline int ht_fail(const char *spec)
{
    int (*fail)(const char *) = (int (*)(const char *))(uintptr_t)ht_sym("fragless_emu_fail");
    return fail(spec);
}

static inline uint64_t ht_faults(void)
{
    uint64_t (*faults)(void) = (uint64_t(*)(void))(uintptr_t)ht_sym("fragless_emu_faults");
    return faults();
}

/* Returns the number of objects the emulated device still holds, then ends the test's use of
 * the device (drops ht_setup's context). The audit comes first: releasing the primary context
 * frees the context's memory and would hide what the heap leaked in it. */
static inline int ht_audit(void)
{
    int (*audit)(int) = (int (*)(int))(uintptr_t)ht_sym("fragless_emu_audit");
    int leaked = audit(STDERR_FILENO);
    drv_primary_ctx_release(0);
    return leaked;
}

static inline void ht_work(CUstream s, uint64_t usec)
{
    int (*work)(CUstream, uint64_t) =
        (int (*)(CUstream, uint64_t))(uintptr_t)ht_sym("fragless_emu_stream_work");
    cr_assert_eq(work(s, usec), 0);
}

static inline void ht_fill(CUstream s, CUdeviceptr p, int byte, size_t n, uint64_t usec)
{
    int (*fill)(CUstream, CUdeviceptr, int, size_t, uint64_t) = (int (*)(
        CUstream, CUdeviceptr, int, size_t, uint64_t))(uintptr_t)ht_sym("fragless_emu_stream_fill");
    cr_assert_eq(fill(s, p, byte, n, usec), 0);
}

static inline fragless_stats_t ht_stats(int device)
{
    fragless_stats_t s = {.size = sizeof s};
    cr_assert_eq(heap_get_stats(device, &s), 0);
    return s;
}

/* Allocates and asserts success. */
static inline CUdeviceptr ht_alloc(size_t size, CUstream s, enum heap_mode mode)
{
    CUdeviceptr p = 0;
    CUresult r = heap_alloc(0, size, s, mode, &p);
    cr_assert_eq(r, CUDA_SUCCESS, "heap_alloc(%zu) = %d", size, (int)r);
    cr_assert_neq(p, 0);
    return p;
}

static inline void ht_free(CUdeviceptr p, CUstream s, enum heap_mode mode)
{
    bool foreign = true;
    cr_assert_eq(heap_free(p, s, mode, &foreign), CUDA_SUCCESS);
    cr_assert(!foreign);
}

/* A forked child's wait status: waited for up to 5 s, then killed (a child stuck on a lock
 * its parent held at fork). */
static inline int ht_reap(pid_t pid)
{
    int status = -1;
    for (int waited = 0; waited < 500 && waitpid(pid, &status, WNOHANG) == 0; waited++)
        usleep(10000);
    if (status == -1)
        kill(pid, SIGKILL), waitpid(pid, &status, 0);
    return status;
}

static inline bool ht_overlap(CUdeviceptr a, size_t an, CUdeviceptr b, size_t bn)
{
    return a < b + bn && b < a + an;
}

#endif
