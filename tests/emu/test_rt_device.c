/*
 * test_rt_device.c — devices through the emulated runtime: count, per-thread current device
 * with two emulated devices, properties and attributes, versions, peer access, reset, and a
 * device fault leaving a sticky error until cudaDeviceReset.
 */
#include <criterion/criterion.h>
#include <cuda.h>
#include <cuda_runtime_api.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fragless_emu.h"
#include "testutil.h"

#define MiB ((size_t)1 << 20)

static void two_devices(void)
{
    tu_emu_isolate();
    setenv("FRAGLESS_EMU_DEVICES", "2", 1);
}

Test(rt_device, count_and_invalid_ordinals)
{
    two_devices();
    int n = -1;
    cr_assert_eq(cudaGetDeviceCount(&n), cudaSuccess);
    cr_assert_eq(n, 2);
    cr_assert_eq(cudaGetDeviceCount(NULL), cudaErrorInvalidValue);
    cr_assert_eq(cudaSetDevice(2), cudaErrorInvalidDevice);
    cr_assert_eq(cudaSetDevice(-1), cudaErrorInvalidDevice);
    int v;
    cr_assert_eq(cudaDeviceGetAttribute(&v, cudaDevAttrWarpSize, 5), cudaErrorInvalidDevice);
}

Test(rt_device, no_device)
{
    tu_emu_isolate();
    setenv("FRAGLESS_EMU_DEVICES", "0", 1);
    int n = -1;
    cudaError_t e = cudaGetDeviceCount(&n);
    cr_assert(e == cudaErrorNoDevice, "got %s", cudaGetErrorName(e));
    cr_assert_eq(n, 0);
    cr_assert_eq(cudaFree(NULL), cudaErrorNoDevice);
}

/* The device cudaMalloc on this thread allocates on. */
static int device_of_new_allocation(void)
{
    void *p = NULL;
    struct cudaPointerAttributes a;
    cr_assert_eq(cudaMalloc(&p, MiB), cudaSuccess);
    cr_assert_eq(cudaPointerGetAttributes(&a, p), cudaSuccess);
    cr_assert_eq(cudaFree(p), cudaSuccess);
    return a.device;
}

struct thread_result {
    int device_seen;
    int device_of_alloc;
    cudaError_t err;
};

static void *on_other_thread(void *arg)
{
    struct thread_result *r = arg;
    void *p = NULL;
    struct cudaPointerAttributes a;
    r->err = cudaGetDevice(&r->device_seen);
    if (r->err == cudaSuccess)
        r->err = cudaSetDevice(1);
    if (r->err == cudaSuccess)
        r->err = cudaMalloc(&p, MiB);
    if (r->err == cudaSuccess)
        r->err = cudaPointerGetAttributes(&a, p);
    if (r->err == cudaSuccess) {
        r->device_of_alloc = a.device;
        r->err = cudaFree(p);
    }
    return NULL;
}

Test(rt_device, current_device_is_per_thread)
{
    two_devices();
    int dev = -1;
    cr_assert_eq(cudaGetDevice(&dev), cudaSuccess);
    cr_assert_eq(dev, 0, "the default device is 0");
    struct thread_result r = {-1, -1, cudaErrorUnknown};
    pthread_t t;
    pthread_create(&t, NULL, on_other_thread, &r);
    pthread_join(t, NULL);
    cr_assert_eq(r.err, cudaSuccess, "%s", cudaGetErrorName(r.err));
    cr_assert_eq(r.device_seen, 0);
    cr_assert_eq(r.device_of_alloc, 1, "memory allocated after cudaSetDevice(1) is on device 1");
    cr_assert_eq(cudaGetDevice(&dev), cudaSuccess);
    cr_assert_eq(dev, 0, "another thread's cudaSetDevice must not change this thread's device");
    cr_assert_eq(device_of_new_allocation(), 0);
}

