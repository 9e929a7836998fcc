/*
 * internal.h — the internal prototypes of libfragless, grouped per file.
 *
 * Owns: nothing but declarations. Each section below belongs to one .c file and lists what
 * that file offers to the others. Layers (DESIGN.md §2): interpose → heap → segment/vmm →
 * driver; config, log, stats, trace and shm are side paths any layer may use. No layer calls
 * upward, and only driver.c calls libcuda.
 */
#ifndef FRAGLESS_INTERNAL_H
#define FRAGLESS_INTERNAL_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cuda.h>

#include "fragless.h"

#define FL_EXPORT        __attribute__((visibility("default")))
#define FL_UNUSED        __attribute__((unused))
/* Thread-locals read on every allocation or free: the initial-exec model makes each read one
 * load, not a call to __tls_get_addr (libfragless is preloaded, so its TLS is static). */
#define FL_HOT_TLS       __attribute__((tls_model("initial-exec")))
#define FL_LIKELY(x)     __builtin_expect(!!(x), 1)
#define FL_UNLIKELY(x)   __builtin_expect(!!(x), 0)
/* A function off the hot path: kept out of line so that its callers stay small. */
#define FL_COLD          __attribute__((cold, noinline))
#define FL_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#define FL_KiB ((size_t)1 << 10)
#define FL_MiB ((size_t)1 << 20)
#define FL_GiB ((size_t)1 << 30)

/* Most devices fragless keeps state for. */
#define FL_MAX_DEVICES 64

/* Whether `device` is an ordinal fragless keeps state for (0 .. FL_MAX_DEVICES - 1). */
static inline bool fl_device_in_range(int device)
{
    return device >= 0 && device < FL_MAX_DEVICES;
}

/* ---- log.c: the one path for every message ------------------------------------------- */

/* Errors and warnings are always printed; info from verbose 2, debug from verbose 3. */
enum log_level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };

/* One message is at most this many bytes including "fragless: " and the newline; longer
 * messages end in "...". */
#define LOG_LINE_MAX     1024
/* Default limits: at most LOG_SITE_LIMIT messages per call site and LOG_GLOBAL_LIMIT from all
 * sites together per LOG_WINDOW_MS; the rest are counted and reported as suppressed. */
#define LOG_SITE_LIMIT   10
#define LOG_GLOBAL_LIMIT 100
#define LOG_WINDOW_MS    10000

/* Per call-site rate limiter state; zero-initialized static storage is ready to use. */
struct log_site {
    uint64_t window;     /* start of the current window (ms) << 24 | messages printed in it */
    uint32_t suppressed; /* messages dropped since the last "suppressed" line */
};

/* Sets the verbosity (config `verbose`, clamped to 0..3); errors and warnings stay on. */
void log_set_level(int level);
int log_get_level(void);
/* Whether a message at `level` would be printed at the current verbosity. */
bool log_enabled(int level);
/* Replaces the rate limits (tests use short windows); 0 for an argument restores its default.
 * Limits above 2^24 - 1 are clamped. */
void log_set_limits(uint32_t per_site, uint32_t global, uint32_t window_ms);
/* Prints "fragless: <msg>\n" to stderr with one write(2) if `level` is enabled and the
 * site's and the global budget allow; otherwise counts it as suppressed and prints one
 * "suppressed N messages" line when the window reopens. Keeps errno. */
