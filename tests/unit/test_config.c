/*
 * test_config.c — config.c: every value type, the pair syntax (whitespace, empty input,
 * trailing comma, '=' separator, brackets), bad pairs and their messages, duplicates, very
 * long input, formatting round trips, README coverage of every key, and config_get() (once
 * only, error report, verbose printing, strict exit), the last in forked children whose
 * stderr is a pipe.
 */
#include <criterion/criterion.h>

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"

#define MAX_ERRS 8

static struct config c;
static struct conf_error errs[MAX_ERRS];

/* Parses text over the defaults into c; returns the number of bad pairs. */
static int parse(const char *text)
{
    config_defaults(&c);
    memset(errs, 0, sizeof errs);
    return config_parse(text, &c, errs, MAX_ERRS);
}

static bool same_as_defaults(void)
{
    struct config d;
    config_defaults(&d);
    return memcmp(&d, &c, sizeof d) == 0;
}

/* Parses "key:value" over the defaults; returns the number of bad pairs. */
static int parse_kv(const char *key, const char *value)
{
    static char text[1024];
    snprintf(text, sizeof text, "%s:%s", key, value);
    return parse(text);
}

/* Each of values is one bad pair for key and leaves every setting at its default. */
static void expect_rejected(const char *key, const char *const *values, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(parse_kv(key, values[i]), 1, "%s:%s", key, values[i]);
        cr_assert(same_as_defaults(), "%s:%s", key, values[i]);
    }
}

/* text is one bad pair, reported with exactly `message`. */
static void expect_error(const char *text, const char *message)
{
    cr_assert_eq(parse(text), 1, "%s", text);
    cr_assert_str_eq(errs[0].message, message);
}

/* A string of n copies of unit (n * strlen(unit) bytes), malloc'd. */
static char *repeat(const char *unit, size_t n)
{
    size_t len = strlen(unit);
    char *s = malloc(n * len + 1);
    for (size_t i = 0; i < n; i++)
        memcpy(s + i * len, unit, len);
    s[n * len] = '\0';
    return s;
}

Test(config, defaults)
{
    config_defaults(&c);
    cr_assert_not(c.passthrough);
    cr_assert_not(c.strict);
    cr_assert_eq(c.verbose, 0);
    cr_assert_str_eq(c.driver_path, "");
    cr_assert_eq(c.expandable_segments, -1);
    cr_assert_eq(c.max_split_size, SIZE_MAX);
    for (int i = 0; i < CONF_RP2_INTERVALS; i++)
        cr_assert_eq(c.roundup_power2_divisions[i], 0);
    cr_assert_eq(c.garbage_collection_threshold, 0);
    cr_assert_eq(c.release_threshold, SIZE_MAX);
    cr_assert_eq(c.page_size, 8 * FL_MiB);
    cr_assert(c.thread_cache);
    cr_assert_str_eq(c.trace_path, "");
    cr_assert(c.trace_extensions);
    cr_assert_str_eq(c.report, "");
    cr_assert(c.stats_page);
}

Test(config, empty_input_trailing_comma_and_blank_pairs)
{
    const char *ok[] = {"", " \t\n", ",", ",,, ,", "verbose:2,", "verbose:2, ,,"};
    cr_assert_eq(config_parse(NULL, &c, errs, MAX_ERRS), 0);
    for (size_t i = 0; i < FL_ARRAY_SIZE(ok); i++) {
        cr_assert_eq(parse(ok[i]), 0, "\"%s\": %s", ok[i], errs[0].message);
        cr_assert(i >= 4 ? c.verbose == 2 : same_as_defaults());
    }
}

Test(config, whitespace_around_keys_and_values)
{
    cr_assert_eq(parse("  verbose : 2 ,\tstrict\t:\ttrue\n, trace = /tmp/a b \r"), 0, "%s",
                 errs[0].message);
    cr_assert_eq(c.verbose, 2);
    cr_assert(c.strict);
    cr_assert_str_eq(c.trace_path, "/tmp/a b");
}

