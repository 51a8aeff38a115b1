"""Many adapters on one model: add, switch the active one, delete, as the number attached grows.

Attaches small Pfeiffer adapters (reduction factor 16) one after another to a tiny BERT (hidden 32,
2 layers) or, with ``--model minilm``, to the bundled MiniLM, and at each checkpoint count (10, 100,
1000 by default) measures:

- **switch**: mean seconds of ``set_active_adapters(name)`` over ``--switches`` random names;
- **add**: mean seconds of ``add_adapter`` over the adapters added since the previous count;
- **forward**: seconds of one forward pass (batch 8, 16 tokens) with one adapter active;
- **memory**: bytes of the adapters' tensors, and the process's resident memory growth since the start;
- **delete**: mean seconds of ``delete_adapter`` over ``--deletes`` adapters at the end.

The baseline of each ratio is the same measurement at the smallest count, in the same run. Constant
switch time means a ratio near 1; linear memory means bytes per adapter constant.

Usage::

    python benchmarks/bench_many_adapters.py [--counts 10,100,1000] [--switches 200] [--model tiny]
"""
from __future__ import annotations

import argparse
import random
import resource
import time

import torch

from adapterkit.methods.bottleneck import PfeifferConfig
from adapterkit.model import AdaptedModel
from adapterkit.testing import tiny_batch, tiny_model


def rss_bytes() -> int:
    """Resident set size of this process (from /proc; falls back to the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="10,100,1000")
    parser.add_argument("--switches", type=int, default=200)
    parser.add_argument("--deletes", type=int, default=50)
    parser.add_argument("--model", choices=("tiny", "minilm"), default="tiny")
    parser.add_argument("--threads", type=int, default=1)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    counts = [int(c) for c in opts.counts.split(",")]
    if opts.model == "tiny":
        hf = tiny_model("bert")
        batch = tiny_batch(batch_size=8, seq_len=16)
    else:
        from adapterkit.model import load_base_model

        hf, _ = load_base_model(None)
        batch = tiny_batch(batch_size=8, seq_len=16, vocab_size=1000)
    batch.pop("labels", None)
    model = AdaptedModel(hf).eval()
    config = PfeifferConfig(reduction_factor=16)
    rng = random.Random(0)
    start_rss = rss_bytes()
    rows = []
    names: list[str] = []
    for count in counts:
        t0 = time.perf_counter()
        added = 0
        while len(names) < count:
            name = f"a{len(names)}"
            model.add_adapter(name, config, activate=False)
            names.append(name)
            added += 1
        add_s = (time.perf_counter() - t0) / max(1, added)
        picks = [rng.choice(names) for _ in range(opts.switches)]
        t0 = time.perf_counter()
        for name in picks:
            model.set_active_adapters(name)
        switch_s = (time.perf_counter() - t0) / opts.switches
        with torch.no_grad():
            model(**batch)
            t0 = time.perf_counter()
            for _ in range(5):
                model(**batch)
            forward_s = (time.perf_counter() - t0) / 5
        tensor_bytes = sum(t.numel() * t.element_size() for n in names for t in model.adapter_state_dict(n).values())
        rows.append({"adapters": count, "add_ms": 1e3 * add_s, "switch_ms": 1e3 * switch_s,
                     "forward_ms": 1e3 * forward_s, "adapter_mb": tensor_bytes / 2**20,
                     "rss_growth_mb": (rss_bytes() - start_rss) / 2**20})
        print(f"{count} adapters: add {1e3 * add_s:.3f} ms, switch {1e3 * switch_s:.3f} ms, "
              f"forward {1e3 * forward_s:.2f} ms, adapter tensors {tensor_bytes / 2**20:.2f} MiB", flush=True)
    doomed = rng.sample(names, min(opts.deletes, len(names)))
    t0 = time.perf_counter()
    for name in doomed:
        model.delete_adapter(name)
    delete_ms = 1e3 * (time.perf_counter() - t0) / max(1, len(doomed))
    base = rows[0]
    print(f"\n{opts.model} model; Pfeiffer adapters (reduction factor 16); baseline = {base['adapters']} adapters "
          "(same run)\n")
    print("| adapters | add (ms) | switch (ms) | switch vs baseline | forward (ms) | adapter tensors (MiB) | "
          "MiB per adapter | RSS growth (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['adapters']} | {r['add_ms']:.3f} | {r['switch_ms']:.3f} | {r['switch_ms'] / base['switch_ms']:.2f}x "
              f"| {r['forward_ms']:.2f} | {r['adapter_mb']:.2f} | {r['adapter_mb'] / r['adapters']:.4f} | "
              f"{r['rss_growth_mb']:.1f} |")
    print(f"\ndelete: {delete_ms:.3f} ms per adapter ({len(doomed)} deleted at {len(names)} attached)")


if __name__ == "__main__":
    main()
