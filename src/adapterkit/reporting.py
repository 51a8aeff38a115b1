"""Result tables and plots: Markdown tables, mean ± std, and PNG bar/line plots (matplotlib, Agg)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def format_value(value: Any, digits: int = 4) -> str:
    """Numbers as short strings (ints with thousands separators); None as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}f}"
    return str(value)


def _digits(digits: int | Mapping[str, int], key: str) -> int:
    return digits.get(key, 4) if isinstance(digits, Mapping) else digits


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | Mapping[str, str] | None = None,
                   digits: int | Mapping[str, int] = 4) -> str:
    """A GitHub Markdown table; ``columns`` is a list of keys or a ``{key: header}`` mapping (default: all keys).

    ``digits`` is the number of decimals for floats, or ``{key: decimals}`` per column (default 4).
    """
    if columns is None:
        keys: list[str] = []
        for row in rows:
            keys.extend(k for k in row if k not in keys)
        columns = keys
    headers = dict(columns) if isinstance(columns, Mapping) else {c: c for c in columns}
    cells = [[format_value(row.get(key), _digits(digits, key)).replace("|", "\\|") for key in headers] for row in rows]
    numeric = [all(isinstance(row.get(k), (int, float)) or row.get(k) is None for row in rows) and rows
               for k in headers]
    lines = ["| " + " | ".join(headers.values()) + " |",
             "|" + "|".join("---:" if num else "---" for num in numeric) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(lines) + "\n"


def text_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | Mapping[str, str],
               digits: int | Mapping[str, int] = 4) -> str:
    """A plain fixed-width table for terminals (``digits`` as in :func:`markdown_table`)."""
    headers = dict(columns) if isinstance(columns, Mapping) else {c: c for c in columns}
    cells = [[format_value(row.get(key), _digits(digits, key)) for key in headers] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers.values())]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*headers.values()), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*r) for r in cells]
    return "\n".join(line.rstrip() for line in out) + "\n"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0.0 for a single value); NaN for no values."""
    vals = [float(v) for v in values]
    if not vals:
        return math.nan, math.nan
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def format_mean_std(values: Sequence[float], digits: int = 2, scale: float = 1.0) -> str:
    """``"mean ± std"`` of ``values * scale``."""
    mean, std = mean_std([v * scale for v in values])
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _bars(ax: Any, labels: Sequence[str], values: Sequence[float], errors: Sequence[float] | None = None,
          annotations: Sequence[str] | None = None) -> None:
    """Bars with optional error bars and a note above each bar."""
    bars = ax.bar(list(labels), list(values), yerr=list(errors) if errors else None, capsize=4,
                  color=[f"C{i}" for i in range(len(labels))])
    for bar, text in zip(bars, annotations or [], strict=False):
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=8, xytext=(0, 2), textcoords="offset points")


def _lines(ax: Any, series: Mapping[str, tuple[Sequence[float], Sequence[float]]]) -> None:
    """One marked line per ``{name: (xs, ys)}``, with a legend and a grid."""
    for i, (name, (xs, ys)) in enumerate(series.items()):
        ax.plot(list(xs), list(ys), marker="o", label=name, color=f"C{i % 10}")
    if series:
        ax.legend()
    ax.grid(alpha=0.3)


def new_figure(path: str | Path, *, size: tuple[float, float], panels: int = 1) -> tuple[Any, Any, Path]:
    """A figure with ``panels`` axes side by side, and ``path`` as a Path whose folder exists."""
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, panels, figsize=size)
    return fig, axes, path


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write as PNG and close ``fig``; returns ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def bar_plot(path: str | Path, labels: Sequence[str], values: Sequence[float], *, title: str = "",
             ylabel: str = "", errors: Sequence[float] | None = None, annotations: Sequence[str] | None = None,
             ylim: tuple[float, float] | None = None) -> Path:
    """A bar chart written as PNG; ``annotations`` are printed above the bars."""
    fig, ax, path = new_figure(path, size=(max(4.0, 1.2 * len(labels) + 2), 3.6))
    _bars(ax, labels, values, errors, annotations)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    return save_figure(fig, path)


def line_plot(path: str | Path, series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str = "",
              xlabel: str = "", ylabel: str = "", logx: bool = False) -> Path:
    """One line per ``{name: (xs, ys)}`` written as PNG (e.g. dev loss per step from ``TrainResult.history``)."""
    fig, ax, path = new_figure(path, size=(5.5, 3.6))
    _lines(ax, series)
    if logx:
        ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return save_figure(fig, path)


def results_figure(path: str | Path, rows: Sequence[Mapping[str, Any]], *, name_key: str, score_key: str,
                   params_key: str, histories: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                   title: str = "") -> Path:
    """Two panels: score per system (bars, annotated with trainable parameters) and dev score per epoch."""
    fig, (left, right), path = new_figure(path, size=(10, 3.8), panels=2)
    scores = [float(r[score_key]) for r in rows]
    _bars(left, [str(r[name_key]) for r in rows], scores,
          annotations=[f"{_short(r[params_key])} params" for r in rows])
    left.set_ylim(0, 1.05 * max([1.0, *scores]))
    left.set_ylabel(score_key)
    left.set_title("test score (dev-selected)")
    _lines(right, histories)
    right.set_xlabel("epoch")
    right.set_ylabel("dev score")
    right.set_title("dev score per epoch")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def _short(n: Any) -> str:
    n = float(n)
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{int(n)}"


def grouped_bar_plot(path: str | Path, groups: Sequence[str], series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                     *, title: str = "", ylabel: str = "", ylim: tuple[float, float] | None = None) -> Path:
    """Bars per group (x axis) and series (colours), ``{series: (means, stds)}`` with one value per group."""
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = max(1, len(series))
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * n * len(groups) + 3), 4.2))
    for i, (name, (means, stds)) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, list(means), width, yerr=list(stds), capsize=2, label=name, color=f"C{i % 10}",
               hatch="//" if i >= 10 else None)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(list(groups))
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def heatmap(path: str | Path, rows: Sequence[str], cols: Sequence[str], values: Sequence[Sequence[float]], *,
            title: str = "", xlabel: str = "", ylabel: str = "", vmin: float | None = None,
            vmax: float | None = None) -> Path:
    """A rows x cols heat map with each cell's value printed, written as PNG (NaN cells left blank)."""
    import numpy as np

    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(values, dtype=float).reshape(len(rows), len(cols))
    fig, ax = plt.subplots(figsize=(max(3.5, 1.3 * len(cols) + 2), max(2.5, 0.45 * len(rows) + 1.5)))
    image = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), list(cols), rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), list(rows))
    for i in range(len(rows)):
        for j in range(len(cols)):
            if np.isfinite(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=8, color="white")
    fig.colorbar(image, ax=ax)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
