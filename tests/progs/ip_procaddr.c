/*
 * ip_procaddr.c — entry points found through cuGetProcAddress reach fragless.
 * argv[1]: "v2" (the 5-argument cuGetProcAddress_v2) or "v1" (the 4-argument legacy
 * cuGetProcAddress); argv[2]: "default", "legacy" or "ptds" (per-thread default stream).
 * Both resolvers are found with dlsym, as a runtime does; the one asked for itself must come
 * back as fragless's resolver.
 */
#include "ip_prog.h"

typedef CUresult (*proc_v2_fn)(const char *, void **, int, cuuint64_t,
                               CUdriverProcAddressQueryResult *);
typedef CUresult (*proc_v1_fn)(const char *, void **, int, cuuint64_t);
typedef CUresult (*alloc_fn)(CUdeviceptr *, size_t);
typedef CUresult (*free_fn)(CUdeviceptr);
typedef CUresult (*alloc_async_fn)(CUdeviceptr *, size_t, CUstream);
typedef CUresult (*free_async_fn)(CUdeviceptr, CUstream);

static bool use_v1;
static int version;
static cuuint64_t flags;

static void *lookup(const char *name, CUdriverProcAddressQueryResult *st)
{
    void *fn = (void *)1;
    CUresult r;
    if (use_v1) {
        proc_v1_fn v1 = (proc_v1_fn)dlsym(RTLD_DEFAULT, "cuGetProcAddress");
        CHECK(v1 != NULL, "cuGetProcAddress exported");
        r = v1(name, &fn, version, flags);
        *st =
            r == CUDA_SUCCESS ? CU_GET_PROC_ADDRESS_SUCCESS : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    } else {
        proc_v2_fn v2 = (proc_v2_fn)dlsym(RTLD_DEFAULT, "cuGetProcAddress_v2");
        CHECK(v2 != NULL, "cuGetProcAddress_v2 exported");
        r = v2(name, &fn, version, flags, st);
    }
    return r == CUDA_SUCCESS ? fn : NULL;
}

int main(int argc, char **argv)
{
    use_v1 = argc > 1 && strcmp(argv[1], "v1") == 0;
    const char *f = argc > 2 ? argv[2] : "default";
    flags = strcmp(f, "ptds") == 0     ? CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM
            : strcmp(f, "legacy") == 0 ? CU_GET_PROC_ADDRESS_LEGACY_STREAM
                                       : CU_GET_PROC_ADDRESS_DEFAULT;
    CHECK(cuDriverGetVersion(&version) == CUDA_SUCCESS, "driver version");
    CUdriverProcAddressQueryResult st = CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT;
    CHECK(lookup("cuGetProcAddress", &st) == dlsym(RTLD_DEFAULT, "cuGetProcAddress_v2"),
          "the resolver hands out fragless's resolver");
    CHECK(st == CU_GET_PROC_ADDRESS_SUCCESS, "status %d", (int)st);
    CHECK(lookup("cuNoSuchEntryPoint", &st) == NULL, "unknown name");
    CHECK(st == CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND, "status %d", (int)st);

    alloc_fn alloc = (alloc_fn)lookup("cuMemAlloc", &st);
    free_fn release = (free_fn)lookup("cuMemFree", &st);
    alloc_async_fn alloc_async = (alloc_async_fn)lookup("cuMemAllocAsync", &st);
    free_async_fn free_async = (free_async_fn)lookup("cuMemFreeAsync", &st);
    CHECK(alloc && release && alloc_async && free_async, "entry points found");
    bool ptds = flags == CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM;
    const char *want = ptds ? "cuMemAllocAsync_ptsz" : "cuMemAllocAsync";
    CHECK((void *)alloc_async == dlsym(RTLD_DEFAULT, want), "fragless's %s", want);
    CHECK((void *)alloc == dlsym(RTLD_DEFAULT, "cuMemAlloc_v2"), "fragless's cuMemAlloc_v2");
    Dl_info info;
    void *init = lookup("cuInit", &st);
    CHECK(init && dladdr(init, &info) && !strstr(info.dli_fname, "libfragless"),
          "cuInit is the driver's own");

    CUcontext ctx = NULL;
    CHECK(cuInit(0) == CUDA_SUCCESS, "cuInit");
    CHECK(cuDevicePrimaryCtxRetain(&ctx, 0) == CUDA_SUCCESS, "retain");
    CHECK(cuCtxSetCurrent(ctx) == CUDA_SUCCESS, "set current");
    fragless_stats_t before = ip_stats0();
    CUdeviceptr p = 0, q = 0;
    CHECK(alloc(&p, 1 << 20) == CUDA_SUCCESS, "alloc");
    ip_touch_drv(p, 1 << 20);
    CHECK(alloc_async(&q, 1 << 20, NULL) == CUDA_SUCCESS, "alloc async");
    CHECK(free_async(q, NULL) == CUDA_SUCCESS, "free async");
    CHECK(release(p) == CUDA_SUCCESS, "free");
    CHECK(cuStreamSynchronize(NULL) == CUDA_SUCCESS, "sync");
    fragless_stats_t after = ip_stats0();
    ip_expect_served(&before, &after, 2, 2);
    printf("ok procaddr %s %s\n", use_v1 ? "v1" : "v2", f);
    return 0;
}
