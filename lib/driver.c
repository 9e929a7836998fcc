/*
 * driver.c — the only file that calls libcuda.
 *
 * Owns: loading the driver (dlopen of config's `driver` path or libcuda.so.1, once, on first
 * use), the table of real entry points resolved from it (versioned names preferred, older
 * names as fallback), which optional features the driver offers, and one thin wrapper per
 * entry point that counts the call, times it when the call can be slow, and returns the
 * CUresult unchanged. Also the process's peer-access pairs as fragless extends them to the
 * memory it maps (which devices may read and write each device's VMM mappings): recorded by
 * the page layer when a context enables peer access, granted by drv_mem_set_access.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "internal.h"

/* Not a feature: the entry point is required and drv_load fails without it. */
#define REQUIRED  (-1)
/* Not a feature either: without it only its wrapper fails (CUDA_ERROR_NOT_SUPPORTED). */
#define OPTIONAL  (-2)
/* As OPTIONAL, but not worth a message: only a hook forwards to it, and a program normally
 * reaches that hook only through the driver's own export or cuGetProcAddress answer (a
 * program that looks the name up with dlsym(RTLD_DEFAULT) on a driver without it gets the
 * hook, which then answers CUDA_ERROR_NOT_SUPPORTED). */
#define FORWARDED (-3)

/* The real entry points. Each member is filled from the first name in its table row that the
 * driver exports. */
struct drv_fns {
    CUresult (*init)(unsigned int);
    CUresult (*driver_get_version)(int *);
    CUresult (*get_proc_address_v2)(const char *, void **, int, cuuint64_t,
                                    CUdriverProcAddressQueryResult *);
    CUresult (*get_proc_address_v1)(const char *, void **, int, cuuint64_t);
    CUresult (*ctx_get_current)(CUcontext *);
    CUresult (*ctx_set_current)(CUcontext);
    CUresult (*ctx_get_device)(CUdevice *);
    CUresult (*ctx_synchronize)(void);
    CUresult (*ctx_enable_peer_access)(CUcontext, unsigned int);
    CUresult (*ctx_disable_peer_access)(CUcontext);
    CUresult (*primary_ctx_retain)(CUcontext *, CUdevice);
    CUresult (*primary_ctx_release)(CUdevice);
    CUresult (*primary_ctx_reset)(CUdevice);
    CUresult (*primary_ctx_get_state)(CUdevice, unsigned int *, int *);
    CUresult (*device_get_count)(int *);
    CUresult (*device_get_attribute)(int *, CUdevice_attribute, CUdevice);
    CUresult (*device_total_mem)(size_t *, CUdevice);
    CUresult (*mem_get_info)(size_t *, size_t *);
    CUresult (*mem_alloc)(CUdeviceptr *, size_t);
    CUresult (*mem_free)(CUdeviceptr);
    CUresult (*mem_get_address_range)(CUdeviceptr *, size_t *, CUdeviceptr);
    CUresult (*pointer_get_attribute)(void *, CUpointer_attribute, CUdeviceptr);
    CUresult (*ipc_get_mem_handle)(CUipcMemHandle *, CUdeviceptr);
    CUresult (*stream_is_capturing)(CUstream, CUstreamCaptureStatus *);
    CUresult (*stream_get_ctx)(CUstream, CUcontext *);
    CUresult (*stream_synchronize)(CUstream);
    CUresult (*stream_begin_capture_v1)(CUstream);
    CUresult (*stream_begin_capture_v1_ptsz)(CUstream);
    CUresult (*stream_begin_capture)(CUstream, CUstreamCaptureMode);
    CUresult (*stream_begin_capture_ptsz)(CUstream, CUstreamCaptureMode);
    CUresult (*stream_begin_capture_to_graph)(CUstream, CUgraph, const CUgraphNode *,
                                              const CUgraphEdgeData *, size_t, CUstreamCaptureMode);
    CUresult (*stream_begin_capture_to_graph_ptsz)(CUstream, CUgraph, const CUgraphNode *,
                                                   const CUgraphEdgeData *, size_t,
                                                   CUstreamCaptureMode);
    CUresult (*stream_destroy_v1)(CUstream);
    CUresult (*stream_destroy)(CUstream);
    CUresult (*ctx_destroy_v1)(CUcontext);
    CUresult (*ctx_destroy)(CUcontext);
    CUresult (*green_ctx_destroy)(CUgreenCtx);
    CUresult (*event_create)(CUevent *, unsigned int);
    CUresult (*event_destroy)(CUevent);
    CUresult (*event_record)(CUevent, CUstream);
    CUresult (*event_query)(CUevent);
    CUresult (*mem_alloc_async)(CUdeviceptr *, size_t, CUstream);
    CUresult (*mem_free_async)(CUdeviceptr, CUstream);
    CUresult (*mem_get_granularity)(size_t *, const CUmemAllocationProp *,
                                    CUmemAllocationGranularity_flags);
    CUresult (*mem_address_reserve)(CUdeviceptr *, size_t, size_t, CUdeviceptr, unsigned long long);
    CUresult (*mem_address_free)(CUdeviceptr, size_t);
    CUresult (*mem_create)(CUmemGenericAllocationHandle *, size_t, const CUmemAllocationProp *,
                           unsigned long long);
    CUresult (*mem_release)(CUmemGenericAllocationHandle);
    CUresult (*mem_map)(CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle,
                        unsigned long long);
    CUresult (*mem_unmap)(CUdeviceptr, size_t);
    CUresult (*mem_set_access)(CUdeviceptr, size_t, const CUmemAccessDesc *, size_t);
};

