"""MerA (He et al. 2023): merge pretrained adapters into one, compared in few-shot learning.

For each target task, k-shot size and seed: dev is carved from train (k per class, for epoch selection),
the official dev set is the test set. Systems:

- ``majority``, ``probe``, ``head``: baselines (the majority class; logistic regression on the frozen
  features; the head trained on the frozen backbone), with the same head (``--pooling``) as the rest;
- ``full``: full fine-tuning; ``scratch``: a fresh adapter;
- ``single``: the best single zoo adapter (ranked by a logistic probe on its frozen features, fitted on
  the k-shot train set and scored on the carved dev set), continued on the target;
- ``fusion``: AdapterFusion over the zoo's adapters (the target task's own adapter excluded);
- ``mera-avg``, ``mera-ot-w``, ``mera-ot-act``: the zoo adapters merged into one by plain averaging, or
  by weight- or activation-based optimal-transport alignment to an anchor (the best-ranked adapter)
  then averaging; the merged adapter is then trained on the target like any other;
- ``*-st``: the same, restricted to the target's own track ("same-track").
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import opt
from ..errors import ConfigError
from .common import check_systems, option_groups

DESCRIPTION = "MerA: merged pretrained adapters vs single adapters, AdapterFusion and full fine-tuning (few-shot)"
MERGE_SYSTEMS = {"mera-avg": "average", "mera-ot-w": "ot_weights", "mera-ot-act": "ot_activations"}
SYSTEMS = ("majority", "probe", "head", "full", "scratch", "single", "fusion", "mera-avg", "mera-ot-w", "mera-ot-act", "fusion-st", "mera-avg-st",
           "mera-ot-w-st", "mera-ot-act-st")


@dataclass
class Options:
    """MerA options besides the common ones."""

    zoo_dir: str = opt("runs/zoo", "the adapter zoo (build it with `adapterkit zoo build`)")
    k_shots: list[int] = opt([16, 32], "comma-separated training examples per class")
    full_lr: float = opt(1e-4, "learning rate of full fine-tuning")
    calibration_size: int = opt(64, "target examples for activation-based alignment")


OPTIONS = option_groups(
    {"output_dir": "runs/mera", "tasks": ["mrpc", "rte"], "seeds": [42, 92, 111, 245, 651], "systems": list(SYSTEMS)},
    Options,
    {"epochs": 10.0, "learning_rate": 1e-3, "batch_size": 8, "backbone_dropout": False},
    {"backbone_dropout": "adapter systems: dropout in the frozen backbone (full fine-tuning keeps the model's dropout)"},
)
SETTINGS = ("model", "zoo_dir", "epochs", "learning_rate", "full_lr", "batch_size", "max_length", "backbone_dropout",
            "calibration_size", "precision", "pooling", "normalize")
"""Options that change results: a log is never extended under other values (see ResultLog)."""
KEYS = ("task", "k", "seed", "system")


def _site_of(state: dict[str, Any], source: object) -> str:
    """The site of an adapter's modules, from its keys ``layers.{i}.{site}.…``."""
    sites = {k.split(".")[2] for k in state if k.startswith("layers.")}
    if len(sites) != 1:
        raise ConfigError(f"{source}: fusion needs adapters at one site per layer, found sites {sorted(sites)}")
    return sites.pop()


class Cell:
    """One (task, k, seed): its data, and the zoo adapters' probe ranking and calibration activations."""

    def __init__(self, opts: dict[str, Any], spec: Any, data: tuple, pool: list, tokenizer: Any) -> None:
        self.opts, self.spec, self.data, self.pool, self.tokenizer = opts, spec, data, pool, tokenizer
        self.ranking: dict[str, float] | None = None
        self.activations: dict[str, dict[str, Any]] = {}

    def prepare(self) -> None:
        """Probe every zoo adapter on the target and record its bottleneck activations on target inputs."""
        if self.ranking is not None:
            return
        import torch

        from ..io import load_adapter
        from ..merging import collect_bottleneck_activations
        from .common import padded_batch, probe_score, sentence_features

        adapted, _ = self.opts["_new_model"](self.spec)
        train, dev, _ = self.data
        ytr = torch.tensor([int(ex["label"]) for ex in train])
        ydev = torch.tensor([int(ex["label"]) for ex in dev])
        calib = padded_batch(self.tokenizer, self.spec, train[: self.opts["calibration_size"]], self.opts["max_length"])
        self.ranking = {}
        for entry in self.pool:
            load_adapter(adapted, entry.directory(self.opts["zoo_dir"]), entry.name, load_head=False, activate=False)
            adapted.set_active_adapters(entry.name)
            xtr = sentence_features(adapted, self.tokenizer, self.spec, train, self.opts["max_length"])
            xdev = sentence_features(adapted, self.tokenizer, self.spec, dev, self.opts["max_length"])
            self.ranking[entry.name] = probe_score(xtr, ytr, xdev, ydev, self.spec.num_labels)
            self.activations[entry.name] = collect_bottleneck_activations(adapted, entry.name, calib)
            adapted.delete_adapter(entry.name)
        ranked = ", ".join(f"{n} {s:.3f}" for n, s in sorted(self.ranking.items(), key=lambda t: -t[1]))
        from ..console import say

        say(f"probe ranking (dev accuracy of a logistic probe on frozen features): {ranked}")

    def best(self, entries: list) -> Any:
        self.prepare()
        assert self.ranking is not None
        return max(entries, key=lambda e: (self.ranking[e.name], e.name))


