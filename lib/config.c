/*
 * config.c — FRAGLESS_CONF: the table of settings, parsing, formatting, and the process's
 * configuration read once.
 *
 * Owns: the key table (one row per key: name, type, field, default, accepted values, help),
 * the pure parser and formatter (unit-tested without a process environment) and config_get(),
 * which parses the environment once, reports bad pairs through log.c and applies `verbose` and
 * `strict`. Parsing works on the caller's string in place with fixed-size buffers: any input
 * length is handled in bounded memory, and no value is ever silently truncated.
 */
#include "internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* ---- value types ------------------------------------------------------------------------ */

struct conf_key;

struct conf_type {
    /* Parses NUL-terminated `v` into `field`; false (field untouched) if not accepted. */
    bool (*parse)(const struct conf_key *k, const char *v, void *field);
    /* Appends the field's value in a form parse() accepts. */
    int (*format)(const struct conf_key *k, const void *field, char *buf, size_t len);
};

struct conf_key {
    const char *name;
    const struct conf_type *type;
    size_t offset;
    const char *default_text;                        /* parsed by config_defaults() */
    int64_t min, max;                                /* int: inclusive range */
    size_t size_min, size_max, size_step, size_unit; /* size: range, multiple of, bare unit */
    bool unlimited_ok;                               /* size: "unlimited" means SIZE_MAX */
    const char *accepts;                             /* what error messages say is accepted */
    const char *help;
};

static const struct conf_type T_BOOL, T_AUTO_BOOL, T_INT, T_FRACTION, T_SIZE, T_PATH, T_RP2;

#define FIELD(f)   .offset = offsetof(struct config, f)
#define BOOL_WORDS "true/false, 1/0, yes/no or on/off"

/* One row per key. Keys that PYTORCH_CUDA_ALLOC_CONF also has keep its name and meaning. */
static const struct conf_key KEYS[] = {
    {"passthrough", &T_BOOL, FIELD(passthrough), "false", .accepts = BOOL_WORDS,
     .help = "send every call straight to the driver (fragless only loads)"},
    {"strict", &T_BOOL, FIELD(strict), "false", .accepts = BOOL_WORDS,
     .help = "a bad pair in FRAGLESS_CONF ends the process (exit status 1) at first use"},
    {"verbose", &T_INT, FIELD(verbose), "0", .min = 0, .max = 3, .accepts = "an integer 0..3",
     .help = "0 errors and warnings, 1 also the resolved configuration, 2 info, 3 debug"},
    {"driver", &T_PATH, FIELD(driver_path), "", .accepts = "a path",
     .help = "libcuda to load instead of libcuda.so.1"},
    {"expandable_segments", &T_AUTO_BOOL, FIELD(expandable_segments), "auto",
     .accepts = "auto or " BOOL_WORDS,
     .help = "grow segments in virtual memory (auto: where the device supports VMM)"},
    {"max_split_size_mb", &T_SIZE, FIELD(max_split_size), "unlimited", .size_min = 20 * FL_MiB + 1,
     .size_max = SIZE_MAX, .size_step = 1, .size_unit = FL_MiB, .unlimited_ok = true,
     .accepts = "a size greater than 20 MiB (a bare number means MiB) or unlimited",
     .help = "blocks larger than this are never split"},
    {"roundup_power2_divisions", &T_RP2, FIELD(roundup_power2_divisions), "0",
     .accepts = "0 or a power of two, or a list [MB:N,...,>:N] with increasing power-of-two MB "
                "and each N 0 or a power of two",
     .help = "round requests up to one of N steps per power-of-two interval"},
    {"garbage_collection_threshold", &T_FRACTION, FIELD(garbage_collection_threshold), "0",
     .accepts = "a number greater than 0 and less than 1, or 0 for off",
     .help = "free cached blocks once this fraction of device memory is reserved"},
    {"release_threshold_mb", &T_SIZE, FIELD(release_threshold), "unlimited", .size_min = 0,
     .size_max = SIZE_MAX, .size_step = 1, .size_unit = FL_MiB, .unlimited_ok = true,
     .accepts = "a size (a bare number means MiB) or unlimited",
     .help = "cached bytes kept per device before the rest is given back"},
    {"page_size_mb", &T_SIZE, FIELD(page_size), "8", .size_min = 2 * FL_MiB, .size_max = FL_GiB,
     .size_step = 2 * FL_MiB, .size_unit = FL_MiB,
     .accepts = "a multiple of 2 MiB from 2 MiB to 1 GiB (a bare number means MiB)",
     .help = "physical page size of expandable segments"},
    {"page_moving", &T_BOOL, FIELD(page_moving), "true", .accepts = BOOL_WORDS,
     .help = "expandable segments take pages of free blocks before creating new ones"},
    {"free_mapped_keep_mb", &T_SIZE, FIELD(free_mapped_keep), "16", .size_min = 0,
     .size_max = SIZE_MAX, .size_step = 1, .size_unit = FL_MiB, .unlimited_ok = true,
     .accepts = "a size (a bare number means MiB) or unlimited",
     .help = "free-but-mapped bytes expandable segments keep before pages move"},
    {"thread_cache", &T_BOOL, FIELD(thread_cache), "true", .accepts = BOOL_WORDS,
     .help = "per-thread regions serve a thread's allocations without the heap lock"},
    {"trace", &T_PATH, FIELD(trace_path), "", .accepts = "a path",
     .help = "record allocation events to PATH.devN (RMM CSV)"},
    {"trace_extensions", &T_BOOL, FIELD(trace_extensions), "true", .accepts = BOOL_WORDS,
     .help = "record actions beyond RMM's in traces"},
    {"report", &T_PATH, FIELD(report), "", .accepts = "stderr or a path",
     .help = "write the exit report to stderr or to PATH (OOM reports always go to stderr)"},
    {"stats_page", &T_BOOL, FIELD(stats_page), "true", .accepts = BOOL_WORDS,
     .help = "publish the /dev/shm statistics page that fragstat reads"},
};

