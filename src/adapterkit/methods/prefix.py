"""Prefix tuning (Li & Liang 2021): trainable key/value prefixes in every self-attention layer.

No model forward code is copied. The model is switched to one of our attention implementations,
registered in transformers' ``AttentionInterface`` (``adapterkit_prefix_sdpa`` / ``adapterkit_prefix_eager``),
which delegate to transformers' own sdpa and the model's own eager functions. A :class:`PrefixAttention`
module at site ``attention`` adds ``adapterkit_prefix=[(keys, values), ...]`` to the attention
module's keyword arguments, which Hugging Face attention modules forward to the attention function;
ours pops it, puts the prefixes in front of the keys/values and extends the mask (and T5's
position bias) so every query sees every prefix position. Deleting the last prefix module of a
model restores its original implementation. The two implementations are registered in transformers'
global registries on first use (the first prefix module attached), not when this module is imported.
"""
from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from ..config import MethodConfig, check, opt
from ..errors import ConfigError
from ..injection import AdaptedModule, AdapterModule
from ..registry import register_method
from ..routing import Rows, row_mask, select
from .base import Attachment, BuildContext
from .gating import GATE_AVERAGE_HELP, GATE_AVERAGES, Gate

PREFIX_KWARG = "adapterkit_prefix"
SDPA, EAGER = "adapterkit_prefix_sdpa", "adapterkit_prefix_eager"


# -- attention functions ---------------------------------------------------------------------------
@dataclass
class RoutedPrefix:
    """Prefix keys/values for some rows only (a mixed-adapter batch): ``key``/``value`` are (len(rows), kv_heads,
    P, head_dim). Every routed prefix of a layer goes into one block as long as the longest; a row does not
    see the positions beyond its own prefix, nor those of other rows' adapters (masked out)."""

    key: torch.Tensor
    value: torch.Tensor
    rows: slice | torch.Tensor


def _routed_block(prefixes: list[RoutedPrefix], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(keys, values, seen) for the whole batch: (batch, kv_heads, P_max, head_dim) and seen (batch, P_max) bool."""
    batch, heads, _, dim = like.shape
    n = max(p.key.shape[2] for p in prefixes)
    keys = like.new_zeros(batch, heads, n, dim)
    values = like.new_zeros(batch, heads, n, dim)
    seen = torch.zeros(batch, n, dtype=torch.bool, device=like.device)
    for p in prefixes:
        rows = p.rows if isinstance(p.rows, slice) else p.rows.to(like.device)
        length = p.key.shape[2]
        keys[rows, :, :length] = p.key.to(like.dtype)
        values[rows, :, :length] = p.value.to(like.dtype)
        seen[rows, :length] = True
    return keys, values, seen


def _extend(
    module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
    prefixes: list[Any], kwargs: dict[str, Any], additive: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Keys/values with the prefixes in front, and a mask (and position bias) that sees every prefix (a routed
    prefix: only its own rows see it)."""
    plain = [p for p in prefixes if not isinstance(p, RoutedPrefix)]
    routed = [p for p in prefixes if isinstance(p, RoutedPrefix)]
    keys = [k.to(key.dtype) for k, _ in plain]
    values = [v.to(value.dtype) for _, v in plain]
    seen = None
    if routed:
        rk, rv, rseen = _routed_block(routed, key)
        keys.append(rk)
        values.append(rv)
        n_plain = sum(k.shape[2] for k in keys[:-1])
        seen = torch.cat([rseen.new_ones(rseen.shape[0], n_plain), rseen], dim=1)  # (batch, n)
    pk, pv = torch.cat(keys, dim=2), torch.cat(values, dim=2)
    if pk.shape[0] != key.shape[0] or pk.shape[1] != key.shape[1] or pk.shape[3] != key.shape[3]:
        raise RuntimeError(f"prefix keys {tuple(pk.shape)} do not fit the attention keys {tuple(key.shape)}")
    n, q_len, k_len = pk.shape[2], query.shape[2], key.shape[2]
    key, value = torch.cat([pk, key], dim=2), torch.cat([pv, value], dim=2)
    is_causal = kwargs.pop("is_causal", None)
    is_causal = getattr(module, "is_causal", False) if is_causal is None else is_causal
    if mask is None and seen is not None:  # per-row prefixes need a mask even where the model needs none
        visible = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device)
        if is_causal and q_len > 1:
            visible = visible.tril(diagonal=k_len - q_len)
        mask = visible[None, None].expand(key.shape[0], 1, q_len, k_len)
        if additive:
            mask = torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill(
                ~mask, torch.finfo(query.dtype).min)
    if mask is None and is_causal and q_len > 1:  # sdpa would use is_causal, which would hide the prefix
        seen_all = torch.ones(q_len, n + k_len, dtype=torch.bool, device=query.device)
        seen_all[:, n:] = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril()
        mask = seen_all[None, None]
        if additive:
            mask = torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill(
                ~mask, torch.finfo(query.dtype).min
            )
    elif mask is not None:
        if mask.dim() != 4:
            raise RuntimeError(f"prefix tuning needs a 4-D attention mask, got shape {tuple(mask.shape)}")
        if seen is None:
            pad = torch.ones if mask.dtype == torch.bool else torch.zeros
            front = pad(*mask.shape[:-1], n, dtype=mask.dtype, device=mask.device)
        else:
            batch = key.shape[0]
            mask = mask.expand(batch, *mask.shape[1:])
            front = seen[:, None, None, :].expand(batch, mask.shape[1], mask.shape[2], n)
            if mask.dtype != torch.bool:
                front = torch.zeros(front.shape, dtype=mask.dtype, device=mask.device).masked_fill(
                    ~front, torch.finfo(mask.dtype).min)
        mask = torch.cat([front, mask], dim=-1)
    bias = kwargs.get("position_bias")
    if bias is not None:  # T5: relative position bias, 0 for the prefix positions
        kwargs["position_bias"] = torch.cat([bias.new_zeros(*bias.shape[:-1], n), bias], dim=-1)
    return key, value, mask