Test(rt_device, set_device_makes_its_primary_context_current)
{
    two_devices();
    CUcontext cur = NULL, primary1 = NULL;
    CUdevice d = -1;
    cr_assert_eq(cudaSetDevice(1), cudaSuccess);
    cr_assert_eq(cuCtxGetCurrent(&cur), CUDA_SUCCESS);
    cr_assert_eq(cuDevicePrimaryCtxRetain(&primary1, 1), CUDA_SUCCESS);
    cr_assert_eq(cur, primary1);
    cr_assert_eq(cuCtxGetDevice(&d), CUDA_SUCCESS);
    cr_assert_eq(d, 1);
    int dev = -1;
    cr_assert_eq(cudaGetDevice(&dev), cudaSuccess);
    cr_assert_eq(dev, 1);
    cr_assert_eq(cuDevicePrimaryCtxRelease(1), CUDA_SUCCESS);
}

/* Device 0's attribute as cudaGetDeviceProperties reports it: 0 where the driver has none. */
static int attribute(CUdevice_attribute a)
{
    int v = 0;
    return cuDeviceGetAttribute(&v, a, 0) == CUDA_SUCCESS ? v : 0;
}

Test(rt_device, properties_and_attributes_come_from_the_driver)
{
    tu_emu_isolate();
    setenv("FRAGLESS_EMU_MEM", "24G", 1);
    struct cudaDeviceProp prop;
    memset(&prop, 0x7f, sizeof prop);
    cr_assert_eq(cudaGetDeviceProperties(&prop, 0), cudaSuccess);
    char name[256];
    size_t total = 0;
    int major = 0, minor = 0, sms = 0, v = 0;
    cr_assert_eq(cuDeviceGetName(name, sizeof name, 0), CUDA_SUCCESS);
    cr_assert_eq(cuDeviceTotalMem(&total, 0), CUDA_SUCCESS);
    cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, 0);
    cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, 0);
    cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0);
    cr_assert_str_eq(prop.name, name);
    cr_assert_eq(prop.totalGlobalMem, total);
    cr_assert_eq(total, (size_t)24 << 30);
    cr_assert_eq(prop.major, major);
    cr_assert_eq(prop.minor, minor);
    cr_assert_gt(prop.major, 0);
    cr_assert_eq(prop.multiProcessorCount, sms);
    cr_assert_eq(prop.warpSize, attribute(CU_DEVICE_ATTRIBUTE_WARP_SIZE));
    cr_assert_eq(prop.maxThreadsDim[2], attribute(CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z));
    cr_assert_eq(prop.sharedMemPerBlock,
                 (size_t)attribute(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK));
    cr_assert_eq(prop.memoryPoolsSupported, attribute(CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED));
    cr_assert_eq(prop.luidDeviceNodeMask, 0, "fields without an attribute are 0");
    cr_assert_eq(cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMajor, 0), cudaSuccess);
    cr_assert_eq(v, major);
    cr_assert_eq(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, 0), cudaSuccess);
    cr_assert_eq(v, sms);
    cr_assert_eq(cudaDeviceGetAttribute(NULL, cudaDevAttrWarpSize, 0), cudaErrorInvalidValue);
    cr_assert_eq(cudaGetDeviceProperties(NULL, 0), cudaErrorInvalidValue);
}

Test(rt_device, versions)
{
    int drv = 0, rt = 0;
    cr_assert_eq(cudaRuntimeGetVersion(&rt), cudaSuccess);
    cr_assert_eq(rt, 13000);
    cr_assert_eq(cudaDriverGetVersion(&drv), cudaSuccess);
    int direct = 0;
    cr_assert_eq(cuDriverGetVersion(&direct), CUDA_SUCCESS);
    cr_assert_eq(drv, direct);
    cr_assert_eq(cudaRuntimeGetVersion(NULL), cudaErrorInvalidValue);
    cr_assert_eq(cudaDriverGetVersion(NULL), cudaErrorInvalidValue);
}

