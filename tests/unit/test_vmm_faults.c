/*
 * test_vmm_faults.c — the VMM page layer under the emulated device's fault injection: a
 * failure at any step of reserve, map, unmap and move leaves the range and the spare list as
 * they were (or, when undoing fails too, consistent and leak-free), data in place, the walker
 * content and the leak audit clean; running out of device memory fails cleanly.
 */
#include <fcntl.h>
#include <unistd.h>

#include "test_vmm.h"

#include <criterion/parameterized.h>

/* Everything a failed call must leave as it found: which pages of `a` and `b` are mapped
 * and accessible, the spare list, the device memory in use. */
struct snap {
    uint64_t a_set, b_set;
    size_t spare, used;
};

static struct snap snap_take(const struct vrange *a, const struct vrange *b)
{
    return (struct snap){vt_mapped_set(a), b ? vt_mapped_set(b) : 0, vmm_spare_bytes(0), vt_used()};
}

static void snap_same(const struct snap *x, const struct vrange *a, const struct vrange *b)
{
    struct snap y = snap_take(a, b);
    cr_assert_eq(y.a_set, x->a_set, "a: %#llx, was %#llx", (unsigned long long)y.a_set,
                 (unsigned long long)x->a_set);
    cr_assert_eq(y.b_set, x->b_set, "b: %#llx, was %#llx", (unsigned long long)y.b_set,
                 (unsigned long long)x->b_set);
    cr_assert_eq(y.spare, x->spare, "spare %zu, was %zu", y.spare, x->spare);
    cr_assert_eq(y.used, x->used, "used %zu, was %zu", y.used, x->used);
    cr_assert(vrange_is_valid(a));
    cr_assert(!b || vrange_is_valid(b));
}

/* Maps the pages of `set` in r and writes each one's index as its tag. */
static void map_pages(struct vrange *r, uint64_t set)
{
    for (size_t i = 0; i < 64; i++) {
        if (!(set >> i & 1))
            continue;
        cr_assert_eq(vrange_map(r, i * VT_PAGE, VT_PAGE), CUDA_SUCCESS);
        vt_write(r, i, (uint32_t)i);
    }
}

static void holds_tags(const struct vrange *r, uint64_t set, size_t shift)
{
    for (size_t i = 0; i < 64; i++)
        if (set >> i & 1)
            cr_assert(vt_holds(r, i, (uint32_t)(i - shift)), "page %zu lost its data", i);
}

/* One spare page on the device, from a scratch range that is destroyed again. */
static void one_spare_page(void)
{
    struct vrange *s = vt_reserve(1);
    cr_assert_eq(vrange_map(s, 0, VT_PAGE), CUDA_SUCCESS);
    cr_assert_eq(vrange_unmap(s, 0, VT_PAGE, true), CUDA_SUCCESS);
    vrange_destroy(s);
    cr_assert_eq(vmm_spare_bytes(0), VT_PAGE);
}

struct fault_case {
    char spec[48];
};

#define FAULT_CASES(name, ...)                                                      \
    ParameterizedTestParameters(vmm_faults, name)                                   \
    {                                                                               \
        static struct fault_case cases[] = {__VA_ARGS__};                           \
        return cr_make_param_array(struct fault_case, cases, FL_ARRAY_SIZE(cases)); \
    }

TestSuite(vmm_faults, .init = vt_start_default);

Test(vmm_faults, reserve_failure_leaves_nothing)
{
    struct vrange *r = (struct vrange *)&r;
    vt_fail("cuMemAddressReserve@1");
    cr_assert_eq(vrange_reserve(0, 4 * VT_PAGE, VT_PAGE, &r), CUDA_ERROR_OUT_OF_MEMORY);
    cr_assert_null(r);
    size_t reserved = 1;
    vmm_va_bytes(0, &reserved, NULL);
    cr_assert_eq(reserved, 0);
    vt_fail("cuMemGetAllocationGranularity@1=CUDA_ERROR_NOT_SUPPORTED");
    cr_assert_eq(vrange_reserve(0, 4 * VT_PAGE, VT_PAGE, &r), CUDA_ERROR_NOT_SUPPORTED);
    vt_finish(NULL, NULL);
}

/* Map [0, 8) over a range with pages 0 and 5 mapped and one spare page: one new page comes
 * from the spare list, five are created, six are mapped, access is set on [1,5) and [6,8). */
