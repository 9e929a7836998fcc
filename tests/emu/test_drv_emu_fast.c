/*
 * test_drv_emu_fast.c — the entry points on the emulator's light gate (context, device,
 * capture, stream, event and pointer queries) keep the full gate's semantics: every call is
 * counted, fault rules armed at any time (also from the environment) apply to them, work that
 * came due is applied before they answer (fills land, device faults become sticky), a child
 * forked after cuInit is refused, and counts and faults stay exact across threads.
 */
#include <criterion/criterion.h>
#include <cuda.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fragless_emu.h"
#include "testutil.h"

#define CK(call) cr_assert_eq((call), CUDA_SUCCESS, "%s", #call)

/* Variants the driver exports that cuda.h declares only in other configurations (the
 * per-thread-stream ones, older versions): looked up by name. */
typedef CUresult (*capturing_fn)(CUstream, CUstreamCaptureStatus *);
typedef CUresult (*info1_fn)(CUstream, CUstreamCaptureStatus *, cuuint64_t *);
typedef CUresult (*info2_fn)(CUstream, CUstreamCaptureStatus *, cuuint64_t *, CUgraph *,
                             const CUgraphNode **, size_t *);
typedef CUresult (*info3_fn)(CUstream, CUstreamCaptureStatus *, cuuint64_t *, CUgraph *,
                             const CUgraphNode **, const CUgraphEdgeData **, size_t *);
typedef CUresult (*get_ctx_fn)(CUstream, CUcontext *);
typedef CUresult (*get_int_fn)(CUstream, int *);
typedef CUresult (*get_flags_fn)(CUstream, unsigned *);
typedef CUresult (*query_fn)(CUstream);

static void (*sym(const char *name))(void)
{
    void *f = dlsym(RTLD_DEFAULT, name);
    cr_assert_not_null(f, "the driver exports %s", name);
    return (void (*)(void))(uintptr_t)f;
}

static CUcontext ctx;
static CUstream stream;
static CUevent event;
static CUdeviceptr dptr;

static void init_ctx(void)
{
    CK(cuInit(0));
    CK(cuDevicePrimaryCtxRetain(&ctx, 0));
    CK(cuCtxSetCurrent(ctx));
}

