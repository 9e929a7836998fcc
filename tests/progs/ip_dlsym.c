/*
 * ip_dlsym.c — a program that dlopens libcuda.so.1 and looks the driver up by name gets
 * fragless's entry points for what fragless interposes and the driver's own for the rest.
 */
#include "ip_prog.h"

typedef CUresult (*init_fn)(unsigned int);
typedef CUresult (*retain_fn)(CUcontext *, CUdevice);
typedef CUresult (*set_current_fn)(CUcontext);

static void *must(void *h, const char *name)
{
    void *p = dlsym(h, name);
    CHECK(p != NULL, "dlsym(%s): %s", name, dlerror());
    return p;
}

static bool in_fragless(void *p)
{
    Dl_info info;
    return dladdr(p, &info) && strstr(info.dli_fname, "libfragless") != NULL;
}

int main(void)
{
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    CHECK(h != NULL, "dlopen: %s", dlerror());
    ip_alloc_fn alloc = (ip_alloc_fn)must(h, "cuMemAlloc_v2");
    ip_free_fn release = (ip_free_fn)must(h, "cuMemFree_v2");
    CHECK(in_fragless((void *)alloc) && in_fragless((void *)release), "hooks handed out");
    CHECK(in_fragless(must(h, "cuGetProcAddress_v2")), "the resolver is fragless's");
    CHECK(in_fragless(must(h, "cuGetProcAddress")), "the 4-argument resolver too");
    init_fn init = (init_fn)must(h, "cuInit");
    CHECK(!in_fragless((void *)init), "cuInit is the driver's");
    dlerror();
    CHECK(dlsym(h, "cuNoSuchEntryPoint") == NULL, "unknown name");
    CHECK(dlerror() != NULL, "dlerror says why");

    CUcontext ctx = NULL;
    CHECK(init(0) == CUDA_SUCCESS, "cuInit");
    CHECK(((retain_fn)must(h, "cuDevicePrimaryCtxRetain"))(&ctx, 0) == CUDA_SUCCESS, "retain");
    CHECK(((set_current_fn)must(h, "cuCtxSetCurrent"))(ctx) == CUDA_SUCCESS, "set current");
    ip_round_trip_drv(alloc, release, 2 << 20);
    printf("ok dlsym\n");
    return 0;
}
