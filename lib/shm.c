/*
 * shm.c — the process's stats page and the thread that keeps it.
 *
 * Owns: /dev/shm/fragless.<uid>.<pid> (layout in include/fragless_shm.h): creating it when the
 * process first uses CUDA through fragless (never in a constructor), the background thread that
 * copies heap_get_stats()/heap_segment_info() into it under the sequence counters every
 * FRAGLESS_SHM_UPDATE_MS or when woken, serving empty-cache requests, removing the page at
 * normal exit (after the exit report) and, when creating it, the pages our uid's dead
 * processes left behind, and starting afresh in a forked child. The allocation
 * path pays one load (shm_ensure); statistics are pulled by the thread, never pushed.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fragless_shm.h"
#include "pageio.h"

#define JOIN_TIMEOUT_S 1

bool shm_started;

static struct {
    pthread_mutex_t lock; /* start, exit and fork */
    pid_t owner;          /* the process that ran shm_start (0: none) */
    fragless_shm_page_t *page;
    char path[96];
    pthread_t thread;
    bool thread_running;
    uint32_t stop;               /* asks the thread to end (atomic) */
    int device_limit;            /* devices the driver reports, at most FL_MAX_DEVICES */
    int8_t slot[FL_MAX_DEVICES]; /* page slot of each device, -1: none yet (thread only) */
} shm = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* The thread's scratch copy of one device's segments. */
static struct heap_segment_info seg_scratch[FRAGLESS_SHM_MAX_SEGMENTS];

static uint64_t realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- sequence counters (writer side) ---------------------------------------------------- */

