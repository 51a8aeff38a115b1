"""One Trainer-based training path for every method: adapters, full fine-tuning, or the head only.

:func:`train` wraps Hugging Face :class:`transformers.Trainer` with what adapters need: an optimizer
built from :meth:`AdaptedModel.parameter_groups` (per-adapter learning rates), small checkpoints
(only the trainable tensors unless the whole model trains), best-checkpoint selection on the task's
primary metric (``"score"``), resume after a kill, an ``extra_loss`` hook for auxiliary losses and
ordinary ``TrainerCallback`` objects. It runs unchanged under ``torchrun`` / ``accelerate launch``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .config import check, field_help, opt
from .errors import AdapterLoadError, ConfigError, DataError
from .model import AdaptedModel

Example = dict[str, Any]
ExtraLoss = Callable[[Any, dict[str, Any]], torch.Tensor]

TRAINABLE_NAME = "trainable.safetensors"
FULL_NAME = "model.safetensors"
CHECKPOINT_INFO_NAME = "adapterkit_checkpoint.json"
QA_EVAL_COLUMNS = ("example_id", "offset_mapping")
PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_LEARNING_RATES = {"adapters": 1e-4, "full": 2e-5, "head": 1e-3}
"""The learning rate of each train_mode when none is given."""


def default_doc_stride(max_length: int) -> int:
    """QA: the token overlap between windows of a long context when none is given (a quarter of max_length, <= 128)."""
    return max(1, min(128, max_length // 4))


@dataclass
class TrainConfig:
    """How to train: epochs, batch sizes, optimizer, schedule, evaluation, checkpoints, progress."""

    output_dir: str = opt(
        "runs/train", "directory for checkpoints (checkpoint-STEP/) and logs; `adapterkit train` also saves the adapter "
        "(or model) and results.json there")
    epochs: float = opt(3.0, "number of training epochs")
    batch_size: int = opt(16, "training batch size per device")
    eval_batch_size: int = opt(64, "evaluation batch size per device")
    learning_rate: float | None = opt(
        None, "base learning rate (adapters may set their own); default by train_mode: 1e-4 adapters, 2e-5 full, "
        "1e-3 head", aliases=("lr",))
    weight_decay: float = opt(0.0, "AdamW weight decay")
    warmup_ratio: float = opt(0.06, "fraction of the training steps with a linear warm-up, in [0, 1)")
    max_grad_norm: float = opt(1.0, "gradient clipping norm (0 disables)")
    gradient_accumulation_steps: int = opt(1, "batches per optimizer step")
    max_length: int = opt(128, "maximum tokens per example (longer inputs are truncated)")
    doc_stride: int | None = opt(
        None, "QA only: token overlap between windows of a long context (< max_length); default: a quarter of "
        "max_length, at most 128")
    seed: int = opt(42, "seed for transformers.set_seed and the data order")
    train_mode: Literal["adapters", "full", "head"] = opt(
        "adapters", "adapters: active adapters + head; full: every parameter; head: the head only"
    )
    backbone_dropout: bool = opt(
        True, "adapters mode: false runs the frozen backbone without dropout (faster; adapters keep theirs)"
    )
    cache_frozen_layers: bool = opt(
        False,
        "adapters mode with backbone_dropout false: compute the frozen layers below the lowest adapter layer once "
        "per input and reuse them (exact, faster epochs after the first)",
    )
    eval_each_epoch: bool = opt(True, "evaluate on dev after each epoch and keep the best checkpoint (by 'score')")
    save_steps: int | None = opt(
        None, "also save a checkpoint every N optimizer steps (for long epochs: a kill loses at most N steps); "
        "needs no per-epoch evaluation (eval_each_epoch false or no dev set)"
    )
    save_total_limit: int | None = opt(2, "checkpoints kept in output_dir (the best one is always kept)")
    resume: bool | Literal["auto"] = opt(False, "true: resume from the last checkpoint in output_dir; 'auto': only when one exists")
    save_optimizer: bool = opt(True, "save optimizer/scheduler/RNG state in checkpoints (needed to resume)")
    cleanup_checkpoints: bool = opt(False, "delete the checkpoint-* directories after a successful run")
    logging_steps: int = opt(10, "log the training loss every N optimizer steps")
    progress: Literal["log", "bar", "none"] = opt("log", "log: lines with ETA; bar: tqdm bars; none: quiet")
    dataloader_num_workers: int = opt(0, "worker processes per data loader")
    dataloader_drop_last: bool = opt(False, "drop the last incomplete training batch")
    dataloader_pin_memory: bool = opt(False, "pin host memory (useful on GPU)")
    use_cpu: bool = opt(False, "train on the CPU even when an accelerator is present")
    precision: Literal["fp32", "bf16", "fp16"] = opt(
        "fp32",
        "fp32, or mixed precision with fp32 weights: bf16 (autocast; fast on CPUs with AVX512-BF16/AMX and on "
        "Ampere+ GPUs) or fp16 (CUDA only, with loss scaling)",
    )

    def __post_init__(self) -> None:
        if self.learning_rate is None:
            self.learning_rate = DEFAULT_LEARNING_RATES.get(self.train_mode, DEFAULT_LEARNING_RATES["adapters"])
        if self.doc_stride is None:
            self.doc_stride = default_doc_stride(self.max_length)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the field when a value is out of range."""
        check(bool(self.output_dir), "output_dir", "must not be empty")
        check(self.epochs > 0, "epochs", f"must be > 0, got {self.epochs}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.eval_batch_size >= 1, "eval_batch_size", f"must be >= 1, got {self.eval_batch_size}")
        check(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(0 <= self.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        check(self.max_grad_norm >= 0, "max_grad_norm", f"must be >= 0, got {self.max_grad_norm}")
        check(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", "must be >= 1")
        check(self.max_length >= 8, "max_length", f"must be >= 8, got {self.max_length}")
        check(self.doc_stride > 0, "doc_stride", f"must be > 0, got {self.doc_stride}")
        check(self.train_mode in ("adapters", "full", "head"), "train_mode", f"unknown {self.train_mode!r}")
        check(self.save_steps is None or self.save_steps >= 1, "save_steps", f"must be >= 1 or null, got {self.save_steps}")
        check(self.save_total_limit is None or self.save_total_limit >= 1, "save_total_limit", "must be >= 1 or null")
        check(self.resume in (True, False, "auto"), "resume", f"use true, false or 'auto', got {self.resume!r}")
        check(self.logging_steps >= 1, "logging_steps", f"must be >= 1, got {self.logging_steps}")
        check(self.progress in ("log", "bar", "none"), "progress", f"unknown {self.progress!r}")
        check(self.dataloader_num_workers >= 0, "dataloader_num_workers", "must be >= 0")
        check(self.precision in PRECISIONS, "precision", f"use one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.cache_frozen_layers:
            check(self.train_mode == "adapters", "cache_frozen_layers",
                  f"needs train_mode 'adapters' (frozen lower layers), got {self.train_mode!r}")
            check(not self.backbone_dropout, "cache_frozen_layers",
                  "needs backbone_dropout false (with dropout the frozen layers' outputs are random)")

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> help text."""
        return field_help(cls)

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


@dataclass
class TrainResult:
    """What a training run produced; ``metrics`` are the best checkpoint's dev metrics."""

    metrics: dict[str, float]
    best_epoch: float | None
    best_step: int | None
    best_checkpoint: str | None
    train_seconds: float
    trainable_parameters: int
    global_step: int
    history: list[dict[str, float]] = field(default_factory=list)
    log_history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def score(self) -> float | None:
        return self.metrics.get("score")


# --- data ----------------------------------------------------------------------------------------


def encode(tokenizer: Any, spec: Any, examples: Sequence[Example], max_length: int, doc_stride: int = 32,
           *, for_eval: bool = False) -> Any:
    """Tokenise ``examples`` for ``spec.kind`` into a ``datasets.Dataset`` (unpadded).

    ``spec.kind == "mlm"`` (an :class:`adapterkit.pretraining.MLMSpec`): ``examples`` are plain texts.
    """
    from .data import preprocess

    if spec.kind == "qa":
        fn = preprocess.encode_qa_eval if for_eval else preprocess.encode_qa_train
        return fn(tokenizer, examples, max_length=max_length, doc_stride=doc_stride)
    if spec.kind == "mlm":  # examples are plain texts (adapterkit.pretraining)
        return preprocess.encode_mlm(tokenizer, examples, max_length=max_length, packing=spec.packing)
    dtype = "float" if spec.kind == "regression" else "int"
    return preprocess.encode_classification(tokenizer, examples, max_length=max_length, label_dtype=dtype)


def _collator(tokenizer: Any, spec: Any = None) -> Any:
    if spec is not None and spec.kind == "mlm":
        return spec.collator(tokenizer)  # dynamic masking, drawn anew for every batch
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer)


def _label_names(spec: Any) -> list[str]:
    return ["start_positions", "end_positions"] if spec.kind == "qa" else ["labels"]


# --- checkpoints -----------------------------------------------------------------------------------


def trainable_state_dict(adapted: AdaptedModel) -> dict[str, torch.Tensor]:
    """The tensors that train (names as in ``adapted.named_parameters()``)."""
    return {n: p.detach() for n, p in adapted.named_parameters() if p.requires_grad}


def save_checkpoint_weights(adapted: AdaptedModel, directory: str | Path) -> Path:
    """Write the trainable tensors (or, in full mode, the whole model) as safetensors."""
    from safetensors.torch import save_model

    from .io import atomic_path, atomic_save_tensors, atomic_write_json

    directory = Path(directory)
    if adapted.train_mode == "full":
        with atomic_path(directory / FULL_NAME) as tmp:
            save_model(adapted, tmp, metadata={"format": "pt"})
        path, keys = directory / FULL_NAME, None
    else:
        tensors = trainable_state_dict(adapted)
        atomic_save_tensors(directory / TRAINABLE_NAME, tensors, {"format": "pt"})
        path, keys = directory / TRAINABLE_NAME, len(tensors)
    atomic_write_json(directory / CHECKPOINT_INFO_NAME,
                      {"format": "adapterkit-checkpoint", "train_mode": adapted.train_mode, "tensors": keys})
    return path


def load_checkpoint_weights(adapted: AdaptedModel, directory: str | Path) -> None:
    """Load what :func:`save_checkpoint_weights` wrote; mismatched keys or shapes name the file."""
    from safetensors.torch import load_model

    from .io import read_tensors

    directory = Path(directory)
    if (directory / FULL_NAME).is_file():
        load_model(adapted, str(directory / FULL_NAME), strict=True)
        return
    path = directory / TRAINABLE_NAME
    tensors = read_tensors(path)
    params = dict(adapted.named_parameters())
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise AdapterLoadError(f"{path}: {unknown[0]}: no such parameter in the model ({len(unknown)} unknown keys)")
    missing = sorted(n for n, p in params.items() if p.requires_grad and n not in tensors)
    if missing:
        raise AdapterLoadError(f"{path}: {missing[0]}: trainable parameter missing from the checkpoint")
    with torch.no_grad():
        for key, tensor in tensors.items():
            if tuple(tensor.shape) != tuple(params[key].shape):
                raise AdapterLoadError(f"{path}: {key}: shape {tuple(tensor.shape)} != model's {tuple(params[key].shape)}")
            params[key].copy_(tensor.to(params[key].dtype))


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The newest *complete* ``checkpoint-STEP`` directory in ``output_dir``, or None.

    Complete means it holds our weights and ``trainer_state.json``, which the Trainer writes last; a
    checkpoint cut short by a kill is skipped in favour of the one before it.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return None
    steps = []
    for path in root.glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if suffix.isdigit() and path.is_dir():
            steps.append((int(suffix), path))
    for _, path in sorted(steps, reverse=True):
        has_weights = (path / TRAINABLE_NAME).is_file() or (path / FULL_NAME).is_file()
        if has_weights and (path / "trainer_state.json").is_file():
            return str(path)
    return None


# --- the Trainer ---------------------------------------------------------------------------------


def _make_trainer_class() -> type:
    from transformers import Trainer

    class AdapterTrainer(Trainer):
        """Trainer with per-group learning rates, trainable-only checkpoints, extra losses and QA eval."""

        def __init__(self, *args: Any, adapted: AdaptedModel, spec: Any, extra_loss: ExtraLoss | None,
                     weight_decay: float, qa_dev: tuple[Sequence[Example], Any] | None = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.adapted = adapted
            self.spec = spec
            self.extra_loss = extra_loss
            self.weight_decay = weight_decay
            self.qa_dev = qa_dev
            # The HF head computes a per-batch mean loss: no token-count scaling across devices.
            self.model_accepts_loss_kwargs = False

        def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
            if self.optimizer is None:
                groups = self.adapted.parameter_groups(self.args.learning_rate, self.weight_decay)
                if not groups:
                    raise ConfigError("train_mode: nothing to train (no trainable parameters)")
                self.optimizer = torch.optim.AdamW(groups, lr=self.args.learning_rate, weight_decay=self.weight_decay)
            return self.optimizer

        def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            if self.extra_loss is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
            if model.training:
                loss = loss + self.extra_loss(outputs, inputs)
            return (loss, outputs) if return_outputs else loss

        def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
            if self.args.should_save:
                save_checkpoint_weights(self.adapted, output_dir or self.args.output_dir)

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
            load_checkpoint_weights(self.adapted, resume_from_checkpoint)

        def _load_best_model(self) -> None:
            load_checkpoint_weights(self.adapted, self.state.best_model_checkpoint)

        def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None,
                     metric_key_prefix: str = "eval") -> dict[str, float]:
            if self.qa_dev is None:
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            from .data.preprocess import postprocess_qa
            from .metrics import compute_metrics

            examples, features = self.qa_dev
            start = time.perf_counter()
            out = self.predict(features.remove_columns(list(QA_EVAL_COLUMNS)), ignore_keys, metric_key_prefix)
            start_logits, end_logits = out.predictions[:2]
            answers = postprocess_qa(examples, features, start_logits, end_logits)
            refs = qa_references(examples)
            metrics = {f"{metric_key_prefix}_{k}": v for k, v in compute_metrics(self.spec, answers, refs).items()}
            metrics[f"{metric_key_prefix}_runtime"] = round(time.perf_counter() - start, 4)
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    return AdapterTrainer


def _make_progress_callback(name: str) -> Any:
    from transformers import TrainerCallback

    class LogLines(TrainerCallback):
        """Prints one line per logging step with epoch, loss and ETA, and one per evaluation."""

        def __init__(self) -> None:
            self.start = time.perf_counter()
            self.first_step = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()
            self.first_step = state.global_step
            if state.is_world_process_zero:
                _say(f"[{name}] training {state.max_steps} steps, {args.num_train_epochs:g} epochs"
                     + (f" (resuming at step {state.global_step})" if state.global_step else ""))

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
            if not state.is_world_process_zero or not logs:
                return
            elapsed = time.perf_counter() - self.start
            done = max(1, state.global_step - self.first_step)
            eta = elapsed / done * max(0, state.max_steps - state.global_step)
            where = f"[{name}] step {state.global_step}/{state.max_steps} epoch {state.epoch or 0:.2f}"
            if "loss" in logs:
                _say(f"{where} loss {logs['loss']:.4f} lr {logs.get('learning_rate', 0):.2e} "
                     f"elapsed {_fmt_s(elapsed)} ETA {_fmt_s(eta)}")
            elif "eval_score" in logs:
                best = state.best_metric
                flag = " (new best)" if best is None or logs["eval_score"] > best else ""
                _say(f"{where} dev score {logs['eval_score']:.4f}{flag}")

    return LogLines()


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _fmt_s(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _training_args(config: TrainConfig, has_dev: bool, spec: Any) -> Any:
    from transformers import TrainingArguments

    evaluating = has_dev and config.eval_each_epoch
    if evaluating and config.save_steps:
        raise ConfigError("save_steps: checkpoints every N steps need eval_each_epoch false (the best-epoch "
                          "selection saves at each evaluation)")
    on_cpu = config.use_cpu or not _has_accelerator()
    if config.precision == "fp16" and (on_cpu or not torch.cuda.is_available()):
        raise ConfigError("precision: fp16 needs a CUDA GPU (it uses loss scaling); use bf16 on the CPU")
    return TrainingArguments(
        output_dir=config.output_dir,
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.eval_batch_size,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type="linear",
        max_grad_norm=config.max_grad_norm,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        seed=config.seed,
        eval_strategy="epoch" if evaluating else "no",
        save_strategy="steps" if config.save_steps else "epoch",
        save_steps=config.save_steps or 500,
        save_total_limit=config.save_total_limit,
        save_only_model=not config.save_optimizer,
        load_best_model_at_end=evaluating,
        metric_for_best_model="score" if evaluating else None,
        greater_is_better=True if evaluating else None,
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        disable_tqdm=config.progress != "bar",
        report_to="none",
        remove_unused_columns=False,
        label_names=_label_names(spec),
        dataloader_num_workers=config.dataloader_num_workers,
        dataloader_drop_last=config.dataloader_drop_last,
        dataloader_pin_memory=config.dataloader_pin_memory,
        use_cpu=on_cpu,
        bf16=config.precision == "bf16",
        fp16=config.precision == "fp16",
        ddp_find_unused_parameters=False,
    )


def _drop_autocast_wrapper(model: nn.Module) -> None:
    """Undo Accelerate's mixed-precision patch of ``model.forward`` (an instance attribute wrapping the
    class's forward in autocast), so that the model runs in the precision its caller asks for after training."""
    if "_original_forward" in model.__dict__:
        model.__dict__.pop("forward", None)
        model.__dict__.pop("_original_forward", None)


def _has_accelerator() -> bool:
    """True when a GPU-like device is present (on CPU-only hosts, torchrun then means gloo DDP on CPU)."""
    probe = getattr(torch, "accelerator", None)
    return bool(probe.is_available()) if probe is not None else torch.cuda.is_available()


def _resume_point(config: TrainConfig) -> str | None:
    if config.resume is False:
        return None
    found = last_checkpoint(config.output_dir)
    if found is None and config.resume is True:
        raise ConfigError(f"resume: no checkpoint-* directory with weights in {config.output_dir}")
    return found


def train(adapted: AdaptedModel, tokenizer: Any, spec: Any, train_examples: Sequence[Example],
          dev_examples: Sequence[Example] | None, config: TrainConfig, *, callbacks: Sequence[Any] = (),
          extra_loss: ExtraLoss | None = None, name: str = "train") -> TrainResult:
    """Train ``adapted`` on ``train_examples``; select the best epoch on ``dev_examples`` by ``score``.

    ``extra_loss(outputs, batch)`` is added to the loss of every training batch; ``callbacks`` are
    ``TrainerCallback`` objects. The best checkpoint's weights are loaded back at the end.
    """
    from transformers import PrinterCallback, set_seed

    from .metrics import compute_metrics

    if not train_examples:
        raise ConfigError("train_examples: no training examples")
    has_dev = bool(dev_examples)
    if has_dev and spec.kind == "qa" and not has_qa_references(dev_examples):
        raise DataError("dev_examples: no QA example has a reference answer, so the dev set cannot be "
                        "scored; pass dev_examples=None (or a dev set with answers)")
    set_seed(config.seed)
    adapted.set_train_mode(config.train_mode)
    adapted.backbone_dropout = config.backbone_dropout
    train_ds = encode(tokenizer, spec, train_examples, config.max_length, config.doc_stride)
    dev_ds, qa_dev = None, None
    if has_dev:
        if spec.kind == "qa":
            features = encode(tokenizer, spec, dev_examples, config.max_length, config.doc_stride, for_eval=True)
            qa_dev = (list(dev_examples), features)
            dev_ds = features.remove_columns(list(QA_EVAL_COLUMNS))
        else:
            dev_ds = encode(tokenizer, spec, dev_examples, config.max_length)

    def metrics_fn(pred: Any) -> dict[str, float]:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        return compute_metrics(spec, logits, pred.label_ids)

    trainer_cls = _make_trainer_class()
    trainer = trainer_cls(
        model=adapted,
        args=_training_args(config, has_dev, spec),
        data_collator=_collator(tokenizer, spec),
        train_dataset=train_ds,
        eval_dataset=dev_ds,
        compute_metrics=metrics_fn if has_dev and spec.kind != "qa" else None,
        callbacks=list(callbacks),
        adapted=adapted,
        spec=spec,
        extra_loss=extra_loss,
        weight_decay=config.weight_decay,
        qa_dev=qa_dev,
    )
    if config.progress != "bar":
        trainer.remove_callback(PrinterCallback)
    if config.progress == "log":
        trainer.add_callback(_make_progress_callback(name))
    resume_from = _resume_point(config)
    start = time.perf_counter()
    cached = False
    if config.cache_frozen_layers:
        from . import layer_cache

        if layer_cache.first_adapted_layer(adapted) > 0:
            layer_cache.enable(adapted)
            cached = True
        elif config.progress != "none":
            _say(f"[{name}] cache_frozen_layers: an adapter sits in layer 0, so no frozen layer runs below it; "
                 "training without the cache")
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    finally:
        if cached:
            layer_cache.disable(adapted)
        _drop_autocast_wrapper(adapted)
    seconds = time.perf_counter() - start
    state = trainer.state
    history = [
        {"epoch": float(e["epoch"]), "step": int(e["step"]), "score": float(e["eval_score"])}
        for e in state.log_history if "eval_score" in e
    ]
    best = next((h for h in history if h["step"] == state.best_global_step), None)
    if best is not None:
        entry = next(e for e in state.log_history if "eval_score" in e and e["step"] == best["step"])
        metrics = {k[5:]: float(v) for k, v in entry.items() if k.startswith("eval_") and isinstance(v, (int, float))}
    elif has_dev:
        metrics = {k[5:]: float(v) for k, v in trainer.evaluate().items() if isinstance(v, (int, float))}
    else:
        metrics = {}
    result = TrainResult(
        metrics=metrics,
        best_epoch=best["epoch"] if best else None,
        best_step=best["step"] if best else None,
        best_checkpoint=state.best_model_checkpoint,
        train_seconds=seconds,
        trainable_parameters=adapted.count_parameters()["trainable"],
        global_step=state.global_step,
        history=history,
        log_history=list(state.log_history),
    )
    if trainer.args.should_save:
        from .io import atomic_write_json

        atomic_write_json(Path(config.output_dir) / "train_result.json", _jsonable(result))
        if config.cleanup_checkpoints:
            for ckpt in Path(config.output_dir).glob("checkpoint-*"):
                shutil.rmtree(ckpt, ignore_errors=True)
    adapted.eval()
    return result


def _jsonable(result: TrainResult) -> dict[str, Any]:
    data = dataclasses.asdict(result)
    return json.loads(json.dumps(data, default=lambda o: float(o) if isinstance(o, (np.floating, np.integer)) else str(o)))


# --- evaluation ----------------------------------------------------------------------------------


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` ("fp32": none) on ``device``'s type."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: use one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(torch.device(device).type, dtype=dtype)


@torch.no_grad()
def predict_logits(adapted: nn.Module, tokenizer: Any, dataset: Any, batch_size: int = 64,
                   precision: str = "fp32") -> list[np.ndarray]:
    """Run the model over an encoded dataset (no label columns needed); returns one array per output."""
    collate = _collator(tokenizer)
    device = next(adapted.parameters()).device
    was_training = adapted.training
    adapted.eval()
    outputs: list[list[np.ndarray]] = []
    names = [c for c in dataset.column_names if c in ("input_ids", "attention_mask", "token_type_ids")]
    rows = dataset.select_columns(names).to_list()
    order = sorted(range(len(rows)), key=lambda j: len(rows[j]["input_ids"]))  # little padding per batch
    try:
        for i in range(0, len(rows), batch_size):
            batch = collate([rows[j] for j in order[i : i + batch_size]])
            with autocast(precision, device):
                out = adapted(**{k: v.to(device) for k, v in batch.items()})
            logits = [out.start_logits, out.end_logits] if hasattr(out, "start_logits") else [out.logits]
            for k, t in enumerate(logits):
                if len(outputs) <= k:
                    outputs.append([])
                outputs[k].append(t.float().cpu().numpy())
    finally:
        adapted.train(was_training)
    if outputs and hasattr(out, "start_logits"):  # QA: pad every batch to the longest sequence
        width = max(a.shape[1] for a in outputs[0])
        outputs = [[np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=-1e4) for a in o] for o in outputs]
    inverse = np.argsort(np.asarray(order, dtype=np.int64))
    return [np.concatenate(o, axis=0)[inverse] for o in outputs]


def qa_references(examples: Sequence[Example]) -> dict[str, list[str]]:
    """QA example id -> its reference answer texts (blank ones dropped)."""
    return {str(ex["id"]): [t for t in (ex.get("answers") or {}).get("text", []) if t.strip()] for ex in examples}


def has_qa_references(examples: Sequence[Example]) -> bool:
    """True when at least one QA example has a non-blank reference answer (so EM/F1 can be computed)."""
    return any(qa_references(examples).values())


def predict_qa(adapted: nn.Module, tokenizer: Any, examples: Sequence[Example], batch_size: int = 64,
               max_length: int = 128, doc_stride: int | None = None, precision: str = "fp32") -> dict[str, str]:
    """Extractive QA: example id -> predicted answer text (the best span over all windows of the context)."""
    from .data.preprocess import encode_qa_eval, postprocess_qa

    if not examples:
        raise ConfigError("examples: nothing to predict")
    features = encode_qa_eval(tokenizer, examples, max_length=max_length,
                              doc_stride=doc_stride or default_doc_stride(max_length))
    start, end = predict_logits(adapted, tokenizer, features, batch_size, precision)
    return postprocess_qa(examples, features, start, end)


def score_qa(spec: Any, examples: Sequence[Example], answers: dict[str, str]) -> dict[str, float] | None:
    """SQuAD metrics of ``answers`` (id -> text) against ``examples``; None when no example has a reference answer."""
    from .metrics import compute_metrics

    references = qa_references(examples)
    return compute_metrics(spec, answers, references) if any(references.values()) else None


def evaluate(adapted: nn.Module, tokenizer: Any, spec: Any, examples: Sequence[Example], batch_size: int = 64,
             max_length: int = 128, doc_stride: int | None = None, precision: str = "fp32") -> dict[str, float]:
    """Metrics of ``adapted`` on ``examples`` (primary metric under ``"score"``); QA uses SQuAD EM/F1.

    QA examples without any reference answer cannot be scored (DataError); use :func:`predict_qa`.
    """
    from .metrics import compute_metrics

    if not examples:
        raise ConfigError("examples: nothing to evaluate")
    if spec.kind == "qa":
        answers = predict_qa(adapted, tokenizer, examples, batch_size, max_length, doc_stride, precision)
        metrics = score_qa(spec, examples, answers)
        if metrics is None:
            raise DataError("examples: no QA example has a reference answer; use predict_qa for predictions only")
        return metrics
    dataset = encode(tokenizer, spec, examples, max_length)
    (logits,) = predict_logits(adapted, tokenizer, dataset, batch_size, precision)
    return compute_metrics(spec, logits, np.asarray([ex["label"] for ex in examples]))


def steps_per_epoch(n_examples: int, batch_size: int, world_size: int = 1, accumulation: int = 1) -> int:
    """Optimizer steps in one epoch (as the Trainer counts them)."""
    return max(1, math.ceil(math.ceil(n_examples / (batch_size * world_size)) / accumulation))
