/*
 * props.c — cudaGetDeviceProperties: CUDA 13's struct cudaDeviceProp filled from the driver
 * (name, UUID, total memory, and every field below from its device attribute). Texture and
 * surface limits, LUID and the fields without a device attribute stay zero. An attribute the
 * driver does not know (CUDA_ERROR_INVALID_VALUE) leaves its field zero; any other driver
 * error fails the call.
 */
#include "rt.h"

#include <string.h>

struct prop_field {
    size_t offset;
    bool is_size; /* size_t field, else int */
    CUdevice_attribute attr;
};

#define INT_FIELD(f, a)                                                    \
    {                                                                      \
        offsetof(struct cudaDeviceProp, f), false, CU_DEVICE_ATTRIBUTE_##a \
    }
#define SIZE_FIELD(f, a)                                                  \
    {                                                                     \
        offsetof(struct cudaDeviceProp, f), true, CU_DEVICE_ATTRIBUTE_##a \
    }
static const struct prop_field fields[] = {
    SIZE_FIELD(sharedMemPerBlock, MAX_SHARED_MEMORY_PER_BLOCK),
    INT_FIELD(regsPerBlock, MAX_REGISTERS_PER_BLOCK),
    INT_FIELD(warpSize, WARP_SIZE),
    SIZE_FIELD(memPitch, MAX_PITCH),
    INT_FIELD(maxThreadsPerBlock, MAX_THREADS_PER_BLOCK),
    INT_FIELD(maxThreadsDim[0], MAX_BLOCK_DIM_X),
    INT_FIELD(maxThreadsDim[1], MAX_BLOCK_DIM_Y),
    INT_FIELD(maxThreadsDim[2], MAX_BLOCK_DIM_Z),
    INT_FIELD(maxGridSize[0], MAX_GRID_DIM_X),
    INT_FIELD(maxGridSize[1], MAX_GRID_DIM_Y),
    INT_FIELD(maxGridSize[2], MAX_GRID_DIM_Z),
    SIZE_FIELD(totalConstMem, TOTAL_CONSTANT_MEMORY),
    INT_FIELD(major, COMPUTE_CAPABILITY_MAJOR),
    INT_FIELD(minor, COMPUTE_CAPABILITY_MINOR),
    SIZE_FIELD(textureAlignment, TEXTURE_ALIGNMENT),
    SIZE_FIELD(texturePitchAlignment, TEXTURE_PITCH_ALIGNMENT),
    INT_FIELD(multiProcessorCount, MULTIPROCESSOR_COUNT),
    INT_FIELD(integrated, INTEGRATED),
    INT_FIELD(canMapHostMemory, CAN_MAP_HOST_MEMORY),
    SIZE_FIELD(surfaceAlignment, SURFACE_ALIGNMENT),
    INT_FIELD(concurrentKernels, CONCURRENT_KERNELS),
    INT_FIELD(ECCEnabled, ECC_ENABLED),
    INT_FIELD(pciBusID, PCI_BUS_ID),
    INT_FIELD(pciDeviceID, PCI_DEVICE_ID),
    INT_FIELD(pciDomainID, PCI_DOMAIN_ID),
    INT_FIELD(tccDriver, TCC_DRIVER),
    INT_FIELD(asyncEngineCount, ASYNC_ENGINE_COUNT),
    INT_FIELD(unifiedAddressing, UNIFIED_ADDRESSING),
    INT_FIELD(memoryBusWidth, GLOBAL_MEMORY_BUS_WIDTH),
    INT_FIELD(l2CacheSize, L2_CACHE_SIZE),
    INT_FIELD(persistingL2CacheMaxSize, MAX_PERSISTING_L2_CACHE_SIZE),
    INT_FIELD(maxThreadsPerMultiProcessor, MAX_THREADS_PER_MULTIPROCESSOR),
    INT_FIELD(streamPrioritiesSupported, STREAM_PRIORITIES_SUPPORTED),
    INT_FIELD(globalL1CacheSupported, GLOBAL_L1_CACHE_SUPPORTED),
    INT_FIELD(localL1CacheSupported, LOCAL_L1_CACHE_SUPPORTED),
    SIZE_FIELD(sharedMemPerMultiprocessor, MAX_SHARED_MEMORY_PER_MULTIPROCESSOR),
    INT_FIELD(regsPerMultiprocessor, MAX_REGISTERS_PER_MULTIPROCESSOR),
    INT_FIELD(managedMemory, MANAGED_MEMORY),
    INT_FIELD(isMultiGpuBoard, MULTI_GPU_BOARD),
    INT_FIELD(multiGpuBoardGroupID, MULTI_GPU_BOARD_GROUP_ID),
    INT_FIELD(hostNativeAtomicSupported, HOST_NATIVE_ATOMIC_SUPPORTED),
    INT_FIELD(pageableMemoryAccess, PAGEABLE_MEMORY_ACCESS),
    INT_FIELD(concurrentManagedAccess, CONCURRENT_MANAGED_ACCESS),
    INT_FIELD(computePreemptionSupported, COMPUTE_PREEMPTION_SUPPORTED),
    INT_FIELD(canUseHostPointerForRegisteredMem, CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM),
    INT_FIELD(cooperativeLaunch, COOPERATIVE_LAUNCH),
    SIZE_FIELD(sharedMemPerBlockOptin, MAX_SHARED_MEMORY_PER_BLOCK_OPTIN),
    INT_FIELD(pageableMemoryAccessUsesHostPageTables, PAGEABLE_MEMORY_ACCESS_USES_HOST_PAGE_TABLES),
    INT_FIELD(directManagedMemAccessFromHost, DIRECT_MANAGED_MEM_ACCESS_FROM_HOST),
    INT_FIELD(maxBlocksPerMultiProcessor, MAX_BLOCKS_PER_MULTIPROCESSOR),
    INT_FIELD(accessPolicyMaxWindowSize, MAX_ACCESS_POLICY_WINDOW_SIZE),
    SIZE_FIELD(reservedSharedMemPerBlock, RESERVED_SHARED_MEMORY_PER_BLOCK),
    INT_FIELD(memoryPoolsSupported, MEMORY_POOLS_SUPPORTED),
};
#undef INT_FIELD
#undef SIZE_FIELD

