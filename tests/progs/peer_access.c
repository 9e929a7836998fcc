/*
 * peer_access.c — peer access to memory fragless maps (run with FRAGLESS_EMU_DEVICES=2 and
 * fragless preloaded, expandable segments by default). Device 1 is the peer: with its context
 * current, peer access to device 0 is enabled; memory allocated on device 0 through fragless
 * must then be readable and writable by device 1: the emulated driver's cuMemGetAccess says so
 * and a simulated fill kernel on a stream of device 1 writes it without a device fault.
 * Modes (argv[1]):
 *   after    enable (runtime), then allocate
 *   before   allocate, then enable (runtime): memory mapped before is granted too
 *   none     allocate without enabling: device 1 has no access and its fill faults
 *   driver   cuCtxEnablePeerAccess, then cuCtxDisablePeerAccess: memory mapped after the
 *            disable is not granted, memory granted before keeps its access
 *   fail     the grant of memory mapped before fails (injected): the enable fails, device 1
 *            has no access, peer access is off again (enabling again works), nothing leaks
 *   ctxfail  fragless cannot learn the current device after the driver enabled peer access
 *            (cuCtxGetCurrent fails, injected): the enable fails and is undone the same way
 */
#include "fragless_emu.h"
#include "ip_prog.h"

#define BLOCK ((size_t)8 << 20) /* one default page: each block maps its own */

typedef int (*empty_cache_fn)(int, size_t *);

static void set_device(int dev)
{
    CHECK(cudaSetDevice(dev) == cudaSuccess, "cudaSetDevice(%d)", dev);
    CHECK(cudaFree(NULL) == cudaSuccess, "device %d's context", dev);
}

static void *alloc0(void)
{
    void *p = NULL;
    fragless_stats_t before = ip_stats0();
    set_device(0);
    CHECK(cudaMalloc(&p, BLOCK) == cudaSuccess, "cudaMalloc on device 0");
    fragless_stats_t after = ip_stats0();
    ip_expect_served(&before, &after, 1, 0);
    return p;
}

static unsigned long long access_of(const void *p, int device)
{
    CUmemLocation loc = {.type = CU_MEM_LOCATION_TYPE_DEVICE, .id = device};
    unsigned long long flags = 99;
    CUresult r = cuMemGetAccess(&flags, &loc, (CUdeviceptr)(uintptr_t)p);
    CHECK(r == CUDA_SUCCESS, "cuMemGetAccess: %d (not a VMM mapping?)", (int)r);
    return flags;
}

/* A fill kernel on device 1's default stream over the whole block; returns the device faults
 * it caused (0 or 1), and on success checks its bytes from the host. */
static uint64_t fill_from_device1(void *p, int byte)
{
    uint64_t faults = fragless_emu_faults();
    set_device(1);
    CHECK(fragless_emu_stream_fill(NULL, (CUdeviceptr)(uintptr_t)p, byte, BLOCK, 10) == 0,
          "fill queued");
    cudaError_t e = cudaDeviceSynchronize();
    uint64_t caused = fragless_emu_faults() - faults;
    CHECK((e == cudaSuccess) == (caused == 0), "sync %d, faults %llu", (int)e,
          (unsigned long long)caused);
    const unsigned char *b = p;
    if (caused == 0)
        CHECK(b[0] == byte && b[BLOCK - 1] == byte, "device 1's fill landed");
    set_device(0);
    return caused;
}

static void expect_peer_rw(void *p)
{
    CHECK(access_of(p, 0) == CU_MEM_ACCESS_FLAGS_PROT_READWRITE, "device 0 read/write");
    CHECK(access_of(p, 1) == CU_MEM_ACCESS_FLAGS_PROT_READWRITE, "device 1 read/write");
    CHECK(fill_from_device1(p, 0x5a) == 0, "device 1's fill faulted");
}

static void enable_rt(cudaError_t want)
{
    set_device(1);
    cudaError_t e = cudaDeviceEnablePeerAccess(0, 0);
    CHECK(e == want, "cudaDeviceEnablePeerAccess(0) = %d, want %d", (int)e, (int)want);
    set_device(0);
}

static void free_all(void *a, void *b)
{
    size_t released = 0;
    empty_cache_fn empty = (empty_cache_fn)dlsym(RTLD_DEFAULT, "fragless_empty_cache");
    CHECK(empty, "fragless_empty_cache exported");
    CHECK(cudaFree(a) == cudaSuccess && cudaFree(b) == cudaSuccess, "cudaFree");
    CHECK(empty(0, &released) == 0, "empty cache");
    CHECK(fragless_emu_audit(2) == 0, "the leak audit found leaks");
}

