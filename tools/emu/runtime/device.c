/*
 * device.c — device management: count, current device, synchronize, reset, attributes, peer
 * access, and the driver and runtime versions.
 */
#include "rt.h"

RT_EXPORT cudaError_t cudaGetDeviceCount(int *count)
{
    if (!count)
        return rt_ret(cudaErrorInvalidValue);
    return rt_ret(rt_device_count(count));
}

RT_EXPORT cudaError_t cudaGetDevice(int *device)
{
    if (!device)
        return rt_ret(cudaErrorInvalidValue);
    return rt_ret(rt_current_device(device));
}

RT_EXPORT cudaError_t cudaSetDevice(int device)
{
    return rt_ret(rt_set_device(device));
}

RT_EXPORT cudaError_t cudaDeviceSynchronize(void)
{
    cudaError_t e = rt_enter();
    if (e != cudaSuccess)
        return rt_ret(e);
    return rt_ret_drv(rt_drv()->ctx_synchronize());
}

RT_EXPORT cudaError_t cudaDeviceReset(void)
{
    int device;
    cudaError_t e = rt_current_device(&device);
    if (e != cudaSuccess)
        return rt_ret(e);
    CUdevice dev;
    e = rt_device_handle(device, &dev);
    if (e != cudaSuccess)
        return rt_ret(e);
    RT_NEED(rt_drv(), primary_ctx_reset);
    /* The reset frees everything the context held but keeps the runtime's reference (the
     * driver documents that a reset does not release), so every thread that has the context
     * current goes on using it. */
    CUresult r = rt_drv()->primary_ctx_reset(dev);
    if (r != CUDA_SUCCESS)
        return rt_ret_drv(r);
    rt_clear_sticky(device);
    return cudaSuccess;
}

RT_EXPORT cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device)
{
    if (!value)
        return rt_ret(cudaErrorInvalidValue);
    CUdevice dev;
    cudaError_t e = rt_device_handle(device, &dev);
    if (e != cudaSuccess)
        return rt_ret(e);
    /* cudaDeviceAttr shares its values with CUdevice_attribute */
    return rt_ret_drv(rt_drv()->device_get_attribute(value, (CUdevice_attribute)attr, dev));
}

RT_EXPORT cudaError_t cudaDeviceCanAccessPeer(int *canAccessPeer, int device, int peerDevice)
{
    if (!canAccessPeer)
        return rt_ret(cudaErrorInvalidValue);
    CUdevice dev, peer;
    cudaError_t e = rt_device_handle(device, &dev);
    if (e == cudaSuccess)
        e = rt_device_handle(peerDevice, &peer);
    if (e != cudaSuccess)
        return rt_ret(e);
    RT_NEED(rt_drv(), device_can_access_peer);
    return rt_ret_drv(rt_drv()->device_can_access_peer(canAccessPeer, dev, peer));
}

RT_EXPORT cudaError_t cudaDeviceEnablePeerAccess(int peerDevice, unsigned int flags)
{
    if (flags != 0)
        return rt_ret(cudaErrorInvalidValue);
    CUcontext peer;
    cudaError_t e = rt_enter();
    if (e == cudaSuccess)
        e = rt_primary_ctx(peerDevice, &peer);
    if (e != cudaSuccess)
        return rt_ret(e);
    RT_NEED(rt_drv(), ctx_enable_peer_access);
    return rt_ret_drv(rt_drv()->ctx_enable_peer_access(peer, 0));
}

/* 0 when there is no driver, as documented; does not need the device. */
RT_EXPORT cudaError_t cudaDriverGetVersion(int *driverVersion)
{
    if (!driverVersion)
        return rt_ret(cudaErrorInvalidValue);
    const struct rt_driver *drv = rt_drv_loaded();
    *driverVersion = 0;
    if (!drv)
        return cudaSuccess;
    return rt_ret_drv(drv->driver_get_version(driverVersion));
}

RT_EXPORT cudaError_t cudaRuntimeGetVersion(int *runtimeVersion)
{
    if (!runtimeVersion)
        return rt_ret(cudaErrorInvalidValue);
    *runtimeVersion = RT_VERSION;
    return cudaSuccess;
}
