/*
 * fs_oom.c — a program for the OOM report tests: asks cudaMalloc for SIZE_MIB MiB and prints
 * "oom" when it fails with cudaErrorMemoryAllocation, "ok" when it succeeds.
 */
#include <stdio.h>
#include <stdlib.h>

#include <cuda_runtime_api.h>

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    void *small = NULL, *p = NULL;
    cudaMalloc(&small, 1 << 20);
    cudaError_t e = cudaMalloc(&p, (size_t)atol(argv[1]) << 20);
    printf("%s\n", e == cudaErrorMemoryAllocation ? "oom" : e == cudaSuccess ? "ok" : "error");
    cudaFree(p);
    cudaFree(small);
    return 0;
}
