"""Merging adapters: pure functions from adapter state dicts to one state dict.

``merge_adapters(method, states, **kw)`` with ``method`` in :data:`MERGE_METHODS`: ``average``,
``weighted``, ``ot_weights`` and ``ot_activations`` (neurons aligned by optimal transport first).
"""
from .activations import collect_bottleneck_activations
from .base import (
    MERGE_METHODS,
    average,
    get_merge,
    merge_adapters,
    normalise_weights,
    register_merge,
    weighted,
)
from .ot import (
    align_bottleneck,
    align_to_anchor,
    bottleneck_prefixes,
    neuron_cost_activations,
    neuron_cost_weights,
    ot_activations,
    ot_weights,
    transport_map,
)

__all__ = [
    "MERGE_METHODS", "align_bottleneck", "align_to_anchor", "average", "bottleneck_prefixes",
    "collect_bottleneck_activations", "get_merge", "merge_adapters", "neuron_cost_activations",
    "neuron_cost_weights", "normalise_weights", "ot_activations", "ot_weights", "register_merge",
    "transport_map", "weighted",
]
