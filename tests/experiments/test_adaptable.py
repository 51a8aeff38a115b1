"""The adaptable-adapters experiment end to end on a tiny model and real task files."""
from __future__ import annotations

import json

import pytest

from adapterkit.cli import main
from adapterkit.errors import ConfigError
from adapterkit.experiments import adaptable
from adapterkit.methods.adaptable import write_selection
from adapterkit.methods.bottleneck import PfeifferConfig
from adapterkit.testing import save_tiny_model


def test_adaptable_runs_every_system_and_resumes(tmp_path, data_dir, capsys: pytest.CaptureFixture) -> None:
    model = save_tiny_model(tmp_path / "tiny-bert", head="base")
    out = tmp_path / "out"
    argv = ["experiment", "adaptable", "--model", str(model), "--data-dir", str(data_dir), "--output-dir", str(out),
            "--tasks", "rte,stsb", "--sizes", "24", "--seeds", "3", "--epochs", "1", "--test-size", "20",
            "--max-length", "32", "--lr", "0.01", "--progress", "none"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [(r["task"], r["system"]) for r in rows] == [(t, s) for t in ("rte", "stsb") for s in adaptable.SYSTEMS]
    for r in rows:
        assert (r["train"], r["dev"], r["test"]) == (18, 6, 20)
        assert r["test_score"] is not None
    for task in ("rte", "stsb"):
        aa = next(r for r in rows if r["task"] == task and r["system"] == "aa")
        focused = next(r for r in rows if r["task"] == task and r["system"] == "aa-focused")
        selection = json.loads((out / "selections" / f"{task}_24_3.json").read_text())
        assert selection["layers"] == aa["layers"] and len(selection["logits"]) == 2
        assert focused.get("layers", []) == aa["layers"]  # AA-focused trains exactly the selected layers
    for name in ("results.md", "adaptable.png", "selected_layers.png", "activations.png"):
        assert (out / name).stat().st_size > 100, name
    report = (out / "results.md").read_text()
    assert "Layers selected by AA" in report and "| 24 | aa-focused | 2 |" in report  # per-size summary, 2 tasks
    capsys.readouterr()
    assert main(argv) == 0
    assert f"{2 * len(adaptable.SYSTEMS)} already in" in capsys.readouterr().out
    lines = (out / "runs.jsonl").read_text()
    more_seeds = [*argv[: argv.index("--seeds") + 1], "3,4", *argv[argv.index("--seeds") + 2:]]
    assert main([*more_seeds, "--report-only", "true"]) == 0  # seed 4 is missing: reported as is, not trained
    assert (out / "runs.jsonl").read_text() == lines
    assert "(n=1)" in (out / "results.md").read_text()


def test_aa_focused_config_follows_the_selection(tmp_path) -> None:
    opts = {"learning_rate": 1e-3}
    path = tmp_path / "sel.json"
    with pytest.raises(ConfigError, match="run the 'aa' system first"):
        adaptable.adapter_config("aa-focused", opts, path)
    write_selection(path, {"layers": [1, 3], "num_layers": 4, "logits": {}})
    config = adaptable.adapter_config("aa-focused", opts, path)
    assert isinstance(config, PfeifferConfig) and config.layers == (1, 3) and config.activation == "rational"
    write_selection(path, {"layers": [], "num_layers": 4})
    assert adaptable.adapter_config("aa-focused", opts, path) is None  # nothing selected: head only


def test_adaptable_lp_init_starts_adapter_heads_from_a_probe_but_not_the_baselines(tmp_path, data_dir,
                                                                                  capsys: pytest.CaptureFixture) -> None:
    model = save_tiny_model(tmp_path / "tiny-bert", head="base")
    out = tmp_path / "out"
    argv = ["experiment", "adaptable", "--model", str(model), "--data-dir", str(data_dir), "--output-dir", str(out),
            "--tasks", "sst2", "--sizes", "24", "--seeds", "3", "--epochs", "1", "--test-size", "20",
            "--max-length", "32", "--systems", "head,pfeiffer", "--lp-init", "true", "--pooling", "mean",
            "--progress", "log"]
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "[sst2 N=24 seed=3 pfeiffer] LP-FT: head initialised" in said
    assert "head] LP-FT" not in said
    assert json.loads((out / "settings.json").read_text())["lp_init"] is True
    assert "LP-FT head init True" in (out / "results.md").read_text()


def test_adaptable_option_errors(tmp_path) -> None:
    argv = ["experiment", "adaptable", "--output-dir", str(tmp_path), "--backbone-dropout", "true"]
    assert main(argv) == 2  # the frozen-layer cache needs a deterministic backbone
    assert main(["experiment", "adaptable", "--output-dir", str(tmp_path), "--systems", "nope"]) == 2


def test_size_summary_pairs_each_system_with_the_baseline_on_task_and_seed() -> None:
    def row(task: str, size: int, seed: int, system: str, score: float) -> dict:
        return {"task": task, "size": size, "seed": seed, "system": system, "test_score": score}

    rows = [row("rte", 100, 1, "pfeiffer", 0.50), row("rte", 100, 1, "aa", 0.60),
            row("sst2", 100, 1, "pfeiffer", 0.70), row("sst2", 100, 1, "aa", 0.65),
            row("sst2", 100, 2, "pfeiffer", 0.80), row("sst2", 100, 2, "aa", 0.80),
            row("rte", 100, 2, "aa", 0.90),  # no baseline run on this task and seed: in the mean, not in Δ
            row("rte", 300, 1, "aa", 0.40), row("cola", 100, 1, "aa", 0.10)]  # other size / task not asked for
    table = adaptable.size_summary(rows, ["rte", "sst2"], [100, 300], ["pfeiffer", "aa"])
    base, aa, aa300 = table
    assert base == {"N": "100", "system": "pfeiffer", "runs": 3, "mean": "66.7"}
    assert aa["runs"] == 4 and aa["mean"] == "73.8"  # (60 + 65 + 80 + 90) / 4
    assert aa["Δ vs pfeiffer"] == "1.7 ± 7.6"  # +10, -5, 0
    assert aa["W/T/L"] == "1/1/1"
    assert aa300 == {"N": "300", "system": "aa", "runs": 1, "mean": "40.0", "Δ vs pfeiffer": "–", "W/T/L": "–"}
