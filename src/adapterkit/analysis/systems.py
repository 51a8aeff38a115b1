"""Systems to compare (a method with its fields), one training run with per-epoch dev curves, and the
baselines every table shows: the trivial (majority class / constant) prediction and a frozen linear probe.

A system is written ``NAME`` (a preset or a registered method, ``full`` or ``head``) or
``METHOD:FIELD=VALUE;FIELD=VALUE`` (e.g. ``houlsby:bottleneck_size=128;activation=relu``; commas work
too where the systems are not themselves a comma-separated list).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class System:
    """A named method configuration."""

    name: str
    method: str  # a registered adapter method, "full" or "head"
    fields: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)

    @property
    def train_mode(self) -> str:
        return self.method if self.method in ("full", "head") else "adapters"


PRESETS: dict[str, System] = {
    "houlsby64": System("houlsby64", "houlsby", {"bottleneck_size": 64}),
    "houlsby128": System("houlsby128", "houlsby", {"bottleneck_size": 128}),
    "houlsby256": System("houlsby256", "houlsby", {"bottleneck_size": 256}),
    "full": System("full", "full"),
    "head": System("head", "head"),
}


def parse_system(text: str) -> System:
    """``NAME`` (a preset or a method) or ``METHOD:FIELD=VALUE,...`` (values parsed as JSON when they can be)."""
    text = text.strip()
    if text in PRESETS:
        return PRESETS[text]
    method, _, rest = text.partition(":")
    fields: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.replace(";", ",").split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"systems: {text!r}: expected METHOD:FIELD=VALUE,..., got {item!r}")
        try:
            fields[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            fields[key.strip()] = value
    if method not in ("full", "head"):
        from ..registry import get_method

        get_method(method, "systems").from_dict(fields, f"systems: {text}")  # validates method and fields
    elif fields:
        raise ConfigError(f"systems: {text!r}: {method} has no fields")
    return System(text, method, fields)


def build(system: System, model: str | None, spec: Any, seed: int) -> tuple[Any, Any]:
    """(AdaptedModel with the system's adapter added, tokenizer) on a fresh copy of ``model``."""
    from transformers import set_seed

    from ..model import AdaptedModel, load_base_model
    from ..registry import get_method

    set_seed(seed)
    hf, tokenizer = load_base_model(model, spec.kind, spec.num_labels if spec.kind == "classification" else 1,
                                    spec.id2label or None, ignore_mismatched_sizes=True)  # a new task's head
    adapted = AdaptedModel(hf)
    if system.train_mode == "adapters":
        adapted.add_adapter(system.name, get_method(system.method).from_dict(dict(system.fields), "systems"))
    set_seed(seed)
    return adapted, tokenizer


def epoch_curve(history: Sequence[dict[str, Any]]) -> list[dict[str, float | None]]:
    """Per evaluation (each epoch): epoch, step, dev loss and dev score, from a training result's ``history``."""
    return [{"epoch": float(h["epoch"]), "step": int(h["step"]), "dev_loss": h.get("loss"), "dev_score": h.get("score")}
            for h in history]


def train_system(system: System, spec: Any, data: tuple[list, list, list], *, model: str | None, lr: float,
                 seed: int, epochs: float, batch_size: int, max_length: int, output_dir: str | Path,
                 eval_batch_size: int = 64, precision: str = "fp32", progress: str = "log",
                 backbone_dropout: bool = True, label: str | None = None,
                 head_lr: float | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """Train ``system`` on ``data[0]`` (best epoch on ``data[1]``), score ``data[2]``; returns (model,
    tokenizer, row) with the test score and the per-epoch dev loss and dev score (``curve``). ``head_lr``
    gives the task head its own learning rate (default: ``lr``)."""
    from ..console import say as _say
    from ..training import TrainConfig, evaluate, train
    from ..training import default_doc_stride as _doc_stride

    if lr <= 0:
        raise ConfigError(f"lr: must be > 0, got {lr}")
    if head_lr is not None and head_lr <= 0:
        raise ConfigError(f"head_lr: must be > 0, got {head_lr}")
    train_ex, dev_ex, test_ex = data
    label = label or system.name
    adapted, tokenizer = build(system, model, spec, seed)
    config = TrainConfig(output_dir=str(output_dir), epochs=float(epochs), batch_size=batch_size,
                         eval_batch_size=eval_batch_size, learning_rate=lr, head_learning_rate=head_lr,
                         max_length=max_length, seed=seed, train_mode=system.train_mode, save_total_limit=1,
                         save_optimizer=False, backbone_dropout=backbone_dropout or system.train_mode != "adapters",
                         cleanup_checkpoints=True, progress=progress, precision=precision,
                         logging_steps=max(1, len(train_ex) // batch_size), doc_stride=_doc_stride(max_length))
    result = train(adapted, tokenizer, spec, train_ex, dev_ex or None, config, name=label)
    test = evaluate(adapted, tokenizer, spec, test_ex, eval_batch_size, max_length, _doc_stride(max_length),
                    precision=precision) if test_ex else {}
    counts = adapted.count_parameters()
    tested = f"test {test['score']:.4f} ({spec.metric}); " if test else ""
    _say(f"[{label}] {tested}dev {result.score}; train {result.train_seconds:.0f}s")
    row = {"system": system.name, "method": system.method, "lr": lr, "seed": seed,
           **({"head_lr": head_lr} if head_lr is not None else {}),
           "test_score": test.get("score"), "dev_score": result.score, "best_epoch": result.best_epoch,
           "trainable": counts["total"] if system.method == "full" else result.trainable_parameters,
           "train_seconds": round(result.train_seconds, 2), "curve": epoch_curve(result.history)}
    return adapted, tokenizer, row


# --- baselines ----------------------------------------------------------------------------------------


def first_words_count(train: Sequence[dict]) -> int:
    """The median word count of the training answers (first answer of each question; at least 1)."""
    lengths = [len(a.split()) for ex in train for a in (ex.get("answers") or {}).get("text", [])[:1]] or [1]
    return max(1, int(np.median(lengths)))


def first_words_answers(train: Sequence[dict], examples: Sequence[dict]) -> dict[str, str]:
    """QA's trivial predictor: every question answered with the first n words of its context, n =
    :func:`first_words_count` of ``train``; ``{id: answer}``."""
    n = first_words_count(train)
    return {str(ex["id"]): " ".join(ex["context"].split()[:n]) for ex in examples}


def qa_references(examples: Sequence[dict]) -> dict[str, list[str]]:
    """``{id: [answer texts]}`` of SQuAD-format examples (blank answers left out)."""
    return {str(ex["id"]): [t for t in (ex.get("answers") or {}).get("text", []) if t.strip()] for ex in examples}


def trivial_score(spec: Any, train: Sequence[dict], test: Sequence[dict]) -> float:
    """Test score of the trivial predictor: the majority training class, or (regression) the training mean,
    which a correlation metric scores 0.0 (the library's value for a constant prediction, as in every other
    experiment's majority row), or (QA) the first words of the context (:func:`first_words_answers`)."""
    from ..metrics import compute_metrics

    if spec.kind == "qa":
        return float(compute_metrics(spec, first_words_answers(train, test), qa_references(test))["score"])
    labels = np.asarray([ex["label"] for ex in test])
    if spec.kind == "classification":
        values, counts = np.unique([ex["label"] for ex in train], return_counts=True)
        constant: float = int(values[np.argmax(counts)])
    elif spec.kind == "regression":
        constant = float(np.mean([float(ex["label"]) for ex in train]))
    else:
        raise ConfigError(f"trivial baseline: not defined for {spec.kind} tasks")
    return float(compute_metrics(spec, np.full(len(test), constant), labels)["score"])


def linear_probe_score(spec: Any, model: str | None, train: Sequence[dict], test: Sequence[dict], *,
                       max_length: int = 128, steps: int = 200, l2: float = 1e-3) -> float:
    """Test score of a linear model on frozen, mean-pooled last-layer features of the base model: logistic
    regression (full-batch LBFGS) for classification, ridge regression for regression."""
    return linear_probe_scores(spec, model, train, {"test": test}, max_length=max_length, steps=steps, l2=l2)["test"]


def linear_probe_scores(spec: Any, model: str | None, train: Sequence[dict], tests: dict[str, Sequence[dict]], *,
                        max_length: int = 128, steps: int = 200, l2: float = 1e-3,
                        specs: dict[str, Any] | None = None) -> dict[str, float]:
    """:func:`linear_probe_score` fitted once on ``train`` and scored on each of ``tests`` (e.g. one test set
    per language, each with its own spec in ``specs``)."""
    from ..experiments.common import sentence_features
    from ..metrics import compute_metrics
    from ..model import AdaptedModel, load_base_model

    hf, tokenizer = load_base_model(model, spec.kind, spec.num_labels if spec.kind == "classification" else 1,
                                    spec.id2label or None, ignore_mismatched_sizes=True)  # a new task's head
    adapted = AdaptedModel(hf)
    xs = sentence_features(adapted, tokenizer, spec, list(train), max_length).double()
    mean, std = xs.mean(0), xs.std(0) + 1e-6
    xs = (xs - mean) / std
    y = torch.tensor([ex["label"] for ex in train])
    if spec.kind == "regression":
        a = torch.cat([xs, torch.ones(len(xs), 1, dtype=xs.dtype)], 1)
        w = torch.linalg.solve(a.T @ a + l2 * len(xs) * torch.eye(a.shape[1], dtype=a.dtype), a.T @ y.double())

        def predict(x: torch.Tensor) -> np.ndarray:
            return (torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1) @ w).numpy()
    else:
        weight = torch.zeros(xs.shape[1], spec.num_labels, dtype=xs.dtype, requires_grad=True)
        bias = torch.zeros(spec.num_labels, dtype=xs.dtype, requires_grad=True)
        opt = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(xs @ weight + bias, y.long()) + l2 * weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)

        def predict(x: torch.Tensor) -> np.ndarray:
            with torch.no_grad():
                return (x @ weight + bias).numpy()
    out = {}
    for name, test in tests.items():
        test_spec = (specs or {}).get(name, spec)
        xt = (sentence_features(adapted, tokenizer, test_spec, list(test), max_length).double() - mean) / std
        labels = np.asarray([ex["label"] for ex in test])
        out[name] = float(compute_metrics(test_spec, predict(xt), labels)["score"])
    return out


def low_resource_split(spec: Any, data_dir: Any, size: int | None, seed: int, dev_size: int,
                       test_size: int | None = None) -> tuple[list, list, list]:
    """(train, dev, test): ``dev_size`` examples carved from the training file (seeded), ``size`` examples
    drawn from the rest (all when None), and the official test split (else the official dev split) as test,
    optionally capped at ``test_size`` (seeded)."""
    from ..data.sampling import carve_dev, subsample
    from ..data.tasks import load_task

    if "train" not in spec.splits:
        raise ConfigError(f"tasks: {spec.name}: needs a train split (splits: {list(spec.splits)})")
    test_split = "test" if "test" in spec.splits else "dev"
    if test_split not in spec.splits:
        raise ConfigError(f"tasks: {spec.name}: needs a dev or test split to test on")
    data = load_task(spec, data_dir, ["train", test_split])
    strat = spec.kind == "classification"
    pool, dev = carve_dev(data["train"], dev_size, seed, stratify=strat)
    train = subsample(pool, size, seed, stratify=strat) if size and len(pool) > size else pool
    test = data[test_split]
    if test_size and len(test) > test_size:
        test = subsample(test, test_size, seed, stratify=strat)
    return train, dev, test


def default_lr(system: System, adapter_lr: float, full_lr: float, head_lr: float) -> float:
    """The learning rate of ``system``: full fine-tuning, head-only, or adapter rate."""
    return full_lr if system.method == "full" else head_lr if system.method == "head" else adapter_lr


def full_head_lr(system: System, opts: dict[str, Any]) -> float | None:
    """The head's own rate for full fine-tuning (``opts["full_head_lr"]``), else None: the head trains at the
    system's rate."""
    return opts.get("full_head_lr") if system.method == "full" else None
