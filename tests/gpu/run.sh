#!/usr/bin/env bash
# tests/gpu/run.sh BUILD_DIR — `make gpu-test`: fragless on a real GPU. Runs the interposer's
# integration suite against the real driver and runtime (its programs rebuilt against
# $CUDA_HOME), then real clients under LD_PRELOAD, each proving through fragless_get_stats
# that its allocations went through fragless and that its results are unchanged:
# a static-cudart nvcc program, a PyTorch training loop, CuPy array work and JAX with
# XLA_PYTHON_CLIENT_ALLOCATOR=platform. A client whose toolkit or module is missing is
# reported as skipped. Without a GPU it prints one line and succeeds.
set -u
build=$(cd "${1:?usage: tests/gpu/run.sh BUILD_DIR}" && pwd)
src=$(cd "$(dirname "$0")/../.." && pwd)
cuda=${CUDA_HOME:-/usr/local/cuda}

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    echo "gpu-test: skipped: no NVIDIA GPU here (nvidia-smi lists none)"
    exit 0
fi

lib="$build/libfragless.so"
work="$build/gpu"
mkdir -p "$work/tests/progs"
ln -sf "$lib" "$work/libfragless.so"
export FRAGLESS_SRC="$src" LD_LIBRARY_PATH="$cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
unset FRAGLESS_CONF
passed=0; failed=0; skipped=0
result() { # NAME STATUS(0 pass, 77 skip, else fail) [DETAIL]
    case "$2" in
    0) passed=$((passed + 1)); echo "PASS $1" ;;
    77) skipped=$((skipped + 1)); echo "SKIP $1${3:+: $3}" ;;
    *) failed=$((failed + 1)); echo "FAIL $1 (status $2)${3:+: $3}" ;;
    esac
}

# 1. The integration suite, its programs linked against the real runtime and driver.
ok=0
for p in "$src"/tests/progs/ip_*.c; do
    name=$(basename "$p" .c)
    gcc -std=c11 -D_GNU_SOURCE -O2 -I"$src/include" -isystem "$cuda/include" "$p" \
        -o "$work/tests/progs/$name" -L"$cuda/lib64" -L"$cuda/lib64/stubs" -lcudart -lcuda \
        -ldl -lpthread || ok=1
done
if [ "$ok" = 0 ]; then
    FRAGLESS_BUILD="$work" FRAGLESS_TEST_PRELOAD="$lib" "$build/tests/integ/test_interpose"
    result "integration suite on the GPU" $?
else
    result "integration suite on the GPU" 1 "programs did not build against $cuda"
fi

# 2. A program built with nvcc's default (static cudart).
if [ -x "$cuda/bin/nvcc" ]; then
    "$cuda/bin/nvcc" -O2 -I"$src/include" "$src/tests/gpu/static_cudart.cu" -o "$work/static_cudart" -ldl
    LD_PRELOAD="$lib" "$work/static_cudart"
    result "static cudart (nvcc default)" $?
else
    result "static cudart (nvcc default)" 77 "no nvcc under $cuda"
fi

# 3. Python clients: each script exits 77 when its module is missing.
for client in torch_train cupy_work jax_work; do
    python3 "$src/tests/gpu/$client.py" "$lib"
    result "$client" $?
done

echo "gpu-test: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
