"""What every method shares: where a module attaches, the build context (with its factory hook), neuron
groups for merging, and activation functions."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

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


M = TypeVar("M", bound=nn.Module)


@dataclass
class BuildContext:
    """What a method needs to know about the model it adapts, and the factory hook.

    ``factories`` maps a module class to a callable that is used instead of it when a method builds
    its modules through :meth:`create`: a composed method (a gated UniPELT, a hypernetwork-generated
    bottleneck) calls another method's ``build`` with ``ctx.with_factories({SequentialAdapter:
    GatedAdapter})`` and gets its own subclass everywhere that method would have made the original.
    """

    model: nn.Module
    spec: ArchitectureSpec
    layers: list[Layer]
    hidden_size: int
    num_attention_heads: int
    head_dim: int
    num_key_value_heads: int
    factories: Mapping[type, Callable[..., nn.Module]] = field(default_factory=dict)

    def create(self, cls: type[M], *args: Any, **kwargs: Any) -> M:
        """``cls(*args, **kwargs)``, or the factory registered for ``cls`` called with the same arguments."""
        factory = self.factories.get(cls)
        return cls(*args, **kwargs) if factory is None else factory(*args, **kwargs)

    def with_factories(self, factories: Mapping[type, Callable[..., nn.Module]]) -> BuildContext:
        """A copy of this context whose :meth:`create` uses ``factories`` (on top of the current ones)."""
        return dataclasses.replace(self, factories={**self.factories, **factories})

    def layer_indices(self, selected: tuple[int, ...] | None, source: str = "layers") -> list[int]:
        """Selected layer indices (all when None), validated against the model's layer count."""
        if selected is None:
            return [layer.index for layer in self.layers]
        bad = [i for i in selected if not 0 <= i < len(self.layers)]
        if bad:
            raise ConfigError(f"{source}: layer indices {bad} out of range; the model has {len(self.layers)} layers")
        return sorted(set(selected))


@dataclass(frozen=True)
class NeuronGroup:
    """Hidden units of one module that can be permuted without changing its function (a bottleneck's
    width): what optimal-transport merging aligns.

    ``incoming``: (key, dim) of the tensors whose slices along ``dim`` are the units' input weights
    (e.g. ``("down.weight", 0), ("down.bias", 0)``); ``outgoing``: (key, dim) of the tensors that read
    the units (``("up.weight", 1)``). Keys are relative to ``prefix``. ``activation`` is the module whose
    output is the units' activations (for activation-based alignment), when a model is at hand.
    """

    prefix: str
    incoming: tuple[tuple[str, int], ...]
    outgoing: tuple[tuple[str, int], ...]
    activation: nn.Module | None = field(default=None, compare=False, repr=False)

    def prefixed(self, base: str) -> NeuronGroup:
        """The same group under key prefix ``base + prefix``."""
        return dataclasses.replace(self, prefix=base + self.prefix)

    def key(self, name: str) -> str:
        return self.prefix + name


@runtime_checkable
class Mergeable(Protocol):
    """A site module that can fold itself into the wrapped layer's weights (LoRA): ``merge(exact)`` adds its
    update (``exact``: keep a copy of the original for a bit-exact ``unmerge``), ``unmerge`` takes it out."""

    merged: bool

    def merge(self, exact: bool = False) -> None: ...

    def unmerge(self) -> None: ...


@runtime_checkable
class HasNeurons(Protocol):
    """A module with permutable hidden units (a bottleneck): what optimal-transport merging aligns."""

    def neuron_groups(self) -> list[NeuronGroup]: ...


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
