"""The one Trainer-based training path: :func:`train`.

It wraps Hugging Face :class:`transformers.Trainer` through its public API only: an optimizer built
from :meth:`AdaptedModel.parameter_groups` (``create_optimizer``), an ``extra_loss`` hook
(``compute_loss``), checkpoints of the trainable tensors (``save_model``; the Trainer's own resume
reads them through their sharded-checkpoint index), QA evaluation (``evaluate``), and callbacks for
progress lines and for loading the best checkpoint at the end.
"""
from __future__ import annotations

import dataclasses
import errno
import functools
import json
import pickle
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..console import fmt_seconds, say
from ..errors import ConfigError, DataError, unpickle_refusal
from .checkpoints import (
    check_resume_compatible,
    last_checkpoint,
    load_checkpoint_weights,
    partial_checkpoints_expected,
    planned_steps,
    resume_point,
    save_checkpoint_weights,
)
from .config import TrainConfig
from .inference import (
    QA_EVAL_COLUMNS,
    Example,
    collator,
    encode,
    has_qa_references,
    label_names,
    score_qa,
    warn_slow_bf16,
)

ExtraLoss = Callable[[Any, dict[str, Any]], torch.Tensor]


@dataclass
class TrainResult:
    """What a training run produced; ``metrics`` are the best checkpoint's dev metrics.

    ``history`` has one entry per evaluation: ``epoch``, ``step``, dev ``score`` and dev ``loss``
    (None where the evaluation computes no loss).
    """

    metrics: dict[str, float]
    best_epoch: float | None
    best_step: int | None
    best_checkpoint: str | None
    train_seconds: float
    trainable_parameters: int
    global_step: int
    history: list[dict[str, float | None]] = field(default_factory=list)
    log_history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def score(self) -> float | None:
        """The best checkpoint's dev score (None without a dev set)."""
        return self.metrics.get("score")


@functools.cache
def trainer_class() -> type:
    """The :class:`transformers.Trainer` subclass of :func:`train` (built on first use: importing the Trainer is slow)."""
    from accelerate.utils import extract_model_from_parallel
    from transformers import Trainer

    class AdapterTrainer(Trainer):
        """Trainer with per-group learning rates, trainable-only checkpoints, extra losses and QA evaluation."""

        def __init__(self, *args: Any, spec: Any, extra_loss: ExtraLoss | None, weight_decay: float,
                     qa_dev: tuple[Sequence[Example], Any] | None = None, head_lr: float | None = None,
                     **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.spec = spec
            self.extra_loss = extra_loss
            self.weight_decay = weight_decay
            self.head_lr = head_lr
            self.qa_dev = qa_dev
            # The HF head computes a per-batch mean loss: no token-count scaling across devices.
            self.model_accepts_loss_kwargs = False

        def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
            if self.optimizer is None:
                groups = self.model.parameter_groups(self.args.learning_rate, self.weight_decay, head_lr=self.head_lr)
                if not groups:
                    raise ConfigError("train_mode: nothing to train (no trainable parameters)")
                self.optimizer = torch.optim.AdamW(groups, lr=self.args.learning_rate, weight_decay=self.weight_decay)
            return self.optimizer

        def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            if getattr(self.spec, "sparse_logits", False):  # masked LM: logits at the masked tokens only
                from .mlm import masked_lm_loss

                loss, outputs = masked_lm_loss(model, extract_model_from_parallel(model).model, inputs)
            elif self.extra_loss is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            else:
                loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
            if model.training and self.extra_loss is not None:
                loss = loss + self.extra_loss(outputs, inputs)
            return (loss, outputs) if return_outputs else loss

        def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
            """Write the trainable tensors (full mode: the whole model), not a ``save_pretrained`` directory."""
            if self.args.should_save:
                save_checkpoint_weights(extract_model_from_parallel(self.model), output_dir or self.args.output_dir)

        def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None,
                     metric_key_prefix: str = "eval") -> dict[str, float]:
            """Classification as the Trainer does it; QA: dev loss and SQuAD EM/F1 of the best spans."""
            if self.qa_dev is None:
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            from ..data.preprocess import postprocess_qa

            examples, features = self.qa_dev
            start = time.perf_counter()
            out = self.predict(features.remove_columns(list(QA_EVAL_COLUMNS)), ignore_keys, metric_key_prefix)
            start_logits, end_logits = out.predictions[:2]
            scores = score_qa(self.spec, examples, postprocess_qa(examples, features, start_logits, end_logits)) or {}
            metrics = {f"{metric_key_prefix}_{k}": v for k, v in scores.items()}
            if f"{metric_key_prefix}_loss" in out.metrics:
                metrics[f"{metric_key_prefix}_loss"] = out.metrics[f"{metric_key_prefix}_loss"]
            metrics[f"{metric_key_prefix}_runtime"] = round(time.perf_counter() - start, 4)
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    return AdapterTrainer