struct drv_entry {
    size_t offset;        /* of the member in struct drv_fns */
    const char *names[3]; /* preferred first */
    int feature;          /* enum drv_feature, or REQUIRED */
};

#define ENTRY(member, feature, ...)                                \
    {                                                              \
        offsetof(struct drv_fns, member), {__VA_ARGS__}, (feature) \
    }

static const struct drv_entry entries[] = {
    ENTRY(init, REQUIRED, "cuInit"),
    ENTRY(driver_get_version, REQUIRED, "cuDriverGetVersion"),
    ENTRY(ctx_get_current, REQUIRED, "cuCtxGetCurrent"),
    ENTRY(ctx_set_current, REQUIRED, "cuCtxSetCurrent"),
    ENTRY(ctx_get_device, REQUIRED, "cuCtxGetDevice"),
    ENTRY(ctx_synchronize, REQUIRED, "cuCtxSynchronize"),
    ENTRY(ctx_enable_peer_access, OPTIONAL, "cuCtxEnablePeerAccess"),
    ENTRY(ctx_disable_peer_access, OPTIONAL, "cuCtxDisablePeerAccess"),
    ENTRY(primary_ctx_retain, REQUIRED, "cuDevicePrimaryCtxRetain"),
    ENTRY(primary_ctx_release, REQUIRED, "cuDevicePrimaryCtxRelease_v2",
          "cuDevicePrimaryCtxRelease"),
    ENTRY(primary_ctx_reset, OPTIONAL, "cuDevicePrimaryCtxReset_v2", "cuDevicePrimaryCtxReset"),
    ENTRY(primary_ctx_get_state, OPTIONAL, "cuDevicePrimaryCtxGetState"),
    ENTRY(device_get_count, REQUIRED, "cuDeviceGetCount"),
    ENTRY(device_get_attribute, REQUIRED, "cuDeviceGetAttribute"),
    ENTRY(device_total_mem, REQUIRED, "cuDeviceTotalMem_v2", "cuDeviceTotalMem"),
    ENTRY(mem_get_info, REQUIRED, "cuMemGetInfo_v2", "cuMemGetInfo"),
    ENTRY(mem_alloc, REQUIRED, "cuMemAlloc_v2", "cuMemAlloc"),
    ENTRY(mem_free, REQUIRED, "cuMemFree_v2", "cuMemFree"),
    ENTRY(mem_get_address_range, REQUIRED, "cuMemGetAddressRange_v2", "cuMemGetAddressRange"),
    ENTRY(pointer_get_attribute, REQUIRED, "cuPointerGetAttribute"),
    ENTRY(stream_is_capturing, REQUIRED, "cuStreamIsCapturing"),
    ENTRY(stream_get_ctx, REQUIRED, "cuStreamGetCtx"),
    ENTRY(stream_synchronize, REQUIRED, "cuStreamSynchronize"),
    ENTRY(stream_begin_capture_v1, FORWARDED, "cuStreamBeginCapture"),
    ENTRY(stream_begin_capture_v1_ptsz, FORWARDED, "cuStreamBeginCapture_ptsz"),
    ENTRY(stream_begin_capture, FORWARDED, "cuStreamBeginCapture_v2"),
    ENTRY(stream_begin_capture_ptsz, FORWARDED, "cuStreamBeginCapture_v2_ptsz"),
    ENTRY(stream_begin_capture_to_graph, FORWARDED, "cuStreamBeginCaptureToGraph"),
    ENTRY(stream_begin_capture_to_graph_ptsz, FORWARDED, "cuStreamBeginCaptureToGraph_ptsz"),
    ENTRY(stream_destroy_v1, FORWARDED, "cuStreamDestroy"),
    ENTRY(stream_destroy, FORWARDED, "cuStreamDestroy_v2"),
    ENTRY(ctx_destroy_v1, FORWARDED, "cuCtxDestroy"),
    ENTRY(ctx_destroy, FORWARDED, "cuCtxDestroy_v2"),
    ENTRY(green_ctx_destroy, FORWARDED, "cuGreenCtxDestroy"),
    ENTRY(event_create, REQUIRED, "cuEventCreate"),
    ENTRY(event_destroy, REQUIRED, "cuEventDestroy_v2", "cuEventDestroy"),
    ENTRY(event_record, REQUIRED, "cuEventRecord"),
    ENTRY(event_query, REQUIRED, "cuEventQuery"),
    ENTRY(get_proc_address_v2, DRV_FEATURE_PROC_ADDRESS, "cuGetProcAddress_v2"),
    ENTRY(get_proc_address_v1, DRV_FEATURE_PROC_ADDRESS, "cuGetProcAddress"),
    ENTRY(ipc_get_mem_handle, DRV_FEATURE_IPC, "cuIpcGetMemHandle"),
    ENTRY(mem_alloc_async, DRV_FEATURE_ASYNC, "cuMemAllocAsync"),
    ENTRY(mem_free_async, DRV_FEATURE_ASYNC, "cuMemFreeAsync"),
    ENTRY(mem_get_granularity, DRV_FEATURE_VMM, "cuMemGetAllocationGranularity"),
    ENTRY(mem_address_reserve, DRV_FEATURE_VMM, "cuMemAddressReserve"),
    ENTRY(mem_address_free, DRV_FEATURE_VMM, "cuMemAddressFree"),
    ENTRY(mem_create, DRV_FEATURE_VMM, "cuMemCreate"),
    ENTRY(mem_release, DRV_FEATURE_VMM, "cuMemRelease"),
    ENTRY(mem_map, DRV_FEATURE_VMM, "cuMemMap"),
    ENTRY(mem_unmap, DRV_FEATURE_VMM, "cuMemUnmap"),
    ENTRY(mem_set_access, DRV_FEATURE_VMM, "cuMemSetAccess"),
};

