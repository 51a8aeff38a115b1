"""``adapterkit analyze``: similarity (per-layer CKA/RSA), lr-sweep (scores over a learning-rate grid, dev
curves per epoch) and zero-shot (train on English, evaluate on every other language)."""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..config import opt
from ..errors import ConfigError
from ..options import Group


@dataclass
class SimilarityCommand:
    """``analyze similarity``: which probe, which representations, which metrics."""

    probe: str | None = opt(None, "probe sentences: a .txt file (one per line), a CSV/TSV/JSONL/Parquet file, or a "
                            "registered task name (required)")
    probe_split: str | None = opt(None, "task probe: split to read (default dev, else test, else train)")
    probe_column: str | None = opt(None, "table probe: the text column (default text/sentence/premise/question)")
    probe_size: int = opt(500, "keep a seeded sample of N probe sentences (0 = all)")
    base_model: str | None = opt(None, "base model for adapter directories (default: the one each adapter names)")
    metrics: list[str] = opt(["cka", "rsa"], "cka, rsa or both")
    tokens: str = opt("sample:2000", "representations: all tokens, sentence (mean-pooled) or sample:N tokens")
    correlation: Literal["pearson", "spearman"] = opt("pearson", "RSA correlation")
    include_special: bool = opt(False, "count [CLS]/[SEP]-like tokens")
    batch_size: int = opt(32, "probe sentences per forward pass")
    max_length: int = opt(128, "maximum tokens per sentence")
    seed: int = opt(0, "seed of the probe and token samples")
    output_dir: str = opt("runs/analysis/similarity", "where similarity.json and similarity.png go")


@dataclass
class RunOptions:
    """Which systems run on which data, with which seeds, and where the results go."""

    systems: list[str] = opt(["houlsby64", "full"], "comma-separated systems: presets houlsby64, houlsby128, "
                             "houlsby256, full, head, any method name, or METHOD:FIELD=VALUE;FIELD=VALUE")
    seeds: list[int] = opt([42], "comma-separated seeds")
    train_size: int | None = opt(1000, "training examples (0 or none: all)")
    dev_size: int = opt(200, "dev examples carved from the training data (they select the epoch)")
    output_dir: str = opt("runs/analysis", "results directory; a rerun resumes")


@dataclass
class SweepCommand:
    """``analyze lr-sweep``: the learning-rate grid and the test set."""

    lrs: list[float] = opt([1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3], "comma-separated learning-rate grid (all > 0)")
    test_size: int | None = opt(None, "cap on test examples (default: all)")


@dataclass
class ZeroShotCommand:
    """``analyze zero-shot``: suites, languages and learning rates."""

    suites: list[str] = opt(["xnli"], "comma-separated zero-shot suites: xnli, pawsx, xquad")
    languages: list[str] | None = opt(None, "languages to evaluate (default: every language of the suite)")
    eval_size: int | None = opt(1000, "XNLI: rows held out and evaluated in every language")
    full_lr: float = opt(3e-5, "full fine-tuning learning rate")
    full_head_lr: float | None = opt(None, "learning rate of full fine-tuning's new task head (default: full_lr)")
    head_lr: float = opt(1e-2, "head-only learning rate")


RUN_TRAINING = ("epochs", "learning_rate", "batch_size", "max_length", "eval_batch_size", "precision", "progress")


def command_groups(analysis: str) -> tuple[Group, ...]:
    """The option groups of ``adapterkit analyze ANALYSIS``."""
    from ..options import DataOptions, ModelOptions
    from ..training import TrainConfig

    if analysis == "similarity":
        return (Group(SimilarityCommand), Group(DataOptions, only=("data_dir",)))
    if analysis == "lr-sweep":
        return (Group(DataOptions, only=("task", "data_dir"), defaults={"task": "rte"}),
                Group(ModelOptions, only=("model",)),
                Group(RunOptions, defaults={"output_dir": "runs/analysis/lr-sweep"}), Group(SweepCommand),
                Group(TrainConfig, only=tuple(k for k in RUN_TRAINING if k != "learning_rate"),
                      defaults={"epochs": 5.0}))
    if analysis == "zero-shot":
        return (Group(DataOptions, only=("data_dir",)), Group(ModelOptions, only=("model",)),
                Group(RunOptions, defaults={"output_dir": "runs/analysis/zero-shot"}), Group(ZeroShotCommand),
                Group(TrainConfig, only=RUN_TRAINING, defaults={"epochs": 5.0, "learning_rate": 1e-3},
                      help={"learning_rate": "adapter learning rate"}))
    raise ConfigError(f"analyze: unknown analysis {analysis!r}")