def _callbacks(name: str, progress: bool, load_best: bool) -> list[Any]:
    """Callbacks of :func:`train`: progress lines with ETA, and loading the best checkpoint when training ends."""
    from transformers import TrainerCallback

    class LoadBestAtEnd(TrainerCallback):
        """Load the best checkpoint's weights when training ends (before the user's on_train_end callbacks)."""

        def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            if state.best_model_checkpoint is not None:
                load_checkpoint_weights(model, state.best_model_checkpoint)

    class LogLines(TrainerCallback):
        """Prints one line per logging step with epoch, loss and ETA, and one per evaluation."""

        def __init__(self) -> None:
            self.start = time.perf_counter()
            self.first_step = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()
            self.first_step = state.global_step
            if state.is_world_process_zero:
                say(f"[{name}] training {state.max_steps} steps, {args.num_train_epochs:g} epochs"
                    + (f" (resuming at step {state.global_step})" if state.global_step else ""), err=True)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
            if not state.is_world_process_zero or not logs:
                return
            elapsed = time.perf_counter() - self.start
            done = max(1, state.global_step - self.first_step)
            eta = elapsed / done * max(0, state.max_steps - state.global_step)
            where = f"[{name}] step {state.global_step}/{state.max_steps} epoch {state.epoch or 0:.2f}"
            if "loss" in logs:
                say(f"{where} loss {logs['loss']:.4f} lr {logs.get('learning_rate', 0):.2e} "
                    f"elapsed {fmt_seconds(elapsed)} ETA {fmt_seconds(eta)}", err=True)
            elif "eval_score" in logs:
                best = state.best_metric
                flag = " (new best)" if best is None or logs["eval_score"] > best else ""
                loss = f", dev loss {logs['eval_loss']:.4f}" if "eval_loss" in logs else ""
                say(f"{where} dev score {logs['eval_score']:.4f}{loss}{flag}", err=True)

    return [*([LoadBestAtEnd()] if load_best else []), *([LogLines()] if progress else [])]


def training_arguments(config: TrainConfig, has_dev: bool, spec: Any) -> Any:
    """The :class:`transformers.TrainingArguments` of ``config`` (``has_dev``: a dev set to evaluate on)."""
    from transformers import TrainingArguments

    evaluating = has_dev and config.eval_each_epoch
    if evaluating and config.save_steps and not config.eval_steps:
        raise ConfigError("save_steps: checkpoints every N steps need eval_each_epoch false (the best-epoch "
                          "selection saves at each evaluation)")
    on_cpu = config.use_cpu or not has_accelerator()
    if config.precision == "fp16" and (on_cpu or not torch.cuda.is_available()):
        raise ConfigError("precision: fp16 needs a CUDA GPU (it uses loss scaling); use fp32, or bf16 on a CPU with bf16 support")
    if on_cpu:
        warn_slow_bf16(config.precision, "cpu")
    by_steps = evaluating and config.eval_steps
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
        eval_strategy="no" if not evaluating else "steps" if by_steps else "epoch",
        eval_steps=config.eval_steps if by_steps else None,
        save_strategy="steps" if by_steps or config.save_steps else "epoch",
        save_steps=(config.eval_steps if by_steps else config.save_steps) or 500,
        save_total_limit=config.save_total_limit,
        save_only_model=not config.save_optimizer,
        load_best_model_at_end=False,  # the LoadBestAtEnd callback does it with our checkpoint loader
        metric_for_best_model="score" if evaluating else None,
        greater_is_better=True if evaluating else None,
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        disable_tqdm=config.progress != "bar",
        report_to="none",
        remove_unused_columns=False,
        label_names=label_names(spec),
        dataloader_num_workers=config.dataloader_num_workers,
        dataloader_drop_last=config.dataloader_drop_last,
        dataloader_pin_memory=config.dataloader_pin_memory,
        use_cpu=on_cpu,
        bf16=config.precision == "bf16",
        fp16=config.precision == "fp16",
        ddp_find_unused_parameters=False,
    )


