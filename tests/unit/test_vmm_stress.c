/*
 * test_vmm_stress.c — thousands of random map / unmap / move / release-spare operations over
 * two ranges, some under injected faults, checked after every step against a model of which
 * page holds which data: every page keeps its data wherever it moves, the walker agrees, and
 * the device's memory in use is exactly the mapped plus the spare pages.
 */
#include <pthread.h>

#include "test_vmm.h"

#define PAGES 24
#define STEPS 3000

struct model {
    struct vrange *r[2];
    uint32_t tag[2][PAGES]; /* 0: unmapped; else the tag written to the page */
    uint32_t next_tag;
    unsigned seed;
};

static size_t pick(struct model *m, size_t n)
{
    return (size_t)rand_r(&m->seed) % n;
}

static size_t mapped_pages(const struct model *m)
{
    size_t n = 0;
    for (int k = 0; k < 2; k++)
        for (size_t i = 0; i < PAGES; i++)
            n += m->tag[k][i] != 0;
    return n;
}

static void check(const struct model *m, int step)
{
    for (int k = 0; k < 2; k++) {
        cr_assert(vrange_is_valid(m->r[k]), "step %d (seed %u)", step, m->seed);
        for (size_t i = 0; i < PAGES; i++) {
            bool ready = vrange_ready_in(m->r[k], i * VT_PAGE, VT_PAGE) == VT_PAGE;
            cr_assert_eq(ready, m->tag[k][i] != 0, "step %d: range %d page %zu", step, k, i);
            cr_assert(!ready || vt_holds(m->r[k], i, m->tag[k][i]),
                      "step %d: range %d page %zu lost its data", step, k, i);
        }
    }
    cr_assert_eq(vt_used(), mapped_pages(m) * VT_PAGE + vmm_spare_bytes(0), "step %d", step);
}

/* Arms one fault in about one step out of eight. */
static void maybe_fault(struct model *m)
{
    static const char *const names[] = {"cuMemCreate", "cuMemMap", "cuMemSetAccess", "cuMemUnmap",
                                        "cuMemRelease"};
    char spec[64];
    if (pick(m, 8) != 0)
        return;
    snprintf(spec, sizeof(spec), "%s@%zu", names[pick(m, FL_ARRAY_SIZE(names))], 1 + pick(m, 3));
    vt_fail(spec);
}

static void step_map(struct model *m, int k)
{
    size_t off = pick(m, PAGES * VT_PAGE);
    size_t len = 1 + pick(m, (PAGES * VT_PAGE - off) / 3 + 1);
    if (vrange_map(m->r[k], off, len) != CUDA_SUCCESS)
        return;
    for (size_t i = off / VT_PAGE; i <= (off + len - 1) / VT_PAGE; i++) {
        if (m->tag[k][i])
            continue;
        m->tag[k][i] = m->next_tag++;
        vt_write(m->r[k], i, m->tag[k][i]);
    }
}

/* An unmap may stop at a failing run: the pages it reached are gone, the rest kept. */
static void step_unmap(struct model *m, int k)
{
    size_t off = pick(m, PAGES * VT_PAGE);
    size_t len = pick(m, PAGES * VT_PAGE - off + 1);
    vrange_unmap(m->r[k], off, len, pick(m, 2));
    for (size_t i = 0; i < PAGES; i++)
        if (vrange_ready_in(m->r[k], i * VT_PAGE, VT_PAGE) == 0)
            m->tag[k][i] = 0;
}

static bool all_unmapped(const struct model *m, int k, size_t first, size_t n)
{
    for (size_t i = first; i < first + n; i++)
        if (m->tag[k][i])
            return false;
    return true;
}

