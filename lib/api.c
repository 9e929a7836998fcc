/*
 * api.c — the public C API of include/fragless.h.
 *
 * Owns: fragless_get_stats, fragless_reset_peak_stats, fragless_empty_cache and
 * fragless_version: argument checks, the answers in pass-through mode, and which devices
 * fragless was asked to allocate on (the others answer FRAGLESS_ENODEV). The numbers, the
 * versioned copy of the snapshot and the "every device" form (-1) are the heap's
 * (heap_get_stats, heap_reset_peaks, heap_empty_cache).
 */
#include <stdatomic.h>

#include "internal.h"

/* Bit d: fragless was asked to allocate on device d. */
static _Atomic uint64_t used_devices;

_Static_assert(FL_MAX_DEVICES <= 64, "used_devices has one bit per device");

static bool device_used(int device)
{
    uint64_t used = atomic_load_explicit(&used_devices, memory_order_acquire);
    return fl_device_in_range(device) && (used >> device & 1);
}

/* On every allocation: a load, and a write only the first time, so that threads allocating at
 * once do not contend for the word's cache line. */
void api_note_device(int device)
{
    if (fl_device_in_range(device) && FL_UNLIKELY(!device_used(device)))
        atomic_fetch_or_explicit(&used_devices, (uint64_t)1 << device, memory_order_release);
}

FL_EXPORT int fragless_get_stats(int device, fragless_stats_t *out)
{
    if (!out || out->size < offsetof(fragless_stats_t, allocated_bytes))
        return FRAGLESS_EINVAL;
    if (config_get()->passthrough)
        return FRAGLESS_EDISABLED;
    return device_used(device) ? heap_get_stats(device, out) : FRAGLESS_ENODEV;
}

/* The heap's functions take -1 for every device it has; a single device must be one
 * fragless used. */
static bool device_ok(int device)
{
    return device == -1 || device_used(device);
}

FL_EXPORT int fragless_reset_peak_stats(int device)
{
    if (config_get()->passthrough)
        return FRAGLESS_EDISABLED;
    return device_ok(device) ? heap_reset_peaks(device) : FRAGLESS_ENODEV;
}

FL_EXPORT int fragless_empty_cache(int device, size_t *released)
{
    size_t total = 0;
    int rc = FRAGLESS_OK;
    if (config_get()->passthrough)
        rc = FRAGLESS_EDISABLED;
    else if (!device_ok(device))
        rc = FRAGLESS_ENODEV;
    else if (heap_empty_cache(device, &total) != CUDA_SUCCESS)
        rc = FRAGLESS_EDRIVER;
    if (released)
        *released = total;
    return rc;
}

FL_EXPORT const char *fragless_version(void)
{
    return FRAGLESS_VERSION_STRING;
}
