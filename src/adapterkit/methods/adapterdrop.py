"""AdapterDrop (Rücklé et al., 2021): Pfeiffer adapters whose lowest layers are skipped at random in training.

At every training forward pass, ``n`` is drawn uniformly from ``{0, ..., drop_max_layers}`` with
torch's global RNG (so ``torch.manual_seed`` makes it reproducible) and the adapters of layers
``0 .. n-1`` are skipped. Evaluation uses every adapter, exactly like a Pfeiffer adapter with the same
weights; the saved tensors are a Pfeiffer adapter's. The adapter's modules share one plain
:class:`DropSampler` (not a module, not saved): the lowest layer's module draws ``n`` (layers run
bottom-up), the others read it.

Under DDP the skipped adapters get no gradient in that step, so it needs ``find_unused_parameters``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from ..config import check, opt
from ..errors import ConfigError
from ..registry import register_method
from .base import Attachment, BuildContext
from .bottleneck import Bottleneck, PfeifferConfig, SequentialAdapter


class DropSampler:
    """How many of the lowest layers skip their adapter in the current training forward pass."""

    def __init__(self, max_layers: int) -> None:
        self.max_layers = max_layers
        self.n = 0

    def sample(self) -> int:
        self.n = int(torch.randint(0, self.max_layers + 1, (1,)).item())
        return self.n


class DroppableAdapter(SequentialAdapter):
    """A sequential adapter in layer ``layer`` that is skipped in training when ``layer < sampler.n``."""

    def __init__(self, bottleneck: Bottleneck, layer: int, sampler: DropSampler, draws: bool) -> None:
        super().__init__(bottleneck)
        self.layer = layer
        self.sampler = sampler
        self.draws = draws

    def post(self, args: tuple, kwargs: dict[str, Any], output: torch.Tensor) -> torch.Tensor:
        if self.training:
            if self.draws:
                self.sampler.sample()
            if self.layer < self.sampler.n:
                return output
        return output + self.bottleneck(output)


@register_method
@dataclass
class AdapterDropConfig(PfeifferConfig):
    """Rücklé et al. 2021: Pfeiffer adapters; each training step skips those of the lowest n layers, n random."""

    method: ClassVar[str] = "adapterdrop"
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
        layers = ctx.layer_indices(self.layers)
        size = self.size(ctx.hidden_size)
        out = []
        for i in layers:
            neck = Bottleneck(ctx.hidden_size, size, self.activation, self.init, self.dropout, self.scaling)
            out.append(Attachment(i, "ffn_output", DroppableAdapter(neck, i, sampler, draws=i == layers[0])))
        return out
