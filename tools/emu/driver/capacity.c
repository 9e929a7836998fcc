/*
 * capacity.c — device capacity accounting shared by every process that uses the same
 * emulated device name: a small file /dev/shm/fragless-emu-<uid>-<name> holds one slot per
 * process (pid, start time, bytes per device), updated under flock. Slots of processes that
 * have died (or were replaced by another process with the same pid) are reclaimed, so a
 * killed test never leaks capacity. Without /dev/shm the accounting is process-local.
 */
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "emu.h"

#define CAP_SLOTS   128
#define CAP_MAGIC   0x46454d31u
#define CAP_VERSION 1

struct cap_slot {
    int32_t pid;
    int32_t pad;
    uint64_t start; /* process start time, in clock ticks since boot */
    uint64_t bytes[EMU_MAX_DEVICES];
};

struct cap_file {
    uint32_t magic;
    uint32_t version;
    uint64_t reserved;
    struct cap_slot slot[CAP_SLOTS];
};

static struct cap_file local_file;
static struct cap_file *cf;
static int cap_fd = -1;
static int my_slot = -1;

/* Start time (field 22 of /proc/PID/stat), 0 when the process is gone or a zombie. */
static uint64_t proc_start(pid_t pid)
{
    char path[64], buf[1024], state;
    unsigned long long start = 0;
    const char *p;
    FILE *f;
    size_t n;

    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    f = fopen(path, "r");
    if (!f)
        return 0;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    p = strrchr(buf, ')');
    /* after ") ": state, then fields 4..21, then starttime */
    if (!p || sscanf(p + 2,
                     "%c %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s "
                     "%*s %*s %*s %llu",
                     &state, &start) != 2)
        return 0;
    return state == 'Z' || state == 'X' ? 0 : (uint64_t)start;
}

static void cap_path(char *buf, size_t len)
{
    char name[64];
    size_t i;

    for (i = 0; emu.cfg.name[i] && i < sizeof name - 1; i++) {
        char ch = emu.cfg.name[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' || ch == '.';
        name[i] = ok ? ch : '_';
    }
    name[i] = '\0';
    snprintf(buf, len, "/dev/shm/fragless-emu-%u-%s", (unsigned)getuid(), name);
}

/* Opens (creating) the shared file and claims this process's slot. A file unlinked by its
 * last user between our open and our lock is left for a fresh one. */
static int cap_open_file(const char *path)
{
    struct stat st, named;

    for (int tries = 0; tries < 8; tries++) {
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0)
            return -1;
        if (flock(fd, LOCK_EX) == 0 && fstat(fd, &st) == 0 && stat(path, &named) == 0 &&
            st.st_ino == named.st_ino && st.st_dev == named.st_dev)
            return fd; /* locked */
        close(fd);
    }
    return -1;
}

static struct cap_slot *cap_mine(struct cap_file *f);
static void cap_reap(struct cap_file *f);

#define SWEEP_MAX 64

