"""Heads and pooling: pooling modes, sentence-transformers configs, probes, LP-FT, saving the head."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from adapterkit.data.tasks import TaskSpec
from adapterkit.errors import AdapterLoadError, ConfigError
from adapterkit.heads import HeadConfig, fit_linear, pool, resolve, sentence_transformers_pooling
from adapterkit.io import load_adapter, save_adapter
from adapterkit.methods.bottleneck import PfeifferConfig
from adapterkit.model import AdaptedModel, load_base_model
from adapterkit.runner import run_baseline
from adapterkit.testing import DEFAULT_WORDS, save_tiny_model, tiny_batch, tiny_model
from adapterkit.training import (
    TrainConfig,
    example_features,
    init_head_from_probe,
    predict_logits,
    probe_fit,
    train,
)

MODES = ("cls", "cls+pooler", "mean", "max", "mean_sqrt_len", "last")
SPEC = TaskSpec(name="tiny_sentiment", kind="classification", text_columns=("text",), label_column="label",
                labels=("neg", "pos"), metric="accuracy", files={"train": "unused.csv"})


def _examples(n: int, seed: int) -> list[dict]:
    """Sentences over the tiny tokenizer's words; label 1 when 'good'/'great' outnumber 'bad'/'awful'."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = list(rng.choice(DEFAULT_WORDS, size=int(rng.integers(2, 7))))
        pos = sum(w in ("good", "great") for w in words)
        neg = sum(w in ("bad", "awful") for w in words)
        out.append({"text": " ".join(words), "label": int(pos > neg)})
    return out


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "bert"))


@pytest.mark.parametrize("mode", MODES)
def test_pooling_shape_and_padding_is_ignored(mode: str) -> None:
    model = AdaptedModel(tiny_model("bert"))
    model.set_head(HeadConfig(mode))
    model.eval()
    batch = tiny_batch(batch_size=2, seq_len=9, lengths=[5, 9])
    with torch.no_grad():
        padded = model.pooled_features(**batch)
        alone = model.pooled_features(input_ids=batch["input_ids"][:1, :5], attention_mask=batch["attention_mask"][:1, :5])
        logits = model(**batch).logits
    assert padded.shape == (2, 32) and logits.shape == (2, 2)
    torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=1e-5)


def test_pool_ignores_padding_values() -> None:
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    noisy = hidden.clone()
    noisy[0, 2:] = 1e4  # whatever sits in padded positions must not matter
    for mode in ("cls", "mean", "max", "mean_sqrt_len", "last"):
        torch.testing.assert_close(pool(hidden, mask, mode)[0], pool(noisy, mask, mode)[0])
    torch.testing.assert_close(pool(hidden, mask, "mean")[0], hidden[0, :2].mean(0))
    torch.testing.assert_close(pool(hidden, mask, "max")[0], hidden[0, :2].max(0).values)
    torch.testing.assert_close(pool(hidden, mask, "last")[0], hidden[0, 1])
    torch.testing.assert_close(pool(hidden, mask, "mean_sqrt_len")[0], hidden[0, :2].sum(0) / 2 ** 0.5)
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])  # left padding: the last real token is still the last one
    torch.testing.assert_close(pool(hidden, left, "last")[0], hidden[0, 3])


def test_normalized_features_have_unit_norm() -> None:
    model = AdaptedModel(tiny_model("bert"))
    model.set_head(HeadConfig("mean", normalize=True))
    with torch.no_grad():
        feats = model.pooled_features(**tiny_batch())
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(2))


def _write_st(directory, config: dict, normalize: bool) -> None:
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (directory / "modules.json").write_text(json.dumps(modules))
    (directory / "1_Pooling").mkdir(exist_ok=True)
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(config))


def test_sentence_transformers_pooling_is_read(tmp_path) -> None:
    path = save_tiny_model(tmp_path / "st")
    assert load_base_model(str(path))[0].adapterkit_head == HeadConfig("hf")  # plain BERT with its pooler
    _write_st(path, {"word_embedding_dimension": 32, "pooling_mode_cls_token": False,
                     "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": True}, normalize=True)
    assert sentence_transformers_pooling(path) == ("max", True)
    hf, _ = load_base_model(str(path))
    assert hf.adapterkit_head == HeadConfig("max")  # normalize is a separate option
    model = AdaptedModel(hf)
    assert model.head_config.pooling == "max" and model.pooled_head is not None
    assert set(model.head_parameters()) == {"pooled_head.classifier.weight", "pooled_head.classifier.bias"}
    assert load_base_model(str(path), pooling="cls")[0].adapterkit_head == HeadConfig("cls")  # explicit wins
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "lasttoken"}))  # newer format
    assert sentence_transformers_pooling(path) == ("last", True)
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True,
                                                                "pooling_mode_mean_tokens": True}))
    with pytest.raises(ConfigError, match=r"1_Pooling/config.json: expected exactly one pooling_mode"):
        load_base_model(str(path))


