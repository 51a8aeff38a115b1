"""Bottleneck adapters: Houlsby (after attention and FFN), Pfeiffer (after FFN), parallel (beside FFN).

A bottleneck maps h -> Up(act(Down(h))). Sequential adapters return h + s * bottleneck(h) at the
sublayer's output projection; parallel adapters add s * bottleneck(x) of the FFN *input* x to the FFN
output, before the layer's residual and normalisation.

``original_ln=True`` reproduces AdapterHub's ``original_ln_before`` placement (BERT-like models): the
adapter sits at the block ``Output(h, x)`` whose own LayerNorm it reuses twice (see
:class:`OriginalLNAdapter`).
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MethodConfig, check, opt
from ..errors import ConfigError
from ..injection import AdaptedModule, AdapterModule, get_module
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


class OriginalLNAdapter(AdapterModule):
    """AdapterHub's placement with ``original_ln_before`` (and ``residual_before_ln``) at a BERT-style block.

    The block computes ``y = LN(y0 + x)`` with ``y0 = dropout(dense(h))`` and ``x`` its residual argument
    (positional 1 or ``input_tensor``). This module returns ``LN(y0 + s * Up(act(Down(y))) + x)`` with the
    block's own ``LayerNorm``; ``y0`` is taken from the block's ``dropout`` by a forward hook while the
    adapter is active, so nothing of the block's forward is copied.
    """

    def __init__(self, bottleneck: Bottleneck) -> None:
        super().__init__()
        self.bottleneck = bottleneck
        self._block: weakref.ReferenceType[nn.Module] | None = None
        self._hook: Any = None
        self._capture = False
        self._y0: torch.Tensor | None = None

    def _keep(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if self._capture:
            self._y0 = output

    def bind(self, wrapper: AdaptedModule) -> None:
        block = wrapper.base_layer
        self._block = weakref.ref(block)
        self._hook = block.dropout.register_forward_hook(self._keep)

    def unbind(self, wrapper: AdaptedModule) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def pre(self, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        self._capture, self._y0 = True, None
        return args, kwargs

    def post(self, args: tuple, kwargs: dict[str, Any], output: torch.Tensor) -> torch.Tensor:
        y0, self._y0, self._capture = self._y0, None, False
        block = self._block() if self._block else None
        if y0 is None or block is None:
            raise RuntimeError("original_ln adapter: the wrapped block did not run its dropout module")
        residual = args[1] if len(args) > 1 else kwargs["input_tensor"]
        return block.LayerNorm(y0 + self.bottleneck(output) + residual)


def check_original_ln_block(ctx: BuildContext, layer: int, site: str) -> None:
    """Fail (ConfigError) unless ``site`` of ``layer`` is a BERT-style ``Output(h, x)`` block with LayerNorm and dropout."""
    entry = ctx.layers[layer]
    where = f"original_ln: {ctx.spec.model_type} layer {layer}"
    if site not in entry.group.sites or entry.group.ffn_block_arg != 1:
        raise ConfigError(f"{where}: no {site!r} block with a residual argument (supported: BERT, RoBERTa, XLM-R, ELECTRA)")
    block = get_module(ctx.model, f"{entry.path}.{entry.group.sites[site]}")
    block = block.base_layer if isinstance(block, AdaptedModule) else block
    for attr in ("LayerNorm", "dropout"):
        if not isinstance(getattr(block, attr, None), nn.Module):
            raise ConfigError(f"{where}: block {type(block).__name__} has no {attr} module")


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
    original_ln: bool = opt(
        False,
        "AdapterHub placement (original_ln_before): the adapter runs on the block's LayerNorm output and the "
        "same LayerNorm is applied again after it (houlsby/pfeiffer on BERT-like models only)",
    )
    learning_rate: float | None = opt(None, "learning rate for this adapter's parameters (default: the trainer's)")

    def validate(self) -> None:
        check(self.placement in ("houlsby", "pfeiffer", "parallel"), "placement", f"unknown {self.placement!r}")
        check(self.reduction_factor > 0, "reduction_factor", "must be > 0")
        check(self.bottleneck_size is None or self.bottleneck_size > 0, "bottleneck_size", "must be > 0")
        check(self.activation in ACTIVATIONS, "activation", f"unknown {self.activation!r}; known: {sorted(ACTIVATIONS)}")
        check(self.init in ("identity", "near_identity"), "init", f"unknown {self.init!r}")
        check(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        check(self.layers is None or len(self.layers) > 0, "layers", "must name at least one layer, or be null for all")
        check(isinstance(self.original_ln, bool), "original_ln", "must be true or false")
        check(not self.original_ln or self.placement != "parallel", "original_ln", "not available for parallel placement")

    def size(self, hidden: int) -> int:
        return self.bottleneck_size or max(1, int(hidden // self.reduction_factor))

    def sites(self) -> tuple[str, ...]:
        if self.original_ln:
            return {"houlsby": ("attn_block", "ffn_block"), "pfeiffer": ("ffn_block",)}[self.placement]
        return {"houlsby": ("attn_output", "ffn_output"), "pfeiffer": ("ffn_output",), "parallel": ("ffn_block",)}[
            self.placement
        ]

    def build(self, ctx: BuildContext) -> list[Attachment]:
        out = []
        indices = ctx.layer_indices(self.layers)
        if self.original_ln:
            for i in indices:
                for site in self.sites():
                    check_original_ln_block(ctx, i, site)
        for i in indices:
            for site in self.sites():
                neck = Bottleneck(ctx.hidden_size, self.size(ctx.hidden_size), self.activation, self.init, self.dropout, self.scaling)
                if self.original_ln:
                    module: AdapterModule = OriginalLNAdapter(neck)
                elif site == "ffn_block":
                    module = ParallelAdapter(neck, ctx.layers[i].group.ffn_block_arg)
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
