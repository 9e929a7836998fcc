/*
 * trace.c — recording allocation events in RAPIDS RMM's CSV log format.
 *
 * Owns: FRAGLESS_CONF=trace:PATH. Every allocation event of the process is written as one
 * line of RMM's logging_resource_adaptor format, so our traces replay in RMM and theirs in
 * fragreplay:
 *   Thread,Time,Action,Pointer,Size,Stream
 *   12345,14:03:07.123456,allocate,0x7f3a00000000,4194304,0x0
 * thread = the OS thread id (decimal), time = local time of day with microseconds, pointer
 * and stream in hex with 0x, size in bytes. Actions: allocate, free, allocate failure (RMM's)
 * and, when trace_extensions is on (the default), "empty cache" (size = bytes released),
 * which RMM's parser would refuse — trace_extensions:false leaves it out.
 * One file per device: ".devN" goes before PATH's extension as RMM names its per-device logs
 * (t.csv -> t.dev0.csv); "%p" in PATH becomes the process id. A file is created at its
 * device's first event. Events are buffered per device under that device's lock and written
 * when the buffer fills and at exit (a library destructor; events after it are written at
 * once), so a trace is complete after a normal exit. A failing write stops that device's
 * recording with one message. A forked child records to its own files when PATH has "%p"
 * and not at all otherwise (it would overwrite its parent's).
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define TRACE_BUF      (64 * 1024)
#define TRACE_LINE_MAX 128 /* longest line: 20 + 15 + 16 + 18 + 20 + 18 + separators */
#define TRACE_HEADER   "Thread,Time,Action,Pointer,Size,Stream\n"

struct tdev {
    pthread_mutex_t lock;
    int fd;      /* -1 until the first event */
    bool failed; /* recording of this device stopped */
    size_t len;
    char *buf;
    time_t sec;   /* the second hms[] shows */
    char hms[10]; /* "HH:MM:SS." */
};

/* Whether recording is on, as trace_enabled answers it on every allocation: undecided until
 * the configuration was read, then off or on (trace_start turns it on at any time). */
enum trace_state { TRACE_UNDECIDED, TRACE_OFF, TRACE_ON };

static struct {
    pthread_once_t once;
    _Atomic int state; /* enum trace_state */
    bool on;
    bool extensions;
    bool closing; /* after trace_stop(): write each event at once */
    bool per_pid; /* the path has %p */
    char path[CONF_PATH_MAX];
    struct tdev dev[FL_MAX_DEVICES];
} tr = {.once = PTHREAD_ONCE_INIT};

static const char *const action_names[] = {
    [TRACE_ALLOCATE] = "allocate",
    [TRACE_FREE] = "free",
    [TRACE_ALLOCATE_FAILURE] = "allocate failure",
    [TRACE_EMPTY_CACHE] = "empty cache",
};

/* This thread's "<tid>," as the line starts, formatted once per thread. */
static __thread struct {
    char text[24];
    uint8_t len;
} thread_field;

/* ---- formatting without stdio: this runs inside every allocation ----------------------- */

static char *put_str(char *p, const char *s)
{
    while (*s)
        *p++ = *s++;
    return p;
}

static const char digit_pairs[] = "00010203040506070809101112131415161718192021222324"
                                  "25262728293031323334353637383940414243444546474849"
                                  "50515253545556575859606162636465666768697071727374"
                                  "75767778798081828384858687888990919293949596979899";

static char *put_dec(char *p, uint64_t v)
{
    char tmp[20];
    int n = 20;
    while (v >= 100) {
        n -= 2;
        memcpy(tmp + n, digit_pairs + 2 * (v % 100), 2);
        v /= 100;
    }
    if (v >= 10) {
        n -= 2;
        memcpy(tmp + n, digit_pairs + 2 * v, 2);
    } else {
        tmp[--n] = (char)('0' + v);
    }
    memcpy(p, tmp + n, (size_t)(20 - n));
    return p + 20 - n;
}

