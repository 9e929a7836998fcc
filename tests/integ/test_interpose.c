/*
 * test_interpose.c — unmodified programs (tests/progs/ip_*) run under LD_PRELOAD of
 * libfragless on the emulated device: every allocation path reaches fragless (each program
 * proves it through fragless_get_stats), pass-through cases reach the real functions, and
 * the library's exported symbols are exactly the intended ones.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* Runs build/tests/progs/NAME with up to two arguments and extra environment, preloaded, on
 * an emulated device of this test's own; fails unless it exits 0 and prints "ok". */
static void run_ok(struct tu_result *r, const char *name, const char *arg1, const char *arg2,
                   const char *const env[])
{
    char path[1024];
    snprintf(path, sizeof path, "tests/progs/%s", name);
    const char *argv[] = {tu_path(path), arg1, arg2, NULL};
    tu_emu_isolate();
    int status = tu_run(r, true, argv, env, 60);
    cr_assert_eq(status, 0, "%s %s %s exited %d\nstdout:\n%s\nstderr:\n%s", name, arg1 ? arg1 : "",
                 arg2 ? arg2 : "", status, r->out, r->err);
    cr_assert(strstr(r->out, "ok"), "%s printed: %s", name, r->out);
}

static void run_prog(const char *name, const char *arg1, const char *arg2)
{
    struct tu_result r;
    run_ok(&r, name, arg1, arg2, NULL);
    tu_result_free(&r);
}

/* run_prog with one extra "K=V" (may be NULL); stderr must contain `err_has` (may be NULL). */
static void run_expect(const char *name, const char *arg, const char *env1, const char *err_has)
{
    struct tu_result r;
    const char *env[] = {env1, NULL};
    run_ok(&r, name, arg, NULL, env);
    cr_assert(!err_has || strstr(r.err, err_has), "stderr lacks \"%s\": %s", err_has, r.err);
    tu_result_free(&r);
}

Test(interpose, runtime_symbols)
{
    run_prog("ip_runtime", "alloc", NULL);
}

Test(interpose, cudaFree_NULL_as_the_first_call)
{
    run_prog("ip_runtime", "free-null-first", NULL);
}

Test(interpose, null_out_pointers_get_the_documented_error)
{
    run_prog("ip_runtime", "null-out", NULL);
}

Test(interpose, passthrough_sends_everything_to_the_real_functions)
{
    run_expect("ip_runtime", "passthrough", "FRAGLESS_CONF=passthrough:true", NULL);
}

Test(interpose, ipc_of_a_fragless_pointer_is_refused_with_a_reason)
{
    run_expect("ip_runtime", "ipc", NULL, "passthrough:true");
}

Test(interpose, public_api_checks_and_answers)
{
    run_prog("ip_runtime", "api", NULL);
}

Test(interpose, driver_that_fails_to_initialize_leaves_everything_to_it)
{
    run_expect("ip_faults", "init-fails", "FRAGLESS_EMU_FAIL=cuInit@1",
               "cannot initialize the CUDA driver");
}

Test(interpose, out_of_memory_comes_back_as_each_apis_error)
{
    run_expect("ip_faults", "oom", "FRAGLESS_EMU_MEM=256M", "out of memory");
}

Test(interpose, stream_context_failures_return_their_error)
{
    run_expect("ip_faults", "stream-ctx", "FRAGLESS_EMU_DEVICES=2",
               "cannot make the caller's context current again");
}

Test(interpose, stream_ordered_calls_use_the_streams_device)
{
    run_expect("ip_devices", NULL, "FRAGLESS_EMU_DEVICES=2", NULL);
}

Test(interpose, a_primary_context_is_remembered_between_calls)
{
    run_prog("ip_ctxcache", "steady", NULL);
}

Test(interpose, a_reset_or_released_primary_context_is_forgotten)
{
    static const char *const ways[] = {"runtime", "driver", "procaddr", "release"};
    for (size_t i = 0; i < 4; i++)
        run_prog("ip_ctxcache", "forget", ways[i]);
}

Test(interpose, context_hooks_pass_the_drivers_error)
{
    run_prog("ip_ctxcache", "bad-device", NULL);
}

Test(interpose, no_capture_query_until_a_capture_is_begun)
{
    run_prog("ip_capture", "none", NULL);
}

