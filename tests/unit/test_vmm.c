/*
 * test_vmm.c — the VMM page layer (lib/vmm.c, lib/vmm_spare.c) on the emulated device: what
 * map, unmap and move do to a range, the driver calls they make, the spare list, the
 * counters, and data surviving moves.
 */
#include <sys/wait.h>
#include <unistd.h>

#include "test_vmm.h"

TestSuite(vmm, .init = vt_start_default);

Test(vmm, reserve_rounds_to_pages_and_checks_page_size)
{
    struct vrange *r = NULL;
    cr_assert_eq(vrange_reserve(0, 5 * FL_MiB, VT_PAGE, &r), CUDA_SUCCESS);
    cr_assert_eq(vrange_size(r), 6 * FL_MiB);
    cr_assert_eq(vrange_page_size(r), VT_PAGE);
    cr_assert_eq(vrange_base(r) % VT_PAGE, 0);
    cr_assert_eq(vrange_mapped_bytes(r), 0);
    cr_assert(vrange_is_valid(r));
    size_t reserved = 0, mapped = 1;
    vmm_va_bytes(0, &reserved, &mapped);
    cr_assert_eq(reserved, 6 * FL_MiB);
    cr_assert_eq(mapped, 0);

    struct vrange *bad = NULL;
    cr_assert_eq(vrange_reserve(0, 4 * FL_MiB, 3 * FL_MiB, &bad), CUDA_ERROR_INVALID_VALUE);
    cr_assert_eq(vrange_reserve(0, 0, VT_PAGE, &bad), CUDA_ERROR_INVALID_VALUE);
    cr_assert_eq(vrange_reserve(-1, VT_PAGE, VT_PAGE, &bad), CUDA_ERROR_INVALID_VALUE);
    cr_assert_null(bad);

    struct vrange *big = NULL;
    cr_assert_eq(vrange_reserve(0, 7 * FL_MiB, 4 * FL_MiB, &big), CUDA_SUCCESS);
    cr_assert_eq(vrange_size(big), 8 * FL_MiB);
    cr_assert_eq(vrange_base(big) % (4 * FL_MiB), 0);
    vt_finish(r, big);
    vmm_va_bytes(0, &reserved, NULL);
    cr_assert_eq(reserved, 0);
}

Test(vmm, page_size_zero_takes_the_configured_page_size)
{
    struct vrange *r = NULL;
    cr_assert_eq(vrange_reserve(0, 1, 0, &r), CUDA_SUCCESS);
    size_t conf = config_get()->page_size;
    size_t want = conf == 0 ? VT_PAGE : (conf + VT_PAGE - 1) / VT_PAGE * VT_PAGE;
    cr_assert_eq(vrange_page_size(r), want);
    vt_finish(r, NULL);
}

Test(vmm, map_covers_every_page_touched_and_sets_access_once)
{
    struct vrange *r = vt_reserve(8);
    uint64_t creates = vt_calls("cuMemCreate"), maps = vt_calls("cuMemMap");
    uint64_t access = vt_calls("cuMemSetAccess");

    /* [1 MiB, 5 MiB + 1) touches pages 0, 1 and 2. */
    cr_assert_eq(vrange_map(r, FL_MiB, 4 * FL_MiB + 1), CUDA_SUCCESS);
    cr_assert_eq(vt_mapped_set(r), 0x7);
    cr_assert_eq(vrange_mapped_bytes(r), 3 * VT_PAGE);
    cr_assert_eq(vrange_ready_in(r, 0, 8 * VT_PAGE), 3 * VT_PAGE);
    cr_assert_eq(vrange_ready_in(r, 2 * VT_PAGE + 1, 1), VT_PAGE);
    cr_assert_eq(vrange_ready_in(r, 3 * VT_PAGE, VT_PAGE), 0);
    cr_assert_eq(vt_calls("cuMemCreate") - creates, 3);
    cr_assert_eq(vt_calls("cuMemMap") - maps, 3);
    cr_assert_eq(vt_calls("cuMemSetAccess") - access, 1);
    for (size_t i = 0; i < 3; i++)
        vt_write(r, i, 0xab00 + (uint32_t)i);
    for (size_t i = 0; i < 3; i++)
        cr_assert(vt_holds(r, i, 0xab00 + (uint32_t)i));
    cr_assert_eq(vt_used(), 3 * VT_PAGE);

    /* Mapping what is mapped already makes no driver call. */
    uint64_t all = vt_calls("*");
    cr_assert_eq(vrange_map(r, 0, 3 * VT_PAGE), CUDA_SUCCESS);
    cr_assert_eq(vrange_map(r, VT_PAGE, 0), CUDA_SUCCESS);
    cr_assert_eq(vt_calls("*"), all);
    cr_assert(vrange_is_valid(r));
    uint64_t created = 0;
    vmm_page_counters(0, &created, NULL, NULL);
    cr_assert_eq(created, 3);
    vt_finish(r, NULL);
}

