"""transformer_varlen.py — GPT-style training whose sequence length changes every step.

Models: a 24-layer, 1536-wide decoder (680M parameters) trained with AdamW in fp32 master
weights, micro-batch 4, flash attention (no s*s score matrix), on a dataset of packed
documents whose length is drawn anew each step from 512..4096 tokens. Weights and Adam
states stay resident; gradients are allocated during backward and freed at
zero_grad(set_to_none=True); activations saved by the forward pass are freed in reverse
during backward. Every step's activation sizes differ from the last step's, which is what
breaks a size-class cache: blocks freed at one length do not fit the next length.
"""

import sys

from rmmtrace import MiB, Trace

LAYERS = 24
WIDTH = 1536
VOCAB = 50304
BATCH = 4
STEPS = 100
SEED = 6001

# per-layer parameter tensors: (rows, cols)
PARAMS = [
    (3 * WIDTH, WIDTH),  # qkv
    (WIDTH, WIDTH),  # attention out
    (4 * WIDTH, WIDTH),  # mlp up
    (WIDTH, 4 * WIDTH),  # mlp down
    (2, WIDTH),  # two layer norms (weight+bias each)
]
# activations a layer saves for backward, in multiples of tokens*width (fp16)
SAVED = [1, 3, 1, 1, 4, 4, 1]
# temporaries inside a layer's forward, freed before it returns
FWD_TEMP = [3, 4]
# temporaries inside a layer's backward
BWD_TEMP = [4, 3, 1, 1]


def params(t):
    out = [t.alloc(VOCAB * WIDTH * 4)]  # tied embedding
    for _ in range(LAYERS):
        out.append([t.alloc(r * c * 4) for r, c in PARAMS])
    return out


def step(t, weights, adam, seq):
    tokens = BATCH * seq
    act = tokens * WIDTH * 2
    ids = t.alloc(tokens * 8)
    saved = []
    for _ in range(LAYERS):
        layer = [t.alloc(m * act) for m in SAVED]
        for m in FWD_TEMP:
            tmp = t.alloc(m * act)
            t.advance(tokens // 200)
            t.free(tmp)
        saved.append(layer)
    logits = t.alloc(tokens * VOCAB * 2)
    loss_tmp = t.alloc(tokens * VOCAB * 4)  # fp32 upcast for the loss
    t.advance(tokens // 50)
    t.free(loss_tmp)
    dlogits = t.alloc(tokens * VOCAB * 2)
    t.free(logits)
    grads = [t.alloc(VOCAB * WIDTH * 4)]
    t.free(dlogits)
    for layer in reversed(saved):
        tmps = [t.alloc(m * act) for m in BWD_TEMP]
        grads.append([t.alloc(r * c * 4) for r, c in PARAMS])
        t.advance(tokens // 100)
        t.free_all(reversed(tmps))
        t.free_all(reversed(layer))
    t.free(ids)
    if not adam:  # Adam states are created lazily at the first optimizer step
        for w in weights:
            sizes = [w] if isinstance(w, int) else w
            for p in sizes:
                adam.append(t.alloc(t.live[p]))
                adam.append(t.alloc(t.live[p]))
    flat = t.alloc(64 * MiB)  # multi-tensor-apply scratch
    t.advance(3000)
    t.free(flat)
    for g in grads:  # zero_grad(set_to_none=True)
        t.free_all(g if isinstance(g, list) else [g])


def generate(seed=SEED):
    t = Trace(seed)
    weights = params(t)
    adam = []
    for _ in range(STEPS):
        seq = t.rng.randrange(512, 4096 + 1, 256)
        step(t, weights, adam, seq)
    return t


if __name__ == "__main__":
    generate().write(sys.argv[1])
