"""Bottleneck adapters: Houlsby (after attention and FFN), Pfeiffer (after FFN), parallel (beside FFN).

A bottleneck maps h -> Up(act(Down(h))). Sequential adapters return h + s * bottleneck(h) at the
sublayer's output projection; parallel adapters add s * bottleneck(x) of the FFN *input* x to the FFN
output, before the layer's residual and normalisation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MethodConfig, check, opt
from ..injection import AdapterModule
from ..registry import register_method
from .base import ACTIVATIONS, Attachment, BuildContext, make_activation


class Bottleneck(nn.Module):
    """Down-project, activate, up-project; ``identity`` init zeroes Up so the adapter starts as a no-op."""

    def __init__(self, hidden: int, size: int, activation: str, init: str, dropout: float, scaling: float) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.act = make_activation(activation, size)
        self.up = nn.Linear(size, hidden)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = scaling
        if init == "identity":
            nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)
        else:  # near_identity (Houlsby et al. 2019): small weights, so the adapter is close to a no-op
            for lin in (self.down, self.up):
                nn.init.normal_(lin.weight, std=1e-2)
                nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.down(self.dropout(x)))
        if self.scaling == 1.0:
            return self.up(h)
        return F.linear(h, self.up.weight * self.scaling, self.up.bias * self.scaling)  # scale the small weights


class SequentialAdapter(AdapterModule):
    """h -> h + s * Up(act(Down(h))) on the wrapped projection's output."""

    def __init__(self, bottleneck: Bottleneck) -> None:
        super().__init__()
        self.bottleneck = bottleneck

    def post(self, args: tuple, kwargs: dict[str, Any], output: torch.Tensor) -> torch.Tensor:
        return output + self.bottleneck(output)


class ParallelAdapter(AdapterModule):
    """Adds s * Up(act(Down(x))) of the FFN input x beside the FFN (see ``LayerGroup.ffn_block_arg``)."""

    def __init__(self, bottleneck: Bottleneck, input_arg: int) -> None:
        super().__init__()
        self.bottleneck = bottleneck
        self.input_arg = input_arg

    def pre(self, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        if self.input_arg == 0:
            return args, kwargs
        residual = args[self.input_arg]
        args = (*args[: self.input_arg], residual + self.bottleneck(residual), *args[self.input_arg + 1 :])
        return args, kwargs

    def post(self, args: tuple, kwargs: dict[str, Any], output: torch.Tensor) -> torch.Tensor:
        if self.input_arg == 0:
            return output + self.bottleneck(args[0])
        return output


@register_method
@dataclass
class BottleneckConfig(MethodConfig):
    """A bottleneck adapter at chosen sites; ``houlsby``, ``pfeiffer`` and ``parallel`` preset the placement."""

    method: ClassVar[str] = "bottleneck"
    placement: Literal["houlsby", "pfeiffer", "parallel"] = opt(
        "pfeiffer", "houlsby: after attention and FFN; pfeiffer: after FFN; parallel: beside the FFN"
    )
    reduction_factor: float = opt(16.0, "hidden size / bottleneck size (ignored when bottleneck_size is set)")
    bottleneck_size: int | None = opt(None, "bottleneck width; overrides reduction_factor")
    activation: str = opt("relu", "relu, gelu, swish, tanh, identity, or a registered learnable activation")
    init: Literal["identity", "near_identity"] = opt(
        "identity", "identity: Up starts at zero (exact no-op); near_identity: small random weights (Houlsby)"
    )
    dropout: float = opt(0.0, "dropout on the adapter input")
    scaling: float = opt(1.0, "multiplier on the adapter output")
    layers: tuple[int, ...] | None = opt(None, "layer indices that get an adapter (default: all)")
    learning_rate: float | None = opt(None, "learning rate for this adapter's parameters (default: the trainer's)")

    def validate(self) -> None:
        check(self.placement in ("houlsby", "pfeiffer", "parallel"), "placement", f"unknown {self.placement!r}")
        check(self.reduction_factor > 0, "reduction_factor", "must be > 0")
        check(self.bottleneck_size is None or self.bottleneck_size > 0, "bottleneck_size", "must be > 0")
        check(self.activation in ACTIVATIONS, "activation", f"unknown {self.activation!r}; known: {sorted(ACTIVATIONS)}")
        check(self.init in ("identity", "near_identity"), "init", f"unknown {self.init!r}")
        check(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        check(self.layers is None or len(self.layers) > 0, "layers", "must name at least one layer, or be null for all")

    def size(self, hidden: int) -> int:
        return self.bottleneck_size or max(1, int(hidden // self.reduction_factor))

    def sites(self) -> tuple[str, ...]:
        return {"houlsby": ("attn_output", "ffn_output"), "pfeiffer": ("ffn_output",), "parallel": ("ffn_block",)}[
            self.placement
        ]

    def build(self, ctx: BuildContext) -> list[Attachment]:
        out = []
        for i in ctx.layer_indices(self.layers):
            for site in self.sites():
                neck = Bottleneck(ctx.hidden_size, self.size(ctx.hidden_size), self.activation, self.init, self.dropout, self.scaling)
                if site == "ffn_block":
                    module: AdapterModule = ParallelAdapter(neck, ctx.layers[i].group.ffn_block_arg)
                else:
                    module = SequentialAdapter(neck)
                out.append(Attachment(i, site, module))
        return out


@register_method
@dataclass
class HoulsbyConfig(BottleneckConfig):
    """Houlsby et al. 2019: adapters after the attention output and after the FFN output."""

    method: ClassVar[str] = "houlsby"
    placement: Literal["houlsby", "pfeiffer", "parallel"] = opt("houlsby", "fixed: houlsby")
    activation: str = opt("swish", "activation inside the bottleneck")

    def validate(self) -> None:
        super().validate()
        check(self.placement == "houlsby", "placement", "a houlsby config places adapters houlsby-style")


@register_method
@dataclass
class PfeifferConfig(BottleneckConfig):
    """Pfeiffer et al. 2021: one adapter after the FFN output of each layer."""

    method: ClassVar[str] = "pfeiffer"
    placement: Literal["houlsby", "pfeiffer", "parallel"] = opt("pfeiffer", "fixed: pfeiffer")

    def validate(self) -> None:
        super().validate()
        check(self.placement == "pfeiffer", "placement", "a pfeiffer config places adapters pfeiffer-style")


@register_method
@dataclass
class ParallelConfig(BottleneckConfig):
    """He et al. 2022: an adapter beside the FFN, output scaled by ``scaling`` (default 4)."""

    method: ClassVar[str] = "parallel"
    placement: Literal["houlsby", "pfeiffer", "parallel"] = opt("parallel", "fixed: parallel")
    reduction_factor: float = opt(2.0, "hidden size / bottleneck size")
    scaling: float = opt(4.0, "multiplier on the adapter output")

    def validate(self) -> None:
        super().validate()
        check(self.placement == "parallel", "placement", "a parallel config places adapters beside the FFN")
