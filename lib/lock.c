/*
 * lock.c — the heap's lock: a mutex whose uncontended take and give are one atomic instruction
 * each (the allocation fast path takes it twice per malloc+free pair), and which spins a little,
 * then sleeps in the kernel (futex) when another thread holds it — as it may across a driver
 * call that maps pages.
 *
 * Owns: the lock's slow paths. States: 0 free, 1 held, 2 held and a thread may be sleeping on
 * it (the giver then wakes one). The inline take and give are in internal.h.
 */
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

/* Tries of a held lock before sleeping: holders of the heap lock usually give it back within
 * a few hundred nanoseconds. */
#define LOCK_SPINS 100

#if defined(__x86_64__) || defined(__i386__)
static void cpu_relax(void)
{
    __builtin_ia32_pause();
}
#else
static void cpu_relax(void)
{
    __asm__ __volatile__("" ::: "memory");
}
#endif

void lock_wait(struct fl_lock *l)
{
    for (int i = 0; i < LOCK_SPINS; i++) {
        uint32_t free_ = 0;
        cpu_relax();
        if (atomic_load_explicit(&l->state, memory_order_relaxed) == 0 &&
            atomic_compare_exchange_weak_explicit(&l->state, &free_, 1, memory_order_acquire,
                                                  memory_order_relaxed))
            return;
    }
    while (atomic_exchange_explicit(&l->state, 2, memory_order_acquire) != 0)
        syscall(SYS_futex, &l->state, FUTEX_WAIT_PRIVATE, 2, NULL, NULL, 0);
}

void lock_wake(struct fl_lock *l)
{
    syscall(SYS_futex, &l->state, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}
