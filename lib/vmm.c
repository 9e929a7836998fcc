/*
 * vmm.c — the page layer of expandable segments: one reserved virtual range of one device,
 * backed page by page with physical memory. Mapping climbs the ladder reserve → create → map
 * → set access (access once per contiguous run of new mappings); unmapping hands pages back
 * to the driver or to the device's spare list; moving takes mapped pages from one place to
 * another without creating or releasing anything. Each call either does all it says or undoes
 * what it did (DESIGN.md §4 rule 6). Peer access: a device that gains access to another's
 * memory is granted it on every run the other's ranges have mapped, and on every later mapping
 * (driver.c's access set names it). What the ranges of one device share (spare list, counters,
 * the list of ranges) lives in vmm_spare.c; docs/vmm.md describes the states and the unwinding.
 */
#include <stdlib.h>

#include "internal.h"

/*
 * Page flags. A page at rest is empty (0) or ready (PG_READY). PG_HELD | PG_MAPPED without
 * PG_ACCESS is the one degraded state: it is left only when undoing a failure failed too,
 * and the next vrange_map over the page sets its access. PG_NEW, PG_SPARE and PG_MOVE only
 * exist while a call runs.
 */
enum {
    PG_HELD = 1 << 0,   /* a physical handle belongs to this page */
    PG_MAPPED = 1 << 1, /* the handle is mapped at the page's address */
    PG_ACCESS = 1 << 2, /* read/write access is set */
    PG_NEW = 1 << 3,    /* held or mapped by the running call: undone on failure */
    PG_SPARE = 1 << 4,  /* its handle came from the spare list in the running call */
    PG_MOVE = 1 << 5,   /* being moved away by the running call */
};
#define PG_READY    (PG_HELD | PG_MAPPED | PG_ACCESS)
#define PG_DEGRADED (PG_HELD | PG_MAPPED)

struct vpage {
    CUmemGenericAllocationHandle handle;
    uint8_t flags;
};

struct vrange {
    struct vrange *next; /* the device's live ranges (vmm_ranges_lock) */
    int device;
    CUdeviceptr base;
    size_t size;
    size_t page_size;
    size_t npages;
    size_t mapped_pages; /* pages with PG_MAPPED */
    size_t ready_pages;  /* pages whose flags are PG_READY: mapped and accessible */
    struct vpage *pages;
    uint64_t *ready; /* one bit per page: flags == PG_READY (finds mapped runs fast) */
};

static CUdeviceptr page_addr(const struct vrange *r, size_t i)
{
    return r->base + (CUdeviceptr)(i * r->page_size);
}

static bool span_ok(const struct vrange *r, size_t off, size_t len)
{
    return r && off <= r->size && len <= r->size - off;
}

static size_t count_flags(const struct vrange *r, size_t first, size_t end, uint8_t mask,
                          uint8_t want)
{
    size_t n = 0;
    for (size_t i = first; i < end; i++)
        n += (r->pages[i].flags & mask) == want;
    return n;
}

/* An operation on the run of pages [i, j) of r. */
typedef CUresult (*run_fn)(struct vrange *r, size_t i, size_t j, void *arg);

/* Calls fn on every maximal run of pages in [first, end) whose flags & mask equal want, in
 * address order; stops at and returns the first error. */
static CUresult for_runs(struct vrange *r, size_t first, size_t end, uint8_t mask, uint8_t want,
                         run_fn fn, void *arg)
{
    size_t i = first;
    while (i < end) {
        if ((r->pages[i].flags & mask) != want) {
            i++;
            continue;
        }
        size_t j = i + 1;
        while (j < end && (r->pages[j].flags & mask) == want)
            j++;
        CUresult err = fn(r, i, j, arg);
        if (err != CUDA_SUCCESS)
            return err;
        i = j;
    }
    return CUDA_SUCCESS;
}

static void set_flags(struct vrange *r, size_t i, size_t j, uint8_t set, uint8_t clear)
{
    for (size_t k = i; k < j; k++)
        r->pages[k].flags = (uint8_t)((r->pages[k].flags & ~clear) | set);
}

