/*
 * nvml.h — what NVML (the driver's management library, libnvidia-ml.so.1) can say about a GPU:
 * memory used by all processes, and which processes use it. Loaded with dlopen when present;
 * nothing links against it.
 *
 * Owns: the few NVML declarations used (as the NVML API defines them) and their lookup. Shared
 * by fragstat and lib/report.c, hence header-only; the caller passes the dlsym to use (inside
 * libfragless that is dl.c's real one, since interpose.c exports a dlsym hook).
 */
#ifndef FRAGLESS_NVML_H
#define FRAGLESS_NVML_H

#include <dlfcn.h>
#include <stdbool.h>
#include <stdint.h>

#define NVQ_MAX_PROCESSES 64

typedef struct nvq_device_st *nvq_device_t;
typedef struct {
    unsigned long long total, free, used;
} nvq_memory_t;
/* nvmlProcessInfo_t as nvmlDeviceGetComputeRunningProcesses_v3 fills it */
typedef struct {
    unsigned int pid;
    unsigned long long used_gpu_memory;
    unsigned int gpu_instance_id, compute_instance_id;
} nvq_process_t;

typedef void *(*nvq_sym_fn)(void *handle, const char *name);

struct nvq {
    bool tried, ok;
    int (*init)(void);
    int (*by_pci)(const char *pci_bus_id, nvq_device_t *device);
    int (*memory)(nvq_device_t device, nvq_memory_t *memory);
    int (*processes)(nvq_device_t device, unsigned int *count, nvq_process_t *infos);
};

/* Loads NVML once; false when it is not installed or does not initialize. */
static inline bool nvq_load(struct nvq *n, nvq_sym_fn sym)
{
    if (n->tried)
        return n->ok;
    n->tried = true;
    void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h)
        return false;
    *(void **)&n->init = sym(h, "nvmlInit_v2");
    *(void **)&n->by_pci = sym(h, "nvmlDeviceGetHandleByPciBusId_v2");
    *(void **)&n->memory = sym(h, "nvmlDeviceGetMemoryInfo");
    *(void **)&n->processes = sym(h, "nvmlDeviceGetComputeRunningProcesses_v3");
    n->ok = n->init && n->by_pci && n->memory && n->init() == 0;
    return n->ok;
}

/* Memory used by all processes and the total, of the GPU at PCI bus id "0000:65:00.0". */
static inline bool nvq_memory(struct nvq *n, nvq_sym_fn sym, const char *pci_bus_id, uint64_t *used,
                              uint64_t *total)
{
    nvq_device_t dev;
    nvq_memory_t mem;
    if (!nvq_load(n, sym) || n->by_pci(pci_bus_id, &dev) != 0 || n->memory(dev, &mem) != 0)
        return false;
    *used = mem.used;
    *total = mem.total;
    return true;
}

/* The compute processes on that GPU (at most `max`); -1 when NVML cannot tell. */
static inline int nvq_processes(struct nvq *n, nvq_sym_fn sym, const char *pci_bus_id,
                                nvq_process_t *out, unsigned int max)
{
    nvq_device_t dev;
    unsigned int count = max;
    if (!nvq_load(n, sym) || !n->processes || n->by_pci(pci_bus_id, &dev) != 0 ||
        n->processes(dev, &count, out) != 0)
        return -1;
    return (int)(count < max ? count : max);
}

#endif /* FRAGLESS_NVML_H */
