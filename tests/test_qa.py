"""Extractive QA end to end: SQuAD JSON files, training, EM/F1, predictions, the CLI, and heads."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from adapterkit.cli import main
from adapterkit.data.tasks import load_split, task_from_file
from adapterkit.errors import AdapterLoadError, DataError
from adapterkit.io import load_adapter, save_adapter
from adapterkit.methods.bottleneck import PfeifferConfig
from adapterkit.model import AdaptedModel, default_model_path
from adapterkit.testing import save_tiny_model, tiny_model
from adapterkit.training import TrainConfig, evaluate, predict_qa, train

COUNTRIES = ("france spain italy germany japan china india brazil canada mexico egypt kenya peru chile norway "
             "sweden poland greece turkey iran cuba iraq nepal ghana").split()
CITIES = ("paris madrid rome berlin tokyo beijing delhi lima oslo cairo nairobi santiago warsaw athens ankara "
          "tehran havana baghdad dublin london vienna prague moscow sydney").split()
MAX_LENGTH, DOC_STRIDE = 48, 12
MINILM_VOCAB = 30522  # the bundled MiniLM tokenizer's vocabulary


def squad_json(path: Path, n: int, seed: int, answers: bool = True) -> Path:
    """A SQuAD v1.1 file of ``n`` one-question paragraphs "... The capital of X is Y." (answer: Y)."""
    rng = random.Random(seed)
    paragraphs = []
    for i in range(n):
        country, city = rng.choice(COUNTRIES).title(), rng.choice(CITIES).title()
        lead = rng.choice(["", f"{country} is a country. ", "It is a nice place. "])
        context = f"{lead}The capital of {country} is {city}."
        start = context.index(city, len(lead))
        answer = {"text": city if answers else "", "answer_start": start if answers else 0}
        paragraphs.append({"context": context, "qas": [
            {"id": f"s{seed}-{i}", "question": f"What is the capital of {country}?", "answers": [answer]}]})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "synthetic", "paragraphs": paragraphs}]}))
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(default_model_path())


def tiny_qa(seed: int = 0) -> AdaptedModel:
    adapted = AdaptedModel(tiny_model("bert", "qa", seed=seed, vocab_size=MINILM_VOCAB))
    adapted.add_adapter("qa", PfeifferConfig(reduction_factor=2))
    return adapted


def test_task_from_squad_file(tmp_path: Path):
    spec = task_from_file("syn", squad_json(tmp_path / "train.json", 4, 0), kind="qa")
    assert spec.kind == "qa" and spec.fmt == "squad" and spec.metric == "squad_f1" and spec.label_column is None
    ex = load_split(spec, "train")[0]
    assert ex["context"][ex["answers"]["answer_start"][0]:].startswith(ex["answers"]["text"][0])


def test_train_learns_span_and_evaluate_scores(tmp_path: Path, tokenizer):
    spec = task_from_file("syn", squad_json(tmp_path / "train.json", 40, 0), kind="qa",
                          dev=squad_json(tmp_path / "dev.json", 16, 1))
    train_ex, dev_ex = load_split(spec, "train"), load_split(spec, "dev")
    adapted = tiny_qa()
    before = evaluate(adapted, tokenizer, spec, train_ex, max_length=MAX_LENGTH, doc_stride=DOC_STRIDE)
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), epochs=3, batch_size=8, learning_rate=1e-2,
                      max_length=MAX_LENGTH, doc_stride=DOC_STRIDE, progress="none", save_total_limit=1,
                      save_optimizer=False)
    result = train(adapted, tokenizer, spec, train_ex, dev_ex, cfg)
    assert len(result.history) == 3 and 0.0 <= result.metrics["f1"] <= 1.0
    assert all(h["loss"] is not None and h["loss"] > 0 for h in result.history)  # dev loss of every evaluation
    after = evaluate(adapted, tokenizer, spec, train_ex, max_length=MAX_LENGTH, doc_stride=DOC_STRIDE)
    for metrics in (before, after):
        assert {"exact_match", "f1", "score"} <= set(metrics)
        assert all(0.0 <= metrics[k] <= 1.0 for k in ("exact_match", "f1"))
    assert after["f1"] > before["f1"] and after["f1"] >= 0.4, (before, after)
    answers = predict_qa(adapted, tokenizer, train_ex, max_length=MAX_LENGTH, doc_stride=DOC_STRIDE)
    assert set(answers) == {ex["id"] for ex in train_ex}
    assert all(a == "" or a in ex["context"] for ex, a in zip(train_ex, answers.values(), strict=True))


def test_no_reference_answers_is_a_clear_error(tmp_path: Path, tokenizer):
    spec = task_from_file("blank", squad_json(tmp_path / "blank.json", 4, 2, answers=False), kind="qa")
    blank = load_split(spec, "train")
    assert all(ex["answers"]["text"] == [] for ex in blank)
    adapted = tiny_qa()
    with pytest.raises(DataError, match="no QA example has a reference answer"):
        evaluate(adapted, tokenizer, spec, blank, max_length=MAX_LENGTH, doc_stride=DOC_STRIDE)
    with pytest.raises(DataError, match="dev_examples"):
        train(adapted, tokenizer, spec, blank, blank, TrainConfig(output_dir=str(tmp_path / "run"), progress="none"))
    assert len(predict_qa(adapted, tokenizer, blank, max_length=MAX_LENGTH, doc_stride=DOC_STRIDE)) == 4


def test_cli_train_and_eval_on_own_squad_files(tmp_path: Path, tokenizer, capsys):
    model = save_tiny_model(tmp_path / "tiny-qa-bert", head="qa", tokenizer=tokenizer)
    train_file, dev_file = squad_json(tmp_path / "train.json", 40, 0), squad_json(tmp_path / "dev.json", 16, 1)
    blank = squad_json(tmp_path / "blank.json", 6, 3, answers=False)
    out = tmp_path / "run"
    code = main(["train", "--model", str(model), "--train-file", str(train_file), "--dev-file", str(dev_file),
                 "--test-file", str(blank), "--kind", "qa", "--method", "pfeiffer", "--adapter-config",
                 '{"reduction_factor": 2}', "--epochs", "3", "--lr", "1e-2", "--batch-size", "8",
                 "--max-length", str(MAX_LENGTH), "--progress", "none", "--output-dir", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"no reference answers in {blank}: wrote predictions only" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["test"] is None and 0.0 <= results["dev"]["f1"] <= 1.0 and results["dev"]["score"] > 0
    assert len(json.loads((out / "predictions.json").read_text())) == 6
    meta = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert meta["head"]["model_class"] == "BertForQuestionAnswering"

    ev = tmp_path / "eval"
    assert main(["eval", str(out / "adapter"), "--model", str(model), "--test-file", str(dev_file), "--kind", "qa",
                 "--max-length", str(MAX_LENGTH), "--output-dir", str(ev)]) == 0
    printed = capsys.readouterr().out
    assert "exact_match" in printed and "f1" in printed
    assert len(json.loads((ev / "predictions.json").read_text())) == 16

    assert main(["eval", str(out / "adapter"), "--model", str(model), "--test-file", str(blank), "--kind", "qa",
                 "--max-length", str(MAX_LENGTH), "--output-dir", str(ev)]) == 0
    captured = capsys.readouterr()
    assert "no reference answers in" in captured.out and "Traceback" not in captured.err
    assert set(json.loads((ev / "predictions.json").read_text())) == {f"s3-{i}" for i in range(6)}

    assert main(["train", "--model", str(model), "--train-file", str(train_file), "--kind", "qa",
                 "--k-shot", "4"]) == 2
    assert "k_shot" in capsys.readouterr().err

    # eval and predict remember the kind, the columns and the max length; predict needs no answers
    explicit, remembered = tmp_path / "eval-explicit", tmp_path / "eval-remembered"
    assert main(["eval", str(out / "adapter"), "--model", str(model), "--test-file", str(dev_file), "--kind", "qa",
                 "--max-length", str(MAX_LENGTH), "--output-dir", str(explicit)]) == 0
    assert main(["eval", str(out / "adapter"), "--test-file", str(dev_file), "--output-dir", str(remembered)]) == 0
    assert "f1" in capsys.readouterr().out
    assert (json.loads((remembered / "predictions.json").read_text())
            == json.loads((explicit / "predictions.json").read_text()))
    metrics = json.loads((remembered / "metrics.json").read_text())
    assert metrics["examples"] == 16 and metrics["split"] == "test" and 0 <= metrics["metrics"]["f1"] <= 1
    pairs = list(zip(COUNTRIES[:5], CITIES[:5], strict=True))
    contexts = [f"The capital of {c.title()} is {t.title()}." for c, t in pairs]
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question": f"What is the capital of {c.title()}?", "context": ctx})
                                 + "\n" for (c, _), ctx in zip(pairs, contexts, strict=True)))
    preds = tmp_path / "preds.jsonl"
    assert main(["predict", str(out / "adapter"), "--input", str(questions), "--output", str(preds)]) == 0
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["1", "2", "3", "4", "5"]
    for row, ctx in zip(rows, contexts, strict=True):
        assert isinstance(row["score"], float) and row["prediction"]
        start, stop = row["start"], row["start"] + len(row["prediction"])
        assert ctx[start:stop] == row["prediction"]
        assert (start == 0 or not ctx[start - 1].isalnum()) and (stop == len(ctx) or not ctx[stop].isalnum())


def test_classification_adapter_loads_on_qa_head(tmp_path: Path):
    cls = AdaptedModel(tiny_model("bert", num_labels=3, vocab_size=MINILM_VOCAB))
    cls.add_adapter("task", PfeifferConfig(reduction_factor=4))
    with torch.no_grad():
        for p in cls.adapter_parameters("task").values():
            p.normal_()
    save_adapter(cls, "task", tmp_path / "adapter", include_head=True)

    qa = AdaptedModel(tiny_model("bert", "qa", seed=1, vocab_size=MINILM_VOCAB))
    with pytest.raises(AdapterLoadError, match="no such head parameter"):
        load_adapter(qa, tmp_path / "adapter")
    assert "task" not in qa.adapter_configs  # the failed load left nothing behind
    assert load_adapter(qa, tmp_path / "adapter", load_head=False) == "task"
    saved, loaded = cls.adapter_state_dict("task"), qa.adapter_state_dict("task")
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert qa.active_adapters == ("task",)
    out = qa(input_ids=torch.tensor([[101, 2054, 102]]))
    assert out.start_logits.shape == (1, 3)


def _qa_with(method: str) -> AdaptedModel:
    """A tiny QA model with an adapter of ``method`` (fusion: over two frozen Pfeiffer adapters)."""
    from adapterkit.methods.fusion import FusionConfig
    from adapterkit.methods.lora import LoRAConfig
    from adapterkit.methods.prefix import PrefixTuningConfig
    from adapterkit.methods.prompt import PromptTuningConfig
    from adapterkit.methods.unipelt import UniPELTConfig, UniPELTPromptConfig

    adapted = AdaptedModel(tiny_model("bert", "qa", seed=0, vocab_size=MINILM_VOCAB))
    configs = {
        "pfeiffer": PfeifferConfig(reduction_factor=2),
        "lora": LoRAConfig(r=4),
        "prompt": PromptTuningConfig(num_tokens=4),
        "prefix": PrefixTuningConfig(prefix_length=4, bottleneck_size=16),
        "unipelt": UniPELTConfig(prefix=PrefixTuningConfig(prefix_length=4, bottleneck_size=16)),
        "unipelt_prompt": UniPELTPromptConfig(prefix=PrefixTuningConfig(prefix_length=4, bottleneck_size=16),
                                              prompt=PromptTuningConfig(num_tokens=4)),
    }
    if method == "fusion":
        for i, name in enumerate(("a", "b")):
            adapted.add_adapter(name, PfeifferConfig(reduction_factor=2))
            with torch.no_grad():
                for p in adapted.adapter_parameters(name).values():
                    p.normal_(0, 0.1, generator=torch.Generator().manual_seed(i))
        adapted.add_adapter("qa", FusionConfig(adapters=("a", "b")))
    else:
        adapted.add_adapter("qa", configs[method])
    return adapted


@pytest.mark.parametrize("method", ["pfeiffer", "lora", "prompt", "prefix", "fusion", "unipelt", "unipelt_prompt"])
def test_every_method_trains_and_evaluates_on_squad_files(method: str, tmp_path: Path, tokenizer):
    """Each method trains on SQuAD v1.1 JSON and is scored with EM/F1; its adapter parameters move."""
    spec = task_from_file("syn", squad_json(tmp_path / "train.json", 40, 0), kind="qa",
                          dev=squad_json(tmp_path / "dev.json", 16, 1))
    train_ex, dev_ex = load_split(spec, "train"), load_split(spec, "dev")
    adapted = _qa_with(method)
    before_params = {k: v.detach().clone() for k, v in adapted.adapter_parameters("qa").items()}
    before = evaluate(adapted, tokenizer, spec, train_ex, max_length=MAX_LENGTH, doc_stride=DOC_STRIDE)
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), epochs=3, batch_size=8, learning_rate=1e-2,
                      max_length=MAX_LENGTH, doc_stride=DOC_STRIDE, progress="none", save_total_limit=1,
                      save_optimizer=False, logging_steps=1)
    result = train(adapted, tokenizer, spec, train_ex, dev_ex, cfg)
    assert len(result.history) == 3 and {"exact_match", "f1", "score"} <= set(result.metrics)
    losses = [e["loss"] for e in result.log_history if "loss" in e]
    assert losses[-1] < losses[0], losses
    after = evaluate(adapted, tokenizer, spec, train_ex, max_length=MAX_LENGTH, doc_stride=DOC_STRIDE)
    assert all(0.0 <= m[k] <= 1.0 for m in (before, after) for k in ("exact_match", "f1"))
    assert after["f1"] > before["f1"], (method, before, after)
    moved = [k for k, v in adapted.adapter_parameters("qa").items() if not torch.equal(v, before_params[k])]
    assert moved, f"{method}: no adapter parameter changed"


def test_dev_evaluation_in_training_and_evaluate_agree(tmp_path: Path, tokenizer):
    """One QA scoring path: the Trainer's dev metrics equal evaluate() on the same weights."""
    spec = task_from_file("syn", squad_json(tmp_path / "train.json", 24, 0), kind="qa",
                          dev=squad_json(tmp_path / "dev.json", 12, 1))
    train_ex, dev_ex = load_split(spec, "train"), load_split(spec, "dev")
    adapted = tiny_qa()
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), epochs=1, batch_size=8, learning_rate=1e-2,
                      max_length=MAX_LENGTH, doc_stride=DOC_STRIDE, progress="none", save_optimizer=False)
    result = train(adapted, tokenizer, spec, train_ex, dev_ex, cfg)
    again = evaluate(adapted, tokenizer, spec, dev_ex, max_length=MAX_LENGTH, doc_stride=DOC_STRIDE)
    assert {k: result.metrics[k] for k in again} == pytest.approx(again)
