/*
 * bench_heap.c — the caching allocator's speed, measured through the CUDA runtime API as an
 * unmodified program sees it (run under LD_PRELOAD=build/libfragless.so, on the emulated
 * device or a GPU).
 *
 *   bench_heap            all rows below, as a table
 *   bench_heap pairs      cached cudaMalloc+cudaFree pairs of mixed sizes (512 B … 32 MiB),
 *                         1 thread: median ns per pair, and glibc malloc+free of the same
 *                         sizes in the same run; then what one cheap driver query costs on
 *                         this device (the pairs' driver calls are mostly such queries)
 *   bench_heap pairs-async  only the stream-ordered pairs row, in a process that has made no
 *                         other allocation (a program using only cudaMallocAsync)
 *   bench_heap threads    the same pairs (plain and stream-ordered) on 1, 2, 4 … threads
 *                         (up to the cores online, at most 16) working at once: operations
 *                         per second of all threads together and its ratio to 1 thread,
 *                         beside glibc malloc+free's on as many threads (and its ratio to 1
 *                         thread) in the same run
 *   bench_heap loop API PASSES  PASSES untimed passes of one API's pairs (glibc, plain,
 *                         async), for bench/instructions.sh or a profiler
 *   bench_heap train      a 1,000-step synthetic training loop (plain and stream-ordered API),
 *                         with fragless's classic and expandable segments and again with
 *                         FRAGLESS_CONF=passthrough:true (child runs of this program): driver
 *                         calls (memory ones: alloc/free/sync/event and VMM) and wall time
 *
 * Timings are medians of REPS repetitions (passes, or rounds of passes for threads); ratios are
 * taken within one run.
 */
#include <cuda.h>
#include <cuda_runtime_api.h>
#include <fragless.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "benchutil.h"

#define NSIZES 1024
#define REPS   15
#define MiB    ((size_t)1 << 20)
#define STEPS  1000

static size_t sizes[NSIZES];

/* A function of the emulated libcuda's test API, or NULL on a GPU. */
static void *emu_sym(const char *name)
{
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    return lib ? dlsym(lib, name) : NULL;
}

/* Log-uniform sizes from 512 B to 32 MiB, fixed seed. */
static void make_sizes(void)
{
    uint64_t s = 88172645463325252ull;
    for (int i = 0; i < NSIZES; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        unsigned e = 9 + (unsigned)(s % 16); /* 2^9 … 2^24 */
        size_t base = (size_t)1 << e;
        sizes[i] = base + (s >> 20) % base; /* up to 2^25 = 32 MiB */
    }
}

static int check(cudaError_t e, const char *what)
{
    if (e != cudaSuccess) {
        fprintf(stderr, "bench_heap: %s: %s\n", what, cudaGetErrorString(e));
        exit(1);
    }
    return 0;
}

/* fragless's count of its own driver calls and the time spent in them (0 without it). */
static void driver_time(uint64_t *calls, uint64_t *ns)
{
    int (*get)(int, fragless_stats_t *) =
        (int (*)(int, fragless_stats_t *))(uintptr_t)dlsym(RTLD_DEFAULT, "fragless_get_stats");
    fragless_stats_t st = {.size = sizeof st};
    *calls = *ns = 0;
    if (get && get(0, &st) == 0) {
        *calls = st.driver_calls;
        *ns = st.driver_ns;
    }
}

/* One pass over all sizes, a cudaMalloc+cudaFree pair each (stream-ordered on `s` when
 * async); returns ns per pair, and the part of it spent outside driver calls. */
