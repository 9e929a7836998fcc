/*
 * stats.c — the heap's statistics as numbers: resetting peaks, and copying a snapshot out to
 * a caller whose struct may be older (smaller) than ours. (Level updates, stat_add/stat_set,
 * are inline in internal.h.)
 * What the numbers mean is decided where they change (block.c, heap.c, reuse.c).
 */
#include <string.h>

#include "internal.h"

void stats_reset_peaks(fragless_stats_t *s)
{
#define RESET_PEAK_(name, help) s->name.peak = s->name.current;
#define SKIP_COUNTER_(name, help)
    FRAGLESS_STATS_FIELDS(RESET_PEAK_, SKIP_COUNTER_)
#undef RESET_PEAK_
#undef SKIP_COUNTER_
}

int stats_copy_out(const fragless_stats_t *src, int device, fragless_stats_t *out)
{
    if (!out || out->size < offsetof(fragless_stats_t, allocated_bytes))
        return FRAGLESS_EINVAL;
    uint32_t size = out->size < sizeof *out ? out->size : (uint32_t)sizeof *out;
    fragless_stats_t snap = *src;
    snap.size = size;
    snap.version = FRAGLESS_STATS_VERSION;
    snap.device = device;
    snap.reserved0 = 0;
    memcpy(out, &snap, size);
    return FRAGLESS_OK;
}
