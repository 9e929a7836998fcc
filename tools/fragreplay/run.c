/*
 * run.c — one configuration's replay: the trace's events through fragless, in this process.
 *
 * Owns: setting up the device (context and one real stream per distinct trace stream, via
 * the driver this tool dlopens itself), issuing each event through the CUDA entry points
 * libfragless exports — stream 0 as cuMemAlloc/cuMemFree (what cudaMalloc/cudaFree do),
 * other streams as cuMemAllocAsync/cuMemFreeAsync — and measuring after every event.
 * Measurements come from fragless_get_stats(); in pass-through mode, where fragless keeps
 * no statistics, reserved bytes are measured as the device's used memory (cuMemGetInfo)
 * above what was used before the replay started.
 */
#include "replay.h"

#include <cuda.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fragless.h"

/* Driver entry points fragless does not take over, from the driver this tool loads. */
struct cu {
    void *lib;
    CUresult (*init)(unsigned int);
    CUresult (*device_get)(CUdevice *, int);
    CUresult (*primary_retain)(CUcontext *, CUdevice);
    CUresult (*primary_release)(CUdevice);
    CUresult (*ctx_set_current)(CUcontext);
    CUresult (*ctx_synchronize)(void);
    CUresult (*stream_create)(CUstream *, unsigned int);
    CUresult (*stream_destroy)(CUstream);
    CUresult (*mem_get_info)(size_t *, size_t *);
};

struct run {
    const struct rtrace *t;
    int device;
    CUdevice dev;
    struct cu cu;
    CUstream streams[RTRACE_STREAMS];
    CUdeviceptr *ptr; /* by allocation id; 0 = not live (never made, freed or OOM) */
    uint8_t *async;   /* by allocation id: made with cuMemAllocAsync */
    uint64_t live_requested;
    uint64_t used0; /* device memory used before the replay (pass-through measurement) */
    uint64_t our_calls;
    bool passthrough;
    struct result *r;
};

static void *sym(void *lib, const char *a, const char *b)
{
    void *p = dlsym(lib, a);
    return p || !b ? p : dlsym(lib, b);
}

static int load_driver(struct cu *cu, struct result *r)
{
    cu->lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!cu->lib) {
        snprintf(r->error, sizeof r->error,
                 "cannot load the CUDA driver (libcuda.so.1): %s; without a GPU use --emu",
                 dlerror());
        return -1;
    }
    *(void **)&cu->init = sym(cu->lib, "cuInit", NULL);
    *(void **)&cu->device_get = sym(cu->lib, "cuDeviceGet", NULL);
    *(void **)&cu->primary_retain = sym(cu->lib, "cuDevicePrimaryCtxRetain", NULL);
    *(void **)&cu->primary_release =
        sym(cu->lib, "cuDevicePrimaryCtxRelease_v2", "cuDevicePrimaryCtxRelease");
    *(void **)&cu->ctx_set_current = sym(cu->lib, "cuCtxSetCurrent", NULL);
    *(void **)&cu->ctx_synchronize = sym(cu->lib, "cuCtxSynchronize", NULL);
    *(void **)&cu->stream_create = sym(cu->lib, "cuStreamCreate", NULL);
    *(void **)&cu->stream_destroy = sym(cu->lib, "cuStreamDestroy_v2", "cuStreamDestroy");
    *(void **)&cu->mem_get_info = sym(cu->lib, "cuMemGetInfo_v2", "cuMemGetInfo");
    if (!cu->init || !cu->device_get || !cu->primary_retain || !cu->primary_release ||
        !cu->ctx_set_current || !cu->ctx_synchronize || !cu->stream_create || !cu->stream_destroy ||
        !cu->mem_get_info) {
        snprintf(r->error, sizeof r->error,
                 "the CUDA driver lacks an entry point fragreplay "
                 "needs");
        return -1;
    }
    return 0;
}

static int cu_fail(struct result *r, const char *what, CUresult rc)
{
    snprintf(r->error, sizeof r->error, "%s failed: CUDA error %d", what, (int)rc);
    return -1;
}

