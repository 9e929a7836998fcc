#!/usr/bin/env bash
# bench/instructions.sh BUILD_DIR [CONF] — instructions per cached pair, counted by valgrind's
# callgrind: `bench_heap loop API N` under LD_PRELOAD of libfragless on the emulated device,
# for glibc malloc+free, cudaMalloc+cudaFree and cudaMallocAsync+cudaFreeAsync. Each API runs
# twice (10 and 60 passes over the 1,024 sizes); the difference over 50 passes is the steady
# state, without start-up and the first pass that fills the cache. Instruction counts do not
# depend on how busy the machine is, so they compare builds where times scatter (DESIGN.md §6
# still asks for times: bench_heap pairs). Needs valgrind; not part of `make bench`.
# CONF, when given, is the FRAGLESS_CONF of the counted runs (e.g. thread_cache:false), checked
# first with strict:true so that a key the library does not know fails instead of counting the
# defaults; without it the runs inherit FRAGLESS_CONF from the environment, as before.
set -u
usage="usage: bench/instructions.sh BUILD_DIR [CONF]"
build=${1:?$usage}
[ $# -le 2 ] || { echo "instructions.sh: at most 2 arguments, got $#; $usage" >&2; exit 2; }
if ! build=$(cd "$build" 2>/dev/null && pwd); then
    echo "instructions.sh: no build directory '$1' (run make benches)" >&2
    exit 2
fi
for f in libfragless.so emu/libcuda.so.1 bench/bench_heap; do
    [ -e "$build/$f" ] || { echo "instructions.sh: $build/$f is missing (run make benches)" >&2; exit 2; }
done
command -v valgrind >/dev/null && command -v callgrind_annotate >/dev/null ||
    { echo "instructions.sh: needs valgrind (callgrind and callgrind_annotate)" >&2; exit 2; }
if [ $# -eq 2 ]; then
    export FRAGLESS_CONF=$2
    FRAGLESS_CONF="$2,strict:true" LD_LIBRARY_PATH="$build/emu" LD_PRELOAD="$build/libfragless.so" \
        "$build/bench/bench_heap" loop glibc 1 >/dev/null ||
        { echo "instructions.sh: CONF '$2' is not accepted by $build/libfragless.so" >&2; exit 2; }
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Instructions of one run of `bench_heap loop $1 $2` (the traced child: bench_heap itself).
count() {
    rm -f "$tmp"/cg.*
    # a small emulated device: valgrind cannot reserve the default 80 GiB of address space
    FRAGLESS_EMU_MEM=2G LD_LIBRARY_PATH="$build/emu" valgrind --tool=callgrind \
        --callgrind-out-file="$tmp/cg.%p" --trace-children=yes \
        env LD_PRELOAD="$build/libfragless.so" "$build/bench/bench_heap" loop "$1" "$2" \
        >"$tmp/out" 2>&1 || { echo "instructions.sh: bench_heap loop $1 $2 failed:" >&2; tail -5 "$tmp/out" >&2; exit 1; }
    local f
    f=$(ls -S "$tmp"/cg.* | head -n 1)
    callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}'
}

echo "instructions per pair (callgrind, passes 11-60 of 1,024 sizes 512 B .. 32 MiB;" \
    "$build/libfragless.so${FRAGLESS_CONF:+, FRAGLESS_CONF=$FRAGLESS_CONF})"
for api in glibc plain async; do
    a=$(count "$api" 10) && b=$(count "$api" 60) || exit 1
    printf '%-6s %6d\n' "$api" $(((b - a) / (50 * 1024)))
done
