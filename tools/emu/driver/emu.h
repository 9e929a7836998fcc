/*
 * emu.h — private interfaces of the emulated CUDA driver (build/emu/libcuda.so.1): the
 * process-wide state behind one lock, the objects it tracks (contexts, streams, events,
 * allocations, VMM reservations/handles/mappings, queued fills), and the prototypes each
 * file offers to the others. Nothing here is exported; see include/fragless_emu.h and cuda.h
 * for what is.
 */
#ifndef FRAGLESS_EMU_DRIVER_H
#define FRAGLESS_EMU_DRIVER_H

#include <cuda.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uthash.h>

#include "fragless_emu.h"

/* Exported entry points (the library is built with -fvisibility=hidden). */
#define EMU_API __attribute__((visibility("default")))

#define EMU_MAX_DEVICES    16
#define EMU_GRANULARITY    ((size_t)2 << 20)
#define EMU_ALLOC_ALIGN    ((size_t)512)
#define EMU_DRIVER_VERSION 13000
#define EMU_MAX_CTX_STACK  32

/* ---- objects ----------------------------------------------------------------------- */

struct emu_stream {
    uint32_t magic;
    struct emu_ctx *ctx;
    unsigned flags; /* CU_STREAM_DEFAULT / CU_STREAM_NON_BLOCKING */
    int priority;
    bool implicit; /* legacy or per-thread default stream: never audited/destroyed */
    bool per_thread;
    uint64_t busy_until; /* simulated time (ns, CLOCK_MONOTONIC) its queued work ends */
    int capture_status;  /* CUstreamCaptureStatus */
    uint64_t capture_id;
    void *key;         /* its own address: the handle */
    UT_hash_handle hh; /* emu.streams, keyed by key */
};

struct emu_ctx {
    uint32_t magic;
    int device;
    unsigned refs;   /* primary context retain count */
    unsigned flags;  /* cuDevicePrimaryCtxSetFlags */
    CUresult sticky; /* CUDA_SUCCESS, or the sticky error after a device fault */
    struct emu_stream legacy;
};

struct emu_event {
    uint32_t magic;
    struct emu_ctx *ctx;
    unsigned flags;
    bool recorded;
    uint64_t at; /* simulated completion time of the recorded work */
    void *key;
    UT_hash_handle hh; /* emu.events, keyed by key */
};

enum emu_alloc_kind { EMU_ALLOC_PLAIN, EMU_ALLOC_ASYNC };
enum emu_async_state { EMU_ASYNC_LIVE, EMU_ASYNC_FREEING, EMU_ASYNC_POOLED };

/* A cuMemAlloc allocation or a stream-ordered pool block: an anonymous mapping. */
struct emu_alloc {
    CUdeviceptr base;
    size_t size;    /* as requested */
    size_t charged; /* bytes charged against capacity */
    void *map;      /* the mmap (may start before base for alignment) */
    size_t map_len;
    int device;
    struct emu_ctx *ctx;
    enum emu_alloc_kind kind;
    enum emu_async_state state;
    struct emu_stream *free_stream; /* ASYNC FREEING: stream that freed it */
    uint64_t free_at;               /* ASYNC FREEING: simulated time the free takes effect */
    UT_hash_handle hh;              /* emu.allocs, keyed by base */
};

/* A physical allocation from cuMemCreate: `size` bytes at `off` in its device's arena. */
struct emu_handle {
    CUmemGenericAllocationHandle id;
    uint64_t off;
    size_t size;
    int device;
    unsigned refs; /* cuMemCreate + cuMemRetainAllocationHandle − cuMemRelease */
    unsigned mappings;
    UT_hash_handle hh; /* emu.handles, keyed by id */
};

struct emu_mapping {
    CUdeviceptr va;
    size_t size;
    struct emu_handle *handle;
    struct emu_reservation *res;
    unsigned long long access;                       /* CUmemAccess_flags for its device */
    unsigned long long peer_access[EMU_MAX_DEVICES]; /* for the other devices (0: none) */
};

