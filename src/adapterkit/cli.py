"""The ``adapterkit`` command: ``train``, ``eval``, ``predict``, ``pretrain``, ``info``, ``demo``, ``zoo``, ``analyze``,
``experiment``, ``push``, ``convert`` and ``serve``.

The flags of every command are generated from options dataclasses (:mod:`adapterkit.options`):
``TrainConfig`` for training, ``DataOptions`` and ``ModelOptions`` for data and model, and one small
dataclass per command for the rest. Every flag can also come from a YAML file (``--config run.yaml``)
whose keys are the option names with underscores; flags given on the command line win, and an unknown
key in the file is an error naming the file and the key.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import options
from .config import opt
from .console import Progress, quiet_transformers, say
from .errors import AdapterKitError, AdapterLoadError, ConfigError
from .heads import HeadConfig
from .options import DataOptions, Group, ModelOptions
from .runner import (
    NO_CHECKPOINTS,
    RESULT_COLUMNS,
    RESULT_DIGITS,
    check_sizes,
    run_training,
    split_data,
    system_method,
)
from .training import TrainConfig

# --- options of each command ---------------------------------------------------------------------


@dataclass
class EvalOptions:
    """What ``adapterkit eval`` evaluates and where QA predictions go."""

    adapter: str | None = opt(None, "adapter directory (adapter_config.json + safetensors), or a Hugging Face Hub "
                              "repo id owner/name[@revision] (downloaded; HF_HUB_OFFLINE=1: the cache only)")
    split: str | None = opt(
        None, "split to evaluate (default: test if the task has one, else dev; with your own files, the one given)")
    output_dir: str = opt("runs/eval", "where metrics.json and the predictions go (predictions.jsonl; QA: "
                          "predictions.json, id -> answer) and, for gated adapters, gates.json/png")


@dataclass
class PredictOptions:
    """What ``adapterkit predict`` predicts on and where the predictions go."""

    adapter: str | None = opt(None, "adapter directory (adapter_config.json + safetensors), or a Hugging Face Hub "
                              "repo id owner/name[@revision]")
    input: str | None = opt(None, "CSV/TSV/JSONL/Parquet file (QA: SQuAD JSON or JSON lines) to predict on; no "
                            "labels needed")
    output: str | None = opt(None, "JSON lines file to write: one prediction with its score per input row")


REMEMBERED_HELP = " (default: as the adapter was trained)"
"""eval and predict take these data options from the adapter unless given."""


@dataclass
class DemoOptions:
    """The systems of ``adapterkit demo`` and where its table and plot go."""

    output_dir: str = opt("runs/demo", "where the table and plot go")
    methods: list[str] = opt(["majority", "probe", "head", "pfeiffer", "lora", "full"],
                             "comma-separated systems (also houlsby, prompt)")
    test_size: int | None = opt(None, "cap on test examples (default: all)")


@dataclass
class ZooOptions:
    """What ``adapterkit zoo`` builds or lists."""

    action: str = opt("list", "build: train the missing adapters; list: show the index")
    zoo_dir: str = opt("runs/zoo", "zoo directory")
    sources: list[str] | None = opt(
        None, "comma-separated NAME=TASK[:TRACK][@SEED][#I/N] or TASK entries (default: sst2, cola, stsb, stsb_b, "
        "mrpc, rte, qnli, xnli_en, chemprot, citation_intent)")
    max_train: int = opt(2000, "cap on training examples per source")
    max_dev: int = opt(500, "cap on dev examples per source")
    force: bool = opt(False, "retrain adapters already in the zoo")


EVAL_TRAINING = ("max_length", "doc_stride", "eval_batch_size", "precision")
"""The training options that evaluation uses too."""


def _zoo_groups() -> tuple[Group, ...]:
    from .zoo import ZOO_TRAINING

    return (Group(ZooOptions, positional=("action",)), Group(ModelOptions, only=("model", "method", "adapter_config")),
            Group(DataOptions, only=("data_dir",)),
            Group(TrainConfig, only=("epochs", "learning_rate", "batch_size", *EVAL_TRAINING, "progress"),
                  defaults={k: v for k, v in ZOO_TRAINING.items() if k in ("epochs", "learning_rate", "batch_size")}))


def command_groups(command: str, experiment: str | None = None) -> tuple[Group, ...]:
    """The option groups of ``adapterkit COMMAND`` (``experiment`` names the experiment)."""
    if command == "train":
        from .runner import default_learning_rates_text

        lr_field = TrainConfig.help()["learning_rate"]
        lr_help = f"{lr_field}; per method: {default_learning_rates_text()}"
        return (Group(ModelOptions), Group(DataOptions), Group(HeadConfig),  # train_mode follows --method (full, head, or adapters)
                Group(TrainConfig, exclude=("train_mode",), help={"learning_rate": lr_help}))
    if command == "pretrain":
        from .pretraining import PRETRAIN_TRAINING, PretrainOptions

        return (Group(PretrainOptions), Group(ModelOptions, exclude=("init_adapter",), defaults={"method": "full"},
                                              help={"method": "full (the whole backbone) or an adapter method (only "
                                                    "the adapter trains)"}),
                Group(DataOptions, only=("data_dir", "task"),
                      help={"task": "a registered task whose training text is the corpus (TAPT; labels unused)"}),
                Group(TrainConfig, only=PRETRAIN_TRAINING, defaults={"epochs": 1.0, "learning_rate": 1e-4,
                                                                     "output_dir": "runs/pretrain", "progress": "bar"},
                      help={"output_dir": "checkpoints and the result (OUTPUT/model or OUTPUT/adapter)"}))
    remembered = {"kind": None, "label_column": None, "no_header": None}
    if command == "eval":
        return (Group(EvalOptions, positional=("adapter",)), Group(ModelOptions, only=("model",)),
                Group(DataOptions, exclude=("k_shot", "train_size", "dev_size"), defaults=remembered,
                      help={k: DataOptions_help(k) + REMEMBERED_HELP for k in ("kind", "label_column", "no_header",
                                                                              "text_columns", "labels")}),
                Group(TrainConfig, only=EVAL_TRAINING, defaults={"max_length": None},
                      help={"max_length": "maximum tokens per example" + REMEMBERED_HELP}))
    if command == "predict":
        fields = ("no_header", "text_columns", "label_column", "labels", "kind")
        return (Group(PredictOptions, positional=("adapter",)), Group(ModelOptions, only=("model",)),
                Group(DataOptions, only=fields, defaults=remembered,
                      help={k: DataOptions_help(k) + REMEMBERED_HELP for k in fields}),
                Group(TrainConfig, only=EVAL_TRAINING, defaults={"max_length": None},
                      help={"max_length": "maximum tokens per example" + REMEMBERED_HELP}))
    if command == "demo":
        return (Group(DemoOptions), Group(ModelOptions, only=("model",)),
                Group(DataOptions, only=("data_dir", "k_shot", "dev_size"), defaults={"k_shot": 32},
                      help={"dev_size": "dev examples carved from train (default: as many as the training examples)"}),
                Group(HeadConfig),
                Group(TrainConfig, only=("epochs", "seed", *EVAL_TRAINING, "lp_init", "patience", "progress"),
                      defaults={"epochs": 20.0, "max_length": 64}))
    if command == "zoo":
        return _zoo_groups()
    if command == "serve":
        from .serving.server import ServeOptions

        return (Group(ServeOptions), Group(ModelOptions, only=("model",)))
    if command == "experiment":
        from .experiments import get_experiment

        return (Group(ModelOptions, only=("model",)), Group(DataOptions, only=("data_dir",)),
                Group(TrainConfig, only=EVAL_TRAINING), *get_experiment(experiment or "").OPTIONS)
    raise ConfigError(f"command {command!r}: has no options")


def DataOptions_help(name: str) -> str:  # noqa: N802 - reads as the class it documents
    """The help text of DataOptions field ``name``."""
    import dataclasses

    return next(f.metadata.get("help", "") for f in dataclasses.fields(DataOptions) if f.name == name)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (defaults are applied after merging with ``--config``)."""
    parser = argparse.ArgumentParser(prog="adapterkit", description="Adapters for Hugging Face transformer models.")
    sub = parser.add_subparsers(dest="command", required=True)
    helps = {"train": "train an adapter (or the full model, or the head) on a task",
             "eval": "evaluate a saved adapter on a task split or your file (options as the adapter was trained)",
             "predict": "predict with a saved adapter on a file without labels (one JSON line per row)",
             "pretrain": "continue masked-LM pretraining (DAPT on a corpus, TAPT on a task's text)",
             "info": "show an adapter directory, or list methods/tasks/architectures",
             "demo": "few-shot comparison: adapters vs full fine-tuning, the head alone, a linear probe and the "
                     "majority class",
             "zoo": "build or list an adapter zoo (source adapters with task, track and scores)",
             "push": "upload a saved adapter directory to a Hugging Face Hub repository",
             "convert": "convert an adapter between adapterkit, peft and AdapterHub formats",
             "serve": "serve many adapters over HTTP from one base model (needs adapterkit[serve])"}
    for command, text in helps.items():
        if command == "info":
            info = sub.add_parser("info", help=text)
            info.add_argument("adapter", nargs="?", help="adapter directory")
            info.add_argument("--list", nargs="?", const="all", choices=("all", "methods", "tasks", "architectures"),
                              help="list what is registered")
            continue
        if command in ("push", "convert"):
            _add_interop_arguments(command, sub.add_parser(command, help=text))
            continue
        p = sub.add_parser(command, help=text, argument_default=argparse.SUPPRESS)
        _add_config_flag(p)
        options.add_arguments(p, command_groups(command))

    from .analysis.commands import add_parsers as add_analysis_parsers

    add_analysis_parsers(sub)

    exp = sub.add_parser("experiment", help="run a research comparison (see `adapterkit experiment -h`)")
    exp_sub = exp.add_subparsers(dest="experiment", required=True)
    from .experiments import EXPERIMENTS, get_experiment

    for name in EXPERIMENTS:
        ep = exp_sub.add_parser(name, help=get_experiment(name).DESCRIPTION, argument_default=argparse.SUPPRESS)
        _add_config_flag(ep)
        options.add_arguments(ep, command_groups("experiment", name))
    return parser