def _build_system(system: str, cell: Cell, pool: list, same: list) -> tuple[Any, str, float, dict[str, Any]]:
    """(adapted model, train mode, lr, notes) for ``system``."""
    from ..io import WEIGHTS_NAME, load_adapter, read_adapter_config, read_tensors
    from ..merging import merge_adapters
    from ..methods.fusion import FusionConfig
    from ..registry import config_from_dict

    opts, spec = cell.opts, cell.spec
    adapted, _ = opts["_new_model"](spec)
    base = system.removesuffix("-st")
    entries = same if system.endswith("-st") else pool
    if system == "full":
        return adapted, "full", opts["full_lr"], {}
    if not entries:
        raise ConfigError(f"{system}: no zoo adapters to use (zoo {opts['zoo_dir']}, target {spec.name})")
    if system == "scratch":
        meta = read_adapter_config(pool[0].directory(opts["zoo_dir"]))
        adapted.add_adapter("scratch", config_from_dict(meta["config"], "zoo adapter config"))
        return adapted, "adapters", opts["learning_rate"], {}
    if system == "single":
        best = cell.best(entries)
        load_adapter(adapted, best.directory(opts["zoo_dir"]), "single", load_head=False)
        return adapted, "adapters", opts["learning_rate"], {"adapters": [best.name]}
    if base == "fusion":
        names = []
        for entry in entries:
            names.append(load_adapter(adapted, entry.directory(opts["zoo_dir"]), entry.name, load_head=False,
                                      activate=False))
        site = _site_of(adapted.adapter_state_dict(names[0]), entries[0].directory(opts["zoo_dir"]))
        adapted.add_adapter("fusion", FusionConfig(adapters=tuple(names), site=site))
        return adapted, "adapters", opts["learning_rate"], {"adapters": names}
    if base in MERGE_SYSTEMS:
        anchor = cell.best(entries)
        ordered = [anchor] + [e for e in entries if e.name != anchor.name]
        states = [read_tensors(e.directory(opts["zoo_dir"]) / WEIGHTS_NAME) for e in ordered]
        method = MERGE_SYSTEMS[base]
        kwargs: dict[str, Any] = {"anchor": 0}
        if method == "ot_activations":
            cell.prepare()
            kwargs["activations"] = [cell.activations[e.name] for e in ordered]
        merged = merge_adapters(method, states, **kwargs)
        meta = read_adapter_config(anchor.directory(opts["zoo_dir"]))
        adapted.add_adapter("mera", config_from_dict(meta["config"], "zoo adapter config"))
        adapted.load_adapter_state_dict("mera", merged, f"merged {[e.name for e in ordered]}")
        return adapted, "adapters", opts["learning_rate"], {"adapters": [e.name for e in ordered], "anchor": anchor.name}
    raise ConfigError(f"systems: unknown system {system!r}; known: {list(SYSTEMS)}")