struct emu_reservation {
    CUdeviceptr base;
    size_t size;
    struct emu_mapping **maps; /* its mappings, sorted by va (binary search) */
    size_t nmaps, cap;
    UT_hash_handle hh; /* emu.reservations, keyed by base */
};

/* A simulated fill kernel: writes `byte` over [ptr, ptr+n) at simulated time `at`. */
struct emu_fill {
    struct emu_ctx *ctx;
    CUdeviceptr ptr;
    size_t n;
    int byte;
    uint64_t at;
    struct emu_fill *next;
};

struct emu_graph {
    uint32_t magic;
    void *key;
    UT_hash_handle hh; /* emu.graphs, keyed by key */
};

/* ---- process-wide state ------------------------------------------------------------- */

struct emu_config {
    size_t capacity; /* bytes per device (FRAGLESS_EMU_MEM) */
    int devices;     /* FRAGLESS_EMU_DEVICES */
    char name[64];   /* FRAGLESS_EMU_NAME */
    bool vmm;        /* FRAGLESS_EMU_VMM */
    bool latency;    /* FRAGLESS_EMU_LATENCY */
    int audit;       /* 0 off, 1 print, 2 strict (FRAGLESS_EMU_AUDIT) */
};

struct emu_state {
    pthread_mutex_t lock;
    struct emu_config cfg;
    atomic_bool initialized; /* cuInit succeeded (read without the lock by the fast path) */
    atomic_bool forked;      /* this process was forked after cuInit (set at fork) */
    struct emu_ctx ctx[EMU_MAX_DEVICES];
    struct emu_stream *streams;
    struct emu_event *events;
    struct emu_alloc *allocs;
    struct emu_handle *handles;
    struct emu_reservation *reservations;
    struct emu_graph *graphs;
    struct emu_fill *fills;
    CUmemGenericAllocationHandle next_handle;
    uint64_t next_capture_id;
    uint64_t faults; /* simulated device faults */
    /* Earliest simulated time at which emu_device_advance has something to do (a queued fill
     * or a pending stream-ordered free), UINT64_MAX when nothing is pending; never later than
     * the truth. Written under the lock, read without it. */
    _Atomic uint64_t due;
};

extern struct emu_state emu;

#define EMU_MAGIC_CTX    0x43545831u
#define EMU_MAGIC_STREAM 0x5354524du
#define EMU_MAGIC_EVENT  0x4556454eu
#define EMU_MAGIC_GRAPH  0x47524150u

/* ---- state.c: lock, configuration, the gate every entry point passes ----------------- */

void emu_lock(void);
void emu_unlock(void);
/* Counts the call, applies fault injection, refuses calls in a forked child, and applies
 * fills that are due. Returns CUDA_SUCCESS to go on. Takes and drops the lock. */
