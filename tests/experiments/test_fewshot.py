"""The few-shot heads experiment end to end on a tiny model and real task files."""
from __future__ import annotations

import json

import pytest

from adapterkit.cli import main
from adapterkit.errors import ConfigError
from adapterkit.experiments import fewshot
from adapterkit.testing import save_tiny_model


def test_fewshot_runs_baselines_and_poolings_and_resumes(tmp_path, data_dir, capsys: pytest.CaptureFixture) -> None:
    model = save_tiny_model(tmp_path / "tiny-bert")
    out = tmp_path / "out"
    argv = ["experiment", "fewshot", "--model", str(model), "--data-dir", str(data_dir), "--output-dir", str(out),
            "--tasks", "sst2", "--k-shots", "4,8", "--seeds", "3", "--epochs", "1", "--test-size", "20",
            "--max-length", "32", "--systems", "majority,probe,head,lora", "--poolings", "hf,mean",
            "--lrs", "lora=0.01", "--progress", "none"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * 4
    assert {(r["k"], r["pooling"], r["system"]) for r in rows} == {
        (k, p, s) for k in (4, 8) for p in ("hf", "mean") for s in ("majority", "probe", "head", "lora")}
    assert all(r["test_score"] is not None for r in rows)
    assert next(r for r in rows if r["system"] == "lora")["lr"] == 0.01
    majority = {r["test_score"] for r in rows if r["system"] == "majority" and r["k"] == 4}
    assert len(majority) == 1  # the same constant prediction whatever the pooling
    report = (out / "results.md").read_text()
    assert "## sst2 (accuracy), pooling `mean`" in report and "| probe |" in report and "(n=1)" in report
    assert (out / "fewshot_sst2.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(argv) == 0
    assert "16 already in" in capsys.readouterr().out


def test_fewshot_rejects_unknown_options() -> None:
    assert fewshot.learning_rates({"lrs": "full=1e-5"})["full"] == 1e-5
    with pytest.raises(ConfigError, match="lrs: 'bogus'"):
        fewshot.learning_rates({"lrs": "bogus=1"})
    assert main(["experiment", "fewshot", "--poolings", "average", "--systems", "probe"]) == 2
    assert main(["experiment", "fewshot", "--systems", "nonsense"]) == 2


def test_fewshot_split_of_chemprot_needs_short_classes_all(data_dir) -> None:
    from collections import Counter

    from adapterkit.data.tasks import get_task
    from adapterkit.errors import DataError

    spec = get_task("chemprot")
    with pytest.raises(DataError, match="AGONIST-INHIBITOR"):
        fewshot.split(spec, data_dir, 8, 42, 500)
    with pytest.warns(UserWarning, match="AGONIST-INHIBITOR"):
        train, dev, test = fewshot.split(spec, data_dir, 8, 42, 500, short_classes="all")
    counts = Counter(ex["label"] for ex in train)
    assert len(counts) == 13 and max(counts.values()) == 8 and min(counts.values()) < 8
    assert len(dev) == 8 * 13 and len(test) == 500
    assert not {ex["text"] for ex in train} & {ex["text"] for ex in dev}


def test_fewshot_rejects_an_unknown_short_classes_value_before_writing(tmp_path) -> None:
    with pytest.raises(SystemExit) as stop:  # argparse: usage error, exit status 2
        main(["experiment", "fewshot", "--output-dir", str(tmp_path / "out"), "--short-classes", "skip"])
    assert stop.value.code == 2
    assert not (tmp_path / "out").exists()


def test_fewshot_report_marks_runs_at_the_trivial_baseline(tmp_path) -> None:
    from adapterkit.options import defaults

    opts = {**defaults(fewshot.OPTIONS), "output_dir": str(tmp_path), "tasks": ["sst2"], "k_shots": [8],
            "poolings": ["mean"], "seeds": [1], "systems": list(fewshot.SYSTEMS), "max_length": 64,
            "precision": "fp32"}
    rows = [{"task": "sst2", "pooling": "mean", "k": 8, "seed": 1, "system": s, "test_score": v}
            for s, v in (("majority", 0.509), ("pfeiffer", 0.509), ("lora", 0.712))]
    fewshot.report(rows, opts)
    text = (tmp_path / "results.md").read_text()
    assert "| pfeiffer | 50.9 ± 0.0 (n=1, †1) |" in text and "| lora | 71.2 ± 0.0 (n=1) |" in text
    assert "†k: k of the cell's runs scored exactly" in text
