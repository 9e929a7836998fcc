/*
 * test_fragstat_pages.c — fragstat against hand-made pages in a private directory (--dir):
 * a valid page is shown with its numbers in every output; truncated, oversized, garbage and
 * subtly damaged pages are skipped without a crash; symlinks are not followed; stale pages
 * (process gone, pid reused) are removed; another user's page is neither shown nor acted on.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fragless_shm.h"
#include "pageio.h"
#include "testutil.h"

static char dir[64];
static fragless_shm_page_t page;

static void make_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/fragstat-pages-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    chmod(dir, 0755);
}

static void remove_dir(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_expect_eq(system(cmd), 0);
}

/* A page for process `pid` (which must be alive for it to be shown) with one device. */
static void fill_page(fragless_shm_page_t *p, int pid)
{
    memset(p, 0, sizeof *p);
    p->magic = FRAGLESS_SHM_MAGIC;
    p->version = FRAGLESS_SHM_VERSION;
    p->header_size = offsetof(fragless_shm_page_t, devices);
    p->size = sizeof *p;
    p->device_size = sizeof(fragless_shm_device_t);
    p->max_devices = FRAGLESS_SHM_MAX_DEVICES;
    p->max_segments = FRAGLESS_SHM_MAX_SEGMENTS;
    p->pid = pid;
    p->uid = geteuid();
    p->update_ms = FRAGLESS_SHM_UPDATE_MS;
    cr_assert_eq(pio_start_time(pid, &p->start_time), 0);
    snprintf(p->command, sizeof p->command, "train.py --epochs 3");
    snprintf(p->config, sizeof p->config, "stats_page:true\n");
    p->device_count = 1;
    fragless_shm_device_t *d = &p->devices[0];
    d->device = 0;
    d->pci_domain = 0;
    d->pci_bus = 0x65;
    d->pci_device = 0;
    d->total_bytes = 24ull << 30;
    d->stats.size = sizeof d->stats;
    d->stats.version = FRAGLESS_STATS_VERSION;
    d->stats.allocated_bytes.current = 3ull << 30;
    d->stats.allocated_bytes.peak = 5ull << 30;
    d->stats.reserved_bytes.current = 4ull << 30;
    d->stats.reserved_bytes.peak = 6ull << 30;
    d->stats.reserved_unallocated_bytes.current = 1ull << 30;
    d->stats.largest_free_block_bytes.current = 256ull << 20;
    d->stats.num_ooms = 2;
    d->stats.num_allocs = 12345;
    d->segment_total = 1;
    d->segment_count = 1;
    d->segments[0].base = 0x7f0000000000ull;
    d->segments[0].size = 4ull << 30;
    d->segments[0].allocated = 3ull << 30;
    d->segments[0].free_mapped = 1ull << 30;
    memset(d->segments[0].map, '#', 48);
    memset(d->segments[0].map + 48, '.', 16);
}

static void page_name(char *buf, size_t len, unsigned uid, int pid)
{
    snprintf(buf, len, "%s/" FRAGLESS_SHM_PREFIX "%u.%d", dir, uid, pid);
}

static void write_file(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
    cr_assert_eq(write(fd, data, len), (ssize_t)len);
    close(fd);
}

/* Writes the page and maps it, as the library does: fragstat shows only pages their process
 * maps. */
static void write_page(const fragless_shm_page_t *p, size_t len)
{
    char path[128];
    page_name(path, sizeof path, p->uid, p->pid);
    write_file(path, p, len);
    int fd = open(path, O_RDONLY);
    cr_assert_geq(fd, 0);
    cr_assert_neq(mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0), MAP_FAILED);
    close(fd);
}

static int fragstat(struct tu_result *r, const char *a1, const char *a2, const char *a3)
{
    const char *argv[] = {tu_path("fragstat"), "--dir", dir, a1, a2, a3, NULL};
    return tu_run(r, false, argv, NULL, 20);
}

