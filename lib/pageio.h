/*
 * pageio.h — reading, validating and printing stats pages (include/fragless_shm.h).
 *
 * Owns: everything a reader of other processes' pages needs, shared by fragstat (which links
 * nothing of the library, only libc) and lib/report.c (the OOM report names the other processes
 * on a GPU from their pages): page names, process identity from /proc, the validating reader
 * (pread only, so a truncated or hostile page cannot fault the reader), byte units, and the one
 * JSON emitter behind both `fragstat --json` and the exit report. Header-only for that reason:
 * every function is static inline.
 */
#ifndef FRAGLESS_PAGEIO_H
#define FRAGLESS_PAGEIO_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "fragless_shm.h"

/* How often a reader retries a sequence-counted copy before giving up on it (pausing 0.2 ms
 * every 16 tries: about 15 ms in all). */
#define PIO_SEQ_RETRIES 1000

enum pio_status {
    PIO_OK = 0,
    PIO_NOT_READY, /* all zero or no magic yet: the owner is still creating it */
    PIO_INVALID,   /* damaged, foreign or of another layout: `why` says what */
    PIO_BUSY,      /* the writer kept changing it while we read */
    PIO_IO,        /* could not be read */
};

/* Parses "fragless.<uid>.<pid>" (digits only, no leading zeros beyond "0"). */
static inline bool pio_parse_name(const char *name, uint32_t *uid, int32_t *pid)
{
    size_t plen = strlen(FRAGLESS_SHM_PREFIX);
    if (strncmp(name, FRAGLESS_SHM_PREFIX, plen) != 0)
        return false;
    const char *p = name + plen;
    uint64_t v[2] = {0, 0};
    for (int i = 0; i < 2; i++) {
        const char *start = p;
        while (*p >= '0' && *p <= '9' && p - start < 10)
            v[i] = v[i] * 10 + (uint64_t)(*p++ - '0');
        if (p == start || (*start == '0' && p - start > 1))
            return false;
        if (*p != (i == 0 ? '.' : '\0'))
            return false;
        p++;
    }
    if (v[0] > UINT32_MAX || v[1] == 0 || v[1] > INT32_MAX)
        return false;
    *uid = (uint32_t)v[0];
    *pid = (int32_t)v[1];
    return true;
}

/* Calls fn(dirfd, name, uid, pid, arg) for every entry of `dir` named like a page, until fn
 * returns non-zero (which is returned). -errno when the directory cannot be read. */
typedef int (*pio_name_fn)(int dirfd, const char *name, uint32_t uid, int32_t pid, void *arg);
static inline int pio_each_name(const char *dir, pio_name_fn fn, void *arg)
{
    DIR *d = opendir(dir);
    if (!d)
        return -errno;
    int r = 0;
    struct dirent *e;
    uint32_t uid;
    int32_t pid;
    while (r == 0 && (e = readdir(d)) != NULL) {
        if (pio_parse_name(e->d_name, &uid, &pid))
            r = fn(dirfd(d), e->d_name, uid, pid, arg);
    }
    closedir(d);
    return r;
}

/* Futex words in a shared mapping (no FUTEX_PRIVATE_FLAG: they work across processes). */
static inline void pio_futex_wake(uint32_t *word)
{
    syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* Sleeps while *word == seen, at most `ns` nanoseconds (or until woken, or a signal). */
static inline void pio_futex_wait(uint32_t *word, uint32_t seen, int64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000ll), (long)(ns % 1000000000ll)};
    syscall(SYS_futex, word, FUTEX_WAIT, seen, &ts, NULL, 0);
}

/* Start time (clock ticks after boot, field 22 of /proc/<pid>/stat) of a live process.
 * Returns 0, or -ENOENT when the process is gone, or another negative errno. */
static inline int pio_start_time(int32_t pid, uint64_t *out)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ESRCH ? -ENOENT : -errno;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    int err = errno;
    close(fd);
    if (n <= 0)
        return n == 0 ? -ENOENT : (err == ESRCH ? -ENOENT : -err);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p)
        return -EINVAL;
    /* the space after ")" opens field 3; field 22 is opened by the 20th space */
    for (int field = 2; field < 22; field++) {
        p = strchr(p + 1, ' ');
        if (!p)
            return -EINVAL;
    }
    char *end;
    unsigned long long t = strtoull(p + 1, &end, 10);
    if (end == p + 1)
        return -EINVAL;
    *out = t;
    return 0;
}

