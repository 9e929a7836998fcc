/*
 * procaddr.c — cuGetProcAddress: maps a base symbol name, a CUDA version and flags to the
 * versioned entry point (e.g. "cuMemAlloc" → cuMemAlloc_v2 from 3.2 on), picking the
 * _ptsz/_ptds variant for CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM. Both the CUDA 12+
 * form with symbolStatus (cuGetProcAddress_v2) and the 11.x four-argument form.
 */
#include <dlfcn.h>
#include <string.h>

#include "emu.h"

/* cuda.h maps these names to their newest versions; the table wants the old ones too. */
#undef cuGetProcAddress
#undef cuEventElapsedTime
#undef cuDeviceGetUuid
#undef cuStreamGetCaptureInfo
#undef cuStreamBeginCapture
#undef cuStreamDestroy
CUresult cuStreamBeginCapture(CUstream hStream);
CUresult cuStreamBeginCapture_ptsz(CUstream hStream);
CUresult cuStreamDestroy(CUstream hStream);
CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags);
CUresult cuEventElapsedTime(float *pMilliseconds, CUevent hStart, CUevent hEnd);
CUresult cuDeviceGetUuid(CUuuid *uuid, CUdevice dev);
CUresult cuStreamGetCaptureInfo(CUstream hStream, CUstreamCaptureStatus *status, cuuint64_t *id);
CUresult cuStreamGetCaptureInfo_ptsz(CUstream hStream, CUstreamCaptureStatus *status,
                                     cuuint64_t *id);

struct proc {
    const char *symbol; /* base name */
    int version;        /* CUDA version that introduced this variant */
    const char *name;   /* exported name of that variant */
    void *fn;
    const char *pt_name; /* _ptsz/_ptds variant, or NULL */
    void *pt_fn;
};

#define P(sym, ver, fn)                          \
    {                                            \
#sym, ver, #fn, (void *)(fn), NULL, NULL \
    }
#define PT(sym, ver, fn, pt)                            \
    {                                                   \
#sym, ver, #fn, (void *)(fn), #pt, (void *)(pt) \
    }