/* A context, a stream, a recorded (complete) event and an allocation for the calls below. */
static void init_objects(void)
{
    init_ctx();
    CK(cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
    CK(cuEventCreate(&event, CU_EVENT_DISABLE_TIMING));
    CK(cuEventRecord(event, stream));
    CK(cuMemAlloc(&dptr, 4096));
}

static void sleep_us(long us)
{
    struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = us % 1000000 * 1000};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* ---- one call of each light-gate entry point ------------------------------------------ */

static CUresult c_driver_version(void)
{
    int v;
    return cuDriverGetVersion(&v);
}
static CUresult c_device_get(void)
{
    CUdevice d;
    return cuDeviceGet(&d, 0);
}
static CUresult c_device_count(void)
{
    int n;
    return cuDeviceGetCount(&n);
}
static CUresult c_device_attribute(void)
{
    int v;
    return cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_WARP_SIZE, 0);
}
static CUresult c_ctx_get_current(void)
{
    CUcontext c;
    return cuCtxGetCurrent(&c);
}
static CUresult c_ctx_set_current(void)
{
    return cuCtxSetCurrent(ctx);
}
static CUresult c_ctx_push(void)
{
    return cuCtxPushCurrent(ctx);
}
static CUresult c_ctx_pop(void)
{
    CUcontext c;
    return cuCtxPopCurrent(&c);
}
static CUresult c_ctx_get_device(void)
{
    CUdevice d;
    return cuCtxGetDevice(&d);
}
static CUresult c_is_capturing(void)
{
    CUstreamCaptureStatus st;
    return cuStreamIsCapturing(stream, &st);
}
static CUresult c_is_capturing_ptsz(void)
{
    CUstreamCaptureStatus st;
    return ((capturing_fn)sym("cuStreamIsCapturing_ptsz"))(NULL, &st);
}
static CUresult c_capture_info(void)
{
    CUstreamCaptureStatus st;
    return ((info1_fn)sym("cuStreamGetCaptureInfo"))(stream, &st, NULL);
}
static CUresult c_capture_info_ptsz(void)
{
    CUstreamCaptureStatus st;
    return ((info1_fn)sym("cuStreamGetCaptureInfo_ptsz"))(NULL, &st, NULL);
}
static CUresult c_capture_info_v2(void)
{
    CUstreamCaptureStatus st;
    return ((info2_fn)sym("cuStreamGetCaptureInfo_v2"))(stream, &st, NULL, NULL, NULL, NULL);
}
static CUresult c_capture_info_v2_ptsz(void)
{
    CUstreamCaptureStatus st;
    return ((info2_fn)sym("cuStreamGetCaptureInfo_v2_ptsz"))(NULL, &st, NULL, NULL, NULL, NULL);
}
static CUresult c_capture_info_v3(void)
{
    CUstreamCaptureStatus st;
    return cuStreamGetCaptureInfo_v3(stream, &st, NULL, NULL, NULL, NULL, NULL);
}
static CUresult c_capture_info_v3_ptsz(void)
{
    CUstreamCaptureStatus st;
    return ((info3_fn)sym("cuStreamGetCaptureInfo_v3_ptsz"))(NULL, &st, NULL, NULL, NULL, NULL,
                                                             NULL);
}
static CUresult c_stream_ctx(void)
{
    CUcontext c;
    return cuStreamGetCtx(stream, &c);
}
static CUresult c_stream_ctx_ptsz(void)
{
    CUcontext c;
    return ((get_ctx_fn)sym("cuStreamGetCtx_ptsz"))(NULL, &c);
}
static CUresult c_stream_priority(void)
{
    int p;
    return cuStreamGetPriority(stream, &p);
}
static CUresult c_stream_priority_ptsz(void)
{
    int p;
    return ((get_int_fn)sym("cuStreamGetPriority_ptsz"))(NULL, &p);
}
static CUresult c_stream_flags(void)
{
    unsigned f;
    return cuStreamGetFlags(stream, &f);
}
static CUresult c_stream_flags_ptsz(void)
{
    unsigned f;
    return ((get_flags_fn)sym("cuStreamGetFlags_ptsz"))(NULL, &f);
}
static CUresult c_stream_query(void)
{
    return cuStreamQuery(stream);
}
static CUresult c_stream_query_ptsz(void)
{
    return ((query_fn)sym("cuStreamQuery_ptsz"))(NULL);
}
static CUresult c_event_query(void)
{
    return cuEventQuery(event);
}
static CUresult c_pointer_attribute(void)
{
    CUcontext c;
    return cuPointerGetAttribute(&c, CU_POINTER_ATTRIBUTE_CONTEXT, dptr);
}

struct entry {
    const char *name; /* as exported */
    CUresult (*call)(void);
};

static const struct entry entries[] = {
    {"cuDriverGetVersion", c_driver_version},
    {"cuDeviceGet", c_device_get},
    {"cuDeviceGetCount", c_device_count},
    {"cuDeviceGetAttribute", c_device_attribute},
    {"cuCtxGetCurrent", c_ctx_get_current},
    {"cuCtxSetCurrent", c_ctx_set_current},
    {"cuCtxPushCurrent_v2", c_ctx_push},
    {"cuCtxPopCurrent_v2", c_ctx_pop},
    {"cuCtxGetDevice", c_ctx_get_device},
    {"cuStreamIsCapturing", c_is_capturing},
    {"cuStreamIsCapturing_ptsz", c_is_capturing_ptsz},
    {"cuStreamGetCaptureInfo", c_capture_info},
    {"cuStreamGetCaptureInfo_ptsz", c_capture_info_ptsz},
    {"cuStreamGetCaptureInfo_v2", c_capture_info_v2},
    {"cuStreamGetCaptureInfo_v2_ptsz", c_capture_info_v2_ptsz},
    {"cuStreamGetCaptureInfo_v3", c_capture_info_v3},
    {"cuStreamGetCaptureInfo_v3_ptsz", c_capture_info_v3_ptsz},
    {"cuStreamGetCtx", c_stream_ctx},
    {"cuStreamGetCtx_ptsz", c_stream_ctx_ptsz},
    {"cuStreamGetPriority", c_stream_priority},
    {"cuStreamGetPriority_ptsz", c_stream_priority_ptsz},
    {"cuStreamGetFlags", c_stream_flags},
    {"cuStreamGetFlags_ptsz", c_stream_flags_ptsz},
    {"cuStreamQuery", c_stream_query},
    {"cuStreamQuery_ptsz", c_stream_query_ptsz},
    {"cuEventQuery", c_event_query},
    {"cuPointerGetAttribute", c_pointer_attribute},
};
#define NENTRIES (sizeof entries / sizeof entries[0])