static void seq_begin(uint32_t *seq)
{
    __atomic_store_n(seq, __atomic_load_n(seq, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
}

static void seq_end(uint32_t *seq)
{
    __atomic_store_n(seq, __atomic_load_n(seq, __ATOMIC_RELAXED) + 1, __ATOMIC_RELEASE);
}

/* ---- what goes into a page ---------------------------------------------------------------- */

void shm_device_identity(int device, fragless_shm_device_t *d)
{
    static const CUdevice_attribute attrs[3] = {CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID,
                                                CU_DEVICE_ATTRIBUTE_PCI_BUS_ID,
                                                CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID};
    int32_t *pci[3] = {&d->pci_domain, &d->pci_bus, &d->pci_device};
    for (int i = 0; i < 3; i++) {
        int v = -1;
        *pci[i] = drv_device_get_attribute(&v, attrs[i], (CUdevice)device) == CUDA_SUCCESS ? v : -1;
    }
    size_t total = 0;
    d->device = device;
    d->total_bytes = drv_device_total_mem(&total, (CUdevice)device) == CUDA_SUCCESS ? total : 0;
}

static void read_command(char *buf, size_t len)
{
    int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, buf, len - 1) : -1;
    if (fd >= 0)
        close(fd);
    if (n < 0)
        n = 0;
    buf[n] = '\0';
    while (n > 0 && buf[n - 1] == '\0')
        n--;
    for (ssize_t i = 0; i < n; i++)
        buf[i] = buf[i] == '\0' ? ' ' : buf[i];
}

static void fill_identity(fragless_shm_page_t *p)
{
    p->version = FRAGLESS_SHM_VERSION;
    p->header_size = offsetof(fragless_shm_page_t, devices);
    p->size = sizeof *p;
    p->device_size = sizeof(fragless_shm_device_t);
    p->max_devices = FRAGLESS_SHM_MAX_DEVICES;
    p->max_segments = FRAGLESS_SHM_MAX_SEGMENTS;
    p->pid = getpid();
    p->uid = geteuid();
    p->update_ms = FRAGLESS_SHM_UPDATE_MS;
    if (pio_start_time(p->pid, &p->start_time) != 0)
        p->start_time = 0;
    read_command(p->command, sizeof p->command);
    config_format(config_get(), p->config, sizeof p->config);
}

static void fill_segments(fragless_shm_device_t *d, const struct heap_segment_info *segs, int n)
{
    int shown = n < FRAGLESS_SHM_MAX_SEGMENTS ? n : FRAGLESS_SHM_MAX_SEGMENTS;
    for (int i = 0; i < shown; i++) {
        fragless_shm_segment_t *g = &d->segments[i];
        g->base = segs[i].base;
        g->size = segs[i].size;
        g->allocated = segs[i].allocated;
        g->free_mapped = segs[i].free_mapped;
        g->unmapped = segs[i].unmapped;
        g->blocks = segs[i].blocks;
        g->expandable = segs[i].expandable;
        snprintf(g->map, sizeof g->map, "%.*s", FRAGLESS_SHM_MAP_CHARS, segs[i].map);
    }
    d->segment_count = (uint32_t)(shown > 0 ? shown : 0);
    d->segment_total = (uint32_t)(n > 0 ? n : 0);
}

static bool device_stats(int device, fragless_stats_t *st)
{
    memset(st, 0, sizeof *st);
    st->size = sizeof *st;
    return heap_get_stats(device, st) == 0;
}

void shm_snapshot(struct fragless_shm_page *out)
{
    memset(out, 0, sizeof *out);
    fill_identity(out);
    out->magic = FRAGLESS_SHM_MAGIC;
    int count = 0;
    if (drv_device_get_count(&count) != CUDA_SUCCESS)
        count = 0;
    fragless_stats_t st;
    for (int dev = 0; dev < count && dev < FL_MAX_DEVICES; dev++) {
        if (out->device_count == FRAGLESS_SHM_MAX_DEVICES || !device_stats(dev, &st))
            continue;
        fragless_shm_device_t *d = &out->devices[out->device_count++];
        shm_device_identity(dev, d);
        d->stats = st;
        d->updated_ns = realtime_ns();
    }
    out->updated_ns = realtime_ns();
}

/* ---- the page thread ---------------------------------------------------------------------- */

/* The slot of `device` in the page (a new one past device_count if it has none yet); -1 when
 * the page is full. */
static int device_slot(const fragless_shm_page_t *p, int device, bool *fresh)
{
    *fresh = shm.slot[device] < 0;
    if (!*fresh)
        return shm.slot[device];
    return p->device_count < FRAGLESS_SHM_MAX_DEVICES ? (int)p->device_count : -1;
}

static void publish_device(fragless_shm_page_t *p, int device)
{
    fragless_stats_t st;
    bool fresh;
    if (!device_stats(device, &st))
        return;
    int s = device_slot(p, device, &fresh);
    if (s < 0)
        return;
    int n = heap_segment_info(device, seg_scratch, FRAGLESS_SHM_MAX_SEGMENTS);
    fragless_shm_device_t *d = &p->devices[s];
    seq_begin(&d->seq);
    if (fresh) /* identity: written once, when the device gets its slot */
        shm_device_identity(device, d);
    d->stats = st;
    fill_segments(d, seg_scratch, n);
    d->updated_ns = realtime_ns();
    seq_end(&d->seq);
    if (!fresh)
        return;
    /* counted only once its identity and statistics are in place, so a reader never sees a
     * device slot that is still empty */
    seq_begin(&p->seq);
    p->device_count++;
    seq_end(&p->seq);
    shm.slot[device] = (int8_t)s;
}

static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void publish(fragless_shm_page_t *p)
{
    uint64_t start = thread_cpu_ns();
    for (int dev = 0; dev < shm.device_limit; dev++)
        publish_device(p, dev);
    seq_begin(&p->seq);
    p->updated_ns = realtime_ns();
    p->publish_ns = thread_cpu_ns() - start;
    seq_end(&p->seq);
}

/* Empty-cache of one device, or of every device this process uses. */
static int64_t empty_cache(uint32_t device, uint64_t *released)
{
    int64_t status = 0;
    for (int dev = 0; dev < shm.device_limit; dev++) {
        if (shm.slot[dev] < 0 ||
            (device != FRAGLESS_SHM_REQ_ALL_DEVICES && (uint32_t)dev != device))
            continue;
        size_t bytes = 0;
        if (heap_empty_cache(dev, &bytes) != CUDA_SUCCESS)
            status = FRAGLESS_EDRIVER;
        *released += bytes;
    }
    return status;
}

/* Serves the pending request, if any. Only the documented values are honoured. */
static void serve_request(fragless_shm_page_t *p)
{
    uint64_t w = __atomic_load_n(&p->request, __ATOMIC_ACQUIRE);
    uint32_t id = FRAGLESS_SHM_REQ_ID(w);
    if (id == __atomic_load_n(&p->response_id, __ATOMIC_RELAXED))
        return;
    uint32_t device = FRAGLESS_SHM_REQ_DEVICE(w);
    uint64_t released = 0;
    int64_t status = FRAGLESS_EINVAL;
    bool known = device == FRAGLESS_SHM_REQ_ALL_DEVICES ||
                 ((int)device < shm.device_limit && shm.slot[device] >= 0);
    if (FRAGLESS_SHM_REQ_TYPE(w) == FRAGLESS_SHM_REQ_EMPTY_CACHE && known)
        status = empty_cache(device, &released);
    else if (FRAGLESS_SHM_REQ_TYPE(w) == FRAGLESS_SHM_REQ_EMPTY_CACHE)
        status = FRAGLESS_ENODEV;
    log_info("stats page: request %u (type %u, device %u): status %d, %zu bytes released", id,
             FRAGLESS_SHM_REQ_TYPE(w), device, (int)status, (size_t)released);
    publish(p); /* the requester reads fresh numbers after the response */
    __atomic_store_n(&p->response_status, status, __ATOMIC_RELAXED);
    __atomic_store_n(&p->response_released, released, __ATOMIC_RELAXED);
    __atomic_store_n(&p->response_id, id, __ATOMIC_RELEASE);
    pio_futex_wake(&p->response_id);
}

static void *page_thread(void *arg)
{
    fragless_shm_page_t *p = arg;
    while (!__atomic_load_n(&shm.stop, __ATOMIC_ACQUIRE)) {
        uint32_t seen = __atomic_load_n(&p->wake, __ATOMIC_ACQUIRE);
        serve_request(p);
        publish(p);
        pio_futex_wait(&p->wake, seen, (int64_t)FRAGLESS_SHM_UPDATE_MS * 1000000);
    }
    return NULL;
}

static int thread_start(fragless_shm_page_t *p)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old); /* signals stay with the program's threads */
    int r = pthread_create(&shm.thread, NULL, page_thread, p);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r != 0)
        return r;
    pthread_setname_np(shm.thread, "fragless-stats");
    shm.thread_running = true;
    return 0;
}

