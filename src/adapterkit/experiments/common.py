"""What every experiment shares: options, resumable result logs, one training run per system, probes, summaries."""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import opt
from ..errors import ConfigError
from ..options import Group
from ..reporting import format_mean_std, mean_std


@dataclass
class ExperimentOptions:
    """What every experiment has: where results go, which tasks, seeds and systems, and report-only reruns."""

    output_dir: str = opt("runs/experiment", "results directory; a rerun resumes")
    tasks: list[str] = opt([], "comma-separated tasks")
    seeds: list[int] = opt([42], "comma-separated seeds")
    systems: list[str] = opt([], "comma-separated systems (default: all)")
    report_only: bool = opt(False, "true: train nothing, write the report from the runs logged so far (cells show how "
                            "many seeds they have)")


TRAINING_OPTIONS = ("epochs", "learning_rate", "batch_size", "backbone_dropout", "regression_bias", "progress")
"""The TrainConfig options every experiment offers (besides max_length, eval_batch_size and precision)."""


def option_groups(defaults: dict[str, Any], options: type, training: dict[str, Any],
                  training_help: dict[str, str] | None = None, more_training: tuple[str, ...] = (),
                  head: bool = True) -> tuple[Group, ...]:
    """An experiment's option groups: :class:`ExperimentOptions` with its ``defaults``, its own ``options``
    dataclass, TrainConfig's :data:`TRAINING_OPTIONS` (+ ``more_training``) with its ``training`` defaults,
    and (``head``) the task head's pooling (:class:`~adapterkit.heads.HeadConfig`)."""
    from ..heads import HeadConfig
    from ..training import TrainConfig

    return (Group(ExperimentOptions, defaults=defaults), Group(options),
            Group(TrainConfig, only=(*TRAINING_OPTIONS, *more_training), defaults=training,
                  help={"learning_rate": "adapter learning rate", **(training_help or {})}),
            *((Group(HeadConfig),) if head else ()))


HEAD_SETTINGS = ("pooling", "normalize")
"""The head options, which change results; logs from before they existed ran with the ``hf`` head
(see ``LEGACY_SETTINGS``)."""
LEGACY_SETTINGS = {"pooling": "hf", "normalize": False}
BASELINE_SYSTEMS = ("majority", "probe", "head")
"""Systems every experiment table shows beside its own: the majority class, a linear probe on the frozen
features (logistic regression), and the head trained on the frozen backbone."""
HEAD_LR = 1e-2
"""Learning rate of the ``head`` baseline."""


def head_of(opts: dict[str, Any]) -> Any:
    """The experiment's :class:`~adapterkit.heads.HeadConfig` from its options."""
    from ..heads import HeadConfig

    return HeadConfig(opts.get("pooling") or "auto", bool(opts.get("normalize")))


def baseline_row(system: str, adapted: Any, tokenizer: Any, spec: Any, data: tuple[list, list, list],
                 opts: dict[str, Any], *, label: str, seed: int, output_dir: str | Path) -> dict[str, Any]:
    """A result row of ``majority`` / ``probe`` (no gradient training) or ``head`` (frozen backbone, the head
    trained at :data:`HEAD_LR`) on ``data`` = (train, dev, test), with the model's head (pooling) as built; never
    with LP-FT, so that the baselines stay the same whatever the systems use."""
    from ..options import build
    from ..runner import BASELINES, run_baseline
    from ..training import TrainConfig

    if system in BASELINES:
        config = build(TrainConfig, opts, output_dir=str(output_dir), seed=seed, cache_frozen_layers=False,
                       lp_init=False)
        row = run_baseline(system, adapted, tokenizer, spec, data, config, label=label)
        return {k: row[k] for k in ("test_score", "dev_score", "best_epoch", "trainable", "trainable_pct",
                                    "train_seconds", "history")}
    if system == "head":
        return run_cell(adapted, tokenizer, spec, data, opts, label=label, seed=seed, output_dir=output_dir,
                        train_mode="head", learning_rate=HEAD_LR, cache_frozen_layers=False, lp_init=False)
    raise ConfigError(f"systems: {system!r}: not a baseline system; baselines: {list(BASELINE_SYSTEMS)}")


