/*
 * interpose.c — the CUDA entry points libfragless exports (the only file that exports any).
 *
 * Owns: the allocation entry points of the runtime and the driver API, the peer-access ones
 * (cuCtxEnablePeerAccess/cuCtxDisablePeerAccess, passed through and extended by the page
 * layer to the memory fragless maps), the resolvers that hand those entry points out at run
 * time (cuGetProcAddress in both forms, cudaGetDriverEntryPoint[ByVersion], dlsym), lazy
 * one-time initialization, the process's fork handlers, and the decision of what goes to the
 * heap and what goes to the real function.
 * Stream-ordered calls run in their stream's context (a stream may belong to another device
 * than the current one), which each thread remembers per stream until a stream or context may
 * have been destroyed; whether a stream is capturing is asked only once some capture has
 * begun. So the entry points that begin captures and destroy streams or contexts are hooked
 * too, noting that and passing through. Each entry point checks its arguments and then calls
 * exactly one heap_* function; everything it does not serve goes to the real function: frees of
 * pointers fragless did not hand out, streams under graph capture, contexts that are not their
 * device's primary context, calls made while fragless initializes or from inside a real runtime
 * call, and everything under passthrough:true.
 */
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "internal.h"

/* cuda.h renames cuGetProcAddress to its 5-argument _v2, and these to their latest versions;
 * we export every form the driver does. */
#undef cuGetProcAddress
#undef cuStreamBeginCapture
#undef cuStreamBeginCaptureToGraph
#undef cuStreamDestroy
#undef cuCtxDestroy

/* The exported names, declared here where cuda.h does not declare them (or declares them
 * under another name). */
FL_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int cuda_version,
                                    cuuint64_t flags);
FL_EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t size, CUstream stream);
FL_EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream stream);
FL_EXPORT cudaError_t cudaMallocAsync_ptsz(void **dev_ptr, size_t size, cudaStream_t stream);
FL_EXPORT cudaError_t cudaFreeAsync_ptsz(void *dev_ptr, cudaStream_t stream);
FL_EXPORT cudaError_t cudaGetDriverEntryPoint_ptsz(const char *symbol, void **fn,
                                                   unsigned long long flags,
                                                   enum cudaDriverEntryPointQueryResult *st);
FL_EXPORT cudaError_t cudaGetDriverEntryPointByVersion_ptsz(
    const char *symbol, void **fn, unsigned int cuda_version, unsigned long long flags,
    enum cudaDriverEntryPointQueryResult *st);
FL_EXPORT CUresult cuStreamBeginCapture(CUstream stream);
FL_EXPORT CUresult cuStreamBeginCapture_ptsz(CUstream stream);
FL_EXPORT CUresult cuStreamBeginCapture_v2_ptsz(CUstream stream, CUstreamCaptureMode mode);
FL_EXPORT CUresult cuStreamBeginCaptureToGraph(CUstream stream, CUgraph graph,
                                               const CUgraphNode *deps, const CUgraphEdgeData *data,
                                               size_t ndeps, CUstreamCaptureMode mode);
FL_EXPORT CUresult cuStreamBeginCaptureToGraph_ptsz(CUstream stream, CUgraph graph,
                                                    const CUgraphNode *deps,
                                                    const CUgraphEdgeData *data, size_t ndeps,
                                                    CUstreamCaptureMode mode);
FL_EXPORT CUresult cuStreamDestroy(CUstream stream);
FL_EXPORT CUresult cuCtxDestroy(CUcontext ctx);
FL_EXPORT cudaError_t cudaStreamBeginCapture_ptsz(cudaStream_t stream,
                                                  enum cudaStreamCaptureMode mode);
FL_EXPORT cudaError_t cudaStreamBeginCaptureToGraph_ptsz(cudaStream_t stream, cudaGraph_t graph,
                                                         const cudaGraphNode_t *deps,
                                                         const cudaGraphEdgeData *data,
                                                         size_t ndeps,
                                                         enum cudaStreamCaptureMode mode);

/* ---- initialization ------------------------------------------------------------------- */

static struct {
    pthread_mutex_t lock;
    _Atomic bool done;
    CUresult result;
} init = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* This thread is initializing fragless: hooked calls it makes go to the real function. */
static _Thread_local bool in_init FL_HOT_TLS;
/* This thread is inside a real runtime function fragless called: driver entry points the
 * runtime calls from there go to the real driver (the runtime does its own bookkeeping). */
static _Thread_local int in_real_runtime FL_HOT_TLS;

static void build_hook_table(void);
static void register_fork_handlers(void);
static void register_heap_fork_handlers(void);

static CUresult init_locked(void)
{
    CUresult r = drv_init();
    if (r != CUDA_SUCCESS) {
        log_error("cannot initialize the CUDA driver (CUresult %d); every call passes through "
                  "to it",
                  (int)r);
        return r;
    }
    register_heap_fork_handlers();
    build_hook_table();
    return CUDA_SUCCESS;
}

static CUresult init_once(void)
{
    if (FL_LIKELY(atomic_load_explicit(&init.done, memory_order_acquire)))
        return init.result;
    if (in_init)
        return CUDA_ERROR_NOT_INITIALIZED;
    register_fork_handlers();
    pthread_mutex_lock(&init.lock);
    if (!atomic_load_explicit(&init.done, memory_order_relaxed)) {
        in_init = true;
        init.result = init_locked();
        in_init = false;
        atomic_store_explicit(&init.done, true, memory_order_release);
    }
    pthread_mutex_unlock(&init.lock);
    return init.result;
}

static bool passthrough(void)
{
    return config_get()->passthrough;
}

enum serve_mode { MODE_UNDECIDED, MODE_SERVE, MODE_PASS };

/* Whether fragless serves calls at all, decided once: not under passthrough:true, nor when
 * it cannot initialize (both are final: the configuration is read once and a failed
 * initialization is not retried). */
static _Atomic int serve_mode;

static FL_COLD bool decide_serving(void)
{
    int mode = passthrough() || init_once() != CUDA_SUCCESS ? MODE_PASS : MODE_SERVE;
    atomic_store_explicit(&serve_mode, mode, memory_order_relaxed);
    return mode == MODE_SERVE;
}

/* True when this call is fragless's to serve; false sends it to the real function. */
static inline bool serving(void)
{
    if (in_init || in_real_runtime)
        return false;
    int mode = atomic_load_explicit(&serve_mode, memory_order_relaxed);
    if (FL_UNLIKELY(mode == MODE_UNDECIDED) ? !decide_serving() : mode != MODE_SERVE)
        return false;
    shm_ensure();
    return true;
}

/* The runtime reports the driver's errors under the same numbers (CUDA 10.1 and later). */
static cudaError_t rt_error(CUresult r)
{
    return (cudaError_t)r;
}

/* ---- the real runtime ----------------------------------------------------------------- */

enum rt_fn {
    RT_MALLOC,
    RT_FREE,
    RT_MALLOC_ASYNC,
    RT_MALLOC_ASYNC_PTSZ,
    RT_FREE_ASYNC,
    RT_FREE_ASYNC_PTSZ,
    RT_MEM_GET_INFO,
    RT_IPC_GET_MEM_HANDLE,
    RT_ENTRY_POINT,
    RT_ENTRY_POINT_PTSZ,
    RT_ENTRY_POINT_BY_VERSION,
    RT_ENTRY_POINT_BY_VERSION_PTSZ,
    RT_BEGIN_CAPTURE,
    RT_BEGIN_CAPTURE_PTSZ,
    RT_BEGIN_CAPTURE_TO_GRAPH,
    RT_BEGIN_CAPTURE_TO_GRAPH_PTSZ,
    RT_STREAM_DESTROY,
    RT_DEVICE_RESET,
    RT_COUNT
};

static const char *const rt_names[RT_COUNT] = {
    [RT_MALLOC] = "cudaMalloc",
    [RT_FREE] = "cudaFree",
    [RT_MALLOC_ASYNC] = "cudaMallocAsync",
    [RT_MALLOC_ASYNC_PTSZ] = "cudaMallocAsync_ptsz",
    [RT_FREE_ASYNC] = "cudaFreeAsync",
    [RT_FREE_ASYNC_PTSZ] = "cudaFreeAsync_ptsz",
    [RT_MEM_GET_INFO] = "cudaMemGetInfo",
    [RT_IPC_GET_MEM_HANDLE] = "cudaIpcGetMemHandle",
    [RT_ENTRY_POINT] = "cudaGetDriverEntryPoint",
    [RT_ENTRY_POINT_PTSZ] = "cudaGetDriverEntryPoint_ptsz",
    [RT_ENTRY_POINT_BY_VERSION] = "cudaGetDriverEntryPointByVersion",
    [RT_ENTRY_POINT_BY_VERSION_PTSZ] = "cudaGetDriverEntryPointByVersion_ptsz",
    [RT_BEGIN_CAPTURE] = "cudaStreamBeginCapture",
    [RT_BEGIN_CAPTURE_PTSZ] = "cudaStreamBeginCapture_ptsz",
    [RT_BEGIN_CAPTURE_TO_GRAPH] = "cudaStreamBeginCaptureToGraph",
    [RT_BEGIN_CAPTURE_TO_GRAPH_PTSZ] = "cudaStreamBeginCaptureToGraph_ptsz",
    [RT_STREAM_DESTROY] = "cudaStreamDestroy",
    [RT_DEVICE_RESET] = "cudaDeviceReset",
};