def close_distributed() -> bool:
    """Destroy the default process group of a torchrun / accelerate run, if one is up; returns whether it was.

    Call it when a script that trained under torchrun is done (the CLI does after a successful command): a
    gloo group left to interpreter shutdown can abort the process (SIGABRT, "terminate called without an active
    exception") after all the work is done."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        return True
    return False


def has_accelerator() -> bool:
    """True when a GPU-like device is present (on CPU-only hosts, torchrun then means gloo DDP on CPU)."""
    probe = getattr(torch, "accelerator", None)
    return bool(probe.is_available()) if probe is not None else torch.cuda.is_available()


def compute_device(use_cpu: bool = False) -> torch.device:
    """The device the Trainer would train on: the current accelerator, or the CPU (``use_cpu`` or none present)."""
    if use_cpu or not has_accelerator():
        return torch.device("cpu")
    probe = getattr(torch, "accelerator", None)
    return torch.device(probe.current_accelerator()) if probe is not None else torch.device("cuda")


def _qa_dev_features(tokenizer: Any, spec: Any, examples: Sequence[Example], config: TrainConfig) -> Any:
    """QA dev windows for evaluation, with the answer positions of training (so the dev loss is computed too)."""
    features = encode(tokenizer, spec, examples, config.max_length, config.doc_stride, for_eval=True)
    positions = encode(tokenizer, spec, examples, config.max_length, config.doc_stride)
    if list(positions["input_ids"]) != list(features["input_ids"]):  # the same windows, or no dev loss
        return features
    return features.add_column("start_positions", list(positions["start_positions"])).add_column(
        "end_positions", list(positions["end_positions"]))


def evaluation_history(log_history: Sequence[dict[str, Any]]) -> list[dict[str, float | None]]:
    """One entry per evaluation in a Trainer log: epoch, step, dev score and dev loss (None when not computed)."""
    return [{"epoch": float(e["epoch"]), "step": int(e["step"]), "score": float(e["eval_score"]),
             "loss": float(e["eval_loss"]) if "eval_loss" in e else None}
            for e in log_history if "eval_score" in e]


def train(adapted: Any, tokenizer: Any, spec: Any, train_examples: Sequence[Example],
          dev_examples: Sequence[Example] | None, config: TrainConfig, *, callbacks: Sequence[Any] = (),
          extra_loss: ExtraLoss | None = None, name: str = "train") -> TrainResult:
    """Train ``adapted`` on ``train_examples``; select the best evaluation on ``dev_examples`` by ``score``.

    Evaluation runs after each epoch, or every ``config.eval_steps`` steps. ``extra_loss(outputs, batch)`` is
    added to the loss of every training batch; ``callbacks`` are ``TrainerCallback`` objects. The best
    checkpoint's weights are loaded back at the end.
    """
    from accelerate.utils import extract_model_from_parallel
    from transformers import PrinterCallback, set_seed

    from ..metrics import compute_metrics

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
            features = _qa_dev_features(tokenizer, spec, dev_examples, config)
            qa_dev = (list(dev_examples), features)
            dev_ds = features.remove_columns(list(QA_EVAL_COLUMNS))
        else:
            dev_ds = encode(tokenizer, spec, dev_examples, config.max_length)

    def metrics_fn(pred: Any) -> dict[str, float]:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        if spec.kind == "multitask":  # per-task metrics and their mean (training.multitask)
            return spec.compute_metrics(logits, pred.label_ids)
        return compute_metrics(spec, logits, pred.label_ids)

    if spec.kind == "regression" and config.regression_bias == "zero" and not config.lp_init:
        from .probing import warn_zero_start

        warn_zero_start(train_examples, adapted.pooled_head is not None)
    if spec.kind == "regression" and config.regression_bias == "mean" and not config.lp_init:
        from .probing import init_regression_bias

        bias = init_regression_bias(adapted, train_examples)
        if config.progress != "none":
            say(f"[{name}] regression head: output bias set to the training labels' mean {bias:.4g}")
    if config.lp_init:
        from .probing import init_head_from_probe

        if spec.kind not in ("classification", "regression"):
            raise ConfigError(f"lp_init: task kind {spec.kind!r}: LP-FT needs a classification or regression head")
        fit = init_head_from_probe(adapted, tokenizer, spec, train_examples, dev_examples or None, config.max_length,
                                   config.eval_batch_size, config.precision, compute_device(config.use_cpu))
        if config.progress != "none":
            say(f"[{name}] LP-FT: head initialised from a linear probe (l2 {fit.l2:g}"
                 + (f", dev score {fit.dev_score:.4f})" if fit.dev_score is not None else ")"))
    callbacks = list(callbacks)
    if config.patience and has_dev:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.patience))
    args = training_arguments(config, has_dev, spec)
    trainer = trainer_class()(
        model=adapted,
        args=args,
        data_collator=collator(tokenizer, spec),
        train_dataset=train_ds,
        eval_dataset=dev_ds,
        compute_metrics=metrics_fn if has_dev and spec.kind != "qa" else None,
        callbacks=[*_callbacks(name, config.progress == "log", args.metric_for_best_model is not None), *callbacks],
        spec=spec,
        extra_loss=extra_loss,
        weight_decay=config.weight_decay,
        qa_dev=qa_dev,
        head_lr=config.head_learning_rate,
    )
    if config.progress != "bar":
        trainer.remove_callback(PrinterCallback)
    main_process = trainer.is_world_process_zero()
    resume_from = resume_point(config.output_dir, config.resume, say=(lambda m: say(m, err=True)) if main_process else None)
    if resume_from is not None:
        check_resume_compatible(resume_from, planned_steps(len(train_ds), config.batch_size, config.epochs,
                                                           args.world_size, config.gradient_accumulation_steps,
                                                           config.dataloader_drop_last), config.epochs, config.batch_size)
        load_checkpoint_weights(adapted, resume_from)  # our checks name the file; the Trainer then loads it too
        if main_process:
            say(f"[{name}] resuming from {resume_from}", err=True)
    start = time.perf_counter()
    cached = False
    if config.cache_frozen_layers:
        from .. import frozen_cache

        if frozen_cache.first_adapted_layer(adapted) > 0:
            frozen_cache.enable(adapted)
            cached = True
        elif config.progress != "none":
            say(f"[{name}] cache_frozen_layers: an adapter sits in layer 0, so no frozen layer runs below it; "
                "training without the cache", err=True)
    try:
        with partial_checkpoints_expected():
            trainer.train(resume_from_checkpoint=resume_from)
    except pickle.UnpicklingError as exc:  # (resuming) rng_state.pth holding more than tensors and numpy arrays
        raise unpickle_refusal(Path(resume_from or config.output_dir) / "rng_state.pth", exc) from None
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "writ" not in str(exc).lower():
            raise
        _drop_partial_checkpoint(config.output_dir, trainer.state.global_step, args.should_save, exc)
        raise
    finally:
        if cached:
            frozen_cache.disable(adapted)
        extract_model_from_parallel(adapted, keep_fp32_wrapper=False)  # no mixed-precision forward left behind
    seconds = time.perf_counter() - start
    state = trainer.state
    history = evaluation_history(state.log_history)
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
    if args.should_save:
        from ..io import atomic_write_json

        atomic_write_json(Path(config.output_dir) / "train_result.json", _jsonable(result))
        if config.cleanup_checkpoints:
            for ckpt in Path(config.output_dir).glob("checkpoint-*"):
                shutil.rmtree(ckpt, ignore_errors=True)
    adapted.eval()
    return result


def _drop_partial_checkpoint(output_dir: str, step: int, should_save: bool, exc: BaseException) -> None:
    """After a write error (a full disk) while training: remove ``checkpoint-STEP`` when it is incomplete, and
    raise an OSError naming it (nothing that looks like a checkpoint is left half-written)."""
    folder = Path(output_dir) / f"checkpoint-{step}"
    if not folder.is_dir() or last_checkpoint(output_dir) == str(folder):
        return  # the error was not in a checkpoint save
    if should_save:
        shutil.rmtree(folder, ignore_errors=True)
    raise OSError(getattr(exc, "errno", None) or errno.EIO,
                  f"{folder}: cannot write the checkpoint ({exc}); the partial checkpoint was removed") from exc


def _jsonable(result: TrainResult) -> dict[str, Any]:
    data = dataclasses.asdict(result)
    return json.loads(json.dumps(data, default=lambda o: float(o) if isinstance(o, (np.floating, np.integer)) else str(o)))