static const struct proc procs[] = {
    P(cuInit, 2000, cuInit),
    P(cuDriverGetVersion, 2020, cuDriverGetVersion),
    P(cuGetErrorName, 6000, cuGetErrorName),
    P(cuGetErrorString, 6000, cuGetErrorString),
    P(cuGetProcAddress, 11030, cuGetProcAddress),
    P(cuGetProcAddress, 12000, cuGetProcAddress_v2),
    P(cuDeviceGet, 2000, cuDeviceGet),
    P(cuDeviceGetCount, 2000, cuDeviceGetCount),
    P(cuDeviceGetName, 2000, cuDeviceGetName),
    P(cuDeviceTotalMem, 3020, cuDeviceTotalMem_v2),
    P(cuDeviceGetAttribute, 2000, cuDeviceGetAttribute),
    P(cuDeviceGetUuid, 9020, cuDeviceGetUuid),
    P(cuDeviceGetUuid, 11040, cuDeviceGetUuid_v2),
    P(cuDeviceCanAccessPeer, 4000, cuDeviceCanAccessPeer),
    P(cuDevicePrimaryCtxRetain, 7000, cuDevicePrimaryCtxRetain),
    P(cuDevicePrimaryCtxRelease, 11000, cuDevicePrimaryCtxRelease_v2),
    P(cuDevicePrimaryCtxReset, 11000, cuDevicePrimaryCtxReset_v2),
    P(cuDevicePrimaryCtxGetState, 7000, cuDevicePrimaryCtxGetState),
    P(cuDevicePrimaryCtxSetFlags, 11000, cuDevicePrimaryCtxSetFlags_v2),
    P(cuCtxGetCurrent, 4000, cuCtxGetCurrent),
    P(cuCtxSetCurrent, 4000, cuCtxSetCurrent),
    P(cuCtxGetDevice, 2000, cuCtxGetDevice),
    P(cuCtxSynchronize, 2000, cuCtxSynchronize),
    P(cuCtxPushCurrent, 4000, cuCtxPushCurrent_v2),
    P(cuCtxPopCurrent, 4000, cuCtxPopCurrent_v2),
    P(cuCtxGetStreamPriorityRange, 5050, cuCtxGetStreamPriorityRange),
    P(cuCtxEnablePeerAccess, 4000, cuCtxEnablePeerAccess),
    P(cuCtxDisablePeerAccess, 4000, cuCtxDisablePeerAccess),
    P(cuMemAlloc, 3020, cuMemAlloc_v2),
    P(cuMemFree, 3020, cuMemFree_v2),
    P(cuMemGetInfo, 3020, cuMemGetInfo_v2),
    P(cuMemGetAddressRange, 3020, cuMemGetAddressRange_v2),
    P(cuPointerGetAttribute, 4000, cuPointerGetAttribute),
    P(cuPointerGetAttributes, 7000, cuPointerGetAttributes),
    P(cuMemAddressReserve, 10020, cuMemAddressReserve),
    P(cuMemAddressFree, 10020, cuMemAddressFree),
    P(cuMemCreate, 10020, cuMemCreate),
    P(cuMemRelease, 10020, cuMemRelease),
    P(cuMemMap, 10020, cuMemMap),
    P(cuMemUnmap, 10020, cuMemUnmap),
    P(cuMemSetAccess, 10020, cuMemSetAccess),
    P(cuMemGetAccess, 10020, cuMemGetAccess),
    P(cuMemGetAllocationGranularity, 10020, cuMemGetAllocationGranularity),
    P(cuMemGetAllocationPropertiesFromHandle, 10020, cuMemGetAllocationPropertiesFromHandle),
    P(cuMemRetainAllocationHandle, 11000, cuMemRetainAllocationHandle),
    P(cuStreamCreate, 2000, cuStreamCreate),
    P(cuStreamCreateWithPriority, 5050, cuStreamCreateWithPriority),
    P(cuStreamDestroy, 2000, cuStreamDestroy),
    P(cuStreamDestroy, 4000, cuStreamDestroy_v2),
    PT(cuStreamSynchronize, 2000, cuStreamSynchronize, cuStreamSynchronize_ptsz),
    PT(cuStreamQuery, 2000, cuStreamQuery, cuStreamQuery_ptsz),
    PT(cuStreamWaitEvent, 3020, cuStreamWaitEvent, cuStreamWaitEvent_ptsz),
    PT(cuStreamGetCtx, 9020, cuStreamGetCtx, cuStreamGetCtx_ptsz),
    PT(cuStreamGetPriority, 5050, cuStreamGetPriority, cuStreamGetPriority_ptsz),
    PT(cuStreamGetFlags, 5050, cuStreamGetFlags, cuStreamGetFlags_ptsz),
    PT(cuStreamIsCapturing, 10000, cuStreamIsCapturing, cuStreamIsCapturing_ptsz),
    PT(cuStreamBeginCapture, 10000, cuStreamBeginCapture, cuStreamBeginCapture_ptsz),
    PT(cuStreamBeginCapture, 10010, cuStreamBeginCapture_v2, cuStreamBeginCapture_v2_ptsz),
    PT(cuStreamEndCapture, 10000, cuStreamEndCapture, cuStreamEndCapture_ptsz),
    PT(cuStreamGetCaptureInfo, 10010, cuStreamGetCaptureInfo, cuStreamGetCaptureInfo_ptsz),
    PT(cuStreamGetCaptureInfo, 11030, cuStreamGetCaptureInfo_v2, cuStreamGetCaptureInfo_v2_ptsz),
    PT(cuStreamGetCaptureInfo, 12030, cuStreamGetCaptureInfo_v3, cuStreamGetCaptureInfo_v3_ptsz),
    P(cuGraphDestroy, 10000, cuGraphDestroy),
    P(cuEventCreate, 2000, cuEventCreate),
    P(cuEventDestroy, 4000, cuEventDestroy_v2),
    PT(cuEventRecord, 2000, cuEventRecord, cuEventRecord_ptsz),
    PT(cuEventRecordWithFlags, 11010, cuEventRecordWithFlags, cuEventRecordWithFlags_ptsz),
    P(cuEventQuery, 2000, cuEventQuery),
    P(cuEventSynchronize, 2000, cuEventSynchronize),
    P(cuEventElapsedTime, 2000, cuEventElapsedTime),
    P(cuEventElapsedTime, 12080, cuEventElapsedTime_v2),
    PT(cuMemAllocAsync, 11020, cuMemAllocAsync, cuMemAllocAsync_ptsz),
    PT(cuMemFreeAsync, 11020, cuMemFreeAsync, cuMemFreeAsync_ptsz),
    PT(cuMemcpy, 4000, cuMemcpy, cuMemcpy_ptds),
    PT(cuMemcpyAsync, 4000, cuMemcpyAsync, cuMemcpyAsync_ptsz),
    PT(cuMemcpyHtoD, 3020, cuMemcpyHtoD_v2, cuMemcpyHtoD_v2_ptds),
    PT(cuMemcpyDtoH, 3020, cuMemcpyDtoH_v2, cuMemcpyDtoH_v2_ptds),
    PT(cuMemcpyDtoD, 3020, cuMemcpyDtoD_v2, cuMemcpyDtoD_v2_ptds),
    PT(cuMemcpyHtoDAsync, 3020, cuMemcpyHtoDAsync_v2, cuMemcpyHtoDAsync_v2_ptsz),
    PT(cuMemcpyDtoHAsync, 3020, cuMemcpyDtoHAsync_v2, cuMemcpyDtoHAsync_v2_ptsz),
    PT(cuMemcpyDtoDAsync, 3020, cuMemcpyDtoDAsync_v2, cuMemcpyDtoDAsync_v2_ptsz),
    PT(cuMemsetD8, 3020, cuMemsetD8_v2, cuMemsetD8_v2_ptds),
    PT(cuMemsetD32, 3020, cuMemsetD32_v2, cuMemsetD32_v2_ptds),
    PT(cuMemsetD8Async, 3020, cuMemsetD8Async, cuMemsetD8Async_ptsz),
    PT(cuMemsetD32Async, 3020, cuMemsetD32Async, cuMemsetD32Async_ptsz),
};