def test_auto_pooling_without_trained_pooler_is_mean() -> None:
    model = tiny_model("bert")
    assert resolve(HeadConfig(), model, None, "classification", ["bert.pooler.dense.weight"]) == HeadConfig("mean")
    assert resolve(HeadConfig(), model, None, "classification", []) == HeadConfig("hf")
    assert resolve(HeadConfig(), tiny_model("bert", head="qa"), None, "qa") == HeadConfig("hf")
    with pytest.raises(ConfigError, match="pooling: 'mean': QA"):
        resolve(HeadConfig("mean"), tiny_model("bert", head="qa"), None, "qa")
    with pytest.raises(ConfigError, match="no pooler"):
        resolve(HeadConfig("cls+pooler"), tiny_model("distilbert"), None, "classification")
    with pytest.raises(ConfigError, match="pooling"):
        HeadConfig("average")


def test_full_mode_trains_only_the_head_in_use() -> None:
    model = AdaptedModel(tiny_model("bert"))
    model.set_head(HeadConfig("mean"))
    model.set_train_mode("full")
    named = dict(model.named_parameters())
    assert not named["model.classifier.weight"].requires_grad  # the unused Hugging Face classifier
    assert named["pooled_head.classifier.weight"].requires_grad
    model.set_head(HeadConfig("cls+pooler"))
    model.set_train_mode("head")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "pooled_head.classifier.weight", "pooled_head.classifier.bias",
        "model.bert.pooler.dense.weight", "model.bert.pooler.dense.bias"}


def test_fit_linear_separable_and_ridge() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=g) * 3 + 7  # standardisation folded back: raw features work
    y = (x[:, 0] > 7).long()
    fit = fit_linear(x, y, 2, l2=1e-4)
    assert (fit.predict(x).argmax(-1) == y).all()
    target = x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0]) + 4.0
    ridge = fit_linear(x, target.double(), 1, regression=True, l2=1e-10)
    torch.testing.assert_close(ridge.predict(x).squeeze(-1), target.double(), atol=1e-3, rtol=1e-4)
    chosen = fit_linear(x, y, 2, dev_x=x, dev_y=y, l2_grid=(1e-4, 1e3))
    assert chosen.l2 in (1e-4, 1e3) and chosen.dev_score == 1.0


