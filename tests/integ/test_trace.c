/*
 * test_trace.c — recording a real program under LD_PRELOAD (FRAGLESS_CONF=trace:PATH) and
 * replaying what was recorded: the same events and peak, in RMM's exact line format, one
 * file per device named as RMM names them, %p for per-process files.
 */
#include <dirent.h>
#include <regex.h>

#include "test_replay_util.h"

static void run_recorded_with(struct tu_result *r, const char *conf, const char *events,
                              const char *extra)
{
    static char confvar[600];
    snprintf(confvar, sizeof confvar, "FRAGLESS_CONF=%s", conf);
    const char *argv[] = {tu_path("tests/progs/tr_alloc"), events, extra, NULL};
    const char *env[] = {confvar, NULL};
    cr_assert_eq(tu_run(r, true, argv, env, 120), 0, "tr_alloc: %s", r->err);
}

static void run_recorded(struct tu_result *r, const char *conf, const char *events)
{
    run_recorded_with(r, conf, events, NULL);
}

/* "key=N" in the program's output. */
static unsigned long long prog_value(const char *out, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "%s=", key);
    const char *p = strstr(out, pat);
    cr_assert_not_null(p, "no %s in %s", key, out);
    return strtoull(p + strlen(pat), NULL, 10);
}

Test(trace, record_then_replay_gives_the_same_events_and_peak)
{
    tu_emu_isolate();
    struct tu_result prog, rep;
    const char *dir = ru_tmpdir();
    char conf[300];
    snprintf(conf, sizeof conf, "trace:%s/job.csv", dir);
    run_recorded(&prog, conf, "3000");
    const char *trace = ru_file(dir, "job.dev0.csv");
    cr_assert_eq(access(trace, R_OK), 0, "no %s", trace);
    const char *args[] = {"--emu", "--json", trace, NULL};
    cr_assert_eq(ru_replay(&rep, args), 0, "stderr:\n%s", rep.err);
    cr_expect_eq(ru_json_u64(rep.out, "events"), prog_value(prog.out, "events"));
    cr_expect_eq(ru_json_u64(rep.out, "allocations"), prog_value(prog.out, "allocs"));
    cr_expect_eq(ru_json_u64(rep.out, "peak_requested_bytes"),
                 prog_value(prog.out, "peak_requested"));
    cr_expect_eq(ru_json_u64(rep.out, "unknown_frees"), 0);
    cr_expect_eq(ru_json_u64(rep.out, "ooms"), 0);
    tu_result_free(&prog);
    tu_result_free(&rep);
}

/* Every line is what RMM's logging_resource_adaptor writes and its log parser reads. */
Test(trace, lines_are_in_rmm_format)
{
    tu_emu_isolate();
    struct tu_result prog;
    const char *dir = ru_tmpdir();
    char conf[300], line[512];
    snprintf(conf, sizeof conf, "trace:%s/fmt.csv", dir);
    run_recorded(&prog, conf, "400");
    FILE *f = fopen(ru_file(dir, "fmt.dev0.csv"), "r");
    cr_assert_not_null(f);
    regex_t re;
    cr_assert_eq(regcomp(&re,
                         "^[0-9]+,[0-2][0-9]:[0-5][0-9]:[0-6][0-9]\\.[0-9]{6},"
                         "(allocate|free),0x[0-9a-f]+,[0-9]+,0x[0-9a-f]+\n$",
                         REG_EXTENDED | REG_NOSUB),
                 0);
    cr_assert_not_null(fgets(line, sizeof line, f));
    cr_expect_str_eq(line, "Thread,Time,Action,Pointer,Size,Stream\n");
    long lines = 0;
    while (fgets(line, sizeof line, f)) {
        cr_expect_eq(regexec(&re, line, 0, NULL, 0), 0, "line %ld: %s", lines + 2, line);
        lines++;
    }
    fclose(f);
    regfree(&re);
    cr_expect_eq(lines, (long)prog_value(prog.out, "events"));
    tu_result_free(&prog);
}

Test(trace, percent_p_names_the_file_by_process)
{
    tu_emu_isolate();
    struct tu_result prog;
    const char *dir = ru_tmpdir();
    char conf[300];
    snprintf(conf, sizeof conf, "trace:%s/run-%%p.csv", dir);
    run_recorded(&prog, conf, "50");
    tu_result_free(&prog);
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    struct dirent *e;
    int found = 0;
    while ((e = readdir(d))) {
        int pid = 0, n = 0;
        if (sscanf(e->d_name, "run-%d.dev0.csv%n", &pid, &n) == 1 && e->d_name[n] == 0 && pid > 0)
            found++;
    }
    closedir(d);
    cr_expect_eq(found, 1, "expected one run-PID.dev0.csv in %s", dir);
}

Test(trace, no_trace_without_the_setting)
{
    tu_emu_isolate();
    struct tu_result prog;
    const char *dir = ru_tmpdir();
    cr_assert_eq(chdir(dir), 0);
    run_recorded(&prog, "expandable_segments:false", "50");
    tu_result_free(&prog);
    DIR *d = opendir(dir);
    struct dirent *e;
    int files = 0;
    while ((e = readdir(d)))
        files += e->d_name[0] != '.';
    closedir(d);
    cr_expect_eq(files, 0);
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "no %s", path);
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

/* fragless_empty_cache() is recorded as the extension action "empty cache", which replay
 * performs; trace_extensions:false leaves it out (RMM's parser would refuse it). */
Test(trace, empty_cache_is_an_extension_that_replays_and_can_be_off)
{
    tu_emu_isolate();
    struct tu_result prog, rep;
    const char *dir = ru_tmpdir();
    char conf[300];
    snprintf(conf, sizeof conf, "trace:%s/ext.csv", dir);
    run_recorded_with(&prog, conf, "200", "empty");
    unsigned long long events = prog_value(prog.out, "events");
    tu_result_free(&prog);
    const char *trace = ru_file(dir, "ext.dev0.csv");
    cr_expect(strstr(read_text(trace), ",empty cache,0x0,"), "no empty cache event");
    const char *args[] = {"--emu", "--json", trace, NULL};
    cr_assert_eq(ru_replay(&rep, args), 0, "stderr:\n%s", rep.err);
    cr_expect_eq(ru_json_u64(rep.out, "empty_caches"), 1);
    cr_expect_eq(ru_json_u64(rep.out, "events"), events + 1);
    tu_result_free(&rep);
    snprintf(conf, sizeof conf, "trace:%s/plain.csv,trace_extensions:false", dir);
    run_recorded_with(&prog, conf, "200", "empty");
    tu_result_free(&prog);
    cr_expect_null(strstr(read_text(ru_file(dir, "plain.dev0.csv")), "empty cache"));
}
