/*
 * fs_oom.c — a program for the OOM report tests: asks cudaMalloc for SIZE_MIB MiB and prints
 * "oom" when it fails with cudaErrorMemoryAllocation, "ok" when it succeeds.
 *
 * Usage: fs_oom SIZE_MIB [BLOCKS]. With BLOCKS, it first allocates that many 3 MiB blocks and
 * frees every other one, leaving holes between live blocks (seed 002's fragmentation).
 */
#include <stdio.h>
#include <stdlib.h>

#include <cuda_runtime_api.h>

int main(int argc, char **argv)
{
    if (argc != 2 && argc != 3)
        return 2;
    int blocks = argc == 3 ? atoi(argv[2]) : 1;
    void **held = calloc((size_t)blocks, sizeof *held);
    for (int i = 0; i < blocks; i++) {
        if (cudaMalloc(&held[i], argc == 3 ? 3 << 20 : 1 << 20) != cudaSuccess)
            return 1;
    }
    for (int i = 0; i < blocks; i += 2)
        cudaFree(held[i]);
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, (size_t)atol(argv[1]) << 20);
    printf("%s\n", e == cudaErrorMemoryAllocation ? "oom" : e == cudaSuccess ? "ok" : "error");
    cudaFree(p);
    for (int i = 1; i < blocks; i += 2)
        cudaFree(held[i]);
    free(held);
    return 0;
}
