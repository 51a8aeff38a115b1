"""Bottleneck activations of one adapter on a batch: the input of activation-based OT merging."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..model import AdaptedModel


def collect_bottleneck_activations(adapted: AdaptedModel, name: str, batch: dict[str, Any]) -> dict[str, Tensor]:
    """{neuron group prefix (e.g. ``layers.0.ffn_output.bottleneck.``): [tokens, width]} for adapter ``name`` alone.

    The groups are ``adapted.neuron_groups(name)`` (the neuron-access protocol); each group's
    ``activation`` module is hooked. Runs ``batch`` (without ``labels``) in eval mode under no_grad;
    padding tokens (``attention_mask == 0``) are dropped. Active adapters and train mode are restored.
    """
    hooks, captured = [], {}
    for group in adapted.neuron_groups(name):
        act = group.activation
        if act is None:
            continue
        key = group.prefix

        def keep(mod: Any, inputs: Any, output: Tensor, key: str = key) -> None:
            captured[key] = output.detach()

        hooks.append(act.register_forward_hook(keep))
    if not hooks:
        raise ConfigError(f"adapter {name!r}: has no bottleneck modules")
    previous, was_training = adapted.active_adapters, adapted.training
    try:
        adapted.set_active_adapters(name)
        adapted.eval()
        with torch.no_grad():
            adapted(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        for hook in hooks:
            hook.remove()
        adapted.set_active_adapters(*previous)
        adapted.train(was_training)
    mask = batch.get("attention_mask")
    out: dict[str, Tensor] = {}
    for key, acts in captured.items():
        if mask is not None:
            if tuple(acts.shape[:-1]) != tuple(mask.shape):
                raise ConfigError(f"{key}: activations of shape {tuple(acts.shape)} do not match attention_mask {tuple(mask.shape)}")
            acts = acts[mask.bool()]
        out[key] = acts.reshape(-1, acts.shape[-1])
    return out
