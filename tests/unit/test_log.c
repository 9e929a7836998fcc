/*
 * test_log.c — log.c: prefix, levels, per-site and global rate limits with their
 * "suppressed" lines, truncation, errno, the async-signal-safe path, multi-line text, and
 * whole lines from concurrent threads. Each test captures fd 2 in a temporary file.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

static int saved_stderr = -1;
static FILE *capture_file;

/* Points fd 2 at a fresh temporary file (opened for appending, as a shared log would be). */
static void capture_start(void)
{
    char name[] = "/tmp/fl-log-XXXXXX";
    int fd = mkostemp(name, O_APPEND);
    cr_assert(fd >= 0);
    unlink(name);
    capture_file = fdopen(fd, "a+");
    saved_stderr = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
}

/* Restores fd 2 and returns what was written (malloc'd, NUL-terminated). */
static char *capture_stop(void)
{
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    long size = lseek(fileno(capture_file), 0, SEEK_END);
    char *text = calloc((size_t)size + 1, 1);
    cr_assert(pread(fileno(capture_file), text, (size_t)size, 0) == size);
    fclose(capture_file);
    return text;
}

static int count_lines(const char *text)
{
    int n = 0;
    for (; *text; text++)
        n += *text == '\n';
    return n;
}

static int count_of(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(text, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

static void reset(void)
{
    log_set_level(0);
    log_set_limits(0, 0, 0);
}

TestSuite(log, .init = reset);

Test(log, prefix_and_one_line_per_message)
{
    capture_start();
    log_error("hello %d", 5);
    log_warn("with newline\n");
    char *out = capture_stop();
    cr_assert_str_eq(out, "fragless: hello 5\nfragless: with newline\n");
    free(out);
}

Test(log, levels_follow_verbose)
{
    for (int level = 0; level <= 3; level++) {
        log_set_level(level);
        capture_start();
        log_error("E");
        log_warn("W");
        log_info("I");
        log_debug("D");
        char *out = capture_stop();
        cr_assert_eq(count_of(out, "fragless: E\n"), 1);
        cr_assert_eq(count_of(out, "fragless: W\n"), 1, "warnings always print");
        cr_assert_eq(count_of(out, "fragless: I\n"), level >= 2, "level %d", level);
        cr_assert_eq(count_of(out, "fragless: D\n"), level >= 3, "level %d", level);
        free(out);
    }
}

Test(log, level_is_clamped)
{
    log_set_level(9);
    cr_assert_eq(log_get_level(), LOG_DEBUG);
    log_set_level(-4);
    cr_assert_eq(log_get_level(), LOG_ERROR);
    cr_assert(log_enabled(LOG_WARN));
    cr_assert_not(log_enabled(LOG_INFO));
}

static void log_from_one_site(int n)
{
    for (int i = 0; i < n; i++)
        log_error("repeated %d", i);
}

Test(log, site_limit_then_suppressed_line)
{
    log_set_limits(10, 1000, 150);
    capture_start();
    log_from_one_site(25);
    char *first = capture_stop();
    cr_assert_eq(count_lines(first), 10, "%s", first);
    cr_assert_eq(count_of(first, "fragless: repeated 9\n"), 1);
    cr_assert_eq(count_of(first, "suppressed"), 0);

    usleep(200 * 1000);
    capture_start();
    log_from_one_site(1);
    log_from_one_site(1);
    char *second = capture_stop();
    cr_assert_str_eq(second, "fragless: suppressed 15 messages like the next one\n"
                             "fragless: repeated 0\n"
                             "fragless: repeated 0\n");
    free(first);
    free(second);
}

Test(log, default_limit_is_ten_per_site)
{
    log_set_limits(5, 5, 5);
    log_set_limits(0, 0, 0);
    capture_start();
    log_from_one_site(LOG_SITE_LIMIT + 5);
    char *out = capture_stop();
    cr_assert_eq(count_lines(out), LOG_SITE_LIMIT);
    cr_assert_eq(LOG_SITE_LIMIT, 10, "README says 10");
    free(out);
}

Test(log, sites_are_limited_separately)
{
    static struct log_site a, b;
    log_set_limits(3, 1000, 60000);
    capture_start();
    for (int i = 0; i < 10; i++)
        log_site_printf(&a, LOG_ERROR, "a");
    log_site_printf(&b, LOG_ERROR, "b");
    char *out = capture_stop();
    cr_assert_str_eq(out, "fragless: a\nfragless: a\nfragless: a\nfragless: b\n");
    free(out);
}

Test(log, global_limit_then_suppressed_line)
{
    static struct log_site sites[30], late;
    log_set_limits(1000, 20, 150);
    capture_start();
    for (int i = 0; i < 30; i++)
        log_site_printf(&sites[i], LOG_WARN, "site %d", i);
    char *first = capture_stop();
    cr_assert_eq(count_lines(first), 20, "%s", first);
    cr_assert_eq(count_of(first, "site 19\n"), 1);
    cr_assert_eq(count_of(first, "site 20\n"), 0);

    usleep(200 * 1000);
    capture_start();
    log_site_printf(&late, LOG_WARN, "later");
    char *second = capture_stop();
    cr_assert_str_eq(second, "fragless: suppressed 10 messages over the limit for all of "
                             "fragless\nfragless: later\n");
    free(first);
    free(second);
}

Test(log, disabled_levels_use_no_budget)
{
    static struct log_site s;
    log_set_limits(2, 1000, 60000);
    for (int i = 0; i < 50; i++)
        log_site_printf(&s, LOG_DEBUG, "quiet");
    log_set_level(LOG_DEBUG);
    capture_start();
    log_site_printf(&s, LOG_DEBUG, "loud");
    char *out = capture_stop();
    cr_assert_str_eq(out, "fragless: loud\n");
    free(out);
}

Test(log, long_message_is_cut_with_ellipsis)
{
    size_t room = LOG_LINE_MAX - strlen("fragless: ") - 1;
    char *fits = malloc(room + 2);
    memset(fits, 'a', room + 1);
    fits[room] = '\0';
    capture_start();
    log_error("%s", fits);
    fits[room] = 'b';
    fits[room + 1] = '\0';
    log_error("%s", fits);
    log_error("%5000s", "x");
    char *out = capture_stop();

    char *second = strchr(out, '\n') + 1;
    char *third = strchr(second, '\n') + 1;
    cr_assert_eq(second - out, LOG_LINE_MAX, "a message that fits is whole");
    cr_assert_eq(second[-2], 'a');
    cr_assert_eq(third - second, LOG_LINE_MAX);
    cr_assert(strncmp(third - 4, "...\n", 4) == 0);
    cr_assert_eq(strlen(third), LOG_LINE_MAX);
    cr_assert(strncmp(third + LOG_LINE_MAX - 4, "...\n", 4) == 0);
    free(fits);
    free(out);
}

Test(log, errno_is_kept)
{
    capture_start();
    errno = EILSEQ;
    log_error("x");
    cr_assert_eq(errno, EILSEQ);
    log_signal_safe("y");
    cr_assert_eq(errno, EILSEQ);
    free(capture_stop());
}

Test(log, text_prefixes_every_line)
{
    capture_start();
    log_text("one:1\ntwo:2\n\nlast");
    char *out = capture_stop();
    cr_assert_str_eq(out, "fragless: one:1\nfragless: two:2\nfragless: \nfragless: last\n");
    free(out);
}

static void on_usr1(int sig)
{
    (void)sig;
    log_signal_safe("caught a signal");
}

Test(log, signal_safe_path_from_a_handler)
{
    struct sigaction sa = {.sa_handler = on_usr1};
    sigaction(SIGUSR1, &sa, NULL);
    capture_start();
    raise(SIGUSR1);
    char *big = malloc(4 * LOG_LINE_MAX);
    memset(big, 'z', 4 * LOG_LINE_MAX - 1);
    big[4 * LOG_LINE_MAX - 1] = '\0';
    log_signal_safe(big);
    char *out = capture_stop();
    cr_assert(strncmp(out, "fragless: caught a signal\n", 26) == 0, "%s", out);
    cr_assert_eq(strlen(out + 26), LOG_LINE_MAX);
    cr_assert(strncmp(out + 26 + LOG_LINE_MAX - 4, "...\n", 4) == 0);
    free(big);
    free(out);
}

#define THREADS    8
#define PER_THREAD 200

/* Runs fn in THREADS threads (argument: the thread's index) and waits for them. */
static void run_threads(void *(*fn)(void *))
{
    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++)
        pthread_create(&th[t], NULL, fn, (void *)(intptr_t)t);
    for (int t = 0; t < THREADS; t++)
        pthread_join(th[t], NULL);
}

static void *chatty_thread(void *arg)
{
    int t = (int)(intptr_t)arg;
    struct log_site site = {0};
    for (int i = 0; i < PER_THREAD; i++)
        log_site_printf(&site, LOG_ERROR, "thread %d line %03d %0300d", t, i, 0);
    return NULL;
}

Test(log, threads_write_whole_lines)
{
    log_set_limits(100000, 100000, 60000);
    capture_start();
    run_threads(chatty_thread);
    char *out = capture_stop();

    static bool seen[THREADS][PER_THREAD];
    int lines = 0;
    for (char *line = out; *line; line = strchr(line, '\n') + 1) {
        int t, i, n = 0;
        cr_assert_eq(sscanf(line, "fragless: thread %d line %d %*300[0]%n", &t, &i, &n), 2);
        cr_assert_eq(line[n], '\n', "line %d is whole", lines);
        cr_assert(t >= 0 && t < THREADS && i >= 0 && i < PER_THREAD && !seen[t][i]);
        seen[t][i] = true;
        lines++;
    }
    cr_assert_eq(lines, THREADS * PER_THREAD);
    free(out);
}

static struct log_site shared_site;

static void *racing_thread(void *arg)
{
    (void)arg;
    for (int i = 0; i < 100; i++)
        log_site_printf(&shared_site, LOG_ERROR, "race");
    return NULL;
}

Test(log, racing_threads_get_exactly_the_limit)
{
    log_set_limits(10, 100000, 60000);
    capture_start();
    run_threads(racing_thread);
    char *out = capture_stop();
    cr_assert_eq(count_lines(out), 10, "%s", out);
    cr_assert_eq(shared_site.suppressed, THREADS * 100 - 10);
    free(out);
}