#undef P
#undef PT

#define PER_THREAD_MIN_VERSION 7000

static void *self;
static pthread_once_t self_once = PTHREAD_ONCE_INIT;

static void self_open(void)
{
    Dl_info info;

    if (dladdr((void *)self_open, &info) && info.dli_fname)
        self = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
}

/* This library's own definition of `name`, as the real driver hands out its own functions:
 * taking the address directly would give a same-named function preloaded in front of us
 * (an interposer's hook) instead. */
static void *own_definition(const char *name, void *fallback)
{
    void *fn;

    pthread_once(&self_once, self_open);
    fn = self ? dlsym(self, name) : NULL;
    return fn ? fn : fallback;
}

/* The newest variant of `symbol` that `version` may use; sets *found when the symbol exists
 * in any version. */
static const struct proc *proc_find(const char *symbol, int version, bool *found)
{
    const struct proc *best = NULL;

    *found = false;
    for (size_t i = 0; i < sizeof procs / sizeof procs[0]; i++) {
        if (strcmp(procs[i].symbol, symbol) != 0)
            continue;
        *found = true;
        if (procs[i].version <= version && (!best || procs[i].version > best->version))
            best = &procs[i];
    }
    return best;
}

static CUresult proc_lookup(const char *symbol, void **pfn, int version, cuuint64_t flags,
                            CUdriverProcAddressQueryResult *status)
{
    const struct proc *p;
    bool found;

    if (!symbol || !pfn || version > EMU_DRIVER_VERSION ||
        (flags & ~(cuuint64_t)(CU_GET_PROC_ADDRESS_LEGACY_STREAM |
                               CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM)))
        return CUDA_ERROR_INVALID_VALUE;
    p = proc_find(symbol, version, &found);
    *pfn = NULL;
    if (status)
        *status = !found ? CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND
                  : !p   ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT
                         : CU_GET_PROC_ADDRESS_SUCCESS;
    if (!p)
        return CUDA_SUCCESS; /* as documented for CUDA 13: success with a NULL pointer */
    if ((flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) && p->pt_name &&
        version >= PER_THREAD_MIN_VERSION)
        *pfn = own_definition(p->pt_name, p->pt_fn);
    else
        *pfn = own_definition(p->name, p->fn);
    return CUDA_SUCCESS;
}

EMU_API CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion,
                                     cuuint64_t flags, CUdriverProcAddressQueryResult *symbolStatus)
{
    EMU_ENTER(cuGetProcAddress_v2);
    return proc_lookup(symbol, pfn, cudaVersion, flags, symbolStatus);
}

/* The CUDA 11 form has no status: a symbol it cannot give is CUDA_ERROR_NOT_FOUND. */
EMU_API CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags)
{
    CUresult r;

    EMU_ENTER(cuGetProcAddress);
    r = proc_lookup(symbol, pfn, cudaVersion, flags, NULL);
    if (r == CUDA_SUCCESS && !*pfn)
        r = CUDA_ERROR_NOT_FOUND;
    return r;
}
