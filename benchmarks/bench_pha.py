"""PHA speed: a multi-task training step of PHA against per-task Pfeiffer adapters and HyperFormer++, inference
with a materialised PHA adapter against an ordinary adapter, and the cost of generating a batch's adapters.

All timings in one run, on one model, round-robin (one repeat of each configuration in turn, so drift on a
shared machine hits them equally), after 2 warm-up rounds; each figure is the minimum over ``--repeats`` rounds
(the estimate least hurt by other processes on a shared machine; ``--stat median`` for the median):

- **training step** (forward + backward + AdamW step, train mode) on one mixed-task batch (task ``i % tasks``
  for row i): ``pha`` (one adapter, per-example generated weights, the two contrastive losses included),
  ``pfeiffer-per-task`` (one Pfeiffer adapter per task, rows routed to their task's adapter in one forward:
  ``adapter_names=``), ``hyperformer`` (HyperFormer++, per-example generated weights), and ``pfeiffer-one``
  (a single Pfeiffer adapter for every row: the plain baseline of the ratios);
- **inference** (eval, no_grad, one single-task batch): ``materialized`` (``materialize(adapted, "pha", task)``:
  an ordinary bottleneck adapter) against ``bottleneck`` (a freshly added adapter of the same config; target:
  within 5%), and ``pha`` itself (hypernetwork run on every forward) for reference;
- **generation**: ``generate`` forward, and forward + backward (gradient of ones on every generated tensor),
  for the batch's distinct tasks, as a share of the ``pha`` training step (target: under 10%).

Usage::

    python benchmarks/bench_pha.py [--model minilm|tiny] [--batch 8] [--seq 64] [--tasks 3] [--repeats 10]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from adapterkit.methods.bottleneck import PfeifferConfig
from adapterkit.methods.hyperformer import HyperFormerConfig
from adapterkit.methods.pha import PHAConfig, materialize, pha_module
from adapterkit.model import AdaptedModel
from adapterkit.testing import tiny_batch, tiny_model


def load(kind: str) -> torch.nn.Module:
    if kind == "tiny":
        return tiny_model("bert")
    from adapterkit.model import load_base_model

    model, _ = load_base_model(None, pooling="hf")
    return model


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def round_robin(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device,
                stat: Callable[[list[float]], float] = min) -> dict[str, float]:
    """``stat`` (default: the minimum, the estimate least hurt by other processes on a shared machine) of each
    function's time over ``repeats`` rounds, one call of each per round, after 2 warm-up rounds."""
    for _ in range(2):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
    return {k: stat(v) for k, v in times.items()}


def train_step(model: AdaptedModel, batch: dict, **extra: object) -> Callable[[], object]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        model(**batch, **extra).loss.backward()
        opt.step()

    return step