/* Brings the ready bits of pages [first, end) up to date with their flags. */
static void bits_refresh(struct vrange *r, size_t first, size_t end)
{
    for (size_t i = first; i < end; i++) {
        uint64_t bit = (uint64_t)1 << (i % 64);
        bool ready = r->pages[i].flags == PG_READY;
        if (ready == ((r->ready[i / 64] & bit) != 0))
            continue;
        r->ready[i / 64] ^= bit;
        r->ready_pages = ready ? r->ready_pages + 1 : r->ready_pages - 1;
    }
}

static void bits_refresh_span(struct vrange *r, size_t off, size_t len)
{
    if (span_ok(r, off, len) && len)
        bits_refresh(r, off / r->page_size, (off + len - 1) / r->page_size + 1);
}

static bool bit_ready(const struct vrange *r, size_t i)
{
    return (r->ready[i / 64] >> (i % 64)) & 1;
}

/* Ready pages among [first, end): the ready bitmap counted 64 pages at a time. */
static size_t count_ready(const struct vrange *r, size_t first, size_t end)
{
    size_t n = 0;
    while (first < end) {
        size_t w = first / 64, lo = first % 64;
        size_t hi = end - w * 64 < 64 ? end - w * 64 : 64;
        uint64_t mask = (hi == 64 ? ~(uint64_t)0 : ((uint64_t)1 << hi) - 1) & (~(uint64_t)0 << lo);
        uint64_t bits = r->ready[w] & mask;
        n += bits == mask ? hi - lo : (size_t)__builtin_popcountll(bits);
        first = w * 64 + hi;
    }
    return n;
}

static void count_mapped(struct vrange *r, int64_t pages)
{
    r->mapped_pages = (size_t)((int64_t)r->mapped_pages + pages);
    vmm_account(r->device, 0, pages * (int64_t)r->page_size, 0);
}

static CUresult run_set_access(struct vrange *r, size_t i, size_t j, void *arg)
{
    (void)arg;
    CUresult err = drv_mem_set_access(page_addr(r, i), (j - i) * r->page_size, r->device);
    if (err != CUDA_SUCCESS)
        return err;
    set_flags(r, i, j, PG_ACCESS, 0);
    return CUDA_SUCCESS;
}

/* ---- reserve --------------------------------------------------------------------------------- */

/* The page size a range of `device` uses: `asked` if given (it must be a multiple of the
 * granularity), else config's page_size rounded up to the granularity. */
static CUresult page_size_pick(size_t gran, size_t asked, size_t *out)
{
    if (gran == 0)
        return CUDA_ERROR_INVALID_VALUE;
    if (asked != 0) {
        *out = asked;
        return asked % gran == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
    }
    size_t conf = config_get()->page_size;
    if (conf > SIZE_MAX - gran)
        return CUDA_ERROR_INVALID_VALUE;
    *out = conf == 0 ? gran : (conf + gran - 1) / gran * gran;
    return CUDA_SUCCESS;
}

/* Reservations are aligned to the page size when it is a power of two (the driver takes only
 * those), else to the granularity. */
static size_t reserve_alignment(size_t page_size, size_t gran)
{
    return (page_size & (page_size - 1)) == 0 ? page_size : gran;
}

CUresult vrange_reserve(int device, size_t va_size, size_t page_size, struct vrange **out)
{
    size_t gran = 0;
    CUresult err;

    if (!out || !fl_device_in_range(device) || va_size == 0)
        return CUDA_ERROR_INVALID_VALUE;
    *out = NULL;
    err = drv_init();
    if (err != CUDA_SUCCESS)
        return err;
    if (!drv_has(DRV_FEATURE_VMM))
        return CUDA_ERROR_NOT_SUPPORTED;
    err = drv_mem_get_granularity(&gran, device);
    if (err != CUDA_SUCCESS)
        return err;
    err = page_size_pick(gran, page_size, &page_size);
    if (err != CUDA_SUCCESS || va_size > SIZE_MAX - page_size)
        return CUDA_ERROR_INVALID_VALUE;

    struct vrange *r = calloc(1, sizeof(*r));
    if (!r)
        return CUDA_ERROR_OUT_OF_MEMORY;
    r->device = device;
    r->page_size = page_size;
    r->npages = (va_size + page_size - 1) / page_size;
    r->size = r->npages * page_size;
    r->pages = calloc(r->npages, sizeof(*r->pages));
    r->ready = calloc((r->npages + 63) / 64, sizeof(*r->ready));
    err = CUDA_ERROR_OUT_OF_MEMORY;
    if (!r->pages || !r->ready)
        goto free_pages;
    err = drv_mem_address_reserve(&r->base, r->size, reserve_alignment(page_size, gran));
    if (err != CUDA_SUCCESS)
        goto free_pages;
    vmm_account(device, (int64_t)r->size, 0, 0);
    struct vrange **head = vmm_ranges_lock(device);
    r->next = *head;
    *head = r;
    vmm_ranges_unlock(device);
    *out = r;
    return CUDA_SUCCESS;

free_pages:
    free(r->ready);
    free(r->pages);
    free(r);
    return err;
}

