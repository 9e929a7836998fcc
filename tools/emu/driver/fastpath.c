/*
 * fastpath.c — the light gate of the entry points that cost tens of nanoseconds on a real
 * driver (thread-local context queries, device queries, queries of one stream, event or
 * pointer). They count their calls in per-thread counters (summed on read), consult fault injection
 * only when a rule names them (an atomic flag per entry point, set when rules are armed), and
 * apply completed simulated work only when some is due (emu_device_due). Everything else the
 * full gate (state.c) does per call, lock, clock and counter table, they skip; their bodies
 * take the lock only if they need shared objects. Semantics are those of the full gate.
 */
#include <stdlib.h>
#include <string.h>

#include "emu.h"

/* Whether a fault rule names an entry point; one cache line each. */
struct fast_entry {
    _Alignas(64) atomic_bool armed;
};

#define EMU_FAST_NAME(name) #name,
static const char *const names[EMU_FAST_COUNT] = {EMU_FAST_ENTRIES(EMU_FAST_NAME)};
#undef EMU_FAST_NAME

static struct fast_entry entries[EMU_FAST_COUNT];

/* Call counts: each thread counts in a block of its own (written by that thread only, so
 * threads calling the same entry point share no cache line, as a real driver's thread-local
 * queries share nothing); readers add up every block. Blocks are never freed: a dead thread's
 * counts stay in the sums, and a later thread counts on in its block. */
struct fast_counts {
    _Atomic uint64_t calls[EMU_FAST_COUNT];
    struct fast_counts *_Atomic next;
    atomic_bool alive;
};

static struct fast_counts *_Atomic counts_list;
static struct fast_counts shared_counts; /* for a thread that got no block of its own */
static pthread_mutex_t counts_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_key_t counts_key;
static pthread_once_t counts_once = PTHREAD_ONCE_INIT;
static _Thread_local struct fast_counts *my_counts;

static void counts_release(void *block)
{
    atomic_store(&((struct fast_counts *)block)->alive, false);
}

/* A child after fork has only the forking thread: no other can hold the lock. */
static void counts_atfork_child(void)
{
    pthread_mutex_init(&counts_lock, NULL);
}

static void counts_key_create(void)
{
    pthread_key_create(&counts_key, counts_release);
    pthread_atfork(NULL, NULL, counts_atfork_child);
    atomic_store(&counts_list, &shared_counts);
}

/* The calling thread's block: a dead thread's, else a new one; the shared block (counted
 * atomically) without host memory. */
static struct fast_counts *counts_mine(void)
{
    pthread_once(&counts_once, counts_key_create);
    pthread_mutex_lock(&counts_lock);
    struct fast_counts *c = atomic_load(&counts_list);
    while (c && (c == &shared_counts || atomic_load(&c->alive)))
        c = atomic_load(&c->next);
    if (!c && (c = calloc(1, sizeof *c)) != NULL) {
        atomic_store(&c->next, atomic_load(&counts_list));
        atomic_store(&counts_list, c);
    }
    if (c)
        atomic_store(&c->alive, true);
    pthread_mutex_unlock(&counts_lock);
    if (c && pthread_setspecific(counts_key, c) != 0) {
        atomic_store(&c->alive, false);
        c = NULL;
    }
    my_counts = c ? c : &shared_counts;
    return my_counts;
}

static void count_call(enum emu_fast_id id)
{
    struct fast_counts *c = my_counts;
    if (__builtin_expect(!c, 0))
        c = counts_mine();
    if (c == &shared_counts) {
        atomic_fetch_add_explicit(&c->calls[id], 1, memory_order_relaxed);
        return;
    }
    uint64_t n = atomic_load_explicit(&c->calls[id], memory_order_relaxed);
    atomic_store_explicit(&c->calls[id], n + 1, memory_order_relaxed);
}

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
    emu_config();
    count_call(id);
    if (atomic_load_explicit(&entries[id].armed, memory_order_acquire)) {
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
    pthread_once(&counts_once, counts_key_create);
    for (int i = 0; i < EMU_FAST_COUNT; i++) {
        if (!all && strcmp(names[i], name) != 0)
            continue;
        *found = true;
        for (struct fast_counts *c = atomic_load(&counts_list); c; c = atomic_load(&c->next))
            n += atomic_load_explicit(&c->calls[i], memory_order_relaxed);
    }
    return n;
}

void emu_fast_rearm(void)
{
    for (int i = 0; i < EMU_FAST_COUNT; i++)
        atomic_store_explicit(&entries[i].armed, emu_faults_armed(names[i]), memory_order_release);
}