SWEEP_SETTINGS = ("task", "model", "train_size", "dev_size", "test_size", "epochs", "batch_size", "max_length",
                  "precision")
ZERO_SHOT_SETTINGS = ("model", "train_size", "dev_size", "eval_size", "epochs", "learning_rate", "full_lr",
                      "full_head_lr", "head_lr", "batch_size", "max_length", "precision")
HELP = {"similarity": "per-layer CKA/RSA of tuned models against a base model",
        "lr-sweep": "run systems over a grid of learning rates and seeds; score table, score-vs-lr and dev curves",
        "zero-shot": "train on English, evaluate unchanged on every language of XNLI, PAWS-X, XQuAD"}


def add_parsers(sub: Any) -> None:
    """Add ``analyze`` and its subcommands to the top-level subparsers ``sub``."""
    from .. import options

    an = sub.add_parser("analyze", help="analysis tools: per-layer similarity, lr sweeps and curves, zero-shot")
    an_sub = an.add_subparsers(dest="analysis", required=True)
    for name, text in HELP.items():
        p = an_sub.add_parser(name, help=text, argument_default=argparse.SUPPRESS)
        if name == "similarity":
            p.add_argument("models", nargs="+", metavar="MODEL",
                           help="BASE TUNED [TUNED...]: model directories, Hub ids or adapter directories (an adapter "
                           "directory means its base model with the adapter active); 'bundled' = the bundled MiniLM")
        p.add_argument("--config", help="YAML file with any of these options as keys (underscores); flags override it")
        options.add_arguments(p, command_groups(name))