static double cuda_pass(bool async, cudaStream_t s, double *own, double *calls)
{
    uint64_t c0, d0, c1, d1;
    driver_time(&c0, &d0);
    uint64_t t0 = bench_clock_ns(CLOCK_MONOTONIC);
    for (int i = 0; i < NSIZES; i++) {
        void *p;
        check(async ? cudaMallocAsync(&p, sizes[i], s) : cudaMalloc(&p, sizes[i]), "alloc");
        check(async ? cudaFreeAsync(p, s) : cudaFree(p), "free");
    }
    uint64_t t = bench_clock_ns(CLOCK_MONOTONIC) - t0;
    driver_time(&c1, &d1);
    if (own)
        *own = (double)(t - (d1 - d0)) / NSIZES;
    if (calls)
        *calls = (double)(c1 - c0) / NSIZES;
    return (double)t / NSIZES;
}

/* One pass over all sizes, a glibc malloc+free pair each; returns ns per pair. */
static double glibc_pass(void)
{
    uint64_t t0 = bench_clock_ns(CLOCK_MONOTONIC);
    for (int i = 0; i < NSIZES; i++) {
        void *volatile p = malloc(sizes[i]);
        free(p);
    }
    return (double)(bench_clock_ns(CLOCK_MONOTONIC) - t0) / NSIZES;
}

/* One pairs row: median ns per pair and its part outside driver calls, each against glibc's
 * median; driver calls per pair as counted in the last pass. */
static void pairs_row(const char *label, bool async, cudaStream_t s, double glibc)
{
    double total[REPS], own[REPS], calls = 0;
    cuda_pass(async, s, NULL, NULL); /* warm: fills the cache */
    for (int r = 0; r < REPS; r++)
        total[r] = cuda_pass(async, s, &own[r], &calls);
    double t = bench_median(total, REPS), o = bench_median(own, REPS);
    printf("%-40s %8.0f ns/pair (x%.1f glibc) | outside driver calls %6.0f ns (x%.1f) | "
           "%.2f driver calls/pair\n",
           label, t, t / glibc, o, o / glibc, calls);
}

/* What one cheap driver query (cuCtxGetCurrent, which fragless does not intercept) costs on
 * this device: the share of a pair's time that is the driver's answer rather than fragless's
 * work (on the emulated device, its light gate; on a GPU, the real driver). */
static void query_row(void)
{
    enum { N = 100000 };
    double v[REPS];
    CUcontext ctx;
    for (int r = 0; r < REPS; r++) {
        uint64_t t0 = bench_clock_ns(CLOCK_MONOTONIC);
        for (int i = 0; i < N; i++)
            cuCtxGetCurrent(&ctx);
        v[r] = (double)(bench_clock_ns(CLOCK_MONOTONIC) - t0) / N;
    }
    printf("%-40s %8.1f ns/call\n", "pairs: one cheap driver query", bench_median(v, REPS));
}

/* The pairs rows: the plain one first (unless only_async), then the stream-ordered one. */
static void bench_pairs(bool only_async)
{
    double libc[REPS];
    cudaStream_t s;
    check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
    glibc_pass();
    for (int r = 0; r < REPS; r++)
        libc[r] = glibc_pass();
    double g = bench_median(libc, REPS);
    printf("%-40s %8.0f ns/pair\n", "pairs: glibc malloc+free", g);
    if (!only_async)
        pairs_row("pairs: cudaMalloc+cudaFree", false, NULL, g);
    pairs_row("pairs: cudaMallocAsync+cudaFreeAsync", true, s, g);
    query_row();
    check(cudaStreamDestroy(s), "cudaStreamDestroy");
}

/* ---- threads ----------------------------------------------------------------------------- */

#define MAX_THREADS  16
#define ROUND_PASSES 8 /* passes over the sizes per thread and round */

enum api { API_GLIBC, API_PLAIN, API_ASYNC };

/* One pass over all sizes with `api` (on stream `s` when async): ns per pair. */
static double api_pass(enum api api, cudaStream_t s)
{
    return api == API_GLIBC ? glibc_pass() : cuda_pass(api == API_ASYNC, s, NULL, NULL);
}

struct pair_thread {
    pthread_barrier_t *start, *end; /* of each round, shared with the timing thread */
    enum api api;
};

