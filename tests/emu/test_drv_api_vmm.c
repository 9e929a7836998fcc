/*
 * test_drv_api_vmm.c — virtual memory management conformance, written only against the
 * CUDA driver documentation (no fragless_emu_* calls): reserve, create, map, set access,
 * write, unmap, remap elsewhere and read the same data, release while mapped, the documented
 * argument checks (alignment, double map, partial unmap, address free with mappings, double
 * release) and that touching unmapped memory faults.
 */
#include <criterion/criterion.h>
#include <cuda.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define CK(call) cr_assert_eq((call), CUDA_SUCCESS, "%s", #call)

static size_t gran;
static CUmemAllocationProp prop;
static CUmemAccessDesc rw;

static void setup(void)
{
    CUcontext ctx;
    int vmm = 0;

    CK(cuInit(0));
    CK(cuDevicePrimaryCtxRetain(&ctx, 0));
    CK(cuCtxSetCurrent(ctx));
    CK(cuDeviceGetAttribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, 0));
    cr_assert_eq(vmm, 1);
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = 0;
    CK(cuMemGetAllocationGranularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
    cr_assert_gt(gran, 0);
    rw.location = prop.location;
    rw.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
}

static void teardown(void)
{
    cuCtxSetCurrent(NULL);
    cuDevicePrimaryCtxRelease(0);
}

static CUmemGenericAllocationHandle create(size_t size)
{
    CUmemGenericAllocationHandle h = 0;
    CK(cuMemCreate(&h, size, &prop, 0));
    return h;
}

static CUdeviceptr reserve(size_t size)
{
    CUdeviceptr va = 0;
    CK(cuMemAddressReserve(&va, size, 0, 0, 0));
    cr_assert_eq(va % gran, 0);
    return va;
}

static void fill_host(CUdeviceptr p, int byte, size_t n)
{
    unsigned char buf[4096];
    memset(buf, byte, sizeof buf);
    for (size_t off = 0; off < n; off += sizeof buf)
        CK(cuMemcpyHtoD(p + off, buf, sizeof buf));
}

static bool reads_back(CUdeviceptr p, int byte, size_t n)
{
    unsigned char buf[4096];
    for (size_t off = 0; off < n; off += sizeof buf) {
        CK(cuMemcpyDtoH(buf, p + off, sizeof buf));
        for (size_t i = 0; i < sizeof buf; i++)
            if (buf[i] != byte)
                return false;
    }
    return true;
}

TestSuite(drv_api_vmm, .init = setup, .fini = teardown);

Test(drv_api_vmm, granularity)
{
    size_t rec = 0;
    CK(cuMemGetAllocationGranularity(&rec, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED));
    cr_expect_geq(rec, gran);
    cr_expect_eq(rec % gran, 0);
}

Test(drv_api_vmm, map_write_remap_read)
{
    CUdeviceptr a = reserve(4 * gran), b = reserve(2 * gran);
    CUmemGenericAllocationHandle h = create(2 * gran);
    unsigned long long flags = 0;

    CK(cuMemMap(a + gran, 2 * gran, 0, h, 0));
    CK(cuMemSetAccess(a + gran, 2 * gran, &rw, 1));
    CK(cuMemGetAccess(&flags, &prop.location, a + gran));
    cr_expect_eq(flags, CU_MEM_ACCESS_FLAGS_PROT_READWRITE);
    fill_host(a + gran, 0xab, 2 * gran);
    CK(cuMemUnmap(a + gran, 2 * gran));
    /* the same physical memory elsewhere keeps its data */
    CK(cuMemMap(b, 2 * gran, 0, h, 0));
    CK(cuMemSetAccess(b, 2 * gran, &rw, 1));
    cr_expect(reads_back(b, 0xab, 2 * gran));
    /* release while mapped: the memory lives until unmapped */
    CK(cuMemRelease(h));
    cr_expect(reads_back(b, 0xab, gran));
    CK(cuMemUnmap(b, 2 * gran));
    CK(cuMemAddressFree(a, 4 * gran));
    CK(cuMemAddressFree(b, 2 * gran));
}