/* Asks the thread to end and waits a bounded time; false if it did not end. */
static bool thread_stop(void)
{
    if (!shm.thread_running)
        return true;
    __atomic_store_n(&shm.stop, 1, __ATOMIC_RELEASE);
    __atomic_add_fetch(&shm.page->wake, 1, __ATOMIC_RELEASE);
    pio_futex_wake(&shm.page->wake);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += JOIN_TIMEOUT_S;
    if (pthread_timedjoin_np(shm.thread, NULL, &deadline) != 0)
        return false;
    shm.thread_running = false;
    return true;
}

/* ---- the page file ------------------------------------------------------------------------ */

/* Creates the file; a leftover page with our pid can only be a dead process's: replace it. */
static int page_open(const char *path)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd >= 0 || errno != EEXIST)
            return fd;
        struct stat st;
        if (lstat(path, &st) != 0 || st.st_uid != geteuid() || unlink(path) != 0)
            return -1;
        log_info("stats page: replaced %s, left by a dead process with our pid", path);
    }
    errno = EEXIST;
    return -1;
}

/* pio_each_name callback: removes our uid's pages whose process is gone (a process that was
 * killed, or ended with _exit, could not remove its own). */
static int sweep_stale(int dirfd, const char *name, uint32_t uid, int32_t pid, void *arg)
{
    struct stat st;
    uint64_t started;
    int *removed = arg;
    if (uid != geteuid() || pid == getpid() || pio_start_time(pid, &started) != -ENOENT)
        return 0;
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_uid == uid &&
        unlinkat(dirfd, name, 0) == 0)
        (*removed)++;
    return 0;
}