CUdeviceptr vrange_base(const struct vrange *r)
{
    return r->base;
}

size_t vrange_size(const struct vrange *r)
{
    return r->size;
}

size_t vrange_page_size(const struct vrange *r)
{
    return r->page_size;
}

/* ---- map ------------------------------------------------------------------------------------- */

/* Gives every page of [first, end) without a handle one: from the spare list first, created
 * for the rest. The spare nodes used go onto *used (they carry the handles back on undo). */
static CUresult pages_hold(struct vrange *r, size_t first, size_t end, struct vmm_spare **used)
{
    struct vmm_spare *spare = NULL;
    size_t need = count_flags(r, first, end, PG_HELD, 0);

    vmm_spare_take(r->device, r->page_size, need, &spare);
    for (size_t i = first; i < end; i++) {
        struct vpage *p = &r->pages[i];
        if (p->flags & PG_HELD)
            continue;
        if (spare) {
            struct vmm_spare *node = spare;
            spare = node->next;
            p->handle = node->handle;
            p->flags = PG_HELD | PG_NEW | PG_SPARE;
            node->next = *used;
            *used = node;
            continue;
        }
        CUmemGenericAllocationHandle h = 0;
        CUresult err = vmm_page_create(r->device, r->page_size, &h);
        if (err != CUDA_SUCCESS)
            return err;
        p->handle = h;
        p->flags = PG_HELD | PG_NEW;
    }
    return CUDA_SUCCESS;
}

static CUresult pages_map(struct vrange *r, size_t first, size_t end)
{
    for (size_t i = first; i < end; i++) {
        struct vpage *p = &r->pages[i];
        if ((p->flags & (PG_NEW | PG_MAPPED)) != PG_NEW)
            continue;
        CUresult err = drv_mem_map(page_addr(r, i), r->page_size, p->handle);
        if (err != CUDA_SUCCESS)
            return err;
        p->flags |= PG_MAPPED;
    }
    return CUDA_SUCCESS;
}

/* Undo of a run of new mappings. If the unmap fails too, the pages stay mapped and become
 * the range's own (ready or degraded) so that nothing is lost. */
static CUresult run_undo_map(struct vrange *r, size_t i, size_t j, void *arg)
{
    (void)arg;
    CUresult err = drv_mem_unmap(page_addr(r, i), (j - i) * r->page_size);
    if (err == CUDA_SUCCESS) {
        set_flags(r, i, j, 0, PG_MAPPED | PG_ACCESS);
        return CUDA_SUCCESS;
    }
    log_warn("vmm: undoing a map: cuMemUnmap failed (error %d); %zu pages stay mapped at %#llx",
             (int)err, j - i, (unsigned long long)page_addr(r, i));
    set_flags(r, i, j, 0, PG_NEW | PG_SPARE);
    count_mapped(r, (int64_t)(j - i));
    return CUDA_SUCCESS;
}

/* Hands back the handles of pages still marked new: spare ones to the spare list (in the
 * nodes they came in), created ones to the driver. */
static void pages_unhold(struct vrange *r, size_t first, size_t end, struct vmm_spare *used)
{
    for (size_t i = first; i < end; i++) {
        struct vpage *p = &r->pages[i];
        if (!(p->flags & PG_NEW))
            continue;
        if (p->flags & PG_SPARE) {
            struct vmm_spare *node = used;
            used = node->next;
            node->handle = p->handle;
            vmm_spare_put(r->device, node);
        } else {
            vmm_page_dispose(r->device, p->handle, r->page_size, false);
        }
        p->flags = 0;
        p->handle = 0;
    }
    vmm_spare_free_chain(used);
}

