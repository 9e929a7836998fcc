/*
 * fragless_shm.h — the layout of the shared statistics page, one per process.
 *
 * Owns: the binary layout that libfragless writes and fragstat (or any other reader) reads.
 * A process using fragless publishes /dev/shm/fragless.<uid>.<pid>, mode 0600, created with
 * O_EXCL|O_NOFOLLOW and removed at normal exit. The page starts with a magic number, a layout
 * version and its own size; readers check all three and every count and string before use.
 *
 * Consistency without locks: the header's identity fields are written once before `magic` is
 * stored (release); everything that changes later is covered by a sequence counter — `seq` for
 * the page header (device_count, config) and devices[i].seq for each device. A writer makes the
 * counter odd, writes, and makes it even again; a reader copies the data between two reads of an
 * even, unchanged counter and retries otherwise (a bounded number of times).
 *
 * Requests (empty-cache): a requester with write access (the owner, or root) compare-and-swaps
 * `request` from a value whose id equals `response_id` to FRAGLESS_SHM_REQ_MAKE(id + 1, type,
 * device), then increments `wake` and FUTEX_WAKEs it. The library's page thread serves the
 * request, writes `response_status` and `response_released`, then stores `response_id`
 * (release) and FUTEX_WAKEs `response_id`. Only the values documented here are honoured.
 */
#ifndef FRAGLESS_SHM_H
#define FRAGLESS_SHM_H

#include <stdint.h>

#include "fragless.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FRAGLESS_SHM_MAGIC   0x3147415053524c46ull /* "FLRSPAG1" little-endian */
#define FRAGLESS_SHM_VERSION 1
/* Pages live in this directory, named FRAGLESS_SHM_PREFIX "<uid>.<pid>". */
#define FRAGLESS_SHM_DIR     "/dev/shm"
#define FRAGLESS_SHM_PREFIX  "fragless."

#define FRAGLESS_SHM_MAX_DEVICES   16   /* devices of one process published (first used first) */
#define FRAGLESS_SHM_MAX_SEGMENTS  64   /* segments per device in the map (segment_total: all) */
#define FRAGLESS_SHM_MAP_CHARS     64   /* one char per 1/64 of a segment */
#define FRAGLESS_SHM_COMMAND_CHARS 256  /* command line, arguments separated by spaces */
#define FRAGLESS_SHM_CONFIG_CHARS  2048 /* resolved configuration, "key:value" lines */
#define FRAGLESS_SHM_UPDATE_MS     50   /* the library refreshes the page at least this often */

/* Request types. */
#define FRAGLESS_SHM_REQ_NONE        0
#define FRAGLESS_SHM_REQ_EMPTY_CACHE 1
/* Device field of a request: a CUDA ordinal 0..254 of the process, or all of its devices. */
#define FRAGLESS_SHM_REQ_ALL_DEVICES 0xffu

/* The request word: id in bits 0-31, type in bits 32-39, device in bits 40-47. */
#define FRAGLESS_SHM_REQ_MAKE(id, type, device)                    \
    ((uint64_t)(uint32_t)(id) | ((uint64_t)((type)&0xffu) << 32) | \
     ((uint64_t)((device)&0xffu) << 40))
#define FRAGLESS_SHM_REQ_ID(w)     ((uint32_t)(w))
#define FRAGLESS_SHM_REQ_TYPE(w)   ((uint32_t)((w) >> 32) & 0xffu)
#define FRAGLESS_SHM_REQ_DEVICE(w) ((uint32_t)((w) >> 40) & 0xffu)

/* One segment of a device, as fragstat --segments draws it. */
typedef struct fragless_shm_segment {
    uint64_t base;
    uint64_t size;        /* bytes of address space (VMM: the reservation) */
    uint64_t allocated;   /* bytes in live blocks */
    uint64_t free_mapped; /* bytes in free blocks backed by memory */
    uint64_t unmapped;    /* bytes of address space not backed (VMM) */
    uint32_t blocks;
    uint8_t expandable; /* 1 for a VMM segment */
    uint8_t pad[3];
    /* '#' allocated, '+' partly allocated, '.' free and mapped, ' ' unmapped; NUL-terminated */
    char map[FRAGLESS_SHM_MAP_CHARS + 8];
} fragless_shm_segment_t;

/* One device of the process. Everything here is read under `seq`. */
typedef struct fragless_shm_device {
    uint32_t seq;       /* sequence counter: odd while the library writes */
    int32_t device;     /* CUDA ordinal in the process */
    int32_t pci_domain; /* PCI location, -1 if the driver did not say: identifies the GPU */
    int32_t pci_bus;    /* across processes whatever their CUDA_VISIBLE_DEVICES */
    int32_t pci_device;
    uint32_t segment_count; /* entries of segments[] filled */
    uint64_t total_bytes;   /* the device's memory as the driver reports it, 0 if unknown */
    uint64_t updated_ns;    /* CLOCK_REALTIME of the last update */
    uint32_t segment_total; /* segments the device has (may exceed segment_count) */
    uint32_t pad;
    fragless_stats_t stats; /* stats.size says how much of it the writer filled */
    fragless_shm_segment_t segments[FRAGLESS_SHM_MAX_SEGMENTS];
} fragless_shm_device_t;

typedef struct fragless_shm_page {
    /* identity, written before magic and never changed */
    uint64_t magic;
    uint32_t version;
    uint32_t header_size;  /* offsetof(fragless_shm_page_t, devices) */
    uint64_t size;         /* sizeof(fragless_shm_page_t): the file's size */
    uint32_t device_size;  /* sizeof(fragless_shm_device_t) */
    uint32_t max_devices;  /* FRAGLESS_SHM_MAX_DEVICES */
    uint32_t max_segments; /* FRAGLESS_SHM_MAX_SEGMENTS */
    int32_t pid;
    uint32_t uid;        /* effective uid of the process */
    uint32_t update_ms;  /* FRAGLESS_SHM_UPDATE_MS as the writer uses it */
    uint64_t start_time; /* field 22 of /proc/<pid>/stat: tells a reused pid apart */
    char command[FRAGLESS_SHM_COMMAND_CHARS];
    /* changing header fields, read under seq */
    uint32_t seq;
    uint32_t device_count; /* devices[] entries in use */
    uint64_t updated_ns;   /* CLOCK_REALTIME of the last update of any device */
    uint64_t publish_ns;   /* how long the last update took (thread CPU time, ns) */
    char config[FRAGLESS_SHM_CONFIG_CHARS];
    /* request area (see the top of this file) */
    uint32_t wake;              /* futex word the page thread sleeps on */
    uint32_t response_id;       /* futex word: id of the last request served */
    uint64_t request;           /* FRAGLESS_SHM_REQ_MAKE(id, type, device) */
    int64_t response_status;    /* 0 or a negative fragless_error */
    uint64_t response_released; /* bytes released by the last request served */
    fragless_shm_device_t devices[FRAGLESS_SHM_MAX_DEVICES];
} fragless_shm_page_t;

#ifdef __cplusplus
}
#endif

#endif /* FRAGLESS_SHM_H */
