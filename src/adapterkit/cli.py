"""The ``adapterkit`` command: ``train``, ``eval``, ``pretrain``, ``info``, ``demo``, ``zoo`` and ``experiment``.

Every flag of ``train``, ``eval`` and ``demo`` can also come from a YAML file (``--config run.yaml``)
whose keys are the flag names with underscores; flags given on the command line win, and an unknown
key in the file is an error naming the file and the key.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import AdapterKitError, ConfigError
from .pretraining import PRETRAIN_DEFAULTS
from .runner import (  # noqa: F401  (re-exported for callers of the CLI module)
    METHOD_CHOICES_EXTRA,
    RESULT_COLUMNS,
    RESULT_DIGITS,
    _doc_stride,
    _say,
    _split_source,
    adapter_overrides,
    qa_predict_and_score,
    resolve_task,
    run_training,
    split_data,
)

# --- argument parsing with YAML configs ----------------------------------------------------------


def _csv(value: str | Sequence[str]) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def _bool(value: str | bool) -> bool:
    result = _resume(value)
    if result == "auto":
        raise argparse.ArgumentTypeError(f"use true or false, got {value!r}")
    return bool(result)


def _resume(value: str | bool) -> bool | str:
    if isinstance(value, bool):
        return value
    low = str(value).lower()
    if low in ("true", "yes", "1"):
        return True
    if low in ("false", "no", "0"):
        return False
    if low == "auto":
        return "auto"
    raise argparse.ArgumentTypeError(f"use true, false or auto, got {value!r}")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with any of these flags as keys (underscores); flags override it")
    p.add_argument("--model", help="Hugging Face model id or local path (default: the bundled all-MiniLM-L6-v2)")
    p.add_argument("--data-dir", help="data directory of registered tasks (default: $ADAPTERKIT_DATA_DIR)")
    p.add_argument("--max-length", type=int, help="maximum tokens per example (default 128)")
    p.add_argument("--eval-batch-size", type=int, help="evaluation batch size (default 64)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"),
                   help="fp32 (default), or mixed precision with fp32 weights: bf16 (fast on CPUs with AVX512-BF16 "
                   "or AMX, and on Ampere+ GPUs) or fp16 (CUDA only)")


def _add_task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", help="a registered task name (see `adapterkit info --list`)")
    p.add_argument("--train-file", help="your own CSV/TSV/JSONL/Parquet (QA: SQuAD JSON) training file (instead of --task)")
    p.add_argument("--dev-file", help="your own dev file")
    p.add_argument("--test-file", help="your own test file")
    p.add_argument("--hub-dataset", help="a Hugging Face Hub data set, DATASET or DATASET:CONFIG (needs internet); "
                   "splits train/validation/test become train/dev/test")
    p.add_argument("--text-columns", type=_csv, help="comma-separated text column(s), 1 or 2 (default: text)")
    p.add_argument("--label-column", help="label column (default: label)")
    p.add_argument("--labels", type=_csv, help="comma-separated label names in id order (default: from the file)")
    p.add_argument("--kind", choices=("classification", "regression", "qa"), help="task kind for your own files")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (defaults are applied after merging with ``--config``)."""
    parser = argparse.ArgumentParser(prog="adapterkit", description="Adapters for Hugging Face transformer models.")
    sub = parser.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="train an adapter (or the full model, or the head) on a task",
                        argument_default=argparse.SUPPRESS)
    _add_model_args(tr)
    _add_task_args(tr)
    tr.add_argument("--method", help="a registered adapter method, or 'full' or 'head' (default: pfeiffer)")
    tr.add_argument("--adapter-config", help="JSON object or path to a JSON/YAML file overriding method fields")
    tr.add_argument("--adapter-name", help="name of the adapter (default: the method name)")
    tr.add_argument("--init-adapter", help="start from this saved adapter's weights (e.g. from `adapterkit pretrain "
                    "--method ...`); its method and fields are used")
    tr.add_argument("--k-shot", type=int, help="keep k training examples per class")
    tr.add_argument("--train-size", type=int, help="keep N training examples (stratified)")
    tr.add_argument("--dev-size", type=int, help="carve N dev examples from train; the official dev becomes the test set")
    tr.add_argument("--seed", type=int, help="seed for sampling, initialisation and training (default 42)")
    tr.add_argument("--epochs", type=float, help="training epochs (default 3)")
    tr.add_argument("--lr", "--learning-rate", dest="lr", type=float, help="learning rate (default 1e-4; full: 2e-5)")
    tr.add_argument("--batch-size", type=int, help="training batch size (default 16)")
    tr.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0)")
    tr.add_argument("--warmup-ratio", type=float, help="linear warm-up fraction (default 0.06)")
    tr.add_argument("--output-dir", help="where checkpoints, the adapter and results go (default runs/train)")
    tr.add_argument("--resume", type=_resume, help="true, false or auto: resume from the last checkpoint")
    tr.add_argument("--backbone-dropout", type=_bool,
                    help="true (default) or false: false runs the frozen backbone without dropout (adapters only)")
    tr.add_argument("--cache-frozen-layers", type=_bool,
                    help="true or false (default): with --backbone-dropout false, run the frozen layers below the "
                    "lowest adapter layer once per input and reuse their outputs")
    tr.add_argument("--logging-steps", type=int, help="log every N steps (default 10)")
    tr.add_argument("--progress", choices=("log", "bar", "none"), help="progress display (default log)")

    pt = sub.add_parser("pretrain", help="continue masked-LM pretraining (DAPT on a corpus, TAPT on a task's text)",
                        argument_default=argparse.SUPPRESS)
    _add_model_args(pt)
    pt.add_argument("--corpus", type=_csv, help="unlabelled text: a text file (one document per line) or JSON lines "
                    "(see --text-field); comma-separated for several files (DAPT)")
    pt.add_argument("--text-field", help="JSON lines: the field holding the text (default: text)")
    pt.add_argument("--task", help="a registered task whose training text is the corpus (TAPT; labels unused)")
    pt.add_argument("--split", help="--task: the split whose text is used (default: train)")
    pt.add_argument("--method", help="full (default: the whole backbone) or an adapter method (only the adapter trains)")
    pt.add_argument("--adapter-config", help="JSON object or path to a JSON/YAML file overriding method fields")
    pt.add_argument("--adapter-name", help="name of the adapter (default: the method name)")
    pt.add_argument("--mlm-probability", type=float, help="fraction of tokens masked (default 0.15; of those 80%% "
                    "become the mask token, 10%% a random token, 10%% stay)")
    pt.add_argument("--packing", type=_bool, help="true (default): concatenate texts and cut blocks of --max-length "
                    "tokens; false: one truncated example per text")
    pt.add_argument("--seed", type=int, help="seed (default 42)")
    pt.add_argument("--epochs", type=float, help="epochs over the corpus (default 1)")
    pt.add_argument("--lr", "--learning-rate", dest="lr", type=float, help="learning rate (default 1e-4)")
    pt.add_argument("--batch-size", type=int, help="batch size (default 16)")
    pt.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0)")
    pt.add_argument("--warmup-ratio", type=float, help="linear warm-up fraction (default 0.06)")
    pt.add_argument("--output-dir", help="checkpoints and the result (OUTPUT/model or OUTPUT/adapter); "
                    "default runs/pretrain")
    pt.add_argument("--resume", type=_resume, help="true, false or auto: resume from the last complete checkpoint")
    pt.add_argument("--save-steps", type=int, help="also checkpoint every N steps (default: each epoch)")
    pt.add_argument("--logging-steps", type=int, help="log every N steps (default 10)")
    pt.add_argument("--progress", choices=("log", "bar", "none"), help="progress display (default bar)")

    ev = sub.add_parser("eval", help="evaluate a saved adapter on a task split", argument_default=argparse.SUPPRESS)
    ev.add_argument("adapter", nargs="?", help="adapter directory (adapter_config.json + safetensors)")
    _add_model_args(ev)
    _add_task_args(ev)
    ev.add_argument("--split", help="split to evaluate (default: test if the task has one, else dev)")
    ev.add_argument("--output-dir", help="QA: where predictions.json goes (default runs/eval)")

    info = sub.add_parser("info", help="show an adapter directory, or list methods/tasks/architectures")
    info.add_argument("adapter", nargs="?", help="adapter directory")
    info.add_argument("--list", nargs="?", const="all", choices=("all", "methods", "tasks", "architectures"),
                      help="list what is registered")

    demo = sub.add_parser("demo", help="few-shot comparison: Pfeiffer adapter vs full fine-tuning (vs LoRA)",
                          argument_default=argparse.SUPPRESS)
    _add_model_args(demo)
    demo.add_argument("--output-dir", help="where the table and plot go (default runs/demo)")
    demo.add_argument("--k-shot", type=int, help="training examples per class (default 32)")
    demo.add_argument("--dev-size", type=int, help="dev examples carved from train (default: same as the train set)")
    demo.add_argument("--test-size", type=int, help="cap on test examples (default: all)")
    demo.add_argument("--methods", type=_csv, help="comma-separated systems (default pfeiffer,full,lora)")
    demo.add_argument("--epochs", type=float, help="epochs per system (default 20)")
    demo.add_argument("--seed", type=int, help="seed (default 42)")
    demo.add_argument("--progress", choices=("log", "bar", "none"), help="progress display (default log)")

    zoo = sub.add_parser("zoo", help="build or list an adapter zoo (source adapters with task, track and scores)",
                         argument_default=argparse.SUPPRESS)
    zoo.add_argument("action", choices=("build", "list"), help="build: train the missing adapters; list: show the index")
    _add_model_args(zoo)
    zoo.add_argument("--zoo-dir", help="zoo directory (default runs/zoo)")
    zoo.add_argument("--sources", type=_csv, help="comma-separated NAME=TASK[:TRACK][@SEED][#I/N] or TASK entries "
                     "(default: sst2, cola, stsb, stsb_b, mrpc, rte, qnli, xnli_en, chemprot, citation_intent)")
    zoo.add_argument("--method", help="adapter method of the zoo (default pfeiffer)")
    zoo.add_argument("--adapter-config", help="JSON object or path overriding method fields")
    zoo.add_argument("--max-train", type=int, help="cap on training examples per source (default 2000)")
    zoo.add_argument("--max-dev", type=int, help="cap on dev examples per source (default 500)")
    zoo.add_argument("--epochs", type=float, help="epochs per source (default 2)")
    zoo.add_argument("--lr", "--learning-rate", dest="lr", type=float, help="learning rate (default 1e-3)")
    zoo.add_argument("--batch-size", type=int, help="batch size (default 32)")
    zoo.add_argument("--force", type=_bool, help="retrain adapters already in the zoo (default false)")
    zoo.add_argument("--progress", choices=("log", "bar", "none"), help="progress display (default log)")

    exp = sub.add_parser("experiment", help="run a research comparison (see `adapterkit experiment -h`)")
    exp_sub = exp.add_subparsers(dest="experiment", required=True)
    from .experiments import EXPERIMENTS, get_experiment

    for name in EXPERIMENTS:
        module = get_experiment(name)
        ep = exp_sub.add_parser(name, help=module.DESCRIPTION, argument_default=argparse.SUPPRESS)
        _add_model_args(ep)
        module.add_arguments(ep)
    return parser