static _Atomic(void *) rt_real[RT_COUNT];

/* The entry of the object holding `addr` in the dynamic linker's list of loaded objects. */
static struct link_map *link_map_of(const void *addr)
{
    Dl_info info;
    struct link_map *lm = NULL;
    if (!dladdr1(addr, &info, (void **)&lm, RTLD_DL_LINKMAP))
        return NULL;
    return lm;
}

static bool defined_in(void *sym, const struct link_map *l)
{
    struct link_map *lm = link_map_of(sym);
    return !lm || lm == l; /* cannot tell: trust the lookup */
}

/* dlsym in one loaded object and its dependencies. A link map is not a handle, so take a
 * proper one (which does not load anything) for the lookup. */
static void *sym_in(const struct link_map *l, const char *name)
{
    void *h = dlopen(l->l_name && l->l_name[0] ? l->l_name : NULL, RTLD_LAZY | RTLD_NOLOAD);
    if (!h)
        return NULL;
    void *p = dl_sym(h, name);
    dlclose(h);
    return p;
}

/* A runtime loaded into a private scope (e.g. by a Python extension) is not found through
 * RTLD_NEXT; look for it among all loaded objects. */
static void *find_in_cudart(const char *name)
{
    struct link_map *l = link_map_of((const void *)find_in_cudart);
    while (l && l->l_prev)
        l = l->l_prev;
    for (; l; l = l->l_next) {
        if (!l->l_name || !strstr(l->l_name, "libcudart"))
            continue;
        void *p = sym_in(l, name);
        if (p)
            return p;
    }
    return NULL;
}

/* The real runtime function `f`, or NULL when no runtime is loaded. */
static void *rt(enum rt_fn f)
{
    void *p = atomic_load_explicit(&rt_real[f], memory_order_acquire);
    if (FL_LIKELY(p))
        return p;
    p = dl_sym(RTLD_NEXT, rt_names[f]);
    if (!p)
        p = find_in_cudart(rt_names[f]);
    if (p)
        atomic_store_explicit(&rt_real[f], p, memory_order_release);
    return p;
}

static cudaError_t no_runtime(enum rt_fn f)
{
    log_error("no CUDA runtime provides %s; cannot pass the call through", rt_names[f]);
    return cudaErrorInitializationError;
}

/* Calls real runtime function `id` of type `type`, marking the thread as inside it. */
#define RT_CALL(id, type, ...)             \
    do {                                   \
        type fn_ = (type)rt(id);           \
        if (!fn_)                          \
            return no_runtime(id);         \
        in_real_runtime++;                 \
        cudaError_t e_ = fn_(__VA_ARGS__); \
        in_real_runtime--;                 \
        return e_;                         \
    } while (0)

typedef cudaError_t (*rt_malloc_fn)(void **, size_t);
typedef cudaError_t (*rt_free_fn)(void *);
typedef cudaError_t (*rt_malloc_async_fn)(void **, size_t, cudaStream_t);
typedef cudaError_t (*rt_free_async_fn)(void *, cudaStream_t);
typedef cudaError_t (*rt_mem_get_info_fn)(size_t *, size_t *);
typedef cudaError_t (*rt_ipc_fn)(cudaIpcMemHandle_t *, void *);
typedef cudaError_t (*rt_entry_fn)(const char *, void **, unsigned long long,
                                   enum cudaDriverEntryPointQueryResult *);
typedef cudaError_t (*rt_entry_by_version_fn)(const char *, void **, unsigned int,
                                              unsigned long long,
                                              enum cudaDriverEntryPointQueryResult *);

static cudaError_t real_malloc(void **dev_ptr, size_t size)
{
    RT_CALL(RT_MALLOC, rt_malloc_fn, dev_ptr, size);
}

static cudaError_t real_free(void *dev_ptr)
{
    RT_CALL(RT_FREE, rt_free_fn, dev_ptr);
}

static cudaError_t real_malloc_async(enum rt_fn id, void **dev_ptr, size_t size, cudaStream_t s)
{
    RT_CALL(id, rt_malloc_async_fn, dev_ptr, size, s);
}

static cudaError_t real_free_async(enum rt_fn id, void *dev_ptr, cudaStream_t s)
{
    RT_CALL(id, rt_free_async_fn, dev_ptr, s);
}

static cudaError_t real_mem_get_info(size_t *free_bytes, size_t *total_bytes)
{
    RT_CALL(RT_MEM_GET_INFO, rt_mem_get_info_fn, free_bytes, total_bytes);
}

static cudaError_t real_ipc_get_mem_handle(cudaIpcMemHandle_t *handle, void *dev_ptr)
{
    RT_CALL(RT_IPC_GET_MEM_HANDLE, rt_ipc_fn, handle, dev_ptr);
}

static cudaError_t real_entry_point(enum rt_fn id, const char *symbol, void **fn,
                                    unsigned long long flags,
                                    enum cudaDriverEntryPointQueryResult *st)
{
    RT_CALL(id, rt_entry_fn, symbol, fn, flags, st);
}

static cudaError_t real_entry_point_by_version(enum rt_fn id, const char *symbol, void **fn,
                                               unsigned int version, unsigned long long flags,
                                               enum cudaDriverEntryPointQueryResult *st)
{
    RT_CALL(id, rt_entry_by_version_fn, symbol, fn, version, flags, st);
}

typedef cudaError_t (*rt_begin_capture_fn)(cudaStream_t, enum cudaStreamCaptureMode);
typedef cudaError_t (*rt_begin_capture_to_graph_fn)(cudaStream_t, cudaGraph_t,
                                                    const cudaGraphNode_t *,
                                                    const cudaGraphEdgeData *, size_t,
                                                    enum cudaStreamCaptureMode);
typedef cudaError_t (*rt_stream_destroy_fn)(cudaStream_t);
typedef cudaError_t (*rt_device_reset_fn)(void);

static cudaError_t real_begin_capture(enum rt_fn id, cudaStream_t s,
                                      enum cudaStreamCaptureMode mode)
{
    RT_CALL(id, rt_begin_capture_fn, s, mode);
}

static cudaError_t real_begin_capture_to_graph(enum rt_fn id, cudaStream_t s, cudaGraph_t graph,
                                               const cudaGraphNode_t *deps,
                                               const cudaGraphEdgeData *data, size_t ndeps,
                                               enum cudaStreamCaptureMode mode)
{
    RT_CALL(id, rt_begin_capture_to_graph_fn, s, graph, deps, data, ndeps, mode);
}

static cudaError_t real_stream_destroy(cudaStream_t s)
{
    RT_CALL(RT_STREAM_DESTROY, rt_stream_destroy_fn, s);
}

static cudaError_t real_device_reset(void)
{
    RT_CALL(RT_DEVICE_RESET, rt_device_reset_fn);
}

/* ---- streams: graph capture, and each stream's context -------------------------------- */

/* Whether any stream of this process has begun a graph capture: set by every entry point that
 * begins one (hooked below) before the real one runs, and never cleared. Until then no stream
 * can be capturing, so stream-ordered calls do not ask the driver (PyTorch's allocator skips
 * that query the same way while no capture is underway); from then on they ask every time. */
static _Atomic bool capture_begun;

static void note_capture(void)
{
    atomic_store_explicit(&capture_begun, true, memory_order_seq_cst);
}

/* A created stream belongs to one context for its whole life, so a thread keeps what the
 * driver said about its last few streams, each answer valid while the epoch it was asked in
 * lasts. The epoch moves before and after every call that can destroy a stream (destroying
 * it, or destroying or resetting its context; and in a forked child): before, so that a
 * dying stream's context is no longer served from any thread's cache; after, so that an
 * answer given while the destroy ran is not kept for a new stream with the same handle. */
static _Atomic uint64_t stream_epoch = 1;

