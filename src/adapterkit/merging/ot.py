"""Optimal-transport alignment of bottleneck neurons before averaging (OTFusion-style, as in MerA).

For each bottleneck module (key prefix ``P`` with ``P + "down.weight"`` and ``P + "up.weight"``), the
neurons of every adapter are matched to the anchor adapter's by exact OT with uniform marginals. Equal
widths give a permutation (the aligned adapter computes exactly the same function); unequal widths a
transport map ``T`` (n x m) with which Down rows are moved barycentrically (``m T^T [W | b]``) and Up
columns split (``n W_up T``). The merged adapter has the anchor's width.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from .base import State, check_states, normalise_weights, register_merge, reject_options, weighted_mean

CostFn = Callable[[int, str], Tensor]
"""``(adapter index, module prefix) -> cost`` between that adapter's neurons (rows) and the anchor's (columns)."""


def bottleneck_prefixes(state: State) -> list[str]:
    """Prefixes ``P`` (ending in '.') with ``P + "down.weight"`` and ``P + "up.weight"`` in ``state``."""
    return sorted(k[: -len("down.weight")] for k in state if k.endswith("down.weight") and
                  k[: -len("down.weight")] + "up.weight" in state)


def _sq_dist(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances between the rows of ``a`` [n, d] and ``b`` [m, d], in float64."""
    a, b = a.detach().double(), b.detach().double()
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return d.clamp_min(0)


def _neurons(state: State, prefix: str) -> Tensor:
    down = state[prefix + "down.weight"]
    bias = state.get(prefix + "down.bias")
    if bias is None:
        bias = torch.zeros(down.shape[0], dtype=down.dtype)
    return torch.cat([down, bias[:, None]], dim=1)


def neuron_cost_weights(state: State, anchor_state: State, prefix: str) -> Tensor:
    """Cost [n, m]: squared distance between the [down row, down bias] vectors of two adapters' neurons."""
    for s, who in ((state, "state"), (anchor_state, "anchor_state")):
        if prefix + "down.weight" not in s:
            raise ConfigError(f"{who}: key {prefix + 'down.weight'!r}: missing")
    return _sq_dist(_neurons(state, prefix), _neurons(anchor_state, prefix))


def neuron_cost_activations(acts: Tensor, anchor_acts: Tensor) -> Tensor:
    """Cost [n, m]: squared distance between activation columns ([tokens, n] vs [tokens, m], same tokens)."""
    if acts.dim() != 2 or anchor_acts.dim() != 2 or acts.shape[0] != anchor_acts.shape[0]:
        raise ConfigError(
            f"activations: expected [tokens, width] tensors over the same tokens, got {tuple(acts.shape)} "
            f"and {tuple(anchor_acts.shape)}"
        )
    return _sq_dist(acts.T, anchor_acts.T)


