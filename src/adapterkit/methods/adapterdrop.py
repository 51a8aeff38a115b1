"""AdapterDrop (Rücklé et al., 2021): Pfeiffer adapters whose lowest layers are skipped at random in training.

At every training forward pass, ``n`` is drawn uniformly from ``{0, ..., drop_max_layers}`` with
torch's global RNG (so ``torch.manual_seed`` makes it reproducible) and the adapters of layers
``0 .. n-1`` are skipped. Evaluation uses every adapter, exactly like a Pfeiffer adapter with the same
weights; the saved tensors are a Pfeiffer adapter's. The adapter's modules share one plain
:class:`DropSampler` (not a module, not saved); ``n`` lives in the forward context: the first module
to run in a pass (the lowest layer: layers run bottom-up) draws it, the others read it.

Under DDP the skipped adapters get no gradient in that step, so it needs ``find_unused_parameters``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from ..config import check, opt
from ..context import current
from ..errors import ConfigError
from ..registry import register_method
from ..routing import Rows, select
from .base import Attachment, BuildContext
from .bottleneck import Bottleneck, PfeifferConfig, SequentialAdapter


class DropSampler:
    """Draws, once per training forward pass, how many of the lowest layers skip their adapter."""

    def __init__(self, max_layers: int) -> None:
        self.max_layers = max_layers
        self.n = 0
        """The last value drawn (for inspection only; the modules read the forward context's)."""

    def sample(self) -> int:
        self.n = int(torch.randint(0, self.max_layers + 1, (1,)).item())
        return self.n

    def current_n(self) -> int:
        """``n`` of the running forward pass, drawn on first use in it."""
        ctx = current()
        if ctx is None:
            return self.sample()
        return ctx.state(self, "n", self.sample)


class DroppableAdapter(SequentialAdapter):
    """A sequential adapter that is skipped in training when its layer is below the pass's ``n``."""

    def __init__(self, bottleneck: Bottleneck, sampler: DropSampler) -> None:
        super().__init__(bottleneck)
        self.sampler = sampler

    @property
    def layer(self) -> int:
        return self.layer_index

    def post(self, args: tuple, kwargs: dict[str, Any], output: torch.Tensor) -> torch.Tensor:
        if self.training and self.layer_index < self.sampler.current_n():
            return output
        return output + self.bottleneck(output)

    def route_post(self, args: tuple, kwargs: dict[str, Any], output: torch.Tensor, rows: Rows) -> torch.Tensor:
        h = select(output, rows)
        if self.training and self.layer_index < self.sampler.current_n():
            return h
        return h + self.bottleneck(h)


@register_method
@dataclass
class AdapterDropConfig(PfeifferConfig):
    """Rücklé et al. 2021: Pfeiffer adapters; each training step skips those of the lowest n layers, n random."""

    method: ClassVar[str] = "adapterdrop"
    gatable: ClassVar[bool] = False
    placement: Literal["houlsby", "pfeiffer", "parallel"] = opt("pfeiffer", "fixed: pfeiffer")
    drop_max_layers: int | None = opt(
        None, "n is drawn from 0..drop_max_layers at each training step (default: number of layers - 2)"
    )

    def validate(self) -> None:
        super().validate()
        check(self.drop_max_layers is None or self.drop_max_layers >= 0, "drop_max_layers", "must be >= 0 or null")
        check(not getattr(self, "original_ln", False), "original_ln", "not supported by adapterdrop")

    def max_layers(self, num_layers: int) -> int:
        """``drop_max_layers`` resolved for a model with ``num_layers`` layers."""
        if self.drop_max_layers is None:
            return max(0, num_layers - 2)
        if self.drop_max_layers > num_layers:
            raise ConfigError(f"drop_max_layers: {self.drop_max_layers} exceeds the model's {num_layers} layers")
        return self.drop_max_layers

    def build(self, ctx: BuildContext) -> list[Attachment]:
        sampler = DropSampler(self.max_layers(len(ctx.layers)))
        # a Pfeiffer adapter whose sequential modules are droppable (the factory hook)
        droppable = functools.partial(DroppableAdapter, sampler=sampler)
        return super().build(ctx.with_factories({SequentialAdapter: droppable}))
