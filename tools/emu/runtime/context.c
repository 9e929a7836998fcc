/*
 * context.c — the runtime's device and context model: each thread has a current device
 * (default 0); the runtime retains each device's primary context once, at its first use, and
 * makes it current on a thread that has no current context, as the real runtime does. A
 * context the program made current itself (cuCtxSetCurrent) is used as it is.
 */
#include "rt.h"

#include <pthread.h>
#include <stdlib.h>

static pthread_mutex_t primary_lock = PTHREAD_MUTEX_INITIALIZER;
static CUcontext *primary; /* retained primary context per device, NULL until first use */
static int device_count = -1;

static _Thread_local int thread_device;

/* Learns the device count once (under primary_lock). */
static cudaError_t load_devices(void)
{
    if (device_count >= 0)
        return cudaSuccess;
    int n = 0;
    CUresult r = rt_drv()->device_get_count(&n);
    if (r != CUDA_SUCCESS)
        return rt_err(r);
    primary = calloc(n > 0 ? (size_t)n : 1, sizeof *primary);
    if (!primary)
        return cudaErrorMemoryAllocation;
    device_count = n;
    return cudaSuccess;
}

static cudaError_t check_device(int device)
{
    cudaError_t e = rt_init();
    if (e != cudaSuccess)
        return e;
    pthread_mutex_lock(&primary_lock);
    e = load_devices();
    pthread_mutex_unlock(&primary_lock);
    if (e != cudaSuccess)
        return e;
    if (device_count == 0)
        return cudaErrorNoDevice;
    return device < 0 || device >= device_count ? cudaErrorInvalidDevice : cudaSuccess;
}

cudaError_t rt_device_count(int *count)
{
    /* device 0 exists whenever any does */
    cudaError_t e = check_device(0);
    *count = e == cudaSuccess ? device_count : 0;
    return e;
}

cudaError_t rt_device_handle(int device, CUdevice *dev)
{
    cudaError_t e = check_device(device);
    if (e != cudaSuccess)
        return e;
    return rt_err(rt_drv()->device_get(dev, device));
}

static cudaError_t retain_primary(int device, CUcontext *ctx)
{
    CUdevice dev;
    CUresult r = rt_drv()->device_get(&dev, device);
    if (r == CUDA_SUCCESS)
        r = rt_drv()->primary_ctx_retain(&primary[device], dev);
    if (r != CUDA_SUCCESS) {
        primary[device] = NULL;
        return rt_err(r);
    }
    *ctx = primary[device];
    return cudaSuccess;
}

cudaError_t rt_primary_ctx(int device, CUcontext *ctx)
{
    cudaError_t e = check_device(device);
    if (e != cudaSuccess)
        return e;
    pthread_mutex_lock(&primary_lock);
    if (primary[device])
        *ctx = primary[device];
    else
        e = retain_primary(device, ctx);
    pthread_mutex_unlock(&primary_lock);
    return e;
}

static cudaError_t bind(int device)
{
    CUcontext ctx;
    cudaError_t e = rt_primary_ctx(device, &ctx);
    if (e != cudaSuccess)
        return e;
    return rt_err(rt_drv()->ctx_set_current(ctx));
}

/* Starts the runtime and tells the thread's current context (NULL when it has none). */
static cudaError_t current_ctx(CUcontext *cur)
{
    cudaError_t e = rt_init();
    if (e != cudaSuccess)
        return e;
    *cur = NULL;
    return rt_err(rt_drv()->ctx_get_current(cur));
}

cudaError_t rt_enter(void)
{
    CUcontext cur;
    cudaError_t e = current_ctx(&cur);
    if (e != cudaSuccess || cur)
        return e;
    return bind(thread_device);
}

cudaError_t rt_enter_mode(enum rt_stream_mode mode, const struct rt_driver **drv)
{
    cudaError_t e = rt_drv_mode(mode, drv);
    return e == cudaSuccess ? rt_enter() : e;
}

cudaError_t rt_set_device(int device)
{
    cudaError_t e = bind(device);
    if (e == cudaSuccess)
        thread_device = device;
    return e;
}

/* The device of the thread's current context when it has one (it may be one the program made
 * current through the driver), else the thread's runtime device. */
cudaError_t rt_current_device(int *device)
{
    CUcontext cur;
    cudaError_t e = current_ctx(&cur);
    if (e != cudaSuccess)
        return e;
    CUdevice dev;
    if (cur && rt_drv()->ctx_get_device && rt_drv()->ctx_get_device(&dev) == CUDA_SUCCESS) {
        *device = (int)dev;
        return cudaSuccess;
    }
    *device = thread_device;
    return cudaSuccess;
}

/* For the sticky-error bookkeeping: the thread's runtime device, without calling the driver. */
int rt_thread_device(void)
{
    return thread_device;
}

/* fork(): a child starts with the lock free even if another thread held it at the fork. */
static void reset_lock_in_child(void)
{
    pthread_mutex_init(&primary_lock, NULL);
}

void rt_context_atfork(void)
{
    pthread_atfork(NULL, NULL, reset_lock_in_child);
}