TestSuite(fragstat_pages, .init = make_dir, .fini = remove_dir);

Test(fragstat_pages, valid_page_in_every_output)
{
    struct tu_result r;
    fill_page(&page, getpid());
    write_page(&page, sizeof page);

    cr_assert_eq(fragstat(&r, NULL, NULL, NULL), 0, "%s", r.err);
    cr_expect(strstr(r.out, "train.py") && strstr(r.out, "3.00 GiB") && strstr(r.out, "4.00 GiB"),
              "%s", r.out);
    cr_expect(strstr(r.out, "1.00 GiB") && strstr(r.out, "75.0%"), "%s", r.out);
    cr_expect(strstr(r.out, "0000:65:00.0") && strstr(r.out, "24.00 GiB total"), "%s", r.out);
    tu_result_free(&r);

    cr_assert_eq(fragstat(&r, "--json", NULL, NULL), 0, "%s", r.err);
    char want[128];
    snprintf(want, sizeof want, "\"%d\":{\"pid\":%d", getpid(), getpid());
    cr_expect(strstr(r.out, want), "%s", r.out);
    cr_expect(strstr(r.out, "\"reserved_bytes\":{\"current\":4294967296,\"peak\":6442450944}"),
              "%s", r.out);
    cr_expect(strstr(r.out, "\"reserved_unallocated_bytes\":{\"current\":1073741824,"), "%s",
              r.out);
    cr_expect(strstr(r.out, "\"num_ooms\":2"), "%s", r.out);
    cr_expect(strstr(r.out, "\"config\":\"stats_page:true\\u000a\""), "%s", r.out);
    tu_result_free(&r);

    cr_assert_eq(fragstat(&r, "--prometheus", NULL, NULL), 0, "%s", r.err);
    snprintf(want, sizeof want, "fragless_reserved_bytes{pid=\"%d\",gpu=\"0\",hostname=\"",
             getpid());
    cr_expect(strstr(r.out, want) && strstr(r.out, "\"} 4294967296\n"), "%s", r.out);
    cr_expect(strstr(r.out, "# TYPE fragless_num_ooms_total counter\n"), "%s", r.out);
    cr_expect(strstr(r.out, "# TYPE fragless_reserved_peak_bytes gauge\n"), "%s", r.out);
    cr_expect(strstr(r.out, "# HELP fragless_allocated_bytes "), "%s", r.out);
    tu_result_free(&r);

    char sp[16];
    snprintf(sp, sizeof sp, "%d", getpid());
    cr_assert_eq(fragstat(&r, "--segments", sp, NULL), 0, "%s", r.err);
    cr_expect(strstr(r.out, "[################################################................]"),
              "%s", r.out);
    tu_result_free(&r);

    cr_expect_eq(fragstat(&r, "--device", "1", NULL), 1, "no device 1: %s", r.out);
    tu_result_free(&r);
    cr_expect_eq(fragstat(&r, "--pid", "12abc", NULL), 2, "bad pid");
    tu_result_free(&r);
}

Test(fragstat_pages, output_file_is_written_whole)
{
    struct tu_result r;
    fill_page(&page, getpid());
    write_page(&page, sizeof page);
    char out[128], tmp[160];
    snprintf(out, sizeof out, "%s/metrics.prom", dir);
    cr_assert_eq(fragstat(&r, "--prometheus", "--output", out), 0, "%s", r.err);
    cr_expect_str_empty(r.out);
    tu_result_free(&r);
    FILE *f = fopen(out, "r");
    cr_assert_not_null(f);
    char buf[512] = "";
    cr_expect_gt(fread(buf, 1, sizeof buf - 1, f), 0);
    fclose(f);
    cr_expect(strncmp(buf, "# HELP fragless_", 16) == 0, "%s", buf);
    snprintf(tmp, sizeof tmp, "%s.tmp.", out);
    cr_expect_eq(access(tmp, F_OK), -1, "no temporary file left");
}

