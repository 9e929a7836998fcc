/*
 * nvml.c — how much of a GPU is in use by all processes, from NVML when it is installed.
 *
 * Owns: the optional dlopen of libnvidia-ml.so.1 (the driver's management library; fragstat
 * has no link-time dependency on it). The few NVML types used are declared here as the NVML
 * API defines them.
 */
#include "fragstat.h"

#include <dlfcn.h>

typedef struct nvml_device_st *nvml_device_t;
typedef struct {
    unsigned long long total, free, used;
} nvml_memory_t;

struct nvml {
    bool tried, ok;
    int (*init)(void);
    int (*by_pci)(const char *pci_bus_id, nvml_device_t *device);
    int (*memory)(nvml_device_t device, nvml_memory_t *memory);
};

static struct nvml nvml;

static bool nvml_load(void)
{
    if (nvml.tried)
        return nvml.ok;
    nvml.tried = true;
    void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h)
        return false;
    *(void **)&nvml.init = dlsym(h, "nvmlInit_v2");
    *(void **)&nvml.by_pci = dlsym(h, "nvmlDeviceGetHandleByPciBusId_v2");
    *(void **)&nvml.memory = dlsym(h, "nvmlDeviceGetMemoryInfo");
    nvml.ok = nvml.init && nvml.by_pci && nvml.memory && nvml.init() == 0;
    return nvml.ok;
}

bool fs_nvml_memory(const char *pci_bus_id, uint64_t *used, uint64_t *total)
{
    nvml_device_t dev;
    nvml_memory_t mem;
    if (!nvml_load() || nvml.by_pci(pci_bus_id, &dev) != 0 || nvml.memory(dev, &mem) != 0)
        return false;
    *used = mem.used;
    *total = mem.total;
    return true;
}
