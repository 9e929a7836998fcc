// static_cudart.cu — built with nvcc's default (cudart linked statically), run under
// LD_PRELOAD of fragless: allocations made by the static runtime reach fragless through
// the driver entry points it resolves at run time, and a kernel's results are right.
#include <dlfcn.h>
#include <stdio.h>

#include "fragless.h"

__global__ void fill(int *p, int n, int v)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        p[i] = v + i;
}

int main()
{
    typedef int (*get_stats_fn)(int, fragless_stats_t *);
    get_stats_fn get = (get_stats_fn)dlsym(RTLD_DEFAULT, "fragless_get_stats");
    if (!get) {
        fprintf(stderr, "fragless is not loaded\n");
        return 2;
    }
    const int n = 1 << 20;
    for (int round = 0; round < 20; round++) {
        int *d = NULL;
        if (cudaMalloc(&d, n * sizeof(int)) != cudaSuccess) {
            fprintf(stderr, "cudaMalloc failed\n");
            return 1;
        }
        fill<<<(n + 255) / 256, 256>>>(d, n, round);
        int last = 0;
        cudaMemcpy(&last, d + n - 1, sizeof last, cudaMemcpyDeviceToHost);
        cudaFree(d);
        if (last != round + n - 1) {
            fprintf(stderr, "round %d: got %d\n", round, last);
            return 1;
        }
    }
    int dev = 0;
    cudaGetDevice(&dev);
    fragless_stats_t s;
    s.size = sizeof s;
    if (get(dev, &s) != 0 || s.num_allocs < 20) {
        fprintf(stderr, "fragless served %llu allocations\n", (unsigned long long)s.num_allocs);
        return 1;
    }
    printf("static cudart: fragless served %llu allocations, results right\n",
           (unsigned long long)s.num_allocs);
    return 0;
}
