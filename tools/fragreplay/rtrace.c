/*
 * rtrace.c — reading RMM CSV traces into replayable events.
 *
 * Owns: the trace format as fragreplay accepts it, and every message about a bad trace.
 * A file is RAPIDS RMM's logging_resource_adaptor output: the header
 * "Thread,Time,Action,Pointer,Size,Stream", then one line per event:
 *   thread  decimal thread id
 *   time    HH:MM:SS.ffffff (RMM's spdlog pattern; midnight wrap-around is unwound) or
 *           decimal seconds (SSSS.ffffff)
 *   action  allocate | free | allocate failure | empty cache (fragless extension)
 *   pointer hex, with or without 0x
 *   size    decimal bytes
 *   stream  hex, with or without 0x
 * Pointers become dense allocation ids here, so a replay is array indexing. A free of a
 * pointer that is not live is counted (unknown_frees) and skipped; everything else that is
 * not as above stops the load with "FILE:LINE: what is wrong". Several files are merged by
 * time, each keeping its own pointer space.
 */
#include "replay.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HEADER "Thread,Time,Action,Pointer,Size,Stream"
#define DAY_US (24ULL * 3600 * 1000000)

/* Per-allocation facts kept while parsing, indexed by id. */
struct idtab {
    uint64_t *size;
    uint32_t *line;
    size_t cap;
};

/* One file being parsed. */
struct pfile {
    struct idtab *ids;
    const char *name;
    unsigned long line;
    struct rtrace *t;
    struct ptrmap live;
    struct rev *ev;
    size_t n, cap;
    uint64_t last_time, wrap;
    char *err;
    size_t errlen;
};

static int fail(struct pfile *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(struct pfile *f, const char *fmt, ...)
{
    int k = snprintf(f->err, f->errlen, "%s:%lu: ", f->name, f->line);
    va_list ap;
    va_start(ap, fmt);
    if (k >= 0 && (size_t)k < f->errlen)
        vsnprintf(f->err + k, f->errlen - (size_t)k, fmt, ap);
    va_end(ap);
    return -1;
}

/* Reads a whole file into a NUL-terminated buffer. */
static char *slurp(const char *path, size_t *len, char *err, size_t errlen)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t n = 0, cap = 0, got = 1;
    bool oom = false;
    while (got > 0 && !oom) {
        if (cap - n < 65536) {
            cap = cap ? cap * 2 : 1 << 20;
            char *nb = realloc(buf, cap + 1);
            oom = !nb;
            buf = nb ? nb : buf;
        }
        got = oom ? 0 : fread(buf + n, 1, cap - n, fp);
        n += got;
    }
    bool bad = oom || ferror(fp);
    fclose(fp);
    if (bad) {
        snprintf(err, errlen, "%s: cannot read the whole file", path);
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

static bool parse_dec(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;
    if (len == 0 || len > 19)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return true;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool parse_hex(const char *s, size_t len, uint64_t *out)
{
    if (len > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        s += 2;
        len -= 2;
    }
    if (len == 0 || len > 16)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        int d = hexval(s[i]);
        if (d < 0)
            return false;
        v = v << 4 | (uint64_t)d;
    }
    *out = v;
    return true;
}

/* A fraction of a second, 1..9 digits, as microseconds. */
static bool parse_frac_us(const char *s, size_t len, uint64_t *us)
{
    uint64_t v = 0;
    if (len == 0 || len > 9)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        if (i < 6)
            v = v * 10 + (uint64_t)(s[i] - '0');
    }
    for (size_t i = len; i < 6; i++)
        v *= 10;
    *us = v;
    return true;
}

/* HH:MM:SS.ffffff -> microseconds since midnight (*clock = true); or SSSS.ffffff ->
 * microseconds. */
static bool parse_time(const char *s, size_t len, uint64_t *us, bool *clock)
{
    const char *dot = memchr(s, '.', len);
    size_t whole = dot ? (size_t)(dot - s) : len;
    uint64_t frac = 0, h, m, sec;
    if (dot && !parse_frac_us(dot + 1, len - whole - 1, &frac))
        return false;
    if (whole == 8 && s[2] == ':' && s[5] == ':') {
        if (!parse_dec(s, 2, &h) || !parse_dec(s + 3, 2, &m) || !parse_dec(s + 6, 2, &sec) ||
            h > 23 || m > 59 || sec > 60)
            return false;
        *us = ((h * 60 + m) * 60 + sec) * 1000000 + frac;
        *clock = true;
        return true;
    }
    if (!parse_dec(s, whole, &sec) || sec > UINT64_MAX / 2000000)
        return false;
    *us = sec * 1000000 + frac;
    *clock = false;
    return true;
}

static int push(struct pfile *f, struct rev e)
{
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 4096;
        struct rev *nev = realloc(f->ev, cap * sizeof *nev);
        if (!nev)
            return fail(f, "out of memory");
        f->ev = nev;
        f->cap = cap;
    }
    f->ev[f->n++] = e;
    return 0;
}

