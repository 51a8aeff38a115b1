"""Per-example adapter routing (mixed-adapter batches): which rows of a batch each adapter runs on.

``AdaptedModel.forward(**batch, adapter_names=[...])`` (one adapter name per example, None for the bare
model) builds a :class:`Routing` and puts it in the forward context under :data:`ROUTING`. Every wrapped
module (:class:`~adapterkit.injection.AdaptedModule`) then ignores the active adapters for that call and
runs, for each adapter attached there, that adapter's module on its rows only (``route_pre`` /
``route_post`` of :class:`~adapterkit.injection.AdapterModule`, written in each method's own file). The
model runs once, on the batch reordered so that each adapter's rows are contiguous (the outputs are put back
in the caller's order); inside each site module an adapter's rows are a view, and the new values of all
groups go back with one copy per site. Each row gets exactly what a forward with only its adapter active
would give it.

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


Rows = slice
"""The rows of one adapter: a contiguous range of the (reordered) batch, so selecting them is a view."""


@dataclass(frozen=True)
class Routing:
    """One adapter name (or None: the bare model) per example, and where each adapter's rows are.

    ``AdaptedModel.forward`` reorders the batch so that each adapter's rows are contiguous (``order``: the
    original row of each position, None when the batch is already grouped) and puts the outputs back in the
    caller's order at the end (``inverse``). ``groups``: (adapter name, rows) in order of first appearance,
    ``rows`` a ``slice`` of the reordered batch; None rows come last and belong to no group.
    """

    names: tuple[str | None, ...]
    groups: tuple[tuple[str, Rows], ...]
    order: torch.Tensor | None = None
    inverse: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return len(self.names)

    @property
    def adapters(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.groups)

    def rows(self, name: str) -> Rows | None:
        """Rows (of the reordered batch) of adapter ``name``, or None."""
        for adapter, rows in self.groups:
            if adapter == name:
                return rows
        return None

    def original_rows(self, name: str) -> list[int]:
        """Rows of the caller's batch that adapter ``name`` runs on."""
        return [i for i, n in enumerate(self.names) if n == name]

    @classmethod
    def build(cls, names: Sequence[str | None], device: torch.device | str | None = None) -> Routing:
        by_name: dict[str, list[int]] = {}
        for i, name in enumerate(names):
            if name is not None:
                by_name.setdefault(name, []).append(i)
        order = [i for rows in by_name.values() for i in rows] + [i for i, n in enumerate(names) if n is None]
        groups, start = [], 0
        for name, rows in by_name.items():
            groups.append((name, slice(start, start + len(rows))))
            start += len(rows)
        if order == list(range(len(names))):
            return cls(tuple(names), tuple(groups))
        perm = torch.tensor(order, dtype=torch.long, device=device)
        return cls(tuple(names), tuple(groups), perm, torch.argsort(perm))

    def reorder(self, value: Any) -> Any:
        """``value`` (a tensor, or tuples / lists / dicts of them) with its batch rows in routing order."""
        return _take(value, self.order, self.batch_size) if self.order is not None else value

    def restore(self, value: Any) -> Any:
        """``value`` (e.g. a model output) with its batch rows back in the caller's order."""
        return _take(value, self.inverse, self.batch_size) if self.inverse is not None else value


def _take(value: Any, index: torch.Tensor, batch: int) -> Any:
    """Rows ``index`` of every tensor in ``value`` whose first dimension is the batch (others unchanged)."""
    if isinstance(value, torch.Tensor):
        if value.dim() >= 1 and value.shape[0] == batch:
            return value.index_select(0, index.to(value.device))
        return value
    if isinstance(value, dict):  # also a transformers ModelOutput: changed in place, keeping its class
        for key in list(value.keys()):
            value[key] = _take(value[key], index, batch)
        return value
    if isinstance(value, (tuple, list)) and not hasattr(value, "_fields"):
        return type(value)(_take(v, index, batch) for v in value)
    reorder = getattr(value, "reorder_cache", None)  # a key/value cache: its batch dimension follows the rows
    if callable(reorder):
        reorder(index)
    return value


def current_routing() -> Routing | None:
    """The routing of the forward pass in progress, or None (no ``adapter_names`` given, or outside a forward)."""
    ctx = current()
    return None if ctx is None else ctx.get(ROUTING)