Test(config, bool_words)
{
    const char *yes[] = {"true", "TRUE", "1", "yes", "Yes", "on", "ON"};
    const char *no[] = {"false", "False", "0", "no", "NO", "off", "Off"};
    char text[64];
    for (size_t i = 0; i < FL_ARRAY_SIZE(yes); i++) {
        snprintf(text, sizeof text, "passthrough:%s,stats_page:%s", yes[i], no[i]);
        cr_assert_eq(parse(text), 0, "%s", text);
        cr_assert(c.passthrough, "%s", text);
        cr_assert_not(c.stats_page, "%s", text);
    }
}

Test(config, bad_bool_names_key_value_and_what_is_accepted)
{
    expect_error("passthrough:maybe", "FRAGLESS_CONF: invalid value \"maybe\" for passthrough: "
                                      "expected true/false, 1/0, yes/no or on/off");
    cr_assert(same_as_defaults());
    cr_assert_eq(parse("stats_page:2"), 1);
    cr_assert_eq(parse("stats_page:"), 1);
    cr_assert(same_as_defaults());
}

Test(config, thread_cache_on_off_and_bad_values)
{
    cr_assert_eq(parse("thread_cache:false"), 0, "%s", errs[0].message);
    cr_assert_not(c.thread_cache);
    cr_assert_eq(parse("thread_cache:0,thread_cache:TRUE"), 0, "%s", errs[0].message);
    cr_assert(c.thread_cache);
    cr_assert_eq(parse(" thread_cache = off "), 0, "%s", errs[0].message);
    cr_assert_not(c.thread_cache);
    expect_error("thread_cache:perthread",
                 "FRAGLESS_CONF: invalid value \"perthread\" for thread_cache: "
                 "expected true/false, 1/0, yes/no or on/off");
    cr_assert(same_as_defaults());
    const char *bad[] = {"", "2", "-1", "truee", "t", "no no"};
    expect_rejected("thread_cache", bad, FL_ARRAY_SIZE(bad));
    cr_assert_eq(parse("thread_cache:off,thread_cache:maybe"), 1);
    cr_assert_not(c.thread_cache, "a bad value leaves the earlier one");
}

Test(config, int_range)
{
    cr_assert_eq(parse("verbose:3"), 0);
    cr_assert_eq(c.verbose, 3);
    cr_assert_eq(parse("verbose:0"), 0);
    cr_assert_eq(c.verbose, 0);
    expect_error("verbose:4",
                 "FRAGLESS_CONF: invalid value \"4\" for verbose: expected an integer 0..3");
    const char *bad[] = {"maybe", "-1", "1x", "", "+1", "0x1", "1 2", "99999999999999999999999"};
    expect_rejected("verbose", bad, FL_ARRAY_SIZE(bad));
    expect_error("verbose:maybe", "FRAGLESS_CONF: invalid value \"maybe\" for verbose: "
                                  "expected an integer 0..3");
}

Test(config, expandable_segments_auto_or_bool)
{
    cr_assert_eq(parse("expandable_segments:True"), 0);
    cr_assert_eq(c.expandable_segments, 1);
    cr_assert_eq(parse("expandable_segments:off"), 0);
    cr_assert_eq(c.expandable_segments, 0);
    cr_assert_eq(parse("expandable_segments:off,expandable_segments:AUTO"), 0);
    cr_assert_eq(c.expandable_segments, -1);
    expect_error("expandable_segments:sometimes",
                 "FRAGLESS_CONF: invalid value \"sometimes\" for expandable_segments: "
                 "expected auto or true/false, 1/0, yes/no or on/off");
}

Test(config, sizes_and_suffixes)
{
    static const struct {
        const char *text;
        size_t bytes;
    } ok[] = {
        {"64", 64 * FL_MiB},      {"64M", 64 * FL_MiB},    {"64mb", 64 * FL_MiB},
        {"64MiB", 64 * FL_MiB},   {"65536K", 64 * FL_MiB}, {"65536kib", 64 * FL_MiB},
        {"65536KB", 64 * FL_MiB}, {"1G", FL_GiB},          {"1gb", FL_GiB},
        {"2GiB", 2 * FL_GiB},     {"1T", 1024 * FL_GiB},   {"21", 21 * FL_MiB},
        {"20971521B", 20971521},  {"unlimited", SIZE_MAX}, {"UNLIMITED", SIZE_MAX},
        {"4096", 4096 * FL_MiB},
    };
    for (size_t i = 0; i < FL_ARRAY_SIZE(ok); i++) {
        cr_assert_eq(parse_kv("max_split_size_mb", ok[i].text), 0, "%s", errs[0].message);
        cr_assert_eq(c.max_split_size, ok[i].bytes, "%s", ok[i].text);
    }
}