static void streams_changed(void)
{
    atomic_fetch_add_explicit(&stream_epoch, 1, memory_order_seq_cst);
}

#define STREAM_CACHE_SIZE 4

struct stream_entry {
    CUstream stream;
    CUcontext ctx;
    uint64_t epoch;
};

static _Thread_local struct {
    struct stream_entry e[STREAM_CACHE_SIZE];
    unsigned next; /* the entry replaced next */
} stream_cache FL_HOT_TLS;

/* This thread's cached answer for the context of `stream` (a created stream) made in `epoch`;
 * false if it has none. */
static bool cached_context(CUstream stream, uint64_t epoch, CUcontext *ctx)
{
    for (int i = 0; i < STREAM_CACHE_SIZE; i++) {
        const struct stream_entry *e = &stream_cache.e[i];
        if (e->stream == stream && e->epoch == epoch) {
            *ctx = e->ctx;
            return true;
        }
    }
    return false;
}

/* This thread's cached answer for the context of `stream` while the epoch lasts. */
static bool stream_context_cached(CUstream stream, CUcontext *ctx)
{
    return cached_context(stream, atomic_load_explicit(&stream_epoch, memory_order_acquire), ctx);
}

/* The context of `stream`, a created stream: this thread's cached answer while the epoch
 * lasts, else the driver's (cuStreamGetCtx), which is then cached. */
static CUresult stream_context(CUstream stream, CUcontext *ctx)
{
    uint64_t epoch = atomic_load_explicit(&stream_epoch, memory_order_acquire);
    if (cached_context(stream, epoch, ctx))
        return CUDA_SUCCESS;
    CUresult r = drv_stream_get_ctx(stream, ctx);
    if (r != CUDA_SUCCESS || !*ctx)
        return r;
    unsigned slot = stream_cache.next++ % STREAM_CACHE_SIZE;
    stream_cache.e[slot] = (struct stream_entry){stream, *ctx, epoch};
    return CUDA_SUCCESS;
}

/* ---- the current device --------------------------------------------------------------- */

/* Each device's primary context once fragless has seen it, so that a call made in a primary
 * context needs no driver query beyond cuCtxGetCurrent to learn its device. A destroyed
 * context's handle may be reused for another context, so an entry is forgotten before and
 * after every call that can destroy that context (cuDevicePrimaryCtxRelease and
 * cuDevicePrimaryCtxReset, hooked below), and learned again from the driver afterwards. */
static _Atomic(CUcontext) primary_ctx[FL_MAX_DEVICES];
/* One past the highest device that ever had an entry: how far the lookup looks. */
static _Atomic int primary_limit;

static void remember_primary(CUdevice dev, CUcontext ctx)
{
    atomic_store_explicit(&primary_ctx[dev], ctx, memory_order_release);
    int limit = atomic_load_explicit(&primary_limit, memory_order_relaxed);
    while (limit <= dev &&
           !atomic_compare_exchange_weak_explicit(&primary_limit, &limit, dev + 1,
                                                  memory_order_release, memory_order_relaxed))
        ;
}

static void forget_primary(CUdevice dev)
{
    if (fl_device_in_range(dev))
        atomic_store_explicit(&primary_ctx[dev], NULL, memory_order_release);
}

/* The device whose primary context `ctx` is, as remembered; -1 when it is none of them. */
static int remembered_device(CUcontext ctx)
{
    int limit = atomic_load_explicit(&primary_limit, memory_order_acquire);
    for (int d = 0; d < limit; d++) {
        if (atomic_load_explicit(&primary_ctx[d], memory_order_acquire) == ctx)
            return d;
    }
    return -1;
}

/* Whether `ctx` is `dev`'s primary context, asking the driver (and remembering the answer). */
static bool is_primary(CUcontext ctx, CUdevice dev)
{
    unsigned int flags = 0;
    int active = 1;
    CUresult r = drv_primary_ctx_get_state(dev, &flags, &active);
    if ((r != CUDA_SUCCESS && r != CUDA_ERROR_NOT_SUPPORTED) || !active)
        return false;
    /* Active, so it is retained already: this retain/release pair creates nothing. */
    CUcontext p = NULL;
    if (drv_primary_ctx_retain(&p, dev) != CUDA_SUCCESS)
        return false;
    drv_primary_ctx_release(dev);
    remember_primary(dev, p);
    return p == ctx;
}

/* The device of `ctx`, which must be this thread's current context. *primary is false when
 * it is not its device's primary context (fragless leaves such contexts to the driver). */
static CUresult context_device(CUcontext ctx, int *dev, bool *primary)
{
    int known = remembered_device(ctx);
    if (FL_LIKELY(known >= 0)) {
        *dev = known;
        *primary = true;
        return CUDA_SUCCESS;
    }
    CUdevice d = 0;
    CUresult r = drv_ctx_get_device(&d);
    if (r != CUDA_SUCCESS)
        return r;
    *dev = d;
    *primary = fl_device_in_range(d) && is_primary(ctx, d);
    return CUDA_SUCCESS;
}

/* The device of this thread's current context, as context_device.
 * CUDA_ERROR_INVALID_CONTEXT when no context is current, as the driver answers. */
static CUresult current_device(int *dev, bool *primary)
{
    CUcontext ctx = NULL;
    CUresult r = drv_ctx_get_current(&ctx);
    if (r != CUDA_SUCCESS)
        return r;
    if (!ctx)
        return CUDA_ERROR_INVALID_CONTEXT;
    return context_device(ctx, dev, primary);
}

/* Before and after a call that may destroy `dev`'s primary context and its streams. */
static void primary_changed(CUdevice dev)
{
    forget_primary(dev);
    streams_changed();
}

/* Whether `dev`'s primary context still exists (a failed query counts as gone). */
static bool primary_alive(CUdevice dev)
{
    unsigned int flags = 0;
    int active = 0;
    return drv_primary_ctx_get_state(dev, &flags, &active) == CUDA_SUCCESS && active;
}

/* A release that destroys the context (its last) takes the context's streams with it: their
 * pools go (heap_streams_reset). Libraries that retain and release around each use keep the
 * context alive, and their pools. */
FL_EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev)
{
    primary_changed(dev);
    CUresult r = drv_primary_ctx_release(dev);
    primary_changed(dev);
    if (r == CUDA_SUCCESS && !primary_alive(dev))
        heap_streams_reset(true);
    return r;
}

FL_EXPORT CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev)
{
    primary_changed(dev);
    heap_streams_reset(false);
    CUresult r = drv_primary_ctx_reset(dev);
    primary_changed(dev);
    return r;
}

/* ---- beginning a capture, destroying streams and contexts ----------------------------- */

/* Each notes what it does for the stream-ordered calls (above) and forwards to the real
 * function, whatever the configuration and before fragless initializes. */

FL_EXPORT CUresult cuStreamBeginCapture(CUstream stream)
{
    note_capture();
    return drv_stream_begin_capture_v1(stream);
}

FL_EXPORT CUresult cuStreamBeginCapture_ptsz(CUstream stream)
{
    note_capture();
    return drv_stream_begin_capture_v1_ptsz(stream);
}

FL_EXPORT CUresult cuStreamBeginCapture_v2(CUstream stream, CUstreamCaptureMode mode)
{
    note_capture();
    return drv_stream_begin_capture(stream, mode);
}

FL_EXPORT CUresult cuStreamBeginCapture_v2_ptsz(CUstream stream, CUstreamCaptureMode mode)
{
    note_capture();
    return drv_stream_begin_capture_ptsz(stream, mode);
}

FL_EXPORT CUresult cuStreamBeginCaptureToGraph(CUstream stream, CUgraph graph,
                                               const CUgraphNode *deps, const CUgraphEdgeData *data,
                                               size_t ndeps, CUstreamCaptureMode mode)
{
    note_capture();
    return drv_stream_begin_capture_to_graph(stream, graph, deps, data, ndeps, mode);
}

FL_EXPORT CUresult cuStreamBeginCaptureToGraph_ptsz(CUstream stream, CUgraph graph,
                                                    const CUgraphNode *deps,
                                                    const CUgraphEdgeData *data, size_t ndeps,
                                                    CUstreamCaptureMode mode)
{
    note_capture();
    return drv_stream_begin_capture_to_graph_ptsz(stream, graph, deps, data, ndeps, mode);
}

/* After a call that may have destroyed streams (the epoch moved before it too): returns r. */
static CUresult streams_gone(CUresult r)
{
    streams_changed();
    return r;
}

/* Before `stream` is destroyed: no thread serves its context from the cache, and its pools'
 * frees wait for a device sync. */
