"""Bottleneck adapters: sizes, initialisation, dropout, scaling and the learnable-activation hook."""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest
import torch
from torch import nn

from adapterkit import io as akio
from adapterkit.errors import ConfigError
from adapterkit.methods.base import ACTIVATIONS, BuildContext, register_activation
from adapterkit.methods.bottleneck import (
    Bottleneck,
    BottleneckConfig,
    HoulsbyConfig,
    ParallelConfig,
    PfeifferConfig,
    SequentialAdapter,
)
from adapterkit.model import AdaptedModel
from adapterkit.testing import padded_batch, routed_vs_solo, tiny_adapted, tiny_batch, tiny_model


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_bottleneck_size_overrides_reduction_factor() -> None:
    model = AdaptedModel(tiny_model("bert"))  # hidden 32
    model.add_adapter("rf", PfeifferConfig(reduction_factor=4))
    model.add_adapter("bs", PfeifferConfig(bottleneck_size=3, reduction_factor=4))
    state = model.adapter_state_dict("rf")
    assert state["layers.0.ffn_output.bottleneck.down.weight"].shape == (8, 32)
    assert model.adapter_state_dict("bs")["layers.1.ffn_output.bottleneck.up.weight"].shape == (32, 3)


def test_near_identity_is_close_to_but_not_exactly_identity() -> None:
    batch = tiny_batch()
    model = AdaptedModel(tiny_model("bert"))
    before = logits(model, batch)
    model.add_adapter("n", PfeifferConfig(init="near_identity"))
    after = logits(model, batch)
    diff = (after - before).abs().max().item()
    assert 0 < diff < 1e-2


def test_dropout_runs_only_in_training() -> None:
    torch.manual_seed(0)
    neck = Bottleneck(16, 4, "relu", "near_identity", dropout=0.5, scaling=1.0)
    x = torch.randn(3, 5, 16)
    neck.train()
    assert not torch.equal(neck(x), neck(x))
    neck.eval()
    assert torch.equal(neck(x), neck(x))


def test_scaling_multiplies_the_adapter_output() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 4, 16)
    one = Bottleneck(16, 4, "gelu", "near_identity", dropout=0.0, scaling=1.0)
    four = Bottleneck(16, 4, "gelu", "near_identity", dropout=0.0, scaling=4.0)
    four.load_state_dict(one.state_dict())
    assert torch.allclose(four(x), 4 * one(x), atol=1e-6)


def test_parallel_defaults_follow_he_et_al() -> None:
    config = ParallelConfig()
    assert config.placement == "parallel" and config.scaling == 4.0 and config.size(384) == 192