static const char *const feature_names[DRV_FEATURE_COUNT] = {
    [DRV_FEATURE_ASYNC] = "stream-ordered allocation (cuMemAllocAsync/cuMemFreeAsync)",
    [DRV_FEATURE_VMM] = "virtual memory management (expandable segments)",
    [DRV_FEATURE_PROC_ADDRESS] = "cuGetProcAddress",
    [DRV_FEATURE_IPC] = "cuIpcGetMemHandle",
};

static struct {
    pthread_mutex_t lock;
    _Atomic int state; /* 0 not loaded, 1 loaded (result valid) */
    CUresult result;
    void *handle;
    struct drv_fns fn;
    bool has[DRV_FEATURE_COUNT];
    _Atomic bool initialized; /* cuInit(0) succeeded */
    _Atomic uint64_t calls;
    _Atomic uint64_t ns;
    _Atomic uint64_t peers[FL_MAX_DEVICES]; /* bit p of peers[d]: device p may access d's */
} drv = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* Set while this thread is inside drv_load: a call back into the driver layer from the
 * driver's own initialization must not wait for itself. */
static _Thread_local bool loading;

/* ---- loading -------------------------------------------------------------------------- */

static void *resolve(const struct drv_entry *e, const char **found)
{
    for (size_t i = 0; i < FL_ARRAY_SIZE(e->names) && e->names[i]; i++) {
        void *p = dl_sym(drv.handle, e->names[i]);
        if (p) {
            *found = e->names[i];
            return p;
        }
    }
    return NULL;
}