static void stream_dying(CUstream stream)
{
    streams_changed();
    heap_stream_destroyed(stream);
}

/* Before a context is destroyed. A context fragless serves is a primary one, which
 * cuCtxDestroy does not destroy; but the streams of the context it destroys go with it, and a
 * fragless block may have been freed on one of them: every stream pool goes (their blocks
 * wait for a device sync). */
static void context_dying(void)
{
    streams_changed();
    heap_streams_reset(false);
}

FL_EXPORT CUresult cuStreamDestroy(CUstream stream)
{
    stream_dying(stream);
    return streams_gone(drv_stream_destroy_v1(stream));
}

FL_EXPORT CUresult cuStreamDestroy_v2(CUstream stream)
{
    stream_dying(stream);
    return streams_gone(drv_stream_destroy(stream));
}

FL_EXPORT CUresult cuCtxDestroy(CUcontext ctx)
{
    context_dying();
    return streams_gone(drv_ctx_destroy_v1(ctx));
}

FL_EXPORT CUresult cuCtxDestroy_v2(CUcontext ctx)
{
    context_dying();
    return streams_gone(drv_ctx_destroy(ctx));
}

FL_EXPORT CUresult cuGreenCtxDestroy(CUgreenCtx ctx)
{
    context_dying();
    return streams_gone(drv_green_ctx_destroy(ctx));
}

/* ---- peer access ---------------------------------------------------------------------- */

/* The device of any context: remembered, or asked of the driver with `ctx` made current for
 * the question (and the caller's context current again afterwards). */
static CUresult device_of_ctx(CUcontext ctx, int *dev)
{
    CUcontext cur = NULL;
    CUdevice d = 0;
    int known = remembered_device(ctx);
    if (known >= 0) {
        *dev = known;
        return CUDA_SUCCESS;
    }
    CUresult r = drv_ctx_get_current(&cur);
    if (r == CUDA_SUCCESS && cur != ctx)
        r = drv_ctx_set_current(ctx);
    if (r != CUDA_SUCCESS)
        return r;
    r = drv_ctx_get_device(&d);
    if (cur != ctx)
        drv_ctx_set_current(cur);
    *dev = d;
    return r;
}

/* The pair a peer-access call in the current context names: the current context's device
 * (the one gaining or losing access) and `peer`'s device (whose memory it is). */
static CUresult peer_pair(CUcontext peer, int *accessor, int *owner)
{
    bool primary = false;
    CUresult r = current_device(accessor, &primary);
    if (r == CUDA_SUCCESS)
        r = device_of_ctx(peer, owner);
    return r;
}

/* The driver's peer access covers memory from cuMemAlloc, not VMM mappings: fragless grants
 * the new peer access to what its expandable segments map (now and later). If that fails,
 * peer access is disabled again and the call fails, so that nothing is half enabled. */
FL_EXPORT CUresult cuCtxEnablePeerAccess(CUcontext peer, unsigned int flags)
{
    int accessor = 0, owner = 0;
    CUresult r = drv_ctx_enable_peer_access(peer, flags);
    if (r != CUDA_SUCCESS || !serving())
        return r;
    r = peer_pair(peer, &accessor, &owner);
    if (r == CUDA_SUCCESS)
        r = vmm_peer_enable(owner, accessor);
    if (r == CUDA_SUCCESS)
        return CUDA_SUCCESS;
    CUresult undo = drv_ctx_disable_peer_access(peer);
    log_error("peer access was enabled but fragless could not extend it to the memory it "
              "mapped (CUresult %d); %s",
              (int)r,
              undo == CUDA_SUCCESS ? "peer access is disabled again"
                                   : "disabling peer access again failed too");
    return r;
}

/* Later mappings no longer grant the peer access; mappings that have it keep it until they
 * are unmapped (access set with cuMemSetAccess belongs to the mapping, not to the peer
 * context, and fragless does not take it back: docs/vmm.md "Peer access"). */
FL_EXPORT CUresult cuCtxDisablePeerAccess(CUcontext peer)
{
    int accessor = 0, owner = 0;
    if (!serving())
        return drv_ctx_disable_peer_access(peer);
    bool known = peer_pair(peer, &accessor, &owner) == CUDA_SUCCESS;
    CUresult r = drv_ctx_disable_peer_access(peer);
    if (r == CUDA_SUCCESS && known)
        vmm_peer_disable(owner, accessor);
    return r;
}

/* This thread's current context (NULL when none), first initializing the runtime the way
 * the program's own call would have: with no context current, the real cudaFree(NULL) makes
 * the runtime's current device's primary context current. */
static cudaError_t runtime_context(CUcontext *ctx)
{
    CUresult r = drv_ctx_get_current(ctx);
    if (r != CUDA_SUCCESS || *ctx)
        return rt_error(r);
    cudaError_t e = real_free(NULL);
    if (e != cudaSuccess)
        return e;
    return rt_error(drv_ctx_get_current(ctx));
}

/* As current_device, but first initializing the runtime as runtime_context does. */
static cudaError_t runtime_device(int *dev, bool *primary)
{
    CUcontext ctx = NULL;
    cudaError_t e = runtime_context(&ctx);
    if (e != cudaSuccess)
        return e;
    return rt_error(ctx ? context_device(ctx, dev, primary) : CUDA_ERROR_INVALID_CONTEXT);
}

/* Whether `stream` is capturing a graph; errors of the query come back in *r. No stream is
 * while none has begun a capture. */
static bool capturing(CUstream stream, CUresult *r)
{
    CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
    *r = CUDA_SUCCESS;
    if (FL_LIKELY(!atomic_load_explicit(&capture_begun, memory_order_relaxed)))
        return false;
    *r = drv_stream_is_capturing(stream, &st);
    return *r == CUDA_SUCCESS && st != CU_STREAM_CAPTURE_STATUS_NONE;
}

/* Whether fragless handed out the block containing `p`. */
static bool ours(CUdeviceptr p)
{
    CUdeviceptr base = 0;
    size_t size = 0;
    int dev = 0;
    return heap_lookup(p, &base, &size, &dev);
}

static CUstream per_thread(CUstream stream)
{
    return stream ? stream : CU_STREAM_PER_THREAD;
}

static CUresult refuse_capture_free(void)
{
    log_error("a block fragless handed out was freed on a stream under graph capture; "
              "fragless cannot order that free (use passthrough:true for graph workloads)");
    return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
}

static CUresult refuse_ipc(void)
{
    log_error("IPC handles are not supported for memory fragless handed out (they would "
              "open at a wrong address); set passthrough:true in FRAGLESS_CONF for jobs that "
              "share device memory between processes");
    return CUDA_ERROR_NOT_SUPPORTED;
}

/* heap_alloc and heap_free, with the event recorded when FRAGLESS_CONF has trace:PATH
 * (trace.c): a free before the block can be reused, an allocation once it is made. */
static CUresult traced_alloc(int dev, size_t size, CUstream stream, enum heap_mode mode,
                             CUdeviceptr *out)
{
    CUresult r = heap_alloc(dev, size, stream, mode, out);
    if (FL_UNLIKELY(trace_enabled()))
        trace_record(dev, r == CUDA_SUCCESS ? TRACE_ALLOCATE : TRACE_ALLOCATE_FAILURE,
                     r == CUDA_SUCCESS ? *out : 0, size, stream);
    return r;
}

static CUresult traced_free(CUdeviceptr p, CUstream stream, enum heap_mode mode, bool *foreign)
{
    CUdeviceptr base = 0;
    size_t size = 0;
    int dev = 0;
    if (FL_UNLIKELY(trace_enabled()) && heap_lookup(p, &base, &size, &dev) && base == p)
        trace_record(dev, TRACE_FREE, p, size, stream);
    return heap_free(p, stream, mode, foreign);
}

/* Allocates through the heap on `dev`, remembering that fragless used the device. */
static CUresult serve_alloc(int dev, size_t size, CUstream stream, enum heap_mode mode,
                            CUdeviceptr *out)
{
    api_note_device(dev);
    return traced_alloc(dev, size, stream, mode, out);
}

/* The legacy and per-thread default streams run in the calling thread's current context. */
static bool default_stream(CUstream stream)
{
    return !stream || stream == CU_STREAM_LEGACY || stream == CU_STREAM_PER_THREAD;
}

/* The contexts of a stream-ordered call: the caller's, and the stream's, current while the
 * call runs. */
struct ctx_guard {
    CUcontext prev;
    CUcontext ctx;
    bool switched;
};

/* Makes the context of `stream` current for a stream-ordered call: a created stream belongs to
 * its own context (and device), which need not be the thread's current one, `cur`. */