Test(config, bad_sizes)
{
    const char *bad[] = {"20",
                         "20M",
                         "20971520b",
                         "0",
                         "1.5G",
                         "-5",
                         "64 M",
                         "64X",
                         "M",
                         "",
                         "0x40",
                         "+64",
                         "18446744073709551615",
                         "17592186044416G",
                         "unlimitedx"};
    expect_rejected("max_split_size_mb", bad, FL_ARRAY_SIZE(bad));
    expect_error("max_split_size_mb:20",
                 "FRAGLESS_CONF: invalid value \"20\" for max_split_size_mb: expected a size "
                 "greater than 20 MiB (a bare number means MiB) or unlimited");
}

Test(config, release_threshold_and_page_size)
{
    cr_assert_eq(parse("release_threshold_mb:0"), 0);
    cr_assert_eq(c.release_threshold, 0);
    cr_assert_eq(parse("release_threshold_mb:512K"), 0);
    cr_assert_eq(c.release_threshold, 512 * FL_KiB);
    const char *pages_ok[] = {"2", "4M", "2048K", "1024", "1G", "20"};
    const size_t bytes[] = {2 * FL_MiB, 4 * FL_MiB, 2 * FL_MiB, FL_GiB, FL_GiB, 20 * FL_MiB};
    for (size_t i = 0; i < FL_ARRAY_SIZE(pages_ok); i++) {
        cr_assert_eq(parse_kv("page_size_mb", pages_ok[i]), 0, "%s", pages_ok[i]);
        cr_assert_eq(c.page_size, bytes[i], "%s", pages_ok[i]);
    }
    const char *pages_bad[] = {"0", "1", "3", "1026", "2G", "3M", "unlimited"};
    expect_rejected("page_size_mb", pages_bad, FL_ARRAY_SIZE(pages_bad));
    cr_assert_str_eq(errs[0].message,
                     "FRAGLESS_CONF: invalid value \"unlimited\" for page_size_mb: expected a "
                     "multiple of 2 MiB from 2 MiB to 1 GiB (a bare number means MiB)");
}

Test(config, fraction)
{
    static const struct {
        const char *text;
        double v;
    } ok[] = {{"0.8", 0.8},        {"0", 0}, {"0.0", 0}, {".5", 0.5}, {"0.123456789", 0.123456789},
              {"0.99999", 0.99999}};
    for (size_t i = 0; i < FL_ARRAY_SIZE(ok); i++) {
        cr_assert_eq(parse_kv("garbage_collection_threshold", ok[i].text), 0, "%s", ok[i].text);
        cr_assert_eq(c.garbage_collection_threshold, ok[i].v, "%s", ok[i].text);
    }
    const char *bad[] = {"1", "1.0", "1.5", "-0.1", "abc", "nan", "0.8.1", "1e-3", ".", "", "0,8"};
    expect_rejected("garbage_collection_threshold", bad, FL_ARRAY_SIZE(bad));
    expect_error("garbage_collection_threshold:1",
                 "FRAGLESS_CONF: invalid value \"1\" for garbage_collection_threshold: "
                 "expected a number greater than 0 and less than 1, or 0 for off");
}

Test(config, paths_and_separators)
{
    cr_assert_eq(parse("driver:/opt/cuda/lib64/libcuda.so.1,trace:/tmp/a:b=c,report=stderr"), 0);
    cr_assert_str_eq(c.driver_path, "/opt/cuda/lib64/libcuda.so.1");
    cr_assert_str_eq(c.trace_path, "/tmp/a:b=c", "the first ':' or '=' separates");
    cr_assert_str_eq(c.report, "stderr");
    cr_assert_eq(parse("trace:/tmp/t,trace:"), 0);
    cr_assert_str_eq(c.trace_path, "", "an empty path switches tracing off");
}

