"""One Trainer-based training path for every method: adapters, full fine-tuning, or the head only.

:func:`train` wraps Hugging Face :class:`transformers.Trainer` with what adapters need: an optimizer
built from :meth:`AdaptedModel.parameter_groups` (per-adapter learning rates), small checkpoints
(only the trainable tensors unless the whole model trains), best-checkpoint selection on the task's
primary metric (``"score"``) after each epoch or every ``eval_steps`` steps, dev loss and score of
every evaluation in ``TrainResult.history``, resume after a kill, an ``extra_loss`` hook for auxiliary
losses and ordinary ``TrainerCallback`` objects. It runs unchanged under ``torchrun`` / ``accelerate launch``.

The package is split by job: :mod:`.config` (``TrainConfig``), :mod:`.checkpoints`, :mod:`.trainer`
(``train``), :mod:`.inference` (``evaluate``, ``predict_qa``, ``predict_logits``) and :mod:`.probing` (frozen
head features, linear probes, LP-FT).
"""
from __future__ import annotations

from .checkpoints import (
    CHECKPOINT_INFO_NAME,
    FULL_NAME,
    INDEX_NAME,
    TRAINABLE_NAME,
    last_checkpoint,
    load_checkpoint_weights,
    resume_point,
    save_checkpoint_weights,
    trainable_state_dict,
)
from .config import DEFAULT_LEARNING_RATES, PRECISIONS, TrainConfig, default_doc_stride
from .inference import (
    Example,
    autocast,
    collator,
    encode,
    evaluate,
    has_qa_references,
    label_names,
    predict_logits,
    predict_qa,
    qa_references,
    score_qa,
    steps_per_epoch,
)
from .probing import example_features, init_head_from_probe, init_regression_bias, probe_fit
from .trainer import (
    ExtraLoss,
    TrainResult,
    close_distributed,
    compute_device,
    evaluation_history,
    has_accelerator,
    train,
    trainer_class,
    training_arguments,
)

__all__ = [
    "CHECKPOINT_INFO_NAME", "DEFAULT_LEARNING_RATES", "FULL_NAME", "INDEX_NAME", "PRECISIONS", "TRAINABLE_NAME",
    "Example", "ExtraLoss", "TrainConfig", "TrainResult", "autocast", "close_distributed", "collator", "compute_device", "default_doc_stride", "encode",
    "evaluate", "evaluation_history", "example_features", "has_accelerator", "init_head_from_probe", "init_regression_bias", "probe_fit", "has_qa_references", "label_names", "last_checkpoint",
    "load_checkpoint_weights", "predict_logits", "predict_qa", "qa_references", "resume_point",
    "save_checkpoint_weights", "score_qa", "steps_per_epoch", "train", "trainable_state_dict", "trainer_class",
    "training_arguments",
]
