/*
 * entry.c — handing out driver entry points: cudaGetDriverEntryPoint (asks for the runtime's
 * own version, 13000) and cudaGetDriverEntryPointByVersion forward to the driver's
 * cuGetProcAddress, whose flag and status values the runtime's enums share. As documented, a
 * symbol that is not found, or not at the requested version, is not an error: *funcPtr is
 * NULL and *driverStatus (when given) says why. The _ptsz forms default to the per-thread
 * default stream, as a program built with --default-stream per-thread expects.
 */
#include "rt.h"

static const unsigned long long known_flags =
    cudaEnableLegacyStream | cudaEnablePerThreadDefaultStream;

static cudaError_t entry_point(const char *symbol, void **funcPtr, unsigned int version,
                               unsigned long long flags, bool per_thread,
                               enum cudaDriverEntryPointQueryResult *driverStatus)
{
    if (!symbol || !funcPtr || (flags & ~known_flags))
        return rt_ret(cudaErrorInvalidValue);
    if (per_thread && flags == cudaEnableDefault)
        flags = cudaEnablePerThreadDefaultStream;
    cudaError_t e = rt_init();
    if (e != cudaSuccess)
        return rt_ret(e);
    void *fn = NULL;
    CUdriverProcAddressQueryResult status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    e = rt_proc_address(symbol, &fn, (int)version, flags, &status);
    if (e != cudaSuccess && e != cudaErrorSymbolNotFound)
        return rt_ret(e);
    if (status != CU_GET_PROC_ADDRESS_SUCCESS)
        fn = NULL;
    else if (!fn)
        status = CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    *funcPtr = fn;
    if (driverStatus)
        *driverStatus = (enum cudaDriverEntryPointQueryResult)status;
    return cudaSuccess;
}

RT_EXPORT cudaError_t cudaGetDriverEntryPoint(const char *symbol, void **funcPtr,
                                              unsigned long long flags,
                                              enum cudaDriverEntryPointQueryResult *driverStatus)
{
    return entry_point(symbol, funcPtr, RT_VERSION, flags, false, driverStatus);
}

RT_EXPORT cudaError_t
cudaGetDriverEntryPoint_ptsz(const char *symbol, void **funcPtr, unsigned long long flags,
                             enum cudaDriverEntryPointQueryResult *driverStatus)
{
    return entry_point(symbol, funcPtr, RT_VERSION, flags, true, driverStatus);
}

RT_EXPORT cudaError_t cudaGetDriverEntryPointByVersion(
    const char *symbol, void **funcPtr, unsigned int cudaVersion, unsigned long long flags,
    enum cudaDriverEntryPointQueryResult *driverStatus)
{
    return entry_point(symbol, funcPtr, cudaVersion, flags, false, driverStatus);
}

RT_EXPORT cudaError_t cudaGetDriverEntryPointByVersion_ptsz(
    const char *symbol, void **funcPtr, unsigned int cudaVersion, unsigned long long flags,
    enum cudaDriverEntryPointQueryResult *driverStatus)
{
    return entry_point(symbol, funcPtr, cudaVersion, flags, true, driverStatus);
}
