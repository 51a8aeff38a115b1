"""Evaluate and predict with a saved adapter: the data options it remembers, and prediction files.

``adapterkit train`` records in the adapter's metadata (``extra.data``, :func:`adapterkit.runner.data_record`)
how its examples were read: task kind, text and label columns, label names, whether the files had a header,
and the maximum length. ``adapterkit eval`` and ``adapterkit predict`` use these whenever the command line does not
say otherwise, so an adapter is evaluated on a new file without repeating the options. Adapters saved
before the record existed keep working: their kind and label names are read from the saved head,
the rest comes from the flags.

Prediction files are JSON lines, one row per input row in file order: ``{"index", "prediction",
"score"}`` (classification: the label name and its softmax probability; regression: the predicted
value, which is also its score; QA: ``{"id", "prediction", "score", "start"}`` with the answer text,
the span's start + end logit and its character offset in the context).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from .console import say as _say
from .errors import ConfigError

#: Options an adapter remembers from training (``extra.data`` in ``adapter_config.json``).
REMEMBERED = ("kind", "text_columns", "label_column", "labels", "max_length", "no_header")
#: Used when neither the command line nor the adapter says.
FALLBACKS: dict[str, Any] = {"kind": "classification", "label_column": "label", "max_length": 128, "no_header": False}


def remembered_options(meta: dict[str, Any]) -> dict[str, Any]:
    """The data options an adapter's metadata gives: its ``extra.data`` record, else what its head tells
    (the task kind from the head class, label names from ``id2label``)."""
    saved = {k: v for k, v in ((meta.get("extra") or {}).get("data") or {}).items() if k in REMEMBERED}
    head = meta.get("head") or {}
    if "kind" not in saved and head:
        if "QuestionAnswering" in str(head.get("model_class") or ""):
            saved["kind"] = "qa"
        elif head.get("problem_type") == "regression":
            saved["kind"] = "regression"
        elif head.get("problem_type") == "single_label_classification":
            saved["kind"] = "classification"
    id2label = head.get("id2label") or {}
    if "labels" not in saved and saved.get("kind") == "classification" and len(id2label) >= 2:
        try:
            names = [str(id2label[str(i)]) for i in range(len(id2label))]
        except KeyError:
            names = []
        if names and not all(re.fullmatch(r"LABEL_\d+", n) for n in names):
            saved["labels"] = names
    return saved


def with_remembered(opts: dict[str, Any], meta: dict[str, Any], *, task_options: bool = True) -> dict[str, Any]:
    """``opts`` with each remembered option the user left unset (None) taken from the adapter, then the
    fallbacks. ``task_options=False`` (a registered task gives its own columns and labels) remembers
    only ``max_length``."""
    saved = remembered_options(meta)
    out = dict(opts)
    for key in REMEMBERED if task_options else ("max_length",):
        if out.get(key) is None and saved.get(key) is not None:
            out[key] = saved[key]
    for key, value in FALLBACKS.items():
        if out.get(key) is None:
            out[key] = value
    return out


def load_for_inference(opts: dict[str, Any], meta: dict[str, Any], spec: Any) -> tuple[Any, Any, str]:
    """(AdaptedModel with the adapter loaded and active, tokenizer, adapter name). The base model is ``--model``,
    else the adapter's ``base_model.name_or_path`` (a relative path is looked up beside the adapter too); a
    saved head for another number of labels is an error naming the file."""
    from .errors import AdapterLoadError
    from .io import load_adapter, resolve_base_model
    from .runner import load_model

    source = Path(opts["adapter"]) / "adapter_config.json"
    head = meta.get("head") or {}
    saved = head.get("num_labels")
    if spec.kind == "classification" and isinstance(saved, int) and saved >= 2 and saved != spec.num_labels:
        names = [(head.get("id2label") or {}).get(str(i)) for i in range(saved)]
        shown = f" {names}" if all(isinstance(n, str) for n in names) else ""
        raise AdapterLoadError(f"{source}: head.num_labels: the head was saved for {saved} labels{shown}; task "
                               f"{spec.name!r} has {spec.num_labels} {list(spec.labels or ())}")
    model_path, tried = (opts["model"], []) if opts.get("model") else resolve_base_model(meta, opts["adapter"])
    try:
        adapted, tokenizer = load_model(spec, model_path)
    except OSError as exc:
        if not tried:
            raise
        raise AdapterLoadError(f"{source}: base_model.name_or_path: {model_path!r} is not a local directory (tried "
                               f"{', '.join(tried)}) and cannot be loaded as a Hub id ({exc}); give the base model "
                               "with --model") from None
    name = load_adapter(adapted, opts["adapter"])
    return adapted, tokenizer, name


def _clamped(opts: dict[str, Any], adapted: Any, tokenizer: Any) -> dict[str, Any]:
    """``opts`` with ``max_length`` cut to the positions the model takes (with a warning)."""
    from . import options
    from .runner import clamp_max_length
    from .training import TrainConfig

    fields = {k: opts[k] for k in ("max_length", "doc_stride", "eval_batch_size", "precision") if opts.get(k)}
    return {**opts, "max_length": clamp_max_length(options.build(TrainConfig, fields), adapted.model,
                                                   tokenizer).max_length}


# --- predictions ----------------------------------------------------------------------------------


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def prediction_rows(spec: Any, logits: np.ndarray) -> list[dict[str, Any]]:
    """Classification/regression rows ``{"index", "prediction", "score"}`` from the model's logits."""
    if spec.kind == "regression":
        return [{"index": i, "prediction": float(v), "score": float(v)} for i, v in enumerate(logits[:, 0])]
    probs = _softmax(logits.astype(np.float64))
    ids = probs.argmax(axis=1)
    names = list(spec.labels or [])
    return [{"index": i, "prediction": names[k] if k < len(names) else int(k), "score": float(probs[i, k])}
            for i, k in enumerate(ids)]


