/*
 * test_driver.c — the driver layer (lib/driver.c, lib/dl.c) on the emulated device: loading
 * and resolving once, features, counting, cuGetProcAddress answers, a bad or incomplete
 * driver, results passed back unchanged, and a VMM round trip that leaks nothing.
 */
#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "testutil.h"

/* The emulated device's test API, looked up in the driver fragless loaded. */
typedef int (*emu_fail_fn)(const char *);
typedef int (*emu_audit_fn)(int);

/* Initializes the driver and makes device 0's primary context current. */
static void use_primary_context(void)
{
    cr_assert_eq(drv_init(), CUDA_SUCCESS);
    CUcontext ctx = NULL;
    cr_assert_eq(drv_primary_ctx_retain(&ctx, 0), CUDA_SUCCESS);
    cr_assert_eq(drv_ctx_set_current(ctx), CUDA_SUCCESS);
}

static void *emu_api(const char *name)
{
    void *p = drv_sym(name);
    cr_assert_not_null(p, "the emulated driver exports %s", name);
    return p;
}

static char *read_stderr(void)
{
    static char buf[8192];
    fflush(stderr);
    FILE *f = cr_get_redirected_stderr();
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    return buf;
}

Test(driver, loads_once_and_offers_its_features, .init = cr_redirect_stderr)
{
    config_get(); /* sets the verbosity from FRAGLESS_CONF: raise it after */
    log_set_level(LOG_INFO);
    cr_assert_eq(drv_load(), CUDA_SUCCESS);
    cr_assert_eq(drv_init(), CUDA_SUCCESS);
    cr_assert(drv_has(DRV_FEATURE_ASYNC));
    cr_assert(drv_has(DRV_FEATURE_VMM));
    cr_assert(drv_has(DRV_FEATURE_PROC_ADDRESS));
    /* The emulated driver has no cuIpcGetMemHandle: only that feature is off. */
    cr_assert_eq(drv_has(DRV_FEATURE_IPC), drv_sym("cuIpcGetMemHandle") != NULL);
    cr_assert_not(drv_has(DRV_FEATURE_COUNT));
    int version = 0;
    cr_assert_eq(drv_driver_get_version(&version), CUDA_SUCCESS);
    cr_assert_gt(version, 0);
    cr_assert_eq(drv_load(), CUDA_SUCCESS);
    char *err = read_stderr();
    char *first = strstr(err, "lacks cuIpcGetMemHandle");
    cr_assert(drv_has(DRV_FEATURE_IPC) || first, "a missing feature is logged: %s", err);
    cr_assert(!first || !strstr(first + 1, "lacks cuIpcGetMemHandle"), "once: %s", err);
}

/* A feature the user did not ask for is an info line (verbose 2), not noise in every log. */
Test(driver, a_missing_optional_feature_is_quiet_by_default, .init = cr_redirect_stderr)
{
    cr_assert_eq(drv_init(), CUDA_SUCCESS);
    char *err = read_stderr();
    cr_assert_null(strstr(err, "lacks"), "nothing about missing features: %s", err);
    cr_assert_str_empty(err, "a default run prints nothing: %s", err);
}

Test(driver, counts_every_call_and_times_the_slow_ones)
{
    use_primary_context();
    uint64_t calls = drv_call_count(), ns = drv_call_ns();
    size_t free_b = 0, total_b = 0;
    cr_assert_eq(drv_mem_get_info(&free_b, &total_b), CUDA_SUCCESS);
    cr_assert_gt(total_b, 0);
    cr_assert_leq(free_b, total_b);
    cr_assert_eq(drv_call_count(), calls + 1);
    cr_assert_gt(drv_call_ns(), ns, "a call that can be slow is timed");
    ns = drv_call_ns();
    CUcontext ctx = NULL;
    CUdevice dev = -1;
    cr_assert_eq(drv_ctx_get_current(&ctx), CUDA_SUCCESS);
    cr_assert_eq(drv_ctx_get_device(&dev), CUDA_SUCCESS);
    cr_assert_eq(drv_call_count(), calls + 3, "cheap queries are counted");
    cr_assert_eq(drv_call_ns(), ns, "but not timed");
    cr_assert_eq(drv_primary_ctx_release(0), CUDA_SUCCESS);
    cr_assert_eq(drv_call_count(), calls + 4);
    cr_assert_gt(drv_call_ns(), ns, "a context release is timed");
}

Test(driver, returns_the_drivers_error_unchanged)
{
    tu_emu_isolate();
    use_primary_context();
    emu_fail_fn fail = (emu_fail_fn)emu_api("fragless_emu_fail");
    cr_assert_eq(fail("cuMemAlloc_v2@1=CUDA_ERROR_INVALID_VALUE"), 0);
    uint64_t calls = drv_call_count();
    CUdeviceptr p = 0;
    cr_assert_eq(drv_mem_alloc(&p, FL_MiB), CUDA_ERROR_INVALID_VALUE);
    cr_assert_eq(drv_call_count(), calls + 1, "a failed call is counted too");
    cr_assert_eq(drv_mem_alloc(&p, FL_MiB), CUDA_SUCCESS);
    cr_assert_neq(p, 0);
    cr_assert_eq(drv_mem_free(p), CUDA_SUCCESS);
    cr_assert_eq(drv_primary_ctx_release(0), CUDA_SUCCESS);
}

