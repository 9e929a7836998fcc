/*
 * rt.h — private interfaces of the emulated CUDA runtime (libcudart.so.13): the driver table
 * resolved through cuGetProcAddress, per-thread device and context binding, and error
 * bookkeeping. Every exported cuda* function is declared by cuda_runtime_api.h (included
 * here with default visibility) or below (the per-thread-default-stream variants).
 */
#ifndef FRAGLESS_EMU_RT_H
#define FRAGLESS_EMU_RT_H

#include <stdbool.h>
#include <stddef.h>

#include <cuda.h>

#pragma GCC visibility push(default)
#include <cuda_runtime_api.h>

/* The _ptsz/_ptds names a program compiled with CUDA_API_PER_THREAD_DEFAULT_STREAM calls. */
cudaError_t cudaMemcpy_ptds(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind);
cudaError_t cudaMemset_ptds(void *devPtr, int value, size_t count);
cudaError_t cudaMemcpyAsync_ptsz(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind,
                                 cudaStream_t stream);
cudaError_t cudaMemsetAsync_ptsz(void *devPtr, int value, size_t count, cudaStream_t stream);
cudaError_t cudaMallocAsync_ptsz(void **devPtr, size_t size, cudaStream_t hStream);
cudaError_t cudaFreeAsync_ptsz(void *devPtr, cudaStream_t hStream);
cudaError_t cudaStreamQuery_ptsz(cudaStream_t stream);
cudaError_t cudaStreamSynchronize_ptsz(cudaStream_t stream);
cudaError_t cudaStreamWaitEvent_ptsz(cudaStream_t stream, cudaEvent_t event, unsigned int flags);
cudaError_t cudaStreamBeginCapture_ptsz(cudaStream_t stream, enum cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture_ptsz(cudaStream_t stream, cudaGraph_t *pGraph);
cudaError_t cudaStreamIsCapturing_ptsz(cudaStream_t stream,
                                       enum cudaStreamCaptureStatus *pCaptureStatus);
cudaError_t cudaEventRecord_ptsz(cudaEvent_t event, cudaStream_t stream);
cudaError_t cudaGetDriverEntryPoint_ptsz(const char *symbol, void **funcPtr,
                                         unsigned long long flags,
                                         enum cudaDriverEntryPointQueryResult *driverStatus);
cudaError_t
cudaGetDriverEntryPointByVersion_ptsz(const char *symbol, void **funcPtr, unsigned int cudaVersion,
                                      unsigned long long flags,
                                      enum cudaDriverEntryPointQueryResult *driverStatus);
#pragma GCC visibility pop

/* Marks a definition as part of the library's ABI. */
#define RT_EXPORT __attribute__((visibility("default")))

/* The CUDA version this runtime reports and asks the driver for. */
#define RT_VERSION 13000

/*
 * The driver entry points the runtime uses: field, name given to cuGetProcAddress (the base
 * name, as the real runtime asks), the cuda.h declaration whose type the field has, and
 * whether the runtime cannot start without it.
 */
#define RT_DRIVER_FUNCS(X)                                                                  \
    X(init, "cuInit", cuInit, true)                                                         \
    X(driver_get_version, "cuDriverGetVersion", cuDriverGetVersion, true)                   \
    X(device_get, "cuDeviceGet", cuDeviceGet, true)                                         \
    X(device_get_count, "cuDeviceGetCount", cuDeviceGetCount, true)                         \
    X(device_get_attribute, "cuDeviceGetAttribute", cuDeviceGetAttribute, true)             \
    X(device_get_name, "cuDeviceGetName", cuDeviceGetName, true)                            \
    X(device_total_mem, "cuDeviceTotalMem", cuDeviceTotalMem_v2, true)                      \
    X(device_get_uuid, "cuDeviceGetUuid", cuDeviceGetUuid_v2, false)                        \
    X(primary_ctx_retain, "cuDevicePrimaryCtxRetain", cuDevicePrimaryCtxRetain, true)       \
    X(primary_ctx_release, "cuDevicePrimaryCtxRelease", cuDevicePrimaryCtxRelease_v2, true) \
    X(primary_ctx_reset, "cuDevicePrimaryCtxReset", cuDevicePrimaryCtxReset_v2, false)      \
    X(ctx_get_current, "cuCtxGetCurrent", cuCtxGetCurrent, true)                            \
    X(ctx_set_current, "cuCtxSetCurrent", cuCtxSetCurrent, true)                            \
    X(ctx_get_device, "cuCtxGetDevice", cuCtxGetDevice, false)                              \
    X(ctx_synchronize, "cuCtxSynchronize", cuCtxSynchronize, true)                          \
    X(ctx_enable_peer_access, "cuCtxEnablePeerAccess", cuCtxEnablePeerAccess, false)        \
    X(device_can_access_peer, "cuDeviceCanAccessPeer", cuDeviceCanAccessPeer, false)        \
    X(mem_alloc, "cuMemAlloc", cuMemAlloc_v2, true)                                         \
    X(mem_free, "cuMemFree", cuMemFree_v2, true)                                            \
    X(mem_get_info, "cuMemGetInfo", cuMemGetInfo_v2, true)                                  \
    X(mem_alloc_async, "cuMemAllocAsync", cuMemAllocAsync, false)                           \
    X(mem_free_async, "cuMemFreeAsync", cuMemFreeAsync, false)                              \
    X(memcpy, "cuMemcpy", cuMemcpy, true)                                                   \
    X(memcpy_async, "cuMemcpyAsync", cuMemcpyAsync, true)                                   \
    X(memset_d8, "cuMemsetD8", cuMemsetD8_v2, true)                                         \
    X(memset_d8_async, "cuMemsetD8Async", cuMemsetD8Async, true)                            \
    X(pointer_get_attribute, "cuPointerGetAttribute", cuPointerGetAttribute, false)         \
    X(stream_create, "cuStreamCreate", cuStreamCreate, true)                                \
    X(stream_create_prio, "cuStreamCreateWithPriority", cuStreamCreateWithPriority, false)  \
    X(stream_destroy, "cuStreamDestroy", cuStreamDestroy_v2, true)                          \
    X(stream_synchronize, "cuStreamSynchronize", cuStreamSynchronize, true)                 \
    X(stream_query, "cuStreamQuery", cuStreamQuery, true)                                   \
    X(stream_wait_event, "cuStreamWaitEvent", cuStreamWaitEvent, true)                      \
    X(stream_begin_capture, "cuStreamBeginCapture", cuStreamBeginCapture_v2, false)         \
    X(stream_end_capture, "cuStreamEndCapture", cuStreamEndCapture, false)                  \
    X(stream_is_capturing, "cuStreamIsCapturing", cuStreamIsCapturing, false)               \
    X(graph_destroy, "cuGraphDestroy", cuGraphDestroy, false)                               \
    X(event_create, "cuEventCreate", cuEventCreate, true)                                   \
    X(event_record, "cuEventRecord", cuEventRecord, true)                                   \
    X(event_query, "cuEventQuery", cuEventQuery, true)                                      \
    X(event_synchronize, "cuEventSynchronize", cuEventSynchronize, true)                    \
    X(event_destroy, "cuEventDestroy", cuEventDestroy_v2, true)                             \
    X(event_elapsed_time, "cuEventElapsedTime", cuEventElapsedTime_v2, true)                \
    X(ipc_get_mem_handle, "cuIpcGetMemHandle", cuIpcGetMemHandle, false)                    \
    X(ipc_open_mem_handle, "cuIpcOpenMemHandle", cuIpcOpenMemHandle_v2, false)              \
    X(ipc_close_mem_handle, "cuIpcCloseMemHandle", cuIpcCloseMemHandle, false)

#define RT_DRIVER_FIELD(field, name, decl, required) __typeof__(decl) *field;
struct rt_driver {
    RT_DRIVER_FUNCS(RT_DRIVER_FIELD)
};
#undef RT_DRIVER_FIELD

/* Which of the two tables a call uses: the legacy default stream, or per-thread default stream
 * (the _ptsz/_ptds entry points; resolved with CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM). */
enum rt_stream_mode { RT_LEGACY, RT_PER_THREAD };

/* loader.c: loads libcuda.so.1 and resolves the tables, once. */
cudaError_t rt_init(void);
const struct rt_driver *rt_drv(void);
const struct rt_driver *rt_drv_loaded(void);
cudaError_t rt_drv_mode(enum rt_stream_mode mode, const struct rt_driver **out);
cudaError_t rt_proc_address(const char *symbol, void **pfn, int version, cuuint64_t flags,
                            CUdriverProcAddressQueryResult *status);

/* context.c: per-thread current device; the primary context made current on first use. */
cudaError_t rt_enter(void);
/* rt_enter, and *drv the table for mode (legacy or per-thread default stream). */
cudaError_t rt_enter_mode(enum rt_stream_mode mode, const struct rt_driver **drv);
cudaError_t rt_current_device(int *device);
cudaError_t rt_set_device(int device);
cudaError_t rt_device_handle(int device, CUdevice *dev);
cudaError_t rt_primary_ctx(int device, CUcontext *ctx);
cudaError_t rt_device_count(int *count);
int rt_thread_device(void);
/* Registers the fork handler that keeps the context lock sane in a child. */
void rt_context_atfork(void);

/* error.c: CUresult → cudaError_t, last error per thread, sticky errors per device. */
cudaError_t rt_err(CUresult r);
cudaError_t rt_ret(cudaError_t e);
cudaError_t rt_ret_drv(CUresult r);
void rt_clear_sticky(int device);

/* A missing optional driver entry point fails the call that needs it. */
#define RT_NEED(drv, field)                       \
    do {                                          \
        if (!(drv)->field)                        \
            return rt_ret(cudaErrorNotSupported); \
    } while (0)

#endif
