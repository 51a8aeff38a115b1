"""Run one training system end to end: task data split, model, adapter, training, test score, saved outputs.

Shared by the ``adapterkit`` commands (``train``, ``demo``) and the experiments.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .errors import ConfigError

METHOD_CHOICES_EXTRA = ("full", "head")
RESULT_DIGITS = {"test_score": 4, "dev_score": 4, "best_epoch": 0, "trainable_pct": 2, "train_seconds": 1}
RESULT_COLUMNS = {"system": "System", "test_score": "Test score", "dev_score": "Dev score (best)",
                  "best_epoch": "Best epoch", "trainable": "Trainable params", "trainable_pct": "% of model",
                  "train_seconds": "Train time (s)"}



# --- shared helpers -------------------------------------------------------------------------------


def resolve_task(opts: dict[str, Any]) -> Any:
    """The TaskSpec named by ``--task`` or described by ``--train-file`` and friends."""
    from .data.tasks import get_task, task_from_file

    sources = [flag for flag, key in (("--task", "task"), ("--train-file", "train_file"), ("--hub-dataset", "hub_dataset"))
               if opts.get(key)]
    if len(sources) > 1:
        raise ConfigError(f"task: give one of --task, --train-file or --hub-dataset, not {' and '.join(sources)}")
    if opts.get("task"):
        return get_task(opts["task"])
    if opts.get("hub_dataset"):
        from .data.tasks import task_from_hub

        dataset, _, config = str(opts["hub_dataset"]).partition(":")
        kind = opts.get("kind") or "classification"
        if kind == "classification" and not opts.get("labels"):
            raise ConfigError("labels: --hub-dataset needs --labels (the label values in id order) for classification")
        return task_from_hub(dataset, config or None, opts.get("text_columns"), opts.get("label_column") or "label",
                             kind=kind, labels=opts.get("labels"))
    if not opts.get("train_file") and not opts.get("test_file") and not opts.get("dev_file"):
        raise ConfigError("task: give --task NAME, --train-file FILE or --hub-dataset NAME")
    first = opts.get("train_file") or opts.get("dev_file") or opts.get("test_file")
    return task_from_file(
        Path(first).stem, train=first, dev=opts.get("dev_file") if opts.get("train_file") else None,
        test=opts.get("test_file"), text_columns=opts.get("text_columns"),
        label_column=opts.get("label_column") or "label", labels=opts.get("labels"),
        kind=opts.get("kind") or "classification",
    )


def adapter_overrides(value: Any) -> dict[str, Any]:
    """``--adapter-config``: a mapping, a JSON object string, or a path to a JSON/YAML file."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    text = str(value).strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"adapter_config: not a valid JSON object ({exc})") from None
    else:
        import yaml

        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"{path}: adapter_config: file not found")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))  # YAML also reads JSON
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid JSON/YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"adapter_config: expected an object of method fields, got {type(data).__name__}")
    return data


def split_data(spec: Any, data_dir: Any, *, k_shot: int | None, train_size: int | None, dev_size: int | None,
               seed: int, need_train: bool = True) -> tuple[list, list | None, list | None, list[str]]:
    """(train, dev, test, notes): dev carved from train when ``dev_size`` (official dev -> test), then sampling."""
    from .data.sampling import carve_dev, subsample
    from .data.sampling import k_shot as sample_k
    from .data.tasks import load_task

    splits = spec.splits
    if need_train and "train" not in splits:
        raise ConfigError(f"task {spec.name!r}: has no train split (splits: {list(splits)})")
    data = load_task(spec, data_dir, [s for s in ("train", "dev", "test") if s in splits])
    train, dev, test = data.get("train", []), data.get("dev"), data.get("test")
    notes: list[str] = []
    if dev_size:
        train, dev = carve_dev(train, dev_size, seed)
        test = data.get("dev") or test
        notes.append(f"dev: {len(dev)} examples carved from train; test: the official dev set ({len(test or [])})")
    if k_shot:
        train = sample_k(train, k_shot, seed)
        notes.append(f"train: {k_shot} examples per class ({len(train)})")
    if train_size:
        train = subsample(train, train_size, seed)
        notes.append(f"train: {len(train)} examples")
    return train, dev, test, notes


