/*
 * fragless.h — the public C API of libfragless.so.
 *
 * Owns: the statistics snapshot (fragless_stats_t) and the few functions a program may call
 * when it wants more than LD_PRELOAD gives it. Every exported name of the library that is not
 * a CUDA entry point is declared here. The statistics fields are declared once, in
 * FRAGLESS_STATS_FIELDS, so that the struct, fragstat's JSON and Prometheus output and the
 * tests all read the same list. Fields are only ever appended (the struct is versioned by
 * its size), never reordered or renamed.
 */
#ifndef FRAGLESS_H
#define FRAGLESS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FRAGLESS_VERSION_MAJOR  0
#define FRAGLESS_VERSION_MINOR  1
#define FRAGLESS_VERSION_PATCH  0
#define FRAGLESS_VERSION_STRING "0.1.0"

/* Version of fragless_stats_t's layout; bumped when fields are appended. */
#define FRAGLESS_STATS_VERSION 1

/* A level statistic: its value now and its high-water mark since start or the last reset. */
typedef struct fragless_stat {
    uint64_t current;
    uint64_t peak;
} fragless_stat_t;

/*
 * Every statistic, in struct order. G(name, help) is a level (fragless_stat_t: current and
 * peak), C(name, help) a counter (uint64_t, only ever grows). Names follow PyTorch's
 * torch.cuda.memory_stats() where the meaning is the same.
 */
#define FRAGLESS_STATS_FIELDS(G, C)                                                             \
    G(allocated_bytes, "bytes in blocks handed out, as rounded by the allocator")               \
    G(reserved_bytes, "bytes of device memory held from the driver (mapped, for VMM)")          \
    G(active_bytes, "bytes in blocks handed out or freed but not yet reusable")                 \
    G(inactive_split_bytes, "free bytes inside segments that also hold live blocks")            \
    G(requested_bytes, "bytes the program asked for, before rounding")                          \
    G(reserved_unallocated_bytes, "reserved minus allocated bytes")                             \
    G(largest_free_block_bytes, "largest free block (classic segments: usable without the "     \
                                "driver; expandable: address space, mapped or not)")            \
    G(mapped_bytes, "physical bytes mapped into expandable (VMM) segments")                     \
    G(unmapped_reserved_va_bytes, "virtual address space reserved but not backed")              \
    G(segments, "segments held (classic allocations or VMM ranges)")                            \
    G(blocks, "blocks (live and free) in all segments")                                         \
    G(host_metadata_bytes, "host memory used by fragless's own bookkeeping")                    \
    C(num_allocs, "allocations served by fragless")                                             \
    C(num_frees, "frees of fragless blocks")                                                    \
    C(num_cache_hits, "allocations served without a driver call")                               \
    C(num_cache_misses, "allocations that needed the driver")                                   \
    C(num_alloc_retries, "allocations retried after releasing cached memory")                   \
    C(num_ooms, "allocations that failed for lack of memory")                                   \
    C(num_device_alloc, "segment or page allocations from the driver")                          \
    C(num_device_free, "segment or page releases to the driver")                                \
    C(num_device_syncs, "device synchronizations done to make freed memory reusable")           \
    C(num_empty_cache, "empty-cache operations (API, fragstat, automatic)")                     \
    C(empty_cache_released_bytes, "bytes returned to the driver by empty-cache and GC")         \
    C(num_foreign_frees, "frees of pointers fragless did not hand out (passed through)")        \
    C(pages_created, "physical pages created (VMM)")                                            \
    C(pages_released, "physical pages released (VMM)")                                          \
    C(pages_moved, "physical pages moved from a free range to where they were needed (VMM)")    \
    C(driver_calls, "calls into the CUDA driver made by fragless")                              \
    C(driver_ns, "nanoseconds spent in those driver calls that can be slow (allocation, free, " \
                 "VMM, synchronization, context retain/release); cheap queries are not timed")

/*
 * A snapshot of one device's statistics. The caller sets `size` to sizeof(fragless_stats_t)
 * before calling fragless_get_stats(); fragless fills at most that many bytes and sets
 * `version`. Fields beyond what an older caller's size covers are simply not written.
 */
typedef struct fragless_stats {
    uint32_t size;
    uint32_t version;
    int32_t device;
    uint32_t reserved0;
#define FRAGLESS_STAT_MEMBER_(name, help)    fragless_stat_t name;
#define FRAGLESS_COUNTER_MEMBER_(name, help) uint64_t name;
    FRAGLESS_STATS_FIELDS(FRAGLESS_STAT_MEMBER_, FRAGLESS_COUNTER_MEMBER_)
#undef FRAGLESS_STAT_MEMBER_
#undef FRAGLESS_COUNTER_MEMBER_
} fragless_stats_t;

/* Return codes of the functions below: 0 is success, the rest are negative. */
enum fragless_error {
    FRAGLESS_OK = 0,
    FRAGLESS_EINVAL = -1,   /* bad argument (NULL, size too small, ...) */
    FRAGLESS_ENODEV = -2,   /* no such device, or fragless has not used it */
    FRAGLESS_EDRIVER = -3,  /* the CUDA driver failed or could not be loaded */
    FRAGLESS_EDISABLED = -4 /* fragless is in pass-through mode */
};

/* Fills *out with device `device`'s statistics. Returns 0 or a fragless_error. */
int fragless_get_stats(int device, fragless_stats_t *out);

/* Sets every peak of `device` (-1: all devices) to its current value. */
int fragless_reset_peak_stats(int device);

/*
 * Returns to the driver every cached byte of `device` (-1: all devices) that holds no live
 * block, waiting only for the GPU work that may still touch it. *released (may be NULL)
 * receives the number of bytes released. Returns 0 or a fragless_error.
 */
int fragless_empty_cache(int device, size_t *released);

/* The library's version string, e.g. "0.1.0". */
const char *fragless_version(void);

#ifdef __cplusplus
}
#endif

#endif /* FRAGLESS_H */
