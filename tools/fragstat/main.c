/*
 * main.c — fragstat's command line: which processes, which output, how often.
 *
 * Owns: argument parsing and validation, the refresh loop, writing --output atomically
 * (temporary file + rename, for node_exporter's textfile collector) and the exit codes.
 */
#include "fragstat.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pageio.h"

enum mode { MODE_TABLE, MODE_JSON, MODE_PROMETHEUS, MODE_SEGMENTS, MODE_EMPTY_CACHE };

struct opts {
    enum mode mode;
    int modes; /* how many mode options were given */
    int32_t pid;
    int device;
    double interval;
    long count;
    const char *output;
    const char *dir;
};

static const char usage[] =
    "usage: fragstat [OPTIONS]\n"
    "Shows, for every process using fragless (libfragless.so) that you own, its GPU memory:\n"
    "allocated, reserved, reserved but unallocated, fragmentation, largest free block, peak\n"
    "reserved and OOMs, with a total line per GPU.\n"
    "\n"
    "  --pid PID          only this process\n"
    "  --device N         only CUDA device N (the process's ordinal)\n"
    "  --interval SEC     refresh every SEC seconds until interrupted\n"
    "  --count N          stop after N refreshes (with --interval)\n"
    "  --json             JSON: per process under its pid, fields as in fragless_stats_t\n"
    "  --prometheus       Prometheus text format (fragless_ metrics; labels pid, gpu, hostname)\n"
    "  --output FILE      write to FILE atomically (temporary file + rename) instead of stdout\n"
    "  --segments PID     one line per segment of PID with a map of its pages\n"
    "  --empty-cache PID  ask PID to release its cached memory; prints the bytes released\n"
    "  --dir DIR          read pages from DIR instead of " FRAGLESS_SHM_DIR "\n"
    "  --help             this text\n"
    "\n"
    "Exit status: 0 success; 1 no process found (or none with that pid/device);\n"
    "2 bad arguments; 3 permission denied (the process belongs to another user);\n"
    "4 the request failed or got no answer within 1 s, or the output could not be written.\n"
    "Stale pages (process gone, pid reused, or exec'd) are removed while scanning.\n";

static bool parse_long(const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max)
        return false;
    *out = v;
    return true;
}

static bool parse_seconds(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= 0.01 && v <= 86400.0))
        return false;
    *out = v;
    return true;
}

static int bad(const char *what, const char *value)
{
    fprintf(stderr, "fragstat: bad %s '%s' (see fragstat --help)\n", what, value);
    return FS_EXIT_USAGE;
}

static int set_mode(struct opts *o, enum mode m)
{
    o->mode = m;
    o->modes++;
    return 0;
}

static int set_pid(struct opts *o, const char *arg)
{
    long v;
    if (!parse_long(arg, 1, INT32_MAX, &v))
        return bad("pid", arg);
    o->pid = (int32_t)v;
    return 0;
}

enum {
    OPT_PID = 256,
    OPT_DEVICE,
    OPT_INTERVAL,
    OPT_COUNT,
    OPT_JSON,
    OPT_PROM,
    OPT_OUTPUT,
    OPT_SEGMENTS,
    OPT_EMPTY,
    OPT_DIR,
    OPT_HELP
};

static int parse_one(struct opts *o, int c, const char *arg)
{
    long v;
    switch (c) {
    case OPT_PID:
        return set_pid(o, arg);
    case OPT_DEVICE:
        if (!parse_long(arg, 0, 254, &v))
            return bad("device", arg);
        o->device = (int)v;
        return 0;
    case OPT_INTERVAL:
        return parse_seconds(arg, &o->interval) ? 0 : bad("interval", arg);
    case OPT_COUNT:
        return parse_long(arg, 1, LONG_MAX, &o->count) ? 0 : bad("count", arg);
    case OPT_JSON:
        return set_mode(o, MODE_JSON);
    case OPT_PROM:
        return set_mode(o, MODE_PROMETHEUS);
    case OPT_OUTPUT:
        o->output = arg;
        return 0;
    case OPT_SEGMENTS:
        set_mode(o, MODE_SEGMENTS);
        return set_pid(o, arg);
    case OPT_EMPTY:
        set_mode(o, MODE_EMPTY_CACHE);
        return set_pid(o, arg);
    case OPT_DIR:
        o->dir = arg;
        return 0;
    default:
        return FS_EXIT_USAGE;
    }
}

static int parse(int argc, char **argv, struct opts *o)
{
    static const struct option longopts[] = {
        {"pid", required_argument, NULL, OPT_PID},
        {"device", required_argument, NULL, OPT_DEVICE},
        {"interval", required_argument, NULL, OPT_INTERVAL},
        {"count", required_argument, NULL, OPT_COUNT},
        {"json", no_argument, NULL, OPT_JSON},
        {"prometheus", no_argument, NULL, OPT_PROM},
        {"output", required_argument, NULL, OPT_OUTPUT},
        {"segments", required_argument, NULL, OPT_SEGMENTS},
        {"empty-cache", required_argument, NULL, OPT_EMPTY},
        {"dir", required_argument, NULL, OPT_DIR},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof *o);
    o->device = -1;
    o->dir = FRAGLESS_SHM_DIR;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        if (c == OPT_HELP) {
            fputs(usage, stdout);
            exit(FS_EXIT_OK);
        }
        if (c == '?') {
            fprintf(stderr,
                    "fragstat: unknown option or missing value: %s (see fragstat "
                    "--help)\n",
                    argv[optind - 1]);
            return FS_EXIT_USAGE;
        }
        int r = parse_one(o, c, optarg);
        if (r)
            return r;
    }
    if (optind < argc)
        return bad("argument", argv[optind]);
    if (o->modes > 1) {
        fprintf(stderr, "fragstat: --json, --prometheus, --segments and --empty-cache exclude "
                        "each other\n");
        return FS_EXIT_USAGE;
    }
    if (o->count && o->interval == 0) {
        fprintf(stderr, "fragstat: --count needs --interval\n");
        return FS_EXIT_USAGE;
    }
    if (o->mode == MODE_EMPTY_CACHE && (o->interval > 0 || o->output)) {
        fprintf(stderr, "fragstat: --empty-cache takes neither --interval nor --output\n");
        return FS_EXIT_USAGE;
    }
    return 0;
}

