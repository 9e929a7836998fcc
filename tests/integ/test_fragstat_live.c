/*
 * test_fragstat_live.c — fragstat against real processes running under LD_PRELOAD on the
 * emulated device: the page shows the numbers the process reports itself (table, JSON,
 * Prometheus); --empty-cache on a sleeping process releases its cache within 100 ms; the page
 * is removed at normal exit, cleaned by fragstat after a kill, absent with stats_page:false;
 * the exit report; the OOM report alone and with another process holding the GPU.
 */
#include <criterion/criterion.h>

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fragless_shm.h"
#include "testutil.h"

extern char **environ;

/* A program started in the background: its stdin (to tell it to finish), stdout, stderr. */
struct child {
    pid_t pid;
    int in;
    FILE *out;
    char err_path[64];
    char before[8192]; /* what it printed up to "ready" */
};

static void child_exec(const char *const argv[], const char *const env[], int in, int out, int err)
{
    dup2(in, 0);
    dup2(out, 1);
    dup2(err, 2);
    const char *pre = getenv("FRAGLESS_TEST_PRELOAD");
    setenv("LD_PRELOAD", pre && *pre ? pre : tu_path("libfragless.so"), 1);
    for (int i = 0; env && env[i]; i++)
        putenv((char *)env[i]);
    execv(argv[0], (char *const *)argv);
    _exit(127);
}

/* Starts argv under LD_PRELOAD and waits until it prints "ready". */
static void spawn(struct child *c, const char *const argv[], const char *const env[])
{
    int in[2], out[2];
    cr_assert_eq(pipe2(in, O_CLOEXEC), 0);
    cr_assert_eq(pipe2(out, O_CLOEXEC), 0);
    snprintf(c->err_path, sizeof c->err_path, "/tmp/fs-live-err-XXXXXX");
    int err = mkstemp(c->err_path);
    cr_assert_geq(err, 0);
    c->pid = fork();
    if (c->pid == 0)
        child_exec(argv, env, in[0], out[1], err);
    close(in[0]);
    close(out[1]);
    close(err);
    c->in = in[1];
    c->out = fdopen(out[0], "r");
    size_t n = 0;
    char line[256];
    c->before[0] = '\0';
    while (fgets(line, sizeof line, c->out)) {
        if (strcmp(line, "ready\n") == 0)
            return;
        n += (size_t)snprintf(c->before + n, sizeof c->before - n, "%s", line);
    }
    cr_assert_fail("%s ended before ready: %s", argv[0], c->before);
}

/* Tells the child to finish; returns its exit status, with what it printed after "ready" in
 * `after` and its stderr in `err` (both may be NULL). */
