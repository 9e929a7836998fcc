/*
 * vmm_spare.c — what the VMM page layer keeps per device: the spare list (physical pages
 * unmapped from every range but kept for reuse), the creation and release of physical pages,
 * and the device's page counters (pages created, released and moved; bytes of address space
 * reserved and mapped by its ranges), and the list of its live ranges with the mutex that
 * serializes changes to them against walks over all of them (granting a new peer access). One
 * mutex per device guards the rest; the ranges themselves (vmm.c) are serialized by their
 * owner and come here only for what the ranges of one device share.
 */
#include <pthread.h>
#include <stdlib.h>

#include "internal.h"

struct vmm_device {
    pthread_mutex_t ranges_lock; /* taken before lock, never while holding it */
    struct vrange *ranges;       /* linked by vmm.c */
    pthread_mutex_t lock;
    struct vmm_spare *spare; /* last in, first out */
    size_t spare_pages;
    size_t spare_bytes;
    size_t reserved_bytes;
    size_t mapped_bytes;
    uint64_t created;
    uint64_t released;
    uint64_t moved;
};

static struct vmm_device devices[FL_MAX_DEVICES];
static pthread_once_t devices_once = PTHREAD_ONCE_INIT;

static void devices_init(void)
{
    for (size_t i = 0; i < FL_ARRAY_SIZE(devices); i++) {
        pthread_mutex_init(&devices[i].ranges_lock, NULL);
        pthread_mutex_init(&devices[i].lock, NULL);
    }
}

static struct vmm_device *dev_get(int device)
{
    if (!fl_device_in_range(device))
        return NULL;
    pthread_once(&devices_once, devices_init);
    return &devices[device];
}

struct vrange **vmm_ranges_lock(int device)
{
    struct vmm_device *d = dev_get(device);
    pthread_mutex_lock(&d->ranges_lock);
    return &d->ranges;
}

void vmm_ranges_unlock(int device)
{
    pthread_mutex_unlock(&dev_get(device)->ranges_lock);
}

static void spare_push_locked(struct vmm_device *d, struct vmm_spare *node)
{
    node->next = d->spare;
    d->spare = node;
    d->spare_pages++;
    d->spare_bytes += node->size;
}

size_t vmm_spare_take(int device, size_t page_size, size_t max, struct vmm_spare **chain)
{
    struct vmm_device *d = dev_get(device);
    size_t taken = 0;
    if (!d)
        return 0;
    pthread_mutex_lock(&d->lock);
    for (struct vmm_spare **link = &d->spare; *link && taken < max;) {
        struct vmm_spare *node = *link;
        if (node->size != page_size) {
            link = &node->next;
            continue;
        }
        *link = node->next;
        d->spare_pages--;
        d->spare_bytes -= node->size;
        node->next = *chain;
        *chain = node;
        taken++;
    }
    pthread_mutex_unlock(&d->lock);
    return taken;
}

void vmm_spare_put(int device, struct vmm_spare *node)
{
    struct vmm_device *d = dev_get(device);
    pthread_mutex_lock(&d->lock);
    spare_push_locked(d, node);
    pthread_mutex_unlock(&d->lock);
}

void vmm_spare_free_chain(struct vmm_spare *chain)
{
    while (chain) {
        struct vmm_spare *next = chain->next;
        free(chain);
        chain = next;
    }
}

static void count_add(int device, uint64_t created, uint64_t released, uint64_t moved)
{
    struct vmm_device *d = dev_get(device);
    pthread_mutex_lock(&d->lock);
    d->created += created;
    d->released += released;
    d->moved += moved;
    pthread_mutex_unlock(&d->lock);
}

CUresult vmm_page_create(int device, size_t size, CUmemGenericAllocationHandle *handle)
{
    CUresult err = drv_mem_create(handle, size, device);
    if (err != CUDA_SUCCESS)
        return err;
    count_add(device, 1, 0, 0);
    return CUDA_SUCCESS;
}

