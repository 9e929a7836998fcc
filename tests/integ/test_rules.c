/*
 * test_rules.c — DESIGN §4's correctness rules where no other suite enforces them: each test
 * runs a program from tests/progs/rule_*.c (or ip_*.c) under LD_PRELOAD of libfragless on an
 * emulated device of its own. docs/correctness.md maps every rule to its tests and says how
 * each was seen to fail without the rule.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "testutil.h"

/* Runs build/tests/progs/NAME ARG with extra environment `env` (NULL-terminated, may be NULL);
 * fails unless it exits 0 and prints "ok". The caller frees r. */
static void run_ok(struct tu_result *r, const char *name, const char *arg, const char *const env[])
{
    char path[1024];
    snprintf(path, sizeof path, "tests/progs/%s", name);
    const char *argv[] = {tu_path(path), arg, NULL};
    tu_emu_isolate();
    int status = tu_run(r, true, argv, env, 60);
    cr_assert_eq(status, 0, "%s %s exited %d\nstdout:\n%s\nstderr:\n%s", name, arg ? arg : "",
                 status, r->out, r->err);
    cr_assert(strstr(r->out, "ok"), "%s printed: %s", name, r->out);
}

/* Rule 5: a fork while another thread holds fragless's initialization locks. */
Test(rules, fork_during_the_first_initialization)
{
    struct tu_result r;
    const char *env[] = {"FRAGLESS_CONF=verbose:3", NULL};
    run_ok(&r, "rule_fork_init", NULL, env);
    cr_assert(strstr(r.out, "child: "), "the child reported: %s", r.out);
    tu_result_free(&r);
}

/* Rule 3 (initialization is lazy and quiet): a default run prints nothing on stderr; a missing
 * optional driver feature is an info line, shown from verbose:2. */
Test(rules, a_default_run_prints_nothing)
{
    struct tu_result r;
    run_ok(&r, "ip_runtime", "alloc", NULL);
    cr_assert_str_empty(r.err, "stderr: %s", r.err);
    tu_result_free(&r);
    const char *env[] = {"FRAGLESS_CONF=verbose:2", NULL};
    run_ok(&r, "ip_runtime", "alloc", env);
    cr_assert(strstr(r.err, "lacks cuIpcGetMemHandle"), "verbose:2 names it: %s", r.err);
    tu_result_free(&r);
}

/* Rule 3: hooked calls made on the initializing thread while fragless initializes. */
Test(rules, calls_during_the_first_initialization_return)
{
    struct tu_result r;
    run_ok(&r, "rule_reentry", NULL, NULL);
    tu_result_free(&r);
}

/* Rule 1 through the interposer: no reuse while work issued before the free may write. */
Test(rules, no_reuse_while_earlier_work_may_write_the_block)
{
    struct tu_result r;
    run_ok(&r, "rule_reuse", NULL, NULL);
    tu_result_free(&r);
}
