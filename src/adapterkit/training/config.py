"""Training options: :class:`TrainConfig` (its fields are also the flags of ``adapterkit train``)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from ..config import check, field_help, opt

PRECISIONS = ("fp32", "bf16", "fp16")
DEFAULT_LEARNING_RATES = {"adapters": 1e-3, "full": 5e-5, "head": 1e-3}
"""The learning rate of each train_mode when none is given (``adapterkit train`` uses the method's own,
``MethodConfig.default_learning_rate``; see the README's "Default learning rates")."""


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
        None, "base learning rate (adapters may set their own); default by train_mode: 1e-3 adapters, 5e-5 full, "
        "1e-3 head (`adapterkit train`: the method's own, see `adapterkit info --list methods`)", aliases=("lr",))
    head_learning_rate: float | None = opt(
        None, "learning rate of the task head (a pooled head, the model's own head, a cls+pooler pooler); null: "
        "learning_rate. Slow methods (prefix tuning at 3e-4) may leave a fresh few-shot head untrained: give it "
        "its own, e.g. 3e-3")
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
    eval_each_epoch: bool = opt(
        True, "evaluate on dev after each epoch (or every eval_steps steps) and keep the best checkpoint (by 'score'); "
        "false: no evaluation")
    eval_steps: int | None = opt(
        None, "evaluate on dev (and save a checkpoint) every N optimizer steps instead of after each epoch")
    save_steps: int | None = opt(
        None, "also save a checkpoint every N optimizer steps (for long epochs: a kill loses at most N steps); "
        "needs no per-epoch evaluation (eval_each_epoch false or no dev set)"
    )
    patience: int | None = opt(
        None, "early stopping: stop after this many evaluations without a better dev score (null: train all epochs)"
    )
    lp_init: bool = opt(
        False,
        "LP-FT: before training, set the pooled head to a logistic-regression probe fitted on the frozen features "
        "of the training set (needs a pooling head, not 'hf')",
    )
    regression_bias: Literal["zero", "mean"] = opt(
        "zero",
        "regression tasks: the pooled head's output bias when training starts: zero, or the mean of the training "
        "labels (the constant prediction, so that the first steps learn the signal, not the offset). Measured on "
        "STS-B (docs/results/unipelt.md): UniPELT 9.5 -> 64.7, 8.9 -> 77.6, 8.8 -> 83.1 Spearman at K=100/500/1000 "
        "and prefix 12.7 -> 77.0 at K=500, but the adapter 75.0 -> 57.5 at K=100 and 81.9 -> 77.6 at K=500 (seed "
        "42). Training warns when a zero start is far from the labels. Ignored with lp_init, which fits the bias too",
    )
    save_total_limit: int | None = opt(2, "checkpoints kept in output_dir (the best one is always kept)")
    resume: bool | Literal["auto"] = opt(False, "true: resume from the last checkpoint in output_dir; 'auto': only when one exists")
    overwrite: bool = opt(
        False, "`adapterkit train`: replace a previous run in output_dir (its results, adapter or model, and "
        "checkpoints); false refuses to train into a directory that holds one (unless resuming)")
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
        "Ampere+ GPUs, emulated and far slower on other CPUs, where it warns) or fp16 (CUDA only, with loss scaling)",
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
        check(math.isfinite(self.epochs), "epochs", f"must be finite, got {self.epochs}")
        check(self.learning_rate > 0 and math.isfinite(self.learning_rate), "learning_rate",
              f"must be a finite number > 0, got {self.learning_rate}")
        check(self.head_learning_rate is None or (self.head_learning_rate > 0 and math.isfinite(self.head_learning_rate)),
              "head_learning_rate", f"must be a finite number > 0 or null, got {self.head_learning_rate}")
        check(isinstance(self.seed, int) and 0 <= self.seed < 2**32, "seed", f"must be in [0, 2**32), got {self.seed}")
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(0 <= self.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        check(self.max_grad_norm >= 0, "max_grad_norm", f"must be >= 0, got {self.max_grad_norm}")
        check(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", "must be >= 1")
        check(self.max_length >= 8, "max_length", f"must be >= 8, got {self.max_length}")
        check(self.doc_stride > 0, "doc_stride", f"must be > 0, got {self.doc_stride}")
        check(self.train_mode in ("adapters", "full", "head"), "train_mode", f"unknown {self.train_mode!r}")
        check(self.save_steps is None or self.save_steps >= 1, "save_steps", f"must be >= 1 or null, got {self.save_steps}")
        check(self.eval_steps is None or self.eval_steps >= 1, "eval_steps", f"must be >= 1 or null, got {self.eval_steps}")
        check(not (self.eval_steps and self.save_steps and self.eval_each_epoch), "save_steps",
              "with eval_steps, checkpoints are saved at every evaluation; leave save_steps unset")
        check(self.save_total_limit is None or self.save_total_limit >= 1, "save_total_limit", "must be >= 1 or null")
        check(self.resume in (True, False, "auto"), "resume", f"use true, false or 'auto', got {self.resume!r}")
        check(self.patience is None or (isinstance(self.patience, int) and self.patience >= 1), "patience",
              f"must be >= 1 or null, got {self.patience!r}")
        check(not (self.patience and not self.eval_each_epoch), "patience", "needs eval_each_epoch true")
        check(isinstance(self.lp_init, bool), "lp_init", f"use true or false, got {self.lp_init!r}")
        check(self.regression_bias in ("zero", "mean"), "regression_bias",
              f"use 'zero' or 'mean', got {self.regression_bias!r}")
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