static int finish(struct child *c, char *after, size_t alen, char *err, size_t elen)
{
    close(c->in);
    size_t n = fread(after ? after : (char[1024]){0}, 1, after ? alen - 1 : 1023, c->out);
    if (after)
        after[n] = '\0';
    fclose(c->out);
    int st;
    waitpid(c->pid, &st, 0);
    int fd = open(c->err_path, O_RDONLY);
    ssize_t e = err && fd >= 0 ? read(fd, err, elen - 1) : 0;
    if (err)
        err[e > 0 ? e : 0] = '\0';
    if (fd >= 0)
        close(fd);
    unlink(c->err_path);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* "name=value" in a program's output. */
static uint64_t printed(const char *text, const char *name)
{
    char key[96];
    snprintf(key, sizeof key, "\n%s=", name);
    const char *p = strstr(text, key);
    cr_assert_not_null(p, "%s not printed in %s", name, text);
    return strtoull(p + strlen(key), NULL, 10);
}

/* A statistic's current value (levels) or value (counters) in fragstat's JSON. */
static uint64_t json_value(const char *json, const char *name)
{
    char key[96];
    snprintf(key, sizeof key, "\"%s\":", name);
    const char *p = strstr(json, key);
    cr_assert_not_null(p, "%s not in %s", name, json);
    p += strlen(key);
    if (strncmp(p, "{\"current\":", 11) == 0)
        p += 11;
    return strtoull(p, NULL, 10);
}

static int fragstat(struct tu_result *r, const char *a1, const char *a2, const char *a3)
{
    const char *argv[] = {tu_path("fragstat"), a1, a2, a3, NULL};
    return tu_run(r, false, argv, NULL, 20);
}

static void page_path(char *buf, size_t len, pid_t pid)
{
    snprintf(buf, len, FRAGLESS_SHM_DIR "/" FRAGLESS_SHM_PREFIX "%u.%d", (unsigned)geteuid(),
             (int)pid);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* fragstat --json --pid, retried until the page shows `reserved` (the thread publishes every
 * FRAGLESS_SHM_UPDATE_MS); the JSON is left in r. */
static void json_showing(struct tu_result *r, pid_t pid, uint64_t reserved)
{
    char sp[16];
    snprintf(sp, sizeof sp, "%d", (int)pid);
    for (int i = 0; i < 100; i++) {
        int rc = fragstat(r, "--json", "--pid", sp);
        if (rc == 0 && json_value(r->out, "reserved_bytes") == reserved)
            return;
        tu_result_free(r);
        sleep_ms(20);
    }
    cr_assert_fail("pid %d never showed reserved_bytes %llu", (int)pid,
                   (unsigned long long)reserved);
}

/* Starts argv and waits until fragstat shows the reserved bytes it printed. */
static void spawn_shown(struct child *c, const char *const argv[], const char *const env[])
{
    struct tu_result r;
    spawn(c, argv, env);
    json_showing(&r, c->pid, printed(c->before, "reserved_bytes"));
    tu_result_free(&r);
}

static int run_oom(const char *mib, struct tu_result *r)
{
    const char *argv[] = {tu_path("tests/progs/fs_oom"), mib, NULL};
    const char *env[] = {"FRAGLESS_EMU_MEM=256M", NULL};
    return tu_run(r, true, argv, env, 30);
}

static const char *hold_argv[] = {NULL, "16", "3072", NULL};

static const char *const *hold(void)
{
    hold_argv[0] = tu_path("tests/progs/fs_hold");
    return hold_argv;
}

/* A holder on a device of its own, shown by fragstat; its pid as text in sp. */
static void hold_shown(struct child *c, char *sp, size_t len)
{
    tu_emu_isolate();
    spawn_shown(c, hold(), NULL);
    snprintf(sp, len, "%d", (int)c->pid);
}

Test(fragstat_live, shows_what_the_process_reports)
{
    struct child c;
    struct tu_result r;
    tu_emu_isolate();
    spawn_shown(&c, hold(), NULL);
    uint64_t reserved = printed(c.before, "reserved_bytes");
    cr_assert_gt(printed(c.before, "reserved_unallocated_bytes"), 0, "%s", c.before);
    cr_assert_eq(fragstat(&r, "--json", "--pid", (char[16]){0}), 2, "empty pid is refused");
    tu_result_free(&r);
    const char *fields[] = {"allocated_bytes",
                            "reserved_unallocated_bytes",
                            "largest_free_block_bytes",
                            "num_allocs",
                            "num_frees",
                            "segments"};
    /* the page may have been published with the reserved bytes final but the frees not yet
     * all counted: look again until it is one published after them */
    size_t same = 0;
    for (int tries = 0; tries < 100 && same < (sizeof fields / sizeof fields[0]); tries++) {
        if (tries)
            sleep_ms(20);
        tu_result_free(&r);
        json_showing(&r, c.pid, reserved);
        for (same = 0; same < (sizeof fields / sizeof fields[0]) &&
                       json_value(r.out, fields[same]) == printed(c.before, fields[same]);
             same++)
            ;
    }
    for (size_t i = 0; i < (sizeof fields / sizeof fields[0]); i++)
        cr_expect_eq(json_value(r.out, fields[i]), printed(c.before, fields[i]), "%s", fields[i]);
    tu_result_free(&r);

    char sp[16], want[160];
    snprintf(sp, sizeof sp, "%d", (int)c.pid);
    cr_assert_eq(fragstat(&r, "--prometheus", "--pid", sp), 0, "%s", r.err);
    snprintf(want, sizeof want, "fragless_reserved_bytes{pid=\"%d\",gpu=\"0\",", (int)c.pid);
    const char *line = strstr(r.out, want);
    cr_assert_not_null(line, "%s", r.out);
    snprintf(want, sizeof want, "} %llu\n", (unsigned long long)reserved);
    cr_expect_eq(strncmp(strchr(line, '}'), want, strlen(want)), 0, "%.200s", line);
    tu_result_free(&r);

    cr_assert_eq(fragstat(&r, "--pid", sp, NULL), 0, "%s", r.err);
    cr_expect(strstr(r.out, sp) && strstr(r.out, "fs_hold"), "%s", r.out);
    tu_result_free(&r);
    cr_assert_eq(fragstat(&r, "--segments", sp, NULL), 0, "%s", r.err);
    cr_expect(strstr(r.out, "segment") && strchr(r.out, '['), "%s", r.out);
    tu_result_free(&r);

    char path[96];
    page_path(path, sizeof path, c.pid);
    cr_expect_eq(access(path, F_OK), 0, "page exists while it runs");
    cr_expect_eq(finish(&c, NULL, 0, NULL, 0), 0);
    cr_expect_eq(access(path, F_OK), -1, "page removed at normal exit");
}

Test(fragstat_live, empty_cache_reaches_a_sleeping_process)
{
    struct child c;
    struct tu_result r;
    tu_emu_isolate();
    spawn_shown(&c, hold(), NULL);
    uint64_t unallocated = printed(c.before, "reserved_unallocated_bytes");
    cr_assert_gt(unallocated, 0, "%s", c.before);

    char sp[16];
    snprintf(sp, sizeof sp, "%d", (int)c.pid);
    cr_assert_eq(fragstat(&r, "--empty-cache", sp, NULL), 0, "%s", r.err);
    const char *in = strstr(r.out, " in ");
    cr_assert_not_null(in, "%s", r.out);
    cr_expect_lt(strtod(in + 4, NULL), 100.0, "answered within 100 ms: %s", r.out);
    cr_expect_gt(strtoull(strchr(r.out, '(') + 1, NULL, 10), 0, "bytes released: %s", r.out);
    tu_result_free(&r);

    cr_assert_eq(fragstat(&r, "--json", "--pid", sp), 0);
    cr_expect_lt(json_value(r.out, "reserved_unallocated_bytes"), unallocated, "%s", r.out);
    cr_expect_geq(json_value(r.out, "num_empty_cache"), 1);
    tu_result_free(&r);

    char after[8192];
    cr_expect_eq(finish(&c, after, sizeof after, NULL, 0), 0);
    cr_expect_lt(printed(after, "reserved_unallocated_bytes"), unallocated, "%s", after);
}

/* A killed process cannot remove its page: the next process that creates one removes it (and
 * fragstat would too: see test_fragstat_pages). */
Test(fragstat_live, killed_process_page_is_cleaned)
{
    struct child c;
    struct tu_result r;
    tu_emu_isolate();
    spawn_shown(&c, hold(), NULL);
    char path[96], sp[16];
    page_path(path, sizeof path, c.pid);
    kill(c.pid, SIGKILL);
    cr_expect_eq(finish(&c, NULL, 0, NULL, 0), 128 + SIGKILL);
    cr_assert_eq(run_oom("1", &r), 0, "%s", r.err);
    tu_result_free(&r);
    cr_expect_eq(access(path, F_OK), -1, "the next process using fragless removed it");
    snprintf(sp, sizeof sp, "%d", (int)c.pid);
    cr_expect_eq(fragstat(&r, "--pid", sp, NULL), 1, "%s", r.err);
    tu_result_free(&r);
}

Test(fragstat_live, stats_page_false_publishes_nothing)
{
    struct child c;
    const char *env[] = {"FRAGLESS_CONF=stats_page:false", NULL};
    tu_emu_isolate();
    spawn(&c, hold(), env);
    sleep_ms(3 * FRAGLESS_SHM_UPDATE_MS);
    char path[96];
    page_path(path, sizeof path, c.pid);
    cr_expect_eq(access(path, F_OK), -1, "no page");
    cr_expect_eq(finish(&c, NULL, 0, NULL, 0), 0);
}

Test(fragstat_live, exit_report_as_json_and_on_stderr)
{
    char dir[] = "/tmp/fs-report-XXXXXX", conf[128], path[128], err[8192], buf[16384];
    cr_assert_not_null(mkdtemp(dir));
    snprintf(conf, sizeof conf, "FRAGLESS_CONF=report:%s/r.%%p.json", dir);
    const char *env[] = {conf, NULL};
    struct child c;
    tu_emu_isolate();
    spawn(&c, hold(), env);
    uint64_t reserved = printed(c.before, "reserved_bytes");
    cr_assert_eq(finish(&c, NULL, 0, err, sizeof err), 0, "%s", err);
    snprintf(path, sizeof path, "%s/r.%d.json", dir, (int)c.pid);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s missing; stderr %s", path, err);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    unlink(path);
    rmdir(dir);
    char want[64];
    snprintf(want, sizeof want, "\"processes\":{\"%d\":{\"pid\":%d,", (int)c.pid, (int)c.pid);
    cr_expect(strstr(buf, want), "%s", buf);
    cr_expect_geq(json_value(buf, "reserved_bytes"), 0);
    snprintf(want, sizeof want, "\"peak\":%llu", (unsigned long long)reserved);
    cr_expect(strstr(strstr(buf, "\"reserved_bytes\""), want), "peak reserved: %s", buf);

    const char *env2[] = {"FRAGLESS_CONF=report:stderr", NULL};
    spawn(&c, hold(), env2);
    cr_assert_eq(finish(&c, NULL, 0, err, sizeof err), 0, "%s", err);
    cr_expect(strstr(err, "exit report (pid") && strstr(err, "peak reserved"), "%s", err);
}

Test(fragstat_live, oom_report_request_larger_than_the_card)
{
    struct tu_result r;
    tu_emu_isolate();
    cr_assert_eq(run_oom("1024", &r), 0, "%s", r.err);
    cr_expect_str_eq(r.out, "oom\n");
    cr_expect(strstr(r.err, "CUDA out of memory. Tried to allocate 1.00 GiB"), "%s", r.err);
    cr_expect(strstr(r.err, "reserved but unallocated"), "%s", r.err);
    cr_expect(strstr(r.err, "larger than the whole GPU"), "%s", r.err);
    tu_result_free(&r);
}

Test(fragstat_live, oom_report_explains_fragmentation)
{
    struct tu_result r;
    const char *argv[] = {tu_path("tests/progs/fs_oom"), "18", "72", NULL};
    /* Classic segments: expandable ones move free pages to the request instead. */
    const char *env[] = {"FRAGLESS_EMU_MEM=256M", "FRAGLESS_CONF=expandable_segments:false", NULL};
    tu_emu_isolate();
    cr_assert_eq(tu_run(&r, true, argv, env, 30), 0, "%s", r.err);
    cr_expect_str_eq(r.out, "oom\n", "%s", r.err);
    cr_expect(strstr(r.err, "is reserved but unallocated in this process, more than the request"),
              "%s", r.err);
    cr_expect(strstr(r.err, "(fragmentation): set expandable_segments:true"), "%s", r.err);
    tu_result_free(&r);
}

/* The same fragmenting program under the default (expandable segments) needs no report. */
Test(fragstat_live, expandable_segments_serve_what_fragmentation_refused)
{
    struct tu_result r;
    const char *argv[] = {tu_path("tests/progs/fs_oom"), "18", "72", NULL};
    const char *env[] = {"FRAGLESS_EMU_MEM=256M", NULL};
    tu_emu_isolate();
    cr_assert_eq(tu_run(&r, true, argv, env, 30), 0, "%s", r.err);
    cr_expect_str_eq(r.out, "ok\n", "%s", r.err);
    cr_expect_null(strstr(r.err, "CUDA out of memory"), "%s", r.err);
    tu_result_free(&r);
}

/* Expandable segments: holes smaller than a page cannot be moved to the request. */
Test(fragstat_live, oom_report_explains_fragmentation_inside_pages)
{
    struct tu_result r;
    const char *argv[] = {tu_path("tests/progs/fs_oom"), "64", "72", NULL};
    const char *env[] = {"FRAGLESS_EMU_MEM=256M", "FRAGLESS_CONF=page_size_mb:8", NULL};
    tu_emu_isolate();
    cr_assert_eq(tu_run(&r, true, argv, env, 30), 0, "%s", r.err);
    cr_expect_str_eq(r.out, "oom\n", "%s", r.err);
    cr_expect(strstr(r.err, "(fragmentation inside pages): a smaller page_size_mb"), "%s", r.err);
    cr_expect_null(strstr(r.err, "set expandable_segments:true"), "%s", r.err);
    tu_result_free(&r);
}

Test(fragstat_live, oom_report_names_the_other_process)
{
    struct child hog;
    struct tu_result r;
    const char *env[] = {"FRAGLESS_EMU_MEM=256M", NULL};
    const char *argv[] = {tu_path("tests/progs/fs_hold"), "48", "4096", NULL};
    tu_emu_isolate();
    spawn_shown(&hog, argv, env);

    cr_assert_eq(run_oom("128", &r), 0, "%s", r.err);
    cr_expect_str_eq(r.out, "oom\n", "%s", r.err);
    char want[64];
    snprintf(want, sizeof want, "pid %d (", (int)hog.pid);
    cr_expect(strstr(r.err, "other processes on this GPU:") && strstr(r.err, want), "%s", r.err);
    cr_expect(strstr(r.err, "advice: other processes hold"), "%s", r.err);
    tu_result_free(&r);
    cr_expect_eq(finish(&hog, NULL, 0, NULL, 0), 0);
}

Test(fragstat_live, forked_child_has_its_own_page)
{
    struct tu_result r;
    const char *argv[] = {tu_path("tests/progs/fs_fork"), NULL};
    tu_emu_isolate();
    cr_assert_eq(tu_run(&r, true, argv, NULL, 30), 0, "%s", r.err);
    const char *want[] = {"parent_page=1", "child_page_before=0",     "child_page=1",
                          "child_exit=0",  "child_page_after_exit=0", "parent_page_after=1"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        cr_expect(strstr(r.out, want[i]), "%s in %s", want[i], r.out);
    tu_result_free(&r);
}

/* True when task `tid` of `pid` is stopped ('T' in its stat line). */
static bool task_stopped(pid_t pid, const char *tid)
{
    char path[300], buf[512];
    snprintf(path, sizeof path, "/proc/%d/task/%.255s/stat", (int)pid, tid);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    return p && p[1] == ' ' && p[2] == 'T';
}

/* Waits until every thread of `pid` is stopped (SIGSTOP takes effect asynchronously). */
static bool stopped(pid_t pid)
{
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/task", (int)pid);
    for (int i = 0; i < 200; i++) {
        DIR *d = opendir(dir);
        bool all = d != NULL;
        for (struct dirent *e; d && (e = readdir(d)) != NULL;)
            all = all && (e->d_name[0] == '.' || task_stopped(pid, e->d_name));
        if (d)
            closedir(d);
        if (all)
            return true;
        sleep_ms(5);
    }
    return false;
}

Test(fragstat_live, stopped_process_gets_a_bounded_wait)
{
    struct child c;
    struct tu_result r;
    char sp[16];
    hold_shown(&c, sp, sizeof sp);
    kill(c.pid, SIGSTOP);
    cr_assert(stopped(c.pid), "pid %d stopped", (int)c.pid);
    cr_expect_eq(fragstat(&r, "--empty-cache", sp, NULL), 4, "%s", r.out);
    cr_expect(strstr(r.err, "did not answer within 1 s"), "%s", r.err);
    tu_result_free(&r);
    kill(c.pid, SIGCONT);
    cr_expect_eq(fragstat(&r, "--empty-cache", sp, NULL), 0, "answers once it runs: %s", r.err);
    tu_result_free(&r);
    cr_expect_eq(fragstat(&r, "--empty-cache", sp, "--device=9"), 4, "device 9 is not used");
    cr_expect(strstr(r.err, "could not empty its cache (error -2)"), "%s", r.err);
    tu_result_free(&r);
    cr_expect_eq(finish(&c, NULL, 0, NULL, 0), 0);
}

/* ---- NVML (a stand-in library compiled from fake_nvml.c; skipped without a compiler) ---- */

static char nvml_dir[64], nvml_env[4][1200];

/* Builds the fake libnvidia-ml.so.1; fills the environment that makes it found. */
static const char *const *fake_nvml(void)
{
    snprintf(nvml_dir, sizeof nvml_dir, "/tmp/fs-nvml-XXXXXX");
    cr_assert_not_null(mkdtemp(nvml_dir));
    char cmd[1024];
    const char *src = getenv("FRAGLESS_SRC");
    snprintf(cmd, sizeof cmd, "cc -shared -fPIC -o %s/libnvidia-ml.so.1 %s/tests/integ/fake_nvml.c",
             nvml_dir, src ? src : ".");
    if (system(cmd) != 0)
        cr_skip_test("no C compiler to build the NVML stand-in");
    const char *ld = getenv("LD_LIBRARY_PATH");
    snprintf(nvml_env[0], sizeof nvml_env[0], "LD_LIBRARY_PATH=%s:%s", nvml_dir, ld ? ld : "");
    snprintf(nvml_env[1], sizeof nvml_env[1], "FAKE_NVML_TOTAL=%llu", 24ull << 30);
    snprintf(nvml_env[2], sizeof nvml_env[2], "FAKE_NVML_USED=%llu", 20ull << 30);
    snprintf(nvml_env[3], sizeof nvml_env[3], "FAKE_NVML_PROCS=4242:%llu", 3ull << 30);
    static const char *env[] = {nvml_env[0], nvml_env[1], nvml_env[2], nvml_env[3], NULL};
    return env;
}

static void remove_fake_nvml(void)
{
    char path[128];
    snprintf(path, sizeof path, "%s/libnvidia-ml.so.1", nvml_dir);
    unlink(path);
    rmdir(nvml_dir);
}

Test(fragstat_live, nvml_tells_the_device_use)
{
    const char *const *env = fake_nvml();
    struct child c;
    struct tu_result r;
    char sp[16];
    hold_shown(&c, sp, sizeof sp);
    const char *argv[] = {tu_path("fragstat"), "--pid", sp, NULL};
    cr_assert_eq(tu_run(&r, false, argv, env, 20), 0, "%s", r.err);
    cr_expect(strstr(r.out, "20.00 GiB used of 24.00 GiB by all processes (NVML)"), "%s", r.out);
    tu_result_free(&r);
    cr_expect_eq(finish(&c, NULL, 0, NULL, 0), 0);
    remove_fake_nvml();
}

Test(fragstat_live, oom_report_lists_what_nvml_sees)
{
    const char *const *env = fake_nvml();
    struct tu_result r;
    const char *argv[] = {tu_path("tests/progs/fs_oom"), "1024", NULL};
    const char *envs[] = {env[0], env[1], env[2], env[3], "FRAGLESS_EMU_MEM=256M", NULL};
    tu_emu_isolate();
    cr_assert_eq(tu_run(&r, true, argv, envs, 30), 0, "%s", r.err);
    cr_expect(strstr(r.err, "pid 4242 (without fragless) uses 3.00 GiB"), "%s", r.err);
    cr_expect(strstr(r.err, "(NVML: 20.00 GiB in use on this GPU by all processes)"), "%s", r.err);
    tu_result_free(&r);
    remove_fake_nvml();
}

/* ---- the driver refusing what the page and the reports ask of it ------------------------ */

/* A holder whose driver refuses `spec` (FRAGLESS_EMU_FAIL), shown by fragstat. */
/* A held process whose driver refuses `spec`; `conf` (may be NULL) is its FRAGLESS_CONF. */
static void hold_refusing(struct child *c, const char *spec, const char *conf, char *sp, size_t len)
{
    static char fail[128], cf[128];
    snprintf(fail, sizeof fail, "FRAGLESS_EMU_FAIL=%s", spec);
    snprintf(cf, sizeof cf, "FRAGLESS_CONF=%s", conf ? conf : "");
    const char *env[] = {fail, cf, NULL};
    tu_emu_isolate();
    spawn_shown(c, hold(), env);
    snprintf(sp, len, "%d", (int)c->pid);
}

Test(fragstat_live, page_without_pci_location_or_capacity)
{
    struct child c;
    struct tu_result r;
    char sp[16];
    hold_refusing(&c, "cuDeviceGetAttribute@*,cuDeviceTotalMem_v2@*", NULL, sp, sizeof sp);
    cr_assert_eq(fragstat(&r, "--json", "--pid", sp), 0, "%s", r.err);
    cr_expect(strstr(r.out, "\"pci_bus_id\":null,\"total_bytes\":0,"), "%s", r.out);
    tu_result_free(&r);
    cr_assert_eq(fragstat(&r, "--pid", sp, NULL), 0, "%s", r.err);
    cr_expect(strstr(r.out, "fs_hold") && !strstr(r.out, "device "), "%s", r.out);
    tu_result_free(&r);
    cr_expect_eq(finish(&c, NULL, 0, NULL, 0), 0);
}

/* Classic segments go back with cuMemFree. */
Test(fragstat_live, empty_cache_the_driver_refuses)
{
    struct child c;
    struct tu_result r;
    char sp[16];
    hold_refusing(&c, "cuMemFree_v2@*", "expandable_segments:false", sp, sizeof sp);
    cr_expect_eq(fragstat(&r, "--empty-cache", sp, NULL), 4, "%s", r.out);
    cr_expect(strstr(r.err, "could not empty its cache (error -3)"), "%s", r.err);
    tu_result_free(&r);
    cr_expect_eq(finish(&c, NULL, 0, NULL, 0), 0);
}

Test(fragstat_live, oom_report_without_free_memory_figure)
{
    struct tu_result r;
    const char *argv[] = {tu_path("tests/progs/fs_oom"), "1024", NULL};
    const char *env[] = {"FRAGLESS_EMU_MEM=256M", "FRAGLESS_EMU_FAIL=cuMemGetInfo_v2@*", NULL};
    tu_emu_isolate();
    cr_assert_eq(tu_run(&r, true, argv, env, 30), 0, "%s", r.err);
    cr_expect(strstr(r.err, "a total capacity of 256.00 MiB of which an unknown amount is free"),
              "%s", r.err);
    cr_expect(strstr(r.err, "larger than the whole GPU"), "%s", r.err);
    tu_result_free(&r);
}

/* Expandable segments give pages back with cuMemUnmap and cuMemRelease. */
Test(fragstat_live, empty_cache_the_driver_refuses_unmap)
{
    struct child c;
    struct tu_result r;
    char sp[16];
    hold_refusing(&c, "cuMemUnmap@*", "expandable_segments:true", sp, sizeof sp);
    cr_expect_eq(fragstat(&r, "--empty-cache", sp, NULL), 4, "%s", r.out);
    cr_expect(strstr(r.err, "could not empty its cache (error -3)"), "%s", r.err);
    tu_result_free(&r);
    cr_expect_eq(finish(&c, NULL, 0, NULL, 0), 0);
}
