"""Zero-shot cross-lingual machinery on a tiny model with a multilingual vocabulary."""
from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from adapterkit.analysis.crosslingual import SUITES, english_data, select, zero_shot_eval
from adapterkit.cli import main
from adapterkit.testing import save_tiny_model

VOCAB = {"en": ["the", "cat", "dog", "sleeps", "runs", "is", "not", "a"],
         "de": ["die", "katze", "hund", "schläft", "läuft", "ist", "nicht", "ein"],
         "fr": ["le", "chat", "chien", "dort", "court", "est", "pas", "un"]}
LABELS = ("entailment", "neutral", "contradiction")


def write_xnli(root: Path, langs: tuple[str, ...] = ("en", "de", "fr"), rows: int = 60) -> Path:
    rng = random.Random(0)
    premises = list(itertools.permutations(range(8), 4))  # distinct premises: row i is identifiable
    rng.shuffle(premises)
    spec = [(premises[i], rng.sample(range(8), 3), LABELS[i % 3]) for i in range(rows)]
    for lang in langs:
        words = VOCAB[lang]
        lines = [f"{' '.join(words[k] for k in p)}\t{' '.join(words[k] for k in h)}\t{lab}" for p, h, lab in spec]
        path = root / "xtreme" / "xnli" / f"dev-{lang}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[Path, Path]:
    data = write_xnli(tmp_path / "data")
    model = save_tiny_model(tmp_path / "model", words=[w for ws in VOCAB.values() for w in ws], num_labels=3)
    return data, model


def test_heldout_rows_are_the_same_in_every_language_and_never_trained_on(setup: tuple[Path, Path]) -> None:
    data, _ = setup
    train, dev, heldout = english_data(SUITES["xnli"], data, seed=1, train_size=None, dev_size=5, eval_size=20)
    assert len(heldout) == 20 and len(dev) == 5 and len(train) == 35
    rows = (data / "xtreme/xnli/dev-en.tsv").read_text().splitlines()
    held_texts = {rows[i].split("\t")[0] for i in heldout}
    assert len(held_texts) == 20 and not held_texts & {ex["text"] for ex in train + dev}
    assert [i for i in range(60) if i in heldout] == sorted(heldout)
    examples = [{"label": i} for i in range(60)]
    assert [ex["label"] for ex in select(SUITES["xnli"], examples, heldout)] == sorted(heldout)


def test_zero_shot_eval_iterates_every_language_and_names_missing(setup: tuple[Path, Path]) -> None:
    from adapterkit.model import AdaptedModel, load_base_model

    data, model_dir = setup
    hf, tok = load_base_model(str(model_dir), num_labels=3)
    seen: list[str] = []
    with pytest.warns(UserWarning, match=r"dev-es.tsv: file not found: xnli language 'es' skipped"):
        results, missing = zero_shot_eval(AdaptedModel(hf), tok, SUITES["xnli"], data, set(range(10)),
                                          languages=["en", "de", "es", "fr"], log=seen.append)
    assert list(results) == ["en", "de", "fr"]
    assert all(r["n"] == 10 and 0 <= r["score"] <= 1 for r in results.values())
    assert missing == [str(data / "xtreme/xnli/dev-es.tsv")]
    assert sum("zero-shot xnli" in line for line in seen) == 3
    # the default language list is the suite's: all 15 XNLI languages are tried, 12 missing here
    with pytest.warns(UserWarning):
        results, missing = zero_shot_eval(AdaptedModel(hf), tok, SUITES["xnli"], data, set(range(10)))
    assert set(results) == {"en", "de", "fr"} and len(missing) == 12


def test_zero_shot_command_end_to_end(setup: tuple[Path, Path], tmp_path: Path) -> None:
    data, model_dir = setup
    out = tmp_path / "out"
    args = ["analyze", "zero-shot", "--data-dir", str(data), "--model", str(model_dir), "--languages", "en,de,fr,es",
            "--systems", "houlsby:bottleneck_size=8,full", "--seeds", "1", "--train-size", "30", "--dev-size", "6",
            "--eval-size", "20", "--epochs", "1", "--batch-size", "8", "--max-length", "16", "--progress", "none",
            "--output-dir", str(out)]
    with pytest.warns(UserWarning, match="dev-es.tsv"):
        assert main(args) == 0
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [r["system"] for r in rows] == ["houlsby:bottleneck_size=8", "full", "trivial", "linear probe"]
    assert all(set(r["languages"]) == {"en", "de", "fr"} for r in rows)
    assert all(r["train"] == 30 for r in rows[:2])
    # the trivial baseline: the English training set's majority class, scored on the held-out rows of each language
    train, _, heldout = english_data(SUITES["xnli"], data, seed=1, train_size=30, dev_size=6, eval_size=20)
    labels = [ex["label"] for ex in train]
    majority = max(set(labels), key=lambda lab: (labels.count(lab), -lab))
    gold = [LABELS.index(line.split("\t")[2]) for i, line in
            enumerate((data / "xtreme/xnli/dev-en.tsv").read_text().splitlines()) if i in heldout]
    expected = sum(g == majority for g in gold) / len(gold)
    assert all(v["score"] == pytest.approx(expected) and v["n"] == 20 for v in rows[2]["languages"].values())
    md = (out / "zero_shot.md").read_text()
    assert "missing" in md and "dev-es.tsv" in md and "mean (non-en)" in md
    assert "| trivial |" in md and "| linear probe |" in md
    assert (out / "zero_shot_xnli.png").stat().st_size > 1000
    assert main(args) == 0  # resumes: nothing retrained
    assert len((out / "runs.jsonl").read_text().splitlines()) == 4


