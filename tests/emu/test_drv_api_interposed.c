/*
 * test_drv_api_interposed.c — cuGetProcAddress hands out the driver's own functions even when
 * something loaded in front of the driver defines the same names (as an LD_PRELOAD
 * interposer does): this program defines cuDeviceTotalMem_v2 itself, and the pointer the
 * driver returns for "cuDeviceTotalMem" must still be the driver's. Documented API only.
 */
#include <criterion/criterion.h>
#include <cuda.h>

#define CK(call)   cr_assert_eq((call), CUDA_SUCCESS, "%s", #call)
#define FAKE_TOTAL ((size_t)12345)

/* Preempts the driver's definition for every caller that resolves it by name. */
CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev)
{
    (void)dev;
    *bytes = FAKE_TOTAL;
    return CUDA_SUCCESS;
}

Test(drv_api_interposed, proc_address_is_the_drivers_own)
{
    CUresult (*total_mem)(size_t *, CUdevice) = NULL;
    size_t bytes = 0;

    CK(cuInit(0));
    CK(cuGetProcAddress("cuDeviceTotalMem", (void **)&total_mem, 12000, 0, NULL));
    cr_assert_not_null(total_mem);
    cr_expect_neq((void *)total_mem, (void *)cuDeviceTotalMem_v2);
    CK(total_mem(&bytes, 0));
    cr_expect_neq(bytes, FAKE_TOTAL);
    CK(cuDeviceTotalMem(&bytes, 0)); /* by name: the program's own */
    cr_expect_eq(bytes, FAKE_TOTAL);
}
