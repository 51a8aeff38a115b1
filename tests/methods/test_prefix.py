"""Prefix tuning on tiny random models: the attention-interface route, masks, deletion, gradients."""
from __future__ import annotations

import pytest
import torch
import transformers as tf

from adapterkit.errors import ConfigError
from adapterkit.methods import prefix as prefix_mod
from adapterkit.methods.prefix import EAGER, SDPA, PrefixAttention, PrefixEncoder, PrefixTuningConfig
from adapterkit.model import AdaptedModel
from adapterkit.registry import get_method
from adapterkit.testing import padded_batch, routed_vs_solo, tiny_adapted, tiny_batch, tiny_model

P = 3


VARIANTS = {"bert_qa": ("bert", "qa"), "t5_gen": ("t5", "seq2seq")}


def tiny(arch: str, impl: str = "sdpa") -> torch.nn.Module:
    model_type, head = VARIANTS.get(arch, (arch, "classification"))
    return tiny_model(model_type, head, attn_implementation=impl)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of length 7; row 1 has 5 real tokens (eos=1 last) and 2 pads (id 0)."""
    inputs = tiny_batch(seq_len=7, lengths=(7, 5), eos_token_id=1)
    return inputs["input_ids"], inputs["attention_mask"]


def run(arch: str, model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if arch == "t5_gen":
        return model(input_ids=ids, attention_mask=mask, labels=ids).logits
    out = model(input_ids=ids, attention_mask=mask)
    return out.start_logits if arch == "bert_qa" else out.logits


def configs(model: torch.nn.Module) -> list:
    return list({id(m.config): m.config for m in model.modules() if isinstance(m, tf.PreTrainedModel)}.values())


ARCHS = ["bert", "bert_qa", "roberta", "xlm-roberta", "electra", "distilbert", "t5", "t5_gen", "llama"]


@pytest.mark.parametrize("reparameterize", [True, False])
@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_reaches_every_layer_and_trains(arch: str, reparameterize: bool, monkeypatch) -> None:
    calls: list[int] = []
    extend = prefix_mod._extend

    def counting(module, query, key, *args, **kwargs):
        out = extend(module, query, key, *args, **kwargs)
        calls.append(out[0].shape[2] - key.shape[2])
        return out

    monkeypatch.setattr(prefix_mod, "_extend", counting)
    hf = tiny(arch)
    model = AdaptedModel(hf)
    model.add_adapter("x", PrefixTuningConfig(prefix_length=P, bottleneck_size=16, reparameterize=reparameterize))
    ids, mask = batch()
    logits = run(arch, hf, ids, mask)
    assert calls == [P] * len(model.layers)  # every self-attention (T5: encoder and decoder), no cross-attention
    logits.square().sum().backward()
    adapter = model.adapter_parameters("x")
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.values())
    head = set(model.head_parameter_names())
    frozen = [n for n, p in hf.named_parameters() if n not in head and p.grad is not None and "adapters" not in n]
    assert frozen == []
    if reparameterize:
        assert set(adapter) == {"shared.embedding.weight", "shared.down.weight", "shared.down.bias",
                                "shared.up.weight", "shared.up.bias"}
    else:
        assert set(adapter) == {f"layers.{i}.attention.kv" for i in range(len(model.layers))}


@pytest.mark.parametrize("arch", ["bert", "distilbert", "t5", "llama"])
def test_qa_and_classification_with_labels(arch: str) -> None:
    model = AdaptedModel(tiny(arch))
    model.add_adapter("x", PrefixTuningConfig(prefix_length=P, bottleneck_size=16))
    ids, mask = batch()
    out = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1]))
    out.loss.backward()
    assert out.logits.shape == (2, 2)
    qa = AdaptedModel(tiny("bert_qa"))
    qa.add_adapter("x", PrefixTuningConfig(prefix_length=P, bottleneck_size=16))
    assert qa(input_ids=ids, attention_mask=mask).start_logits.shape == (2, 7)


@pytest.mark.parametrize("arch", ["bert", "bert_qa", "roberta", "distilbert", "t5", "llama"])
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_padded_row_matches_the_unpadded_example(arch: str, impl: str) -> None:
    model = AdaptedModel(tiny(arch, impl))
    model.add_adapter("x", PrefixTuningConfig(prefix_length=P, bottleneck_size=16))
    model.eval()
    ids, mask = batch()
    with torch.no_grad():
        padded = run(arch, model, ids, mask)[1]
        single = run(arch, model, ids[1:, :5], mask[1:, :5])[0]
    if arch == "bert_qa":
        padded = padded[:5]
    torch.testing.assert_close(padded, single, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["bert", "distilbert", "t5_gen", "llama"])
def test_eager_and_sdpa_agree(arch: str) -> None:
    ids, mask = batch()
    outs = []
    for impl in ("eager", "sdpa"):
        hf = tiny(arch, impl).eval()
        model = AdaptedModel(hf)
        torch.manual_seed(5)
        model.add_adapter("x", PrefixTuningConfig(prefix_length=P, bottleneck_size=16))
        assert (EAGER if impl == "eager" else SDPA) in {c._attn_implementation for c in configs(hf)}
        with torch.no_grad():
            outs.append(run(arch, hf, ids, mask))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["bert", "t5_gen", "llama"])
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_prefix_changes_outputs_and_delete_restores_everything(arch: str, impl: str) -> None:
    hf = tiny(arch, impl).eval()
    model = AdaptedModel(hf)
    before = {id(c): c._attn_implementation for c in configs(hf)}
    ids, mask = batch()
    with torch.no_grad():
        base = run(arch, hf, ids, mask)
        model.add_adapter("a", PrefixTuningConfig(prefix_length=P, bottleneck_size=16))
        model.add_adapter("b", PrefixTuningConfig(prefix_length=2, reparameterize=False, layers=(0,)))
        assert any(c._attn_implementation in (SDPA, EAGER) for c in configs(hf))
        adapted = run(arch, hf, ids, mask)
        model.delete_adapter("a")
        assert any(c._attn_implementation in (SDPA, EAGER) for c in configs(hf))  # "b" still needs it
        model.delete_adapter("b")
        restored = run(arch, hf, ids, mask)
    assert not torch.allclose(adapted, base)
    assert {id(c): c._attn_implementation for c in configs(hf)} == before
    assert torch.equal(restored, base)
    assert len(model.shared) == 0


def test_inactive_prefix_gives_the_original_outputs() -> None:
    hf = tiny("llama").eval()
    model = AdaptedModel(hf)
    ids, mask = batch()
    with torch.no_grad():
        base = run("llama", hf, ids, mask)
        model.add_adapter("a", PrefixTuningConfig(prefix_length=P, bottleneck_size=16))
        model.deactivate_adapters()
        assert torch.equal(run("llama", hf, ids, mask), base)


def test_stacked_prefixes_concatenate() -> None:
    hf = tiny("bert").eval()
    model = AdaptedModel(hf)
    model.add_adapter("a", PrefixTuningConfig(prefix_length=2, reparameterize=False))
    model.add_adapter("b", PrefixTuningConfig(prefix_length=3, reparameterize=False))
    model.set_active_adapters("a", "b")
    ids, mask = batch()
    with torch.no_grad():
        both = run("bert", hf, ids, mask)
        model.set_active_adapters("a")
        one = run("bert", hf, ids, mask)
    assert not torch.allclose(both, one)


def test_explicit_float_and_bool_masks_are_extended() -> None:
    attn = torch.nn.Module()
    attn.is_causal = False
    q = torch.randn(2, 4, 5, 8)
    k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 5, 8)
    pk, pv = torch.randn(2, 4, 3, 8), torch.randn(2, 4, 3, 8)
    bool_mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    bool_mask[1, :, :, 3:] = False
    float_mask = torch.zeros(2, 1, 5, 5).masked_fill(~bool_mask, torch.finfo(torch.float32).min)
    kw: dict = {}
    key, value, m_bool = prefix_mod._extend(attn, q, k, v, bool_mask, [(pk, pv)], kw, additive=False)
    _, _, m_float = prefix_mod._extend(attn, q, k, v, float_mask, [(pk, pv)], kw, additive=True)
    assert key.shape == (2, 4, 8, 8) and torch.equal(key[:, :, :3], pk) and torch.equal(value[:, :, 3:], v)
    assert m_bool.shape == (2, 1, 5, 8) and m_bool[:, :, :, :3].all() and torch.equal(m_bool[..., 3:], bool_mask)
    assert (m_float[..., :3] == 0).all() and torch.equal(m_float[..., 3:], float_mask)
    attn.is_causal = True  # no mask + causal: an explicit mask where every query sees every prefix position
    _, _, causal = prefix_mod._extend(attn, q, k, v, None, [(pk, pv)], {}, additive=False)
    assert causal.shape == (1, 1, 5, 8) and causal[..., :3].all()
    assert torch.equal(causal[0, 0, :, 3:], torch.ones(5, 5, dtype=torch.bool).tril())


def test_shared_encoder_is_not_duplicated_in_state_dicts() -> None:
    hf = tiny("bert")
    model = AdaptedModel(hf)
    model.add_adapter("x", PrefixTuningConfig(prefix_length=P, bottleneck_size=16))
    layer = hf.get_submodule(model.site_path(0, "attention")).adapters["x"]
    assert isinstance(layer, PrefixAttention) and isinstance(layer.shared_module, PrefixEncoder)
    assert list(layer.state_dict()) == []
    assert not any("adapters.x.shared" in n for n in hf.state_dict())
    assert sorted(model.adapter_state_dict("x")) == sorted(model.adapter_parameters("x"))
    assert layer.shared_module is model.shared["x"]
    k, v = layer.prefix_kv(4)
    assert k.shape == v.shape == (4, 4, P, 8)
    assert model.count_parameters()["adapter:x"] == P * 32 + 32 * 16 + 16 + 16 * (2 * 2 * 4 * 8) + 2 * 2 * 4 * 8


def test_llama_gqa_prefix_shapes() -> None:
    hf = tiny("llama")
    model = AdaptedModel(hf)
    model.add_adapter("x", PrefixTuningConfig(prefix_length=P, reparameterize=False))
    k, _ = hf.get_submodule(model.site_path(1, "attention")).adapters["x"].prefix_kv(2)
    assert k.shape == (2, 2, P, 8)  # key/value heads, not query heads


def test_unsupported_architecture_and_validation() -> None:
    hf = tiny_model("mpnet")
    model = AdaptedModel(hf)
    with pytest.raises(ConfigError, match=r"'prefix'.*'mpnet'"):
        model.add_adapter("x", PrefixTuningConfig())
    assert get_method("prefix") is PrefixTuningConfig
    with pytest.raises(ConfigError, match="prefix_length"):
        PrefixTuningConfig(prefix_length=0)
    with pytest.raises(ConfigError, match="layers"):
        AdaptedModel(tiny("bert")).add_adapter("x", PrefixTuningConfig(layers=(5,)))


# -- mixed-adapter batches (adapter_names=): each row equals its solo run --------------------------------
@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "llama", "t5"])
@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_routing_prefixes_of_different_lengths_equal_their_solo_runs(arch: str, impl: str) -> None:
    """Rows whose adapter has a shorter prefix (or none, or none in this layer) see only their own positions."""
    model = tiny_adapted(arch, {"a": PrefixTuningConfig(prefix_length=3), "b": PrefixTuningConfig(prefix_length=5,
                         reparameterize=False), "c": PrefixTuningConfig(prefix_length=2, layers=(1,)),
                         "g": PrefixTuningConfig(prefix_length=4, gated=True)}, attn_implementation=impl)
    names = ["a", None, "b", "c", "g", "b"]
    assert routed_vs_solo(model, padded_batch(arch), names) <= 1e-5
    unpadded = tiny_batch(4, 8, eos_token_id=1 if arch == "t5" else 2)  # no padding: the model may pass no mask
    assert routed_vs_solo(model, unpadded, ["b", "a", None, "c"]) <= 1e-5
    with torch.no_grad():
        bare = model(**unpadded, adapter_names=[None] * 4, output_hidden_states=True)
        routed = model(**unpadded, adapter_names=["b", "a", None, "c"], output_hidden_states=True)
    key = "encoder_last_hidden_state" if arch == "t5" else "hidden_states"
    last = (lambda out: out[key] if arch == "t5" else out[key][-1])  # noqa: E731
    assert not torch.allclose(last(bare)[0], last(routed)[0], atol=1e-3)
    assert torch.allclose(last(bare)[2], last(routed)[2], atol=1e-6)