def check_systems(systems: Sequence[str], known: Sequence[str]) -> None:
    """Refuse a system name the experiment does not have, naming the known ones."""
    unknown = [s for s in systems if s not in known]
    if unknown:
        raise ConfigError(f"systems: unknown system {unknown[0]!r}; known: {list(known)}")


def logged_settings(opts: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The options ``names`` as a result log records them (``learning_rate`` under its earlier name ``lr``,
    so that logs written before keep resuming), and the options every experiment's protocol has
    (:data:`PROTOCOL_LEGACY`)."""
    return {**{("lr" if k == "learning_rate" else k): opts.get(k) for k in names},
            **{k: opts.get(k) or v for k, v in PROTOCOL_LEGACY.items()}}


PROTOCOL_LEGACY = {"regression_bias": "zero"}
"""Options of every experiment that change results, with the value the runs of a log that predates them used."""


def run_cell(adapted: Any, tokenizer: Any, spec: Any, data: tuple[list, list, list], opts: dict[str, Any], *,
             label: str, seed: int, output_dir: str | Path, **changes: Any) -> dict[str, Any]:
    """Train and test one system of an experiment with the run options ``opts`` (checkpoints are deleted after
    the run; ``changes`` are other TrainConfig values); returns its result row."""
    from ..options import build
    from ..runner import NO_CHECKPOINTS, run_system
    from ..training import TrainConfig

    config = build(TrainConfig, opts, output_dir=str(output_dir), seed=seed,
                   logging_steps=max(1, len(data[0]) // opts["batch_size"]), **{**NO_CHECKPOINTS, **changes})
    return run_system(adapted, tokenizer, spec, data, config, label=label).row()


class ResultLog:
    """Rows of a running experiment in a JSON-lines file; a rerun skips the rows already there.

    ``settings`` (the options that change results: epochs, learning rate, precision, ...) are kept in
    ``settings.json`` beside the log; a rerun with other settings is refused, so that one table never
    mixes runs made under different protocols.
    """

    def __init__(self, path: str | Path, settings: dict[str, Any] | None = None,
                 legacy: dict[str, Any] | None = None) -> None:
        """``legacy``: setting -> the value that logs whose ``settings.json`` predates the setting ran under
        (e.g. ``{"pooling": "hf"}``: the head before pooling was an option)."""
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        self.legacy = {**PROTOCOL_LEGACY, **(legacy or {})}
        if settings is not None:
            self._check_settings(settings)
        if not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                self.rows.append(json.loads(line))
            except json.JSONDecodeError:
                if i < len(lines) - 1:
                    raise ConfigError(f"{self.path}: line {i + 1}: not valid JSON") from None
                # a last line cut short by a crash: dropped (its run is redone), and the file rewritten without
                # it, so that the next row does not get appended to the broken line
                from ..io import atomic_write_bytes

                atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in self.rows).encode("utf-8"))

    def _check_settings(self, settings: dict[str, Any]) -> None:
        from ..config import read_json
        from ..io import atomic_write_json

        file = self.path.with_name("settings.json")
        settings = json.loads(json.dumps(settings))  # as stored: tuples become lists
        on_disk: dict[str, Any] = {}
        if file.exists():
            on_disk = read_json(file)
            stored = {**self.legacy, **on_disk}
            for key, value in settings.items():
                if key in stored and stored[key] != value:
                    raise ConfigError(f"{file}: {key}: the runs in {self.path.name} used {stored[key]!r}, this run "
                                      f"asks for {value!r}; use the same {key} or another --output-dir")
        elif self.path.exists():
            return  # a log written before settings were recorded: nothing to compare with, nothing claimed
        if {**on_disk, **settings} != on_disk:  # a legacy value, once confirmed, is written down
            atomic_write_json(file, {**on_disk, **settings})

    def unique(self, fields: Sequence[str]) -> list[dict[str, Any]]:
        """The rows, one per key (the last one logged wins, e.g. when two processes ran the same run)."""
        return list({self.key(r, fields): r for r in self.rows}.values())

    def key(self, row: dict[str, Any], fields: Sequence[str]) -> tuple:
        return tuple(row.get(f) for f in fields)

    def has(self, fields: Sequence[str], **values: Any) -> bool:
        want = tuple(values[f] for f in fields)
        return any(self.key(r, fields) == want for r in self.rows)

    def pending(self, fields: Sequence[str], plan: Sequence[Any], experiment: str, report_only: bool = False,
                detail: str = "") -> tuple[list[Any], Any]:
        """The runs of ``plan`` not logged yet (none under ``report_only``) and a Progress over the whole plan; says
        how many are logged. A run is a tuple of ``fields``' values, or a dict of them."""
        from ..console import Progress, say

        def values(run: Any) -> dict[str, Any]:
            return run if isinstance(run, dict) else dict(zip(fields, run, strict=True))

        missing = [run for run in plan if not self.has(fields, **values(run))]
        todo = [] if report_only else missing
        progress = Progress(len(plan), len(plan) - len(todo))
        say(f"{experiment}: {len(plan)} runs, {len(plan) - len(missing)} already in {self.path}{detail}")
        return todo, progress

    def add(self, row: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:  # one line per row, flushed: a crash loses at most one
            fh.write(json.dumps(row) + "\n")
            fh.flush()
        self.rows.append(row)


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def padded_batch(tokenizer: Any, spec: Any, examples: Sequence[Any], max_length: int) -> dict[str, torch.Tensor]:
    """``examples`` tokenised and padded into one batch of model inputs (no labels)."""
    from ..training import encode

    encoded = encode(tokenizer, spec, list(examples), max_length)
    rows = [{k: row[k] for k in MODEL_INPUTS if k in row} for row in encoded]
    return dict(tokenizer.pad(rows, return_tensors="pt"))


@torch.no_grad()
def sentence_features(adapted: Any, tokenizer: Any, spec: Any, examples: Sequence[Any], max_length: int,
                      batch_size: int = 64) -> torch.Tensor:
    """Mean-pooled last hidden states of the backbone (with the active adapters), one row per example."""
    adapted.eval()
    backbone = adapted.model.base_model
    feats = []
    for i in range(0, len(examples), batch_size):
        batch = padded_batch(tokenizer, spec, examples[i: i + batch_size], max_length)
        hidden = backbone(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        feats.append((hidden * mask).sum(1) / mask.sum(1))
    return torch.cat(feats)


def probe_score(train_x: torch.Tensor, train_y: torch.Tensor, dev_x: torch.Tensor, dev_y: torch.Tensor,
                num_labels: int, steps: int = 200, l2: float = 1e-3) -> float:
    """Dev accuracy of a logistic-regression probe fitted on frozen features (deterministic: full-batch LBFGS;
    ``l2`` weighs ``sum(W**2)``, see :func:`adapterkit.heads.fit_linear`)."""
    from ..heads import fit_linear

    fit = fit_linear(train_x, train_y, num_labels, l2=2 * l2, max_iter=steps)
    return float((fit.predict(dev_x).argmax(-1) == dev_y).double().mean())


TRIVIAL_SYSTEMS = ("majority", "trivial")
"""The names the experiments give their trivial baseline (the constant prediction)."""
TRIVIAL_MARK = "†"
TRIVIAL_NOTE = (f"{TRIVIAL_MARK}k: k of the cell's runs scored exactly what the trivial baseline (the constant "
                "prediction) scored on the same task, size and seed: collapsed predictions or a model that never "
                "left its start. A failed run to investigate, not a finding about the method.")


def trivial_runs(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> Callable[[dict[str, Any]], bool]:
    """A predicate: True for a row of a system other than the trivial baseline whose test score equals, to 1e-9,
    the trivial baseline's test score in ``rows`` with the same ``keys`` and seed (e.g. binary F1 of predicting
    the positive class everywhere; MCC 0 of any constant)."""
    def key(row: dict[str, Any]) -> tuple:
        return (*(row.get(k) for k in keys), row.get("seed"))

    trivial = {key(r): r["test_score"] for r in rows if r["system"] in TRIVIAL_SYSTEMS and r["test_score"] is not None}

    def at_trivial(row: dict[str, Any]) -> bool:
        base = trivial.get(key(row))
        return (row["system"] not in TRIVIAL_SYSTEMS and row.get("test_score") is not None and base is not None
                and abs(row["test_score"] - base) <= 1e-9)

    return at_trivial


def score_cell(values: Sequence[float], scale: float = 100.0, trivial: int = 0) -> str:
    """``mean ± std (n=N)``, with ``, †k`` when k of the runs sit at the trivial baseline (see TRIVIAL_NOTE)."""
    if not values:
        return "–"
    flag = f", {TRIVIAL_MARK}{trivial}" if trivial else ""
    return f"{format_mean_std(values, 1, scale)} (n={len(values)}{flag})"


def test_score_cell(runs: Sequence[dict[str, Any]], at_trivial: Callable[[dict[str, Any]], bool],
                    scale: float = 100.0) -> str:
    """:func:`score_cell` of the runs' test scores, counting those ``at_trivial`` (from :func:`trivial_runs`)."""
    return score_cell([r["test_score"] for r in runs], scale, sum(map(at_trivial, runs)))


def trivial_note(table: Sequence[dict[str, Any]]) -> list[str]:
    """``[TRIVIAL_NOTE]`` when a cell of ``table`` is marked, else ``[]``."""
    marked = any(TRIVIAL_MARK in str(v) for line in table for k, v in line.items() if k != "system")
    return [TRIVIAL_NOTE + "\n"] if marked else []


def summarize(rows: Sequence[dict[str, Any]], settings: Sequence[tuple[str, ...]], setting_keys: Sequence[str],
              systems: Sequence[str], *, scale: float = 100.0) -> list[dict[str, Any]]:
    """One table row per system: ``mean ± std`` of the test score per setting (runs at the trivial baseline
    marked, see :func:`trivial_runs`), parameters and mean train time."""
    at_trivial = trivial_runs(rows, setting_keys)
    table = []
    for system in systems:
        mine = [r for r in rows if r["system"] == system]
        if not mine:
            continue
        out: dict[str, Any] = {"system": system}
        for setting in settings:
            runs = [r for r in mine if tuple(r[k] for k in setting_keys) == setting and r["test_score"] is not None]
            out["/".join(map(str, setting))] = test_score_cell(runs, at_trivial, scale)
        out["trainable"] = f"{int(mean_std([r['trainable'] for r in mine])[0]):,}"
        out["train_s"] = f"{mean_std([r['train_seconds'] for r in mine])[0]:.1f}"
        table.append(out)
    return table


def series_for_plot(rows: Sequence[dict[str, Any]], settings: Sequence[tuple[str, ...]], setting_keys: Sequence[str],
                    systems: Sequence[str], scale: float = 100.0) -> dict[str, tuple[list[float], list[float]]]:
    """``{system: (means, stds)}`` over ``settings`` for :func:`reporting.grouped_bar_plot`."""
    out = {}
    for system in systems:
        means, stds = [], []
        for setting in settings:
            vals = [scale * r["test_score"] for r in rows if r["system"] == system
                    and tuple(r[k] for k in setting_keys) == setting and r["test_score"] is not None]
            m, s = mean_std(vals)
            means.append(m)
            stds.append(s)
        if any(m == m for m in means):  # not all NaN
            out[system] = (means, stds)
    return out


def learning_rates(opts: dict[str, Any], defaults: dict[str, float]) -> dict[str, float]:
    """An experiment's per-system ``defaults`` with ``--learning-rate`` (every trained system) and then
    ``--lrs NAME=LR,...`` applied; an unknown name or a malformed item is a ConfigError naming the field."""
    rates = dict(defaults)
    if opts.get("learning_rate"):
        rates = {k: float(opts["learning_rate"]) for k in rates}
    for item in [s for s in str(opts.get("lrs") or "").split(",") if s.strip()]:
        name, _, value = item.partition("=")
        if name.strip() not in defaults:
            raise ConfigError(f"lrs: {name.strip()!r}: not a trained system; use {sorted(defaults)}")
        try:
            rates[name.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"lrs: {item!r}: expected NAME=LEARNING_RATE") from None
    return rates