static void pages_commit(struct vrange *r, size_t first, size_t end)
{
    size_t added = 0;
    for (size_t i = first; i < end; i++) {
        struct vpage *p = &r->pages[i];
        added += (p->flags & PG_NEW) != 0;
        p->flags &= (uint8_t) ~(PG_NEW | PG_SPARE);
    }
    count_mapped(r, (int64_t)added);
}

static CUresult map_span(struct vrange *r, size_t off, size_t len)
{
    struct vmm_spare *used = NULL;
    CUresult err;

    if (!span_ok(r, off, len))
        return CUDA_ERROR_INVALID_VALUE;
    if (len == 0)
        return CUDA_SUCCESS;
    size_t first = off / r->page_size;
    size_t end = (off + len - 1) / r->page_size + 1;

    err = pages_hold(r, first, end, &used);
    if (err != CUDA_SUCCESS)
        goto undo_hold;
    err = pages_map(r, first, end);
    if (err != CUDA_SUCCESS)
        goto undo_map;
    err = for_runs(r, first, end, PG_MAPPED | PG_ACCESS, PG_MAPPED, run_set_access, NULL);
    if (err != CUDA_SUCCESS)
        goto undo_map;
    pages_commit(r, first, end);
    vmm_spare_free_chain(used);
    return CUDA_SUCCESS;

undo_map:
    for_runs(r, first, end, PG_NEW | PG_MAPPED, PG_NEW | PG_MAPPED, run_undo_map, NULL);
undo_hold:
    pages_unhold(r, first, end, used);
    log_debug("vmm: mapping %zu bytes at offset %zu of device %d failed (error %d), undone", len,
              off, r->device, (int)err);
    return err;
}

/* ---- unmap and destroy ----------------------------------------------------------------------- */

static CUresult run_unmap(struct vrange *r, size_t i, size_t j, void *arg)
{
    bool keep = *(const bool *)arg;
    CUresult err = drv_mem_unmap(page_addr(r, i), (j - i) * r->page_size);
    if (err != CUDA_SUCCESS) {
        log_debug("vmm: cuMemUnmap of %zu pages at %#llx failed (error %d)", j - i,
                  (unsigned long long)page_addr(r, i), (int)err);
        return err;
    }
    for (size_t k = i; k < j; k++) {
        vmm_page_dispose(r->device, r->pages[k].handle, r->page_size, keep);
        r->pages[k].flags = 0;
        r->pages[k].handle = 0;
    }
    count_mapped(r, -(int64_t)(j - i));
    return CUDA_SUCCESS;
}

CUresult vrange_map(struct vrange *r, size_t off, size_t len)
{
    if (!r)
        return CUDA_ERROR_INVALID_VALUE;
    vmm_ranges_lock(r->device);
    CUresult err = map_span(r, off, len);
    bits_refresh_span(r, off, len);
    vmm_ranges_unlock(r->device);
    return err;
}

static CUresult unmap_span(struct vrange *r, size_t off, size_t len, bool keep)
{
    if (!span_ok(r, off, len))
        return CUDA_ERROR_INVALID_VALUE;
    size_t first = off / r->page_size + (off % r->page_size != 0);
    size_t end = (off + len) / r->page_size;
    if (first >= end)
        return CUDA_SUCCESS;
    return for_runs(r, first, end, PG_MAPPED, PG_MAPPED, run_unmap, &keep);
}

static CUresult unmap_locked(struct vrange *r, size_t off, size_t len, bool keep)
{
    CUresult err = unmap_span(r, off, len, keep);
    bits_refresh_span(r, off, len);
    return err;
}

CUresult vrange_unmap(struct vrange *r, size_t off, size_t len, bool keep)
{
    if (!r)
        return CUDA_ERROR_INVALID_VALUE;
    vmm_ranges_lock(r->device);
    CUresult err = unmap_locked(r, off, len, keep);
    vmm_ranges_unlock(r->device);
    return err;
}

/* Takes r off its device's list (whose lock the caller holds) and frees it. */
static void range_free(struct vrange *r, struct vrange **head)
{
    while (*head && *head != r)
        head = &(*head)->next;
    if (*head)
        *head = r->next;
    free(r->ready);
    free(r->pages);
    free(r);
}

