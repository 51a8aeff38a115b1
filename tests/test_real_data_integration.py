"""Short end-to-end runs on the real shared data with the bundled MiniLM: regression, pairs via the CLI, XQuAD."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from adapterkit.cli import main
from adapterkit.data.sampling import subsample
from adapterkit.data.tasks import get_task, load_task
from adapterkit.io import save_adapter
from adapterkit.methods.bottleneck import PfeifferConfig
from adapterkit.model import AdaptedModel, load_base_model
from adapterkit.training import TrainConfig, evaluate, train


def test_stsb_regression_pfeiffer(tmp_path: Path, data_dir: Path):
    spec = get_task("stsb")
    data = load_task(spec, data_dir, ["train", "dev"])
    train_ex, dev_ex = subsample(data["train"], 64, seed=0), subsample(data["dev"], 64, seed=0)
    hf_model, tokenizer = load_base_model(None, "regression")
    model = AdaptedModel(hf_model)
    model.add_adapter("stsb", PfeifferConfig(reduction_factor=16))
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), epochs=1, batch_size=16, learning_rate=1e-3, max_length=64,
                      progress="none", save_optimizer=False)
    result = train(model, tokenizer, spec, train_ex, None, cfg)
    assert result.global_step == 4
    metrics = evaluate(model, tokenizer, spec, dev_ex, max_length=64)
    assert {"pearson", "spearman", "score"} <= set(metrics)
    assert all(math.isfinite(metrics[k]) and -1.0 <= metrics[k] <= 1.0 for k in ("pearson", "spearman"))


def test_rte_lora_cli_train_with_dev_size_then_eval(tmp_path: Path, data_dir: Path, capsys):
    out = tmp_path / "rte"
    code = main(["train", "--task", "rte", "--data-dir", str(data_dir), "--method", "lora", "--train-size", "32",
                 "--dev-size", "16", "--epochs", "1", "--batch-size", "16", "--lr", "1e-3", "--max-length", "64",
                 "--progress", "none", "--output-dir", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "dev: 16 examples carved from train; test: the official dev set (277)" in printed
    assert "32 train / 16 dev / 277 test examples" in printed
    assert "test score" in printed and "Test score" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "lora" and results["task"] == "rte"
    test = results["test"]
    assert 0.0 <= test["accuracy"] <= 1.0 and test["score"] == test["accuracy"]
    assert 0.0 <= results["dev"]["score"] <= 1.0

    assert main(["eval", str(out / "adapter"), "--data-dir", str(data_dir), "--split", "dev",
                 "--max-length", "64", "--output-dir", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "on rte [dev], 277 examples" in printed
    accuracy = next(float(line.split()[-1]) for line in printed.splitlines() if line.startswith("accuracy"))
    assert accuracy == pytest.approx(test["accuracy"], abs=1e-3)  # the saved adapter reproduces the test score


def test_xquad_eval_without_references_writes_predictions(tmp_path: Path, data_dir: Path, capsys):
    source = json.loads((data_dir / "xtreme" / "xquad" / "xquad.en.json").read_text(encoding="utf-8"))
    paragraphs, contexts = [], {}  # the first 8 questions, in the file's own layout
    for para in (p for article in source["data"] for p in article["paragraphs"]):
        qas = para["qas"][: 8 - len(contexts)]
        paragraphs.append({**para, "qas": qas})
        contexts.update({q["id"]: para["context"] for q in qas})
        if len(contexts) == 8:
            break
    assert not any(a["text"] for p in paragraphs for q in p["qas"] for a in q["answers"])  # XTREME blanks them
    subset = tmp_path / "data" / "xtreme" / "xquad" / "xquad.en.json"
    subset.parent.mkdir(parents=True)
    subset.write_text(json.dumps({"version": source.get("version", "1.1"),
                                  "data": [{"title": "xquad.en subset", "paragraphs": paragraphs}]}))

    hf_model, _ = load_base_model(None, "qa")
    model = AdaptedModel(hf_model)
    model.add_adapter("qa", PfeifferConfig(reduction_factor=16))
    save_adapter(model, "qa", tmp_path / "adapter", include_head=True, extra={"task": "xquad_en"})

    out = tmp_path / "eval"
    assert main(["eval", str(tmp_path / "adapter"), "--data-dir", str(tmp_path / "data"), "--output-dir", str(out)]) == 0
    captured = capsys.readouterr()
    assert "on xquad_en [test], 8 examples" in captured.out
    assert f"no reference answers in {subset}: wrote predictions only" in captured.out
    predictions = json.loads((out / "predictions.json").read_text())
    assert set(predictions) == set(contexts)
    assert all(isinstance(a, str) and a in contexts[qid] for qid, a in predictions.items())


def test_xquad_english_training_and_german_zero_shot(tmp_path: Path, data_dir: Path, capsys):
    """Train on XQuAD-en train articles, test on en test articles, then evaluate zero-shot on the German test
    articles (the same articles, translated): both scored with SQuAD EM/F1."""
    from transformers import AutoTokenizer

    from adapterkit.model import default_model_path
    from adapterkit.testing import save_tiny_model

    model = save_tiny_model(tmp_path / "tiny-qa", head="qa", tokenizer=AutoTokenizer.from_pretrained(default_model_path()))
    out = tmp_path / "en"
    assert main(["train", "--model", str(model), "--task", "xquad_en_split", "--data-dir", str(data_dir),
                 "--train-size", "32", "--epochs", "1", "--max-length", "64", "--lr", "1e-3", "--progress", "none",
                 "--output-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "xquad_en_split" and set(results["test"]) >= {"exact_match", "f1", "score"}
    assert len(json.loads((out / "predictions.json").read_text())) == 181
    capsys.readouterr()
    assert main(["eval", str(out / "adapter"), "--model", str(model), "--task", "xquad_de_split", "--data-dir",
                 str(data_dir), "--split", "test", "--max-length", "64", "--output-dir", str(tmp_path / "de")]) == 0
    printed = capsys.readouterr().out
    assert "on xquad_de_split [test], 181 examples" in printed and "exact_match" in printed and "f1" in printed
    german = json.loads((tmp_path / "de" / "predictions.json").read_text())
    assert set(german) == set(json.loads((out / "predictions.json").read_text()))  # the same (parallel) question ids