Test(config, expand_path)
{
    char out[64], want[64];
    snprintf(want, sizeof want, "/tmp/r.%d.json", (int)getpid());
    cr_assert_eq(config_expand_path("/tmp/r.%p.json", out, sizeof out), 0);
    cr_assert_str_eq(out, want);
    cr_assert_eq(config_expand_path("100%%-%x%", out, sizeof out), 0);
    cr_assert_str_eq(out, "100%-%x%", "%% is one '%', any other '%' stays");
    cr_assert_eq(config_expand_path("abcdef", out, 4), -1, "too long");
    cr_assert_str_eq(out, "abc");
    int digits = snprintf(want, sizeof want, "%d", (int)getpid());
    cr_assert_eq(config_expand_path("ab%p", out, 2 + (size_t)digits), -1, "the pid does not fit");
    cr_assert_str_eq(out, "ab", "no part of a pid");
    cr_assert_eq(config_expand_path("abc", out, 4), 0, "exactly fits");
    cr_assert_str_eq(out, "abc");
}

Test(config, path_length_limit)
{
    char text[CONF_PATH_MAX + 32];
    char *path = repeat("p", CONF_PATH_MAX - 1);
    snprintf(text, sizeof text, "trace:%s", path);
    cr_assert_eq(parse(text), 0);
    cr_assert_str_eq(c.trace_path, path);
    snprintf(text, sizeof text, "trace:%sq,verbose:1", path);
    cr_assert_eq(parse(text), 1);
    cr_assert_str_eq(c.trace_path, "", "never truncated");
    cr_assert_eq(c.verbose, 1);
    cr_assert_str_eq(errs[0].message,
                     "FRAGLESS_CONF: value \"pppppppppppppppppppppppppppppppppppppppppppppppp..."
                     "\" for trace is too long (512 bytes; at most 511)");
    free(path);
}

Test(config, unknown_key_and_missing_separator)
{
    cr_assert_eq(parse("verbose:2,colour:blue,strict:1"), 1);
    cr_assert_eq(c.verbose, 2);
    cr_assert(c.strict);
    cr_assert_str_eq(errs[0].message,
                     "FRAGLESS_CONF: unknown key \"colour\" (value \"blue\"): expected one of "
                     "passthrough, strict, verbose, driver, expandable_segments, "
                     "max_split_size_mb, roundup_power2_divisions, garbage_collection_threshold, "
                     "release_threshold_mb, page_size_mb, page_moving, free_mapped_keep_mb, "
                     "thread_cache, trace, trace_extensions, report, stats_page");
    cr_assert_eq(parse("Verbose:1"), 1, "keys are case-sensitive");
    cr_assert_eq(parse("verbose,strict:yes"), 1);
    cr_assert(c.strict);
    cr_assert_str_eq(errs[0].message, "FRAGLESS_CONF: invalid pair \"verbose\": expected "
                                      "key:value");
    cr_assert_eq(parse(":1"), 1);
    cr_assert_eq(parse("bad\x01key:1"), 1);
    cr_assert(strstr(errs[0].message, "\"bad?key\""), "%s", errs[0].message);
}

Test(config, duplicate_last_good_value_wins)
{
    cr_assert_eq(parse("verbose:1,verbose:3"), 0);
    cr_assert_eq(c.verbose, 3);
    cr_assert_eq(parse("verbose:1,verbose:9"), 1);
    cr_assert_eq(c.verbose, 1, "a bad pair leaves the value as it was");
}

Test(config, several_errors_each_reported_others_apply)
{
    cr_assert_eq(parse("verbose:9,strict:yes,nokey:1,page_size_mb:3,stats_page:off"), 3);
    cr_assert(c.strict);
    cr_assert_not(c.stats_page);
    cr_assert(strstr(errs[0].message, "verbose"));
    cr_assert(strstr(errs[1].message, "nokey"));
    cr_assert(strstr(errs[2].message, "page_size_mb"));
    cr_assert_str_eq(errs[3].message, "");
}