static CUresult resolve_all(void)
{
    for (int f = 0; f < DRV_FEATURE_COUNT; f++)
        drv.has[f] = true;
    for (size_t i = 0; i < FL_ARRAY_SIZE(entries); i++) {
        const struct drv_entry *e = &entries[i];
        const char *found = NULL;
        void *p = resolve(e, &found);
        memcpy((char *)&drv.fn + e->offset, &p, sizeof p);
        if (p || e->feature == FORWARDED)
            continue;
        if (e->feature == OPTIONAL) {
            log_info("the CUDA driver lacks %s", e->names[0]);
            continue;
        }
        if (e->feature == REQUIRED) {
            log_error("the CUDA driver lacks %s, which fragless needs; is it older than "
                      "CUDA 11.2?",
                      e->names[0]);
            return CUDA_ERROR_NOT_FOUND;
        }
        drv.has[e->feature] = false;
    }
    /* Either form of cuGetProcAddress is enough. */
    drv.has[DRV_FEATURE_PROC_ADDRESS] =
        drv.fn.get_proc_address_v2 != NULL || drv.fn.get_proc_address_v1 != NULL;
    /* Info, not a warning: the user did not ask for these; whoever needs one warns when it
     * is missing (drv_has). */
    for (int f = 0; f < DRV_FEATURE_COUNT; f++) {
        if (!drv.has[f])
            log_info("the CUDA driver lacks %s; that feature is off", feature_names[f]);
    }
    return CUDA_SUCCESS;
}

static CUresult load_locked(void)
{
    const char *path = config_get()->driver_path;
    if (!path[0])
        path = "libcuda.so.1";
    drv.handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!drv.handle) {
        log_error("cannot load the CUDA driver %s: %s (set driver:PATH in FRAGLESS_CONF to "
                  "name another)",
                  path, dlerror());
        return CUDA_ERROR_NO_DEVICE;
    }
    CUresult r = resolve_all();
    if (r != CUDA_SUCCESS)
        goto close_handle;
    log_debug("loaded the CUDA driver from %s", path);
    return CUDA_SUCCESS;

close_handle:
    dlclose(drv.handle);
    drv.handle = NULL;
    memset(&drv.fn, 0, sizeof drv.fn);
    return r;
}

/* A child forked while another thread was loading the driver inherits drv.lock held by a
 * thread it does not have: it starts over with a free lock (loading again is harmless: dlopen
 * counts references and resolving rewrites the same table). */
static void fork_child(void)
{
    pthread_mutex_init(&drv.lock, NULL);
}

static void register_fork_handler(void)
{
    pthread_atfork(NULL, NULL, fork_child);
}

