"""Bottleneck adapters whose weights a hypernetwork generates per forward pass (shared by PHA and HyperFormer++).

A generated adapter has no weights of its own. Its site module (a :class:`GeneratedParallelAdapter` or
:class:`GeneratedSequentialAdapter`, the bottleneck site modules with the ``delta`` swapped) asks the adapter's
model-level shared module (a :class:`HyperNetShared`) for the weights of its *slot* (one (layer, site) place).
The shared module generates the weights of every slot once per forward pass, from the conditioning vector
of each example (PHA: the task prototype; HyperFormer++: the task embedding), and keeps them in the forward
context (:meth:`~adapterkit.context.ForwardContext.state`), never on a module.

Per-forward inputs, read from the forward context (batch keys that ``AdaptedModel.forward`` moves there):

- ``task_ids``: a LongTensor (batch,) of indices into the config's ``tasks`` (may be left out when the
  config has one task);
- ``prototypes`` (PHA only): a float tensor (batch, prototype_dim) or (prototype_dim,) used instead of the
  task's prototype (few-shot transfer, nearest-prototype retrieval).

Examples with the same conditioning vector share one set of weights: a single-task batch runs plain
``F.linear`` (exactly what an ordinary :class:`~adapterkit.methods.bottleneck.Bottleneck` runs, so a
materialised adapter reproduces it bit for bit), a mixed batch runs batched matmuls with per-example
weights (``x @ W[b]``, as the PHA authors do).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..context import ForwardContext, current
from ..errors import ConfigError
from .base import make_activation
from .bottleneck import ParallelAdapter, SequentialAdapter

FIXED_ACTIVATIONS = ("relu", "gelu", "swish", "silu", "tanh", "identity", "linear")
"""Activations a generated bottleneck may use (no learnable activation: it would not be generated)."""

HEADS = ("weight_down", "bias_down", "weight_up", "bias_up")
NORM_HEADS = ("norm_weight", "norm_bias")


@dataclass(frozen=True)
class Slot:
    """One generated adapter place: a layer, a site and its block type (0 FFN, 1 attention)."""

    layer: int
    site: str
    block: int = 0


class SlotWeights(NamedTuple):
    """Generated weights of one slot for U distinct conditioning vectors (U = 1 for a single-task batch).

    ``index`` (batch,) maps each example to its row of U, or is None when one set serves the whole batch.
    Shapes: down (U, size, hidden) + (U, size); up (U, hidden, size) + (U, hidden); norm (U, hidden) or None.
    """

    down_weight: torch.Tensor
    down_bias: torch.Tensor
    up_weight: torch.Tensor
    up_bias: torch.Tensor
    norm_weight: torch.Tensor | None
    norm_bias: torch.Tensor | None
    index: torch.Tensor | None


def apply_generated(x: torch.Tensor, w: SlotWeights, act: nn.Module, eps: float = 1e-5) -> torch.Tensor:
    """Up(act(Down(x))) with generated weights, then the generated LayerNorm when there is one."""
    if w.index is None:
        h = act(F.linear(x, w.down_weight[0], w.down_bias[0]))
        out = F.linear(h, w.up_weight[0], w.up_bias[0])
        if w.norm_weight is not None:
            out = F.layer_norm(out, out.shape[-1:], w.norm_weight[0], w.norm_bias[0], eps)
        return out
    batch = x.shape[0]
    if w.index.shape[0] != batch:
        raise ConfigError(f"task_ids: {w.index.shape[0]} task ids for a batch of {batch} examples")
    flat = x.reshape(batch, -1, x.shape[-1])
    idx = w.index
    h = act(torch.baddbmm(w.down_bias[idx].unsqueeze(1), flat, w.down_weight[idx].transpose(1, 2)))
    out = torch.baddbmm(w.up_bias[idx].unsqueeze(1), h, w.up_weight[idx].transpose(1, 2))
    if w.norm_weight is not None:
        out = F.layer_norm(out, out.shape[-1:], None, None, eps) * w.norm_weight[idx].unsqueeze(1) \
            + w.norm_bias[idx].unsqueeze(1)
    return out.reshape(*x.shape[:-1], out.shape[-1])


class GeneratedBottleneck(nn.Module):
    """The parameter-free stand-in for a :class:`~adapterkit.methods.bottleneck.Bottleneck`: its weights come
    from the shared hypernetwork (slot ``slot``); made by the factory hook in place of ``Bottleneck``."""

    def __init__(self, slot: int, hidden: int, size: int, activation: str, dropout: float = 0.0) -> None:
        super().__init__()
        self.slot, self.hidden, self.size = slot, hidden, size
        self.act = make_activation(activation, size)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, weights: SlotWeights) -> torch.Tensor:
        return apply_generated(self.dropout(x), weights, self.act)


class _Generated:
    """Mixin: the site module's contribution computed with the weights its shared hypernetwork generated."""

    bottleneck: GeneratedBottleneck

    def delta(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        shared = self.shared_module  # type: ignore[attr-defined]
        return self.bottleneck(x, shared.slot_weights(self.bottleneck.slot))

    def routing_refusal(self) -> str | None:
        return ("its weights are generated per example from the batch's task_ids (mixed tasks in one batch already "
                "work); materialize() a task's adapter to route it")


class GeneratedParallelAdapter(_Generated, ParallelAdapter):
    """A parallel adapter (beside the FFN) with generated weights."""


class GeneratedSequentialAdapter(_Generated, SequentialAdapter):
    """A sequential adapter (after a sublayer's output projection) with generated weights."""


def linear(d_in: int, d_out: int, std: float | None = None) -> nn.Linear:
    """nn.Linear; with ``std``: weights N(0, std), bias 0 (HyperFormer's ``linear_layer``)."""
    layer = nn.Linear(d_in, d_out)
    if std is not None:
        nn.init.normal_(layer.weight, std=std)
        nn.init.zeros_(layer.bias)
    return layer


class HyperNetShared(nn.Module):
    """The model-level module of a generated adapter: a trunk over (condition ++ slot embedding) and heads that
    emit every slot's weights; subclasses say what the condition is (:meth:`conditions`) and embed slots.

    ``tasks`` names the rows of the condition table (``task_ids`` index it).
    """

    norm_eps = 1e-6

    def __init__(self, tasks: tuple[str, ...], slots: list[Slot], hidden: int, size: int, cond_dim: int,
                 slot_dim: int, trunk_hidden: int, trunk_dim: int, norm: bool, init_std: float | None) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.slots = list(slots)
        self.hidden, self.size, self.cond_dim = hidden, size, cond_dim
        self.trunk = nn.Sequential(linear(cond_dim + slot_dim, trunk_hidden, init_std), nn.ReLU(),
                                   linear(trunk_hidden, trunk_dim, init_std), nn.LayerNorm(trunk_dim, eps=self.norm_eps))
        self.weight_down = linear(trunk_dim, size * hidden, init_std)
        self.bias_down = linear(trunk_dim, size, init_std)
        self.weight_up = linear(trunk_dim, hidden * size, init_std)
        self.bias_up = linear(trunk_dim, hidden, init_std)
        self.norm = norm
        if norm:
            self.norm_weight = linear(trunk_dim, hidden, init_std)
            self.norm_bias = linear(trunk_dim, hidden, init_std)

    # -- what subclasses define -------------------------------------------------------------------
    def slot_embeddings(self) -> torch.Tensor:
        """(slots, slot_dim): the embedding of each slot (layer, and block type where used)."""
        raise NotImplementedError

    def condition_table(self) -> torch.Tensor:
        """(tasks, cond_dim): the condition vector of each task."""
        raise NotImplementedError

    def conditions(self, ctx: ForwardContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(U, cond_dim) distinct condition vectors of this batch and the (batch,) row index (None: one row)."""
        ids = self.task_ids(ctx)
        table = self.condition_table()
        if ids is None:
            return table[:1], None
        unique, inverse = torch.unique(ids, return_inverse=True)
        return table[unique], (inverse if unique.numel() > 1 else None)

    # -- shared machinery ----------------------------------------------------------------------------
    def task_ids(self, ctx: ForwardContext | None) -> torch.Tensor | None:
        """The batch's ``task_ids`` (LongTensor on this module's device), validated; None when the batch has
        none and there is only one task (every example is task 0)."""
        ids = ctx.get("task_ids") if ctx is not None else None
        if ids is None:
            if len(self.tasks) == 1:
                return None
            raise ConfigError(f"task_ids: this adapter generates weights for {len(self.tasks)} tasks "
                              f"{list(self.tasks)}; put task_ids (indices into that list) in the batch")
        ids = torch.as_tensor(ids, device=self.weight_down.weight.device)
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise ConfigError(f"task_ids: expected integer task indices, got dtype {ids.dtype}")
        ids = ids.long().reshape(-1)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(self.tasks)):
            bad = sorted({i for i in ids.tolist() if not 0 <= i < len(self.tasks)})
            raise ConfigError(f"task_ids: unknown task ids {bad}; this adapter knows {len(self.tasks)} tasks: "
                              + ", ".join(f"{i}={t}" for i, t in enumerate(self.tasks)))
        return ids

    def task_index(self, task: str | int) -> int:
        """The row of ``task`` (a name or an index) in ``tasks``; ConfigError naming the known tasks."""
        if isinstance(task, int) and not isinstance(task, bool):
            if 0 <= task < len(self.tasks):
                return task
        elif task in self.tasks:
            return self.tasks.index(task)
        raise ConfigError(f"task: {task!r} is not one of this adapter's tasks {list(self.tasks)}")

    def generate(self, cond: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """Every slot's weights for condition vectors ``cond`` (U, cond_dim): per slot (down_w, down_b, up_w,
        up_b[, norm_w, norm_b]) with a leading U dimension."""
        if cond.shape[-1] != self.cond_dim:
            raise ConfigError(f"prototypes: width {cond.shape[-1]}; the hypernetwork takes vectors of width "
                              f"{self.cond_dim}")
        slots = self.slot_embeddings()
        u, s = cond.shape[0], slots.shape[0]
        inputs = torch.cat([cond.unsqueeze(1).expand(u, s, -1), slots.unsqueeze(0).expand(u, s, -1)], dim=-1)
        e = self.trunk(inputs.reshape(u * s, -1))
        h, b = self.hidden, self.size
        parts = [self.weight_down(e).view(u, s, b, h), self.bias_down(e).view(u, s, b),
                 self.weight_up(e).view(u, s, h, b), self.bias_up(e).view(u, s, h)]
        if self.norm:
            parts += [self.norm_weight(e).view(u, s, h), self.norm_bias(e).view(u, s, h)]
        return [tuple(p[:, k] for p in parts) for k in range(s)]

    def slot_weights(self, slot: int) -> SlotWeights:
        """The weights of ``slot`` for the current forward pass (generated on first use, kept in the context)."""
        ctx = current()
        generated = ctx.state(self, "generated") if ctx is not None else None
        if generated is None:
            cond, index = self.conditions(ctx)
            generated = [self._slot(parts, index) for parts in self.generate(cond)]
            if ctx is not None:
                ctx.set_state(self, "generated", generated)
        return generated[slot]

    @staticmethod
    def _slot(parts: tuple[torch.Tensor, ...], index: torch.Tensor | None) -> SlotWeights:
        norm = parts[4:] if len(parts) > 4 else (None, None)
        return SlotWeights(*parts[:4], *norm, index)

    def weights_for(self, cond: torch.Tensor) -> dict[Slot, dict[str, torch.Tensor]]:
        """The generated weights of every slot for one condition vector, detached, as the key -> tensor mapping
        of an ordinary bottleneck (``down.weight``, ``down.bias``, ``up.weight``, ``up.bias``)."""
        with torch.no_grad():
            generated = self.generate(cond.reshape(1, -1))
        out = {}
        for slot, parts in zip(self.slots, generated, strict=True):
            names = ("down.weight", "down.bias", "up.weight", "up.bias", "norm.weight", "norm.bias")
            out[slot] = {n: p[0].detach().clone() for n, p in zip(names, parts, strict=False)}
        return out


def check_shared_tensor(state: dict[str, Any], key: str, expected: tuple[int, ...], source: object, field: str,
                        what: str) -> None:
    """AdapterLoadError naming the file and the config field when saved tensor ``key`` has another shape."""
    from ..errors import AdapterLoadError

    tensor = state.get(key)
    if tensor is not None and tuple(tensor.shape) != tuple(expected):
        prefix = f"{source}: " if source else ""
        raise AdapterLoadError(f"{prefix}{field}: {what}: the saved {key} has shape {tuple(tensor.shape)}, "
                               f"the config gives {tuple(expected)}")
