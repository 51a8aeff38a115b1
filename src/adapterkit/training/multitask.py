"""Multi-task training on the one training path: several tasks, one run, a head per task, ``task_ids`` per example.

A :class:`MultiTaskSpec` names the tasks (their order gives the task ids 0..T-1 that every batch carries as
``task_ids``; adapters that depend on the task, such as generated adapters, read them from the forward
context). :func:`train_multitask` mixes the tasks' training examples, trains through
:func:`adapterkit.training.train` (so checkpoints, resume, callbacks and ``extra_loss`` are the usual
ones), evaluates every task's dev set at each evaluation and keeps the checkpoint with the best *mean*
dev score over tasks. :func:`evaluate_tasks` scores each task's test set.

Mixing (:func:`mix_tasks`): with ``temperature`` 1 every training example appears once per epoch and the
Trainer's random sampler shuffles them, so tasks are mixed in proportion to their sizes and batches hold
several tasks (what PHA's contrastive losses need; the authors' code trains this way). With
``temperature`` T > 1 the epoch is redrawn once (seeded) so that task i has a share
``n_i ** (1/T) / sum_j n_j ** (1/T)`` of the same total (small tasks repeated, large ones cut), as in
HyperFormer's temperature sampling; the draw is fixed for the run (it does not change between epochs).

Heads (:class:`MultiTaskHead`): pooling as the model's own head (mean for the bundled MiniLM), then one
linear layer per task; ``heads="shared_labels"`` gives tasks with the same kind and the same label names
one shared layer. Logits of a batch are padded to the widest head (padding -1e4); a task's metric reads
its own columns. The loss of a batch is the mean over its examples of each example's own task loss
(cross-entropy, or mean squared error for regression).
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..console import say
from ..errors import ConfigError, DataError
from .config import TrainConfig

Example = dict[str, Any]
TASK_KEY = "task"
"""The field of a mixed example that names its task."""
PAD_LOGIT = -1e4
HEAD_SHARING = ("per_task", "shared_labels")


@dataclass(frozen=True)
class MultiTaskSpec:
    """Several classification/regression tasks trained together; ``tasks[i]`` has task id ``i``."""

    tasks: tuple[Any, ...]
    kind: str = "multitask"
    metric: str = "mean"
    labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ConfigError("tasks: a multi-task run needs at least one task")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ConfigError(f"tasks: {names}: a task is named twice")
        for t in self.tasks:
            if t.kind not in ("classification", "regression"):
                raise ConfigError(f"tasks: {t.name}: kind {t.kind!r}: multi-task training takes classification and "
                                  "regression tasks")

    @property
    def name(self) -> str:
        return "+".join(self.names)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def num_labels(self) -> int:
        return max(self.outputs(t) for t in self.tasks)

    @property
    def id2label(self) -> None:
        return None

    def task_id(self, name: str) -> int:
        """The id of task ``name``; an unknown name is an error listing the known ones."""
        try:
            return self.names.index(name)
        except ValueError:
            raise ConfigError(f"task: {name!r}: not one of this run's tasks {self.names}") from None

    @staticmethod
    def outputs(task: Any) -> int:
        """Outputs of ``task``'s head: its number of labels, 1 for regression."""
        return 1 if task.kind == "regression" else len(task.labels or ()) or 2

    def head_groups(self, sharing: str = "per_task") -> list[int]:
        """Head index of each task: one per task, or (``shared_labels``) one per distinct (kind, labels)."""
        if sharing not in HEAD_SHARING:
            raise ConfigError(f"heads: {sharing!r}: use one of {list(HEAD_SHARING)}")
        if sharing == "per_task":
            return list(range(len(self.tasks)))
        keys: dict[tuple, int] = {}
        return [keys.setdefault((t.kind, tuple(t.labels or ())), len(keys)) for t in self.tasks]

    # -- used by training.encode / training.train --------------------------------------------------
    def encode(self, tokenizer: Any, examples: Sequence[Example], max_length: int) -> Any:
        """Tokenise mixed examples (each with a ``task`` field) task by task; columns as for one task, labels as
        floats, plus ``task_ids``; the order of ``examples`` is kept."""
        import datasets

        from ..data.preprocess import encode_classification

        by_task: dict[int, list[int]] = {}
        for i, ex in enumerate(examples):
            if TASK_KEY not in ex:
                raise DataError(f"multi-task examples: example {i} has no {TASK_KEY!r} field naming its task")
            by_task.setdefault(self.task_id(ex[TASK_KEY]), []).append(i)
        rows: list[dict[str, Any] | None] = [None] * len(examples)
        for tid, idx in by_task.items():
            part = encode_classification(tokenizer, [examples[i] for i in idx], max_length, label_dtype="float")
            for i, row in zip(idx, part.to_list(), strict=True):
                row["task_ids"] = tid
                rows[i] = row
        columns = {key: [r.get(key) for r in rows] for key in rows[0]}
        return datasets.Dataset.from_dict(columns)

    def compute_metrics(self, logits: Any, label_ids: Any) -> dict[str, float]:
        """Per-task metrics (``TASK_METRIC``, ``TASK_score``) from mixed logits and ``(labels, task_ids)``, and
        ``score``: the mean of the tasks' scores (a NaN score, e.g. a correlation of constant predictions,
        counts as 0)."""
        labels, task_ids = label_ids
        return task_metrics(self, np.asarray(logits), np.asarray(labels), np.asarray(task_ids))