CUresult drv_load(void)
{
    static pthread_once_t fork_once = PTHREAD_ONCE_INIT;
    if (FL_LIKELY(atomic_load_explicit(&drv.state, memory_order_acquire)))
        return drv.result;
    if (loading)
        return CUDA_ERROR_NOT_INITIALIZED;
    pthread_once(&fork_once, register_fork_handler);
    pthread_mutex_lock(&drv.lock);
    if (!atomic_load_explicit(&drv.state, memory_order_relaxed)) {
        loading = true;
        drv.result = load_locked();
        loading = false;
        atomic_store_explicit(&drv.state, 1, memory_order_release);
    }
    pthread_mutex_unlock(&drv.lock);
    return drv.result;
}

bool drv_has(enum drv_feature f)
{
    return f < DRV_FEATURE_COUNT && drv_load() == CUDA_SUCCESS && drv.has[f];
}

void *drv_sym(const char *name)
{
    if (drv_load() != CUDA_SUCCESS)
        return NULL;
    return dl_sym(drv.handle, name);
}

/* ---- accounting ----------------------------------------------------------------------- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static CUresult counted(CUresult r)
{
    atomic_fetch_add_explicit(&drv.calls, 1, memory_order_relaxed);
    return r;
}

static CUresult account(uint64_t start, CUresult r)
{
    atomic_fetch_add_explicit(&drv.ns, now_ns() - start, memory_order_relaxed);
    return counted(r);
}

uint64_t drv_call_count(void)
{
    return atomic_load_explicit(&drv.calls, memory_order_relaxed);
}

uint64_t drv_call_ns(void)
{
    return atomic_load_explicit(&drv.ns, memory_order_relaxed);
}

/* Loads the driver if needed and fails with CUDA_ERROR_NOT_SUPPORTED when the entry point is
 * missing. */
#define CALL_PREPARE(member)                 \
    do {                                     \
        CUresult load_ = drv_load();         \
        if (load_ != CUDA_SUCCESS)           \
            return load_;                    \
        if (!drv.fn.member)                  \
            return CUDA_ERROR_NOT_SUPPORTED; \
    } while (0)

/* Calls a cheap entry point (a query the driver answers from host state), counting the call.
 * Its time is not measured: two clock reads would cost more than such a call. */
#define CALL(member, ...)                           \
    do {                                            \
        CALL_PREPARE(member);                       \
        return counted(drv.fn.member(__VA_ARGS__)); \
    } while (0)

/* Forwards a program's own call that a hook saw (a stream destroyed, a capture begun): not
 * counted, since fragless did not make it. */
#define FORWARD(member, ...)               \
    do {                                   \
        CALL_PREPARE(member);              \
        return drv.fn.member(__VA_ARGS__); \
    } while (0)

/* Calls an entry point that can be slow (it allocates, frees, maps, creates or destroys a
 * context, or waits for the device), counting the call and its time (driver_ns). */
#define TIMED(member, ...)                                  \
    do {                                                    \
        CALL_PREPARE(member);                               \
        uint64_t start_ = now_ns();                         \
        return account(start_, drv.fn.member(__VA_ARGS__)); \
    } while (0)

CUresult drv_init(void)
{
    if (FL_LIKELY(atomic_load_explicit(&drv.initialized, memory_order_acquire)))
        return CUDA_SUCCESS;
    CUresult r = drv_load();
    if (r != CUDA_SUCCESS)
        return r;
    uint64_t start = now_ns();
    r = account(start, drv.fn.init(0));
    if (r == CUDA_SUCCESS)
        atomic_store_explicit(&drv.initialized, true, memory_order_release);
    return r;
}

/* ---- cuGetProcAddress ----------------------------------------------------------------- */

