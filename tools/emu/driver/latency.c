/*
 * latency.c — the optional latency model (FRAGLESS_EMU_LATENCY=1): each modelled entry point
 * spends a fixed cost plus a cost per 2 MiB it touches, shaped like published figures for
 * real GPUs (docs/emulator.md lists them and their sources). Short delays spin, long ones
 * sleep. Called after the lock is dropped, so other threads are not held up.
 */
#include <string.h>
#include <time.h>

#include "emu.h"

struct latency {
    const char *name;
    uint64_t base_ns;
    uint64_t per_2m_ns;
};

/* cuCtxGetCurrent: ~106 ns host time on a GPU (NVIDIA/cudnn-frontend#626); the other light
 * queries (fastpath.c) have no published figure and no modelled delay. */
static const struct latency table[] = {
    {"cuMemCreate", 50000, 1500}, /* ~50 µs small, ~200 µs at 200 MiB */
    {"cuMemMap", 1500, 0},         {"cuMemSetAccess", 2000, 25000},  {"cuMemUnmap", 2000, 15000},
    {"cuMemRelease", 20000, 0},    {"cuMemAddressReserve", 5000, 0}, {"cuMemAddressFree", 5000, 0},
    {"cuMemAlloc_v2", 10000, 400}, {"cuMemFree_v2", 10000, 0},       {"cuMemAllocAsync", 1000, 0},
    {"cuMemFreeAsync", 1000, 0},   {"cuEventRecord", 1500, 0},       {"cuEventQuery", 1000, 0},
    {"cuStreamQuery", 1000, 0},    {"cuCtxGetCurrent", 100, 0},
};

static void spend(uint64_t ns)
{
    uint64_t end = emu_now() + ns;

    if (ns >= 100000) {
        emu_sleep_until(end);
        return;
    }
    while (emu_now() < end)
        ;
}

void emu_latency(const char *name, size_t bytes)
{
    if (!emu.cfg.latency)
        return;
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        if (strcmp(table[i].name, name) == 0) {
            uint64_t pages = (bytes + EMU_GRANULARITY - 1) / EMU_GRANULARITY;
            spend(table[i].base_ns + pages * table[i].per_2m_ns);
            return;
        }
    }
}
