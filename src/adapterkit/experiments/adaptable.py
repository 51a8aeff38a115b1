"""Adaptable Adapters (Moosavi et al. 2022) in low-data settings: standard adapter, AdapterDrop, AA, AA-focused.

For each task, training size N and seed: N examples are drawn from the training set and split 75/25
into train and dev (dev selects the epoch), and the official dev set is the test set. Systems:

- ``majority``, ``probe``, ``head``: baselines (the majority class or training mean; a linear probe on the
  frozen features; the head trained on the frozen backbone), with the same head (``--pooling``);
- ``pfeiffer``: a standard Pfeiffer adapter in every layer;
- ``adapterdrop``: the same, dropping the adapters of the lowest n layers (n random per step) in training;
- ``aa``: adaptable adapter (rational activations + Gumbel layer switch); its selected layers (adapter
  logit > skip logit at the best checkpoint) go to ``selections/TASK_N_SEED.json``;
- ``aa-focused``: a fresh Pfeiffer adapter with rational activations in the layers AA selected only
  (with ``--cache-frozen-layers``, the frozen layers below the lowest selected layer run once per input).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import opt
from ..errors import ConfigError
from .common import check_systems, option_groups

DESCRIPTION = "Adaptable adapters: rational activations + layer switch vs standard adapters and AdapterDrop"
SYSTEMS = ("majority", "probe", "head", "pfeiffer", "adapterdrop", "aa", "aa-focused")


@dataclass
class Options:
    """Adaptable-adapters options besides the common ones."""

    sizes: list[int] = opt([100, 300, 1000], "comma-separated training sizes N, split 75/25 into train/dev")
    test_size: int | None = opt(None, "cap on test examples (default: the whole official dev set)")


OPTIONS = option_groups(
    {"output_dir": "runs/adaptable", "tasks": ["rte", "mrpc", "stsb", "sst2", "cola"],
     "seeds": [42, 92, 111, 245, 651], "systems": list(SYSTEMS)},
    Options,
    {"epochs": 20.0, "learning_rate": 1e-3, "batch_size": 32, "backbone_dropout": False, "cache_frozen_layers": True},
    {"backbone_dropout": "dropout in the frozen backbone (for all systems)",
     "cache_frozen_layers": "AA-focused: compute the frozen layers below its lowest layer once per input (needs "
     "--backbone-dropout false)",
     "lp_init": "adapter systems: start the head from a linear probe on the training features (LP-FT); the "
     "baselines never use it"},
    ("cache_frozen_layers", "lp_init"),
)
SETTINGS = ("model", "epochs", "learning_rate", "batch_size", "max_length", "test_size", "backbone_dropout",
            "precision", "pooling", "normalize", "lp_init")
"""Options that change results: a log is never extended under other values (see ResultLog)."""
KEYS = ("task", "size", "seed", "system")


def split(spec: Any, data_dir: Any, size: int, seed: int, test_size: int | None) -> tuple[list, list, list]:
    """N training examples split 75/25 into (train, dev); the official dev set (optionally capped) as test."""
    from ..data.sampling import carve_dev, subsample
    from ..data.tasks import load_task

    data = load_task(spec, data_dir, ["train", "dev"])
    pool = subsample(data["train"], size, seed) if len(data["train"]) > size else list(data["train"])
    train, dev = carve_dev(pool, max(1, round(0.25 * len(pool))), seed, stratify=spec.kind == "classification")
    test = data["dev"]
    if test_size and len(test) > test_size:
        test = subsample(test, test_size, seed)
    return train, dev, test


def adapter_config(system: str, opts: dict[str, Any], selection_path: Path) -> Any:
    """The adapter config of ``system`` (AA-focused reads the AA selection of the same cell)."""
    from ..methods.adaptable import AdaptableConfig, aa_focused_config, read_selection
    from ..methods.adapterdrop import AdapterDropConfig
    from ..methods.bottleneck import PfeifferConfig

    lr = opts["learning_rate"]
    if system == "pfeiffer":
        return PfeifferConfig(learning_rate=lr)
    if system == "adapterdrop":
        return AdapterDropConfig(learning_rate=lr)
    if system == "aa":
        return AdaptableConfig(learning_rate=lr)
    if system == "aa-focused":
        if not selection_path.exists():
            raise ConfigError(f"{selection_path}: aa-focused needs the AA selection of this task/size/seed; "
                              "run the 'aa' system first")
        record = read_selection(selection_path)
        if not record["layers"]:
            return None  # no layer selected: nothing to adapt (trained as head only)
        return aa_focused_config(record, learning_rate=lr)
    raise ConfigError(f"systems: unknown system {system!r}; known: {list(SYSTEMS)}")


def run(opts: dict[str, Any]) -> int:
    """Run the comparison (resumable), then write results.md, results.json and the plots."""
    from transformers import set_seed

    from ..console import say
    from ..data.tasks import get_task, resolve_data_dir
    from ..methods.adaptable import selection_record, switched_modules, write_selection
    from ..runner import load_model
    from .common import (
        BASELINE_SYSTEMS,
        LEGACY_SETTINGS,
        ResultLog,
        baseline_row,
        head_of,
        logged_settings,
        run_cell,
    )

    check_systems(opts["systems"], SYSTEMS)
    if opts["cache_frozen_layers"] and opts["backbone_dropout"]:
        raise ConfigError("cache_frozen_layers: needs --backbone-dropout false (cached layers must be deterministic)")
    data_dir = resolve_data_dir(opts.get("data_dir"))
    out = Path(opts["output_dir"])
    log = ResultLog(out / "runs.jsonl", logged_settings(opts, SETTINGS), legacy={**LEGACY_SETTINGS, "lp_init": False})
    order = [s for s in SYSTEMS if s in opts["systems"]]  # AA before AA-focused
    # seeds outermost: an experiment stopped early (or extended with more seeds later) has whole seeds
    plan = [(t, n, s, sys) for s in opts["seeds"] for t in opts["tasks"] for n in opts["sizes"] for sys in order]
    todo, progress = log.pending(KEYS, plan, "adaptable", opts["report_only"])
    data_cache: dict[tuple, tuple] = {}
    for task, size, seed, system in todo:
        spec = get_task(task)
        if "train" not in spec.splits or "dev" not in spec.splits:
            raise ConfigError(f"tasks: {task}: needs train and dev splits")
        if (task, size, seed) not in data_cache:
            data_cache.clear()
            data_cache[(task, size, seed)] = split(spec, data_dir, size, seed, opts.get("test_size"))
        data = data_cache[(task, size, seed)]
        label = f"{task} N={size} seed={seed} {system}"
        progress.step(label)
        selection_path = out / "selections" / f"{task}_{size}_{seed}.json"
        config = adapter_config(system, opts, selection_path) if system not in BASELINE_SYSTEMS else None
        set_seed(seed)
        adapted, tokenizer = load_model(spec, opts.get("model"), head_of(opts))
        if system in BASELINE_SYSTEMS:
            row = baseline_row(system, adapted, tokenizer, spec, data, opts, label=label, seed=seed,
                               output_dir=out / "work" / label.replace(" ", "_"))
            log.add({"task": task, "size": size, "seed": seed, "system": system, **row,
                     "train": len(data[0]), "dev": len(data[1]), "test": len(data[2])})
            progress.finish()
            continue
        mode, extra = "adapters", {}
        if config is None:
            mode, extra = "head", {"note": "AA selected no layer: head only"}
        else:
            adapted.add_adapter(system, config)
            extra["adapter_params"] = adapted.count_parameters()[f"adapter:{system}"]
        cache = system == "aa-focused" and config is not None and opts["cache_frozen_layers"]
        set_seed(seed)
        row = run_cell(adapted, tokenizer, spec, data, opts, label=label, seed=seed,
                       output_dir=out / "work" / label.replace(" ", "_"), train_mode=mode, cache_frozen_layers=cache)
        if system == "aa":
            record = selection_record(adapted, system)
            write_selection(selection_path, record)
            extra["layers"] = record["layers"]
            extra["logits"] = record["logits"]
            extra["rational"] = {str(i): {"numerator": m.bottleneck.act.numerator.detach().tolist(),
                                          "denominator": m.bottleneck.act.denominator.detach().tolist()}
                                 for i, m in switched_modules(adapted, system)}
            say(f"[{label}] selected layers {record['layers']} -> {selection_path}")
        if system == "aa-focused" and config is not None:
            extra["layers"] = list(config.layers or [])
        log.add({"task": task, "size": size, "seed": seed, "system": system, **row, **extra,
                 "train": len(data[0]), "dev": len(data[1]), "test": len(data[2])})
        progress.finish()
    report(log.unique(KEYS), opts)
    return 0


def report(rows: list[dict[str, Any]], opts: dict[str, Any]) -> None:
    """Markdown table, JSON, and PNGs: scores, selected layers per task, learned activation shapes."""
    import json

    from ..console import say
    from ..data.tasks import get_task
    from ..reporting import grouped_bar_plot, markdown_table
    from .common import HEAD_LR, series_for_plot, summarize, trivial_note

    out = Path(opts["output_dir"])
    settings = [(t, n) for t in opts["tasks"] for n in opts["sizes"]]
    systems = [s for s in SYSTEMS if s in opts["systems"]]
    rows = [r for r in rows if (r["task"], r["size"]) in settings and r["seed"] in opts["seeds"]]
    table = summarize(rows, settings, ("task", "size"), systems)
    for line in table:  # adapter-only parameters (without the head), mean over runs
        counts = [r["adapter_params"] for r in rows if r["system"] == line["system"] and "adapter_params" in r]
        line["adapter_params"] = f"{sum(counts) / len(counts):,.0f}" if counts else "0"
    columns = {"system": "System", **{f"{t}/{n}": f"{t.upper()} N={n}" for t, n in settings},
               "adapter_params": "Adapter params (mean)", "trainable": "Trainable incl. head", "train_s": "Train s (mean)"}
    layers_table = selection_table(rows, settings)
    by_size = size_summary(rows, opts["tasks"], opts["sizes"], systems)
    text = ["# Adaptable adapters: low-data comparison\n",
            f"Model: {opts.get('model') or 'bundled all-MiniLM-L6-v2'}. N examples split 75/25 into train/dev; test = "
            f"official dev set. {opts['epochs']:g} epochs, batch {opts['batch_size']}, adapter lr {opts['learning_rate']:g} "
            f"(AA switch 0.05, rational 0.01; head baseline {HEAD_LR:g}), head pooling {opts.get('pooling') or 'auto'}, "
            f"LP-FT head init {bool(opts.get('lp_init'))} (adapter systems), backbone dropout {opts['backbone_dropout']}, "
            "precision "
            f"{opts.get('precision', 'fp32')}, test cap {opts.get('test_size') or 'none'}; seeds "
            f"{', '.join(map(str, opts['seeds']))}. Scores x100 (mean ± std over seeds); metrics: "
            f"{', '.join(f'{t} {get_task(t).metric}' for t in opts['tasks'])}.\n",
            markdown_table(table, columns),
            *trivial_note(table),
            "\n## Per training size: mean over tasks, and paired difference to the standard adapter\n",
            "Mean: test score x100 over all tasks and seeds. Δ: system minus `pfeiffer` on the same task and seed "
            "(mean ± std over those pairs); W/T/L: pairs where the system is better / within 0.05 / worse.\n",
            markdown_table(by_size) if by_size else "(no runs)",
            "\n## Layers selected by AA (fraction of seeds per layer)\n",
            markdown_table(layers_table) if layers_table else "(no AA runs)"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text("\n".join(text) + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"options": {k: v for k, v in opts.items() if not k.startswith("_")},
                                                  "rows": rows}, indent=1, default=str), encoding="utf-8")
    plots = [grouped_bar_plot(out / "adaptable.png", [f"{t.upper()} N={n}" for t, n in settings],
                              series_for_plot(rows, settings, ("task", "size"), systems),
                              title="Adaptable adapters: test score (x100), mean ± std over seeds",
                              ylabel="test score x100")]
    aa_rows = [r for r in rows if r["system"] == "aa" and "logits" in r]
    if aa_rows:
        plots.append(selection_plot(out / "selected_layers.png", aa_rows, settings))
        plots.append(activation_plot(out / "activations.png", aa_rows))
    say(markdown_table(table, columns))
    say(f"wrote {out / 'results.md'}, {out / 'results.json'}, " + ", ".join(map(str, plots)))


def size_summary(rows: list[dict[str, Any]], tasks: list[str], sizes: list[int], systems: list[str],
                 baseline: str = "pfeiffer") -> list[dict[str, Any]]:
    """Per training size and system: the mean test score over tasks and seeds, and the difference to ``baseline``
    paired on (task, seed), with wins / ties / losses."""
    from ..reporting import format_mean_std

    score = {(r["task"], r["size"], r["seed"], r["system"]): 100 * r["test_score"] for r in rows}
    out = []
    for size in sizes:
        for system in systems:
            mine = {(t, s): v for (t, n, s, sy), v in score.items() if n == size and sy == system and t in tasks}
            if not mine:
                continue
            line: dict[str, Any] = {"N": str(size), "system": system, "runs": len(mine),
                                    "mean": f"{sum(mine.values()) / len(mine):.1f}"}
            if system != baseline:
                diffs = [v - score[(t, size, s, baseline)] for (t, s), v in mine.items()
                         if (t, size, s, baseline) in score]
                line["Δ vs " + baseline] = format_mean_std(diffs, digits=1) if diffs else "–"
                line["W/T/L"] = (f"{sum(d > 0.05 for d in diffs)}/{sum(abs(d) <= 0.05 for d in diffs)}/"
                                 f"{sum(d < -0.05 for d in diffs)}") if diffs else "–"
            out.append(line)
    return out


def selection_table(rows: list[dict[str, Any]], settings: list[tuple]) -> list[dict[str, Any]]:
    """Per task and size: for each layer, the fraction of seeds whose AA run selected it."""
    out = []
    for task, size in settings:
        runs = [r for r in rows if r["system"] == "aa" and r["task"] == task and r["size"] == size and "logits" in r]
        if not runs:
            continue
        n_layers = len(runs[0]["logits"])
        line: dict[str, Any] = {"setting": f"{task.upper()} N={size}"}
        for layer in range(n_layers):
            line[f"L{layer}"] = f"{sum(layer in r['layers'] for r in runs) / len(runs):.1f}"
        line["mean selected"] = f"{sum(len(r['layers']) for r in runs) / len(runs):.1f} / {n_layers}"
        out.append(line)
    return out


def selection_plot(path: Path, aa_rows: list[dict[str, Any]], settings: list[tuple]) -> Path:
    """Heat map: rows = task/size, columns = layers, colour = fraction of seeds that selected the layer."""
    from ..reporting import pyplot

    plt = pyplot()
    labels, grid = [], []
    for task, size in settings:
        runs = [r for r in aa_rows if r["task"] == task and r["size"] == size]
        if runs:
            n = len(runs[0]["logits"])
            labels.append(f"{task.upper()} N={size}")
            grid.append([sum(i in r["layers"] for r in runs) / len(runs) for i in range(n)])
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(grid[0]), 0.8 + 0.35 * len(grid)))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="Blues", aspect="auto")
    ax.set_xticks(range(len(grid[0])))
    ax.set_xticklabels([f"L{i}" for i in range(len(grid[0]))])
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels)
    for y, line in enumerate(grid):
        for x, v in enumerate(line):
            ax.text(x, y, f"{v:.1f}", ha="center", va="center", fontsize=7, color="black" if v < 0.6 else "white")
    ax.set_title("AA: layers selected (fraction of seeds)")
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def activation_plot(path: Path, aa_rows: list[dict[str, Any]]) -> Path:
    """Learned rational activations on [-3, 3]: one panel per task (largest size, first seed), a line per layer."""
    import torch

    from ..methods.rational import rational
    from ..reporting import pyplot

    plt = pyplot()
    tasks = list(dict.fromkeys(r["task"] for r in aa_rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.0), squeeze=False)
    x = torch.linspace(-3, 3, 121)
    for ax, task in zip(axes[0], tasks, strict=True):
        mine = [r for r in aa_rows if r["task"] == task]
        row = max(mine, key=lambda r: (r["size"], -r["seed"]))
        for layer, coef in row["rational"].items():
            y = rational(x, torch.tensor(coef["numerator"]), torch.tensor(coef["denominator"]))
            style = "-" if int(layer) in row["layers"] else ":"
            ax.plot(x.numpy(), y.detach().numpy(), style, label=f"L{layer}")
        ax.plot(x.numpy(), x.numpy(), color="grey", linewidth=0.5)
        ax.set_title(f"{task.upper()} N={row['size']} seed {row['seed']}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.suptitle("AA: learned rational activations (solid: selected layer, dotted: skipped)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