static char *put_hex(char *p, uint64_t v)
{
    static const char digits[] = "0123456789abcdef";
    char tmp[16];
    int n = 0;
    do {
        tmp[n++] = digits[v & 15];
        v >>= 4;
    } while (v);
    *p++ = '0';
    *p++ = 'x';
    while (n)
        *p++ = tmp[--n];
    return p;
}

static char *put_2(char *p, int v)
{
    *p++ = (char)('0' + v / 10);
    *p++ = (char)('0' + v % 10);
    return p;
}

/* "HH:MM:SS.ffffff" of the local time now; localtime_r only once per second per device. */
static char *put_time(struct tdev *d, char *p)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_sec != d->sec || !d->hms[0]) {
        struct tm tm;
        localtime_r(&ts.tv_sec, &tm);
        char *h = put_2(d->hms, tm.tm_hour);
        *h++ = ':';
        h = put_2(h, tm.tm_min);
        *h++ = ':';
        h = put_2(h, tm.tm_sec);
        *h = '.';
        d->sec = ts.tv_sec;
    }
    memcpy(p, d->hms, 9);
    p += 9;
    long us = ts.tv_nsec / 1000;
    for (int i = 5; i >= 0; i--, us /= 10)
        p[i] = (char)('0' + us % 10);
    return p + 6;
}

/* ---- files ------------------------------------------------------------------------------ */

/* PATH expanded by config_expand_path and ".devN" before the extension (the last '.' of the
 * base name that does not start it, as Python's os.path.splitext and so RMM decide). */
int trace_device_path(const char *path, int device, char *out, size_t len)
{
    char expanded[CONF_PATH_MAX + 32];
    if (config_expand_path(path, expanded, sizeof expanded) != 0)
        return -1;
    size_t k = strlen(expanded);
    const char *base = strrchr(expanded, '/');
    base = base ? base + 1 : expanded;
    while (*base == '.')
        base++;
    const char *dot = strrchr(base, '.');
    size_t stem = dot ? (size_t)(dot - expanded) : k;
    int n = snprintf(out, len, "%.*s.dev%d%s", (int)stem, expanded, device, dot ? dot : "");
    return n > 0 && (size_t)n < len ? 0 : -1;
}

static bool write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return false;
        p += k;
        n -= (size_t)k;
    }
    return true;
}

static void stop_device(struct tdev *d, int device, const char *what)
{
    log_error("trace: %s for device %d failed (%s); recording of that device stopped", what, device,
              strerror(errno));
    d->failed = true;
    d->len = 0;
}

static bool open_device(struct tdev *d, int device)
{
    char path[CONF_PATH_MAX + 64];
    if (trace_device_path(tr.path, device, path, sizeof path) != 0) {
        errno = ENAMETOOLONG;
        stop_device(d, device, "naming the trace file");
        return false;
    }
    if (!d->buf && !(d->buf = malloc(TRACE_BUF))) {
        stop_device(d, device, "a trace buffer");
        return false;
    }
    d->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (d->fd < 0) {
        stop_device(d, device, path);
        return false;
    }
    memcpy(d->buf, TRACE_HEADER, sizeof TRACE_HEADER - 1);
    d->len = sizeof TRACE_HEADER - 1;
    return true;
}

static void flush_device(struct tdev *d, int device)
{
    if (d->fd >= 0 && d->len && !d->failed && !write_all(d->fd, d->buf, d->len))
        stop_device(d, device, "writing the trace");
    d->len = 0;
}

/* ---- recording -------------------------------------------------------------------------- */

static void atfork_prepare(void)
{
    for (int i = 0; i < FL_MAX_DEVICES; i++)
        pthread_mutex_lock(&tr.dev[i].lock);
}

static void atfork_parent(void)
{
    for (int i = FL_MAX_DEVICES - 1; i >= 0; i--)
        pthread_mutex_unlock(&tr.dev[i].lock);
}

/* The child drops its parent's buffered events and files; it records to files of its own
 * only when they are named by pid. */
static void atfork_child(void)
{
    for (int i = 0; i < FL_MAX_DEVICES; i++) {
        struct tdev *d = &tr.dev[i];
        pthread_mutex_init(&d->lock, NULL);
        if (d->fd >= 0)
            close(d->fd);
        d->fd = -1;
        d->len = 0;
        d->failed = !tr.per_pid;
    }
    thread_field.len = 0; /* the child's thread has another id */
}

