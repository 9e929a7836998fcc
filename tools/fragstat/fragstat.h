/*
 * fragstat.h — the parts of fragstat and what they offer each other.
 *
 * main.c parses the command line and runs one mode; scan.c finds the pages this user may read
 * (and removes stale ones); table.c prints the default table and the segment maps; prom.c the
 * Prometheus exposition; request.c asks a process to empty its cache; nvml.c asks NVML (when
 * present) how much of a GPU is in use. JSON comes from lib/pageio.h, shared with the library's
 * exit report.
 */
#ifndef FRAGSTAT_H
#define FRAGSTAT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "fragless_shm.h"

/* Exit codes (documented in --help and fragstat(1)). */
enum fs_exit {
    FS_EXIT_OK = 0,
    FS_EXIT_NOT_FOUND = 1, /* no process (or not the one asked for) publishes a page */
    FS_EXIT_USAGE = 2,     /* bad arguments */
    FS_EXIT_DENIED = 3,    /* the process exists but belongs to another user */
    FS_EXIT_FAILED = 4,    /* a request got no answer or failed; output could not be written */
};

/* One process whose page was read. */
struct fs_proc {
    fragless_shm_page_t *page; /* validated copy */
    char name[64];             /* file name under the page directory */
};

struct fs_scan {
    struct fs_proc *procs;
    int count;
    int denied;  /* pages of the wanted pid (or any, with pid 0) owned by someone else */
    int invalid; /* pages skipped as damaged */
    int removed; /* stale pages removed */
};

/* Reads every page in `dir` this user may see (pid 0: all, else that pid only), sorted by pid;
 * removes stale pages of dead or reused pids; warns on stderr about damaged ones. */
int fs_scan(const char *dir, int32_t pid, struct fs_scan *out);
void fs_scan_free(struct fs_scan *s);
/* Opens the page file of `pid` for writing after the same checks as fs_scan. Returns the fd,
 * or -FS_EXIT_NOT_FOUND / -FS_EXIT_DENIED. */
int fs_open_page(const char *dir, int32_t pid);

/* Output. `device` is an ordinal filter (-1: all). */
void fs_print_table(FILE *f, const struct fs_scan *s, int device);
void fs_print_segments(FILE *f, const struct fs_proc *p, int device);
void fs_print_prometheus(FILE *f, const struct fs_scan *s, int device, const char *hostname);

/* --empty-cache: returns an enum fs_exit; prints what happened. */
int fs_empty_cache(const char *dir, int32_t pid, int device, FILE *out);

/* NVML, through dlopen of libnvidia-ml.so.1: device memory used and total by PCI bus id
 * ("0000:65:00.0"). False when NVML is absent or does not know the device. */
bool fs_nvml_memory(const char *pci_bus_id, uint64_t *used, uint64_t *total);

#endif