Test(vmm, set_access_once_per_new_contiguous_run)
{
    struct vrange *r = vt_reserve(10);
    cr_assert_eq(vrange_map(r, 3 * VT_PAGE, VT_PAGE), CUDA_SUCCESS);
    cr_assert_eq(vrange_map(r, 6 * VT_PAGE, 2 * VT_PAGE), CUDA_SUCCESS);
    uint64_t access = vt_calls("cuMemSetAccess"), maps = vt_calls("cuMemMap");

    /* New runs: [0,3), [4,6), [8,10). */
    cr_assert_eq(vrange_map(r, 0, 10 * VT_PAGE), CUDA_SUCCESS);
    cr_assert_eq(vt_calls("cuMemSetAccess") - access, 3);
    cr_assert_eq(vt_calls("cuMemMap") - maps, 7);
    cr_assert_eq(vt_mapped_set(r), 0x3ff);
    for (size_t i = 0; i < 10; i++)
        vt_write(r, i, (uint32_t)i);
    cr_assert(vrange_is_valid(r));
    vt_finish(r, NULL);
}

Test(vmm, unmap_takes_pages_wholly_inside_one_call_per_run)
{
    struct vrange *r = vt_reserve(8);
    cr_assert_eq(vrange_map(r, 0, 6 * VT_PAGE), CUDA_SUCCESS);
    uint64_t unmaps = vt_calls("cuMemUnmap"), releases = vt_calls("cuMemRelease");

    /* [1 MiB, 9 MiB) holds pages 1, 2 and 3 wholly; 0 and 4 only in part. */
    cr_assert_eq(vrange_unmap(r, FL_MiB, 8 * FL_MiB, false), CUDA_SUCCESS);
    cr_assert_eq(vt_mapped_set(r), 0x31);
    cr_assert_eq(vt_calls("cuMemUnmap") - unmaps, 1);
    cr_assert_eq(vt_calls("cuMemRelease") - releases, 3);
    cr_assert_eq(vt_used(), 3 * VT_PAGE);
    cr_assert_eq(vmm_spare_bytes(0), 0);

    /* Two runs ([0,1) and [4,6)), nothing wholly inside a sub-page span. */
    unmaps = vt_calls("cuMemUnmap");
    cr_assert_eq(vrange_unmap(r, 1, VT_PAGE, false), CUDA_SUCCESS);
    cr_assert_eq(vt_calls("cuMemUnmap"), unmaps);
    cr_assert_eq(vrange_unmap(r, 0, 8 * VT_PAGE, false), CUDA_SUCCESS);
    cr_assert_eq(vt_calls("cuMemUnmap") - unmaps, 2);
    cr_assert_eq(vrange_mapped_bytes(r), 0);
    uint64_t created = 0, released = 0;
    vmm_page_counters(0, &created, &released, NULL);
    cr_assert_eq(created, 6);
    cr_assert_eq(released, 6);
    cr_assert(vrange_is_valid(r));
    vt_finish(r, NULL);
}

