#!/usr/bin/env python3
"""torch_snapshot_to_csv.py SNAPSHOT.pickle -o OUT.csv — PyTorch memory snapshot to RMM CSV.

Reads the pickle written by torch.cuda.memory._dump_snapshot() after
torch.cuda.memory._record_memory_history() and writes each device's allocation history in
RAPIDS RMM's CSV log format, the format fragless records and fragreplay replays:
one file per device, named as RMM and fragless name them: ".devN" goes before the extension
(OUT.csv -> OUT.dev0.csv, OUT.dev1.csv, ...).

Only the standard library is used, and the pickle is read with an unpickler that accepts
plain data only (dicts, lists, numbers, strings): a snapshot holds nothing else, and a file
that asks for any class or function is refused instead of being run.

Mapping of the snapshot's trace entries (snapshot["device_traces"][device] is a list of
dicts with action, addr, size, stream, time_us):
  alloc                              -> allocate
  free_requested (or an older free)  -> free: the program gave the block back at this point
  free_completed                     -> skipped: PyTorch's own deferred reuse, which the
                                        replaying allocator decides for itself
  oom                                -> allocate failure (size = the request that failed)
  segment_alloc / segment_free /
  segment_map / segment_unmap /
  snapshot                           -> skipped: what PyTorch's allocator did, not the program
A block freed in the trace but allocated before recording started gets an allocate at the
start of the trace, so the replay holds it as the program did. Entries without time_us
(older PyTorch) are spaced one microsecond apart.
"""

import argparse
import os
import pickle
import sys

HEADER = "Thread,Time,Action,Pointer,Size,Stream"
SKIPPED = {"free_completed", "segment_alloc", "segment_free", "segment_map", "segment_unmap",
           "snapshot"}
FREES = {"free_requested", "free"}


class DataOnlyUnpickler(pickle.Unpickler):
    """Refuses every global: a memory snapshot is plain dicts, lists and scalars."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(
            "refusing %s.%s: a memory snapshot holds only plain data" % (module, name))


class ConvertError(Exception):
    pass


def device_filename(path, device):
    """OUT.csv -> OUT.devN.csv, OUT -> OUT.devN (RMM's naming, os.path.splitext rules)."""
    root, ext = os.path.splitext(path)
    return "%s.dev%d%s" % (root, device, ext)


def stamp(us):
    us %= 24 * 3600 * 1000000
    s, frac = divmod(us, 1000000)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return "%02d:%02d:%02d.%06d" % (h, m, sec, frac)


def as_int(entry, key, where, default=None):
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConvertError("%s: field %r is %r, not a non-negative integer" % (where, key, value))
    return value


def convert_device(trace, device):
    """Returns (rows, stats) for one device's trace entries; rows are CSV lines."""
    if not isinstance(trace, list):
        raise ConvertError("device_traces[%d] is %s, not a list" % (device, type(trace).__name__))
    events = []  # (time_us, action, addr, size, stream)
    live = {}
    preexisting = []
    stats = {"allocs": 0, "frees": 0, "ooms": 0, "skipped": 0, "preexisting": 0}
    for i, e in enumerate(trace):
        where = "device_traces[%d][%d]" % (device, i)
        if not isinstance(e, dict) or "action" not in e:
            raise ConvertError("%s: not a trace entry (a dict with an action)" % where)
        action = e["action"]
        t = e.get("time_us", i)
        if not isinstance(t, int):
            raise ConvertError("%s: time_us is %r, not an integer" % (where, t))
        stream = as_int(e, "stream", where, 0)
        if action == "alloc":
            addr, size = as_int(e, "addr", where), as_int(e, "size", where)
            if addr in live:
                raise ConvertError("%s: alloc of 0x%x, which is already allocated" % (where, addr))
            live[addr] = size
            events.append((t, "allocate", addr, size, stream))
            stats["allocs"] += 1
        elif action in FREES:
            addr, size = as_int(e, "addr", where), as_int(e, "size", where)
            if addr not in live:
                preexisting.append((addr, size, stream))
                stats["preexisting"] += 1
            else:
                size = live.pop(addr)
            events.append((t, "free", addr, size, stream))
            stats["frees"] += 1
        elif action == "oom":
            events.append((t, "allocate failure", 0, as_int(e, "size", where), stream))
            stats["ooms"] += 1
        elif action in SKIPPED:
            stats["skipped"] += 1
        else:
            raise ConvertError("%s: unknown action %r" % (where, action))
    start = min((ev[0] for ev in events), default=0)
    rows = ["0,%s,allocate,0x%x,%d,0x%x" % (stamp(start), a, s, st) for a, s, st in preexisting]
    rows += ["0,%s,%s,0x%x,%d,0x%x" % (stamp(t), act, a, s, st) for t, act, a, s, st in events]
    return rows, stats


def load(path):
    with open(path, "rb") as f:
        try:
            snap = DataOnlyUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
            raise ConvertError("not a readable snapshot pickle: %s" % err)
    if isinstance(snap, dict) and "device_traces" in snap:
        traces = snap["device_traces"]
    else:
        raise ConvertError("no device_traces: write it with torch.cuda.memory._dump_snapshot() "
                           "after torch.cuda.memory._record_memory_history()")
    if not isinstance(traces, list):
        raise ConvertError("device_traces is %s, not a list" % type(traces).__name__)
    return traces


def main(argv):
    ap = argparse.ArgumentParser(
        description="Convert a PyTorch memory snapshot's allocation history to RMM CSV "
                    "(one file per device: OUT.devN.csv).")
    ap.add_argument("snapshot", help="pickle from torch.cuda.memory._dump_snapshot()")
    ap.add_argument("-o", "--output", required=True, help="OUT.csv (becomes OUT.devN.csv)")
    args = ap.parse_args(argv[1:])
    try:
        traces = load(args.snapshot)
        written = 0
        for device, trace in enumerate(traces):
            rows, stats = convert_device(trace, device)
            if not rows:
                continue
            out = device_filename(args.output, device)
            with open(out, "w") as f:
                f.write(HEADER + "\n")
                for r in rows:
                    f.write(r + "\n")
            written += 1
            print("%s: %d allocs, %d frees, %d ooms, %d allocated before recording, "
                  "%d allocator-internal entries skipped"
                  % (out, stats["allocs"], stats["frees"], stats["ooms"], stats["preexisting"],
                     stats["skipped"]))
        if not written:
            raise ConvertError("no allocation events in any device trace (was "
                               "torch.cuda.memory._record_memory_history() enabled?)")
    except (ConvertError, OSError) as err:
        sys.stderr.write("%s: %s\n" % (args.snapshot, err))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
