/*
 * arena.c — the physical memory of each emulated device: one sparse memfd per device, from
 * which cuMemCreate handles take ranges. Pages are committed only when touched, and a
 * released range is punched out (its memory goes back) and reused for a handle of the same
 * size. One descriptor per device, however many handles, so a job with tens of thousands
 * of 2 MiB pages does not run out of file descriptors.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "emu.h"

/* Offset space of each device's file: far above any capacity, and sparse. */
#define ARENA_SPAN ((uint64_t)1 << 46)

struct free_ranges {
    size_t size;
    uint64_t *offs;
    size_t n, cap;
    UT_hash_handle hh;
};

struct arena {
    bool opened;
    int fd;
    uint64_t next;
    struct free_ranges *free; /* by size */
};

static struct arena arenas[EMU_MAX_DEVICES];

static bool arena_open(struct arena *a, int device)
{
    char name[32];

    if (a->opened)
        return true;
    snprintf(name, sizeof name, "fragless-emu-dev%d", device);
    a->fd = memfd_create(name, MFD_CLOEXEC);
    if (a->fd < 0)
        return false;
    if (ftruncate(a->fd, (off_t)ARENA_SPAN) != 0) {
        close(a->fd);
        return false;
    }
    a->opened = true;
    return true;
}

int emu_arena_fd(int device)
{
    return arenas[device].fd;
}

static bool reuse(struct arena *a, size_t size, uint64_t *off)
{
    struct free_ranges *fr = NULL;

    HASH_FIND(hh, a->free, &size, sizeof size, fr);
    if (!fr || fr->n == 0)
        return false;
    *off = fr->offs[--fr->n];
    return true;
}

CUresult emu_arena_take(int device, size_t size, uint64_t *off)
{
    struct arena *a = &arenas[device];

    if (!arena_open(a, device))
        return CUDA_ERROR_OUT_OF_MEMORY;
    if (reuse(a, size, off))
        return CUDA_SUCCESS;
    if (size > ARENA_SPAN - a->next)
        return CUDA_ERROR_OUT_OF_MEMORY;
    *off = a->next;
    a->next += size;
    return CUDA_SUCCESS;
}

static bool remember(struct arena *a, size_t size, uint64_t off)
{
    struct free_ranges *fr = NULL;
    uint64_t *offs;

    HASH_FIND(hh, a->free, &size, sizeof size, fr);
    if (!fr) {
        fr = calloc(1, sizeof *fr);
        if (!fr)
            return false;
        fr->size = size;
        HASH_ADD(hh, a->free, size, sizeof fr->size, fr);
    }
    if (fr->n == fr->cap) {
        offs = realloc(fr->offs, (fr->cap ? 2 * fr->cap : 8) * sizeof *offs);
        if (!offs)
            return false;
        fr->offs = offs;
        fr->cap = fr->cap ? 2 * fr->cap : 8;
    }
    fr->offs[fr->n++] = off;
    return true;
}

void emu_arena_give(int device, size_t size, uint64_t off)
{
    struct arena *a = &arenas[device];

    fallocate(a->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)size);
    remember(a, size, off); /* if that fails the range is simply never reused */
}

/* In a forked child, the parent's arenas are not ours to use or to keep open. */
void emu_arena_forget(void)
{
    for (int i = 0; i < EMU_MAX_DEVICES; i++) {
        if (arenas[i].opened)
            close(arenas[i].fd);
        arenas[i].opened = false;
    }
}
