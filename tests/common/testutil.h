/*
 * testutil.h — helpers shared by the test suites: where the build is, running a program
 * (optionally under LD_PRELOAD of libfragless) with extra environment and capturing what it
 * printed, and giving a test its own emulated device.
 */
#ifndef FRAGLESS_TESTUTIL_H
#define FRAGLESS_TESTUTIL_H

#include <stdbool.h>
#include <stddef.h>

/* What a program run by tu_run() did. */
struct tu_result {
    int status; /* exit code, 128+signal if it was killed, -1 if it could not be started */
    char *out;  /* stdout, NUL-terminated (free with tu_result_free) */
    char *err;  /* stderr, NUL-terminated */
};

/* The build directory under test (FRAGLESS_BUILD, set by tests/run.sh; default "build"). */
const char *tu_build(void);
/* "<build>/<rel>" in a static rotating buffer (valid for the next 7 calls). */
const char *tu_path(const char *rel);
/* Runs argv[0] with argv, the current environment plus `env` (NULL-terminated "K=V" list,
 * may be NULL), and LD_PRELOAD of libfragless when `preload` is true. Waits at most
 * timeout_s seconds (then kills it). Returns the exit status as in tu_result.status. */
int tu_run(struct tu_result *r, bool preload, const char *const argv[], const char *const env[],
           int timeout_s);
void tu_result_free(struct tu_result *r);
/* Gives this process (and what it runs) an emulated device of its own: a unique
 * FRAGLESS_EMU_NAME, so capacity and leak accounting are not shared with other tests. */
void tu_emu_isolate(void);

#endif
