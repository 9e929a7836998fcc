/*
 * vmm.c — CUDA virtual memory management on real virtual memory: a reservation is a
 * PROT_NONE MAP_NORESERVE mapping, a physical allocation (cuMemCreate) is a range of its
 * device's sparse memfd (arena.c; committed only when touched), cuMemMap maps that range
 * MAP_FIXED|MAP_SHARED with no access, cuMemSetAccess mprotects it, cuMemUnmap puts the
 * PROT_NONE reservation back. Data survives unmap/remap because it lives in the memfd; touching
 * unmapped or not-yet-accessible memory faults as on a GPU. Argument checks follow the driver
 * documentation.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "emu.h"

/* Larger reservations or alignments than this cannot be had (47-bit user address space). */
#define VA_LIMIT ((size_t)1 << 46)

static bool aligned(uint64_t v)
{
    return v % EMU_GRANULARITY == 0;
}

static CUresult vmm_check(void)
{
    CUresult r = emu_check_init();
    if (r == CUDA_SUCCESS && !emu.cfg.vmm)
        r = CUDA_ERROR_NOT_SUPPORTED;
    return r;
}

struct emu_reservation *emu_reservation_containing(CUdeviceptr p, size_t n)
{
    struct emu_reservation *res, *tmp;

    HASH_ITER(hh, emu.reservations, res, tmp)
    if (p >= res->base && p - res->base < res->size && n <= res->size - (p - res->base))
        return res;
    return NULL;
}

/* Index of the first mapping of `res` that ends after p (nmaps if none). */
static size_t map_lower(const struct emu_reservation *res, CUdeviceptr p)
{
    size_t lo = 0, hi = res->nmaps;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (res->maps[mid]->va + res->maps[mid]->size <= p)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

struct emu_mapping *emu_mapping_containing(CUdeviceptr p)
{
    struct emu_reservation *res = emu_reservation_containing(p, 1);
    size_t i = res ? map_lower(res, p) : 0;

    return res && i < res->nmaps && res->maps[i]->va <= p ? res->maps[i] : NULL;
}

/* Whether [p, p+n) is exactly a run of whole adjacent mappings [*first, *end) of `res` (not
 * when there is a gap or a mapping is cut by either end). */
static bool whole_mappings(const struct emu_reservation *res, CUdeviceptr p, size_t n,
                           size_t *first, size_t *end)
{
    size_t i = map_lower(res, p);
    CUdeviceptr at = p;

    *first = i;
    for (; i < res->nmaps && at < p + n; i++) {
        if (res->maps[i]->va != at || res->maps[i]->size > p + n - at)
            return false;
        at += res->maps[i]->size;
    }
    *end = i;
    return at == p + n;
}

/* The access `device` has to mapping m (-1: m's own device). */
static unsigned long long access_of(const struct emu_mapping *m, int device)
{
    if (device < 0 || device == m->handle->device)
        return m->access;
    return device < EMU_MAX_DEVICES ? m->peer_access[device] : CU_MEM_ACCESS_FLAGS_PROT_NONE;
}

bool emu_vmm_range_accessible(CUdeviceptr p, size_t n, int device)
{
    struct emu_reservation *res = emu_reservation_containing(p, n);
    CUdeviceptr at = p;

    for (size_t i = res ? map_lower(res, p) : 0; res && at < p + n; i++) {
        if (i >= res->nmaps || res->maps[i]->va > at ||
            access_of(res->maps[i], device) != CU_MEM_ACCESS_FLAGS_PROT_READWRITE)
            return false;
        at = res->maps[i]->va + res->maps[i]->size;
    }
    return res != NULL;
}

static bool prop_valid(const CUmemAllocationProp *prop)
{
    return prop && prop->type == CU_MEM_ALLOCATION_TYPE_PINNED &&
           prop->location.type == CU_MEM_LOCATION_TYPE_DEVICE;
}

EMU_API CUresult cuMemGetAllocationGranularity(size_t *granularity, const CUmemAllocationProp *prop,
                                               CUmemAllocationGranularity_flags option)
{
    CUresult r;

    EMU_ENTER(cuMemGetAllocationGranularity);
    emu_lock();
    r = vmm_check();
    if (r == CUDA_SUCCESS && (!granularity || !prop_valid(prop) ||
                              (option != CU_MEM_ALLOC_GRANULARITY_MINIMUM &&
                               option != CU_MEM_ALLOC_GRANULARITY_RECOMMENDED)))
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS && (prop->location.id < 0 || prop->location.id >= emu.cfg.devices))
        r = CUDA_ERROR_INVALID_DEVICE;
    if (r == CUDA_SUCCESS)
        *granularity = EMU_GRANULARITY;
    emu_unlock();
    return r;
}

/* ---- reservations ---------------------------------------------------------------------- */

