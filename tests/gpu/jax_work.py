"""jax_work.py LIB — JAX with XLA_PYTHON_CLIENT_ALLOCATOR=platform (every buffer a device
allocation) run with and without LD_PRELOAD of fragless: fragless must serve the
allocations and the result must be the same."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fragless_stats as fs


def child():
    jax = fs.require("jax")
    import jax.numpy as jnp

    if jax.default_backend() != "gpu":
        print("jax has no GPU backend")
        sys.exit(77)
    key = jax.random.PRNGKey(0)
    total = 0.0
    for i in range(30):
        key, k1, k2 = jax.random.split(key, 3)
        a = jax.random.normal(k1, (256 + i, 256))
        b = jax.random.normal(k2, (256, 64))
        total += float(jnp.tanh(a @ b).sum())
    s = fs.stats(0)
    if s is not None:
        print("served %d" % s["num_allocs"])
    print("sum %.6e" % total)


if __name__ == "__main__":
    if "--child" in sys.argv:
        child()
    else:
        fs.require("jax")
        env = {"XLA_PYTHON_CLIENT_ALLOCATOR": "platform"}
        sys.exit(fs.compare_with_and_without(os.path.abspath(__file__), sys.argv[1], env))
