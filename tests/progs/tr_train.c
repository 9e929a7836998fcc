/*
 * tr_train.c — a program that allocates like a transformer training job, for `make demo`.
 *
 * Usage: tr_train [STEPS [LAYERS]]. A 16-layer (LAYERS, at most 16), 2048-wide model in fp32 with
 * AdamW states (resident), trained for STEPS steps (default 30) at micro-batch 4 on a sequence
 * length drawn anew each step from 256..2048 tokens: per layer the forward pass allocates the
 * activations it saves and a few temporaries, backward frees them in reverse and allocates
 * gradients, which zero_grad(set_to_none=True) frees after the optimizer step. All through plain
 * cudaMalloc/cudaFree, as a framework without its own cache would call them; no memory is
 * touched. At exit it prints one line of what it measured:
 *   requested_peak=B reserved_peak=B unallocated_end=B alloc_calls=N driver_calls=N
 *   source=fragless|device
 * With libfragless preloaded (and not in pass-through) the numbers come from
 * fragless_get_stats(): reserved is what fragless holds from the driver, unallocated_end what
 * it holds beyond live blocks at the end of the last step, alloc_calls the allocations and
 * releases it made in the driver (segments, and physical pages of expandable segments). Otherwise
 * reserved is the device's used memory above what was used at start (cudaMemGetInfo, sampled after
 * every allocation), unallocated_end 0 and alloc_calls the program's own cudaMalloc/cudaFree calls
 * — each one a driver call.
 */
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fragless.h"

#define MAX_LAYERS 16
#define WIDTH      2048
#define BATCH      4
#define VOCAB      32000

typedef int (*get_stats_fn)(int, fragless_stats_t *);

/* One allocation the job holds. */
struct buf {
    void *p;
    size_t size;
};

static struct {
    size_t live, peak;
    unsigned long calls;
    size_t used0, used_peak;
    get_stats_fn get_stats;
    uint64_t rng;
    int layers;
} job = {.rng = 0x2545f4914f6cdd1dULL, .layers = MAX_LAYERS};

static size_t device_used(void)
{
    size_t free_b = 0, total = 0;
    cudaMemGetInfo(&free_b, &total);
    return total - free_b;
}

static struct buf take(size_t size)
{
    struct buf b = {NULL, size};
    if (cudaMalloc(&b.p, size) != cudaSuccess) {
        fprintf(stderr, "tr_train: cudaMalloc(%zu) failed\n", size);
        exit(1);
    }
    job.live += size;
    job.calls++;
    job.peak = job.live > job.peak ? job.live : job.peak;
    if (!job.get_stats) {
        size_t used = device_used();
        job.used_peak = used > job.used_peak ? used : job.used_peak;
    }
    return b;
}

static void give(struct buf *b)
{
    if (cudaFree(b->p) != cudaSuccess) {
        fprintf(stderr, "tr_train: cudaFree failed\n");
        exit(1);
    }
    job.live -= b->size;
    job.calls++;
    b->p = NULL;
}

static unsigned next(unsigned bound)
{
    job.rng ^= job.rng << 13;
    job.rng ^= job.rng >> 7;
    job.rng ^= job.rng << 17;
    return (unsigned)(job.rng % bound);
}

#define SAVED 6
static const size_t saved_mult[SAVED] = {1, 3, 1, 4, 4, 1}; /* x tokens*width fp16 */

static void forward(struct buf saved[MAX_LAYERS][SAVED], size_t act)
{
    for (int l = 0; l < job.layers; l++) {
        for (int k = 0; k < SAVED; k++)
            saved[l][k] = take(act * saved_mult[k]);
        struct buf attn = take(act * 3), mlp = take(act * 4);
        give(&mlp);
        give(&attn);
    }
}

static void step(void)
{
    size_t tokens = (size_t)BATCH * (256 + 64 * next(29)); /* 256..2048 tokens per row */
    size_t act = tokens * WIDTH * 2;
    struct buf saved[MAX_LAYERS][SAVED], grads[MAX_LAYERS];
    forward(saved, act);
    struct buf logits = take(tokens * VOCAB * 2), loss = take(tokens * VOCAB * 4);
    give(&loss);
    give(&logits);
    for (int l = job.layers - 1; l >= 0; l--) { /* backward */
        struct buf t1 = take(act * 4), t2 = take(act * 2);
        grads[l] = take((size_t)12 * WIDTH * WIDTH * 4);
        give(&t2);
        give(&t1);
        for (int k = SAVED - 1; k >= 0; k--)
            give(&saved[l][k]);
    }
    struct buf scratch = take((size_t)64 << 20); /* optimizer step */
    give(&scratch);
    for (int l = 0; l < job.layers; l++) /* zero_grad(set_to_none=True) */
        give(&grads[l]);
}

int main(int argc, char **argv)
{
    int steps = argc > 1 ? atoi(argv[1]) : 30;
    int layers = argc > 2 ? atoi(argv[2]) : MAX_LAYERS;
    job.layers = layers > 0 && layers < MAX_LAYERS ? layers : MAX_LAYERS;
    job.get_stats = (get_stats_fn)(uintptr_t)dlsym(RTLD_DEFAULT, "fragless_get_stats");
    fragless_stats_t st;
    memset(&st, 0, sizeof st);
    st.size = sizeof st;
    if (job.get_stats && job.get_stats(0, &st) == FRAGLESS_EDISABLED)
        job.get_stats = NULL; /* pass-through: measure the device */
    job.used0 = device_used();
    job.used_peak = job.used0;
    struct buf weights[MAX_LAYERS][3];
    for (int l = 0; l < job.layers; l++) /* weights, then AdamW's two states */
        for (int k = 0; k < 3; k++)
            weights[l][k] = take((size_t)12 * WIDTH * WIDTH * 4);
    for (int s = 0; s < steps; s++)
        step();
    if (job.get_stats) {
        memset(&st, 0, sizeof st);
        st.size = sizeof st;
        job.get_stats(0, &st);
        printf("requested_peak=%zu reserved_peak=%llu unallocated_end=%llu alloc_calls=%llu "
               "driver_calls=%llu source=fragless\n",
               job.peak, (unsigned long long)st.reserved_bytes.peak,
               (unsigned long long)st.reserved_unallocated_bytes.current,
               (unsigned long long)(st.num_device_alloc + st.num_device_free + st.pages_created +
                                    st.pages_released),
               (unsigned long long)st.driver_calls);
    } else {
        printf("requested_peak=%zu reserved_peak=%zu unallocated_end=0 alloc_calls=%lu "
               "driver_calls=%lu source=device\n",
               job.peak, job.used_peak - job.used0, job.calls, job.calls);
    }
    for (int l = 0; l < job.layers; l++)
        for (int k = 0; k < 3; k++)
            give(&weights[l][k]);
    return 0;
}