/* True when process `pid` maps the file at `path` (canonical, as /proc shows it): a page whose
 * process has since called exec() (same pid and start time) is no longer mapped by it. */
static inline bool pio_maps_file(int32_t pid, const char *path)
{
    char maps[64], line[4096];
    snprintf(maps, sizeof maps, "/proc/%d/maps", (int)pid);
    FILE *f = fopen(maps, "re");
    if (!f)
        return false;
    size_t plen = strlen(path);
    bool found = false;
    while (!found && fgets(line, sizeof line, f)) {
        size_t n = strlen(line);
        if (n && line[n - 1] == '\n')
            line[--n] = '\0';
        found = n >= plen && strcmp(line + n - plen, path) == 0 &&
                (n == plen || line[n - plen - 1] == ' ');
    }
    fclose(f);
    return found;
}

/* Copies `len` bytes at `off` of the file; false unless all of them were there. */
static inline bool pio_pread_all(int fd, void *buf, size_t len, off_t off)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pread(fd, (char *)buf + done, len - done, off + (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        done += (size_t)n;
    }
    return true;
}

static inline bool pio_terminated(const char *s, size_t cap)
{
    return memchr(s, '\0', cap) != NULL;
}

static inline void pio_why(char *why, size_t len, const char *what)
{
    if (why && len)
        snprintf(why, len, "%s", what);
}

/* Copies [off, off+len) of the page consistently: the 32-bit counter at `seq_off` must be even
 * and the same before and after the copy (and in the copy, when it lies inside it). */
static inline enum pio_status pio_read_seq(int fd, off_t seq_off, void *buf, size_t len, off_t off)
{
    for (int attempt = 0; attempt < PIO_SEQ_RETRIES; attempt++) {
        uint32_t s1, s2;
        if (attempt % 16 == 15) /* the writer may have been preempted mid-update */
            nanosleep(&(struct timespec){0, 200000}, NULL);
        if (!pio_pread_all(fd, &s1, sizeof s1, seq_off))
            return PIO_IO;
        if (s1 & 1u)
            continue;
        if (!pio_pread_all(fd, buf, len, off))
            return PIO_IO;
        if (!pio_pread_all(fd, &s2, sizeof s2, seq_off))
            return PIO_IO;
        if (s1 == s2)
            return PIO_OK;
    }
    return PIO_BUSY;
}

static inline bool pio_map_valid(const char *map)
{
    if (!pio_terminated(map, FRAGLESS_SHM_MAP_CHARS + 1))
        return false;
    for (const char *c = map; *c; c++) {
        if (!strchr("#+. ", *c))
            return false;
    }
    return true;
}

static inline bool pio_device_valid(fragless_shm_device_t *d, char *why, size_t whylen)
{
    const uint32_t first = (uint32_t)offsetof(fragless_stats_t, allocated_bytes);
    if (d->device < 0 || d->device > 254)
        return pio_why(why, whylen, "device ordinal out of range"), false;
    if (d->segment_count > FRAGLESS_SHM_MAX_SEGMENTS || d->segment_total < d->segment_count)
        return pio_why(why, whylen, "segment count out of range"), false;
    if (d->stats.size < first || d->stats.size > sizeof(fragless_stats_t))
        return pio_why(why, whylen, "statistics size out of range"), false;
    for (uint32_t i = 0; i < d->segment_count; i++) {
        if (!pio_map_valid(d->segments[i].map))
            return pio_why(why, whylen, "segment map damaged"), false;
    }
    /* fields an older writer did not fill read as zero */
    memset((char *)&d->stats + d->stats.size, 0, sizeof(fragless_stats_t) - d->stats.size);
    return true;
}

static inline bool pio_header_valid(const fragless_shm_page_t *p, char *why, size_t whylen)
{
    if (p->magic != FRAGLESS_SHM_MAGIC)
        return pio_why(why, whylen, "bad magic"), false;
    if (p->version != FRAGLESS_SHM_VERSION)
        return pio_why(why, whylen, "unsupported layout version"), false;
    if (p->size != sizeof(fragless_shm_page_t) ||
        p->header_size != offsetof(fragless_shm_page_t, devices) ||
        p->device_size != sizeof(fragless_shm_device_t))
        return pio_why(why, whylen, "layout sizes do not match"), false;
    if (p->max_devices != FRAGLESS_SHM_MAX_DEVICES || p->max_segments != FRAGLESS_SHM_MAX_SEGMENTS)
        return pio_why(why, whylen, "array bounds do not match"), false;
    if (p->pid <= 0)
        return pio_why(why, whylen, "bad pid"), false;
    if (!pio_terminated(p->command, sizeof p->command))
        return pio_why(why, whylen, "command not terminated"), false;
    return true;
}

