"""Per-example adapter routing (mixed-adapter batches): which rows of a batch each adapter runs on.

``AdaptedModel.forward(**batch, adapter_names=[...])`` (one adapter name per example, None for the bare
model) builds a :class:`Routing` and puts it in the forward context under :data:`ROUTING`. Every wrapped
module (:class:`~adapterkit.injection.AdaptedModule`) then ignores the active adapters for that call and
runs, for each adapter attached there, that adapter's module on its rows only (``route_pre`` /
``route_post`` of :class:`~adapterkit.injection.AdapterModule`, written in each method's own file). The
model runs once; rows are grouped inside each site module (index-select, then one copy back per site), so
each row gets exactly what a forward with only its adapter active would give it.

This file holds the shared helpers: building and reading the routing, selecting rows, and writing the
rows' new values back.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .context import current

ROUTING = "adapter_routing"
"""Key of the :class:`Routing` in the forward context's inputs (``ctx.get(ROUTING)``)."""
_STATE = object()
"""Owner of this file's per-call state in the forward context."""


@dataclass(frozen=True)
class Routing:
    """One adapter name (or None: the bare model) per example, and the row indices of each adapter.

    ``groups``: (adapter name, rows) in order of first appearance; ``rows`` is a 1-D long tensor on the
    batch's device. Rows with None belong to no group.
    """

    names: tuple[str | None, ...]
    groups: tuple[tuple[str, torch.Tensor], ...]

    @property
    def batch_size(self) -> int:
        return len(self.names)

    @property
    def adapters(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.groups)

    def rows(self, name: str) -> torch.Tensor | None:
        for adapter, rows in self.groups:
            if adapter == name:
                return rows
        return None

    @classmethod
    def build(cls, names: Sequence[str | None], device: torch.device | str | None = None) -> Routing:
        order: dict[str, list[int]] = {}
        for i, name in enumerate(names):
            if name is not None:
                order.setdefault(name, []).append(i)
        groups = tuple((name, torch.tensor(rows, dtype=torch.long, device=device)) for name, rows in order.items())
        return cls(tuple(names), groups)


def current_routing() -> Routing | None:
    """The routing of the forward pass in progress, or None (no ``adapter_names`` given, or outside a forward)."""
    ctx = current()
    return None if ctx is None else ctx.get(ROUTING)


def select(x: Any, rows: torch.Tensor) -> Any:
    """Rows ``rows`` of ``x`` along dimension 0 (a tensor; anything else is returned unchanged)."""
    if isinstance(x, torch.Tensor):
        return x.index_select(0, rows.to(x.device))
    return x


def scatter(base: torch.Tensor, parts: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """A copy of ``base`` with rows ``rows`` replaced by ``values`` for each (rows, values) of ``parts`` (one
    copy of ``base`` in all, whatever the number of parts; autograd flows to ``base``'s other rows and to
    the values)."""
    if not parts:
        return base
    out = base.clone()
    for rows, values in parts:
        out.index_copy_(0, rows.to(out.device), values.to(out.dtype))
    return out


def row_mask(rows: torch.Tensor, length: int | None = None) -> torch.Tensor | None:
    """The 2-D attention mask of rows ``rows`` for a sequence of ``length`` positions, or None when the pass
    has no 2-D mask. When soft prompts were routed in this pass, their per-row mask (prompt positions real,
    the padding that evens out prompt lengths not) is used if it fits ``length``."""
    ctx = current()
    if ctx is None:
        return None
    extended = ctx.state(_STATE, "prompt_mask")
    if extended is not None and length is not None and extended.shape[1] == length:
        return extended.index_select(0, rows.to(extended.device))
    mask = ctx.attention_mask
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        return None
    return mask.index_select(0, rows.to(mask.device))


def set_prompt_mask(mask: torch.Tensor) -> None:
    """Record the 2-D mask of a routed soft-prompt pass (prompt positions real, padding between prompt lengths
    not), so that :func:`row_mask` gives gates the same real positions as a run with one adapter."""
    ctx = current()
    if ctx is not None:
        ctx.set_state(_STATE, "prompt_mask", mask)


def batch_size_of(args: tuple, kwargs: dict[str, Any]) -> int | None:
    """The batch size of a model call (from input_ids, inputs_embeds or the attention mask), or None."""
    for key in ("input_ids", "inputs_embeds", "attention_mask"):
        value = kwargs.get(key)
        if isinstance(value, torch.Tensor) and value.dim() >= 1:
            return int(value.shape[0])
    if args and isinstance(args[0], torch.Tensor) and args[0].dim() >= 1:
        return int(args[0].shape[0])
    return None