static CUresult proc_address(const char *symbol, void **pfn, int cuda_version, cuuint64_t flags,
                             CUdriverProcAddressQueryResult *status)
{
    if (drv.fn.get_proc_address_v2)
        return counted(drv.fn.get_proc_address_v2(symbol, pfn, cuda_version, flags, status));
    /* The 4-argument form cannot tell "too old a version" from "unknown". */
    CUresult r = counted(drv.fn.get_proc_address_v1(symbol, pfn, cuda_version, flags));
    if (status)
        *status =
            r == CUDA_SUCCESS ? CU_GET_PROC_ADDRESS_SUCCESS : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    return r;
}

void *drv_real_proc(const char *symbol, int cuda_version, cuuint64_t flags,
                    CUdriverProcAddressQueryResult *status)
{
    CUdriverProcAddressQueryResult st = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    void *pfn = NULL;
    if (!drv_has(DRV_FEATURE_PROC_ADDRESS) ||
        proc_address(symbol, &pfn, cuda_version, flags, &st) != CUDA_SUCCESS)
        pfn = NULL;
    if (status)
        *status = st;
    return pfn;
}

CUresult drv_get_proc_address(const char *symbol, void **pfn, int cuda_version, cuuint64_t flags,
                              CUdriverProcAddressQueryResult *status)
{
    CUresult r = drv_load();
    if (r != CUDA_SUCCESS)
        return r;
    if (!drv.has[DRV_FEATURE_PROC_ADDRESS])
        return CUDA_ERROR_NOT_SUPPORTED;
    return proc_address(symbol, pfn, cuda_version, flags, status);
}

CUresult drv_get_proc_address_v1(const char *symbol, void **pfn, int cuda_version, cuuint64_t flags)
{
    if (drv.fn.get_proc_address_v1)
        CALL(get_proc_address_v1, symbol, pfn, cuda_version, flags);
    /* Only the 5-argument form: what cannot be given is CUDA_ERROR_NOT_FOUND here. */
    CUresult r = drv_get_proc_address(symbol, pfn, cuda_version, flags, NULL);
    if (r == CUDA_SUCCESS && pfn && !*pfn)
        r = CUDA_ERROR_NOT_FOUND;
    return r;
}

CUresult drv_driver_get_version(int *version)
{
    CALL(driver_get_version, version);
}

/* ---- contexts and devices ------------------------------------------------------------- */

CUresult drv_ctx_get_current(CUcontext *ctx)
{
    CALL(ctx_get_current, ctx);
}

CUresult drv_ctx_set_current(CUcontext ctx)
{
    CALL(ctx_set_current, ctx);
}

CUresult drv_ctx_get_device(CUdevice *dev)
{
    CALL(ctx_get_device, dev);
}

CUresult drv_ctx_synchronize(void)
{
    TIMED(ctx_synchronize);
}

CUresult drv_ctx_enable_peer_access(CUcontext peer, unsigned int flags)
{
    TIMED(ctx_enable_peer_access, peer, flags);
}

CUresult drv_ctx_disable_peer_access(CUcontext peer)
{
    TIMED(ctx_disable_peer_access, peer);
}

CUresult drv_primary_ctx_retain(CUcontext *ctx, CUdevice dev)
{
    TIMED(primary_ctx_retain, ctx, dev);
}

CUresult drv_primary_ctx_release(CUdevice dev)
{
    TIMED(primary_ctx_release, dev);
}

CUresult drv_primary_ctx_reset(CUdevice dev)
{
    TIMED(primary_ctx_reset, dev);
}

CUresult drv_primary_ctx_get_state(CUdevice dev, unsigned int *flags, int *active)
{
    CALL(primary_ctx_get_state, dev, flags, active);
}

CUresult drv_device_get_count(int *count)
{
    CALL(device_get_count, count);
}

CUresult drv_device_get_attribute(int *value, CUdevice_attribute attr, CUdevice dev)
{
    CALL(device_get_attribute, value, attr, dev);
}

CUresult drv_device_total_mem(size_t *bytes, CUdevice dev)
{
    CALL(device_total_mem, bytes, dev);
}