/* Both devices' primary contexts, retained, with device 1's current (the driver API way). */
static void retain_both(CUcontext *ctx0, CUcontext *ctx1)
{
    CHECK(cuDevicePrimaryCtxRetain(ctx0, 0) == CUDA_SUCCESS, "retain 0");
    CHECK(cuDevicePrimaryCtxRetain(ctx1, 1) == CUDA_SUCCESS, "retain 1");
    CHECK(cuCtxSetCurrent(*ctx1) == CUDA_SUCCESS, "device 1 current");
}

static void release_both(void)
{
    CHECK(cuDevicePrimaryCtxRelease(0) == CUDA_SUCCESS, "release 0");
    CHECK(cuDevicePrimaryCtxRelease(1) == CUDA_SUCCESS, "release 1");
}

static void driver_mode(void)
{
    CUcontext ctx0 = NULL, ctx1 = NULL;
    void *a = alloc0();
    retain_both(&ctx0, &ctx1);
    CHECK(cuCtxEnablePeerAccess(ctx0, 0) == CUDA_SUCCESS, "cuCtxEnablePeerAccess");
    CHECK(cuCtxGetCurrent(&ctx1) == CUDA_SUCCESS && ctx1 != ctx0, "context kept");
    expect_peer_rw(a);
    CHECK(cuCtxSetCurrent(ctx1) == CUDA_SUCCESS, "device 1 current");
    CHECK(cuCtxDisablePeerAccess(ctx0) == CUDA_SUCCESS, "cuCtxDisablePeerAccess");
    void *b = alloc0();
    CHECK(access_of(b, 1) == CU_MEM_ACCESS_FLAGS_PROT_NONE, "mapped after disable: no access");
    CHECK(access_of(a, 1) == CU_MEM_ACCESS_FLAGS_PROT_READWRITE, "granted before: kept");
    CHECK(fill_from_device1(b, 0x11) == 1, "device 1's fill of ungranted memory faults");
    release_both();
}

static void fail_mode(void)
{
    void *a = alloc0();
    CHECK(fragless_emu_fail("cuMemSetAccess@1") == 0, "arm");
    enable_rt(cudaErrorMemoryAllocation);
    CHECK(fragless_emu_fail(NULL) == 0, "disarm");
    CHECK(access_of(a, 1) == CU_MEM_ACCESS_FLAGS_PROT_NONE, "nothing granted");
    void *b = alloc0();
    CHECK(access_of(b, 1) == CU_MEM_ACCESS_FLAGS_PROT_NONE, "no peer recorded");
    enable_rt(cudaSuccess); /* not "already enabled": the failed enable was disabled again */
    expect_peer_rw(a);
    expect_peer_rw(b);
    free_all(a, b);
}

static void ctxfail_mode(void)
{
    CUcontext ctx0 = NULL, ctx1 = NULL;
    void *a = alloc0();
    retain_both(&ctx0, &ctx1);
    CHECK(fragless_emu_fail("cuCtxGetCurrent@1=CUDA_ERROR_INVALID_CONTEXT") == 0, "arm");
    CUresult r = cuCtxEnablePeerAccess(ctx0, 0);
    CHECK(fragless_emu_fail(NULL) == 0, "disarm");
    CHECK(r == CUDA_ERROR_INVALID_CONTEXT, "cuCtxEnablePeerAccess = %d", (int)r);
    CHECK(access_of(a, 1) == CU_MEM_ACCESS_FLAGS_PROT_NONE, "nothing granted");
    CHECK(cuCtxSetCurrent(ctx1) == CUDA_SUCCESS, "device 1 current");
    CHECK(cuCtxEnablePeerAccess(ctx0, 0) == CUDA_SUCCESS, "enabling again works");
    expect_peer_rw(a);
    release_both();
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "after") == 0) {
        enable_rt(cudaSuccess);
        expect_peer_rw(alloc0());
    } else if (strcmp(mode, "before") == 0) {
        void *a = alloc0();
        CHECK(access_of(a, 1) == CU_MEM_ACCESS_FLAGS_PROT_NONE, "no access before the enable");
        enable_rt(cudaSuccess);
        expect_peer_rw(a);
    } else if (strcmp(mode, "none") == 0) {
        void *a = alloc0();
        CHECK(access_of(a, 1) == CU_MEM_ACCESS_FLAGS_PROT_NONE, "device 1 has no access");
        CHECK(fill_from_device1(a, 0x22) == 1, "device 1's fill faults");
    } else if (strcmp(mode, "driver") == 0) {
        driver_mode();
    } else if (strcmp(mode, "fail") == 0) {
        fail_mode();
    } else if (strcmp(mode, "ctxfail") == 0) {
        ctxfail_mode();
    } else {
        CHECK(false, "unknown mode %s", mode);
    }
    printf("ok\n");
    return 0;
}