static void *map_aligned(size_t size, size_t align, CUdeviceptr hint)
{
    size_t over = size + align;
    uintptr_t base;
    void *m;
    int prot = PROT_NONE, fl = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;

    if (hint && hint % align == 0) {
        m = mmap((void *)(uintptr_t)hint, size, prot, fl | MAP_FIXED_NOREPLACE, -1, 0);
        if (m != MAP_FAILED)
            return m;
    }
    m = mmap(NULL, over, prot, fl, -1, 0);
    if (m == MAP_FAILED)
        return NULL;
    base = ((uintptr_t)m + align - 1) / align * align;
    if (base > (uintptr_t)m)
        munmap(m, base - (uintptr_t)m);
    if ((uintptr_t)m + over > base + size)
        munmap((void *)(base + size), (uintptr_t)m + over - (base + size));
    return (void *)base;
}

EMU_API CUresult cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t alignment,
                                     CUdeviceptr addr, unsigned long long flags)
{
    CUresult r;
    struct emu_reservation *res = NULL;
    long page = sysconf(_SC_PAGESIZE);
    void *m = NULL;

    EMU_ENTER(cuMemAddressReserve);
    emu_lock();
    r = vmm_check();
    if (r == CUDA_SUCCESS &&
        (!ptr || size == 0 || flags != 0 || size % (size_t)page || addr % (size_t)page ||
         (alignment & (alignment - 1)) || alignment > VA_LIMIT))
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS && size > VA_LIMIT)
        r = CUDA_ERROR_OUT_OF_MEMORY;
    if (r == CUDA_SUCCESS && !(res = calloc(1, sizeof *res)))
        r = CUDA_ERROR_OUT_OF_MEMORY;
    if (r == CUDA_SUCCESS &&
        !(m = map_aligned(size, alignment > EMU_GRANULARITY ? alignment : EMU_GRANULARITY, addr))) {
        free(res);
        r = CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (r == CUDA_SUCCESS) {
        res->base = (CUdeviceptr)(uintptr_t)m;
        res->size = size;
        HASH_ADD(hh, emu.reservations, base, sizeof res->base, res);
        *ptr = res->base;
    }
    emu_unlock();
    emu_latency("cuMemAddressReserve", 0);
    return r;
}

EMU_API CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size)
{
    CUresult r;
    struct emu_reservation *res = NULL;

    EMU_ENTER(cuMemAddressFree);
    emu_lock();
    r = vmm_check();
    if (r == CUDA_SUCCESS) {
        HASH_FIND(hh, emu.reservations, &ptr, sizeof ptr, res);
        if (!res || res->size != size || res->nmaps)
            r = CUDA_ERROR_INVALID_VALUE;
    }
    if (r == CUDA_SUCCESS) {
        HASH_DEL(emu.reservations, res);
        munmap((void *)(uintptr_t)res->base, res->size);
        free(res->maps);
        free(res);
    }
    emu_unlock();
    emu_latency("cuMemAddressFree", 0);
    return r;
}

/* ---- physical allocations ------------------------------------------------------------- */

static struct emu_handle *handle_find(CUmemGenericAllocationHandle id)
{
    struct emu_handle *h = NULL;
    HASH_FIND(hh, emu.handles, &id, sizeof id, h);
    return h;
}

static void handle_drop_if_unused(struct emu_handle *h)
{
    if (h->refs || h->mappings)
        return;
    HASH_DEL(emu.handles, h);
    emu_arena_give(h->device, h->size, h->off);
    emu_cap_uncharge(h->device, h->size);
    free(h);
}

static CUresult handle_new(size_t size, int device, struct emu_handle **out)
{
    struct emu_handle *h = calloc(1, sizeof *h);

    if (!h)
        return CUDA_ERROR_OUT_OF_MEMORY;
    if (emu_cap_charge(device, size) != CUDA_SUCCESS)
        goto free_struct;
    if (emu_arena_take(device, size, &h->off) != CUDA_SUCCESS)
        goto uncharge;
    h->id = emu.next_handle++;
    h->size = size;
    h->device = device;
    h->refs = 1;
    HASH_ADD(hh, emu.handles, id, sizeof h->id, h);
    *out = h;
    return CUDA_SUCCESS;
uncharge:
    emu_cap_uncharge(device, size);
free_struct:
    free(h);
    return CUDA_ERROR_OUT_OF_MEMORY;
}