class Learnable(nn.Module):
    """A per-layer learnable activation: x * sigmoid(a x), a initialised to 1."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.a * x)


@pytest.fixture
def learnable() -> str:
    register_activation("test_learnable", Learnable)
    yield "test_learnable"
    ACTIVATIONS.pop("test_learnable")


def test_learnable_activation_hook_trains_saves_and_loads(learnable: str, tmp_path) -> None:
    model = AdaptedModel(tiny_model("bert"))
    model.add_adapter("a", BottleneckConfig(activation=learnable, init="near_identity"))
    keys = [k for k in model.adapter_state_dict("a") if k.endswith("act.a")]
    assert keys == ["layers.0.ffn_output.bottleneck.act.a", "layers.1.ffn_output.bottleneck.act.a"]
    model.train()
    model(**tiny_batch(num_labels=2)).loss.backward()
    grads = {k: p.grad for k, p in model.adapter_parameters("a").items() if k.endswith("act.a")}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    with torch.no_grad():
        model.adapter_parameters("a")["layers.1.ffn_output.bottleneck.act.a"].fill_(2.5)
    akio.save_adapter(model, "a", tmp_path / "a")
    other = AdaptedModel(tiny_model("bert"))
    akio.load_adapter(other, tmp_path / "a")
    assert other.adapter_state_dict("a")["layers.1.ffn_output.bottleneck.act.a"].item() == 2.5


def test_unknown_activation_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="activation"):
        PfeifferConfig(activation="no_such_activation")


# -- composition: the factory hook and the one bottleneck constructor ---------------------------------------
class GatedAdapter(SequentialAdapter):
    """A sequential adapter with a learned scalar gate (what a UniPELT-style method swaps in)."""

    def __init__(self, bottleneck: Bottleneck) -> None:
        super().__init__(bottleneck)
        self.gate = nn.Parameter(torch.zeros(1))

    def post(self, args, kwargs, output):
        return output + torch.sigmoid(self.gate) * self.bottleneck(output)


@dataclasses.dataclass
class GatedPfeifferConfig(PfeifferConfig):
    method: ClassVar[str] = "test_gated_pfeiffer"

    def build(self, ctx: BuildContext):
        return super().build(ctx.with_factories({SequentialAdapter: GatedAdapter}))


def test_a_build_can_swap_in_a_subclass_of_another_methods_module() -> None:
    model = AdaptedModel(tiny_model("bert"))
    model.add_adapter("g", GatedPfeifferConfig(init="near_identity"))
    modules = [m for _, m in model.adapter_modules("g")]
    assert len(modules) == 2 and all(type(m) is GatedAdapter for m in modules)
    assert "layers.1.ffn_output.gate" in model.adapter_state_dict("g")
    out = model(**tiny_batch(num_labels=2))
    out.loss.backward()
    assert model.adapter_parameters("g")["layers.0.ffn_output.gate"].grad is not None


@pytest.mark.parametrize("method", ["pfeiffer", "houlsby", "parallel", "adaptable", "adapterdrop"])
def test_every_bottleneck_method_makes_its_bottlenecks_through_one_constructor(method: str) -> None:
    from adapterkit.registry import METHODS

    made: list[Bottleneck] = []

    def counting(*args, **kwargs) -> Bottleneck:
        made.append(Bottleneck(*args, **kwargs))
        return made[-1]

    config = METHODS[method]()
    model = AdaptedModel(tiny_model("bert"))
    attachments = config.build(model.build_context().with_factories({Bottleneck: counting}))
    necks = [m for att in attachments for m in att.module.modules() if isinstance(m, Bottleneck)]
    assert necks and len(necks) == len(made) and all(any(n is m for m in made) for n in necks)


# -- mixed-adapter batches (adapter_names=): each row equals its solo run --------------------------------
@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "llama", "t5"])
def test_routing_houlsby_pfeiffer_parallel_rows_equal_their_solo_runs(arch: str) -> None:
    model = tiny_adapted(arch, {"h": HoulsbyConfig(init="near_identity"), "p": PfeifferConfig(init="near_identity"),
                                "q": ParallelConfig(init="near_identity")})
    assert routed_vs_solo(model, padded_batch(arch), ["h", None, "p", "q", "h", "q"]) <= 1e-5


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_routing_original_ln_and_gated_bottlenecks(arch: str) -> None:
    model = tiny_adapted(arch, {
        "ho": HoulsbyConfig(init="near_identity", original_ln=True), "po": PfeifferConfig(init="near_identity", original_ln=True),
        "g": PfeifferConfig(init="near_identity", gated=True), "gq": ParallelConfig(init="near_identity", gated=True),
        "go": HoulsbyConfig(init="near_identity", gated=True, original_ln=True)})
    assert routed_vs_solo(model, padded_batch(arch), ["ho", "po", None, "g", "gq", "go"]) <= 1e-5


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_routing_runs_plain_sequential_adapters_as_one_segmented_product(arch: str, monkeypatch) -> None:
    """Plain sequential adapters at a site (same activation): no per-adapter pass, still exact, scaling included."""
    model = tiny_adapted(arch, {"a": PfeifferConfig(init="near_identity"), "b": PfeifferConfig(init="near_identity",
                                reduction_factor=4, scaling=2.0), "h": HoulsbyConfig(init="near_identity", activation="relu"),
                                "i": HoulsbyConfig(init="near_identity", activation="relu", reduction_factor=8)})

    def per_group(*args, **kwargs):
        raise AssertionError("per-group path used")

    monkeypatch.setattr(SequentialAdapter, "route_post", per_group)
    assert routed_vs_solo(model, padded_batch(arch), ["a", "i", "b", "h", "a", None]) <= 1e-5
