"""Run one training system end to end: task data, model, adapter, training, test score, saved outputs.

:func:`run_system` trains an already built model and scores its test set; the ``adapterkit train``
and ``demo`` commands (through :func:`run_training`), the zoo and every experiment use it.
:func:`evaluate_split` is the one test-set evaluation, QA predictions included.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .console import say
from .errors import ConfigError
from .options import DataOptions, ModelOptions

RESULT_DIGITS = {"test_score": 4, "dev_score": 4, "best_epoch": 0, "trainable_pct": 2, "train_seconds": 1}
RESULT_COLUMNS = {"system": "System", "test_score": "Test score", "dev_score": "Dev score (best)",
                  "best_epoch": "Best epoch", "trainable": "Trainable params", "trainable_pct": "% of model",
                  "train_seconds": "Train time (s)"}
BASELINES = ("probe", "majority")
"""Systems that train nothing by gradient: a linear probe on frozen features, and the majority class."""
NO_CHECKPOINTS = {"save_total_limit": 1, "save_optimizer": False, "cleanup_checkpoints": True, "resume": False}
"""TrainConfig options of runs whose checkpoints are not kept (demo, zoo, experiments)."""


# --- data -----------------------------------------------------------------------------------------


USER_FILES = (("train", "train_file", "--train-file"), ("dev", "dev_file", "--dev-file"),
              ("test", "test_file", "--test-file"))


def user_files(data: DataOptions) -> dict[str, str]:
    """split -> file of the user's own files given as ``--train-file/--dev-file/--test-file``."""
    return {split: str(getattr(data, key)) for split, key, _ in USER_FILES if getattr(data, key)}


def resolve_task(data: DataOptions, purpose: str = "train") -> Any:
    """The TaskSpec named by ``data.task`` or described by ``data.train_file`` / ``data.hub_dataset`` and friends.

    Every file the user names is used as the split it is named for. ``purpose="train"`` needs a train file
    (a test or dev file alone would be trained on) and refuses ``--dev-file`` with ``--dev-size``;
    ``purpose="eval"`` takes any of the three files.
    """
    from .data.tasks import get_task, task_from_file

    files = user_files(data)
    sources = []
    if data.task:
        sources.append("--task")
    if files:
        sources.append(" and ".join(flag for split, _, flag in USER_FILES if split in files))
    if data.hub_dataset:
        sources.append("--hub-dataset")
    if len(sources) > 1:
        raise ConfigError(f"task: give one of --task, your own files (--train-file/--dev-file/--test-file) or "
                          f"--hub-dataset, not {' and '.join(sources)}")
    if data.task:
        return get_task(data.task)
    if data.hub_dataset:
        from .data.tasks import task_from_hub

        dataset, _, config = str(data.hub_dataset).partition(":")
        if data.kind == "classification" and not data.labels:
            raise ConfigError("labels: --hub-dataset needs --labels (the label values in id order) for classification")
        return task_from_hub(dataset, config or None, data.text_columns, data.label_column, kind=data.kind,
                             labels=data.labels)
    if not files:
        raise ConfigError("task: give --task NAME, --train-file FILE or --hub-dataset NAME")
    if purpose == "train":
        if "train" not in files:
            given = " and ".join(flag for split, _, flag in USER_FILES if split in files)
            raise ConfigError(f"train_file: {given} without --train-file: training needs its own file (the "
                              f"{' and '.join(files)} file would be trained on); add --train-file FILE")
        if "dev" in files and data.dev_size:
            raise ConfigError("dev_size: --dev-file already gives the dev set; drop --dev-size (or drop --dev-file "
                              "to carve --dev-size examples out of --train-file)")
    first = next(iter(files.values()))
    return task_from_file(Path(first).stem, train=files.get("train"), dev=files.get("dev"), test=files.get("test"),
                          text_columns=data.text_columns, label_column=data.label_column or "label",
                          labels=data.labels, kind=data.kind or "classification", header=not data.no_header)


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
               seed: int, need_train: bool = True, own_files: bool = False,
               short_classes: str = "error") -> tuple[list, list | None, list | None, list[str]]:
    """(train, dev, test, notes): dev carved from train when ``dev_size``, then sampling.

    For a registered task, carving a dev set makes the official dev set the test set. With
    ``own_files`` (the user's --train-file/--dev-file/--test-file) every file stays the split it was
    given as, and the notes name the files. ``short_classes``: see :func:`.data.sampling.k_shot`.
    """
    from .data.sampling import carve_dev, subsample
    from .data.sampling import k_shot as sample_k
    from .data.tasks import load_task

    splits = spec.splits
    if need_train and "train" not in splits:
        raise ConfigError(f"task {spec.name!r}: has no train split (splits: {list(splits)})")
    check_sizes(k_shot=k_shot, train_size=train_size, dev_size=dev_size)
    data = load_task(spec, data_dir, [s for s in ("train", "dev", "test") if s in splits])
    train, dev, test = data.get("train", []), data.get("dev"), data.get("test")
    notes: list[str] = []
    if dev_size and own_files:
        if data.get("dev"):
            raise ConfigError("dev_size: --dev-file already gives the dev set; drop --dev-size (or drop --dev-file "
                              "to carve --dev-size examples out of --train-file)")
        train, dev = carve_dev(train, dev_size, seed)
        notes.append(f"dev: {len(dev)} examples carved from the train file {spec.files['train']}")
    elif dev_size:
        train, dev = carve_dev(train, dev_size, seed)
        dropped = " instead of the task's test split" if data.get("dev") and test else ""
        test = data.get("dev") or test
        notes.append(f"dev: {len(dev)} examples carved from train; test: the official dev set ({len(test or [])})"
                     + dropped)
    if k_shot:
        train = sample_k(train, k_shot, seed, short=short_classes, names=spec.labels)
        notes.append(f"train: {k_shot} examples per class ({len(train)})")
    if train_size:
        train = subsample(train, train_size, seed)
        notes.append(f"train: {len(train)} examples")
    if own_files:
        for split, examples in (("train", train), ("dev", dev), ("test", test)):
            if split in spec.files and examples is not None:
                notes.append(f"{split}: {spec.files[split]} ({len(examples)} examples)")
        if test is None:
            notes.append("test: none (no --test-file)")
    return train, dev, test, notes


