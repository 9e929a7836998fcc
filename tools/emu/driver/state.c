/*
 * state.c — the emulated driver's process-wide state: the one lock, the configuration read
 * from FRAGLESS_EMU_* once, simulated time, fork handling, and the gate every exported entry
 * point passes first (call counting, fault injection, applying work that has completed).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "emu.h"

struct emu_state emu = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .next_handle = 0x1000,
    .next_capture_id = 1,
    .due = UINT64_MAX,
};

static pthread_once_t config_once = PTHREAD_ONCE_INIT;
static const size_t default_capacity = (size_t)80 << 30;

void emu_lock(void)
{
    pthread_mutex_lock(&emu.lock);
}

void emu_unlock(void)
{
    pthread_mutex_unlock(&emu.lock);
}

static bool emu_parse_size(const char *s, size_t *out)
{
    char *end;
    unsigned long long v;
    unsigned shift = 0;

    if (!s || *s < '0' || *s > '9')
        return false;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno)
        return false;
    switch (*end) {
    case 'k':
    case 'K':
        shift = 10;
        end++;
        break;
    case 'm':
    case 'M':
        shift = 20;
        end++;
        break;
    case 'g':
    case 'G':
        shift = 30;
        end++;
        break;
    case 't':
    case 'T':
        shift = 40;
        end++;
        break;
    default:
        break;
    }
    if (shift && (strcmp(end, "iB") == 0 || strcmp(end, "B") == 0))
        end += strlen(end);
    if (*end || (shift && v > (~0ull >> shift)))
        return false;
    *out = (size_t)(v << shift);
    return true;
}

/* Misconfiguration of the emulator is fatal misuse: say so once, use the default. */
static void config_bad(const char *var, const char *val, const char *want)
{
    fprintf(stderr, "fragless-emu: ignoring %s=%s (want %s)\n", var, val, want);
}

static void config_read(void)
{
    struct emu_config *c = &emu.cfg;
    const char *v;
    char *end;

    c->capacity = default_capacity;
    v = getenv("FRAGLESS_EMU_MEM");
    if (v && *v && (!emu_parse_size(v, &c->capacity) || c->capacity < EMU_GRANULARITY)) {
        config_bad("FRAGLESS_EMU_MEM", v, "a size of at least 2M, like 24G");
        c->capacity = default_capacity;
    }
    c->devices = 1;
    v = getenv("FRAGLESS_EMU_DEVICES");
    if (v && *v) {
        long n = strtol(v, &end, 10);
        if (*end || n < 0 || n > EMU_MAX_DEVICES)
            config_bad("FRAGLESS_EMU_DEVICES", v, "a count from 0 to 16");
        else
            c->devices = (int)n;
    }
    v = getenv("FRAGLESS_EMU_NAME");
    snprintf(c->name, sizeof c->name, "%s", v && *v ? v : "default");
    v = getenv("FRAGLESS_EMU_VMM");
    c->vmm = !(v && strcmp(v, "0") == 0);
    v = getenv("FRAGLESS_EMU_LATENCY");
    c->latency = v && strcmp(v, "1") == 0;
    v = getenv("FRAGLESS_EMU_AUDIT");
    c->audit = !v || !*v || strcmp(v, "0") == 0 ? 0 : strcmp(v, "strict") == 0 ? 2 : 1;
    v = getenv("FRAGLESS_EMU_FAIL");
    if (v && *v && emu_faults_arm(v) != CUDA_SUCCESS)
        config_bad("FRAGLESS_EMU_FAIL", v, "NAME@N[=CODE], NAME@N+[=CODE] or NAME@*[=CODE]");
}

const struct emu_config *emu_config(void)
{
    pthread_once(&config_once, config_read);
    return &emu.cfg;
}

uint64_t emu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void emu_sleep_until(uint64_t t)
{
    struct timespec ts = {.tv_sec = (time_t)(t / 1000000000u), .tv_nsec = (long)(t % 1000000000u)};
    while (emu_now() < t && clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

bool emu_in_forked_child(void)
{
    return atomic_load_explicit(&emu.forked, memory_order_relaxed);
}

/* Also called without the lock (fast path): the acquire pairs with cuInit's release store,
 * so the contexts cuInit set up are seen complete. */
CUresult emu_check_init(void)
{
    if (!atomic_load_explicit(&emu.initialized, memory_order_acquire) || emu_in_forked_child())
        return CUDA_ERROR_NOT_INITIALIZED;
    return CUDA_SUCCESS;
}

CUresult emu_check_device(CUdevice dev)
{
    CUresult r = emu_check_init();
    if (r != CUDA_SUCCESS)
        return r;
    return dev >= 0 && dev < emu.cfg.devices ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE;
}

CUresult emu_enter(const char *name)
{
    CUresult r;

    emu_config();
    emu_lock();
    r = emu_faults_on_call(name);
    if (r == CUDA_SUCCESS && emu.initialized && !emu_in_forked_child()) {
        emu_device_advance();
    }
    emu_unlock();
    return r;
}

/* fork(): the child gets a sane lock; its emulator state is that of a process forked after
 * cuInit, where the real driver refuses every call (see emu_check_init). A child forked
 * before cuInit may still initialize; one forked from such a child after that may not.
 * (Only fork() runs these handlers: a process cloned without them, e.g. by _Fork(), is not
 * told apart from its parent.) */
static void fork_prepare(void)
{
    emu_lock();
}

static void fork_parent(void)
{
    emu_unlock();
}

static void fork_child(void)
{
    pthread_mutex_init(&emu.lock, NULL);
    if (atomic_load(&emu.initialized))
        atomic_store(&emu.forked, true);
    emu_cap_forget();
    emu_arena_forget();
    emu_ctx_clear_tls();
}

__attribute__((constructor)) static void state_init(void)
{
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}