def transport_map(cost: Tensor) -> Tensor:
    """Exact OT plan (float64, n x m) for uniform marginals: rows sum to 1/n, columns to 1/m.

    Square costs give a permutation matrix / n (Hungarian algorithm); others solve the transport LP.
    """
    from scipy.optimize import linear_sum_assignment, linprog

    c = cost.detach().double().cpu().numpy()
    if c.ndim != 2 or 0 in c.shape or not np.isfinite(c).all():
        raise ConfigError(f"cost: expected a finite 2-d matrix, got shape {tuple(c.shape)}")
    n, m = c.shape
    if n == m:
        rows, cols = linear_sum_assignment(c)
        plan = np.zeros((n, m))
        plan[rows, cols] = 1.0 / n
        return torch.from_numpy(plan)
    a_eq = np.zeros((n + m, n * m))
    for i in range(n):
        a_eq[i, i * m:(i + 1) * m] = 1.0
    for j in range(m):
        a_eq[n + j, j::m] = 1.0
    b_eq = np.concatenate([np.full(n, 1.0 / n), np.full(m, 1.0 / m)])
    result = linprog(c.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    if not result.success:
        raise ConfigError(f"cost: transport problem ({n}x{m}) not solved: {result.message}")
    return torch.from_numpy(np.clip(result.x.reshape(n, m), 0.0, None))


def _as_permutation(plan: Tensor) -> Tensor | None:
    """For a square plan that is a permutation / n: ``perm`` with anchor neuron k <- source neuron perm[k]."""
    n, m = plan.shape
    if n != m:
        return None
    scaled = plan * n
    if not torch.allclose(scaled, scaled.round(), atol=1e-9):
        return None
    binary = scaled.round()
    if not (torch.all(binary.sum(0) == 1) and torch.all(binary.sum(1) == 1)):
        return None
    return binary.argmax(0)


def align_bottleneck(state: State, prefix: str, plan: Tensor) -> State:
    """A copy of ``state`` with the bottleneck at ``prefix`` moved onto the plan's m target neurons.

    A permutation plan reorders Down rows, Down bias and Up columns exactly (same function); a general
    plan gives Down = m T^T [W | b] and Up = n W_up T. Up bias and other tensors are kept.
    """
    down = state[prefix + "down.weight"]
    up = state[prefix + "up.weight"]
    n, m = plan.shape
    if down.shape[0] != n or up.shape[1] != n:
        raise ConfigError(f"{prefix}down.weight: width {down.shape[0]} does not match the transport map's {n} rows")
    out = dict(state)
    has_bias = prefix + "down.bias" in state
    perm = _as_permutation(plan)
    if perm is not None:
        out[prefix + "down.weight"] = down[perm].clone()
        if has_bias:
            out[prefix + "down.bias"] = state[prefix + "down.bias"][perm].clone()
        out[prefix + "up.weight"] = up[:, perm].clone()
        return out
    t = plan.double()
    moved = m * t.T @ _neurons(state, prefix).double()
    out[prefix + "down.weight"] = moved[:, :-1].to(down.dtype)
    if has_bias:
        out[prefix + "down.bias"] = moved[:, -1].to(state[prefix + "down.bias"].dtype)
    out[prefix + "up.weight"] = (n * up.double() @ t).to(up.dtype)
    return out


def align_to_anchor(states: Sequence[State], anchor: int, costs_fn: CostFn) -> list[State]:
    """Every state with its bottleneck neurons aligned to ``states[anchor]`` (which is returned as is)."""
    check_states(states, shapes=False)
    if not isinstance(anchor, int) or not 0 <= anchor < len(states):
        raise ConfigError(f"anchor: {anchor!r} is not an adapter index (0..{len(states) - 1})")
    prefixes = bottleneck_prefixes(states[anchor])
    if not prefixes:
        raise ConfigError("states: no bottleneck modules (keys ending in 'down.weight' and 'up.weight')")
    aligned: list[State] = []
    for i, state in enumerate(states):
        if i == anchor:
            aligned.append(dict(state))
            continue
        for prefix in prefixes:
            state = align_bottleneck(state, prefix, transport_map(costs_fn(i, prefix)))
        aligned.append(state)
    return aligned


def _check_activations(states: Sequence[State], activations: Any, prefixes: list[str]) -> None:
    if not isinstance(activations, Sequence) or len(activations) != len(states):
        raise ConfigError(f"activations: expected a list of {len(states)} dicts (one per adapter), got {type(activations).__name__}"
                          + (f" of length {len(activations)}" if isinstance(activations, Sequence) else ""))
    for i, (state, acts) in enumerate(zip(states, activations, strict=True)):
        if not isinstance(acts, dict):
            raise ConfigError(f"activations[{i}]: expected a dict {{module prefix: [tokens, width] tensor}}")
        for prefix in prefixes:
            if prefix not in acts:
                raise ConfigError(f"activations[{i}]: module {prefix!r}: missing")
            t, width = acts[prefix], state[prefix + "down.weight"].shape[0]
            if not isinstance(t, Tensor) or t.dim() != 2 or t.shape[1] != width:
                shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ConfigError(f"activations[{i}]: module {prefix!r}: expected [tokens, {width}], got {shape}")
            if t.shape[0] != activations[0][prefix].shape[0]:
                raise ConfigError(f"activations[{i}]: module {prefix!r}: {t.shape[0]} tokens, activations[0] has "
                                  f"{activations[0][prefix].shape[0]}")


def _merge_aligned(aligned: list[State], weights: Sequence[float] | None) -> State:
    return weighted_mean(aligned, normalise_weights(weights, len(aligned)))


@register_merge("ot_weights")
def ot_weights(states: Sequence[State], *, weights: Sequence[float] | None = None, activations: Any = None,
               anchor: int = 0, **kw: Any) -> State:
    """Align neurons to the anchor by their Down weights and biases, then (weighted-)average."""
    reject_options("ot_weights", kw, activations=activations)

    def cost(i: int, prefix: str) -> Tensor:
        return neuron_cost_weights(states[i], states[anchor], prefix)

    return _merge_aligned(align_to_anchor(states, anchor, cost), weights)


@register_merge("ot_activations")
def ot_activations(states: Sequence[State], *, weights: Sequence[float] | None = None, activations: Any = None,
                   anchor: int = 0, **kw: Any) -> State:
    """Align neurons to the anchor by their activations on shared inputs, then (weighted-)average."""
    reject_options("ot_activations", kw)
    if activations is None:
        raise ConfigError("activations: required by merge method 'ot_activations' (see collect_bottleneck_activations)")
    check_states(states, shapes=False)
    if not isinstance(anchor, int) or not 0 <= anchor < len(states):
        raise ConfigError(f"anchor: {anchor!r} is not an adapter index (0..{len(states) - 1})")
    _check_activations(states, activations, bottleneck_prefixes(states[anchor]))

    def cost(i: int, prefix: str) -> Tensor:
        return neuron_cost_activations(activations[i][prefix], activations[anchor][prefix])

    return _merge_aligned(align_to_anchor(states, anchor, cost), weights)
