/*
 * reuse.c — stream-ordered safety (DESIGN.md §4 rule 1): when a freed block may be handed out
 * again.
 *
 * Owns: the stream pools (blocks freed by a stream-ordered free, reusable on that stream at
 * once; a per-thread default stream's pool belongs to its thread), their events (one per stream,
 * recorded lazily — only when another stream wants the memory — and polled, never waited on), and
 * the batched device synchronization that makes blocks freed by cudaFree/cuMemFree reusable: one
 * cuCtxSynchronize covers every block freed before it began, and it is done only when it pays.
 * Called with the heap's lock held.
 */
#include <pthread.h>
#include <stdlib.h>

#include "internal.h"

/* Most stream pools a heap keeps; frees on further streams wait for a device sync. */
#define REUSE_MAX_STREAMS 256
/* A sync is worth it once this much is pending: a free/alloc loop then pays one device sync
 * per 64 MiB freed, and pending frees never hold more than that beyond what a sync-per-free
 * allocator would reserve. (A fraction of the reserved bytes instead — an eighth — syncs less
 * but held 0–14 % more at the peak in bench/workloads' traces replayed with plain frees.) */
#define REUSE_SYNC_BATCH  (64 * FL_MiB)

/* Per-thread default streams: one pool per thread, keyed by the address of a thread-local
 * token; when the thread exits, its pools' blocks wait for a device sync (a later thread may
 * get the same token, and the dead thread's stream may still be working). */
static FL_HOT_TLS _Thread_local char thread_token;
static pthread_key_t exit_key;
static pthread_once_t exit_once = PTHREAD_ONCE_INIT;

static void on_thread_exit(void *token)
{
    for (int d = 0; d < FL_MAX_DEVICES; d++) {
        struct heap *h = heap_find(d);
        if (!h)
            continue;
        heap_lock(h);
        reuse_retire(h, (CUstream)token, "its thread exited", false);
        heap_unlock(h);
    }
}

static void exit_key_create(void)
{
    pthread_key_create(&exit_key, on_thread_exit);
}

/* The key of stream's pool for the calling thread. */
static CUstream pool_key(CUstream stream)
{
    if (stream != CU_STREAM_PER_THREAD)
        return stream;
    pthread_once(&exit_once, exit_key_create);
    if (!pthread_getspecific(exit_key))
        pthread_setspecific(exit_key, &thread_token);
    return (CUstream)&thread_token;
}

struct stream_pool *reuse_stream_pool(struct heap *h, CUstream stream, bool create)
{
    CUstream key = pool_key(stream);
    for (int i = 0; i < h->nstreams; i++)
        if (h->streams[i]->stream == key)
            return h->streams[i];
    if (!create || h->nstreams == REUSE_MAX_STREAMS)
        return NULL;
    if (h->nstreams == h->cap_streams) {
        int cap = h->cap_streams ? h->cap_streams * 2 : 4;
        struct stream_pool **a = realloc(h->streams, (size_t)cap * sizeof *a);
        if (!a)
            return NULL;
        stat_add(&h->st.host_metadata_bytes, (int64_t)((cap - h->cap_streams) * sizeof *a));
        h->streams = a;
        h->cap_streams = cap;
    }
    struct stream_pool *sp = calloc(1, sizeof *sp);
    if (!sp)
        return NULL;
    stat_add(&h->st.host_metadata_bytes, (int64_t)sizeof *sp);
    sp->stream = key;
    sp->per_thread = stream == CU_STREAM_PER_THREAD;
    for (int k = 0; k < POOL_KINDS; k++)
        fi_init(&sp->index[k]);
    h->streams[h->nstreams++] = sp;
    return sp;
}

static bool pool_is_empty(const struct stream_pool *sp)
{
    return sp->index[POOL_SMALL].count == 0 && sp->index[POOL_LARGE].count == 0;
}

/* Moves every block freed at or before `seq` out of sp: to the global indexes, or (pend) to
 * the pending list, where the next device sync makes them reusable. */
static void migrate(struct heap *h, struct stream_pool *sp, uint64_t seq, bool pend)
{
    for (int k = 0; k < POOL_KINDS; k++) {
        struct block *list = NULL;
        fi_take_upto(&sp->index[k], seq, &list);
        while (list) {
            struct block *b = list;
            list = b->lnext;
            b->lnext = NULL;
            /* fi_take_upto unlinked it without its share: remove that as it was */
            b->index = &sp->index[k];
            block_account(h, b, -1);
            b->index = NULL;
            if (pend)
                block_pend(h, b);
            else
                block_release_to(h, b, &h->global[k]);
        }
    }
}

