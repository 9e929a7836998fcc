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
# unless FRAGLESS_EMU_LATENCY is set (to 0 or 1). FRAGLESS_BENCH_ONLY=NAME[,NAME] limits the
# workload replays to those named (the micro benchmarks always run).
# FRAGLESS_BENCH_CONF=CONF[;CONF...] (at most 7) adds configuration to the workload replays: each
# CONF (a FRAGLESS_CONF string) is appended to the classic and the expandable configuration,
# one row each per CONF, so that settings compare side by side in one table, e.g.
# FRAGLESS_BENCH_CONF="thread_cache:false;thread_cache:true" (pass-through runs once, as without
# it; the micro benchmarks run with the defaults either way).
# Every input (the argument, the build, FRAGLESS_EMU_LATENCY, FRAGLESS_BENCH_ONLY,
# FRAGLESS_BENCH_CONF, which the library must accept under strict:true) is checked before
# anything runs: a bad one is named on stderr with what is accepted, and the exit status is 2.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
# workload and the memory of the card its job ran on
workloads="transformer_varlen:80G hpo_trials:24G train_val_spike:48G kv_cache_server:80G"
workloads="$workloads two_stream_prefetch:24G"
names=$(for w in $workloads; do printf '%s ' "${w%%:*}"; done)

usage() {
    echo "usage: bench/run.sh [BUILD_DIR]  (a build made by 'make benches'; default ./build)"
}
die() {
    echo "bench/run.sh: $*" >&2
    exit 2
}
names_csv=${names% }
only_accepted="accepted: one or more of ${names_csv// /,} separated by"
only_accepted="$only_accepted commas (unset or empty: all of them)"
is_workload() { # NAME: whether NAME is one of $names
    local n
    for n in $names; do
        [ "$n" != "$1" ] || return 0
    done
    return 1
}

case $# in
0 | 1) ;;
*) usage >&2 && die "one argument at most, got $#: $*" ;;
esac
case ${1:-} in
-h | --help) usage && exit 0 ;;
-*) usage >&2 && die "unknown option '$1'" ;;
esac
[ -d "${1:-build}" ] || die "build directory '${1:-build}' not found: run 'make benches' first," \
    "or name the build directory ('make bench BUILD=DIR' does both)"
build=$(cd "${1:-build}" && pwd)

missing=""
for f in libfragless.so emu/libcuda.so.1 emu/libcudart.so.13; do
    [ -e "$build/$f" ] || missing="$missing $f"
done
[ -x "$build/fragreplay" ] || missing="$missing fragreplay"
for c in "$src"/bench/*.c; do
    b=${c##*/}
    [ -x "$build/bench/${b%.c}" ] || missing="$missing bench/${b%.c}"
done
[ -z "$missing" ] ||
    die "$build lacks:$missing; run 'make benches BUILD=$build' first (or 'make bench')"
command -v python3 >/dev/null || die "python3 not found (it generates and tabulates the workloads)"

case ${FRAGLESS_EMU_LATENCY:-1} in
0 | 1) ;;
*) die "FRAGLESS_EMU_LATENCY='$FRAGLESS_EMU_LATENCY': accepted: 1 (latency model on, the" \
    "default here) or 0 (off)" ;;
esac
case ,${FRAGLESS_BENCH_ONLY:-x}, in
*,,*) die "FRAGLESS_BENCH_ONLY='$FRAGLESS_BENCH_ONLY' has an empty name; $only_accepted" ;;
esac
IFS=, read -r -a only <<<"${FRAGLESS_BENCH_ONLY:-}"
for o in ${only[@]+"${only[@]}"}; do
    is_workload "$o" ||
        die "FRAGLESS_BENCH_ONLY='$FRAGLESS_BENCH_ONLY': '$o' is not a workload; $only_accepted"
