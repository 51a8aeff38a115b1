"""Forward+backward time of the rational activation against nn.GELU on bottleneck-shaped tensors (CPU).

Usage::

    python benchmarks/bench_rational.py [--repeats 30] [--threads 2]

Shapes are batch x sequence x bottleneck width (16 x 128 x 24: MiniLM's 384 / 16; 16 x 128 x 48:
BERT-base's 768 / 16), float32. One step = forward, ``sum`` and backward into the input (and the
rational's coefficients). After warm-up the timed repeats alternate between the two activations so
drift hits both equally; figures are medians in milliseconds.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from adapterkit.methods.rational import Rational  # noqa: E402

SHAPES = [(16, 128, 24), (16, 128, 48)]


def step_fn(act: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        act.zero_grad(set_to_none=True)
        act(x).sum().backward()

    return step


def timed(step: Callable[[], None]) -> float:
    start = time.perf_counter()
    step()
    return (time.perf_counter() - start) * 1e3


def bench(shape: tuple[int, ...], repeats: int, warmup: int = 5) -> dict[str, float]:
    x = torch.randn(*shape, requires_grad=True)
    steps = {"gelu": step_fn(nn.GELU(), x), "rational": step_fn(Rational("gelu"), x)}
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(timed(step))
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, float32, forward+backward, median of {args.repeats}")
    print("| shape | GELU ms | Rational ms | ratio |")
    print("|---|---:|---:|---:|")
    for shape in SHAPES:
        result = bench(shape, args.repeats)
        ratio = result["rational"] / result["gelu"]
        print(f"| {'x'.join(map(str, shape))} | {result['gelu']:.3f} | {result['rational']:.3f} | {ratio:.1f}x |")


if __name__ == "__main__":
    main()