def task_metrics(spec: MultiTaskSpec, logits: np.ndarray, labels: np.ndarray, task_ids: np.ndarray
                 ) -> dict[str, float]:
    """See :meth:`MultiTaskSpec.compute_metrics`; tasks absent from ``task_ids`` are left out of the mean."""
    from ..metrics import compute_metrics

    out: dict[str, float] = {}
    scores = []
    task_ids = task_ids.reshape(-1).astype(int)
    for tid, task in enumerate(spec.tasks):
        mask = task_ids == tid
        if not mask.any():
            continue
        width = spec.outputs(task)
        y = labels.reshape(-1)[mask]
        part = logits[mask][:, :width]
        if task.kind == "regression":
            part = part[:, 0]
        else:
            y = y.astype(int)
        metrics = compute_metrics(task, part, y)
        for key, value in metrics.items():
            out[f"{task.name}_{key}"] = float(value)
        scores.append(0.0 if math.isnan(metrics["score"]) else float(metrics["score"]))
    out["score"] = float(np.mean(scores)) if scores else float("nan")
    return out


# --- mixing ---------------------------------------------------------------------------------------


def tag(examples: Sequence[Example], task: str) -> list[Example]:
    """Copies of ``examples`` with ``task`` set to the task's name."""
    return [{**ex, TASK_KEY: task} for ex in examples]


def mix_tasks(examples: dict[str, Sequence[Example]], temperature: float = 1.0, seed: int = 0) -> list[Example]:
    """The training examples of every task, tagged with their task, as one list (see the module docstring).

    ``temperature`` 1: all examples once (proportional mixing). T > 1: the same total, task i getting
    ``round(N * p_i)`` examples with ``p_i ∝ n_i ** (1/T)`` (whole passes over a task's shuffled examples,
    then a part of one more).
    """
    from ..data.sampling import temperature_sample_weights

    if not examples:
        raise ConfigError("tasks: no training examples given")
    empty = [name for name, exs in examples.items() if not exs]
    if empty:
        raise DataError(f"train: task {empty[0]!r} has no training examples")
    if temperature == 1.0:
        return [ex for name, exs in examples.items() for ex in tag(exs, name)]
    sizes = {name: len(exs) for name, exs in examples.items()}
    weights = temperature_sample_weights(sizes, temperature)
    total = sum(sizes.values())
    exact = {name: total * w for name, w in weights.items()}
    counts = {name: math.floor(v) for name, v in exact.items()}
    for name in sorted(exact, key=lambda n: -(exact[n] - counts[n]))[: total - sum(counts.values())]:
        counts[name] += 1
    rng = random.Random(seed)
    out: list[Example] = []
    for name, exs in examples.items():
        need, pool = counts[name], list(range(len(exs)))
        chosen: list[int] = []
        while len(chosen) < need:
            rng.shuffle(pool)
            chosen.extend(pool[: need - len(chosen)])
        out.extend(tag([exs[i] for i in sorted(chosen)], name))
    return out