Test(drv_api_vmm, retain_allocation_handle)
{
    CUdeviceptr a = reserve(2 * gran);
    CUmemGenericAllocationHandle h = create(2 * gran), got = 0;

    CK(cuMemMap(a, 2 * gran, 0, h, 0));
    CK(cuMemRetainAllocationHandle(&got, (void *)(uintptr_t)(a + gran + 5)));
    cr_expect_eq(got, h);
    CK(cuMemRelease(got));
    CK(cuMemRelease(h));
    CK(cuMemUnmap(a, 2 * gran));
    CK(cuMemAddressFree(a, 2 * gran));
}

Test(drv_api_vmm, argument_checks)
{
    CUdeviceptr a = reserve(4 * gran), bad_va;
    CUmemGenericAllocationHandle h = create(2 * gran), bad;

    cr_expect_eq(cuMemCreate(&bad, gran + 4096, &prop, 0), CUDA_ERROR_INVALID_VALUE,
                 "size not a multiple of the granularity");
    cr_expect_eq(cuMemCreate(&bad, 0, &prop, 0), CUDA_ERROR_INVALID_VALUE);
    cr_expect_eq(cuMemCreate(&bad, (size_t)1 << 62, &prop, 0), CUDA_ERROR_OUT_OF_MEMORY);
    cr_expect_eq(cuMemAddressReserve(&bad_va, gran, 3 * gran, 0, 0), CUDA_ERROR_INVALID_VALUE,
                 "alignment not a power of two");
    cr_expect_eq(cuMemAddressReserve(&bad_va, 4097, 0, 0, 0), CUDA_ERROR_INVALID_VALUE,
                 "size not a multiple of the page size");
    cr_expect_neq(cuMemAddressReserve(&bad_va, (size_t)1 << 62, 0, 0, 0), CUDA_SUCCESS);
    cr_expect_eq(cuMemMap(a + 4096, 2 * gran, 0, h, 0), CUDA_ERROR_INVALID_VALUE,
                 "misaligned address");
    cr_expect_eq(cuMemMap(a, gran + 4096, 0, h, 0), CUDA_ERROR_INVALID_VALUE, "misaligned size");
    cr_expect_eq(cuMemMap(a + 3 * gran, 2 * gran, 0, h, 0), CUDA_ERROR_INVALID_VALUE,
                 "beyond the reservation");
    CK(cuMemMap(a, 2 * gran, 0, h, 0));
    cr_expect_eq(cuMemMap(a, 2 * gran, 0, h, 0), CUDA_ERROR_INVALID_VALUE, "double map");
    cr_expect_eq(cuMemMap(a + gran, 2 * gran, 0, h, 0), CUDA_ERROR_INVALID_VALUE,
                 "overlapping map");
    cr_expect_eq(cuMemUnmap(a, gran), CUDA_ERROR_INVALID_VALUE, "partial unmap");
    cr_expect_eq(cuMemUnmap(a + gran, 2 * gran), CUDA_ERROR_INVALID_VALUE, "straddling unmap");
    cr_expect_eq(cuMemSetAccess(a, gran, &rw, 1), CUDA_ERROR_INVALID_VALUE,
                 "access on part of a mapping");
    cr_expect_eq(cuMemAddressFree(a, 4 * gran), CUDA_ERROR_INVALID_VALUE,
                 "address free with a mapping inside");
    CK(cuMemUnmap(a, 2 * gran));
    CK(cuMemRelease(h));
    cr_expect_eq(cuMemRelease(h), CUDA_ERROR_INVALID_VALUE, "double release");
    cr_expect_eq(cuMemAddressFree(a, 2 * gran), CUDA_ERROR_INVALID_VALUE, "wrong size");
    CK(cuMemAddressFree(a, 4 * gran));
    cr_expect_eq(cuMemAddressFree(a, 4 * gran), CUDA_ERROR_INVALID_VALUE, "double free");
}

Test(drv_api_vmm, one_call_spans_adjacent_mappings)
{
    CUdeviceptr a = reserve(6 * gran);
    CUmemGenericAllocationHandle h1 = create(gran), h2 = create(2 * gran), h3 = create(gran);

    CK(cuMemMap(a, gran, 0, h1, 0));
    CK(cuMemMap(a + gran, 2 * gran, 0, h2, 0));
    CK(cuMemMap(a + 3 * gran, gran, 0, h3, 0));
    CK(cuMemSetAccess(a, 4 * gran, &rw, 1));
    fill_host(a, 0x3c, 4 * gran);
    cr_expect(reads_back(a + gran, 0x3c, 2 * gran));
    cr_expect_eq(cuMemUnmap(a, 2 * gran), CUDA_ERROR_INVALID_VALUE, "cuts h2 in half");
    cr_expect_eq(cuMemUnmap(a, 5 * gran), CUDA_ERROR_INVALID_VALUE, "covers unmapped space");
    CK(cuMemUnmap(a, 4 * gran));
    CK(cuMemRelease(h1));
    CK(cuMemRelease(h2));
    CK(cuMemRelease(h3));
    CK(cuMemAddressFree(a, 6 * gran));
}

