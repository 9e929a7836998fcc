/*
 * fastpath.c — the light gate of the entry points that cost tens of nanoseconds on a real
 * driver (thread-local context queries, device queries, queries of one stream, event or
 * pointer). They count their calls in atomic counters of their own, consult fault injection
 * only when a rule names them (an atomic flag per entry point, set when rules are armed), and
 * apply completed simulated work only when some is due (emu_device_due). Everything else the
 * full gate (state.c) does per call, lock, clock and counter table, they skip; their bodies
 * take the lock only if they need shared objects. Semantics are those of the full gate.
 */
#include <string.h>

#include "emu.h"

/* One cache line each: threads calling different entry points do not share a counter line. */
struct fast_entry {
    _Alignas(64) _Atomic uint64_t calls;
    atomic_bool armed; /* a fault rule names this entry point */
};

#define EMU_FAST_NAME(name) #name,
static const char *const names[EMU_FAST_COUNT] = {EMU_FAST_ENTRIES(EMU_FAST_NAME)};
#undef EMU_FAST_NAME

static struct fast_entry entries[EMU_FAST_COUNT];

static CUresult fast_fault(enum emu_fast_id id)
{
    CUresult r;

    emu_lock();
    r = emu_faults_check(names[id]);
    emu_unlock();
    return r;
}

static void fast_catch_up(void)
{
    emu_lock();
    if (emu_check_init() == CUDA_SUCCESS)
        emu_device_advance();
    emu_unlock();
}

CUresult emu_fast_enter(enum emu_fast_id id)
{
    struct fast_entry *e = &entries[id];

    emu_config();
    atomic_fetch_add_explicit(&e->calls, 1, memory_order_relaxed);
    if (atomic_load_explicit(&e->armed, memory_order_acquire)) {
        CUresult r = fast_fault(id);
        if (r != CUDA_SUCCESS)
            return r;
    }
    if (emu_device_due())
        fast_catch_up();
    return CUDA_SUCCESS;
}

uint64_t emu_fast_calls(const char *name, bool *found)
{
    uint64_t n = 0;
    bool all = strcmp(name, "*") == 0;

    *found = all;
    for (int i = 0; i < EMU_FAST_COUNT; i++) {
        if (all || strcmp(names[i], name) == 0) {
            n += atomic_load_explicit(&entries[i].calls, memory_order_relaxed);
            *found = true;
        }
    }
    return n;
}

void emu_fast_rearm(void)
{
    for (int i = 0; i < EMU_FAST_COUNT; i++)
        atomic_store_explicit(&entries[i].armed, emu_faults_armed(names[i]), memory_order_release);
}
