"""``adapterkit analyze``: similarity (per-layer CKA/RSA), lr-sweep (scores over a learning-rate grid, dev
curves per epoch) and zero-shot (train on English, evaluate on every other language)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError

DEFAULTS: dict[str, dict[str, Any]] = {
    "similarity": {"models": [], "probe": None, "probe_split": None, "probe_column": None, "probe_size": 500,
                   "data_dir": None, "base_model": None, "metrics": ["cka", "rsa"], "tokens": "sample:2000",
                   "correlation": "pearson", "include_special": False, "batch_size": 32, "max_length": 128,
                   "seed": 0, "output_dir": "runs/analysis/similarity"},
    "lr-sweep": {"task": "rte", "data_dir": None, "model": None, "systems": ["houlsby64", "full"],
                 "lrs": [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3], "seeds": [42], "train_size": 1000, "dev_size": 200,
                 "test_size": None, "epochs": 5.0, "batch_size": 16, "max_length": 128, "eval_batch_size": 64,
                 "precision": "fp32", "progress": "log", "output_dir": "runs/analysis/lr-sweep"},
    "zero-shot": {"suites": ["xnli"], "languages": None, "data_dir": None, "model": None,
                  "systems": ["houlsby64", "full"], "seeds": [42], "train_size": 1000, "dev_size": 200,
                  "eval_size": 1000, "epochs": 5.0, "lr": 1e-3, "full_lr": 3e-5, "head_lr": 1e-2, "batch_size": 16,
                  "max_length": 128, "eval_batch_size": 64, "precision": "fp32", "progress": "log",
                  "output_dir": "runs/analysis/zero-shot"},
}
SWEEP_SETTINGS = ("task", "model", "train_size", "dev_size", "test_size", "epochs", "batch_size", "max_length",
                  "precision")
ZERO_SHOT_SETTINGS = ("model", "train_size", "dev_size", "eval_size", "epochs", "lr", "full_lr", "head_lr",
                      "batch_size", "max_length", "precision")


def add_parsers(sub: Any) -> None:
    """Add ``analyze`` and its subcommands to the top-level subparsers ``sub``."""
    from ..cli import _bool, _csv

    an = sub.add_parser("analyze", help="analysis tools: per-layer similarity, lr sweeps and curves, zero-shot")
    an_sub = an.add_subparsers(dest="analysis", required=True)
    si = an_sub.add_parser("similarity", help="per-layer CKA/RSA of tuned models against a base model",
                           argument_default=argparse.SUPPRESS)
    si.add_argument("models", nargs="+", metavar="MODEL",
                    help="BASE TUNED [TUNED...]: model directories, Hub ids or adapter directories (an adapter "
                    "directory means its base model with the adapter active); 'bundled' = the bundled MiniLM")
    si.add_argument("--probe", required=True, help="probe sentences: a .txt file (one per line), a CSV/TSV/JSONL/"
                    "Parquet file, or a registered task name")
    si.add_argument("--probe-split", help="task probe: split to read (default dev, else test, else train)")
    si.add_argument("--probe-column", help="table probe: the text column (default text/sentence/premise/question)")
    si.add_argument("--probe-size", type=int, help="keep a seeded sample of N probe sentences (default 500; 0 = all)")
    si.add_argument("--data-dir", help="data directory of registered tasks (default: $ADAPTERKIT_DATA_DIR)")
    si.add_argument("--base-model", help="base model for adapter directories (default: the one each adapter names)")
    si.add_argument("--metrics", type=_csv, help="cka, rsa or both (default cka,rsa)")
    si.add_argument("--tokens", help="all, sentence (mean-pooled) or sample:N tokens (default sample:2000)")
    si.add_argument("--correlation", choices=("pearson", "spearman"), help="RSA correlation (default pearson)")
    si.add_argument("--include-special", type=_bool, help="count [CLS]/[SEP]-like tokens (default false)")
    si.add_argument("--batch-size", type=int, help="probe sentences per forward pass (default 32)")
    si.add_argument("--max-length", type=int, help="maximum tokens per sentence (default 128)")
    si.add_argument("--seed", type=int, help="seed of the probe and token samples (default 0)")
    si.add_argument("--output-dir", help="where similarity.json and similarity.png go (default runs/analysis/similarity)")
    add_more_parsers(an_sub)


def _add_training_args(p: argparse.ArgumentParser) -> None:
    from ..experiments.common import int_list

    p.add_argument("--data-dir", help="data directory of registered tasks (default: $ADAPTERKIT_DATA_DIR)")
    p.add_argument("--model", help="Hugging Face model id or local path (default: the bundled all-MiniLM-L6-v2)")
    p.add_argument("--systems", type=_systems, help="comma-separated systems: presets houlsby64, houlsby128, "
                   "houlsby256, full, head, any method name, or METHOD:FIELD=VALUE;FIELD=VALUE")
    p.add_argument("--seeds", type=int_list, help="seeds (default 42)")
    p.add_argument("--train-size", type=int, help="English/training examples (default 1000; 0 = all)")
    p.add_argument("--dev-size", type=int, help="dev examples carved from the training data (default 200)")
    p.add_argument("--epochs", type=float, help="epochs per run (default 5)")
    p.add_argument("--batch-size", type=int, help="batch size (default 16)")
    p.add_argument("--max-length", type=int, help="maximum tokens per example (default 128)")
    p.add_argument("--eval-batch-size", type=int, help="evaluation batch size (default 64)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), help="fp32 (default) or mixed precision")
    p.add_argument("--progress", choices=("log", "bar", "none"), help="progress display (default log)")


def _systems(value: str) -> list[str]:
    """Systems are separated by commas; fields inside one system by semicolons (turned into commas)."""
    return [v.strip().replace(";", ",") for v in value.split(",") if v.strip()]


def _floats(value: str) -> list[float]:
    out = []
    for v in value.split(","):
        if v.strip():
            try:
                out.append(float(v))
            except ValueError:
                raise argparse.ArgumentTypeError(f"not a number: {v!r}") from None
    return out


def add_more_parsers(an_sub: Any) -> None:
    from ..cli import _csv

    sw = an_sub.add_parser("lr-sweep", help="run systems over a grid of learning rates and seeds; score and dev "
                           "curves", argument_default=argparse.SUPPRESS)
    sw.add_argument("--task", help="registered task (default rte)")
    sw.add_argument("--lrs", type=_floats, help="learning-rate grid (default 1e-5,3e-5,1e-4,3e-4,1e-3,3e-3)")
    sw.add_argument("--test-size", type=int, help="cap on test examples (default: all)")
    sw.add_argument("--output-dir", help="results directory (default runs/analysis/lr-sweep); a rerun resumes")
    _add_training_args(sw)
    zs = an_sub.add_parser("zero-shot", help="train on English, evaluate unchanged on every language",
                           argument_default=argparse.SUPPRESS)
    zs.add_argument("--suites", type=_csv, help="xnli, pawsx, xquad (default xnli)")
    zs.add_argument("--languages", type=_csv, help="languages to evaluate (default: every language of the suite)")
    zs.add_argument("--eval-size", type=int, help="XNLI: rows held out and evaluated in every language (default 1000)")
    zs.add_argument("--lr", type=float, help="adapter learning rate (default 1e-3)")
    zs.add_argument("--full-lr", type=float, help="full fine-tuning learning rate (default 3e-5)")
    zs.add_argument("--head-lr", type=float, help="head-only learning rate (default 1e-2)")
    zs.add_argument("--output-dir", help="results directory (default runs/analysis/zero-shot); a rerun resumes")
    _add_training_args(zs)


def merge(args: argparse.Namespace) -> dict[str, Any]:
    given = {k: v for k, v in vars(args).items() if k not in ("command", "analysis")}
    return {**DEFAULTS[args.analysis], **given}


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
    from ..io import atomic_write_json
    from ..reporting import text_table
    from ..runner import _say
    from .representations import (
        SimilarityOptions,
        layer_similarity,
        load_for_analysis,
        read_probe,
        similarity_plot,
    )

    models = list(opts["models"])
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
    from ..data.tasks import get_task, resolve_data_dir
    from ..experiments.common import Progress
    from ..runner import _say
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
    from ..data.tasks import get_task, resolve_data_dir
    from ..experiments.common import ResultLog
    from ..reporting import markdown_table
    from ..runner import _say
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


def zero_shot_runs(opts: dict[str, Any], log: Any, suite_name: str, *, part: str = "zero-shot") -> list[dict]:
    """Train each system x seed on English and evaluate every language (resumable); returns logged rows."""
    from ..data.tasks import resolve_data_dir
    from ..experiments.common import Progress
    from ..runner import _say
    from .crosslingual import english_data, get_suite, zero_shot_eval
    from .systems import default_lr, parse_system, train_system

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
        train, dev, heldout = cache[seed]
        label = f"{suite.name} seed={seed} {system.name}"
        progress.step(label)
        lr = default_lr(system, opts["lr"], opts["full_lr"], opts["head_lr"])
        model, tokenizer, row = train_system(
            system, suite.spec("en"), (train, dev, []), model=opts.get("model"), lr=lr, seed=seed,
            epochs=opts["epochs"], batch_size=opts["batch_size"], max_length=opts["max_length"],
            eval_batch_size=opts["eval_batch_size"], precision=opts["precision"], progress=opts["progress"],
            label=label, output_dir=Path(opts["output_dir"]) / "work" / label.replace(" ", "_"))
        results, missing = zero_shot_eval(model, tokenizer, suite, data_dir, heldout,
                                          languages=opts.get("languages") or None, max_length=opts["max_length"],
                                          batch_size=opts["eval_batch_size"], precision=opts["precision"], log=_say)
        log.add({"part": part, "suite": suite.name, **row, "languages": results, "missing": missing,
                 "train": len(train), "dev": len(dev)})
        progress.finish()
    names = {s.name for s in systems}
    return [r for r in log.unique(keys) if r.get("part") == part and r["suite"] == suite.name
            and r["system"] in names and r["seed"] in opts["seeds"]]


def cmd_zero_shot(opts: dict[str, Any]) -> int:
    """Zero-shot cross-lingual table and PNG per suite."""
    from ..experiments.common import ResultLog
    from ..io import atomic_write_json
    from ..reporting import markdown_table
    from ..runner import _say
    from .crosslingual import get_suite, zero_shot_plot, zero_shot_table
    from .systems import parse_system

    out = Path(opts["output_dir"])
    log = ResultLog(out / "runs.jsonl", {k: opts.get(k) for k in ZERO_SHOT_SETTINGS})
    text = [f"# Zero-shot cross-lingual transfer\n\nModel {opts.get('model') or 'bundled all-MiniLM-L6-v2'}; "
            f"trained on English ({opts.get('train_size') or 'all'} examples, dev {opts['dev_size']}), "
            f"{opts['epochs']:g} epochs; scores x100, mean ± std over seeds {', '.join(map(str, opts['seeds']))}.\n"]
    systems = [parse_system(s).name for s in opts["systems"]]
    for name in opts["suites"]:
        suite = get_suite(name)
        rows = zero_shot_runs(opts, log, name)
        languages = list(opts.get("languages") or suite.languages)
        missing = sorted({m for r in rows for m in r.get("missing", [])})
        text += [f"\n## {suite.name}\n", markdown_table(zero_shot_table(rows, languages, systems))]
        if missing:
            text.append("\nMissing files (languages not evaluated): " + ", ".join(f"`{m}`" for m in missing) + "\n")
        zero_shot_plot(out / f"zero_shot_{suite.name}.png", rows, languages, systems,
                       title=f"{suite.name}: zero-shot from English (x100)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "zero_shot.md").write_text("\n".join(text) + "\n", encoding="utf-8")
    atomic_write_json(out / "zero_shot.json", {"options": opts, "rows": log.rows})
    _say("\n".join(text))
    _say(f"wrote {out / 'zero_shot.md'} and zero_shot_*.png")
    return 0
