/*
 * report.c — reports that explain: the OOM report and the exit report.
 *
 * Owns: what is printed when an allocation finally fails (request, device capacity and free
 * memory, this process's allocated / reserved / reserved-but-unallocated bytes and largest free
 * block, the other processes on the same GPU from their stats pages, and one line of advice
 * chosen from those numbers), and the summary written at exit when config `report` asks for it
 * (stderr: one line per device; a path: the JSON of `fragstat --json`, from lib/pageio.h).
 */
#include "internal.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fragless_shm.h"
#include "nvml.h"
#include "pageio.h"

#define REPORT_MAX_OTHERS 8

struct other {
    int32_t pid;
    bool fragless; /* from its stats page; else only NVML knows it */
    char command[40];
    uint64_t reserved, allocated; /* NVML: reserved is the memory it uses */
};

struct oom_facts {
    int device;
    size_t size;
    fragless_stats_t st;
    size_t free_bytes, total_bytes; /* total 0: unknown */
    bool free_known;                /* the driver said how much is free */
    fragless_shm_device_t me;       /* identity only: to find the same GPU in other pages */
    struct other others[REPORT_MAX_OTHERS];
    int nothers, more;
    uint64_t others_reserved;
    bool nvml;          /* NVML answered: processes without fragless are listed too */
    uint64_t nvml_used; /* memory in use on the GPU by all processes, per NVML */
    fragless_shm_page_t *scratch;
};

/* At most one report per REPORT_OOM_INTERVAL_S: the first caller in a window wins. */
static bool oom_report_due(void)
{
    static uint64_t last_ns;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    uint64_t last = __atomic_load_n(&last_ns, __ATOMIC_RELAXED);
    if (last && now - last < (uint64_t)REPORT_OOM_INTERVAL_S * 1000000000ull)
        return false;
    return __atomic_compare_exchange_n(&last_ns, &last, now, false, __ATOMIC_RELAXED,
                                       __ATOMIC_RELAXED);
}

static void add_other(struct oom_facts *f, const struct other *o)
{
    f->others_reserved += o->reserved;
    if (f->nothers == REPORT_MAX_OTHERS)
        f->more++;
    else
        f->others[f->nothers++] = *o;
}

static void add_page_other(struct oom_facts *f, const fragless_shm_page_t *p,
                           const fragless_shm_device_t *d)
{
    struct other o = {.pid = p->pid, .fragless = true};
    snprintf(o.command, sizeof o.command, "%.39s", p->command);
    o.reserved = d->stats.reserved_bytes.current;
    o.allocated = d->stats.allocated_bytes.current;
    add_other(f, &o);
}

static bool listed(const struct oom_facts *f, int32_t pid)
{
    for (int i = 0; i < f->nothers; i++) {
        if (f->others[i].pid == pid)
            return true;
    }
    return false;
}

/* The processes NVML sees on our GPU that have no page (not using fragless, or not ours). */
static void add_nvml_others(struct oom_facts *f)
{
    static struct nvq nvml;
    nvq_process_t procs[NVQ_MAX_PROCESSES];
    char pci[32];
    uint64_t total = 0;
    if (!pio_pci_id(&f->me, pci, sizeof pci) ||
        !nvq_memory(&nvml, dl_sym, pci, &f->nvml_used, &total))
        return;
    int n = nvq_processes(&nvml, dl_sym, pci, procs, NVQ_MAX_PROCESSES);
    f->nvml = n >= 0;
    for (int i = 0; i < n; i++) {
        struct other o = {.pid = (int32_t)procs[i].pid, .reserved = procs[i].used_gpu_memory};
        if (o.pid != getpid() && !listed(f, o.pid))
            add_other(f, &o);
    }
}

/* pio_each_name callback: a live, readable page of another process on our GPU. */
static int collect_other(int dirfd, const char *name, uint32_t uid, int32_t pid, void *arg)
{
    struct oom_facts *f = arg;
    uint64_t started = 0;
    if (pid == getpid() || pio_start_time(pid, &started) != 0)
        return 0;
    int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return 0;
    struct stat st;
    bool ok =
        fstat(fd, &st) == 0 && st.st_uid == uid && pio_read_page(fd, f->scratch, NULL, 0) == PIO_OK;
    close(fd);
    const fragless_shm_page_t *p = f->scratch;
    char path[128];
    snprintf(path, sizeof path, "%s/%s", FRAGLESS_SHM_DIR, name);
    if (!ok || p->pid != pid || p->start_time != started || !pio_maps_file(pid, path))
        return 0;
    for (uint32_t i = 0; i < p->device_count; i++) {
        if (pio_same_gpu(&f->me, &p->devices[i]))
            add_page_other(f, p, &p->devices[i]);
    }
    return 0;
}