TestSuite(drv_emu_fast, .init = tu_emu_isolate);

Test(drv_emu_fast, every_call_is_counted)
{
    init_objects();
    for (size_t i = 0; i < NENTRIES; i++) {
        uint64_t before = fragless_emu_calls(entries[i].name), all = fragless_emu_calls("*");
        for (int k = 0; k < 3; k++)
            cr_expect_eq(entries[i].call(), CUDA_SUCCESS, "%s", entries[i].name);
        cr_expect_eq(fragless_emu_calls(entries[i].name), before + 3, "%s", entries[i].name);
        cr_expect_eq(fragless_emu_calls("*"), all + 3, "%s in the total", entries[i].name);
    }
}

Test(drv_emu_fast, faults_armed_mid_run_apply)
{
    init_objects();
    for (size_t i = 0; i < NENTRIES; i++) {
        char spec[96];
        const char *n = entries[i].name;
        uint64_t before;

        cr_expect_eq(entries[i].call(), CUDA_SUCCESS, "%s before arming", n);
        snprintf(spec, sizeof spec, "%s@2=CUDA_ERROR_NOT_PERMITTED", n);
        CK(fragless_emu_fail(spec));
        before = fragless_emu_calls(n);
        cr_expect_eq(entries[i].call(), CUDA_SUCCESS, "%s: 1st call after arming", n);
        cr_expect_eq(entries[i].call(), CUDA_ERROR_NOT_PERMITTED, "%s: 2nd call fails", n);
        cr_expect_eq(entries[i].call(), CUDA_SUCCESS, "%s: 3rd call", n);
        cr_expect_eq(fragless_emu_calls(n), before + 3, "%s: failed calls count too", n);
        snprintf(spec, sizeof spec, "%s@*", n);
        CK(fragless_emu_fail(spec));
        cr_expect_eq(entries[i].call(), CUDA_ERROR_OUT_OF_MEMORY, "%s@*", n);
        cr_expect_eq(entries[i].call(), CUDA_ERROR_OUT_OF_MEMORY, "%s@*", n);
        CK(fragless_emu_fail(NULL));
        cr_expect_eq(entries[i].call(), CUDA_SUCCESS, "%s after clearing", n);
    }
}

Test(drv_emu_fast, a_failed_call_does_nothing)
{
    CUcontext c = NULL;

    init_ctx();
    CK(fragless_emu_fail("cuCtxSetCurrent@1,cuCtxPopCurrent_v2@1"));
    cr_expect_eq(cuCtxSetCurrent(NULL), CUDA_ERROR_OUT_OF_MEMORY);
    CK(cuCtxGetCurrent(&c));
    cr_expect_eq(c, ctx, "the failed cuCtxSetCurrent left the current context");
    cr_expect_eq(cuCtxPopCurrent(&c), CUDA_ERROR_OUT_OF_MEMORY);
    CK(cuCtxGetCurrent(&c));
    cr_expect_eq(c, ctx, "the failed cuCtxPopCurrent left the stack");
}

Test(drv_emu_fast, rules_from_the_environment)
{
    CUdevice d;
    CUstreamCaptureStatus st;

    setenv("FRAGLESS_EMU_FAIL", "cuCtxGetDevice@1=CUDA_ERROR_UNKNOWN,cuStreamIsCapturing@2+", 1);
    init_ctx();
    cr_expect_eq(cuCtxGetDevice(&d), CUDA_ERROR_UNKNOWN);
    CK(cuCtxGetDevice(&d));
    CK(cuStreamIsCapturing(NULL, &st));
    cr_expect_eq(cuStreamIsCapturing(NULL, &st), CUDA_ERROR_OUT_OF_MEMORY);
    cr_expect_eq(cuStreamIsCapturing(NULL, &st), CUDA_ERROR_OUT_OF_MEMORY);
}

Test(drv_emu_fast, due_fill_lands_on_a_light_call)
{
    CUdevice d;
    unsigned char *host;

    init_objects();
    host = (unsigned char *)(uintptr_t)dptr;
    memset(host, 0, 4096);
    CK(fragless_emu_stream_fill(NULL, dptr, 0xab, 4096, 2000));
    sleep_us(10000);
    cr_expect_eq(host[100], 0, "nothing was called: the fill is still queued");
    CK(cuCtxGetDevice(&d));
    cr_expect_eq(host[100], 0xab, "the light call applied the fill that came due");
    cr_expect_eq(host[4095], 0xab);
}