static inline bool pio_all_zero(const void *buf, size_t len)
{
    const unsigned char *b = buf;
    for (size_t i = 0; i < len; i++) {
        if (b[i])
            return false;
    }
    return true;
}

/* The changing header fields (seq .. response_released), read under the page's counter. */
static inline enum pio_status pio_read_header(int fd, fragless_shm_page_t *out, char *why,
                                              size_t whylen)
{
    const size_t fixed = offsetof(fragless_shm_page_t, seq);
    const size_t var = offsetof(fragless_shm_page_t, devices) - fixed;
    if (!pio_pread_all(fd, out, fixed, 0))
        return pio_why(why, whylen, "truncated header"), PIO_INVALID;
    if (out->magic == 0 && pio_all_zero(out, fixed))
        return PIO_NOT_READY;
    if (!pio_header_valid(out, why, whylen))
        return PIO_INVALID;
    enum pio_status st = pio_read_seq(fd, (off_t)fixed, (char *)out + fixed, var, (off_t)fixed);
    if (st == PIO_IO)
        return pio_why(why, whylen, "truncated header"), PIO_INVALID;
    if (st != PIO_OK)
        return st;
    if (out->device_count > FRAGLESS_SHM_MAX_DEVICES)
        return pio_why(why, whylen, "device count out of range"), PIO_INVALID;
    if (!pio_terminated(out->config, sizeof out->config))
        return pio_why(why, whylen, "configuration not terminated"), PIO_INVALID;
    return PIO_OK;
}

/*
 * Reads and validates a whole page from `fd` into *out (the caller's buffer). The file must be
 * a regular file of exactly the page's size. On PIO_INVALID, `why` says what is wrong.
 */
static inline enum pio_status pio_read_page(int fd, fragless_shm_page_t *out, char *why,
                                            size_t whylen)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return PIO_IO;
    if (!S_ISREG(st.st_mode))
        return pio_why(why, whylen, "not a regular file"), PIO_INVALID;
    if (st.st_size == 0)
        return PIO_NOT_READY;
    if ((uint64_t)st.st_size != sizeof(fragless_shm_page_t))
        return pio_why(why, whylen, "file size does not match the layout"), PIO_INVALID;
    enum pio_status s = pio_read_header(fd, out, why, whylen);
    if (s != PIO_OK)
        return s;
    for (uint32_t i = 0; i < out->device_count; i++) {
        off_t off = (off_t)offsetof(fragless_shm_page_t, devices[i]);
        s = pio_read_seq(fd, off, &out->devices[i], sizeof out->devices[i], off);
        if (s == PIO_IO)
            return pio_why(why, whylen, "truncated device entry"), PIO_INVALID;
        if (s != PIO_OK)
            return s;
        if (!pio_device_valid(&out->devices[i], why, whylen))
            return PIO_INVALID;
    }
    return PIO_OK;
}

/* "0000:65:00.0" for a device with a known PCI location; false otherwise. */
static inline bool pio_pci_id(const fragless_shm_device_t *d, char *buf, size_t len)
{
    if (d->pci_domain < 0 || d->pci_bus < 0 || d->pci_device < 0)
        return false;
    snprintf(buf, len, "%08x:%02x:%02x.0", (unsigned)d->pci_domain, (unsigned)d->pci_bus & 0xffu,
             (unsigned)d->pci_device & 0xffu);
    return true;
}

/* True when a and b are the same physical GPU (by PCI location, else by ordinal). */
static inline bool pio_same_gpu(const fragless_shm_device_t *a, const fragless_shm_device_t *b)
{
    char pa[32], pb[32];
    if (pio_pci_id(a, pa, sizeof pa) && pio_pci_id(b, pb, sizeof pb))
        return strcmp(pa, pb) == 0;
    return a->device == b->device;
}

/* The command for a narrow column: the program's base name and its arguments. */
static inline const char *pio_short_command(const char *command)
{
    size_t prog = strcspn(command, " ");
    const char *base = command;
    for (const char *c = command; c < command + prog; c++) {
        if (*c == '/')
            base = c + 1;
    }
    return base;
}