/* Warms up, then makes ROUND_PASSES passes in each of REPS rounds. */
static void *pairs_thread(void *arg)
{
    const struct pair_thread *t = arg;
    cudaStream_t s = NULL;
    if (t->api != API_GLIBC) {
        check(cudaSetDevice(0), "cudaSetDevice");
        check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
    }
    api_pass(t->api, s); /* warm: fills the cache */
    for (int r = 0; r < REPS; r++) {
        pthread_barrier_wait(t->start);
        for (int p = 0; p < ROUND_PASSES; p++)
            api_pass(t->api, s);
        pthread_barrier_wait(t->end);
    }
    if (s)
        check(cudaStreamDestroy(s), "cudaStreamDestroy");
    return NULL;
}

/* Mallocs and frees per second of n threads working at once: in each of REPS rounds the n
 * threads start together and each makes ROUND_PASSES passes; a round's figure is all their
 * operations over the time from the start to the last thread's end; returns the median. */
static double ops_per_s(int n, enum api api)
{
    pthread_t th[MAX_THREADS];
    pthread_barrier_t start, end;
    struct pair_thread t = {.start = &start, .end = &end, .api = api};
    double v[REPS];
    pthread_barrier_init(&start, NULL, (unsigned)n + 1);
    pthread_barrier_init(&end, NULL, (unsigned)n + 1);
    for (int i = 0; i < n; i++)
        pthread_create(&th[i], NULL, pairs_thread, &t);
    for (int r = 0; r < REPS; r++) {
        pthread_barrier_wait(&start);
        uint64_t t0 = bench_clock_ns(CLOCK_MONOTONIC);
        pthread_barrier_wait(&end);
        uint64_t ns = bench_clock_ns(CLOCK_MONOTONIC) - t0;
        v[r] = 2e9 * n * ROUND_PASSES * NSIZES / (double)ns;
    }
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&start);
    pthread_barrier_destroy(&end);
    return bench_median(v, REPS);
}

/* The thread counts measured: 1, 2, 4 … up to the cores online and MAX_THREADS. */
static int thread_counts(int *counts)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int nc = 0;
    for (int n = 1; n <= MAX_THREADS && (n == 1 || n <= cores); n *= 2)
        counts[nc++] = n;
    return nc;
}

/* Each API's ops/s on 1, 2 … threads beside glibc's on as many threads, both with their
 * ratio to 1 thread, then the API's ratio to glibc. */
static void bench_threads(void)
{
    int counts[8], nc = thread_counts(counts);
    double glibc[8];
    for (int i = 0; i < nc; i++)
        glibc[i] = ops_per_s(counts[i], API_GLIBC);
    printf("threads: ops/s = mallocs and frees per second of all threads together, median of %d "
           "rounds in which the threads start at once and each makes %d passes over the sizes; "
           "glibc on as many threads in this run\n",
           REPS, ROUND_PASSES);
    for (enum api api = API_PLAIN; api <= API_ASYNC; api++) {
        const char *name =
            api == API_ASYNC ? "cudaMallocAsync+cudaFreeAsync" : "cudaMalloc+cudaFree";
        double one = 0;
        for (int i = 0; i < nc; i++) {
            double ops = ops_per_s(counts[i], api);
            one = i == 0 ? ops : one;
            printf("threads: %-31s %2d thread%s %10.0f ops/s x%.2f of 1 thread | glibc %10.0f "
                   "ops/s x%.2f of 1 thread | x%.2f glibc\n",
                   name, counts[i], counts[i] > 1 ? "s" : " ", ops, ops / one, glibc[i],
                   glibc[i] / glibc[0], ops / glibc[i]);
        }
    }
}

/* ---- training loop ----------------------------------------------------------------------- */

typedef uint64_t (*emu_calls_fn)(const char *);
typedef int (*emu_work_fn)(cudaStream_t, uint64_t);