Test(interpose, a_capture_begun_through_any_entry_point_is_seen)
{
    static const char *const ways[] = {
        "runtime",       "runtime-ptsz", "driver",          "driver-ptsz", "procaddr",
        "procaddr-ptsz", "entry-point",  "dlsym",           "driver-v1",   "driver-v1-ptsz",
        "procaddr-v1",   "to-graph",     "runtime-to-graph"};
    for (size_t i = 0; i < sizeof ways / sizeof ways[0]; i++)
        run_prog("ip_capture", ways[i], NULL);
}

Test(interpose, a_streams_context_is_remembered_until_a_stream_is_destroyed)
{
    run_prog("ip_streams", "steady", NULL);
}

Test(interpose, a_destroyed_streams_context_is_forgotten)
{
    static const char *const ways[] = {"runtime", "driver", "procaddr", "driver-v1", "procaddr-v1"};
    const char *env[] = {"FRAGLESS_EMU_DEVICES=2", NULL};
    for (size_t i = 0; i < sizeof ways / sizeof ways[0]; i++) {
        struct tu_result r;
        run_ok(&r, "ip_streams", "destroy", ways[i], env);
        tu_result_free(&r);
    }
}

Test(interpose, streams_are_forgotten_when_their_context_is_reset)
{
    static const char *const ways[] = {"runtime", "driver", "release"};
    for (size_t i = 0; i < 3; i++)
        run_prog("ip_streams", "reset", ways[i]);
}

Test(interpose, failed_capture_query_returns_its_error)
{
    run_prog("ip_faults", "capture-query", NULL);
}

/* A last primary-context release destroys the context and its events: fragless's stream
 * pools go without destroying those events again. */
Test(interpose, a_released_contexts_stream_pools_go_without_its_events)
{
    run_expect("ip_release", NULL, "FRAGLESS_EMU_MEM=12M", NULL);
}

Test(interpose, failed_primary_context_query_passes_through)
{
    run_prog("ip_faults", "ctx-state", NULL);
}

Test(interpose, driver_symbols)
{
    run_prog("ip_driver", NULL, NULL);
}

Test(interpose, cuGetProcAddress_both_forms_and_stream_flavours)
{
    static const char *const forms[] = {"v2", "v1"};
    static const char *const flags[] = {"default", "legacy", "ptds"};
    for (size_t i = 0; i < 2; i++) {
        for (size_t j = 0; j < 3; j++)
            run_prog("ip_procaddr", forms[i], flags[j]);
    }
}

Test(interpose, dlsym_on_a_libcuda_handle)
{
    run_prog("ip_dlsym", NULL, NULL);
}

Test(interpose, cudaGetDriverEntryPointByVersion)
{
    run_prog("ip_entry", NULL, NULL);
}

Test(interpose, stream_ordered_calls_and_graph_capture)
{
    run_prog("ip_async", NULL, NULL);
}

Test(interpose, foreign_pointers_go_to_the_real_functions)
{
    run_prog("ip_foreign", NULL, NULL);
}

Test(interpose, eight_threads_allocating_during_first_initialization)
{
    run_prog("ip_threads", NULL, NULL);
}

Test(interpose, eight_threads_see_one_failed_initialization)
{
    run_expect("ip_threads", "init-fails", "FRAGLESS_EMU_FAIL=cuInit@1",
               "cannot initialize the CUDA driver");
}

Test(interpose, fork_after_initialization)
{
    struct tu_result r;
    run_ok(&r, "ip_fork", NULL, NULL, NULL);
    cr_assert(strstr(r.out, "child: "), "children reported: %s", r.out);
    tu_result_free(&r);
}

Test(interpose, dlsym_RTLD_NEXT_keeps_the_callers_place)
{
    run_prog("ip_rtldnext", NULL, NULL);
}

Test(interpose, a_program_that_never_uses_cuda_loads_nothing)
{
    struct tu_result r;
    const char *maps[] = {"/bin/cat", "/proc/self/maps", NULL};
    cr_assert_eq(tu_run(&r, true, maps, NULL, 30), 0, "stderr: %s", r.err);
    cr_assert(strstr(r.out, "libfragless"), "preloaded: %s", r.out);
    cr_assert_null(strstr(r.out, "libcuda"), "no driver loaded: %s", r.out);
    tu_result_free(&r);
    const char *status[] = {"/bin/cat", "/proc/self/status", NULL};
    cr_assert_eq(tu_run(&r, true, status, NULL, 30), 0, "stderr: %s", r.err);
    cr_assert(strstr(r.out, "Threads:\t1\n"), "no thread started: %s", r.out);
    cr_assert_str_empty(r.err, "nothing printed");
    tu_result_free(&r);
}

