/*
 * prom.c — the Prometheus text exposition format (version 0.0.4) of every page read.
 *
 * Names: fragless_<field> for a level's current value, the same with _peak before the _bytes
 * unit for its high-water mark, fragless_<field>_total for counters; labels pid, gpu and
 * hostname. Each family gets its HELP and TYPE line once, then one sample per process and GPU.
 */
#include "fragstat.h"

#include <stddef.h>
#include <string.h>

#include "pageio.h"

struct family {
    const char *field;
    const char *help;
    size_t offset; /* of the uint64_t value in fragless_stats_t */
    const char *type;
    bool peak;
};

static const struct family families[] = {
#define PROM_GAUGE_(name, help)                                              \
    {#name, help, offsetof(fragless_stats_t, name.current), "gauge", false}, \
        {#name, help, offsetof(fragless_stats_t, name.peak), "gauge", true},
#define PROM_COUNTER_(name, help) {#name, help, offsetof(fragless_stats_t, name), "counter", false},
    FRAGLESS_STATS_FIELDS(PROM_GAUGE_, PROM_COUNTER_)
#undef PROM_GAUGE_
#undef PROM_COUNTER_
};

static void metric_name(const struct family *m, char *buf, size_t len)
{
    size_t n = strlen(m->field);
    const char *unit = "_bytes";
    size_t ulen = strlen(unit);
    if (m->peak && n > ulen && strcmp(m->field + n - ulen, unit) == 0)
        snprintf(buf, len, "fragless_%.*s_peak_bytes", (int)(n - ulen), m->field);
    else if (m->peak)
        snprintf(buf, len, "fragless_%s_peak", m->field);
    else
        snprintf(buf, len, "fragless_%s%s", m->field, strcmp(m->type, "counter") ? "" : "_total");
}

/* Label values: escape backslash, double quote and newline. */
static void label_value(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            fprintf(f, "\\%c", *s);
        else if (*s == '\n')
            fputs("\\n", f);
        else
            fputc(*s, f);
    }
}

static void sample(FILE *f, const char *name, int32_t pid, int gpu, const char *host,
                   const char *value)
{
    fprintf(f, "%s{pid=\"%d\",gpu=\"%d\",hostname=\"", name, (int)pid, gpu);
    label_value(f, host);
    fprintf(f, "\"} %s\n", value);
}

typedef void (*sample_fn)(FILE *f, const char *name, const fragless_shm_page_t *p,
                          const fragless_shm_device_t *d, const void *arg, const char *host);

static void each_device(FILE *f, const struct fs_scan *s, int device, const char *host,
                        const char *name, sample_fn fn, const void *arg)
{
    for (int i = 0; i < s->count; i++) {
        const fragless_shm_page_t *p = s->procs[i].page;
        for (uint32_t k = 0; k < p->device_count; k++) {
            if (device < 0 || p->devices[k].device == device)
                fn(f, name, p, &p->devices[k], arg, host);
        }
    }
}

static void stat_sample(FILE *f, const char *name, const fragless_shm_page_t *p,
                        const fragless_shm_device_t *d, const void *arg, const char *host)
{
    const struct family *m = arg;
    uint64_t v;
    char buf[32];
    memcpy(&v, (const char *)&d->stats + m->offset, sizeof v);
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)v);
    sample(f, name, p->pid, d->device, host, buf);
}

static void total_sample(FILE *f, const char *name, const fragless_shm_page_t *p,
                         const fragless_shm_device_t *d, const void *arg, const char *host)
{
    char buf[32];
    (void)arg;
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)d->total_bytes);
    sample(f, name, p->pid, d->device, host, buf);
}

static void frag_sample(FILE *f, const char *name, const fragless_shm_page_t *p,
                        const fragless_shm_device_t *d, const void *arg, const char *host)
{
    char buf[32];
    (void)arg;
    snprintf(buf, sizeof buf, "%.4f", pio_fragmentation(&d->stats) / 100.0);
    sample(f, name, p->pid, d->device, host, buf);
}

static void header(FILE *f, const char *name, const char *help, const char *type)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void fs_print_prometheus(FILE *f, const struct fs_scan *s, int device, const char *hostname)
{
    char name[128], help[256];
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++) {
        const struct family *m = &families[i];
        metric_name(m, name, sizeof name);
        snprintf(help, sizeof help, "%s%s", m->peak ? "high-water mark: " : "", m->help);
        header(f, name, help, m->type);
        each_device(f, s, device, hostname, name, stat_sample, m);
    }
    header(f, "fragless_device_total_bytes", "device memory as the driver reports it", "gauge");
    each_device(f, s, device, hostname, "fragless_device_total_bytes", total_sample, NULL);
    header(f, "fragless_fragmentation_ratio",
           "share of reserved-but-unallocated bytes outside the largest free block", "gauge");
    each_device(f, s, device, hostname, "fragless_fragmentation_ratio", frag_sample, NULL);
}