/* Whether the file at `path` only has slots of dead processes; removes it then. */
static void cap_sweep_one(const char *path)
{
    struct cap_file *f;
    struct stat st;
    bool live = false;
    int fd = open(path, O_RDWR | O_CLOEXEC);

    if (fd < 0)
        return;
    /* a file still being set up (or not ours) is too short to read: leave it */
    if (flock(fd, LOCK_EX | LOCK_NB) != 0 || fstat(fd, &st) != 0 || (size_t)st.st_size < sizeof *f)
        goto close_fd;
    f = mmap(NULL, sizeof *f, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (f == MAP_FAILED)
        goto close_fd;
    if (f->magic == CAP_MAGIC && f->version == CAP_VERSION) {
        cap_reap(f);
        for (int i = 0; i < CAP_SLOTS; i++)
            live = live || f->slot[i].pid != 0;
        if (!live)
            unlink(path);
    }
    munmap(f, sizeof *f);
close_fd:
    close(fd); /* drops the lock */
}

/* Removes the files of emulated devices whose every user died without cleaning up (killed,
 * or left through _exit), a few per process, so /dev/shm does not fill over many runs. */
static void cap_sweep(const char *own)
{
    char prefix[64], path[512];
    struct dirent *e;
    DIR *d = opendir("/dev/shm");
    int n = 0;

    if (!d)
        return;
    snprintf(prefix, sizeof prefix, "fragless-emu-%u-", (unsigned)getuid());
    while ((e = readdir(d)) && n < SWEEP_MAX) {
        if (strncmp(e->d_name, prefix, strlen(prefix)) != 0)
            continue;
        snprintf(path, sizeof path, "/dev/shm/%s", e->d_name);
        if (strcmp(path, own) != 0) {
            cap_sweep_one(path);
            n++;
        }
    }
    closedir(d);
}

static struct cap_file *cap_open(void)
{
    char path[160];
    struct stat st;
    void *m;

    if (cf)
        return cf;
    cap_path(path, sizeof path);
    cap_sweep(path);
    cap_fd = cap_open_file(path);
    if (cap_fd < 0)
        goto local;
    if (fstat(cap_fd, &st) != 0)
        goto close_fd;
    if ((size_t)st.st_size < sizeof *cf && ftruncate(cap_fd, sizeof *cf) != 0)
        goto close_fd;
    m = mmap(NULL, sizeof *cf, PROT_READ | PROT_WRITE, MAP_SHARED, cap_fd, 0);
    if (m == MAP_FAILED)
        goto close_fd;
    cf = m;
    if (cf->magic != CAP_MAGIC || cf->version != CAP_VERSION) {
        memset(cf, 0, sizeof *cf);
        cf->magic = CAP_MAGIC;
        cf->version = CAP_VERSION;
    }
    cap_mine(cf);
    flock(cap_fd, LOCK_UN);
    return cf;
close_fd:
    close(cap_fd); /* drops the lock */
    cap_fd = -1;
local:
    cf = &local_file;
    return cf;
}

static void cap_lock(void)
{
    if (cap_fd >= 0)
        flock(cap_fd, LOCK_EX);
}

static void cap_unlock(void)
{
    if (cap_fd >= 0)
        flock(cap_fd, LOCK_UN);
}

static void cap_reap(struct cap_file *f)
{
    for (int i = 0; i < CAP_SLOTS; i++) {
        struct cap_slot *s = &f->slot[i];
        if (s->pid == 0 || (s->pid == getpid() && i == my_slot))
            continue;
        if (proc_start(s->pid) != s->start)
            memset(s, 0, sizeof *s);
    }
}

static uint64_t cap_sum(struct cap_file *f, int device)
{
    uint64_t sum = 0;
    for (int i = 0; i < CAP_SLOTS; i++)
        if (f->slot[i].pid)
            sum += f->slot[i].bytes[device];
    return sum;
}

/* This process's slot, claimed on first use (the file lock is held). */
static struct cap_slot *cap_mine(struct cap_file *f)
{
    if (my_slot >= 0 && f->slot[my_slot].pid == getpid())
        return &f->slot[my_slot];
    for (int i = 0; i < CAP_SLOTS; i++) {
        if (f->slot[i].pid == 0) {
            memset(&f->slot[i], 0, sizeof f->slot[i]);
            f->slot[i].pid = getpid();
            f->slot[i].start = proc_start(getpid());
            my_slot = i;
            return &f->slot[i];
        }
    }
    return NULL;
}

CUresult emu_cap_charge(int device, size_t bytes)
{
    struct cap_file *f = cap_open();
    struct cap_slot *mine;
    CUresult r = CUDA_ERROR_OUT_OF_MEMORY;

    cap_lock();
    cap_reap(f);
    mine = cap_mine(f);
    if (mine && cap_sum(f, device) + bytes <= emu.cfg.capacity && bytes <= emu.cfg.capacity) {
        mine->bytes[device] += bytes;
        r = CUDA_SUCCESS;
    }
    cap_unlock();
    return r;
}

void emu_cap_uncharge(int device, size_t bytes)
{
    struct cap_file *f = cap_open();
    struct cap_slot *mine;

    cap_lock();
    mine = cap_mine(f);
    if (mine)
        mine->bytes[device] -= bytes < mine->bytes[device] ? bytes : mine->bytes[device];
    cap_unlock();
}

size_t emu_cap_used(int device)
{
    struct cap_file *f = cap_open();
    uint64_t sum;

    cap_lock();
    cap_reap(f);
    sum = cap_sum(f, device);
    cap_unlock();
    return (size_t)sum;
}

EMU_API size_t fragless_emu_used(int device)
{
    size_t n = 0;

    emu_config();
    if (device < 0 || device >= EMU_MAX_DEVICES)
        return 0;
    emu_lock();
    n = emu_cap_used(device);
    emu_unlock();
    return n;
}

void emu_cap_forget(void)
{
    if (cf && cf != &local_file) {
        munmap(cf, sizeof *cf);
        close(cap_fd);
    }
    cf = NULL;
    cap_fd = -1;
    my_slot = -1;
}

/* At exit the process's bytes go back at once, not only when a reader notices it died;
 * the last process out removes the file. */
__attribute__((destructor)) static void cap_release_at_exit(void)
{
    char path[160];
    bool empty = true;

    if (!cf || cf == &local_file || my_slot < 0 || cf->slot[my_slot].pid != getpid())
        return;
    cap_lock();
    memset(&cf->slot[my_slot], 0, sizeof cf->slot[my_slot]);
    cap_reap(cf);
    for (int i = 0; i < CAP_SLOTS; i++)
        empty = empty && cf->slot[i].pid == 0;
    if (empty) {
        cap_path(path, sizeof path);
        unlink(path);
    }
    cap_unlock();
}
