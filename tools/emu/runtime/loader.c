/*
 * loader.c — finds the driver the way the real runtime does: dlopen("libcuda.so.1"), dlsym of
 * cuGetProcAddress_v2 (or the older four-argument cuGetProcAddress) on that handle, and every
 * other driver entry point through that cuGetProcAddress, asking for CUDA 13.0. Loading,
 * cuInit and the driver-version check happen once, at the first runtime call that needs them.
 */
#include "rt.h"

#include <dlfcn.h>
#include <pthread.h>

typedef CUresult (*proc_v2_fn)(const char *, void **, int, cuuint64_t,
                               CUdriverProcAddressQueryResult *);
typedef CUresult (*proc_v1_fn)(const char *, void **, int, cuuint64_t);

static struct {
    void *handle;
    proc_v2_fn proc_v2;
    proc_v1_fn proc_v1;
    struct rt_driver legacy;
    struct rt_driver per_thread;
    cudaError_t init_err;
    cudaError_t per_thread_err;
} ld;

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static pthread_once_t per_thread_once = PTHREAD_ONCE_INIT;
/* Set while this thread runs the one-time initialization: a runtime call made from inside it
 * (a hook in the driver calling back) fails instead of deadlocking on the once. */
static _Thread_local bool initializing;

struct rt_entry {
    const char *name;
    size_t offset;
    bool required;
};

#define RT_DRIVER_ENTRY(field, name, decl, required) \
    {name, offsetof(struct rt_driver, field), required},
static const struct rt_entry entries[] = {RT_DRIVER_FUNCS(RT_DRIVER_ENTRY)};
#undef RT_DRIVER_ENTRY

cudaError_t rt_proc_address(const char *symbol, void **pfn, int version, cuuint64_t flags,
                            CUdriverProcAddressQueryResult *status)
{
    if (ld.proc_v2)
        return rt_err(ld.proc_v2(symbol, pfn, version, flags, status));
    CUresult r = ld.proc_v1(symbol, pfn, version, flags);
    if (status)
        *status = *pfn ? CU_GET_PROC_ADDRESS_SUCCESS : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    if (r == CUDA_ERROR_NOT_FOUND)
        return cudaSuccess;
    return rt_err(r);
}

/* Fills *out through cuGetProcAddress. A lookup that fails outright fails the table; a
 * symbol the driver does not have leaves NULL, which only a required entry refuses. */
static cudaError_t resolve(struct rt_driver *out, cuuint64_t flags)
{
    struct rt_driver table = {0}, *drv = &table;
    for (size_t i = 0; i < sizeof entries / sizeof entries[0]; i++) {
        void *fn = NULL;
        CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
        cudaError_t e = rt_proc_address(entries[i].name, &fn, RT_VERSION, flags, &status);
        if (e != cudaSuccess && e != cudaErrorSymbolNotFound)
            return e;
        if (status != CU_GET_PROC_ADDRESS_SUCCESS)
            fn = NULL;
        if (!fn && entries[i].required)
            return cudaErrorInsufficientDriver;
        *(void **)((char *)drv + entries[i].offset) = fn;
    }
    *out = table;
    return cudaSuccess;
}

static cudaError_t open_driver(void)
{
    ld.handle = dlopen("libcuda.so.1", RTLD_NOW);
    if (!ld.handle)
        return cudaErrorInsufficientDriver;
    ld.proc_v2 = (proc_v2_fn)dlsym(ld.handle, "cuGetProcAddress_v2");
    if (!ld.proc_v2)
        ld.proc_v1 = (proc_v1_fn)dlsym(ld.handle, "cuGetProcAddress");
    if (!ld.proc_v2 && !ld.proc_v1)
        return cudaErrorInsufficientDriver;
    return cudaSuccess;
}

static cudaError_t start_driver(void)
{
    cudaError_t e = open_driver();
    if (e != cudaSuccess)
        return e;
    e = resolve(&ld.legacy, CU_GET_PROC_ADDRESS_DEFAULT);
    if (e != cudaSuccess)
        return e;
    CUresult r = ld.legacy.init(0);
    if (r != CUDA_SUCCESS)
        return rt_err(r);
    int version = 0;
    r = ld.legacy.driver_get_version(&version);
    if (r != CUDA_SUCCESS)
        return rt_err(r);
    return version < RT_VERSION ? cudaErrorInsufficientDriver : cudaSuccess;
}

static void init_once_fn(void)
{
    rt_context_atfork();
    initializing = true;
    ld.init_err = start_driver();
    initializing = false;
}

static void per_thread_once_fn(void)
{
    initializing = true;
    ld.per_thread_err = resolve(&ld.per_thread, CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM);
    initializing = false;
}

cudaError_t rt_init(void)
{
    if (initializing)
        return cudaErrorInitializationError;
    pthread_once(&init_once, init_once_fn);
    return ld.init_err;
}

const struct rt_driver *rt_drv(void)
{
    return &ld.legacy;
}

/* The driver table if libcuda was loaded and resolved, even when cuInit then failed. */
const struct rt_driver *rt_drv_loaded(void)
{
    rt_init();
    return ld.legacy.init ? &ld.legacy : NULL;
}

cudaError_t rt_drv_mode(enum rt_stream_mode mode, const struct rt_driver **out)
{
    cudaError_t e = rt_init();
    if (e != cudaSuccess)
        return e;
    if (mode == RT_LEGACY) {
        *out = &ld.legacy;
        return cudaSuccess;
    }
    if (initializing)
        return cudaErrorInitializationError;
    pthread_once(&per_thread_once, per_thread_once_fn);
    *out = &ld.per_thread;
    return ld.per_thread_err;
}