static bool record(struct stream_pool *sp, uint64_t seq)
{
    if (!sp->event && drv_event_create(&sp->event, CU_EVENT_DISABLE_TIMING) != CUDA_SUCCESS) {
        sp->event = NULL;
        return false;
    }
    if (drv_event_record(sp->event, sp->per_thread ? CU_STREAM_PER_THREAD : sp->stream) !=
        CUDA_SUCCESS)
        return false;
    sp->event_seq = seq;
    sp->event_pending = true;
    return true;
}

/* False if the event could not be queried (the stream or context is gone or broken). */
static bool poll(struct heap *h, struct stream_pool *sp)
{
    CUresult r = drv_event_query(sp->event);
    if (r == CUDA_ERROR_NOT_READY)
        return true;
    sp->event_pending = false;
    if (r != CUDA_SUCCESS)
        return false;
    migrate(h, sp, sp->event_seq, false);
    return true;
}

/* A stream pool whose events fail (its stream was destroyed, or events ran out): its blocks
 * wait for a device sync on the pending list, and the pool goes. */
/* Pool i goes, its blocks to the pending list. Its event is destroyed unless its context is
 * gone already (the driver destroyed the event with it, and its handle may belong to another
 * event by now). */
static void retire(struct heap *h, int i, const char *why, bool context_gone)
{
    struct stream_pool *sp = h->streams[i];
    log_debug("stream %p: %s; its %zu freed bytes wait for a device sync", (void *)sp->stream, why,
              sp->index[POOL_SMALL].bytes + sp->index[POOL_LARGE].bytes);
    migrate(h, sp, UINT64_MAX, true);
    if (sp->event && !context_gone)
        drv_event_destroy(sp->event);
    h->streams[i] = h->streams[--h->nstreams];
    stat_add(&h->st.host_metadata_bytes, -(int64_t)sizeof *sp);
    free(sp);
}

void reuse_collect(struct heap *h)
{
    for (int i = 0; i < h->nstreams; i++) {
        struct stream_pool *sp = h->streams[i];
        /* another thread's per-thread stream cannot be named from here */
        bool foreign = sp->per_thread && sp->stream != (CUstream)&thread_token;
        if (pool_is_empty(sp) || (foreign && !sp->event_pending))
            continue;
        bool ok = sp->event_pending || record(sp, h->free_seq);
        if (ok && sp->event_pending)
            ok = poll(h, sp);
        if (!ok)
            retire(h, i--, "its events are unavailable", false);
    }
}

bool reuse_has_pending(const struct heap *h)
{
    if (h->pending)
        return true;
    for (int i = 0; i < h->nstreams; i++)
        if (!pool_is_empty(h->streams[i]))
            return true;
    return false;
}

bool reuse_sync_pays(const struct heap *h, size_t rounded)
{
    if (h->pending_bytes < rounded)
        return false; /* the sync would not give this request what it needs */
    size_t in_regions =
        atomic_load_explicit(&h->fronts, memory_order_relaxed) ? front_pending(h) : 0;
    return h->pending_bytes + in_regions >= REUSE_SYNC_BATCH;
}

bool reuse_sync_pays_region(size_t pending)
{
    return pending >= REUSE_SYNC_BATCH;
}

CUresult reuse_device_sync(struct heap *h)
{
    uint64_t seq = h->free_seq;
    uint64_t n = atomic_fetch_add(&h->syncs_begun, 1) + 1;
    heap_unlock(h);
    CUresult r = drv_ctx_synchronize();
    heap_lock(h);
    if (r != CUDA_SUCCESS)
        return r;
    if (n > atomic_load_explicit(&h->syncs_done, memory_order_relaxed))
        atomic_store_explicit(&h->syncs_done, n, memory_order_release);
    h->st.num_device_syncs++;
    struct block *b = h->pending;
    while (b) {
        struct block *next = b->lnext;
        if (b->free_seq <= seq) {
            block_detach(h, b);
            block_release_to(h, b, &h->global[b->seg->pool]);
        }
        b = next;
    }
    for (int i = 0; i < h->nstreams; i++)
        migrate(h, h->streams[i], seq, false);
    return CUDA_SUCCESS;
}

void reuse_retire(struct heap *h, CUstream key, const char *why, bool context_gone)
{
    for (int i = 0; i < h->nstreams; i++)
        if (!key || h->streams[i]->stream == key)
            retire(h, i--, why, context_gone);
}

int reuse_drop_idle(struct heap *h, CUevent *events, int max)
{
    int n = 0, kept = 0;
    for (int i = 0; i < h->nstreams; i++) {
        struct stream_pool *sp = h->streams[i];
        if (!pool_is_empty(sp) || n == max) {
            h->streams[kept++] = sp;
            continue;
        }
        if (sp->event)
            events[n++] = sp->event;
        stat_add(&h->st.host_metadata_bytes, -(int64_t)sizeof *sp);
        free(sp);
    }
    h->nstreams = kept;
    return n;
}