Test(config, errors_beyond_the_array_are_counted_not_written)
{
    struct conf_error few[3] = {0};
    config_defaults(&c);
    cr_assert_eq(config_parse("a:1,b:2,c:3", &c, few, 2), 3);
    cr_assert(strstr(few[1].message, "\"b\""));
    cr_assert_str_eq(few[2].message, "");
    cr_assert_eq(config_parse("a:1,b:2,verbose:2", &c, NULL, 0), 2);
    cr_assert_eq(c.verbose, 2);
}

Test(config, roundup_single_power_of_two)
{
    cr_assert_eq(parse("roundup_power2_divisions:4"), 0);
    for (int i = 0; i < CONF_RP2_INTERVALS; i++)
        cr_assert_eq(c.roundup_power2_divisions[i], 4);
    cr_assert_eq(parse("roundup_power2_divisions:1"), 0);
    cr_assert_eq(config_rp2_divisions(&c, 123), 1);
    const char *bad[] = {"3", "-4", "", "four", "4294967296", "[4"};
    expect_rejected("roundup_power2_divisions", bad, FL_ARRAY_SIZE(bad));
}

Test(config, roundup_bracketed_list_by_mb)
{
    cr_assert_eq(parse("roundup_power2_divisions:[256:1,512:2,1024:4,>:8],verbose:2"), 0, "%s",
                 errs[0].message);
    cr_assert_eq(c.verbose, 2, "commas inside [...] belong to the value");
    cr_assert_eq(config_rp2_divisions(&c, 0), 1);
    cr_assert_eq(config_rp2_divisions(&c, 1000), 1);
    cr_assert_eq(config_rp2_divisions(&c, 100 * FL_MiB), 1);
    cr_assert_eq(config_rp2_divisions(&c, 256 * FL_MiB - 1), 1);
    cr_assert_eq(config_rp2_divisions(&c, 256 * FL_MiB), 2);
    cr_assert_eq(config_rp2_divisions(&c, 512 * FL_MiB - 1), 2);
    cr_assert_eq(config_rp2_divisions(&c, 512 * FL_MiB), 4);
    cr_assert_eq(config_rp2_divisions(&c, FL_GiB - 1), 4);
    cr_assert_eq(config_rp2_divisions(&c, FL_GiB), 8);
    cr_assert_eq(config_rp2_divisions(&c, 100 * FL_GiB), 8);
    cr_assert_eq(config_rp2_divisions(&c, SIZE_MAX), 8);

    cr_assert_eq(parse("roundup_power2_divisions:[ 1 : 2 , >:0 ]"), 0);
    cr_assert_eq(config_rp2_divisions(&c, FL_MiB - 1), 2);
    cr_assert_eq(config_rp2_divisions(&c, FL_MiB), 0);
    cr_assert_eq(parse("roundup_power2_divisions:[>:16]"), 0);
    cr_assert_eq(config_rp2_divisions(&c, 1), 16);
    cr_assert_eq(config_rp2_divisions(&c, SIZE_MAX), 16);
    cr_assert_eq(parse("roundup_power2_divisions:[64:4]"), 0);
    cr_assert_eq(config_rp2_divisions(&c, 64 * FL_MiB - 1), 4);
    cr_assert_eq(config_rp2_divisions(&c, 64 * FL_MiB), 0, "after the last key: no rounding");
}

Test(config, roundup_bad_lists_keep_the_old_value)
{
    const char *bad[] = {
        "[256:3]",
        "[300:1]",
        "[512:1,256:2]",
        "[256:1,256:2]",
        "[256:1,>:2,512:4]",
        "[]",
        "[,]",
        "[256]",
        "[256:]",
        "[:4]",
        "[0:1]",
        "[>:3]",
        "[256:1]x",
        "[256=1]",
        "[17592186044416:1]",
        "[256:1,>:2,>:4]",
        "[256:1][512:2]",
    };
    for (size_t i = 0; i < FL_ARRAY_SIZE(bad); i++) {
        char text[96];
        snprintf(text, sizeof text, "roundup_power2_divisions:4,roundup_power2_divisions:%s",
                 bad[i]);
        cr_assert_eq(parse(text), 1, "%s", text);
        cr_assert_eq(config_rp2_divisions(&c, 300 * FL_MiB), 4, "%s", text);
    }
    cr_assert_eq(parse("roundup_power2_divisions:[8796093022208:2]"), 0, "the largest key");
    cr_assert_eq(config_rp2_divisions(&c, SIZE_MAX / 2), 2);
    cr_assert_eq(config_rp2_divisions(&c, SIZE_MAX), 0);
}