/* Unmaps one run for vrange_destroy: a failure is remembered and the other runs still go. */
static CUresult run_unmap_all(struct vrange *r, size_t i, size_t j, void *arg)
{
    CUresult *first_err = arg;
    bool keep = false;
    CUresult err = run_unmap(r, i, j, &keep);
    if (err != CUDA_SUCCESS && *first_err == CUDA_SUCCESS)
        *first_err = err;
    return CUDA_SUCCESS;
}

void vrange_destroy(struct vrange *r)
{
    CUresult err = CUDA_SUCCESS;
    if (!r)
        return;
    int device = r->device;
    struct vrange **head = vmm_ranges_lock(device);
    for_runs(r, 0, r->npages, PG_MAPPED, PG_MAPPED, run_unmap_all, &err);
    if (err == CUDA_SUCCESS)
        err = drv_mem_address_free(r->base, r->size);
    if (err != CUDA_SUCCESS)
        log_error("vmm: destroying the %zu-byte range at %#llx of device %d failed (error %d); "
                  "%zu mapped bytes and its address space stay held",
                  r->size, (unsigned long long)r->base, r->device, (int)err,
                  r->mapped_pages * r->page_size);
    vmm_account(r->device, -(int64_t)r->size, -(int64_t)(r->mapped_pages * r->page_size), 0);
    range_free(r, head);
    vmm_ranges_unlock(device);
}

CUresult vrange_release(struct vrange *r)
{
    if (!r)
        return CUDA_ERROR_INVALID_VALUE;
    int device = r->device;
    struct vrange **head = vmm_ranges_lock(device);
    CUresult err = unmap_locked(r, 0, r->size, false);
    if (err == CUDA_SUCCESS)
        err = drv_mem_address_free(r->base, r->size);
    if (err == CUDA_SUCCESS) {
        vmm_account(device, -(int64_t)r->size, -(int64_t)(r->mapped_pages * r->page_size), 0);
        range_free(r, head);
    }
    vmm_ranges_unlock(device);
    return err;
}

/* ---- move ------------------------------------------------------------------------------------ */

struct move {
    struct vrange *src, *dst;
    size_t src_first, dst_first, pages;
};

static struct vpage *move_src_page(const struct move *m, size_t dst_index)
{
    return &m->src->pages[dst_index - m->dst_first + m->src_first];
}

static bool move_ok(const struct move *m, size_t src_off, size_t dst_off, size_t len)
{
    const struct vrange *s = m->src, *d = m->dst;
    if (!s || !d || s->device != d->device || s->page_size != d->page_size)
        return false;
    if (!span_ok(s, src_off, len) || !span_ok(d, dst_off, len))
        return false;
    return (src_off | dst_off | len) % s->page_size == 0;
}

static CUresult run_unmap_src(struct vrange *r, size_t i, size_t j, void *arg)
{
    (void)arg;
    CUresult err = drv_mem_unmap(page_addr(r, i), (j - i) * r->page_size);
    if (err != CUDA_SUCCESS)
        return err;
    set_flags(r, i, j, 0, PG_MAPPED | PG_ACCESS);
    return CUDA_SUCCESS;
}

/* Maps every page being moved at its place in dst. */
static CUresult move_map_dst(struct move *m)
{
    for (size_t k = 0; k < m->pages; k++) {
        struct vpage *s = &m->src->pages[m->src_first + k];
        struct vpage *d = &m->dst->pages[m->dst_first + k];
        if (!(s->flags & PG_MOVE))
            continue;
        CUresult err =
            drv_mem_map(page_addr(m->dst, m->dst_first + k), m->src->page_size, s->handle);
        if (err != CUDA_SUCCESS)
            return err;
        d->handle = s->handle;
        d->flags = PG_HELD | PG_MAPPED | PG_NEW;
    }
    return CUDA_SUCCESS;
}

/* Undo of a run of dst mappings. If the unmap fails too, the pages stay at dst (moved after
 * all, possibly degraded) and leave src. */
