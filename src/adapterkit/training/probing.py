"""Frozen head features of examples, linear probes on them (the ``probe`` baseline) and LP-FT initialisation.

The fitting itself is :func:`adapterkit.heads.fit_linear`; this module feeds it the features the model's
pooled head sees (with the active adapters, no dropout).
"""
from __future__ import annotations

import statistics
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ConfigError
from ..heads import LinearFit, fit_linear
from .inference import autocast, collator, encode


@torch.no_grad()
def example_features(adapted: Any, tokenizer: Any, spec: Any, examples: Sequence[dict[str, Any]], max_length: int,
                     batch_size: int = 64, precision: str = "fp32",
                     device: torch.device | str | None = None) -> torch.Tensor:
    """The pooled head's input features (with the active adapters, no dropout) for ``examples``, in order, as a
    CPU tensor; computed on ``device`` (default: where the model is; the model returns there afterwards)."""
    if adapted.pooled_head is None:
        raise ConfigError("pooling: the model uses its own head (hf); probes and LP-FT need a pooled head "
                          "(pooling cls, cls+pooler, mean, max, ...)")
    dataset = encode(tokenizer, spec, examples, max_length)
    names = [c for c in dataset.column_names if c in ("input_ids", "attention_mask", "token_type_ids")]
    rows = dataset.select_columns(names).to_list()
    collate = collator(tokenizer, spec)
    home = next(adapted.parameters()).device
    device = torch.device(device) if device is not None else home
    was_training = adapted.training
    adapted.eval()
    out = []
    try:
        adapted.to(device)
        for i in range(0, len(rows), batch_size):
            batch = collate(rows[i: i + batch_size])
            with autocast(precision, device):
                out.append(adapted.pooled_features(**{k: v.to(device) for k, v in batch.items()}).float().cpu())
    finally:
        adapted.to(home)
        adapted.train(was_training)
    return torch.cat(out)


def _targets(spec: Any, examples: Sequence[dict[str, Any]]) -> torch.Tensor:
    values = [ex["label"] for ex in examples]
    return torch.tensor(values, dtype=torch.float64 if spec.kind == "regression" else torch.long)


def probe_fit(adapted: Any, tokenizer: Any, spec: Any, train: Sequence[dict[str, Any]],
              dev: Sequence[dict[str, Any]] | None, max_length: int, batch_size: int = 64,
              precision: str = "fp32", device: torch.device | str | None = None) -> LinearFit:
    """A linear probe on ``adapted``'s frozen head features of ``train`` (L2 strength chosen on ``dev``);
    features computed on ``device`` (see :func:`example_features`)."""
    from ..metrics import compute_metrics

    if spec.kind not in ("classification", "regression"):
        raise ConfigError(f"probe: task kind {spec.kind!r}: probes need classification or regression")
    regression = spec.kind == "regression"
    x = example_features(adapted, tokenizer, spec, train, max_length, batch_size, precision, device)
    dev_x = dev_y = None
    if dev:
        dev_x = example_features(adapted, tokenizer, spec, dev, max_length, batch_size, precision, device)
        dev_y = _targets(spec, dev)

    def score(logits: torch.Tensor, labels: torch.Tensor) -> float:
        return float(compute_metrics(spec, logits.numpy(), labels.numpy())["score"])

    num_outputs = 1 if regression else int(adapted.model.config.num_labels)
    return fit_linear(x, _targets(spec, train), num_outputs, regression=regression, dev_x=dev_x, dev_y=dev_y,
                      score_fn=score)


def init_regression_bias(adapted: Any, train: Sequence[dict[str, Any]]) -> float:
    """Set the pooled regression head's output bias to the mean of ``train``'s labels (the constant prediction,
    ``TrainConfig.regression_bias = "mean"``); returns it."""
    if adapted.pooled_head is None:
        raise ConfigError("regression_bias: 'mean' needs a pooled head (pooling cls, mean, ...), not the model's own "
                          "(hf); use regression_bias 'zero' or another pooling")
    if not train:
        raise ConfigError("regression_bias: 'mean' needs training examples")
    return fill_bias_with_label_mean(adapted.pooled_head.classifier, train)


def warn_zero_start(train: Sequence[dict[str, Any]], pooled: bool) -> None:
    """Warn when a regression head starts at 0 far from its labels (mean more than one std away): the first steps
    then fit the offset, and gated or prefix adapters can settle on the constant prediction (STS-B, labels 0-5:
    UniPELT 8.8 against 83.1 Spearman at K=1000, prefix 12.7 against 77.0 at K=500; docs/results/unipelt.md)."""
    labels = [float(ex["label"]) for ex in train]
    if len(labels) < 2:
        return
    mean, std = statistics.fmean(labels), statistics.stdev(labels)
    if abs(mean) > max(std, 1e-12):
        fix = "--regression-bias mean (TrainConfig.regression_bias='mean')" if pooled else \
            "a pooled head (--pooling mean or cls) with --regression-bias mean"
        warnings.warn(f"regression_bias: the head starts at 0 but the training labels' mean is {mean:.3g} (std "
                      f"{std:.3g}); some methods then stall at the constant prediction (UniPELT and prefix tuning on "
                      f"STS-B); consider {fix}", RuntimeWarning, stacklevel=3)


def fill_bias_with_label_mean(linear: torch.nn.Linear, examples: Sequence[dict[str, Any]]) -> float:
    """Set ``linear``'s bias to the mean label of ``examples`` (non-empty); returns it."""
    mean = float(sum(float(ex["label"]) for ex in examples) / len(examples))
    with torch.no_grad():
        linear.bias.fill_(mean)
    return mean


def init_head_from_probe(adapted: Any, tokenizer: Any, spec: Any, train: Sequence[dict[str, Any]],
                         dev: Sequence[dict[str, Any]] | None, max_length: int, batch_size: int = 64,
                         precision: str = "fp32", device: torch.device | str | None = None) -> LinearFit:
    """LP-FT: set the pooled head's linear layer to a probe fitted on the current (frozen) features."""
    fit = probe_fit(adapted, tokenizer, spec, train, dev, max_length, batch_size, precision, device)
    linear = adapted.pooled_head.classifier
    with torch.no_grad():
        linear.weight.copy_(fit.weight.to(linear.weight))
        linear.bias.copy_(fit.bias.to(linear.bias))
    return fit
