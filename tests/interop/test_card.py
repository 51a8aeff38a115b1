"""Adapter cards (README.md with Hub front matter) written by every save, with the run's results from train."""
from __future__ import annotations

import json
import random
from pathlib import Path

from adapterkit.cli import main
from adapterkit.interop.card import BUNDLED_MODEL_ID, card_metadata, hub_model_id, read_card_metadata
from adapterkit.io import save_adapter
from adapterkit.methods.lora import LoRAConfig
from adapterkit.model import AdaptedModel, default_model_path
from adapterkit.testing import save_tiny_model, tiny_model

from .conftest import validate_card


def test_plain_save_writes_what_it_knows(tmp_path: Path) -> None:
    model = AdaptedModel(tiny_model("bert"))
    model.add_adapter("lo", LoRAConfig(r=2))
    save_adapter(model, "lo", tmp_path / "a", include_head=True)
    card = (tmp_path / "a" / "README.md").read_text()
    meta = read_card_metadata(tmp_path / "a" / "README.md")
    assert meta["library_name"] == "adapterkit" and meta["pipeline_tag"] == "text-classification"
    assert meta["tags"] == ["adapterkit", "adapter", "lora"] and "base_model" not in meta  # no Hub id known
    assert "model-index" not in meta  # no results known
    params = model.count_parameters()
    assert f"| adapter | {params['adapter:lo']:,} |" in card and f"| task head | {params['head']:,} |" in card
    assert '"r": 2' in card and validate_card(card) is None
    save_adapter(model, "lo", tmp_path / "a")  # saved again without the head: the card follows
    assert "task head" not in (tmp_path / "a" / "README.md").read_text()


def test_base_model_ids() -> None:
    assert hub_model_id(default_model_path()) == BUNDLED_MODEL_ID
    assert hub_model_id("FacebookAI/roberta-base") == "FacebookAI/roberta-base"
    assert hub_model_id("/some/local/dir") is None and hub_model_id("") is None
    meta = card_metadata({"name": "x", "config": {"method": "pfeiffer"}, "base_model": {"name_or_path": "bert-base-uncased"},
                          "head": {"model_class": "BertForQuestionAnswering"},
                          "extra": {"task": "squad", "dev": {"f1": 80.5, "exact_match": 70.0, "score": 80.5}}})
    assert meta["base_model"] == "bert-base-uncased" and meta["pipeline_tag"] == "question-answering"
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    assert [(m["type"], m["value"]) for m in metrics] == [("f1", 80.5), ("exact_match", 70.0)]


def test_train_writes_card_with_run_results(tmp_path: Path) -> None:
    model = save_tiny_model(tmp_path / "tiny", words=["good", "bad", "the", "movie", "was"])
    rng = random.Random(0)
    for split, n in (("train", 16), ("dev", 8)):
        rows = ["sentence\tlabel"] + [f"the movie was {w}\t{'pos' if w == 'good' else 'neg'}"
                                      for w in (rng.choice(["good", "bad"]) for _ in range(n))]
        (tmp_path / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    assert main(["train", "--model", str(model), "--train-file", str(tmp_path / "train.tsv"), "--dev-file",
                 str(tmp_path / "dev.tsv"), "--text-columns", "sentence", "--method", "lora", "--epochs", "1",
                 "--batch-size", "8", "--max-length", "16", "--progress", "none", "--output-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    card = (out / "adapter" / "README.md").read_text()
    meta = read_card_metadata(out / "adapter" / "README.md")
    assert validate_card(card) is None
    assert meta["tags"] == ["adapterkit", "adapter", "lora", "train"]
    metrics = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics["dev accuracy"] == round(results["dev"]["accuracy"], 6)
    assert f"| trainable in the run | {results['trainable_parameters']:,} |" in card
    assert "| epochs | 1.0 |" in card and "| train_examples | 16 |" in card and "| max_length | 16 |" in card
