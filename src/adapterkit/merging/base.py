"""Merge-method registry and the plain (weighted) averages."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..registry import Registry

State = dict[str, Tensor]
MergeFn = Callable[..., State]

MERGE_METHODS: Registry[MergeFn] = Registry("merge method")
"""Merge method name -> pure function ``(states, *, weights=None, activations=None, anchor=0, groups=None, **kw) -> state``."""


def register_merge(name: str) -> Callable[[MergeFn], MergeFn]:
    """Decorator: register a merge function under ``name`` (a name taken by another function is an error)."""

    def deco(fn: MergeFn) -> MergeFn:
        MERGE_METHODS.register(name, fn)
        return fn

    return deco


def get_merge(name: str) -> MergeFn:
    """The merge function called ``name``; unknown names raise ConfigError listing the known ones."""
    return MERGE_METHODS.get_or_raise(name)


def merge_adapters(method: str, states: Sequence[State], **kw: Any) -> State:
    """Merge adapter state dicts (``AdaptedModel.adapter_state_dict``) with the method called ``method``."""
    return get_merge(method)(states, **kw)


def check_states(states: Sequence[State], *, shapes: bool = True) -> None:
    """All states share the same keys (and, with ``shapes``, shapes); errors name the key and the adapter."""
    if not isinstance(states, Sequence) or isinstance(states, dict) or len(states) == 0:
        raise ConfigError("states: expected a non-empty list of adapter state dicts")
    ref = states[0]
    for i, state in enumerate(states[1:], start=1):
        missing, extra = sorted(set(ref) - set(state)), sorted(set(state) - set(ref))
        if missing or extra:
            key = (missing or extra)[0]
            raise ConfigError(f"states[{i}]: key {key!r}: {'missing' if missing else 'unexpected'} (compared with states[0])")
        if shapes:
            for key, tensor in ref.items():
                if tuple(state[key].shape) != tuple(tensor.shape):
                    raise ConfigError(
                        f"states[{i}]: key {key!r}: shape {tuple(state[key].shape)} differs from states[0]'s {tuple(tensor.shape)}"
                    )


def normalise_weights(weights: Sequence[float] | Tensor | None, count: int) -> list[float]:
    """Weights summing to 1 (uniform when None); length, sign and a positive sum are checked."""
    if weights is None:
        return [1.0 / count] * count
    values = [float(w) for w in (weights.tolist() if isinstance(weights, Tensor) else weights)]
    if len(values) != count:
        raise ConfigError(f"weights: {len(values)} given for {count} adapters")
    if any(not math.isfinite(w) or w < 0 for w in values):
        raise ConfigError(f"weights: must be finite and non-negative, got {values}")
    total = sum(values)
    if total <= 0:
        raise ConfigError(f"weights: must sum to a positive number, got {values}")
    return [w / total for w in values]


def weighted_mean(states: Sequence[State], weights: Sequence[float]) -> State:
    """Key-wise sum of ``weights[i] * states[i][key]`` (non-float tensors must be equal and are copied)."""
    check_states(states)
    out: State = {}
    for key, first in states[0].items():
        if not first.is_floating_point():
            for i, state in enumerate(states[1:], start=1):
                if not torch.equal(state[key], first):
                    raise ConfigError(f"states[{i}]: key {key!r}: non-float tensor differs from states[0]'s; cannot average")
            out[key] = first.clone()
            continue
        acc = torch.zeros_like(first)
        for w, state in zip(weights, states, strict=True):
            acc = acc + w * state[key].to(first.dtype)
        out[key] = acc
    return out


def reject_options(method: str, kw: dict[str, Any], **given: Any) -> None:
    """ConfigError for options a merge method does not take."""
    unknown = sorted(kw) + sorted(k for k, v in given.items() if v is not None)
    if unknown:
        raise ConfigError(f"merge method {method!r}: option {unknown[0]!r} is not supported")


@register_merge("average")
def average(states: Sequence[State], *, weights: Sequence[float] | None = None, activations: Any = None,
            anchor: int = 0, groups: Any = None, **kw: Any) -> State:
    """Element-wise mean of every tensor (keys and shapes must match)."""
    reject_options("average", kw, weights=weights, activations=activations)
    check_states(states)
    return weighted_mean(states, normalise_weights(None, len(states)))


@register_merge("weighted")
def weighted(states: Sequence[State], *, weights: Sequence[float] | None = None, activations: Any = None,
             anchor: int = 0, groups: Any = None, **kw: Any) -> State:
    """Weighted mean with non-negative ``weights`` (normalised to sum 1)."""
    reject_options("weighted", kw, activations=activations)
    if weights is None:
        raise ConfigError("weights: required by merge method 'weighted'")
    check_states(states)
    return weighted_mean(states, normalise_weights(weights, len(states)))