CUresult emu_enter(const char *name);
#define EMU_ENTER(name)                        \
    do {                                       \
        CUresult enter_rc_ = emu_enter(#name); \
        if (enter_rc_ != CUDA_SUCCESS)         \
            return enter_rc_;                  \
    } while (0)
/* Configuration from the environment, read once. */
const struct emu_config *emu_config(void);
uint64_t emu_now(void);
/* Sleeps (without the lock) until simulated time `t`. */
void emu_sleep_until(uint64_t t);
/* Under the lock: CUDA_ERROR_NOT_INITIALIZED before cuInit, else CUDA_SUCCESS. */
CUresult emu_check_init(void);
/* Under the lock: the calling thread's current context, or the error a call needing one
 * returns (not initialized, no context, sticky fault). */
CUresult emu_current(struct emu_ctx **out);
CUresult emu_check_device(CUdevice dev);
/* Whether the current process is a child forked after cuInit (a flag set at fork: no
 * getpid per call). */
bool emu_in_forked_child(void);

/* ---- fastpath.c: the light gate of the entry points that are cheap on a real driver ------ */

/* The entry points that pass the light gate instead of emu_enter: thread-local context
 * queries, device queries, and queries of one stream, event or pointer. */
#define EMU_FAST_ENTRIES(X)           \
    X(cuDriverGetVersion)             \
    X(cuDeviceGet)                    \
    X(cuDeviceGetCount)               \
    X(cuDeviceGetAttribute)           \
    X(cuCtxGetCurrent)                \
    X(cuCtxSetCurrent)                \
    X(cuCtxPushCurrent_v2)            \
    X(cuCtxPopCurrent_v2)             \
    X(cuCtxGetDevice)                 \
    X(cuStreamIsCapturing)            \
    X(cuStreamIsCapturing_ptsz)       \
    X(cuStreamGetCaptureInfo)         \
    X(cuStreamGetCaptureInfo_ptsz)    \
    X(cuStreamGetCaptureInfo_v2)      \
    X(cuStreamGetCaptureInfo_v2_ptsz) \
    X(cuStreamGetCaptureInfo_v3)      \
    X(cuStreamGetCaptureInfo_v3_ptsz) \
    X(cuStreamGetCtx)                 \
    X(cuStreamGetCtx_ptsz)            \
    X(cuStreamGetPriority)            \
    X(cuStreamGetPriority_ptsz)       \
    X(cuStreamGetFlags)               \
    X(cuStreamGetFlags_ptsz)          \
    X(cuStreamQuery)                  \
    X(cuStreamQuery_ptsz)             \
    X(cuEventQuery)                   \
    X(cuPointerGetAttribute)

#define EMU_FAST_ID(name) EMU_FAST_##name,
enum emu_fast_id { EMU_FAST_ENTRIES(EMU_FAST_ID) EMU_FAST_COUNT };
#undef EMU_FAST_ID

/* Counts the call (atomically), applies fault injection when a rule names this entry point
 * (only then taking the lock), and applies fills and frees that are due, if any (only then
 * reading the clock and taking the lock). No getpid, no clock, no lock otherwise. The body
 * then checks initialization and fork with emu_check_init as every entry point does. */
CUresult emu_fast_enter(enum emu_fast_id id);
#define EMU_FAST_ENTER(name)                                  \
    do {                                                      \
        CUresult enter_rc_ = emu_fast_enter(EMU_FAST_##name); \
        if (enter_rc_ != CUDA_SUCCESS)                        \
            return enter_rc_;                                 \
    } while (0)
/* Calls so far of `name` if it is a fast entry point (*found set), or of all of them ("*"). */
uint64_t emu_fast_calls(const char *name, bool *found);
/* Under the lock, after fault rules changed: which fast entry points a rule names. */
void emu_fast_rearm(void);

/* ---- faults.c: fault injection and call counters -------------------------------------- */

/* Under the lock: counts one call of `name`; returns the injected error or CUDA_SUCCESS. */
CUresult emu_faults_on_call(const char *name);
/* Under the lock: the injected error for one call of `name` (counted elsewhere). */
CUresult emu_faults_check(const char *name);
/* Under the lock: whether an armed rule names `name`. */
bool emu_faults_armed(const char *name);
int emu_faults_arm(const char *spec);

/* ---- errors.c ------------------------------------------------------------------------- */

bool emu_error_parse(const char *s, CUresult *out);

/* ---- device.c ------------------------------------------------------------------------- */

void emu_ctx_clear_tls(void);

/* ---- capacity.c: capacity accounting shared across processes -------------------------- */

CUresult emu_cap_charge(int device, size_t bytes);
void emu_cap_uncharge(int device, size_t bytes);
size_t emu_cap_used(int device);
/* In a forked child: drops the parent's view (its file lock is shared with the parent). */
void emu_cap_forget(void);

/* ---- memory.c: cuMemAlloc memory, pointer lookup --------------------------------------- */

CUresult emu_alloc_map(size_t size, struct emu_alloc **out, int device);
void emu_alloc_unmap(struct emu_alloc *a);
/* Whether [p, p+n) is device memory a kernel of `device` may touch at simulated time `at`
 * (device -1: the memory's own device; another device needs read/write access set for it on
 * VMM mappings, as cuMemSetAccess grants it). */
bool emu_range_accessible(CUdeviceptr p, size_t n, uint64_t at, int device);
/* Whether [p, p+n) lies in device memory the emulator knows (accessible or not). */
bool emu_range_known(CUdeviceptr p, size_t n);

/* ---- arena.c: the devices' physical memory (one sparse memfd each) ------------------- */

CUresult emu_arena_take(int device, size_t size, uint64_t *off);
void emu_arena_give(int device, size_t size, uint64_t off);
int emu_arena_fd(int device);
void emu_arena_forget(void);

/* ---- vmm.c ----------------------------------------------------------------------------- */

struct emu_reservation *emu_reservation_containing(CUdeviceptr p, size_t n);
struct emu_mapping *emu_mapping_containing(CUdeviceptr p);
bool emu_vmm_range_accessible(CUdeviceptr p, size_t n, int device);

/* ---- stream.c: the simulated time model ------------------------------------------------ */

/* Resolves a stream handle (NULL / CU_STREAM_LEGACY / CU_STREAM_PER_THREAD / a created
 * stream) for `ctx`; `ptds` says a NULL handle means the per-thread stream (_ptsz/_ptds). */
CUresult emu_stream_resolve(struct emu_ctx *ctx, CUstream h, bool ptds, struct emu_stream **out);
/* Simulated time after which new work on `s` may run: its own queued work and, through the
 * legacy default stream's implicit ordering, other streams' work. Moves `s` there. */
uint64_t emu_stream_order(struct emu_stream *s);
/* The current context and, in it, the stream handle h resolves to (as emu_stream_resolve). */
CUresult emu_current_stream(CUstream h, bool ptds, struct emu_ctx **ctx, struct emu_stream **s);
/* Queues usec of work on `s`; returns the simulated time it completes. */
uint64_t emu_stream_enqueue(struct emu_stream *s, uint64_t usec);
/* Latest completion time of all work on the context's streams. */
uint64_t emu_ctx_point(struct emu_ctx *ctx);
/* Makes the device state what it is now: fills due run, then frees due take effect, in
 * that order and for one instant, so no fill meets a block freed after it. Under the lock. */
void emu_device_advance(void);
/* Under the lock: work queued for simulated time `at` (a fill, a stream-ordered free). */
void emu_device_note_due(uint64_t at);
/* Without the lock: whether anything queued is due by now (one atomic read when nothing is
 * queued; the clock only when something is). */
bool emu_device_due(void);
/* Sleeps until `t` without the lock, then advances the device; called with the lock held. */
void emu_wait_locked(uint64_t t);
void emu_streams_teardown(struct emu_ctx *ctx);

/* ---- event.c --------------------------------------------------------------------------- */

/* Under the lock: the live event `h` (CUDA_ERROR_INVALID_HANDLE if there is none). */
CUresult emu_event_find(CUevent h, struct emu_event **out);
void emu_events_teardown(struct emu_ctx *ctx);

/* ---- fill.c ------------------------------------------------------------------------------ */

/* Applies every queued fill due by `now` (under the lock); returns the time of the next one
 * still queued (UINT64_MAX if none). */
uint64_t emu_fills_apply(uint64_t now);
void emu_fills_drop(struct emu_ctx *ctx);
void emu_device_fault(struct emu_ctx *ctx);

/* ---- pool.c: stream-ordered allocation ---------------------------------------------- */

/* Frees whose time has come (by `now`) take effect; returns the earliest time of a free still
 * pending (UINT64_MAX if none). */
uint64_t emu_pool_advance(uint64_t now);
void emu_pool_trim(int device);
void emu_pool_teardown(struct emu_ctx *ctx);

/* ---- latency.c ------------------------------------------------------------------------ */

/* Spends the modelled time of one call of `name` moving `bytes` (0 when size-free). */
void emu_latency(const char *name, size_t bytes);

/* ---- per-thread-stream variants (declared by cuda.h only under
 * CUDA_API_PER_THREAD_DEFAULT_STREAM, which this library does not define) ----------- */
CUresult cuStreamSynchronize_ptsz(CUstream hStream);
CUresult cuStreamQuery_ptsz(CUstream hStream);
CUresult cuStreamWaitEvent_ptsz(CUstream hStream, CUevent hEvent, unsigned int Flags);
CUresult cuStreamGetCtx_ptsz(CUstream hStream, CUcontext *pctx);
CUresult cuStreamGetPriority_ptsz(CUstream hStream, int *priority);
CUresult cuStreamGetFlags_ptsz(CUstream hStream, unsigned int *flags);
CUresult cuStreamIsCapturing_ptsz(CUstream hStream, CUstreamCaptureStatus *captureStatus);
CUresult cuStreamBeginCapture_v2_ptsz(CUstream hStream, CUstreamCaptureMode mode);
CUresult cuStreamEndCapture_ptsz(CUstream hStream, CUgraph *phGraph);
CUresult cuStreamGetCaptureInfo_v2(CUstream hStream, CUstreamCaptureStatus *status, cuuint64_t *id,
                                   CUgraph *graph, const CUgraphNode **deps, size_t *ndeps);
CUresult cuStreamGetCaptureInfo_v2_ptsz(CUstream hStream, CUstreamCaptureStatus *status,
                                        cuuint64_t *id, CUgraph *graph, const CUgraphNode **deps,
                                        size_t *ndeps);
CUresult cuStreamGetCaptureInfo_v3_ptsz(CUstream hStream, CUstreamCaptureStatus *status,
                                        cuuint64_t *id, CUgraph *graph, const CUgraphNode **deps,
                                        const CUgraphEdgeData **edges, size_t *ndeps);
CUresult cuEventRecord_ptsz(CUevent hEvent, CUstream hStream);
CUresult cuEventRecordWithFlags_ptsz(CUevent hEvent, CUstream hStream, unsigned int flags);
CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t bytesize, CUstream hStream);
CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream hStream);
CUresult cuMemcpy_ptds(CUdeviceptr dst, CUdeviceptr src, size_t n);
CUresult cuMemcpyAsync_ptsz(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream hStream);
CUresult cuMemcpyHtoD_v2_ptds(CUdeviceptr dst, const void *src, size_t n);
CUresult cuMemcpyDtoH_v2_ptds(void *dst, CUdeviceptr src, size_t n);
CUresult cuMemcpyDtoD_v2_ptds(CUdeviceptr dst, CUdeviceptr src, size_t n);
CUresult cuMemcpyHtoDAsync_v2_ptsz(CUdeviceptr dst, const void *src, size_t n, CUstream s);
CUresult cuMemcpyDtoHAsync_v2_ptsz(void *dst, CUdeviceptr src, size_t n, CUstream s);
CUresult cuMemcpyDtoDAsync_v2_ptsz(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s);
CUresult cuMemsetD8_v2_ptds(CUdeviceptr dst, unsigned char uc, size_t n);
CUresult cuMemsetD32_v2_ptds(CUdeviceptr dst, unsigned int ui, size_t n);
CUresult cuMemsetD8Async_ptsz(CUdeviceptr dst, unsigned char uc, size_t n, CUstream s);
CUresult cuMemsetD32Async_ptsz(CUdeviceptr dst, unsigned int ui, size_t n, CUstream s);

#endif