static void expect_skipped(const char *what)
{
    struct tu_result r;
    int rc = fragstat(&r, "--json", NULL, NULL);
    cr_expect_eq(rc, 1, "%s: exit %d, stderr %s", what, rc, r.err);
    cr_expect(strstr(r.out, "\"processes\":{}"), "%s: %s", what, r.out);
    tu_result_free(&r);
    rc = fragstat(&r, NULL, NULL, NULL);
    cr_expect_eq(rc, 1, "%s: table exit %d", what, rc);
    tu_result_free(&r);
}

Test(fragstat_pages, truncated_oversized_and_garbage_pages)
{
    fill_page(&page, getpid());
    write_page(&page, sizeof page / 2);
    expect_skipped("truncated");
    write_page(&page, 100);
    expect_skipped("truncated header");

    char *big = calloc(1, sizeof page + 4096);
    memcpy(big, &page, sizeof page);
    write_page((fragless_shm_page_t *)big, sizeof page + 4096);
    expect_skipped("oversized");

    srand(7);
    for (size_t i = 0; i < sizeof page + 4096; i++)
        big[i] = (char)rand();
    char path[128];
    page_name(path, sizeof path, geteuid(), getpid());
    write_file(path, big, sizeof page);
    expect_skipped("garbage");
    free(big);
}

Test(fragstat_pages, damaged_fields_are_rejected)
{
    fill_page(&page, getpid());
    page.device_count = 1000;
    write_page(&page, sizeof page);
    expect_skipped("device_count");

    fill_page(&page, getpid());
    page.devices[0].segment_count = 100000;
    write_page(&page, sizeof page);
    expect_skipped("segment_count");

    fill_page(&page, getpid());
    memset(page.command, 'x', sizeof page.command);
    write_page(&page, sizeof page);
    expect_skipped("command");

    fill_page(&page, getpid());
    memset(page.config, 'x', sizeof page.config);
    write_page(&page, sizeof page);
    expect_skipped("config");

    fill_page(&page, getpid());
    page.devices[0].segments[0].map[3] = '\n';
    write_page(&page, sizeof page);
    expect_skipped("map");

    fill_page(&page, getpid());
    page.devices[0].stats.size = 1u << 30;
    write_page(&page, sizeof page);
    expect_skipped("stats size");

    fill_page(&page, getpid());
    page.version = FRAGLESS_SHM_VERSION + 1;
    write_page(&page, sizeof page);
    expect_skipped("version");

    fill_page(&page, getpid());
    page.devices[0].seq = 1; /* a writer that never finishes */
    write_page(&page, sizeof page);
    expect_skipped("odd sequence counter");
}

Test(fragstat_pages, symlinks_are_not_followed)
{
    char target[128], link[128];
    fill_page(&page, getpid());
    snprintf(target, sizeof target, "%s/elsewhere", dir);
    write_file(target, &page, sizeof page);
    page_name(link, sizeof link, geteuid(), getpid());
    cr_assert_eq(symlink(target, link), 0);
    expect_skipped("symlink");
}

Test(fragstat_pages, stale_pages_are_removed)
{
    pid_t child = fork();
    if (child == 0)
        _exit(0);
    fill_page(&page, getpid());
    page.pid = child;
    waitpid(child, NULL, 0);
    write_page(&page, sizeof page); /* process gone */
    char gone[128], reused[128];
    page_name(gone, sizeof gone, geteuid(), child);

    fill_page(&page, getppid());
    page.start_time += 1; /* the pid now belongs to another process */
    write_page(&page, sizeof page);
    page_name(reused, sizeof reused, geteuid(), getppid());

    fill_page(&page, getpid()); /* alive, but not mapped by us: we "called exec()" since */
    char unmapped[128];
    page_name(unmapped, sizeof unmapped, geteuid(), getpid());
    write_file(unmapped, &page, sizeof page);

    struct tu_result r;
    cr_expect_eq(fragstat(&r, NULL, NULL, NULL), 1, "%s", r.err);
    cr_expect(strstr(r.err, "process gone") && strstr(r.err, "pid reused") &&
                  strstr(r.err, "no longer maps it"),
              "%s", r.err);
    tu_result_free(&r);
    cr_expect_eq(access(gone, F_OK), -1, "page of a dead process removed");
    cr_expect_eq(access(reused, F_OK), -1, "page of a reused pid removed");
    cr_expect_eq(access(unmapped, F_OK), -1, "page its process no longer maps removed");
}

