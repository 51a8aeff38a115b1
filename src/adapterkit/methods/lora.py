"""LoRA (Hu et al. 2022): W x + (alpha / r) * B A x on chosen linear projections.

``merge`` folds B A into the base weight for inference (no extra cost at all). ``unmerge`` subtracts
the same update again (no copy of the weight is kept, so merging a 7B model costs no extra memory;
the restored weight equals the original up to floating-point rounding). ``merge(exact=True)`` keeps a
copy of the original weight instead, and unmerging it restores it bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..architectures import LINEAR_SITES
from ..config import MethodConfig, check, opt
from ..errors import ConfigError
from ..injection import AdaptedModule, AdapterModule
from ..registry import register_method
from ..routing import Rows, block_scales, row_mask, select, stacked
from .base import Attachment, BuildContext
from .gating import GATE_AVERAGE_HELP, GATE_AVERAGES, Gate


class LoRALinear(AdapterModule):
    """Low-rank update of one ``nn.Linear``; call ``merge``/``unmerge`` to fold it into the weight."""

    order = 0

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(r, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self._saved_weight: torch.Tensor | None = None

    def delta_weight(self) -> torch.Tensor:
        """``(alpha / r) B A``, computed in float32 (then the caller casts it to the weight's dtype)."""
        return (self.lora_B.float() @ self.lora_A.float()) * self.scaling

    def post(self, args: tuple, kwargs: dict[str, Any], output: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return output
        x = args[0] if args else kwargs["input"]
        h = F.linear(self.dropout(x), self.lora_A)
        # output + h (s B)^T in one GEMM: the scaling goes on the tiny B and the addition into addmm
        flat = torch.addmm(output.reshape(-1, output.shape[-1]), h.reshape(-1, h.shape[-1]), (self.lora_B * self.scaling).t())
        return flat.view(output.shape)

    @classmethod
    def routing_family(cls) -> type[AdapterModule]:
        return LoRALinear if cls is LoRALinear else AdapterModule

    @classmethod
    def routed_post(cls, groups: list[tuple[AdapterModule, Rows]], args: tuple, kwargs: dict[str, Any],
                    output: Any) -> Any:
        """Every LoRA at this projection in two GEMMs whatever their number (a segmented product): the rows go
        through all the adapters' A (concatenated), a per-row block mask keeps each row's own (scaled) part,
        and all Bs add it to the output in one ``addmm``. Falls back to one group at a time when there is a
        single group, a dropout is active, or the ranks add up to more than half the input width."""
        modules = [m for m, _ in groups]
        for m in modules:
            if m.merged:  # type: ignore[attr-defined]
                raise ConfigError(f"adapter {m.adapter_name!r}: LoRA {m.routing_refusal()}")
        x = args[0] if args else kwargs["input"]
        total = sum(m.lora_A.shape[0] for m in modules)  # type: ignore[attr-defined]
        dropout = any(m.training and not isinstance(m.dropout, nn.Identity) for m in modules)  # type: ignore[attr-defined]
        if len(groups) < 2 or dropout or total > x.shape[-1] // 2:
            return super().routed_post(groups, args, kwargs, output)
        a, b = stacked(modules[0].wrapper, modules, lambda: (
            torch.cat([m.lora_A for m in modules]), torch.cat([m.lora_B for m in modules], dim=1)))  # type: ignore[attr-defined]
        scales = block_scales([(rows, m.lora_A.shape[0], m.scaling) for m, rows in groups],  # type: ignore[attr-defined]
                              x.shape[0], x)
        h = F.linear(x, a)
        h = h * scales.view(x.shape[0], *([1] * (h.dim() - 2)), total)
        flat = torch.addmm(output.reshape(-1, output.shape[-1]), h.reshape(-1, total), b.t())
        return flat.view(output.shape)

    def routing_refusal(self) -> str | None:
        if self.merged:
            return ("it is merged into the base weights, so it would apply to every row; unmerge it first "
                    "(AdaptedModel.unmerge_adapter)")
        return None

    def route_post(self, args: tuple, kwargs: dict[str, Any], output: torch.Tensor, rows: Rows) -> torch.Tensor:
        if self.merged:
            raise ConfigError(f"adapter {self.adapter_name!r}: LoRA {self.routing_refusal()}")
        x = select(args[0] if args else kwargs["input"], rows)
        base = select(output, rows)
        h = F.linear(self.dropout(x), self.lora_A)
        flat = torch.addmm(base.reshape(-1, base.shape[-1]), h.reshape(-1, h.shape[-1]), (self.lora_B * self.scaling).t())
        return flat.view(base.shape)

    @staticmethod
    def _merge_stack(wrapper: AdaptedModule) -> list[LoRALinear]:
        """The LoRA modules merged into this wrapper's weight, in merge order (kept on the wrapper)."""
        if "_lora_merged" not in wrapper.__dict__:
            wrapper.__dict__["_lora_merged"] = []
        return wrapper.__dict__["_lora_merged"]

    @torch.no_grad()
    def merge(self, exact: bool = False) -> None:
        """Fold the update into the base weight. ``exact``: keep a copy of the original weight so that
        ``unmerge`` restores it bit for bit (costs one weight's memory); otherwise ``unmerge`` subtracts."""
        if self.merged:
            return
        wrapper = self.wrapper
        base = wrapper.base_layer
        self._saved_weight = base.weight.detach().clone() if exact else None
        base.weight.add_(self.delta_weight().to(base.weight.dtype))
        self._merge_stack(wrapper).append(self)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update out of the base weight again: subtracted, or, after ``merge(exact=True)``, the kept
        original copied back (then LoRAs merged later into the same weight must be unmerged first)."""
        if not self.merged:
            return
        wrapper = self.wrapper
        stack = self._merge_stack(wrapper)
        weight = wrapper.base_layer.weight
        if self._saved_weight is not None:
            if stack and stack[-1] is not self:
                raise RuntimeError("unmerge the LoRA adapters merged into this weight after this one first "
                                   "(this one was merged with exact=True)")
            weight.copy_(self._saved_weight)
        else:
            weight.sub_(self.delta_weight().to(weight.dtype))
        if self in stack:
            stack.remove(self)
        self._saved_weight = None
        self.merged = False


class GatedLoRALinear(LoRALinear):
    """UniPELT's gated LoRA: W x + g(x) B A x, the gate (reading the projection's input, the layer input for
    query and value) replacing alpha / r. Its scale depends on the input, so it cannot be merged."""

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float, dropout: float, gate: Gate) -> None:
        super().__init__(in_features, out_features, r, alpha, dropout)
        self.gate = gate

    def post(self, args: tuple, kwargs: dict[str, Any], output: torch.Tensor) -> torch.Tensor:
        x = args[0] if args else kwargs["input"]
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return output + self.gate(x) * update

    def route_post(self, args: tuple, kwargs: dict[str, Any], output: torch.Tensor, rows: Rows) -> torch.Tensor:
        x = select(args[0] if args else kwargs["input"], rows)
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return select(output, rows) + self.gate(x, row_mask(rows, x.shape[1] if x.dim() == 3 else None)) * update

    def merge(self, exact: bool = False) -> None:
        raise ConfigError("a gated LoRA cannot be merged into the weights: its scale is a gate computed from each input")


@register_method
@dataclass
class LoRAConfig(MethodConfig):
    """Low-rank adaptation of the chosen projections."""

    method: ClassVar[str] = "lora"
    r: int = opt(8, "rank of the update")
    alpha: float = opt(16.0, "scaling numerator: the update is multiplied by alpha / r")
    dropout: float = opt(0.0, "dropout on the LoRA input")
    targets: tuple[str, ...] = opt(("query", "value"), f"projections to adapt, from {list(LINEAR_SITES)}")
    layers: tuple[int, ...] | None = opt(None, "layer indices to adapt (default: all)")
    learning_rate: float | None = opt(None, "learning rate for this adapter's parameters")
    gated: bool = opt(False, "UniPELT gate: replace alpha / r by sigmoid(Linear(hidden, 1)) of the projection's input, "
                      "averaged over tokens (one gate per projection; not mergeable)")
    gate_average: Literal["real_tokens", "all"] = opt("real_tokens", GATE_AVERAGE_HELP)

    def validate(self) -> None:
        check(isinstance(self.gated, bool), "gated", "must be true or false")
        check(self.gate_average in GATE_AVERAGES, "gate_average", f"use one of {list(GATE_AVERAGES)}")
        check(self.r > 0, "r", "must be > 0")
        check(self.alpha > 0, "alpha", "must be > 0")
        check(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        check(len(self.targets) > 0, "targets", "name at least one projection")
        bad = [t for t in self.targets if t not in LINEAR_SITES]
        check(not bad, "targets", f"unknown {bad}; known: {list(LINEAR_SITES)}")

    def build(self, ctx: BuildContext) -> list[Attachment]:
        out = []
        for i in ctx.layer_indices(self.layers):
            layer = ctx.layers[i]
            for site in self.targets:
                linear = ctx.model.get_submodule(f"{layer.path}.{layer.group.sites[site]}")
                linear = getattr(linear, "base_layer", linear)
                if not isinstance(linear, nn.Linear):
                    raise ConfigError(f"targets: {site!r} in layer {i} is a {type(linear).__name__}, not nn.Linear")
                if self.gated:
                    gate = ctx.create(Gate, linear.in_features, self.gate_average)
                    module = ctx.create(GatedLoRALinear, linear.in_features, linear.out_features, self.r, self.alpha,
                                        self.dropout, gate)
                else:
                    module = ctx.create(LoRALinear, linear.in_features, linear.out_features, self.r, self.alpha,
                                        self.dropout)
                out.append(Attachment(i, site, module))
        return out
