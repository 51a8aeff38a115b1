"""AdapterFusion: attention over frozen adapters' outputs, with tiny models."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from adapterkit import injection
from adapterkit import io as akio
from adapterkit.errors import ConfigError
from adapterkit.injection import AdapterModule
from adapterkit.methods.bottleneck import BottleneckConfig, PfeifferConfig
from adapterkit.methods.fusion import FusionConfig, FusionLayer
from adapterkit.model import AdaptedModel
from adapterkit.testing import padded_batch, routed_vs_solo, tiny_adapted, tiny_batch, tiny_model


def _with_adapters(n: int, model_type: str = "bert") -> AdaptedModel:
    model = AdaptedModel(tiny_model(model_type))
    for i in range(n):
        model.add_adapter(f"a{i}", PfeifferConfig(init="near_identity", reduction_factor=4))
        with torch.no_grad():  # make each adapter do something visible and different
            for p in model.adapter_parameters(f"a{i}").values():
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(i + 10 * p.numel()))
    return model


def _logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_fusion_of_one_adapter_equals_that_adapter() -> None:
    """With one adapter the softmax weight is 1 and V starts as the identity, so fusion = the adapter."""
    model = _with_adapters(1)
    batch = tiny_batch(lengths=[8, 5])
    model.set_active_adapters("a0")
    expected = _logits(model, batch)
    model.add_adapter("fusion", FusionConfig(adapters=("a0",)))
    assert model.active_adapters == ("fusion",)
    assert torch.allclose(_logits(model, batch), expected, atol=1e-6)


def test_fusion_is_a_convex_mix_of_the_adapter_outputs() -> None:
    layer = FusionLayer(4, ("x", "y"), temperature=1.0, dropout=0.0)

    class Fixed(AdapterModule):
        def __init__(self, delta: float) -> None:
            super().__init__()
            self.delta = delta

        def fusion_refusal(self):
            return None

        def fusion_output(self, args, kwargs, output):
            return output + self.delta

    host = nn.Sequential(nn.Linear(4, 4))
    injection.attach(host, "0", "x", Fixed(1.0))
    injection.attach(host, "0", "y", Fixed(3.0))
    injection.attach(host, "0", "f", layer)
    h = torch.randn(2, 5, 4)
    out = layer.post((h,), {}, h)
    diff = out - h  # V = identity: out = h + sum_n w_n delta_n, with weights in the simplex
    assert torch.all(diff > 1.0 - 1e-5) and torch.all(diff < 3.0 + 1e-5)
    with torch.no_grad():  # make the query/key prefer adapter y strongly
        layer.query.weight.zero_()
        layer.query.bias.fill_(1.0)
        layer.key.weight.copy_(torch.eye(4) * 50)
        layer.key.bias.zero_()
    out = layer.post((torch.zeros(1, 1, 4),), {}, torch.zeros(1, 1, 4))
    assert torch.allclose(out, torch.full((1, 1, 4), 3.0), atol=1e-3)


def test_fusion_trains_only_fusion_layers_and_head() -> None:
    model = _with_adapters(3)
    model.add_adapter("fusion", FusionConfig(adapters=("a0", "a1", "a2")))
    frozen = {k: v.detach().clone() for k, v in model.adapter_state_dict("a1").items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapters.fusion." in n or "classifier" in n or "pooler" in n for n in trainable)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    out = model(**tiny_batch(num_labels=2))
    out.loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if ".adapters.fusion.query" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    opt.step()
    assert all(torch.equal(frozen[k], v) for k, v in model.adapter_state_dict("a1").items())
    n_fusion = model.count_parameters()["adapter:fusion"]
    assert n_fusion == 2 * 3 * (32 * 32 + 32)  # two layers of Q, K, V


def test_fusion_outputs_differ_from_each_single_adapter() -> None:
    model = _with_adapters(2)
    batch = tiny_batch(lengths=[8, 6])
    singles = []
    for name in ("a0", "a1"):
        model.set_active_adapters(name)
        singles.append(_logits(model, batch))
    model.add_adapter("fusion", FusionConfig(adapters=("a0", "a1")))
    fused = _logits(model, batch)
    assert not torch.allclose(fused, singles[0]) and not torch.allclose(fused, singles[1])


def test_fusion_needs_its_adapters_first() -> None:
    model = _with_adapters(1)
    with pytest.raises(ConfigError, match="'missing'"):
        model.add_adapter("fusion", FusionConfig(adapters=("a0", "missing")))
    assert "fusion" not in model.adapter_configs  # rolled back
    with pytest.raises(ConfigError, match="adapters"):
        model.add_adapter("empty", FusionConfig(adapters=()))
    with pytest.raises(ConfigError, match="duplicate"):
        FusionConfig(adapters=("a0", "a0"))


def test_fusion_save_load_round_trip(tmp_path) -> None:
    model = _with_adapters(2)
    model.add_adapter("fusion", FusionConfig(adapters=("a0", "a1"), temperature=2.0))
    with torch.no_grad():
        for p in model.adapter_parameters("fusion").values():
            p.add_(0.01)
    batch = tiny_batch()
    expected = _logits(model, batch)
    for name in ("a0", "a1", "fusion"):
        akio.save_adapter(model, name, tmp_path / name, include_head=name == "fusion")
    fresh = AdaptedModel(tiny_model("bert"))
    for name in ("a0", "a1"):
        akio.load_adapter(fresh, tmp_path / name, activate=False)
    akio.load_adapter(fresh, tmp_path / "fusion")
    fresh.set_active_adapters("fusion")
    assert torch.allclose(_logits(fresh, batch), expected, atol=1e-6)


@pytest.mark.parametrize("model_type", ["roberta", "distilbert", "llama"])
def test_fusion_on_other_architectures(model_type: str) -> None:
    model = _with_adapters(2, model_type)
    model.add_adapter("fusion", FusionConfig(adapters=("a0", "a1")))
    batch = tiny_batch(num_labels=2, eos_token_id=2 if model_type == "llama" else None)
    model.train()
    model(**batch).loss.backward()
    assert all(p.grad is not None for p in model.adapter_parameters("fusion").values())


# -- the fusion contract, per bottleneck placement ----------------------------------------------------
FUSABLE = [  # (model type, bottleneck config fields, sites of its modules)
    ("bert", dict(placement="pfeiffer"), ("ffn_output",)),
    ("bert", dict(placement="houlsby"), ("attn_output", "ffn_output")),
    ("bert", dict(placement="pfeiffer", original_ln=True), ("ffn_block",)),
    ("bert", dict(placement="houlsby", original_ln=True), ("attn_block", "ffn_block")),
    ("llama", dict(placement="parallel"), ("ffn_block",)),
    ("t5", dict(placement="parallel"), ("ffn_block",)),
]


@pytest.mark.parametrize(("model_type", "fields", "sites"), FUSABLE, ids=lambda v: str(v))
def test_fusing_one_adapter_equals_the_adapter_alone(model_type: str, fields: dict, sites: tuple[str, ...]) -> None:
    """A fresh fusion layer over one adapter (softmax over one = 1, V = identity) must give exactly that
    adapter's output at every site: the adapter's fusion_output is its real output."""
    model = AdaptedModel(tiny_model(model_type))
    model.add_adapter("a", BottleneckConfig(init="near_identity", reduction_factor=4, **fields))
    with torch.no_grad():
        for p in model.adapter_parameters("a").values():
            p.normal_(0, 0.3, generator=torch.Generator().manual_seed(p.numel()))
    model.eval()
    batch = tiny_batch(eos_token_id=2 if model_type == "llama" else 1 if model_type == "t5" else None)
    with torch.no_grad():
        alone = model(**batch).logits
        for i, site in enumerate(sites):
            model.add_adapter(f"f{i}", FusionConfig(adapters=("a",), site=site), activate=False)
        model.set_active_adapters(*[f"f{i}" for i in range(len(sites))])
        fused = model(**batch).logits
        model.deactivate_adapters()
        bare = model(**batch).logits
    assert not torch.allclose(alone, bare, atol=1e-4)  # the adapter does something
    assert torch.allclose(fused, alone, atol=1e-5)


def test_fusing_parallel_adapters_inside_a_bert_block_is_refused() -> None:
    model = AdaptedModel(tiny_model("bert"))
    model.add_adapter("p", BottleneckConfig(placement="parallel"))
    with pytest.raises(ConfigError, match="'p' .*cannot be fused: a parallel adapter at a BERT-style block"):
        model.add_adapter("f", FusionConfig(adapters=("p",), site="ffn_block"))
    assert "f" not in model.adapter_configs and list(model.adapter_configs) == ["p"]


def test_a_module_without_fusion_output_is_refused() -> None:
    class Opaque(AdapterModule):
        def post(self, args, kwargs, output):
            return output * 2

    host = nn.Sequential(nn.Linear(4, 4))
    injection.attach(host, "0", "o", Opaque())
    with pytest.raises(ConfigError, match="'o' \\(Opaque\\) cannot be fused: Opaque does not define fusion_output"):
        injection.attach(host, "0", "f", FusionLayer(4, ("o",), 1.0, 0.0))
    assert list(host[0].adapters) == ["o"]


# -- mixed-adapter batches (adapter_names=): each row equals its solo run --------------------------------
@pytest.mark.parametrize("arch", ["bert", "roberta", "llama"])
def test_routing_fusion_rows_and_fused_adapter_rows_equal_their_solo_runs(arch: str) -> None:
    model = tiny_adapted(arch, {"a": PfeifferConfig(init="near_identity"), "b": PfeifferConfig(init="near_identity"),
                                "f": FusionConfig(adapters=("a", "b"))})
    assert routed_vs_solo(model, padded_batch(arch), ["f", "a", None, "b", "f", "f"]) <= 1e-5


def test_routing_fusion_over_original_ln_adapters() -> None:
    model = tiny_adapted("bert", {"a": PfeifferConfig(init="near_identity", original_ln=True),
                                  "b": PfeifferConfig(init="near_identity", original_ln=True),
                                  "f": FusionConfig(adapters=("a", "b"), site="ffn_block")})
    assert routed_vs_solo(model, padded_batch("bert"), ["f", "a", None, "b", "f", "a"]) <= 1e-5