DEFAULTS: dict[str, dict[str, Any]] = {
    "train": {"model": None, "data_dir": None, "max_length": 128, "eval_batch_size": 64, "precision": "fp32", "task": None,
              "train_file": None, "dev_file": None, "test_file": None, "hub_dataset": None, "text_columns": None,
              "label_column": "label", "labels": None, "kind": "classification", "method": None, "adapter_config": None,
              "adapter_name": None, "init_adapter": None, "k_shot": None, "train_size": None, "dev_size": None, "seed": 42, "epochs": 3.0,
              "lr": None, "batch_size": 16, "weight_decay": 0.0, "warmup_ratio": 0.06, "output_dir": "runs/train",
              "resume": False, "backbone_dropout": True, "cache_frozen_layers": False, "logging_steps": 10,
              "progress": "log"},
    "eval": {"adapter": None, "model": None, "data_dir": None, "max_length": 128, "eval_batch_size": 64, "precision": "fp32", "task": None,
             "train_file": None, "dev_file": None, "test_file": None, "hub_dataset": None, "text_columns": None,
             "label_column": "label", "labels": None, "kind": "classification", "split": None, "output_dir": "runs/eval"},
    "demo": {"model": None, "data_dir": None, "max_length": 64, "eval_batch_size": 64, "precision": "fp32", "output_dir": "runs/demo",
             "k_shot": 32, "dev_size": None, "test_size": None, "methods": ["pfeiffer", "full", "lora"],
             "epochs": 20.0, "seed": 42, "progress": "log"},
    "zoo": {"action": "list", "model": None, "data_dir": None, "max_length": 128, "eval_batch_size": 64, "precision": "fp32",
            "zoo_dir": "runs/zoo", "sources": None, "method": "pfeiffer", "adapter_config": None, "max_train": 2000,
            "max_dev": 500, "epochs": 2.0, "lr": 1e-3, "batch_size": 32, "force": False, "progress": "log"},
}
DEFAULTS["pretrain"] = dict(PRETRAIN_DEFAULTS)
_FLOAT_KEYS = {"epochs", "lr", "weight_decay", "warmup_ratio", "mlm_probability"}
_INT_KEYS = {"max_length", "eval_batch_size", "k_shot", "train_size", "dev_size", "seed", "batch_size",
             "logging_steps", "test_size", "save_steps"}