done
extra_accepted="accepted: one to 7 FRAGLESS_CONF strings separated by ';' (unset or empty: none)"
case ";${FRAGLESS_BENCH_CONF:-x};" in
*";;"*) die "FRAGLESS_BENCH_CONF='$FRAGLESS_BENCH_CONF' has an empty CONF; $extra_accepted" ;;
esac
IFS=';' read -r -a extra <<<"${FRAGLESS_BENCH_CONF:-}"
[ ${#extra[@]} -le 7 ] || die "FRAGLESS_BENCH_CONF has ${#extra[@]} CONFs; $extra_accepted"
for x in ${extra[@]+"${extra[@]}"}; do
    err=$(FRAGLESS_CONF="$x,strict:true" LD_LIBRARY_PATH="$build/emu" \
        LD_PRELOAD="$build/libfragless.so" "$build/bench/bench_heap" loop glibc 1 2>&1 >/dev/null) ||
        die "FRAGLESS_BENCH_CONF: '$x' is not accepted by $build/libfragless.so:"$'\n'"$err"
done
variants=(${extra[@]+"${extra[@]}"})
[ ${#variants[@]} -gt 0 ] || variants=("")
replay_confs=(--conf passthrough:true)
for x in "${variants[@]}"; do
    replay_confs+=(--conf "expandable_segments:false${x:+,$x}")
    replay_confs+=(--conf "expandable_segments:true${x:+,$x}")
done

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

# The median of the numbers on stdin, by bench/benchutil.h's rule: the middle one, or the mean of
# the two middle ones for an even count; nothing for none.
median() {
    sort -n | awk '{ v[NR] = $1 }
        END { if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}
trace_run() { # NAME CONF OUT: one bench_trace run, its ns per event appended to OUT
    local out
    out=$(preload "$1" "$2" "$build/bench/bench_trace") || return 1
    sed -n 's/ns_per_event=//p' <<<"$out" >>"$3"
}
: >"$tmp/off"
: >"$tmp/on"
for i in 1 2 3 4 5; do
    trace_run "trace-off-$i" "" "$tmp/off" || echo "-- bench_trace failed (run $i, without trace)"
    trace_run "trace-on-$i" "trace:$tmp/t$i.csv" "$tmp/on" ||
        echo "-- bench_trace failed (run $i, with trace)"
    rm -f "$tmp"/t"$i".*
done
off=$(median <"$tmp/off")
on=$(median <"$tmp/on")
if [ -n "$off" ] && [ -n "$on" ]; then
    echo "-- bench_trace: cudaMalloc+cudaFree from fragless's cache, ns per event (median of" \
        "$(wc -l <"$tmp/off") runs without trace, $(wc -l <"$tmp/on") with):"
    awk -v a="$off" -v b="$on" 'BEGIN { printf "   without trace %.0f, with trace %.0f, " \
        "recording costs %.0f ns per event\n", a, b, b - a }'
else
    echo "-- bench_trace: no result (every run without trace, or every run with it, failed)"
fi

echo
echo "== workload replays (fragreplay --emu; GiB; peaks over the whole trace${FRAGLESS_BENCH_CONF:+;" \
    "FRAGLESS_BENCH_CONF=$FRAGLESS_BENCH_CONF})"
python3 "$src/bench/workloads/generate.py" "$build/workloads" >/dev/null
for w in $workloads; do
    name=${w%%:*}
    cap=${w#*:}
    if [ -n "${FRAGLESS_BENCH_ONLY:-}" ] && [[ ",$FRAGLESS_BENCH_ONLY," != *",$name,"* ]]; then
        continue
    fi
    "$build/fragreplay" --emu --capacity "$cap" --json "${replay_confs[@]}" \
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


def label(conf):  # the base configuration's short name, then what FRAGLESS_BENCH_CONF added
    base, _, extra = conf.partition(",")
    return names.get(base, base) + (" " + extra if extra else "")


docs = []
for line in open(os.path.join(tmp, "list")):
    name, cap = line.split()
    try:
        docs.append((name, cap, json.load(open(os.path.join(tmp, name + ".json")))))
    except (OSError, ValueError):
        docs.append((name, cap, None))
w = max([12] + [len(label(r["conf"])) for d in docs if d[2] for r in d[2]["results"]])
print("%-20s %5s %-*s %9s %9s %8s %10s %5s %8s %9s %7s" % (
    "workload", "card", w, "config", "requested", "reserved", "res/req", "unalloc@pk", "ooms",
    "allocs", "drv calls", "replay s"))
for name, cap, doc in docs:
    if doc is None:
        print("%-20s %5s (no result)" % (name, cap))
        continue
    for r in doc["results"]:
        conf = label(r["conf"])
        if not r["ok"]:
            print("%-20s %5s %-*s failed: %s" % (name, cap, w, conf, r["error"]))
            continue
        req, res = r["peak_requested_bytes"], r["peak_reserved_bytes"]
        print("%-20s %5s %-*s %9.2f %9.2f %8.2f %10.2f %5d %8d %9d %7.2f" % (
            name, cap, w, conf, req / G, res / G, res / req if req else 0,
            r["reserved_unallocated_bytes"] / G, r["ooms"], r["alloc_calls"], r["driver_calls"],
            r["seconds"]))
print("(reserved: peak bytes held from the driver - fragless's count, or for pass-through the "
      "device's used memory;\n unalloc@pk: reserved minus allocated at that peak; allocs: "
      "driver allocations and releases (segments, VMM pages);\n drv calls: every driver call fragless made; for "
      "pass-through both are the trace's allocations and frees)")
EOF
