"""The effectiveness experiment end to end on a tiny model (packaged sample task, a tiny XNLI copy)."""
from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from adapterkit.cli import main
from adapterkit.experiments.effectiveness import claims, paired, pairs_table, probe_margin, verdict
from adapterkit.testing import save_tiny_model

VOCAB = {"en": ["the", "cat", "dog", "sleeps", "runs", "is", "not", "a"],
         "de": ["die", "katze", "hund", "schläft", "läuft", "ist", "nicht", "ein"],
         "fr": ["le", "chat", "chien", "dort", "court", "est", "pas", "un"]}


def write_xnli(root: Path, rows: int = 60) -> Path:
    """A tiny parallel XNLI copy in en, de and fr (row i is the same pair in every language)."""
    premises = list(itertools.permutations(range(8), 4))
    random.Random(0).shuffle(premises)
    for lang, words in VOCAB.items():
        lines = [f"{' '.join(words[k] for k in premises[i])}\t{' '.join(words[k] for k in premises[i + 1][:3])}\t"
                 f"{('entailment', 'neutral', 'contradiction')[i % 3]}" for i in range(rows)]
        path = root / "xtreme" / "xnli" / f"dev-{lang}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_verdict_rule() -> None:
    assert verdict([1.0, 1.2, 0.9]) == "holds"
    assert verdict([-1.0, -1.2, -0.9]) == "does not hold"
    assert verdict([1.0, -1.2, 0.5]) == "inconclusive"
    assert verdict([3.0]) == "inconclusive (one pair)" and verdict([]) == "not measured"
    values = {("t", 1, "a"): 0.7, ("t", 1, "full"): 0.5, ("t", 2, "a"): 0.6, ("t", 2, "full"): 0.65, ("u", 1, "a"): 0.1}
    assert paired(values, "a", "full") == pytest.approx([0.2, -0.05])


def test_claims_directions() -> None:
    low = [{"task": "t", "size": 10, "seed": s, "system": sys, "test_score": score,
            # top layer: the adapter closer to the base; mean over layers 1-2: full closer (0.75 against 0.65)
            "similarity": {"rsa": [1.0, mid, sim], "cka": [1.0, mid, sim]},
            "curve": [{"epoch": 1.0, "dev_loss": 1.0, "dev_score": 0.6}, {"epoch": 2.0, "dev_loss": 0.5,
                                                                        "dev_score": 0.8},
                      {"epoch": 3.0, "dev_loss": last, "dev_score": last_score}]}
           for s in (1, 2, 3) for sys, score, mid, sim, last, last_score in (
               ("houlsby64", 0.6 + s / 100, 0.35, 0.95, 0.55, 0.79), ("full", 0.5 + s / 90, 1.0, 0.5, 1.5, 0.7))]
    rows = claims(low, [], [], ["houlsby64"])
    by = {r["claim"]: r for r in rows}
    assert len(by) == len(rows) == 10 and {r["system"] for r in rows} == {"houlsby64"}
    top = [r for c, r in by.items() if c.startswith("(1)") and "top-layer" in c]
    mean = [r for c, r in by.items() if c.startswith("(1)") and "mean over the layers" in c]
    assert len(top) == len(mean) == 2
    assert all(r["verdict"] == "holds" for r in top)  # the adapter's top layer stays closer to the base
    assert all(r["verdict"] == "does not hold" and "-0.10" in r["measurement (adapter - full)"] for r in mean)
    assert by["(2a) better in low-resource settings (test score x100)"]["verdict"] == "holds"
    loss = by["(3) overfits less: dev loss rises less after its minimum (full - adapter)"]
    assert loss["verdict"] == "holds" and "+0.95" in loss["measurement (adapter - full)"]
    drop = by["(3) overfits less: dev score falls less after its best epoch (full - adapter, x100)"]
    assert drop["verdict"] == "holds" and "+9.00" in drop["measurement (adapter - full)"]  # (10 - 1) points
    assert all(r["verdict"] == "not measured" for c, r in by.items() if c.startswith(("(2b)", "(4)")))
    restricted = [r for c, r in by.items() if c.startswith("(2a) the same")]
    assert [r["verdict"] for r in restricted] == ["not measured"]  # no baseline rows: no setting known to have signal