static void step_move(struct model *m, int from, int to)
{
    size_t n = 1 + pick(m, PAGES / 2);
    size_t so = pick(m, PAGES - n + 1), dof = pick(m, PAGES - n + 1);
    bool legal = all_unmapped(m, to, dof, n);
    CUresult err = vrange_move(m->r[from], so * VT_PAGE, m->r[to], dof * VT_PAGE, n * VT_PAGE);
    if (!legal) {
        cr_assert_eq(err, CUDA_ERROR_INVALID_VALUE);
        return;
    }
    if (err != CUDA_SUCCESS)
        return;
    uint32_t moved[PAGES];
    for (size_t i = 0; i < n; i++) {
        moved[i] = m->tag[from][so + i];
        m->tag[from][so + i] = 0;
    }
    for (size_t i = 0; i < n; i++)
        m->tag[to][dof + i] = moved[i];
}

Test(vmm_stress, random_cycles_keep_data_and_state, .init = vt_start_default, .timeout = 300)
{
    struct model m = {.next_tag = 1, .seed = 12345};
    const char *seed = getenv("FRAGLESS_TEST_SEED");
    if (seed)
        m.seed = (unsigned)strtoul(seed, NULL, 0);
    m.r[0] = vt_reserve(PAGES);
    m.r[1] = vt_reserve(PAGES);
    uint64_t moved_before = 0, moved_after = 0;
    vmm_page_counters(0, NULL, NULL, &moved_before);

    for (int step = 0; step < STEPS; step++) {
        int k = (int)pick(&m, 2);
        maybe_fault(&m);
        switch (pick(&m, 7)) {
        case 0:
        case 1:
            step_map(&m, k);
            break;
        case 2:
        case 3:
            step_unmap(&m, k);
            break;
        case 4:
            step_move(&m, k, 1 - k);
            break;
        case 5:
            step_move(&m, k, k);
            break;
        default:
            if (pick(&m, 4) == 0)
                vmm_release_spare(0, NULL);
            break;
        }
        vt_fail(NULL);
        check(&m, step);
    }
    vmm_page_counters(0, NULL, NULL, &moved_after);
    cr_assert_gt(moved_after, moved_before);
    vt_finish(m.r[0], m.r[1]);
}

/* Threads with a range each share the device's spare list: pages go back and forth between
 * them through it while spare pages are also released. */
#define THREADS      4
#define THREAD_STEPS 400

struct worker {
    struct vrange *r;
    unsigned seed;
    bool ok;
};

static void *worker_run(void *arg)
{
    struct worker *w = arg;
    w->ok = true;
    for (int step = 0; step < THREAD_STEPS && w->ok; step++) {
        size_t page = (size_t)rand_r(&w->seed) % 4;
        switch (rand_r(&w->seed) % 4) {
        case 0:
        case 1:
            w->ok =
                vrange_map(w->r, page * VT_PAGE, 2 * VT_PAGE - page / 3 * VT_PAGE) == CUDA_SUCCESS;
            break;
        case 2:
            w->ok = vrange_unmap(w->r, 0, 4 * VT_PAGE, true) == CUDA_SUCCESS;
            break;
        default:
            w->ok = vmm_release_spare(0, NULL) == CUDA_SUCCESS;
            break;
        }
        w->ok = w->ok && vrange_is_valid(w->r);
    }
    return NULL;
}

Test(vmm_stress, threads_share_the_spare_list, .init = vt_start_default, .timeout = 300)
{
    struct worker w[THREADS];
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (struct worker){.r = vt_reserve(4), .seed = 7u + (unsigned)i};
        cr_assert_eq(pthread_create(&t[i], NULL, worker_run, &w[i]), 0);
    }
    size_t mapped = 0;
    for (int i = 0; i < THREADS; i++) {
        cr_assert_eq(pthread_join(t[i], NULL), 0);
        cr_assert(w[i].ok, "thread %d failed", i);
        mapped += vrange_mapped_bytes(w[i].r);
    }
    cr_assert_eq(vt_used(), mapped + vmm_spare_bytes(0));
    uint64_t created = 0, released = 0;
    vmm_page_counters(0, &created, &released, NULL);
    cr_assert_eq((created - released) * VT_PAGE, vt_used());
    for (int i = 0; i < THREADS; i++)
        vrange_destroy(w[i].r);
    vt_finish(NULL, NULL);
}
