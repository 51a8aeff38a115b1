"""AdapterDrop: the lowest n layers skip their adapters in training; evaluation is a plain Pfeiffer adapter."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from adapterkit.errors import ConfigError
from adapterkit.methods.adapterdrop import AdapterDropConfig, DroppableAdapter
from adapterkit.methods.bottleneck import PfeifferConfig
from adapterkit.model import AdaptedModel
from adapterkit.testing import padded_batch, routed_vs_solo, tiny_adapted, tiny_batch, tiny_model

LAYERS = 4


def adapted(config: AdapterDropConfig | PfeifferConfig, name: str = "d") -> AdaptedModel:
    model = AdaptedModel(tiny_model("bert", num_hidden_layers=LAYERS))
    model.add_adapter(name, config)
    return model


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_default_drop_range_is_num_layers_minus_two() -> None:
    modules = [m for _, m in adapted(AdapterDropConfig()).adapter_modules("d")]
    assert all(isinstance(m, DroppableAdapter) for m in modules)
    assert len({id(m.sampler) for m in modules}) == 1 and modules[0].sampler.max_layers == LAYERS - 2
    assert [m.layer for m in modules] == [0, 1, 2, 3]  # from the binding attach sets
    assert AdapterDropConfig(drop_max_layers=3).max_layers(12) == 3


def test_invalid_drop_max_layers_names_the_field() -> None:
    with pytest.raises(ConfigError, match="drop_max_layers"):
        AdapterDropConfig(drop_max_layers=-1)
    with pytest.raises(ConfigError, match="drop_max_layers"):
        adapted(AdapterDropConfig(drop_max_layers=LAYERS + 1))


def test_state_dict_and_evaluation_match_a_pfeiffer_adapter() -> None:
    drop = adapted(AdapterDropConfig(init="near_identity"))
    plain = adapted(PfeifferConfig(init="near_identity"), name="p")
    state = drop.adapter_state_dict("d")
    assert set(state) == set(plain.adapter_state_dict("p"))
    with torch.no_grad():
        for p in state.values():
            p.normal_(0, 0.2)
    plain.load_adapter_state_dict("p", state)
    batch = tiny_batch()
    assert torch.equal(logits(drop.eval(), batch), logits(plain.eval(), batch))


def test_training_drops_the_lowest_sampled_layers() -> None:
    model = adapted(AdapterDropConfig(drop_max_layers=3))
    model.train()
    modules = [m for _, m in model.adapter_modules("d")]
    calls: list[int] = []
    for module in modules:
        module.bottleneck.register_forward_hook(lambda mod, inp, out, i=module.layer: calls.append(i))
    batch = tiny_batch()
    seen: dict[int, list[int]] = {}
    for seed in range(12):
        calls.clear()
        torch.manual_seed(seed)
        logits(model, batch)
        n = modules[0].sampler.n
        assert calls == list(range(n, LAYERS)), (seed, n, calls)
        seen.setdefault(n, calls.copy())
        calls.clear()
        torch.manual_seed(seed)
        logits(model, batch)
        assert modules[0].sampler.n == n  # seeded: the same n again
    assert set(seen) == {0, 1, 2, 3}
    model.eval()
    calls.clear()
    logits(model, batch)
    assert calls == list(range(LAYERS))


def test_dropped_adapters_get_no_gradient() -> None:
    model = adapted(AdapterDropConfig(drop_max_layers=2))
    model.train()
    sampler = next(m for _, m in model.adapter_modules("d")).sampler
    for seed in range(20):
        model.zero_grad()
        torch.manual_seed(seed)
        model(**tiny_batch(num_labels=2)).loss.backward()
        if sampler.n == 2:
            break
    assert sampler.n == 2
    params = model.adapter_parameters("d")
    assert params["layers.1.ffn_output.bottleneck.down.weight"].grad is None
    assert params["layers.2.ffn_output.bottleneck.up.weight"].grad is not None


# -- mixed-adapter batches (adapter_names=): each row equals its solo run --------------------------------
def test_routing_adapterdrop_in_evaluation_equals_solo_runs() -> None:
    model = tiny_adapted("bert", {"d": AdapterDropConfig(init="near_identity"), "p": PfeifferConfig(init="near_identity")})
    assert routed_vs_solo(model, padded_batch("bert", 4), ["d", None, "p", "d"]) <= 1e-5