Test(vmm, next_run_finds_whole_ready_or_empty_pages)
{
    struct vrange *r = vt_reserve(200);
    /* pages 1-2 and 130-131 ready: the ready bits are scanned a word at a time */
    cr_assert_eq(vrange_map(r, VT_PAGE, 2 * VT_PAGE), CUDA_SUCCESS);
    cr_assert_eq(vrange_map(r, 130 * VT_PAGE, 2 * VT_PAGE), CUDA_SUCCESS);
    size_t len = 0, end = 200 * VT_PAGE;
    cr_assert_eq(vrange_next_run(r, 0, end, true, &len), VT_PAGE);
    cr_assert_eq(len, 2 * VT_PAGE);
    /* a start inside a page rounds up to the next whole page */
    cr_assert_eq(vrange_next_run(r, VT_PAGE + 1, end, true, &len), 2 * VT_PAGE);
    cr_assert_eq(len, VT_PAGE);
    cr_assert_eq(vrange_next_run(r, 3 * VT_PAGE, end, true, &len), 130 * VT_PAGE);
    cr_assert_eq(len, 2 * VT_PAGE);
    /* an end inside a page cuts the run to whole pages */
    cr_assert_eq(vrange_next_run(r, 3 * VT_PAGE, 131 * VT_PAGE + 1, true, &len), 130 * VT_PAGE);
    cr_assert_eq(len, VT_PAGE);
    cr_assert_eq(vrange_next_run(r, 132 * VT_PAGE, end, true, &len), end);
    cr_assert_eq(len, 0);
    cr_assert_eq(vrange_next_run(r, 0, end, false, &len), 0);
    cr_assert_eq(len, VT_PAGE);
    cr_assert_eq(vrange_next_run(r, VT_PAGE, end, false, &len), 3 * VT_PAGE);
    cr_assert_eq(len, 127 * VT_PAGE);
    cr_assert_eq(vrange_unmap(r, VT_PAGE, VT_PAGE, false), CUDA_SUCCESS);
    cr_assert_eq(vrange_next_run(r, 0, end, true, &len), 2 * VT_PAGE);
    cr_assert(vrange_is_valid(r));
    vt_finish(r, NULL);
}

Test(vmm, release_keeps_the_range_when_the_driver_refuses)
{
    struct vrange *r = vt_reserve(4);
    cr_assert_eq(vrange_map(r, 0, 3 * VT_PAGE), CUDA_SUCCESS);
    vt_fail("cuMemAddressFree@1=CUDA_ERROR_UNKNOWN");
    cr_assert_eq(vrange_release(r), CUDA_ERROR_UNKNOWN);
    cr_assert(vrange_is_valid(r));
    cr_assert_eq(vrange_mapped_bytes(r), 0, "the pages went back; the range stays");
    vt_fail("cuMemUnmap@1=CUDA_ERROR_UNKNOWN");
    cr_assert_eq(vrange_map(r, 0, VT_PAGE), CUDA_SUCCESS);
    cr_assert_eq(vrange_release(r), CUDA_ERROR_UNKNOWN);
    cr_assert_eq(vrange_mapped_bytes(r), VT_PAGE);
    vt_fail(NULL);
    cr_assert_eq(vrange_release(r), CUDA_SUCCESS);
    vt_finish(NULL, NULL);
}

Test(vmm, spare_pages_are_reused_before_creating)
{
    struct vrange *a = vt_reserve(4), *b = vt_reserve(4);
    cr_assert_eq(vrange_map(a, 0, 4 * VT_PAGE), CUDA_SUCCESS);
    cr_assert_eq(vrange_unmap(a, 0, 3 * VT_PAGE, true), CUDA_SUCCESS);
    cr_assert_eq(vmm_spare_bytes(0), 3 * VT_PAGE);
    cr_assert_eq(vt_used(), 4 * VT_PAGE);
    cr_assert(vrange_is_valid(a));

    uint64_t creates = vt_calls("cuMemCreate");
    cr_assert_eq(vrange_map(b, 0, 2 * VT_PAGE), CUDA_SUCCESS);
    cr_assert_eq(vt_calls("cuMemCreate"), creates);
    cr_assert_eq(vmm_spare_bytes(0), VT_PAGE);
    cr_assert_eq(vrange_map(b, 0, 4 * VT_PAGE), CUDA_SUCCESS);
    cr_assert_eq(vt_calls("cuMemCreate") - creates, 1);
    cr_assert_eq(vmm_spare_bytes(0), 0);
    cr_assert_eq(vt_used(), 5 * VT_PAGE);
    cr_assert(vrange_is_valid(a) && vrange_is_valid(b));
    vt_finish(a, b);
}

Test(vmm, spare_pages_of_another_size_are_not_taken)
{
    struct vrange *small = vt_reserve(2), *large = NULL;
    cr_assert_eq(vrange_reserve(0, 8 * FL_MiB, 4 * FL_MiB, &large), CUDA_SUCCESS);
    cr_assert_eq(vrange_map(small, 0, 2 * VT_PAGE), CUDA_SUCCESS);
    cr_assert_eq(vrange_unmap(small, 0, 2 * VT_PAGE, true), CUDA_SUCCESS);
    uint64_t creates = vt_calls("cuMemCreate");
    cr_assert_eq(vrange_map(large, 0, 4 * FL_MiB), CUDA_SUCCESS);
    cr_assert_eq(vt_calls("cuMemCreate") - creates, 1);
    cr_assert_eq(vmm_spare_bytes(0), 2 * VT_PAGE);
    cr_assert(vrange_is_valid(large));
    vt_finish(small, large);
}