static const size_t step_sizes[] = {
    4 * MiB,  4 * MiB,    16 * MiB,  16 * MiB, 1 * MiB, 64 * 1024, 8 * MiB, 12 * MiB + 512,
    2 * MiB,  300 * 1024, 4096,      24 * MiB, 6 * MiB, 6 * MiB,   512,     3 * MiB,
    40 * MiB, 1 * MiB,    96 * 1024, 10 * MiB,
};
#define STEP_N (sizeof step_sizes / sizeof step_sizes[0])

/* Calls of the driver entry points that allocate, free or wait for memory. */
static uint64_t memory_calls(emu_calls_fn calls)
{
    static const char *const names[] = {
        "cuMemAlloc_v2", "cuMemFree_v2", "cuMemAllocAsync", "cuMemFreeAsync", "cuCtxSynchronize",
        "cuEventRecord", "cuEventQuery", "cuEventCreate",   "cuEventDestroy", "cuMemAddressReserve",
        "cuMemCreate",   "cuMemMap",     "cuMemSetAccess",  "cuMemUnmap",     "cuMemRelease"};
    uint64_t n = 0;
    for (size_t i = 0; calls && i < sizeof names / sizeof names[0]; i++)
        n += calls(names[i]);
    return n;
}

struct train_result {
    uint64_t calls, memory_calls, ns;
};

/* STEPS steps: allocate activations, queue 50 µs of simulated work, free in reverse. */
static void train(bool async, struct train_result *res)
{
    emu_calls_fn emu_calls = (emu_calls_fn)(uintptr_t)emu_sym("fragless_emu_calls");
    emu_work_fn emu_work = (emu_work_fn)(uintptr_t)emu_sym("fragless_emu_stream_work");
    cudaStream_t s = NULL;
    void *weights;
    check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
    check(cudaMalloc(&weights, 200 * MiB), "cudaMalloc weights");
    uint64_t c0 = emu_calls ? emu_calls("*") : 0, m0 = memory_calls(emu_calls),
             t0 = bench_clock_ns(CLOCK_MONOTONIC);
    for (int step = 0; step < STEPS; step++) {
        void *p[STEP_N];
        for (size_t i = 0; i < STEP_N; i++)
            check(async ? cudaMallocAsync(&p[i], step_sizes[i], s)
                        : cudaMalloc(&p[i], step_sizes[i]),
                  "alloc");
        if (emu_work)
            emu_work(s, 50);
        for (size_t i = STEP_N; i-- > 0;)
            check(async ? cudaFreeAsync(p[i], s) : cudaFree(p[i]), "free");
    }
    check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
    res->ns = bench_clock_ns(CLOCK_MONOTONIC) - t0;
    res->calls = emu_calls ? emu_calls("*") - c0 : 0;
    res->memory_calls = memory_calls(emu_calls) - m0;
    check(cudaFree(weights), "cudaFree weights");
    check(cudaStreamDestroy(s), "cudaStreamDestroy");
}

static void train_child_output(const char *self, const char *conf, char *buf, size_t len)
{
    int fd[2];
    buf[0] = '\0';
    if (pipe(fd) != 0)
        return;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd[1], STDOUT_FILENO);
        close(fd[0]);
        setenv("FRAGLESS_CONF", conf, 1);
        execl(self, self, "train-one", (char *)NULL);
        _exit(127);
    }
    close(fd[1]);
    size_t n = 0;
    ssize_t r;
    while (n + 1 < len && (r = read(fd[0], buf + n, len - n - 1)) > 0)
        n += (size_t)r;
    buf[n] = '\0';
    close(fd[0]);
    waitpid(pid, NULL, 0);
}

static void train_one(void)
{
    for (int async = 0; async < 2; async++) {
        struct train_result r;
        train(async, &r);
        printf("%s %llu %llu %llu\n", async ? "async" : "plain", (unsigned long long)r.calls,
               (unsigned long long)r.memory_calls, (unsigned long long)r.ns);
    }
}

