"""Prompt tuning on tiny random models: insertion, gradients, padding, deletion, initialisation."""
from __future__ import annotations

import pytest
import torch
import transformers as tf

from adapterkit.errors import ConfigError
from adapterkit.injection import AdaptedModule
from adapterkit.methods.prompt import PromptTuningConfig, SoftPrompt
from adapterkit.model import AdaptedModel
from adapterkit.registry import get_method
from adapterkit.testing import padded_batch, routed_vs_solo, tiny_adapted, tiny_batch, tiny_model

N = 3


VARIANTS = {"bert_qa": ("bert", "qa"), "t5_gen": ("t5", "seq2seq")}


def tiny(arch: str) -> torch.nn.Module:
    model_type, head = VARIANTS.get(arch, (arch, "classification"))
    return tiny_model(model_type, head)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of length 7; row 1 has 5 real tokens (eos=1 last) and 2 pads (id 0)."""
    inputs = tiny_batch(seq_len=7, lengths=(7, 5), eos_token_id=1)
    return inputs["input_ids"], inputs["attention_mask"]


def head_output(arch: str, out) -> torch.Tensor:
    return out.start_logits if arch == "bert_qa" else out.logits


ARCHS = ["bert", "bert_qa", "roberta", "distilbert", "t5", "t5_gen", "llama"]


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_backward_trains_only_prompt_and_head(arch: str) -> None:
    model = AdaptedModel(tiny(arch))
    model.add_adapter("p", PromptTuningConfig(num_tokens=N))
    ids, mask = batch()
    labels = ids if arch == "t5_gen" else (torch.tensor([[1, 2], [0, 3]]) if arch == "bert_qa" else torch.tensor([0, 1]))
    if arch == "bert_qa":
        out = model(input_ids=ids, attention_mask=mask, start_positions=labels[0], end_positions=labels[1])
    else:
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    assert head_output(arch, out).shape[:2] == ((2, 7) if arch in ("bert_qa", "t5_gen") else (2, 2))
    adapter = set(model.adapter_parameters("p").values())
    head = {p for n, p in model.model.named_parameters() if n in set(model.head_parameter_names())}
    prompt = next(iter(adapter))
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0
    for p in model.parameters():
        if p.grad is not None:
            assert p in adapter or p in head
    assert all(p.requires_grad == (p in adapter or p in head) for p in model.parameters())


def test_bert_pooler_counts_as_head_while_backbone_is_wrapped() -> None:
    model = AdaptedModel(tiny("bert"))
    before = model.head_parameter_names()
    model.add_adapter("p", PromptTuningConfig(num_tokens=N))
    after = model.head_parameter_names()
    assert any(".pooler." in n for n in before) and len(after) == len(before)


def test_qa_start_logits_keep_the_original_length_and_hidden_states_are_stripped() -> None:
    model = AdaptedModel(tiny("bert_qa"))
    model.add_adapter("p", PromptTuningConfig(num_tokens=N))
    ids, mask = batch()
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert out.start_logits.shape == (2, 7) and out.end_logits.shape == (2, 7)
    assert all(h.shape[1] == 7 for h in out.hidden_states)


@pytest.mark.parametrize("arch", ["bert", "bert_qa", "roberta", "distilbert", "t5", "llama"])
def test_padded_row_matches_the_unpadded_example(arch: str) -> None:
    model = AdaptedModel(tiny(arch))
    model.add_adapter("p", PromptTuningConfig(num_tokens=N, init="random"))
    model.eval()
    ids, mask = batch()
    with torch.no_grad():
        padded = head_output(arch, model(input_ids=ids, attention_mask=mask))[1]
        single = head_output(arch, model(input_ids=ids[1:, :5], attention_mask=mask[1:, :5]))[0]
    if arch == "bert_qa":
        padded = padded[:5]
    torch.testing.assert_close(padded, single, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["bert", "t5", "llama"])
def test_prompt_changes_outputs_and_delete_restores_module_and_outputs(arch: str) -> None:
    hf = tiny(arch).eval()
    model = AdaptedModel(hf)
    path = model.site_path(None, "prompt")
    original, embeddings = hf.get_submodule(path), hf.get_input_embeddings()
    ids, mask = batch()
    with torch.no_grad():
        base = hf(input_ids=ids, attention_mask=mask).logits
        model.add_adapter("p", PromptTuningConfig(num_tokens=N, init="random"))
        assert isinstance(hf.get_submodule(path), AdaptedModule)
        assert hf.get_input_embeddings() is embeddings
        assert hf.base_model is hf.get_submodule(hf.base_model_prefix)
        adapted = hf(input_ids=ids, attention_mask=mask).logits
        model.delete_adapter("p")
        restored = hf(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(adapted, base)
    assert hf.get_submodule(path) is original
    assert torch.equal(restored, base)


def test_positional_input_ids_token_types_and_inputs_embeds() -> None:
    hf = tiny("bert").eval()
    model = AdaptedModel(hf)
    model.add_adapter("p", PromptTuningConfig(num_tokens=N))
    ids, mask = batch()
    types = torch.zeros_like(ids)
    with torch.no_grad():
        a = hf(ids, mask, types).logits
        b = hf(input_ids=ids, attention_mask=mask, token_type_ids=types, position_ids=torch.arange(7)[None]).logits
        c = hf(inputs_embeds=hf.get_input_embeddings()(ids), attention_mask=mask).logits
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


def test_vocab_init_copies_embedding_rows_and_is_seeded() -> None:
    hf = tiny("bert")
    model = AdaptedModel(hf)
    model.add_adapter("p", PromptTuningConfig(num_tokens=5, init="vocab", seed=3))
    prompt = model.adapter_parameters("p")["model.prompt.prompt"]
    weight = hf.get_input_embeddings().weight
    assert prompt.shape == (5, 32)
    for row in prompt:
        assert (weight == row).all(dim=1).any()
    again = PromptTuningConfig(num_tokens=5, init="vocab", seed=3).initial_prompt(hf)
    assert torch.equal(again, prompt.detach())
    assert prompt.data_ptr() not in {p.data_ptr() for p in hf.get_input_embeddings().parameters()}


def test_random_init_is_small() -> None:
    prompt = PromptTuningConfig(num_tokens=50, init="random").initial_prompt(tiny("bert"))
    assert prompt.shape == (50, 32) and 0.01 < prompt.std().item() < 0.03


def test_text_init_uses_the_models_tokenizer() -> None:
    from adapterkit.model import default_model_path

    try:
        path = default_model_path()
    except ImportError:
        pytest.skip("bundled MiniLM not installed")
    tok = tf.AutoTokenizer.from_pretrained(path)
    hf = tiny_model("bert", num_hidden_layers=1, vocab_size=tok.vocab_size)
    hf.config._name_or_path = path
    prompt = PromptTuningConfig(num_tokens=4, init="text", init_text="classify this").initial_prompt(hf)
    ids = tok("classify this", add_special_tokens=False)["input_ids"]
    expected = hf.get_input_embeddings().weight[[ids[i % len(ids)] for i in range(4)]]
    assert torch.equal(prompt, expected)


def test_stacked_prompts_strip_both() -> None:
    model = AdaptedModel(tiny("bert_qa"))
    model.add_adapter("a", PromptTuningConfig(num_tokens=2))
    model.add_adapter("b", PromptTuningConfig(num_tokens=3), activate=False)
    model.set_active_adapters("a", "b")
    ids, mask = batch()
    assert model(input_ids=ids, attention_mask=mask).start_logits.shape == (2, 7)


def test_config_validation_and_registry() -> None:
    assert get_method("prompt") is PromptTuningConfig
    with pytest.raises(ConfigError, match="num_tokens"):
        PromptTuningConfig(num_tokens=0)
    with pytest.raises(ConfigError, match="init_text"):
        PromptTuningConfig(init="text")
    cfg = PromptTuningConfig.from_dict({"method": "prompt", "num_tokens": 4, "learning_rate": 0.3})
    assert cfg.num_tokens == 4 and cfg.to_dict()["learning_rate"] == 0.3


def test_t5_prompt_goes_into_the_encoder_only() -> None:
    hf = tiny("t5_gen")
    model = AdaptedModel(hf)
    model.add_adapter("p", PromptTuningConfig(num_tokens=N))
    assert isinstance(hf.encoder, AdaptedModule) and isinstance(hf.encoder.adapters["p"], SoftPrompt)
    assert hf.encoder.adapters["p"].insert_at == 0
    ids, mask = batch()
    enc = hf.get_encoder()(input_ids=ids, attention_mask=mask)
    assert enc.last_hidden_state.shape[:2] == (2, 7)


def test_bare_backbone_is_refused_clearly() -> None:
    bare = tiny_model("bert", "base", num_hidden_layers=1)
    with pytest.raises(ConfigError, match="bare BertModel"):
        AdaptedModel(bare).add_adapter("p", PromptTuningConfig())


# -- mixed-adapter batches (adapter_names=): each row equals its solo run --------------------------------
@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "llama", "t5"])
def test_routing_prompts_of_different_lengths_equal_their_solo_runs(arch: str) -> None:
    """Shorter prompts (and None rows) are padded at the end and masked: every token keeps its solo position."""
    model = tiny_adapted(arch, {"a": PromptTuningConfig(num_tokens=3, init="random"),
                                "b": PromptTuningConfig(num_tokens=5, init="random")})
    assert routed_vs_solo(model, padded_batch(arch), ["a", None, "b", "b", "a", None]) <= 1e-5


def test_routing_prompts_keep_hidden_states_at_text_positions() -> None:
    model = tiny_adapted("bert", {"a": PromptTuningConfig(num_tokens=3, init="random")})
    batch = padded_batch("bert", 2)
    with torch.no_grad():
        out = model(**batch, adapter_names=["a", None], output_hidden_states=True)
    assert all(h.shape[1] == batch["input_ids"].shape[1] for h in out.hidden_states)
