/*
 * test_replay_util.h — helpers of the trace and replay integration suites: a scratch
 * directory, writing a file, running fragreplay and the converter, reading JSON numbers.
 */
#ifndef TEST_REPLAY_UTIL_H
#define TEST_REPLAY_UTIL_H

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

/* A fresh directory for this test's files: "/tmp/fltr-XXXXXX". */
static inline const char *ru_tmpdir(void)
{
    static char dir[64];
    snprintf(dir, sizeof dir, "/tmp/fltr-XXXXXX");
    cr_assert_not_null(mkdtemp(dir), "mkdtemp");
    return dir;
}

/* "<dir>/<name>" in one of 8 rotating buffers. */
static inline const char *ru_file(const char *dir, const char *name)
{
    static char bufs[8][256];
    static int next;
    char *b = bufs[next++ & 7];
    snprintf(b, sizeof bufs[0], "%s/%s", dir, name);
    return b;
}

static inline void ru_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

/* The number after "key": in JSON text; fails the test when absent. */
static inline unsigned long long ru_json_u64(const char *json, const char *key)
{
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *p = strstr(json, pat);
    cr_assert_not_null(p, "no %s in:\n%s", key, json);
    return strtoull(p + strlen(pat), NULL, 10);
}

/* The n-th (from 0) occurrence's number, for per-configuration results. */
static inline unsigned long long ru_json_u64_nth(const char *json, const char *key, int n)
{
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *p = json;
    for (int i = 0; i <= n; i++) {
        p = strstr(i ? p + 1 : p, pat);
        cr_assert_not_null(p, "fewer than %d %s in:\n%s", n + 1, key, json);
    }
    return strtoull(p + strlen(pat), NULL, 10);
}

/* Runs build/fragreplay with argv (NULL-terminated, without the program) on the emulated
 * device's own FRAGLESS_EMU_NAME. */
static inline int ru_replay(struct tu_result *r, const char *const *args)
{
    const char *argv[32] = {tu_path("fragreplay")};
    int n = 1;
    while (args[n - 1] && n < 31) {
        argv[n] = args[n - 1];
        n++;
    }
    argv[n] = NULL;
    return tu_run(r, false, argv, NULL, 120);
}

/* python3 tools/torch_snapshot_to_csv.py PICKLE -o OUT */
static inline int ru_convert(struct tu_result *r, const char *pickle, const char *out)
{
    static char tool[1024];
    const char *src = getenv("FRAGLESS_SRC");
    snprintf(tool, sizeof tool, "%s/tools/torch_snapshot_to_csv.py", src ? src : ".");
    const char *argv[] = {"/usr/bin/env", "python3", tool, pickle, "-o", out, NULL};
    return tu_run(r, false, argv, NULL, 60);
}

/* Runs a python3 program given as text. */
static inline int ru_python(struct tu_result *r, const char *program)
{
    const char *argv[] = {"/usr/bin/env", "python3", "-c", program, NULL};
    return tu_run(r, false, argv, NULL, 60);
}

#endif
