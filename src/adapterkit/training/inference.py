"""Inference: encode examples, predict logits (optionally under autocast), score classification and QA."""
from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, DataError
from .config import PRECISIONS, default_doc_stride

Example = dict[str, Any]
QA_EVAL_COLUMNS = ("example_id", "offset_mapping")
"""Columns of QA evaluation features that map windows back to examples (not model inputs)."""


def encode(tokenizer: Any, spec: Any, examples: Sequence[Example], max_length: int, doc_stride: int | None = None,
           *, for_eval: bool = False) -> Any:
    """Tokenise ``examples`` for ``spec.kind`` into a ``datasets.Dataset`` (unpadded).

    ``spec.kind == "mlm"`` (an :class:`adapterkit.pretraining.MLMSpec`): ``examples`` are plain texts.
    """
    from ..data import preprocess

    if spec.kind == "qa":
        fn = preprocess.encode_qa_eval if for_eval else preprocess.encode_qa_train
        return fn(tokenizer, examples, max_length=max_length, doc_stride=doc_stride or default_doc_stride(max_length))
    if spec.kind == "multitask":  # a training.multitask.MultiTaskSpec: examples tagged with their task
        return spec.encode(tokenizer, examples, max_length)
    if spec.kind == "mlm":  # examples are plain texts (adapterkit.pretraining)
        return preprocess.encode_mlm(tokenizer, examples, max_length=max_length, packing=spec.packing)
    dtype = "float" if spec.kind == "regression" else "int"
    return preprocess.encode_classification(tokenizer, examples, max_length=max_length, label_dtype=dtype)


def collator(tokenizer: Any, spec: Any = None) -> Any:
    """The batch collator: padding (masked-LM specs: their dynamic-masking collator)."""
    if spec is not None and spec.kind == "mlm":
        return spec.collator(tokenizer)  # dynamic masking, drawn anew for every batch
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer)


def label_names(spec: Any) -> list[str]:
    """The label columns of ``spec``'s kind (QA: the answer span positions)."""
    if spec.kind == "multitask":  # per-task metrics need each example's task
        return ["labels", "task_ids"]
    return ["start_positions", "end_positions"] if spec.kind == "qa" else ["labels"]



# --- evaluation ---------------------------------------------------------------------------------


@functools.cache
def cpu_bf16_native() -> bool | None:
    """Whether oneDNN computes bf16 natively on this CPU (AVX-512 or AMX); None when torch cannot tell."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return None


def warn_slow_bf16(precision: str, device: torch.device | str) -> None:
    """Warn (once per call site) when bf16 autocast runs on a CPU without native bf16: there it is emulated
    (``benchmarks/bench_precision.py`` on an AVX2-only CPU: training steps 22x and inference 7x slower than fp32)."""
    if precision == "bf16" and torch.device(device).type == "cpu" and cpu_bf16_native() is False:
        warnings.warn("precision: bf16 on this CPU (no AVX-512/AMX bf16 in oneDNN) is emulated and far slower "
                      "than fp32 (training steps measured 22x slower on an AVX2-only CPU); use --precision fp32 here",
                      RuntimeWarning, stacklevel=3)


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` ("fp32": none) on ``device``'s type."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: use one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    warn_slow_bf16(precision, device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(torch.device(device).type, dtype=dtype)


@torch.no_grad()
def predict_logits(adapted: nn.Module, tokenizer: Any, dataset: Any, batch_size: int = 64,
                   precision: str = "fp32") -> list[np.ndarray]:
    """Run the model over an encoded dataset (no label columns needed; a ``task_ids`` column is passed on, to the
    forward context); returns one array per output."""
    collate = collator(tokenizer)
    device = next(adapted.parameters()).device
    was_training = adapted.training
    adapted.eval()
    outputs: list[list[np.ndarray]] = []
    names = [c for c in dataset.column_names if c in ("input_ids", "attention_mask", "token_type_ids", "task_ids")]
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
    from ..data.preprocess import encode_qa_eval, postprocess_qa

    if not examples:
        raise ConfigError("examples: nothing to predict")
    features = encode_qa_eval(tokenizer, examples, max_length=max_length,
                              doc_stride=doc_stride or default_doc_stride(max_length))
    start, end = predict_logits(adapted, tokenizer, features, batch_size, precision)
    return postprocess_qa(examples, features, start, end)


def score_qa(spec: Any, examples: Sequence[Example], answers: dict[str, str]) -> dict[str, float] | None:
    """SQuAD metrics of ``answers`` (id -> text) against ``examples``; None when no example has a reference answer."""
    from ..metrics import compute_metrics

    references = qa_references(examples)
    return compute_metrics(spec, answers, references) if any(references.values()) else None


def evaluate(adapted: nn.Module, tokenizer: Any, spec: Any, examples: Sequence[Example], batch_size: int = 64,
             max_length: int = 128, doc_stride: int | None = None, precision: str = "fp32") -> dict[str, float]:
    """Metrics of ``adapted`` on ``examples`` (primary metric under ``"score"``); QA uses SQuAD EM/F1.

    QA examples without any reference answer cannot be scored (DataError); use :func:`predict_qa`.
    """
    from ..metrics import compute_metrics

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
