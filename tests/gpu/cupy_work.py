"""cupy_work.py LIB — CuPy array work (allocation churn, elementwise, matmul, reductions)
run with and without LD_PRELOAD of fragless: fragless must serve the allocations and the
result must be the same."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fragless_stats as fs


def child():
    cp = fs.require("cupy")
    rs = cp.random.RandomState(0)
    total = 0.0
    for i in range(50):
        a = rs.standard_normal((512 + i, 256), dtype=cp.float64)
        b = rs.standard_normal((256, 128), dtype=cp.float64)
        total += float(cp.tanh(a @ b).sum())
        del a, b
    cp.cuda.runtime.deviceSynchronize()
    s = fs.stats(cp.cuda.runtime.getDevice())
    if s is not None:
        print("served %d" % s["num_allocs"])
    print("sum %.9e" % total)


if __name__ == "__main__":
    if "--child" in sys.argv:
        child()
    else:
        fs.require("cupy")
        sys.exit(fs.compare_with_and_without(os.path.abspath(__file__), sys.argv[1]))