static CUresult run_undo_move(struct vrange *dst, size_t i, size_t j, void *arg)
{
    struct move *m = arg;
    CUresult err = drv_mem_unmap(page_addr(dst, i), (j - i) * dst->page_size);
    for (size_t k = i; k < j; k++) {
        struct vpage *s = move_src_page(m, k);
        if (err == CUDA_SUCCESS) {
            dst->pages[k].flags = 0;
            dst->pages[k].handle = 0;
            continue;
        }
        dst->pages[k].flags &= (uint8_t)~PG_NEW;
        s->flags = 0;
        s->handle = 0;
    }
    if (err != CUDA_SUCCESS) {
        log_warn("vmm: undoing a move: cuMemUnmap failed (error %d); %zu pages stay at %#llx",
                 (int)err, j - i, (unsigned long long)page_addr(dst, i));
        m->src->mapped_pages -= j - i;
        dst->mapped_pages += j - i;
        vmm_account(dst->device, 0, 0, j - i);
    }
    return CUDA_SUCCESS;
}

/* Maps back at src the pages unmapped there. A page that cannot be mapped back goes to the
 * spare list; one whose access cannot be set back stays degraded. */
static void move_remap_src(struct move *m)
{
    struct vrange *src = m->src;
    size_t end = m->src_first + m->pages;
    for (size_t i = m->src_first; i < end; i++) {
        struct vpage *p = &src->pages[i];
        if ((p->flags & (PG_MOVE | PG_HELD | PG_MAPPED)) != (PG_MOVE | PG_HELD))
            continue;
        CUresult err = drv_mem_map(page_addr(src, i), src->page_size, p->handle);
        if (err == CUDA_SUCCESS) {
            p->flags |= PG_MAPPED;
            continue;
        }
        log_warn("vmm: undoing a move: cuMemMap failed (error %d); page at %#llx goes to the "
                 "spare list",
                 (int)err, (unsigned long long)page_addr(src, i));
        vmm_page_dispose(src->device, p->handle, src->page_size, true);
        p->flags = 0;
        p->handle = 0;
        count_mapped(src, -1);
    }
    CUresult err = for_runs(src, m->src_first, end, PG_MOVE | PG_MAPPED | PG_ACCESS,
                            PG_MOVE | PG_MAPPED, run_set_access, NULL);
    if (err != CUDA_SUCCESS)
        log_warn("vmm: undoing a move: cuMemSetAccess failed (error %d); pages stay mapped "
                 "without access until mapped again",
                 (int)err);
    set_flags(src, m->src_first, end, 0, PG_MOVE);
}

static void move_commit(struct move *m, size_t moving)
{
    for (size_t k = 0; k < m->pages; k++) {
        struct vpage *s = &m->src->pages[m->src_first + k];
        struct vpage *d = &m->dst->pages[m->dst_first + k];
        if (!(s->flags & PG_MOVE))
            continue;
        d->flags = PG_READY;
        s->flags = 0;
        s->handle = 0;
    }
    m->src->mapped_pages -= moving;
    m->dst->mapped_pages += moving;
    vmm_account(m->src->device, 0, 0, moving);
}

static CUresult move_span(struct vrange *src, size_t src_off, struct vrange *dst, size_t dst_off,
                          size_t len)
{
    struct move m = {.src = src, .dst = dst};
    CUresult err;

    if (!move_ok(&m, src_off, dst_off, len))
        return CUDA_ERROR_INVALID_VALUE;
    m.src_first = src_off / src->page_size;
    m.dst_first = dst_off / dst->page_size;
    m.pages = len / src->page_size;
    size_t src_end = m.src_first + m.pages, dst_end = m.dst_first + m.pages;
    if (count_flags(dst, m.dst_first, dst_end, 0xff, 0) != m.pages)
        return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = m.src_first; i < src_end; i++)
        if (src->pages[i].flags & PG_MAPPED)
            src->pages[i].flags |= PG_MOVE;
    size_t moving = count_flags(src, m.src_first, src_end, PG_MOVE, PG_MOVE);
    if (moving == 0)
        return CUDA_SUCCESS;

    err = for_runs(src, m.src_first, src_end, PG_MOVE | PG_MAPPED, PG_MOVE | PG_MAPPED,
                   run_unmap_src, NULL);
    if (err != CUDA_SUCCESS)
        goto undo_src_unmap;
    err = move_map_dst(&m);
    if (err != CUDA_SUCCESS)
        goto undo_dst_map;
    err = for_runs(dst, m.dst_first, dst_end, PG_NEW | PG_ACCESS, PG_NEW, run_set_access, NULL);
    if (err != CUDA_SUCCESS)
        goto undo_dst_map;
    move_commit(&m, moving);
    return CUDA_SUCCESS;