def test_lp_init_gives_the_probe_predictions_before_training(tiny_dir) -> None:
    from transformers import TrainerCallback

    hf, tok = load_base_model(tiny_dir, pooling="mean")
    model = AdaptedModel(hf)
    model.add_adapter("a", PfeifferConfig(reduction_factor=4))
    train_ex, dev_ex = _examples(24, 0), _examples(12, 1)
    fit = probe_fit(model, tok, SPEC, train_ex, dev_ex, max_length=16)
    probe_logits = fit.predict(example_features(model, tok, SPEC, dev_ex, 16)).float()

    seen = {}

    class AtStart(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            from adapterkit.training import encode

            seen["logits"] = predict_logits(model, tok, encode(tok, SPEC, dev_ex, 16))[0]

    cfg = TrainConfig(output_dir=str(hf.config.name_or_path) + "-run", epochs=1, lp_init=True, max_length=16,
                      progress="none", learning_rate=1e-3, save_total_limit=1, cleanup_checkpoints=True)
    train(model, tok, SPEC, train_ex, dev_ex, cfg, callbacks=[AtStart()])
    assert np.array_equal(seen["logits"].argmax(-1), probe_logits.argmax(-1).numpy())
    np.testing.assert_allclose(seen["logits"], probe_logits.numpy(), atol=1e-4)

    fresh = AdaptedModel(load_base_model(tiny_dir, pooling="mean")[0])
    init_head_from_probe(fresh, tok, SPEC, train_ex, dev_ex, max_length=16)
    with torch.no_grad():
        torch.testing.assert_close(fresh.pooled_head.classifier.weight, fit.weight)  # same frozen features


def test_lp_init_needs_a_pooled_head(tiny_dir, tmp_path) -> None:
    hf, tok = load_base_model(tiny_dir, pooling="hf")
    cfg = TrainConfig(output_dir=str(tmp_path), epochs=1, lp_init=True, progress="none")
    with pytest.raises(ConfigError, match="pooled head"):
        train(AdaptedModel(hf), tok, SPEC, _examples(8, 0), None, cfg)


def test_probe_system_accuracy_equals_direct_computation(tiny_dir) -> None:
    hf, tok = load_base_model(tiny_dir, pooling="mean")
    model = AdaptedModel(hf)
    train_ex, dev_ex, test_ex = _examples(30, 0), _examples(16, 1), _examples(40, 2)
    config = TrainConfig(max_length=16)
    row = run_baseline("probe", model, tok, SPEC, (train_ex, dev_ex, test_ex), config)

    def direct_features(examples: list[dict]) -> torch.Tensor:  # mean over real tokens of the last hidden state
        enc = tok([e["text"] for e in examples], padding=True, return_tensors="pt")
        hf.eval()  # no dropout
        with torch.no_grad():
            hidden = hf.base_model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        return (hidden * mask).sum(1) / mask.sum(1)

    def labels(examples: list[dict]) -> torch.Tensor:
        return torch.tensor([e["label"] for e in examples])

    fit = fit_linear(direct_features(train_ex), labels(train_ex), 2, dev_x=direct_features(dev_ex),
                     dev_y=labels(dev_ex))
    accuracy = float((fit.predict(direct_features(test_ex)).argmax(-1) == labels(test_ex)).double().mean())
    assert row["test_score"] == pytest.approx(accuracy)
    assert row["trainable"] == 2 * 33 and row["best_epoch"] is None

    majority = run_baseline("majority", model, tok, SPEC, (train_ex, dev_ex, test_ex), config)
    top = int(np.bincount([e["label"] for e in train_ex]).argmax())
    assert majority["test_score"] == pytest.approx(np.mean([e["label"] == top for e in test_ex]))


def test_probe_features_are_computed_where_training_would_run(tiny_dir, monkeypatch) -> None:
    """With an accelerator present the probe baseline moves the model there (and back), not the CPU."""
    import adapterkit.training.trainer as trainer_module

    accelerator = torch.device("cpu", 0)  # stands in for cuda:0; a distinct device name that runs here
    monkeypatch.setattr(trainer_module, "has_accelerator", lambda: True)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda *a, **k: accelerator)
    assert trainer_module.compute_device() == accelerator
    assert trainer_module.compute_device(use_cpu=True) == torch.device("cpu")

    hf, tok = load_base_model(tiny_dir, pooling="mean")
    model = AdaptedModel(hf)
    moves = []
    real_to = model.to

    def spy(*args, **kwargs):
        moves.append(torch.device(args[0]))
        return real_to(*args, **kwargs)

    model.to = spy
    data = (_examples(20, 0), _examples(10, 1), _examples(10, 2))
    row = run_baseline("probe", model, tok, SPEC, data, TrainConfig(max_length=16))
    assert row["test_score"] is not None
    assert moves and moves[0::2] == [accelerator] * (len(moves) // 2) and moves[1::2] == [torch.device("cpu")] * (
        len(moves) // 2)
    moves.clear()
    run_baseline("probe", model, tok, SPEC, data, TrainConfig(max_length=16, use_cpu=True))
    assert set(moves) == {torch.device("cpu")}


def test_saved_adapter_records_pooling_and_old_adapters_load_as_before(tiny_dir, tmp_path) -> None:
    hf, _ = load_base_model(tiny_dir, pooling="max", normalize=True)
    model = AdaptedModel(hf)
    model.add_adapter("a", PfeifferConfig(reduction_factor=4))
    with torch.no_grad():
        model.pooled_head.classifier.weight.normal_()
    save_adapter(model, "a", tmp_path / "a", include_head=True)
    meta = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert meta["head"]["pooling"] == "max" and meta["head"]["normalize"] is True

    other = AdaptedModel(load_base_model(tiny_dir, pooling="hf")[0])
    load_adapter(other, tmp_path / "a")
    assert other.head_config == HeadConfig("max", True)
    batch = tiny_batch(seq_len=6, vocab_size=len(DEFAULT_WORDS) + 5, lengths=[4, 6])
    model.eval()
    other.eval()
    with torch.no_grad():
        torch.testing.assert_close(other(**batch).logits, model(**batch).logits)

    del meta["head"]["pooling"], meta["head"]["normalize"]  # as written before pooling was recorded
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(meta))
    (tmp_path / "a" / "head.safetensors").unlink()
    old = AdaptedModel(load_base_model(tiny_dir, pooling="mean")[0])
    load_adapter(old, tmp_path / "a", load_head=False)
    assert old.head_config == HeadConfig("mean")  # no head file: the model's head stays
    hf_model = AdaptedModel(load_base_model(tiny_dir, pooling="hf")[0])
    hf_model.add_adapter("a", PfeifferConfig(reduction_factor=4))
    save_adapter(hf_model, "a", tmp_path / "b", include_head=True)
    meta = json.loads((tmp_path / "b" / "adapter_config.json").read_text())
    del meta["head"]["pooling"], meta["head"]["normalize"]
    (tmp_path / "b" / "adapter_config.json").write_text(json.dumps(meta))
    again = AdaptedModel(load_base_model(tiny_dir, pooling="mean")[0])
    load_adapter(again, tmp_path / "b")
    assert again.head_config == HeadConfig("hf") and again.pooled_head is None  # the old behaviour

    meta["head"]["pooling"] = "average"
    (tmp_path / "b" / "adapter_config.json").write_text(json.dumps(meta))
    with pytest.raises(AdapterLoadError, match=r"adapter_config.json: head: pooling"):
        load_adapter(AdaptedModel(load_base_model(tiny_dir)[0]), tmp_path / "b", name="c")


