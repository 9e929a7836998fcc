/*
 * segmap.c — which device's heap owns an address.
 *
 * Owns: a sorted array of every segment's address range, for all devices, behind one
 * read-write lock. Reads (every free, every pointer query) are a binary search under the read
 * lock; writes happen only when a segment is created or released. Lets heap_free and
 * heap_lookup find the heap of a pointer without knowing its device, and tell fragless
 * pointers from foreign ones.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct segmap_entry {
    CUdeviceptr base;
    size_t size;
    int device;
    struct segment *seg;
};

static pthread_rwlock_t segmap_lock = PTHREAD_RWLOCK_INITIALIZER;
static struct segmap_entry *entries;
static size_t nentries, capacity;

/* Index of the first entry whose base is > ptr. */
static size_t upper_bound(CUdeviceptr ptr)
{
    size_t lo = 0, hi = nentries;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (entries[mid].base <= ptr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static bool grow(void)
{
    size_t cap = capacity ? capacity * 2 : 64;
    struct segmap_entry *e = realloc(entries, cap * sizeof *e);
    if (!e)
        return false;
    entries = e;
    capacity = cap;
    return true;
}

bool segmap_insert(struct segment *seg, int device)
{
    bool ok = true;
    pthread_rwlock_wrlock(&segmap_lock);
    if (nentries == capacity && !grow()) {
        ok = false;
        goto unlock;
    }
    size_t i = upper_bound(seg->base);
    memmove(&entries[i + 1], &entries[i], (nentries - i) * sizeof *entries);
    entries[i] = (struct segmap_entry){seg->base, seg->size, device, seg};
    nentries++;
unlock:
    pthread_rwlock_unlock(&segmap_lock);
    return ok;
}

void segmap_remove(CUdeviceptr base)
{
    pthread_rwlock_wrlock(&segmap_lock);
    size_t i = upper_bound(base);
    if (i > 0 && entries[i - 1].base == base) {
        memmove(&entries[i - 1], &entries[i], (nentries - i) * sizeof *entries);
        nentries--;
    }
    pthread_rwlock_unlock(&segmap_lock);
}

bool segmap_find(CUdeviceptr ptr, int *device, struct segment **seg)
{
    bool found = false;
    pthread_rwlock_rdlock(&segmap_lock);
    size_t i = upper_bound(ptr);
    if (i > 0 && ptr - entries[i - 1].base < entries[i - 1].size) {
        if (device)
            *device = entries[i - 1].device;
        if (seg)
            *seg = entries[i - 1].seg;
        found = true;
    }
    pthread_rwlock_unlock(&segmap_lock);
    return found;
}

void segmap_atfork_prepare(void)
{
    pthread_rwlock_wrlock(&segmap_lock);
}

void segmap_atfork_parent(void)
{
    pthread_rwlock_unlock(&segmap_lock);
}

void segmap_atfork_child(void)
{
    pthread_rwlock_init(&segmap_lock, NULL);
}