/* ---- classic memory ------------------------------------------------------------------- */

CUresult drv_mem_get_info(size_t *free_bytes, size_t *total_bytes)
{
    TIMED(mem_get_info, free_bytes, total_bytes);
}

CUresult drv_mem_alloc(CUdeviceptr *ptr, size_t size)
{
    TIMED(mem_alloc, ptr, size);
}

CUresult drv_mem_free(CUdeviceptr ptr)
{
    TIMED(mem_free, ptr);
}

CUresult drv_mem_alloc_async(CUdeviceptr *ptr, size_t size, CUstream stream)
{
    TIMED(mem_alloc_async, ptr, size, stream);
}

CUresult drv_mem_free_async(CUdeviceptr ptr, CUstream stream)
{
    TIMED(mem_free_async, ptr, stream);
}

CUresult drv_mem_get_address_range(CUdeviceptr *base, size_t *size, CUdeviceptr ptr)
{
    CALL(mem_get_address_range, base, size, ptr);
}

CUresult drv_pointer_get_attribute(void *data, CUpointer_attribute attr, CUdeviceptr ptr)
{
    CALL(pointer_get_attribute, data, attr, ptr);
}

CUresult drv_ipc_get_mem_handle(CUipcMemHandle *handle, CUdeviceptr ptr)
{
    CALL(ipc_get_mem_handle, handle, ptr);
}

/* ---- streams and events --------------------------------------------------------------- */

CUresult drv_stream_is_capturing(CUstream stream, CUstreamCaptureStatus *status)
{
    CALL(stream_is_capturing, stream, status);
}

CUresult drv_stream_get_ctx(CUstream stream, CUcontext *ctx)
{
    CALL(stream_get_ctx, stream, ctx);
}

CUresult drv_stream_synchronize(CUstream stream)
{
    TIMED(stream_synchronize, stream);
}

/* The entry points below are only forwarded to, by interpose.c's hooks of the same names: the
 * program's own calls, not counted as fragless's (driver_calls, driver_ns). */

CUresult drv_stream_begin_capture_v1(CUstream stream)
{
    FORWARD(stream_begin_capture_v1, stream);
}

CUresult drv_stream_begin_capture_v1_ptsz(CUstream stream)
{
    FORWARD(stream_begin_capture_v1_ptsz, stream);
}

CUresult drv_stream_begin_capture(CUstream stream, CUstreamCaptureMode mode)
{
    FORWARD(stream_begin_capture, stream, mode);
}

CUresult drv_stream_begin_capture_ptsz(CUstream stream, CUstreamCaptureMode mode)
{
    FORWARD(stream_begin_capture_ptsz, stream, mode);
}

CUresult drv_stream_begin_capture_to_graph(CUstream stream, CUgraph graph, const CUgraphNode *deps,
                                           const CUgraphEdgeData *data, size_t ndeps,
                                           CUstreamCaptureMode mode)
{
    FORWARD(stream_begin_capture_to_graph, stream, graph, deps, data, ndeps, mode);
}

CUresult drv_stream_begin_capture_to_graph_ptsz(CUstream stream, CUgraph graph,
                                                const CUgraphNode *deps,
                                                const CUgraphEdgeData *data, size_t ndeps,
                                                CUstreamCaptureMode mode)
{
    FORWARD(stream_begin_capture_to_graph_ptsz, stream, graph, deps, data, ndeps, mode);
}

CUresult drv_stream_destroy_v1(CUstream stream)
{
    FORWARD(stream_destroy_v1, stream);
}

CUresult drv_stream_destroy(CUstream stream)
{
    FORWARD(stream_destroy, stream);
}

CUresult drv_ctx_destroy_v1(CUcontext ctx)
{
    FORWARD(ctx_destroy_v1, ctx);
}

CUresult drv_ctx_destroy(CUcontext ctx)
{
    FORWARD(ctx_destroy, ctx);
}

