/*
 * device.c — initialization, devices and contexts: cuInit, cuDriverGetVersion, the cuDevice*
 * queries, primary contexts (retain/release/reset/state/flags), the per-thread context stack
 * (cuCtxGetCurrent/SetCurrent/Push/Pop), cuCtxSynchronize and peer access. The version,
 * device and context-stack queries pass the light gate (fastpath.c) and take no lock: they
 * read the configuration (fixed once read), the contexts cuInit set up, and thread-locals.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "emu.h"

/* cuda.h maps cuDeviceGetUuid to _v2; the library exports both. */
#undef cuDeviceGetUuid
CUresult cuDeviceGetUuid(CUuuid *uuid, CUdevice dev);

static __thread struct emu_ctx *ctx_stack[EMU_MAX_CTX_STACK];
static __thread int ctx_depth;
static uint32_t peer_enabled[EMU_MAX_DEVICES]; /* bit p: this context may access device p */

void emu_ctx_clear_tls(void)
{
    ctx_depth = 0;
}

static struct emu_ctx *emu_ctx_of(CUcontext c)
{
    for (int i = 0; i < emu.cfg.devices; i++)
        if ((void *)&emu.ctx[i] == (void *)c)
            return &emu.ctx[i];
    return NULL;
}

static struct emu_ctx *ctx_top(void)
{
    return ctx_depth > 0 ? ctx_stack[ctx_depth - 1] : NULL;
}

CUresult emu_current(struct emu_ctx **out)
{
    CUresult r = emu_check_init();
    struct emu_ctx *c;

    if (r != CUDA_SUCCESS)
        return r;
    c = ctx_top();
    if (!c || c->refs == 0)
        return CUDA_ERROR_INVALID_CONTEXT;
    if (c->sticky != CUDA_SUCCESS)
        return c->sticky;
    *out = c;
    return CUDA_SUCCESS;
}

static void ctx_init(struct emu_ctx *c, int device)
{
    memset(c, 0, sizeof *c);
    c->magic = EMU_MAGIC_CTX;
    c->device = device;
    c->legacy.magic = EMU_MAGIC_STREAM;
    c->legacy.ctx = c;
    c->legacy.implicit = true;
}

EMU_API CUresult cuInit(unsigned int flags)
{
    CUresult r = CUDA_SUCCESS;

    EMU_ENTER(cuInit);
    emu_lock();
    if (emu_in_forked_child())
        r = CUDA_ERROR_NOT_INITIALIZED;
    else if (flags != 0)
        r = CUDA_ERROR_INVALID_VALUE;
    else if (emu.cfg.devices == 0)
        r = CUDA_ERROR_NO_DEVICE;
    else if (!emu.initialized) {
        for (int i = 0; i < emu.cfg.devices; i++)
            ctx_init(&emu.ctx[i], i);
        atomic_store_explicit(&emu.initialized, true, memory_order_release);
    }
    emu_unlock();
    return r;
}

EMU_API CUresult cuDriverGetVersion(int *driverVersion)
{
    EMU_FAST_ENTER(cuDriverGetVersion);
    if (!driverVersion)
        return CUDA_ERROR_INVALID_VALUE;
    *driverVersion = EMU_DRIVER_VERSION;
    return CUDA_SUCCESS;
}

EMU_API CUresult cuDeviceGetCount(int *count)
{
    CUresult r;

    EMU_FAST_ENTER(cuDeviceGetCount);
    r = emu_check_init();
    if (r == CUDA_SUCCESS && !count)
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS)
        *count = emu.cfg.devices;
    return r;
}

EMU_API CUresult cuDeviceGet(CUdevice *device, int ordinal)
{
    CUresult r;

    EMU_FAST_ENTER(cuDeviceGet);
    r = emu_check_init();
    if (r == CUDA_SUCCESS && !device)
        r = CUDA_ERROR_INVALID_VALUE;
    else if (r == CUDA_SUCCESS && (ordinal < 0 || ordinal >= emu.cfg.devices))
        r = CUDA_ERROR_INVALID_DEVICE;
    if (r == CUDA_SUCCESS)
        *device = ordinal;
    return r;
}

EMU_API CUresult cuDeviceGetName(char *name, int len, CUdevice dev)
{
    CUresult r;

    EMU_ENTER(cuDeviceGetName);
    emu_lock();
    r = emu_check_device(dev);
    if (r == CUDA_SUCCESS && (!name || len <= 0))
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS)
        snprintf(name, (size_t)len, "fragless emulated GPU (%s)", emu.cfg.name);
    emu_unlock();
    return r;
}

