/*
 * test_peer.c — peer access for the page layer's mappings, on two emulated devices: enabling
 * device 1 as a peer of device 0 grants it read/write on every run device 0 has mapped (one
 * cuMemSetAccess per run) and on every later mapping (in the same cuMemSetAccess call as
 * device 0's own access); without it device 1 has none; disabling stops new grants and keeps
 * the old; a grant failing midway takes back what it granted, forgets the peer and returns the
 * error, with the leak audit clean. Access is read back with the emulator's cuMemGetAccess.
 */
#include "test_vmm.h"

typedef CUresult (*get_access_fn)(unsigned long long *, const CUmemLocation *, CUdeviceptr);

static get_access_fn get_access;

static void start_two_devices(void)
{
    setenv("FRAGLESS_EMU_DEVICES", "2", 1);
    vt_start_default();
    void *cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    cr_assert_not_null(cuda);
    get_access = (get_access_fn)dlsym(cuda, "cuMemGetAccess");
    cr_assert_not_null(get_access);
}

/* The access `device` has to page `page` of r, as the emulated driver answers it. */
static unsigned long long access_of(const struct vrange *r, size_t page, int device)
{
    CUmemLocation loc = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = device};
    unsigned long long flags = 99;
    CUdeviceptr p = (CUdeviceptr)(uintptr_t)vt_ptr(r, page);
    cr_assert_eq(get_access(&flags, &loc, p), CUDA_SUCCESS, "cuMemGetAccess of page %zu", page);
    return flags;
}

static bool readwrite(const struct vrange *r, size_t page, int device)
{
    return access_of(r, page, device) == CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
}

static bool no_access(const struct vrange *r, size_t page, int device)
{
    return access_of(r, page, device) == CU_MEM_ACCESS_FLAGS_PROT_NONE;
}

TestSuite(peer, .init = start_two_devices);

Test(peer, without_a_peer_only_the_owner_has_access)
{
    struct vrange *r = vt_reserve(4);
    cr_assert_eq(vrange_map(r, 0, 2 * VT_PAGE), CUDA_SUCCESS);
    cr_assert(readwrite(r, 0, 0) && readwrite(r, 1, 0));
    cr_assert(no_access(r, 0, 1) && no_access(r, 1, 1));
    cr_assert_eq(drv_peers(0), 0);
    vt_finish(r, NULL);
}

Test(peer, enabling_grants_every_mapped_run_once)
{
    struct vrange *a = vt_reserve(4), *b = vt_reserve(2);
    cr_assert_eq(vrange_map(a, 0, 2 * VT_PAGE), CUDA_SUCCESS);
    cr_assert_eq(vrange_map(a, 3 * VT_PAGE, VT_PAGE), CUDA_SUCCESS);
    cr_assert_eq(vrange_map(b, 0, VT_PAGE), CUDA_SUCCESS);
    vt_write(a, 3, 0xa3);
    uint64_t before = vt_calls("cuMemSetAccess");

    cr_assert_eq(vmm_peer_enable(0, 1), CUDA_SUCCESS);
    cr_assert_eq(vt_calls("cuMemSetAccess") - before, 3, "one call per mapped run");
    cr_assert(readwrite(a, 0, 1) && readwrite(a, 1, 1) && readwrite(a, 3, 1));
    cr_assert(readwrite(b, 0, 1));
    cr_assert(readwrite(a, 0, 0) && readwrite(a, 3, 0) && readwrite(b, 0, 0));
    cr_assert(vt_holds(a, 3, 0xa3), "data untouched");
    cr_assert_eq(drv_peers(0), 1u << 1);
    cr_assert_eq(drv_peers(1), 0, "the pair is one way");
    cr_assert(vrange_is_valid(a) && vrange_is_valid(b));
    vt_finish(a, b);
}

Test(peer, later_mappings_grant_owner_and_peer_in_one_call)
{
    cr_assert_eq(vmm_peer_enable(0, 1), CUDA_SUCCESS, "no range yet: nothing to grant");
    struct vrange *r = vt_reserve(4);
    uint64_t before = vt_calls("cuMemSetAccess");
    cr_assert_eq(vrange_map(r, 0, 3 * VT_PAGE), CUDA_SUCCESS);
    cr_assert_eq(vt_calls("cuMemSetAccess") - before, 1);
    for (size_t i = 0; i < 3; i++)
        cr_assert(readwrite(r, i, 0) && readwrite(r, i, 1), "page %zu", i);
    /* Pages moved elsewhere are granted at their new place too. */
    cr_assert_eq(vrange_move(r, 0, r, 3 * VT_PAGE, VT_PAGE), CUDA_SUCCESS);
    cr_assert(readwrite(r, 3, 0) && readwrite(r, 3, 1));
    vt_finish(r, NULL);
}

