/*
 * report.c — fragreplay's outputs: the summary table and the same numbers as JSON.
 *
 * Both print every configuration's result in the order given. Bytes are exact in JSON and
 * GiB with two decimals in the table.
 */
#include "replay.h"

#include <stdio.h>

static double gib(uint64_t b)
{
    return (double)b / (double)(1ULL << 30);
}

static void print_header(const struct replay_setup *s, const struct rtrace *t)
{
    printf("fragreplay: %d trace%s, %zu events, %u allocations, peak requested %.2f GiB", s->nfiles,
           s->nfiles == 1 ? "" : "s", t->n, t->nids, gib(t->peak_requested));
    if (s->emulated)
        printf(", emulated device (%.0f GiB)\n", gib(s->capacity));
    else
        printf(", GPU %d\n", s->device);
    if (t->unknown_frees || t->trace_failures)
        printf("  skipped: %llu frees of unknown pointers, %llu recorded allocation failures\n",
               (unsigned long long)t->unknown_frees, (unsigned long long)t->trace_failures);
}

void report_table(const struct replay_setup *s, const struct rtrace *t, char *const *confs,
                  const struct result *const *res, int n)
{
    print_header(s, t);
    printf("%-30s %9s %9s %9s %10s %9s %5s %9s %9s %8s\n", "configuration (GiB)", "requested",
           "allocated", "reserved", "unalloc@pk", "largest", "ooms", "allocs", "drv calls",
           "seconds");
    for (int i = 0; i < n; i++) {
        const struct result *r = res[i];
        const char *name = confs[i][0] ? confs[i] : "(default)";
        if (r->status != 0) {
            printf("%-30.30s failed: %s\n", name, r->error);
            continue;
        }
        printf("%-30.30s %9.2f %9.2f %9.2f %10.2f %9.2f %5llu %9llu %9llu %8.2f\n", name,
               gib(r->peak_requested_bytes), gib(r->peak_allocated_bytes),
               gib(r->peak_reserved_bytes), gib(r->reserved_unallocated_bytes),
               gib(r->largest_free_block_bytes), (unsigned long long)r->ooms,
               (unsigned long long)r->alloc_calls, (unsigned long long)r->driver_calls, r->seconds);
    }
    printf("(peaks; unalloc@pk and largest: reserved-but-unallocated and the largest free block "
           "at the reserved peak;\n allocs: driver allocations and releases (segments, VMM "
           "pages); drv calls: all driver calls fragless made)\n");
}

static void json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static void json_result(const char *conf, const struct result *r, bool last)
{
    printf("    {\n      \"conf\": ");
    json_string(conf);
    printf(",\n      \"ok\": %s,\n", r->status == 0 ? "true" : "false");
    if (r->status != 0) {
        printf("      \"error\": ");
        json_string(r->error);
        printf("\n    }%s\n", last ? "" : ",");
        return;
    }
    printf("      \"stats_source\": \"%s\",\n", r->stats_from_fragless ? "fragless" : "device");
    printf("      \"peak_requested_bytes\": %llu,\n", (unsigned long long)r->peak_requested_bytes);
    printf("      \"peak_allocated_bytes\": %llu,\n", (unsigned long long)r->peak_allocated_bytes);
    printf("      \"peak_reserved_bytes\": %llu,\n", (unsigned long long)r->peak_reserved_bytes);
    printf("      \"reserved_unallocated_bytes\": %llu,\n",
           (unsigned long long)r->reserved_unallocated_bytes);
    printf("      \"largest_free_block_bytes\": %llu,\n",
           (unsigned long long)r->largest_free_block_bytes);
    printf("      \"ooms\": %llu,\n", (unsigned long long)r->ooms);
    printf("      \"ops\": %llu,\n", (unsigned long long)r->ops);
    printf("      \"empty_caches\": %llu,\n", (unsigned long long)r->empty_caches);
    printf("      \"driver_calls\": %llu,\n", (unsigned long long)r->driver_calls);
    printf("      \"alloc_calls\": %llu,\n", (unsigned long long)r->alloc_calls);
    printf("      \"seconds\": %.6f\n    }%s\n", r->seconds, last ? "" : ",");
}

void report_json(const struct replay_setup *s, const struct rtrace *t, char *const *confs,
                 const struct result *const *res, int n)
{
    printf("{\n  \"traces\": [");
    for (int i = 0; i < s->nfiles; i++) {
        json_string(s->files[i]);
        printf("%s", i + 1 < s->nfiles ? ", " : "");
    }
    printf("],\n  \"device\": %d,\n  \"emulated\": %s,\n", s->device,
           s->emulated ? "true" : "false");
    printf("  \"capacity_bytes\": %llu,\n", (unsigned long long)s->capacity);
    printf("  \"events\": %zu,\n  \"allocations\": %u,\n", t->n, t->nids);
    printf("  \"trace_peak_requested_bytes\": %llu,\n", (unsigned long long)t->peak_requested);
    printf("  \"unknown_frees\": %llu,\n", (unsigned long long)t->unknown_frees);
    printf("  \"trace_allocation_failures\": %llu,\n", (unsigned long long)t->trace_failures);
    printf("  \"trace_seconds\": %.6f,\n", (double)t->span_us / 1e6);
    printf("  \"results\": [\n");
    for (int i = 0; i < n; i++)
        json_result(confs[i], res[i], i + 1 == n);
    printf("  ]\n}\n");
}
