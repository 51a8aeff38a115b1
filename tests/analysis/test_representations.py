"""Layer-wise similarity of two models on a probe set, with tiny models."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from adapterkit.analysis.representations import (
    SimilarityOptions,
    hidden_states,
    layer_similarity,
    load_for_analysis,
    read_probe,
)
from adapterkit.analysis.similarity import linear_cka, rsa
from adapterkit.errors import ConfigError, DataError
from adapterkit.testing import tiny_model, tiny_tokenizer

WORDS = ("the", "a", "movie", "was", "good", "great", "bad", "awful", "plot", "actors")
PROBE = [("the movie was good", None), ("a bad plot", None), ("great actors", None),
         ("the plot was awful and the actors were bad", None), ("good", None), ("a movie", "the plot was great")]


@pytest.fixture()
def tokenizer(tmp_path: Path):  # noqa: ANN201
    return tiny_tokenizer(tmp_path / "tok", WORDS)


def test_model_with_itself_is_one_everywhere(tokenizer) -> None:  # noqa: ANN001
    model = tiny_model("bert", head="base", vocab_size=len(tokenizer))
    for tokens in ("all", "sentence", "sample:10"):
        res = layer_similarity(model, model, tokenizer, PROBE, SimilarityOptions(tokens=tokens, batch_size=4))
        assert res.layers == [0, 1, 2]
        assert res.scores["cka"] == pytest.approx([1.0, 1.0, 1.0])
        assert res.scores["rsa"] == pytest.approx([1.0, 1.0, 1.0])
    assert res.points == 10


def test_matches_direct_computation_and_excludes_padding(tokenizer) -> None:  # noqa: ANN001
    a = tiny_model("bert", head="base", vocab_size=len(tokenizer), seed=0)
    b = tiny_model("bert", head="base", vocab_size=len(tokenizer), seed=1)
    # reference: each sentence alone (no padding at all), real non-special tokens only
    xs: list[list[np.ndarray]] = [[], [], []]
    ys: list[list[np.ndarray]] = [[], [], []]
    for text, pair in PROBE:
        enc = tokenizer(text, pair, return_special_tokens_mask=True, return_tensors="pt")
        keep = enc.pop("special_tokens_mask")[0] == 0
        for layer, (ha, hb) in enumerate(zip(hidden_states(a, dict(enc)), hidden_states(b, dict(enc)), strict=True)):
            xs[layer].append(ha[0, keep].double().numpy())
            ys[layer].append(hb[0, keep].double().numpy())
    res = layer_similarity(a, b, tokenizer, PROBE, SimilarityOptions(tokens="all", batch_size=6))
    for layer in range(3):
        x, y = np.concatenate(xs[layer]), np.concatenate(ys[layer])
        assert res.scores["cka"][layer] == pytest.approx(linear_cka(x, y), abs=1e-5)
        assert res.scores["rsa"][layer] == pytest.approx(rsa(x, y).value, abs=1e-5)
    assert res.points == sum(len(x) for x in xs[0])
    # batching (and so the amount of padding) does not change anything
    res1 = layer_similarity(a, b, tokenizer, PROBE, SimilarityOptions(tokens="all", batch_size=1))
    assert res1.scores["cka"] == pytest.approx(res.scores["cka"], abs=1e-5)
    # sentence mode: mean over each sentence's real tokens
    sent = layer_similarity(a, b, tokenizer, PROBE, SimilarityOptions(tokens="sentence", batch_size=4,
                                                                        correlation="spearman"))
    top_x = np.stack([v.mean(0) for v in xs[2]])
    top_y = np.stack([v.mean(0) for v in ys[2]])
    assert sent.points == len(PROBE)
    assert sent.scores["cka"][2] == pytest.approx(linear_cka(top_x, top_y), abs=1e-5)
    assert sent.scores["rsa"][2] == pytest.approx(rsa(top_x, top_y, "spearman").value, abs=1e-5)
    assert res.scores["cka"][2] < 0.999  # different random models really differ


def test_adapter_changes_only_upper_layers(tokenizer) -> None:  # noqa: ANN001
    from adapterkit.methods.bottleneck import PfeifferConfig
    from adapterkit.model import AdaptedModel

    base = tiny_model("bert", head="base", vocab_size=len(tokenizer))
    tuned = AdaptedModel(tiny_model("bert", head="base", vocab_size=len(tokenizer)))
    tuned.add_adapter("a", PfeifferConfig(layers=[1]))
    with torch.no_grad():
        for p in tuned.adapter_parameters("a").values():
            p.add_(3.0 * torch.randn_like(p))
    res = layer_similarity(base, tuned, tokenizer, PROBE, SimilarityOptions(tokens="all"))
    assert res.scores["cka"][0] == pytest.approx(1.0) and res.scores["cka"][1] == pytest.approx(1.0)
    assert res.scores["cka"][2] < 0.99


def test_different_depth_or_width_names_both(tokenizer) -> None:  # noqa: ANN001
    a = tiny_model("bert", head="base", vocab_size=len(tokenizer))
    deep = tiny_model("bert", head="base", vocab_size=len(tokenizer), num_hidden_layers=3)
    wide = tiny_model("bert", head="base", vocab_size=len(tokenizer), hidden_size=48)
    with pytest.raises(ConfigError, match=r"base has 2 layers of width 32, deep has 3 layers of width 32"):
        layer_similarity(a, deep, tokenizer, PROBE, names=("base", "deep"))
    with pytest.raises(ConfigError, match=r"base.*width 32.*wide.*width 48"):
        layer_similarity(a, wide, tokenizer, PROBE, names=("base", "wide"))


def test_empty_probe_errors(tokenizer, tmp_path: Path) -> None:  # noqa: ANN001
    a = tiny_model("bert", head="base", vocab_size=len(tokenizer))
    with pytest.raises(DataError, match="empty probe"):
        layer_similarity(a, a, tokenizer, [])
    empty = tmp_path / "probe.txt"
    empty.write_text("\n  \n")
    with pytest.raises(DataError, match=r"probe.txt: probe set is empty"):
        read_probe(empty)
    with pytest.raises(DataError, match="neither a file nor a registered task"):
        read_probe(tmp_path / "missing.txt")


def test_read_probe_file_and_limit(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_text("\n".join(f"sentence {i}" for i in range(50)))
    assert len(read_probe(f)) == 50
    sample = read_probe(f, limit=10, seed=3)
    assert len(sample) == 10 and sample == read_probe(f, limit=10, seed=3)
    table = tmp_path / "p.jsonl"
    table.write_text('{"sentence": "one"}\n{"sentence": "two"}\n')
    assert read_probe(table) == [("one", None), ("two", None)]


def test_bad_options() -> None:
    with pytest.raises(ConfigError, match="tokens"):
        SimilarityOptions(tokens="some")
    with pytest.raises(ConfigError, match="metrics"):
        SimilarityOptions(metrics=("svcca",))


def test_load_adapter_dir_is_base_plus_adapter(tmp_path: Path) -> None:
    from adapterkit.io import save_adapter
    from adapterkit.methods.bottleneck import HoulsbyConfig
    from adapterkit.model import AdaptedModel, load_base_model
    from adapterkit.testing import save_tiny_model

    base_dir = save_tiny_model(tmp_path / "base", words=WORDS)
    hf, _ = load_base_model(str(base_dir))
    adapted = AdaptedModel(hf)
    adapted.add_adapter("h", HoulsbyConfig())
    save_adapter(adapted, "h", tmp_path / "adapter")
    model, tok, desc = load_for_analysis(str(tmp_path / "adapter"))
    assert "adapter 'h'" in desc and list(model.active_adapters) == ["h"]
    plain, _, _ = load_for_analysis(str(base_dir))
    res = layer_similarity(plain, model, tok, PROBE, SimilarityOptions(tokens="all"))
    assert res.scores["cka"][0] == pytest.approx(1.0)
