"""Training and inference time in fp32 against bf16 autocast (``TrainConfig.precision``), same process.

A Pfeiffer adapter in every layer of the bundled MiniLM trains on examples built from the packaged
sample_sentiment task (each example joins ``--join`` sentences) through :func:`adapterkit.training.train`;
then the trained adapter predicts the same examples in fp32 and in bf16. Runs alternate (fp32, bf16,
fp32, ...) so drift on a shared machine hits both. bf16 pays off on CPUs with AVX512-BF16 or AMX and on
Ampere+ GPUs; elsewhere it can be slower than fp32.

Usage::

    python benchmarks/bench_precision.py [--examples 64] [--join 3] [--epochs 2] [--repeats 2] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch
import transformers

from adapterkit.data.tasks import get_task, load_split
from adapterkit.methods.bottleneck import PfeifferConfig
from adapterkit.model import AdaptedModel, load_base_model
from adapterkit.training import TrainConfig, encode, predict_logits, train


def examples(n: int, join: int) -> list[dict]:
    rows = load_split("sample_sentiment", "train")
    out = []
    for i in range(n):
        parts = [rows[(i + 17 * k) % len(rows)] for k in range(join)]
        out.append({"text": " ".join(p["text"] for p in parts), "text_pair": None, "label": parts[0]["label"]})
    return out


def run_once(precision: str, data: list[dict], epochs: int, batch_size: int) -> tuple[float, int, AdaptedModel]:
    model, tokenizer = load_base_model(None)
    adapted = AdaptedModel(model)
    adapted.add_adapter("a", PfeifferConfig(learning_rate=1e-3))
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(output_dir=out, epochs=epochs, batch_size=batch_size, progress="none",
                             backbone_dropout=False, save_total_limit=1, save_optimizer=False, precision=precision)
        result = train(adapted, tokenizer, get_task("sample_sentiment"), data, None, config)
    return result.train_seconds, result.global_step, adapted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--join", type=int, default=3, help="sample sentences per example")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    data = examples(args.examples, args.join)
    _, tokenizer = load_base_model(None)
    tokens = [len(tokenizer(ex["text"])["input_ids"]) for ex in data]
    cpu_bf16 = "avx512_bf16" in open("/proc/cpuinfo").read() if torch.cuda.device_count() == 0 else None
    print(f"{len(data)} examples, {statistics.mean(tokens):.1f} tokens on average, batch {args.batch_size}, "
          f"{args.epochs} epochs, {args.threads} threads, torch {torch.__version__}, CPU avx512_bf16: {cpu_bf16}")
    run_once("bf16", data[: args.batch_size], 1, args.batch_size)  # warm-up
    dataset = encode(tokenizer, get_task("sample_sentiment"), data, 128)
    train_s: dict[str, list[float]] = {"fp32": [], "bf16": []}
    infer_s: dict[str, list[float]] = {"fp32": [], "bf16": []}
    steps, trained = 0, None
    for _ in range(args.repeats):
        for precision in ("fp32", "bf16"):
            seconds, steps, trained = run_once(precision, data, args.epochs, args.batch_size)
            train_s[precision].append(seconds / steps)
    for _ in range(args.repeats):
        for precision in ("fp32", "bf16"):
            start = time.perf_counter()
            predict_logits(trained, tokenizer, dataset, args.batch_size, precision)
            infer_s[precision].append(time.perf_counter() - start)
    (fp32,) = predict_logits(trained, tokenizer, dataset, args.batch_size, "fp32")
    (bf16,) = predict_logits(trained, tokenizer, dataset, args.batch_size, "bf16")
    t = {p: statistics.median(v) for p, v in train_s.items()}
    i = {p: statistics.median(v) for p, v in infer_s.items()}
    print(f"train step ({steps} steps per run, median of {args.repeats}): fp32 {t['fp32'] * 1e3:.0f} ms, "
          f"bf16 {t['bf16'] * 1e3:.0f} ms, ratio fp32/bf16 {t['fp32'] / t['bf16']:.2f}")
    print(f"inference over {len(data)} examples: fp32 {i['fp32'] * 1e3:.0f} ms, bf16 {i['bf16'] * 1e3:.0f} ms, "
          f"ratio fp32/bf16 {i['fp32'] / i['bf16']:.2f}")
    agree = float(np.mean(fp32.argmax(-1) == bf16.argmax(-1)))
    print(f"same adapter, fp32 vs bf16 logits: max |diff| {abs(fp32 - bf16).max():.4f}, same prediction {agree:.1%}")


if __name__ == "__main__":
    main()
