/*
 * test_drv_emu_capacity.c — device capacity: FRAGLESS_EMU_MEM bounds cuMemAlloc and
 * cuMemCreate and shows in cuMemGetInfo; processes naming the same device share it, and a
 * process that dies gives its bytes back; a 141 GiB device works on a small machine while
 * untouched; FRAGLESS_EMU_DEVICES and FRAGLESS_EMU_VMM=0.
 */
#include <criterion/criterion.h>
#include <cuda.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fragless_emu.h"
#include "testutil.h"

#define CK(call) cr_assert_eq((call), CUDA_SUCCESS, "%s", #call)
#define MIB      ((size_t)1 << 20)
#define GIB      ((size_t)1 << 30)

static void init_ctx(int device)
{
    CUcontext ctx;
    CK(cuInit(0));
    CK(cuDevicePrimaryCtxRetain(&ctx, device));
    CK(cuCtxSetCurrent(ctx));
}

static void setup(void)
{
    tu_emu_isolate();
    setenv("FRAGLESS_EMU_MEM", "1G", 1);
}

TestSuite(drv_emu_capacity, .init = setup);

Test(drv_emu_capacity, bounds_alloc_and_create)
{
    CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = 0}};
    CUmemGenericAllocationHandle h;
    CUdeviceptr a, b;
    size_t free_b, total;

    init_ctx(0);
    CK(cuMemGetInfo(&free_b, &total));
    cr_expect_eq(total, GIB);
    cr_expect_eq(free_b, GIB);
    CK(cuMemAlloc(&a, 600 * MIB));
    CK(cuMemGetInfo(&free_b, &total));
    cr_expect_eq(free_b, 424 * MIB);
    cr_expect_eq(cuMemAlloc(&b, 600 * MIB), CUDA_ERROR_OUT_OF_MEMORY);
    cr_expect_eq(cuMemCreate(&h, 512 * MIB, &prop, 0), CUDA_ERROR_OUT_OF_MEMORY);
    CK(cuMemCreate(&h, 422 * MIB, &prop, 0));
    cr_expect_eq(fragless_emu_used(0), 1022 * MIB);
    CK(cuMemRelease(h));
    CK(cuMemFree(a));
    cr_expect_eq(fragless_emu_used(0), 0);
}

/* A child holding 600 MiB of the shared device until told to go (or killed). */
static pid_t child_holding(int ready[2], int go[2])
{
    pid_t pid;

    cr_assert_eq(pipe(ready), 0);
    cr_assert_eq(pipe(go), 0);
    pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        CUdeviceptr p;
        CUcontext ctx;
        char c = 1;
        if (cuInit(0) || cuDevicePrimaryCtxRetain(&ctx, 0) || cuCtxSetCurrent(ctx) ||
            cuMemAlloc(&p, 600 * MIB))
            c = 0;
        if (write(ready[1], &c, 1) != 1 || read(go[0], &c, 1) != 1)
            _exit(2);
        _exit(0);
    }
    char c = 0;
    cr_assert_eq(read(ready[0], &c, 1), 1);
    cr_assert_eq(c, 1, "child could allocate");
    return pid;
}

Test(drv_emu_capacity, shared_by_processes_and_reclaimed_at_exit)
{
    int ready[2], go[2], status;
    pid_t pid = child_holding(ready, go);
    CUdeviceptr p;
    size_t free_b, total;

    init_ctx(0);
    cr_expect_eq(fragless_emu_used(0), 600 * MIB);
    CK(cuMemGetInfo(&free_b, &total));
    cr_expect_eq(free_b, 424 * MIB);
    cr_expect_eq(cuMemAlloc(&p, 600 * MIB), CUDA_ERROR_OUT_OF_MEMORY);
    cr_assert_eq(write(go[1], "x", 1), 1);
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    CK(cuMemAlloc(&p, 600 * MIB));
    CK(cuMemFree(p));
}

Test(drv_emu_capacity, killed_process_is_reclaimed)
{
    int ready[2], go[2], status;
    size_t before = fragless_emu_used(0); /* the parent has the file open when it forks */
    pid_t pid = child_holding(ready, go);
    CUdeviceptr p;

    cr_expect_eq(before, 0);

    init_ctx(0);
    cr_expect_eq(fragless_emu_used(0), 600 * MIB);
    kill(pid, SIGKILL);
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_expect_eq(fragless_emu_used(0), 0);
    CK(cuMemAlloc(&p, 600 * MIB));
    CK(cuMemFree(p));
}