def _model_eager(module: nn.Module) -> Callable[..., Any]:
    fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if fn is None:
        raise RuntimeError(f"{type(module).__name__}: its modeling file has no eager_attention_forward")
    return fn


def _prefix_attention(base: Callable[[nn.Module], Callable[..., Any]], additive: bool) -> Callable[..., Any]:
    def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        prefixes = kwargs.pop(PREFIX_KWARG, None)
        if prefixes:
            key, value, attention_mask = _extend(module, query, key, value, attention_mask, prefixes, kwargs, additive)
        return base(module)(module, query, key, value, attention_mask, **kwargs)

    return attention


def register_attention() -> None:
    """Register our attention (and mask) implementations with transformers (idempotent; on first use)."""
    if SDPA in AttentionInterface._global_mapping:
        return
    AttentionInterface.register(SDPA, _prefix_attention(lambda module: sdpa_attention_forward, additive=False))
    AttentionInterface.register(EAGER, _prefix_attention(_model_eager, additive=True))
    AttentionMaskInterface.register(SDPA, sdpa_mask)
    AttentionMaskInterface.register(EAGER, eager_mask)


# id(config) -> [weak reference to the config, its original implementation, number of prefix modules using it]
_SWITCHED: dict[int, list[Any]] = {}


def _entry(config: Any) -> list[Any] | None:
    entry = _SWITCHED.get(id(config))
    return entry if entry is not None and entry[0]() is config else None


def _switch_on(config: Any) -> None:
    register_attention()
    entry = _entry(config)
    if entry is not None:
        entry[2] += 1
        return
    original = config._attn_implementation
    _SWITCHED[id(config)] = [weakref.ref(config), original, 1]
    config._attn_implementation = EAGER if original in (None, "eager") else SDPA


def _switch_off(config: Any) -> None:
    entry = _entry(config)
    if entry is None:
        return
    entry[2] -= 1
    if entry[2] == 0:
        del _SWITCHED[id(config)]
        config._attn_implementation = entry[1]


