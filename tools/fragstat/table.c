/*
 * table.c — fragstat's human output: the process table with a total line per GPU, and the
 * per-segment maps of --segments.
 */
#include "fragstat.h"

#include <string.h>

#include "pageio.h"

/* A physical GPU seen in the table: the first device entry that named it, and the sums. */
struct gpu_total {
    const fragless_shm_device_t *first;
    uint64_t allocated, reserved, unallocated, peak_reserved, ooms;
    int procs;
};

static bool wanted(const fragless_shm_device_t *d, int device)
{
    return device < 0 || d->device == device;
}

static void print_row(FILE *f, int32_t pid, const char *command, const fragless_shm_device_t *d)
{
    const fragless_stats_t *s = &d->stats;
    fprintf(f, "%-8d %-24.24s %3d %11s %11s %11s %6.1f%% %11s %11s %5llu\n", (int)pid,
            pio_short_command(command), d->device, PIO_HUMAN(s->allocated_bytes.current),
            PIO_HUMAN(s->reserved_bytes.current), PIO_HUMAN(s->reserved_unallocated_bytes.current),
            pio_fragmentation(s), PIO_HUMAN(s->largest_free_block_bytes.current),
            PIO_HUMAN(s->reserved_bytes.peak), (unsigned long long)s->num_ooms);
}

static void add_total(struct gpu_total *t, int *n, const fragless_shm_device_t *d)
{
    int i = 0;
    while (i < *n && !pio_same_gpu(t[i].first, d))
        i++;
    if (i == *n) {
        memset(&t[i], 0, sizeof t[i]);
        t[i].first = d;
        (*n)++;
    }
    const fragless_stats_t *s = &d->stats;
    t[i].allocated += s->allocated_bytes.current;
    t[i].reserved += s->reserved_bytes.current;
    t[i].unallocated += s->reserved_unallocated_bytes.current;
    t[i].peak_reserved += s->reserved_bytes.peak;
    t[i].ooms += s->num_ooms;
    t[i].procs++;
}

static void print_device_line(FILE *f, const struct gpu_total *t)
{
    char pci[32] = "";
    uint64_t used, total;
    bool has_pci = pio_pci_id(t->first, pci, sizeof pci);
    if (has_pci && fs_nvml_memory(pci, &used, &total)) {
        fprintf(f, "  device %s: %s used of %s by all processes (NVML)\n", pci, PIO_HUMAN(used),
                PIO_HUMAN(total));
    } else if (t->first->total_bytes) {
        fprintf(f, "  device %s: %s total; use by processes without fragless unknown (no NVML)\n",
                has_pci ? pci : "?", PIO_HUMAN(t->first->total_bytes));
    }
}

static void print_totals(FILE *f, const struct gpu_total *t, int n)
{
    for (int i = 0; i < n; i++) {
        char label[48];
        snprintf(label, sizeof label, "total (%d process%s)", t[i].procs,
                 t[i].procs == 1 ? "" : "es");
        fprintf(f, "%-8s %-24.24s %3d %11s %11s %11s %7s %11s %11s %5llu\n", "GPU", label,
                t[i].first->device, PIO_HUMAN(t[i].allocated), PIO_HUMAN(t[i].reserved),
                PIO_HUMAN(t[i].unallocated), "", "", PIO_HUMAN(t[i].peak_reserved),
                (unsigned long long)t[i].ooms);
        print_device_line(f, &t[i]);
    }
}

void fs_print_table(FILE *f, const struct fs_scan *s, int device)
{
    struct gpu_total totals[64];
    int ntotals = 0;
    fprintf(f, "%-8s %-24s %3s %11s %11s %11s %7s %11s %11s %5s\n", "PID", "COMMAND", "GPU",
            "ALLOCATED", "RESERVED", "RSV-UNALLOC", "FRAG", "LARGEST", "PEAK-RSV", "OOMS");
    for (int i = 0; i < s->count; i++) {
        const fragless_shm_page_t *p = s->procs[i].page;
        for (uint32_t k = 0; k < p->device_count; k++) {
            const fragless_shm_device_t *d = &p->devices[k];
            if (!wanted(d, device))
                continue;
            print_row(f, p->pid, p->command, d);
            if (ntotals < (int)(sizeof totals / sizeof totals[0]))
                add_total(totals, &ntotals, d);
        }
    }
    print_totals(f, totals, ntotals);
}

void fs_print_segments(FILE *f, const struct fs_proc *p, int device)
{
    const fragless_shm_page_t *pg = p->page;
    fprintf(f, "pid %d: %s\n", (int)pg->pid, pg->command);
    fprintf(f, "map: '#' allocated, '+' partly allocated, '.' free (mapped), ' ' unmapped\n");
    for (uint32_t k = 0; k < pg->device_count; k++) {
        const fragless_shm_device_t *d = &pg->devices[k];
        if (!wanted(d, device))
            continue;
        fprintf(f, "GPU %d: %u segment%s", d->device, d->segment_total,
                d->segment_total == 1 ? "" : "s");
        if (d->segment_total > d->segment_count)
            fprintf(f, " (first %u shown)", d->segment_count);
        fputc('\n', f);
        for (uint32_t i = 0; i < d->segment_count; i++) {
            const fragless_shm_segment_t *g = &d->segments[i];
            fprintf(f, "  0x%012llx %10s %-4s alloc %10s free %10s unmapped %10s %5u blk [%-*s]\n",
                    (unsigned long long)g->base, PIO_HUMAN(g->size), g->expandable ? "vmm" : "cls",
                    PIO_HUMAN(g->allocated), PIO_HUMAN(g->free_mapped), PIO_HUMAN(g->unmapped),
                    g->blocks, FRAGLESS_SHM_MAP_CHARS, g->map);
        }
    }
}
