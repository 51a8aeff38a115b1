"""Few-shot heads and pooling: does tuning beat doing nothing? Old head (``hf``) vs the model's own pooling.

For each task, k (examples per class), seed and pooling: dev is carved from train (k per class, for
epoch selection and the probe's L2 strength), the official dev set (capped at ``--test-size``) is the
test set. Systems:

- ``majority``: the most frequent training label (the trivial baseline);
- ``probe``: logistic regression on the frozen backbone's pooled features (no gradient training);
- ``head``: frozen backbone, the pooled head trained by gradient descent;
- ``pfeiffer``, ``lora``, ``prompt``: adapters (+ the head);
- ``full``: full fine-tuning.

``--poolings`` lists the heads compared: ``hf`` is the Hugging Face head as before this experiment
(BERT: [CLS] through the checkpoint's pooler, then a fresh linear layer), ``auto`` the model's own
(mean pooling for the bundled MiniLM). Results: ``results.md`` (mean ± std over seeds per k), JSON, and
``fewshot_TASK.png`` (test score against k per system).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..config import opt
from ..errors import ConfigError
from .common import check_systems, option_groups
from .common import learning_rates as common_learning_rates

DESCRIPTION = "Few-shot heads: majority, linear probe, head, adapters and full fine-tuning, old vs new pooling"
SYSTEMS = ("majority", "probe", "head", "pfeiffer", "lora", "prompt", "full")
LRS = {"head": 1e-2, "pfeiffer": 3e-3, "lora": 1e-3, "prompt": 3e-2, "full": 1e-4}
"""Default learning rate per trained system (few-shot, 20 epochs, batch 16)."""


@dataclass
class Options:
    """Few-shot options besides the common ones."""

    k_shots: list[int] = opt([32], "comma-separated training examples per class")
    poolings: list[str] = opt(["hf", "auto"], "heads to compare: hf (the Hugging Face head, as before) and auto (the "
                              "model's own pooling), or any pooling of adapterkit.heads")
    lrs: str | None = opt(None, "per-system learning rates, e.g. pfeiffer=3e-3,full=1e-4 (defaults: "
                          + ", ".join(f"{k} {v:g}" for k, v in LRS.items()) + "; --learning-rate sets them all)")
    test_size: int | None = opt(500, "cap on test examples")
    short_classes: Literal["error", "all"] = opt(
        "error", "a class with fewer than k training examples: error, or all (train on every example it has; for "
        "long-tailed label sets such as ChemProt)")


OPTIONS = option_groups(
    {"output_dir": "runs/fewshot", "tasks": ["sst2"], "seeds": [42, 92, 111, 245, 651], "systems": list(SYSTEMS)},
    Options,
    {"epochs": 20.0, "learning_rate": None, "batch_size": 16},
    {"learning_rate": "one learning rate for every trained system (default: per system, see --lrs)"},
    ("lp_init", "patience"),
    head=False,
)
SETTINGS = ("model", "epochs", "learning_rate", "lrs", "batch_size", "max_length", "test_size", "precision", "lp_init",
            "patience", "short_classes")
"""Options that change results: a log is never extended under other values (see ResultLog)."""
LEGACY_SETTINGS = {"short_classes": "error"}
"""Settings added after logs were written, with the value those logs ran under."""
KEYS = ("task", "k", "seed", "pooling", "system")


def learning_rates(opts: dict[str, Any]) -> dict[str, float]:
    """``LRS`` with ``--learning-rate`` and ``--lrs`` applied (see :func:`.common.learning_rates`)."""
    return common_learning_rates(opts, LRS)


def split(spec: Any, data_dir: Any, k: int, seed: int, test_size: int | None,
          short_classes: str = "error") -> tuple[list, list, list]:
    """k per class for train, and a dev set of k x classes carved from train (stratified); the official dev set
    (capped) as test."""
    from ..data.sampling import subsample
    from ..runner import split_data

    train, dev, test, _ = split_data(spec, data_dir, k_shot=k, train_size=None, dev_size=k * spec.num_labels,
                                     seed=seed, short_classes=short_classes)
    if test_size and test and len(test) > test_size:
        test = subsample(test, test_size, seed)
    return train, dev, test or []


def run(opts: dict[str, Any]) -> int:
    """Run the grid (resumable), then write results.md, results.json and the plots."""
    from ..data.tasks import get_task, resolve_data_dir
    from ..heads import REQUESTS, HeadConfig
    from ..options import DataOptions, ModelOptions, build
    from ..runner import NO_CHECKPOINTS, run_training
    from ..training import TrainConfig
    from .common import ResultLog, logged_settings

    check_systems(opts["systems"], SYSTEMS)
    bad = [p for p in opts["poolings"] if p not in REQUESTS]
    if bad:
        raise ConfigError(f"poolings: {bad[0]!r}: use any of {list(REQUESTS)}")
    rates = learning_rates(opts)
    data_dir = resolve_data_dir(opts.get("data_dir"))
    out = Path(opts["output_dir"])
    log = ResultLog(out / "runs.jsonl", logged_settings(opts, SETTINGS), legacy=LEGACY_SETTINGS)
    # seeds outermost: an experiment stopped early has whole seeds; cheap baselines first within a cell
    plan = [(t, k, s, p, sys) for s in opts["seeds"] for t in opts["tasks"] for k in opts["k_shots"]
            for p in opts["poolings"] for sys in SYSTEMS if sys in opts["systems"]]
    todo, progress = log.pending(KEYS, plan, "fewshot", opts["report_only"])
    data_cache: dict[tuple, tuple] = {}
    for task, k, seed, pooling, system in todo:
        spec = get_task(task)
        if spec.kind != "classification":
            raise ConfigError(f"tasks: {task}: few-shot (k per class) needs a classification task")
        if (task, k, seed) not in data_cache:
            data_cache.clear()
            data_cache[(task, k, seed)] = split(spec, data_dir, k, seed, opts.get("test_size"),
                                                  opts.get("short_classes", "error"))
        data = data_cache[(task, k, seed)]
        label = f"{task} k={k} seed={seed} {pooling} {system}"
        progress.step(label)
        config = build(TrainConfig, opts, train_mode=system if system in ("full", "head") else "adapters", learning_rate=rates.get(system), seed=seed,
                       lp_init=bool(opts["lp_init"]) and system not in ("probe", "majority") and pooling != "hf",
                       logging_steps=max(1, len(data[0]) // opts["batch_size"]),
                       output_dir=str(out / "work" / label.replace(" ", "_")), **NO_CHECKPOINTS)
        row = run_training(DataOptions(data_dir=data_dir), ModelOptions(model=opts.get("model"), method=system), config,
                           spec=spec, examples=data, label=label, head=HeadConfig(pooling))
        log.add({"task": task, "k": k, "seed": seed, "pooling": pooling, "system": system, "lr": rates.get(system),
                 **{key: row.get(key) for key in ("test_score", "dev_score", "best_epoch", "trainable",
                                                  "train_seconds", "history")}})
        progress.finish()
    report(log.unique(KEYS), opts)
    return 0


def report(rows: list[dict[str, Any]], opts: dict[str, Any]) -> None:
    """Per task and pooling: a table of mean ± std over seeds per k; a plot of score against k per system."""
    from ..console import say
    from ..data.tasks import get_task
    from ..reporting import markdown_table, mean_std
    from .common import test_score_cell, trivial_note, trivial_runs

    out = Path(opts["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for r in rows if r["seed"] in opts["seeds"] and r["task"] in opts["tasks"]]
    at_trivial = trivial_runs(rows, ("task", "pooling", "k"))
    systems = [s for s in SYSTEMS if s in opts["systems"]]
    rates = learning_rates(opts)
    text = ["# Few-shot heads and pooling\n",
            f"Model: {opts.get('model') or 'bundled all-MiniLM-L6-v2'}. Train: k examples per class; dev: k per class "
            f"carved from train (selects the epoch, and the probe's L2 strength); test: the official dev set "
            f"(at most {opts.get('test_size')} examples). {opts['epochs']:g} epochs, batch {opts['batch_size']}, "
            f"max length {opts['max_length']}, precision {opts['precision']}, LP-FT {bool(opts['lp_init'])}, patience "
            f"{opts.get('patience')}, short classes {opts.get('short_classes', 'error')}; learning rates: " + ", ".join(f"{s} {rates[s]:g}" for s in systems if s in rates)
            + ". Scores x100, mean ± std over seeds (n = seeds done).\n"]
    plots = []
    for task in opts["tasks"]:
        metric = get_task(task).metric
        for pooling in opts["poolings"]:
            mine = [r for r in rows if r["task"] == task and r["pooling"] == pooling]
            if not mine:
                continue
            table = []
            for system in systems:
                cells: dict[str, Any] = {"system": system}
                for k in opts["k_shots"]:
                    runs = [r for r in mine if r["system"] == system and r["k"] == k and r["test_score"] is not None]
                    cells[f"k{k}"] = test_score_cell(runs, at_trivial)
                table.append(cells)
            columns = {"system": "System", **{f"k{k}": f"k={k}" for k in opts["k_shots"]}}
            text += [f"\n## {task} ({metric}), pooling `{pooling}`\n", markdown_table(table, columns),
                     *trivial_note(table)]
        series: dict[str, tuple[list[float], list[float]]] = {}
        for pooling in opts["poolings"]:
            for system in systems:
                xs, ys = [], []
                for k in opts["k_shots"]:
                    vals = [100 * r["test_score"] for r in rows if r["task"] == task and r["pooling"] == pooling
                            and r["system"] == system and r["k"] == k and r["test_score"] is not None]
                    if vals:
                        xs.append(k)
                        ys.append(mean_std(vals)[0])
                if xs:
                    series[f"{system} ({pooling})" if len(opts["poolings"]) > 1 else system] = (xs, ys)
        if series:
            plots.append(_plot(out / f"fewshot_{task}.png", series, f"{task}: test {metric} x100 vs k (mean over seeds)"))
    (out / "results.md").write_text("\n".join(text) + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"options": {k: v for k, v in opts.items() if not k.startswith("_")},
                                                  "rows": rows}, indent=1, default=str), encoding="utf-8")
    say("\n".join(text))
    say(f"wrote {out / 'results.md'}, {out / 'results.json'}" + "".join(f", {p}" for p in plots))


def _plot(path: Path, series: dict[str, tuple[list[float], list[float]]], title: str) -> Path:
    """Score against k (log scale) per system; the old head dashed."""
    from ..reporting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors: dict[str, Any] = {}
    for name, (xs, ys) in series.items():
        system = name.split(" (")[0]
        style = "--" if name.endswith("(hf)") else "-"
        line = ax.plot(xs, ys, style, marker="o", label=name, color=colors.get(system))
        colors.setdefault(system, line[0].get_color())
    ax.set_xscale("log", base=2)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("k (training examples per class)")
    ax.set_ylabel("test score x100")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
