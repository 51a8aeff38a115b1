"""What every method shares: where a module attaches, the build context, and activation functions."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..architectures import ArchitectureSpec, Layer
from ..errors import ConfigError
from ..injection import AdapterModule


@dataclass
class Attachment:
    """One module of an adapter: attached at ``site`` of layer ``layer`` (None = a model-level site)."""

    layer: int | None
    site: str
    module: AdapterModule


@dataclass
class BuildContext:
    """What a method needs to know about the model it adapts."""

    model: nn.Module
    spec: ArchitectureSpec
    layers: list[Layer]
    hidden_size: int
    num_attention_heads: int
    head_dim: int
    num_key_value_heads: int

    def layer_indices(self, selected: tuple[int, ...] | None, source: str = "layers") -> list[int]:
        """Selected layer indices (all when None), validated against the model's layer count."""
        if selected is None:
            return [layer.index for layer in self.layers]
        bad = [i for i in selected if not 0 <= i < len(self.layers)]
        if bad:
            raise ConfigError(f"{source}: layer indices {bad} out of range; the model has {len(self.layers)} layers")
        return sorted(set(selected))


class Identity(nn.Module):
    def forward(self, x):  # noqa: D401
        return x


ACTIVATIONS: dict[str, Callable[[int], nn.Module]] = {
    "relu": lambda dim: nn.ReLU(),
    "gelu": lambda dim: nn.GELU(),
    "swish": lambda dim: nn.SiLU(),
    "silu": lambda dim: nn.SiLU(),
    "tanh": lambda dim: nn.Tanh(),
    "identity": lambda dim: Identity(),
    "linear": lambda dim: Identity(),
}


def register_activation(name: str, factory: Callable[[int], nn.Module]) -> None:
    """Hook for learnable activations: ``factory(bottleneck_size)`` returns a fresh module per adapter layer."""
    ACTIVATIONS[name] = factory


def make_activation(name: str, dim: int) -> nn.Module:
    try:
        return ACTIVATIONS[name](dim)
    except KeyError:
        raise ConfigError(f"activation: unknown {name!r}; known: {sorted(ACTIVATIONS)}") from None