Test(rt_device, peer_access)
{
    two_devices();
    int can = -1;
    cr_assert_eq(cudaDeviceCanAccessPeer(&can, 0, 1), cudaSuccess);
    int direct = -1;
    cr_assert_eq(cuDeviceCanAccessPeer(&direct, 0, 1), CUDA_SUCCESS);
    cr_assert_eq(can, direct);
    cr_assert_eq(cudaDeviceCanAccessPeer(&can, 0, 7), cudaErrorInvalidDevice);
    cr_assert_eq(cudaDeviceEnablePeerAccess(1, 1), cudaErrorInvalidValue);
    cr_assert_eq(cudaDeviceEnablePeerAccess(0, 0), cudaErrorInvalidDevice, "itself");
    cr_assert_eq(cudaDeviceEnablePeerAccess(5, 0), cudaErrorInvalidDevice, "no such device");
    cr_assert_eq(can, 1, "two emulated devices can access each other");
    cr_assert_eq(cudaDeviceEnablePeerAccess(1, 0), cudaSuccess);
    cr_assert_eq(cudaDeviceEnablePeerAccess(1, 0), cudaErrorPeerAccessAlreadyEnabled);
    cr_assert_eq(cudaGetLastError(), cudaErrorPeerAccessAlreadyEnabled);
}

Test(rt_device, reset_frees_the_device_and_the_runtime_starts_again)
{
    tu_emu_isolate();
    void *p = NULL;
    cr_assert_eq(cudaMalloc(&p, 8 * MiB), cudaSuccess);
    cr_assert_geq(fragless_emu_used(0), 8 * MiB);
    cr_assert_eq(cudaDeviceReset(), cudaSuccess);
    cr_assert_eq(fragless_emu_used(0), 0, "cudaDeviceReset frees the device's memory");
    cr_assert_eq(cudaMalloc(&p, MiB), cudaSuccess);
    cr_assert_eq(cudaFree(p), cudaSuccess);
}

Test(rt_device, device_fault_is_sticky_until_reset)
{
    tu_emu_isolate();
    void *p = NULL;
    cudaStream_t s;
    cr_assert_eq(cudaStreamCreate(&s), cudaSuccess);
    cr_assert_eq(cudaMalloc(&p, MiB), cudaSuccess);
    cr_assert_eq(fragless_emu_stream_fill((CUstream)s, (CUdeviceptr)(uintptr_t)p, 1, MiB, 1000), 0);
    /* the free waits for the fill; a fill into memory freed earlier faults instead: */
    cr_assert_eq(cudaStreamSynchronize(s), cudaSuccess);
    cr_assert_eq(cudaFree(p), cudaSuccess);
    cr_assert_eq(fragless_emu_stream_fill((CUstream)s, (CUdeviceptr)(uintptr_t)p, 1, MiB, 1000), 0);
    cr_assert_eq(cudaStreamSynchronize(s), cudaErrorIllegalAddress);
    cr_assert_eq(fragless_emu_faults(), 1);
    cr_assert_eq(cudaMalloc(&p, MiB), cudaErrorIllegalAddress);
    cr_assert_eq(cudaGetLastError(), cudaErrorIllegalAddress);
    cr_assert_eq(cudaGetLastError(), cudaErrorIllegalAddress, "a sticky error stays");
    cr_assert_eq(cudaPeekAtLastError(), cudaErrorIllegalAddress);
    cr_assert_eq(cudaDeviceReset(), cudaSuccess);
    cr_assert_eq(cudaGetLastError(), cudaSuccess, "cudaDeviceReset clears the sticky error");
    cr_assert_eq(cudaMalloc(&p, MiB), cudaSuccess);
    cr_assert_eq(cudaFree(p), cudaSuccess);
}

#define THREADS 8

static void *first_call(void *arg)
{
    *(cudaError_t *)arg = cudaFree(NULL);
    return NULL;
}

Test(rt_device, initialization_happens_once_across_threads)
{
    pthread_t t[THREADS];
    cudaError_t err[THREADS];
    for (int i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, first_call, &err[i]);
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        cr_assert_eq(err[i], cudaSuccess);
    }
    cr_assert_eq(fragless_emu_calls("cuInit"), 1);
    cr_assert_eq(fragless_emu_calls("cuDevicePrimaryCtxRetain"), 1,
                 "the runtime retains a device's primary context once");
}