# -- modules ---------------------------------------------------------------------------------------
class PrefixEncoder(AdapterModule):
    """The reparameterisation shared by all layers: Embedding(P, h) -> Linear -> Tanh -> Linear(2 * L * kv * d)."""

    def __init__(self, prefix_length: int, hidden: int, bottleneck: int, num_layers: int, kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(prefix_length, hidden)
        self.down = nn.Linear(hidden, bottleneck)
        self.up = nn.Linear(bottleneck, 2 * num_layers * kv_heads * head_dim)
        self.shape = (prefix_length, 2, kv_heads, head_dim)

    def layer_kv(self, slot: int) -> torch.Tensor:
        """Keys and values of layer ``slot`` (its position among the adapted layers): (P, 2, kv_heads, head_dim)."""
        h = torch.tanh(self.down(self.embedding.weight))
        width = 2 * self.shape[2] * self.shape[3]
        rows = slice(slot * width, (slot + 1) * width)
        return F.linear(h, self.up.weight[rows], self.up.bias[rows]).view(self.shape)


class PrefixAttention(AdapterModule):
    """Adds this layer's prefix keys/values to the attention function's keyword arguments.

    ``prefix_kv`` computes them; a subclass may override it (e.g. to scale by a per-example gate).
    With ``reparameterize``, the keys/values come from the adapter's shared :class:`PrefixEncoder`
    (``AdaptedModel.shared``, reached through ``self.shared_module``, which ``attach`` sets).
    """

    def __init__(self, prefix_length: int, kv_heads: int, head_dim: int, dropout: float,
                 reparameterize: bool = False, slot: int = 0) -> None:
        super().__init__()
        self.shape = (prefix_length, 2, kv_heads, head_dim)
        self.slot = slot
        self.dropout = nn.Dropout(dropout)
        self.kv = None if reparameterize else nn.Parameter(torch.randn(*self.shape) * 0.02)
        self._config: Any = None

    def raw_kv(self) -> torch.Tensor:
        """(P, 2, kv_heads, head_dim) before dropout and batching."""
        if self.kv is not None:
            return self.kv
        encoder = self.shared_module
        if not isinstance(encoder, PrefixEncoder):
            raise RuntimeError("prefix attention: reparameterized, but the adapter has no shared PrefixEncoder")
        return encoder.layer_kv(self.slot)

    def prefix_kv(self, batch_size: int, hidden_states: torch.Tensor | None = None,
                  mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix keys and values, each (batch, kv_heads, prefix_length, head_dim).

        ``hidden_states`` is the attention module's input (batch, seq, hidden), for subclasses that scale the
        prefix by a per-example gate (UniPELT); ``mask`` the 2-D attention mask of those rows when they are a
        subset of the batch (routing).
        """
        kv = self.raw_kv().permute(1, 2, 0, 3).unsqueeze(1)  # (2, 1, kv_heads, P, head_dim)
        kv = self.dropout(kv.expand(-1, batch_size, -1, -1, -1))  # dropout masks differ per example
        return kv[0], kv[1]

    def bind(self, wrapper: AdaptedModule) -> None:
        self._config = wrapper.base_layer.config
        _switch_on(self._config)

    def unbind(self, wrapper: AdaptedModule) -> None:
        if self._config is not None:
            _switch_off(self._config)
            self._config = None

    def pre(self, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        if self._config is not None and self._config._attn_implementation not in (SDPA, EAGER):
            raise RuntimeError(
                f"prefix tuning needs attention implementation {SDPA!r} or {EAGER!r}; the model was switched to "
                f"{self._config._attn_implementation!r} after the prefix adapter was added"
            )
        hidden = args[0] if args else kwargs["hidden_states"]
        key, value = self.prefix_kv(hidden.shape[0], hidden)
        return args, {**kwargs, PREFIX_KWARG: [*kwargs.get(PREFIX_KWARG, ()), (key, value)]}

    def route_pre(self, args: tuple, kwargs: dict[str, Any], rows: Rows) -> tuple[tuple, dict[str, Any]]:
        """This adapter's prefix for rows ``rows`` only (a :class:`RoutedPrefix`; other rows do not see it)."""
        if self._config is not None and self._config._attn_implementation not in (SDPA, EAGER):
            raise RuntimeError(f"prefix tuning needs attention implementation {SDPA!r} or {EAGER!r}, not "
                               f"{self._config._attn_implementation!r}")
        hidden = select(args[0] if args else kwargs["hidden_states"], rows)
        key, value = self.prefix_kv(hidden.shape[0], hidden, row_mask(rows, hidden.shape[1]))
        return args, {**kwargs, PREFIX_KWARG: [*kwargs.get(PREFIX_KWARG, ()), RoutedPrefix(key, value, rows)]}


class GatedPrefixAttention(PrefixAttention):
    """UniPELT's gated prefix: keys and values both scaled per example by a gate reading the attention input
    (the layer input). At gate 0 the prefix keys and values are 0, which still takes a share of the softmax
    (as in the paper: prefix tuning cannot be switched off completely)."""

    def __init__(self, prefix_length: int, kv_heads: int, head_dim: int, dropout: float, reparameterize: bool,
                 slot: int, gate: Gate) -> None:
        super().__init__(prefix_length, kv_heads, head_dim, dropout, reparameterize, slot)
        self.gate = gate

    def prefix_kv(self, batch_size: int, hidden_states: torch.Tensor | None = None,
                  mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        key, value = super().prefix_kv(batch_size, hidden_states)
        if hidden_states is None:
            raise RuntimeError("gated prefix: needs the attention input to compute its gate")
        g = self.gate(hidden_states, mask).to(key.dtype).view(batch_size, 1, 1, 1)
        return key * g, value * g


@register_method
@dataclass
class PrefixTuningConfig(MethodConfig):
    """Trainable key/value prefixes in every self-attention layer, optionally through a shared MLP."""

    method: ClassVar[str] = "prefix"
    # 1e-3 (and 3e-3) left the reparameterised prefix at the constant prediction on ACL-ARC and ChemProt;
    # 3e-4 learns (docs/results/unipelt.md; the UniPELT paper uses 2e-4). A new head trains slowly at this
    # rate (alone on the frozen backbone, 13.0 macro-F1 on ACL-ARC after 4 epochs; the probe: 42.8), so
    # `train` gives the head 3e-3 unless told otherwise (--lr or --head-learning-rate); with it the prefix
    # reached 45.4 after 3 epochs. `experiment unipelt` gets the same split through the prefix's own
    # `learning_rate`.
    default_learning_rate: ClassVar[float] = 3e-4
    default_head_learning_rate: ClassVar[float | None] = 3e-3
    prefix_length: int = opt(10, "number of prefix positions per layer")
    reparameterize: bool = opt(True, "produce the prefixes with an MLP shared by all layers (Li & Liang 2021)")
    bottleneck_size: int = opt(512, "hidden width of the reparameterisation MLP")
    dropout: float = opt(0.0, "dropout on the prefix keys/values")
    layers: tuple[int, ...] | None = opt(None, "layer indices that get a prefix (default: all)")
    learning_rate: float | None = opt(None, "learning rate for this adapter's parameters")
    gated: bool = opt(False, "UniPELT gate: scale the prefix keys and values by sigmoid(Linear(hidden, 1)) of the "
                      "layer input, averaged over tokens (one value per example and layer)")
    gate_average: Literal["real_tokens", "all"] = opt("real_tokens", GATE_AVERAGE_HELP)

    def validate(self) -> None:
        check(isinstance(self.gated, bool), "gated", "must be true or false")
        check(self.gate_average in GATE_AVERAGES, "gate_average", f"use one of {list(GATE_AVERAGES)}")
        check(self.prefix_length > 0, "prefix_length", "must be > 0")
        check(self.bottleneck_size > 0, "bottleneck_size", "must be > 0")
        check(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        check(self.layers is None or len(self.layers) > 0, "layers", "must name at least one layer, or be null for all")

    @classmethod
    def unsupported(cls, arch: Any) -> str | None:
        if not arch.prefix_supported:
            return (f"method {cls.method!r}: model type {arch.model_type!r} is not supported; its attention does not "
                    "go through transformers' AttentionInterface")
        return None

    def build(self, ctx: BuildContext) -> list[Attachment]:
        reason = self.unsupported(ctx.spec)
        if reason:
            raise ConfigError(reason)
        indices = ctx.layer_indices(self.layers)
        for i in indices:
            layer = ctx.layers[i]
            attention = ctx.model.get_submodule(f"{layer.path}.{layer.group.sites['attention']}")
            if getattr(attention, "config", None) is None:
                raise ConfigError(f"method {self.method!r}: the attention module of layer {i} has no config")
        kv, d = ctx.num_key_value_heads, ctx.head_dim
        out: list[Attachment] = []
        shared = None
        if self.reparameterize:
            shared = ctx.create(PrefixEncoder, self.prefix_length, ctx.hidden_size, self.bottleneck_size, len(indices), kv, d)
            out.append(Attachment(None, "shared", shared))
        for slot, i in enumerate(indices):
            if self.gated:
                gate = ctx.create(Gate, ctx.hidden_size, self.gate_average)
                module = ctx.create(GatedPrefixAttention, self.prefix_length, kv, d, self.dropout, self.reparameterize,
                                    slot, gate)
            else:
                module = ctx.create(PrefixAttention, self.prefix_length, kv, d, self.dropout, self.reparameterize, slot)
            out.append(Attachment(i, "attention", module))
        return out