static CUresult page_release(int device, CUmemGenericAllocationHandle handle)
{
    CUresult err = drv_mem_release(handle);
    if (err != CUDA_SUCCESS)
        return err;
    count_add(device, 0, 1, 0);
    return CUDA_SUCCESS;
}

/* Puts `handle` on the spare list; false if there is no memory for the list node. */
static bool page_park(int device, CUmemGenericAllocationHandle handle, size_t size)
{
    struct vmm_spare *node = malloc(sizeof(*node));
    if (!node)
        return false;
    node->handle = handle;
    node->size = size;
    vmm_spare_put(device, node);
    return true;
}

void vmm_page_dispose(int device, CUmemGenericAllocationHandle handle, size_t size, bool keep)
{
    if (keep && page_park(device, handle, size))
        return;
    CUresult err = page_release(device, handle);
    if (err == CUDA_SUCCESS)
        return;
    if (page_park(device, handle, size)) {
        log_warn("vmm: cuMemRelease failed (error %d): %zu-byte page kept on the spare list of "
                 "device %d",
                 (int)err, size, device);
        return;
    }
    log_error("vmm: cuMemRelease failed (error %d) and no host memory to keep the page: %zu bytes "
              "of device %d are lost",
              (int)err, size, device);
}

void vmm_account(int device, int64_t reserved_delta, int64_t mapped_delta, uint64_t moved)
{
    struct vmm_device *d = dev_get(device);
    pthread_mutex_lock(&d->lock);
    d->reserved_bytes = (size_t)((int64_t)d->reserved_bytes + reserved_delta);
    d->mapped_bytes = (size_t)((int64_t)d->mapped_bytes + mapped_delta);
    d->moved += moved;
    pthread_mutex_unlock(&d->lock);
}

size_t vmm_spare_bytes(int device)
{
    struct vmm_device *d = dev_get(device);
    if (!d)
        return 0;
    pthread_mutex_lock(&d->lock);
    size_t bytes = d->spare_bytes;
    pthread_mutex_unlock(&d->lock);
    return bytes;
}

/* Takes the whole spare list of `d` (every page size). */
static struct vmm_spare *spare_take_all(struct vmm_device *d)
{
    pthread_mutex_lock(&d->lock);
    struct vmm_spare *all = d->spare;
    d->spare = NULL;
    d->spare_pages = 0;
    d->spare_bytes = 0;
    pthread_mutex_unlock(&d->lock);
    return all;
}

CUresult vmm_release_spare(int device, size_t *released)
{
    struct vmm_device *d = dev_get(device);
    CUresult first_err = CUDA_SUCCESS;
    size_t bytes = 0;
    if (released)
        *released = 0;
    if (!d)
        return CUDA_ERROR_INVALID_VALUE;
    struct vmm_spare *node = spare_take_all(d);
    while (node) {
        struct vmm_spare *next = node->next;
        CUresult err = page_release(device, node->handle);
        if (err == CUDA_SUCCESS) {
            bytes += node->size;
            free(node);
        } else {
            if (first_err == CUDA_SUCCESS)
                first_err = err;
            vmm_spare_put(device, node);
        }
        node = next;
    }
    if (first_err != CUDA_SUCCESS)
        log_warn(
            "vmm: cuMemRelease failed (error %d) releasing spare pages of device %d; they stay "
            "on the spare list",
            (int)first_err, device);
    if (released)
        *released = bytes;
    return first_err;
}

void vmm_page_counters(int device, uint64_t *created, uint64_t *released, uint64_t *moved)
{
    struct vmm_device *d = dev_get(device);
    uint64_t c = 0, r = 0, m = 0;
    if (d) {
        pthread_mutex_lock(&d->lock);
        c = d->created;
        r = d->released;
        m = d->moved;
        pthread_mutex_unlock(&d->lock);
    }
    if (created)
        *created = c;
    if (released)
        *released = r;
    if (moved)
        *moved = m;
}