static CUresult enter_stream_ctx(CUstream stream, CUcontext cur, struct ctx_guard *g)
{
    g->prev = cur;
    g->ctx = cur;
    g->switched = false;
    if (default_stream(stream))
        return CUDA_SUCCESS;
    CUresult r = stream_context(stream, &g->ctx);
    if (r != CUDA_SUCCESS || g->ctx == cur)
        return r;
    r = drv_ctx_set_current(g->ctx);
    g->switched = r == CUDA_SUCCESS;
    return r;
}

static void leave_stream_ctx(const struct ctx_guard *g)
{
    if (!g->switched)
        return;
    CUresult r = drv_ctx_set_current(g->prev);
    if (r != CUDA_SUCCESS)
        log_error("cannot make the caller's context current again after a stream-ordered call "
                  "(CUresult %d); the stream's context stays current",
                  (int)r);
}

/* A stream-ordered allocation on a created stream whose context this thread knows, a primary
 * one, carved from the thread's region for it: no driver call at all, so neither the current
 * context nor a switch to the stream's is needed. False: the full path (also while tracing,
 * and once a capture was begun: the stream may be capturing). */
static bool own_stream_alloc(size_t size, CUstream stream, CUdeviceptr *out)
{
    CUcontext ctx = NULL;
    if (default_stream(stream) || FL_UNLIKELY(trace_enabled()) ||
        atomic_load_explicit(&capture_begun, memory_order_relaxed) ||
        !stream_context_cached(stream, &ctx))
        return false;
    int dev = remembered_device(ctx);
    return dev >= 0 && heap_alloc_own(dev, size, stream, out);
}

/* A stream-ordered allocation in the stream's context; `cur` is the thread's current context.
 * *served is false when fragless leaves it to the real function: a stream under capture, or a
 * context that is not its device's primary one. */
static CUresult stream_alloc(CUcontext cur, CUdeviceptr *out, size_t size, CUstream stream,
                             bool *served)
{
    *served = false;
    CUresult r = CUDA_SUCCESS;
    if (capturing(stream, &r) || r != CUDA_SUCCESS)
        return r;
    struct ctx_guard g;
    r = enter_stream_ctx(stream, cur, &g);
    if (r != CUDA_SUCCESS)
        return r;
    int dev = 0;
    bool primary = false;
    r = g.ctx ? context_device(g.ctx, &dev, &primary) : CUDA_ERROR_INVALID_CONTEXT;
    if (r == CUDA_SUCCESS && primary) {
        *served = true;
        r = serve_alloc(dev, size, stream, HEAP_ASYNC, out);
    }
    leave_stream_ctx(&g);
    return r;
}

/* A stream-ordered free in the stream's context (the heap records its events there). */
static CUresult stream_free(CUdeviceptr p, CUstream stream, bool *foreign)
{
    *foreign = false;
    /* the calling thread's own carved block, on a stream this thread knows to be valid: no
     * context needed (nor anything to trace first) */
    CUcontext known = NULL;
    if (FL_LIKELY(!trace_enabled()) &&
        (default_stream(stream) || stream_context_cached(stream, &known)) &&
        heap_free_own(p, stream))
        return CUDA_SUCCESS;
    CUcontext cur = NULL;
    CUresult r = default_stream(stream) ? CUDA_SUCCESS : drv_ctx_get_current(&cur);
    if (r != CUDA_SUCCESS)
        return r;
    struct ctx_guard g;
    r = enter_stream_ctx(stream, cur, &g);
    if (r != CUDA_SUCCESS)
        return r;
    r = traced_free(p, stream, HEAP_ASYNC, foreign);
    leave_stream_ctx(&g);
    return r;
}

/* ---- driver API: allocation ----------------------------------------------------------- */

FL_EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t size)
{
    if (!serving() || !dptr || size == 0)
        return drv_mem_alloc(dptr, size);
    int dev = 0;
    bool primary = false;
    CUresult r = current_device(&dev, &primary);
    if (r != CUDA_SUCCESS)
        return r;
    if (!primary)
        return drv_mem_alloc(dptr, size);
    return serve_alloc(dev, size, NULL, HEAP_SYNC, dptr);
}

FL_EXPORT CUresult cuMemFree_v2(CUdeviceptr dptr)
{
    if (!serving() || !dptr)
        return drv_mem_free(dptr);
    bool foreign = false;
    CUresult r = traced_free(dptr, NULL, HEAP_SYNC, &foreign);
    return foreign ? drv_mem_free(dptr) : r;
}

static CUresult alloc_async(CUdeviceptr *dptr, size_t size, CUstream stream)
{
    if (!serving() || !dptr || size == 0)
        return drv_mem_alloc_async(dptr, size, stream);
    if (own_stream_alloc(size, stream, dptr))
        return CUDA_SUCCESS;
    CUcontext cur = NULL;
    CUresult r = drv_ctx_get_current(&cur);
    if (r != CUDA_SUCCESS)
        return r;
    bool served = false;
    r = stream_alloc(cur, dptr, size, stream, &served);
    if (served || r != CUDA_SUCCESS)
        return r;
    return drv_mem_alloc_async(dptr, size, stream);
}

static CUresult free_async(CUdeviceptr dptr, CUstream stream)
{
    if (!serving() || !dptr)
        return drv_mem_free_async(dptr, stream);
    CUresult r = CUDA_SUCCESS;
    if (capturing(stream, &r) || r != CUDA_SUCCESS) {
        if (r != CUDA_SUCCESS)
            return r;
        return ours(dptr) ? refuse_capture_free() : drv_mem_free_async(dptr, stream);
    }
    bool foreign = false;
    r = stream_free(dptr, stream, &foreign);
    return foreign ? drv_mem_free_async(dptr, stream) : r;
}

FL_EXPORT CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t size, CUstream stream)
{
    return alloc_async(dptr, size, stream);
}

FL_EXPORT CUresult cuMemAllocAsync_ptsz(CUdeviceptr *dptr, size_t size, CUstream stream)
{
    return alloc_async(dptr, size, per_thread(stream));
}

FL_EXPORT CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream stream)
{
    return free_async(dptr, stream);
}

FL_EXPORT CUresult cuMemFreeAsync_ptsz(CUdeviceptr dptr, CUstream stream)
{
    return free_async(dptr, per_thread(stream));
}

/* ---- driver API: queries -------------------------------------------------------------- */

/* Adds what fragless holds cached on the current device to the driver's free bytes: memory
 * this process can obtain. */
static void add_cached(size_t *free_bytes, const size_t *total_bytes)
{
    int dev = 0;
    bool primary = false;
    if (!free_bytes || current_device(&dev, &primary) != CUDA_SUCCESS || !primary)
        return;
    *free_bytes += heap_cached_bytes(dev);
    if (total_bytes && *free_bytes > *total_bytes)
        *free_bytes = *total_bytes;
}

FL_EXPORT CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total_bytes)
{
    CUresult r = drv_mem_get_info(free_bytes, total_bytes);
    if (r == CUDA_SUCCESS && serving())
        add_cached(free_bytes, total_bytes);
    return r;
}

FL_EXPORT CUresult cuMemGetAddressRange_v2(CUdeviceptr *pbase, size_t *psize, CUdeviceptr dptr)
{
    CUdeviceptr base = 0;
    size_t size = 0;
    int dev = 0;
    if (!serving() || !heap_lookup(dptr, &base, &size, &dev))
        return drv_mem_get_address_range(pbase, psize, dptr);
    if (pbase)
        *pbase = base;
    if (psize)
        *psize = size;
    return CUDA_SUCCESS;
}

FL_EXPORT CUresult cuPointerGetAttribute(void *data, CUpointer_attribute attr, CUdeviceptr ptr)
{
    CUdeviceptr base = 0;
    size_t size = 0;
    int dev = 0;
    bool range =
        attr == CU_POINTER_ATTRIBUTE_RANGE_START_ADDR || attr == CU_POINTER_ATTRIBUTE_RANGE_SIZE;
    if (!range || !data || !serving() || !heap_lookup(ptr, &base, &size, &dev))
        return drv_pointer_get_attribute(data, attr, ptr);
    if (attr == CU_POINTER_ATTRIBUTE_RANGE_START_ADDR)
        memcpy(data, &base, sizeof base);
    else
        memcpy(data, &size, sizeof size);
    return CUDA_SUCCESS;
}

FL_EXPORT CUresult cuIpcGetMemHandle(CUipcMemHandle *handle, CUdeviceptr dptr)
{
    if (serving() && ours(dptr))
        return refuse_ipc();
    return drv_ipc_get_mem_handle(handle, dptr);
}