Test(drv_emu_capacity, large_device_untouched)
{
    CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = 0}};
    CUmemAccessDesc rw = {.location = prop.location, .flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    CUmemGenericAllocationHandle h;
    CUdeviceptr big, va;
    size_t total = 0, free_b = 0;

    setenv("FRAGLESS_EMU_MEM", "141G", 1);
    init_ctx(0);
    CK(cuDeviceTotalMem(&total, 0));
    cr_expect_eq(total, 141 * GIB);
    CK(cuMemAlloc(&big, 100 * GIB));
    CK(cuMemAddressReserve(&va, 40 * GIB, 0, 0, 0));
    CK(cuMemCreate(&h, 40 * GIB, &prop, 0));
    CK(cuMemMap(va, 40 * GIB, 0, h, 0));
    CK(cuMemSetAccess(va, 40 * GIB, &rw, 1));
    CK(cuMemsetD8(big + 50 * GIB, 1, 4096)); /* a page here and there is fine */
    CK(cuMemsetD8(va + 39 * GIB, 1, 4096));
    CK(cuMemGetInfo(&free_b, &total));
    cr_expect_eq(free_b, GIB);
    CK(cuMemUnmap(va, 40 * GIB));
    CK(cuMemRelease(h));
    CK(cuMemAddressFree(va, 40 * GIB));
    CK(cuMemFree(big));
}

Test(drv_emu_capacity, several_devices)
{
    CUdeviceptr a, b;
    CUcontext c0, c1;
    int n = 0, can = 0;

    setenv("FRAGLESS_EMU_DEVICES", "2", 1);
    CK(cuInit(0));
    CK(cuDeviceGetCount(&n));
    cr_expect_eq(n, 2);
    CK(cuDevicePrimaryCtxRetain(&c0, 0));
    CK(cuDevicePrimaryCtxRetain(&c1, 1));
    CK(cuCtxSetCurrent(c0));
    CK(cuMemAlloc(&a, 900 * MIB));
    CK(cuDeviceCanAccessPeer(&can, 0, 1));
    cr_expect_eq(can, 1);
    CK(cuCtxEnablePeerAccess(c1, 0));
    cr_expect_eq(cuCtxEnablePeerAccess(c1, 0), CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED);
    CK(cuCtxSetCurrent(c1));
    CK(cuMemAlloc(&b, 900 * MIB)); /* capacity is per device */
    cr_expect_eq(fragless_emu_used(0), 900 * MIB);
    cr_expect_eq(fragless_emu_used(1), 900 * MIB);
    CK(cuMemFree(b));
    CK(cuCtxSetCurrent(c0));
    CK(cuMemFree(a));
}

Test(drv_emu_capacity, vmm_can_be_switched_off)
{
    CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = 0}};
    CUmemGenericAllocationHandle h;
    int vmm = 1;

    setenv("FRAGLESS_EMU_VMM", "0", 1);
    init_ctx(0);
    CK(cuDeviceGetAttribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, 0));
    cr_expect_eq(vmm, 0);
    cr_expect_eq(cuMemCreate(&h, 2 * MIB, &prop, 0), CUDA_ERROR_NOT_SUPPORTED);
}

/* Bytes of host memory the device's physical memory (the memfd named after it) holds. */
static size_t device_memory_held(void)
{
    char link[256], path[300];
    struct dirent *e;
    struct stat st;
    size_t held = 0;
    DIR *d = opendir("/proc/self/fd");

    cr_assert_not_null(d);
    while ((e = readdir(d))) {
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(path, link, sizeof link - 1);
        if (n <= 0)
            continue;
        link[n] = '\0';
        if (strstr(link, "memfd:fragless-emu-dev0") && stat(path, &st) == 0)
            held += (size_t)st.st_blocks * 512;
    }
    closedir(d);
    return held;
}

Test(drv_emu_capacity, released_physical_memory_goes_back)
{
    CUmemAllocationProp prop = {.type = CU_MEM_ALLOCATION_TYPE_PINNED,
                                .location = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = 0}};
    CUmemAccessDesc rw = {.location = prop.location, .flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    CUmemGenericAllocationHandle h;
    CUdeviceptr va;

    init_ctx(0);
    CK(cuMemAddressReserve(&va, 64 * MIB, 0, 0, 0));
    CK(cuMemCreate(&h, 64 * MIB, &prop, 0));
    CK(cuMemMap(va, 64 * MIB, 0, h, 0));
    CK(cuMemSetAccess(va, 64 * MIB, &rw, 1));
    cr_expect_lt(device_memory_held(), MIB, "nothing committed before it is touched");
    memset((void *)(uintptr_t)va, 1, 64 * MIB);
    cr_expect_geq(device_memory_held(), 64 * MIB);
    CK(cuMemRelease(h));
    cr_expect_geq(device_memory_held(), 64 * MIB, "still mapped");
    CK(cuMemUnmap(va, 64 * MIB));
    cr_expect_lt(device_memory_held(), MIB);
    CK(cuMemAddressFree(va, 64 * MIB));
}