def test_majority_breaks_a_balanced_tie_on_dev(tiny_dir) -> None:
    """A balanced k-shot sample ties every class; for an F1 task the constant must be the positive class."""
    hf, tok = load_base_model(tiny_dir, pooling="mean")
    f1_spec = TaskSpec(name="tiny_pairs", kind="classification", text_columns=("text",), label_column="label",
                       labels=("no", "yes"), metric="f1", files={"train": "unused.csv"})
    train_ex = [{"text": "good", "label": 0}, {"text": "bad", "label": 1}] * 4
    dev_ex = [{"text": "good", "label": 0}, {"text": "bad", "label": 1}] * 2
    test_ex = [{"text": "good", "label": 1}] * 7 + [{"text": "bad", "label": 0}] * 3
    row = run_baseline("majority", AdaptedModel(hf), tok, f1_spec, (train_ex, dev_ex, test_ex), TrainConfig(max_length=8))
    assert row["test_score"] == pytest.approx(2 * 0.7 / 1.7)  # constant "yes": precision 0.7, recall 1


def test_own_head_config_reads_the_token_the_models_own_head_reads() -> None:
    """BERT: [CLS] through its pooler; DistilBERT (no pooler): [CLS]; decoders and T5: the last real token."""
    from adapterkit.heads import own_head_config

    expected = {"bert": "cls+pooler", "distilbert": "cls", "llama": "last", "t5": "last"}
    for model_type, pooling in expected.items():
        assert own_head_config(tiny_model(model_type)).pooling == pooling, model_type
    assert resolve(HeadConfig("auto", True), tiny_model("llama"), None, "classification").pooling == "last"


def test_a_pooled_head_on_t5_reads_the_decoder_output_t5s_own_head_reads() -> None:
    """The pooled ``last`` head on T5 sees the decoder's output at ``</s>`` (input shifted right), exactly the vector
    T5ForSequenceClassification classifies, and it trains (gradients reach the decoder)."""
    model = tiny_model("t5")
    batch = tiny_batch(batch_size=3, seq_len=8, eos_token_id=1, lengths=[8, 5, 3], num_labels=2)
    adapted = AdaptedModel(model)
    adapted.set_head(HeadConfig("last"))
    adapted.eval()
    with torch.no_grad():
        features = adapted.pooled_features(**batch)
        ids = batch["input_ids"]
        out = model.transformer(input_ids=ids, attention_mask=batch["attention_mask"],
                                decoder_input_ids=model.transformer._shift_right(ids))
        expected = out.last_hidden_state[ids.eq(1)]
    torch.testing.assert_close(features, expected)
    adapted.set_train_mode("full")
    adapted.train()
    loss = adapted(**batch).loss
    loss.backward()
    assert model.transformer.decoder.block[0].layer[0].SelfAttention.q.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="cls\\+pooler: T5ForSequenceClassification has no pooler"):
        adapted.set_head(HeadConfig("cls+pooler"))
