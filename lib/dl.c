/*
 * dl.c — the C library's own dlsym.
 *
 * Owns: finding the real dlsym once. interpose.c exports a dlsym hook, so a plain dlsym() call
 * anywhere inside libfragless would land in that hook; driver.c and interpose.c look names up
 * only through dl_sym(). The real one is found with dlvsym (which we do not hook), by the
 * version glibc 2.34+ gives it, falling back to the x86-64 baseline version.
 */
#include <dlfcn.h>
#include <stdatomic.h>

#include "internal.h"

typedef void *(*dlsym_fn)(void *, const char *);

static _Atomic(dlsym_fn) real_dlsym;

static dlsym_fn find_real_dlsym(void)
{
    static const char *const versions[] = {"GLIBC_2.34", "GLIBC_2.2.5"};
    for (size_t i = 0; i < FL_ARRAY_SIZE(versions); i++) {
        void *p = dlvsym(RTLD_NEXT, "dlsym", versions[i]);
        if (p)
            return (dlsym_fn)p;
    }
    return NULL;
}

void *dl_sym(void *handle, const char *name)
{
    dlsym_fn fn = atomic_load_explicit(&real_dlsym, memory_order_acquire);
    if (FL_UNLIKELY(!fn)) {
        /* Racing threads find the same address; storing it twice is harmless. */
        fn = find_real_dlsym();
        if (!fn)
            return NULL;
        atomic_store_explicit(&real_dlsym, fn, memory_order_release);
    }
    return fn(handle, name);
}