/* ---- runtime API ---------------------------------------------------------------------- */

/* The runtime remembers the error of its calls for cudaGetLastError/cudaPeekAtLastError, and
 * a program (PyTorch's caching allocator, for one) clears the out-of-memory error of a failed
 * cudaMalloc that way. fragless cannot write the runtime's per-thread record, so it makes the
 * runtime record the error itself: a real cudaMalloc of twice the device's memory fails the
 * same way (cudaErrorMemoryAllocation), allocates nothing and touches no other state. Should a
 * driver ever grant it, it is freed at once. Only the out-of-memory error is recorded this
 * way; any other error from the heap is a driver error the runtime meets itself. */
static void record_oom(void)
{
    CUdevice dev = 0;
    size_t total = 0;
    if (drv_ctx_get_device(&dev) != CUDA_SUCCESS ||
        drv_device_total_mem(&total, dev) != CUDA_SUCCESS || total > SIZE_MAX / 2)
        return;
    void *p = NULL;
    if (real_malloc(&p, 2 * total) == cudaSuccess)
        real_free(p);
}

/* The runtime's error for a request fragless served, recorded as the runtime would. */
static cudaError_t rt_alloc_result(CUresult r, CUdeviceptr p, void **dev_ptr)
{
    if (r == CUDA_SUCCESS)
        *dev_ptr = (void *)(uintptr_t)p;
    else if (r == CUDA_ERROR_OUT_OF_MEMORY)
        record_oom();
    return rt_error(r);
}

FL_EXPORT cudaError_t cudaMalloc(void **dev_ptr, size_t size)
{
    if (!serving() || !dev_ptr || size == 0)
        return real_malloc(dev_ptr, size);
    int dev = 0;
    bool primary = false;
    cudaError_t e = runtime_device(&dev, &primary);
    if (e != cudaSuccess)
        return e;
    if (!primary)
        return real_malloc(dev_ptr, size);
    CUdeviceptr p = 0;
    CUresult r = serve_alloc(dev, size, NULL, HEAP_SYNC, &p);
    return rt_alloc_result(r, p, dev_ptr);
}

FL_EXPORT cudaError_t cudaFree(void *dev_ptr)
{
    if (!dev_ptr || !serving())
        return real_free(dev_ptr);
    bool foreign = false;
    CUresult r = traced_free((CUdeviceptr)(uintptr_t)dev_ptr, NULL, HEAP_SYNC, &foreign);
    return foreign ? real_free(dev_ptr) : rt_error(r);
}

static cudaError_t malloc_async(enum rt_fn id, void **dev_ptr, size_t size, CUstream stream)
{
    if (!serving() || !dev_ptr || size == 0)
        return real_malloc_async(id, dev_ptr, size, stream);
    CUdeviceptr p = 0;
    if (own_stream_alloc(size, stream, &p))
        return rt_alloc_result(CUDA_SUCCESS, p, dev_ptr);
    CUcontext cur = NULL;
    cudaError_t e = runtime_context(&cur);
    if (e != cudaSuccess)
        return e;
    bool served = false;
    CUresult r = stream_alloc(cur, &p, size, stream, &served);
    if (!served && r == CUDA_SUCCESS)
        return real_malloc_async(id, dev_ptr, size, stream);
    return rt_alloc_result(r, p, dev_ptr);
}

static cudaError_t free_async_rt(enum rt_fn id, void *dev_ptr, CUstream stream)
{
    CUdeviceptr p = (CUdeviceptr)(uintptr_t)dev_ptr;
    if (!dev_ptr || !serving())
        return real_free_async(id, dev_ptr, stream);
    CUresult r = CUDA_SUCCESS;
    if (capturing(stream, &r) || r != CUDA_SUCCESS) {
        if (r != CUDA_SUCCESS)
            return rt_error(r);
        return ours(p) ? rt_error(refuse_capture_free()) : real_free_async(id, dev_ptr, stream);
    }
    bool foreign = false;
    r = stream_free(p, stream, &foreign);
    return foreign ? real_free_async(id, dev_ptr, stream) : rt_error(r);
}

FL_EXPORT cudaError_t cudaMallocAsync(void **dev_ptr, size_t size, cudaStream_t stream)
{
    return malloc_async(RT_MALLOC_ASYNC, dev_ptr, size, stream);
}

FL_EXPORT cudaError_t cudaMallocAsync_ptsz(void **dev_ptr, size_t size, cudaStream_t stream)
{
    return malloc_async(RT_MALLOC_ASYNC_PTSZ, dev_ptr, size, per_thread(stream));
}

FL_EXPORT cudaError_t cudaFreeAsync(void *dev_ptr, cudaStream_t stream)
{
    return free_async_rt(RT_FREE_ASYNC, dev_ptr, stream);
}

FL_EXPORT cudaError_t cudaFreeAsync_ptsz(void *dev_ptr, cudaStream_t stream)
{
    return free_async_rt(RT_FREE_ASYNC_PTSZ, dev_ptr, per_thread(stream));
}

FL_EXPORT cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes)
{
    if (!serving())
        return real_mem_get_info(free_bytes, total_bytes);
    int dev = 0;
    bool primary = false;
    cudaError_t e = runtime_device(&dev, &primary);
    if (e != cudaSuccess)
        return e;
    CUresult r = drv_mem_get_info(free_bytes, total_bytes);
    if (r == CUDA_SUCCESS)
        add_cached(free_bytes, total_bytes);
    return rt_error(r);
}

FL_EXPORT cudaError_t cudaIpcGetMemHandle(cudaIpcMemHandle_t *handle, void *dev_ptr)
{
    if (serving() && ours((CUdeviceptr)(uintptr_t)dev_ptr))
        return rt_error(refuse_ipc());
    return real_ipc_get_mem_handle(handle, dev_ptr);
}

/* The runtime's forms of the hooks above (the real runtime may reach the driver's hooks too,
 * or not: a runtime linked statically, or one that resolved the driver its own way). */

static cudaError_t begin_capture_rt(enum rt_fn id, cudaStream_t stream,
                                    enum cudaStreamCaptureMode mode)
{
    note_capture();
    return real_begin_capture(id, stream, mode);
}

FL_EXPORT cudaError_t cudaStreamBeginCapture(cudaStream_t stream, enum cudaStreamCaptureMode mode)
{
    return begin_capture_rt(RT_BEGIN_CAPTURE, stream, mode);
}

FL_EXPORT cudaError_t cudaStreamBeginCapture_ptsz(cudaStream_t stream,
                                                  enum cudaStreamCaptureMode mode)
{
    return begin_capture_rt(RT_BEGIN_CAPTURE_PTSZ, stream, mode);
}

FL_EXPORT cudaError_t cudaStreamBeginCaptureToGraph(cudaStream_t stream, cudaGraph_t graph,
                                                    const cudaGraphNode_t *deps,
                                                    const cudaGraphEdgeData *data, size_t ndeps,
                                                    enum cudaStreamCaptureMode mode)
{
    note_capture();
    return real_begin_capture_to_graph(RT_BEGIN_CAPTURE_TO_GRAPH, stream, graph, deps, data, ndeps,
                                       mode);
}

FL_EXPORT cudaError_t cudaStreamBeginCaptureToGraph_ptsz(cudaStream_t stream, cudaGraph_t graph,
                                                         const cudaGraphNode_t *deps,
                                                         const cudaGraphEdgeData *data,
                                                         size_t ndeps,
                                                         enum cudaStreamCaptureMode mode)
{
    note_capture();
    return real_begin_capture_to_graph(RT_BEGIN_CAPTURE_TO_GRAPH_PTSZ, stream, graph, deps, data,
                                       ndeps, mode);
}

FL_EXPORT cudaError_t cudaStreamDestroy(cudaStream_t stream)
{
    stream_dying(stream);
    cudaError_t e = real_stream_destroy(stream);
    streams_changed();
    return e;
}

/* Resets the current device's primary context: every device's is forgotten (which costs one
 * query each) and the streams' epoch moves. */
static void devices_changed(void)
{
    int limit = atomic_load_explicit(&primary_limit, memory_order_acquire);
    for (int d = 0; d < limit; d++)
        forget_primary(d);
    streams_changed();
}

FL_EXPORT cudaError_t cudaDeviceReset(void)
{
    devices_changed();
    heap_streams_reset(false);
    cudaError_t e = real_device_reset();
    devices_changed();
    return e;
}

/* ---- resolvers ------------------------------------------------------------------------ */

/* One real function and the hook that replaces it. */
struct hook_id {
    void *real;
    void *hook;
};

