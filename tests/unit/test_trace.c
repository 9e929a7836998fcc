/*
 * test_trace.c — the recorder's own behaviour: file naming, the exact line format, buffering
 * (nothing lost across many buffer fills and many threads), the extension switch, write
 * failures and fork.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"

static char dir[64];

static void make_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/fltrace-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = calloc(1, (size_t)n + 1);
    cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    return buf;
}

static long count_lines(const char *text)
{
    long n = 0;
    for (const char *p = text; *p; p++)
        n += *p == '\n';
    return n;
}

Test(trace_unit, device_path_inserts_devN_before_the_extension)
{
    char out[256];
    cr_assert_eq(trace_device_path("/tmp/t.csv", 0, out, sizeof out), 0);
    cr_expect_str_eq(out, "/tmp/t.dev0.csv");
    trace_device_path("/tmp/t", 3, out, sizeof out);
    cr_expect_str_eq(out, "/tmp/t.dev3");
    trace_device_path("/tmp/a.b/trace", 1, out, sizeof out);
    cr_expect_str_eq(out, "/tmp/a.b/trace.dev1");
    trace_device_path("/tmp/.hidden", 0, out, sizeof out);
    cr_expect_str_eq(out, "/tmp/.hidden.dev0");
    trace_device_path("run.%p.log.csv", 2, out, sizeof out);
    char want[64];
    snprintf(want, sizeof want, "run.%d.log.dev2.csv", (int)getpid());
    cr_expect_str_eq(out, want);
    cr_expect_eq(trace_device_path("/tmp/t.csv", 0, out, 8), -1, "too small a buffer");
}

Test(trace_unit, records_every_action_in_rmm_format)
{
    make_dir();
    char path[128], file[160];
    snprintf(path, sizeof path, "%s/t.csv", dir);
    cr_assert_eq(trace_start(path, true), 0);
    cr_expect_eq(trace_start(path, true), -1, "a second start is refused");
    cr_expect(trace_enabled());
    trace_record(0, TRACE_ALLOCATE, 0x7f0000001000, 4096, NULL);
    trace_record(0, TRACE_FREE, 0x7f0000001000, 4096, (CUstream)0x5a3c10);
    trace_record(0, TRACE_ALLOCATE_FAILURE, 0, 1ULL << 40, NULL);
    trace_record(0, TRACE_EMPTY_CACHE, 0, 2097152, NULL);
    trace_record(1, TRACE_ALLOCATE, 0x10, 1, NULL);
    trace_record(2, TRACE_EMPTY_CACHE, 0, 0, NULL);
    trace_record(2, TRACE_ALLOCATE, 0x20, 10, NULL);
    trace_record(2, TRACE_ALLOCATE, 0x30, 100, NULL);
    trace_record(2, TRACE_ALLOCATE, 0x40, 18446744073709551615ULL, NULL);
    trace_flush();
    snprintf(file, sizeof file, "%s/t.dev2.csv", dir);
    char *numbers = slurp(file);
    cr_assert_not_null(numbers);
    cr_expect(strstr(numbers, ",empty cache,0x0,0,0x0\n"), "%s", numbers);
    cr_expect(strstr(numbers, ",allocate,0x20,10,0x0\n"), "%s", numbers);
    cr_expect(strstr(numbers, ",allocate,0x30,100,0x0\n"), "%s", numbers);
    cr_expect(strstr(numbers, ",allocate,0x40,18446744073709551615,0x0\n"), "%s", numbers);
    free(numbers);
    snprintf(file, sizeof file, "%s/t.dev0.csv", dir);
    char *text = slurp(file);
    cr_assert_not_null(text, "no %s", file);
    unsigned long tid;
    int hh, mm, ss, us, n = 0;
    char rest[200];
    cr_assert_eq(strncmp(text, "Thread,Time,Action,Pointer,Size,Stream\n", 39), 0, "%s", text);
    cr_assert_eq(
        sscanf(text + 39, "%lu,%2d:%2d:%2d.%6d,%199[^\n]%n", &tid, &hh, &mm, &ss, &us, rest, &n), 6,
        "%s", text);
    cr_expect_str_eq(rest, "allocate,0x7f0000001000,4096,0x0");
    cr_expect(strstr(text, ",free,0x7f0000001000,4096,0x5a3c10\n"), "%s", text);
    cr_expect(strstr(text, ",allocate failure,0x0,1099511627776,0x0\n"), "%s", text);
    cr_expect(strstr(text, ",empty cache,0x0,2097152,0x0\n"), "%s", text);
    cr_expect_eq(count_lines(text), 5);
    free(text);
    snprintf(file, sizeof file, "%s/t.dev1.csv", dir);
    text = slurp(file);
    cr_assert_not_null(text, "device 1 has its own file");
    cr_expect(strstr(text, ",allocate,0x10,1,0x0\n"), "%s", text);
    free(text);
}

Test(trace_unit, extensions_off_leaves_out_what_rmm_would_refuse)
{
    make_dir();
    char path[128], file[160];
    snprintf(path, sizeof path, "%s/t.csv", dir);
    cr_assert_eq(trace_start(path, false), 0);
    trace_record(0, TRACE_ALLOCATE, 0x1000, 16, NULL);
    trace_record(0, TRACE_EMPTY_CACHE, 0, 2097152, NULL);
    trace_record(0, TRACE_FREE, 0x1000, 16, NULL);
    trace_flush();
    snprintf(file, sizeof file, "%s/t.dev0.csv", dir);
    char *text = slurp(file);
    cr_assert_not_null(text);
    cr_expect_null(strstr(text, "empty cache"), "%s", text);
    cr_expect_eq(count_lines(text), 3);
    free(text);
}

#define THREADS    4
#define PER_THREAD 20000

static void *hammer(void *arg)
{
    uintptr_t base = (uintptr_t)arg << 32;
    for (uintptr_t i = 0; i < PER_THREAD; i++) {
        trace_record(0, TRACE_ALLOCATE, base + i * 512 + 512, 512, NULL);
        trace_record(0, TRACE_FREE, base + i * 512 + 512, 512, NULL);
    }
    return NULL;
}

/* Many buffer fills from several threads: every event arrives, whole lines only. */
Test(trace_unit, buffered_events_from_threads_all_arrive)
{
    make_dir();
    char path[128], file[160];
    snprintf(path, sizeof path, "%s/t.csv", dir);
    cr_assert_eq(trace_start(path, true), 0);
    pthread_t th[THREADS];
    for (uintptr_t i = 0; i < THREADS; i++)
        pthread_create(&th[i], NULL, hammer, (void *)(i + 1));
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    snprintf(file, sizeof file, "%s/t.dev0.csv", dir);
    struct stat st;
    cr_assert_eq(stat(file, &st), 0);
    cr_expect_gt(st.st_size, 0, "a full buffer is written before any flush");
    trace_stop();
    trace_record(0, TRACE_ALLOCATE, 0x42, 1, NULL); /* after stop: written at once */
    char *text = slurp(file);
    cr_assert_not_null(text);
    cr_expect_eq(count_lines(text), 1 + 2L * THREADS * PER_THREAD + 1);
    cr_expect(strstr(text, ",allocate,0x42,1,0x0\n"));
    free(text);
}

