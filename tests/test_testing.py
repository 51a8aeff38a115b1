"""adapterkit.testing: tiny configs, models, batches and model directories, for every supported architecture."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers as tf
from torch import nn

from adapterkit import injection
from adapterkit.architectures import ARCHITECTURES, LINEAR_SITES
from adapterkit.methods.bottleneck import PfeifferConfig
from adapterkit.methods.lora import LoRAConfig, LoRALinear
from adapterkit.model import AdaptedModel
from adapterkit.testing import (
    LLAMA_STYLE_TYPES,
    SPECIAL_TOKENS,
    TINY_ARCHITECTURES,
    head_class,
    save_tiny_model,
    tiny_batch,
    tiny_config,
    tiny_model,
    tiny_tokenizer,
)

LLAMA_ALIASES = ARCHITECTURES["llama"].aliases


def test_every_supported_model_type_has_a_tiny_version() -> None:
    assert set(TINY_ARCHITECTURES) == set(ARCHITECTURES)
    assert LLAMA_STYLE_TYPES == ("llama", *LLAMA_ALIASES)
    assert set(LLAMA_ALIASES) == {"mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2"}


@pytest.mark.parametrize("model_type", sorted(TINY_ARCHITECTURES))
def test_tiny_config_sizes(model_type: str) -> None:
    config = tiny_config(model_type)
    assert config.model_type == model_type
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.vocab_size) == (32, 2, 4, 100)
    model = AdaptedModel(tiny_model(model_type))
    context = model.build_context()
    assert (context.hidden_size, context.num_attention_heads, context.head_dim) == (32, 4, 8)
    assert len(model.layers) == (4 if model_type == "t5" else 2)  # T5: encoder and decoder


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "t5", "llama"])
def test_generic_size_overrides_work_for_every_model_type(model_type: str) -> None:
    config = tiny_config(model_type, hidden_size=48, num_hidden_layers=3, num_attention_heads=2, intermediate_size=96)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (48, 3, 2)
    model = AdaptedModel(tiny_model(model_type, hidden_size=48, num_hidden_layers=3, num_attention_heads=2))
    assert model.build_context().head_dim == 24
    assert len(model.layers) == (6 if model_type == "t5" else 3)


def test_config_overrides_in_the_models_own_names_win() -> None:
    assert tiny_config("t5", num_decoder_layers=1, d_kv=4).num_decoder_layers == 1
    assert tiny_config("t5", num_decoder_layers=1, d_kv=4).d_kv == 4
    assert tiny_config("llama", head_dim=16).head_dim == 16
    assert tiny_config("bert", attn_implementation="eager")._attn_implementation == "eager"
    assert tiny_config("llama").pad_token_id == 0
    with pytest.raises(ValueError, match="gpt2"):
        tiny_config("gpt2")


@pytest.mark.parametrize(
    ("model_type", "head", "name"),
    [
        ("bert", "classification", "BertForSequenceClassification"),
        ("bert", "qa", "BertForQuestionAnswering"),
        ("bert", "base", "BertModel"),
        ("t5", "classification", "T5ForSequenceClassification"),
        ("t5", "qa", "T5ForQuestionAnswering"),
        ("t5", "seq2seq", "T5ForConditionalGeneration"),
        ("llama", "classification", "LlamaForSequenceClassification"),
        ("qwen2", "qa", "Qwen2ForQuestionAnswering"),
    ],
)
def test_heads_pick_the_model_class(model_type: str, head: str, name: str) -> None:
    assert head_class(model_type, head).__name__ == name
    assert type(tiny_model(model_type, head)).__name__ == name


def test_classification_and_regression_heads() -> None:
    model = tiny_model("bert", num_labels=3)
    out = model(**tiny_batch(num_labels=3))
    assert out.logits.shape == (2, 3) and torch.isfinite(out.loss)
    regression = tiny_model("llama", "regression")
    assert regression.config.num_labels == 1 and regression.config.problem_type == "regression"
    out = regression(**tiny_batch(), labels=torch.tensor([0.5, -1.0]))
    assert out.logits.shape == (2, 1) and torch.isfinite(out.loss)


def test_missing_heads_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="'bert' has no 'seq2seq' head"):
        tiny_model("bert", "seq2seq")
    with pytest.raises(ValueError, match="'gemma' has no 'qa' head"):
        tiny_model("gemma", "qa")
    with pytest.raises(ValueError, match="head 'lm'"):
        tiny_model("bert", "lm")


def test_tiny_model_is_seeded() -> None:
    a, b, c = tiny_model("bert"), tiny_model("bert"), tiny_model("bert", seed=1)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    assert not all(torch.equal(a.state_dict()[k], v) for k, v in c.state_dict().items())


def test_tiny_batch_without_padding() -> None:
    batch = tiny_batch(3, 6, num_labels=4)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    ids = batch["input_ids"]
    assert ids.shape == (3, 6) and ids.min() >= 3 and ids.max() < 100
    assert batch["attention_mask"].eq(1).all()
    assert batch["labels"].shape == (3,) and batch["labels"].max() < 4
    again = tiny_batch(3, 6, num_labels=4)
    assert all(torch.equal(batch[k], again[k]) for k in batch)
    assert not torch.equal(tiny_batch(3, 6, seed=2)["input_ids"], ids)
    assert "labels" not in tiny_batch()


def test_tiny_batch_padding_and_eos() -> None:
    batch = tiny_batch(seq_len=7, lengths=(7, 5), eos_token_id=1, pad_token_id=0)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids[0, -1] == 1 and ids[1, 4] == 1 and ids[1, 5:].eq(0).all()
    assert mask[0].eq(1).all() and mask[1].tolist() == [1, 1, 1, 1, 1, 0, 0]
    assert ids[0, :6].ge(3).all() and ids[1, :4].ge(3).all()
    unpadded = tiny_batch(seq_len=7)["input_ids"]
    assert torch.equal(ids[0, :6], unpadded[0, :6])  # the same draws, then EOS/padding


def test_tiny_tokenizer(tmp_path: Path) -> None:
    tok = tiny_tokenizer(tmp_path / "tok", ["good", "movie"])
    assert (tmp_path / "tok" / "vocab.txt").is_file()
    assert len(tok) == len(SPECIAL_TOKENS) + 2
    assert tok("good movie nonsense")["input_ids"] == [2, 5, 6, 1, 3]  # [CLS] good movie [UNK] [SEP]
    assert tok.pad_token_id == 0


def test_save_tiny_model_loads_like_any_model_directory(tmp_path: Path) -> None:
    directory = save_tiny_model(tmp_path / "m", words=["good", "bad"], num_labels=3)
    assert directory == tmp_path / "m"
    tok = tf.AutoTokenizer.from_pretrained(directory)
    model = tf.AutoModelForSequenceClassification.from_pretrained(directory)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.vocab_size == len(tok) == 7 and model.config.num_labels == 3
    expected = tiny_model("bert", num_labels=3, vocab_size=7)
    assert all(torch.equal(expected.state_dict()[k], v) for k, v in model.state_dict().items())
    assert model(**tok(["good", "bad"], return_tensors="pt")).logits.shape == (2, 3)


def test_save_tiny_model_with_a_given_tokenizer(tmp_path: Path) -> None:
    tok = tiny_tokenizer(tmp_path / "tok", ["a", "b", "c"])
    directory = save_tiny_model(tmp_path / "qa", head="qa", tokenizer=tok)
    model = tf.AutoModelForQuestionAnswering.from_pretrained(directory)
    assert type(model).__name__ == "BertForQuestionAnswering" and model.config.vocab_size == 8
    assert len(tf.AutoTokenizer.from_pretrained(directory)) == 8


@pytest.mark.parametrize("model_type", LLAMA_STYLE_TYPES)
def test_llama_style_alias_takes_pfeiffer_and_lora_on_all_linear_targets(model_type: str) -> None:
    """The alias rows share llama's site table: each site must name the right module in that family."""
    hf = tiny_model(model_type)
    assert hf.config.model_type == model_type
    model = AdaptedModel(hf)
    assert model.spec is ARCHITECTURES["llama"] and len(model.layers) == 2
    model.add_adapter("pf", PfeifferConfig(reduction_factor=4, init="near_identity"))
    model.add_adapter("lo", LoRAConfig(r=4, targets=LINEAR_SITES))
    model.set_active_adapters("pf", "lo")
    wrapped = injection.wrappers(hf)
    for layer in range(len(model.layers)):
        for site in LINEAR_SITES:
            module = hf.get_submodule(model.site_path(layer, site))
            assert model.site_path(layer, site) in wrapped, (model_type, site)
            assert isinstance(module.adapters["lo"], LoRALinear), (model_type, site)
        ffn_out = hf.get_submodule(model.site_path(layer, "ffn_output"))
        assert "pf" in ffn_out.adapters, model_type
    linears = {site: hf.get_submodule(model.site_path(0, site)).base_layer for site in LINEAR_SITES}
    assert all(isinstance(m, nn.Linear) for m in linears.values())
    assert (linears["query"].in_features, linears["ffn_in"].out_features, linears["ffn_out"].in_features) == (32, 64, 64)

    with torch.no_grad():
        for p in model.adapter_parameters("lo").values():
            p.normal_(std=0.1)  # LoRA starts as a no-op (B = 0): give it a non-zero output
    model.train()
    out = model(**tiny_batch(num_labels=2))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name in ("pf", "lo"):
        params = model.adapter_parameters(name)
        assert params, (model_type, name)
        for key, p in params.items():
            assert p.grad is not None and p.grad.abs().sum() > 0, (model_type, key)
    head = set(model.head_parameter_names())
    adapter_ids = {id(p) for name in ("pf", "lo") for p in model.adapter_parameters(name).values()}
    leaked = [n for n, p in hf.named_parameters() if p.grad is not None and id(p) not in adapter_ids and n not in head]
    assert leaked == [], model_type