/* The exported CUDA names and dlsym, as `LC_ALL=C sort` orders them. */
static const char expected_hooks[] = "cuCtxDestroy\n"
                                     "cuCtxDestroy_v2\n"
                                     "cuCtxDisablePeerAccess\n"
                                     "cuCtxEnablePeerAccess\n"
                                     "cuDevicePrimaryCtxRelease_v2\n"
                                     "cuDevicePrimaryCtxReset_v2\n"
                                     "cuGetProcAddress\n"
                                     "cuGetProcAddress_v2\n"
                                     "cuGreenCtxDestroy\n"
                                     "cuIpcGetMemHandle\n"
                                     "cuMemAllocAsync\n"
                                     "cuMemAllocAsync_ptsz\n"
                                     "cuMemAlloc_v2\n"
                                     "cuMemFreeAsync\n"
                                     "cuMemFreeAsync_ptsz\n"
                                     "cuMemFree_v2\n"
                                     "cuMemGetAddressRange_v2\n"
                                     "cuMemGetInfo_v2\n"
                                     "cuPointerGetAttribute\n"
                                     "cuStreamBeginCapture\n"
                                     "cuStreamBeginCaptureToGraph\n"
                                     "cuStreamBeginCaptureToGraph_ptsz\n"
                                     "cuStreamBeginCapture_ptsz\n"
                                     "cuStreamBeginCapture_v2\n"
                                     "cuStreamBeginCapture_v2_ptsz\n"
                                     "cuStreamDestroy\n"
                                     "cuStreamDestroy_v2\n"
                                     "cudaDeviceReset\n"
                                     "cudaFree\n"
                                     "cudaFreeAsync\n"
                                     "cudaFreeAsync_ptsz\n"
                                     "cudaGetDriverEntryPoint\n"
                                     "cudaGetDriverEntryPointByVersion\n"
                                     "cudaGetDriverEntryPointByVersion_ptsz\n"
                                     "cudaGetDriverEntryPoint_ptsz\n"
                                     "cudaIpcGetMemHandle\n"
                                     "cudaMalloc\n"
                                     "cudaMallocAsync\n"
                                     "cudaMallocAsync_ptsz\n"
                                     "cudaMemGetInfo\n"
                                     "cudaStreamBeginCapture\n"
                                     "cudaStreamBeginCaptureToGraph\n"
                                     "cudaStreamBeginCaptureToGraph_ptsz\n"
                                     "cudaStreamBeginCapture_ptsz\n"
                                     "cudaStreamDestroy\n"
                                     "dlsym\n";

/* The library's exported names selected by `grep` must be `expected`, one per line. */
static void expect_exports(const char *grep, const char *expected)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd,
             "nm -D --defined-only '%s' | awk '{print $3}' | grep %s | LC_ALL=C sort",
             tu_path("libfragless.so"), grep);
    const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    struct tu_result r;
    cr_assert_eq(tu_run(&r, false, argv, NULL, 30), 0, "nm: %s", r.err);
    cr_assert_str_eq(r.out, expected);
    tu_result_free(&r);
}

Test(interpose, exported_symbols_are_exactly_the_intended_ones)
{
    expect_exports("-v '^fragless_'", expected_hooks);
    /* fragless_* exports are exactly the functions include/fragless.h declares. */
    const char *src = getenv("FRAGLESS_SRC");
    char cmd[1200];
    snprintf(cmd, sizeof cmd,
             "grep -oE '\\bfragless_[a-z0-9_]+\\(' '%s/include/fragless.h' | tr -d '(' | "
             "LC_ALL=C sort -u",
             src ? src : ".");
    const char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    struct tu_result r;
    cr_assert_eq(tu_run(&r, false, argv, NULL, 30), 0, "grep: %s", r.err);
    cr_assert(strstr(r.out, "fragless_get_stats\n"), "declared: %s", r.out);
    expect_exports("'^fragless_'", r.out);
    tu_result_free(&r);
}