/* ---- small helpers ---------------------------------------------------------------------- */

static bool is_space(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f';
}

static bool is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

/* Trims whitespace from both ends of [*s, *s + *len). */
static void trim(const char **s, size_t *len)
{
    while (*len > 0 && is_space(**s)) {
        (*s)++;
        (*len)--;
    }
    while (*len > 0 && is_space((*s)[*len - 1]))
        (*len)--;
}

static bool is_pow2(uint64_t v)
{
    return v != 0 && (v & (v - 1)) == 0;
}

/* Appends formatted text at *pos of buf (never past len - 1; always NUL-terminated). */
static void append(char *buf, size_t len, size_t *pos, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void append(char *buf, size_t len, size_t *pos, const char *fmt, ...)
{
    if (*pos + 1 >= len)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + *pos, len - *pos, fmt, ap);
    va_end(ap);
    if (n > 0)
        *pos += (size_t)n < len - *pos ? (size_t)n : len - *pos - 1;
}

/* Writes a printable excerpt of [s, s + n) for messages: control characters as '?', at most
 * QUOTE_MAX characters, then "...". */
#define QUOTE_MAX 48
static const char *excerpt(char out[QUOTE_MAX + 4], const char *s, size_t n)
{
    size_t k = n < QUOTE_MAX ? n : QUOTE_MAX;
    for (size_t i = 0; i < k; i++)
        out[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    if (n > QUOTE_MAX) {
        memcpy(out + k, "...", 3);
        k += 3;
    }
    out[k] = '\0';
    return out;
}

/* Parses an unsigned decimal integer that fills all of [s, end); false on overflow. */
static bool parse_u64(const char *s, const char *end, uint64_t *out)
{
    uint64_t v = 0;
    if (s == end)
        return false;
    for (; s < end; s++) {
        if (!is_digit(*s) || v > (UINT64_MAX - (uint64_t)(*s - '0')) / 10)
            return false;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return true;
}

/* ---- parsers and formatters, one pair per type ----------------------------------------- */

static bool word_bool(const char *v, bool *out)
{
    static const char *const yes[] = {"true", "1", "yes", "on"};
    static const char *const no[] = {"false", "0", "no", "off"};
    for (size_t i = 0; i < FL_ARRAY_SIZE(yes); i++) {
        if (strcasecmp(v, yes[i]) == 0 || strcasecmp(v, no[i]) == 0) {
            *out = strcasecmp(v, yes[i]) == 0;
            return true;
        }
    }
    return false;
}

static bool parse_bool(const struct conf_key *k FL_UNUSED, const char *v, void *field)
{
    return word_bool(v, field);
}

static int format_bool(const struct conf_key *k FL_UNUSED, const void *field, char *buf, size_t len)
{
    return snprintf(buf, len, "%s", *(const bool *)field ? "true" : "false");
}

static bool parse_auto_bool(const struct conf_key *k FL_UNUSED, const char *v, void *field)
{
    bool b;
    if (strcasecmp(v, "auto") == 0) {
        *(int *)field = -1;
        return true;
    }
    if (!word_bool(v, &b))
        return false;
    *(int *)field = b;
    return true;
}

static int format_auto_bool(const struct conf_key *k FL_UNUSED, const void *field, char *buf,
                            size_t len)
{
    int v = *(const int *)field;
    return snprintf(buf, len, "%s", v < 0 ? "auto" : v ? "true" : "false");
}

static bool parse_int(const struct conf_key *k, const char *v, void *field)
{
    bool neg = *v == '-';
    uint64_t mag;
    if (!parse_u64(v + neg, v + strlen(v), &mag) || mag > (uint64_t)INT64_MAX)
        return false;
    int64_t x = neg ? -(int64_t)mag : (int64_t)mag;
    if (x < k->min || x > k->max)
        return false;
    *(int *)field = (int)x;
    return true;
}

static int format_int(const struct conf_key *k FL_UNUSED, const void *field, char *buf, size_t len)
{
    return snprintf(buf, len, "%d", *(const int *)field);
}

/* A plain decimal: digits with an optional fraction ("0.8", ".8", "1."), no sign, exponent or
 * locale. Correctly rounded while the digits fit 2^53 and there are at most 22 decimals. */
static bool parse_decimal(const char *v, double *out)
{
    uint64_t mant = 0;
    int frac = 0, digits = 0, seen_dot = 0;
    for (; *v; v++) {
        if (*v == '.' && !seen_dot) {
            seen_dot = 1;
            continue;
        }
        if (!is_digit(*v))
            return false;
        digits++;
        if (mant > (UINT64_MAX - 9) / 10) {
            frac -= !seen_dot; /* drop a digit we cannot hold; keep the magnitude */
            continue;
        }
        mant = mant * 10 + (uint64_t)(*v - '0');
        frac += seen_dot;
    }
    if (digits == 0)
        return false;
    double x = (double)mant;
    for (; frac > 22; frac--)
        x /= 10;
    double p = 1;
    for (int i = 0; i < frac; i++)
        p *= 10;
    for (; frac < 0; frac++)
        x *= 10;
    *out = x / p;
    return true;
}

static bool parse_fraction(const struct conf_key *k FL_UNUSED, const char *v, void *field)
{
    double x;
    if (!parse_decimal(v, &x) || !(x == 0 || (x > 0 && x < 1)))
        return false;
    *(double *)field = x;
    return true;
}

/* The shortest fixed-point form that parses back to exactly the same double. */
static int format_fraction(const struct conf_key *k FL_UNUSED, const void *field, char *buf,
                           size_t len)
{
    double v = *(const double *)field, back;
    char tmp[64];
    for (int prec = 0; prec <= 40; prec++) {
        snprintf(tmp, sizeof tmp, "%.*f", prec, v);
        if (parse_decimal(tmp, &back) && back == v)
            break;
    }
    return snprintf(buf, len, "%s", tmp);
}

static size_t suffix_scale(const char *s, size_t bare_unit)
{
    static const struct {
        const char *suffix;
        size_t scale;
    } units[] = {
        {"b", 1},
        {"k", FL_KiB},
        {"kb", FL_KiB},
        {"kib", FL_KiB},
        {"m", FL_MiB},
        {"mb", FL_MiB},
        {"mib", FL_MiB},
        {"g", FL_GiB},
        {"gb", FL_GiB},
        {"gib", FL_GiB},
        {"t", FL_GiB << 10},
        {"tb", FL_GiB << 10},
        {"tib", FL_GiB << 10},
    };
    if (*s == '\0')
        return bare_unit;
    for (size_t i = 0; i < FL_ARRAY_SIZE(units); i++) {
        if (strcasecmp(s, units[i].suffix) == 0)
            return units[i].scale;
    }
    return 0;
}

/* A row may leave size_unit (bare numbers are bytes) and size_step (any multiple) at 0. */
static size_t unit_of(const struct conf_key *k)
{
    return k->size_unit ? k->size_unit : 1;
}

static size_t step_of(const struct conf_key *k)
{
    return k->size_step ? k->size_step : 1;
}

static bool parse_size(const struct conf_key *k, const char *v, void *field)
{
    uint64_t n;
    size_t bytes;
    const char *num_end = v;
    if (k->unlimited_ok && strcasecmp(v, "unlimited") == 0) {
        *(size_t *)field = SIZE_MAX;
        return true;
    }
    while (is_digit(*num_end))
        num_end++;
    size_t scale = suffix_scale(num_end, unit_of(k));
    if (scale == 0 || !parse_u64(v, num_end, &n) || __builtin_mul_overflow(n, scale, &bytes))
        return false;
    if (bytes < k->size_min || bytes > k->size_max || bytes % step_of(k) != 0)
        return false;
    /* SIZE_MAX itself is spelled "unlimited" */
    if (bytes == SIZE_MAX)
        return false;
    *(size_t *)field = bytes;
    return true;
}

static int format_size(const struct conf_key *k, const void *field, char *buf, size_t len)
{
    size_t v = *(const size_t *)field;
    if (v == SIZE_MAX)
        return snprintf(buf, len, "unlimited");
    if (v % unit_of(k) == 0)
        return snprintf(buf, len, "%zu", v / unit_of(k));
    return snprintf(buf, len, "%zuB", v);
}

static bool parse_path(const struct conf_key *k FL_UNUSED, const char *v, void *field)
{
    /* the caller has checked that v fits CONF_PATH_MAX */
    snprintf(field, CONF_PATH_MAX, "%s", v);
    return true;
}

static int format_path(const struct conf_key *k FL_UNUSED, const void *field, char *buf, size_t len)
{
    return snprintf(buf, len, "%s", (const char *)field);
}

/* ---- roundup_power2_divisions ------------------------------------------------------------ */

/* Sizes in MB start at interval 20 (1 MiB = 2^20). */
#define RP2_MB_SHIFT 20
#define RP2_MAX_MB   ((uint64_t)1 << (CONF_RP2_INTERVALS - 1 - RP2_MB_SHIFT))

static bool parse_divisions(const char *s, const char *end, uint32_t *out)
{
    uint64_t n;
    size_t len = (size_t)(end - s);
    trim(&s, &len);
    if (!parse_u64(s, s + len, &n) || n > UINT32_MAX || (n != 0 && !is_pow2(n)))
        return false;
    *out = (uint32_t)n;
    return true;
}

static void fill(uint32_t *table, int from, int to, uint32_t value)
{
    for (int i = from; i < to; i++)
        table[i] = value;
}

/* One "MB:N" or ">:N" entry of a bracketed list; *next is the first interval not yet set. */
static bool parse_rp2_entry(const char *s, const char *end, uint32_t *table, int *next,
                            bool *closed)
{
    const char *colon = memchr(s, ':', (size_t)(end - s));
    size_t klen;
    uint64_t mb;
    uint32_t div;
    if (!colon || *closed || !parse_divisions(colon + 1, end, &div))
        return false;
    klen = (size_t)(colon - s);
    trim(&s, &klen);
    if (klen == 1 && *s == '>') {
        fill(table, *next, CONF_RP2_INTERVALS, div);
        *closed = true;
        return true;
    }
    if (!parse_u64(s, s + klen, &mb) || !is_pow2(mb) || mb > RP2_MAX_MB)
        return false;
    int boundary = __builtin_ctzll(mb) + RP2_MB_SHIFT;
    if (boundary <= *next)
        return false; /* keys must increase (the first is at least 1 MB, interval 20) */
    fill(table, *next, boundary, div);
    *next = boundary;
    return true;
}

static bool parse_rp2_list(const char *v, uint32_t *table)
{
    size_t len = strlen(v);
    const char *s = v + 1, *end = v + len - 1;
    int next = 0;
    bool closed = false, any = false;
    if (len < 2 || v[len - 1] != ']')
        return false;
    while (s < end) {
        const char *comma = memchr(s, ',', (size_t)(end - s));
        const char *entry_end = comma ? comma : end;
        const char *t = s;
        size_t tlen = (size_t)(entry_end - s);
        trim(&t, &tlen);
        if (tlen > 0) {
            if (!parse_rp2_entry(t, t + tlen, table, &next, &closed))
                return false;
            any = true;
        }
        s = comma ? comma + 1 : end;
    }
    return any;
}

static bool parse_rp2(const struct conf_key *k FL_UNUSED, const char *v, void *field)
{
    uint32_t table[CONF_RP2_INTERVALS] = {0};
    if (*v == '[') {
        if (!parse_rp2_list(v, table))
            return false;
    } else {
        uint32_t div;
        if (!parse_divisions(v, v + strlen(v), &div))
            return false;
        fill(table, 0, CONF_RP2_INTERVALS, div);
    }
    memcpy(field, table, sizeof table);
    return true;
}

/* A single number when every interval has the same value, else the list that parses back to
 * the same table (every change of value happens at an interval of 1 MiB or more). */
static int format_rp2(const struct conf_key *k FL_UNUSED, const void *field, char *buf, size_t len)
{
    const uint32_t *t = field;
    size_t pos = 0;
    int i = 0;
    buf[0] = '\0';
    while (i < CONF_RP2_INTERVALS && t[i] == t[0])
        i++;
    if (i == CONF_RP2_INTERVALS)
        return snprintf(buf, len, "%u", t[0]);
    append(buf, len, &pos, "[");
    for (i = 0; i < CONF_RP2_INTERVALS;) {
        int j = i;
        while (j < CONF_RP2_INTERVALS && t[j] == t[i])
            j++;
        if (j == CONF_RP2_INTERVALS)
            append(buf, len, &pos, ">:%u]", t[i]);
        else /* config_parse only changes values at 1 MiB or above; 0 would not parse */
            append(buf, len, &pos, "%llu:%u,", j >= RP2_MB_SHIFT ? 1ull << (j - RP2_MB_SHIFT) : 0,
                   t[i]);
        i = j;
    }
    return (int)pos;
}

uint32_t config_rp2_divisions(const struct config *c, size_t size)
{
    int log2 = size ? 63 - __builtin_clzll((unsigned long long)size) : 0;
    return c->roundup_power2_divisions[log2 - (CONF_RP2_FIRST_SHIFT - 1)];
}

int config_expand_path(const char *pattern, char *out, size_t len)
{
    size_t n = 0;
    const char *c = pattern;
    if (len == 0)
        return -1;
    for (; *c && n + 1 < len; c++) {
        if (c[0] == '%' && c[1] == 'p') {
            int k = snprintf(out + n, len - n, "%d", (int)getpid());
            if (k < 0 || (size_t)k >= len - n)
                break;
            n += (size_t)k;
            c++;
        } else {
            out[n++] = c[0] == '%' && c[1] == '%' ? *c++ : *c;
        }
    }
    out[n] = '\0';
    return *c ? -1 : 0;
}

static const struct conf_type T_BOOL = {parse_bool, format_bool};
static const struct conf_type T_AUTO_BOOL = {parse_auto_bool, format_auto_bool};
static const struct conf_type T_INT = {parse_int, format_int};
static const struct conf_type T_FRACTION = {parse_fraction, format_fraction};
static const struct conf_type T_SIZE = {parse_size, format_size};
static const struct conf_type T_PATH = {parse_path, format_path};
static const struct conf_type T_RP2 = {parse_rp2, format_rp2};

/* ---- pairs -------------------------------------------------------------------------------- */

struct errs {
    struct conf_error *list;
    int max;
    int count;
};

static void add_error(struct errs *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_error(struct errs *e, const char *fmt, ...)
{
    if (e->count < e->max) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->list[e->count].message, sizeof e->list[0].message, fmt, ap);
        va_end(ap);
    }
    e->count++;
}

static const struct conf_key *find_key(const char *name, size_t len)
{
    for (size_t i = 0; i < FL_ARRAY_SIZE(KEYS); i++) {
        if (strlen(KEYS[i].name) == len && memcmp(KEYS[i].name, name, len) == 0)
            return &KEYS[i];
    }
    return NULL;
}

static void unknown_key(struct errs *e, const char *key, size_t klen, const char *val, size_t vlen)
{
    char names[400], qk[QUOTE_MAX + 4], qv[QUOTE_MAX + 4];
    size_t pos = 0;
    for (size_t i = 0; i < FL_ARRAY_SIZE(KEYS); i++)
        append(names, sizeof names, &pos, "%s%s", i ? ", " : "", KEYS[i].name);
    add_error(e, "FRAGLESS_CONF: unknown key \"%s\" (value \"%s\"): expected one of %s",
              excerpt(qk, key, klen), excerpt(qv, val, vlen), names);
}

static void apply_pair(const char *s, size_t len, struct config *c, struct errs *e)
{
    char q[QUOTE_MAX + 4], value[CONF_PATH_MAX];
    trim(&s, &len);
    if (len == 0)
        return;
    size_t klen = 0;
    while (klen < len && s[klen] != ':' && s[klen] != '=')
        klen++;
    if (klen == len) {
        add_error(e, "FRAGLESS_CONF: invalid pair \"%s\": expected key:value", excerpt(q, s, len));
        return;
    }
    const char *key = s, *val = s + klen + 1;
    size_t vlen = len - klen - 1;
    trim(&key, &klen);
    trim(&val, &vlen);
    const struct conf_key *k = find_key(key, klen);
    if (!k) {
        unknown_key(e, key, klen, val, vlen);
        return;
    }
    if (vlen >= sizeof value) {
        add_error(e, "FRAGLESS_CONF: value \"%s\" for %s is too long (%zu bytes; at most %zu)",
                  excerpt(q, val, vlen), k->name, vlen, sizeof value - 1);
        return;
    }
    memcpy(value, val, vlen);
    value[vlen] = '\0';
    if (!k->type->parse(k, value, (char *)c + k->offset))
        add_error(e, "FRAGLESS_CONF: invalid value \"%s\" for %s: expected %s",
                  excerpt(q, val, vlen), k->name, k->accepts);
}

/* The end of the pair starting at s: the next ',' outside [...]. *no_close is set once a '['
 * is found without a ']' after it, so that the scan stays linear in the input. */
static const char *pair_end(const char *s, bool *no_close)
{
    for (; *s && *s != ','; s++) {
        if (*s != '[' || *no_close)
            continue;
        const char *close = strchr(s, ']');
        if (close)
            s = close;
        else
            *no_close = true;
    }
    return s;
}

int config_parse(const char *text, struct config *c, struct conf_error *errs, int max_errs)
{
    struct errs e = {errs, errs ? max_errs : 0, 0};
    bool no_close = false;
    while (text && *text) {
        const char *end = pair_end(text, &no_close);
        apply_pair(text, (size_t)(end - text), c, &e);
        text = *end ? end + 1 : end;
    }
    return e.count;
}

void config_defaults(struct config *c)
{
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < FL_ARRAY_SIZE(KEYS); i++)
        KEYS[i].type->parse(&KEYS[i], KEYS[i].default_text, (char *)c + KEYS[i].offset);
}