FAULT_CASES(map, {"cuMemCreate@1"}, {"cuMemCreate@2"}, {"cuMemCreate@3"}, {"cuMemCreate@5"},
            {"cuMemMap@1"}, {"cuMemMap@2"}, {"cuMemMap@4"}, {"cuMemMap@6"}, {"cuMemSetAccess@1"},
            {"cuMemSetAccess@2"}, {"cuMemCreate@3=CUDA_ERROR_INVALID_VALUE"})

ParameterizedTest(struct fault_case *c, vmm_faults, map)
{
    struct vrange *a = vt_reserve(8);
    map_pages(a, 0x21);
    one_spare_page();
    struct snap before = snap_take(a, NULL);

    vt_fail(c->spec);
    cr_assert_neq(vrange_map(a, 0, 8 * VT_PAGE), CUDA_SUCCESS, "%s did not fail", c->spec);
    vt_fail(NULL);
    snap_same(&before, a, NULL);
    holds_tags(a, 0x21, 0);

    uint64_t creates = vt_calls("cuMemCreate");
    cr_assert_eq(vrange_map(a, 0, 8 * VT_PAGE), CUDA_SUCCESS);
    cr_assert_eq(vt_calls("cuMemCreate") - creates, 5);
    cr_assert_eq(vt_mapped_set(a), 0xff);
    holds_tags(a, 0x21, 0);
    vt_finish(a, NULL);
}

/* Unmap [0, 6) with pages 0-2 and 4-5 mapped: two runs. A failing unmap leaves its run (and
 * the ones after it) mapped; the runs before it are done. */
Test(vmm_faults, unmap_failure_keeps_the_run_mapped)
{
    struct vrange *a = vt_reserve(6);
    map_pages(a, 0x37);
    struct snap before = snap_take(a, NULL);
    vt_fail("cuMemUnmap@1");
    cr_assert_eq(vrange_unmap(a, 0, 6 * VT_PAGE, false), CUDA_ERROR_OUT_OF_MEMORY);
    snap_same(&before, a, NULL);
    holds_tags(a, 0x37, 0);

    vt_fail("cuMemUnmap@2");
    cr_assert_eq(vrange_unmap(a, 0, 6 * VT_PAGE, true), CUDA_ERROR_OUT_OF_MEMORY);
    cr_assert_eq(vt_mapped_set(a), 0x30);
    cr_assert_eq(vmm_spare_bytes(0), 3 * VT_PAGE);
    holds_tags(a, 0x30, 0);
    cr_assert(vrange_is_valid(a));
    vt_finish(a, NULL);
}

/* A page whose release fails is unmapped all the same and kept on the spare list. */
Test(vmm_faults, release_failure_parks_the_page)
{
    struct vrange *a = vt_reserve(4);
    map_pages(a, 0xf);
    vt_fail("cuMemRelease@2");
    cr_assert_eq(vrange_unmap(a, 0, 4 * VT_PAGE, false), CUDA_SUCCESS);
    cr_assert_eq(vt_mapped_set(a), 0);
    cr_assert_eq(vmm_spare_bytes(0), VT_PAGE);
    cr_assert_eq(vt_used(), VT_PAGE);
    cr_assert(vrange_is_valid(a));

    size_t released = 1;
    vt_fail("cuMemRelease@1");
    cr_assert_eq(vmm_release_spare(0, &released), CUDA_ERROR_OUT_OF_MEMORY);
    cr_assert_eq(released, 0);
    cr_assert_eq(vmm_spare_bytes(0), VT_PAGE);
    cr_assert(vrange_is_valid(a));
    vt_finish(a, NULL);
}

/* Move a[0, 4) with pages 0, 1 and 3 mapped to b[2, 6): two runs on each side. */
FAULT_CASES(move, {"cuMemUnmap@1"}, {"cuMemUnmap@2"}, {"cuMemMap@1"}, {"cuMemMap@3"},
            {"cuMemSetAccess@1"}, {"cuMemSetAccess@2"})