Test(driver, real_proc_answers_as_the_drivers_cuGetProcAddress)
{
    cr_assert_eq(drv_init(), CUDA_SUCCESS);
    CUdriverProcAddressQueryResult st = CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT;
    void *p = drv_real_proc("cuMemAlloc", 12000, CU_GET_PROC_ADDRESS_DEFAULT, &st);
    cr_assert_not_null(p);
    cr_assert_eq(st, CU_GET_PROC_ADDRESS_SUCCESS);
    cr_assert_eq(p, drv_sym("cuMemAlloc_v2"), "version 12000 of cuMemAlloc is cuMemAlloc_v2");
    cr_assert_null(drv_real_proc("cuNoSuchEntryPoint", 12000, 0, &st));
    cr_assert_eq(st, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND);
    cr_assert_null(drv_real_proc("cuNoSuchEntryPoint", 12000, 0, NULL), "status may be NULL");
    void *fn = NULL;
    cr_assert_eq(drv_get_proc_address("cuMemFree", &fn, 12000, 0, NULL), CUDA_SUCCESS);
    cr_assert_eq(fn, drv_sym("cuMemFree_v2"));
}

Test(driver, missing_driver_fails_with_a_clear_message, .init = cr_redirect_stderr)
{
    setenv("FRAGLESS_CONF", "driver:/nonexistent/libcuda.so.1", 1);
    cr_assert_eq(drv_load(), CUDA_ERROR_NO_DEVICE);
    cr_assert_eq(drv_load(), CUDA_ERROR_NO_DEVICE, "the result is kept");
    CUdeviceptr p = 0;
    cr_assert_eq(drv_mem_alloc(&p, 1), CUDA_ERROR_NO_DEVICE);
    cr_assert_eq(drv_init(), CUDA_ERROR_NO_DEVICE);
    cr_assert_not(drv_has(DRV_FEATURE_ASYNC));
    cr_assert_null(drv_sym("cuInit"));
    cr_assert_null(drv_real_proc("cuMemAlloc", 12000, 0, NULL));
    cr_assert_eq(drv_call_count(), 0, "nothing was called");
    char *err = read_stderr();
    cr_assert(strstr(err, "/nonexistent/libcuda.so.1"), "stderr: %s", err);
    cr_assert(strstr(err, "driver:"), "names the setting: %s", err);
}

Test(driver, driver_without_required_entry_points_is_refused, .init = cr_redirect_stderr)
{
    /* The C library is a loadable object without a single CUDA entry point. */
    setenv("FRAGLESS_CONF", "driver:libc.so.6", 1);
    cr_assert_eq(drv_load(), CUDA_ERROR_NOT_FOUND);
    CUcontext ctx = NULL;
    cr_assert_eq(drv_ctx_get_current(&ctx), CUDA_ERROR_NOT_FOUND);
    char *err = read_stderr();
    cr_assert(strstr(err, "cuInit"), "names the missing entry point: %s", err);
}

static void *load_in_thread(void *arg)
{
    (void)arg;
    return (void *)(intptr_t)drv_load();
}

Test(driver, concurrent_first_loads_agree)
{
    pthread_t t[8];
    for (int i = 0; i < 8; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, load_in_thread, NULL), 0);
    for (int i = 0; i < 8; i++) {
        void *r = NULL;
        pthread_join(t[i], &r);
        cr_assert_eq((CUresult)(intptr_t)r, CUDA_SUCCESS);
    }
    cr_assert_not_null(drv_sym("cuMemAlloc_v2"));
}

Test(driver, vmm_round_trip_leaks_nothing)
{
    tu_emu_isolate();
    use_primary_context();
    size_t gran = 0;
    cr_assert_eq(drv_mem_get_granularity(&gran, 0), CUDA_SUCCESS);
    cr_assert_eq(gran, 2 * FL_MiB);
    CUdeviceptr va = 0;
    CUmemGenericAllocationHandle h = 0;
    cr_assert_eq(drv_mem_address_reserve(&va, 2 * gran, gran), CUDA_SUCCESS);
    cr_assert_eq(drv_mem_create(&h, gran, 0), CUDA_SUCCESS);
    cr_assert_eq(drv_mem_map(va + gran, gran, h), CUDA_SUCCESS);
    cr_assert_eq(drv_mem_set_access(va + gran, gran, 0), CUDA_SUCCESS);
    memset((void *)(uintptr_t)(va + gran), 0x5a, gran);
    cr_assert_eq(((unsigned char *)(uintptr_t)va)[gran + gran - 1], 0x5a);
    cr_assert_eq(drv_mem_unmap(va + gran, gran), CUDA_SUCCESS);
    cr_assert_eq(drv_mem_release(h), CUDA_SUCCESS);
    cr_assert_eq(drv_mem_address_free(va, 2 * gran), CUDA_SUCCESS);
    cr_assert_eq(drv_primary_ctx_release(0), CUDA_SUCCESS);
    emu_audit_fn audit = (emu_audit_fn)emu_api("fragless_emu_audit");
    cr_assert_eq(audit(2), 0, "leak audit");
}