Test(drv_emu_fast, device_fault_becomes_sticky_on_light_calls)
{
    static char not_device[4096];
    CUstreamCaptureStatus st;
    CUcontext c;

    init_objects();
    CK(fragless_emu_stream_fill(NULL, (CUdeviceptr)(uintptr_t)not_device, 1, 64, 2000));
    CK(cuStreamIsCapturing(stream, &st)); /* not due yet */
    cr_expect_eq(fragless_emu_faults(), 0);
    sleep_us(10000);
    cr_expect_eq(cuEventQuery(event), CUDA_ERROR_ILLEGAL_ADDRESS);
    cr_expect_eq(fragless_emu_faults(), 1);
    cr_expect_eq(cuStreamIsCapturing(stream, &st), CUDA_ERROR_ILLEGAL_ADDRESS);
    CK(cuCtxGetCurrent(&c)); /* a thread-local query, as before: no context error */
    CK(cuDevicePrimaryCtxReset(0));
}

/* Exit code of the child: 0 if every check passed, else the number of the failed one. */
static int child_checks(void)
{
    CUcontext c;
    CUdevice d;
    CUstreamCaptureStatus st;
    int v;
    uint64_t before = fragless_emu_calls("cuCtxGetCurrent");

    if (cuCtxGetCurrent(&c) != CUDA_ERROR_NOT_INITIALIZED)
        return 1;
    if (cuCtxGetDevice(&d) != CUDA_ERROR_NOT_INITIALIZED)
        return 2;
    if (cuDeviceGetCount(&v) != CUDA_ERROR_NOT_INITIALIZED)
        return 3;
    if (cuDeviceGetAttribute(&v, CU_DEVICE_ATTRIBUTE_WARP_SIZE, 0) != CUDA_ERROR_NOT_INITIALIZED)
        return 4;
    if (cuStreamIsCapturing(NULL, &st) != CUDA_ERROR_NOT_INITIALIZED)
        return 5;
    if (cuEventQuery(event) != CUDA_ERROR_NOT_INITIALIZED)
        return 6;
    if (cuCtxSetCurrent(ctx) != CUDA_ERROR_NOT_INITIALIZED)
        return 7;
    if (cuDriverGetVersion(&v) != CUDA_SUCCESS || v != 13000)
        return 8;
    if (fragless_emu_calls("cuCtxGetCurrent") != before + 1)
        return 9;
    return 0;
}

Test(drv_emu_fast, fork_child_after_init_is_refused)
{
    CUcontext c;
    int status = 0;
    pid_t pid;

    init_objects();
    pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0)
        _exit(child_checks());
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_expect(WIFEXITED(status));
    cr_expect_eq(WEXITSTATUS(status), 0, "failed check %d in the child", WEXITSTATUS(status));
    CK(cuCtxGetCurrent(&c));
    cr_expect_eq(c, ctx, "the parent is unaffected");
}

/* A child forked before cuInit initializes on its own; its own child, forked after that, is
 * refused. Exit code 0 if so. */
static int child_before_init(void)
{
    CUcontext c;
    int status = 0;
    pid_t pid;

    if (cuInit(0) != CUDA_SUCCESS || cuDevicePrimaryCtxRetain(&c, 0) != CUDA_SUCCESS)
        return 1;
    if (cuCtxSetCurrent(c) != CUDA_SUCCESS || cuCtxGetCurrent(&c) != CUDA_SUCCESS)
        return 2;
    pid = fork();
    if (pid < 0)
        return 3;
    if (pid == 0)
        _exit(cuCtxGetCurrent(&c) == CUDA_ERROR_NOT_INITIALIZED ? 0 : 4);
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
        return 5;
    return WEXITSTATUS(status);
}

Test(drv_emu_fast, fork_before_init_may_init)
{
    CUcontext c;
    int status = 0, v;
    pid_t pid;

    CK(cuDriverGetVersion(&v)); /* the library is loaded and configured, not initialized */
    pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0)
        _exit(child_before_init());
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_expect(WIFEXITED(status));
    cr_expect_eq(WEXITSTATUS(status), 0, "failed check %d in the child", WEXITSTATUS(status));
    init_ctx();
    CK(cuCtxGetCurrent(&c));
}

/* ---- threads --------------------------------------------------------------------------- */

