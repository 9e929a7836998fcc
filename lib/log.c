/*
 * log.c — the one path for every message fragless prints.
 *
 * Owns: the verbosity level, the "fragless: " prefix, the per-call-site and global rate
 * limits, and the single write(2) per line to stderr (fd 2). Formatting happens on the
 * caller's stack; the limiter uses atomics only, so no lock is held while formatting and
 * lines from different threads never interleave. log_signal_safe() is the path for signal
 * handlers and fork children: no stdio, no locks, no allocation.
 */
#include "internal.h"

#include <errno.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PREFIX       "fragless: "
#define PREFIX_LEN   (sizeof(PREFIX) - 1)
#define ELLIPSIS     "..."
#define ELLIPSIS_LEN (sizeof(ELLIPSIS) - 1)
/* Bytes of message that fit in a line between the prefix and the newline. */
#define ROOM         (LOG_LINE_MAX - PREFIX_LEN - 1)

#define COUNT_BITS 24
#define COUNT_MASK ((1u << COUNT_BITS) - 1)

static int g_level;
static uint32_t g_site_limit = LOG_SITE_LIMIT;
static uint32_t g_global_limit = LOG_GLOBAL_LIMIT;
static uint32_t g_window_ms = LOG_WINDOW_MS;

/* The global budget: one window shared by every call site. */
static struct log_site g_all;

void log_set_level(int level)
{
    if (level < LOG_ERROR)
        level = LOG_ERROR;
    if (level > LOG_DEBUG)
        level = LOG_DEBUG;
    __atomic_store_n(&g_level, level, __ATOMIC_RELAXED);
}

int log_get_level(void)
{
    return __atomic_load_n(&g_level, __ATOMIC_RELAXED);
}

bool log_enabled(int level)
{
    return level <= LOG_WARN || level <= log_get_level();
}

static uint32_t limit_or(uint32_t v, uint32_t dflt)
{
    if (v == 0)
        return dflt;
    return v < COUNT_MASK ? v : COUNT_MASK;
}

void log_set_limits(uint32_t per_site, uint32_t global, uint32_t window_ms)
{
    __atomic_store_n(&g_site_limit, limit_or(per_site, LOG_SITE_LIMIT), __ATOMIC_RELAXED);
    __atomic_store_n(&g_global_limit, limit_or(global, LOG_GLOBAL_LIMIT), __ATOMIC_RELAXED);
    __atomic_store_n(&g_window_ms, window_ms ? window_ms : LOG_WINDOW_MS, __ATOMIC_RELAXED);
}

/* Milliseconds of CLOCK_MONOTONIC, never 0 (0 marks a site that never opened a window). */
static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ((uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u) | 1;
}

/* Writes all of buf with one write(2) where the kernel allows (it does for lines shorter
 * than PIPE_BUF on pipes, and for regular files); retries on EINTR and short writes. */
static void write_all(const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(STDERR_FILENO, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        buf += n;
        len -= (size_t)n;
    }
}

/* Ends a line holding PREFIX and then a message of msg_len bytes, of which the first ROOM are
 * in place: "..." replaces the end of a message that does not fit, a trailing newline of the
 * message is dropped, and one "\n" ends the line. Returns the line's length. */
static size_t finish_line(char line[LOG_LINE_MAX], size_t msg_len)
{
    if (msg_len > ROOM) {
        memcpy(line + PREFIX_LEN + ROOM - ELLIPSIS_LEN, ELLIPSIS, ELLIPSIS_LEN);
        msg_len = ROOM;
    } else if (msg_len > 0 && line[PREFIX_LEN + msg_len - 1] == '\n') {
        msg_len--;
    }
    line[PREFIX_LEN + msg_len] = '\n';
    return PREFIX_LEN + msg_len + 1;
}

static void emit(const char *msg, size_t msg_len)
{
    char line[LOG_LINE_MAX];
    memcpy(line, PREFIX, PREFIX_LEN);
    memcpy(line + PREFIX_LEN, msg, msg_len < ROOM ? msg_len : ROOM);
    write_all(line, finish_line(line, msg_len));
}

static void emit_suppressed(uint32_t n, const char *what)
{
    char msg[160];
    int len = snprintf(msg, sizeof msg, "suppressed %u %s", n, what);
    if (len > 0)
        emit(msg, (size_t)len < sizeof msg ? (size_t)len : sizeof msg - 1);
}

/* Takes one message from the budget of `s` (limit per window). Returns false if the budget
 * is spent. When this call reopens an expired window, *reopened_with is set to the number
 * suppressed in the old one (else 0). Window start and count change together in one CAS, so
 * exactly `limit` messages pass per window however many threads race. */
static bool take_budget(struct log_site *s, uint32_t limit, uint64_t now, uint32_t *reopened_with)
{
    uint64_t window = __atomic_load_n(&g_window_ms, __ATOMIC_RELAXED);
    uint64_t old = __atomic_load_n(&s->window, __ATOMIC_ACQUIRE), next;
    bool reopen;
    *reopened_with = 0;
    do {
        uint64_t start = old >> COUNT_BITS;
        reopen = start == 0 || (now > start && now - start >= window);
        if (reopen) {
            next = now << COUNT_BITS | 1;
        } else if ((old & COUNT_MASK) < limit) {
            next = old + 1;
        } else {
            __atomic_fetch_add(&s->suppressed, 1, __ATOMIC_RELAXED);
            return false;
        }
    } while (!__atomic_compare_exchange_n(&s->window, &old, next, true, __ATOMIC_ACQ_REL,
                                          __ATOMIC_ACQUIRE));
    if (reopen)
        *reopened_with = __atomic_exchange_n(&s->suppressed, 0, __ATOMIC_ACQ_REL);
    return true;
}

/* Applies the site's and the global limit, printing the "suppressed" lines owed when a
 * window reopens. Returns true if the message may be printed. */
static bool admit(struct log_site *site)
{
    uint64_t now = now_ms();
    uint32_t site_reopened, all_reopened;
    uint32_t site_limit = __atomic_load_n(&g_site_limit, __ATOMIC_RELAXED);
    uint32_t global_limit = __atomic_load_n(&g_global_limit, __ATOMIC_RELAXED);

    if (!take_budget(site, site_limit, now, &site_reopened))
        return false;
    if (site_reopened > 0)
        emit_suppressed(site_reopened, "messages like the next one");
    bool ok = take_budget(&g_all, global_limit, now, &all_reopened);
    if (all_reopened > 0)
        emit_suppressed(all_reopened, "messages over the limit for all of fragless");
    return ok;
}

void log_site_printf(struct log_site *site, int level, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    int saved_errno = errno;
    if (admit(site)) {
        char line[LOG_LINE_MAX];
        va_list ap;
        memcpy(line, PREFIX, PREFIX_LEN);
        va_start(ap, fmt);
        /* formats straight into the line; a longer message is cut and gets "..." */
        int len = vsnprintf(line + PREFIX_LEN, LOG_LINE_MAX - PREFIX_LEN, fmt, ap);
        va_end(ap);
        if (len >= 0)
            write_all(line, finish_line(line, (size_t)len));
    }
    errno = saved_errno;
}

void log_text(const char *text)
{
    int saved_errno = errno;
    while (*text) {
        size_t len = strcspn(text, "\n");
        emit(text, len);
        text += len;
        if (*text == '\n')
            text++;
    }
    errno = saved_errno;
}

void log_signal_safe(const char *msg)
{
    int saved_errno = errno;
    if (!msg)
        msg = "(null)";
    emit(msg, strlen(msg));
    errno = saved_errno;
}