void config_format(const struct config *c, char *buf, size_t len)
{
    char value[CONF_RP2_INTERVALS * 24];
    size_t pos = 0;
    if (len == 0)
        return;
    buf[0] = '\0';
    for (size_t i = 0; i < FL_ARRAY_SIZE(KEYS); i++) {
        const struct conf_key *k = &KEYS[i];
        k->type->format(k, (const char *)c + k->offset, value, sizeof value);
        append(buf, len, &pos, "%s:%s\n", k->name, value);
    }
}

/* ---- the process's configuration -------------------------------------------------------- */

#define CONF_REPORTED_ERRORS 8

static struct config g_config;
static int g_bad_pairs;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static bool g_exiting;

static void report_errors(const struct conf_error *errs, int n)
{
    int shown = n < CONF_REPORTED_ERRORS ? n : CONF_REPORTED_ERRORS;
    for (int i = 0; i < shown; i++)
        log_error("%s", errs[i].message);
    if (n > shown)
        log_error("FRAGLESS_CONF: %d more bad pairs not shown", n - shown);
}

static void print_config(const struct config *c)
{
    static char text[CONF_PATH_MAX * 3 + CONF_RP2_INTERVALS * 24 + 1024];
    config_format(c, text, sizeof text);
    log_text("resolved configuration (FRAGLESS_CONF):");
    log_text(text);
}

static void config_init(void)
{
    static struct conf_error errs[CONF_REPORTED_ERRORS];
    const char *env = getenv("FRAGLESS_CONF");
    config_defaults(&g_config);
    g_bad_pairs = config_parse(env, &g_config, errs, CONF_REPORTED_ERRORS);
    log_set_level(g_config.verbose);
    report_errors(errs, g_bad_pairs);
    if (g_config.verbose >= 1)
        print_config(&g_config);
}

const struct config *config_get(void)
{
    pthread_once(&g_once, config_init);
    /* exit outside the once-routine, and only once: exit handlers may call config_get() */
    if (FL_UNLIKELY(g_config.strict && g_bad_pairs > 0) &&
        !__atomic_exchange_n(&g_exiting, true, __ATOMIC_ACQ_REL)) {
        log_error("FRAGLESS_CONF: strict:true and %d bad pair%s: exiting", g_bad_pairs,
                  g_bad_pairs == 1 ? "" : "s");
        exit(1);
    }
    return &g_config;
}