static int page_create(void)
{
    snprintf(shm.path, sizeof shm.path, "%s/%s%u.%d", FRAGLESS_SHM_DIR, FRAGLESS_SHM_PREFIX,
             (unsigned)geteuid(), (int)getpid());
    int fd = page_open(shm.path);
    if (fd < 0)
        goto fail;
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_uid != geteuid() || fchmod(fd, 0600) != 0)
        goto unlink_file;
    if (ftruncate(fd, sizeof(fragless_shm_page_t)) != 0)
        goto unlink_file;
    void *map = mmap(NULL, sizeof(fragless_shm_page_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED)
        goto unlink_file;
    close(fd);
    madvise(map, sizeof(fragless_shm_page_t), MADV_DONTFORK); /* a child makes its own */
    shm.page = map;
    fill_identity(shm.page);
    __atomic_store_n(&shm.page->magic, FRAGLESS_SHM_MAGIC, __ATOMIC_RELEASE);
    int removed = 0;
    pio_each_name(FRAGLESS_SHM_DIR, sweep_stale, &removed);
    if (removed)
        log_info("stats page: removed %d stale page(s) of dead processes", removed);
    return 0;
unlink_file:
    unlink(shm.path);
    close(fd);
fail:
    log_warn("stats page: cannot create %s (%s); fragstat will not see this process", shm.path,
             strerror(errno));
    shm.path[0] = '\0';
    return -1;
}

static void page_remove(bool unmap)
{
    if (!shm.page)
        return;
    unlink(shm.path);
    if (unmap)
        munmap(shm.page, sizeof(fragless_shm_page_t));
    shm.page = NULL;
    shm.path[0] = '\0';
}

static void page_start(void)
{
    int count = 0;
    if (drv_device_get_count(&count) != CUDA_SUCCESS)
        count = 0;
    shm.device_limit = count < FL_MAX_DEVICES ? count : FL_MAX_DEVICES;
    memset(shm.slot, -1, sizeof shm.slot);
    if (page_create() != 0)
        return;
    int r = thread_start(shm.page);
    if (r != 0) {
        log_warn("stats page: cannot start its thread (%s); fragstat will not see this process",
                 strerror(r));
        page_remove(true);
    }
}

const char *shm_page_path(void)
{
    return shm.path;
}

/* ---- process life: start, exit, fork ------------------------------------------------------ */

static void at_exit(void)
{
    pthread_mutex_lock(&shm.lock);
    if (shm.owner == getpid()) {
        bool stopped = thread_stop();
        report_exit();
        page_remove(stopped);
        shm.owner = 0;
    }
    pthread_mutex_unlock(&shm.lock);
}

static void fork_prepare(void)
{
    pthread_mutex_lock(&shm.lock);
}

static void fork_parent(void)
{
    pthread_mutex_unlock(&shm.lock);
}

/* The child has no thread and no mapping (MADV_DONTFORK): start afresh on its first use. */
static void fork_child(void)
{
    pthread_mutex_init(&shm.lock, NULL);
    shm.owner = 0;
    shm.page = NULL;
    shm.path[0] = '\0';
    shm.thread_running = false;
    shm.stop = 0;
    __atomic_store_n(&shm_started, false, __ATOMIC_RELEASE);
}

static void install_hooks(void)
{
    atexit(at_exit);
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}

void shm_start(void)
{
    static pthread_once_t hooks_once = PTHREAD_ONCE_INIT;
    pthread_mutex_lock(&shm.lock);
    if (!__atomic_load_n(&shm_started, __ATOMIC_ACQUIRE)) {
        pthread_once(&hooks_once, install_hooks);
        shm.owner = getpid();
        if (config_get()->stats_page)
            page_start();
        __atomic_store_n(&shm_started, true, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&shm.lock);
}
