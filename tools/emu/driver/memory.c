/*
 * memory.c — classic device memory: cuMemAlloc_v2/cuMemFree_v2 (anonymous MAP_NORESERVE
 * mappings charged against the device capacity), cuMemGetInfo_v2, cuMemGetAddressRange_v2,
 * cuPointerGetAttribute(s), and the pointer lookups the rest of the emulator uses.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "emu.h"

static size_t round_up(size_t v, size_t a)
{
    return (v + a - 1) / a * a;
}

CUresult emu_alloc_map(size_t size, struct emu_alloc **out, int device)
{
    size_t align = size >= EMU_GRANULARITY ? EMU_GRANULARITY : 4096;
    size_t len = round_up(size, 4096), map_len = len + (align > 4096 ? align : 0);
    struct emu_alloc *a;
    uintptr_t base;
    void *m;

    if (size > ((size_t)1 << 46))
        return CUDA_ERROR_OUT_OF_MEMORY;
    a = calloc(1, sizeof *a);
    if (!a)
        return CUDA_ERROR_OUT_OF_MEMORY;
    a->charged = round_up(size, EMU_ALLOC_ALIGN);
    if (emu_cap_charge(device, a->charged) != CUDA_SUCCESS)
        goto free_struct;
    m = mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1,
             0);
    if (m == MAP_FAILED)
        goto uncharge;
    base = round_up((uintptr_t)m, align);
    if (base > (uintptr_t)m)
        munmap(m, base - (uintptr_t)m);
    if ((uintptr_t)m + map_len > base + len)
        munmap((void *)(base + len), (uintptr_t)m + map_len - (base + len));
    a->map = (void *)base;
    a->map_len = len;
    a->base = (CUdeviceptr)base;
    a->size = size;
    a->device = device;
    *out = a;
    return CUDA_SUCCESS;
uncharge:
    emu_cap_uncharge(device, a->charged);
free_struct:
    free(a);
    return CUDA_ERROR_OUT_OF_MEMORY;
}

void emu_alloc_unmap(struct emu_alloc *a)
{
    munmap(a->map, a->map_len);
    emu_cap_uncharge(a->device, a->charged);
    free(a);
}

static struct emu_alloc *emu_alloc_containing(CUdeviceptr p)
{
    struct emu_alloc *a, *tmp;

    HASH_FIND(hh, emu.allocs, &p, sizeof p, a);
    if (a)
        return a;
    HASH_ITER(hh, emu.allocs, a, tmp)
    if (p >= a->base && p < a->base + a->size)
        return a;
    return NULL;
}

/* An allocation a kernel may use at simulated time `at` (pool blocks count until their
 * stream-ordered free takes effect). */
static bool alloc_usable(const struct emu_alloc *a, uint64_t at)
{
    if (a->kind == EMU_ALLOC_PLAIN || a->state == EMU_ASYNC_LIVE)
        return true;
    return a->state == EMU_ASYNC_FREEING && at <= a->free_at;
}

bool emu_range_accessible(CUdeviceptr p, size_t n, uint64_t at, int device)
{
    struct emu_alloc *a = emu_alloc_containing(p);

    if (a)
        return alloc_usable(a, at) && n <= a->base + a->size - p;
    return emu_vmm_range_accessible(p, n, device);
}

bool emu_range_known(CUdeviceptr p, size_t n)
{
    struct emu_alloc *a = emu_alloc_containing(p);

    if (a)
        return n <= a->base + a->size - p;
    return emu_reservation_containing(p, 1) != NULL;
}

EMU_API CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize)
{
    CUresult r;
    struct emu_ctx *c = NULL;
    struct emu_alloc *a = NULL;

    EMU_ENTER(cuMemAlloc_v2);
    emu_lock();
    r = emu_current(&c);
    if (r == CUDA_SUCCESS && (!dptr || bytesize == 0))
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS)
        r = emu_alloc_map(bytesize, &a, c->device);
    if (r == CUDA_SUCCESS) {
        a->ctx = c;
        a->kind = EMU_ALLOC_PLAIN;
        HASH_ADD(hh, emu.allocs, base, sizeof a->base, a);
        *dptr = a->base;
    }
    emu_unlock();
    emu_latency("cuMemAlloc_v2", r == CUDA_SUCCESS ? bytesize : 0);
    return r;
}