def test_low_resource_claim_restricted_to_settings_where_the_probe_has_signal() -> None:
    def rows(task: str, probe: float, adapter: float, full: float) -> list[dict]:
        return [{"task": task, "size": 100, "seed": s, "system": sys, "test_score": v + s / 1000}
                for s in (1, 2) for sys, v in (("trivial", 0.5), ("linear probe", probe), ("houlsby64", adapter),
                                               ("full", full))]

    # sst2: the probe is 20 points over trivial and the adapter leads by 10; mrpc: no signal, the adapter trails
    low = rows("sst2", 0.7, 0.8, 0.7) + rows("mrpc", 0.49, 0.45, 0.5)
    assert probe_margin(low, "sst2", 100) == pytest.approx(20.0) and probe_margin(low, "mrpc", 100) == pytest.approx(-1.0)
    assert probe_margin(low, "cola", 100) is None
    by = {r["claim"]: r for r in claims(low, [], [], ["houlsby64"])}
    everywhere = by["(2a) better in low-resource settings (test score x100)"]
    assert "+2.50" in everywhere["measurement (adapter - full)"] and everywhere["verdict"] == "inconclusive"
    signal = next(r for c, r in by.items() if c.startswith("(2a) the same"))
    assert signal["measurement (adapter - full)"].startswith("+10.00 ± 0.00 over 2 pairs") and signal["verdict"] == "holds"
    table = pairs_table(low, [("sst2", 100), ("mrpc", 100)], ["houlsby64"])
    assert table == [{"setting": "sst2/100", "houlsby64 - full": "+10.0 ± 0.0 (n=2)", "probe - trivial": "+20.0"},
                     {"setting": "mrpc/100", "houlsby64 - full": "-5.0 ± 0.0 (n=2)", "probe - trivial": "-1.0"}]


def test_effectiveness_end_to_end(tmp_path: Path) -> None:
    data = write_xnli(tmp_path / "data")
    words = [w for ws in VOCAB.values() for w in ws] + ["movie", "good", "bad", "great", "boring", "fun"]
    model = save_tiny_model(tmp_path / "model", words=words, num_labels=2)
    out = tmp_path / "eff"
    args = ["experiment", "effectiveness", "--model", str(model), "--data-dir", str(data), "--output-dir", str(out),
            "--tasks", "sample_sentiment", "--systems", "houlsby64,full", "--sizes", "16,32", "--seeds", "1", "--epochs", "2", "--batch-size", "8",
            "--max-length", "24", "--dev-size", "8", "--xnli-train-size", "24", "--xnli-eval-size", "20",
            "--xnli-epochs", "1", "--languages", "en,de,fr,es", "--lr-task", "sample_sentiment", "--lr-size", "16",
            "--lrs", "1e-3,1e-2", "--lr-epochs", "2", "--probe-size", "20", "--tokens", "all", "--progress", "none",
            "--full-head-lr", "5e-3"]
    with pytest.warns(UserWarning, match="dev-es.tsv"):
        assert main(args) == 0
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    low = [r for r in rows if r["part"] == "low" and r["system"] in ("houlsby64", "houlsby256", "full")]
    assert sorted((r["size"], r["system"]) for r in low) == sorted(
        (n, s) for n in (16, 32) for s in ("houlsby64", "full"))
    for r in low:
        assert len(r["curve"]) == 2 and r["similarity"]["layers"] == [0, 1, 2]
        assert len(r["similarity"]["cka"]) == 3 and len(r["similarity"]["rsa"]) == 3
    assert {r["system"] for r in rows if r["part"] == "low"} >= {"trivial", "linear probe"}
    xnli = [r for r in rows if r["part"] == "xnli"]
    assert {r["system"] for r in xnli} == {"houlsby64", "full", "trivial", "linear probe"}
    assert all(set(r["languages"]) == {"en", "de", "fr"} for r in xnli)
    trained = [r for r in rows if r["part"] in ("low", "xnli") and r["system"] in ("houlsby64", "full")]
    assert {(r["system"], r.get("head_lr")) for r in trained} == {("houlsby64", None), ("full", 5e-3)}
    assert len([r for r in rows if r["part"] == "lr" and "lr" in r]) == 4
    md = (out / "results.md").read_text()
    for section in ("head 0.005", "score drop", "(a) Low-resource", "(b) Cross-lingual", "(c) Learning-rate", "(d) Overfitting",
                    "(e) Representational similarity", "## Claims", "linear probe", "trivial", "dev-es.tsv"):
        assert section in md
    assert "| de | fr |" in md and "| es |" not in md  # a missing language is listed below the table, not a column
    for png in ("low_resource.png", "zero_shot_xnli.png", "lr_sweep.png", "dev_loss.png", "similarity.png"):
        assert (out / png).stat().st_size > 1000, png
    # resumable: a rerun trains nothing and appends nothing
    before = (out / "runs.jsonl").read_text()
    assert main(args) == 0
    assert (out / "runs.jsonl").read_text() == before
    # a size that has not run yet is named, not shown as an empty column
    assert main([*args, "--sizes", "16,32,64", "--report-only", "true"]) == 0
    md = (out / "results.md").read_text()
    assert "No run yet: sample_sentiment/64." in md and "sample_sentiment/64 |" not in md


def test_full_head_lr_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiment", "effectiveness", "--output-dir", str(tmp_path / "o"), "--full-head-lr", "0"]) != 0
    assert "full_head_lr: must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything is written