_LIST_KEYS = {"text_columns", "labels", "methods", "corpus"}


def read_yaml_config(path: str | Path, command: str, known: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read ``--config``: a mapping of flag names (underscores, or dashes) to values; unknown keys fail."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values")
    known = DEFAULTS[command] if known is None else known
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name == "learning_rate":
            name = "lr"
        if name not in known:
            raise ConfigError(f"{path}: {key}: unknown key for `adapterkit {command}`; known keys: {sorted(known)}")
        try:
            if value is None:
                pass
            elif name in _LIST_KEYS:
                value = _csv(value)
            elif name in _FLOAT_KEYS | _INT_KEYS or isinstance(known.get(name), (int, float)) and not isinstance(
                    known.get(name), bool):
                if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                    raise ValueError(value)
                value = float(value) if name in _FLOAT_KEYS or isinstance(known.get(name), float) else int(value)
                # (YAML reads 1e-3 as a string)
            elif name == "resume":
                value = _resume(value)
            elif name in ("backbone_dropout", "packing") or isinstance(known.get(name), bool):
                value = _bool(value)
        except (ValueError, argparse.ArgumentTypeError):
            raise ConfigError(f"{path}: {key}: invalid value {value!r}") from None
        out[name] = value
    return out


def command_defaults(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(name for messages, default options) of the command in ``args``."""
    if args.command == "experiment":
        from .experiments import get_experiment

        defaults = {"model": None, "data_dir": None, "max_length": 128, "eval_batch_size": 64, "precision": "fp32"}
        return f"experiment {args.experiment}", {**defaults, **get_experiment(args.experiment).DEFAULTS}
    return args.command, DEFAULTS[args.command]


def merge_options(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, then the YAML file, then the flags given on the command line."""
    given = {k: v for k, v in vars(args).items() if k not in ("command", "config", "experiment")}
    command, defaults = command_defaults(args)
    merged = dict(defaults)
    config = getattr(args, "config", None)
    if config:
        merged.update(read_yaml_config(config, command, defaults))
    merged.update(given)
    return merged




def cmd_train(opts: dict[str, Any]) -> int:
    from .reporting import text_table

    row = run_training(opts)
    cols = {k: v for k, v in RESULT_COLUMNS.items() if row.get(k) is not None}
    _say("")
    _say(text_table([row], cols, RESULT_DIGITS))
    out = Path(opts["output_dir"])
    where = out / "adapter" if (out / "adapter").is_dir() else out / "model"
    _say(f"saved: {where}  (results: {out / 'results.json'})")
    return 0


# --- eval -----------------------------------------------------------------------------------------


def cmd_eval(opts: dict[str, Any]) -> int:
    from .data.tasks import load_split, resolve_data_dir
    from .io import load_adapter, read_adapter_config
    from .model import AdaptedModel, load_base_model
    from .training import evaluate

    if not opts.get("adapter"):
        raise ConfigError("adapter: give the adapter directory to evaluate")
    meta = read_adapter_config(opts["adapter"])
    if not opts.get("task") and not any(opts.get(k) for k in ("train_file", "dev_file", "test_file")):
        saved_task = (meta.get("extra") or {}).get("task")
        if not saved_task:
            raise ConfigError("task: give --task or --test-file (the adapter does not record its task)")
        opts = {**opts, "task": saved_task}
    spec = resolve_task(opts)
    split = opts.get("split") or ("test" if "test" in spec.splits else "dev")
    examples = load_split(spec, split, resolve_data_dir(opts.get("data_dir")))
    model_path = opts.get("model") or (meta["base_model"].get("name_or_path") or None)
    hf_model, tokenizer = load_base_model(model_path, spec.kind, spec.num_labels if spec.kind == "classification" else 1,
                                          spec.id2label or None)
    adapted = AdaptedModel(hf_model)
    name = load_adapter(adapted, opts["adapter"])
    from .reporting import text_table

    _say(f"adapter {name!r} on {spec.name} [{split}], {len(examples)} examples")
    if spec.kind == "qa":
        source = _split_source(spec, split, resolve_data_dir(opts.get("data_dir")))
        metrics = qa_predict_and_score(adapted, tokenizer, spec, examples, opts,
                                       Path(opts.get("output_dir") or "runs/eval") / "predictions.json", source)
        if metrics is None:
            return 0
    else:
        metrics = evaluate(adapted, tokenizer, spec, examples, opts["eval_batch_size"], opts["max_length"],
                           precision=opts["precision"])
    _say(text_table([{"metric": k, "value": v} for k, v in metrics.items()], ["metric", "value"]))
    return 0


# --- info -----------------------------------------------------------------------------------------


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def cmd_info(args: argparse.Namespace) -> int:
    from .reporting import text_table

    if args.list or not args.adapter:
        what = args.list or "all"
        if what in ("all", "methods"):
            from .registry import METHODS, _load_builtin_methods

            _load_builtin_methods()
            rows = [{"method": n, "description": _first_line(c.__doc__)} for n, c in sorted(METHODS.items())]
            rows += [{"method": "full", "description": "full fine-tuning (every parameter trains)"},
                     {"method": "head", "description": "train the task head only (linear probe)"}]
            _say("Methods:\n" + text_table(rows, ["method", "description"]))
        if what in ("all", "tasks"):
            from .data.tasks import TASKS

            rows = [{"task": n, "kind": s.kind, "metric": s.metric, "splits": ",".join(s.splits),
                     "description": s.description} for n, s in sorted(TASKS.items())]
            _say("Tasks:\n" + text_table(rows, ["task", "kind", "metric", "splits", "description"]))
        if what in ("all", "architectures"):
            from .architectures import ARCHITECTURES

            _say("Architectures (model_type): " + ", ".join(sorted(ARCHITECTURES)) + "\n")
        return 0
    from .io import HEAD_NAME, WEIGHTS_NAME, read_adapter_config

    directory = Path(args.adapter)
    meta = read_adapter_config(directory)
    _say(f"{directory}: adapter {meta['name']!r} ({meta['config'].get('method')})")
    _say(json.dumps({k: meta[k] for k in ("config", "base_model", "head", "extra") if k in meta}, indent=2))
    rows = []
    for fname in (WEIGHTS_NAME, HEAD_NAME):
        path = directory / fname
        if path.is_file():
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                n = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())
                rows.append({"file": fname, "tensors": len(list(f.keys())), "parameters": n,
                             "bytes": path.stat().st_size})
    _say(text_table(rows, ["file", "tensors", "parameters", "bytes"]))
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
    if data_dir is not None:
        spec = get_task("sst2")
        dev_size = opts.get("dev_size") or k * len(spec.labels)
        train_ex, dev_ex, test_ex, notes = split_data(spec, data_dir, k_shot=k, train_size=None, dev_size=dev_size,
                                                      seed=seed)
        source = f"SST-2 from {data_dir}"
    else:
        spec = get_task("sample_sentiment")
        _say("NOTE: no --data-dir and no $ADAPTERKIT_DATA_DIR: using the small packaged sample task "
             "'sample_sentiment' (120 sentences), not SST-2. Pass --data-dir ../shared/data for the real task.")
        k = min(k, 24)
        train_ex, dev_ex, test_ex, notes = split_data(spec, None, k_shot=k, train_size=None,
                                                      dev_size=opts.get("dev_size") or 16, seed=seed)
        source = "packaged sample task sample_sentiment"
    if opts.get("test_size") and test_ex and len(test_ex) > opts["test_size"]:
        from .data.sampling import subsample

        test_ex = subsample(test_ex, opts["test_size"], seed)
        notes.append(f"test: capped at {len(test_ex)} examples")
    _say(f"demo: {source}; model {opts.get('model') or 'bundled all-MiniLM-L6-v2'}; systems {', '.join(systems)}")
    for note in notes:
        _say(f"data: {note}")
    rows = []
    for i, name in enumerate(systems):
        method, lr, fields = DEMO_SYSTEMS[name]
        _say(f"=== [{i + 1}/{len(systems)}] {name}  (elapsed {time.perf_counter() - start:.0f}s)")
        sys_opts = {**DEFAULTS["train"], **{k2: v for k2, v in opts.items() if k2 in DEFAULTS["train"]},
                    "method": method, "lr": lr, "adapter_config": fields or None, "batch_size": 16,
                    "output_dir": str(out / name), "logging_steps": 4, "resume": False}
        rows.append(run_training(sys_opts, spec=spec, data=(train_ex, dev_ex, test_ex), label=name, cleanup=True))
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
    _say("")
    _say(f"Results on {source} (test = {len(test_ex or [])} examples, metric {spec.metric}):")
    _say(text_table(rows, RESULT_COLUMNS, RESULT_DIGITS))
    _say(f"wrote {out / 'results.md'}, {plot}, {out / 'results.json'}; total {total:.0f}s")
    return 0


