/*
 * fill.c — simulated fill kernels: fragless_emu_stream_fill queues a write of one byte value
 * over a device range, to happen when the stream's work reaches it. Queued fills are applied
 * by the first emulator call that observes their time (every entry point and every
 * synchronization). A fill whose target is not allocated and accessible at that moment (by
 * the stream's device: VMM memory of another device needs access granted to it) is a device
 * fault: counted, and the context's error becomes sticky CUDA_ERROR_ILLEGAL_ADDRESS.
 */
#include <stdlib.h>
#include <string.h>

#include "emu.h"

void emu_device_fault(struct emu_ctx *ctx)
{
    emu.faults++;
    ctx->sticky = CUDA_ERROR_ILLEGAL_ADDRESS;
}

static void fill_run(const struct emu_fill *f)
{
    if (f->ctx->sticky != CUDA_SUCCESS)
        return; /* a faulted context runs nothing more */
    if (emu_range_accessible(f->ptr, f->n, f->at, f->ctx->device))
        memset((void *)(uintptr_t)f->ptr, f->byte, f->n);
    else
        emu_device_fault(f->ctx);
}

uint64_t emu_fills_apply(uint64_t now)
{
    struct emu_fill **pp = &emu.fills, *f;

    /* the list is kept in completion order */
    while ((f = *pp) && f->at <= now) {
        *pp = f->next;
        fill_run(f);
        free(f);
    }
    return *pp ? (*pp)->at : UINT64_MAX;
}

void emu_fills_drop(struct emu_ctx *ctx)
{
    struct emu_fill **pp = &emu.fills, *f;

    while ((f = *pp)) {
        if (f->ctx == ctx) {
            *pp = f->next;
            free(f);
        } else {
            pp = &f->next;
        }
    }
}

static void fill_insert(struct emu_fill *nf)
{
    struct emu_fill **pp = &emu.fills;

    while (*pp && (*pp)->at <= nf->at)
        pp = &(*pp)->next;
    nf->next = *pp;
    *pp = nf;
}

EMU_API int fragless_emu_stream_fill(CUstream hStream, CUdeviceptr p, int byte, size_t n,
                                     uint64_t usec)
{
    CUresult r;
    struct emu_ctx *c = NULL;
    struct emu_stream *s = NULL;
    struct emu_fill *f = NULL;

    emu_config();
    emu_lock();
    r = emu_current_stream(hStream, false, &c, &s);
    if (r == CUDA_SUCCESS && (n == 0 || p + n < p))
        r = CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_SUCCESS && !(f = calloc(1, sizeof *f)))
        r = CUDA_ERROR_OUT_OF_MEMORY;
    if (r == CUDA_SUCCESS) {
        f->ctx = c;
        f->ptr = p;
        f->n = n;
        f->byte = byte;
        f->at = emu_stream_enqueue(s, usec);
        if (s->capture_status == CU_STREAM_CAPTURE_STATUS_ACTIVE) {
            free(f); /* captured into the graph, never launched here */
        } else {
            fill_insert(f);
            emu_device_note_due(f->at);
        }
    }
    emu_unlock();
    return r;
}

EMU_API uint64_t fragless_emu_faults(void)
{
    uint64_t n;

    emu_lock();
    n = emu.faults;
    emu_unlock();
    return n;
}
