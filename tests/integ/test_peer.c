/*
 * test_peer.c — peer access to memory fragless maps, end to end: tests/progs/peer_access runs
 * preloaded on two emulated devices of the test's own, through the runtime
 * (cudaDeviceEnablePeerAccess, which reaches fragless's cuCtxEnablePeerAccess through
 * cuGetProcAddress) and the driver API; the failure case checks the leak audit in-process.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "testutil.h"

static void run_mode(const char *mode)
{
    struct tu_result r;
    const char *argv[] = {tu_path("tests/progs/peer_access"), mode, NULL};
    const char *env[] = {"FRAGLESS_EMU_DEVICES=2", NULL};
    tu_emu_isolate();
    int status = tu_run(&r, true, argv, env, 60);
    cr_assert_eq(status, 0, "peer_access %s exited %d\nstdout:\n%s\nstderr:\n%s", mode, status,
                 r.out, r.err);
    cr_assert(strstr(r.out, "ok"), "peer_access %s printed: %s", mode, r.out);
    tu_result_free(&r);
}

Test(peer, memory_mapped_after_the_enable_is_granted)
{
    run_mode("after");
}

Test(peer, memory_mapped_before_the_enable_is_granted)
{
    run_mode("before");
}

Test(peer, without_enabling_the_peer_has_no_access)
{
    run_mode("none");
}

Test(peer, driver_api_enable_and_disable)
{
    run_mode("driver");
}

Test(peer, a_failing_grant_fails_the_enable_and_leaks_nothing)
{
    run_mode("fail");
}

Test(peer, not_learning_the_device_fails_the_enable_and_undoes_it)
{
    run_mode("ctxfail");
}