/* Human units: "512 B", "1.50 KiB", "1.41 GiB". */
static inline const char *pio_human(uint64_t bytes, char *buf, size_t len)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double v = (double)bytes;
    unsigned u = 0;
    while (v >= 1024.0 && u + 1 < sizeof units / sizeof units[0]) {
        v /= 1024.0;
        u++;
    }
    if (u == 0)
        snprintf(buf, len, "%llu B", (unsigned long long)bytes);
    else
        snprintf(buf, len, "%.2f %s", v, units[u]);
    return buf;
}

/* pio_human into a buffer that lives until the end of the enclosing block. */
#define PIO_HUMAN(bytes) pio_human((bytes), (char[24]){0}, 24)

/* Share of the reserved-but-unallocated bytes lying outside the largest free block, in %: 0
 * when all free memory is one block, near 100 when it is scattered in small pieces. */
static inline double pio_fragmentation(const fragless_stats_t *s)
{
    uint64_t free_bytes = s->reserved_unallocated_bytes.current;
    uint64_t largest = s->largest_free_block_bytes.current;
    if (free_bytes == 0 || largest >= free_bytes)
        return 0.0;
    return 100.0 * (double)(free_bytes - largest) / (double)free_bytes;
}

/* ---- JSON: one emitter for fragstat --json and the exit report ------------------------- */

static inline void pio_json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\')
            fprintf(f, "\\%c", *c);
        else if (*c < 0x20 || *c >= 0x7f)
            fprintf(f, "\\u%04x", *c);
        else
            fputc(*c, f);
    }
    fputc('"', f);
}

static inline void pio_json_stats(FILE *f, const fragless_stats_t *s)
{
    const char *sep = "";
#define PIO_JSON_GAUGE_(name, help)                                                 \
    fprintf(f, "%s\"" #name "\":{\"current\":%llu,\"peak\":%llu}", sep,             \
            (unsigned long long)s->name.current, (unsigned long long)s->name.peak); \
    sep = ",";
#define PIO_JSON_COUNTER_(name, help)                                     \
    fprintf(f, "%s\"" #name "\":%llu", sep, (unsigned long long)s->name); \
    sep = ",";
    FRAGLESS_STATS_FIELDS(PIO_JSON_GAUGE_, PIO_JSON_COUNTER_)
#undef PIO_JSON_GAUGE_
#undef PIO_JSON_COUNTER_
}

static inline void pio_json_device(FILE *f, const fragless_shm_device_t *d)
{
    char pci[32];
    fprintf(f, "\"%d\":{\"device\":%d,\"pci_bus_id\":", d->device, d->device);
    if (pio_pci_id(d, pci, sizeof pci))
        pio_json_string(f, pci);
    else
        fputs("null", f);
    fprintf(f, ",\"total_bytes\":%llu,\"updated_ns\":%llu,\"fragmentation_percent\":%.1f,",
            (unsigned long long)d->total_bytes, (unsigned long long)d->updated_ns,
            pio_fragmentation(&d->stats));
    pio_json_stats(f, &d->stats);
    fputc('}', f);
}

/* Opens the document: {"hostname":"...","processes":{ */
static inline void pio_json_begin(FILE *f, const char *hostname)
{
    fputs("{\"hostname\":", f);
    pio_json_string(f, hostname);
    fputs(",\"processes\":{", f);
}

/* One process: "<pid>":{...,"devices":{"<ordinal>":{...}}}; `first` for the first one. The
 * devices printed are those with index in [0, ndev) and ordinal `only_device` (-1: all). */
static inline void pio_json_process(FILE *f, const fragless_shm_page_t *p, uint32_t ndev,
                                    int only_device, bool first)
{
    fprintf(f, "%s\"%d\":{\"pid\":%d,\"uid\":%u,\"start_time\":%llu,\"command\":", first ? "" : ",",
            p->pid, p->pid, p->uid, (unsigned long long)p->start_time);
    pio_json_string(f, p->command);
    fprintf(f, ",\"publish_ns\":%llu,\"config\":", (unsigned long long)p->publish_ns);
    pio_json_string(f, p->config);
    fputs(",\"devices\":{", f);
    const char *sep = "";
    for (uint32_t i = 0; i < ndev; i++) {
        if (only_device >= 0 && p->devices[i].device != only_device)
            continue;
        fputs(sep, f);
        pio_json_device(f, &p->devices[i]);
        sep = ",";
    }
    fputs("}}", f);
}

static inline void pio_json_end(FILE *f)
{
    fputs("}}\n", f);
}

#endif /* FRAGLESS_PAGEIO_H */
