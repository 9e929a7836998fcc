/*
 * test_drv_api_procaddr.c — cuGetProcAddress conformance, against the documentation only:
 * the CUDA 12+ form with symbolStatus and the CUDA 11 four-argument form, version selection
 * ("cuMemAlloc" → cuMemAlloc_v2), per-thread default stream variants, and the statuses for
 * unknown symbols and insufficient versions.
 */
#include <criterion/criterion.h>
#include <cuda.h>
#include <dlfcn.h>
#include <string.h>

#define CK(call) cr_assert_eq((call), CUDA_SUCCESS, "%s", #call)

/* The four-argument form as CUDA 11 exported it (cuda.h now maps the name to _v2). */
typedef CUresult (*legacy_getproc_fn)(const char *, void **, int, cuuint64_t);

static void *sym(const char *name)
{
    void *p = dlsym(RTLD_DEFAULT, name);
    cr_assert_not_null(p, "%s exported", name);
    return p;
}

static void setup(void)
{
    CK(cuInit(0));
}

TestSuite(drv_api_procaddr, .init = setup);

Test(drv_api_procaddr, versioned_names)
{
    void *fn = NULL;
    CUdriverProcAddressQueryResult st = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;

    CK(cuGetProcAddress("cuMemAlloc", &fn, 12000, CU_GET_PROC_ADDRESS_DEFAULT, &st));
    cr_expect_eq(st, CU_GET_PROC_ADDRESS_SUCCESS);
    cr_expect_eq(fn, sym("cuMemAlloc_v2"));
    CK(cuGetProcAddress("cuMemFree", &fn, 11000, CU_GET_PROC_ADDRESS_DEFAULT, &st));
    cr_expect_eq(fn, sym("cuMemFree_v2"));
    CK(cuGetProcAddress("cuMemGetInfo", &fn, 13000, CU_GET_PROC_ADDRESS_DEFAULT, &st));
    cr_expect_eq(fn, sym("cuMemGetInfo_v2"));
    CK(cuGetProcAddress("cuStreamDestroy", &fn, 12000, CU_GET_PROC_ADDRESS_DEFAULT, &st));
    cr_expect_eq(fn, sym("cuStreamDestroy_v2"));
    CK(cuGetProcAddress("cuMemCreate", &fn, 12000, CU_GET_PROC_ADDRESS_DEFAULT, NULL));
    cr_expect_eq(fn, sym("cuMemCreate"));
    CK(cuGetProcAddress("cuGetProcAddress", &fn, 12000, CU_GET_PROC_ADDRESS_DEFAULT, &st));
    cr_expect_eq(fn, sym("cuGetProcAddress_v2"));
}

Test(drv_api_procaddr, newest_variant_the_version_allows)
{
    void *fn = NULL;

    CK(cuGetProcAddress("cuStreamGetCaptureInfo", &fn, 10010, 0, NULL));
    cr_expect_eq(fn, sym("cuStreamGetCaptureInfo"));
    CK(cuGetProcAddress("cuStreamGetCaptureInfo", &fn, 11030, 0, NULL));
    cr_expect_eq(fn, sym("cuStreamGetCaptureInfo_v2"));
    CK(cuGetProcAddress("cuStreamGetCaptureInfo", &fn, 13000, 0, NULL));
    cr_expect_eq(fn, sym("cuStreamGetCaptureInfo_v3"));
    CK(cuGetProcAddress("cuEventElapsedTime", &fn, 12000, 0, NULL));
    cr_expect_eq(fn, sym("cuEventElapsedTime"));
    CK(cuGetProcAddress("cuEventElapsedTime", &fn, 12080, 0, NULL));
    cr_expect_eq(fn, sym("cuEventElapsedTime_v2"));
    CK(cuGetProcAddress("cuDeviceGetUuid", &fn, 11040, 0, NULL));
    cr_expect_eq(fn, sym("cuDeviceGetUuid_v2"));
}

Test(drv_api_procaddr, per_thread_default_stream)
{
    void *fn = NULL;
    CUdriverProcAddressQueryResult st;

    CK(cuGetProcAddress("cuStreamSynchronize", &fn, 12000,
                        CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, &st));
    cr_expect_eq(fn, sym("cuStreamSynchronize_ptsz"));
    CK(cuGetProcAddress("cuMemcpyHtoD", &fn, 12000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM,
                        &st));
    cr_expect_eq(fn, sym("cuMemcpyHtoD_v2_ptds"));
    CK(cuGetProcAddress("cuMemAllocAsync", &fn, 12000,
                        CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM, &st));
    cr_expect_eq(fn, sym("cuMemAllocAsync_ptsz"));
    CK(cuGetProcAddress("cuStreamSynchronize", &fn, 12000, CU_GET_PROC_ADDRESS_LEGACY_STREAM, &st));
    cr_expect_eq(fn, sym("cuStreamSynchronize"));
    /* no per-thread variant: the legacy one */
    CK(cuGetProcAddress("cuMemAlloc", &fn, 12000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM,
                        &st));
    cr_expect_eq(fn, sym("cuMemAlloc_v2"));
}

Test(drv_api_procaddr, statuses)
{
    void *fn = (void *)1;
    CUdriverProcAddressQueryResult st = CU_GET_PROC_ADDRESS_SUCCESS;

    CK(cuGetProcAddress("cuNoSuchFunction", &fn, 12000, 0, &st));
    cr_expect_eq(st, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
    cr_expect_null(fn);
    fn = (void *)1;
    CK(cuGetProcAddress("cuMemCreate", &fn, 10000, 0, &st));
    cr_expect_eq(st, CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT);
    cr_expect_null(fn);
    cr_expect_eq(cuGetProcAddress("cuMemAlloc", &fn, 999000, 0, &st), CUDA_ERROR_INVALID_VALUE,
                 "version newer than the driver");
    cr_expect_eq(cuGetProcAddress("cuMemAlloc", NULL, 12000, 0, &st), CUDA_ERROR_INVALID_VALUE);
    cr_expect_eq(cuGetProcAddress(NULL, &fn, 12000, 0, &st), CUDA_ERROR_INVALID_VALUE);
}

Test(drv_api_procaddr, legacy_four_argument_form)
{
    legacy_getproc_fn legacy = (legacy_getproc_fn)sym("cuGetProcAddress");
    void *fn = NULL;

    CK(legacy("cuMemAlloc", &fn, 11000, CU_GET_PROC_ADDRESS_DEFAULT));
    cr_expect_eq(fn, sym("cuMemAlloc_v2"));
    CK(legacy("cuStreamQuery", &fn, 11000, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM));
    cr_expect_eq(fn, sym("cuStreamQuery_ptsz"));
    cr_expect_neq(legacy("cuNoSuchFunction", &fn, 11000, 0), CUDA_SUCCESS);
}

Test(drv_api_procaddr, returned_pointer_works)
{
    CUresult (*get_version)(int *) = NULL;
    int v = 0;

    CK(cuGetProcAddress("cuDriverGetVersion", (void **)&get_version, 12000, 0, NULL));
    cr_assert_not_null(get_version);
    CK(get_version(&v));
    cr_expect_geq(v, 12000);
}
