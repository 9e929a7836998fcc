/*
 * rule_reuse.c — DESIGN §4 rule 1 through the interposer: a block freed while device work
 * issued before the free may still write it is not handed out again until that work is done.
 *
 * For each way (table `ways`), a simulated fill kernel (the emulated device's
 * fragless_emu_stream_fill) is queued on the non-blocking stream s1 to write 0x11 over block
 * A a while later, an event marks its end, and A is freed: by cudaFree or cuMemFree (which
 * promise device-wide completion; fragless defers reuse instead of synchronizing) or by
 * cudaFreeAsync on s1. The next allocation of the same size — plain, or stream-ordered on
 * another stream — must either not overlap A or come after the fill finished (the event says
 * which); and the new block, set to 0x22 at once, must still read 0x22 after all work is
 * done, which it would not if the fill landed in it. One way frees A on a stream of its own
 * and destroys that stream at once; the next stream created may get its handle (the emulated
 * device gives it, as a real driver may) and must not get A while the fill runs.
 */
#include "ip_prog.h"

typedef int (*emu_fill_fn)(CUstream, CUdeviceptr, int, size_t, uint64_t);

/* A segment of its own, so that the next request cannot be served from a remainder. */
#define SIZE      ((size_t)20 << 20)
#define FILL_USEC 200000

enum api { API_CUDA, API_CU, API_ASYNC };

static emu_fill_fn fill;
static cudaStream_t s1, s2, legacy;

/* Block A is allocated and freed with `a_api` (on s1 when stream-ordered); block B is then
 * allocated with `b_api` on *b_stream. */
static const struct way {
    const char *name;
    enum api a_api, b_api;
    cudaStream_t *b_stream; /* NULL: A's stream is destroyed, B's is created after */
} ways[] = {
    {"cudaFree, then cudaMalloc", API_CUDA, API_CUDA, &legacy},
    {"cuMemFree, then cuMemAlloc", API_CU, API_CU, &legacy},
    {"cudaFreeAsync on s1, then cudaMallocAsync on s2", API_ASYNC, API_ASYNC, &s2},
    {"cudaFree, then cudaMallocAsync on the legacy stream", API_CUDA, API_ASYNC, &legacy},
    {"cudaFree, then cudaMallocAsync on s2", API_CUDA, API_ASYNC, &s2},
    {"cudaFreeAsync on a stream destroyed at once, then cudaMallocAsync on a new stream", API_ASYNC,
     API_ASYNC, NULL},
};

static bool overlap(CUdeviceptr a, CUdeviceptr b)
{
    return a < b + SIZE && b < a + SIZE;
}

static CUdeviceptr alloc(enum api api, cudaStream_t s)
{
    void *p = NULL;
    CUdeviceptr d = 0;
    if (api == API_CU)
        CHECK(cuMemAlloc(&d, SIZE) == CUDA_SUCCESS, "cuMemAlloc");
    else if (api == API_CUDA)
        CHECK(cudaMalloc(&p, SIZE) == cudaSuccess, "cudaMalloc");
    else
        CHECK(cudaMallocAsync(&p, SIZE, s) == cudaSuccess, "cudaMallocAsync");
    return d ? d : (CUdeviceptr)(uintptr_t)p;
}

static void release(enum api api, CUdeviceptr d, cudaStream_t s)
{
    if (api == API_CU)
        CHECK(cuMemFree(d) == CUDA_SUCCESS, "cuMemFree");
    else if (api == API_CUDA)
        CHECK(cudaFree((void *)(uintptr_t)d) == cudaSuccess, "cudaFree");
    else
        CHECK(cudaFreeAsync((void *)(uintptr_t)d, s) == cudaSuccess, "cudaFreeAsync");
}

/* Fails unless the SIZE bytes at d all read `byte`. */
static void expect_bytes(const char *name, CUdeviceptr d, unsigned char byte)
{
    static unsigned char buf[SIZE];
    CHECK(cudaMemcpy(buf, (void *)(uintptr_t)d, SIZE, cudaMemcpyDeviceToHost) == cudaSuccess,
          "read back");
    for (size_t i = 0; i < SIZE; i++)
        CHECK(buf[i] == byte, "%s: byte %zu of the new block is %#x, not %#x: overwritten", name, i,
              buf[i], byte);
}

/* Each way starts with nothing cached, so that only A could serve the second request. */
static void empty_cache(void)
{
    typedef int (*empty_fn)(int, size_t *);
    empty_fn empty = (empty_fn)dlsym(RTLD_DEFAULT, "fragless_empty_cache");
    CHECK(empty && empty(-1, NULL) == 0, "fragless_empty_cache");
}

static cudaStream_t new_stream(void)
{
    cudaStream_t s = NULL;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess, "stream");
    return s;
}

static void check_way(const struct way *w)
{
    empty_cache();
    cudaEvent_t done = NULL;
    CHECK(cudaEventCreate(&done) == cudaSuccess, "event");
    cudaStream_t as = w->b_stream ? s1 : new_stream();
    CUdeviceptr a = alloc(w->a_api, as);
    CHECK(cudaStreamSynchronize(as) == cudaSuccess, "sync");
    CHECK(fill((CUstream)as, a, 0x11, SIZE, FILL_USEC) == 0, "queue the fill");
    CHECK(cudaEventRecord(done, as) == cudaSuccess, "record");
    release(w->a_api, a, as);

    cudaStream_t bs = w->b_stream ? *w->b_stream : NULL;
    if (!w->b_stream) {
        CHECK(cudaStreamDestroy(as) == cudaSuccess, "destroy");
        bs = new_stream();
        printf("%s: the new stream %s the destroyed one's handle\n", w->name,
               bs == as ? "has" : "does not have");
    }
    CUdeviceptr b = alloc(w->b_api, bs);
    bool reused = overlap(a, b);
    CHECK(!reused || cudaEventQuery(done) == cudaSuccess,
          "%s: the block was handed out again while the fill may still write it", w->name);
    /* s1 is non-blocking: neither the legacy stream nor s2 waits for the fill. */
    CHECK(cudaMemsetAsync((void *)(uintptr_t)b, 0x22, SIZE, bs) == cudaSuccess, "memset");
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "sync");
    expect_bytes(w->name, b, 0x22);
    release(w->b_api, b, bs);
    CHECK(cudaDeviceSynchronize() == cudaSuccess && cudaEventDestroy(done) == cudaSuccess, "end");
    if (!w->b_stream)
        CHECK(cudaStreamDestroy(bs) == cudaSuccess, "destroy");
    printf("%s: %s\n", w->name, reused ? "reused after the fill" : "not reused");
}

int main(void)
{
    fill = (emu_fill_fn)dlsym(RTLD_DEFAULT, "fragless_emu_stream_fill");
    if (!fill) {
        printf("ok reuse skipped: needs the emulated device's simulated kernels\n");
        return 0;
    }
    CHECK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking) == cudaSuccess &&
              cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking) == cudaSuccess,
          "streams");
    fragless_stats_t before = ip_stats0();
    for (size_t i = 0; i < sizeof ways / sizeof ways[0]; i++)
        check_way(&ways[i]);
    fragless_stats_t after = ip_stats0();
    unsigned n = 2 * (unsigned)(sizeof ways / sizeof ways[0]);
    ip_expect_served(&before, &after, n, n);
    CHECK(cudaStreamDestroy(s1) == cudaSuccess && cudaStreamDestroy(s2) == cudaSuccess, "end");
    printf("ok reuse\n");
    return 0;
}