EMU_API CUresult cuMemFree_v2(CUdeviceptr dptr)
{
    CUresult r;
    struct emu_ctx *c = NULL;
    struct emu_alloc *a = NULL;

    EMU_ENTER(cuMemFree_v2);
    emu_lock();
    r = emu_current(&c);
    if (r == CUDA_SUCCESS) {
        /* like the real one: wait for all work on the device first */
        emu_wait_locked(emu_ctx_point(c));
        HASH_FIND(hh, emu.allocs, &dptr, sizeof dptr, a);
        if (!a || (a->kind == EMU_ALLOC_ASYNC && a->state != EMU_ASYNC_LIVE))
            r = CUDA_ERROR_INVALID_VALUE;
        else if (c->sticky != CUDA_SUCCESS)
            r = c->sticky;
    }
    if (r == CUDA_SUCCESS) {
        HASH_DEL(emu.allocs, a);
        emu_alloc_unmap(a);
    }
    emu_unlock();
    emu_latency("cuMemFree_v2", 0);
    return r;
}

EMU_API CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total)
{
    CUresult r;
    struct emu_ctx *c = NULL;
    size_t used;

    EMU_ENTER(cuMemGetInfo_v2);
    emu_lock();
    r = emu_current(&c);
    if (r == CUDA_SUCCESS && (!free_bytes || !total))
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS) {
        used = emu_cap_used(c->device);
        *free_bytes = used < emu.cfg.capacity ? emu.cfg.capacity - used : 0;
        *total = emu.cfg.capacity;
    }
    emu_unlock();
    return r;
}

/* What holds p: a cuMemAlloc allocation or pool block, or a VMM reservation (whose range is
 * what the driver reports as the pointer's range) and perhaps a mapping in it. */
struct ptr_info {
    CUdeviceptr base;
    size_t size;
    CUdeviceptr map_base;
    size_t map_size;
    bool mapped;
    bool vmm;
    int device;
    unsigned long long access;
    uint64_t id;
};

static bool ptr_lookup_vmm(CUdeviceptr p, struct ptr_info *pi)
{
    struct emu_reservation *res = emu_reservation_containing(p, 1);
    struct emu_mapping *m = res ? emu_mapping_containing(p) : NULL;

    if (!res)
        return false;
    pi->vmm = true;
    pi->base = res->base;
    pi->size = res->size;
    if (m) {
        pi->mapped = true;
        pi->map_base = m->va;
        pi->map_size = m->size;
        pi->device = m->handle->device;
        pi->access = m->access;
        pi->id = (uint64_t)m->handle->id;
    }
    return true;
}

static bool ptr_lookup(CUdeviceptr p, struct ptr_info *pi)
{
    struct emu_alloc *a = emu_alloc_containing(p);

    memset(pi, 0, sizeof *pi);
    if (a && (a->kind == EMU_ALLOC_PLAIN || a->state != EMU_ASYNC_POOLED)) {
        pi->base = pi->map_base = a->base;
        pi->size = pi->map_size = a->size;
        pi->mapped = true;
        pi->device = a->device;
        pi->access = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
        pi->id = (uint64_t)a->base;
        return true;
    }
    return ptr_lookup_vmm(p, pi);
}

EMU_API CUresult cuMemGetAddressRange_v2(CUdeviceptr *pbase, size_t *psize, CUdeviceptr dptr)
{
    CUresult r;
    struct emu_ctx *c = NULL;
    struct ptr_info pi;

    EMU_ENTER(cuMemGetAddressRange_v2);
    emu_lock();
    r = emu_current(&c);
    if (r == CUDA_SUCCESS && (!ptr_lookup(dptr, &pi) || !pi.mapped))
        r = CUDA_ERROR_NOT_FOUND;
    if (r == CUDA_SUCCESS && pbase)
        *pbase = pi.base;
    if (r == CUDA_SUCCESS && psize)
        *psize = pi.size;
    emu_unlock();
    return r;
}