#define THREADS 4
#define ROUNDS  2000

struct worker {
    pthread_barrier_t *start;
    int failed_device; /* cuCtxGetDevice calls that failed */
    int bad;           /* other calls that did not succeed */
    bool no_ctx_ok;    /* before setting one, the thread had no current context */
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    CUcontext c = ctx;
    CUdevice d;
    CUstreamCaptureStatus st;

    w->no_ctx_ok = cuCtxGetCurrent(&c) == CUDA_SUCCESS && c == NULL &&
                   cuCtxGetDevice(&d) == CUDA_ERROR_INVALID_CONTEXT;
    if (cuCtxSetCurrent(ctx) != CUDA_SUCCESS)
        w->bad++;
    pthread_barrier_wait(w->start);
    for (int i = 0; i < ROUNDS; i++) {
        if (cuCtxGetCurrent(&c) != CUDA_SUCCESS || c != ctx)
            w->bad++;
        if (cuCtxGetDevice(&d) != CUDA_SUCCESS)
            w->failed_device++;
        if (cuStreamIsCapturing(NULL, &st) != CUDA_SUCCESS)
            w->bad++;
    }
    return NULL;
}

/* Runs THREADS workers; returns the cuCtxGetDevice failures of all of them. */
static int run_workers(void)
{
    pthread_t th[THREADS];
    struct worker w[THREADS];
    pthread_barrier_t start;
    int failed = 0;

    pthread_barrier_init(&start, NULL, THREADS);
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct worker){.start = &start};
        cr_assert_eq(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        cr_assert_eq(pthread_join(th[i], NULL), 0);
        cr_expect(w[i].no_ctx_ok, "a new thread starts without a current context");
        cr_expect_eq(w[i].bad, 0);
        failed += w[i].failed_device;
    }
    pthread_barrier_destroy(&start);
    return failed;
}

Test(drv_emu_fast, threads_count_and_fault_exactly)
{
    uint64_t before;

    init_ctx();
    CK(fragless_emu_fail("cuCtxGetDevice@3000"));
    before = fragless_emu_calls("cuCtxGetDevice");
    cr_expect_eq(run_workers(), 1, "exactly one call was the 3000th");
    cr_expect_eq(fragless_emu_calls("cuCtxGetDevice"), before + THREADS * (ROUNDS + 1));
    CK(fragless_emu_fail("cuCtxGetDevice@5001+"));
    cr_expect_eq(run_workers(), THREADS * (ROUNDS + 1) - 5000, "all calls from the 5001st");
    CK(fragless_emu_fail(NULL));
    cr_expect_eq(run_workers(), 0);
}

struct spinner {
    atomic_bool stop;
    atomic_int phase; /* 0 running, 1 saw a failure, 2 saw success again */
};

static void *spinner_main(void *arg)
{
    struct spinner *s = arg;
    CUcontext c;

    cuCtxSetCurrent(ctx);
    while (!atomic_load(&s->stop)) {
        CUresult r = cuCtxGetCurrent(&c);
        int p = atomic_load(&s->phase);
        if (p == 0 && r == CUDA_ERROR_NOT_PERMITTED)
            atomic_store(&s->phase, 1);
        else if (p == 1 && r == CUDA_SUCCESS)
            atomic_store(&s->phase, 2);
    }
    return NULL;
}

static bool wait_phase(struct spinner *s, int phase)
{
    for (int i = 0; i < 5000 && atomic_load(&s->phase) != phase; i++)
        sleep_us(1000);
    return atomic_load(&s->phase) == phase;
}

Test(drv_emu_fast, rule_armed_by_another_thread_reaches_a_spinning_one)
{
    struct spinner s = {.phase = 0};
    pthread_t th;

    init_ctx();
    cr_assert_eq(pthread_create(&th, NULL, spinner_main, &s), 0);
    sleep_us(2000);
    cr_expect_eq(atomic_load(&s.phase), 0, "no rule yet");
    CK(fragless_emu_fail("cuCtxGetCurrent@*=CUDA_ERROR_NOT_PERMITTED"));
    cr_expect(wait_phase(&s, 1), "the spinning thread's calls fail once the rule is armed");
    CK(fragless_emu_fail(NULL));
    cr_expect(wait_phase(&s, 2), "and succeed once it is cleared");
    atomic_store(&s.stop, true);
    cr_assert_eq(pthread_join(th, NULL), 0);
}
