/*
 * replay.h — fragreplay's internal interfaces: the parsed trace (rtrace.c), the pointer map
 * (ptrmap.c), one configuration's replay (run.c), its result and the outputs (report.c,
 * plot.c).
 */
#ifndef FRAGREPLAY_H
#define FRAGREPLAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- ptrmap.c: trace pointer -> allocation id --------------------------------------------- */

/* Open-addressing hash map from a 64-bit key (never 0) to a 32-bit value. */
struct ptrmap {
    uint64_t *keys;
    uint32_t *vals;
    size_t cap; /* power of two */
    size_t len;
};

int ptrmap_init(struct ptrmap *m);
void ptrmap_destroy(struct ptrmap *m);
/* Inserts key (absent before); returns 0 or -1 when out of memory. */
int ptrmap_put(struct ptrmap *m, uint64_t key, uint32_t val);
bool ptrmap_get(const struct ptrmap *m, uint64_t key, uint32_t *val);
/* Removes key if present; returns whether it was. */
bool ptrmap_del(struct ptrmap *m, uint64_t key);

/* ---- rtrace.c: RMM CSV traces parsed into replayable events ------------------------------- */

enum rev_kind {
    REV_ALLOC,       /* allocate: id, size, stream */
    REV_FREE,        /* free of a live allocation: id, stream */
    REV_EMPTY_CACHE, /* extension "empty cache": the program released the cache */
};

struct rev {
    uint64_t time_us; /* since the earliest event of all traces */
    uint64_t size;    /* bytes as the trace states them */
    uint32_t id;      /* allocation id, dense from 0 */
    uint16_t stream;  /* index into rtrace.streams */
    uint8_t kind;
};

#define RTRACE_STREAMS 256

struct rtrace {
    struct rev *ev;
    size_t n, cap;
    uint64_t streams[RTRACE_STREAMS]; /* distinct values; streams[0] is 0, the default */
    unsigned nstreams;
    uint32_t nids;           /* allocations in all traces */
    uint64_t unknown_frees;  /* frees of pointers the trace never allocated: skipped */
    uint64_t trace_failures; /* "allocate failure" lines: the recorded allocator failed */
    uint64_t peak_requested; /* peak of the sum of live sizes, as the traces state them */
    uint64_t span_us;        /* time from the first to the last event */
    char first_unknown[600]; /* "FILE:LINE" of the first unknown free */
};

/* Parses the RMM CSV traces `files` and merges them by time (each keeps its own pointers).
 * On a malformed line returns -1 with "FILE:LINE: what is wrong" in err. */
int rtrace_load(struct rtrace *t, char *const *files, int nfiles, char *err, size_t errlen);
void rtrace_free(struct rtrace *t);

/* ---- run.c: one configuration's replay, in its own process -------------------------------- */

/* One point of the plot: the maxima over a span of events starting at time_us. */
struct sample {
    uint64_t time_us;
    uint64_t requested, allocated, reserved;
};

#define RESULT_MAX_SAMPLES 1200

struct result {
    int status;               /* 0, or an error that stopped the replay (message in `error`) */
    bool stats_from_fragless; /* false in pass-through: reserved measured with cuMemGetInfo */
    uint64_t ops;             /* allocations and frees replayed */
    uint64_t peak_requested_bytes;
    uint64_t peak_allocated_bytes;
    uint64_t peak_reserved_bytes;
    uint64_t reserved_unallocated_bytes; /* at the reserved peak */
    uint64_t largest_free_block_bytes;   /* at the reserved peak */
    uint64_t ooms;
    uint64_t driver_calls; /* every driver call fragless made (pass-through: ours) */
    uint64_t alloc_calls;  /* driver allocations and releases (segments, pages) */
    uint64_t empty_caches;
    double seconds;
    unsigned nsamples;
    struct sample samples[RESULT_MAX_SAMPLES];
    char error[256];
};

/* Replays `t` on `device` through the CUDA entry points libfragless exports; fills r. */
void run_replay(const struct rtrace *t, int device, struct result *r);

/* ---- report.c and plot.c ------------------------------------------------------------------ */

struct replay_setup {
    char *const *files;
    int nfiles;
    int device;
    bool emulated;
    uint64_t capacity;
};

void report_table(const struct replay_setup *s, const struct rtrace *t, char *const *confs,
                  const struct result *const *res, int n);
void report_json(const struct replay_setup *s, const struct rtrace *t, char *const *confs,
                 const struct result *const *res, int n);
/* Writes a self-contained SVG of requested, allocated and reserved bytes over trace time. */
int plot_svg(const char *path, const struct rtrace *t, char *const *confs,
             const struct result *const *res, int n);

#endif