static int stream_index(struct pfile *f, uint64_t value, uint16_t *idx)
{
    struct rtrace *t = f->t;
    for (unsigned i = 0; i < t->nstreams; i++) {
        if (t->streams[i] == value) {
            *idx = (uint16_t)i;
            return 0;
        }
    }
    if (t->nstreams == RTRACE_STREAMS)
        return fail(f, "more than %d distinct streams", RTRACE_STREAMS);
    t->streams[t->nstreams] = value;
    *idx = (uint16_t)t->nstreams++;
    return 0;
}

static int new_id(struct pfile *f, uint64_t size, uint32_t *id)
{
    struct rtrace *t = f->t;
    struct idtab *ids = f->ids;
    if (t->nids == UINT32_MAX)
        return fail(f, "too many allocations");
    if (t->nids == ids->cap) {
        size_t cap = ids->cap ? ids->cap * 2 : 4096;
        uint64_t *ns = realloc(ids->size, cap * sizeof *ns);
        if (ns)
            ids->size = ns;
        uint32_t *nl = realloc(ids->line, cap * sizeof *nl);
        if (nl)
            ids->line = nl;
        if (!ns || !nl)
            return fail(f, "out of memory");
        ids->cap = cap;
    }
    *id = t->nids++;
    ids->size[*id] = size;
    ids->line[*id] = (uint32_t)f->line;
    return 0;
}

static int on_alloc(struct pfile *f, struct rev *e, uint64_t ptr)
{
    uint32_t id;
    if (ptr == 0)
        return fail(f, "allocate of a null pointer");
    if (ptrmap_get(&f->live, ptr, &id))
        return fail(f, "allocate of 0x%llx, which is still live (allocated at line %u)",
                    (unsigned long long)ptr, f->ids->line[id]);
    if (new_id(f, e->size, &e->id) != 0)
        return -1;
    if (ptrmap_put(&f->live, ptr, e->id) != 0)
        return fail(f, "out of memory");
    return push(f, *e);
}

static int on_free(struct pfile *f, struct rev *e, uint64_t ptr)
{
    struct rtrace *t = f->t;
    if (!ptr || !ptrmap_get(&f->live, ptr, &e->id)) {
        if (t->unknown_frees++ == 0)
            snprintf(t->first_unknown, sizeof t->first_unknown, "%s:%lu", f->name, f->line);
        return 0;
    }
    if (f->ids->size[e->id] != e->size)
        return fail(f,
                    "free of 0x%llx with size %llu, but it was allocated with size %llu "
                    "at line %u",
                    (unsigned long long)ptr, (unsigned long long)e->size,
                    (unsigned long long)f->ids->size[e->id], f->ids->line[e->id]);
    ptrmap_del(&f->live, ptr);
    return push(f, *e);
}