EMU_API CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev)
{
    CUresult r;

    EMU_ENTER(cuDeviceTotalMem_v2);
    emu_lock();
    r = emu_check_device(dev);
    if (r == CUDA_SUCCESS && !bytes)
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS)
        *bytes = emu.cfg.capacity;
    emu_unlock();
    return r;
}

static CUresult device_uuid(CUuuid *uuid, CUdevice dev)
{
    CUresult r;
    uint64_t h = 1469598103934665603ull; /* FNV-1a of the name, then the ordinal */

    emu_lock();
    r = emu_check_device(dev);
    if (r == CUDA_SUCCESS && !uuid)
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS) {
        for (const char *p = emu.cfg.name; *p; p++)
            h = (h ^ (unsigned char)*p) * 1099511628211ull;
        h = (h ^ (uint64_t)dev) * 1099511628211ull;
        memcpy(uuid->bytes, &h, 8);
        h = (h ^ 0x5a) * 1099511628211ull;
        memcpy(uuid->bytes + 8, &h, 8);
    }
    emu_unlock();
    return r;
}

EMU_API CUresult cuDeviceGetUuid(CUuuid *uuid, CUdevice dev)
{
    EMU_ENTER(cuDeviceGetUuid);
    return device_uuid(uuid, dev);
}

EMU_API CUresult cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice dev)
{
    EMU_ENTER(cuDeviceGetUuid_v2);
    return device_uuid(uuid, dev);
}

/* Values shaped like an H100-class device; unlisted valid attributes read as 0. */
static int attribute_value(CUdevice_attribute a)
{
    switch (a) {
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK:
        return 1024;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X:
        return 1024;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y:
        return 1024;
    case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z:
        return 64;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X:
        return 2147483647;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y:
        return 65535;
    case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z:
        return 65535;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK:
        return 49152;
    case CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY:
        return 65536;
    case CU_DEVICE_ATTRIBUTE_WARP_SIZE:
        return 32;
    case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK:
        return 65536;
    case CU_DEVICE_ATTRIBUTE_CLOCK_RATE:
        return 1980000;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT:
        return 132;
    case CU_DEVICE_ATTRIBUTE_INTEGRATED:
        return 0;
    case CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY:
        return 1;
    case CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS:
        return 1;
    case CU_DEVICE_ATTRIBUTE_ECC_ENABLED:
        return 1;
    case CU_DEVICE_ATTRIBUTE_PCI_BUS_ID:
        return 0x18;
    case CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE:
        return 2619000;
    case CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH:
        return 5120;
    case CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE:
        return 52428800;
    case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR:
        return 2048;
    case CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT:
        return 3;
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING:
        return 1;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR:
        return 9;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR:
        return 0;
    case CU_DEVICE_ATTRIBUTE_STREAM_PRIORITIES_SUPPORTED:
        return 1;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR:
        return 233472;
    case CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY:
        return 1;
    case CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS:
        return 1;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN:
        return 232448;
    case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED:
        return emu.cfg.vmm;
    case CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED:
        return 0;
    case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED:
        return 1;
    case CU_DEVICE_ATTRIBUTE_MEMPOOL_SUPPORTED_HANDLE_TYPES:
        return 0;
    case CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_SUPPORTED:
        return 0;
    default:
        return 0;
    }
}

EMU_API CUresult cuDeviceGetAttribute(int *pi, CUdevice_attribute attrib, CUdevice dev)
{
    CUresult r;

    EMU_FAST_ENTER(cuDeviceGetAttribute);
    r = emu_check_device(dev);
    if (r == CUDA_SUCCESS && (!pi || (int)attrib < 1 || attrib >= CU_DEVICE_ATTRIBUTE_MAX))
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS)
        *pi = attribute_value(attrib);
    return r;
}

EMU_API CUresult cuDeviceCanAccessPeer(int *canAccessPeer, CUdevice dev, CUdevice peerDev)
{
    CUresult r;

    EMU_ENTER(cuDeviceCanAccessPeer);
    emu_lock();
    r = emu_check_device(dev);
    if (r == CUDA_SUCCESS)
        r = emu_check_device(peerDev);
    if (r == CUDA_SUCCESS && !canAccessPeer)
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS)
        *canAccessPeer = dev != peerDev;
    emu_unlock();
    return r;
}

