/*
 * test_rt_error.c — the emulated runtime's errors: names and descriptions, last-error
 * semantics, and the CUresult → cudaError_t mapping, driven by the emulated driver's fault
 * injection on the driver call behind cudaMalloc.
 */
#include <criterion/criterion.h>
#include <cuda.h>
#include <cuda_runtime_api.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "fragless_emu.h"

Test(rt_error, names_and_strings)
{
    cr_assert_str_eq(cudaGetErrorName(cudaSuccess), "cudaSuccess");
    cr_assert_str_eq(cudaGetErrorName(cudaErrorMemoryAllocation), "cudaErrorMemoryAllocation");
    cr_assert_str_eq(cudaGetErrorString(cudaErrorMemoryAllocation), "out of memory");
    cr_assert_str_eq(cudaGetErrorString(cudaErrorInvalidValue), "invalid argument");
    cr_assert_str_eq(cudaGetErrorName(cudaErrorIllegalAddress), "cudaErrorIllegalAddress");
    cr_assert_str_eq(cudaGetErrorName(cudaErrorStreamCaptureUnsupported),
                     "cudaErrorStreamCaptureUnsupported");
    cr_assert_str_eq(cudaGetErrorName((cudaError_t)12345), "unrecognized error code");
    cr_assert_str_eq(cudaGetErrorString((cudaError_t)-1), "unrecognized error code");
}

Test(rt_error, every_code_has_a_name_and_a_string)
{
    for (int e = 0; e <= 1000; e++) {
        const char *name = cudaGetErrorName((cudaError_t)e);
        const char *text = cudaGetErrorString((cudaError_t)e);
        cr_assert_not_null(name);
        cr_assert_not_null(text);
        bool known = strcmp(name, "unrecognized error code") != 0;
        cr_assert_eq(known, strcmp(text, "unrecognized error code") != 0, "code %d", e);
        if (known)
            cr_assert_str_neq(text, name, "%s has no description", name);
    }
}

Test(rt_error, last_error_is_per_call_and_reset_by_get)
{
    cr_assert_eq(cudaGetLastError(), cudaSuccess);
    cr_assert_eq(cudaMalloc(NULL, 1), cudaErrorInvalidValue);
    cr_assert_eq(cudaPeekAtLastError(), cudaErrorInvalidValue);
    cr_assert_eq(cudaPeekAtLastError(), cudaErrorInvalidValue, "peek does not reset");
    void *p = NULL;
    cr_assert_eq(cudaMalloc(&p, 64), cudaSuccess);
    cr_assert_eq(cudaPeekAtLastError(), cudaErrorInvalidValue, "success does not clear it");
    cr_assert_eq(cudaGetLastError(), cudaErrorInvalidValue);
    cr_assert_eq(cudaGetLastError(), cudaSuccess);
    cr_assert_eq(cudaFree(p), cudaSuccess);
}

struct mapping {
    const char *code;
    cudaError_t want;
};

static const struct mapping mappings[] = {
    {"CUDA_ERROR_OUT_OF_MEMORY", cudaErrorMemoryAllocation},
    {"CUDA_ERROR_INVALID_VALUE", cudaErrorInvalidValue},
    {"CUDA_ERROR_NOT_INITIALIZED", cudaErrorInitializationError},
    {"CUDA_ERROR_DEINITIALIZED", cudaErrorCudartUnloading},
    {"CUDA_ERROR_NO_DEVICE", cudaErrorNoDevice},
    {"CUDA_ERROR_INVALID_DEVICE", cudaErrorInvalidDevice},
    {"CUDA_ERROR_INVALID_CONTEXT", cudaErrorDeviceUninitialized},
    {"CUDA_ERROR_INVALID_HANDLE", cudaErrorInvalidResourceHandle},
    {"CUDA_ERROR_NOT_FOUND", cudaErrorSymbolNotFound},
    {"CUDA_ERROR_NOT_READY", cudaErrorNotReady},
    {"CUDA_ERROR_ILLEGAL_ADDRESS", cudaErrorIllegalAddress},
    {"CUDA_ERROR_LAUNCH_FAILED", cudaErrorLaunchFailure},
    {"CUDA_ERROR_NOT_PERMITTED", cudaErrorNotPermitted},
    {"CUDA_ERROR_NOT_SUPPORTED", cudaErrorNotSupported},
    {"CUDA_ERROR_OPERATING_SYSTEM", cudaErrorOperatingSystem},
    {"CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED", cudaErrorStreamCaptureUnsupported},
    {"CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED", cudaErrorPeerAccessAlreadyEnabled},
    {"CUDA_ERROR_CONTEXT_ALREADY_CURRENT", cudaErrorUnknown}, /* no runtime counterpart */
    {"CUDA_ERROR_UNKNOWN", cudaErrorUnknown},
};

Test(rt_error, driver_errors_map_like_the_real_runtime)
{
    cr_assert_eq(cudaFree(NULL), cudaSuccess);
    for (size_t i = 0; i < sizeof mappings / sizeof mappings[0]; i++) {
        char spec[96];
        snprintf(spec, sizeof spec, "cuMemAlloc_v2@1=%s", mappings[i].code);
        cr_assert_eq(fragless_emu_fail(spec), 0, "%s", spec);
        void *p = NULL;
        cudaError_t got = cudaMalloc(&p, 4096);
        cr_assert_eq(got, mappings[i].want, "%s → %s, want %s", mappings[i].code,
                     cudaGetErrorName(got), cudaGetErrorName(mappings[i].want));
    }
}