/* Splits `line` at commas into exactly 6 fields. */
static int split(struct pfile *f, char *line, size_t len, const char **fld, size_t *flen)
{
    int k = 0;
    const char *start = line;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && line[i] != ',')
            continue;
        if (k == 6)
            return fail(f, "more than 6 fields (expected %s)", HEADER);
        fld[k] = start;
        flen[k] = (size_t)(line + i - start);
        k++;
        start = line + i + 1;
    }
    if (k != 6)
        return fail(f, "%d field%s, expected 6 (%s)", k, k == 1 ? "" : "s", HEADER);
    return 0;
}

static bool field_is(const char *s, size_t len, const char *word)
{
    return strlen(word) == len && memcmp(s, word, len) == 0;
}

static int parse_action(struct pfile *f, const char *s, size_t len, int *kind)
{
    if (field_is(s, len, "allocate"))
        *kind = REV_ALLOC;
    else if (field_is(s, len, "free"))
        *kind = REV_FREE;
    else if (field_is(s, len, "allocate failure"))
        *kind = -1;
    else if (field_is(s, len, "empty cache"))
        *kind = REV_EMPTY_CACHE;
    else
        return fail(f,
                    "unknown action \"%.*s\" (expected allocate, free, allocate failure or "
                    "empty cache)",
                    (int)(len > 40 ? 40 : len), s);
    return 0;
}

static uint64_t monotonic_time(struct pfile *f, uint64_t t, bool clock)
{
    t += f->wrap;
    if (clock && f->n && t + DAY_US / 2 < f->last_time) {
        f->wrap += DAY_US; /* HH:MM:SS passed midnight */
        t += DAY_US;
    }
    if (t < f->last_time)
        t = f->last_time; /* threads log a few microseconds out of order */
    f->last_time = t;
    return t;
}

static int parse_line(struct pfile *f, char *line, size_t len)
{
    const char *fld[6];
    size_t flen[6];
    uint64_t thread, time, ptr, stream;
    bool clock;
    int kind = 0;
    struct rev e = {0};
    if (split(f, line, len, fld, flen) != 0)
        return -1;
    if (!parse_dec(fld[0], flen[0], &thread))
        return fail(f, "thread \"%.*s\" is not a decimal number", (int)flen[0], fld[0]);
    if (!parse_time(fld[1], flen[1], &time, &clock))
        return fail(f, "time \"%.*s\" is neither HH:MM:SS.ffffff nor seconds", (int)flen[1],
                    fld[1]);
    if (parse_action(f, fld[2], flen[2], &kind) != 0)
        return -1;
    if (!parse_hex(fld[3], flen[3], &ptr))
        return fail(f, "pointer \"%.*s\" is not a hex number", (int)flen[3], fld[3]);
    if (!parse_dec(fld[4], flen[4], &e.size))
        return fail(f, "size \"%.*s\" is not a decimal number of bytes", (int)flen[4], fld[4]);
    if (!parse_hex(fld[5], flen[5], &stream))
        return fail(f, "stream \"%.*s\" is not a hex number", (int)flen[5], fld[5]);
    if (stream_index(f, stream, &e.stream) != 0)
        return -1;
    e.time_us = monotonic_time(f, time, clock);
    if (kind < 0) {
        f->t->trace_failures++;
        return 0;
    }
    e.kind = (uint8_t)kind;
    if (kind == REV_ALLOC)
        return on_alloc(f, &e, ptr);
    if (kind == REV_FREE)
        return on_free(f, &e, ptr);
    return push(f, e);
}

static int parse_header(struct pfile *f, char *line, size_t len)
{
    if (len >= 3 && memcmp(line, "\xef\xbb\xbf", 3) == 0) {
        line += 3;
        len -= 3;
    }
    if (!field_is(line, len, HEADER))
        return fail(f, "not an RMM log: the first line must be %s", HEADER);
    return 0;
}

