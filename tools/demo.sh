#!/usr/bin/env bash
# tools/demo.sh BUILD_DIR — what `make demo` runs.
#
# Runs tests/progs/tr_train (a transformer training job whose sequence length changes every
# step, allocating with plain cudaMalloc/cudaFree) three times under LD_PRELOAD of
# libfragless: pass-through (fragless out of the way: what the driver alone does), classic
# caching (expandable_segments:false) and fragless's default (expandable segments), on the
# GPU when nvidia-smi finds one, otherwise on the emulated device. Prints what each measured
# and how fragless compares. Every number is measured by the program in that run.
set -euo pipefail
build=$(cd "${1:-build}" && pwd)
prog=$build/tests/progs/tr_train
steps=${FRAGLESS_DEMO_STEPS:-30}
layers=16

if command -v nvidia-smi >/dev/null 2>&1 && gpu=$(nvidia-smi -L 2>/dev/null | head -n 1) &&
    [ -n "$gpu" ]; then
    mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -n 1)
    [ "${mib:-0}" -lt 40000 ] && layers=6 # fits a 24 GiB card
    where="on the GPU (${gpu%% (UUID*})"
else
    export LD_LIBRARY_PATH=$build/emu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    export FRAGLESS_EMU_MEM=${FRAGLESS_EMU_MEM:-80G}
    where="on the emulated device ($FRAGLESS_EMU_MEM; nvidia-smi found no GPU here)"
fi

# run NAME CONF -> the program's one line of measurements
run() {
    FRAGLESS_EMU_NAME="fragless-demo-$$-$1" FRAGLESS_CONF="$2" \
        LD_PRELOAD="$build/libfragless.so" "$prog" "$steps" "$layers"
}

pass=$(run pass passthrough:true)
classic=$(run classic expandable_segments:false)
fragless=$(run fragless "")

python3 - "$where" "$steps" "$layers" "$pass" "$classic" "$fragless" <<'EOF'
import sys

where, steps, layers = sys.argv[1], sys.argv[2], sys.argv[3]
runs = [dict(kv.split("=") for kv in line.split()) for line in sys.argv[4:7]]
names = ["pass-through (cudaMalloc)", "classic caching", "fragless default (expandable)"]
G = float(1 << 30)
p, c, f = runs
print("fragless demo: a %s-layer transformer training job whose sequence length changes every "
      "step\n(%s steps, %s cudaMalloc/cudaFree calls), run three times under LD_PRELOAD\n%s:\n"
      % (layers, steps, p["alloc_calls"], where))
row = "%-30s %10s %10s %10s %21s %13s"
print(row % ("", "peak", "peak", "reserved/", "reserved-unallocated", "driver alloc"))
print(row % ("", "requested", "reserved", "requested", "when the job idles", "+free calls"))
for name, r in zip(names, runs):
    req, res = int(r["requested_peak"]), int(r["reserved_peak"])
    print(row % (name, "%.2f GiB" % (req / G), "%.2f GiB" % (res / G),
                 "%.2fx" % (res / req if req else 0),
                 "%.2f GiB" % (int(r["unallocated_end"]) / G), r["alloc_calls"]))
cres, fres = int(c["reserved_peak"]), int(f["reserved_peak"])
calls_p, calls_f = int(p["alloc_calls"]), int(f["alloc_calls"])
diff = (cres - fres) / G
print("\nfragless vs classic caching: peak reserved %.2f GiB %s (%+.0f%%),\n"
      "  reserved-unallocated when the job idles %.2f vs %.2f GiB."
      % (abs(diff), "lower" if diff >= 0 else "higher", 100.0 * (fres - cres) / cres if cres else 0,
         int(f["unallocated_end"]) / G, int(c["unallocated_end"]) / G))
print("fragless vs pass-through: %d driver allocation/free calls instead of %d\n"
      "  (%.0fx fewer)."
      % (calls_f, calls_p, calls_p / calls_f if calls_f else float("inf")))
EOF
