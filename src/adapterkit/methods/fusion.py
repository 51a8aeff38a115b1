"""AdapterFusion (Pfeiffer et al. 2021): per layer, attention over the outputs of N frozen adapters.

At a site where the fused adapters sit, each adapter n turns the sublayer output h into o_n (its usual
output, e.g. h + Up(act(Down(h)))). The fusion layer computes q = Q h, k_n = K o_n, v_n = V o_n and
returns sum_n softmax_n(q . k_n / T) v_n. Q and K start small (N(0, 0.02)) so the weights start near
uniform, and V starts as the identity, so a fresh fusion layer averages the adapters' outputs. Only the
fusion layers (and the task head) train; the fused adapters stay frozen and inactive on their own.

The contract with the fused adapters is explicit: a site module says whether it can be fused
(``AdapterModule.fusion_refusal()`` is None) and how (``fusion_output(args, kwargs, output)``: its
version of the site's output). Adding a fusion layer over a module that cannot be fused raises a
ConfigError saying why (e.g. a parallel adapter inside a BERT block's residual), instead of silently
mixing the base output.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..config import MethodConfig, check, opt
from ..errors import ConfigError
from ..injection import AdaptedModule, AdapterModule
from ..registry import register_method
from ..routing import Rows, select
from .base import Attachment, BuildContext


class FusionLayer(AdapterModule):
    """Attention over the outputs of the adapters named ``fused`` at the same site."""

    def __init__(self, hidden: int, fused: tuple[str, ...], temperature: float, dropout: float) -> None:
        super().__init__()
        self.fused = fused
        self.temperature = temperature
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        for lin in (self.query, self.key):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        with torch.no_grad():
            self.value.weight.copy_(torch.eye(hidden))
            self.value.bias.zero_()

    def bind(self, wrapper: AdaptedModule) -> None:
        missing = [n for n in self.fused if n not in wrapper.adapters]
        if missing:
            raise ConfigError(f"fusion: adapters: {missing[0]!r} has no module at this site; add the adapters to "
                              f"fuse before the fusion layer (present here: {sorted(wrapper.adapters)})")
        for n in self.fused:
            module = wrapper.adapters[n]
            refusal = module.fusion_refusal() if isinstance(module, AdapterModule) else "not an adapter module"
            if refusal is not None:
                raise ConfigError(f"fusion: adapters: {n!r} ({type(module).__name__}) cannot be fused: {refusal}")

    def post(self, args: tuple, kwargs: dict[str, Any], output: torch.Tensor) -> torch.Tensor:
        adapters = self.wrapper.adapters
        try:
            outs = torch.stack([adapters[n].fusion_output(args, kwargs, output) for n in self.fused], dim=-2)  # [..., N, H]
        except KeyError as exc:
            raise ConfigError(f"fusion: adapter {exc.args[0]!r} was deleted while a fusion layer uses it") from None
        return self.mix(output, outs)

    def mix(self, output: torch.Tensor, outs: torch.Tensor) -> torch.Tensor:
        """Attention of the site output ``output`` [..., H] over the fused adapters' outputs ``outs`` [..., N, H]."""
        q = self.query(self.dropout(output)).unsqueeze(-2)  # [..., 1, H]
        k = self.key(outs)
        weights = torch.softmax((q * k).sum(-1) / self.temperature, dim=-1)  # [..., N]
        return torch.einsum("...n,...nh->...h", weights, self.value(outs))

    def routing_refusal(self) -> str | None:
        adapters = self.wrapper.adapters
        for n in self.fused:
            module = adapters[n] if n in adapters else None
            reason = module.routing_refusal() if isinstance(module, AdapterModule) else "it is missing at this site"
            if reason is not None:
                return f"fused adapter {n!r} cannot be routed per example: {reason}"
        return None

    def route_post(self, args: tuple, kwargs: dict[str, Any], output: torch.Tensor, rows: Rows) -> torch.Tensor:
        """The fused adapters' outputs for rows ``rows`` (their ``route_post``, which for a fusable module is its
        ``fusion_output`` on those rows), mixed by this layer's attention."""
        adapters = self.wrapper.adapters
        try:
            outs = torch.stack([adapters[n].route_post(args, kwargs, output, rows) for n in self.fused], dim=-2)
        except KeyError as exc:
            raise ConfigError(f"fusion: adapter {exc.args[0]!r} was deleted while a fusion layer uses it") from None
        return self.mix(select(output, rows), outs)


@register_method
@dataclass
class FusionConfig(MethodConfig):
    """AdapterFusion over already-added adapters (which must sit at ``site``); trains the fusion layers only."""

    method: ClassVar[str] = "fusion"
    adapters: tuple[str, ...] = opt((), "names of the adapters to fuse (added to the model first, in this order)")
    site: str = opt("ffn_output", "site of the fused adapters (pfeiffer: ffn_output)")
    layers: tuple[int, ...] | None = opt(None, "layer indices with a fusion layer (default: all)")
    temperature: float = opt(1.0, "softmax temperature of the attention over adapters")
    dropout: float = opt(0.0, "dropout on the query input")
    learning_rate: float | None = opt(None, "learning rate of the fusion layers (default: the trainer's)")

    def validate(self) -> None:
        check(len(set(self.adapters)) == len(self.adapters), "adapters", f"duplicate names in {list(self.adapters)}")
        check(self.temperature > 0, "temperature", "must be > 0")
        check(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")

    def build(self, ctx: BuildContext) -> list[Attachment]:
        check(len(self.adapters) >= 1, "adapters", "name at least one adapter to fuse")
        return [Attachment(i, self.site, FusionLayer(ctx.hidden_size, tuple(self.adapters), self.temperature, self.dropout))
                for i in ctx.layer_indices(self.layers)]