undo_dst_map:
    for_runs(dst, m.dst_first, dst_end, PG_NEW | PG_MAPPED, PG_NEW | PG_MAPPED, run_undo_move, &m);
undo_src_unmap:
    move_remap_src(&m);
    log_debug("vmm: moving %zu pages on device %d failed (error %d), undone", moving, src->device,
              (int)err);
    return err;
}

CUresult vrange_move(struct vrange *src, size_t src_off, struct vrange *dst, size_t dst_off,
                     size_t len)
{
    if (!src || !dst)
        return CUDA_ERROR_INVALID_VALUE;
    /* src's lock covers dst: a move between devices is refused before touching anything. */
    vmm_ranges_lock(src->device);
    CUresult err = move_span(src, src_off, dst, dst_off, len);
    bits_refresh_span(src, src_off, len);
    if (dst->device == src->device)
        bits_refresh_span(dst, dst_off, len);
    vmm_ranges_unlock(src->device);
    return err;
}

/* ---- peer access ----------------------------------------------------------------------------- */

/* A walk setting one device's access on the ready runs of a device's ranges. */
struct peer_walk {
    int peer;
    bool on;
    size_t limit; /* runs to set at most */
    size_t done;  /* runs set so far */
};

static CUresult run_set_peer(struct vrange *r, size_t i, size_t j, void *arg)
{
    struct peer_walk *w = arg;
    if (w->done == w->limit)
        return CUDA_SUCCESS;
    CUresult err = drv_mem_set_access_of(page_addr(r, i), (j - i) * r->page_size, w->peer, w->on);
    if (err != CUDA_SUCCESS)
        return err;
    w->done++;
    return CUDA_SUCCESS;
}

/* Visits the ready runs of every range in list order, each in address order: the same order
 * every time while the list lock is held, so a second walk can take back what a first did. */
static CUresult walk_ready(struct vrange *head, struct peer_walk *w)
{
    for (struct vrange *r = head; r; r = r->next) {
        CUresult err = for_runs(r, 0, r->npages, 0xff, PG_READY, run_set_peer, w);
        if (err != CUDA_SUCCESS)
            return err;
    }
    return CUDA_SUCCESS;
}

CUresult vmm_peer_enable(int owner, int peer)
{
    if (!fl_device_in_range(owner) || !fl_device_in_range(peer) || owner == peer)
        return CUDA_ERROR_INVALID_DEVICE;
    struct vrange **head = vmm_ranges_lock(owner);
    struct peer_walk grant = {.peer = peer, .on = true, .limit = SIZE_MAX};
    drv_peer_set(owner, peer, true);
    CUresult err = walk_ready(*head, &grant);
    if (err != CUDA_SUCCESS)
        goto forget_peer;
    vmm_ranges_unlock(owner);
    log_debug("vmm: device %d may access device %d's mappings (%zu runs granted)", peer, owner,
              grant.done);
    return CUDA_SUCCESS;

forget_peer:
    drv_peer_set(owner, peer, false);
    struct peer_walk revoke = {.peer = peer, .on = false, .limit = grant.done};
    CUresult undo = walk_ready(*head, &revoke);
    vmm_ranges_unlock(owner);
    if (undo != CUDA_SUCCESS)
        log_warn("vmm: taking back device %d's access to device %d's mappings failed (error "
                 "%d); %zu of %zu runs keep it",
                 peer, owner, (int)undo, grant.done - revoke.done, grant.done);
    log_error("vmm: granting device %d access to device %d's mapped memory failed (error %d)", peer,
              owner, (int)err);
    return err;
}

void vmm_peer_disable(int owner, int peer)
{
    if (!fl_device_in_range(owner) || !fl_device_in_range(peer))
        return;
    vmm_ranges_lock(owner);
    drv_peer_set(owner, peer, false);
    vmm_ranges_unlock(owner);
}

/* ---- queries and the walker ------------------------------------------------------------------ */

size_t vrange_mapped_bytes(const struct vrange *r)
{
    return r->mapped_pages * r->page_size;
}

size_t vrange_ready_bytes(const struct vrange *r)
{
    return r->ready_pages * r->page_size;
}