# --- heads ----------------------------------------------------------------------------------------


class MultiTaskHead(nn.Module):
    """Pooling as the model's head, then the linear layer of each example's task (routed by ``task_ids``)."""

    def __init__(self, config: Any, hidden_size: int, spec: MultiTaskSpec, sharing: str = "per_task",
                 dropout: float = 0.1, init_std: float = 0.02) -> None:
        from ..heads import POOLINGS

        super().__init__()
        if config.pooling not in POOLINGS[1:]:
            raise ConfigError(f"pooling: {config.pooling!r}: a multi-task head needs a concrete pooling, not auto/hf")
        self.config = config
        self.spec = spec
        self.sharing = sharing
        self.groups = spec.head_groups(sharing)
        self.widths = [spec.outputs(t) for t in spec.tasks]
        self.dropout = nn.Dropout(dropout)
        width_of = {}
        for tid, group in enumerate(self.groups):
            width_of[group] = self.widths[tid]
        self.classifiers = nn.ModuleList(nn.Linear(hidden_size, width_of[g]) for g in range(len(width_of)))
        for layer in self.classifiers:
            nn.init.normal_(layer.weight, std=init_std)
            nn.init.zeros_(layer.bias)

    def features(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None,
                 pooler: nn.Module | None = None) -> torch.Tensor:
        from ..heads import pool

        x = pool(hidden, attention_mask, self.config.pooling, pooler)
        if self.config.normalize:
            x = nn.functional.normalize(x.float(), dim=-1).to(x.dtype)
        return x

    def task_ids(self, batch: int, device: torch.device) -> torch.Tensor:
        """This forward pass's task ids (from the forward context), checked."""
        from ..context import current

        ctx = current()
        ids = ctx.get("task_ids") if ctx is not None else None
        if ids is None:
            raise ConfigError(f"task_ids: a multi-task head ({', '.join(self.spec.names)}) needs the batch's "
                              "task_ids (training.multitask encodes them)")
        ids = torch.as_tensor(ids, device=device).long().reshape(-1)
        if ids.numel() == 1 and batch > 1:
            ids = ids.expand(batch)
        bad = ids[(ids < 0) | (ids >= len(self.groups))]
        if bad.numel():
            raise ConfigError(f"task_ids: {int(bad[0])} is not a task id of this head (0..{len(self.groups) - 1}: "
                              f"{self.spec.names})")
        return ids

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.dropout(features)
        ids = self.task_ids(x.shape[0], x.device)
        out = x.new_full((x.shape[0], max(self.widths)), PAD_LOGIT)
        for tid in ids.unique().tolist():
            rows = ids == tid
            layer = self.classifiers[self.groups[tid]]
            out[rows, : self.widths[tid]] = layer(x[rows]).to(out.dtype)
        return out

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean over the batch of each example's task loss (cross-entropy; regression: squared error)."""
        ids = self.task_ids(logits.shape[0], logits.device)
        total = logits.new_zeros((), dtype=torch.float32)
        for tid in ids.unique().tolist():
            rows = ids == tid
            task = self.spec.tasks[tid]
            part = logits[rows, : self.widths[tid]].float()
            if task.kind == "regression":
                total = total + nn.functional.mse_loss(part[:, 0], labels[rows].float(), reduction="sum")
            else:
                total = total + nn.functional.cross_entropy(part, labels[rows].long(), reduction="sum")
        return total / max(1, logits.shape[0])