/* Every driver entry point we export, by its exported name. */
static const struct {
    const char *name;
    void *hook;
} driver_hooks[] = {
    {"cuMemAlloc_v2", (void *)cuMemAlloc_v2},
    {"cuMemFree_v2", (void *)cuMemFree_v2},
    {"cuMemAllocAsync", (void *)cuMemAllocAsync},
    {"cuMemAllocAsync_ptsz", (void *)cuMemAllocAsync_ptsz},
    {"cuMemFreeAsync", (void *)cuMemFreeAsync},
    {"cuMemFreeAsync_ptsz", (void *)cuMemFreeAsync_ptsz},
    {"cuMemGetInfo_v2", (void *)cuMemGetInfo_v2},
    {"cuMemGetAddressRange_v2", (void *)cuMemGetAddressRange_v2},
    {"cuPointerGetAttribute", (void *)cuPointerGetAttribute},
    {"cuIpcGetMemHandle", (void *)cuIpcGetMemHandle},
    {"cuGetProcAddress", (void *)cuGetProcAddress},
    {"cuGetProcAddress_v2", (void *)cuGetProcAddress_v2},
    {"cuDevicePrimaryCtxRelease_v2", (void *)cuDevicePrimaryCtxRelease_v2},
    {"cuDevicePrimaryCtxReset_v2", (void *)cuDevicePrimaryCtxReset_v2},
    {"cuCtxEnablePeerAccess", (void *)cuCtxEnablePeerAccess},
    {"cuCtxDisablePeerAccess", (void *)cuCtxDisablePeerAccess},
    {"cuStreamBeginCapture", (void *)cuStreamBeginCapture},
    {"cuStreamBeginCapture_ptsz", (void *)cuStreamBeginCapture_ptsz},
    {"cuStreamBeginCapture_v2", (void *)cuStreamBeginCapture_v2},
    {"cuStreamBeginCapture_v2_ptsz", (void *)cuStreamBeginCapture_v2_ptsz},
    {"cuStreamBeginCaptureToGraph", (void *)cuStreamBeginCaptureToGraph},
    {"cuStreamBeginCaptureToGraph_ptsz", (void *)cuStreamBeginCaptureToGraph_ptsz},
    {"cuStreamDestroy", (void *)cuStreamDestroy},
    {"cuStreamDestroy_v2", (void *)cuStreamDestroy_v2},
    {"cuCtxDestroy", (void *)cuCtxDestroy},
    {"cuCtxDestroy_v2", (void *)cuCtxDestroy_v2},
    {"cuGreenCtxDestroy", (void *)cuGreenCtxDestroy},
};

/* The names cuGetProcAddress is asked for, and our hook for each stream semantics. */
static const struct {
    const char *base;
    void *legacy;
    void *per_thread;
} driver_bases[] = {
    {"cuMemAlloc", (void *)cuMemAlloc_v2, (void *)cuMemAlloc_v2},
    {"cuMemFree", (void *)cuMemFree_v2, (void *)cuMemFree_v2},
    {"cuMemAllocAsync", (void *)cuMemAllocAsync, (void *)cuMemAllocAsync_ptsz},
    {"cuMemFreeAsync", (void *)cuMemFreeAsync, (void *)cuMemFreeAsync_ptsz},
    {"cuMemGetInfo", (void *)cuMemGetInfo_v2, (void *)cuMemGetInfo_v2},
    {"cuMemGetAddressRange", (void *)cuMemGetAddressRange_v2, (void *)cuMemGetAddressRange_v2},
    {"cuPointerGetAttribute", (void *)cuPointerGetAttribute, (void *)cuPointerGetAttribute},
    {"cuIpcGetMemHandle", (void *)cuIpcGetMemHandle, (void *)cuIpcGetMemHandle},
    {"cuGetProcAddress", (void *)cuGetProcAddress_v2, (void *)cuGetProcAddress_v2},
    {"cuDevicePrimaryCtxRelease", (void *)cuDevicePrimaryCtxRelease_v2,
     (void *)cuDevicePrimaryCtxRelease_v2},
    {"cuDevicePrimaryCtxReset", (void *)cuDevicePrimaryCtxReset_v2,
     (void *)cuDevicePrimaryCtxReset_v2},
    {"cuCtxEnablePeerAccess", (void *)cuCtxEnablePeerAccess, (void *)cuCtxEnablePeerAccess},
    {"cuCtxDisablePeerAccess", (void *)cuCtxDisablePeerAccess, (void *)cuCtxDisablePeerAccess},
    {"cuStreamBeginCapture", (void *)cuStreamBeginCapture_v2, (void *)cuStreamBeginCapture_v2_ptsz},
    {"cuStreamBeginCaptureToGraph", (void *)cuStreamBeginCaptureToGraph,
     (void *)cuStreamBeginCaptureToGraph_ptsz},
    {"cuStreamDestroy", (void *)cuStreamDestroy_v2, (void *)cuStreamDestroy_v2},
    {"cuCtxDestroy", (void *)cuCtxDestroy_v2, (void *)cuCtxDestroy_v2},
    {"cuGreenCtxDestroy", (void *)cuGreenCtxDestroy, (void *)cuGreenCtxDestroy},
};

/* Every runtime entry point we export, by enum rt_fn. (CUDA 13 deprecates
 * cudaGetDriverEntryPoint; programs built against older headers still call it.) */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
static void *const runtime_hooks[RT_COUNT] = {
    [RT_MALLOC] = (void *)cudaMalloc,
    [RT_FREE] = (void *)cudaFree,
    [RT_MALLOC_ASYNC] = (void *)cudaMallocAsync,
    [RT_MALLOC_ASYNC_PTSZ] = (void *)cudaMallocAsync_ptsz,
    [RT_FREE_ASYNC] = (void *)cudaFreeAsync,
    [RT_FREE_ASYNC_PTSZ] = (void *)cudaFreeAsync_ptsz,
    [RT_MEM_GET_INFO] = (void *)cudaMemGetInfo,
    [RT_IPC_GET_MEM_HANDLE] = (void *)cudaIpcGetMemHandle,
    [RT_ENTRY_POINT] = (void *)cudaGetDriverEntryPoint,
    [RT_ENTRY_POINT_PTSZ] = (void *)cudaGetDriverEntryPoint_ptsz,
    [RT_ENTRY_POINT_BY_VERSION] = (void *)cudaGetDriverEntryPointByVersion,
    [RT_ENTRY_POINT_BY_VERSION_PTSZ] = (void *)cudaGetDriverEntryPointByVersion_ptsz,
    [RT_BEGIN_CAPTURE] = (void *)cudaStreamBeginCapture,
    [RT_BEGIN_CAPTURE_PTSZ] = (void *)cudaStreamBeginCapture_ptsz,
    [RT_BEGIN_CAPTURE_TO_GRAPH] = (void *)cudaStreamBeginCaptureToGraph,
    [RT_BEGIN_CAPTURE_TO_GRAPH_PTSZ] = (void *)cudaStreamBeginCaptureToGraph_ptsz,
    [RT_STREAM_DESTROY] = (void *)cudaStreamDestroy,
    [RT_DEVICE_RESET] = (void *)cudaDeviceReset,
};
#pragma GCC diagnostic pop

#define MAX_HOOK_IDS 128
static struct {
    pthread_mutex_t lock;
    _Atomic bool built;
    int count;
    struct hook_id ids[MAX_HOOK_IDS];
} table = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void add_id(void *real, void *hook)
{
    if (!real || table.count == MAX_HOOK_IDS)
        return;
    for (int i = 0; i < table.count; i++) {
        if (table.ids[i].real == real)
            return; /* the first identity wins: exported names are added first */
    }
    table.ids[table.count++] = (struct hook_id){real, hook};
}

/* The real function of each hooked driver entry point, both as the driver exports it and as
 * its cuGetProcAddress hands it out (legacy and per-thread stream flavours). */
static void build_locked(void)
{
    static const cuuint64_t flags[] = {CU_GET_PROC_ADDRESS_DEFAULT,
                                       CU_GET_PROC_ADDRESS_LEGACY_STREAM,
                                       CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM};
    for (size_t i = 0; i < FL_ARRAY_SIZE(driver_hooks); i++)
        add_id(drv_sym(driver_hooks[i].name), driver_hooks[i].hook);
    int version = 0;
    if (drv_driver_get_version(&version) != CUDA_SUCCESS)
        return;
    for (size_t i = 0; i < FL_ARRAY_SIZE(driver_bases); i++) {
        for (size_t f = 0; f < FL_ARRAY_SIZE(flags); f++) {
            void *real = drv_real_proc(driver_bases[i].base, version, flags[f], NULL);
            bool pt = flags[f] == CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;
            add_id(real, pt ? driver_bases[i].per_thread : driver_bases[i].legacy);
        }
    }
}