def run(opts: dict[str, Any]) -> int:
    """Run the comparison (resumable), then write results.md, results.json and mera.png."""
    from transformers import set_seed

    from ..console import say
    from ..data.tasks import get_task, resolve_data_dir
    from ..runner import load_model, split_data
    from ..zoo import TASK_TRACKS, read_zoo, select
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
    entries = read_zoo(opts["zoo_dir"])
    if not entries:
        raise ConfigError(f"{opts['zoo_dir']}: zoo_dir: no zoo.json; build the zoo first with `adapterkit zoo build`")
    data_dir = resolve_data_dir(opts.get("data_dir"))
    out = Path(opts["output_dir"])
    log = ResultLog(out / "runs.jsonl", logged_settings(opts, SETTINGS), legacy=LEGACY_SETTINGS)
    # seeds outermost: an experiment stopped early (or extended with more seeds later) has whole seeds
    plan = [(t, k, s, sys) for s in opts["seeds"] for t in opts["tasks"] for k in opts["k_shots"] for sys in opts["systems"]]
    todo, progress = log.pending(KEYS, plan, "mera", opts["report_only"],
                                 f"; zoo {opts['zoo_dir']} ({len(entries)} adapters)")

    def new_model(spec: Any) -> tuple[Any, Any]:
        return load_model(spec, opts.get("model"), head_of(opts))

    opts = {**opts, "_new_model": new_model}
    cells: dict[tuple, Cell] = {}
    for task, k, seed, system in todo:
        spec = get_task(task)
        if spec.kind != "classification":
            raise ConfigError(f"tasks: {task}: MerA targets are classification tasks")
        track = TASK_TRACKS.get(task)
        pool = select(entries, exclude_tasks=[task])
        same = select(pool, tracks=[track]) if track else []
        key = (task, k, seed)
        if key not in cells:
            cells.clear()  # one cell at a time: runs are ordered by cell
            train, dev, test, notes = split_data(spec, data_dir, k_shot=k, train_size=None,
                                                 dev_size=k * spec.num_labels, seed=seed)
            _, tokenizer = new_model(spec)
            cells[key] = Cell(opts, spec, (train, dev, test), pool, tokenizer)
            for note in notes:
                say(f"data [{task} k={k} seed={seed}]: {note}")
        cell = cells[key]
        label = f"{task} k={k} seed={seed} {system}"
        progress.step(label)
        set_seed(seed)
        if system in BASELINE_SYSTEMS:
            adapted, _ = new_model(spec)
            row = baseline_row(system, adapted, cell.tokenizer, spec, cell.data, opts, label=label, seed=seed,
                               output_dir=out / "work" / label.replace(" ", "_"))
            log.add({"task": task, "k": k, "seed": seed, "system": system, **row})
            progress.finish()
            continue
        adapted, mode, lr, notes = _build_system(system, cell, pool, same)
        set_seed(seed)
        row = run_cell(adapted, cell.tokenizer, spec, cell.data, opts, label=label, seed=seed,
                       output_dir=out / "work" / label.replace(" ", "_"), train_mode=mode, learning_rate=lr)
        log.add({"task": task, "k": k, "seed": seed, "system": system, **row, **notes,
                 "same_track": [e.name for e in same], "pool": [e.name for e in pool]})
        progress.finish()
    report(log.unique(KEYS), opts, entries)
    return 0


def report(rows: list[dict[str, Any]], opts: dict[str, Any], entries: list) -> None:
    """Markdown table (mean ± std over seeds), JSON and a grouped bar plot."""
    import json

    from ..console import say
    from ..reporting import grouped_bar_plot, markdown_table
    from ..zoo import zoo_table
    from .common import HEAD_LR, series_for_plot, summarize, trivial_note

    out = Path(opts["output_dir"])
    settings = [(t, k) for t in opts["tasks"] for k in opts["k_shots"]]
    systems = [s for s in SYSTEMS if s in opts["systems"]]
    rows = [r for r in rows if (r["task"], r["k"]) in settings and r["seed"] in opts["seeds"]]
    table = summarize(rows, settings, ("task", "k"), systems)
    columns = {"system": "System", **{f"{t}/{k}": f"{t.upper()} k={k}" for t, k in settings},
               "trainable": "Trainable params", "train_s": "Train s (mean)"}
    metrics = {t: get_metric(t) for t in opts["tasks"]}
    text = [
        "# MerA few-shot comparison\n",
        f"Model: {opts.get('model') or 'bundled all-MiniLM-L6-v2'}. Test = official dev set; dev = k per class carved "
        f"from train; {opts['epochs']:g} epochs, batch {opts['batch_size']}, lr {opts['learning_rate']:g} (full FT "
        f"{opts['full_lr']:g}; head baseline {HEAD_LR:g}), head pooling {opts.get('pooling') or 'auto'}, backbone "
        f"dropout {opts['backbone_dropout']} for adapter systems, precision "
        f"{opts.get('precision', 'fp32')}; seeds {', '.join(map(str, opts['seeds']))}. Scores x100, mean ± std over seeds; "
        f"metrics: {', '.join(f'{t} {m}' for t, m in metrics.items())}.\n",
        markdown_table(table, columns),
        *trivial_note(table),
        "\n## Zoo\n",
        markdown_table(zoo_table(entries), {"name": "Name", "task": "Task", "track": "Track", "train": "Train",
                                            "metric": "Metric", "dev_score": "Dev score"}, {"dev_score": 4}),
    ]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text("\n".join(text) + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"options": {k: v for k, v in opts.items() if not k.startswith("_")},
                                                  "rows": rows}, indent=1, default=str), encoding="utf-8")
    plot = grouped_bar_plot(out / "mera.png", [f"{t.upper()} k={k}" for t, k in settings],
                            series_for_plot(rows, settings, ("task", "k"), systems),
                            title="MerA few-shot: test score (x100), mean ± std over seeds", ylabel="test score x100")
    say(markdown_table(table, columns))
    say(f"wrote {out / 'results.md'}, {out / 'results.json'}, {plot}")


def get_metric(task: str) -> str:
    from ..data.tasks import get_task

    return get_task(task).metric