void vmm_va_bytes(int device, size_t *reserved, size_t *mapped)
{
    struct vmm_device *d = dev_get(device);
    size_t res = 0, map = 0;
    if (d) {
        pthread_mutex_lock(&d->lock);
        res = d->reserved_bytes;
        map = d->mapped_bytes;
        pthread_mutex_unlock(&d->lock);
    }
    if (reserved)
        *reserved = res;
    if (mapped)
        *mapped = map;
}

static int handle_cmp(const void *a, const void *b)
{
    CUmemGenericAllocationHandle x = *(const CUmemGenericAllocationHandle *)a;
    CUmemGenericAllocationHandle y = *(const CUmemGenericAllocationHandle *)b;
    return (x > y) - (x < y);
}

void vmm_sort_handles(CUmemGenericAllocationHandle *handles, size_t n)
{
    qsort(handles, n, sizeof(*handles), handle_cmp);
}

/* Walks the spare list under the lock: counts and bytes agree with the counters, no page is
 * on it twice, none is also in `mapped` (sorted). */
static bool spare_walk_locked(struct vmm_device *d, int device,
                              const CUmemGenericAllocationHandle *mapped, size_t n_mapped,
                              CUmemGenericAllocationHandle *seen)
{
    size_t pages = 0, bytes = 0;
    for (struct vmm_spare *s = d->spare; s; s = s->next) {
        if (pages == d->spare_pages) {
            log_error("vmm: device %d spare list longer than its count %zu", device, pages);
            return false;
        }
        if (s->size == 0 || bsearch(&s->handle, mapped, n_mapped, sizeof(*mapped), handle_cmp)) {
            log_error("vmm: device %d spare page %#llx is empty or also mapped", device,
                      (unsigned long long)s->handle);
            return false;
        }
        seen[pages++] = s->handle;
        bytes += s->size;
    }
    if (pages != d->spare_pages || bytes != d->spare_bytes) {
        log_error("vmm: device %d spare list holds %zu pages/%zu bytes, counters say %zu/%zu",
                  device, pages, bytes, d->spare_pages, d->spare_bytes);
        return false;
    }
    vmm_sort_handles(seen, pages);
    for (size_t i = 1; i < pages; i++) {
        if (seen[i] == seen[i - 1]) {
            log_error("vmm: device %d spare page %#llx listed twice", device,
                      (unsigned long long)seen[i]);
            return false;
        }
    }
    return true;
}

bool vmm_spare_is_valid(int device, const CUmemGenericAllocationHandle *mapped, size_t n_mapped)
{
    struct vmm_device *d = dev_get(device);
    if (!d)
        return false;
    pthread_mutex_lock(&d->lock);
    CUmemGenericAllocationHandle *seen = malloc((d->spare_pages + 1) * sizeof(*seen));
    bool ok = seen && spare_walk_locked(d, device, mapped, n_mapped, seen);
    pthread_mutex_unlock(&d->lock);
    free(seen);
    return ok;
}

void vmm_atfork_prepare(void)
{
    pthread_once(&devices_once, devices_init);
    for (size_t i = 0; i < FL_ARRAY_SIZE(devices); i++)
        pthread_mutex_lock(&devices[i].ranges_lock);
    for (size_t i = 0; i < FL_ARRAY_SIZE(devices); i++)
        pthread_mutex_lock(&devices[i].lock);
}

void vmm_atfork_parent(void)
{
    for (size_t i = FL_ARRAY_SIZE(devices); i-- > 0;)
        pthread_mutex_unlock(&devices[i].lock);
    for (size_t i = FL_ARRAY_SIZE(devices); i-- > 0;)
        pthread_mutex_unlock(&devices[i].ranges_lock);
}

/* The child's only thread is the one that took the locks in prepare: it can unlock them. */
void vmm_atfork_child(void)
{
    vmm_atfork_parent();
}
