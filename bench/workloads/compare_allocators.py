#!/usr/bin/env python3
"""compare_allocators.py [--emu [--capacity SIZE]] TRACE.csv... — fragless beside PyTorch and CuPy.

Replays each RMM CSV trace through
  - fragless (build/fragreplay --json: pass-through, classic, expandable segments),
  - PyTorch's caching allocator (torch.cuda.caching_allocator_alloc/delete), with its
    default configuration and with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True,
    each in its own process (PyTorch reads that variable once),
  - CuPy's memory pool (cupy.cuda.MemoryPool().malloc),
and prints each allocator's peak requested, allocated and reserved bytes and OOMs side by side.
PyTorch and CuPy need a GPU: without torch/cupy or a device their rows say "skipped" and why.
--emu replays fragless on the emulated device instead (for trying the script without a GPU).
A stream value other than 0 in the trace becomes a real stream of that library.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FRAGREPLAY = os.path.join(HERE, "..", "..", "build", "fragreplay")
TORCH_CONFS = ["", "expandable_segments:True"]
FRAGLESS_CONFS = ["passthrough:true", "expandable_segments:false", "expandable_segments:true"]


def events(path):
    """(action, pointer, size, stream) per line; fragreplay has already validated the file."""
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            yield row["Action"], int(row["Pointer"], 16), int(row["Size"]), int(row["Stream"], 16)


def replay(path, alloc, free, measure):
    """Drives alloc(size, stream) -> handle or None (OOM) and free(handle); returns the
    result dict. measure() -> (allocated, reserved) now."""
    live, peak_req, req, ooms, peak_res, peak_alloc = {}, 0, 0, 0, 0, 0
    t0 = time.monotonic()
    for action, ptr, size, stream in events(path):
        if action == "allocate":
            h = alloc(size, stream)
            if h is None:
                ooms += 1
                continue
            live[ptr] = (h, size)
            req += size
            peak_req = max(peak_req, req)
            a, r = measure()
            peak_alloc, peak_res = max(peak_alloc, a), max(peak_res, r)
        elif action == "free" and ptr in live:
            h, size = live.pop(ptr)
            free(h)
            del h  # CuPy returns a block to its pool when the last reference goes
            req -= size
    seconds = time.monotonic() - t0
    for h, _ in live.values():
        free(h)
    live.clear()
    return {"peak_requested_bytes": peak_req, "peak_allocated_bytes": peak_alloc,
            "peak_reserved_bytes": peak_res, "ooms": ooms, "seconds": seconds}


def torch_child(path):
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    streams = {}

    def stream_of(value):
        if value == 0:
            return 0
        if value not in streams:
            streams[value] = torch.cuda.Stream()
        return streams[value].cuda_stream

    def alloc(size, stream):
        try:
            return torch.cuda.caching_allocator_alloc(size, 0, stream_of(stream))
        except RuntimeError as err:  # torch.cuda.OutOfMemoryError derives from it
            if "out of memory" not in str(err):
                raise
            return None

    torch.cuda.reset_peak_memory_stats(0)
    r = replay(path, alloc, torch.cuda.caching_allocator_delete, lambda: (0, 0))
    r["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(0)
    r["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(0)
    return r


def cupy_run(path):
    try:
        import cupy
    except ImportError:
        return {"skipped": "cupy not installed"}
    try:
        cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # noqa: BLE001 - any CUDA failure means no device
        return {"skipped": "no CUDA device (%s)" % err}
    pool = cupy.cuda.MemoryPool()
    streams = {}

    def alloc(size, stream):
        s = streams.setdefault(stream, cupy.cuda.Stream() if stream else cupy.cuda.Stream.null)
        try:
            with s:
                return pool.malloc(size)
        except cupy.cuda.memory.OutOfMemoryError:
            return None

    return replay(path, alloc, lambda h: None,
                  lambda: (pool.used_bytes(), pool.total_bytes()))


def torch_run(path, conf):
    try:
        import torch  # noqa: F401 - only whether it is there
    except ImportError:
        return {"skipped": "torch not installed"}
    env = dict(os.environ, PYTORCH_CUDA_ALLOC_CONF=conf)
    p = subprocess.run([sys.executable, __file__, "--torch-child", path], env=env,
                       capture_output=True, text=True)
    if p.returncode != 0:
        return {"skipped": "failed: " + (p.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(p.stdout)


def fragless_run(path, args):
    cmd = [args.fragreplay, "--json"]
    if args.emu:
        cmd += ["--emu", "--capacity", args.capacity]
    for c in FRAGLESS_CONFS:
        cmd += ["--conf", c]
    p = subprocess.run(cmd + [path], capture_output=True, text=True)
    if p.returncode == 2:
        sys.exit("fragreplay refused %s:\n%s" % (path, p.stderr))
    try:
        return json.loads(p.stdout)["results"]
    except ValueError:
        return [{"conf": c, "ok": False, "error": p.stderr.strip()} for c in FRAGLESS_CONFS]


def row(name, r):
    G = float(1 << 30)
    if "skipped" in r:
        return "  %-40s skipped: %s" % (name, r["skipped"])
    if not r.get("ok", True):
        return "  %-40s failed: %s" % (name, r.get("error", "?"))
    return "  %-40s %9.2f %9.2f %9.2f %5d %8.2f" % (
        name, r["peak_requested_bytes"] / G, r["peak_allocated_bytes"] / G,
        r["peak_reserved_bytes"] / G, r["ooms"], r["seconds"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--emu", action="store_true", help="fragless on the emulated device")
    ap.add_argument("--capacity", default="141G", help="emulated device memory (with --emu)")
    ap.add_argument("--fragreplay", default=FRAGREPLAY)
    ap.add_argument("--torch-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_child:
        print(json.dumps(torch_child(args.traces[0])))
        return 0
    for path in args.traces:
        print("%s (GiB)%s" % (path, "   fragless on the emulated device" if args.emu else ""))
        print("  %-40s %9s %9s %9s %5s %8s" % ("allocator", "requested", "allocated",
                                               "reserved", "ooms", "seconds"))
        for r in fragless_run(path, args):
            print(row("fragless " + r["conf"], r))
        for conf in TORCH_CONFS:
            print(row("pytorch " + (conf or "(default)"), torch_run(path, conf)))
        print(row("cupy MemoryPool", cupy_run(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
