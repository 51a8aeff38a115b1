"""Bottleneck adapters: sizes, initialisation, dropout, scaling and the learnable-activation hook."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from adapterkit import io as akio
from adapterkit.errors import ConfigError
from adapterkit.methods.base import ACTIVATIONS, register_activation
from adapterkit.methods.bottleneck import Bottleneck, BottleneckConfig, ParallelConfig, PfeifferConfig
from adapterkit.model import AdaptedModel
from adapterkit.testing import tiny_batch, tiny_model


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
