/*
 * ip_threads.c — 8 threads make their first CUDA call at the same moment (so fragless
 * initializes while all of them are allocating); every allocation goes through fragless.
 * With argument "init-fails" (and cuInit@1 failing) fragless initializes once, fails, and
 * serves nothing.
 */
#include <pthread.h>

#include "ip_prog.h"

#define THREADS 8
#define ROUNDS  50

static pthread_barrier_t start;

static void *worker(void *arg)
{
    (void)arg;
    pthread_barrier_wait(&start);
    for (int i = 0; i < ROUNDS; i++) {
        void *p = NULL;
        CHECK(cudaMalloc(&p, 4096 + (size_t)i * 512) == cudaSuccess, "cudaMalloc");
        CHECK(cudaFree(p) == cudaSuccess, "cudaFree");
    }
    return NULL;
}

/* Run with FRAGLESS_EMU_FAIL=cuInit@1: exactly one initialization, which fails, so every call
 * of every thread passes through to the real functions (whose own cuInit then succeeds). */
static void init_fails(void)
{
    fragless_stats_t s;
    CHECK(ip_stats(0, &s) == FRAGLESS_ENODEV, "fragless served nothing");
    printf("ok threads init-fails\n");
}

int main(int argc, char **argv)
{
    pthread_t t[THREADS];
    pthread_barrier_init(&start, NULL, THREADS);
    for (int i = 0; i < THREADS; i++)
        CHECK(pthread_create(&t[i], NULL, worker, NULL) == 0, "thread");
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    if (argc > 1 && strcmp(argv[1], "init-fails") == 0) {
        init_fails();
        return 0;
    }
    fragless_stats_t s = ip_stats0();
    CHECK(s.num_allocs == THREADS * ROUNDS, "num_allocs %llu", (unsigned long long)s.num_allocs);
    CHECK(s.num_frees == THREADS * ROUNDS, "num_frees %llu", (unsigned long long)s.num_frees);
    CHECK(s.allocated_bytes.current == 0, "all freed");
    printf("ok threads\n");
    return 0;
}
