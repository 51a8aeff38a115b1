"""Seconds per training epoch with and without ``cache_frozen_layers`` (docs/layer-cache.md).

A Pfeiffer adapter on layers 3, 4, 5 of the bundled 6-layer MiniLM (hidden 384) trains on sentences of
the packaged sample_sentiment task through :func:`adapterkit.training.train`, with
``backbone_dropout=False`` in both runs; with the cache, layers 0-2 run in epoch 1 only. Epochs are
timed from ``on_epoch_begin`` to ``on_epoch_end`` (checkpoint saving excluded). Runs alternate
(plain, cached, plain, ...) so drift on a shared machine hits both.

Usage::

    python benchmarks/bench_frozen_cache.py [--examples 64] [--join 1] [--epochs 3] [--repeats 2] [--threads 2]

``--join N`` makes each example N sample sentences (longer inputs); the sample has 80 sentences, so
up to 80 examples are distinct.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import transformers
from transformers import TrainerCallback

from adapterkit import frozen_cache
from adapterkit.data.tasks import get_task, load_split
from adapterkit.methods.bottleneck import PfeifferConfig
from adapterkit.model import AdaptedModel, load_base_model
from adapterkit.training import TrainConfig, train


class EpochTimer(TrainerCallback):
    """Wall-clock seconds of each training epoch."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.start = 0.0

    def on_epoch_begin(self, args, state, control, **kwargs) -> None:
        self.start = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs) -> None:
        self.seconds.append(time.perf_counter() - self.start)


def examples(n: int, join: int) -> list[dict]:
    rows = load_split("sample_sentiment", "train")
    out = []
    for i in range(n):
        parts = [rows[(i + 17 * k) % len(rows)] for k in range(join)]  # distinct for i < 80 (the sample's size)
        out.append({"text": " ".join(p["text"] for p in parts), "text_pair": None, "label": parts[0]["label"]})
    return out


def run_once(cached: bool, data: list[dict], epochs: int, batch_size: int) -> tuple[list[float], dict]:
    model, tokenizer = load_base_model(None)
    adapted = AdaptedModel(model)
    adapted.add_adapter("aa", PfeifferConfig(layers=(3, 4, 5)))
    timer = EpochTimer()
    stats: dict = {}
    real_enable = frozen_cache.enable

    def spy(a: AdaptedModel) -> frozen_cache.FrozenLayerCache:
        cache = real_enable(a)
        stats["cache"] = cache
        return cache

    frozen_cache.enable = spy
    try:
        with tempfile.TemporaryDirectory() as out:
            config = TrainConfig(output_dir=out, epochs=epochs, batch_size=batch_size, progress="none",
                                 backbone_dropout=False, cache_frozen_layers=cached, save_total_limit=1,
                                 save_optimizer=False)
            train(adapted, tokenizer, get_task("sample_sentiment"), data, None, config, callbacks=[timer])
    finally:
        frozen_cache.enable = real_enable
    return timer.seconds, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--join", type=int, default=1, help="sample sentences per example")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()  # no load report per run
    transformers.logging.disable_progress_bar()
    data = examples(args.examples, args.join)
    _, tokenizer = load_base_model(None)
    tokens = [len(tokenizer(ex["text"])["input_ids"]) for ex in data]
    print(f"{len(data)} examples, {statistics.mean(tokens):.1f} tokens on average (max {max(tokens)}), "
          f"batch {args.batch_size}, {args.epochs} epochs, {args.threads} threads, torch {torch.__version__}")
    run_once(False, data[: args.batch_size], 1, args.batch_size)  # warm-up
    times: dict[bool, list[list[float]]] = {False: [], True: []}
    for _ in range(args.repeats):
        for cached in (False, True):
            seconds, stats = run_once(cached, data, args.epochs, args.batch_size)
            times[cached].append(seconds)
            if cached:
                s = stats["cache"].stats
                print(f"cache: {s.entries} entries, {s.bytes / 2**20:.2f} MiB, hits {s.hits}, misses {s.misses}")
    for cached in (False, True):
        per_epoch = [statistics.median(run[e] for run in times[cached]) for e in range(args.epochs)]
        label = "cached" if cached else "plain "
        print(f"{label}: seconds per epoch (median of {args.repeats}): " + ", ".join(f"{s:.3f}" for s in per_epoch))
    plain = [statistics.median(run[e] for run in times[False]) for e in range(args.epochs)]
    cached = [statistics.median(run[e] for run in times[True]) for e in range(args.epochs)]
    later = statistics.mean(plain[1:]) / statistics.mean(cached[1:]) if args.epochs > 1 else float("nan")
    print(f"ratio plain/cached: epoch 1 {plain[0] / cached[0]:.2f}, later epochs {later:.2f}, "
          f"whole run {sum(plain) / sum(cached):.2f}")


if __name__ == "__main__":
    main()
