#!/usr/bin/env bash
# bench/run.sh BUILD_DIR — what `make bench` runs (never part of `make test`).
#
# 1. Micro benchmarks: every build/bench/bench_* other than bench_trace, run once under
#    LD_PRELOAD of libfragless on the emulated device (their own output; bench_stats_page
#    is given the library and preloads it into its own children); then bench_trace,
#    alternately without and with FRAGLESS_CONF=trace:PATH, 5 times each: the median
#    ns/event of each and their difference, the recorder's cost per event.
# 2. Workload replays: bench/workloads' traces (generated into BUILD_DIR/workloads), each
#    replayed by fragreplay on an emulated device of the size its job ran on, under
#    pass-through, classic caching (expandable_segments:false) and expandable segments.
#    One table.
# The emulated device runs with FRAGLESS_EMU_LATENCY=1 (per-call delays shaped like a GPU's)
# unless FRAGLESS_EMU_LATENCY is set. FRAGLESS_BENCH_ONLY=NAME[,NAME] limits the workloads.
set -euo pipefail
build=$(cd "${1:-build}" && pwd)
src=$(cd "$(dirname "$0")/.." && pwd)
export LD_LIBRARY_PATH=$build/emu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export FRAGLESS_EMU_LATENCY=${FRAGLESS_EMU_LATENCY:-1}
unset FRAGLESS_CONF
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== fragless bench: $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -m), $(nproc) cores," \
    "commit $(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo unknown)"

preload() { # NAME CONF PROGRAM ARGS... -> its stdout
    local name=$1 conf=$2
    shift 2
    FRAGLESS_EMU_NAME="fragless-bench-$$-$name" FRAGLESS_CONF="$conf" \
        LD_PRELOAD="$build/libfragless.so" "$@" 2>/dev/null
}

echo
echo "== micro benchmarks (emulated device, latency model ${FRAGLESS_EMU_LATENCY})"
for b in "$build"/bench/bench_*; do
    [ -x "$b" ] && [ "${b##*/}" != bench_trace ] || continue
    echo "-- ${b##*/}"
    case ${b##*/} in
    bench_stats_page) # preloads itself into its children
        FRAGLESS_EMU_NAME="fragless-bench-$$-page" "$b" "$build/libfragless.so" 2>/dev/null ;;
    *) preload "${b##*/}" "" "$b" ;;
    esac || echo "${b##*/} failed"
done

median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
if [ -x "$build/bench/bench_trace" ]; then
    : >"$tmp/off"
    : >"$tmp/on"
    for i in 1 2 3 4 5; do
        preload "trace-off-$i" "" "$build/bench/bench_trace" |
            sed -n 's/ns_per_event=//p' >>"$tmp/off"
        preload "trace-on-$i" "trace:$tmp/t$i.csv" "$build/bench/bench_trace" |
            sed -n 's/ns_per_event=//p' >>"$tmp/on"
        rm -f "$tmp"/t"$i".*
    done
    off=$(median <"$tmp/off")
    on=$(median <"$tmp/on")
    echo "-- bench_trace: cudaMalloc+cudaFree from fragless's cache, ns per event (median of 5):"
    awk -v a="$off" -v b="$on" 'BEGIN { printf "   without trace %.0f, with trace %.0f, " \
        "recording costs %.0f ns per event\n", a, b, b - a }'
fi

echo
echo "== workload replays (fragreplay --emu; GiB; peaks over the whole trace)"
python3 "$src/bench/workloads/generate.py" "$build/workloads" >/dev/null
# workload and the memory of the card its job ran on
workloads="transformer_varlen:80G hpo_trials:24G train_val_spike:48G kv_cache_server:80G"
workloads="$workloads two_stream_prefetch:24G"
for w in $workloads; do
    name=${w%%:*}
    cap=${w#*:}
    if [ -n "${FRAGLESS_BENCH_ONLY:-}" ] && [[ ",$FRAGLESS_BENCH_ONLY," != *",$name,"* ]]; then
        continue
    fi
    "$build/fragreplay" --emu --capacity "$cap" --json --conf passthrough:true \
        --conf expandable_segments:false --conf expandable_segments:true \
        "$build/workloads/$name.csv" >"$tmp/$name.json" 2>"$tmp/$name.err" ||
        { echo "$name: fragreplay failed:"; cat "$tmp/$name.err"; }
    echo "$name $cap" >>"$tmp/list"
done

python3 - "$tmp" <<'EOF'
import json, os, sys

tmp = sys.argv[1]
G = float(1 << 30)
names = {"passthrough:true": "pass-through", "expandable_segments:false": "classic",
         "expandable_segments:true": "expandable"}
print("%-20s %5s %-12s %9s %9s %8s %10s %5s %8s %9s %7s" % (
    "workload", "card", "config", "requested", "reserved", "res/req", "unalloc@pk", "ooms",
    "allocs", "drv calls", "replay s"))
for line in open(os.path.join(tmp, "list")):
    name, cap = line.split()
    path = os.path.join(tmp, name + ".json")
    try:
        doc = json.load(open(path))
    except (OSError, ValueError):
        print("%-20s %5s (no result)" % (name, cap))
        continue
    for r in doc["results"]:
        conf = names.get(r["conf"], r["conf"])
        if not r["ok"]:
            print("%-20s %5s %-12s failed: %s" % (name, cap, conf, r["error"]))
            continue
        req, res = r["peak_requested_bytes"], r["peak_reserved_bytes"]
        print("%-20s %5s %-12s %9.2f %9.2f %8.2f %10.2f %5d %8d %9d %7.2f" % (
            name, cap, conf, req / G, res / G, res / req if req else 0,
            r["reserved_unallocated_bytes"] / G, r["ooms"], r["alloc_calls"], r["driver_calls"],
            r["seconds"]))
print("(reserved: peak bytes held from the driver - fragless's count, or for pass-through the "
      "device's used memory;\n unalloc@pk: reserved minus allocated at that peak; allocs: "
      "driver allocations and releases (segments, VMM pages);\n drv calls: every driver call fragless made; for "
      "pass-through both are the trace's allocations and frees)")
EOF