size_t vrange_ready_in(const struct vrange *r, size_t off, size_t len)
{
    if (!span_ok(r, off, len) || len == 0)
        return 0;
    size_t first = off / r->page_size;
    size_t end = (off + len - 1) / r->page_size + 1;
    return count_ready(r, first, end) * r->page_size;
}

size_t vrange_next_run(const struct vrange *r, size_t off, size_t end, bool mapped, size_t *len)
{
    *len = 0;
    if (!r || end > r->size)
        end = r ? r->size : 0;
    size_t ps = r ? r->page_size : 1;
    size_t i = (off + ps - 1) / ps, stop = end / ps;
    uint8_t want = mapped ? PG_READY : 0;
    while (mapped && i < stop && !bit_ready(r, i)) {
        uint64_t w = r->ready[i / 64] >> (i % 64);
        i = w ? i + (size_t)__builtin_ctzll(w) : (i / 64 + 1) * 64;
    }
    while (!mapped && i < stop && r->pages[i].flags != want)
        i++;
    i = i < stop ? i : stop;
    size_t j = i;
    while (j < stop && r->pages[j].flags == want)
        j++;
    *len = (j - i) * ps;
    return i < stop ? i * ps : end;
}

size_t vrange_host_bytes(const struct vrange *r)
{
    return sizeof(*r) + r->npages * sizeof(*r->pages) + (r->npages + 63) / 64 * sizeof(*r->ready);
}

/* Collects the handles of the mapped pages into `out`; false (logged) on a bad page. */
static bool pages_walk(const struct vrange *r, CUmemGenericAllocationHandle *out, size_t *n)
{
    *n = 0;
    for (size_t i = 0; i < r->npages; i++) {
        const struct vpage *p = &r->pages[i];
        bool empty = p->flags == 0 && p->handle == 0;
        bool mapped = p->flags == PG_READY || p->flags == PG_DEGRADED;
        if (!empty && !mapped) {
            log_error("vmm: page %zu of range %#llx has flags %#x", i, (unsigned long long)r->base,
                      p->flags);
            return false;
        }
        if (!mapped)
            continue;
        if (*n == r->mapped_pages) {
            log_error("vmm: range %#llx has more mapped pages than its count %zu",
                      (unsigned long long)r->base, r->mapped_pages);
            return false;
        }
        out[(*n)++] = p->handle;
    }
    return true;
}

static bool handles_unique(const struct vrange *r, const CUmemGenericAllocationHandle *h, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        if (h[i] == h[i - 1]) {
            log_error("vmm: range %#llx maps handle %#llx twice", (unsigned long long)r->base,
                      (unsigned long long)h[i]);
            return false;
        }
    }
    return true;
}

bool vrange_is_valid(const struct vrange *r)
{
    size_t reserved = 0, mapped = 0, n = 0;
    if (!r || !r->pages || r->page_size == 0 || r->npages * r->page_size != r->size) {
        log_error("vmm: range %p is malformed", (const void *)r);
        return false;
    }
    CUmemGenericAllocationHandle *handles = malloc((r->mapped_pages + 1) * sizeof(*handles));
    if (!handles)
        return false;
    bool ok = pages_walk(r, handles, &n);
    if (ok && n != r->mapped_pages) {
        log_error("vmm: range %#llx has %zu mapped pages, its count says %zu",
                  (unsigned long long)r->base, n, r->mapped_pages);
        ok = false;
    }
    if (ok && count_ready(r, 0, r->npages) != r->ready_pages) {
        log_error("vmm: range %#llx: its count of ready pages disagrees with its ready bits",
                  (unsigned long long)r->base);
        ok = false;
    }
    for (size_t i = 0; ok && i < r->npages; i++)
        if (bit_ready(r, i) != (r->pages[i].flags == PG_READY)) {
            log_error("vmm: range %#llx: page %zu's ready bit disagrees with its flags",
                      (unsigned long long)r->base, i);
            ok = false;
        }
    vmm_sort_handles(handles, n);
    ok = ok && handles_unique(r, handles, n) && vmm_spare_is_valid(r->device, handles, n);
    free(handles);
    vmm_va_bytes(r->device, &reserved, &mapped);
    if (ok && (reserved < r->size || mapped < vrange_mapped_bytes(r))) {
        log_error("vmm: device %d counts %zu reserved/%zu mapped bytes, less than one range's",
                  r->device, reserved, mapped);
        ok = false;
    }
    return ok;
}
