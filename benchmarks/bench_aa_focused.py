"""AA-focused adapter (rational adapters in the selected layers only) against the standard Pfeiffer adapter.

Usage::

    python benchmarks/bench_aa_focused.py [--layers 3,4,5] [--repeats 10] [--threads 2] [--epochs 10]

On the bundled MiniLM (6 layers, hidden 384), in one process:

1. training step (forward + backward + AdamW, batch 16 x 128 random ids): standard Pfeiffer in all six
   layers; AA-focused in ``--layers``; AA-focused with the frozen-layer cache (the layers below the
   lowest selected one are skipped on a cache hit). Backbone dropout off in all three, so they do the
   same kind of work. Round-robin repeats, medians;
2. inference (eval forward, no grad) of the same batch: bare model, standard, AA-focused;
3. a whole few-shot run (``training.train``; 64 SST-2-style sentences of the packaged sample task, dev 16,
   ``--epochs`` epochs, batch 16): standard vs AA-focused vs AA-focused with ``cache_frozen_layers``.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from adapterkit import frozen_cache
from adapterkit.data.tasks import get_task, load_split
from adapterkit.methods.adaptable import aa_focused_config
from adapterkit.methods.bottleneck import PfeifferConfig
from adapterkit.model import AdaptedModel, load_base_model
from adapterkit.training import TrainConfig, train

BATCH, SEQ_LEN = 16, 128


def build(kind: str, layers: tuple[int, ...]) -> AdaptedModel:
    hf, _ = load_base_model(None)
    adapted = AdaptedModel(hf)
    if kind == "standard":
        adapted.add_adapter("a", PfeifferConfig())
    elif kind.startswith("aa-focused"):
        adapted.add_adapter("a", aa_focused_config(list(layers)))
    adapted.backbone_dropout = False
    return adapted


def median_ms(values: list[float]) -> float:
    return 1000 * statistics.median(values)


def main() -> None:
    from adapterkit.console import quiet_transformers

    quiet_transformers()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="3,4,5")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    layers = tuple(int(x) for x in args.layers.split(","))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (BATCH, SEQ_LEN), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 2, (BATCH,), generator=g)}

    # 1 + 2: step and inference, round-robin
    models = {k: build(k, layers) for k in ("standard", "aa-focused", "aa-focused+cache")}
    bare = build("bare", layers)
    cache = frozen_cache.enable(models["aa-focused+cache"])
    optims = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4) for k, m in models.items()}
    steps: dict[str, list[float]] = {k: [] for k in models}
    infer: dict[str, list[float]] = {k: [] for k in ("bare", "standard", "aa-focused")}
    for i in range(args.repeats + 2):
        for k, m in models.items():
            m.train()
            start = time.perf_counter()
            optims[k].zero_grad(set_to_none=True)
            m(**batch).loss.backward()
            optims[k].step()
            if i >= 2:  # warm-up (and, for the cache, the miss that fills it)
                steps[k].append(time.perf_counter() - start)
        with torch.no_grad():
            for k, m in (("bare", bare), ("standard", models["standard"]), ("aa-focused", models["aa-focused"])):
                m.eval()
                start = time.perf_counter()
                m(**batch)
                if i >= 2:
                    infer[k].append(time.perf_counter() - start)
    params = {k: m.count_parameters()["adapter:a"] for k, m in models.items()}
    std = statistics.median(steps["standard"])
    print(f"AA-focused layers {layers}; batch {BATCH}x{SEQ_LEN}; {args.threads} threads; median of {args.repeats}\n")
    print("| training step | adapter params | ms | vs standard |")
    print("|---|---:|---:|---:|")
    for k in models:
        print(f"| {k} | {params[k]:,} | {median_ms(steps[k]):.0f} | {statistics.median(steps[k]) / std:.2f}x |")
    print(f"\n(cache: {cache.stats.hits} hits, {cache.stats.misses} misses)\n")
    base = statistics.median(infer["standard"])
    print("| inference | ms | vs standard |")
    print("|---|---:|---:|")
    for k, v in infer.items():
        print(f"| {k} | {median_ms(v):.0f} | {statistics.median(v) / base:.2f}x |")

    # 3: whole few-shot runs
    spec = get_task("sample_sentiment")
    rows = load_split(spec, "train")
    train_ex, dev_ex = rows[:64], rows[64:80]
    _, tokenizer = load_base_model(None)
    print(f"\n| few-shot run ({len(train_ex)} train, {len(dev_ex)} dev, {args.epochs} epochs) | seconds | vs standard |")
    print("|---|---:|---:|")
    first = None
    for k in ("standard", "aa-focused", "aa-focused+cache"):
        adapted = build(k, layers)
        with tempfile.TemporaryDirectory() as tmp:
            cfg = TrainConfig(output_dir=tmp, epochs=args.epochs, batch_size=16, learning_rate=1e-3, seed=1,
                              backbone_dropout=False, cache_frozen_layers=k.endswith("+cache"), progress="none",
                              save_optimizer=False, save_total_limit=1)
            start = time.perf_counter()
            train(adapted, tokenizer, spec, train_ex, dev_ex, cfg)
            seconds = time.perf_counter() - start
        first = first or seconds
        print(f"| {k} | {seconds:.1f} | {seconds / first:.2f}x |")


if __name__ == "__main__":
    main()