ParameterizedTest(struct fault_case *c, vmm_faults, move)
{
    struct vrange *a = vt_reserve(4), *b = vt_reserve(6);
    map_pages(a, 0xb);
    struct snap before = snap_take(a, b);
    uint64_t moved = 0;

    vt_fail(c->spec);
    cr_assert_neq(vrange_move(a, 0, b, 2 * VT_PAGE, 4 * VT_PAGE), CUDA_SUCCESS);
    vt_fail(NULL);
    snap_same(&before, a, b);
    holds_tags(a, 0xb, 0);
    vmm_page_counters(0, NULL, NULL, &moved);
    cr_assert_eq(moved, 0);

    uint64_t creates = vt_calls("cuMemCreate");
    cr_assert_eq(vrange_move(a, 0, b, 2 * VT_PAGE, 4 * VT_PAGE), CUDA_SUCCESS);
    cr_assert_eq(vt_calls("cuMemCreate"), creates);
    cr_assert_eq(vt_mapped_set(b), 0x2c);
    holds_tags(b, 0x2c, 2);
    vt_finish(a, b);
}

/* ---- a second failure while undoing the first ---------------------------------------------- */

/* Maps a[0, pages) under the faults of `spec`, which must make it fail; returns with the
 * range valid and the faults cleared. */
static void map_failing(struct vrange *a, size_t pages, const char *spec)
{
    vt_fail(spec);
    cr_assert_neq(vrange_map(a, 0, pages * VT_PAGE), CUDA_SUCCESS);
    vt_fail(NULL);
    cr_assert(vrange_is_valid(a));
}

/* Access fails, then so does the unmap undoing the maps: the pages stay mapped without
 * access (not counted as ready), and the next map gives them access. */
Test(vmm_faults, map_undo_unmap_failure_keeps_pages_degraded)
{
    struct vrange *a = vt_reserve(4);
    map_failing(a, 2, "cuMemSetAccess@1,cuMemUnmap@1");
    cr_assert_eq(vrange_mapped_bytes(a), 2 * VT_PAGE);
    cr_assert_eq(vrange_ready_in(a, 0, 4 * VT_PAGE), 0);
    uint64_t creates = vt_calls("cuMemCreate"), access = vt_calls("cuMemSetAccess");
    cr_assert_eq(vrange_map(a, 0, 3 * VT_PAGE), CUDA_SUCCESS);
    cr_assert_eq(vt_calls("cuMemCreate") - creates, 1);
    cr_assert_eq(vt_calls("cuMemSetAccess") - access, 1);
    map_pages(a, 0x7);
    holds_tags(a, 0x7, 0);
    vt_finish(a, NULL);
}

/* The map fails, then the release of a page created for it: that page goes to the spare
 * list instead of being lost. */
Test(vmm_faults, map_undo_release_failure_parks_the_page)
{
    struct vrange *a = vt_reserve(4);
    map_failing(a, 4, "cuMemMap@3,cuMemRelease@1");
    cr_assert_eq(vt_mapped_set(a), 0);
    cr_assert_eq(vmm_spare_bytes(0), VT_PAGE);
    cr_assert_eq(vt_used(), VT_PAGE);
    vt_finish(a, NULL);
}

/* Moves a[0, 2) (both mapped, tagged) to b[0, 2) under the faults of `spec`, which must make
 * it fail; returns with both ranges valid and the faults cleared. */
static void move_two_pages_failing(struct vrange *a, struct vrange *b, const char *spec)
{
    map_pages(a, 0x3);
    vt_fail(spec);
    cr_assert_neq(vrange_move(a, 0, b, 0, 2 * VT_PAGE), CUDA_SUCCESS);
    vt_fail(NULL);
    cr_assert(vrange_is_valid(a) && vrange_is_valid(b));
}

/* dst's second map fails, then the unmap undoing dst's first: that page stays at dst (moved
 * after all, without access), the other one goes back to src. */
Test(vmm_faults, move_undo_unmap_failure_leaves_the_page_at_dst)
{
    struct vrange *a = vt_reserve(2), *b = vt_reserve(2);
    move_two_pages_failing(a, b, "cuMemMap@2,cuMemUnmap@2");
    cr_assert_eq(vt_mapped_set(a), 0x2);
    holds_tags(a, 0x2, 0);
    cr_assert_eq(vrange_mapped_bytes(b), VT_PAGE);
    cr_assert_eq(vrange_map(b, 0, VT_PAGE), CUDA_SUCCESS);
    holds_tags(b, 0x1, 0);
    vt_finish(a, b);
}

/* dst's access fails, then mapping back at src fails for the first page: it goes to the
 * spare list; the second is back at src with its data. */