def select(x: Any, rows: Rows | torch.Tensor) -> Any:
    """Rows ``rows`` of ``x`` along dimension 0 (a view for a slice; anything but a tensor is returned as is)."""
    if not isinstance(x, torch.Tensor):
        return x
    if isinstance(rows, slice):
        return x[rows]
    return x.index_select(0, rows.to(x.device))


def count(rows: Rows | torch.Tensor, batch: int) -> int:
    """Number of rows in ``rows`` (of a batch of ``batch``)."""
    return len(range(batch)[rows]) if isinstance(rows, slice) else int(rows.numel())


def scatter(base: torch.Tensor, parts: Sequence[tuple[Rows | torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """A copy of ``base`` with rows ``rows`` replaced by ``values`` for each (rows, values) of ``parts``, made with
    one copy in all (contiguous row ranges: the segments concatenated); autograd flows to ``base``'s other rows
    and to the values."""
    if not parts:
        return base
    if all(isinstance(rows, slice) for rows, _ in parts):
        segments, at = [], 0
        for rows, values in sorted(parts, key=lambda p: p[0].start or 0):
            start, stop, _ = rows.indices(base.shape[0])
            if start > at:
                segments.append(base[at:start])
            segments.append(values.to(base.dtype))
            at = stop
        if at < base.shape[0]:
            segments.append(base[at:])
        return torch.cat(segments, dim=0)
    out = base.clone()
    for rows, values in parts:
        if isinstance(rows, slice):
            out[rows] = values.to(out.dtype)
        else:
            out.index_copy_(0, rows.to(out.device), values.to(out.dtype))
    return out


def add_rows(base: torch.Tensor, rows: Rows | torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A copy of ``base`` with ``values`` added to rows ``rows``."""
    return scatter(base, [(rows, select(base, rows) + values)])


def stacked(owner: Any, modules: Sequence[torch.nn.Module], build: Any) -> Any:
    """``build()`` (the concatenated weights of ``modules`` for a segmented product), kept on ``owner`` between
    calls while no gradient is recorded and none of the modules' parameters changed (their versions)."""
    if torch.is_grad_enabled():
        return build()
    params = [p for m in modules for p in m.parameters()]
    key = (tuple(id(m) for m in modules), tuple(p._version for p in params), torch.is_inference_mode_enabled())
    cache = owner.__dict__.setdefault("_adapterkit_stacked", {})
    if key not in cache:
        if len(cache) >= 4:
            cache.clear()
        cache[key] = build()
    return cache[key]


def block_scales(groups: Sequence[tuple[Rows, int, float]], batch: int, like: torch.Tensor) -> torch.Tensor:
    """(batch, sum of widths) scales for a batched ("segmented") product over all adapters at once: row block g
    (rows ``rows``) holds ``scale`` in its own ``width`` columns and 0 elsewhere, so multiplying the
    concatenated per-adapter activations by it keeps each row's own adapter only (exact zeros for the others
    and for rows of no adapter). Built once per forward for a given layout (shared by every site)."""
    key = tuple((r.start, r.stop, w, float(sc)) if isinstance(r, slice) else (id(r), w, float(sc)) for r, w, sc in groups)
    ctx = current()
    cache = ctx.state(_STATE, "block_scales", dict) if ctx is not None else {}
    cache_key = (key, batch, like.dtype, like.device)
    if cache_key not in cache:
        total = sum(w for _, w, _ in groups)
        scales = torch.zeros(batch, total, dtype=like.dtype)
        at = 0
        for rows, width, scale in groups:
            scales[rows if isinstance(rows, slice) else rows.cpu(), at : at + width] = scale
            at += width
        cache[cache_key] = scales.to(like.device)
    return cache[cache_key]


def row_mask(rows: Rows | torch.Tensor, length: int | None = None) -> torch.Tensor | None:
    """The 2-D attention mask of rows ``rows`` for a sequence of ``length`` positions, or None when the pass
    has no 2-D mask. When soft prompts were routed in this pass, their per-row mask (prompt positions real,
    the padding that evens out prompt lengths not) is used if it fits ``length``."""
    ctx = current()
    if ctx is None:
        return None
    extended = ctx.state(_STATE, "prompt_mask")
    if extended is not None and length is not None and extended.shape[1] == length:
        return select(extended, rows)
    mask = ctx.attention_mask
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        return None
    return select(mask, rows)


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
