"""train_val_spike.py — training epochs, each followed by a validation spike (seeds 001, 004).

Models: a convolutional vision model (6 GiB of weights, gradients and optimizer states)
trained at batch 22 for 60 steps per epoch; activations shrink layer by layer through 4
resolution stages and are freed in reverse by backward. At each epoch's end, validation
runs with a much larger batch: a 7.45 GiB input buffer plus large per-stage outputs, eight
batches, then training resumes. The spike needs one huge contiguous block while the cache
holds many mid-sized free blocks from training — a cache that cannot hand those back has
to grow past the card, and after validation the huge blocks are cached and useless for
training.
"""

import sys

from rmmtrace import GiB, MiB, Trace

EPOCHS = 5
STEPS = 60
VAL_BATCHES = 8
LAYERS_PER_STAGE = 10
STAGES = [(112, 128), (56, 256), (28, 512), (14, 1024)]  # (resolution, channels)
BATCH = 22
VAL_INPUT = int(7.45 * GiB)
SEED = 6003


def weights(t):
    sizes = []
    for _, ch in STAGES:
        sizes += [9 * ch * ch * 4] * LAYERS_PER_STAGE
    scale = (2 * GiB) // sum(sizes) + 1  # wide model: 2 GiB of fp32 weights
    w = [t.alloc(s * scale) for s in sizes]
    return w


def train_step(t, w, adam):
    x = t.alloc(BATCH * 3 * 448 * 448 * 2)
    saved = []
    for res, ch in STAGES:
        for _ in range(LAYERS_PER_STAGE):
            saved.append(t.alloc(BATCH * ch * res * res * 2))
            saved.append(t.alloc(BATCH * ch * res * res * 2 // 8))  # batch-norm stats
            t.advance(BATCH * res * res // 400)
    grads = []
    for a in reversed(saved):
        tmp = t.alloc(t.live[a])
        t.advance(20)
        t.free(tmp)
        t.free(a)
    grads = [t.alloc(t.live[p]) for p in w]
    if not adam:
        adam.extend(t.alloc(t.live[p]) for p in w for _ in (0, 1))
    t.advance(4000)
    t.free_all(grads)
    t.free(x)


def validate(t):
    for _ in range(VAL_BATCHES):
        x = t.alloc(VAL_INPUT)
        outs = []
        for res, ch in STAGES:
            y = t.alloc(VAL_INPUT // 3 * ch // 128 * res // 448 * res // 448 * 4)
            if outs:
                t.free(outs.pop())
            outs.append(y)
            t.advance(20000)
        logits = t.alloc(64 * MiB)
        t.free_all(outs)
        t.free(x)
        t.free(logits)


def generate(seed=SEED):
    t = Trace(seed)
    w = weights(t)
    adam = []
    for _ in range(EPOCHS):
        for _ in range(STEPS):
            train_step(t, w, adam)
        validate(t)
    t.free_all(adam)
    t.free_all(w)
    return t


if __name__ == "__main__":
    generate().write(sys.argv[1])
