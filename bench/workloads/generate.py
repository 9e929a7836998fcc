"""generate.py OUTDIR [NAME...] — writes the workload suite's traces as OUTDIR/NAME.csv.

Every generator is deterministic (fixed seed), so the same files come out every time; this
script prints one line per trace: name, events, peak requested bytes.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hpo_trials  # noqa: E402
import kv_cache_server  # noqa: E402
import train_val_spike  # noqa: E402
import transformer_varlen  # noqa: E402
import two_stream_prefetch  # noqa: E402

WORKLOADS = {
    "transformer_varlen": transformer_varlen,
    "hpo_trials": hpo_trials,
    "train_val_spike": train_val_spike,
    "kv_cache_server": kv_cache_server,
    "two_stream_prefetch": two_stream_prefetch,
}


def main(argv):
    if len(argv) < 2:
        sys.stderr.write("usage: generate.py OUTDIR [%s ...]\n" % " | ".join(WORKLOADS))
        return 2
    outdir = argv[1]
    names = argv[2:] or list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        sys.stderr.write("generate.py: unknown workload %s (known: %s)\n"
                         % (", ".join(unknown), ", ".join(WORKLOADS)))
        return 2
    os.makedirs(outdir, exist_ok=True)
    for name in names:
        trace = WORKLOADS[name].generate()
        path = os.path.join(outdir, name + ".csv")
        trace.write(path)
        print("%-22s %8d events  peak requested %6.2f GiB"
              % (name, trace.events(), trace.peak_bytes / (1 << 30)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