/* Runs fragstat as the user `nobody`; returns its exit status. */
static int fragstat_as_nobody(const char *a1, const char *a2, char *out, size_t outlen)
{
    struct passwd *pw = getpwnam("nobody");
    cr_assert_not_null(pw);
    int pipefd[2];
    cr_assert_eq(pipe(pipefd), 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pipefd[1], 1);
        dup2(pipefd[1], 2);
        if (setgid(pw->pw_gid) || setuid(pw->pw_uid))
            _exit(100);
        execl(tu_path("fragstat"), "fragstat", "--dir", dir, a1, a2, (char *)NULL);
        _exit(101);
    }
    close(pipefd[1]);
    ssize_t n = read(pipefd[0], out, outlen - 1);
    out[n > 0 ? n : 0] = '\0';
    close(pipefd[0]);
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

Test(fragstat_pages, other_users_pages_are_invisible)
{
    if (geteuid() != 0)
        cr_skip_test("needs root to act as another user");
    char out[1024], sp[16];
    fill_page(&page, getpid());
    write_page(&page, sizeof page); /* root's page, root's process */
    snprintf(sp, sizeof sp, "%d", getpid());

    cr_expect_eq(fragstat_as_nobody("--pid", sp, out, sizeof out), 3, "%s", out);
    cr_expect_eq(fragstat_as_nobody("--empty-cache", sp, out, sizeof out), 3, "%s", out);
    cr_expect_eq(fragstat_as_nobody("--json", NULL, out, sizeof out), 1, "%s", out);
    cr_expect_null(strstr(out, "train.py"), "%s", out);

    /* a page chowned to nobody but naming root's process is not shown to nobody either */
    struct passwd *pw = getpwnam("nobody");
    page.uid = pw->pw_uid;
    write_page(&page, sizeof page);
    char path[128];
    page_name(path, sizeof path, pw->pw_uid, getpid());
    cr_assert_eq(chown(path, pw->pw_uid, pw->pw_gid), 0);
    cr_expect_eq(fragstat_as_nobody("--pid", sp, out, sizeof out), 3, "%s", out);
    cr_expect_null(strstr(out, "train.py"), "%s", out);
}

Test(fragstat_pages, interval_and_count_refresh)
{
    struct tu_result r;
    fill_page(&page, getpid());
    write_page(&page, sizeof page);
    cr_assert_eq(fragstat(&r, "--interval", "0.05", "--count"), 2, "--count needs a value");
    tu_result_free(&r);
    const char *argv[] = {tu_path("fragstat"), "--dir", dir, "--interval", "0.05",
                          "--count",           "3",     NULL};
    cr_assert_eq(tu_run(&r, false, argv, NULL, 20), 0, "%s", r.err);
    int tables = 0;
    for (const char *p = r.out; (p = strstr(p, "PID ")) != NULL; p++)
        tables++;
    cr_expect_eq(tables, 3, "%s", r.out);
    tu_result_free(&r);
    cr_expect_eq(fragstat(&r, "--count", "3", NULL), 2, "--count without --interval");
    tu_result_free(&r);
    cr_expect_eq(fragstat(&r, "--json", "--segments", "1"), 2, "two modes");
    tu_result_free(&r);
}