Test(trace_unit, an_unwritable_path_stops_only_that_device)
{
    make_dir();
    char path[160], file[200];
    snprintf(path, sizeof path, "%s/no/such/dir/t.csv", dir);
    cr_assert_eq(trace_start(path, true), 0);
    trace_record(0, TRACE_ALLOCATE, 0x1000, 16, NULL); /* fails once, with one message */
    trace_record(0, TRACE_FREE, 0x1000, 16, NULL);
    trace_flush();
    snprintf(file, sizeof file, "%s/no/such/dir/t.dev0.csv", dir);
    cr_expect_neq(access(file, F_OK), 0);
    cr_expect_eq(trace_start("", true), -1);
}

static void record_in_child(bool expect_file, const char *name)
{
    char path[128], file[160];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    cr_assert_eq(trace_start(path, true), 0);
    trace_record(0, TRACE_ALLOCATE, 0x1000, 16, NULL); /* buffered in the parent */
    pid_t pid = fork();
    if (pid == 0) {
        trace_record(0, TRACE_ALLOCATE, 0x2000, 32, NULL);
        trace_stop();
        _exit(0);
    }
    int status;
    waitpid(pid, &status, 0);
    cr_assert_eq(status, 0);
    snprintf(file, sizeof file, "%s/%s", dir, name);
    char child[200];
    char *pct = strstr(file, "%p");
    if (pct)
        snprintf(child, sizeof child, "%.*s%d.dev0.csv", (int)(pct - file), file, (int)pid);
    char *text = pct ? slurp(child) : NULL;
    cr_expect_eq(text != NULL, expect_file, "child file %s", pct ? child : "(none)");
    if (text) { /* the child wrote its own event, not its parent's buffered one */
        cr_expect(strstr(text, ",allocate,0x2000,32,0x0\n"), "%s", text);
        cr_expect_null(strstr(text, "0x1000"), "%s", text);
        free(text);
    }
    trace_stop();
}

Test(trace_unit, fork_child_with_percent_p_records_to_its_own_file)
{
    make_dir();
    record_in_child(true, "f%p.csv");
    char file[160];
    snprintf(file, sizeof file, "%s/f%d.dev0.csv", dir, (int)getpid());
    char *text = slurp(file);
    cr_assert_not_null(text);
    cr_expect(strstr(text, ",allocate,0x1000,16,0x0\n"), "%s", text);
    cr_expect_null(strstr(text, "0x2000"), "%s", text);
    free(text);
}

Test(trace_unit, fork_child_without_percent_p_leaves_the_parent_file_alone)
{
    make_dir();
    record_in_child(false, "g.csv");
    char file[160];
    snprintf(file, sizeof file, "%s/g.dev0.csv", dir);
    char *text = slurp(file);
    cr_assert_not_null(text);
    cr_expect(strstr(text, ",allocate,0x1000,16,0x0\n"), "%s", text);
    cr_expect_null(strstr(text, "0x2000"), "%s", text);
    free(text);
}

/* A write that fails (a full disk: /dev/full) stops recording that device with a message;
 * later events are dropped without another attempt. */
Test(trace_unit, a_failing_write_stops_that_device)
{
    make_dir();
    char path[128], file[160];
    snprintf(path, sizeof path, "%s/t.csv", dir);
    snprintf(file, sizeof file, "%s/t.dev0.csv", dir);
    cr_assert_eq(symlink("/dev/full", file), 0);
    cr_assert_eq(trace_start(path, true), 0);
    for (int i = 0; i < 2000; i++) /* more than a buffer: the write happens here */
        trace_record(0, TRACE_ALLOCATE, 0x1000 + (CUdeviceptr)i * 512, 512, NULL);
    trace_flush();
    trace_record(0, TRACE_FREE, 0x1000, 512, NULL);
    trace_stop();
    snprintf(file, sizeof file, "%s/t.dev1.csv", dir);
    trace_record(1, TRACE_ALLOCATE, 0x1000, 512, NULL); /* device 1 still records */
    char *text = slurp(file);
    cr_assert_not_null(text);
    cr_expect(strstr(text, ",allocate,0x1000,512,0x0\n"), "%s", text);
    free(text);
}
