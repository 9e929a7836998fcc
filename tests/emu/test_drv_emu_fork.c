/*
 * test_drv_emu_fork.c — a child forked after cuInit is refused as by the real driver
 * (CUDA_ERROR_NOT_INITIALIZED from cuInit and every call needing the driver), prints no
 * audit of its parent's objects, while the parent goes on unaffected.
 */
#include <criterion/criterion.h>
#include <cuda.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fragless_emu.h"
#include "testutil.h"

#define CK(call) cr_assert_eq((call), CUDA_SUCCESS, "%s", #call)

Test(drv_emu_fork, child_after_init_is_refused, .init = tu_emu_isolate)
{
    CUcontext ctx;
    CUdeviceptr p;
    int status = 0, v = 0;
    pid_t pid;

    setenv("FRAGLESS_EMU_AUDIT", "strict", 1);
    CK(cuInit(0));
    CK(cuDevicePrimaryCtxRetain(&ctx, 0));
    CK(cuCtxSetCurrent(ctx));
    CK(cuMemAlloc(&p, 4096));
    pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        int n;
        if (cuInit(0) != CUDA_ERROR_NOT_INITIALIZED)
            _exit(10);
        if (cuDeviceGetCount(&n) != CUDA_ERROR_NOT_INITIALIZED)
            _exit(11);
        if (cuMemAlloc(&p, 4096) != CUDA_ERROR_NOT_INITIALIZED)
            _exit(12);
        if (cuDriverGetVersion(&n) != CUDA_SUCCESS)
            _exit(13);
        exit(0); /* the parent's live allocation is not the child's leak */
    }
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_expect(WIFEXITED(status));
    cr_expect_eq(WEXITSTATUS(status), 0);
    CK(cuDriverGetVersion(&v));
    CK(cuMemFree(p));
    CK(cuMemAlloc(&p, 4096));
    CK(cuMemFree(p));
}
