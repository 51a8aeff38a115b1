"""LoRA: scaling, targets across architectures, and exact merge/unmerge with several LoRAs on one weight."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from adapterkit.errors import ConfigError
from adapterkit.methods.lora import LoRAConfig, LoRALinear
from adapterkit.model import AdaptedModel
from adapterkit.testing import padded_batch, routed_vs_solo, tiny_adapted, tiny_batch, tiny_model


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def randomize(model: AdaptedModel, name: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.adapter_parameters(name).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_update_is_alpha_over_r_times_BA() -> None:
    torch.manual_seed(0)
    lora = LoRALinear(6, 5, r=2, alpha=8.0, dropout=0.0)
    nn.init.normal_(lora.lora_B)
    x = torch.randn(3, 6)
    base_out = torch.randn(3, 5)
    out = lora.post((x,), {}, base_out)
    assert torch.allclose(out, base_out + 4.0 * x @ lora.lora_A.T @ lora.lora_B.T, atol=1e-5)
    assert torch.allclose(lora.delta_weight(), 4.0 * lora.lora_B @ lora.lora_A)


@pytest.mark.parametrize("model_type", ["llama", "t5", "distilbert"])
def test_all_six_targets(model_type: str) -> None:
    model = AdaptedModel(tiny_model(model_type))
    model.add_adapter("l", LoRAConfig(targets=("query", "key", "value", "output", "ffn_in", "ffn_out")))
    sites = {k.split(".")[2] for k in model.adapter_state_dict("l")}
    assert sites == {"query", "key", "value", "output", "ffn_in", "ffn_out"}
    model.train()
    eos = model.model.config.eos_token_id if model_type == "t5" else None  # T5's classifier pools at <eos>
    model(**tiny_batch(num_labels=2, eos_token_id=eos)).loss.backward()
    assert all(p.grad is not None for k, p in model.adapter_parameters("l").items() if k.endswith("lora_A"))


def test_two_loras_on_one_weight_merge_and_unmerge_exactly_in_reverse_order() -> None:
    batch = tiny_batch()
    model = AdaptedModel(tiny_model("bert"))
    weight = model.model.bert.encoder.layer[0].attention.self.query.weight
    original = weight.detach().clone()
    model.add_adapter("a", LoRAConfig())
    model.add_adapter("b", LoRAConfig(r=4))
    randomize(model, "a", 1)
    randomize(model, "b", 2)
    model.set_active_adapters("a", "b")
    unmerged = logits(model, batch)
    model.merge_adapter("a", exact=True)
    model.merge_adapter("b", exact=True)
    assert torch.allclose(logits(model, batch), unmerged, atol=1e-5)
    with pytest.raises(RuntimeError, match="after this one first"):
        model.unmerge_adapter("a")
    model.unmerge_adapter("b")
    model.unmerge_adapter("a")
    assert torch.equal(weight, original)
    assert torch.allclose(logits(model, batch), unmerged, atol=1e-6)


def test_deleting_a_merged_lora_restores_the_base_weight() -> None:
    model = AdaptedModel(tiny_model("bert"))
    weight = model.model.bert.encoder.layer[1].attention.self.value.weight
    original = weight.detach().clone()
    model.add_adapter("a", LoRAConfig())
    randomize(model, "a", 3)
    model.merge_adapter("a")
    assert not torch.equal(weight, original)
    model.delete_adapter("a")  # the delta is subtracted again: equal up to rounding
    assert torch.allclose(model.model.bert.encoder.layer[1].attention.self.value.weight, original, atol=1e-6)


def test_bad_fields() -> None:
    with pytest.raises(ConfigError, match="targets"):
        LoRAConfig(targets=("q_proj",))
    with pytest.raises(ConfigError, match="r"):
        LoRAConfig(r=0)


def test_merge_by_default_keeps_no_copy_of_the_weight() -> None:
    model = AdaptedModel(tiny_model("bert"))
    model.add_adapter("a", LoRAConfig())
    randomize(model, "a", 1)
    model.merge_adapter("a")
    assert all(m._saved_weight is None for _, m in model.adapter_modules("a"))
    model.unmerge_adapter("a")
    model.merge_adapter("a", exact=True)
    assert all(m._saved_weight is not None for _, m in model.adapter_modules("a"))


def test_merge_and_unload_folds_lora_in_and_restores_plain_modules() -> None:
    from adapterkit import injection
    from adapterkit.methods.bottleneck import PfeifferConfig

    hf = tiny_model("bert")
    plain_types = {name: type(m) for name, m in hf.named_modules()}
    model = AdaptedModel(hf)
    model.add_adapter("a", LoRAConfig(targets=("query", "value", "ffn_out")))
    model.add_adapter("b", LoRAConfig(r=2))
    model.add_adapter("unused", PfeifferConfig())  # inactive: dropped
    randomize(model, "a", 1)
    randomize(model, "b", 2)
    model.set_active_adapters("a", "b")
    batch = tiny_batch()
    expected = logits(model, batch)
    model.add_adapter("pf", PfeifferConfig(), activate=False)
    model.set_active_adapters("a", "b", "pf")
    with pytest.raises(ConfigError, match="'pf': method 'pfeiffer' cannot be merged"):
        model.merge_and_unload()
    assert model.active_adapters == ("a", "b", "pf") and injection.wrappers(model.model)  # nothing changed
    model.set_active_adapters("a", "b")
    out = model.merge_and_unload()
    assert out is hf and not injection.wrappers(hf) and model.adapter_configs == {}
    assert {name: type(m) for name, m in hf.named_modules()} == plain_types
    assert set(hf.state_dict()) == set(tiny_model("bert").state_dict())
    hf.eval()
    with torch.no_grad():
        assert torch.allclose(hf(**batch).logits, expected, atol=1e-5)


# -- mixed-adapter batches (adapter_names=): each row equals its solo run --------------------------------
@pytest.mark.parametrize("arch", ["bert", "distilbert", "llama", "t5"])
def test_routing_lora_rows_equal_their_solo_runs(arch: str) -> None:
    model = tiny_adapted(arch, {"a": LoRAConfig(r=4), "b": LoRAConfig(r=2, targets=("query", "value", "ffn_in")),
                                "g": LoRAConfig(r=4, gated=True)})
    assert routed_vs_solo(model, padded_batch(arch), ["a", None, "b", "g", "a", "b"]) <= 1e-5


def test_routing_refuses_a_merged_lora_and_works_after_unmerging() -> None:
    model = tiny_adapted("bert", {"a": LoRAConfig(r=4), "b": LoRAConfig(r=4)})
    model.merge_adapter("a")
    with pytest.raises(ConfigError, match=r"adapter 'a' \(method 'lora'\) cannot be routed per example: it is merged"):
        model(**padded_batch("bert", 2), adapter_names=["a", "b"])
    model.unmerge_adapter("a")
    assert routed_vs_solo(model, padded_batch("bert", 2), ["a", "b"]) <= 1e-5


def test_routing_runs_several_loras_as_one_segmented_product(monkeypatch) -> None:
    """Two or more plain LoRAs at a projection: no per-adapter pass (route_post is not called), still exact."""
    model = tiny_adapted("bert", {"a": LoRAConfig(r=4), "b": LoRAConfig(r=2), "c": LoRAConfig(r=4, alpha=4.0)})

    def per_group(*args, **kwargs):
        raise AssertionError("per-group path used")

    monkeypatch.setattr(LoRALinear, "route_post", per_group)
    assert routed_vs_solo(model, padded_batch("bert"), ["a", None, "b", "c", "a", "b"]) <= 1e-5