def _say(line: str) -> None:
    print(line, flush=True)


def _doc_stride(max_length: int) -> int:
    """QA: token overlap between windows of a long context (a quarter of max_length, at most 128)."""
    return max(1, min(128, max_length // 4))


def _split_source(spec: Any, split: str, data_dir: Any) -> str:
    """The file a split is read from, for messages."""
    from .data.tasks import task_file
    from .errors import DataError

    if spec.fmt != "hub":
        try:
            return str(task_file(spec, split, data_dir))
        except (DataError, KeyError):
            pass
    rel = Path(spec.files.get(split) or spec.files.get("train", "?"))
    return str(rel if rel.is_absolute() or data_dir is None else Path(data_dir) / rel)


def qa_predict_and_score(adapted: Any, tokenizer: Any, spec: Any, examples: list, opts: dict[str, Any],
                         path: Path, source: str) -> dict[str, float] | None:
    """QA: write ``path`` (id -> answer text); SQuAD metrics, or None when ``source`` has no reference answers."""
    from .io import atomic_write_json
    from .metrics import compute_metrics
    from .training import has_qa_references, predict_qa, qa_references

    answers = predict_qa(adapted, tokenizer, examples, opts["eval_batch_size"], opts["max_length"],
                         _doc_stride(opts["max_length"]), opts.get("precision", "fp32"))
    atomic_write_json(path, answers)
    _say(f"wrote {path} ({len(answers)} predictions)")
    if not has_qa_references(examples):
        _say(f"no reference answers in {source}: wrote predictions only")
        return None
    return compute_metrics(spec, answers, qa_references(examples))


# --- train ----------------------------------------------------------------------------------------


def run_training(opts: dict[str, Any], *, spec: Any = None, data: tuple | None = None, label: str | None = None,
                 cleanup: bool = False) -> dict[str, Any]:
    """Train one system from merged options; returns a result row (scores, parameters, time, history)."""
    from transformers import set_seed

    from .data.tasks import resolve_data_dir
    from .io import save_adapter
    from .model import AdaptedModel, load_base_model
    from .registry import get_method
    from .training import TrainConfig, evaluate, train

    spec = spec or resolve_task(opts)
    data_dir = resolve_data_dir(opts.get("data_dir"))
    if spec.kind == "qa" and opts.get("k_shot"):
        raise ConfigError("k_shot: QA examples have no classes; use --train-size N")
    if data is None:
        train_ex, dev_ex, test_ex, notes = split_data(
            spec, data_dir, k_shot=opts.get("k_shot"), train_size=opts.get("train_size"),
            dev_size=opts.get("dev_size"), seed=opts["seed"])
        for note in notes:
            _say(f"data: {note}")
    else:
        train_ex, dev_ex, test_ex = data
    init = opts.get("init_adapter")
    if init:
        from .io import read_adapter_config

        saved_method = read_adapter_config(init)["config"].get("method")
        if opts.get("method") and opts["method"] != saved_method:
            raise ConfigError(f"method: --init-adapter {init} holds a {saved_method!r} adapter, not {opts['method']!r}")
        if opts.get("adapter_config"):
            raise ConfigError("adapter_config: --init-adapter takes the method fields from the saved adapter")
    method = opts.get("method") or (saved_method if init else "pfeiffer")
    label = label or method
    if spec.kind == "qa" and dev_ex:
        from .training import has_qa_references

        if not has_qa_references(dev_ex):
            _say("data: no reference answers in the dev examples: training without dev-based epoch selection")
            dev_ex = None
    config = None
    if init:
        pass  # config from the saved adapter
    elif method in METHOD_CHOICES_EXTRA:
        if opts.get("adapter_config"):
            raise ConfigError(f"adapter_config: method {method!r} has no adapter fields")
    else:
        config = get_method(method).from_dict(adapter_overrides(opts.get("adapter_config")), "adapter_config")
    set_seed(opts["seed"])
    hf_model, tokenizer = load_base_model(opts.get("model"), spec.kind, spec.num_labels if spec.kind ==
                                          "classification" else 1, spec.id2label or None)
    adapted = AdaptedModel(hf_model)
    adapter_name = None
    mode = "adapters" if init or config is not None else method
    if init:
        from .io import load_adapter

        adapter_name = load_adapter(adapted, init, opts.get("adapter_name"), load_head=False)
        _say(f"[{label}] initialised adapter {adapter_name!r} from {init}")
    elif config is not None:
        adapter_name = opts.get("adapter_name") or method
        adapted.add_adapter(adapter_name, config)
    lr = opts.get("lr") or (2e-5 if method == "full" else 1e-3 if method == "head" else 1e-4)
    out = Path(opts["output_dir"])
    tcfg = TrainConfig(
        output_dir=str(out), epochs=float(opts["epochs"]), batch_size=opts["batch_size"],
        eval_batch_size=opts["eval_batch_size"], learning_rate=lr, weight_decay=opts.get("weight_decay", 0.0),
        warmup_ratio=opts.get("warmup_ratio", 0.06), max_length=opts["max_length"], seed=opts["seed"],
        train_mode=mode, resume=opts.get("resume", False), logging_steps=opts.get("logging_steps", 10),
        progress=opts.get("progress", "log"), save_total_limit=1 if cleanup else 2, cleanup_checkpoints=cleanup,
        save_optimizer=not cleanup, doc_stride=_doc_stride(opts["max_length"]),
        backbone_dropout=opts.get("backbone_dropout", True),
        cache_frozen_layers=opts.get("cache_frozen_layers", False),
        precision=opts.get("precision", "fp32"),
    )
    _say(f"[{label}] {len(train_ex)} train / {len(dev_ex or [])} dev / {len(test_ex or [])} test examples; "
         f"trainable parameters {adapted.count_parameters()['trainable'] if mode != 'full' else 'all'}")
    result = train(adapted, tokenizer, spec, train_ex, dev_ex, tcfg, name=label)
    test_metrics = None
    predictions = None
    if test_ex and spec.kind == "qa":
        predictions = out / "predictions.json"
        test_split = "dev" if opts.get("dev_size") and "dev" in spec.splits else "test"
        test_metrics = qa_predict_and_score(adapted, tokenizer, spec, test_ex, opts, predictions,
                                            _split_source(spec, test_split, data_dir))
        if test_metrics:
            _say(f"[{label}] test score {test_metrics['score']:.4f} ({spec.metric}, {len(test_ex)} examples)")
    elif test_ex:
        start = time.perf_counter()
        test_metrics = evaluate(adapted, tokenizer, spec, test_ex, opts["eval_batch_size"], opts["max_length"],
                                precision=opts.get("precision", "fp32"))
        _say(f"[{label}] test score {test_metrics['score']:.4f} ({spec.metric}, {len(test_ex)} examples, "
             f"{time.perf_counter() - start:.0f}s)")
    counts = adapted.count_parameters()
    summary = {"task": spec.name, "method": method, "dev": result.metrics, "test": test_metrics,
               "best_epoch": result.best_epoch, "train_seconds": result.train_seconds,
               "trainable_parameters": result.trainable_parameters, "total_parameters": counts["total"]}
    if predictions is not None:
        summary["predictions"] = str(predictions)
    if adapter_name:
        save_adapter(adapted, adapter_name, out / "adapter", include_head=True,
                     extra={"task": spec.name, "metric": spec.metric, "dev": result.metrics, "test": test_metrics})
    elif not cleanup:
        hf_model.save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "model")
    from .io import atomic_write_json

    atomic_write_json(out / "results.json", {**summary, "history": result.history})
    return {
        "system": label, "test_score": test_metrics["score"] if test_metrics else None,
        "dev_score": result.metrics.get("score"), "best_epoch": result.best_epoch,
        "trainable": result.trainable_parameters, "trainable_pct": 100.0 * result.trainable_parameters / counts["total"],
        "train_seconds": round(result.train_seconds, 1), "history": result.history,
    }