Test(peer, disabling_stops_new_grants_and_keeps_the_old)
{
    struct vrange *r = vt_reserve(4);
    cr_assert_eq(vmm_peer_enable(0, 1), CUDA_SUCCESS);
    cr_assert_eq(vrange_map(r, 0, VT_PAGE), CUDA_SUCCESS);
    vmm_peer_disable(0, 1);
    cr_assert_eq(drv_peers(0), 0);
    cr_assert_eq(vrange_map(r, VT_PAGE, VT_PAGE), CUDA_SUCCESS);
    cr_assert(readwrite(r, 0, 1), "granted before: kept");
    cr_assert(no_access(r, 1, 1), "mapped after: not granted");
    cr_assert(readwrite(r, 1, 0));
    vt_finish(r, NULL);
}

Test(peer, a_device_is_not_its_own_peer)
{
    cr_assert_eq(vmm_peer_enable(0, 0), CUDA_ERROR_INVALID_DEVICE);
    cr_assert_eq(vmm_peer_enable(-1, 1), CUDA_ERROR_INVALID_DEVICE);
    cr_assert_eq(vmm_peer_enable(0, FL_MAX_DEVICES), CUDA_ERROR_INVALID_DEVICE);
    cr_assert_eq(drv_peers(0), 0);
}

/* Three runs mapped on two ranges; the grant of the second run fails. */
static void fail_second_grant(const char *spec, bool undo_ok)
{
    struct vrange *a = vt_reserve(4), *b = vt_reserve(2);
    cr_assert_eq(vrange_map(a, 0, VT_PAGE), CUDA_SUCCESS);
    cr_assert_eq(vrange_map(a, 2 * VT_PAGE, 2 * VT_PAGE), CUDA_SUCCESS);
    cr_assert_eq(vrange_map(b, 0, 2 * VT_PAGE), CUDA_SUCCESS);
    vt_write(b, 1, 0xb1);

    vt_fail(spec);
    cr_assert_eq(vmm_peer_enable(0, 1), CUDA_ERROR_OUT_OF_MEMORY);
    vt_fail(NULL);
    cr_assert_eq(drv_peers(0), 0, "the peer is forgotten");
    size_t kept = 0;
    const struct vrange *ranges[] = {a, b};
    for (size_t k = 0; k < 2; k++)
        for (size_t i = 0; i < 4 && i * VT_PAGE < vrange_size(ranges[k]); i++)
            if (vrange_ready_in(ranges[k], i * VT_PAGE, VT_PAGE))
                kept += readwrite(ranges[k], i, 1);
    /* Undone: nothing granted stays; undo failing too: the one run granted (a run of one or
     * two pages, whichever the walk met first) keeps its access. */
    if (undo_ok)
        cr_assert_eq(kept, 0, "%zu pages keep device 1's access", kept);
    else
        cr_assert(kept == 1 || kept == 2, "%zu pages keep device 1's access", kept);
    cr_assert(readwrite(a, 0, 0) && readwrite(a, 2, 0) && readwrite(b, 1, 0));
    cr_assert(vt_holds(b, 1, 0xb1));

    /* Later mappings do not grant the forgotten peer; enabling again works. */
    cr_assert_eq(vrange_map(a, VT_PAGE, VT_PAGE), CUDA_SUCCESS);
    cr_assert(no_access(a, 1, 1));
    cr_assert_eq(vmm_peer_enable(0, 1), CUDA_SUCCESS);
    cr_assert(readwrite(a, 0, 1) && readwrite(a, 1, 1) && readwrite(b, 1, 1));
    cr_assert(vrange_is_valid(a) && vrange_is_valid(b));
    vt_finish(a, b);
}

Test(peer, a_grant_failing_midway_is_taken_back)
{
    fail_second_grant("cuMemSetAccess@2", true);
}

Test(peer, taking_back_failing_too_keeps_what_it_cannot_take_back)
{
    fail_second_grant("cuMemSetAccess@2+", false);
}

Test(peer, the_first_grant_failing_grants_nothing)
{
    struct vrange *r = vt_reserve(2);
    cr_assert_eq(vrange_map(r, 0, VT_PAGE), CUDA_SUCCESS);
    vt_fail("cuMemSetAccess@1=CUDA_ERROR_INVALID_DEVICE");
    uint64_t before = vt_calls("cuMemSetAccess");
    cr_assert_eq(vmm_peer_enable(0, 1), CUDA_ERROR_INVALID_DEVICE);
    cr_assert_eq(vt_calls("cuMemSetAccess") - before, 1, "nothing to take back");
    vt_fail(NULL);
    cr_assert(no_access(r, 0, 1));
    cr_assert_eq(drv_peers(0), 0);
    vt_finish(r, NULL);
}
