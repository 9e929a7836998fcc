/*
 * fake_nvml.c — a stand-in libnvidia-ml.so.1 for the NVML paths of fragstat and the OOM
 * report, compiled by test_fragstat_nvml.c at run time (the machines that run the suite have
 * no NVML). It knows one GPU, whatever its PCI bus id: FAKE_NVML_TOTAL and FAKE_NVML_USED bytes
 * of memory, and the processes listed in FAKE_NVML_PROCS ("pid:bytes,pid:bytes").
 */
#include <stdlib.h>
#include <string.h>

typedef struct {
    unsigned long long total, free, used;
} memory_t;
typedef struct {
    unsigned int pid;
    unsigned long long used;
    unsigned int gi, ci;
} process_t;

static int device_token;

static unsigned long long env_bytes(const char *name)
{
    const char *v = getenv(name);
    return v ? strtoull(v, NULL, 10) : 0;
}

int nvmlInit_v2(void)
{
    return 0;
}

int nvmlDeviceGetHandleByPciBusId_v2(const char *bus_id, void **device)
{
    if (!bus_id || strlen(bus_id) < 12)
        return 2; /* NVML_ERROR_INVALID_ARGUMENT */
    *device = &device_token;
    return 0;
}

int nvmlDeviceGetMemoryInfo(void *device, memory_t *m)
{
    (void)device;
    m->total = env_bytes("FAKE_NVML_TOTAL");
    m->used = env_bytes("FAKE_NVML_USED");
    m->free = m->total - m->used;
    return 0;
}

int nvmlDeviceGetComputeRunningProcesses_v3(void *device, unsigned int *count, process_t *out)
{
    (void)device;
    const char *list = getenv("FAKE_NVML_PROCS");
    unsigned int n = 0;
    for (const char *p = list; p && *p && n < *count; n++) {
        char *end;
        out[n].pid = (unsigned int)strtoul(p, &end, 10);
        out[n].used = strtoull(end + 1, &end, 10);
        out[n].gi = out[n].ci = 0;
        p = *end ? end + 1 : end;
    }
    *count = n;
    return 0;
}
