/*
 * test_vmm.h — what the VMM page layer's suites (test_vmm*.c) share: an emulated device of
 * their own with a current context, the emulated device's test API (found with dlsym, since
 * the unit tests reach libcuda only through driver.c's dlopen), and checks of a range's state.
 */
#ifndef TEST_VMM_H
#define TEST_VMM_H

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "fragless_emu.h"
#include "internal.h"
#include "testutil.h"

#define VT_PAGE ((size_t)2 << 20) /* the emulated device's granularity */

struct vt_emu {
    __typeof__(fragless_emu_fail) *fail;
    __typeof__(fragless_emu_calls) *calls;
    __typeof__(fragless_emu_audit) *audit;
    __typeof__(fragless_emu_used) *used;
};
static struct vt_emu vt_emu;

/* Gives the test its own emulated device of `mem` bytes ("24G"; NULL: the default), loads
 * the driver and makes device 0's primary context current. */
static inline void vt_start(const char *mem)
{
    tu_emu_isolate();
    if (mem)
        setenv("FRAGLESS_EMU_MEM", mem, 1);
    cr_assert_eq(drv_init(), CUDA_SUCCESS);
    void *cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    cr_assert_not_null(cuda, "the emulated libcuda is not loaded");
    vt_emu.fail = (__typeof__(vt_emu.fail))dlsym(cuda, "fragless_emu_fail");
    vt_emu.calls = (__typeof__(vt_emu.calls))dlsym(cuda, "fragless_emu_calls");
    vt_emu.audit = (__typeof__(vt_emu.audit))dlsym(cuda, "fragless_emu_audit");
    vt_emu.used = (__typeof__(vt_emu.used))dlsym(cuda, "fragless_emu_used");
    cr_assert(vt_emu.fail && vt_emu.calls && vt_emu.audit && vt_emu.used);
    CUcontext ctx = NULL;
    cr_assert_eq(drv_primary_ctx_retain(&ctx, 0), CUDA_SUCCESS);
    cr_assert_eq(drv_ctx_set_current(ctx), CUDA_SUCCESS);
}

static inline void vt_start_default(void)
{
    vt_start(NULL);
}

static inline void vt_fail(const char *spec)
{
    cr_assert_eq(vt_emu.fail(spec), 0, "bad fault spec %s", spec ? spec : "(none)");
}

static inline uint64_t vt_calls(const char *name)
{
    return vt_emu.calls(name);
}

static inline size_t vt_used(void)
{
    return vt_emu.used(0);
}

static inline struct vrange *vt_reserve(size_t pages)
{
    struct vrange *r = NULL;
    cr_assert_eq(vrange_reserve(0, pages * VT_PAGE, VT_PAGE, &r), CUDA_SUCCESS);
    cr_assert(vrange_is_valid(r));
    return r;
}

static inline void *vt_ptr(const struct vrange *r, size_t page)
{
    return (void *)(uintptr_t)(vrange_base(r) + page * VT_PAGE);
}

/* Writes a pattern derived from `tag` to the first and last bytes of a mapped page. */
static inline void vt_write(const struct vrange *r, size_t page, uint32_t tag)
{
    unsigned char *p = vt_ptr(r, page);
    memcpy(p, &tag, sizeof(tag));
    memcpy(p + VT_PAGE - sizeof(tag), &tag, sizeof(tag));
}

static inline bool vt_holds(const struct vrange *r, size_t page, uint32_t tag)
{
    const unsigned char *p = vt_ptr(r, page);
    return memcmp(p, &tag, sizeof(tag)) == 0 &&
           memcmp(p + VT_PAGE - sizeof(tag), &tag, sizeof(tag)) == 0;
}

/* Bit i set: page i of r is mapped and accessible. Ranges in tests have at most 64 pages. */
static inline uint64_t vt_mapped_set(const struct vrange *r)
{
    uint64_t set = 0;
    for (size_t i = 0; i < vrange_size(r) / VT_PAGE && i < 64; i++)
        if (vrange_ready_in(r, i * VT_PAGE, VT_PAGE) == VT_PAGE)
            set |= (uint64_t)1 << i;
    return set;
}

/* Destroys the ranges, releases the spare pages and checks the leak audit is clean. */
static inline void vt_finish(struct vrange *a, struct vrange *b)
{
    size_t released = 0;
    vt_fail(NULL);
    vrange_destroy(a);
    vrange_destroy(b);
    cr_assert_eq(vmm_release_spare(0, &released), CUDA_SUCCESS);
    cr_assert_eq(vmm_spare_bytes(0), 0);
    cr_assert_eq(vt_used(), 0, "%zu bytes still in use", vt_used());
    cr_assert_eq(vt_emu.audit(2), 0, "the leak audit found leaks");
}

#endif