Test(vmm_faults, move_undo_remap_failure_parks_the_page)
{
    struct vrange *a = vt_reserve(2), *b = vt_reserve(2);
    move_two_pages_failing(a, b, "cuMemSetAccess@1,cuMemMap@3");
    cr_assert_eq(vt_mapped_set(a), 0x2);
    cr_assert_eq(vt_mapped_set(b), 0);
    cr_assert_eq(vmm_spare_bytes(0), VT_PAGE);
    holds_tags(a, 0x2, 0);
    vt_finish(a, b);
}

/* dst's access fails and so does src's when mapping back: the pages are back at src without
 * access, and their data is there once the next map sets it. */
Test(vmm_faults, move_undo_access_failure_keeps_src_degraded)
{
    struct vrange *a = vt_reserve(2), *b = vt_reserve(2);
    move_two_pages_failing(a, b, "cuMemSetAccess@1+");
    cr_assert_eq(vt_mapped_set(a), 0);
    cr_assert_eq(vrange_mapped_bytes(a), 2 * VT_PAGE);
    cr_assert_eq(vrange_map(a, 0, 2 * VT_PAGE), CUDA_SUCCESS);
    holds_tags(a, 0x3, 0);
    vt_finish(a, b);
}

/* ---- destroy ---------------------------------------------------------------------------- */

static int audit_count(void)
{
    int fd = open("/dev/null", O_WRONLY);
    cr_assert_geq(fd, 0);
    int n = vt_emu.audit(fd);
    close(fd);
    return n;
}

/* A run that cannot be unmapped keeps the range from being freed: destroy still unmaps and
 * releases the other runs, and the audit shows what the driver kept. */
Test(vmm_faults, destroy_unmaps_what_it_can)
{
    struct vrange *a = vt_reserve(4);
    map_pages(a, 0xb);
    vt_fail("cuMemUnmap@1");
    vrange_destroy(a);
    vt_fail(NULL);
    cr_assert_eq(vt_used(), 2 * VT_PAGE);
    cr_assert_gt(audit_count(), 0);
    size_t reserved = 1, mapped = 1;
    vmm_va_bytes(0, &reserved, &mapped);
    cr_assert_eq(reserved, 0);
    cr_assert_eq(mapped, 0);
}

Test(vmm_faults, destroy_address_free_failure_is_reported)
{
    struct vrange *a = vt_reserve(2);
    map_pages(a, 0x3);
    vt_fail("cuMemAddressFree@1");
    vrange_destroy(a);
    vt_fail(NULL);
    cr_assert_eq(vt_used(), 0);
    cr_assert_eq(audit_count(), 1, "only the reservation should be left");
}

/* ---- capacity ------------------------------------------------------------------------------- */

static void start_small(void)
{
    vt_start("8M");
}

TestSuite(vmm_capacity, .init = start_small);

Test(vmm_capacity, exhaustion_fails_cleanly)
{
    struct vrange *a = vt_reserve(8);
    cr_assert_eq(vrange_map(a, 0, 6 * VT_PAGE), CUDA_ERROR_OUT_OF_MEMORY);
    cr_assert_eq(vt_mapped_set(a), 0);
    cr_assert_eq(vt_used(), 0);
    cr_assert(vrange_is_valid(a));
    cr_assert_eq(vrange_map(a, 2 * VT_PAGE, 4 * VT_PAGE), CUDA_SUCCESS);
    cr_assert_eq(vrange_map(a, 0, VT_PAGE), CUDA_ERROR_OUT_OF_MEMORY);
    cr_assert_eq(vrange_unmap(a, 2 * VT_PAGE, VT_PAGE, true), CUDA_SUCCESS);
    cr_assert_eq(vrange_map(a, 0, VT_PAGE), CUDA_SUCCESS);
    cr_assert_eq(vt_mapped_set(a), 0x39);
    vt_finish(a, NULL);
}

static void start_without_vmm(void)
{
    setenv("FRAGLESS_EMU_VMM", "0", 1);
    vt_start(NULL);
}

TestSuite(vmm_unsupported, .init = start_without_vmm);

Test(vmm_unsupported, reserve_fails_and_holds_nothing)
{
    struct vrange *r = NULL;
    cr_assert_neq(vrange_reserve(0, 4 * VT_PAGE, VT_PAGE, &r), CUDA_SUCCESS);
    cr_assert_null(r);
    size_t reserved = 1;
    vmm_va_bytes(0, &reserved, NULL);
    cr_assert_eq(reserved, 0);
    vt_finish(NULL, NULL);
}