static CUresult attribute_get(void *data, CUpointer_attribute attr, CUdeviceptr p)
{
    struct ptr_info pi;

    if (!data)
        return CUDA_ERROR_INVALID_VALUE;
    if (!ptr_lookup(p, &pi))
        return CUDA_ERROR_INVALID_VALUE;
    if (!pi.mapped && attr != CU_POINTER_ATTRIBUTE_RANGE_START_ADDR &&
        attr != CU_POINTER_ATTRIBUTE_RANGE_SIZE && attr != CU_POINTER_ATTRIBUTE_MAPPED)
        return CUDA_ERROR_INVALID_VALUE; /* reserved address, nothing mapped there */
    switch (attr) {
    case CU_POINTER_ATTRIBUTE_CONTEXT:
        *(CUcontext *)data = pi.vmm ? NULL : (CUcontext)&emu.ctx[pi.device];
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
        *(unsigned int *)data = CU_MEMORYTYPE_DEVICE;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_DEVICE_POINTER:
        *(CUdeviceptr *)data = p;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_HOST_POINTER:
        return CUDA_ERROR_INVALID_VALUE;
    case CU_POINTER_ATTRIBUTE_SYNC_MEMOPS:
    case CU_POINTER_ATTRIBUTE_IS_MANAGED:
    case CU_POINTER_ATTRIBUTE_IS_GPU_DIRECT_RDMA_CAPABLE:
    case CU_POINTER_ATTRIBUTE_IS_HW_DECOMPRESS_CAPABLE:
        *(bool *)data = false;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE:
        *(bool *)data = !pi.vmm;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_MAPPED:
        *(bool *)data = pi.mapped;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_BUFFER_ID:
    case CU_POINTER_ATTRIBUTE_MEMORY_BLOCK_ID:
        *(unsigned long long *)data = pi.id;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
        *(int *)data = pi.device;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR:
        *(CUdeviceptr *)data = pi.base;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_RANGE_SIZE:
        *(size_t *)data = pi.size;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR:
        *(CUdeviceptr *)data = pi.map_base;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_MAPPING_SIZE:
        *(size_t *)data = pi.map_size;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_ALLOWED_HANDLE_TYPES:
        *(unsigned long long *)data = CU_MEM_HANDLE_TYPE_NONE;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_ACCESS_FLAGS:
        *(unsigned int *)data = pi.access == CU_MEM_ACCESS_FLAGS_PROT_READWRITE
                                    ? CU_POINTER_ATTRIBUTE_ACCESS_FLAG_READWRITE
                                : pi.access == CU_MEM_ACCESS_FLAGS_PROT_READ
                                    ? CU_POINTER_ATTRIBUTE_ACCESS_FLAG_READ
                                    : CU_POINTER_ATTRIBUTE_ACCESS_FLAG_NONE;
        return CUDA_SUCCESS;
    case CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE:
        *(CUmemoryPool *)data = NULL;
        return CUDA_SUCCESS;
    default:
        return CUDA_ERROR_INVALID_VALUE;
    }
}

EMU_API CUresult cuPointerGetAttribute(void *data, CUpointer_attribute attribute, CUdeviceptr ptr)
{
    CUresult r;

    EMU_FAST_ENTER(cuPointerGetAttribute);
    emu_lock();
    r = emu_check_init();
    if (r == CUDA_SUCCESS)
        r = attribute_get(data, attribute, ptr);
    emu_unlock();
    return r;
}

/* Bytes of the value each attribute returns. */
static size_t attribute_size(CUpointer_attribute a)
{
    switch (a) {
    case CU_POINTER_ATTRIBUTE_SYNC_MEMOPS:
    case CU_POINTER_ATTRIBUTE_IS_MANAGED:
    case CU_POINTER_ATTRIBUTE_IS_LEGACY_CUDA_IPC_CAPABLE:
    case CU_POINTER_ATTRIBUTE_MAPPED:
    case CU_POINTER_ATTRIBUTE_IS_GPU_DIRECT_RDMA_CAPABLE:
    case CU_POINTER_ATTRIBUTE_IS_HW_DECOMPRESS_CAPABLE:
        return sizeof(bool);
    case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
    case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
    case CU_POINTER_ATTRIBUTE_ACCESS_FLAGS:
        return sizeof(unsigned int);
    default:
        return sizeof(uint64_t);
    }
}

/* The plural form: unknown pointers are not an error here (the driver reports them as
 * unregistered host memory: memory type 0, context NULL). */
EMU_API CUresult cuPointerGetAttributes(unsigned int numAttributes, CUpointer_attribute *attributes,
                                        void **data, CUdeviceptr ptr)
{
    CUresult r;
    struct ptr_info pi;
    bool known;

    EMU_ENTER(cuPointerGetAttributes);
    emu_lock();
    r = emu_check_init();
    if (r == CUDA_SUCCESS && (!attributes || !data))
        r = CUDA_ERROR_INVALID_VALUE;
    known = r == CUDA_SUCCESS && ptr_lookup(ptr, &pi);
    for (unsigned i = 0; r == CUDA_SUCCESS && i < numAttributes; i++) {
        if (!data[i])
            continue;
        if (known && attribute_get(data[i], attributes[i], ptr) == CUDA_SUCCESS)
            continue;
        if (attributes[i] < CU_POINTER_ATTRIBUTE_CONTEXT ||
            attributes[i] > CU_POINTER_ATTRIBUTE_IS_HW_DECOMPRESS_CAPABLE)
            r = CUDA_ERROR_INVALID_VALUE;
        else if (attributes[i] == CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL)
            *(int *)data[i] = -2;
        else
            memset(data[i], 0, attribute_size(attributes[i]));
    }
    emu_unlock();
    return r;
}