def _add_interop_arguments(command: str, p: argparse.ArgumentParser) -> None:
    """``push`` and ``convert`` (positional paths and a few flags; no run options, no YAML file)."""
    if command == "push":
        p.add_argument("adapter", help="adapter directory (as saved by train or save_adapter, with its README.md card)")
        p.add_argument("repo_id", help="Hub model repository owner/name (created if missing)")
        p.add_argument("--private", choices=("true", "false"), help="true: create the repository private")
        p.add_argument("--revision", help="branch to commit to (default main)")
        p.add_argument("--message", help="commit message")
        return
    p.add_argument("source", help="adapter directory, or a Hub repo id owner/name")
    p.add_argument("target", help="output directory")
    p.add_argument("--from", dest="source_format", required=True, choices=("peft", "adapterhub", "adapterkit"),
                   help="format of SOURCE")
    p.add_argument("--to", dest="target_format", required=True, choices=("adapterkit", "peft"),
                   help="format to write (peft: LoRA adapters only)")
    p.add_argument("--model", help="the base model the adapter was trained on: Hub id or local path "
                   "(default: the bundled all-MiniLM-L6-v2)")
    p.add_argument("--name", help="adapter name (default: the one saved in SOURCE)")


def _add_config_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with any of these options as keys (underscores); flags override it")


