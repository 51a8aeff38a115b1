"""Learning-rate sensitivity and dev curves: aggregation of a grid of runs (pure functions) and the plots.

A sweep runs every system at every learning rate of a grid and every seed. Per system and learning rate,
the score is the mean over seeds; across the grid we report the mean, the standard deviation (sample) and
the spread (max - min) of those per-lr means: a method that is insensitive to the learning rate has a
small std and spread. Each run also records the dev loss and dev score after every epoch (the
overfitting picture: dev loss against epoch).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..reporting import mean_std


def check_grid(lrs: Sequence[float], source: str = "lrs") -> list[float]:
    """The grid as floats; a non-positive or non-finite value is an error naming it."""
    out = []
    for value in lrs:
        try:
            lr = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: {value!r} is not a number") from None
        if not math.isfinite(lr) or lr <= 0:
            raise ConfigError(f"{source}: learning rates must be > 0, got {value!r}")
        out.append(lr)
    if not out:
        raise ConfigError(f"{source}: empty learning-rate grid")
    return out


def per_lr(rows: Sequence[dict[str, Any]], system: str, scale: float = 100.0) -> dict[float, tuple[float, float, int]]:
    """lr -> (mean, std over seeds, seeds) of the test score of ``system``."""
    out: dict[float, tuple[float, float, int]] = {}
    for lr in sorted({float(r["lr"]) for r in rows if r["system"] == system}):
        vals = [scale * r["test_score"] for r in rows if r["system"] == system and float(r["lr"]) == lr
                and r.get("test_score") is not None and not math.isnan(r["test_score"])]
        if vals:
            m, s = mean_std(vals)
            out[lr] = (m, s, len(vals))
    return out


def aggregate(rows: Sequence[dict[str, Any]], systems: Sequence[str], scale: float = 100.0) -> list[dict[str, Any]]:
    """One row per system: the per-lr means (over seeds), and across the grid their mean, std and spread,
    the best lr (highest mean) and the number of runs."""
    table = []
    for system in systems:
        lrs = per_lr(rows, system, scale)
        if not lrs:
            continue
        means = [m for m, _, _ in lrs.values()]
        mean, std = mean_std(means)
        best = max(lrs, key=lambda lr: lrs[lr][0])
        table.append({"system": system, **{f"lr={lr:g}": f"{m:.1f} ± {s:.1f}" for lr, (m, s, _) in lrs.items()},
                      "grid mean": round(mean, 2), "grid std": round(std, 2), "spread (max-min)":
                      round(max(means) - min(means), 2), "best lr": f"{best:g}",
                      "runs": sum(n for _, _, n in lrs.values())})
    return table


def mean_curve(rows: Sequence[dict[str, Any]], key: str = "dev_loss") -> tuple[list[float], list[float]]:
    """Mean of ``key`` per epoch over the runs' ``curve`` entries (epochs present in any run)."""
    by_epoch: dict[float, list[float]] = {}
    for r in rows:
        for point in r.get("curve") or []:
            if point.get(key) is not None and not math.isnan(point[key]):
                by_epoch.setdefault(round(float(point["epoch"]), 3), []).append(float(point[key]))
    epochs = sorted(by_epoch)
    return epochs, [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs]


def sweep_plot(path: str | Path, rows: Sequence[dict[str, Any]], systems: Sequence[str], *, title: str = "",
               ylabel: str = "test score x100") -> Path:
    """Score against learning rate (log axis), one line per system, seed std as error bars."""
    from ..reporting import new_figure, save_figure

    fig, ax, path = new_figure(path, size=(5.8, 3.8))
    for i, system in enumerate(systems):
        lrs = per_lr(rows, system)
        if lrs:
            xs = list(lrs)
            ax.errorbar(xs, [lrs[x][0] for x in xs], yerr=[lrs[x][1] for x in xs], marker="o", capsize=3,
                        label=system, color=f"C{i % 10}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(ylabel)
    ax.set_title(title or "score against learning rate (mean ± std over seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def curves_plot(path: str | Path, groups: dict[str, Sequence[dict[str, Any]]], *, key: str = "dev_loss",
                title: str = "") -> Path:
    """``key`` (dev loss by default) against epoch, one line per group of runs (mean over the group)."""
    from ..reporting import new_figure, save_figure

    fig, ax, path = new_figure(path, size=(5.8, 3.8))
    for i, (name, rows) in enumerate(groups.items()):
        xs, ys = mean_curve(rows, key)
        if xs:
            ax.plot(xs, ys, marker=".", label=name, color=f"C{i % 10}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(key.replace("_", " "))
    ax.set_title(title or f"{key.replace('_', ' ')} per epoch (mean over runs)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def overfitting_summary(rows: Sequence[dict[str, Any]], systems: Sequence[str]) -> list[dict[str, Any]]:
    """Per system: the epoch of the lowest mean dev loss, that loss, the final mean dev loss and their
    difference (how far dev loss rises after its minimum: larger = more overfitting)."""
    out = []
    for system in systems:
        xs, ys = mean_curve([r for r in rows if r["system"] == system], "dev_loss")
        if not xs:
            continue
        k = min(range(len(ys)), key=ys.__getitem__)
        out.append({"system": system, "min dev loss": round(ys[k], 4), "at epoch": round(xs[k], 2),
                    "final dev loss": round(ys[-1], 4), "rise after min": round(ys[-1] - ys[k], 4),
                    "epochs": round(xs[-1], 2)})
    return out