CUresult drv_green_ctx_destroy(CUgreenCtx ctx)
{
    FORWARD(green_ctx_destroy, ctx);
}

CUresult drv_event_create(CUevent *event, unsigned int flags)
{
    CALL(event_create, event, flags);
}

CUresult drv_event_destroy(CUevent event)
{
    CALL(event_destroy, event);
}

CUresult drv_event_record(CUevent event, CUstream stream)
{
    CALL(event_record, event, stream);
}

CUresult drv_event_query(CUevent event)
{
    CALL(event_query, event);
}

/* ---- virtual memory management -------------------------------------------------------- */

static CUmemAllocationProp device_prop(int device)
{
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = device;
    return prop;
}

CUresult drv_mem_get_granularity(size_t *granularity, int device)
{
    CUmemAllocationProp prop = device_prop(device);
    CALL(mem_get_granularity, granularity, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
}

CUresult drv_mem_address_reserve(CUdeviceptr *ptr, size_t size, size_t alignment)
{
    TIMED(mem_address_reserve, ptr, size, alignment, 0, 0);
}

CUresult drv_mem_address_free(CUdeviceptr ptr, size_t size)
{
    TIMED(mem_address_free, ptr, size);
}

CUresult drv_mem_create(CUmemGenericAllocationHandle *handle, size_t size, int device)
{
    CUmemAllocationProp prop = device_prop(device);
    TIMED(mem_create, handle, size, &prop, 0);
}

CUresult drv_mem_release(CUmemGenericAllocationHandle handle)
{
    TIMED(mem_release, handle);
}

CUresult drv_mem_map(CUdeviceptr ptr, size_t size, CUmemGenericAllocationHandle handle)
{
    TIMED(mem_map, ptr, size, 0, handle, 0);
}

CUresult drv_mem_unmap(CUdeviceptr ptr, size_t size)
{
    TIMED(mem_unmap, ptr, size);
}

/* ---- peer access to mapped memory ----------------------------------------------------- */

void drv_peer_set(int owner, int peer, bool on)
{
    if (!fl_device_in_range(owner) || !fl_device_in_range(peer) || owner == peer)
        return;
    uint64_t bit = (uint64_t)1 << peer;
    if (on)
        atomic_fetch_or_explicit(&drv.peers[owner], bit, memory_order_acq_rel);
    else
        atomic_fetch_and_explicit(&drv.peers[owner], ~bit, memory_order_acq_rel);
}

uint64_t drv_peers(int owner)
{
    return fl_device_in_range(owner) ? atomic_load_explicit(&drv.peers[owner], memory_order_acquire)
                                     : 0;
}

static CUmemAccessDesc access_desc(int device, CUmemAccess_flags flags)
{
    CUmemAccessDesc desc;
    memset(&desc, 0, sizeof desc);
    desc.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    desc.location.id = device;
    desc.flags = flags;
    return desc;
}

CUresult drv_mem_set_access(CUdeviceptr ptr, size_t size, int device)
{
    CUmemAccessDesc desc[FL_MAX_DEVICES];
    size_t n = 0;
    uint64_t peers = drv_peers(device);
    desc[n++] = access_desc(device, CU_MEM_ACCESS_FLAGS_PROT_READWRITE);
    for (int p = 0; peers && p < FL_MAX_DEVICES; p++, peers >>= 1) {
        if (peers & 1)
            desc[n++] = access_desc(p, CU_MEM_ACCESS_FLAGS_PROT_READWRITE);
    }
    TIMED(mem_set_access, ptr, size, desc, n);
}

CUresult drv_mem_set_access_of(CUdeviceptr ptr, size_t size, int device, bool on)
{
    CUmemAccessDesc desc = access_desc(device, on ? CU_MEM_ACCESS_FLAGS_PROT_READWRITE
                                                  : CU_MEM_ACCESS_FLAGS_PROT_NONE);
    TIMED(mem_set_access, ptr, size, &desc, 1);
}