static int open_device(struct run *s)
{
    CUcontext ctx;
    CUresult rc = s->cu.init(0);
    if (rc != CUDA_SUCCESS)
        return cu_fail(s->r, "cuInit (no usable GPU? use --emu)", rc);
    if ((rc = s->cu.device_get(&s->dev, s->device)) != CUDA_SUCCESS)
        return cu_fail(s->r, "cuDeviceGet", rc);
    if ((rc = s->cu.primary_retain(&ctx, s->dev)) != CUDA_SUCCESS)
        return cu_fail(s->r, "cuDevicePrimaryCtxRetain", rc);
    if ((rc = s->cu.ctx_set_current(ctx)) != CUDA_SUCCESS) {
        s->cu.primary_release(s->dev);
        return cu_fail(s->r, "cuCtxSetCurrent", rc);
    }
    return 0;
}

static void close_streams(struct run *s)
{
    for (unsigned i = 1; i < s->t->nstreams; i++) {
        if (s->streams[i])
            s->cu.stream_destroy(s->streams[i]);
        s->streams[i] = NULL;
    }
}

static int open_streams(struct run *s)
{
    s->streams[0] = NULL; /* the trace's stream 0 is the default stream */
    for (unsigned i = 1; i < s->t->nstreams; i++) {
        CUresult rc = s->cu.stream_create(&s->streams[i], CU_STREAM_DEFAULT);
        if (rc != CUDA_SUCCESS) {
            close_streams(s);
            return cu_fail(s->r, "cuStreamCreate", rc);
        }
    }
    return 0;
}

static uint64_t device_used(struct run *s)
{
    size_t free_b = 0, total = 0;
    if (s->cu.mem_get_info(&free_b, &total) != CUDA_SUCCESS)
        return 0;
    return total - free_b;
}

/* Current allocated, reserved and largest free block, measured now. */
static void measure(struct run *s, uint64_t *alloc, uint64_t *reserved, uint64_t *largest)
{
    fragless_stats_t st;
    memset(&st, 0, sizeof st);
    st.size = sizeof st;
    if (!s->passthrough) {
        int rc = fragless_get_stats(s->device, &st);
        s->passthrough = rc == FRAGLESS_EDISABLED;
        if (rc == FRAGLESS_OK || rc == FRAGLESS_ENODEV) {
            *alloc = st.allocated_bytes.current;
            *reserved = st.reserved_bytes.current;
            *largest = st.largest_free_block_bytes.current;
            return;
        }
    }
    uint64_t used = device_used(s);
    *alloc = s->live_requested;
    *reserved = used > s->used0 ? used - s->used0 : 0;
    *largest = 0;
}

/* Measures after event i. Nothing reaches a new maximum on a free, so a free is measured
 * only when it opens a plot sample. */
static void record(struct run *s, size_t i)
{
    struct result *r = s->r;
    size_t per = (s->t->n + RESULT_MAX_SAMPLES - 1) / RESULT_MAX_SAMPLES;
    struct sample *p = &r->samples[i / per];
    if (i % per == 0) {
        memset(p, 0, sizeof *p);
        p->time_us = s->t->ev[i].time_us;
        r->nsamples = (unsigned)(i / per + 1);
    } else if (s->t->ev[i].kind == REV_FREE) {
        return;
    }
    uint64_t alloc, reserved, largest;
    measure(s, &alloc, &reserved, &largest);
    if (reserved > r->peak_reserved_bytes) {
        r->peak_reserved_bytes = reserved;
        r->reserved_unallocated_bytes = reserved > alloc ? reserved - alloc : 0;
        r->largest_free_block_bytes = largest;
    }
    if (alloc > r->peak_allocated_bytes)
        r->peak_allocated_bytes = alloc;
    if (s->live_requested > r->peak_requested_bytes)
        r->peak_requested_bytes = s->live_requested;
    p->requested = p->requested > s->live_requested ? p->requested : s->live_requested;
    p->allocated = p->allocated > alloc ? p->allocated : alloc;
    p->reserved = p->reserved > reserved ? p->reserved : reserved;
}

static int do_alloc(struct run *s, const struct rev *e)
{
    CUdeviceptr p = 0;
    bool async = e->stream != 0;
    CUresult rc =
        async ? cuMemAllocAsync(&p, e->size, s->streams[e->stream]) : cuMemAlloc(&p, e->size);
    s->our_calls++;
    if (rc == CUDA_ERROR_OUT_OF_MEMORY) {
        s->r->ooms++;
        return 0;
    }
    if (rc != CUDA_SUCCESS)
        return cu_fail(s->r, async ? "cuMemAllocAsync" : "cuMemAlloc", rc);
    s->ptr[e->id] = p;
    s->async[e->id] = async;
    s->live_requested += e->size;
    return 0;
}