def check_sizes(*, k_shot: int | None, train_size: int | None, dev_size: int | None) -> None:
    """``--k-shot``, ``--train-size`` and ``--dev-size``: positive when given; k-shot and train-size exclude each other."""
    for name, value in (("k_shot", k_shot), ("train_size", train_size), ("dev_size", dev_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name}: must be a whole number >= 1, got {value!r} (leave it out for no limit)")
    if k_shot is not None and train_size is not None:
        raise ConfigError(f"k_shot: give --k-shot ({k_shot} per class) or --train-size ({train_size} in all), not both")


def split_source(spec: Any, split: str, data_dir: Any) -> str:
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


# --- model ----------------------------------------------------------------------------------------


def model_max_positions(model: Any, tokenizer: Any) -> int | None:
    """The longest input the model can embed (absolute position embeddings, tokenizer limit), or None."""
    cfg = model.config
    limits = []
    positions = getattr(cfg, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        if cfg.model_type in ("roberta", "xlm-roberta", "camembert"):  # positions start after the padding index
            positions -= (getattr(cfg, "pad_token_id", None) or 0) + 1
        limits.append(positions)
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < 1_000_000:
        limits.append(tok_limit)
    return min(limits) if limits else None


def clamp_max_length(config: Any, model: Any, tokenizer: Any) -> Any:
    """``config`` or, when the model takes fewer positions than ``config.max_length``, a copy with that many
    (and a warning on stderr)."""
    import sys

    limit = model_max_positions(model, tokenizer)
    if limit is None or config.max_length <= limit:
        return config
    print(f"warning: max_length: {config.max_length} is more than the model takes ({limit} positions, "
          f"{getattr(model.config, '_name_or_path', '') or model.config.model_type}); using {limit}",
          file=sys.stderr, flush=True)
    changes: dict[str, Any] = {"max_length": limit}
    if getattr(config, "doc_stride", None) is not None and config.doc_stride >= limit:
        changes["doc_stride"] = max(1, min(128, limit // 4))
    return config.replace(**changes)


def load_model(spec: Any, model: str | None, head: Any = None) -> tuple[Any, Any]:
    """(AdaptedModel, tokenizer) of base model ``model`` (None: the bundled MiniLM) with ``spec``'s head, pooled as
    ``head`` (a :class:`~adapterkit.heads.HeadConfig`; None: ``auto``, the model's own pooling)."""
    from .model import AdaptedModel, load_base_model

    hf_model, tokenizer = load_base_model(model, spec.kind, spec.num_labels if spec.kind == "classification" else 1,
                                          spec.id2label or None, pooling=head.pooling if head else "auto",
                                          normalize=bool(head.normalize) if head else False)
    return AdaptedModel(hf_model), tokenizer


def data_record(spec: Any, max_length: int) -> dict[str, Any]:
    """What an adapter remembers about its data (saved by ``train`` as ``extra.data``; read back by
    :func:`adapterkit.predict.remembered_options`)."""
    return {"kind": spec.kind, "text_columns": list(spec.text_columns), "label_column": spec.label_column,
            "labels": list(spec.labels) if spec.labels else None, "max_length": int(max_length),
            "no_header": not getattr(spec, "header", True), "metric": spec.metric}


def default_learning_rate(method: str) -> float:
    """The learning rate ``train`` uses for ``method`` when none is given: the method config's
    ``default_learning_rate``, or for ``full`` and ``head`` the train mode's (``training.DEFAULT_LEARNING_RATES``)."""
    from .training import DEFAULT_LEARNING_RATES

    if method in ("full", "head"):
        return DEFAULT_LEARNING_RATES[method]
    if method in BASELINES:  # they train nothing by gradient; the value only fills TrainConfig
        return DEFAULT_LEARNING_RATES["head"]
    from .registry import get_method

    return float(get_method(method).default_learning_rate)


def default_head_learning_rate(method: str) -> float | None:
    """The head's rate ``train`` uses for ``method`` when neither rate is given (None: the base rate)."""
    if method in ("full", "head") or method in BASELINES:
        return None
    from .registry import get_method

    return get_method(method).default_head_learning_rate


def default_learning_rates_text() -> str:
    """``0.01 for prompt, 0.001 for adaptable, ..., 5e-05 for full``: each method's default learning rate."""
    from . import methods  # noqa: F401  (importing registers the built-in methods)
    from .registry import METHODS

    by_lr: dict[float, list[str]] = {}
    for name in [*sorted(METHODS), "full", "head"]:
        by_lr.setdefault(default_learning_rate(name), []).append(name)
    return ", ".join(f"{lr:g} for {', '.join(names)}" for lr, names in sorted(by_lr.items(), reverse=True))


def system_method(model: ModelOptions) -> str:
    """The method ``model`` trains: ``model.method``, else the method of ``model.init_adapter``, else pfeiffer."""
    if not model.init_adapter:
        return model.method or "pfeiffer"
    from .io import read_adapter_config

    saved = read_adapter_config(model.init_adapter)["config"].get("method")
    if model.method and model.method != saved:
        raise ConfigError(f"method: --init-adapter {model.init_adapter} holds a {saved!r} adapter, not {model.method!r}")
    if model.adapter_config:
        raise ConfigError("adapter_config: --init-adapter takes the method fields from the saved adapter")
    return saved


def build_system(spec: Any, model: ModelOptions, head: Any = None) -> tuple[Any, Any, str | None]:
    """(AdaptedModel, tokenizer, adapter name or None) for ``model``: a new adapter of its method, the saved
    adapter ``model.init_adapter``, or none ("full", "head" and the baselines "probe", "majority"); the task
    head pooled as ``head`` (a HeadConfig, None: auto)."""
    from .registry import get_method

    method = system_method(model)
    config = None
    if model.init_adapter:
        pass  # method and fields from the saved adapter
    elif method in ("full", "head", *BASELINES):
        if model.adapter_config:
            raise ConfigError(f"adapter_config: method {method!r} has no adapter fields")
    else:
        config = get_method(method).from_dict(adapter_overrides(model.adapter_config), "adapter_config")
    adapted, tokenizer = load_model(spec, model.model, head)
    name = None
    if model.init_adapter:
        from .io import load_adapter

        name = load_adapter(adapted, model.init_adapter, model.adapter_name, load_head=False)
        say(f"initialised adapter {name!r} from {model.init_adapter}")
    elif config is not None:
        name = model.adapter_name or method
        adapted.add_adapter(name, config)
    return adapted, tokenizer, name


# --- evaluation and training ----------------------------------------------------------------------


def evaluate_split(adapted: Any, tokenizer: Any, spec: Any, examples: list, config: Any, *,
                   predictions: Path | None = None, source: str = "the examples",
                   gate_report: Path | None = None) -> dict[str, float] | None:
    """Metrics of ``adapted`` on ``examples`` under ``config``'s evaluation options.

    QA writes ``predictions`` (id -> answer text) and returns None when ``source`` has no reference answers.
    With ``gate_report`` (a directory), the per-layer mean gate values of gated adapters (UniPELT) on these
    examples are written there as ``gates.json`` and ``gates.png``.
    """
    from .methods.gating import GateRecorder, write_gate_report

    with GateRecorder(adapted, required=False) as recorder:
        metrics = _evaluate_split(adapted, tokenizer, spec, examples, config, predictions, source)
    if gate_report is not None and recorder.means():
        paths = write_gate_report(recorder.means(), str(gate_report), title=f"mean gate value on {source}")
        say(f"gate values per layer: {paths[0]}, {paths[1]}")
    return metrics


def _evaluate_split(adapted: Any, tokenizer: Any, spec: Any, examples: list, config: Any, predictions: Path | None,
                    source: str) -> dict[str, float] | None:
    from .training import evaluate, predict_qa, score_qa

    if spec.kind != "qa":
        return evaluate(adapted, tokenizer, spec, examples, config.eval_batch_size, config.max_length,
                        precision=config.precision)
    answers = predict_qa(adapted, tokenizer, examples, config.eval_batch_size, config.max_length, config.doc_stride,
                         config.precision)
    metrics = score_qa(spec, examples, answers)
    if predictions is not None:
        from .io import atomic_write_json

        atomic_write_json(predictions, answers)
        say(f"wrote {predictions} ({len(answers)} predictions)")
    if metrics is None:
        say(f"no reference answers in {source}: wrote predictions only")
    return metrics


@dataclass
class SystemRun:
    """What :func:`run_system` produced: the training result, test metrics and parameter counts."""

    result: Any
    test: dict[str, float] | None
    total_parameters: int

    def row(self) -> dict[str, Any]:
        """A result row: test and best dev score, best epoch, trainable parameters, train time, dev history."""
        trainable = self.result.trainable_parameters
        return {"test_score": self.test["score"] if self.test else None, "dev_score": self.result.metrics.get("score"),
                "best_epoch": self.result.best_epoch, "trainable": trainable,
                "trainable_pct": 100.0 * trainable / self.total_parameters,
                "train_seconds": round(self.result.train_seconds, 2), "history": self.result.history}


def run_system(adapted: Any, tokenizer: Any, spec: Any, data: tuple[list, list | None, list | None], config: Any, *,
               label: str, callbacks: Sequence[Any] = (), extra_loss: Callable | None = None,
               predictions: Path | None = None, test_source: str = "the test examples",
               gate_report: Path | None = None) -> SystemRun:
    """Train ``adapted`` (its active adapters, or as ``config.train_mode`` says) on ``data[0]``, select the best
    evaluation on ``data[1]`` and score ``data[2]`` (QA: answers written to ``predictions``; gated adapters:
    per-layer mean gate values on the test set written to ``gate_report``)."""
    from .training import has_qa_references, train

    train_ex, dev_ex, test_ex = data
    if spec.kind == "qa" and dev_ex and not has_qa_references(dev_ex):
        say("data: no reference answers in the dev examples: training without dev-based selection")
        dev_ex = None
    adapted.set_train_mode(config.train_mode)  # so that the count below is what trains
    trainable = adapted.count_parameters()["trainable"] if config.train_mode != "full" else "all"
    head = getattr(adapted, "head_config", None)
    if head is not None and spec.kind != "qa":
        say(f"[{label}] head: {head.pooling} pooling" + (", L2-normalised" if head.normalize else "")
            + ("; LP-FT init" if config.lp_init else ""))
    say(f"[{label}] {len(train_ex)} train / {len(dev_ex or [])} dev / {len(test_ex or [])} test examples; "
        f"trainable parameters {trainable}")
    result = train(adapted, tokenizer, spec, train_ex, dev_ex, config, callbacks=callbacks, extra_loss=extra_loss,
                   name=label)
    test = None
    if test_ex:
        start = time.perf_counter()
        test = evaluate_split(adapted, tokenizer, spec, test_ex, config, predictions=predictions, source=test_source,
                              gate_report=gate_report)
        if test is not None:
            say(f"[{label}] test score {test['score']:.4f} ({spec.metric}, {len(test_ex)} examples, "
                f"{time.perf_counter() - start:.0f}s); dev {result.score}; train {result.train_seconds:.0f}s")
    return SystemRun(result, test, adapted.count_parameters()["total"])


def _best_constant(spec: Any, classes: list[int], dev: list | None, width: int) -> int:
    """The class among ``classes`` whose constant prediction scores best on ``dev`` (the first one without dev)."""
    import numpy as np

    from .metrics import compute_metrics

    if len(classes) == 1 or not dev:
        return classes[0]
    gold = np.asarray([ex["label"] for ex in dev])
    scores = [compute_metrics(spec, np.repeat(np.eye(width)[[c]], len(dev), axis=0), gold)["score"] for c in classes]
    return classes[int(np.argmax(scores))]


def run_baseline(method: str, adapted: Any, tokenizer: Any, spec: Any, data: tuple, config: Any, *,
                 label: str | None = None) -> dict[str, Any]:
    """``probe`` (logistic/ridge regression on the frozen head features, L2 strength chosen on dev; with the
    model's own head, ``hf``, on its input features: [CLS] through the pooler where there is one) or
    ``majority`` (the most frequent training label; regression: the training mean) on ``data`` =
    (train, dev, test), evaluated under ``config``'s options; a result row like :meth:`SystemRun.row`'s,
    plus the ``dev`` and ``test`` metrics."""
    import numpy as np

    from .metrics import compute_metrics

    train_ex, dev_ex, test_ex = data
    label = label or method
    if spec.kind not in ("classification", "regression"):
        raise ConfigError(f"method {method!r}: task kind {spec.kind!r}: baselines need classification or regression")
    start = time.perf_counter()
    total = adapted.count_parameters()["total"]
    length, batch, precision = config.max_length, config.eval_batch_size, config.precision
    if method == "probe":
        from .heads import own_head_config
        from .training import compute_device, example_features, probe_fit

        if adapted.pooled_head is None:  # the model's own head: probe the features it sees ([CLS] via the pooler)
            adapted.set_head(own_head_config(adapted.model))
        device = compute_device(getattr(config, "use_cpu", False))  # where training would run (a GPU if present)
        fit = probe_fit(adapted, tokenizer, spec, train_ex, dev_ex, length, batch, precision, device)

        def logits_of(examples: list) -> np.ndarray:
            feats = example_features(adapted, tokenizer, spec, examples, length, batch, precision, device)
            return fit.predict(feats).numpy()

        trainable = int(fit.weight.numel() + fit.bias.numel())
        note = f"l2 {fit.l2:g}"
    elif method == "majority":
        if spec.kind == "regression":
            constant = np.asarray([[float(np.mean([float(ex["label"]) for ex in train_ex]))]])
        else:
            counts = np.bincount([int(ex["label"]) for ex in train_ex], minlength=max(2, spec.num_labels))
            tied = [int(c) for c in np.flatnonzero(counts == counts.max())]
            # A balanced few-shot sample ties every class: break the tie on dev (for F1 metrics the
            # positive class is the stronger constant), so the trivial baseline is not needlessly weak.
            constant = np.eye(len(counts))[[_best_constant(spec, tied, dev_ex, len(counts))]]

        def logits_of(examples: list) -> np.ndarray:
            return np.repeat(constant, len(examples), axis=0)

        trainable, note = 0, "constant prediction"
    else:
        raise ConfigError(f"method {method!r}: not a baseline; baselines: {list(BASELINES)}")

    def score(examples: list | None) -> dict[str, float] | None:
        if not examples:
            return None
        return compute_metrics(spec, logits_of(examples), np.asarray([ex["label"] for ex in examples]))

    dev_metrics, test_metrics = score(dev_ex), score(test_ex)
    seconds = time.perf_counter() - start
    if test_metrics:
        say(f"[{label}] test score {test_metrics['score']:.4f} ({spec.metric}, {len(test_ex)} examples; {note})")
    return {"test_score": test_metrics["score"] if test_metrics else None,
            "dev_score": dev_metrics["score"] if dev_metrics else None, "best_epoch": None,
            "trainable": trainable, "trainable_pct": 100.0 * trainable / total, "train_seconds": round(seconds, 2),
            "history": [], "dev": dev_metrics, "test": test_metrics}


def run_training(data: DataOptions, model: ModelOptions, config: Any, *, spec: Any = None,
                 examples: tuple | None = None, label: str | None = None, head: Any = None) -> dict[str, Any]:
    """``adapterkit train``: split the data, build the system, :func:`run_system`, save the adapter (or model)
    and ``results.json`` to ``config.output_dir``; returns the result row. ``head``: the task head's
    :class:`~adapterkit.heads.HeadConfig` (None: auto). The baselines (``probe``, ``majority``) train nothing
    and save only ``results.json``.

    The output directory is locked for the run (a second process is refused, naming the holder), and a
    previous run there is refused unless ``config.resume`` or ``config.overwrite`` is set (runs that keep
    no checkpoints, ``config.cleanup_checkpoints``, replace theirs).
    """
    from .rundir import claim_output_dir

    check_sizes(k_shot=data.k_shot, train_size=data.train_size, dev_size=data.dev_size)
    with claim_output_dir(config.output_dir, resume=config.resume,
                          overwrite=bool(config.overwrite or config.cleanup_checkpoints)):
        return _run_training(data, model, config, spec=spec, examples=examples, label=label, head=head)


def _run_training(data: DataOptions, model: ModelOptions, config: Any, *, spec: Any = None,
                  examples: tuple | None = None, label: str | None = None, head: Any = None) -> dict[str, Any]:
    from transformers import set_seed

    from .data.tasks import resolve_data_dir
    from .io import atomic_write_json, save_adapter

    own = spec is None and examples is None and bool(user_files(data))
    spec = spec or resolve_task(data)
    data_dir = resolve_data_dir(data.data_dir)
    if spec.kind == "qa" and data.k_shot:
        raise ConfigError("k_shot: QA examples have no classes; use --train-size N")
    if examples is None:
        train_ex, dev_ex, test_ex, notes = split_data(spec, data_dir, k_shot=data.k_shot, train_size=data.train_size,
                                                      dev_size=data.dev_size, seed=config.seed, own_files=own)
        for note in notes:
            say(f"data: {note}")
        examples = (train_ex, dev_ex, test_ex)
    method = system_method(model)
    label = label or method
    set_seed(config.seed)
    adapted, tokenizer, adapter_name = build_system(spec, model, head)
    config = clamp_max_length(config, adapted.model, tokenizer)
    out = Path(config.output_dir)
    if method in BASELINES:
        row = run_baseline(method, adapted, tokenizer, spec, examples, config, label=label)
        atomic_write_json(out / "results.json", {"task": spec.name, "method": method,
                                                 "head": adapted.head_config.to_dict(), "dev": row.pop("dev"),
                                                 "test": row.pop("test")})
        return {"system": label, **row}
    test_split = "dev" if data.dev_size and "dev" in spec.splits and not own else "test"
    run = run_system(adapted, tokenizer, spec, examples, config, label=label,
                     predictions=out / "predictions.json" if spec.kind == "qa" else None,
                     test_source=split_source(spec, test_split, data_dir), gate_report=out)
    result = run.result
    summary = {"task": spec.name, "method": method, "learning_rate": config.learning_rate,
               "head_learning_rate": config.head_learning_rate,
               "head": adapted.head_config.to_dict(), "dev": result.metrics,
               "test": run.test,
               "best_epoch": result.best_epoch, "train_seconds": result.train_seconds,
               "trainable_parameters": result.trainable_parameters, "total_parameters": run.total_parameters}
    if spec.kind == "qa" and examples[2]:
        summary["predictions"] = str(out / "predictions.json")
    if adapter_name:
        training = {"method": method, "epochs": config.epochs, "learning_rate": config.learning_rate,
                    "head_learning_rate": config.head_learning_rate,
                    "batch_size": config.batch_size, "max_length": config.max_length, "seed": config.seed,
                    "train_examples": len(examples[0]), "dev_examples": len(examples[1] or []), "k_shot": data.k_shot,
                    "precision": config.precision, "best_epoch": result.best_epoch}
        save_adapter(adapted, adapter_name, out / "adapter", include_head=True,
                     extra={"task": spec.name, "metric": spec.metric, "dev": result.metrics, "test": run.test,
                            "data": data_record(spec, config.max_length),
                            "training": {k: v for k, v in training.items() if v is not None},
                            "trainable_parameters": result.trainable_parameters})
    elif not config.cleanup_checkpoints:
        adapted.model.save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "model")
        if adapted.pooled_head is not None:  # the pooled head is not part of the Hugging Face model: saved beside it
            from .io import atomic_save_tensors

            atomic_save_tensors(out / "model" / "pooled_head.safetensors", adapted.head_state_dict(), {"format": "pt"})
            atomic_write_json(out / "model" / "pooled_head.json", adapted.head_config.to_dict())
    atomic_write_json(out / "results.json", {**summary, "history": result.history})
    return {"system": label, **run.row()}