static bool any_device(const struct fs_scan *s, int device)
{
    for (int i = 0; i < s->count; i++) {
        const fragless_shm_page_t *p = s->procs[i].page;
        for (uint32_t k = 0; k < p->device_count; k++) {
            if (device < 0 || p->devices[k].device == device)
                return true;
        }
    }
    return false;
}

static void print_json(FILE *f, const struct fs_scan *s, int device, const char *host)
{
    pio_json_begin(f, host);
    for (int i = 0; i < s->count; i++) {
        const fragless_shm_page_t *p = s->procs[i].page;
        pio_json_process(f, p, p->device_count, device, i == 0);
    }
    pio_json_end(f);
}

static void print_scan(FILE *f, const struct opts *o, const struct fs_scan *s, const char *host)
{
    switch (o->mode) {
    case MODE_JSON:
        print_json(f, s, o->device, host);
        break;
    case MODE_PROMETHEUS:
        fs_print_prometheus(f, s, o->device, host);
        break;
    case MODE_SEGMENTS:
        for (int i = 0; i < s->count; i++)
            fs_print_segments(f, &s->procs[i], o->device);
        break;
    default:
        fs_print_table(f, s, o->device);
        break;
    }
}

/* Writes to a temporary file next to `path`, then renames it over `path`. */
static FILE *open_output(const char *path, char *tmp, size_t len)
{
    snprintf(tmp, len, "%s.tmp.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0)
        return NULL;
    FILE *f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        unlink(tmp);
    }
    return f;
}

static int close_output(FILE *f, const char *tmp, const char *path)
{
    bool ok = fflush(f) == 0 && !ferror(f) && fsync(fileno(f)) == 0;
    ok = fclose(f) == 0 && ok;
    if (ok && rename(tmp, path) == 0)
        return FS_EXIT_OK;
    fprintf(stderr, "fragstat: cannot write %s: %s\n", path, strerror(errno));
    unlink(tmp);
    return FS_EXIT_FAILED;
}

static int show_once(const struct opts *o, const char *host)
{
    struct fs_scan s;
    int r = fs_scan(o->dir, o->pid, &s);
    if (r == -ENOMEM) {
        fs_scan_free(&s);
        fprintf(stderr, "fragstat: out of memory\n");
        return FS_EXIT_FAILED;
    }
    int rc = FS_EXIT_OK;
    if (!any_device(&s, o->device))
        rc = s.count == 0 && s.denied && o->pid ? FS_EXIT_DENIED : FS_EXIT_NOT_FOUND;
    if (rc == FS_EXIT_DENIED)
        fprintf(stderr, "fragstat: permission denied: the process belongs to another user\n");
    else if (rc == FS_EXIT_NOT_FOUND && o->mode != MODE_JSON && o->mode != MODE_PROMETHEUS)
        fprintf(stderr, "fragstat: no process using fragless found\n");
    if (rc == FS_EXIT_DENIED || (rc && o->mode != MODE_JSON && o->mode != MODE_PROMETHEUS)) {
        fs_scan_free(&s);
        return rc;
    }
    char tmp[4096];
    FILE *f = o->output ? open_output(o->output, tmp, sizeof tmp) : stdout;
    if (!f) {
        fprintf(stderr, "fragstat: cannot create %s: %s\n", tmp, strerror(errno));
        fs_scan_free(&s);
        return FS_EXIT_FAILED;
    }
    print_scan(f, o, &s, host);
    fs_scan_free(&s);
    if (o->output) {
        int w = close_output(f, tmp, o->output);
        return w ? w : rc;
    }
    fflush(stdout);
    return rc;
}

static void sleep_seconds(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

int main(int argc, char **argv)
{
    struct opts o;
    int r = parse(argc, argv, &o);
    if (r)
        return r;
    if (o.mode == MODE_EMPTY_CACHE)
        return fs_empty_cache(o.dir, o.pid, o.device, stdout);
    char host[256] = "";
    if (gethostname(host, sizeof host - 1) != 0)
        snprintf(host, sizeof host, "unknown");
    bool clear = o.interval > 0 && !o.output && o.mode == MODE_TABLE && isatty(STDOUT_FILENO);
    for (long i = 0;; i++) {
        if (clear)
            fputs("\033[H\033[2J", stdout);
        r = show_once(&o, host);
        if (o.interval == 0 || (o.count && i + 1 >= o.count))
            return r;
        if (!clear && !o.output)
            fputc('\n', stdout);
        sleep_seconds(o.interval);
    }
}
