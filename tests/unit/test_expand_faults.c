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
