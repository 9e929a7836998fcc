#!/usr/bin/env bash
# bench/front.sh [BUILD_DIR] — the per-thread front end (FRAGLESS_CONF thread_cache) measured
# side by side in one run: `bench_heap pairs` and `bench_heap threads` under LD_PRELOAD of
# BUILD_DIR/libfragless.so on the emulated device, alternating thread_cache:false and
# thread_cache:true (FRAGLESS_FRONT_ROUNDS times each, default 3), then one table of medians
# (min-max in brackets): ns per pair and its ratio to glibc's in the same run, ops/s of 1 thread
# and the ratio of 2 threads to 1; then bench/instructions.sh for each (when valgrind is there).
# Ratios are taken within each run, then their median. BUILD_DIR defaults to ./build and must
# hold what `make benches` makes. Every input is checked before anything runs (a bad one is
# named on stderr, exit status 2), the library with FRAGLESS_CONF=strict:true so that a library
# that does not know thread_cache is refused instead of measured twice with the same setting.
# Run: make -j2 benches && bash bench/front.sh build  (about 15 s on 2 cores). The table is not
# kept anywhere: copy what you want into bench/RESULTS.md.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
confs=(thread_cache:false thread_cache:true)

die() {
    echo "bench/front.sh: $*" >&2
    exit 2
}
case $# in
0 | 1) ;;
*) die "one argument at most (BUILD_DIR), got $#: $*" ;;
esac
case ${1:-} in
-h | --help) echo "usage: bench/front.sh [BUILD_DIR]  (default ./build, after 'make benches')" &&
    exit 0 ;;
-*) die "unknown option '$1'; usage: bench/front.sh [BUILD_DIR]" ;;
esac
[ -d "${1:-build}" ] || die "build directory '${1:-build}' not found: run 'make benches' first"
build=$(cd "${1:-build}" && pwd)
for f in libfragless.so emu/libcuda.so.1 emu/libcudart.so.13 bench/bench_heap; do
    [ -e "$build/$f" ] || die "$build/$f is missing: run 'make benches BUILD=$build' first"
done
rounds=${FRAGLESS_FRONT_ROUNDS:-3}
[[ $rounds =~ ^[1-9][0-9]?$ ]] ||
    die "FRAGLESS_FRONT_ROUNDS='$rounds': accepted: a number of alternations from 1 to 99"

export LD_LIBRARY_PATH=$build/emu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
heap() { # CONF ARGS...: bench_heap ARGS under CONF
    local conf=$1
    shift
    FRAGLESS_EMU_NAME="fragless-front-$$" FRAGLESS_CONF=$conf LD_PRELOAD="$build/libfragless.so" \
        "$build/bench/bench_heap" "$@"
}
for c in "${confs[@]}"; do
    err=$(heap "$c,strict:true" loop glibc 1 2>&1 >/dev/null) ||
        die "$build/libfragless.so with FRAGLESS_CONF=$c,strict:true failed (a build without" \
            "the thread_cache key?):"$'\n'"$err"
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== bench/front.sh: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load" \
    "$(cut -d' ' -f1-3 /proc/loadavg), commit $(git -C "$src" rev-parse --short HEAD 2>/dev/null ||
        echo unknown), $build/libfragless.so"

# One bench_heap run's figures as "CONF METRIC VALUE" lines: ns per pair and its ratio to
# glibc's, 1-thread ops/s (millions) and the ratios of 2 threads to 1 thread.
extract() { # CONF < bench_heap output
    awk -v c="$1" '
        /^pairs: glibc/ { g = $(NF - 1); print c, "glibc_ns", g }
        /^pairs: cuda/ { api = $2 ~ /Async/ ? "async" : "plain"
                         print c, api "_ns", $3; print c, api "_xglibc", $3 / g }
        /^threads: cuda/ { api = $2 ~ /Async/ ? "async" : "plain" }
        /^threads: cuda/ && $3 == 1 { one = $5; glibc_one = $13; print c, api "_ops1", $5 / 1e6 }
        /^threads: cuda/ && $3 == 2 { print c, api "_2to1", $5 / one
                                      if (api == "plain") print c, "glibc_2to1", $13 / glibc_one }'
}
for i in $(seq "$rounds"); do
    for c in "${confs[@]}"; do
        for row in pairs threads; do
            heap "$c" "$row" >"$tmp/out" 2>&1 ||
                { echo "-- bench_heap $row failed under $c (run $i):"; tail -3 "$tmp/out"; }
            extract "$c" <"$tmp/out" >>"$tmp/figures"
        done
    done
done

echo
echo "median (min-max) of $rounds runs each, alternating; ratios within each run"
awk -v confs="${confs[*]}" '
    { v[$1, $2] = v[$1, $2] " " $3 }
    function stat(s, f,    a, n, i, j, t, m) {
        n = split(s, a, " ")
        if (n == 0) return "-"
        for (i = 2; i <= n; i++)
            for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) {
                t = a[j]; a[j] = a[j - 1]; a[j - 1] = t
            }
        m = n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        return sprintf(f " (" f "-" f ")", m, a[1], a[n])
    }
    END {
        split(confs, c, " ")
        n = split("glibc_ns|glibc malloc+free, ns/pair|%.0f|" \
                  "plain_ns|cudaMalloc+cudaFree, ns/pair|%.0f|" \
                  "plain_xglibc|  x glibc|%.2f|" \
                  "async_ns|cudaMallocAsync+cudaFreeAsync, ns/pair|%.0f|" \
                  "async_xglibc|  x glibc|%.2f|" \
                  "plain_ops1|cudaMalloc+cudaFree, 1 thread, M ops/s|%.1f|" \
                  "plain_2to1|  2 threads / 1 thread|%.2f|" \
                  "async_ops1|cudaMallocAsync+cudaFreeAsync, 1 thread, M ops/s|%.1f|" \
                  "async_2to1|  2 threads / 1 thread|%.2f|" \
                  "glibc_2to1|glibc, 2 threads / 1 thread|%.2f", m, "|")
        printf "%-50s %-20s %s\n", "", c[1], c[2]
        for (i = 1; i < n; i += 3)
            printf "%-50s %-20s %s\n", m[i + 1], stat(v[c[1], m[i]], m[i + 2]),
                stat(v[c[2], m[i]], m[i + 2])
    }' "$tmp/figures"

echo
if ! command -v valgrind >/dev/null; then
    echo "instructions per pair: skipped (needs valgrind)"
    exit 0
fi
for c in "${confs[@]}"; do
    bash "$src/bench/instructions.sh" "$build" "$c" | sed 1d >"$tmp/ins.$c" ||
        echo "-- instructions.sh failed under $c"
done
echo "instructions per pair (bench/instructions.sh: callgrind, deterministic)"
printf '%-6s %-20s %s\n' "" "${confs[@]}"
paste "$tmp/ins.${confs[0]}" "$tmp/ins.${confs[1]}" |
    awk '{ printf "%-6s %-20s %s\n", $1, $2, $4 }'
