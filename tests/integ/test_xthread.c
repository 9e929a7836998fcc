/*
 * test_xthread.c — allocations freed, looked up, emptied and reclaimed by another thread
 * than the one that allocated them (tests/progs/ip_xthread.c), through the interposer on an
 * emulated device of each test's own. Every mode runs once per configuration in `confs`, so
 * that the heap's promises hold with and without a per-thread front end.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "testutil.h"

/* FRAGLESS_CONF settings every mode runs under ("" = the defaults). */
static const char *const confs[] = {
    "",
    "thread_cache:false",
};

/* Runs ip_xthread MODE under FRAGLESS_CONF=<conf>,<extra_conf> and one more "K=V" (may be
 * NULL); fails unless it exits 0 and prints "ok". */
static void run_one(const char *mode, const char *conf, const char *extra_conf, const char *env1)
{
    char conf_env[256];
    snprintf(conf_env, sizeof conf_env, "FRAGLESS_CONF=%s%s%s", conf,
             *conf && *extra_conf ? "," : "", extra_conf);
    const char *env[] = {conf_env, env1, NULL};
    const char *argv[] = {tu_path("tests/progs/ip_xthread"), mode, NULL};
    struct tu_result r;
    tu_emu_isolate();
    int status = tu_run(&r, true, argv, env, 60);
    cr_assert_eq(status, 0, "ip_xthread %s (%s) exited %d\nstdout:\n%s\nstderr:\n%s", mode,
                 conf_env, status, r.out, r.err);
    cr_assert(strstr(r.out, "ok xthread"), "ip_xthread %s (%s) printed: %s", mode, conf_env, r.out);
    tu_result_free(&r);
}

/* run_one under every configuration. */
static void run_mode(const char *mode, const char *extra_conf, const char *env1)
{
    for (size_t i = 0; i < sizeof confs / sizeof confs[0]; i++)
        run_one(mode, confs[i], extra_conf, env1);
}

Test(xthread, rule1_large_block_freed_by_another_thread)
{
    run_mode("rule1-xthread", "", NULL);
}

Test(xthread, rule1_large_stream_ordered_block_freed_by_another_thread)
{
    run_mode("rule1-xthread-async", "", NULL);
}

Test(xthread, rule1_300k_block_freed_by_another_thread)
{
    run_mode("rule1-xthread-300k", "", NULL);
}

/* Classic 2 MiB segments filled up: only the freed block or a new segment can serve. */
Test(xthread, rule1_300k_block_freed_by_another_thread_classic)
{
    run_mode("rule1-xthread-300k", "expandable_segments:false", NULL);
}

Test(xthread, rule1_64k_block_freed_by_another_thread)
{
    run_mode("rule1-xthread-64k", "", NULL);
}

/* Classic 2 MiB segments filled up: only the freed block or a new segment can serve. */
Test(xthread, rule1_64k_block_freed_by_another_thread_classic)
{
    run_mode("rule1-xthread-64k", "expandable_segments:false", NULL);
}

Test(xthread, rule1_4k_block_freed_by_another_thread)
{
    run_mode("rule1-xthread-4k", "", NULL);
}

/* Classic 2 MiB segments filled up: only the freed block or a new segment can serve. */
Test(xthread, rule1_4k_block_freed_by_another_thread_classic)
{
    run_mode("rule1-xthread-4k", "expandable_segments:false", NULL);
}

Test(xthread, rule1_freed_or_reused_on_per_thread_default_streams)
{
    run_mode("rule1-ptds", "", NULL);
}

Test(xthread, rule1_64k_freed_or_reused_on_per_thread_default_streams)
{
    run_mode("rule1-ptds-64k", "", NULL);
}

Test(xthread, rule1_64k_freed_or_reused_on_per_thread_default_streams_classic)
{
    run_mode("rule1-ptds-64k", "expandable_segments:false", NULL);
}

Test(xthread, rule1_allocated_on_a_per_thread_default_stream)
{
    run_mode("rule1-ptds-x", "", NULL);
}

Test(xthread, rule1_64k_allocated_on_a_per_thread_default_stream)
{
    run_mode("rule1-ptds-x-64k", "", NULL);
}

Test(xthread, rule1_64k_allocated_on_a_per_thread_default_stream_classic)
{
    run_mode("rule1-ptds-x-64k", "expandable_segments:false", NULL);
}

Test(xthread, a_thousand_blocks_freed_by_another_thread)
{
    run_mode("remote-free", "", NULL);
}

Test(xthread, interior_pointers_found_from_any_thread)
{
    run_mode("lookup", "", NULL);
}

Test(xthread, lookups_and_frees_racing_with_the_owners_allocations)
{
    run_mode("concurrent", "", NULL);
}

Test(xthread, lookups_and_frees_racing_with_the_owners_allocations_classic)
{
    run_mode("concurrent", "expandable_segments:false", NULL);
}

Test(xthread, blocks_of_an_exited_thread)
{
    run_mode("exit", "", NULL);
}

Test(xthread, blocks_of_an_exited_thread_classic)
{
    run_mode("exit", "expandable_segments:false", NULL);
}

Test(xthread, empty_cache_returns_another_threads_cache)
{
    run_mode("empty-cache", "", NULL);
}

Test(xthread, empty_cache_returns_another_threads_cache_classic)
{
    run_mode("empty-cache", "expandable_segments:false", NULL);
}

Test(xthread, oom_reclaims_another_threads_cache)
{
    run_mode("oom", "", "FRAGLESS_EMU_MEM=64M");
}

Test(xthread, oom_reclaims_another_threads_cache_classic)
{
    run_mode("oom", "expandable_segments:false", "FRAGLESS_EMU_MEM=64M");
}

Test(xthread, destroyed_streams_blocks_freed_by_another_thread)
{
    run_mode("streamdestroy", "", NULL);
}

Test(xthread, destroyed_streams_blocks_freed_by_another_thread_classic)
{
    run_mode("streamdestroy", "expandable_segments:false", NULL);
}