EMU_API CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size,
                             const CUmemAllocationProp *prop, unsigned long long flags)
{
    CUresult r;
    struct emu_handle *h = NULL;

    EMU_ENTER(cuMemCreate);
    emu_lock();
    r = vmm_check();
    if (r == CUDA_SUCCESS &&
        (!handle || !prop_valid(prop) || flags != 0 || size == 0 || !aligned(size)))
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS && (prop->location.id < 0 || prop->location.id >= emu.cfg.devices))
        r = CUDA_ERROR_INVALID_DEVICE;
    if (r == CUDA_SUCCESS)
        r = handle_new(size, prop->location.id, &h);
    if (r == CUDA_SUCCESS)
        *handle = h->id;
    emu_unlock();
    emu_latency("cuMemCreate", r == CUDA_SUCCESS ? size : 0);
    return r;
}

EMU_API CUresult cuMemRelease(CUmemGenericAllocationHandle handle)
{
    CUresult r;
    struct emu_handle *h = NULL;

    EMU_ENTER(cuMemRelease);
    emu_lock();
    r = vmm_check();
    if (r == CUDA_SUCCESS && (!(h = handle_find(handle)) || h->refs == 0))
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS) {
        h->refs--;
        handle_drop_if_unused(h);
    }
    emu_unlock();
    emu_latency("cuMemRelease", 0);
    return r;
}

EMU_API CUresult cuMemRetainAllocationHandle(CUmemGenericAllocationHandle *handle, void *addr)
{
    CUresult r;
    struct emu_mapping *m = NULL;

    EMU_ENTER(cuMemRetainAllocationHandle);
    emu_lock();
    r = vmm_check();
    if (r == CUDA_SUCCESS && (!handle || !(m = emu_mapping_containing((CUdeviceptr)addr))))
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS) {
        m->handle->refs++;
        *handle = m->handle->id;
    }
    emu_unlock();
    return r;
}

EMU_API CUresult cuMemGetAllocationPropertiesFromHandle(CUmemAllocationProp *prop,
                                                        CUmemGenericAllocationHandle handle)
{
    CUresult r;
    struct emu_handle *h = NULL;

    EMU_ENTER(cuMemGetAllocationPropertiesFromHandle);
    emu_lock();
    r = vmm_check();
    if (r == CUDA_SUCCESS && (!prop || !(h = handle_find(handle)) || h->refs == 0))
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS) {
        *prop = (CUmemAllocationProp){0};
        prop->type = CU_MEM_ALLOCATION_TYPE_PINNED;
        prop->location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        prop->location.id = h->device;
    }
    emu_unlock();
    return r;
}

/* ---- mappings -------------------------------------------------------------------------- */

static bool overlaps_mapping(const struct emu_reservation *res, CUdeviceptr p, size_t n)
{
    size_t i = map_lower(res, p);
    return i < res->nmaps && res->maps[i]->va < p + n;
}

/* Makes room for one more mapping; false when out of memory. */
static bool maps_reserve(struct emu_reservation *res)
{
    size_t cap = res->cap ? 2 * res->cap : 16;
    struct emu_mapping **maps;

    if (res->nmaps < res->cap)
        return true;
    maps = realloc(res->maps, cap * sizeof *maps);
    if (!maps)
        return false;
    res->maps = maps;
    res->cap = cap;
    return true;
}

static void mapping_insert(struct emu_reservation *res, struct emu_mapping *nm)
{
    size_t i = map_lower(res, nm->va);

    memmove(&res->maps[i + 1], &res->maps[i], (res->nmaps - i) * sizeof res->maps[0]);
    res->maps[i] = nm;
    res->nmaps++;
}

/* Maps the handle's memory at ptr with no access yet. */
static bool map_handle(CUdeviceptr ptr, size_t size, const struct emu_handle *h, size_t offset)
{
    void *m = mmap((void *)(uintptr_t)ptr, size, PROT_NONE, MAP_SHARED | MAP_FIXED,
                   emu_arena_fd(h->device), (off_t)(h->off + offset));
    return m != MAP_FAILED;
}

EMU_API CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset,
                          CUmemGenericAllocationHandle handle, unsigned long long flags)
{
    CUresult r;
    struct emu_reservation *res = NULL;
    struct emu_handle *h = NULL;
    struct emu_mapping *m = NULL;

    EMU_ENTER(cuMemMap);
    emu_lock();
    r = vmm_check();
    if (r == CUDA_SUCCESS &&
        (flags != 0 || size == 0 || !aligned(ptr) || !aligned(size) || !aligned(offset)))
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS &&
        (!(h = handle_find(handle)) || h->refs == 0 || offset > h->size || size > h->size - offset))
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS &&
        (!(res = emu_reservation_containing(ptr, size)) || overlaps_mapping(res, ptr, size)))
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS && (!maps_reserve(res) || !(m = calloc(1, sizeof *m))))
        r = CUDA_ERROR_OUT_OF_MEMORY;
    if (r == CUDA_SUCCESS && !map_handle(ptr, size, h, offset)) {
        free(m);
        r = CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (r == CUDA_SUCCESS) {
        m->va = ptr;
        m->size = size;
        m->handle = h;
        m->res = res;
        h->mappings++;
        mapping_insert(res, m);
    }
    emu_unlock();
    emu_latency("cuMemMap", 0);
    return r;
}