def add_task_heads(adapted: Any, spec: MultiTaskSpec, sharing: str = "per_task") -> MultiTaskHead:
    """Give ``adapted`` a :class:`MultiTaskHead` for ``spec``'s tasks, pooled as its current head (the model's own
    ``hf`` head becomes [CLS] through the pooler where there is one); it replaces the single-task head."""
    from ..heads import own_head_config

    config = adapted.head_config
    if config.pooling == "hf":
        config = own_head_config(adapted.model)
    adapted.set_head(config)  # the pooled-head bookkeeping (pooler parameters for cls+pooler, train mode)
    cfg = adapted.model.config
    dropout = getattr(cfg, "classifier_dropout", None) or getattr(cfg, "hidden_dropout_prob", None) or 0.1
    head = MultiTaskHead(config, adapted.build_context().hidden_size, spec, sharing, float(dropout),
                         float(getattr(cfg, "initializer_range", 0.02) or 0.02))
    adapted.pooled_head = head.to(device=next(adapted.model.parameters()).device)
    adapted.set_train_mode(adapted.train_mode)
    return head


# --- training and evaluation ----------------------------------------------------------------------


def train_multitask(adapted: Any, tokenizer: Any, spec: MultiTaskSpec, train: dict[str, Sequence[Example]],
                    dev: dict[str, Sequence[Example]] | None, config: TrainConfig, *, temperature: float = 1.0,
                    callbacks: Sequence[Any] = (), extra_loss: Any = None, name: str = "multitask") -> Any:
    """Train ``adapted`` (which has task heads, :func:`add_task_heads`) on every task of ``spec`` at once.

    ``train`` / ``dev``: task name -> examples. Dev scores are per task (``TASK_score`` in the history's log)
    and their mean (``score``) selects the best checkpoint. ``config.lp_init``: each task head starts as a
    linear probe on the current features (:func:`init_heads_from_probes`). Returns the :class:`TrainResult` of
    :func:`adapterkit.training.train`.
    """
    from .trainer import train as train_one

    if not isinstance(adapted.pooled_head, MultiTaskHead):
        raise ConfigError("pooled_head: call training.multitask.add_task_heads(adapted, spec) before training")
    for name_ in [*train, *(dev or {})]:
        spec.task_id(name_)
    if config.lp_init:
        init_heads_from_probes(adapted, tokenizer, spec, train, dev, config)
        config = config.replace(lp_init=False)
    elif config.regression_bias == "mean":
        for names, bias in init_regression_biases(adapted, spec, train).items():
            if config.progress != "none":
                say(f"[{name}] regression head {names}: output bias set to the training labels' mean {bias:.4g}")
    mixed = mix_tasks({t: train[t] for t in spec.names if t in train}, temperature, config.seed)
    dev_mixed = [ex for t in spec.names for ex in tag((dev or {}).get(t) or [], t)]
    return train_one(adapted, tokenizer, spec, mixed, dev_mixed or None, config, callbacks=callbacks,
                     extra_loss=extra_loss, name=name)


def init_regression_biases(adapted: Any, spec: MultiTaskSpec, train: dict[str, Sequence[Example]]
                           ) -> dict[str, float]:
    """``regression_bias = "mean"`` for task heads: each regression head's output bias becomes the mean of its
    tasks' training labels (tasks sharing a head are pooled). Returns head (task names joined by ``+``) -> bias."""
    from .probing import fill_bias_with_label_mean

    head = adapted.pooled_head
    means: dict[str, float] = {}
    for group in sorted(set(head.groups)):
        tasks = [t for tid, t in enumerate(spec.tasks) if head.groups[tid] == group and t.kind == "regression"]
        examples = [ex for t in tasks for ex in train.get(t.name) or []]
        if examples:
            means["+".join(t.name for t in tasks)] = fill_bias_with_label_mean(head.classifiers[group], examples)
    return means