def predict_examples(adapted: Any, tokenizer: Any, spec: Any, examples: list[dict[str, Any]], opts: dict[str, Any]
                     ) -> tuple[list[dict[str, Any]], np.ndarray | None]:
    """(prediction rows, classification/regression logits or None for QA) for ``examples``."""
    from .training import default_doc_stride, encode, predict_logits

    batch, max_length, precision = opts["eval_batch_size"], int(opts["max_length"]), opts.get("precision", "fp32")
    if spec.kind == "qa":
        from .data.preprocess import encode_qa_eval, postprocess_qa_scored

        stride = opts.get("doc_stride") or default_doc_stride(max_length)
        features = encode_qa_eval(tokenizer, examples, max_length=max_length, doc_stride=stride)
        start, end = predict_logits(adapted, tokenizer, features, batch, precision)
        scored = postprocess_qa_scored(examples, features, start, end)
        return [{"id": str(ex["id"]), "prediction": scored[str(ex["id"])]["text"],
                 "score": scored[str(ex["id"])]["score"], "start": scored[str(ex["id"])]["start"]}
                for ex in examples], None
    dataset = encode(tokenizer, spec, [{**ex, "label": None} for ex in examples], max_length)
    (logits,) = predict_logits(adapted, tokenizer, dataset, batch, precision)
    return prediction_rows(spec, logits), logits


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` as JSON lines, atomically."""
    from .io import atomic_write_bytes

    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_bytes(Path(path), text.encode("utf-8"))


# --- the commands ---------------------------------------------------------------------------------


def run_eval(opts: dict[str, Any]) -> dict[str, float] | None:
    """``adapterkit eval``: metrics of a saved adapter on a split; writes ``metrics.json`` and the
    predictions (``predictions.jsonl``; QA: ``predictions.json``, id -> answer) to ``--output-dir``.
    Returns the metrics (None for QA files without reference answers)."""
    from . import options
    from .data.tasks import load_split, resolve_data_dir
    from .interop.hub import resolve_adapter_dir
    from .io import atomic_write_json, read_adapter_config
    from .metrics import compute_metrics
    from .options import DataOptions
    from .runner import evaluate_split, resolve_task, split_source, user_files
    from .training import TrainConfig

    if not opts.get("adapter"):
        raise ConfigError("adapter: give the adapter directory (or Hub repo id) to evaluate")
    opts = {**opts, "adapter": str(resolve_adapter_dir(opts["adapter"]))}
    meta = read_adapter_config(opts["adapter"])
    data = options.build(DataOptions, opts)
    files = user_files(data)
    if not data.task and not files and not data.hub_dataset:
        saved_task = (meta.get("extra") or {}).get("task")
        if not saved_task:
            raise ConfigError("task: give --task or --test-file (the adapter does not record its task)")
        opts = {**opts, "task": saved_task}
    opts = with_remembered(opts, meta, task_options=not opts.get("task"))
    data = options.build(DataOptions, opts)
    spec = resolve_task(data, "eval")
    data_dir = resolve_data_dir(data.data_dir)
    if files:  # your own files: evaluate the file given, under the name it was given with
        split = opts.get("split") or next(s for s in ("test", "dev", "train") if s in files)
        if split not in files:
            given = ", ".join(f"--{s}-file" for s in files)
            raise ConfigError(f"split: --split {split} but no --{split}-file was given (you gave {given}); "
                              f"drop --split or use --split {' or '.join(files)}")
    else:
        split = opts.get("split") or ("test" if "test" in spec.splits else "dev")
    examples = load_split(spec, split, data_dir)
    adapted, tokenizer, name = load_for_inference(opts, meta, spec)
    opts = _clamped(opts, adapted, tokenizer)
    source = files.get(split) or split_source(spec, split, data_dir)
    _say(f"adapter {name!r} on {spec.name} [{split}], {len(examples)} examples from {source}")
    out = Path(opts.get("output_dir") or "runs/eval")
    if spec.kind == "qa":
        config = options.build(TrainConfig, opts, output_dir=str(out))
        metrics = evaluate_split(adapted, tokenizer, spec, examples, config, predictions=out / "predictions.json",
                                 source=source, gate_report=out)
    else:
        from .methods.gating import GateRecorder, write_gate_report

        with GateRecorder(adapted, required=False) as recorder:
            rows, logits = predict_examples(adapted, tokenizer, spec, examples, opts)
        if recorder.means():
            paths = write_gate_report(recorder.means(), str(out), title=f"mean gate value on {source}")
            _say(f"gate values per layer: {paths[0]}, {paths[1]}")
        metrics = compute_metrics(spec, logits, np.asarray([ex["label"] for ex in examples]))
        for row, ex in zip(rows, examples, strict=True):
            row["gold"] = spec.labels[ex["label"]] if spec.kind == "classification" and spec.labels else ex["label"]
        write_jsonl(out / "predictions.jsonl", rows)
        _say(f"wrote {out / 'predictions.jsonl'} ({len(rows)} predictions)")
    atomic_write_json(out / "metrics.json", {"adapter": str(opts["adapter"]), "task": spec.name, "split": split,
                                             "file": str(source), "examples": len(examples), "metrics": metrics})
    return metrics


def run_predict(opts: dict[str, Any]) -> list[dict[str, Any]]:
    """``adapterkit predict``: predictions of a saved adapter for every row of ``--input`` (labels not
    needed), written to ``--output`` as JSON lines. Returns the rows."""
    from .data.tasks import TaskSpec, get_task, load_inputs, task_from_file
    from .io import read_adapter_config

    for key in ("adapter", "input", "output"):
        if not opts.get(key):
            raise ConfigError(f"{key}: required (adapterkit predict ADAPTER --input FILE --output FILE)")
    from .interop.hub import resolve_adapter_dir

    opts = {**opts, "adapter": str(resolve_adapter_dir(opts["adapter"]))}
    meta = read_adapter_config(opts["adapter"])
    saved_task = (meta.get("extra") or {}).get("task")
    registered = None
    if not (meta.get("extra") or {}).get("data") and saved_task:
        try:
            registered = get_task(saved_task)
        except ConfigError:
            registered = None
    opts = with_remembered(opts, meta, task_options=registered is None)
    if registered is not None and not any(opts.get(k) for k in ("text_columns", "kind", "labels")):
        spec = TaskSpec(registered.name, registered.kind, registered.text_columns, registered.label_column,
                        registered.labels, registered.metric, {"input": str(opts["input"])}, header=registered.header,
                        fmt=registered.fmt if registered.fmt != "hub" else None, fieldnames=registered.fieldnames)
    else:
        if opts["kind"] == "classification" and not opts.get("labels"):
            raise ConfigError("labels: the adapter does not record its label names; pass --labels in id order")
        spec = task_from_file(Path(str(opts["input"])).stem, None, test=opts["input"],
                              text_columns=opts.get("text_columns"), label_column=opts.get("label_column"),
                              labels=opts.get("labels") if opts["kind"] == "classification" else None,
                              kind=opts["kind"], header=not opts.get("no_header"))
    examples = load_inputs(spec, opts["input"])
    adapted, tokenizer, name = load_for_inference(opts, meta, spec)
    opts = _clamped(opts, adapted, tokenizer)
    _say(f"adapter {name!r}: predicting {len(examples)} rows of {opts['input']}")
    rows, _ = predict_examples(adapted, tokenizer, spec, examples, opts)
    write_jsonl(Path(opts["output"]), rows)
    _say(f"wrote {opts['output']} ({len(rows)} predictions)")
    return rows