Test(rt_device, a_context_made_current_through_the_driver_is_used)
{
    two_devices();
    CUcontext c1 = NULL;
    cr_assert_eq(cuInit(0), CUDA_SUCCESS);
    cr_assert_eq(cuDevicePrimaryCtxRetain(&c1, 1), CUDA_SUCCESS);
    cr_assert_eq(cuCtxSetCurrent(c1), CUDA_SUCCESS);
    int dev = -1;
    cr_assert_eq(cudaGetDevice(&dev), cudaSuccess);
    cr_assert_eq(dev, 1);
    cr_assert_eq(device_of_new_allocation(), 1);
    cr_assert_eq(cuDevicePrimaryCtxRelease(1), CUDA_SUCCESS);
}

struct reset_peer {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int phase; /* 0 start, 1 peer allocated, 2 main reset, 3 peer done */
    cudaError_t before, after;
};

static void wait_phase(struct reset_peer *r, int phase)
{
    pthread_mutex_lock(&r->lock);
    while (r->phase < phase)
        pthread_cond_wait(&r->cond, &r->lock);
    pthread_mutex_unlock(&r->lock);
}

static void set_phase(struct reset_peer *r, int phase)
{
    pthread_mutex_lock(&r->lock);
    r->phase = phase;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

static void *peer_thread(void *arg)
{
    struct reset_peer *r = arg;
    void *p = NULL;
    r->before = cudaMalloc(&p, MiB);
    set_phase(r, 1);
    wait_phase(r, 2);
    r->after = cudaMalloc(&p, MiB);
    if (r->after == cudaSuccess)
        r->after = cudaFree(p);
    set_phase(r, 3);
    return NULL;
}

Test(rt_device, reset_on_one_thread_leaves_the_others_working)
{
    tu_emu_isolate();
    struct reset_peer r = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, cudaErrorUnknown,
                           cudaErrorUnknown};
    pthread_t t;
    pthread_create(&t, NULL, peer_thread, &r);
    wait_phase(&r, 1);
    cr_assert_eq(r.before, cudaSuccess);
    cr_assert_eq(cudaDeviceReset(), cudaSuccess);
    cr_assert_eq(fragless_emu_used(0), 0, "the reset freed the other thread's memory too");
    set_phase(&r, 2);
    pthread_join(t, NULL);
    cr_assert_eq(r.after, cudaSuccess, "%s", cudaGetErrorName(r.after));
}

Test(rt_device, a_child_forked_after_initialization_gets_initialization_errors)
{
    void *p = NULL;
    cr_assert_eq(cudaMalloc(&p, MiB), cudaSuccess);
    pid_t pid = fork();
    if (pid == 0) {
        void *q = NULL;
        cudaError_t a = cudaMalloc(&q, MiB);
        cudaError_t b = cudaGetLastError();
        _exit(a == cudaErrorInitializationError && b == a ? 0 : 1);
    }
    int st = 0;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the child's runtime calls must fail");
    cr_assert_eq(cudaFree(p), cudaSuccess, "the parent is unaffected");
}

static atomic_bool stop_spinning;

static void *spin_on_device_count(void *arg)
{
    int n;
    (void)arg;
    while (!atomic_load(&stop_spinning))
        cudaGetDeviceCount(&n);
    return NULL;
}

#define FORKS 200

Test(rt_device, fork_while_another_thread_is_in_the_runtime)
{
    int n;
    pthread_t t;
    cr_assert_eq(cudaGetDeviceCount(&n), cudaSuccess);
    pthread_create(&t, NULL, spin_on_device_count, NULL);
    int hung = 0;
    for (int i = 0; i < FORKS; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            alarm(5);
            cudaGetDeviceCount(&n);
            _exit(0);
        }
        int st = 0;
        waitpid(pid, &st, 0);
        hung += !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    atomic_store(&stop_spinning, true);
    pthread_join(t, NULL);
    cr_assert_eq(hung, 0, "%d of %d children hung in the runtime", hung, FORKS);
}