int trace_start(const char *path, bool extensions)
{
    if (tr.on || !path || !*path || strlen(path) >= sizeof tr.path)
        return -1;
    snprintf(tr.path, sizeof tr.path, "%s", path);
    tr.extensions = extensions;
    tr.per_pid = strstr(path, "%p") != NULL;
    for (int i = 0; i < FL_MAX_DEVICES; i++) {
        pthread_mutex_init(&tr.dev[i].lock, NULL);
        tr.dev[i].fd = -1;
    }
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
    __atomic_store_n(&tr.on, true, __ATOMIC_RELEASE);
    atomic_store_explicit(&tr.state, TRACE_ON, memory_order_release);
    return 0;
}

static void start_from_config(void)
{
    const struct config *c = config_get();
    if (c->trace_path[0] && trace_start(c->trace_path, c->trace_extensions) == 0)
        log_info("trace: recording allocation events to %s (.devN per device)", c->trace_path);
}

/* Reads the configuration once; off unless it started recording (or trace_start did). */
static int decide(void)
{
    pthread_once(&tr.once, start_from_config);
    int expected = TRACE_UNDECIDED;
    atomic_compare_exchange_strong_explicit(&tr.state, &expected, TRACE_OFF, memory_order_acq_rel,
                                            memory_order_acquire);
    return atomic_load_explicit(&tr.state, memory_order_acquire);
}

/* One load once decided (acquire: what trace_start set up is seen with it). */
bool trace_enabled(void)
{
    int state = atomic_load_explicit(&tr.state, memory_order_acquire);
    if (FL_UNLIKELY(state == TRACE_UNDECIDED))
        state = decide();
    return state == TRACE_ON;
}

void trace_record(int device, enum trace_action a, CUdeviceptr ptr, size_t size, CUstream stream)
{
    if (!trace_enabled() || !fl_device_in_range(device) ||
        (a == TRACE_EMPTY_CACHE && !tr.extensions))
        return;
    if (FL_UNLIKELY(!thread_field.len)) {
        char *e = put_dec(thread_field.text, (uint64_t)syscall(SYS_gettid));
        *e++ = ',';
        thread_field.len = (uint8_t)(e - thread_field.text);
    }
    struct tdev *d = &tr.dev[device];
    pthread_mutex_lock(&d->lock);
    if (d->failed || (d->fd < 0 && !open_device(d, device)))
        goto out_unlock;
    if (d->len + TRACE_LINE_MAX > TRACE_BUF)
        flush_device(d, device);
    char *p = d->buf + d->len;
    memcpy(p, thread_field.text, thread_field.len);
    p = put_time(d, p + thread_field.len);
    *p++ = ',';
    p = put_str(p, action_names[a]);
    *p++ = ',';
    p = put_hex(p, (uint64_t)ptr);
    *p++ = ',';
    p = put_dec(p, size);
    *p++ = ',';
    p = put_hex(p, (uint64_t)(uintptr_t)stream);
    *p++ = '\n';
    d->len = (size_t)(p - d->buf);
    if (__atomic_load_n(&tr.closing, __ATOMIC_RELAXED))
        flush_device(d, device);
out_unlock:
    pthread_mutex_unlock(&d->lock);
}

void trace_flush(void)
{
    if (!__atomic_load_n(&tr.on, __ATOMIC_ACQUIRE))
        return;
    for (int i = 0; i < FL_MAX_DEVICES; i++) {
        pthread_mutex_lock(&tr.dev[i].lock);
        flush_device(&tr.dev[i], i);
        pthread_mutex_unlock(&tr.dev[i].lock);
    }
}

void trace_stop(void)
{
    if (!__atomic_load_n(&tr.on, __ATOMIC_ACQUIRE))
        return;
    __atomic_store_n(&tr.closing, true, __ATOMIC_RELAXED);
    trace_flush();
}

__attribute__((destructor)) static void trace_at_exit(void)
{
    trace_stop();
}