static CUresult fill_field(struct cudaDeviceProp *prop, const struct prop_field *f, CUdevice dev)
{
    int v = 0;
    CUresult r = rt_drv()->device_get_attribute(&v, f->attr, dev);
    if (r == CUDA_ERROR_INVALID_VALUE)
        return CUDA_SUCCESS;
    if (r != CUDA_SUCCESS)
        return r;
    char *at = (char *)prop + f->offset;
    if (f->is_size) {
        size_t s = (size_t)(unsigned int)v;
        memcpy(at, &s, sizeof s);
    } else {
        memcpy(at, &v, sizeof v);
    }
    return CUDA_SUCCESS;
}

static CUresult fill_identity(struct cudaDeviceProp *prop, CUdevice dev)
{
    CUresult r = rt_drv()->device_get_name(prop->name, (int)sizeof prop->name, dev);
    if (r == CUDA_SUCCESS)
        r = rt_drv()->device_total_mem(&prop->totalGlobalMem, dev);
    if (r == CUDA_SUCCESS && rt_drv()->device_get_uuid)
        r = rt_drv()->device_get_uuid((CUuuid *)&prop->uuid, dev);
    return r;
}

RT_EXPORT cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device)
{
    if (!prop)
        return rt_ret(cudaErrorInvalidValue);
    CUdevice dev;
    cudaError_t e = rt_device_handle(device, &dev);
    if (e != cudaSuccess)
        return rt_ret(e);
    struct cudaDeviceProp p;
    memset(&p, 0, sizeof p);
    CUresult r = fill_identity(&p, dev);
    for (size_t i = 0; r == CUDA_SUCCESS && i < sizeof fields / sizeof fields[0]; i++)
        r = fill_field(&p, &fields[i], dev);
    if (r != CUDA_SUCCESS)
        return rt_ret_drv(r);
    *prop = p;
    return cudaSuccess;
}