Test(config, roundup_unclosed_bracket_ends_at_the_next_comma)
{
    cr_assert_eq(parse("roundup_power2_divisions:[256:1,verbose:2"), 1);
    cr_assert_eq(c.verbose, 2);
    cr_assert_str_eq(errs[0].message, "FRAGLESS_CONF: invalid value \"[256:1\" for "
                                      "roundup_power2_divisions: expected 0 or a power of two, "
                                      "or a list [MB:N,...,>:N] with increasing power-of-two MB "
                                      "and each N 0 or a power of two");
}

Test(config, format_lists_every_key_and_parses_back)
{
    char text[8192];
    struct config back;
    cr_assert_eq(parse("passthrough:1,strict:1,verbose:3,driver:/x/libcuda.so.1,"
                       "expandable_segments:0,max_split_size_mb:20971521B,"
                       "roundup_power2_divisions:[256:1,512:2,1024:4,>:8],"
                       "garbage_collection_threshold:0.123456789,release_threshold_mb:1536K,"
                       "page_size_mb:64,thread_cache:off,trace:/tmp/t,trace_extensions:0,"
                       "report:stderr,stats_page:no"),
                 0, "%s", errs[0].message);
    config_format(&c, text, sizeof text);
    cr_assert(strstr(text, "roundup_power2_divisions:[256:1,512:2,1024:4,>:8]\n"), "%s", text);
    cr_assert(strstr(text, "max_split_size_mb:20971521B\n"), "%s", text);
    cr_assert(strstr(text, "page_size_mb:64\n"), "%s", text);
    cr_assert(strstr(text, "\nthread_cache:false\n"), "%s", text);
    cr_assert(strstr(text, "garbage_collection_threshold:0.123456789\n"), "%s", text);
    for (char *p = text; *p; p++)
        *p = *p == '\n' ? ',' : *p;
    config_defaults(&back);
    cr_assert_eq(config_parse(text, &back, errs, MAX_ERRS), 0, "%s", errs[0].message);
    cr_assert(memcmp(&back, &c, sizeof c) == 0, "%s", text);
}

Test(config, format_of_defaults_parses_back)
{
    char text[8192];
    config_defaults(&c);
    config_format(&c, text, sizeof text);
    cr_assert_str_eq(text, "passthrough:false\nstrict:false\nverbose:0\ndriver:\n"
                           "expandable_segments:auto\nmax_split_size_mb:unlimited\n"
                           "roundup_power2_divisions:0\ngarbage_collection_threshold:0\n"
                           "release_threshold_mb:unlimited\npage_size_mb:8\npage_moving:true\n"
                           "free_mapped_keep_mb:16\nthread_cache:true\ntrace:\n"
                           "trace_extensions:true\nreport:\nstats_page:true\n");
    for (char *p = text; *p; p++)
        *p = *p == '\n' ? ',' : *p;
    cr_assert_eq(parse(text), 0, "%s", errs[0].message);
    cr_assert(same_as_defaults());
}

Test(config, format_into_a_small_buffer_stays_terminated)
{
    char small[20];
    memset(small, 'x', sizeof small);
    config_defaults(&c);
    config_format(&c, small, sizeof small);
    cr_assert_eq(strlen(small), sizeof small - 1);
    cr_assert(strncmp(small, "passthrough:false\n", 18) == 0);
}

Test(config, very_long_input)
{
    char *many = repeat("verbose:1,", 100 * 1024);
    size_t len = strlen(many);
    memcpy(many + len - 10, "strict:on,", 10);
    cr_assert_eq(parse(many), 0);
    cr_assert_eq(c.verbose, 1);
    cr_assert(c.strict);
    free(many);

    char *junk = repeat("x", 1 << 20);
    cr_assert_eq(parse(junk), 1);
    cr_assert_str_eq(errs[0].message, "FRAGLESS_CONF: invalid pair "
                                      "\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...\": "
                                      "expected key:value");
    free(junk);

    char *commas = repeat(",", 1 << 20);
    cr_assert_eq(parse(commas), 0);
    free(commas);

    char *brackets = repeat("[", 1 << 20);
    cr_assert_eq(parse(brackets), 1);
    free(brackets);

    char *bad_pairs = repeat("a,", 1 << 19);
    cr_assert_eq(parse(bad_pairs), 1 << 19);
    free(bad_pairs);

    char *value = repeat("d", 1 << 20);
    memcpy(value, "driver:", 7);
    cr_assert_eq(parse(value), 1);
    cr_assert_str_eq(c.driver_path, "");
    cr_assert(strstr(errs[0].message, "too long (1048569 bytes; at most 511)"), "%s",
              errs[0].message);
    free(value);
}

