"""Optimal-transport alignment of hidden units before averaging (OTFusion-style, as in MerA).

What is aligned is given by :class:`~adapterkit.methods.base.NeuronGroup` s (the neuron-access
protocol): a module that has permutable units says which tensors hold their incoming weights and
which read them (``Bottleneck.neuron_groups()``; ``AdaptedModel.neuron_groups(name)`` gives them under
an adapter's stable keys). Pass them as ``groups``; without, the groups of the standard bottleneck
layout found in the anchor's state dict are used (``methods.bottleneck.bottleneck_neuron_groups``).

For each group, the units of every adapter are matched to the anchor adapter's by exact OT with
uniform marginals. Equal widths give a permutation (the aligned adapter computes exactly the same
function); unequal widths a transport map ``T`` (n x m) with which incoming weights are moved
barycentrically (``m T^T [W | b]``) and outgoing ones split (``n W_out T``). The merged adapter has
the anchor's width.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from ..methods.base import NeuronGroup
from .base import State, check_states, normalise_weights, register_merge, reject_options, weighted_mean

CostFn = Callable[[int, str], Tensor]
"""``(adapter index, group prefix) -> cost`` between that adapter's neurons (rows) and the anchor's (columns)."""
Groups = Sequence[NeuronGroup] | None


def _groups(state: State, groups: Groups) -> list[NeuronGroup]:
    if groups is not None:
        return list(groups)
    from ..methods.bottleneck import bottleneck_neuron_groups

    return bottleneck_neuron_groups(state)


def _group(state: State, group: NeuronGroup | str) -> NeuronGroup:
    if isinstance(group, NeuronGroup):
        return group
    from ..methods.bottleneck import bottleneck_neuron_groups

    found = [g for g in bottleneck_neuron_groups(state) if g.prefix == group]
    if not found:
        raise ConfigError(f"state: key {group + 'down.weight'!r}: missing")
    return found[0]


def bottleneck_prefixes(state: State) -> list[str]:
    """Prefixes of the standard bottleneck neuron groups in ``state`` (see ``bottleneck_neuron_groups``)."""
    return [g.prefix for g in _groups(state, None)]


def _sq_dist(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances between the rows of ``a`` [n, d] and ``b`` [m, d], in float64."""
    a, b = a.detach().double(), b.detach().double()
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return d.clamp_min(0)


def _incoming(state: State, group: NeuronGroup) -> list[tuple[str, int]]:
    return [(k, d) for k, d in group.incoming if group.key(k) in state]


def _width(state: State, group: NeuronGroup) -> int:
    key, dim = group.incoming[0]
    if group.key(key) not in state:
        raise ConfigError(f"state: key {group.key(key)!r}: missing")
    return state[group.key(key)].shape[dim]


def _neurons(state: State, group: NeuronGroup) -> Tensor:
    """[n, d]: each unit's incoming weights (every incoming tensor, unit axis first, flattened) side by side."""
    parts = [state[group.key(k)].movedim(d, 0).reshape(_width(state, group), -1) for k, d in _incoming(state, group)]
    return torch.cat(parts, dim=1)


def neuron_cost_weights(state: State, anchor_state: State, group: NeuronGroup | str) -> Tensor:
    """Cost [n, m]: squared distance between the incoming-weight vectors (e.g. [down row, down bias]) of two
    adapters' units. ``group``: a NeuronGroup, or the prefix of a standard bottleneck."""
    for s, who in ((state, "state"), (anchor_state, "anchor_state")):
        prefix = group.prefix if isinstance(group, NeuronGroup) else group
        key = group.key(group.incoming[0][0]) if isinstance(group, NeuronGroup) else prefix + "down.weight"
        if key not in s:
            raise ConfigError(f"{who}: key {key!r}: missing")
    g = _group(anchor_state, group)
    return _sq_dist(_neurons(state, g), _neurons(anchor_state, g))


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


