/*
 * test_shm.c — the stats page (lib/shm.c) in-process on the emulated device: the page appears
 * at first use with the heap's numbers, read through the validating reader; the request area
 * honours only documented values (unknown type, unknown device) and serves empty-cache with
 * the bytes the heap released; a second shm_start does nothing.
 */
#include <criterion/criterion.h>

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fragless_shm.h"
#include "internal.h"
#include "pageio.h"
#include "testutil.h"

static fragless_shm_page_t copy;

static void use_primary_context(void)
{
    tu_emu_isolate();
    cr_assert_eq(drv_init(), CUDA_SUCCESS);
    CUcontext ctx = NULL;
    cr_assert_eq(drv_primary_ctx_retain(&ctx, 0), CUDA_SUCCESS);
    cr_assert_eq(drv_ctx_set_current(ctx), CUDA_SUCCESS);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* Reads our own page until it shows device 0 with `allocated` bytes (the thread publishes
 * every FRAGLESS_SHM_UPDATE_MS). */
static void read_until(uint64_t allocated)
{
    for (int i = 0; i < 200; i++) {
        int fd = open(shm_page_path(), O_RDONLY | O_NOFOLLOW);
        cr_assert_geq(fd, 0, "page %s exists", shm_page_path());
        char why[96] = "";
        enum pio_status st = pio_read_page(fd, &copy, why, sizeof why);
        close(fd);
        cr_assert(st == PIO_OK || st == PIO_BUSY, "page valid: %d %s", st, why);
        if (st == PIO_OK && copy.device_count == 1 &&
            copy.devices[0].stats.allocated_bytes.current == allocated)
            return;
        sleep_ms(10);
    }
    cr_assert_fail("the page never showed %llu allocated bytes", (unsigned long long)allocated);
}

Test(shm, page_appears_with_the_heaps_numbers)
{
    use_primary_context();
    CUdeviceptr p = 0;
    cr_assert_eq(heap_alloc(0, 5 * FL_MiB, NULL, HEAP_SYNC, &p), CUDA_SUCCESS);
    shm_start();
    shm_start();
    char want[96];
    snprintf(want, sizeof want, FRAGLESS_SHM_DIR "/" FRAGLESS_SHM_PREFIX "%u.%d",
             (unsigned)geteuid(), (int)getpid());
    cr_assert_str_eq(shm_page_path(), want);
    struct stat st;
    cr_assert_eq(lstat(want, &st), 0);
    cr_expect_eq(st.st_mode & 0777, 0600);
    cr_expect_eq(st.st_uid, geteuid());

    fragless_stats_t s = {.size = sizeof s};
    cr_assert_eq(heap_get_stats(0, &s), 0);
    read_until(s.allocated_bytes.current);
    cr_expect_eq(copy.pid, getpid());
    cr_expect_eq(copy.devices[0].stats.reserved_bytes.current, s.reserved_bytes.current);
    cr_expect_eq(copy.devices[0].stats.num_allocs, s.num_allocs);
    cr_expect_geq(copy.devices[0].segment_total, 1);
    cr_expect_gt(copy.devices[0].total_bytes, 0);
    cr_expect(strstr(copy.config, "stats_page"), "%s", copy.config);
    bool foreign = true;
    cr_expect_eq(heap_free(p, NULL, HEAP_SYNC, &foreign), CUDA_SUCCESS);
}

/* Posts a raw request word and waits for the answer. */
static int64_t request(fragless_shm_page_t *pg, uint32_t type, uint32_t device, uint64_t *rel)
{
    uint64_t old = __atomic_load_n(&pg->request, __ATOMIC_ACQUIRE);
    uint32_t id = FRAGLESS_SHM_REQ_ID(old) + 1;
    __atomic_store_n(&pg->request, FRAGLESS_SHM_REQ_MAKE(id, type, device), __ATOMIC_RELEASE);
    __atomic_add_fetch(&pg->wake, 1, __ATOMIC_RELEASE);
    pio_futex_wake(&pg->wake);
    for (int i = 0; i < 100 && __atomic_load_n(&pg->response_id, __ATOMIC_ACQUIRE) != id; i++)
        pio_futex_wait(&pg->response_id, id - 1, 10000000);
    cr_assert_eq(__atomic_load_n(&pg->response_id, __ATOMIC_ACQUIRE), id, "answered");
    *rel = pg->response_released;
    return pg->response_status;
}

Test(shm, requests_take_only_documented_values)
{
    use_primary_context();
    CUdeviceptr a = 0, b = 0;
    cr_assert_eq(heap_alloc(0, 1 * FL_MiB, NULL, HEAP_SYNC, &a), CUDA_SUCCESS);
    cr_assert_eq(heap_alloc(0, 30 * FL_MiB, NULL, HEAP_SYNC, &b), CUDA_SUCCESS);
    shm_start();
    fragless_stats_t s = {.size = sizeof s};
    cr_assert_eq(heap_get_stats(0, &s), 0);
    read_until(s.allocated_bytes.current);
    bool foreign = true;
    cr_assert_eq(heap_free(b, NULL, HEAP_SYNC, &foreign), CUDA_SUCCESS);

    int fd = open(shm_page_path(), O_RDWR | O_NOFOLLOW);
    cr_assert_geq(fd, 0);
    fragless_shm_page_t *pg = mmap(NULL, sizeof *pg, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    cr_assert_neq(pg, MAP_FAILED);
    uint64_t released = 99;
    cr_expect_eq(request(pg, 7, FRAGLESS_SHM_REQ_ALL_DEVICES, &released), FRAGLESS_EINVAL);
    cr_expect_eq(released, 0);
    cr_expect_eq(request(pg, FRAGLESS_SHM_REQ_NONE, 0, &released), FRAGLESS_EINVAL);
    cr_expect_eq(request(pg, FRAGLESS_SHM_REQ_EMPTY_CACHE, 200, &released), FRAGLESS_ENODEV);
    cr_expect_eq(request(pg, FRAGLESS_SHM_REQ_EMPTY_CACHE, 3, &released), FRAGLESS_ENODEV);
    fragless_stats_t before = {.size = sizeof before};
    cr_assert_eq(heap_get_stats(0, &before), 0);
    cr_expect_eq(before.num_empty_cache, 0, "no request above emptied anything");

    cr_expect_eq(request(pg, FRAGLESS_SHM_REQ_EMPTY_CACHE, 0, &released), 0);
    cr_expect_geq(released, 30 * FL_MiB);
    fragless_stats_t after = {.size = sizeof after};
    cr_assert_eq(heap_get_stats(0, &after), 0);
    cr_expect_eq(after.reserved_bytes.current, before.reserved_bytes.current - released);
    cr_expect_eq(pg->devices[0].stats.reserved_bytes.current, after.reserved_bytes.current,
                 "the page was refreshed before the answer");
    munmap(pg, sizeof *pg);
    cr_expect_eq(heap_free(a, NULL, HEAP_SYNC, &foreign), CUDA_SUCCESS);
}
