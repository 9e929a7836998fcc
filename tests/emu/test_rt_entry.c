/*
 * test_rt_entry.c — how the emulated runtime reaches the driver, and the entry-point API:
 * every driver function it uses comes through cuGetProcAddress (counted and fault-injected by
 * the emulated driver), and cudaGetDriverEntryPoint(ByVersion) report found / not found /
 * version not sufficient as documented.
 */
#include <criterion/criterion.h>
#include <cuda.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <stdint.h>

#include "fragless_emu.h"
#include "testutil.h"

#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

cudaError_t cudaGetDriverEntryPoint_ptsz(const char *, void **, unsigned long long,
                                         enum cudaDriverEntryPointQueryResult *);
cudaError_t cudaGetDriverEntryPointByVersion_ptsz(const char *, void **, unsigned int,
                                                  unsigned long long,
                                                  enum cudaDriverEntryPointQueryResult *);

static uint64_t lookups(void)
{
    return fragless_emu_calls("cuGetProcAddress_v2") + fragless_emu_calls("cuGetProcAddress");
}

Test(rt_entry, driver_is_resolved_through_cu_get_proc_address)
{
    cr_assert_eq(lookups(), 0);
    cr_assert_eq(cudaFree(NULL), cudaSuccess);
    uint64_t at_init = lookups();
    cr_assert_geq(at_init, 10,
                  "the runtime resolved only %llu entry points through "
                  "cuGetProcAddress",
                  (unsigned long long)at_init);
    cr_assert_eq(fragless_emu_calls("cuInit"), 1);
    void *p = NULL;
    cr_assert_eq(cudaMalloc(&p, 4096), cudaSuccess);
    cr_assert_eq(cudaFree(p), cudaSuccess);
    cr_assert_eq(lookups(), at_init, "resolution happens once, at first use");
}

Test(rt_entry, failing_lookups_fail_initialization)
{
    cr_assert_eq(fragless_emu_fail("cuGetProcAddress_v2@*=CUDA_ERROR_NOT_SUPPORTED"), 0);
    cr_assert_eq(cudaFree(NULL), cudaErrorNotSupported);
    cr_assert_eq(fragless_emu_calls("cuInit"), 0, "nothing is called past a failed lookup");
    cr_assert_eq(fragless_emu_fail(NULL), 0);
    cr_assert_eq(cudaMalloc(&(void *){NULL}, 16), cudaErrorNotSupported,
                 "a failed initialization is final, as in the real runtime");
}

Test(rt_entry, failing_cu_init_is_reported)
{
    cr_assert_eq(fragless_emu_fail("cuInit@1=CUDA_ERROR_NO_DEVICE"), 0);
    int n = -1;
    cr_assert_eq(cudaGetDeviceCount(&n), cudaErrorNoDevice);
    cr_assert_eq(n, 0);
}

Test(rt_entry, found_symbol_is_the_drivers_function)
{
    void *fn = NULL;
    enum cudaDriverEntryPointQueryResult st = cudaDriverEntryPointSymbolNotFound;
    cr_assert_eq(cudaGetDriverEntryPoint("cuMemAlloc", &fn, cudaEnableDefault, &st), cudaSuccess);
    cr_assert_eq(st, cudaDriverEntryPointSuccess);
    cr_assert_eq(fn, dlsym(RTLD_DEFAULT, "cuMemAlloc_v2"), "13.0 asks for cuMemAlloc_v2");
    fn = NULL;
    cr_assert_eq(cudaGetDriverEntryPoint("cuMemCreate", &fn, cudaEnableDefault, NULL), cudaSuccess,
                 "driverStatus may be NULL");
    cr_assert_eq(fn, dlsym(RTLD_DEFAULT, "cuMemCreate"));
}

Test(rt_entry, unknown_symbol_is_success_with_null)
{
    void *fn = (void *)1;
    enum cudaDriverEntryPointQueryResult st = cudaDriverEntryPointSuccess;
    cr_assert_eq(cudaGetDriverEntryPoint("cuNoSuchFunction", &fn, cudaEnableDefault, &st),
                 cudaSuccess);
    cr_assert_null(fn);
    cr_assert_eq(st, cudaDriverEntryPointSymbolNotFound);
}

