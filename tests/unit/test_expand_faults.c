/*
 * test_expand_faults.c — the driver refusing at each step expandable segments take (reserve,
 * create, map, set access, unmap, release, free of the range), at the first call and at
 * later ones, during the shared fault workload (heapfaults.h): every call succeeds another
 * way or fails with a proper CUresult, the heap (and its mapping state) stays valid after
 * each, and once the faults are cleared and everything is freed the leak audit is clean.
 */
#define HT_SEGMENTS          "expandable_segments:true"
#define HT_FAULTS_MUST_REACH 1
#include "heapfaults.h"

TestSuite(expand_faults, .timeout = 120);

Test(expand_faults, reserve_refused)
{
    with_faults("cuMemAddressReserve@1", true);
}

Test(expand_faults, every_create_refused)
{
    with_faults("cuMemCreate@*", true);
}

Test(expand_faults, later_create_refused)
{
    with_faults("cuMemCreate@4", false);
}

Test(expand_faults, map_refused_once)
{
    with_faults("cuMemMap@1=CUDA_ERROR_UNKNOWN", false);
}

Test(expand_faults, later_map_refused)
{
    with_faults("cuMemMap@9=CUDA_ERROR_UNKNOWN", false);
}

Test(expand_faults, every_map_refused)
{
    with_faults("cuMemMap@3+=CUDA_ERROR_UNKNOWN", true);
}

Test(expand_faults, set_access_refused)
{
    with_faults("cuMemSetAccess@2=CUDA_ERROR_UNKNOWN", false);
}

Test(expand_faults, every_set_access_refused)
{
    with_faults("cuMemSetAccess@*=CUDA_ERROR_UNKNOWN", true);
}

Test(expand_faults, unmap_refused)
{
    with_faults("cuMemUnmap@1=CUDA_ERROR_UNKNOWN", false);
}

Test(expand_faults, later_unmaps_refused)
{
    with_faults("cuMemUnmap@2+=CUDA_ERROR_UNKNOWN", false);
}

Test(expand_faults, release_refused)
{
    with_faults("cuMemRelease@1+=CUDA_ERROR_UNKNOWN", false);
}

Test(expand_faults, address_free_refused)
{
    with_faults("cuMemAddressFree@1=CUDA_ERROR_UNKNOWN", false);
}

/* Writes to the first and last byte of a live block: on the emulated device, an access to a
 * page mapped without access faults (SIGSEGV), as on a GPU. */
static void touch(CUdeviceptr p, size_t n)
{
    memset((void *)(uintptr_t)p, 0x5a, 1);
    memset((void *)(uintptr_t)(p + n - 1), 0x5a, 1);
}

/* Empties the cache with no faults armed; nothing may be left on the device. */
static void clean_up(void)
{
    size_t released = 0;
    cr_assert_eq(ht_fail(NULL), 0);
    cr_assert_eq(heap_empty_cache(-1, &released), CUDA_SUCCESS);
    cr_assert_eq(ht_audit(), 0);
}

/* A page whose access could not be set (and whose unmap failed too) stays mapped below the
 * range's mapped end: the next block on it must not be taken as backed. */
Test(expand_faults, a_page_left_without_access_is_not_handed_out_as_mapped)
{
    ht_setup("512M");
    CUdeviceptr p = 0;
    cr_assert_eq(ht_fail("cuMemSetAccess@*=CUDA_ERROR_UNKNOWN,cuMemUnmap@*=CUDA_ERROR_UNKNOWN"), 0);
    cr_assert_neq(heap_alloc(0, 2 * FL_MiB, NULL, HEAP_SYNC, &p), CUDA_SUCCESS);
    cr_assert_eq(ht_fail(NULL), 0);
    p = ht_alloc(2 * FL_MiB, NULL, HEAP_SYNC);
    cr_assert(heap_is_valid(), "a live block lies on a page without access");
    touch(p, 2 * FL_MiB);
    ht_free(p, NULL, HEAP_SYNC);
    clean_up();
}

/* A page move whose access setting fails leaves the source's pages without access inside a
 * free block: a later block placed there must get its access repaired first. */
Test(expand_faults, pages_left_without_access_by_a_failed_move_are_repaired_before_use)
{
    ht_setup("1G");
    CUdeviceptr a = ht_alloc(80 * FL_MiB, NULL, HEAP_SYNC);
    CUdeviceptr b = ht_alloc(2 * FL_MiB, NULL, HEAP_SYNC);
    ht_free(a, NULL, HEAP_SYNC);
    cr_assert_eq(ht_fail("cuMemSetAccess@1=CUDA_ERROR_UNKNOWN,cuMemSetAccess@2=CUDA_ERROR_UNKNOWN"),
                 0);
    CUdeviceptr c = 0;
    CUresult r = heap_alloc(0, 100 * FL_MiB, NULL, HEAP_SYNC, &c);
    cr_assert_eq(ht_fail(NULL), 0);
    CUdeviceptr d = ht_alloc(2 * FL_MiB, NULL, HEAP_SYNC);
    cr_assert(heap_is_valid(), "a live block lies on a page without access");
    touch(d, 2 * FL_MiB);
    ht_free(d, NULL, HEAP_SYNC);
    ht_free(b, NULL, HEAP_SYNC);
    if (r == CUDA_SUCCESS)
        ht_free(c, NULL, HEAP_SYNC);
    clean_up();
}