/* ---- primary contexts ----------------------------------------------------------------- */

EMU_API CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)
{
    CUresult r;

    EMU_ENTER(cuDevicePrimaryCtxRetain);
    emu_lock();
    r = emu_check_device(dev);
    if (r == CUDA_SUCCESS && !pctx)
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS) {
        emu.ctx[dev].refs++;
        *pctx = (CUcontext)&emu.ctx[dev];
    }
    emu_unlock();
    return r;
}

/* Destroys every resource the context owns (its allocations, streams, events, fills). */
static void emu_ctx_teardown(struct emu_ctx *ctx)
{
    struct emu_alloc *a, *tmp;

    emu_wait_locked(emu_ctx_point(ctx));
    emu_pool_teardown(ctx);
    emu_fills_drop(ctx);
    emu_events_teardown(ctx);
    emu_streams_teardown(ctx);
    HASH_ITER(hh, emu.allocs, a, tmp)
    {
        if (a->ctx == ctx && a->kind == EMU_ALLOC_PLAIN) {
            HASH_DEL(emu.allocs, a);
            emu_alloc_unmap(a);
        }
    }
    ctx->sticky = CUDA_SUCCESS;
    ctx->legacy.busy_until = 0;
    peer_enabled[ctx->device] = 0;
}

EMU_API CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev)
{
    CUresult r;

    EMU_ENTER(cuDevicePrimaryCtxRelease_v2);
    emu_lock();
    r = emu_check_device(dev);
    if (r == CUDA_SUCCESS && emu.ctx[dev].refs == 0)
        r = CUDA_ERROR_INVALID_CONTEXT;
    if (r == CUDA_SUCCESS && --emu.ctx[dev].refs == 0)
        emu_ctx_teardown(&emu.ctx[dev]);
    emu_unlock();
    return r;
}

EMU_API CUresult cuDevicePrimaryCtxReset_v2(CUdevice dev)
{
    CUresult r;

    EMU_ENTER(cuDevicePrimaryCtxReset_v2);
    emu_lock();
    r = emu_check_device(dev);
    if (r == CUDA_SUCCESS)
        emu_ctx_teardown(&emu.ctx[dev]);
    emu_unlock();
    return r;
}

EMU_API CUresult cuDevicePrimaryCtxGetState(CUdevice dev, unsigned int *flags, int *active)
{
    CUresult r;

    EMU_ENTER(cuDevicePrimaryCtxGetState);
    emu_lock();
    r = emu_check_device(dev);
    if (r == CUDA_SUCCESS && (!flags || !active))
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS) {
        *flags = emu.ctx[dev].flags;
        *active = emu.ctx[dev].refs > 0;
    }
    emu_unlock();
    return r;
}

EMU_API CUresult cuDevicePrimaryCtxSetFlags_v2(CUdevice dev, unsigned int flags)
{
    CUresult r;

    EMU_ENTER(cuDevicePrimaryCtxSetFlags_v2);
    emu_lock();
    r = emu_check_device(dev);
    if (r == CUDA_SUCCESS && (flags & ~0x1fu))
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS)
        emu.ctx[dev].flags = flags;
    emu_unlock();
    return r;
}

/* ---- the per-thread context stack -------------------------------------------------- */

EMU_API CUresult cuCtxGetCurrent(CUcontext *pctx)
{
    CUresult r;

    EMU_FAST_ENTER(cuCtxGetCurrent);
    r = emu_check_init();
    if (r == CUDA_SUCCESS && !pctx)
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS)
        *pctx = (CUcontext)ctx_top();
    emu_latency("cuCtxGetCurrent", 0);
    return r;
}

EMU_API CUresult cuCtxSetCurrent(CUcontext ctx)
{
    CUresult r;
    struct emu_ctx *c = NULL;

    EMU_FAST_ENTER(cuCtxSetCurrent);
    r = emu_check_init();
    if (r == CUDA_SUCCESS && ctx && !(c = emu_ctx_of(ctx)))
        r = CUDA_ERROR_INVALID_CONTEXT;
    if (r == CUDA_SUCCESS) {
        if (!c && ctx_depth > 0)
            ctx_depth--;
        else if (c && ctx_depth > 0)
            ctx_stack[ctx_depth - 1] = c;
        else if (c)
            ctx_stack[ctx_depth++] = c;
    }
    return r;
}