static _Thread_local bool building;

static void build_hook_table(void)
{
    if (atomic_load_explicit(&table.built, memory_order_acquire) || building)
        return;
    if (drv_load() != CUDA_SUCCESS)
        return;
    register_fork_handlers();
    pthread_mutex_lock(&table.lock);
    if (!atomic_load_explicit(&table.built, memory_order_relaxed)) {
        building = true;
        build_locked();
        building = false;
        atomic_store_explicit(&table.built, true, memory_order_release);
    }
    pthread_mutex_unlock(&table.lock);
}

/* ---- fork ----------------------------------------------------------------------------- */

/* The process's fork handlers (DESIGN §4 rule 5). The heap's locks (and the page layer's,
 * which nest inside them) are taken around fork so that the child gets them free and
 * consistent. These handlers are registered once the driver is initialized: prepare handlers
 * run in the reverse order of registration, so ours run before any the driver registered
 * while it loaded and initialized — a thread holding a heap lock inside a driver call would
 * otherwise wait for a driver lock the forking thread took first, while the forking thread
 * waits for the heap lock. The one-time initialization is not waited for: a child forked
 * while another thread initializes inherits init.lock or table.lock held by a thread it does
 * not have, so the child makes both free again (a handler registered before initialization
 * starts) and, finding init.done unset, initializes on its own. */
static void fork_prepare(void)
{
    heap_atfork_prepare();
    vmm_atfork_prepare();
}

static void fork_parent(void)
{
    vmm_atfork_parent();
    heap_atfork_parent();
}

static void fork_child(void)
{
    vmm_atfork_child();
    heap_atfork_child();
    streams_changed(); /* the parent's streams are not the child's */
}

static void fork_child_init(void)
{
    pthread_mutex_init(&table.lock, NULL);
    pthread_mutex_init(&init.lock, NULL);
}

static void register_once(void)
{
    pthread_atfork(NULL, NULL, fork_child_init);
}

static void register_heap_once(void)
{
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}

static void register_heap_fork_handlers(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, register_heap_once);
}

/* Registered before the first lock of initialization is taken, and only once (a child that
 * initializes again must not register twice). */
static void register_fork_handlers(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, register_once);
}

static bool is_upper(char c)
{
    return c >= 'A' && c <= 'Z';
}

/* Names shaped like CUDA entry points: cu[A-Z]... or cuda[A-Z]... */
static bool looks_cuda(const char *name)
{
    if (!name || strncmp(name, "cu", 2) != 0)
        return false;
    return is_upper(name[2]) || (strncmp(name + 2, "da", 2) == 0 && is_upper(name[4]));
}

static void *runtime_substitute(void *real)
{
    for (int f = 0; f < RT_COUNT; f++) {
        if (atomic_load_explicit(&rt_real[f], memory_order_acquire) == real)
            return runtime_hooks[f];
    }
    return real;
}

/* Our hook when `real` is the real function of an entry point we interpose; else `real`. */
static void *substitute(const char *name, void *real)
{
    if (!real || !looks_cuda(name) || passthrough())
        return real;
    if (strncmp(name, "cuda", 4) == 0 && is_upper(name[4])) {
        for (int f = 0; f < RT_COUNT; f++)
            rt((enum rt_fn)f);
        return runtime_substitute(real);
    }
    build_hook_table();
    if (!atomic_load_explicit(&table.built, memory_order_acquire))
        return real;
    for (int i = 0; i < table.count; i++) {
        if (table.ids[i].real == real)
            return table.ids[i].hook;
    }
    return real;
}

FL_EXPORT CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cuda_version,
                                       cuuint64_t flags, CUdriverProcAddressQueryResult *status)
{
    CUresult r = drv_get_proc_address(symbol, pfn, cuda_version, flags, status);
    if (r == CUDA_SUCCESS && pfn)
        *pfn = substitute(symbol, *pfn);
    return r;
}

FL_EXPORT CUresult cuGetProcAddress(const char *symbol, void **pfn, int cuda_version,
                                    cuuint64_t flags)
{
    CUresult r = drv_get_proc_address_v1(symbol, pfn, cuda_version, flags);
    if (r == CUDA_SUCCESS && pfn)
        *pfn = substitute(symbol, *pfn);
    return r;
}

static cudaError_t entry_point(enum rt_fn id, const char *symbol, void **fn,
                               unsigned long long flags, enum cudaDriverEntryPointQueryResult *st)
{
    cudaError_t e = real_entry_point(id, symbol, fn, flags, st);
    if (e == cudaSuccess && fn)
        *fn = substitute(symbol, *fn);
    return e;
}

static cudaError_t entry_point_by_version(enum rt_fn id, const char *symbol, void **fn,
                                          unsigned int version, unsigned long long flags,
                                          enum cudaDriverEntryPointQueryResult *st)
{
    cudaError_t e = real_entry_point_by_version(id, symbol, fn, version, flags, st);
    if (e == cudaSuccess && fn)
        *fn = substitute(symbol, *fn);
    return e;
}

FL_EXPORT cudaError_t cudaGetDriverEntryPoint(const char *symbol, void **fn,
                                              unsigned long long flags,
                                              enum cudaDriverEntryPointQueryResult *st)
{
    return entry_point(RT_ENTRY_POINT, symbol, fn, flags, st);
}

FL_EXPORT cudaError_t cudaGetDriverEntryPoint_ptsz(const char *symbol, void **fn,
                                                   unsigned long long flags,
                                                   enum cudaDriverEntryPointQueryResult *st)
{
    return entry_point(RT_ENTRY_POINT_PTSZ, symbol, fn, flags, st);
}

FL_EXPORT cudaError_t cudaGetDriverEntryPointByVersion(const char *symbol, void **fn,
                                                       unsigned int cuda_version,
                                                       unsigned long long flags,
                                                       enum cudaDriverEntryPointQueryResult *st)
{
    return entry_point_by_version(RT_ENTRY_POINT_BY_VERSION, symbol, fn, cuda_version, flags, st);
}

FL_EXPORT cudaError_t cudaGetDriverEntryPointByVersion_ptsz(
    const char *symbol, void **fn, unsigned int cuda_version, unsigned long long flags,
    enum cudaDriverEntryPointQueryResult *st)
{
    return entry_point_by_version(RT_ENTRY_POINT_BY_VERSION_PTSZ, symbol, fn, cuda_version, flags,
                                  st);
}

/* ---- dlsym ---------------------------------------------------------------------------- */

/* dlsym(RTLD_NEXT, name) as the caller would have got it: the first object loaded after the
 * caller's that defines `name`. */
static void *next_after(const void *caller, const char *name)
{
    struct link_map *lm = link_map_of(caller);
    if (!lm)
        return dl_sym(RTLD_NEXT, name);
    for (struct link_map *l = lm->l_next; l; l = l->l_next) {
        void *p = sym_in(l, name);
        if (p && defined_in(p, l))
            return p;
    }
    /* Leave dlerror() saying that `name` was not found, as the real lookup would. */
    return dlvsym(RTLD_DEFAULT, name, "FRAGLESS_NOT_FOUND");
}

/* dlsym(RTLD_DEFAULT, name) as the caller would have got it: the global scope, then the
 * caller's own group (for objects loaded with RTLD_LOCAL). */
static void *default_for(const void *caller, const char *name)
{
    void *p = dl_sym(RTLD_DEFAULT, name);
    if (p)
        return p;
    struct link_map *lm = link_map_of(caller);
    return lm ? sym_in(lm, name) : NULL;
}

/* CUDA names: the lookup as the caller would have made it, then our hook for a real entry
 * point we interpose. */
__attribute__((noinline)) static void *dlsym_cuda(void *handle, const char *name,
                                                  const void *caller)
{
    void *p;
    if (handle == RTLD_NEXT)
        p = next_after(caller, name);
    else if (handle == RTLD_DEFAULT)
        p = default_for(caller, name);
    else
        p = dl_sym(handle, name);
    return substitute(name, p);
}

/* Every other name goes to the real dlsym as a tail call, so that it sees the caller's return
 * address (RTLD_NEXT and RTLD_DEFAULT depend on it) and nothing of ours runs: sanitizer
 * runtimes resolve their own functions through here before they are initialized. */
FL_EXPORT void *dlsym(void *restrict handle, const char *restrict name)
{
    if (FL_LIKELY(!looks_cuda(name)))
        return dl_sym(handle, name);
    return dlsym_cuda(handle, name, __builtin_return_address(0));
}
