/*
 * fragless_emu.h — test API of the emulated CUDA device (build/emu/libcuda.so.1).
 *
 * These functions exist only in the emulated libcuda. Programs that do not link it directly
 * find them with dlsym(RTLD_DEFAULT, "fragless_emu_..."). Functions returning int return a
 * CUresult value: 0 (CUDA_SUCCESS) on success. docs/emulator.md describes the model.
 */
#ifndef FRAGLESS_EMU_H
#define FRAGLESS_EMU_H

#include <cuda.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Queues `usec` microseconds of simulated busy work on stream `s` (of the current context;
 * NULL is the legacy default stream, CU_STREAM_PER_THREAD the per-thread one). */
int fragless_emu_stream_work(CUstream s, uint64_t usec);
/* Queues a simulated kernel on `s` that runs `usec` microseconds and then writes `byte` over
 * [p, p+n). If that memory is not allocated and accessible when the kernel completes, the
 * device faults: fragless_emu_faults() counts it and the context becomes unusable
 * (CUDA_ERROR_ILLEGAL_ADDRESS from then on), as on a GPU. */
int fragless_emu_stream_fill(CUstream s, CUdeviceptr p, int byte, size_t n, uint64_t usec);
/* Arms fault injection, same syntax as FRAGLESS_EMU_FAIL ("NAME@N[=CODE]", "NAME@N+[=CODE]",
 * "NAME@*[=CODE]", comma-separated). N counts calls from the moment of arming. NULL or ""
 * clears. Returns CUDA_ERROR_INVALID_VALUE (and arms nothing) for a malformed spec. */
int fragless_emu_fail(const char *spec);
/* Calls so far of the driver entry point `name` (as exported, e.g. "cuMemAlloc_v2"); "*"
 * counts all entry points. */
uint64_t fragless_emu_calls(const char *name);
/* Simulated device faults so far. */
uint64_t fragless_emu_faults(void);
/* Writes the leak audit (everything still held) to fd; returns the number of leaked objects. */
int fragless_emu_audit(int fd);
/* Bytes in use on the device by every process sharing this emulated device name. */
size_t fragless_emu_used(int device);

#ifdef __cplusplus
}
#endif

#endif