def _command_name(args: argparse.Namespace) -> str:
    return f"experiment {args.experiment}" if args.command == "experiment" else args.command


def read_yaml_config(path: str | Path, command: str) -> dict[str, Any]:
    """Read ``--config`` for ``command`` ("train", ..., or "experiment NAME"); unknown keys fail naming the file."""
    name, _, experiment = command.partition(" ")
    return options.read_yaml(path, command_groups(name, experiment or None), command)


def merge_options(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, then the YAML file, then the flags given on the command line."""
    given = {k: v for k, v in vars(args).items() if k not in ("command", "config", "experiment")}
    merged = options.defaults(command_groups(args.command, getattr(args, "experiment", None)))
    if getattr(args, "config", None):
        merged.update(read_yaml_config(args.config, _command_name(args)))
    return {**merged, **given}


def train_mode_of(method: str) -> str:
    """The TrainConfig train_mode of a ``--method`` value: full, head, or adapters."""
    return method if method in ("full", "head") else "adapters"


def cmd_train(opts: dict[str, Any]) -> int:
    from .reporting import text_table
    from .runner import default_head_learning_rate, default_learning_rate

    model = options.build(ModelOptions, opts)
    method = system_method(model)
    rates = {}
    if opts.get("learning_rate") is None:  # the method's defaults: its rate, and its head's where it has one
        rates["learning_rate"] = default_learning_rate(method)
        if opts.get("head_learning_rate") is None:
            rates["head_learning_rate"] = default_head_learning_rate(method)
    config = options.build(TrainConfig, opts, train_mode=train_mode_of(method), **rates)
    row = run_training(options.build(DataOptions, opts), model, config, head=options.build(HeadConfig, opts))
    cols = {k: v for k, v in RESULT_COLUMNS.items() if row.get(k) is not None}
    say("")
    say(text_table([row], cols, RESULT_DIGITS))
    out = Path(config.output_dir)
    where = out / "adapter" if (out / "adapter").is_dir() else out / "model"
    say(f"saved: {where}  (results: {out / 'results.json'})")
    return 0


# --- eval -----------------------------------------------------------------------------------------


def cmd_eval(opts: dict[str, Any]) -> int:
    from .predict import run_eval
    from .reporting import text_table

    metrics = run_eval(opts)
    if metrics is not None:
        say(text_table([{"metric": k, "value": v} for k, v in metrics.items()], ["metric", "value"]))
    return 0


def cmd_predict(opts: dict[str, Any]) -> int:
    from .predict import run_predict

    run_predict(opts)
    return 0


# --- info -----------------------------------------------------------------------------------------


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def cmd_info(args: argparse.Namespace) -> int:
    from .reporting import text_table

    if args.list or not args.adapter:
        what = args.list or "all"
        if what in ("all", "methods"):
            from . import methods  # noqa: F401  (importing registers the built-in methods)
            from .registry import METHODS
            from .runner import default_head_learning_rate, default_learning_rate

            rows = [{"method": n, "description": _first_line(c.__doc__)} for n, c in sorted(METHODS.items())]
            rows += [{"method": "full", "description": "full fine-tuning (every parameter trains)"},
                     {"method": "head", "description": "train the task head only, on the frozen backbone"},
                     {"method": "probe", "description": "baseline: logistic regression on the frozen features"},
                     {"method": "majority", "description": "baseline: the most frequent training label"}]
            for row in rows:
                row["default lr"] = f"{default_learning_rate(row['method']):g}" if row["method"] not in (
                    "probe", "majority") else "-"
                head_lr = default_head_learning_rate(row["method"])  # None: the head trains at the default lr
                row["head lr"] = f"{head_lr:g}" if head_lr is not None else row["default lr"]
            say("Methods:\n" + text_table(rows, ["method", "default lr", "head lr", "description"]))
        if what in ("all", "tasks"):
            from .data.tasks import TASKS

            rows = [{"task": n, "kind": s.kind, "metric": s.metric, "splits": ",".join(s.splits),
                     "description": s.description} for n, s in sorted(TASKS.items())]
            say("Tasks:\n" + text_table(rows, ["task", "kind", "metric", "splits", "description"]))
        if what in ("all", "architectures"):
            from .architectures import ARCHITECTURES

            say("Architectures (model_type): " + ", ".join(sorted(ARCHITECTURES)) + "\n")
        return 0
    from .io import HEAD_NAME, WEIGHTS_NAME, read_adapter_config

    directory = Path(args.adapter)
    meta = read_adapter_config(directory)
    say(f"{directory}: adapter {meta['name']!r} ({meta['config'].get('method')})")
    say(json.dumps({k: meta[k] for k in ("config", "base_model", "head", "extra") if k in meta}, indent=2))
    rows = []
    for fname in (WEIGHTS_NAME, HEAD_NAME):
        path = directory / fname
        if path.is_file():
            from safetensors import SafetensorError, safe_open

            try:
                with safe_open(str(path), "pt") as f:
                    n = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
                    rows.append({"file": fname, "tensors": len(list(f.keys())), "parameters": n,
                                 "bytes": path.stat().st_size})
            except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
                raise AdapterLoadError(f"{path}: not a valid safetensors file ({exc})") from None
        elif fname == WEIGHTS_NAME:
            raise AdapterLoadError(f"{path}: file not found (the adapter's weights)")
    say(text_table(rows, ["file", "tensors", "parameters", "bytes"]))
    return 0


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


# --- demo -----------------------------------------------------------------------------------------

DEMO_SYSTEMS = {
    # name: (method, learning rate, adapter fields)
    "pfeiffer": ("pfeiffer", 3e-3, {}),
    "houlsby": ("houlsby", 1e-3, {}),
    "lora": ("lora", 1e-3, {}),
    "full": ("full", 1e-4, {}),
    "head": ("head", 1e-2, {}),
    "prompt": ("prompt", 3e-2, {}),
    "probe": ("probe", None, {}),
    "majority": ("majority", None, {}),
}


def cmd_demo(opts: dict[str, Any]) -> int:
    """Few-shot comparison on SST-2 (or the packaged sample task) with a table and a plot."""
    from .data.tasks import get_task, resolve_data_dir
    from .reporting import markdown_table, results_figure, text_table

    start = time.perf_counter()
    out = Path(opts["output_dir"])
    data_dir = resolve_data_dir(opts.get("data_dir"))
    systems = opts["methods"]
    unknown = [s for s in systems if s not in DEMO_SYSTEMS]
    if unknown:
        raise ConfigError(f"methods: unknown demo system {unknown[0]!r}; known: {sorted(DEMO_SYSTEMS)}")
    seed, k = opts["seed"], opts["k_shot"]
    check_sizes(k_shot=k, train_size=None, dev_size=opts.get("dev_size"))
    test_size = opts.get("test_size")
    if test_size is not None and (isinstance(test_size, bool) or not isinstance(test_size, int) or test_size < 1):
        raise ConfigError(f"test_size: must be a whole number >= 1, got {test_size!r} (leave it out for all)")
    if data_dir is not None:
        spec = get_task("sst2")
        dev_size = opts.get("dev_size") or k * len(spec.labels)
        train_ex, dev_ex, test_ex, notes = split_data(spec, data_dir, k_shot=k, train_size=None, dev_size=dev_size,
                                                      seed=seed)
        source = f"SST-2 from {data_dir}"
    else:
        spec = get_task("sample_sentiment")
        say("NOTE: no --data-dir and no $ADAPTERKIT_DATA_DIR: using the small packaged sample task "
             "'sample_sentiment' (120 sentences), not SST-2. Pass --data-dir ../shared/data for the real task.")
        k = min(k, 24)
        train_ex, dev_ex, test_ex, notes = split_data(spec, None, k_shot=k, train_size=None,
                                                      dev_size=opts.get("dev_size") or 16, seed=seed)
        source = "packaged sample task sample_sentiment"
    if opts.get("test_size") and test_ex and len(test_ex) > opts["test_size"]:
        from .data.sampling import subsample

        test_ex = subsample(test_ex, opts["test_size"], seed)
        notes.append(f"test: capped at {len(test_ex)} examples")
    say(f"demo: {source}; model {opts.get('model') or 'bundled all-MiniLM-L6-v2'}; systems {', '.join(systems)}")
    for note in notes:
        say(f"data: {note}")
    head = options.build(HeadConfig, opts)
    rows = []
    progress = Progress(len(systems))
    for name in systems:
        method, lr, fields = DEMO_SYSTEMS[name]
        progress.step(name)
        config = options.build(TrainConfig, opts, train_mode=train_mode_of(method), learning_rate=lr, batch_size=16,
                               output_dir=str(out / name), logging_steps=4, **NO_CHECKPOINTS)
        model = ModelOptions(model=opts.get("model"), method=method, adapter_config=fields or None)
        rows.append(run_training(DataOptions(data_dir=opts.get("data_dir")), model, config, spec=spec,
                                 examples=(train_ex, dev_ex, test_ex), label=name, head=head))
        progress.finish()
    total = time.perf_counter() - start
    title = f"{spec.name}: {len(train_ex)} train examples ({k} per class), {opts.get('model') or 'all-MiniLM-L6-v2'}"
    md = [f"# adapterkit demo\n\n{title}; dev {len(dev_ex or [])} (carved from train), test {len(test_ex or [])} "
          f"({source}). Metric: {spec.metric}; test score of the dev-selected epoch.\n",
          markdown_table(rows, RESULT_COLUMNS, RESULT_DIGITS), f"\nTotal wall time: {total:.0f}s\n"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text("\n".join(md), encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"task": spec.name, "source": source, "rows": rows,
                                                  "total_seconds": total}, indent=2), encoding="utf-8")
    plot = results_figure(out / "results.png", [r for r in rows if r["test_score"] is not None], name_key="system",
                          score_key="test_score", params_key="trainable",
                          histories={r["system"]: ([h["epoch"] for h in r["history"]], [h["score"] for h in r["history"]])
                                     for r in rows}, title=title)
    say("")
    say(f"Results on {source} (test = {len(test_ex or [])} examples, metric {spec.metric}):")
    say(text_table(rows, RESULT_COLUMNS, RESULT_DIGITS))
    say(f"wrote {out / 'results.md'}, {plot}, {out / 'results.json'}; total {total:.0f}s")
    return 0


# --- zoo ------------------------------------------------------------------------------------------


def cmd_zoo(opts: dict[str, Any]) -> int:
    """``zoo build`` trains the missing source adapters; ``zoo list`` prints the index."""
    from .reporting import text_table
    from .zoo import DEFAULT_SOURCES, build_zoo, parse_source, read_zoo, zoo_table

    if opts["action"] == "build":
        sources = [parse_source(s) for s in opts["sources"]] if opts.get("sources") else list(DEFAULT_SOURCES)
        training = {k: opts[k] for k in ("epochs", "learning_rate", "batch_size", *EVAL_TRAINING, "progress")}
        entries = build_zoo(opts["zoo_dir"], sources, data_dir=opts.get("data_dir"), model=opts.get("model"),
                            method=opts["method"], adapter_config=opts.get("adapter_config"),
                            max_train=opts["max_train"], max_dev=opts["max_dev"], force=opts["force"], **training)
    else:
        entries = read_zoo(opts["zoo_dir"])
        if not entries:
            raise ConfigError(f"{opts['zoo_dir']}: no zoo.json here; build one with `adapterkit zoo build`")
    say(text_table(zoo_table(entries), {"name": "Name", "task": "Task", "track": "Track", "method": "Method",
                                         "model": "Model", "train": "Train", "dev": "Dev", "metric": "Metric",
                                         "dev_score": "Dev score", "seconds": "Seconds"},
                    {"dev_score": 4, "seconds": 1}))
    return 0


# --- serve ----------------------------------------------------------------------------------------


def cmd_serve(opts: dict[str, Any]) -> int:
    from .serving.server import ServeOptions, run_serve

    run_serve(options.build(ServeOptions, opts), options.build(ModelOptions, opts).model, say=say)
    return 0


# --- push and convert -----------------------------------------------------------------------------


def cmd_push(args: argparse.Namespace) -> int:
    from .interop.hub import push_adapter_dir
    from .io import read_adapter_config

    read_adapter_config(args.adapter)  # only adapterkit directories
    private = None if args.private is None else args.private == "true"
    url = push_adapter_dir(args.adapter, args.repo_id, private=private, revision=args.revision,
                           commit_message=args.message)
    say(f"pushed {args.adapter} to {args.repo_id}: {url}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .interop.convert import convert_adapter

    summary = convert_adapter(args.source_format, args.target_format, args.source, args.target, model=args.model,
                              name=args.name)
    head = f"with its {summary['head']}-label head" if summary["head"] else "without a head"
    say(f"converted {args.source_format} {args.source} -> {args.target_format} {args.target}: adapter "
        f"{summary['name']!r} ({summary['method']}) {head}; files: {', '.join(summary['files'])}")
    return 0


# --- entry point ----------------------------------------------------------------------------------


def _show_data_warnings() -> None:
    """Print each DataWarning (an assumption about the user's files) as one ``note:`` line on stderr."""
    import warnings

    from .errors import DataWarning

    if getattr(warnings.showwarning, "_adapterkit", False):
        return
    previous = warnings.showwarning

    def show(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if issubclass(category, DataWarning):
            print(f"adapterkit: note: {message}", file=sys.stderr, flush=True)
        else:
            previous(message, category, filename, lineno, file, line)

    show._adapterkit = True  # type: ignore[attr-defined]
    warnings.showwarning = show


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``adapterkit`` command; returns the exit status (errors print one line and return 2). After a
    successful command under torchrun the process group is destroyed (:func:`training.close_distributed`)."""
    status = _main(argv)
    if status == 0:
        from .training import close_distributed

        close_distributed()
    return status


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_transformers()
    _show_data_warnings()
    opts: dict[str, Any] = {}
    try:
        if args.command == "info":
            return cmd_info(args)
        if args.command == "push":
            return cmd_push(args)
        if args.command == "convert":
            return cmd_convert(args)
        if args.command == "analyze":
            from .analysis.commands import run as run_analysis

            return run_analysis(args)
        opts = merge_options(args)
        if args.command == "train":
            return cmd_train(opts)
        if args.command == "eval":
            return cmd_eval(opts)
        if args.command == "predict":
            return cmd_predict(opts)
        if args.command == "pretrain":
            from .pretraining import run_pretraining

            run_pretraining(opts, say=say)
            return 0
        if args.command == "zoo":
            return cmd_zoo(opts)
        if args.command == "serve":
            return cmd_serve(opts)
        if args.command == "experiment":
            from .experiments import get_experiment

            return get_experiment(args.experiment).run(opts)
        return cmd_demo(opts)
    except (AdapterKitError, OSError) as exc:  # OSError: a model or file that cannot be found or read
        print(f"adapterkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = ""
        if args.command in ("train", "pretrain") and opts.get("output_dir"):
            where = (f"; checkpoints so far are in {opts['output_dir']}: run the same command with --resume auto "
                     "to continue")
        print(f"\nadapterkit {args.command}: interrupted{where}", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, or a case without a clear message yet: one line, not a traceback
        import os

        if os.environ.get("ADAPTERKIT_DEBUG"):
            raise
        print(f"adapterkit {args.command}: internal error: {type(exc).__name__}: {exc} (set ADAPTERKIT_DEBUG=1 "
              "to see the traceback, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