static int do_free(struct run *s, uint32_t id, CUstream stream)
{
    CUdeviceptr p = s->ptr[id];
    if (!p)
        return 0; /* its allocation ran out of memory */
    CUresult rc = s->async[id] ? cuMemFreeAsync(p, stream) : cuMemFree(p);
    s->our_calls++;
    if (rc != CUDA_SUCCESS)
        return cu_fail(s->r, s->async[id] ? "cuMemFreeAsync" : "cuMemFree", rc);
    s->ptr[id] = 0;
    return 0;
}

static int step(struct run *s, const struct rev *e)
{
    int rc = 0;
    if (e->kind == REV_ALLOC) {
        rc = do_alloc(s, e);
    } else if (e->kind == REV_FREE) {
        bool live = s->ptr[e->id] != 0;
        rc = do_free(s, e->id, s->streams[e->stream]);
        if (rc == 0 && live)
            s->live_requested -= e->size;
    } else {
        fragless_empty_cache(s->device, NULL);
        s->r->empty_caches++;
    }
    s->r->ops++;
    return rc;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static bool fragless_stats(struct run *s, fragless_stats_t *st)
{
    memset(st, 0, sizeof *st);
    st->size = sizeof *st;
    return fragless_get_stats(s->device, st) == FRAGLESS_OK;
}

/* Allocations and releases fragless made in the driver: segments, and the physical pages of
 * expandable segments. */
static uint64_t device_allocs(const fragless_stats_t *st)
{
    return st->num_device_alloc + st->num_device_free + st->pages_created + st->pages_released;
}

static int replay_events(struct run *s)
{
    fragless_stats_t st0, st;
    bool before = fragless_stats(s, &st0);
    double t0 = now_s();
    for (size_t i = 0; i < s->t->n; i++) {
        if (step(s, &s->t->ev[i]) != 0)
            return -1;
        record(s, i);
    }
    s->r->seconds = now_s() - t0;
    s->r->stats_from_fragless = fragless_stats(s, &st);
    if (!s->r->stats_from_fragless) { /* pass-through: every call went to the driver */
        s->r->driver_calls = s->r->alloc_calls = s->our_calls;
        return 0;
    }
    if (!before)
        memset(&st0, 0, sizeof st0);
    s->r->driver_calls = st.driver_calls - st0.driver_calls;
    s->r->alloc_calls = device_allocs(&st) - device_allocs(&st0);
    s->r->peak_allocated_bytes = st.allocated_bytes.peak;
    if (st.reserved_bytes.peak > s->r->peak_reserved_bytes)
        s->r->peak_reserved_bytes = st.reserved_bytes.peak;
    return 0;
}

/* Frees what the trace left allocated, so the device ends as it began. */
static void free_leftovers(struct run *s)
{
    for (uint32_t id = 0; id < s->t->nids; id++) {
        if (s->ptr[id])
            do_free(s, id, NULL);
    }
    s->cu.ctx_synchronize();
}

void run_replay(const struct rtrace *t, int device, struct result *r)
{
    struct run s;
    memset(&s, 0, sizeof s);
    memset(r, 0, sizeof *r);
    s.t = t;
    s.device = device;
    s.r = r;
    s.ptr = calloc(t->nids ? t->nids : 1, sizeof *s.ptr);
    s.async = calloc(t->nids ? t->nids : 1, 1);
    r->status = -1;
    if (!s.ptr || !s.async) {
        snprintf(r->error, sizeof r->error, "out of memory");
        goto out_free;
    }
    if (load_driver(&s.cu, r) != 0 || open_device(&s) != 0)
        goto out_free;
    if (open_streams(&s) != 0)
        goto out_release;
    s.used0 = device_used(&s);
    r->status = replay_events(&s);
    free_leftovers(&s);
    close_streams(&s);
out_release:
    s.cu.primary_release(s.dev);
out_free:
    free(s.ptr);
    free(s.async);
}
