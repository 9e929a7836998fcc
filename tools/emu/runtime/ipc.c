/*
 * ipc.c — sharing device memory between processes: cudaIpcGetMemHandle, cudaIpcOpenMemHandle
 * and cudaIpcCloseMemHandle, forwarded to the driver's cuIpc* calls (cudaErrorNotSupported
 * when the driver has none). The runtime and driver handles are the same 64 bytes.
 */
#include "rt.h"

#include <stdint.h>
#include <string.h>

_Static_assert(sizeof(cudaIpcMemHandle_t) == sizeof(CUipcMemHandle), "IPC handle sizes differ");

RT_EXPORT cudaError_t cudaIpcGetMemHandle(cudaIpcMemHandle_t *handle, void *devPtr)
{
    if (!handle)
        return rt_ret(cudaErrorInvalidValue);
    cudaError_t e = rt_enter();
    if (e != cudaSuccess)
        return rt_ret(e);
    RT_NEED(rt_drv(), ipc_get_mem_handle);
    CUipcMemHandle h;
    CUresult r = rt_drv()->ipc_get_mem_handle(&h, (CUdeviceptr)(uintptr_t)devPtr);
    if (r != CUDA_SUCCESS)
        return rt_ret_drv(r);
    memcpy(handle, &h, sizeof h);
    return cudaSuccess;
}

RT_EXPORT cudaError_t cudaIpcOpenMemHandle(void **devPtr, cudaIpcMemHandle_t handle,
                                           unsigned int flags)
{
    if (!devPtr)
        return rt_ret(cudaErrorInvalidValue);
    cudaError_t e = rt_enter();
    if (e != cudaSuccess)
        return rt_ret(e);
    RT_NEED(rt_drv(), ipc_open_mem_handle);
    CUipcMemHandle h;
    memcpy(&h, &handle, sizeof h);
    CUdeviceptr p = 0;
    CUresult r = rt_drv()->ipc_open_mem_handle(&p, h, flags);
    if (r != CUDA_SUCCESS)
        return rt_ret_drv(r);
    *devPtr = (void *)(uintptr_t)p;
    return cudaSuccess;
}

RT_EXPORT cudaError_t cudaIpcCloseMemHandle(void *devPtr)
{
    cudaError_t e = rt_enter();
    if (e != cudaSuccess)
        return rt_ret(e);
    RT_NEED(rt_drv(), ipc_close_mem_handle);
    return rt_ret_drv(rt_drv()->ipc_close_mem_handle((CUdeviceptr)(uintptr_t)devPtr));
}