def merge(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, then the YAML file, then the flags given on the command line."""
    from .. import options

    given = {k: v for k, v in vars(args).items() if k not in ("command", "analysis", "config")}
    groups = command_groups(args.analysis)
    merged = options.defaults(groups)
    if getattr(args, "config", None):
        merged.update(options.read_yaml(args.config, groups, f"analyze {args.analysis}"))
    return {**merged, **given}


def run(args: argparse.Namespace) -> int:
    opts = merge(args)
    if args.analysis == "similarity":
        return cmd_similarity(opts)
    if args.analysis == "lr-sweep":
        return cmd_lr_sweep(opts)
    if args.analysis == "zero-shot":
        return cmd_zero_shot(opts)
    raise ConfigError(f"analyze: unknown analysis {args.analysis!r}")


def _label(source: str, taken: set[str]) -> str:
    path = Path(source)
    label = f"{path.parent.name}/{path.name}" if path.name in ("adapter", "model") and path.parent.name else path.name
    label = label or source
    base, i = label, 2
    while label in taken:
        label, i = f"{base} ({i})", i + 1
    taken.add(label)
    return label


def cmd_similarity(opts: dict[str, Any]) -> int:
    """Per-layer similarity of each tuned model with the base model; writes JSON and a PNG."""
    from ..console import say as _say
    from ..io import atomic_write_json
    from ..reporting import text_table
    from .representations import (
        SimilarityOptions,
        layer_similarity,
        load_for_analysis,
        read_probe,
        similarity_plot,
    )

    models = list(opts["models"])
    if not opts.get("probe"):
        raise ConfigError("probe: give --probe FILE or TASK")
    if len(models) < 2:
        raise ConfigError("models: give BASE and at least one TUNED model")
    sim = SimilarityOptions(metrics=tuple(opts["metrics"]), tokens=opts["tokens"], correlation=opts["correlation"],
                            include_special=bool(opts["include_special"]), batch_size=opts["batch_size"],
                            max_length=opts["max_length"], seed=opts["seed"])
    probe = read_probe(opts["probe"], data_dir=opts.get("data_dir"), split=opts.get("probe_split"),
                       column=opts.get("probe_column"), limit=opts.get("probe_size") or None, seed=opts["seed"])
    resolve = {"bundled": None}
    base, tokenizer, base_desc = load_for_analysis(resolve.get(models[0], models[0]), base=opts.get("base_model"))
    _say(f"similarity: base {base_desc}; probe {opts['probe']} ({len(probe)} sentences); tokens {sim.tokens}; "
         f"metrics {', '.join(sim.metrics)}")
    taken: set[str] = set()
    results = {}
    for source in models[1:]:
        tuned, _, desc = load_for_analysis(resolve.get(source, source), base=opts.get("base_model"))
        label = _label(source, taken)
        _say(f"similarity: {label} = {desc}")
        results[label] = layer_similarity(base, tuned, tokenizer, probe, sim, names=(models[0], source), progress=True)
    out = Path(opts["output_dir"])
    atomic_write_json(out / "similarity.json", {"base": models[0], "probe": str(opts["probe"]),
                                                 "models": {k: v.to_dict() for k, v in results.items()}})
    plot = similarity_plot(out / "similarity.png", results,
                           title=f"base {models[0]}; probe {opts['probe']} ({len(probe)} sentences, {sim.tokens})")
    rows = []
    for label, res in results.items():
        for i, layer in enumerate(res.layers):
            rows.append({"model": label, "layer": "emb" if layer == 0 else str(layer),
                         **{m.upper(): res.scores[m][i] for m in sim.metrics}})
    _say(text_table(rows, ["model", "layer", *[m.upper() for m in sim.metrics]]))
    _say(f"wrote {out / 'similarity.json'}, {plot}")
    return 0


# --- lr-sweep -----------------------------------------------------------------------------------------


def sweep(opts: dict[str, Any], log: Any, *, part: str = "lr", label_prefix: str = "") -> list[dict[str, Any]]:
    """Run (resumably) every system x lr x seed of ``opts`` on ``opts['task']``; returns the logged rows."""
    from ..console import Progress
    from ..console import say as _say
    from ..data.tasks import get_task, resolve_data_dir
    from .sweep import check_grid
    from .systems import low_resource_split, parse_system, train_system

    lrs = check_grid(opts["lrs"])
    systems = [parse_system(s) for s in opts["systems"]]
    spec = get_task(opts["task"])
    data_dir = resolve_data_dir(opts.get("data_dir"))
    keys = ("part", "task", "size", "seed", "system", "lr")
    size = opts.get("train_size") or None
    plan = [(s, sys, lr) for s in opts["seeds"] for sys in systems for lr in lrs]
    todo = [p for p in plan if not log.has(keys, part=part, task=spec.name, size=size, seed=p[0], system=p[1].name,
                                           lr=p[2])]
    progress = Progress(len(plan), len(plan) - len(todo))
    _say(f"{label_prefix}lr sweep on {spec.name}: {len(plan)} runs, {len(plan) - len(todo)} already logged")
    data: dict[int, tuple] = {}
    for seed, system, lr in todo:
        if seed not in data:
            data = {seed: low_resource_split(spec, data_dir, size, seed, opts["dev_size"], opts.get("test_size"))}
        label = f"{spec.name} N={size or 'all'} seed={seed} {system.name} lr={lr:g}"
        progress.step(label)
        _, _, row = train_system(system, spec, data[seed], model=opts.get("model"), lr=lr, seed=seed,
                                 epochs=opts["epochs"], batch_size=opts["batch_size"], max_length=opts["max_length"],
                                 eval_batch_size=opts["eval_batch_size"], precision=opts["precision"],
                                 progress=opts["progress"], label=label,
                                 output_dir=Path(opts["output_dir"]) / "work" / label.replace(" ", "_"))
        log.add({"part": part, "task": spec.name, "size": size, **row})
        progress.finish()
    names = {s.name for s in systems}
    return [r for r in log.unique(keys) if r.get("part") == part and r["task"] == spec.name and r["size"] == size
            and r["system"] in names and float(r["lr"]) in lrs and r["seed"] in opts["seeds"]]


def baselines(spec: Any, data_dir: Any, size: int | None, seeds: list[int], opts: dict[str, Any], log: Any,
              part: str) -> list[dict[str, Any]]:
    """Trivial (majority / constant) and frozen-linear-probe test scores per seed (logged, resumable)."""
    from transformers import AutoConfig

    from ..model import default_model_path
    from .systems import linear_probe_score, low_resource_split, trivial_score

    keys = ("part", "task", "size", "seed", "system")
    width = AutoConfig.from_pretrained(opts.get("model") or default_model_path()).hidden_size
    outputs = spec.num_labels if spec.kind == "classification" else 1
    for seed in seeds:
        if log.has(keys, part=part, task=spec.name, size=size, seed=seed, system="linear probe"):
            continue
        train, _, test = low_resource_split(spec, data_dir, size, seed, opts["dev_size"], opts.get("test_size"))
        log.add({"part": part, "task": spec.name, "size": size, "seed": seed, "system": "trivial",
                 "test_score": trivial_score(spec, train, test), "trainable": 0, "train_seconds": 0.0})
        start = time.perf_counter()
        score = linear_probe_score(spec, opts.get("model"), train, test, max_length=opts["max_length"])
        log.add({"part": part, "task": spec.name, "size": size, "seed": seed, "system": "linear probe",
                 "test_score": score, "trainable": (width + 1) * outputs,
                 "train_seconds": round(time.perf_counter() - start, 2)})
    return [r for r in log.unique(keys) if r.get("part") == part and r["task"] == spec.name and r["size"] == size
            and r["system"] in ("trivial", "linear probe") and r["seed"] in seeds]


def baseline_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Table rows for the baselines: their mean over seeds under 'grid mean' (they have no learning rate)."""
    from ..reporting import mean_std

    out = []
    for name, label in (("trivial", "trivial (majority / constant)"), ("linear probe", "frozen linear probe")):
        vals = [100 * r["test_score"] for r in rows if r["system"] == name and r["test_score"] is not None]
        if vals:
            out.append({"system": label, "grid mean": round(mean_std(vals)[0], 2), "runs": len(vals)})
    return out


def best_lr_runs(rows: list[dict[str, Any]], systems: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Per system, its runs at the learning rate with the best mean dev score."""
    out = {}
    for system in systems:
        mine = [r for r in rows if r["system"] == system]
        if not mine:
            continue

        def dev(lr: float, mine: list = mine) -> float:
            vals = [r["dev_score"] for r in mine if r["lr"] == lr and r.get("dev_score") is not None]
            return sum(vals) / len(vals) if vals else float("-inf")

        best = max({r["lr"] for r in mine}, key=dev)
        out[f"{system} (lr {best:g})"] = [r for r in mine if r["lr"] == best]
    return out


def cmd_lr_sweep(opts: dict[str, Any]) -> int:
    """Every system over the learning-rate grid and seeds: table, score-vs-lr PNG, dev-loss-vs-epoch PNG."""
    from ..console import say as _say
    from ..data.tasks import get_task, resolve_data_dir
    from ..experiments.common import ResultLog
    from ..reporting import markdown_table
    from .sweep import aggregate, check_grid, curves_plot, overfitting_summary, sweep_plot
    from .systems import parse_system

    check_grid(opts["lrs"])
    out = Path(opts["output_dir"])
    log = ResultLog(out / "runs.jsonl", {k: opts.get(k) for k in SWEEP_SETTINGS})
    rows = sweep(opts, log)
    spec = get_task(opts["task"])
    size = opts.get("train_size") or None
    base = baselines(spec, resolve_data_dir(opts.get("data_dir")), size, opts["seeds"], opts, log, "lr")
    systems = [parse_system(s).name for s in opts["systems"]]
    table = aggregate(rows, systems) + baseline_rows(base)
    groups = best_lr_runs(rows, systems)
    text = [f"# Learning-rate sweep: {spec.name}\n",
            f"Model {opts.get('model') or 'bundled all-MiniLM-L6-v2'}; {size or 'all'} training examples, dev "
            f"{opts['dev_size']} carved from train, test = official {'test' if 'test' in spec.splits else 'dev'} "
            f"set; {opts['epochs']:g} epochs (best dev epoch kept), batch {opts['batch_size']}; seeds "
            f"{', '.join(map(str, opts['seeds']))}. Test {spec.metric} x100: per lr mean ± std over seeds; grid "
            "mean / std / spread over the per-lr means.\n", markdown_table(table),
            "\n## Dev loss per epoch (each system at its best-dev learning rate)\n",
            markdown_table(overfitting_summary([dict(r, system=k) for k, v in groups.items() for r in v],
                                               list(groups)))]
    out.mkdir(parents=True, exist_ok=True)
    (out / "lr_sweep.md").write_text("\n".join(text) + "\n", encoding="utf-8")
    from ..io import atomic_write_json

    atomic_write_json(out / "lr_sweep.json", {"options": opts, "rows": rows, "baselines": base})
    p1 = sweep_plot(out / "lr_sweep.png", rows, systems, title=f"{spec.name}: test {spec.metric} against lr")
    p2 = curves_plot(out / "dev_loss.png", groups, title=f"{spec.name}: dev loss per epoch")
    _say("\n".join(text))
    _say(f"wrote {out / 'lr_sweep.md'}, {out / 'lr_sweep.json'}, {p1}, {p2}")
    return 0


# --- zero-shot ----------------------------------------------------------------------------------------


def _zero_shot_one(opts: dict[str, Any], suite: Any, system: Any, seed: int, data: tuple, data_dir: Any,
                   label: str, lr: float) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Train ``system`` on the English ``data`` (train, dev, heldout) and evaluate it in every language:
    (training row, {lang: result}, missing files)."""
    from ..console import say as _say
    from .crosslingual import zero_shot_eval
    from .systems import full_head_lr, train_system

    train, dev, heldout = data
    model, tokenizer, row = train_system(
        system, suite.spec("en"), (train, dev, []), model=opts.get("model"), lr=lr, seed=seed,
        epochs=opts["epochs"], batch_size=opts["batch_size"], max_length=opts["max_length"],
        eval_batch_size=opts["eval_batch_size"], precision=opts["precision"], progress=opts["progress"],
        label=label, head_lr=full_head_lr(system, opts),
        output_dir=Path(opts["output_dir"]) / "work" / label.replace(" ", "_"))
    results, missing = zero_shot_eval(model, tokenizer, suite, data_dir, heldout,
                                      languages=opts.get("languages") or None, max_length=opts["max_length"],
                                      batch_size=opts["eval_batch_size"], precision=opts["precision"], log=_say)
    return row, results, missing


def zero_shot_runs(opts: dict[str, Any], log: Any, suite_name: str, *, part: str = "zero-shot") -> list[dict]:
    """Train each system x seed on English and evaluate every language (resumable); returns logged rows."""
    from ..console import Progress
    from ..console import say as _say
    from ..data.tasks import resolve_data_dir
    from .crosslingual import english_data, get_suite
    from .systems import default_lr, parse_system

    suite = get_suite(suite_name)
    data_dir = resolve_data_dir(opts.get("data_dir"))
    if data_dir is None:
        raise ConfigError("data_dir: zero-shot needs --data-dir (or $ADAPTERKIT_DATA_DIR)")
    systems = [parse_system(s) for s in opts["systems"]]
    keys = ("part", "suite", "seed", "system")
    plan = [(seed, sys) for seed in opts["seeds"] for sys in systems]
    todo = [p for p in plan if not log.has(keys, part=part, suite=suite.name, seed=p[0], system=p[1].name)]
    progress = Progress(len(plan), len(plan) - len(todo))
    _say(f"zero-shot {suite.name}: {len(plan)} runs, {len(plan) - len(todo)} already logged")
    cache: dict[int, tuple] = {}
    for seed, system in todo:
        if seed not in cache:
            cache = {seed: english_data(suite, data_dir, seed=seed, train_size=opts.get("train_size") or None,
                                        dev_size=opts["dev_size"], eval_size=opts.get("eval_size"))}
        label = f"{suite.name} seed={seed} {system.name}"
        progress.step(label)
        lr = default_lr(system, opts["learning_rate"], opts["full_lr"], opts["head_lr"])
        row, results, missing = _zero_shot_one(opts, suite, system, seed, cache[seed], data_dir, label, lr)
        log.add({"part": part, "suite": suite.name, **row, "languages": results, "missing": missing,
                 "train": len(cache[seed][0]), "dev": len(cache[seed][1])})
        progress.finish()
    names = {s.name for s in systems}
    return [r for r in log.unique(keys) if r.get("part") == part and r["suite"] == suite.name
            and r["system"] in names and r["seed"] in opts["seeds"]]


BASELINE_NAMES = ("trivial", "linear probe")
"""The two baselines every zero-shot table shows beside the systems."""


def zero_shot_baselines(opts: dict[str, Any], log: Any, suite_name: str, *, part: str = "zero-shot"
                        ) -> list[dict[str, Any]]:
    """Per seed and language (logged, resumable): ``trivial`` (the English training set's majority class; QA: the
    context's first words) and ``linear probe`` (a linear model on the frozen model's mean-pooled features, fitted
    on the English training set; QA: a span head trained on the frozen backbone at ``head_lr``)."""
    from ..data.tasks import resolve_data_dir
    from .crosslingual import english_data, eval_sets, get_suite
    from .systems import PRESETS, linear_probe_scores, trivial_score

    suite = get_suite(suite_name)
    data_dir = resolve_data_dir(opts.get("data_dir"))
    if data_dir is None:
        raise ConfigError("data_dir: zero-shot needs --data-dir (or $ADAPTERKIT_DATA_DIR)")
    keys = ("part", "suite", "seed", "system")
    for seed in opts["seeds"]:
        if log.has(keys, part=part, suite=suite.name, seed=seed, system="linear probe"):
            continue
        data = english_data(suite, data_dir, seed=seed, train_size=opts.get("train_size") or None,
                            dev_size=opts["dev_size"], eval_size=opts.get("eval_size"))
        train = data[0]
        sets, _ = eval_sets(suite, data_dir, data[2], languages=opts.get("languages") or None)
        specs = {lang: spec for lang, (spec, _) in sets.items()}
        tests = {lang: examples for lang, (_, examples) in sets.items()}
        trivial = {lang: trivial_score(specs[lang], train, ex) for lang, ex in tests.items()}
        log.add({"part": part, "suite": suite.name, "seed": seed, "system": "trivial", "trainable": 0,
                 "train_seconds": 0.0, "languages": {k: {"score": v, "n": len(tests[k])} for k, v in trivial.items()}})
        if suite.kind == "qa":
            label = f"{suite.name} seed={seed} linear probe"
            row, results, _ = _zero_shot_one(opts, suite, PRESETS["head"], seed, data, data_dir, label,
                                             opts["head_lr"])
            log.add({"part": part, "suite": suite.name, **row, "system": "linear probe", "languages": results})
            continue
        start = time.perf_counter()
        probe = linear_probe_scores(suite.spec("en"), opts.get("model"), train, tests, specs=specs,
                                    max_length=opts["max_length"])
        log.add({"part": part, "suite": suite.name, "seed": seed, "system": "linear probe",
                 "train_seconds": round(time.perf_counter() - start, 2),
                 "languages": {k: {"score": v, "n": len(tests[k])} for k, v in probe.items()}})
    return [r for r in log.unique(keys) if r.get("part") == part and r["suite"] == suite.name
            and r["system"] in BASELINE_NAMES and r["seed"] in opts["seeds"]]


def cmd_zero_shot(opts: dict[str, Any]) -> int:
    """Zero-shot cross-lingual table and PNG per suite."""
    from ..console import say as _say
    from ..experiments.common import ResultLog
    from ..io import atomic_write_json
    from ..reporting import markdown_table
    from .crosslingual import get_suite, zero_shot_plot, zero_shot_table
    from .systems import parse_system

    out = Path(opts["output_dir"])
    log = ResultLog(out / "runs.jsonl", {k: opts.get(k) for k in ZERO_SHOT_SETTINGS})
    text = [f"# Zero-shot cross-lingual transfer\n\nModel {opts.get('model') or 'bundled all-MiniLM-L6-v2'}; "
            f"trained on English ({opts.get('train_size') or 'all'} examples, dev {opts['dev_size']}), "
            f"{opts['epochs']:g} epochs; scores x100, mean ± std over seeds {', '.join(map(str, opts['seeds']))}. "
            "Baselines: trivial (the English majority class; QA: the first words of the context) and a linear probe "
            "on the frozen model (QA: a span head trained on the frozen backbone).\n"]
    systems = [parse_system(s).name for s in opts["systems"]]
    shown = [*systems, *BASELINE_NAMES]
    for name in opts["suites"]:
        suite = get_suite(name)
        rows = zero_shot_runs(opts, log, name) + zero_shot_baselines(opts, log, name)
        languages = list(opts.get("languages") or suite.languages)
        missing = sorted({m for r in rows for m in r.get("missing", [])})
        text += [f"\n## {suite.name}\n", markdown_table(zero_shot_table(rows, languages, shown))]
        if missing:
            text.append("\nMissing files (languages not evaluated): " + ", ".join(f"`{m}`" for m in missing) + "\n")
        zero_shot_plot(out / f"zero_shot_{suite.name}.png", rows, languages, shown,
                       title=f"{suite.name}: zero-shot from English (x100)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "zero_shot.md").write_text("\n".join(text) + "\n", encoding="utf-8")
    atomic_write_json(out / "zero_shot.json", {"options": opts, "rows": log.rows})
    _say("\n".join(text))
    _say(f"wrote {out / 'zero_shot.md'} and zero_shot_*.png")
    return 0
