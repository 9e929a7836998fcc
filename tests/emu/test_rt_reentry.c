/*
 * test_rt_reentry.c — a runtime call made from inside the runtime's own initialization (as a
 * hook between the runtime and the driver might make) fails instead of deadlocking, and the
 * initialization it interrupted completes. The hook is this program's dlopen, which the
 * runtime's dlopen("libcuda.so.1") reaches by symbol interposition. (dlopen rather than dlsym:
 * a dlsym hook changes what RTLD_NEXT means for its callers, sanitizer runtimes included.)
 */
#include <criterion/criterion.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <stdbool.h>
#include <string.h>

typedef void *(*dlopen_fn)(const char *, int);

static bool armed;
static int reentries;
static cudaError_t reentry_result = cudaSuccess;

static dlopen_fn real_dlopen(void)
{
    static dlopen_fn real;
    if (!real)
        real = (dlopen_fn)dlvsym(RTLD_NEXT, "dlopen", "GLIBC_2.34");
    if (!real)
        real = (dlopen_fn)dlvsym(RTLD_NEXT, "dlopen", "GLIBC_2.2.5");
    return real;
}

void *dlopen(const char *name, int flags)
{
    if (armed && name && strcmp(name, "libcuda.so.1") == 0) {
        void *p = NULL;
        armed = false;
        reentries++;
        reentry_result = cudaMalloc(&p, 4096);
    }
    return real_dlopen()(name, flags);
}

Test(rt_reentry, a_call_from_inside_initialization_fails_without_deadlock)
{
    cr_assert_not_null(real_dlopen());
    armed = true;
    cr_assert_eq(cudaFree(NULL), cudaSuccess, "the interrupted initialization completes");
    cr_assert_eq(reentries, 1, "the runtime did not dlopen libcuda.so.1");
    cr_assert_eq(reentry_result, cudaErrorInitializationError);
    void *p = NULL;
    cr_assert_eq(cudaMalloc(&p, 4096), cudaSuccess);
    cr_assert_eq(cudaFree(p), cudaSuccess);
}
