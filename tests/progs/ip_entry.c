/*
 * ip_entry.c — driver entry points found through the runtime's resolvers
 * (cudaGetDriverEntryPointByVersion, and the deprecated cudaGetDriverEntryPoint) reach
 * fragless, with the query status written as documented.
 */
#include "ip_prog.h"

/* CUDA 13 deprecates cudaGetDriverEntryPoint; programs built earlier still call it. */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

int main(void)
{
    int version = 0;
    CHECK(cudaDriverGetVersion(&version) == cudaSuccess, "driver version");
    enum cudaDriverEntryPointQueryResult st = cudaDriverEntryPointVersionNotSufficent;
    void *fn = NULL;
    CHECK(cudaGetDriverEntryPointByVersion("cuMemAlloc", &fn, (unsigned)version, cudaEnableDefault,
                                           &st) == cudaSuccess,
          "by version");
    CHECK(st == cudaDriverEntryPointSuccess, "status %d", (int)st);
    CHECK(fn == dlsym(RTLD_DEFAULT, "cuMemAlloc_v2"), "fragless's cuMemAlloc_v2");
    ip_alloc_fn alloc = (ip_alloc_fn)fn;
    CHECK(cudaGetDriverEntryPoint("cuMemFree", &fn, cudaEnableDefault, &st) == cudaSuccess,
          "deprecated form");
    CHECK(fn == dlsym(RTLD_DEFAULT, "cuMemFree_v2"), "fragless's cuMemFree_v2");
    ip_free_fn release = (ip_free_fn)fn;
    CHECK(cudaGetDriverEntryPointByVersion("cuNoSuchEntryPoint", &fn, (unsigned)version,
                                           cudaEnableDefault, &st) == cudaSuccess,
          "unknown name is not an error");
    CHECK(fn == NULL && st == cudaDriverEntryPointSymbolNotFound, "status %d", (int)st);

    CHECK(cudaFree(NULL) == cudaSuccess, "runtime up, primary context current");
    ip_round_trip_drv(alloc, release, 1 << 20);
    printf("ok entry\n");
    return 0;
}