Test(vmm, release_spare_returns_every_spare_page)
{
    struct vrange *r = vt_reserve(4);
    cr_assert_eq(vrange_map(r, 0, 4 * VT_PAGE), CUDA_SUCCESS);
    cr_assert_eq(vrange_unmap(r, VT_PAGE, 2 * VT_PAGE, true), CUDA_SUCCESS);
    size_t released = 0;
    uint64_t rel_before = 0, rel_after = 0;
    vmm_page_counters(0, NULL, &rel_before, NULL);
    cr_assert_eq(vmm_release_spare(0, &released), CUDA_SUCCESS);
    vmm_page_counters(0, NULL, &rel_after, NULL);
    cr_assert_eq(released, 2 * VT_PAGE);
    cr_assert_eq(rel_after - rel_before, 2);
    cr_assert_eq(vmm_spare_bytes(0), 0);
    cr_assert_eq(vt_used(), 2 * VT_PAGE);
    cr_assert_eq(vmm_release_spare(0, &released), CUDA_SUCCESS);
    cr_assert_eq(released, 0);
    cr_assert_eq(vmm_release_spare(FL_MAX_DEVICES, &released), CUDA_ERROR_INVALID_VALUE);
    vt_finish(r, NULL);
}

Test(vmm, move_keeps_data_without_create_or_release)
{
    struct vrange *a = vt_reserve(6), *b = vt_reserve(6);
    cr_assert_eq(vrange_map(a, 0, 3 * VT_PAGE), CUDA_SUCCESS);
    for (size_t i = 0; i < 3; i++)
        vt_write(a, i, 0x5a5a0000 + (uint32_t)i);
    uint64_t creates = vt_calls("cuMemCreate"), releases = vt_calls("cuMemRelease");
    uint64_t unmaps = vt_calls("cuMemUnmap"), access = vt_calls("cuMemSetAccess");

    cr_assert_eq(vrange_move(a, 0, b, 2 * VT_PAGE, 3 * VT_PAGE), CUDA_SUCCESS);
    cr_assert_eq(vt_mapped_set(a), 0);
    cr_assert_eq(vt_mapped_set(b), 0x1c);
    for (size_t i = 0; i < 3; i++)
        cr_assert(vt_holds(b, 2 + i, 0x5a5a0000 + (uint32_t)i), "page %zu lost its data", i);
    cr_assert_eq(vt_calls("cuMemCreate"), creates);
    cr_assert_eq(vt_calls("cuMemRelease"), releases);
    cr_assert_eq(vt_calls("cuMemUnmap") - unmaps, 1);
    cr_assert_eq(vt_calls("cuMemSetAccess") - access, 1);
    uint64_t moved = 0;
    vmm_page_counters(0, NULL, NULL, &moved);
    cr_assert_eq(moved, 3);
    cr_assert_eq(vrange_mapped_bytes(a), 0);
    cr_assert_eq(vrange_mapped_bytes(b), 3 * VT_PAGE);
    size_t mapped = 0;
    vmm_va_bytes(0, NULL, &mapped);
    cr_assert_eq(mapped, 3 * VT_PAGE);
    cr_assert(vrange_is_valid(a) && vrange_is_valid(b));
    vt_finish(a, b);
}

Test(vmm, move_within_one_range_skips_unmapped_pages)
{
    struct vrange *r = vt_reserve(8);
    cr_assert_eq(vrange_map(r, 0, VT_PAGE), CUDA_SUCCESS);
    cr_assert_eq(vrange_map(r, 2 * VT_PAGE, VT_PAGE), CUDA_SUCCESS);
    vt_write(r, 0, 7);
    vt_write(r, 2, 9);
    /* Pages 0..3 to 3..6: the overlap (page 3) is unmapped, as move requires. */
    cr_assert_eq(vrange_move(r, 0, r, 4 * VT_PAGE, 3 * VT_PAGE), CUDA_SUCCESS);
    cr_assert_eq(vt_mapped_set(r), 0x50);
    cr_assert(vt_holds(r, 4, 7) && vt_holds(r, 6, 9));
    cr_assert(vrange_is_valid(r));
    uint64_t moved = 0;
    vmm_page_counters(0, NULL, NULL, &moved);
    cr_assert_eq(moved, 2);
    vt_finish(r, NULL);
}

