/*
 * fs_fork.c — a program for the stats page's fork test: allocates, forks, and reports as
 * "name=0|1" lines whether each process's page exists: the child's after its first allocation
 * (which may fail, as CUDA in a forked child does) and after it exited, the parent's throughout.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cuda_runtime_api.h>

static int page_exists(pid_t pid)
{
    char path[96];
    snprintf(path, sizeof path, "/dev/shm/fragless.%u.%d", (unsigned)geteuid(), (int)pid);
    return access(path, F_OK) == 0;
}

int main(void)
{
    void *p = NULL, *q = NULL;
    if (cudaMalloc(&p, 1 << 20) != cudaSuccess)
        return 1;
    printf("parent_page=%d\n", page_exists(getpid()));
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        int before = page_exists(getpid());
        cudaError_t e = cudaMalloc(&q, 1 << 20);
        printf("child_alloc=%d\nchild_page_before=%d\nchild_page=%d\n", e == cudaSuccess, before,
               page_exists(getpid()));
        exit(0);
    }
    int st = 0;
    waitpid(child, &st, 0);
    printf("child_exit=%d\nchild_page_after_exit=%d\nparent_page_after=%d\n",
           WIFEXITED(st) ? WEXITSTATUS(st) : 128, page_exists(child), page_exists(getpid()));
    cudaFree(p);
    return 0;
}