def _squad(path: Path, articles: list[tuple[str, list[tuple[str, str, str]]]]) -> None:
    """A SQuAD v1.1 file: articles of (context, [(id, question, answer)])."""
    data = [{"title": f"a{i}", "paragraphs": [{"context": ctx, "qas": [
        {"id": qid, "question": q, "answers": [{"text": ans, "answer_start": ctx.index(ans)}]}
        for qid, q, ans in qas]}]} for i, (ctx, qas) in enumerate(articles)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": "1.1", "data": data}), encoding="utf-8")


def test_xquad_zero_shot_uses_only_the_other_half(tmp_path: Path) -> None:
    from adapterkit.analysis.systems import PRESETS, train_system

    root = tmp_path / "data"
    en = [("the cat sleeps", [("q1", "is the cat", "sleeps")]), ("a dog runs", [("q2", "is a dog", "runs")])]
    held = [("the dog is not a cat", [("q3", "the dog is", "not a cat")])]
    _squad(root / "qa/squad_v1.1_dev/dev-v1.1.json", en * 4)
    _squad(root / "qa/squad_v1.1_dev/test-v1.1.json", held)
    _squad(root / "qa/xquad/xquad.en.json", en + held)  # XQuAD holds questions of both halves
    _squad(root / "qa/xquad/xquad.de.json", [("die katze schläft", [("q1", "ist die katze", "schläft")]),
                                             ("ein hund läuft", [("q2", "ist ein hund", "läuft")]),
                                             ("der hund ist nicht ein katze", [("q3", "der hund ist",
                                                                               "nicht ein katze")])])
    suite = SUITES["xquad"]
    train, dev, heldout = english_data(suite, root, seed=0, train_size=None, dev_size=2)
    assert heldout == {"q3"} and len(train) == 6 and len(dev) == 2
    model_dir = save_tiny_model(tmp_path / "m", words=[w for ws in VOCAB.values() for w in ws] + ["der"])
    model, tok, _ = train_system(PRESETS["head"], suite.spec("en"), (train, dev, []), model=str(model_dir), lr=1e-2,
                                 seed=0, epochs=1, batch_size=4, max_length=32, output_dir=tmp_path / "w",
                                 progress="none")
    with pytest.warns(UserWarning, match="xquad.es.json"):
        results, missing = zero_shot_eval(model, tok, suite, root, heldout, languages=["en", "de", "es"],
                                          max_length=32)
    assert set(results) == {"en", "de"} and all(r["n"] == 1 and r["metric"] == "squad_f1" for r in results.values())
    assert missing == [str(root / "qa/xquad/xquad.es.json")]


def test_xquad_zero_shot_command_shows_first_words_and_span_head_baselines(tmp_path: Path) -> None:
    root = tmp_path / "data"
    en = [("the cat sleeps", [("q1", "is the cat", "sleeps")]), ("a dog runs", [("q2", "is a dog", "runs")])]
    held = [("dog sleeps not a cat", [("q3", "the dog is", "dog sleeps")])]  # the first two words are the answer
    _squad(root / "qa/squad_v1.1_dev/dev-v1.1.json", en * 4)
    _squad(root / "qa/squad_v1.1_dev/test-v1.1.json", held)
    _squad(root / "qa/xquad/xquad.en.json", en + held)
    _squad(root / "qa/xquad/xquad.de.json", [("der hund ist nicht ein katze", [("q3", "der hund ist", "ein katze")])])
    model_dir = save_tiny_model(tmp_path / "m", words=[w for ws in VOCAB.values() for w in ws] + ["der"])
    out = tmp_path / "out"
    args = ["analyze", "zero-shot", "--suites", "xquad", "--languages", "en,de", "--data-dir", str(root), "--model",
            str(model_dir), "--systems", "full", "--seeds", "0", "--dev-size", "2", "--epochs", "1", "--batch-size",
            "4", "--max-length", "32", "--progress", "none", "--output-dir", str(out)]
    assert main(args) == 0
    rows = {r["system"]: r for r in map(json.loads, (out / "runs.jsonl").read_text().splitlines())}
    assert set(rows) == {"full", "trivial", "linear probe"}
    # first words: the training answers have one word each, so every question is answered with its context's first
    # word: "dog" against "dog sleeps" (F1 2/3) in English, "der" against "ein katze" (F1 0) in German
    assert rows["trivial"]["languages"]["en"]["score"] == pytest.approx(2 / 3)
    assert rows["trivial"]["languages"]["de"]["score"] == 0.0
    assert set(rows["linear probe"]["languages"]) == {"en", "de"} and rows["linear probe"]["trainable"] > 0
    assert "| linear probe |" in (out / "zero_shot.md").read_text()


def test_relative_data_dir(setup: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    data, _ = setup
    monkeypatch.chdir(data.parent)
    train, _, heldout = english_data(SUITES["xnli"], Path(data.name), seed=1, train_size=None, dev_size=5,
                                     eval_size=20)
    assert len(train) == 35 and len(heldout) == 20
