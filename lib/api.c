/*
 * api.c — the public C API of include/fragless.h.
 *
 * Owns: fragless_get_stats, fragless_reset_peak_stats, fragless_empty_cache and
 * fragless_version: argument checks, the versioned copy of the statistics snapshot, the
 * "every device" form (-1), the answers in pass-through mode, and which devices fragless was
 * asked to allocate on (the others answer FRAGLESS_ENODEV). The numbers come from the heap
 * (heap_*); this file adds the driver-call counters, which are process-wide.
 */
#include <stdatomic.h>
#include <string.h>

#include "internal.h"

static bool valid_device(int device)
{
    return device >= 0 && device < FL_MAX_DEVICES;
}

/* Bit d: fragless was asked to allocate on device d. */
static _Atomic uint64_t used_devices;

_Static_assert(FL_MAX_DEVICES <= 64, "used_devices has one bit per device");

void api_note_device(int device)
{
    if (valid_device(device))
        atomic_fetch_or_explicit(&used_devices, (uint64_t)1 << device, memory_order_release);
}

static bool device_used(int device)
{
    uint64_t used = atomic_load_explicit(&used_devices, memory_order_acquire);
    return valid_device(device) && (used >> device & 1);
}

/* The heap's snapshot of `device`; FRAGLESS_ENODEV for a device fragless never used. */
static int snapshot(int device, fragless_stats_t *s)
{
    memset(s, 0, sizeof *s);
    s->size = sizeof *s;
    if (!device_used(device))
        return FRAGLESS_ENODEV;
    return heap_get_stats(device, s);
}

FL_EXPORT int fragless_get_stats(int device, fragless_stats_t *out)
{
    if (!out || out->size < offsetof(fragless_stats_t, allocated_bytes))
        return FRAGLESS_EINVAL;
    if (config_get()->passthrough)
        return FRAGLESS_EDISABLED;
    fragless_stats_t s;
    int rc = snapshot(device, &s);
    if (rc != FRAGLESS_OK)
        return rc;
    s.size = out->size < sizeof s ? out->size : (uint32_t)sizeof s;
    s.version = FRAGLESS_STATS_VERSION;
    s.device = device;
    s.driver_calls = drv_call_count();
    s.driver_ns = drv_call_ns();
    memcpy(out, &s, s.size);
    return FRAGLESS_OK;
}

FL_EXPORT int fragless_reset_peak_stats(int device)
{
    if (config_get()->passthrough)
        return FRAGLESS_EDISABLED;
    if (device != -1)
        return device_used(device) ? heap_reset_peaks(device) : FRAGLESS_ENODEV;
    for (int d = 0; d < FL_MAX_DEVICES; d++) {
        if (device_used(d)) {
            int rc = heap_reset_peaks(d);
            if (rc != FRAGLESS_OK)
                return rc;
        }
    }
    return FRAGLESS_OK;
}

static int empty_one(int device, size_t *released)
{
    size_t n = 0;
    CUresult r = heap_empty_cache(device, &n);
    *released += n;
    return r == CUDA_SUCCESS ? FRAGLESS_OK : FRAGLESS_EDRIVER;
}

FL_EXPORT int fragless_empty_cache(int device, size_t *released)
{
    size_t total = 0;
    int rc = FRAGLESS_OK;
    if (config_get()->passthrough)
        rc = FRAGLESS_EDISABLED;
    else if (device != -1)
        rc = device_used(device) ? empty_one(device, &total) : FRAGLESS_ENODEV;
    for (int d = 0; device == -1 && rc == FRAGLESS_OK && d < FL_MAX_DEVICES; d++) {
        if (device_used(d))
            rc = empty_one(d, &total);
    }
    if (released)
        *released = total;
    return rc;
}

FL_EXPORT const char *fragless_version(void)
{
    return FRAGLESS_VERSION_STRING;
}
