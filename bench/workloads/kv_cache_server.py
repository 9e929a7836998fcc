"""kv_cache_server.py — an inference server whose KV caches grow by reallocation.

Models: a 7B-parameter decoder served in fp16 (12.5 GiB of weights in 32 layers) with
grouped-query attention (128 KiB of KV cache per token). 600 requests arrive over time
(prompts of 64..4096 tokens, answers of 16..1024 tokens); up to 24 are decoded together.
A request's KV cache starts at its prompt length rounded up to 256 tokens; when a decode
step needs more room it allocates a cache twice as large, copies, and frees the old one —
the naive growth policy of simple servers. Prefill allocates activations proportional to
the prompt; every decode step allocates small per-batch temporaries. Caches of every size
come and go in no particular order, so free space ends up scattered between live caches.
"""

import sys

from rmmtrace import MiB, Trace

REQUESTS = 600
MAX_BATCH = 24
KV_PER_TOKEN = 128 * 1024
LAYERS = 32
WIDTH = 4096
VOCAB = 32000
SEED = 6004


class Request:
    def __init__(self, t, prompt, answer):
        self.prompt = prompt
        self.answer = answer
        self.tokens = prompt
        self.capacity = (prompt + 255) // 256 * 256
        self.cache = t.alloc(self.capacity * KV_PER_TOKEN)


def prefill(t, r):
    acts = [t.alloc(r.prompt * WIDTH * 2 * m) for m in (1, 3, 4)]
    t.advance(r.prompt * 5)
    t.free_all(reversed(acts))


def decode_step(t, batch):
    n = len(batch)
    h = t.alloc(n * WIDTH * 2)
    tmp = [t.alloc(n * WIDTH * 2 * 4), t.alloc(n * WIDTH * 2 * 3)]
    t.advance(25000)
    t.free_all(tmp)
    logits = t.alloc(n * VOCAB * 4)
    t.free(logits)
    t.free(h)
    done = []
    for r in batch:
        r.tokens += 1
        if r.tokens > r.capacity:  # grow: allocate twice the room, copy, free the old cache
            r.capacity *= 2
            bigger = t.alloc(r.capacity * KV_PER_TOKEN)
            t.free(r.cache)
            r.cache = bigger
        if r.tokens >= r.prompt + r.answer:
            done.append(r)
    for r in done:
        t.free(r.cache)
        batch.remove(r)


def generate(seed=SEED):
    t = Trace(seed)
    weights = [t.alloc(VOCAB * WIDTH * 2)]
    for _ in range(LAYERS):
        weights += [t.alloc(s * MiB) for s in (32, 32, 32, 32, 86, 86, 86)]
    weights.append(t.alloc(VOCAB * WIDTH * 2))
    pending = REQUESTS
    batch = []
    while pending or batch:
        while pending and len(batch) < MAX_BATCH and (not batch or t.rng.random() < 0.3):
            r = Request(t, t.rng.randint(64, 4096), t.rng.randint(16, 1024))
            prefill(t, r)
            batch.append(r)
            pending -= 1
        decode_step(t, batch)
    t.free_all(weights)
    return t


if __name__ == "__main__":
    generate().write(sys.argv[1])
