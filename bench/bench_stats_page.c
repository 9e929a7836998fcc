/*
 * bench_stats_page.c — what the stats page costs the allocation path.
 *
 * Usage: bench_stats_page LIBFRAGLESS [ROUNDS]. Runs itself as a child under
 * LD_PRELOAD=LIBFRAGLESS, alternately with FRAGLESS_CONF=stats_page:true and stats_page:false,
 * ROUNDS times each (default 5). Each child times cached cudaMalloc+cudaFree pairs of mixed
 * sizes (512 B … 32 MiB) and prints the median ns per pair of its batches; while the page is
 * on, its thread publishes every FRAGLESS_SHM_UPDATE_MS and a reader thread in the child reads
 * the page as fragstat does, every millisecond (far more often than fragstat --interval). Prints
 * the medians over rounds and their ratio.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cuda_runtime_api.h>

#include "fragless_shm.h"
#include "pageio.h"

#include "benchutil.h"

#define PAIRS   20000
#define BATCHES 25

static const size_t sizes[] = {512, 4096, 65536, 1 << 20, 3 << 20, 8 << 20, 32 << 20};

static volatile int reading = 1;
static long reads;
static double publish_ns[100000]; /* the page's publish_ns at each read */

/* Reads this process's page the way fragstat does, every millisecond. */
static void *reader(void *arg)
{
    static fragless_shm_page_t copy;
    (void)arg;
    char path[96];
    snprintf(path, sizeof path, FRAGLESS_SHM_DIR "/" FRAGLESS_SHM_PREFIX "%u.%d",
             (unsigned)geteuid(), (int)getpid());
    while (reading) {
        int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd >= 0) {
            if (pio_read_page(fd, &copy, NULL, 0) == PIO_OK && reads < 100000)
                publish_ns[reads++] = (double)copy.publish_ns;
            close(fd);
        }
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    }
    return NULL;
}

static int child(bool with_reader)
{
    void *p;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) { /* warm the cache */
        if (cudaMalloc(&p, sizes[i]) != cudaSuccess)
            return 1;
        cudaFree(p);
    }
    pthread_t t;
    if (with_reader)
        pthread_create(&t, NULL, reader, NULL);
    double wall[BATCHES], cpu[BATCHES];
    for (int b = 0; b < BATCHES; b++) {
        uint64_t start = bench_clock_ns(CLOCK_MONOTONIC),
                 cpu0 = bench_clock_ns(CLOCK_THREAD_CPUTIME_ID);
        for (int i = 0; i < PAIRS; i++) {
            cudaMalloc(&p, sizes[i % (sizeof sizes / sizeof sizes[0])]);
            cudaFree(p);
        }
        cpu[b] = (double)(bench_clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0) / PAIRS;
        wall[b] = (double)(bench_clock_ns(CLOCK_MONOTONIC) - start) / PAIRS;
    }
    reading = 0;
    if (with_reader)
        pthread_join(t, NULL);
    printf("%.1f %.1f %ld %.0f\n", bench_median(wall, BATCHES), bench_median(cpu, BATCHES), reads,
           reads ? bench_median(publish_ns, (int)reads) : 0.0);
    return 0;
}

enum config { PAGE_OFF, PAGE_ON, PAGE_READ, CONFIGS };
static const char *const config_names[CONFIGS] = {"stats_page:false", "stats_page:true",
                                                  "stats_page:true + page read every 1 ms"};

/* Runs one child in configuration c: its median wall and thread-CPU ns per pair; false if it
 * failed. */
static bool run_child(const char *self, const char *lib, enum config c, double *wall, double *cpu,
                      long *reads_out, double *publish)
{
    int fd[2];
    if (pipe(fd) != 0)
        return false;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd[1], 1);
        setenv("LD_PRELOAD", lib, 1);
        setenv("FRAGLESS_CONF", c == PAGE_OFF ? "stats_page:false" : "stats_page:true", 1);
        execl(self, self, c == PAGE_READ ? "--child-reader" : "--child", (char *)NULL);
        _exit(127);
    }
    close(fd[1]);
    char buf[128] = "";
    ssize_t n = read(fd[0], buf, sizeof buf - 1);
    close(fd[0]);
    waitpid(pid, NULL, 0);
    return n > 0 && sscanf(buf, "%lf %lf %ld %lf", wall, cpu, reads_out, publish) == 4;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strncmp(argv[1], "--child", 7) == 0)
        return child(strcmp(argv[1], "--child-reader") == 0);
    if (argc < 2) {
        fprintf(stderr, "usage: %s LIBFRAGLESS [ROUNDS]\n", argv[0]);
        return 2;
    }
    char *end = NULL;
    long arg = argc > 2 ? strtol(argv[2], &end, 10) : 5;
    if (argc > 3 || (end && (*end || end == argv[2])) || arg < 1 || arg > 100) {
        fprintf(stderr, "usage: %s LIBFRAGLESS [ROUNDS] (ROUNDS from 1 to 100, default 5)\n",
                argv[0]);
        return 2;
    }
    int rounds = (int)arg;
    double wall[CONFIGS][100], cpu[CONFIGS][100], mw[CONFIGS], mc[CONFIGS];
    double publish[100], pub = 0;
    long reads = 0, r = 0;
    for (int i = 0; i < rounds; i++) {
        for (int c = 0; c < CONFIGS; c++) {
            if (!run_child(argv[0], argv[1], (enum config)c, &wall[c][i], &cpu[c][i], &r, &pub)) {
                fprintf(stderr, "a child failed\n");
                return 1;
            }
            reads += c == PAGE_READ ? r : 0;
            if (c == PAGE_READ)
                publish[i] = pub;
        }
    }
    printf("cached cudaMalloc+cudaFree pair, sizes 512 B..32 MiB, %d rounds x %d batches x %d "
           "pairs\n",
           rounds, BATCHES, PAIRS);
    printf("%-42s %10s %8s %10s %8s\n", "configuration", "wall ns", "ratio", "cpu ns", "ratio");
    for (int c = 0; c < CONFIGS; c++) {
        mw[c] = bench_median(wall[c], rounds);
        mc[c] = bench_median(cpu[c], rounds);
        printf("%-42s %10.1f %8.3f %10.1f %8.3f\n", config_names[c], mw[c], mw[c] / mw[PAGE_OFF],
               mc[c], mc[c] / mc[PAGE_OFF]);
    }
    printf("(%ld page reads in the reader rounds; one page update takes %.0f ns of the page "
           "thread's CPU time, median, %d times a second)\n",
           reads, bench_median(publish, rounds), 1000 / FRAGLESS_SHM_UPDATE_MS);
    return 0;
}
