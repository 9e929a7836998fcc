/*
 * audit.c — the leak audit: every allocation, pool block, physical handle, mapping,
 * reservation, stream, event and graph still held. fragless_emu_audit(fd) writes it on
 * demand; with FRAGLESS_EMU_AUDIT=1 it is written to stderr at exit, and with =strict the
 * process then exits with status 99 if anything leaked.
 */
#include <stdio.h>
#include <unistd.h>

#include "emu.h"

#define AUDIT_EXIT_STATUS 99

static const char *async_state(enum emu_async_state s)
{
    return s == EMU_ASYNC_LIVE ? "live" : s == EMU_ASYNC_FREEING ? "free pending" : "pooled";
}

static int audit_allocs(int fd, bool print)
{
    struct emu_alloc *a, *tmp;
    int n = 0;

    HASH_ITER(hh, emu.allocs, a, tmp)
    {
        if (a->kind == EMU_ALLOC_ASYNC && a->state == EMU_ASYNC_POOLED)
            continue; /* the pool's own cache, released at the next synchronization */
        n++;
        if (!print)
            continue;
        if (a->kind == EMU_ALLOC_PLAIN)
            dprintf(fd, "  cuMemAlloc allocation 0x%llx, %zu bytes, device %d\n",
                    (unsigned long long)a->base, a->size, a->device);
        else
            dprintf(fd, "  cuMemAllocAsync block 0x%llx, %zu bytes, device %d (%s)\n",
                    (unsigned long long)a->base, a->size, a->device, async_state(a->state));
    }
    return n;
}

static int audit_vmm(int fd, bool print)
{
    struct emu_handle *h, *htmp;
    struct emu_reservation *res, *rtmp;
    int n = 0;

    HASH_ITER(hh, emu.handles, h, htmp)
    {
        if (h->refs == 0)
            continue; /* released, alive only through its mappings (listed below) */
        n++;
        if (print)
            dprintf(fd, "  cuMemCreate handle 0x%llx, %zu bytes, device %d, %u reference(s)\n",
                    (unsigned long long)h->id, h->size, h->device, h->refs);
    }
    HASH_ITER(hh, emu.reservations, res, rtmp)
    {
        n++;
        if (print)
            dprintf(fd, "  cuMemAddressReserve range 0x%llx, %zu bytes\n",
                    (unsigned long long)res->base, res->size);
        for (size_t i = 0; i < res->nmaps; i++) {
            struct emu_mapping *m = res->maps[i];
            n++;
            if (print)
                dprintf(fd, "  cuMemMap mapping 0x%llx, %zu bytes of handle 0x%llx\n",
                        (unsigned long long)m->va, m->size, (unsigned long long)m->handle->id);
        }
    }
    return n;
}

static int audit_objects(int fd, bool print)
{
    struct emu_stream *s, *stmp;
    struct emu_event *e, *etmp;
    struct emu_graph *g, *gtmp;
    int n = 0;

    HASH_ITER(hh, emu.streams, s, stmp)
    {
        if (s->implicit)
            continue;
        n++;
        if (print)
            dprintf(fd, "  stream %p, device %d\n", (void *)s, s->ctx->device);
    }
    HASH_ITER(hh, emu.events, e, etmp)
    {
        n++;
        if (print)
            dprintf(fd, "  event %p, device %d\n", (void *)e, e->ctx->device);
    }
    HASH_ITER(hh, emu.graphs, g, gtmp)
    {
        n++;
        if (print)
            dprintf(fd, "  graph %p\n", (void *)g);
    }
    return n;
}

static int audit_count(void)
{
    return audit_allocs(-1, false) + audit_vmm(-1, false) + audit_objects(-1, false);
}

static int emu_audit_write(int fd)
{
    int n = audit_count();

    if (n == 0) {
        dprintf(fd, "fragless-emu audit (pid %d): nothing leaked\n", (int)getpid());
        return 0;
    }
    dprintf(fd, "fragless-emu audit (pid %d): %d leaked object(s)\n", (int)getpid(), n);
    audit_allocs(fd, true);
    audit_vmm(fd, true);
    audit_objects(fd, true);
    return n;
}

EMU_API int fragless_emu_audit(int fd)
{
    int n;

    emu_config();
    emu_lock();
    n = emu_audit_write(fd);
    emu_unlock();
    return n;
}

__attribute__((destructor)) static void audit_at_exit(void)
{
    int n;

    if (!emu.cfg.audit || !emu.initialized || emu_in_forked_child())
        return;
    emu_lock();
    n = emu_audit_write(STDERR_FILENO);
    emu_unlock();
    if (n > 0 && emu.cfg.audit == 2)
        _exit(AUDIT_EXIT_STATUS);
}