static void gather(struct oom_facts *f, int device, size_t size)
{
    memset(f, 0, sizeof *f);
    f->device = device;
    f->size = size;
    f->st.size = sizeof f->st;
    if (heap_get_stats(device, &f->st) != 0)
        memset(&f->st, 0, sizeof f->st);
    shm_device_identity(device, &f->me);
    size_t free_bytes = 0, total_bytes = 0;
    if (drv_mem_get_info(&free_bytes, &total_bytes) == CUDA_SUCCESS) {
        f->free_known = true;
        f->free_bytes = free_bytes;
        f->total_bytes = total_bytes;
    } else {
        f->total_bytes = f->me.total_bytes;
    }
    f->scratch = malloc(sizeof *f->scratch);
    if (f->scratch)
        pio_each_name(FRAGLESS_SHM_DIR, collect_other, f);
    free(f->scratch);
    f->scratch = NULL;
    add_nvml_others(f);
}

/* The one line of advice the numbers point to. */
static void advise(const struct oom_facts *f, char *buf, size_t len)
{
    uint64_t unallocated = f->st.reserved_unallocated_bytes.current;
    /* expandable (VMM) segments already hold address space beyond what is mapped */
    bool expandable = f->st.unmapped_reserved_va_bytes.current > 0;
    if (f->total_bytes && f->size > f->total_bytes) {
        snprintf(buf, len,
                 "a single request of %s is larger than the whole GPU (%s): no allocator "
                 "setting can serve it; make the batch (or this tensor) smaller, or split the "
                 "work into chunks",
                 PIO_HUMAN(f->size), PIO_HUMAN(f->total_bytes));
    } else if (unallocated >= f->size && expandable) {
        snprintf(buf, len,
                 "%s is reserved but unallocated in this process, more than the request, but it "
                 "lies in pages shared with live blocks (fragmentation inside pages): a smaller "
                 "page_size_mb in FRAGLESS_CONF helps; `fragstat --segments %d` shows the map",
                 PIO_HUMAN(unallocated), (int)getpid());
    } else if (unallocated >= f->size) {
        snprintf(buf, len,
                 "%s is reserved but unallocated in this process, more than the request, but "
                 "no free block fits it (fragmentation): set expandable_segments:true in "
                 "FRAGLESS_CONF, or max_split_size_mb so that large blocks are not split; "
                 "`fragstat --segments %d` shows the map",
                 PIO_HUMAN(unallocated), (int)getpid());
    } else if (f->nothers && f->others_reserved + f->free_bytes >= f->size) {
        snprintf(buf, len,
                 "other processes hold %s on this GPU (pid %d alone %s): run fewer jobs per GPU "
                 "at once, or have them release their cache (`fragstat --empty-cache PID`)",
                 PIO_HUMAN(f->others_reserved), (int)f->others[0].pid,
                 PIO_HUMAN(f->others[0].reserved));
    } else {
        snprintf(buf, len,
                 "this process itself holds %s allocated: reduce the batch size or the model, "
                 "or free tensors it no longer needs",
                 PIO_HUMAN(f->st.allocated_bytes.current));
    }
}

/* Whether processes without fragless are in the list. */
static size_t format_seen(const struct oom_facts *f, char *buf, size_t len)
{
    if (f->nvml)
        return (size_t)snprintf(buf, len, "(NVML: %s in use on this GPU by all processes)",
                                PIO_HUMAN(f->nvml_used));
    return (size_t)snprintf(buf, len, "(processes without fragless are not seen: no NVML)");
}