def init_heads_from_probes(adapted: Any, tokenizer: Any, spec: MultiTaskSpec, train: dict[str, Sequence[Example]],
                           dev: dict[str, Sequence[Example]] | None, config: TrainConfig) -> dict[str, float]:
    """LP-FT for task heads: set each task's linear layer to a probe (logistic / ridge regression, L2 strength
    chosen on the task's dev set) fitted on the current features of its training examples. Tasks sharing a
    layer are fitted together. Returns head index -> chosen L2 strength."""
    from ..heads import fit_linear
    from ..metrics import compute_metrics

    head = adapted.pooled_head
    chosen: dict[str, float] = {}
    for group in sorted(set(head.groups)):
        tasks = [t for tid, t in enumerate(spec.tasks) if head.groups[tid] == group and train.get(t.name)]
        if not tasks:
            continue
        first = tasks[0]

        def features(split: dict[str, Sequence[Example]] | None, tasks: list = tasks) -> tuple[Any, Any] | None:
            exs = [(t, ex) for t in tasks for ex in (split or {}).get(t.name) or []]
            if not exs:
                return None
            x = torch.cat([task_features(adapted, tokenizer, spec, t.name, [ex for u, ex in exs if u is t], config)
                           for t in tasks if any(u is t for u, _ in exs)])
            y = torch.tensor([float(ex["label"]) for _, ex in exs])
            return x, y

        train_xy, dev_xy = features(train), features(dev)
        regression = first.kind == "regression"

        def score(logits: torch.Tensor, labels: torch.Tensor, task: Any = first, regression: bool = regression) -> float:
            out = logits[:, 0] if regression else logits
            value = compute_metrics(task, out.numpy(), labels.numpy() if regression else labels.long().numpy())["score"]
            return -1.0 if value != value else float(value)

        fit = fit_linear(train_xy[0], train_xy[1] if regression else train_xy[1].long(), spec.outputs(first),
                         regression=regression, dev_x=dev_xy[0] if dev_xy else None,
                         dev_y=(dev_xy[1] if regression else dev_xy[1].long()) if dev_xy else None, score_fn=score)
        layer = head.classifiers[group]
        with torch.no_grad():
            layer.weight.copy_(fit.weight.to(layer.weight))
            layer.bias.copy_(fit.bias.reshape(layer.bias.shape).to(layer.bias))
        chosen["+".join(t.name for t in tasks)] = fit.l2
    return chosen


@torch.no_grad()
def task_features(adapted: Any, tokenizer: Any, spec: MultiTaskSpec, task: str, examples: Sequence[Example],
                  config: TrainConfig) -> torch.Tensor:
    """The vectors the task heads see for ``examples`` of ``task`` (its task id in the batch, no dropout)."""
    from .inference import autocast, collator

    dataset = spec.encode(tokenizer, tag(examples, task), config.max_length)
    names = [c for c in dataset.column_names if c in ("input_ids", "attention_mask", "token_type_ids", "task_ids")]
    rows = dataset.select_columns(names).to_list()
    collate = collator(tokenizer)
    device = next(adapted.parameters()).device
    was_training = adapted.training
    adapted.eval()
    out = []
    try:
        for i in range(0, len(rows), config.eval_batch_size):
            batch = collate(rows[i: i + config.eval_batch_size])
            with autocast(config.precision, device):
                out.append(adapted.pooled_features(**{k: v.to(device) for k, v in batch.items()}).float().cpu())
    finally:
        adapted.train(was_training)
    return torch.cat(out)


def evaluate_tasks(adapted: Any, tokenizer: Any, spec: MultiTaskSpec, examples: dict[str, Sequence[Example]],
                   config: TrainConfig) -> dict[str, dict[str, float]]:
    """Task name -> metrics (primary metric under ``score``) of ``adapted`` on that task's ``examples``."""
    from .inference import predict_logits

    out = {}
    for task in spec.tasks:
        exs = examples.get(task.name)
        if not exs:
            continue
        dataset = spec.encode(tokenizer, tag(exs, task.name), config.max_length)
        (logits,) = predict_logits(adapted, tokenizer, dataset, config.eval_batch_size, config.precision)
        metrics = task_metrics(MultiTaskSpec((task,)), logits[:, : spec.outputs(task)],
                               np.asarray(dataset["labels"]), np.zeros(len(exs), dtype=int))
        out[task.name] = {k.removeprefix(f"{task.name}_"): v for k, v in metrics.items() if k != "score"}
    return out