/* Puts the PROT_NONE reservation back under the mappings [first, end) of `res`. */
static void unmap_range(struct emu_reservation *res, size_t first, size_t end)
{
    for (size_t i = first; i < end; i++) {
        struct emu_mapping *m = res->maps[i];
        mmap((void *)(uintptr_t)m->va, m->size, PROT_NONE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
        m->handle->mappings--;
        handle_drop_if_unused(m->handle);
        free(m);
    }
    memmove(&res->maps[first], &res->maps[end], (res->nmaps - end) * sizeof res->maps[0]);
    res->nmaps -= end - first;
}

EMU_API CUresult cuMemUnmap(CUdeviceptr ptr, size_t size)
{
    CUresult r;
    struct emu_reservation *res = NULL;
    size_t first, end;

    EMU_ENTER(cuMemUnmap);
    emu_lock();
    r = vmm_check();
    if (r == CUDA_SUCCESS && (size == 0 || !(res = emu_reservation_containing(ptr, size)) ||
                              !whole_mappings(res, ptr, size, &first, &end)))
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS)
        unmap_range(res, first, end);
    emu_unlock();
    emu_latency("cuMemUnmap", r == CUDA_SUCCESS ? size : 0);
    return r;
}

static int access_prot(CUmemAccess_flags f)
{
    return f == CU_MEM_ACCESS_FLAGS_PROT_READWRITE ? PROT_READ | PROT_WRITE
           : f == CU_MEM_ACCESS_FLAGS_PROT_READ    ? PROT_READ
                                                   : PROT_NONE;
}

static CUresult access_desc_check(const CUmemAccessDesc *desc, size_t count)
{
    if (!desc || count == 0)
        return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < count; i++) {
        if (desc[i].location.type != CU_MEM_LOCATION_TYPE_DEVICE ||
            (desc[i].flags != CU_MEM_ACCESS_FLAGS_PROT_NONE &&
             desc[i].flags != CU_MEM_ACCESS_FLAGS_PROT_READ &&
             desc[i].flags != CU_MEM_ACCESS_FLAGS_PROT_READWRITE))
            return CUDA_ERROR_INVALID_VALUE;
        if (desc[i].location.id < 0 || desc[i].location.id >= emu.cfg.devices)
            return CUDA_ERROR_INVALID_DEVICE;
    }
    return CUDA_SUCCESS;
}

/* Each descriptor sets the access of its device; host protection follows the access of the
 * device that owns the memory, the other devices' access is recorded for their kernels. */
static void mapping_set_access(struct emu_mapping *m, const CUmemAccessDesc *desc, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        if (desc[i].location.id != m->handle->device) {
            m->peer_access[desc[i].location.id] = desc[i].flags;
            continue;
        }
        m->access = desc[i].flags;
        mprotect((void *)(uintptr_t)m->va, m->size, access_prot(desc[i].flags));
    }
}

EMU_API CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc,
                                size_t count)
{
    CUresult r;
    struct emu_reservation *res = NULL;
    size_t first = 0, end = 0;

    EMU_ENTER(cuMemSetAccess);
    emu_lock();
    r = vmm_check();
    if (r == CUDA_SUCCESS)
        r = access_desc_check(desc, count);
    if (r == CUDA_SUCCESS && (size == 0 || !(res = emu_reservation_containing(ptr, size)) ||
                              !whole_mappings(res, ptr, size, &first, &end)))
        r = CUDA_ERROR_INVALID_VALUE;
    for (size_t i = first; r == CUDA_SUCCESS && i < end; i++)
        mapping_set_access(res->maps[i], desc, count);
    emu_unlock();
    emu_latency("cuMemSetAccess", r == CUDA_SUCCESS ? size : 0);
    return r;
}

EMU_API CUresult cuMemGetAccess(unsigned long long *flags, const CUmemLocation *location,
                                CUdeviceptr ptr)
{
    CUresult r;
    struct emu_mapping *m = NULL;

    EMU_ENTER(cuMemGetAccess);
    emu_lock();
    r = vmm_check();
    if (r == CUDA_SUCCESS &&
        (!flags || !location || location->type != CU_MEM_LOCATION_TYPE_DEVICE ||
         !(m = emu_mapping_containing(ptr))))
        r = CUDA_ERROR_INVALID_VALUE;
    else if (r == CUDA_SUCCESS && (location->id < 0 || location->id >= emu.cfg.devices))
        r = CUDA_ERROR_INVALID_DEVICE;
    if (r == CUDA_SUCCESS)
        *flags = access_of(m, location->id);
    emu_unlock();
    return r;
}
