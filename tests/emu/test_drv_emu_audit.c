/*
 * test_drv_emu_audit.c — the leak audit: on demand it lists what is still held (allocation,
 * handle, mapping, reservation, stream, event, pool block) and nothing once all is released;
 * at exit FRAGLESS_EMU_AUDIT=strict turns a leak into exit status 99, =1 only reports.
 */
#include <criterion/criterion.h>
#include <cuda.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
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

/* The audit text and count. */
static int audit_text(char *buf, size_t len)
{
    FILE *f = tmpfile();
    int n;
    size_t got;

    cr_assert_not_null(f);
    n = fragless_emu_audit(fileno(f));
    rewind(f);
    got = fread(buf, 1, len - 1, f);
    buf[got] = '\0';
    fclose(f);
    return n;
}

TestSuite(drv_emu_audit, .init = tu_emu_isolate);

Test(drv_emu_audit, lists_everything_held)
{
    CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = 0}};
    CUmemGenericAllocationHandle h, leaked;
    CUdeviceptr p, va, ap;
    CUstream s;
    CUevent e;
    char text[4096];

    init_ctx();
    cr_expect_eq(audit_text(text, sizeof text), 0);
    cr_expect(strstr(text, "nothing leaked"));
    CK(cuMemAlloc(&p, 4096));
    CK(cuMemCreate(&h, 2 << 20, &prop, 0));
    CK(cuMemCreate(&leaked, 2 << 20, &prop, 0));
    CK(cuMemAddressReserve(&va, 4 << 20, 0, 0, 0));
    CK(cuMemMap(va, 2 << 20, 0, h, 0));
    CK(cuStreamCreate(&s, 0));
    CK(cuEventCreate(&e, 0));
    CK(cuMemAllocAsync(&ap, 1000, s));
    cr_expect_eq(audit_text(text, sizeof text), 8);
    cr_expect(strstr(text, "cuMemAlloc allocation"));
    cr_expect(strstr(text, "cuMemCreate handle"));
    cr_expect(strstr(text, "cuMemAddressReserve range"));
    cr_expect(strstr(text, "cuMemMap mapping"));
    cr_expect(strstr(text, "cuMemAllocAsync block"));
    cr_expect(strstr(text, "stream"));
    cr_expect(strstr(text, "event"));

    CK(cuMemFreeAsync(ap, s));
    CK(cuStreamSynchronize(s));
    CK(cuMemRelease(h)); /* still mapped: the mapping is what remains */
    CK(cuMemRelease(leaked));
    CK(cuMemFree(p));
    CK(cuEventDestroy(e));
    CK(cuStreamDestroy(s));
    cr_expect_eq(audit_text(text, sizeof text), 2, "%s", text);
    CK(cuMemUnmap(va, 2 << 20));
    CK(cuMemAddressFree(va, 4 << 20));
    cr_expect_eq(audit_text(text, sizeof text), 0, "%s", text);
    cr_expect_eq(fragless_emu_used(0), 0);
}

/* Forks a child that sets FRAGLESS_EMU_AUDIT=mode, optionally leaks, and exits normally. */
static int child_exit_status(const char *mode, bool leak)
{
    int status = 0;
    pid_t pid = fork();

    cr_assert_geq(pid, 0);
    if (pid == 0) {
        CUdeviceptr p;
        CUcontext ctx;
        setenv("FRAGLESS_EMU_AUDIT", mode, 1);
        if (cuInit(0) || cuDevicePrimaryCtxRetain(&ctx, 0) || cuCtxSetCurrent(ctx) ||
            cuMemAlloc(&p, 4096))
            _exit(3);
        if (!leak && cuMemFree(p))
            _exit(4);
        exit(0);
    }
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status));
    return WEXITSTATUS(status);
}

Test(drv_emu_audit, strict_makes_a_leak_exit_99)
{
    cr_expect_eq(child_exit_status("strict", true), 99);
    cr_expect_eq(child_exit_status("strict", false), 0);
    cr_expect_eq(child_exit_status("1", true), 0);
}
