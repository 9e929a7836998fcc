/*
 * test_drv_emu_faults.c — fault injection and call counters: NAME@N, NAME@N+, NAME@*, codes
 * by name and number, several rules at once, FRAGLESS_EMU_FAIL from the environment, bad
 * specs refused, and a failed call leaving nothing behind (capacity, audit).
 */
#include <criterion/criterion.h>
#include <cuda.h>
#include <stdlib.h>
#include <unistd.h>

#include "fragless_emu.h"
#include "testutil.h"

#define CK(call) cr_assert_eq((call), CUDA_SUCCESS, "%s", #call)

static void init_ctx(void)
{
    CUcontext ctx;
    CK(cuInit(0));
    CK(cuDevicePrimaryCtxRetain(&ctx, 0));
    CK(cuCtxSetCurrent(ctx));
}

static void setup(void)
{
    tu_emu_isolate();
}

TestSuite(drv_emu_faults, .init = setup);

Test(drv_emu_faults, nth_call_only)
{
    CUdeviceptr a, b, c;

    init_ctx();
    CK(fragless_emu_fail("cuMemAlloc_v2@2"));
    CK(cuMemAlloc(&a, 4096));
    cr_expect_eq(cuMemAlloc(&b, 4096), CUDA_ERROR_OUT_OF_MEMORY);
    CK(cuMemAlloc(&c, 4096));
    CK(cuMemFree(a));
    CK(cuMemFree(c));
    cr_expect_eq(fragless_emu_used(0), 0, "the failed call charged nothing");
    cr_expect_eq(fragless_emu_audit(-1), 0);
}

Test(drv_emu_faults, nth_and_later_with_named_code)
{
    CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = 0}};
    CUmemGenericAllocationHandle h;

    init_ctx();
    CK(fragless_emu_fail("cuMemCreate@2+=CUDA_ERROR_INVALID_DEVICE"));
    CK(cuMemCreate(&h, 2 << 20, &prop, 0));
    cr_expect_eq(cuMemCreate(&h, 2 << 20, &prop, 0), CUDA_ERROR_INVALID_DEVICE);
    cr_expect_eq(cuMemCreate(&h, 2 << 20, &prop, 0), CUDA_ERROR_INVALID_DEVICE);
    CK(fragless_emu_fail(NULL));
    CK(cuMemCreate(&h, 2 << 20, &prop, 0));
    cr_expect_eq(fragless_emu_used(0), (size_t)4 << 20, "two live handles");
}

Test(drv_emu_faults, every_call_numeric_code_and_several_rules)
{
    CUstream s;
    CUevent e;

    init_ctx();
    CK(fragless_emu_fail("cuStreamCreate@*=801,cuEventCreate@1"));
    cr_expect_eq(cuStreamCreate(&s, 0), CUDA_ERROR_NOT_SUPPORTED);
    cr_expect_eq(cuStreamCreate(&s, 0), CUDA_ERROR_NOT_SUPPORTED);
    cr_expect_eq(cuEventCreate(&e, 0), CUDA_ERROR_OUT_OF_MEMORY);
    CK(cuEventCreate(&e, 0));
    CK(cuEventDestroy(e));
    cr_expect_eq(fragless_emu_audit(-1), 0, "failed creations left nothing");
}

Test(drv_emu_faults, counts_from_arming)
{
    CUdeviceptr p;

    init_ctx();
    CK(cuMemAlloc(&p, 4096));
    CK(cuMemFree(p));
    CK(fragless_emu_fail("cuMemAlloc_v2@1"));
    cr_expect_eq(cuMemAlloc(&p, 4096), CUDA_ERROR_OUT_OF_MEMORY);
}

Test(drv_emu_faults, bad_specs_are_refused)
{
    CUdeviceptr p;

    init_ctx();
    CK(fragless_emu_fail("cuMemAlloc_v2@1"));
    cr_expect_eq(fragless_emu_fail("cuMemAlloc_v2"), CUDA_ERROR_INVALID_VALUE);
    cr_expect_eq(fragless_emu_fail("@3"), CUDA_ERROR_INVALID_VALUE);
    cr_expect_eq(fragless_emu_fail("cuMemAlloc_v2@0"), CUDA_ERROR_INVALID_VALUE);
    cr_expect_eq(fragless_emu_fail("cuMemAlloc_v2@x"), CUDA_ERROR_INVALID_VALUE);
    cr_expect_eq(fragless_emu_fail("cuMemAlloc_v2@1=NOPE"), CUDA_ERROR_INVALID_VALUE);
    cr_expect_eq(fragless_emu_fail("cuMemAlloc_v2@1=0"), CUDA_ERROR_INVALID_VALUE);
    cr_expect_eq(fragless_emu_fail("cuMemAlloc_v2@1,,"), CUDA_ERROR_INVALID_VALUE);
    /* the rule armed before the bad specs still holds */
    cr_expect_eq(cuMemAlloc(&p, 4096), CUDA_ERROR_OUT_OF_MEMORY);
}

Test(drv_emu_faults, from_the_environment)
{
    CUdeviceptr p;
    int n;

    setenv("FRAGLESS_EMU_FAIL", "cuDeviceGetCount@1=CUDA_ERROR_UNKNOWN,cuMemAlloc_v2@*", 1);
    init_ctx();
    cr_expect_eq(cuDeviceGetCount(&n), CUDA_ERROR_UNKNOWN);
    CK(cuDeviceGetCount(&n));
    cr_expect_eq(cuMemAlloc(&p, 4096), CUDA_ERROR_OUT_OF_MEMORY);
    cr_expect_eq(cuMemAlloc(&p, 4096), CUDA_ERROR_OUT_OF_MEMORY);
}

Test(drv_emu_faults, call_counters)
{
    CUdeviceptr p;
    uint64_t before = fragless_emu_calls("cuMemAlloc_v2"), all = fragless_emu_calls("*");

    init_ctx();
    CK(cuMemAlloc(&p, 4096));
    CK(cuMemFree(p));
    cr_expect_eq(fragless_emu_calls("cuMemAlloc_v2"), before + 1);
    cr_expect_eq(fragless_emu_calls("cuMemFree_v2"), 1);
    cr_expect_eq(fragless_emu_calls("cuInit"), 1);
    cr_expect_eq(fragless_emu_calls("*"), all + 5, "cuInit, retain, set current, alloc, free");
    cr_expect_eq(fragless_emu_calls("cuNeverCalled"), 0);
    cr_expect_eq(fragless_emu_calls(NULL), 0);
}
