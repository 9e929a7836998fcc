"""fragless_stats.py — reads fragless_get_stats() from a Python process that runs under
LD_PRELOAD=libfragless.so, with the struct layout taken from include/fragless.h (so the
fields are declared once), and runs a client script twice to compare results."""
import ctypes
import os
import re
import subprocess
import sys

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _fields():
    text = open(os.path.join(SRC, "include", "fragless.h")).read()
    block = text[text.index("#define FRAGLESS_STATS_FIELDS"):]
    block = block[: block.index("\n\n")]
    return re.findall(r"\b([GC])\((\w+),", block)


def stats(device=0):
    """The device's statistics as a dict: levels as (current, peak), counters as ints.
    None when fragless is not loaded; raises when fragless_get_stats fails."""
    lib = ctypes.CDLL(None)
    try:
        get = lib.fragless_get_stats
    except AttributeError:
        return None
    buf = (ctypes.c_uint64 * 512)()
    ctypes.cast(buf, ctypes.POINTER(ctypes.c_uint32))[0] = ctypes.sizeof(buf)
    rc = get(ctypes.c_int(device), buf)
    if rc != 0:
        raise RuntimeError("fragless_get_stats(%d) = %d" % (device, rc))
    out, word = {}, 2  # size+version, device+reserved0
    for kind, name in _fields():
        if kind == "G":
            out[name] = (buf[word], buf[word + 1])
            word += 2
        else:
            out[name] = buf[word]
            word += 1
    return out


def require(module):
    """Imports `module` or exits 77 (skipped)."""
    try:
        return __import__(module)
    except ImportError as e:
        print("%s not available: %s" % (module, e))
        sys.exit(77)


def compare_with_and_without(script, lib, extra_env=None):
    """Runs `script --child` with and without LD_PRELOAD of `lib`; the child prints its
    result on the last line and, under fragless, 'served N' on the line before. Exits 0 if
    fragless served allocations and both results agree, 1 otherwise, 77 if skipped."""
    env = dict(os.environ, **(extra_env or {}))
    runs = {}
    for preload in (False, True):
        e = dict(env)
        e.pop("LD_PRELOAD", None)
        if preload:
            e["LD_PRELOAD"] = lib
        p = subprocess.run([sys.executable, script, "--child"], env=e, capture_output=True,
                           text=True)
        sys.stderr.write(p.stderr[-4000:])
        if p.returncode != 0:
            print("%s %s fragless: exit %d" % (script, "with" if preload else "without",
                                                p.returncode))
            return p.returncode
        runs[preload] = p.stdout.strip().splitlines()
    served = [l for l in runs[True] if l.startswith("served ")]
    if not served or int(served[-1].split()[1]) == 0:
        print("fragless served nothing: %s" % runs[True])
        return 1
    if runs[True][-1] != runs[False][-1]:
        print("results differ: with %s, without %s" % (runs[True][-1], runs[False][-1]))
        return 1
    print("%s: %s; result %s (same without fragless)" % (os.path.basename(script),
                                                         served[-1], runs[True][-1]))
    return 0
