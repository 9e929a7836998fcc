/*
 * test_shm_pageio.c — the pure parts of lib/pageio.h that both fragstat and the library rely
 * on: page names, /proc start times, byte units, the fragmentation figure, JSON strings.
 */
#include <criterion/criterion.h>

#include <string.h>
#include <unistd.h>

#include "pageio.h"

Test(pageio, page_names)
{
    uint32_t uid = 7;
    int32_t pid = 7;
    cr_expect(pio_parse_name("fragless.0.1", &uid, &pid) && uid == 0 && pid == 1);
    cr_expect(pio_parse_name("fragless.1000.4194304", &uid, &pid) && uid == 1000 && pid == 4194304);
    const char *bad[] = {"fragless.",
                         "fragless.0",
                         "fragless.0.",
                         "fragless..1",
                         "fragless.0.0",
                         "fragless.01.5",
                         "fragless.1.05",
                         "fragless.1.2.3",
                         "fragless.1.2x",
                         "fragless.-1.2",
                         "fragless.1.99999999999",
                         "fragless.4294967296.2",
                         "fragless.1.2147483648",
                         "fragless-emu-0-x",
                         "xfragless.1.2",
                         ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_expect_not(pio_parse_name(bad[i], &uid, &pid), "%s", bad[i]);
}

Test(pageio, start_times)
{
    uint64_t self = 0, again = 0, parent = 0;
    cr_assert_eq(pio_start_time(getpid(), &self), 0);
    cr_assert_eq(pio_start_time(getpid(), &again), 0);
    cr_expect_eq(self, again);
    cr_assert_eq(pio_start_time(getppid(), &parent), 0);
    cr_expect_leq(parent, self, "a parent starts before its child");
    cr_expect_gt(self, 0);
    cr_expect_eq(pio_start_time(0x7ffffffe, &self), -ENOENT);
}

Test(pageio, units_and_fragmentation)
{
    char b[24];
    cr_expect_str_eq(pio_human(0, b, sizeof b), "0 B");
    cr_expect_str_eq(pio_human(1023, b, sizeof b), "1023 B");
    cr_expect_str_eq(pio_human(1536, b, sizeof b), "1.50 KiB");
    cr_expect_str_eq(pio_human(1513975808ull, b, sizeof b), "1.41 GiB");
    fragless_stats_t s;
    memset(&s, 0, sizeof s);
    cr_expect_float_eq(pio_fragmentation(&s), 0.0, 1e-9);
    s.reserved_unallocated_bytes.current = 100;
    s.largest_free_block_bytes.current = 100;
    cr_expect_float_eq(pio_fragmentation(&s), 0.0, 1e-9);
    s.largest_free_block_bytes.current = 25;
    cr_expect_float_eq(pio_fragmentation(&s), 75.0, 1e-9);
    s.largest_free_block_bytes.current = 0;
    cr_expect_float_eq(pio_fragmentation(&s), 100.0, 1e-9);
    cr_expect_str_eq(pio_short_command("/usr/bin/python3 /a/b.py --x=1"), "python3 /a/b.py --x=1");
    cr_expect_str_eq(pio_short_command("train"), "train");
}

Test(pageio, json_strings_are_escaped)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    pio_json_string(f, "a\"b\\c\nd\x01\xc3\xa9");
    fclose(f);
    cr_expect_str_eq(buf, "\"a\\\"b\\\\c\\u000ad\\u0001\\u00c3\\u00a9\"");
    free(buf);
}

/* The page is a public, versioned layout: naturally aligned, no size that depends on the
 * compiler's padding choices, arrays where the header says they are. */
Test(pageio, page_layout_is_aligned)
{
    cr_expect_eq(sizeof(fragless_shm_segment_t) % 8, 0);
    cr_expect_eq(sizeof(fragless_shm_device_t) % 8, 0);
    cr_expect_eq(offsetof(fragless_shm_device_t, stats) % 8, 0);
    cr_expect_eq(offsetof(fragless_shm_page_t, seq) % 8, 0);
    cr_expect_eq(offsetof(fragless_shm_page_t, request) % 8, 0);
    cr_expect_eq(offsetof(fragless_shm_page_t, devices) % 8, 0);
    cr_expect_eq(offsetof(fragless_shm_page_t, wake) % 4, 0);
    cr_expect_eq(offsetof(fragless_shm_page_t, response_id),
                 offsetof(fragless_shm_page_t, wake) + 4);
    cr_expect_eq(sizeof(fragless_shm_page_t),
                 offsetof(fragless_shm_page_t, devices) +
                     FRAGLESS_SHM_MAX_DEVICES * sizeof(fragless_shm_device_t));
    cr_expect_lt(sizeof(fragless_shm_page_t), 256 * 1024, "a small page");
}
