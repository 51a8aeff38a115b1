"""AdapterFusion inference latency over N adapters against one merged adapter, and the time to merge.

Usage::

    python benchmarks/bench_fusion.py [--repeats 10] [--threads 2] [--sizes 2,4,8]

Everything runs in one process on the bundled MiniLM (batch 16 x 128 random ids, eval mode, no
grad). The timed repeats go round-robin over the configurations (bare model, one merged adapter,
fusion over N = 2, 4, 8 Pfeiffer adapters) so that load on a shared machine hits them equally;
figures are medians. Merge time: ``merge_adapters`` over N random Pfeiffer state dicts (all six
layers) for average, weight-based OT and activation-based OT (activations of 16 x 128 tokens).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from adapterkit.merging import collect_bottleneck_activations, merge_adapters
from adapterkit.methods.bottleneck import PfeifferConfig
from adapterkit.methods.fusion import FusionConfig
from adapterkit.model import AdaptedModel, load_base_model

BATCH, SEQ_LEN = 16, 128


def randomise(adapted: AdaptedModel, name: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapted.adapter_parameters(name).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def main() -> None:
    from adapterkit.console import quiet_transformers

    quiet_transformers()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", default="2,4,8")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    hf, _ = load_base_model(None)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, hf.config.vocab_size, (BATCH, SEQ_LEN), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    adapted = AdaptedModel(hf)
    names = [f"a{i}" for i in range(max(sizes))]
    for i, name in enumerate(names):
        adapted.add_adapter(name, PfeifferConfig(), activate=False)
        randomise(adapted, name, i)
    states = [adapted.adapter_state_dict(n) for n in names]
    merge_rows = []
    for n in sizes:
        acts = [collect_bottleneck_activations(adapted, name, batch) for name in names[:n]]
        for method in ("average", "ot_weights", "ot_activations"):
            kwargs = {"activations": acts} if method == "ot_activations" else {}
            start = time.perf_counter()
            merge_adapters(method, states[:n], **kwargs)
            merge_rows.append((n, method, time.perf_counter() - start))
    adapted.add_adapter("merged", PfeifferConfig(), activate=False)
    adapted.load_adapter_state_dict("merged", merge_adapters("ot_weights", states[:2]))
    for n in sizes:
        adapted.add_adapter(f"fusion{n}", FusionConfig(adapters=tuple(names[:n])), activate=False)

    configs = {"bare": (), "merged (one adapter)": ("merged",), **{f"fusion N={n}": (f"fusion{n}",) for n in sizes}}
    adapted.eval()
    times: dict[str, list[float]] = {c: [] for c in configs}
    with torch.no_grad():
        for active in configs.values():  # warm-up
            adapted.set_active_adapters(*active)
            adapted(**batch)
        for _ in range(args.repeats):
            for cfg, active in configs.items():
                adapted.set_active_adapters(*active)
                start = time.perf_counter()
                adapted(**batch)
                times[cfg].append(time.perf_counter() - start)
    merged = statistics.median(times["merged (one adapter)"])
    print(f"Inference, batch {BATCH}x{SEQ_LEN}, {args.threads} threads, median of {args.repeats} (round-robin)\n")
    print("| configuration | ms / batch | vs merged |")
    print("|---|---:|---:|")
    for cfg in configs:
        t = statistics.median(times[cfg])
        print(f"| {cfg} | {1000 * t:.1f} | {t / merged:.2f}x |")
    print("\nMerge time (N Pfeiffer adapters, 6 layers x 24 neurons)\n")
    print("| N | method | ms |")
    print("|---:|---|---:|")
    for n, method, t in merge_rows:
        print(f"| {n} | {method} | {1000 * t:.1f} |")


if __name__ == "__main__":
    main()