static int parse_buffer(struct pfile *f, char *buf, size_t n)
{
    bool header = false;
    char *p = buf, *end = buf + n;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *eol = nl ? nl : end;
        size_t len = (size_t)(eol - p);
        f->line++;
        if (len && p[len - 1] == '\r')
            len--;
        if (len && memchr(p, 0, len))
            return fail(f, "binary data (a NUL byte) in a text trace");
        if (len) {
            int rc = header ? parse_line(f, p, len) : parse_header(f, p, len);
            if (rc != 0)
                return rc;
            header = true;
        }
        p = eol + 1;
    }
    if (!header) {
        f->line = 1;
        return fail(f, "empty file: not an RMM log (no %s header)", HEADER);
    }
    return 0;
}

static int parse_file(struct pfile *f, const char *path, char *err, size_t errlen)
{
    size_t n;
    char *buf = slurp(path, &n, err, errlen);
    if (!buf)
        return -1;
    f->name = path;
    f->err = err;
    f->errlen = errlen;
    int rc = ptrmap_init(&f->live) == 0 ? parse_buffer(f, buf, n) : fail(f, "out of memory");
    free(buf);
    ptrmap_destroy(&f->live);
    return rc;
}

/* Merges the per-file event lists by time; each file's own order is kept. */
static int merge(struct rtrace *t, struct pfile *fs, int nf)
{
    size_t total = 0;
    for (int i = 0; i < nf; i++)
        total += fs[i].n;
    t->ev = malloc((total ? total : 1) * sizeof *t->ev);
    if (!t->ev)
        return -1;
    size_t *at = calloc((size_t)nf, sizeof *at);
    if (!at)
        return -1;
    for (t->n = 0; t->n < total; t->n++) {
        int best = -1;
        for (int i = 0; i < nf; i++) {
            if (at[i] < fs[i].n &&
                (best < 0 || fs[i].ev[at[i]].time_us < fs[best].ev[at[best]].time_us))
                best = i;
        }
        t->ev[t->n] = fs[best].ev[at[best]++];
    }
    t->cap = total;
    free(at);
    return 0;
}

/* Rebases times on the first event and computes the peak of requested bytes. */
static void summarize(struct rtrace *t)
{
    uint64_t t0 = t->n ? t->ev[0].time_us : 0, live = 0;
    for (size_t i = 0; i < t->n; i++) {
        struct rev *e = &t->ev[i];
        e->time_us -= t0;
        if (e->kind == REV_ALLOC)
            live += e->size;
        else if (e->kind == REV_FREE)
            live -= e->size;
        if (live > t->peak_requested)
            t->peak_requested = live;
    }
    t->span_us = t->n ? t->ev[t->n - 1].time_us : 0;
}

int rtrace_load(struct rtrace *t, char *const *files, int nfiles, char *err, size_t errlen)
{
    memset(t, 0, sizeof *t);
    t->nstreams = 1; /* streams[0] = 0, the default stream */
    struct idtab ids = {0};
    struct pfile *fs = calloc((size_t)nfiles, sizeof *fs);
    int rc = fs ? 0 : -1;
    for (int i = 0; rc == 0 && i < nfiles; i++) {
        fs[i].t = t;
        fs[i].ids = &ids;
        rc = parse_file(&fs[i], files[i], err, errlen);
    }
    if (rc == 0 && merge(t, fs, nfiles) != 0) {
        snprintf(err, errlen, "out of memory");
        rc = -1;
    }
    for (int i = 0; fs && i < nfiles; i++)
        free(fs[i].ev);
    free(fs);
    free(ids.size);
    free(ids.line);
    if (rc == 0)
        summarize(t);
    else
        rtrace_free(t);
    return rc;
}

void rtrace_free(struct rtrace *t)
{
    free(t->ev);
    t->ev = NULL;
    t->n = t->cap = 0;
}