void log_site_printf(struct log_site *site, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prints every line of `text` as "fragless: <line>\n", one write(2) per line, regardless of
 * level and rate limits: for one-off multi-line output (the resolved configuration). */
void log_text(const char *text);
/* Async-signal-safe: one write(2) of "fragless: <msg>\n", no formatting, locks or limits. */
void log_signal_safe(const char *msg);

#define LOG_AT(level, ...)                                     \
    do {                                                       \
        static struct log_site log_site_;                      \
        if (log_enabled(level))                                \
            log_site_printf(&log_site_, (level), __VA_ARGS__); \
    } while (0)
#define log_error(...) LOG_AT(LOG_ERROR, __VA_ARGS__)
#define log_warn(...)  LOG_AT(LOG_WARN, __VA_ARGS__)
#define log_info(...)  LOG_AT(LOG_INFO, __VA_ARGS__)
#define log_debug(...) LOG_AT(LOG_DEBUG, __VA_ARGS__)

/* ---- config.c: FRAGLESS_CONF ------------------------------------------------------------ */

#define CONF_PATH_MAX        512
/* roundup_power2_divisions is kept per power-of-two size interval: interval i covers sizes in
 * [2^(i+CONF_RP2_FIRST_SHIFT-1), 2^(i+CONF_RP2_FIRST_SHIFT)), i.e. i = floor(log2(size));
 * config_rp2_divisions() does the lookup. */
#define CONF_RP2_FIRST_SHIFT 1
#define CONF_RP2_INTERVALS   64

struct config {
    bool passthrough;                /* passthrough: everything straight to the driver */
    bool strict;                     /* strict: a bad pair is fatal at first use */
    int verbose;                     /* verbose: 0 errors, 1 +resolved config, 2 info, 3 debug */
    char driver_path[CONF_PATH_MAX]; /* driver: path of libcuda to load ("" = libcuda.so.1) */
    int expandable_segments;         /* expandable_segments: -1 auto (VMM if supported), 0, 1 */
    size_t max_split_size;           /* max_split_size_mb, bytes; SIZE_MAX = unlimited */
    uint32_t roundup_power2_divisions[CONF_RP2_INTERVALS]; /* 0 = no rounding beyond 512 B */
    double garbage_collection_threshold;                   /* fraction of device memory; 0 = off */
    size_t release_threshold;       /* release_threshold_mb, bytes; SIZE_MAX = keep all */
    size_t page_size;               /* page_size_mb, bytes; multiple of the granularity */
    bool page_moving;               /* page_moving: free blocks' pages move before creating */
    size_t free_mapped_keep;        /* free_mapped_keep_mb, bytes kept mapped before moving */
    bool thread_cache;              /* thread_cache: per-thread regions skip the heap lock */
    char trace_path[CONF_PATH_MAX]; /* trace: record events to PATH.devN ("" = off) */
    bool trace_extensions;          /* trace_extensions: record actions beyond RMM's */
    char report[CONF_PATH_MAX];     /* report: "stderr" or PATH ("" = off) */
    bool stats_page;                /* stats_page: publish /dev/shm page for fragstat */
};

/* One rejected key:value pair, with the message that names what is accepted. */
struct conf_error {
    char message[512];
};

void config_defaults(struct config *c);
/* Pure: parses `text` into `c` (which holds defaults or earlier values). Each bad pair adds
 * one entry to errs (up to max_errs) and is skipped; good pairs still apply. Returns the
 * number of bad pairs. */
int config_parse(const char *text, struct config *c, struct conf_error *errs, int max_errs);
/* Writes the resolved configuration, one "key:value" per line, into buf (always
 * NUL-terminated); the lines joined with ',' parse back to the same configuration. */
void config_format(const struct config *c, char *buf, size_t len);
/* The process's configuration: FRAGLESS_CONF parsed once (thread-safe, lazily), errors
 * reported once on stderr; with strict:true a bad pair exits the process (status 1) here. */
const struct config *config_get(void);
/* roundup_power2_divisions that apply to a request of `size` bytes. */
uint32_t config_rp2_divisions(const struct config *c, size_t size);
/* A path setting (trace, report) as a file name: "%p" becomes the process id, "%%" a '%'.
 * Returns 0, or -1 (out holding a cut name) when it does not fit `len` bytes. */
int config_expand_path(const char *pattern, char *out, size_t len);

/* ---- driver.c: the only file that calls libcuda ---------------------------------------- */

enum drv_feature {
    DRV_FEATURE_ASYNC,        /* cuMemAllocAsync / cuMemFreeAsync */
    DRV_FEATURE_VMM,          /* cuMemAddressReserve ... cuMemSetAccess */
    DRV_FEATURE_PROC_ADDRESS, /* cuGetProcAddress_v2 or the 4-argument cuGetProcAddress */
    DRV_FEATURE_IPC,          /* cuIpcGetMemHandle */
    DRV_FEATURE_COUNT
};

/* Loads the driver once (dlopen of config's driver path or libcuda.so.1) and resolves every
 * entry point; thread-safe and re-entrant. Does not call cuInit. */
CUresult drv_load(void);
/* drv_load() + cuInit(0) once. */
CUresult drv_init(void);
bool drv_has(enum drv_feature f);
/* The real driver function for a CUDA entry point name as the driver's own cuGetProcAddress
 * would return it (used for pass-through and by the resolvers); NULL if unknown. */
void *drv_real_proc(const char *symbol, int cuda_version, cuuint64_t flags,
                    CUdriverProcAddressQueryResult *status);
/* The driver's own export `name` (real dlsym on the driver's handle); NULL if it has none. */
void *drv_sym(const char *name);
/* The driver's cuGetProcAddress (5-argument form; synthesized status on drivers with only the
 * 4-argument one). CUDA_ERROR_NOT_SUPPORTED when the driver has neither. */
CUresult drv_get_proc_address(const char *symbol, void **pfn, int cuda_version, cuuint64_t flags,
                              CUdriverProcAddressQueryResult *status);
/* The driver's 4-argument cuGetProcAddress (CUDA_ERROR_NOT_FOUND for what it cannot give). */
CUresult drv_get_proc_address_v1(const char *symbol, void **pfn, int cuda_version,
                                 cuuint64_t flags);
/* Driver calls (every wrapper below counts them) and nanoseconds spent in the calls that can
 * be slow (allocation, free, VMM, synchronization, context retain/release: driver.c's TIMED). */
uint64_t drv_call_count(void);
uint64_t drv_call_ns(void);

CUresult drv_driver_get_version(int *version);
CUresult drv_ctx_get_current(CUcontext *ctx);
CUresult drv_ctx_set_current(CUcontext ctx);
CUresult drv_ctx_get_device(CUdevice *dev);
CUresult drv_ctx_synchronize(void);
/* The current context may access the memory of `peer`'s device (and stops). Optional entry
 * points: CUDA_ERROR_NOT_SUPPORTED without them. */
CUresult drv_ctx_enable_peer_access(CUcontext peer, unsigned int flags);
CUresult drv_ctx_disable_peer_access(CUcontext peer);
CUresult drv_primary_ctx_retain(CUcontext *ctx, CUdevice dev);
CUresult drv_primary_ctx_release(CUdevice dev);
CUresult drv_primary_ctx_reset(CUdevice dev);
CUresult drv_primary_ctx_get_state(CUdevice dev, unsigned int *flags, int *active);
CUresult drv_device_get_count(int *count);
CUresult drv_device_get_attribute(int *value, CUdevice_attribute attr, CUdevice dev);
CUresult drv_device_total_mem(size_t *bytes, CUdevice dev);
CUresult drv_mem_get_info(size_t *free_bytes, size_t *total_bytes);
CUresult drv_mem_alloc(CUdeviceptr *ptr, size_t size);
CUresult drv_mem_free(CUdeviceptr ptr);
CUresult drv_mem_alloc_async(CUdeviceptr *ptr, size_t size, CUstream stream);
CUresult drv_mem_free_async(CUdeviceptr ptr, CUstream stream);
CUresult drv_mem_get_address_range(CUdeviceptr *base, size_t *size, CUdeviceptr ptr);
CUresult drv_pointer_get_attribute(void *data, CUpointer_attribute attr, CUdeviceptr ptr);
CUresult drv_ipc_get_mem_handle(CUipcMemHandle *handle, CUdeviceptr ptr);
CUresult drv_stream_is_capturing(CUstream stream, CUstreamCaptureStatus *status);
/* The context of a created stream (not of the legacy or per-thread default stream). */
CUresult drv_stream_get_ctx(CUstream stream, CUcontext *ctx);
CUresult drv_stream_synchronize(CUstream stream);
/* Forwarded to by interpose.c's hooks of the same names (CUDA_ERROR_NOT_SUPPORTED when the
 * driver lacks one): beginning a capture, destroying a stream or a context. */
CUresult drv_stream_begin_capture_v1(CUstream stream);
CUresult drv_stream_begin_capture_v1_ptsz(CUstream stream);
CUresult drv_stream_begin_capture(CUstream stream, CUstreamCaptureMode mode);
CUresult drv_stream_begin_capture_ptsz(CUstream stream, CUstreamCaptureMode mode);
CUresult drv_stream_begin_capture_to_graph(CUstream stream, CUgraph graph, const CUgraphNode *deps,
                                           const CUgraphEdgeData *data, size_t ndeps,
                                           CUstreamCaptureMode mode);
CUresult drv_stream_begin_capture_to_graph_ptsz(CUstream stream, CUgraph graph,
                                                const CUgraphNode *deps,
                                                const CUgraphEdgeData *data, size_t ndeps,
                                                CUstreamCaptureMode mode);
CUresult drv_stream_destroy_v1(CUstream stream);
CUresult drv_stream_destroy(CUstream stream);
CUresult drv_ctx_destroy_v1(CUcontext ctx);
CUresult drv_ctx_destroy(CUcontext ctx);
CUresult drv_green_ctx_destroy(CUgreenCtx ctx);
CUresult drv_event_create(CUevent *event, unsigned int flags);
CUresult drv_event_destroy(CUevent event);
CUresult drv_event_record(CUevent event, CUstream stream);
CUresult drv_event_query(CUevent event);
CUresult drv_mem_get_granularity(size_t *granularity, int device);
CUresult drv_mem_address_reserve(CUdeviceptr *ptr, size_t size, size_t alignment);
CUresult drv_mem_address_free(CUdeviceptr ptr, size_t size);
CUresult drv_mem_create(CUmemGenericAllocationHandle *handle, size_t size, int device);
CUresult drv_mem_release(CUmemGenericAllocationHandle handle);
CUresult drv_mem_map(CUdeviceptr ptr, size_t size, CUmemGenericAllocationHandle handle);
CUresult drv_mem_unmap(CUdeviceptr ptr, size_t size);
/* Records (on) or forgets that device `peer` may read and write the memory `owner` maps
 * (vmm.c keeps this consistent with the mappings; see vmm_peer_enable). */
void drv_peer_set(int owner, int peer, bool on);
/* Bit p set: device p is a recorded peer of `owner`. */
uint64_t drv_peers(int owner);
/* Read/write access to the mapping for `device` and every recorded peer of it, in one
 * cuMemSetAccess call. */
CUresult drv_mem_set_access(CUdeviceptr ptr, size_t size, int device);
/* Read/write access (on) or none (off) for `device` alone, one cuMemSetAccess call. */
CUresult drv_mem_set_access_of(CUdeviceptr ptr, size_t size, int device, bool on);

/* ---- dl.c: the real dlsym (interpose.c exports a dlsym hook; call only this one) --------- */

/* The C library's dlsym, found once with dlvsym. RTLD_NEXT searches after libfragless. */
void *dl_sym(void *handle, const char *name);

/* ---- api.c: the public C API -------------------------------------------------------------- */

/* Remembers that fragless served (or tried to serve) a request on `device`: the public API
 * answers FRAGLESS_ENODEV for every other device. Called by interpose.c before heap_alloc. */
void api_note_device(int device);

/* ---- heap.c (and friends): the caching allocator ---------------------------------------- */

enum heap_mode {
    HEAP_SYNC,  /* cudaMalloc/cuMemAlloc, cudaFree/cuMemFree: device-wide ordering */
    HEAP_ASYNC, /* the stream-ordered forms: ordered on `stream` */
};

/* Allocates `size` bytes (0 is allowed and returns a unique minimal block) on `device` for
 * the current context's use, ordered on `stream` when mode is HEAP_ASYNC. */
CUresult heap_alloc(int device, size_t size, CUstream stream, enum heap_mode mode,
                    CUdeviceptr *out);
/* Frees `ptr` if fragless handed it out; *foreign = true (and nothing done) otherwise. */
CUresult heap_free(CUdeviceptr ptr, CUstream stream, enum heap_mode mode, bool *foreign);
/* A stream-ordered free of a block the calling thread carved from its own region: done
 * (true) without a driver call or a current context; false: use heap_free. */
bool heap_free_own(CUdeviceptr ptr, CUstream stream);
/* A stream-ordered allocation on `device` carved from the calling thread's region for
 * `stream`: done (true) without a driver call or a current context; false: use heap_alloc. */
bool heap_alloc_own(int device, size_t size, CUstream stream, CUdeviceptr *out);
/* The live block containing `ptr`: its base, requested size and device. False if none. */
bool heap_lookup(CUdeviceptr ptr, CUdeviceptr *base, size_t *size, int *device);
/* Bytes of `device` a new request could take without asking the driver. */
size_t heap_cached_bytes(int device);
int heap_get_stats(int device, fragless_stats_t *out);
int heap_reset_peaks(int device);
CUresult heap_empty_cache(int device, size_t *released);
/* The program is destroying `stream` (a created one): its stream-ordered frees in every heap
 * wait for a device sync, since a new stream may get its handle while the old one's work
 * runs. Call before the destroy. */
void heap_stream_destroyed(CUstream stream);
/* A context's streams go (a primary context reset, a context destroyed; context_gone: it is
 * destroyed already, with its events): every stream pool of every heap goes, its blocks
 * waiting for a device sync. A pool is keyed by a stream, not a context, and a pool in any
 * heap may hold frees made on that context's streams. */
void heap_streams_reset(bool context_gone);
/* Checks every invariant of every device's heap; logs and returns false on the first
 * violation. Run after every operation in test builds (FRAGLESS_CHECK=1 in the env). */
bool heap_is_valid(void);
/* One segment as fragstat's map shows it (see heap_segment_info). */
#define HEAP_SEG_MAP_CHARS 64
struct heap_segment_info {
    CUdeviceptr base;
    size_t size;        /* bytes of address space (VMM: the reservation) */
    size_t allocated;   /* bytes in live blocks */
    size_t free_mapped; /* bytes in free blocks backed by memory */
    size_t unmapped;    /* bytes of address space not backed (VMM) */
    uint32_t blocks;
    uint8_t expandable; /* 1 for a VMM segment */
    /* one char per 1/64 of the segment: '#' allocated, '+' partly allocated, '.' free and
     * mapped, ' ' unmapped */
    char map[HEAP_SEG_MAP_CHARS + 1];
};
/* Fills at most `max` entries for `device`'s segments; returns how many segments exist. Safe
 * to call from any thread; takes the device's lock briefly. */
int heap_segment_info(int device, struct heap_segment_info *out, int max);
void heap_atfork_prepare(void);
void heap_atfork_parent(void);
void heap_atfork_child(void);

/* -- heap internals: shared by the heap's files only (heap.c, size.c, freeindex.c, block.c,
 *    livemap.c, reuse.c, release.c, expand.c, heapcheck.c, stats.c, segment.c, segmap.c);
 *    nothing outside the heap uses them. -- */

#include <pthread.h>

enum heap_pool_kind { POOL_SMALL = 0, POOL_LARGE = 1, POOL_KINDS = 2 };

enum block_state {
    BLOCK_FREE,         /* in a free index; reusable on every stream (global) or on one */
    BLOCK_LIVE,         /* handed out */
    BLOCK_SYNC_PENDING, /* freed by cudaFree/cuMemFree: reusable after a device sync */
    BLOCK_HELD          /* a thread's region (front.c): what it carved is counted there */
};

struct front;

/* A contiguous piece of one segment. Blocks of a segment tile it in address order. */
struct block {
    CUdeviceptr ptr;
    size_t size;      /* rounded size: what the block occupies */
    size_t requested; /* what the program asked for (live blocks) */
    struct segment *seg;
    struct block *prev, *next;   /* address neighbours in the segment */
    struct block *lprev, *lnext; /* free-index class list or pending list */
    struct freeindex *index;     /* the index holding a BLOCK_FREE block */
    uint64_t free_seq;           /* heap's free sequence number when it was freed */
    enum block_state state;
    uint16_t fi_fl, fi_sl; /* its class in the free index holding it (freeindex.c) */
    struct front *owner;   /* a held block's thread front */
    _Atomic size_t carved; /* a held block's bytes its thread has handed out (front.c) */
};

/* ---- livemap.c: a heap's live blocks by address (open addressing; never allocates on
 *      insert or remove) ---- */
struct livemap {
    struct block **slots;
    size_t mask; /* slots - 1 (a power of two less one) */
    unsigned shift;
    size_t count;
};
/* Makes room for `records` blocks (growing it when the heap makes a block record); false if
 * out of host memory. *grown_bytes: what the table grew by. */
bool livemap_reserve(struct livemap *m, size_t records, int64_t *grown_bytes);
void livemap_insert(struct livemap *m, struct block *b);
void livemap_remove(struct livemap *m, struct block *b);
/* The live block starting at ptr; NULL if none. */
struct block *livemap_find(const struct livemap *m, CUdeviceptr ptr);

/* ---- size.c: rounding, pools, segment sizes ---- */
#define SIZE_MIN_BLOCK       ((size_t)512)
#define SIZE_SMALL_MAX       FL_MiB       /* requests up to this go to the small pool */
#define SIZE_SMALL_SEGMENT   (2 * FL_MiB) /* small-pool segments */
#define SIZE_LARGE_SEGMENT   (20 * FL_MiB)
#define SIZE_MIN_LARGE_ALLOC (10 * FL_MiB) /* below this, large requests share 20 MiB segments */
#define SIZE_SEGMENT_ROUND   (2 * FL_MiB)
#define SIZE_LARGE_BUFFER    (20 * FL_MiB) /* oversize requests take blocks at most this larger */
/* The size a request occupies (0 if it cannot be represented). */
size_t size_round(size_t size, const struct config *c);
/* PyTorch's next division of the power-of-two interval holding size. */
size_t size_rp2_next_division(size_t size, size_t divisions);
enum heap_pool_kind size_pool(size_t rounded);
/* Size of a new segment to serve a rounded request. */
size_t size_segment(size_t rounded, size_t max_split);
/* Whether a free block of block_size may serve a rounded request (max_split_size rules). */
bool size_block_fits(size_t block_size, size_t rounded, size_t max_split);
/* Whether serving `rounded` from a block of block_size leaves a remainder worth a block. */
bool size_should_split(size_t block_size, size_t rounded, enum heap_pool_kind pool,
                       size_t max_split);

/* ---- freeindex.c: segregated-fit index of free blocks (two-level bitmaps, O(1)) ---- */
#define FI_SL_LOG2 5
#define FI_SL      (1u << FI_SL_LOG2)
#define FI_FL      48
struct freeindex {
    uint64_t fl_bitmap;
    uint32_t sl_bitmap[FI_FL];
    struct block *heads[FI_FL][FI_SL];
    size_t bytes;
    size_t count;
};
void fi_init(struct freeindex *fi);
void fi_insert(struct freeindex *fi, struct block *b);
void fi_remove(struct freeindex *fi, struct block *b);
/* b, in fi, changed size from old_size: it keeps its place when its class did not change. */
void fi_resize(struct freeindex *fi, struct block *b, size_t old_size);
/* A free block of at least `size` bytes, the smallest the index can find in O(1); NULL if
 * none. */
struct block *fi_best_fit(const struct freeindex *fi, size_t size);
/* Of the first `limit` blocks of at least `size` bytes in class order from the size's own
 * class up, the one of least cost() (the first of cost 0 ends the look); NULL if none. */
struct block *fi_fit_cheapest(const struct freeindex *fi, size_t size,
                              size_t (*cost)(const struct block *b, size_t size), unsigned limit);
/* Size of the largest block held (scans one class list). */
size_t fi_largest(const struct freeindex *fi);
/* Moves every block with free_seq <= seq onto the list *out (linked by lnext). */
void fi_take_upto(struct freeindex *fi, uint64_t seq, struct block **out);
bool fi_is_valid(const struct freeindex *fi);

/* ---- segment.c: where memory comes from (classic cuMemAlloc segments, or expand.c's) ---- */
enum segment_kind { SEGMENT_CLASSIC = 0, SEGMENT_EXPANDABLE = 1 };
struct segment {
    CUdeviceptr base;
    size_t size; /* bytes of address space (expandable: the whole reservation) */
    enum segment_kind kind;
    struct vrange *vr; /* expandable: the reserved range */
    size_t mapped_end; /* expandable: no page at or beyond this offset has been mapped */
    enum heap_pool_kind pool;
    struct block *first; /* lowest block */
    uint32_t nblocks;
    uint32_t nlive;
    size_t live_bytes;
    struct segment *prev, *next; /* heap's segment list */
};
/* Gets `size` bytes from the driver in the current context. No heap lock needed. */
CUresult segment_create(size_t size, enum heap_pool_kind pool, struct segment **out);
/* Returns the memory to the driver (which waits for the work that may touch it); the caller
 * frees the record (malloc'd) once this succeeded. */
CUresult segment_destroy(struct segment *s);
/* Device memory s holds: its size (classic) or its mapped bytes (expandable). */
size_t segment_reserved(const struct segment *s);

/* ---- segmap.c: which device's heap owns an address (all devices, read-mostly) ---- */
bool segmap_insert(struct segment *seg, int device);
void segmap_remove(CUdeviceptr base);
/* The device (and segment) of the segment holding ptr; either out-pointer may be NULL. */
bool segmap_find(CUdeviceptr ptr, int *device, struct segment **seg);
void segmap_atfork_prepare(void);
void segmap_atfork_parent(void);
void segmap_atfork_child(void);

/* ---- lock.c: the heap's lock (take/give inline; sleeps on a futex when contended) ---- */
struct fl_lock {
    _Atomic uint32_t state; /* 0 free, 1 held, 2 held with possible sleepers */
};
void lock_wait(struct fl_lock *l);
void lock_wake(struct fl_lock *l);
static inline void lock_take(struct fl_lock *l)
{
    uint32_t free_ = 0;
    if (FL_UNLIKELY(!atomic_compare_exchange_strong_explicit(
            &l->state, &free_, 1, memory_order_acquire, memory_order_relaxed)))
        lock_wait(l);
}
static inline void lock_give(struct fl_lock *l)
{
    if (FL_UNLIKELY(atomic_exchange_explicit(&l->state, 0, memory_order_release) == 2))
        lock_wake(l);
}
/* A lock no thread holds: for a child after fork, whose parent's other threads are gone. */
static inline void lock_reset(struct fl_lock *l)
{
    atomic_store_explicit(&l->state, 0, memory_order_relaxed);
}

/* ---- heap.c: the per-device heap ---- */
/* Free blocks of one stream, reusable on it at once and on other streams once `event`
 * (recorded after they were freed) has completed. */
struct stream_pool {
    CUstream stream; /* the pool's key: the stream, or for a per-thread default stream its
                        thread's token */
    bool per_thread; /* CU_STREAM_PER_THREAD of one thread: events only from that thread */
    struct freeindex index[POOL_KINDS];
    CUevent event;      /* NULL until first needed */
    uint64_t event_seq; /* free_seq covered by the recorded event */
    bool event_pending; /* recorded and not yet seen complete */
};
struct heap {
    struct fl_lock lock;
    int device;
    const struct config *cfg;
    struct freeindex global[POOL_KINDS]; /* free and safe for every stream */
    struct stream_pool **streams;
    int nstreams, cap_streams;
    struct block *pending; /* BLOCK_SYNC_PENDING, newest first */
    size_t pending_bytes;
    uint64_t free_seq;
    struct segment *segments;
    struct livemap live; /* live blocks by ptr */
    struct block *spare; /* recycled block structs */
    size_t records;      /* block structs made (in use or spare; never freed) */
    size_t gc_limit;     /* garbage_collection_threshold in bytes (0: off) */
    bool expandable;     /* segments are expand.c's (decided when the heap is created) */
    size_t device_mem;   /* the device's memory (expandable heaps, or a gc_limit) */
    size_t max_split;    /* max_split_size_mb as it applies (unlimited for expandable) */
    /* Device syncs begun and the highest-numbered one completed (front.c's plain frees wait
     * for a sync numbered above the count begun when they were freed). */
    _Atomic uint64_t syncs_begun, syncs_done;
    _Atomic int fronts;     /* thread fronts with statistics on this heap (front.c) */
    _Atomic int reclaiming; /* requests out of memory: no thread takes a new region */
    bool serve_fronts;      /* thread_cache, unless release_threshold_mb caps what is cached */
    int held;               /* blocks held as thread regions */
    /* The heap's own levels: front.c adds what threads carved from their regions (merged on
     * read: heap_merged_stats). Peaks count the carved bytes too. */
    fragless_stats_t st;
};

/* The heap of `device`, NULL if it has none yet. */
struct heap *heap_find(int device);
/* Brings derived levels and the peaks block.c leaves up to date (lock held): heap_unlock does
 * it, so whoever takes the lock next finds the statistics whole. */
void heap_settle(struct heap *h);
/* The heap's lock; with thread fronts on the device, their peaks are folded in first (what
 * they carved since the last fold, at the heap's levels of then). */
static inline void heap_lock(struct heap *h)
{
    lock_take(&h->lock);
    if (atomic_load_explicit(&h->fronts, memory_order_relaxed))
        heap_settle(h);
}
static inline void heap_unlock(struct heap *h)
{
    heap_settle(h);
    lock_give(&h->lock);
}
/* A free block of pool k of at least `rounded` bytes a request may use now without a driver
 * call (heap.c's cache look-up). */
struct block *heap_find_cached(struct heap *h, enum heap_pool_kind k, size_t rounded,
                               CUstream stream, enum heap_mode mode, bool *backed);
/* Bytes allocated on h's device: the heap's live blocks and what threads carved. Lock held. */
uint64_t heap_allocated(const struct heap *h);
/* Makes segment s part of the heap as one free block; false if out of host memory. Counts
 * no device allocation: s may be one the driver refused to free. */
bool heap_add_segment(struct heap *h, struct segment *s);
/* heap_is_valid() (aborting on a violation) when FRAGLESS_CHECK is set. */
void heap_check_if_enabled(void);

/* ---- release.c: giving memory back (empty-cache, OOM, thresholds) ---- */
/* Returns segments without a live block to the driver: all (want == SIZE_MAX) or the fewest,
 * smallest idle ones covering `want` bytes. Lock not held. Returns the bytes released. */
size_t release_free_segments(struct heap *h, size_t want);
/* garbage_collection_threshold, before the heap grows by seg_size. Lock not held. */
void release_before_growing(struct heap *h, size_t seg_size);
/* release_threshold_mb, after a miss or a free. Lock not held. */
void release_to_threshold(struct heap *h);
/* A release by policy counts as an (automatic) empty-cache when it released anything. Lock
 * held. */
void release_count_automatic(struct heap *h, size_t released);

/* ---- expand.c: expandable segments — backing blocks with pages, moving and releasing ---- */
/* A new expandable segment of `pool`: a range at least as large as the device and `min`. */
CUresult expand_segment_create(struct heap *h, enum heap_pool_kind pool, size_t min,
                               struct segment **out);
/* Makes live block b wholly mapped: pages of ready free blocks move first (page_moving,
 * free_mapped_keep_mb), then new ones are created. On failure the mapping is as before except
 * for pages moved (which stay where they went). Lock held. */
CUresult expand_back(struct heap *h, struct block *b);
/* Bytes of new pages that serving `rounded` bytes from free block b would need. */
size_t expand_pages_needed(const struct block *b, size_t rounded);
/* Unmaps and releases up to `want` bytes (SIZE_MAX: all, and the device's spare pages) of
 * pages lying wholly inside ready free blocks. Lock held; the caller settles the derived
 * levels (heap_settle) once its operation is consistent. Returns the bytes released; the
 * first driver error, if any, goes to *err (may be NULL) and those pages stay cached. */
size_t expand_release(struct heap *h, size_t want, CUresult *err);
/* Expandable segment s: its range is valid, and every block not ready is wholly mapped. */
bool expand_segment_is_valid(const struct heap *h, const struct segment *s);

/* ---- block.c: blocks of a heap — split, merge, states, accounting ---- */
struct block *block_new(struct heap *h);
/* Record f (overwritten) becomes the first `size` bytes of b, a free block with no share in
 * the statistics: address, neighbour links and the segment's count; b keeps the rest. */
void block_cut_head(struct block *b, struct block *f, size_t size);
void block_recycle(struct heap *h, struct block *b);
/* block_account, b's share of the statistics, is inline below the statistics helpers. */

/* Serves a rounded request from free block b: splits the first `rounded` bytes off b when the
 * rest is worth keeping (the rest stays free in b's index), else takes b out of its index.
 * Returns the block now live (b, or the new one at b's old address). */
struct block *block_take(struct heap *h, struct block *b, size_t rounded, size_t requested);
/* Puts detached b free into `fi`, merging with neighbours free there. */
void block_release_to(struct heap *h, struct block *b, struct freeindex *fi);
/* Puts detached b on the pending list (freed by a device-wide free). */
void block_pend(struct heap *h, struct block *b);
/* Live → detached (the caller then releases or pends it). */
void block_unlive(struct heap *h, struct block *b);
/* Takes b (free or pending) out of whatever index or list holds it: detached. */
void block_detach(struct heap *h, struct block *b);

/* ---- reuse.c: stream-ordered safety — stream pools, events, batched device sync ---- */
/* The pool of frees on `stream` (CU_STREAM_PER_THREAD: the calling thread's own). */
struct stream_pool *reuse_stream_pool(struct heap *h, CUstream stream, bool create);
/* Non-blocking: records/queries each stream pool's event; blocks whose event completed move
 * to the global index. Driver calls only when stream pools hold blocks. */
void reuse_collect(struct heap *h);
/* Whether a device sync is worth it for a request of `rounded` bytes: the heap's pending
 * frees hold that much, and with those waiting in threads' regions reach the batch. */
bool reuse_sync_pays(const struct heap *h, size_t rounded);
/* Whether it is for a thread's regions (front.c) on one device holding `pending` bytes of
 * frees that wait for a device sync (a batch of their own: the heap's pending list and each
 * thread's regions each hold at most about one batch). */
bool reuse_sync_pays_region(size_t pending);
/* One device synchronization (heap lock dropped around it); then every block freed before it
 * began is reusable everywhere. Called and returns with h->lock held. */
CUresult reuse_device_sync(struct heap *h);
bool reuse_has_pending(const struct heap *h);
/* Drops stream pools that hold no block; their events go to *events (up to max), count
 * returned. */
int reuse_drop_idle(struct heap *h, CUevent *events, int max);
/* The pool keyed `key` (every pool when NULL) can no longer be trusted: its stream was
 * destroyed (a new stream may get its handle while the old one's work runs), its thread
 * exited or its context is reset. Its blocks wait for a device sync; the pool goes, and its
 * event with it unless context_gone (the driver destroyed the event with its context). */
void reuse_retire(struct heap *h, CUstream key, const char *why, bool context_gone);

/* ---- region.c: the heap's side of thread regions ---- */
/* Keeps at least `want` block records on *stash (*n of them); false without host memory. */
bool region_stash(struct heap *h, struct block **stash, uint32_t *n, uint32_t want);
void region_unstash(struct heap *h, struct block **stash, uint32_t *n);
/* A region for a request of `rounded` bytes on `stream` (REGION_DEVICE_WIDE: a device-wide
 * one): a cached free block wholly mapped, cut to at most `want` bytes where possible, now held
 * by `owner`. NULL if the cache has none (no driver call is made). */
struct block *region_take(struct heap *h, size_t rounded, size_t want, CUstream stream,
                          struct front *owner);
/* The stream key of regions serving device-wide requests (cudaMalloc, cuMemAlloc): no stream's
 * handle. Their memory comes from the global index and goes back there. */
#define REGION_DEVICE_WIDE ((CUstream)(uintptr_t)UINTPTR_MAX)
/* Where a region's pieces go when it is given back. */
struct region_home {
    CUstream stream;
    bool own_thread;    /* the region's thread gives it back (its per-thread stream's pool) */
    bool in_fork_child; /* no new stream pool (no allocation): pending instead */
};
enum piece_kind { PIECE_LIVE, PIECE_PENDING, PIECE_SPARE };
/* Begins giving held block b back: b is detached, its share out of the statistics. */
void region_open(struct heap *h, struct block *b);
/* Cuts the first `size` bytes off *rest (all of it: *rest becomes NULL) into a record of
 * *stash and puts them where `kind` says: live (with `requested`), pending a device sync, or
 * spare (the home's stream pool, the global index for REGION_DEVICE_WIDE; pending when a pool
 * cannot be had). Cannot fail. */
void region_piece(struct heap *h, struct block **rest, size_t size, size_t requested,
                  enum piece_kind kind, const struct region_home *home, struct block **stash);

/* ---- front.c: thread fronts — each thread's regions, carved without the heap's lock ---- */
enum front_result {
    FRONT_NONE, /* not in the regions looked at */
    FRONT_DONE,
    FRONT_BAD /* inside a region but not a live block's start (a double free?) */
};
struct front_sum {
    int64_t allocated, requested, blocks, allocs, frees, host;
};
/* Serves the request from the calling thread's region for it (device-wide requests from its
 * REGION_DEVICE_WIDE ones); false: the heap serves it (thread_cache off, too large, no region
 * to be had). Heap lock not held. */
bool front_alloc(struct heap *h, size_t rounded, size_t size, CUstream stream, enum heap_mode mode,
                 CUdeviceptr *out);
/* Only what front_alloc does without the heap: a carve from the calling thread's region for
 * the request, if it has one with room (no driver call, no heap lock). */
bool front_carve(struct heap *h, size_t rounded, size_t size, CUstream stream, CUdeviceptr *out);
/* Frees ptr if it lies in one of the calling thread's regions. */
enum front_result front_free_own(CUdeviceptr ptr, CUstream stream, enum heap_mode mode);
/* The same in front f's regions (a held block of f holds ptr); FRONT_NONE once f gave that
 * region back (look again). Heap lock not held. */
enum front_result front_free_in(struct front *f, CUdeviceptr ptr, CUstream stream,
                                enum heap_mode mode);
/* The live carved block of f containing ptr: its base and requested size. */
enum front_result front_lookup_in(struct front *f, CUdeviceptr ptr, CUdeviceptr *base,
                                  size_t *size);
/* Every thread's regions on `device` (-1: all) — only those of `stream` unless any_stream —
 * go back to their heaps. Call with no heap or front lock held. */
void front_reclaim(int device, bool any_stream, CUstream stream);
/* Bytes of frees waiting for a device sync in every thread's regions on h's device. */
size_t front_pending(const struct heap *h);
/* What fronts carved on h's device now (h's lock held, or a snapshot's worth). */
void front_sum(const struct heap *h, struct front_sum *s);
/* h's lock held: per front, the highest carved levels and the lowest allocated since the last
 * fold, summed (and reset for the next). */
void front_fold(const struct heap *h, struct front_sum *hi, int64_t *lo_allocated);
/* The walker: every region of h consistent with its held block and the fronts' statistics
 * (every front lock and h's lock held: front_lock_all). */
bool front_check(const struct heap *h);
void front_lock_all(void);
void front_unlock_all(void);
void front_atfork_prepare(void);
void front_atfork_parent(void);
/* After the heaps' locks are reset in the child. */
void front_atfork_child(void);

/* ---- heapcheck.c: the invariant walker behind heap_is_valid() ---- */
/* Checks every invariant of h (lock held); logs the first violation and returns false. */
bool heap_check(struct heap *h);

/* ---- stats.c: level statistics and snapshots ---- */
/* Level updates are on every allocation's path: inline. */
static inline void stat_set(fragless_stat_t *s, uint64_t value)
{
    s->current = value;
    if (value > s->peak)
        s->peak = value;
}
static inline void stat_add(fragless_stat_t *s, int64_t delta)
{
    stat_set(s, s->current + (uint64_t)delta);
}
/* Moves a level without its peak: for the levels whose peaks heap_settle() brings up to date
 * at the end of every operation (block.c's shares). */
static inline void level_add(fragless_stat_t *s, int64_t delta)
{
    s->current += (uint64_t)delta;
}
/* Raises a level's peak to its current value. */
static inline void level_peak(fragless_stat_t *s)
{
    if (s->current > s->peak)
        s->peak = s->current;
}
/* Raises a level's peak to `value` (a level counted partly elsewhere: thread fronts). */
static inline void raise_peak(fragless_stat_t *s, uint64_t value)
{
    if (value > s->peak)
        s->peak = value;
}

/* block.c's shares, inline (the allocation path calls them several times per request). */
/* Whether fi is one of the heap's global indexes (free and safe for every stream). */
static inline bool block_index_is_global(const struct heap *h, const struct freeindex *fi)
{
    return fi == &h->global[POOL_SMALL] || fi == &h->global[POOL_LARGE];
}

/* Freed but not yet reusable on every stream: pending a sync, or in a stream pool. */
static inline bool block_is_inactive_active(const struct heap *h, const struct block *b)
{
    return b->state == BLOCK_SYNC_PENDING ||
           (b->state == BLOCK_FREE && b->index && !block_index_is_global(h, b->index));
}

/* Adds (sign +1) or removes (-1) b's share of the heap's statistics (their peaks wait for
 * heap_settle). */
static inline void block_account(struct heap *h, const struct block *b, int sign)
{
    int64_t size = sign * (int64_t)b->size;
    level_add(&h->st.blocks, sign);
    if (b->state == BLOCK_LIVE) {
        level_add(&h->st.allocated_bytes, size);
        level_add(&h->st.requested_bytes, sign * (int64_t)b->requested);
        level_add(&h->st.active_bytes, size);
        return;
    }
    if (b->state == BLOCK_HELD) { /* no other thread or stream may use it */
        level_add(&h->st.active_bytes, size);
        return;
    }
    if (block_is_inactive_active(h, b))
        level_add(&h->st.active_bytes, size);
    else if (b->prev || b->next) /* inactive and part of a split segment */
        level_add(&h->st.inactive_split_bytes, size);
}
void stats_reset_peaks(fragless_stats_t *s);
/* Copies src into out, at most out->size bytes; fills size/version/device. */
int stats_copy_out(const fragless_stats_t *src, int device, fragless_stats_t *out);

/* ---- vmm.c: expandable segments' page layer (reserve/create/map/set access) ------------- */

/* A reserved virtual range on one device, backed page by page (page = config page_size, a
 * multiple of the allocation granularity). Not thread-safe: the heap serializes access. */
struct vrange;

CUresult vrange_reserve(int device, size_t va_size, size_t page_size, struct vrange **out);
/* Unmaps and releases every page, then frees the address range. */
void vrange_destroy(struct vrange *r);
/* The same, but on a failure (of an unmap or of freeing the address range) returns it and
 * keeps the range, valid, with what could not be given back. */
CUresult vrange_release(struct vrange *r);
CUdeviceptr vrange_base(const struct vrange *r);
size_t vrange_size(const struct vrange *r);
size_t vrange_page_size(const struct vrange *r);
/* Makes every page touching [off, off+len) mapped and accessible: takes spare pages of the
 * device first, creates the rest, maps them, sets access once per newly mapped contiguous run.
 * On failure everything this call did is undone and the range is as before. */
CUresult vrange_map(struct vrange *r, size_t off, size_t len);
/* Unmaps every page lying wholly inside [off, off+len); keep = true puts their physical
 * memory on the device's spare list instead of releasing it. */
CUresult vrange_unmap(struct vrange *r, size_t off, size_t len, bool keep);
/* Moves the physical pages lying wholly inside src[src_off, +len) to dst[dst_off, +len) (both
 * page-aligned, dst unmapped there): unmap, map elsewhere, set access; no create/release. */
CUresult vrange_move(struct vrange *src, size_t src_off, struct vrange *dst, size_t dst_off,
                     size_t len);
size_t vrange_mapped_bytes(const struct vrange *r);
/* Bytes of pages mapped with access set (usable); less than mapped while a page whose access
 * could not be set waits for the next vrange_map over it. */
size_t vrange_ready_bytes(const struct vrange *r);
/* Bytes of [off, off+len) (rounded out to pages) already mapped with access set (ready). */
size_t vrange_ready_in(const struct vrange *r, size_t off, size_t len);
/* The first run of whole pages inside [off, end) that are all ready (mapped) or all empty
 * (!mapped): returns its offset and sets *len to its bytes; returns end (*len 0) if none. */
size_t vrange_next_run(const struct vrange *r, size_t off, size_t end, bool mapped, size_t *len);
bool vrange_is_valid(const struct vrange *r);
/* Host memory the range's bookkeeping takes (for the stats' host_metadata_bytes). */
size_t vrange_host_bytes(const struct vrange *r);
/* The device's spare physical pages (unmapped, kept for reuse): bytes held, and release. */
size_t vmm_spare_bytes(int device);
CUresult vmm_release_spare(int device, size_t *released);
/* Pages created, released and moved so far on `device`. */
void vmm_page_counters(int device, uint64_t *created, uint64_t *released, uint64_t *moved);
/* Bytes of address space held by `device`'s live ranges, and of those bytes the ones mapped. */
void vmm_va_bytes(int device, size_t *reserved, size_t *mapped);
/* Called by the owner of the process's fork handlers (after it took its own locks, since
 * vmm's locks nest inside the heap's): take and give back the per-device locks. */
void vmm_atfork_prepare(void);
void vmm_atfork_parent(void);
void vmm_atfork_child(void);
/* Device `peer` may now access `owner`'s memory (a context of peer enabled peer access to
 * owner): records the pair (drv_peer_set) so that every later mapping of owner grants peer
 * read/write too, and grants it on every run of pages owner's ranges have mapped now. On a
 * failure the grants made are taken back, the pair is forgotten and the error returned. */
CUresult vmm_peer_enable(int owner, int peer);
/* Forgets the pair: later mappings of owner no longer grant peer; grants made stay. */
void vmm_peer_disable(int owner, int peer);

/* vmm_spare.c, for vmm.c only: the per-device spare list, page creation/release, counters. */
struct vmm_spare {
    struct vmm_spare *next;
    CUmemGenericAllocationHandle handle;
    size_t size;
};
/* Locks the list of `device`'s live ranges (and so every change to their mappings) and
 * returns its head; vmm.c links the ranges through it. */
struct vrange **vmm_ranges_lock(int device);
void vmm_ranges_unlock(int device);
/* Moves up to `max` spare pages of `page_size` bytes onto *chain; returns how many. */
size_t vmm_spare_take(int device, size_t page_size, size_t max, struct vmm_spare **chain);
void vmm_spare_put(int device, struct vmm_spare *node);
void vmm_spare_free_chain(struct vmm_spare *chain);
CUresult vmm_page_create(int device, size_t size, CUmemGenericAllocationHandle *handle);
/* Hands an unmapped page back: spare list if keep, else released (kept as spare if the
 * release fails, so nothing is lost). */
void vmm_page_dispose(int device, CUmemGenericAllocationHandle handle, size_t size, bool keep);
void vmm_account(int device, int64_t reserved_delta, int64_t mapped_delta, uint64_t moved);
void vmm_sort_handles(CUmemGenericAllocationHandle *handles, size_t n);
/* The spare list agrees with its counters, holds no page twice, none of `mapped` (sorted). */
bool vmm_spare_is_valid(int device, const CUmemGenericAllocationHandle *mapped, size_t n_mapped);

/* ---- trace.c: allocation event recording (RMM CSV) -------------------------------------- */

enum trace_action {
    TRACE_ALLOCATE,         /* "allocate" (RMM) */
    TRACE_FREE,             /* "free" (RMM); size = the allocation's requested size */
    TRACE_ALLOCATE_FAILURE, /* "allocate failure" (RMM); pointer 0 */
    TRACE_EMPTY_CACHE,      /* "empty cache" (extension); size = bytes released */
};

/* Whether events are being recorded (config `trace` set; read once). Callers use it to skip
 * work only recording needs, e.g. looking up a freed block's size. */
bool trace_enabled(void);
/* Records one event of `device` (no-op when not recording). Thread-safe, no CUDA calls.
 * Record a free before the block can be reused, an allocation after it succeeded. */
void trace_record(int device, enum trace_action a, CUdeviceptr ptr, size_t size, CUstream stream);
/* Starts recording to `path` (what config_get() does at first use; for tests and tools).
 * Returns 0, or -1 if already recording or the path is empty or too long. */
int trace_start(const char *path, bool extensions);
/* Writes every buffered event out (files stay open). */
void trace_flush(void);
/* trace_flush(), after which each event is written at once (run at exit). */
void trace_stop(void);
/* `device`'s file name for `path`: "%p" -> pid, ".devN" before the extension. */
int trace_device_path(const char *path, int device, char *out, size_t len);

/* ---- shm.c and report.c: the stats page for fragstat, OOM and exit reports ------------- */

/* shm.c: the process's stats page (include/fragless_shm.h) and the thread that keeps it. */

/* True once shm_start() ran in this process (false again in a forked child). */
extern bool shm_started;
/* Starts, once per process (and again, lazily, in a forked child), what a process using CUDA
 * publishes: the stats page and its thread (config stats_page) and the exit report (config
 * report). Call after drv_init() succeeded; no-op after the first call. */
void shm_start(void);
/* The allocation path's call: one predictable load once started. */
static inline void shm_ensure(void)
{
    if (FL_UNLIKELY(!__atomic_load_n(&shm_started, __ATOMIC_ACQUIRE)))
        shm_start();
}
/* Writes where `device` is into *d: device, PCI location (-1 each when the driver does not
 * say) and total_bytes (0 when unknown); the rest of *d stays as it is. */
struct fragless_shm_device;
void shm_device_identity(int device, struct fragless_shm_device *d);
/* Path of this process's page ("" when there is none). */
const char *shm_page_path(void);
/* Fills *out as a page would be (identity, every device in use, statistics now; no segment
 * maps), straight from the heap: what the exit report prints. */
struct fragless_shm_page;
void shm_snapshot(struct fragless_shm_page *out);

/* report.c: reports that explain. */

/* Called where an allocation of `size` bytes on `device` finally failed: prints (at most once
 * per REPORT_OOM_INTERVAL_S seconds) why — this process's numbers, the other processes on the
 * GPU (from their pages), and one line of advice. */
#define REPORT_OOM_INTERVAL_S 10
void report_oom(int device, size_t size);
/* Writes the exit report named by config `report` ("stderr" or a path, %p → pid); nothing
 * when it is "". Called once at normal exit. */
void report_exit(void);

#endif /* FRAGLESS_INTERNAL_H */
