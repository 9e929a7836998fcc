"""two_stream_prefetch.py — training with a side stream that prefetches the next batch.

Models: an image-model training loop (3 GiB of weights, gradients and optimizer states) in
which a copy stream (stream 0x2) allocates and fills the next batch's tensors — images,
labels, augmentation masks — while the compute stream (0x1) runs the current step. The
compute stream takes ownership of each batch (record_stream) and frees it there, so every
batch is allocated on one stream and freed on another. Activations and gradients are
allocated and freed on the compute stream. A batch's size varies a little (the last batch
of an epoch is short, random crops change the mask size), and two batches are in flight at
once. Replays exercise cross-stream reuse: a block freed on the compute stream is safe for
the copy stream only once the compute work before the free has completed.
"""

import sys

from rmmtrace import GiB, Trace

COMPUTE = 0x1
COPY = 0x2
STEPS = 400
STEPS_PER_EPOCH = 97
BATCH = 128
LAYERS = 50
SEED = 6005


def load_batch(t, n):
    crop = t.rng.choice((192, 224, 256))
    return [
        t.alloc(n * 3 * crop * crop * 2, COPY),
        t.alloc(n * 8, COPY),
        t.alloc(n * crop * crop, COPY),
    ]


def step(t, batch, n, weights):
    saved = []
    for i in range(LAYERS):
        res = 112 >> (i * 4 // LAYERS)
        ch = 64 << (i * 4 // LAYERS)
        saved.append(t.alloc(n * ch * res * res * 2, COMPUTE))
        t.advance(n * res * res // 300)
    for a in reversed(saved):
        tmp = t.alloc(t.live[a], COMPUTE)
        t.advance(30)
        t.free(tmp, COMPUTE)
        t.free(a, COMPUTE)
    grads = [t.alloc(t.live[w], COMPUTE) for w in weights]
    t.advance(3000)
    t.free_all(grads, COMPUTE)
    t.free_all(batch, COMPUTE)  # freed on the stream that used it


def generate(seed=SEED):
    t = Trace(seed)
    weights = [t.alloc(GiB // LAYERS, COMPUTE) for _ in range(LAYERS)]
    adam = [t.alloc(GiB // LAYERS, COMPUTE) for _ in range(2 * LAYERS)]
    sizes = [BATCH if (s + 1) % STEPS_PER_EPOCH else BATCH // 3 for s in range(STEPS + 1)]
    ahead = [load_batch(t, sizes[0])]
    for s in range(STEPS):
        ahead.append(load_batch(t, sizes[s + 1]))  # prefetch overlaps this step
        step(t, ahead.pop(0), sizes[s], weights)
    t.free_all(ahead.pop(0), COMPUTE)
    t.free_all(adam, COMPUTE)
    t.free_all(weights, COMPUTE)
    return t


if __name__ == "__main__":
    generate().write(sys.argv[1])