Test(rt_entry, by_version_too_low)
{
    void *fn = (void *)1;
    enum cudaDriverEntryPointQueryResult st = cudaDriverEntryPointSuccess;
    /* cuMemCreate came with CUDA 10.2 */
    cr_assert_eq(
        cudaGetDriverEntryPointByVersion("cuMemCreate", &fn, 10000, cudaEnableDefault, &st),
        cudaSuccess);
    cr_assert_null(fn);
    cr_assert_eq(st, cudaDriverEntryPointVersionNotSufficent);
    cr_assert_eq(
        cudaGetDriverEntryPointByVersion("cuMemCreate", &fn, 12000, cudaEnableDefault, &st),
        cudaSuccess);
    cr_assert_eq(st, cudaDriverEntryPointSuccess);
    cr_assert_eq(fn, dlsym(RTLD_DEFAULT, "cuMemCreate"));
}

Test(rt_entry, by_version_picks_the_abi_of_that_version)
{
    void *fn = NULL;
    enum cudaDriverEntryPointQueryResult st;
    cr_assert_eq(cudaGetDriverEntryPointByVersion("cuMemAlloc", &fn, 3000, 0, &st), cudaSuccess);
    void *v1 = dlsym(RTLD_DEFAULT, "cuMemAlloc");
    if (v1) {
        cr_assert_eq(st, cudaDriverEntryPointSuccess);
        cr_assert_eq(fn, v1, "before 3.2 cuMemAlloc is the 32-bit original");
    } else {
        cr_assert_eq(st, cudaDriverEntryPointVersionNotSufficent, "a driver without the 3.0 ABI");
        cr_assert_null(fn);
    }
    cr_assert_eq(cudaGetDriverEntryPointByVersion("cuMemAlloc", &fn, 13000, 0, &st), cudaSuccess);
    cr_assert_eq(st, cudaDriverEntryPointSuccess);
    cr_assert_eq(fn, dlsym(RTLD_DEFAULT, "cuMemAlloc_v2"));
}

Test(rt_entry, version_above_the_driver_is_invalid_value)
{
    void *fn = NULL;
    cr_assert_eq(cudaGetDriverEntryPointByVersion("cuMemAlloc", &fn, 99000, 0, NULL),
                 cudaErrorInvalidValue);
}

Test(rt_entry, bad_arguments)
{
    void *fn = NULL;
    cr_assert_eq(cudaGetDriverEntryPoint(NULL, &fn, 0, NULL), cudaErrorInvalidValue);
    cr_assert_eq(cudaGetDriverEntryPoint("cuMemAlloc", NULL, 0, NULL), cudaErrorInvalidValue);
    cr_assert_eq(cudaGetDriverEntryPoint("cuMemAlloc", &fn, 8, NULL), cudaErrorInvalidValue);
}

Test(rt_entry, per_thread_flag_selects_ptsz_functions)
{
    void *fn = NULL;
    enum cudaDriverEntryPointQueryResult st;
    cr_assert_eq(
        cudaGetDriverEntryPoint("cuStreamQuery", &fn, cudaEnablePerThreadDefaultStream, &st),
        cudaSuccess);
    cr_assert_eq(fn, dlsym(RTLD_DEFAULT, "cuStreamQuery_ptsz"));
    cr_assert_eq(cudaGetDriverEntryPoint("cuStreamQuery", &fn, cudaEnableLegacyStream, &st),
                 cudaSuccess);
    cr_assert_eq(fn, dlsym(RTLD_DEFAULT, "cuStreamQuery"));
    cr_assert_eq(cudaGetDriverEntryPoint_ptsz("cuStreamQuery", &fn, cudaEnableDefault, &st),
                 cudaSuccess);
    cr_assert_eq(fn, dlsym(RTLD_DEFAULT, "cuStreamQuery_ptsz"), "_ptsz defaults to per-thread");
    cr_assert_eq(
        cudaGetDriverEntryPointByVersion_ptsz("cuStreamQuery", &fn, 13000, cudaEnableDefault, &st),
        cudaSuccess);
    cr_assert_eq(fn, dlsym(RTLD_DEFAULT, "cuStreamQuery_ptsz"));
}
