"""Bottleneck adapters: Houlsby (after attention and FFN), Pfeiffer (after FFN), parallel (beside FFN).

A bottleneck maps h -> Up(act(Down(h))). Sequential adapters return h + s * bottleneck(h) at the
sublayer's output projection; parallel adapters add s * bottleneck(x) of the FFN *input* x to the FFN
output, before the layer's residual and normalisation.

``original_ln=True`` reproduces AdapterHub's ``original_ln_before`` placement (BERT-like models): the
adapter sits at the block ``Output(h, x)`` whose own LayerNorm it reuses twice (see
:class:`OriginalLNAdapter`).

Every bottleneck method (this file's, ``adaptable``, ``adapterdrop``) makes its bottlenecks with
:meth:`BottleneckConfig.make_bottleneck` and its site modules with :meth:`BottleneckConfig.make_module`,
through ``ctx.create`` so that a composed method can swap in subclasses (the factory hook).
AdapterFusion: sequential, ``original_ln`` and parallel adapters beside a whole FFN (``ffn_block_arg``
0) can be fused; parallel adapters that add into a BERT-style block's residual cannot (ConfigError).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MethodConfig, check, opt
from ..context import current
from ..errors import ConfigError
from ..injection import AdaptedModule, AdapterModule, get_module
from ..registry import register_method
from ..routing import Rows, add_rows, block_scales, row_mask, select, stacked
from . import rational  # noqa: F401  (registers the learnable rational activations)
from .base import ACTIVATIONS, Attachment, BuildContext, NeuronGroup, make_activation
from .gating import GATE_AVERAGE_HELP, GATE_AVERAGES, Gate

BOTTLENECK_UNITS = NeuronGroup("", (("down.weight", 0), ("down.bias", 0)), (("up.weight", 1),))
"""The units of a :class:`Bottleneck`: Down rows and bias in, Up columns out."""


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

    def neuron_groups(self) -> list[NeuronGroup]:
        """The bottleneck units: Down rows (and bias) in, Up columns out; activations at ``act``."""
        return [dataclasses.replace(BOTTLENECK_UNITS, activation=self.act)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.down(self.dropout(x)))
        if self.scaling == 1.0:
            return self.up(h)
        return F.linear(h, self.up.weight * self.scaling, self.up.bias * self.scaling)  # scale the small weights


def bottleneck_neuron_groups(state: dict[str, torch.Tensor]) -> list[NeuronGroup]:
    """The :class:`Bottleneck` neuron groups found in a bare state dict (``P + "down.weight"`` and ``P +
    "up.weight"``), for merging state dicts without a model; with a model use ``AdaptedModel.neuron_groups``."""
    prefixes = sorted(k[: -len("down.weight")] for k in state if k.endswith("down.weight")
                      and k[: -len("down.weight")] + "up.weight" in state)
    return [BOTTLENECK_UNITS.prefixed(p) for p in prefixes]


class SequentialAdapter(AdapterModule):
    """h -> h + s * Up(act(Down(h))) on the wrapped projection's output."""

    def __init__(self, bottleneck: Bottleneck) -> None:
        super().__init__()
        self.bottleneck = bottleneck

    def delta(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """What the adapter adds for adapter input ``x`` (a gated subclass scales it; ``mask``: the 2-D
        attention mask of ``x``'s rows when they are a subset of the batch, for its gate)."""
        return self.bottleneck(x)

    def post(self, args: tuple, kwargs: dict[str, Any], output: torch.Tensor) -> torch.Tensor:
        return output + self.delta(output)

    def route_post(self, args: tuple, kwargs: dict[str, Any], output: torch.Tensor, rows: Rows) -> torch.Tensor:
        h = select(output, rows)
        return h + self.delta(h, row_mask(rows, h.shape[1] if h.dim() == 3 else None))

    @classmethod
    def routing_family(cls) -> type[AdapterModule]:
        return SequentialAdapter if cls is SequentialAdapter else AdapterModule

    @classmethod
    def routed_post(cls, groups: list[tuple[AdapterModule, Rows]], args: tuple, kwargs: dict[str, Any],
                    output: Any) -> Any:
        """Every plain sequential adapter at this site in two GEMMs whatever their number (a segmented product):
        all Down projections (concatenated) and the activation, a per-row block mask keeping each row's own
        units (scaled), all Up projections, and each row's own Up bias. Falls back to one group at a time when
        there is one group, the bottlenecks differ in activation, have learnable ones or active dropout, or
        their widths add up to more than the hidden size."""
        necks = [m.bottleneck for m, _ in groups]  # type: ignore[attr-defined]
        act = necks[0].act
        plain = all(type(n) is Bottleneck and type(n.act) is type(act) and not any(True for _ in n.act.parameters())
                    and repr(n.act) == repr(act) and (isinstance(n.dropout, nn.Identity) or not n.training) for n in necks)
        total = sum(n.down.out_features for n in necks)
        if len(groups) < 2 or not plain or total > output.shape[-1]:
            return super().routed_post(groups, args, kwargs, output)
        batch, count = output.shape[0], len(necks)

        def build() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            # one extra Down unit per adapter with weight 0 and bias 1 carries its Up bias through the same GEMM
            down_w = torch.cat([*(n.down.weight for n in necks), necks[0].down.weight.new_zeros(count, output.shape[-1])])
            down_b = torch.cat([*(n.down.bias for n in necks), necks[0].down.bias.new_ones(count)])
            up = torch.cat([*(n.up.weight for n in necks), torch.stack([n.up.bias for n in necks], dim=1)], dim=1)
            return down_w, down_b, up

        down_w, down_b, up = stacked(groups[0][0].wrapper, necks, build)
        one = float(act(torch.ones(1, dtype=output.dtype)))  # what the bias unit carries after the activation
        scales = block_scales([(rows, n.down.out_features, n.scaling) for (_, rows), n in zip(groups, necks, strict=True)]
                              + [(rows, 1, n.scaling / one) for (_, rows), n in zip(groups, necks, strict=True)], batch, output)
        h = act(F.linear(output, down_w, down_b))
        h = h * scales.view(batch, *([1] * (h.dim() - 2)), total + count)
        flat = torch.addmm(output.reshape(-1, output.shape[-1]), h.reshape(-1, h.shape[-1]), up.t())
        return flat.view(output.shape)

    def fusion_refusal(self) -> str | None:
        return None

    def fusion_output(self, args: tuple, kwargs: dict[str, Any], output: torch.Tensor) -> torch.Tensor:
        return output + self.delta(output)


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
        args = (*args[: self.input_arg], residual + self.delta(residual), *args[self.input_arg + 1 :])
        return args, kwargs

    def delta(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """What the adapter adds for adapter input ``x`` (a gated subclass scales it; ``mask``: the 2-D
        attention mask of ``x``'s rows when they are a subset of the batch, for its gate)."""
        return self.bottleneck(x)

    def post(self, args: tuple, kwargs: dict[str, Any], output: torch.Tensor) -> torch.Tensor:
        if self.input_arg == 0:
            return output + self.delta(args[0])
        return output

    def route_pre(self, args: tuple, kwargs: dict[str, Any], rows: Rows) -> tuple[tuple, dict[str, Any]]:
        if self.input_arg == 0:
            return args, kwargs
        residual = args[self.input_arg]
        x = select(residual, rows)
        changed = add_rows(residual, rows, self.delta(x, row_mask(rows, x.shape[1] if x.dim() == 3 else None)))
        return (*args[: self.input_arg], changed, *args[self.input_arg + 1 :]), kwargs

    def route_post(self, args: tuple, kwargs: dict[str, Any], output: torch.Tensor, rows: Rows) -> torch.Tensor:
        h = select(output, rows)
        if self.input_arg != 0:
            return h
        x = select(args[0], rows)
        return h + self.delta(x, row_mask(rows, x.shape[1] if x.dim() == 3 else None))

    def fusion_refusal(self) -> str | None:
        if self.input_arg == 0:
            return None
        return ("a parallel adapter at a BERT-style block adds its output to the block's residual input, inside the "
                "block's residual + LayerNorm, so its output cannot be formed from the block's output; fuse "
                "sequential (pfeiffer, houlsby) or original_ln adapters instead")

    def fusion_output(self, args: tuple, kwargs: dict[str, Any], output: torch.Tensor) -> torch.Tensor:
        if self.input_arg != 0:
            raise ConfigError(f"fusion: {self.fusion_refusal()}")
        return output + self.delta(args[0])


class OriginalLNAdapter(AdapterModule):
    """AdapterHub's placement with ``original_ln_before`` (and ``residual_before_ln``) at a BERT-style block.

    The block computes ``y = LN(y0 + x)`` with ``y0 = dropout(dense(h))`` and ``x`` its residual argument
    (positional 1 or ``input_tensor``). This module returns ``LN(y0 + s * Up(act(Down(y))) + x)`` with the
    block's own ``LayerNorm``; ``y0`` is taken from the block's ``dropout`` by a forward hook that puts
    it in the forward context (per call, so nothing of the block's forward is copied and nothing stays
    on the module). Fusable: each fused adapter's output is its ``LN(y0 + A(y) + x)``.
    """

    def __init__(self, bottleneck: Bottleneck) -> None:
        super().__init__()
        self.bottleneck = bottleneck
        self._hook: Any = None

    def bind(self, wrapper: AdaptedModule) -> None:
        block = wrapper.base_layer
        if getattr(block, "_adapterkit_y0_hook", None) is None:  # one hook per block, shared by its adapters
            block.__dict__["_adapterkit_y0_hook"] = block.dropout.register_forward_hook(_keep_y0(block))
            block.__dict__["_adapterkit_y0_users"] = 0
        block.__dict__["_adapterkit_y0_users"] += 1

    def unbind(self, wrapper: AdaptedModule) -> None:
        block = wrapper.base_layer
        block.__dict__["_adapterkit_y0_users"] = block.__dict__.get("_adapterkit_y0_users", 1) - 1
        if block.__dict__["_adapterkit_y0_users"] <= 0 and block.__dict__.get("_adapterkit_y0_hook") is not None:
            block.__dict__.pop("_adapterkit_y0_hook").remove()
            block.__dict__.pop("_adapterkit_y0_users", None)

    def post(self, args: tuple, kwargs: dict[str, Any], output: torch.Tensor) -> torch.Tensor:
        return self.fusion_output(args, kwargs, output)

    def fusion_refusal(self) -> str | None:
        return None

    def _y0_and_residual(self, args: tuple, kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The block's dropout output (kept by the pre hook) and the residual input of its LayerNorm."""
        ctx = current()
        y0 = ctx.state(self.wrapped_layer, "y0") if ctx is not None else None
        if y0 is None:
            raise RuntimeError("original_ln adapter: the wrapped block did not run its dropout module")
        return y0, (args[1] if len(args) > 1 else kwargs["input_tensor"])

    def fusion_output(self, args: tuple, kwargs: dict[str, Any], output: torch.Tensor) -> torch.Tensor:
        y0, residual = self._y0_and_residual(args, kwargs)
        return self.wrapped_layer.LayerNorm(y0 + self.delta(output) + residual)

    def route_post(self, args: tuple, kwargs: dict[str, Any], output: torch.Tensor, rows: Rows) -> torch.Tensor:
        y0, residual = self._y0_and_residual(args, kwargs)
        h = select(output, rows)
        delta = self.delta(h, row_mask(rows, h.shape[1] if h.dim() == 3 else None))
        return self.wrapped_layer.LayerNorm(select(y0, rows) + delta + select(residual, rows))

    def delta(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """What the adapter adds for adapter input ``x`` (a gated subclass scales it; ``mask``: the 2-D
        attention mask of ``x``'s rows when they are a subset of the batch, for its gate)."""
        return self.bottleneck(x)


def _keep_y0(block: nn.Module) -> Any:
    """A forward hook for ``block.dropout`` that stores its output (y0) in the forward context, keyed by ``block``."""
    def keep(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        ctx = current()
        if ctx is not None:
            ctx.set_state(block, "y0", output)

    return keep


class _Gated:
    """Mixin: the adapter's contribution scaled by a UniPELT gate that reads the adapter's input."""

    gate: Gate

    def delta(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.gate(x, mask) * self.bottleneck(x)  # type: ignore[attr-defined]


class GatedSequentialAdapter(_Gated, SequentialAdapter):
    """UniPELT's gated adapter: h + g(h) * Up(act(Down(h)))."""

    def __init__(self, bottleneck: Bottleneck, gate: Gate) -> None:
        super().__init__(bottleneck)
        self.gate = gate


class GatedParallelAdapter(_Gated, ParallelAdapter):
    """A parallel adapter scaled by a gate reading the FFN input."""

    def __init__(self, bottleneck: Bottleneck, input_arg: int, gate: Gate) -> None:
        super().__init__(bottleneck, input_arg)
        self.gate = gate


class GatedOriginalLNAdapter(_Gated, OriginalLNAdapter):
    """UniPELT's adapter as in the authors' code: LN(y0 + g(y) * Up(act(Down(y))) + x), y = LN(y0 + x)."""

    def __init__(self, bottleneck: Bottleneck, gate: Gate) -> None:
        super().__init__(bottleneck)
        self.gate = gate


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
    gated: bool = opt(False, "UniPELT gate: scale the adapter's output by sigmoid(Linear(hidden, 1)) of its input, "
                      "averaged over tokens (one value per example and layer)")
    gate_average: Literal["real_tokens", "all"] = opt("real_tokens", GATE_AVERAGE_HELP)
    gatable: ClassVar[bool] = True

    def validate(self) -> None:
        check(self.placement in ("houlsby", "pfeiffer", "parallel"), "placement", f"unknown {self.placement!r}")
        check(isinstance(self.gated, bool), "gated", "must be true or false")
        check(not self.gated or self.gatable, "gated", f"method {self.method!r} cannot be gated; gates exist for "
              "bottleneck, houlsby, pfeiffer, parallel, prefix and lora")
        check(self.gate_average in GATE_AVERAGES, "gate_average", f"use one of {list(GATE_AVERAGES)}")
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

    def activation_name(self) -> str:
        """The registered activation the bottlenecks use (a subclass may resolve an alias)."""
        return self.activation

    def make_bottleneck(self, ctx: BuildContext) -> Bottleneck:
        """One bottleneck of this config (the single constructor every bottleneck method uses)."""
        return ctx.create(Bottleneck, ctx.hidden_size, self.size(ctx.hidden_size), self.activation_name(), self.init,
                          self.dropout, self.scaling)

    def make_module(self, ctx: BuildContext, layer: int, site: str) -> AdapterModule:
        """The site module for ``site`` of ``layer``, made through ``ctx.create`` (so it can be swapped)."""
        neck = self.make_bottleneck(ctx)
        if self.gated:
            gate = ctx.create(Gate, ctx.hidden_size, self.gate_average)
            if self.original_ln:
                return ctx.create(GatedOriginalLNAdapter, neck, gate)
            if site == "ffn_block":
                return ctx.create(GatedParallelAdapter, neck, ctx.layers[layer].group.ffn_block_arg, gate)
            return ctx.create(GatedSequentialAdapter, neck, gate)
        if self.original_ln:
            return ctx.create(OriginalLNAdapter, neck)
        if site == "ffn_block":
            return ctx.create(ParallelAdapter, neck, ctx.layers[layer].group.ffn_block_arg)
        return ctx.create(SequentialAdapter, neck)

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
                out.append(Attachment(i, site, self.make_module(ctx, i, site)))
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