static size_t format_others(const struct oom_facts *f, char *buf, size_t len)
{
    size_t n = 0;
    if (f->nothers == 0) {
        n = (size_t)snprintf(buf, len, "no other process holds memory on this GPU ");
        return n + format_seen(f, buf + n, len - n);
    }
    n += (size_t)snprintf(buf, len, "other processes on this GPU:");
    for (int i = 0; i < f->nothers && n < len; i++) {
        const struct other *o = &f->others[i];
        if (o->fragless)
            n += (size_t)snprintf(buf + n, len - n, "%s pid %d (%s) %s reserved, %s allocated",
                                  i ? ";" : "", (int)o->pid, o->command, PIO_HUMAN(o->reserved),
                                  PIO_HUMAN(o->allocated));
        else
            n += (size_t)snprintf(buf + n, len - n, "%s pid %d (without fragless) uses %s",
                                  i ? ";" : "", (int)o->pid, PIO_HUMAN(o->reserved));
    }
    if (f->more && n < len)
        n += (size_t)snprintf(buf + n, len - n, "; and %d more", f->more);
    if (n < len)
        n += (size_t)snprintf(buf + n, len - n, " ");
    if (n < len)
        n += format_seen(f, buf + n, len - n);
    return n;
}

void report_oom(int device, size_t size)
{
    if (!oom_report_due())
        return;
    struct oom_facts *f = malloc(sizeof *f);
    if (!f)
        return;
    gather(f, device, size);
    char others[1024], advice[512];
    format_others(f, others, sizeof others);
    advise(f, advice, sizeof advice);
    log_error("CUDA out of memory. Tried to allocate %s on GPU %d. GPU %d has a total capacity "
              "of %s of which %s is free. This process (pid %d) has %s allocated by fragless "
              "and %s reserved, of which %s is reserved but unallocated; its largest free "
              "block is %s.\n  %s.\n  advice: %s.",
              PIO_HUMAN(size), device, device,
              f->total_bytes ? PIO_HUMAN(f->total_bytes) : "unknown",
              f->free_known ? PIO_HUMAN(f->free_bytes) : "an unknown amount", (int)getpid(),
              PIO_HUMAN(f->st.allocated_bytes.current), PIO_HUMAN(f->st.reserved_bytes.current),
              PIO_HUMAN(f->st.reserved_unallocated_bytes.current),
              PIO_HUMAN(f->st.largest_free_block_bytes.current), others, advice);
    free(f);
}

/* ---- exit report ---------------------------------------------------------------------------- */

static void exit_json(const char *pattern, const fragless_shm_page_t *snap)
{
    char path[CONF_PATH_MAX + 32], host[256] = "";
    if (config_expand_path(pattern, path, sizeof path) != 0) {
        log_error("exit report: the path %s is too long", pattern);
        return;
    }
    if (gethostname(host, sizeof host - 1) != 0)
        snprintf(host, sizeof host, "unknown");
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!f) {
        log_error("exit report: cannot write %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return;
    }
    pio_json_begin(f, host);
    pio_json_process(f, snap, snap->device_count, -1, true);
    pio_json_end(f);
    if (fclose(f) != 0)
        log_error("exit report: cannot write %s: %s", path, strerror(errno));
}

static void exit_summary(const fragless_shm_page_t *snap)
{
    for (uint32_t i = 0; i < snap->device_count; i++) {
        const fragless_shm_device_t *d = &snap->devices[i];
        const fragless_stats_t *s = &d->stats;
        /* the report was asked for: printed at every verbosity */
        LOG_AT(LOG_ERROR,
               "exit report (pid %d, GPU %d): peak allocated %s, peak reserved %s; reserved but "
               "unallocated %s now, %s at peak (fragmentation %.1f%%); %llu allocations, %llu "
               "OOMs, %llu retries; %llu driver calls in %.1f ms; %llu empty-cache released %s",
               (int)snap->pid, d->device, PIO_HUMAN(s->allocated_bytes.peak),
               PIO_HUMAN(s->reserved_bytes.peak), PIO_HUMAN(s->reserved_unallocated_bytes.current),
               PIO_HUMAN(s->reserved_unallocated_bytes.peak), pio_fragmentation(s),
               (unsigned long long)s->num_allocs, (unsigned long long)s->num_ooms,
               (unsigned long long)s->num_alloc_retries, (unsigned long long)s->driver_calls,
               (double)s->driver_ns / 1e6, (unsigned long long)s->num_empty_cache,
               PIO_HUMAN(s->empty_cache_released_bytes));
    }
}

void report_exit(void)
{
    static fragless_shm_page_t snap;
    const char *where = config_get()->report;
    if (!where[0])
        return;
    shm_snapshot(&snap);
    if (strcmp(where, "stderr") == 0)
        exit_summary(&snap);
    else
        exit_json(where, &snap);
}
