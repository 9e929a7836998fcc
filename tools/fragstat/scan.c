/*
 * scan.c — finding the stats pages this user may see.
 *
 * Owns: the walk over the page directory, the checks that decide whether a page is shown
 * (name, owner, symlinks, the process behind it) and the removal of stale pages (their process
 * is gone, its pid now belongs to another process — the start time differs — or it has called
 * exec() and no longer maps the page). A user sees
 * only pages they own and whose process is theirs; root sees all.
 */
#include "fragstat.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pageio.h"

static bool may_see(uid_t owner)
{
    uid_t me = geteuid();
    return me == 0 || owner == me;
}

static void remove_stale(int dirfd, const char *name, const char *why, struct fs_scan *out)
{
    if (unlinkat(dirfd, name, 0) == 0) {
        out->removed++;
        fprintf(stderr, "fragstat: removed stale page %s (%s)\n", name, why);
    }
}

/* The process behind the page must belong to the page's owner. */
static bool process_owned_by(int32_t pid, uid_t uid)
{
    char path[64];
    struct stat st;
    snprintf(path, sizeof path, "/proc/%d", (int)pid);
    return stat(path, &st) == 0 && st.st_uid == uid;
}

static int append(struct fs_scan *out, fragless_shm_page_t *page, const char *name)
{
    struct fs_proc *p = realloc(out->procs, (size_t)(out->count + 1) * sizeof *p);
    if (!p)
        return -ENOMEM;
    out->procs = p;
    p[out->count].page = page;
    snprintf(p[out->count].name, sizeof p[out->count].name, "%.63s", name);
    out->count++;
    return 0;
}

struct scan_ctx {
    int32_t want;
    char dir[4096]; /* canonical, as /proc/<pid>/maps names the pages */
    struct fs_scan *out;
};

/* Why a valid page of a live pid is stale, or NULL when it is not. */
static const char *stale_reason(const struct scan_ctx *ctx, const char *name,
                                const fragless_shm_page_t *page, uint64_t started)
{
    char path[4200];
    if (page->start_time != started)
        return "pid reused by another process";
    snprintf(path, sizeof path, "%s/%s", ctx->dir, name);
    if (!pio_maps_file(page->pid, path))
        return "the process no longer maps it (exec)";
    return NULL;
}

/* Reads the page in `fd` (owner already checked) and keeps it when it is valid and live. */
static int read_live(const struct scan_ctx *ctx, int dirfd, int fd, const char *name, int32_t pid,
                     uid_t uid)
{
    struct fs_scan *out = ctx->out;
    uint64_t started = 0;
    int r = pio_start_time(pid, &started);
    if (r == -ENOENT) {
        remove_stale(dirfd, name, "process gone", out);
        return 0;
    }
    fragless_shm_page_t *page = malloc(sizeof *page);
    if (!page)
        return -ENOMEM;
    char why[96] = "";
    enum pio_status st = pio_read_page(fd, page, why, sizeof why);
    if (st == PIO_OK && (page->pid != pid || page->uid != uid)) {
        st = PIO_INVALID;
        snprintf(why, sizeof why, "pid or uid inside does not match the name");
    }
    const char *stale = st == PIO_OK && r == 0 ? stale_reason(ctx, name, page, started) : NULL;
    if (stale) {
        remove_stale(dirfd, name, stale, out);
        st = PIO_NOT_READY;
    } else if (st == PIO_OK && !process_owned_by(pid, uid)) {
        st = PIO_INVALID;
        snprintf(why, sizeof why, "process %d does not belong to the page's owner", (int)pid);
    }
    if (st == PIO_INVALID || st == PIO_BUSY || st == PIO_IO) {
        out->invalid++;
        fprintf(stderr, "fragstat: skipping %s: %s\n", name,
                st == PIO_INVALID ? why
                : st == PIO_BUSY  ? "changing too fast"
                                  : "read error");
    }
    if (st != PIO_OK) {
        free(page);
        return 0;
    }
    if (append(out, page, name) != 0) {
        free(page);
        return -ENOMEM;
    }
    return 0;
}

static int scan_one(int dirfd, const char *name, uint32_t uid, int32_t pid, void *arg)
{
    struct scan_ctx *ctx = arg;
    struct fs_scan *out = ctx->out;
    if (ctx->want && pid != ctx->want)
        return 0;
    int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        if (errno == EACCES || errno == EPERM)
            out->denied++;
        else if (errno == ELOOP)
            fprintf(stderr, "fragstat: skipping %s: a symbolic link\n", name);
        return 0;
    }
    int r = 0;
    struct stat st;
    if (fstat(fd, &st) != 0)
        goto close_fd;
    if (!may_see(st.st_uid)) {
        out->denied++;
        goto close_fd;
    }
    if (st.st_uid != uid) {
        out->invalid++;
        fprintf(stderr, "fragstat: skipping %s: owned by uid %u, not the uid in its name\n", name,
                (unsigned)st.st_uid);
        goto close_fd;
    }
    r = read_live(ctx, dirfd, fd, name, pid, uid);
close_fd:
    close(fd);
    return r;
}

static int by_pid(const void *a, const void *b)
{
    const struct fs_proc *x = a, *y = b;
    return (x->page->pid > y->page->pid) - (x->page->pid < y->page->pid);
}

int fs_scan(const char *dir, int32_t pid, struct fs_scan *out)
{
    memset(out, 0, sizeof *out);
    static struct scan_ctx ctx;
    ctx.want = pid;
    ctx.out = out;
    if (!realpath(dir, ctx.dir))
        return -errno;
    int r = pio_each_name(dir, scan_one, &ctx);
    if (out->count > 1)
        qsort(out->procs, (size_t)out->count, sizeof *out->procs, by_pid);
    return r;
}

void fs_scan_free(struct fs_scan *s)
{
    for (int i = 0; i < s->count; i++)
        free(s->procs[i].page);
    free(s->procs);
    memset(s, 0, sizeof *s);
}

int fs_open_page(const char *dir, int32_t pid)
{
    struct fs_scan s;
    int r = fs_scan(dir, pid, &s);
    if (r != 0 || s.count == 0) {
        r = s.denied ? -FS_EXIT_DENIED : -FS_EXIT_NOT_FOUND;
        fs_scan_free(&s);
        return r;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, s.procs[0].name);
    uint32_t uid = s.procs[0].page->uid;
    fs_scan_free(&s);
    int fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return errno == EACCES || errno == EPERM ? -FS_EXIT_DENIED : -FS_EXIT_NOT_FOUND;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || !may_see(st.st_uid) || st.st_uid != uid ||
        (uint64_t)st.st_size != sizeof(fragless_shm_page_t)) {
        close(fd);
        return -FS_EXIT_DENIED;
    }
    return fd;
}
