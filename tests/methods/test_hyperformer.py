"""HyperFormer++: one hypernetwork over task, layer and block-type embeddings; shapes, gradients, conditional
layer norm, per-task weights, save/load and bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from adapterkit import io as akio
from adapterkit.errors import AdapterLoadError, ConfigError
from adapterkit.methods.hyperformer import HyperFormerConfig, HyperFormerShared
from adapterkit.methods.hypernet import GeneratedSequentialAdapter
from adapterkit.model import AdaptedModel
from adapterkit.testing import tiny_batch, tiny_model

TASKS = ("sst2", "mrpc")
ARCHS = ["bert", "distilbert", "mpnet", "t5", "llama"]


def model_with(model_type: str = "bert", **fields: object) -> AdaptedModel:
    model = AdaptedModel(tiny_model(model_type, seed=0))
    model.add_adapter("hf", HyperFormerConfig(**{"tasks": TASKS, **fields}))
    return model


def batch(task_ids: list[int]) -> dict[str, torch.Tensor]:
    out = tiny_batch(len(task_ids), eos_token_id=1, num_labels=2)
    out["task_ids"] = torch.tensor(task_ids)
    return out


def logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in inputs.items() if k != "labels"}).logits


def shared(model: AdaptedModel) -> HyperFormerShared:
    return model.shared["hf"]


@pytest.mark.parametrize("model_type", ARCHS)
def test_adapters_after_attention_and_ffn_with_generated_shapes(model_type: str) -> None:
    model = model_with(model_type)
    hidden, n = model.build_context().hidden_size, len(model.layers)
    sites = sorted((att.layer, att.site) for _, att in model._attachments["hf"] if att.layer is not None)
    assert sites == sorted((i, s) for i in range(n) for s in ("attn_output", "ffn_output"))
    assert all(isinstance(m, GeneratedSequentialAdapter) for k, m in model.adapter_modules("hf") if k != "shared")
    module = shared(model)
    assert module.trunk[0].in_features == 3 * 64 and module.trunk[0].out_features == 128
    assert module.trunk[2].out_features == 64 and isinstance(module.trunk[3], nn.LayerNorm)
    generated = module.weights_for(module.task_embedding[1])
    assert len(generated) == 2 * n
    for w in generated.values():
        assert w["down.weight"].shape == (24, hidden) and w["up.weight"].shape == (hidden, 24)
        assert w["norm.weight"].shape == (hidden,) and w["norm.bias"].shape == (hidden,)
    blocks = {s.block for s in module.slots}
    assert blocks == {0, 1}  # FFN and attention slots get different block-type embeddings


def test_gradients_reach_the_hypernetwork_and_embeddings_only() -> None:
    model = model_with()
    model.train()
    out = model(**batch([0, 1]))
    assert getattr(out, "aux_losses", None) is None  # HyperFormer++ has no auxiliary loss
    out.loss.backward()
    for key, p in model.adapter_parameters("hf").items():
        assert p.grad is not None and p.grad.abs().sum() > 0, key
    head = set(model.head_parameter_names())
    ids = {id(p) for p in model.adapter_parameters("hf").values()}
    assert [n for n, p in model.model.named_parameters() if p.grad is not None and n not in head and id(p) not in ids] == []


def test_each_task_gets_its_own_adapters() -> None:
    model = model_with()
    with torch.no_grad():
        for p in shared(model).parameters():
            p.add_(torch.randn_like(p) * 0.3)
    inputs = batch([0, 1, 1])
    mixed = logits(model, inputs)
    for task in (0, 1):
        alone = logits(model, {**inputs, "task_ids": torch.full((3,), task)})
        rows = inputs["task_ids"] == task
        assert torch.allclose(mixed[rows], alone[rows], atol=1e-5)
    assert not torch.allclose(logits(model, {**inputs, "task_ids": torch.zeros(3, dtype=torch.long)}), mixed)


def test_conditional_layer_norm_is_applied_to_the_adapter_output() -> None:
    model = model_with(layers=(0,))
    module = shared(model)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    site = next(m for k, m in model.adapter_modules("hf") if k == "layers.0.ffn_output")
    x = torch.randn(1, 5, module.hidden)
    w = module.weights_for(module.task_embedding[0])[module.slots[1]]
    expected = x + nn.functional.layer_norm(
        nn.functional.linear(nn.functional.gelu(nn.functional.linear(x, w["down.weight"], w["down.bias"])),
                             w["up.weight"], w["up.bias"]), (module.hidden,), w["norm.weight"], w["norm.bias"], 1e-5)
    from adapterkit.context import forward_context

    with torch.no_grad(), forward_context(task_ids=torch.tensor([0])):
        got = site.post((), {}, x)
    assert torch.allclose(got, expected, atol=1e-5)


def test_save_load_round_trip_and_bad_input(tmp_path: Path) -> None:
    model = model_with()
    with torch.no_grad():
        for p in shared(model).parameters():
            p.add_(torch.randn_like(p) * 0.3)
    inputs = batch([1, 0])
    before = logits(model, inputs)
    akio.save_adapter(model, "hf", tmp_path / "hf")
    fresh = AdaptedModel(tiny_model("bert", seed=0))
    akio.load_adapter(fresh, tmp_path / "hf")
    assert torch.equal(logits(fresh, inputs), before)
    with pytest.raises(ConfigError, match=r"task_ids: unknown task ids \[2\]"):
        logits(fresh, batch([2, 0]))
    meta = json.loads((tmp_path / "hf" / "adapter_config.json").read_text())
    meta["config"]["tasks"] = ["a", "b", "c"]
    (tmp_path / "hf" / "adapter_config.json").write_text(json.dumps(meta))
    with pytest.raises(AdapterLoadError, match=r"adapter\.safetensors: tasks / task_embedding_dim"):
        akio.load_adapter(AdaptedModel(tiny_model("bert", seed=0)), tmp_path / "hf")


@pytest.mark.parametrize(("fields", "field"), [
    ({"tasks": ()}, "tasks"), ({"bottleneck_size": 0}, "bottleneck_size"), ({"activation": "nope"}, "activation"),
    ({"init_std": 0.0}, "init_std"), ({"placement": "prefix"}, "placement"),
])
def test_config_validation_names_the_field(fields: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        HyperFormerConfig(**fields)
