/*
 * fs_hold.c — a program for fragstat's tests that holds a fragmented heap.
 *
 * Usage: fs_hold COUNT SIZE_KIB [async]. Allocates COUNT blocks of SIZE_KIB KiB with cudaMalloc
 * (cudaMallocAsync/cudaFreeAsync on the default stream with `async`, as PyTorch's stream-ordered
 * path does: blocks freed that way are reusable at once), frees
 * every other one of the first half and all of the second half (so that the cache holds both
 * holes between live blocks and wholly free segments), prints its own fragless statistics
 * ("name=value" lines, from fragless_get_stats found with dlsym), then "ready", and waits until a
 * line arrives on stdin (or stdin is closed). It then prints its statistics again and exits
 * normally.
 */
#include <dlfcn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cuda_runtime_api.h>

#include "fragless.h"

static void print_stats(const char *when)
{
    int (*get)(int, fragless_stats_t *) =
        (int (*)(int, fragless_stats_t *))dlsym(RTLD_DEFAULT, "fragless_get_stats");
    fragless_stats_t s = {.size = sizeof s};
    if (!get || get(0, &s) != 0) {
        printf("%s: no fragless statistics\n", when);
        return;
    }
    printf("%s pid=%d\n", when, (int)getpid());
#define PRINT_GAUGE_(name, help)   printf(#name "=%llu\n", (unsigned long long)s.name.current);
#define PRINT_COUNTER_(name, help) printf(#name "=%llu\n", (unsigned long long)s.name);
    FRAGLESS_STATS_FIELDS(PRINT_GAUGE_, PRINT_COUNTER_)
}

int main(int argc, char **argv)
{
    if (argc != 3 && !(argc == 4 && strcmp(argv[3], "async") == 0))
        return 2;
    bool async = argc == 4;
    int count = atoi(argv[1]);
    size_t size = (size_t)atol(argv[2]) << 10;
    void **p = calloc((size_t)count, sizeof *p);
    for (int i = 0; i < count; i++) {
        cudaError_t e = async ? cudaMallocAsync(&p[i], size, 0) : cudaMalloc(&p[i], size);
        if (e != cudaSuccess) {
            printf("cudaMalloc %d failed\n", i);
            return 1;
        }
    }
    for (int i = 0; i < count; i++) {
        if ((i >= count / 2 || i % 2 == 0) && async)
            cudaFreeAsync(p[i], 0);
        else if (i >= count / 2 || i % 2 == 0)
            cudaFree(p[i]);
    }
    cudaDeviceSynchronize();
    print_stats("before");
    printf("ready\n");
    fflush(stdout);
    char line[16];
    if (fgets(line, sizeof line, stdin) == NULL)
        clearerr(stdin);
    print_stats("after");
    free(p);
    return 0;
}