# --- zoo ------------------------------------------------------------------------------------------


def cmd_zoo(opts: dict[str, Any]) -> int:
    """``zoo build`` trains the missing source adapters; ``zoo list`` prints the index."""
    from .reporting import text_table
    from .zoo import DEFAULT_SOURCES, build_zoo, parse_source, read_zoo, zoo_table

    if opts["action"] == "build":
        sources = [parse_source(s) for s in opts["sources"]] if opts.get("sources") else list(DEFAULT_SOURCES)
        entries = build_zoo(opts["zoo_dir"], sources, data_dir=opts.get("data_dir"), model=opts.get("model"),
                            method=opts["method"], adapter_config=adapter_overrides(opts.get("adapter_config")) or None,
                            max_train=opts["max_train"], max_dev=opts["max_dev"], epochs=float(opts["epochs"]),
                            lr=float(opts["lr"]), batch_size=opts["batch_size"], max_length=opts["max_length"],
                            force=bool(opts["force"]), progress=opts["progress"])
    else:
        entries = read_zoo(opts["zoo_dir"])
        if not entries:
            raise ConfigError(f"{opts['zoo_dir']}: no zoo.json here; build one with `adapterkit zoo build`")
    _say(text_table(zoo_table(entries), {"name": "Name", "task": "Task", "track": "Track", "method": "Method",
                                         "model": "Model", "train": "Train", "dev": "Dev", "metric": "Metric",
                                         "dev_score": "Dev score", "seconds": "Seconds"},
                    {"dev_score": 4, "seconds": 1}))
    return 0


# --- entry point ----------------------------------------------------------------------------------


def _quiet_transformers() -> None:
    """Keep the terminal to our progress lines: transformers' load reports and notices go below error level."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``adapterkit`` command; returns the exit status (errors print one line and return 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_transformers()
    try:
        if args.command == "info":
            return cmd_info(args)
        opts = merge_options(args)
        if args.command == "train":
            return cmd_train(opts)
        if args.command == "eval":
            return cmd_eval(opts)
        if args.command == "pretrain":
            from .pretraining import run_pretraining

            run_pretraining(opts, say=_say)
            return 0
        if args.command == "zoo":
            return cmd_zoo(opts)
        if args.command == "experiment":
            from .experiments import get_experiment

            return get_experiment(args.experiment).run(opts)
        return cmd_demo(opts)
    except (AdapterKitError, OSError) as exc:  # OSError: a model or file that cannot be found or read
        print(f"adapterkit {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