/* One configuration's rows against pass-through. */
static void bench_train_conf(const char *self, const char *conf, const char *pass)
{
    char mine[256];
    train_child_output(self, conf, mine, sizeof mine);
    const char *ms = mine, *ps = pass;
    for (int row = 0; row < 2; row++) {
        char api[16] = "", api2[16] = "";
        unsigned long long c = 0, m = 0, t = 0, c2 = 0, m2 = 0, t2 = 0;
        int n1 = 0, n2 = 0;
        if (sscanf(ms, "%15s %llu %llu %llu%n", api, &c, &m, &t, &n1) != 4 ||
            sscanf(ps, "%15s %llu %llu %llu%n", api2, &c2, &m2, &t2, &n2) != 4) {
            printf("train: a child run failed\n");
            return;
        }
        ms += n1, ps += n2;
        printf("train %d steps, %s API, %s: fragless %llu driver calls (%llu memory), "
               "%.1f ms | passthrough %llu calls (%llu), %.1f ms | time x%.2f\n",
               STEPS, api, conf, c, m, (double)t / 1e6, c2, m2, (double)t2 / 1e6,
               t ? (double)t2 / (double)t : 0.0);
    }
}

static void bench_train(const char *self)
{
    char pass[256];
    train_child_output(self, "passthrough:true", pass, sizeof pass);
    bench_train_conf(self, "expandable_segments:false", pass);
    bench_train_conf(self, "expandable_segments:true", pass);
}

/* Whether `what` names something main() runs (train-one: a child run of bench_train). */
static bool known_row(const char *what)
{
    static const char *const rows[] = {"all",     "pairs", "pairs-async",
                                       "threads", "train", "train-one"};
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
        if (!strcmp(what, rows[i]))
            return true;
    return false;
}

/* bench_heap loop API PASSES: PASSES passes of API's pairs (glibc, plain or async) and nothing
 * else, untimed: what bench/instructions.sh counts instructions of, or a profiler samples. */
static int loop(const char *api, const char *passes)
{
    char *end = NULL;
    long n = strtol(passes, &end, 10);
    bool async = !strcmp(api, "async"), plain = !strcmp(api, "plain");
    if (!*passes || *end || n < 1 || n > 1000000 || (!async && !plain && strcmp(api, "glibc"))) {
        fprintf(stderr, "usage: bench_heap loop glibc|plain|async PASSES (1 to 1000000)\n");
        return 2;
    }
    cudaStream_t s;
    check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
    for (long i = 0; i < n; i++)
        if (async || plain)
            cuda_pass(async, s, NULL, NULL);
        else
            glibc_pass();
    check(cudaStreamDestroy(s), "cudaStreamDestroy");
    return 0;
}

int main(int argc, char **argv)
{
    const char *what = argc > 1 ? argv[1] : "all";
    if (argc == 4 && !strcmp(what, "loop")) {
        make_sizes();
        return loop(argv[2], argv[3]);
    }
    if (argc > 2 || !known_row(what)) {
        fprintf(stderr, "usage: bench_heap [all|pairs|pairs-async|threads|train]\n"
                        "       bench_heap loop glibc|plain|async PASSES\n");
        return 2;
    }
    make_sizes();
    check(cudaSetDevice(0), "cudaSetDevice");
    if (!strcmp(what, "train-one")) {
        train_one();
        return 0;
    }
    char host[64] = "";
    gethostname(host, sizeof host - 1);
    printf("bench_heap on %s (%ld cores), %s\n", host, sysconf(_SC_NPROCESSORS_ONLN),
           emu_sym("fragless_emu_calls") ? "emulated device" : "GPU");
    if (!strcmp(what, "all") || !strcmp(what, "pairs") || !strcmp(what, "pairs-async"))
        bench_pairs(!strcmp(what, "pairs-async"));
    if (!strcmp(what, "all") || !strcmp(what, "threads"))
        bench_threads();
    if (!strcmp(what, "all") || !strcmp(what, "train"))
        bench_train("/proc/self/exe");
    return 0;
}