/* README's configuration table has a row for every key, naming its default. */
Test(config, readme_documents_every_key_and_default)
{
    char path[1024], text[8192];
    const char *src = getenv("FRAGLESS_SRC");
    snprintf(path, sizeof path, "%s/README.md", src ? src : ".");
    FILE *f = fopen(path, "r");
    cr_assert(f, "%s", path);
    static char readme[1 << 16];
    size_t n = fread(readme, 1, sizeof readme - 1, f);
    readme[n] = '\0';
    fclose(f);
    config_defaults(&c);
    config_format(&c, text, sizeof text);
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char row[128], dflt[128];
        size_t klen = strcspn(line, ":");
        snprintf(row, sizeof row, "| `%.*s` |", (int)klen, line);
        char *at = strstr(readme, row);
        cr_assert(at, "README.md has no row %s", row);
        if (line[klen + 1] == '\0')
            continue;
        snprintf(dflt, sizeof dflt, "| `%s`", line + klen + 1);
        char *dflt_at = strstr(at, dflt);
        cr_assert(dflt_at && dflt_at < strchr(at, '\n'), "row %s lacks default %s", row, dflt);
    }
}

/* ---- config_get(): in forked children, stderr to a pipe --------------------------------- */

struct child {
    int status;
    char err[16384];
};

/* Runs body() in a child with FRAGLESS_CONF=conf and stderr on a pipe; body's return is the
 * exit status (unless config_get exits first). */
static void run_child(const char *conf, int (*body)(void), struct child *r)
{
    int fds[2];
    cr_assert(pipe(fds) == 0);
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], STDERR_FILENO);
        setenv("FRAGLESS_CONF", conf, 1);
        _exit(body());
    }
    close(fds[1]);
    size_t got = 0;
    ssize_t n;
    while ((n = read(fds[0], r->err + got, sizeof r->err - 1 - got)) > 0)
        got += (size_t)n;
    r->err[got] = '\0';
    close(fds[0]);
    waitpid(pid, &r->status, 0);
}

/* What config_get() prints for conf: each bad pair (the first 8, then how many more), then
 * with verbose >= 1 the resolved configuration. */
static void expected_report(const char *conf, char *out, size_t len)
{
    struct config e;
    struct conf_error list[8];
    char text[8192];
    FILE *f = fmemopen(out, len, "w");
    config_defaults(&e);
    int bad = config_parse(conf, &e, list, 8);
    for (int i = 0; i < bad && i < 8; i++)
        fprintf(f, "fragless: %s\n", list[i].message);
    if (bad > 8)
        fprintf(f, "fragless: FRAGLESS_CONF: %d more bad pairs not shown\n", bad - 8);
    if (e.verbose >= 1) {
        config_format(&e, text, sizeof text);
        fprintf(f, "fragless: resolved configuration (FRAGLESS_CONF):\n");
        for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"))
            fprintf(f, "fragless: %s\n", line);
    }
    fclose(f);
}

static struct child last;

/* Runs body in a child under conf; it must exit with `status` having printed exactly the
 * report for conf followed by `tail`. */
static void check_child(const char *conf, int (*body)(void), int status, const char *tail)
{
    static char want[sizeof last.err];
    run_child(conf, body, &last);
    expected_report(conf, want, sizeof want - strlen(tail));
    strcat(want, tail);
    cr_assert(WIFEXITED(last.status), "%s", last.err);
    cr_assert_eq(WEXITSTATUS(last.status), status, "%s", last.err);
    cr_assert_str_eq(last.err, want);
}

