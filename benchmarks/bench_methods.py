"""Training-step time, peak memory and inference latency of adapter methods on the bundled MiniLM (CPU).

Usage::

    python benchmarks/bench_methods.py [--repeats 10] [--quick] [--out results.md]

Timing: every configuration lives in this one process; after warm-up, the timed repeats go
round-robin over the configurations (repeat 1 of each, then repeat 2 of each, ...) so drift on a
shared machine hits them equally; figures are medians. Beside wall time, each step's process CPU time
(``time.process_time``) is recorded: on a machine shared with other jobs it is far less disturbed than
wall time (waiting for a core does not count), so ratios of close configurations are best read from it.
``--gate-repeats`` adds alternating repeats of gated vs ungated UniPELT (the gates cost a few percent).

Memory: one fresh subprocess per configuration. It builds the model and optimizer, resets the
kernel's resident-set high-water mark (``/proc/self/clear_refs`` = 5; ``ru_maxrss`` as a fallback),
runs a few training steps and reports the peak RSS *increase* over the RSS just before training:
activations, gradients, AdamW state and whatever the allocator keeps cached. It is process RSS,
not a count of tensor bytes.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

BATCH, SEQ_LEN, THREADS = 16, 128, 2
TRAIN_CONFIGS = ["full", "pfeiffer", "houlsby", "parallel", "lora", "prompt", "prefix", "peft-lora",
                 "full-nodrop", "pfeiffer-nodrop", "unipelt", "unipelt-nogate"]
# "-nodrop": no dropout in the pretrained model (full: every dropout p=0; pfeiffer: AdaptedModel.backbone_dropout
# = False, the frozen backbone runs as in evaluation while the adapter and head train)
INFER_CONFIGS = ["bare", "pfeiffer", "lora-unmerged", "lora-merged", "unipelt"]
# "unipelt": gated A+P+L (the authors' defaults); "unipelt-nogate": the same three components without gates


@dataclass
class Setup:
    """One measured configuration: a model, how to run one step, and what it trains."""

    name: str
    model: nn.Module
    step: Callable[[], None]
    trainable: int = 0
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)  # process CPU time per step (less hit by other jobs)


def make_batch(vocab_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (BATCH, SEQ_LEN), generator=g)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.randint(0, 2, (BATCH,), generator=g),
    }


def registered_methods() -> set[str]:
    from adapterkit.registry import METHODS, get_method

    get_method("lora")  # imports adapterkit.methods, which registers every built-in method
    return set(METHODS)


def build_model(name: str, base: nn.Module) -> nn.Module | None:
    """The model for configuration ``name`` (None when its method or peft is unavailable)."""
    from adapterkit.model import AdaptedModel
    from adapterkit.registry import METHODS

    model = copy.deepcopy(base)
    if name in ("full", "bare", "full-nodrop"):
        for p in model.parameters():
            p.requires_grad_(True)
        if name == "full-nodrop":
            for module in model.modules():
                if isinstance(module, nn.Dropout):
                    module.p = 0.0
        return model
    if name == "peft-lora":
        try:
            import peft
        except ImportError:
            return None
        cfg = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"])
        model = peft.get_peft_model(model, cfg)
        # train the same head as adapterkit's "adapters" mode (pooler + classifier), so both do equal work
        for n, p in model.named_parameters():
            if ".pooler." in n or ".classifier." in n:
                p.requires_grad_(True)
        return model
    method = {"lora-unmerged": "lora", "lora-merged": "lora", "pfeiffer-nodrop": "pfeiffer",
              "unipelt-nogate": "unipelt"}.get(name, name)
    if method not in METHODS:
        return None
    if method == "lora":
        config = METHODS[method](r=8, targets=("query", "value"))
    elif name == "unipelt-nogate":
        config = METHODS[method](gated=False)
    else:
        config = METHODS[method]()
    adapted = AdaptedModel(model)
    adapted.add_adapter(method, config)
    if name == "lora-merged":
        adapted.merge_adapter(method)
    if name == "pfeiffer-nodrop":
        adapted.backbone_dropout = False
    return adapted


def train_setup(name: str, base: nn.Module, batch: dict[str, torch.Tensor]) -> Setup | None:
    model = build_model(name, base)
    if model is None:
        return None
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        optimizer.step()

    return Setup(name, model, step, sum(p.numel() for p in params))


def infer_setup(name: str, base: nn.Module, batch: dict[str, torch.Tensor]) -> Setup | None:
    model = build_model(name, base)
    if model is None:
        return None
    model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}

    def step() -> None:
        with torch.no_grad():
            model(**inputs)

    return Setup(name, model, step)


def time_round_robin(setups: list[Setup], warmup: int, repeats: int) -> None:
    for s in setups:
        for _ in range(warmup):
            s.step()
    for _ in range(repeats):
        for s in setups:
            start, cpu = time.perf_counter(), time.process_time()
            s.step()
            s.times.append(time.perf_counter() - start)
            s.cpu_times.append(time.process_time() - cpu)


def load_base() -> nn.Module:
    from adapterkit.model import load_base_model

    model, _ = load_base_model(None, "classification", 2)
    return model


# -- memory (one subprocess per configuration) ------------------------------------------------------
def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _hwm_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def memory_worker(name: str, steps: int) -> dict[str, Any]:
    """Run in a fresh process: peak RSS increase (MiB) over ``steps`` training steps of ``name``."""
    torch.set_num_threads(THREADS)
    base = load_base()
    batch = make_batch(base.config.vocab_size)
    setup = train_setup(name, base, batch)
    if setup is None:
        return {"name": name, "available": False}
    del base
    before = _rss_kb()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        measure = "VmHWM"
    except OSError:
        measure = "ru_maxrss"
    for _ in range(steps):
        setup.step()
    peak = _hwm_kb() if measure == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"name": name, "available": True, "delta_mib": (peak - before) / 1024, "rss_before_mib": before / 1024,
            "measure": measure}


def measure_memory(names: list[str], steps: int) -> dict[str, dict[str, Any]]:
    results = {}
    for name in names:
        proc = subprocess.run(
            [sys.executable, __file__, "--memory-worker", name, "--memory-steps", str(steps)],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            results[name] = {"name": name, "available": False, "error": proc.stderr.strip().splitlines()[-1:]}
            continue
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results


# -- report ---------------------------------------------------------------------------------------
def median_ms(s: Setup) -> float:
    return statistics.median(s.times) * 1e3


def median_cpu_ms(s: Setup) -> float:
    return statistics.median(s.cpu_times) * 1e3


def spread(s: Setup) -> str:
    q = statistics.quantiles(s.times, n=4) if len(s.times) >= 4 else [min(s.times), 0, max(s.times)]
    return f"{q[0] * 1e3:.0f}-{q[2] * 1e3:.0f}"


def report(train: list[Setup], infer: list[Setup], memory: dict[str, dict[str, Any]], args: argparse.Namespace,
           missing: list[str]) -> str:
    by = {s.name: s for s in train}
    inf = {s.name: s for s in infer}
    full, full_cpu = median_ms(by["full"]), median_cpu_ms(by["full"])
    lines = [
        "# adapterkit method benchmark",
        "",
        f"- command: `python benchmarks/bench_methods.py {' '.join(sys.argv[1:])}`".replace("  ", " "),
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
        f"(threads={torch.get_num_threads()}), Python {platform.python_version()}",
        f"- workload: bundled MiniLM-L6 (BertForSequenceClassification, 2 labels), batch {BATCH} x {SEQ_LEN} tokens, "
        f"{args.warmup} warm-up + {args.repeats} timed repeats per configuration, interleaved round-robin; medians"
        + (f"; lora and peft-lora get {args.lora_repeats} more alternating repeats" if args.lora_repeats else "")
        + (f"; unipelt and unipelt-nogate get {args.gate_repeats} more alternating repeats" if args.gate_repeats
           else ""),
        "- memory: peak RSS increase during training steps, measured in one fresh subprocess per configuration "
        "(VmHWM reset via /proc/self/clear_refs; includes activations, grads, AdamW state, allocator cache)",
        "",
        "## Training step (forward + backward + AdamW step)",
        "",
        "| configuration | trainable params | step ms (median) | IQR ms | x full FT | CPU ms (median) | CPU x full FT "
        "| peak RSS increase MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in train:
        mem = memory.get(s.name, {})
        mem_txt = f"{mem['delta_mib']:.0f}" if mem.get("available") else "n/a"
        lines.append(
            f"| {s.name} | {s.trainable:,} | {median_ms(s):.1f} | {spread(s)} | {median_ms(s) / full:.2f} | "
            f"{median_cpu_ms(s):.1f} | {median_cpu_ms(s) / full_cpu:.2f} | {mem_txt} |"
        )
    if missing:
        lines += ["", f"Not measured (method not registered or package missing): {', '.join(missing)}"]
    lines += [
        "",
        "## Inference (eval, no_grad, one batch)",
        "",
        "| configuration | latency ms (median) | IQR ms | x bare | CPU ms (median) | CPU x bare |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    bare, bare_cpu = median_ms(inf["bare"]), median_cpu_ms(inf["bare"])
    for s in infer:
        lines.append(f"| {s.name} | {median_ms(s):.1f} | {spread(s)} | {median_ms(s) / bare:.3f} | "
                     f"{median_cpu_ms(s):.1f} | {median_cpu_ms(s) / bare_cpu:.3f} |")

    def ratio(table: dict[str, Setup], a: str, b: str | float, of: Callable[[Setup], float] = median_ms
              ) -> float | None:
        den = b if isinstance(b, float) else (of(table[b]) if b in table else None)
        return of(table[a]) / den if a in table and den else None

    targets: list[tuple[str, float | None, float]] = [
        ("Pfeiffer training step <= 0.55x full fine-tuning", ratio(by, "pfeiffer", full), 0.55),
        ("our LoRA training step <= 1.0x peft's LoRA", ratio(by, "lora", "peft-lora"), 1.0),
        ("Pfeiffer step <= 0.55x full FT, both without dropout in the pretrained model",
         ratio(by, "pfeiffer-nodrop", "full-nodrop"), 0.55),
        ("Pfeiffer without backbone dropout <= 0.55x full FT with dropout (defaults)",
         ratio(by, "pfeiffer-nodrop", full), 0.55),
        ("UniPELT gates add <= 10% step time over the ungated A+P+L", ratio(by, "unipelt", "unipelt-nogate"), 1.10),
        ("the same, in process CPU time per step", ratio(by, "unipelt", "unipelt-nogate", median_cpu_ms), 1.10),
        ("one bottleneck adapter inference <= 1.05x bare", ratio(inf, "pfeiffer", bare), 1.05),
        ("merged LoRA inference within 2% of bare", ratio(inf, "lora-merged", bare), 1.02),
    ]
    lines += ["", "## Targets", "", "| target | measured | result |", "|---|---:|---|"]
    for text, ratio, limit in targets:
        if ratio is None:
            lines.append(f"| {text} | n/a | not measured (configuration not run, or its package missing) |")
        else:
            lines.append(f"| {text} | {ratio:.3f} | {'PASS' if ratio <= limit else 'MISS'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per configuration (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per configuration first")
    parser.add_argument("--quick", action="store_true", help="3 repeats, 1 warm-up, 2 memory steps")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-configuration memory subprocesses")
    parser.add_argument("--memory-steps", type=int, default=3, help="training steps per memory subprocess")
    parser.add_argument("--lora-repeats", type=int, default=24,
                        help="extra alternating repeats of lora vs peft-lora (their medians use all repeats)")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch threads (1 on a machine shared with "
                        "other jobs: two-thread timings of many small operations then measure contention)")
    parser.add_argument("--gate-repeats", type=int, default=24,
                        help="extra alternating repeats of unipelt vs unipelt-nogate (their medians use all repeats)")
    parser.add_argument("--configs", help="comma-separated training configurations to time (default: all); full and "
                        "bare always run, as the baselines")
    parser.add_argument("--out", help="also write the Markdown report to this file")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker, args.memory_steps)))
        return
    if args.quick:
        args.repeats, args.warmup, args.memory_steps, args.lora_repeats, args.gate_repeats = 3, 1, 2, 0, 0

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    methods = registered_methods()
    try:
        import peft  # noqa: F401
    except ImportError:
        print("peft is not installed: skipping peft's LoRA (pip install 'adapterkit[bench]')", file=sys.stderr)
    base = load_base()
    batch = make_batch(base.config.vocab_size)

    missing: list[str] = []
    train: list[Setup] = []
    chosen = set(args.configs.split(",")) | {"full"} if args.configs else set(TRAIN_CONFIGS)
    unknown = chosen - set(TRAIN_CONFIGS)
    if unknown:
        parser.error(f"--configs: unknown {sorted(unknown)}; known: {TRAIN_CONFIGS}")
    for name in [n for n in TRAIN_CONFIGS if n in chosen]:
        if name in ("prompt", "prefix") and name not in methods:
            missing.append(name)
            continue
        setup = train_setup(name, base, batch)
        if setup is None:
            missing.append(name)
        else:
            train.append(setup)
    infer = [s for s in (infer_setup(n, base, batch) for n in INFER_CONFIGS if n == "bare" or not args.configs
                         or n in chosen or n.startswith("lora") and "lora" in chosen) if s is not None]

    print(f"timing {len(train)} training configurations x {args.repeats} repeats ...", file=sys.stderr)
    time_round_robin(train, args.warmup, args.repeats)
    pair = [s for s in train if s.name in ("lora", "peft-lora")]
    if len(pair) == 2 and args.lora_repeats:
        # the two LoRAs differ by a few percent at most: time them head to head for longer, alternating
        print(f"timing lora vs peft-lora x {args.lora_repeats} more repeats ...", file=sys.stderr)
        time_round_robin(pair, 0, args.lora_repeats)
    pair = [s for s in train if s.name in ("unipelt", "unipelt-nogate")]
    if len(pair) == 2 and args.gate_repeats:
        # the gates' cost is a few percent of a step: time gated and ungated head to head for longer, alternating
        print(f"timing unipelt vs unipelt-nogate x {args.gate_repeats} more repeats ...", file=sys.stderr)
        time_round_robin(pair, 0, args.gate_repeats)
    print(f"timing {len(infer)} inference configurations x {args.repeats * 3} repeats ...", file=sys.stderr)
    time_round_robin(infer, args.warmup, args.repeats * 3)
    for s in [*train, *infer]:  # free the models (keep the timings) before the memory subprocesses run
        s.model, s.step = nn.Identity(), lambda: None
    memory: dict[str, dict[str, Any]] = {}
    if not args.no_memory:
        print("measuring memory (one subprocess per configuration) ...", file=sys.stderr)
        memory = measure_memory([s.name for s in train], args.memory_steps)
    text = report(train, infer, memory, args, missing)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