EMU_API CUresult cuCtxPushCurrent_v2(CUcontext ctx)
{
    CUresult r;
    struct emu_ctx *c = NULL;

    EMU_FAST_ENTER(cuCtxPushCurrent_v2);
    r = emu_check_init();
    if (r == CUDA_SUCCESS && !(c = emu_ctx_of(ctx)))
        r = CUDA_ERROR_INVALID_CONTEXT;
    if (r == CUDA_SUCCESS && ctx_depth == EMU_MAX_CTX_STACK)
        r = CUDA_ERROR_OUT_OF_MEMORY;
    if (r == CUDA_SUCCESS)
        ctx_stack[ctx_depth++] = c;
    return r;
}

EMU_API CUresult cuCtxPopCurrent_v2(CUcontext *pctx)
{
    CUresult r;

    EMU_FAST_ENTER(cuCtxPopCurrent_v2);
    r = emu_check_init();
    if (r == CUDA_SUCCESS && ctx_depth == 0)
        r = CUDA_ERROR_INVALID_CONTEXT;
    if (r == CUDA_SUCCESS) {
        ctx_depth--;
        if (pctx)
            *pctx = (CUcontext)ctx_stack[ctx_depth];
    }
    return r;
}

EMU_API CUresult cuCtxGetDevice(CUdevice *device)
{
    CUresult r;
    struct emu_ctx *c = NULL;

    EMU_FAST_ENTER(cuCtxGetDevice);
    r = emu_check_init();
    if (r == CUDA_SUCCESS && !(c = ctx_top()))
        r = CUDA_ERROR_INVALID_CONTEXT;
    if (r == CUDA_SUCCESS && !device)
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS)
        *device = c->device;
    return r;
}

EMU_API CUresult cuCtxSynchronize(void)
{
    CUresult r;
    struct emu_ctx *c = NULL;

    EMU_ENTER(cuCtxSynchronize);
    emu_lock();
    r = emu_current(&c);
    if (r == CUDA_SUCCESS) {
        emu_wait_locked(emu_ctx_point(c));
        emu_pool_trim(c->device);
        r = c->sticky;
    }
    emu_unlock();
    return r;
}

EMU_API CUresult cuCtxGetStreamPriorityRange(int *leastPriority, int *greatestPriority)
{
    CUresult r;
    struct emu_ctx *c = NULL;

    EMU_ENTER(cuCtxGetStreamPriorityRange);
    emu_lock();
    r = emu_current(&c);
    emu_unlock();
    if (r != CUDA_SUCCESS)
        return r;
    if (leastPriority)
        *leastPriority = 0;
    if (greatestPriority)
        *greatestPriority = -5;
    return CUDA_SUCCESS;
}

EMU_API CUresult cuCtxEnablePeerAccess(CUcontext peerContext, unsigned int Flags)
{
    CUresult r;
    struct emu_ctx *c = NULL, *peer;

    EMU_ENTER(cuCtxEnablePeerAccess);
    emu_lock();
    r = emu_current(&c);
    peer = emu_ctx_of(peerContext);
    if (r == CUDA_SUCCESS && (!peer || peer->refs == 0))
        r = CUDA_ERROR_INVALID_CONTEXT;
    else if (r == CUDA_SUCCESS && Flags != 0)
        r = CUDA_ERROR_INVALID_VALUE;
    else if (r == CUDA_SUCCESS && peer->device == c->device)
        r = CUDA_ERROR_INVALID_DEVICE;
    else if (r == CUDA_SUCCESS && (peer_enabled[c->device] & (1u << peer->device)))
        r = CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED;
    if (r == CUDA_SUCCESS)
        peer_enabled[c->device] |= 1u << peer->device;
    emu_unlock();
    return r;
}

EMU_API CUresult cuCtxDisablePeerAccess(CUcontext peerContext)
{
    CUresult r;
    struct emu_ctx *c = NULL, *peer;

    EMU_ENTER(cuCtxDisablePeerAccess);
    emu_lock();
    r = emu_current(&c);
    peer = emu_ctx_of(peerContext);
    if (r == CUDA_SUCCESS && !peer)
        r = CUDA_ERROR_INVALID_CONTEXT;
    else if (r == CUDA_SUCCESS && !(peer_enabled[c->device] & (1u << peer->device)))
        r = CUDA_ERROR_PEER_ACCESS_NOT_ENABLED;
    if (r == CUDA_SUCCESS)
        peer_enabled[c->device] &= ~(1u << peer->device);
    emu_unlock();
    return r;
}
