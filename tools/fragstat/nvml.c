/*
 * nvml.c — how much of a GPU is in use by all processes, from NVML when it is installed
 * (lib/nvml.h, shared with the library's OOM report).
 */
#include "fragstat.h"

#include "nvml.h"

bool fs_nvml_memory(const char *pci_bus_id, uint64_t *used, uint64_t *total)
{
    static struct nvq nvml;
    return nvq_memory(&nvml, dlsym, pci_bus_id, used, total);
}