Test(drv_api_vmm, unknown_handle_and_pointer)
{
    CUdeviceptr a = reserve(2 * gran);
    int local;

    cr_expect_eq(cuMemMap(a, 2 * gran, 0, (CUmemGenericAllocationHandle)0x7777777, 0),
                 CUDA_ERROR_INVALID_VALUE);
    cr_expect_eq(cuMemUnmap((CUdeviceptr)(uintptr_t)&local & ~(CUdeviceptr)(gran - 1), gran),
                 CUDA_ERROR_INVALID_VALUE, "foreign pointer");
    cr_expect_eq(cuMemUnmap(a, 2 * gran), CUDA_ERROR_INVALID_VALUE, "nothing mapped");
    CK(cuMemAddressFree(a, 2 * gran));
}

Test(drv_api_vmm, pointer_attributes_report_the_reservation)
{
    CUdeviceptr a = reserve(4 * gran), start = 0, map_base = 0;
    CUmemGenericAllocationHandle h = create(2 * gran);
    CUpointer_attribute attrs[3] = {CU_POINTER_ATTRIBUTE_RANGE_START_ADDR,
                                    CU_POINTER_ATTRIBUTE_RANGE_SIZE, CU_POINTER_ATTRIBUTE_MAPPED};
    size_t size = 0;
    bool mapped = true;
    void *data[3] = {&start, &size, &mapped};
    int ordinal = -1;

    CK(cuPointerGetAttributes(3, attrs, data, a + 100));
    cr_expect_eq(start, a);
    cr_expect_eq(size, 4 * gran);
    cr_expect(!mapped);
    CK(cuMemMap(a + gran, 2 * gran, 0, h, 0));
    CK(cuMemSetAccess(a + gran, 2 * gran, &rw, 1));
    CK(cuPointerGetAttributes(3, attrs, data, a + gran + 100));
    cr_expect_eq(start, a);
    cr_expect_eq(size, 4 * gran);
    cr_expect(mapped);
    CK(cuPointerGetAttribute(&map_base, CU_POINTER_ATTRIBUTE_MAPPING_BASE_ADDR, a + 2 * gran));
    cr_expect_eq(map_base, a + gran);
    CK(cuPointerGetAttribute(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, a + gran));
    cr_expect_eq(ordinal, 0);
    CK(cuMemUnmap(a + gran, 2 * gran));
    CK(cuMemRelease(h));
    CK(cuMemAddressFree(a, 4 * gran));
}

/* Runs `touch` in a forked child; returns the signal that killed it (0 if none). */
static int child_signal(void (*touch)(CUdeviceptr), CUdeviceptr p)
{
    int status = 0;
    pid_t pid = fork();

    cr_assert_geq(pid, 0);
    if (pid == 0) {
        signal(SIGSEGV, SIG_DFL); /* die of it, even under a sanitizer's handler */
        touch(p);
        _exit(0);
    }
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    return WIFSIGNALED(status) ? WTERMSIG(status) : 0;
}

static void write_byte(CUdeviceptr p)
{
    *(volatile unsigned char *)(uintptr_t)p = 1;
}

Test(drv_api_vmm, touching_unmapped_or_inaccessible_memory_faults)
{
    CUdeviceptr a = reserve(2 * gran);
    CUmemGenericAllocationHandle h = create(gran);

    cr_expect_eq(child_signal(write_byte, a), SIGSEGV, "reserved, not mapped");
    CK(cuMemMap(a, gran, 0, h, 0));
    cr_expect_eq(child_signal(write_byte, a), SIGSEGV, "mapped, no access yet");
    CK(cuMemSetAccess(a, gran, &rw, 1));
    CK(cuMemUnmap(a, gran));
    cr_expect_eq(child_signal(write_byte, a), SIGSEGV, "unmapped again");
    CK(cuMemRelease(h));
    CK(cuMemAddressFree(a, 2 * gran));
}
