"""rmmtrace.py — the writer every workload generator uses.

Owns: a simulated process's allocation events (allocate / free, on a stream, at a simulated
time) and writing them in RAPIDS RMM's CSV log format, the format fragless records and
fragreplay reads:

    Thread,Time,Action,Pointer,Size,Stream
    1,00:00:00.000120,allocate,0x7f0000000000,4194304,0x0

Pointers are invented (unique per live allocation, 512-byte aligned); only their identity
matters to a replay. Times are simulated: the generators advance the clock by what the
modelled GPU work would take, so a plot over the trace's time looks like the job's timeline.
"""

import random

MiB = 1 << 20
GiB = 1 << 30

_BASE = 0x7F0000000000
_ALIGN = 512


class Trace:
    """Allocation events of one simulated process on one device."""

    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.lines = []
        self.now_us = 0
        self.next_addr = _BASE
        self.live = {}  # pointer -> size
        self.live_bytes = 0
        self.peak_bytes = 0
        self.thread = 1

    def advance(self, usec):
        """Moves the simulated clock forward by `usec` microseconds."""
        self.now_us += max(0, int(usec))

    def _stamp(self):
        us = self.now_us % (24 * 3600 * 1000000)
        s, frac = divmod(us, 1000000)
        h, rem = divmod(s, 3600)
        m, sec = divmod(rem, 60)
        return "%02d:%02d:%02d.%06d" % (h, m, sec, frac)

    def _line(self, action, ptr, size, stream):
        self.lines.append(
            "%d,%s,%s,0x%x,%d,0x%x" % (self.thread, self._stamp(), action, ptr, size, stream)
        )
        self.now_us += 1

    def alloc(self, size, stream=0):
        """Records an allocation of `size` bytes on `stream`; returns its pointer."""
        size = int(size)
        ptr = self.next_addr
        self.next_addr += (max(size, 1) + _ALIGN - 1) // _ALIGN * _ALIGN
        self.live[ptr] = size
        self.live_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        self._line("allocate", ptr, size, stream)
        return ptr

    def free(self, ptr, stream=0):
        """Records the free of a live pointer on `stream`."""
        size = self.live.pop(ptr)
        self.live_bytes -= size
        self._line("free", ptr, size, stream)

    def free_all(self, ptrs, stream=0):
        for p in ptrs:
            self.free(p, stream)

    def events(self):
        return len(self.lines)

    def write(self, path):
        with open(path, "w") as f:
            f.write("Thread,Time,Action,Pointer,Size,Stream\n")
            f.write("\n".join(self.lines))
            f.write("\n")


def round_up(n, m):
    return (int(n) + m - 1) // m * m