def infer(model: AdaptedModel, batch: dict) -> Callable[[], object]:
    def run() -> None:
        model.eval()
        with torch.no_grad():
            model(**batch)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("minilm", "tiny"), default="minilm")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--stat", choices=("min", "median"), default="min")
    parser.add_argument("--out", default=None, help="also write the Markdown tables to this file")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    torch.manual_seed(0)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the bundled model's fresh classifier is expected: no load report
    stat = min if opts.stat == "min" else statistics.median
    device = torch.device(opts.device)
    tasks = tuple(f"t{i}" for i in range(opts.tasks))
    vocab = 100 if opts.model == "tiny" else 1000
    batch = {k: v.to(device) for k, v in tiny_batch(opts.batch, opts.seq, vocab_size=vocab, num_labels=2).items()}
    task_ids = (torch.arange(opts.batch) % opts.tasks).to(device)

    def adapted() -> AdaptedModel:
        return AdaptedModel(load(opts.model)).to(device)

    pha = adapted()
    pha.add_adapter("pha", PHAConfig(tasks=tasks))
    per_task = adapted()
    for t in tasks:
        per_task.add_adapter(t, PfeifferConfig(), activate=False)
    per_task.set_active_adapters(*tasks)  # trainable; adapter_names routes each row to its own
    hyper = adapted()
    hyper.add_adapter("hf", HyperFormerConfig(tasks=tasks))
    one = adapted()
    one.add_adapter("one", PfeifferConfig())
    routed = [tasks[int(i)] for i in task_ids]
    steps = round_robin({
        "pha": train_step(pha, {**batch, "task_ids": task_ids}),
        "pfeiffer-per-task": train_step(per_task, batch, adapter_names=routed),
        "hyperformer": train_step(hyper, {**batch, "task_ids": task_ids}),
        "pfeiffer-one": train_step(one, batch),
    }, opts.repeats, device, stat)

    shared = pha_module(pha, "pha")
    rows = torch.unique(task_ids)

    def gen_forward() -> None:
        with torch.no_grad():
            shared.generate(shared.prototypes.weight[rows])

    def gen_backward() -> None:
        parts = [p for slot in shared.generate(shared.prototypes.weight[rows]) for p in slot]
        torch.autograd.backward(parts, [torch.ones_like(p) for p in parts])
        shared.zero_grad(set_to_none=True)

    gen = round_robin({"forward": gen_forward, "forward+backward": gen_backward}, opts.repeats, device, stat)

    single = {k: v for k, v in batch.items() if k != "labels"}
    plain = adapted()
    plain.add_adapter("plain", PHAConfig(tasks=tasks).bottleneck_config())
    materialize(pha, "pha", tasks[0], "mat", activate=True)
    pha_model_infer = adapted()
    pha_model_infer.add_adapter("pha", PHAConfig(tasks=tasks))
    infer_t = round_robin({
        "materialized": infer(pha, single),
        "bottleneck": infer(plain, single),
        "pha (generated)": infer(pha_model_infer, {**single, "task_ids": torch.zeros_like(task_ids)}),
    }, 3 * opts.repeats, device, stat)

    counts = {"pha": pha.count_parameters()["adapter:pha"],
              "pfeiffer-per-task": sum(per_task.count_parameters()[f"adapter:{t}"] for t in tasks),
              "hyperformer": hyper.count_parameters()["adapter:hf"], "pfeiffer-one": one.count_parameters()["adapter:one"]}
    base = steps["pfeiffer-one"]
    lines = [
        f"Model {opts.model} ({pha.model.config.model_type}, hidden {pha.build_context().hidden_size}, "
        f"{len(pha.layers)} layers), batch {opts.batch} x {opts.seq} tokens, {opts.tasks} tasks mixed in the batch, "
        f"device {opts.device}, {opts.threads} thread(s), {opts.repeats} rounds ({opts.stat}; inference {3 * opts.repeats}), torch {torch.__version__}, "
        f"{platform.machine()}.", "",
        "| training step | seconds | vs pfeiffer-one | adapter parameters |", "|---|---|---|---|",
        *[f"| {k} | {v:.4f} | {v / base:.2f}x | {counts[k]:,} |" for k, v in steps.items()], "",
        "| inference (single-task batch) | seconds | vs bottleneck |", "|---|---|---|",
        *[f"| {k} | {v:.4f} | {v / infer_t['bottleneck']:.3f}x |" for k, v in infer_t.items()], "",
        "| adapter generation for the batch | seconds | share of the pha training step |", "|---|---|---|",
        *[f"| {k} | {v:.5f} | {100 * v / steps['pha']:.1f}% |" for k, v in gen.items()], "",
        f"Targets: materialized within 5% of bottleneck: "
        f"{'met' if abs(infer_t['materialized'] / infer_t['bottleneck'] - 1) <= 0.05 else 'MISSED'} "
        f"({infer_t['materialized'] / infer_t['bottleneck']:.3f}x); generation (forward+backward) under 10% of the "
        f"step: {'met' if gen['forward+backward'] < 0.1 * steps['pha'] else 'MISSED'} "
        f"({100 * gen['forward+backward'] / steps['pha']:.1f}%).",
    ]
    text = "\n".join(lines)
    print(text)
    if opts.out:
        with open(opts.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
