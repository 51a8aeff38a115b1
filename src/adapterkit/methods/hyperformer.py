"""HyperFormer++ (Karimi Mahabadi et al., ACL 2021; rabeehk/hyperformer ``AdapterLayersOneHyperNetController``).

One shared hypernetwork generates every adapter from (task embedding ++ layer-id embedding ++ block-type
embedding), 3 x 64 -> Linear(192 -> 128), ReLU, Linear(128 -> 64), LayerNorm(64); heads for Down/Up weight and
bias and for a task-conditioned LayerNorm on the adapter output (``conditional_layer_norm``), all initialised
N(0, 1e-2) with zero biases. Adapters go after the attention and the FFN output projections (sequential,
bottleneck 24 = 768 / 32, ``gelu``): h + LN_gen(Up(act(Down(h)))).

Differences from the authors' code, on purpose: one hypernetwork for encoder and decoder of a T5 (layers
numbered globally; the authors keep one per stack), and the backbone's own LayerNorms stay frozen (the
authors unfreeze them; here only adapter parameters train). Task embeddings are learned (randn init); the
batch key ``task_ids`` indexes ``tasks``. The generated-adapter machinery is :mod:`.hypernet`'s, shared with PHA.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from ..config import MethodConfig, check, opt
from ..registry import register_method
from .base import Attachment, BuildContext
from .bottleneck import Bottleneck, BottleneckConfig, ParallelAdapter, SequentialAdapter
from .hypernet import (
    FIXED_ACTIVATIONS,
    GeneratedBottleneck,
    GeneratedParallelAdapter,
    GeneratedSequentialAdapter,
    HyperNetShared,
    Slot,
    check_shared_tensor,
)


class HyperFormerShared(HyperNetShared):
    """Task embeddings, layer-id and block-type embeddings and the one hypernetwork of a HyperFormer++ adapter."""

    def __init__(self, config: HyperFormerConfig, hidden: int, slots: list[Slot], num_layers: int) -> None:
        d = config.task_embedding_dim
        super().__init__(config.tasks, slots, hidden, config.bottleneck_size, d, 2 * d, config.hypernet_hidden,
                         config.hypernet_dim, config.conditional_layer_norm, config.init_std)
        self.task_embedding = nn.Parameter(torch.randn(len(config.tasks), d))
        self.layer_embedding = nn.Embedding(num_layers, d)
        self.block_embedding = nn.Embedding(2, d)
        self.register_buffer("slot_layers", torch.tensor([s.layer for s in slots], dtype=torch.long), persistent=False)
        self.register_buffer("slot_blocks", torch.tensor([s.block for s in slots], dtype=torch.long), persistent=False)

    def slot_embeddings(self) -> torch.Tensor:
        return torch.cat([self.layer_embedding(self.slot_layers), self.block_embedding(self.slot_blocks)], dim=-1)

    def condition_table(self) -> torch.Tensor:
        return self.task_embedding


@register_method
@dataclass
class HyperFormerConfig(MethodConfig):
    """HyperFormer++: one hypernetwork over task, layer and block-type embeddings generates every adapter."""

    method: ClassVar[str] = "hyperformer"

    tasks: tuple[str, ...] = opt(("task",), "task names, one learned embedding each; the batch key task_ids "
                                 "indexes this list (may be left out of the batch when there is one task)")
    placement: Literal["houlsby", "pfeiffer", "parallel"] = opt(
        "houlsby", "houlsby: after the attention and FFN outputs (HyperFormer++); pfeiffer: after the FFN only; "
        "parallel: beside the FFN")
    bottleneck_size: int = opt(24, "adapter bottleneck width (768 / reduction factor 32 in the paper)")
    activation: str = opt("gelu", f"activation inside the adapters: one of {', '.join(FIXED_ACTIVATIONS)}")
    task_embedding_dim: int = opt(64, "width of the task, layer-id and block-type embeddings")
    hypernet_hidden: int = opt(128, "hidden width of the task hypernetwork")
    hypernet_dim: int = opt(64, "output width of the task hypernetwork (LayerNorm, then the weight heads)")
    conditional_layer_norm: bool = opt(True, "a LayerNorm with generated weight and bias on each adapter's output")
    init_std: float = opt(1e-2, "std of the normal init of every hypernetwork layer (biases 0)")
    layers: tuple[int, ...] | None = opt(None, "layer indices that get adapters (default: all)")
    learning_rate: float | None = opt(None, "learning rate for the adapter's parameters (default: the trainer's; "
                                      "the authors use 3e-4)")

    def validate(self) -> None:
        check(isinstance(self.tasks, tuple) and len(self.tasks) > 0 and all(isinstance(t, str) and t for t in self.tasks),
              "tasks", "name at least one task (non-empty strings)")
        check(len(set(self.tasks)) == len(self.tasks), "tasks", f"duplicate task names in {list(self.tasks)}")
        check(self.placement in ("houlsby", "pfeiffer", "parallel"), "placement", f"unknown {self.placement!r}")
        for name in ("bottleneck_size", "task_embedding_dim", "hypernet_hidden", "hypernet_dim"):
            check(getattr(self, name) > 0, name, "must be > 0")
        check(self.activation in FIXED_ACTIVATIONS, "activation", f"use one of {list(FIXED_ACTIVATIONS)}")
        check(isinstance(self.conditional_layer_norm, bool), "conditional_layer_norm", "must be true or false")
        check(self.init_std > 0, "init_std", "must be > 0")

    def build(self, ctx: BuildContext) -> list[Attachment]:
        plain = BottleneckConfig(placement=self.placement, bottleneck_size=self.bottleneck_size,
                                 activation=self.activation, layers=self.layers)
        slots: list[Slot] = []
        out: list[Attachment] = []
        for layer in ctx.layer_indices(self.layers):
            for site in plain.sites():
                slot = len(slots)
                slots.append(Slot(layer, site, 1 if site.startswith("attn") else 0))
                gen = ctx.with_factories({
                    Bottleneck: lambda hidden, size, act, init, dropout, scaling, _s=slot: GeneratedBottleneck(
                        _s, hidden, size, act, dropout),
                    ParallelAdapter: GeneratedParallelAdapter,
                    SequentialAdapter: GeneratedSequentialAdapter,
                })
                out.append(Attachment(layer, site, plain.make_module(gen, layer, site)))
        shared = HyperFormerShared(self, ctx.hidden_size, slots, len(ctx.layers))
        return [Attachment(None, "shared", shared), *out]

    def check_state_dict(self, state: dict[str, torch.Tensor], source: object = None) -> None:
        n, d = len(self.tasks), self.task_embedding_dim
        check_shared_tensor(state, "shared.task_embedding", (n, d), source, "tasks / task_embedding_dim",
                            f"{n} task embeddings of width {d}")
        check_shared_tensor(state, "shared.trunk.0.weight", (self.hypernet_hidden, 3 * d), source,
                            "task_embedding_dim", "the hypernetwork's input (3 x task_embedding_dim)")
