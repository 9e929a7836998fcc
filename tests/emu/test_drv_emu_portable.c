/*
 * test_drv_emu_portable.c — the documented-API conformance suites (test_drv_api_*) must run
 * unchanged against a real libcuda.so.1: their binaries may need no fragless_emu_* symbol
 * and no fragless header. This suite checks the built binaries and the sources.
 */
#include <criterion/criterion.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* Number of lines of `cmd`'s output that contain `needle`; -1 if it could not run. */
static int lines_with(const char *cmd, const char *needle)
{
    char line[1024];
    int n = 0;
    FILE *p = popen(cmd, "r");

    if (!p)
        return -1;
    while (fgets(line, sizeof line, p))
        n += strstr(line, needle) != NULL;
    return pclose(p) == 0 ? n : -1;
}

Test(drv_emu_portable, api_binaries_need_only_the_driver_api)
{
    char pattern[1024], cmd[2048];
    glob_t g;

    snprintf(pattern, sizeof pattern, "%s/tests/emu/test_drv_api_*", tu_build());
    cr_assert_eq(glob(pattern, 0, NULL, &g), 0, "no %s", pattern);
    for (size_t i = 0; i < g.gl_pathc; i++) {
        if (strchr(strrchr(g.gl_pathv[i], '/'), '.'))
            continue; /* build leftovers, not binaries */
        snprintf(cmd, sizeof cmd, "nm -D --undefined-only '%s'", g.gl_pathv[i]);
        cr_expect_eq(lines_with(cmd, "fragless_emu_"), 0, "%s", g.gl_pathv[i]);
        cr_expect_gt(lines_with(cmd, " cu"), 0, "%s uses the driver", g.gl_pathv[i]);
    }
    globfree(&g);
}

Test(drv_emu_portable, api_sources_include_no_emulator_header)
{
    const char *src = getenv("FRAGLESS_SRC");
    char cmd[2048];

    cr_assert_not_null(src, "FRAGLESS_SRC (set by tests/run.sh)");
    /* a call or the header, not a mention in a comment */
    snprintf(cmd, sizeof cmd,
             "grep -hE 'fragless_emu(\\.h|_[a-z_]+ *\\()|#include <cuda.h>' "
             "'%s'/tests/emu/test_drv_api_*.c",
             src);
    cr_expect_eq(lines_with(cmd, "fragless_emu"), 0);
    cr_expect_gt(lines_with(cmd, "#include <cuda.h>"), 0);
}