def align_group(state: State, group: NeuronGroup, plan: Tensor) -> State:
    """A copy of ``state`` with the units of ``group`` moved onto the plan's m target units.

    A permutation plan reorders incoming slices (Down rows, Down bias) and outgoing ones (Up columns)
    exactly (same function); a general plan gives incoming = m T^T [W | b] and outgoing = n W_out T.
    Other tensors (Up bias) are kept.
    """
    n, m = plan.shape
    width = _width(state, group)
    bad = [group.key(k) for k, d in (*_incoming(state, group), *group.outgoing)
           if group.key(k) in state and state[group.key(k)].shape[d] != n]
    if width != n or bad:
        key = bad[0] if bad else group.key(group.incoming[0][0])
        raise ConfigError(f"{key}: width {state[key].shape} does not match the transport map's {n} rows")
    out = dict(state)
    perm = _as_permutation(plan)
    if perm is not None:
        for k, d in (*_incoming(state, group), *group.outgoing):
            if group.key(k) in state:
                out[group.key(k)] = state[group.key(k)].index_select(d, perm).clone()
        return out
    t = plan.double()
    incoming = _incoming(state, group)
    moved = m * t.T @ _neurons(state, group).double()  # [m, d]
    start = 0
    for k, d in incoming:
        tensor = state[group.key(k)]
        first = tensor.movedim(d, 0)
        size = first[0].numel()
        part = moved[:, start:start + size].reshape(m, *first.shape[1:])
        out[group.key(k)] = part.movedim(0, d).to(tensor.dtype).contiguous()
        start += size
    for k, d in group.outgoing:
        tensor = state[group.key(k)]
        out[group.key(k)] = (n * tensor.double().movedim(d, -1) @ t).movedim(-1, d).to(tensor.dtype).contiguous()
    return out


def align_bottleneck(state: State, prefix: str, plan: Tensor) -> State:
    """:func:`align_group` for the standard bottleneck at ``prefix``."""
    return align_group(state, _group(state, prefix), plan)


def align_to_anchor(states: Sequence[State], anchor: int, costs_fn: CostFn, groups: Groups = None) -> list[State]:
    """Every state with its units aligned to ``states[anchor]`` (returned as is), group by group."""
    check_states(states, shapes=False)
    if not isinstance(anchor, int) or not 0 <= anchor < len(states):
        raise ConfigError(f"anchor: {anchor!r} is not an adapter index (0..{len(states) - 1})")
    found = _groups(states[anchor], groups)
    if not found:
        raise ConfigError("states: no neuron groups (no bottleneck modules; pass groups=AdaptedModel.neuron_groups(name))")
    aligned: list[State] = []
    for i, state in enumerate(states):
        if i == anchor:
            aligned.append(dict(state))
            continue
        for group in found:
            state = align_group(state, group, transport_map(costs_fn(i, group.prefix)))
        aligned.append(state)
    return aligned


def _check_activations(states: Sequence[State], activations: Any, groups: list[NeuronGroup]) -> None:
    if not isinstance(activations, Sequence) or len(activations) != len(states):
        raise ConfigError(f"activations: expected a list of {len(states)} dicts (one per adapter), got {type(activations).__name__}"
                          + (f" of length {len(activations)}" if isinstance(activations, Sequence) else ""))
    for i, (state, acts) in enumerate(zip(states, activations, strict=True)):
        if not isinstance(acts, dict):
            raise ConfigError(f"activations[{i}]: expected a dict {{module prefix: [tokens, width] tensor}}")
        for group in groups:
            prefix = group.prefix
            if prefix not in acts:
                raise ConfigError(f"activations[{i}]: module {prefix!r}: missing")
            t, width = acts[prefix], _width(state, group)
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
               anchor: int = 0, groups: Groups = None, **kw: Any) -> State:
    """Align units to the anchor by their incoming weights (Down weights and biases), then (weighted-)average."""
    reject_options("ot_weights", kw, activations=activations)
    check_states(states, shapes=False)
    if not isinstance(anchor, int) or not 0 <= anchor < len(states):
        raise ConfigError(f"anchor: {anchor!r} is not an adapter index (0..{len(states) - 1})")
    by_prefix = {g.prefix: g for g in _groups(states[anchor], groups)}

    def cost(i: int, prefix: str) -> Tensor:
        return neuron_cost_weights(states[i], states[anchor], by_prefix[prefix])

    return _merge_aligned(align_to_anchor(states, anchor, cost, list(by_prefix.values())), weights)


@register_merge("ot_activations")
def ot_activations(states: Sequence[State], *, weights: Sequence[float] | None = None, activations: Any = None,
                   anchor: int = 0, groups: Groups = None, **kw: Any) -> State:
    """Align neurons to the anchor by their activations on shared inputs, then (weighted-)average."""
    reject_options("ot_activations", kw)
    if activations is None:
        raise ConfigError("activations: required by merge method 'ot_activations' (see collect_bottleneck_activations)")
    check_states(states, shapes=False)
    if not isinstance(anchor, int) or not 0 <= anchor < len(states):
        raise ConfigError(f"anchor: {anchor!r} is not an adapter index (0..{len(states) - 1})")
    found = _groups(states[anchor], groups)
    _check_activations(states, activations, found)

    def cost(i: int, prefix: str) -> Tensor:
        return neuron_cost_activations(activations[i][prefix], activations[anchor][prefix])

    return _merge_aligned(align_to_anchor(states, anchor, cost, found), weights)