Test(vmm, move_rejects_bad_arguments_and_changes_nothing)
{
    struct vrange *a = vt_reserve(4), *b = vt_reserve(4), *c = NULL;
    cr_assert_eq(vrange_reserve(0, 8 * FL_MiB, 4 * FL_MiB, &c), CUDA_SUCCESS);
    cr_assert_eq(vrange_map(a, 0, 2 * VT_PAGE), CUDA_SUCCESS);
    cr_assert_eq(vrange_map(b, VT_PAGE, VT_PAGE), CUDA_SUCCESS);
    uint64_t all = vt_calls("*");

    cr_assert_eq(vrange_move(a, 0, b, 0, 2 * VT_PAGE), CUDA_ERROR_INVALID_VALUE);
    cr_assert_eq(vrange_move(a, 1, b, 2 * VT_PAGE, VT_PAGE), CUDA_ERROR_INVALID_VALUE);
    cr_assert_eq(vrange_move(a, 0, b, 2 * VT_PAGE, VT_PAGE + 1), CUDA_ERROR_INVALID_VALUE);
    cr_assert_eq(vrange_move(a, 0, b, 3 * VT_PAGE, 2 * VT_PAGE), CUDA_ERROR_INVALID_VALUE);
    cr_assert_eq(vrange_move(a, 0, c, 0, 4 * FL_MiB), CUDA_ERROR_INVALID_VALUE);
    cr_assert_eq(vrange_move(NULL, 0, b, 0, VT_PAGE), CUDA_ERROR_INVALID_VALUE);
    cr_assert_eq(vrange_map(a, 3 * VT_PAGE, 2 * VT_PAGE), CUDA_ERROR_INVALID_VALUE);
    cr_assert_eq(vrange_map(a, SIZE_MAX, 2), CUDA_ERROR_INVALID_VALUE);
    cr_assert_eq(vrange_unmap(a, VT_PAGE, SIZE_MAX, false), CUDA_ERROR_INVALID_VALUE);
    cr_assert_eq(vrange_move(a, 2 * VT_PAGE, b, 2 * VT_PAGE, 2 * VT_PAGE), CUDA_SUCCESS);
    cr_assert_eq(vt_calls("*"), all);
    cr_assert_eq(vt_mapped_set(a), 0x3);
    cr_assert_eq(vt_mapped_set(b), 0x2);
    cr_assert(vrange_is_valid(a) && vrange_is_valid(b) && vrange_is_valid(c));
    vrange_destroy(c);
    vt_finish(a, b);
}

TestSuite(vmm_big);

Test(vmm_big, whole_device_reservation_touches_no_memory)
{
    vt_start("141G");
    struct vrange *r = NULL;
    cr_assert_eq(vrange_reserve(0, 141 * FL_GiB, VT_PAGE, &r), CUDA_SUCCESS);
    cr_assert_eq(vrange_size(r), 141 * FL_GiB);
    cr_assert_eq(vt_used(), 0);
    size_t last = 141 * FL_GiB - VT_PAGE;
    cr_assert_eq(vrange_map(r, last, VT_PAGE), CUDA_SUCCESS);
    vt_write(r, last / VT_PAGE, 0x141);
    cr_assert(vt_holds(r, last / VT_PAGE, 0x141));
    cr_assert_eq(vt_used(), VT_PAGE);
    cr_assert(vrange_is_valid(r));
    cr_assert_eq(vrange_ready_in(r, 0, 141 * FL_GiB), VT_PAGE);
    /* One small entry per page: 141 GiB of 2 MiB pages takes at most 2 MiB of host memory. */
    cr_assert_gt(vrange_host_bytes(r), 141 * FL_GiB / VT_PAGE);
    cr_assert_leq(vrange_host_bytes(r), 2 * FL_MiB);
    vt_finish(r, NULL);
}

/* prepare holds every device lock across fork(); child and parent can take them again. */
Test(vmm, fork_handlers_leave_the_child_usable)
{
    struct vrange *r = vt_reserve(2);
    cr_assert_eq(vrange_map(r, 0, 2 * VT_PAGE), CUDA_SUCCESS);
    cr_assert_eq(vrange_unmap(r, 0, VT_PAGE, true), CUDA_SUCCESS);
    vmm_atfork_prepare();
    pid_t pid = fork();
    if (pid == 0) {
        vmm_atfork_child();
        alarm(10);
        _exit(vmm_spare_bytes(0) == VT_PAGE ? 0 : 1);
    }
    vmm_atfork_parent();
    cr_assert_gt(pid, 0);
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
    cr_assert_eq(vmm_spare_bytes(0), VT_PAGE);
    vt_finish(r, NULL);
}