/* Two calls give the same configuration, the one of the first call; exits with its verbose
 * plus 10 times its page size in MiB. */
static int get_twice(void)
{
    const struct config *a = config_get();
    setenv("FRAGLESS_CONF", "verbose:0,page_size_mb:6", 1);
    const struct config *b = config_get();
    if (a != b)
        return 99;
    return b->verbose + 10 * (int)(b->page_size / FL_MiB);
}

Test(config_get, reports_errors_once_and_applies_the_rest)
{
    check_child("strict:maybe,page_size_mb:4", get_twice, 40, "");
    cr_assert_str_eq(last.err, "fragless: FRAGLESS_CONF: invalid value \"maybe\" for strict: "
                               "expected true/false, 1/0, yes/no or on/off\n");
}

Test(config_get, verbose_prints_the_configuration_once)
{
    check_child("verbose:1,page_size_mb:4", get_twice, 41, "");
    cr_assert(strstr(last.err, "fragless: resolved configuration (FRAGLESS_CONF):\n"
                               "fragless: passthrough:false\n"));
    cr_assert(strstr(last.err, "\nfragless: page_size_mb:4\n"));
}

Test(config_get, quiet_by_default)
{
    check_child("", get_twice, 80, "");
    cr_assert_str_eq(last.err, "");
}

static int level_after_get(void)
{
    config_get();
    return log_get_level();
}

Test(config_get, sets_the_log_level)
{
    check_child("verbose:3", level_after_get, 3, "");
    check_child("verbose:2", level_after_get, 2, "");
}

Test(config_get, many_errors_are_summarized)
{
    char *conf = repeat("bad:1,", 20);
    check_child(conf, get_twice, 80, "");
    cr_assert(strstr(last.err, "fragless: FRAGLESS_CONF: unknown key \"bad\" (value \"1\")"));
    cr_assert(strstr(last.err, "fragless: FRAGLESS_CONF: 12 more bad pairs not shown\n"));
    free(conf);
}

Test(config_get, strict_with_a_bad_pair_exits, .exit_code = 1)
{
    setenv("FRAGLESS_CONF", "strict:true,verbose:loud", 1);
    config_get();
    cr_assert_fail("config_get() returned under strict:true with a bad pair");
}

Test(config_get, strict_says_why_it_exits)
{
    check_child("verbose:loud,strict:true", get_twice, 1,
                "fragless: FRAGLESS_CONF: strict:true and 1 bad pair: exiting\n");
    cr_assert_str_eq(last.err, "fragless: FRAGLESS_CONF: invalid value \"loud\" for verbose: "
                               "expected an integer 0..3\n"
                               "fragless: FRAGLESS_CONF: strict:true and 1 bad pair: exiting\n");
}

static void get_at_exit(void)
{
    /* an exit handler asking for the configuration must get it, not exit again */
    if (config_get()->strict)
        write(STDERR_FILENO, "handler done\n", 13);
}

static int get_with_exit_handler(void)
{
    atexit(get_at_exit);
    config_get();
    return 0;
}

Test(config_get, strict_exit_lets_exit_handlers_use_the_configuration)
{
    check_child("strict:1,verbose:9,x:y", get_with_exit_handler, 1,
                "fragless: FRAGLESS_CONF: strict:true and 2 bad pairs: exiting\n"
                "handler done\n");
}

Test(config_get, strict_with_good_pairs_returns)
{
    setenv("FRAGLESS_CONF", "strict:true,verbose:0", 1);
    cr_assert(config_get()->strict);
}

#define GETTERS 8

static void *getter(void *arg)
{
    (void)arg;
    return (void *)config_get();
}

static int get_from_threads(void)
{
    pthread_t th[GETTERS];
    void *got[GETTERS];
    for (int i = 0; i < GETTERS; i++)
        pthread_create(&th[i], NULL, getter, NULL);
    for (int i = 0; i < GETTERS; i++)
        pthread_join(th[i], &got[i]);
    for (int i = 1; i < GETTERS; i++) {
        if (got[i] != got[0])
            return 2;
    }
    return 0;
}

Test(config_get, threads_share_one_parse)
{
    check_child("verbose:1,colour:red", get_from_threads, 0, "");
}
