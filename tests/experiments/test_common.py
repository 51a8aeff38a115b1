"""Experiment plumbing: the resumable result log, the logistic probe and the summaries."""
from __future__ import annotations

import json

import pytest
import torch

from adapterkit.errors import ConfigError
from adapterkit.experiments.common import (
    TRIVIAL_NOTE,
    ResultLog,
    check_systems,
    probe_score,
    series_for_plot,
    summarize,
    trivial_note,
    trivial_runs,
)

KEYS = ("task", "seed", "system")


def test_result_log_appends_resumes_and_drops_a_cut_last_line(tmp_path) -> None:
    log = ResultLog(tmp_path / "runs.jsonl")
    log.add({"task": "t", "seed": 1, "system": "a", "test_score": 0.5})
    log.add({"task": "t", "seed": 1, "system": "a", "test_score": 0.7})  # a rerun of the same run
    with (tmp_path / "runs.jsonl").open("a") as fh:
        fh.write('{"task": "t", "seed": 2, "sys')  # a crash in the middle of a write
    again = ResultLog(tmp_path / "runs.jsonl")
    assert len(again.rows) == 2 and again.has(KEYS, task="t", seed=1, system="a")
    assert not again.has(KEYS, task="t", seed=2, system="a")
    assert [r["test_score"] for r in again.unique(KEYS)] == [0.7]
    (tmp_path / "bad.jsonl").write_text('{"x": 1}\nnot json\n{"x": 2}\n')
    with pytest.raises(ConfigError, match="bad.jsonl: line 2"):
        ResultLog(tmp_path / "bad.jsonl")


def test_pending_runs_skip_the_logged_ones_and_report_only_runs_none(tmp_path, capsys) -> None:
    log = ResultLog(tmp_path / "runs.jsonl")
    log.add({"task": "t", "seed": 1, "system": "a", "test_score": 0.5})
    plan = [("t", 1, "a"), ("t", 1, "b"), ("t", 2, "a")]
    todo, progress = log.pending(KEYS, plan, "demo", detail="; zoo z")
    assert todo == plan[1:] and (progress.total, progress.done) == (3, 1)
    assert "demo: 3 runs, 1 already in" in capsys.readouterr().out
    as_dicts = [dict(zip(KEYS, p, strict=True)) for p in plan]
    assert log.pending(KEYS, as_dicts, "demo")[0] == as_dicts[1:]
    todo, progress = log.pending(KEYS, plan, "demo", report_only=True)
    assert todo == [] and progress.done == 3
    check_systems(["a"], ("a", "b"))
    with pytest.raises(ConfigError, match="systems: unknown system 'c'; known: \\['a', 'b'\\]"):
        check_systems(["a", "c"], ("a", "b"))


def test_probe_score_separates_separable_features() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 8, generator=g)
    y = (x[:, 0] > 0).long()
    x[:, 0] += torch.where(y == 1, 1.0, -1.0)  # a margin on feature 0
    assert probe_score(x[:40], y[:40], x[40:], y[40:], 2) >= 0.95
    noise = torch.randn(80, 8, generator=g)
    assert probe_score(noise[:40], y[:40], noise[40:], y[40:], 2) < 0.8


def test_summaries_average_over_seeds() -> None:
    rows = [{"task": "t", "k": 4, "seed": s, "system": "a", "test_score": v, "trainable": 10, "train_seconds": 2.0}
            for s, v in ((1, 0.5), (2, 0.7))]
    table = summarize(rows, [("t", 4)], ("task", "k"), ["a", "missing"])
    assert table == [{"system": "a", "t/4": "60.0 ± 14.1 (n=2)", "trainable": "10", "train_s": "2.0"}]
    means, stds = series_for_plot(rows, [("t", 4)], ("task", "k"), ["a"])["a"]
    assert means == pytest.approx([60.0]) and stds[0] == pytest.approx(14.142, abs=1e-3)
    json.dumps(table)


def test_runs_at_the_trivial_baseline_are_marked_per_seed() -> None:
    """A run is marked when its score equals the trivial baseline's on the same task, size and seed; the same
    score on another seed or task is not a match, nor is a score one hundredth of a point away."""
    def row(system, seed, score, task="t"):
        return {"task": task, "k": 4, "seed": seed, "system": system, "test_score": score, "trainable": 1,
                "train_seconds": 1.0}

    rows = [row("majority", 1, 0.8122), row("majority", 2, 0.7), row("majority", 1, 0.0, task="u"),
            row("a", 1, 0.8122), row("a", 2, 0.8122), row("b", 1, 0.8123), row("b", 2, 0.7), row("a", 1, 0.0, "u"),
            row("trivial", 1, 0.8122)]
    at_trivial = trivial_runs(rows, ("task", "k"))
    assert [at_trivial(r) for r in rows] == [False, False, False, True, False, False, True, True, False]
    table = summarize(rows, [("t", 4), ("u", 4)], ("task", "k"), ["majority", "a", "b"])
    cells = {line["system"]: (line["t/4"], line["u/4"]) for line in table}
    assert cells["majority"][0] == "75.6 ± 7.9 (n=2)"  # the baseline itself is never marked
    assert cells["a"] == ("81.2 ± 0.0 (n=2, †1)", "0.0 ± 0.0 (n=1, †1)")
    assert cells["b"][0] == "75.6 ± 7.9 (n=2, †1)"
    assert trivial_note(table) == [TRIVIAL_NOTE + "\n"]
    assert trivial_note(summarize(rows[:3], [("t", 4)], ("task", "k"), ["majority"])) == []


def test_a_log_from_before_regression_bias_was_recorded_ran_with_zero(tmp_path) -> None:
    """Every experiment's log records regression_bias; one whose settings.json predates it ran with a zero bias,
    so it is extended with 'zero' (and then records it) and refused with 'mean', naming the field."""
    from adapterkit.experiments.common import logged_settings

    assert logged_settings({"epochs": 3.0}, ("epochs",)) == {"epochs": 3.0, "regression_bias": "zero"}
    assert logged_settings({"regression_bias": "mean"}, ())["regression_bias"] == "mean"
    path = tmp_path / "runs.jsonl"
    path.write_text('{"task": "t", "seed": 1, "system": "a"}\n')
    (tmp_path / "settings.json").write_text(json.dumps({"epochs": 3.0}))
    with pytest.raises(ConfigError, match="regression_bias: the runs in runs.jsonl used 'zero'"):
        ResultLog(path, logged_settings({"epochs": 3.0, "regression_bias": "mean"}, ("epochs",)))
    ResultLog(path, logged_settings({"epochs": 3.0, "regression_bias": "zero"}, ("epochs",)))
    assert json.loads((tmp_path / "settings.json").read_text()) == {"epochs": 3.0, "regression_bias": "zero"}


def test_a_row_added_after_a_cut_line_stays_readable(tmp_path) -> None:
    path = tmp_path / "runs.jsonl"
    path.write_text('{"task": "t", "seed": 1, "system": "a"}\n{"task": "t", "se')
    ResultLog(path).add({"task": "t", "seed": 2, "system": "a"})
    assert [r["seed"] for r in ResultLog(path).rows] == [1, 2]


def test_result_log_refuses_other_settings(tmp_path) -> None:
    path = tmp_path / "runs.jsonl"
    log = ResultLog(path, {"epochs": 10.0, "precision": "bf16", "tasks": ("a",)})
    log.add({"task": "t", "seed": 1, "system": "a"})
    assert json.loads((tmp_path / "settings.json").read_text())["precision"] == "bf16"
    assert len(ResultLog(path, {"epochs": 10.0, "precision": "bf16", "tasks": ["a"]}).rows) == 1  # same settings
    ResultLog(path, {"epochs": 10.0, "lr": 1e-3})  # a setting not recorded before is added
    assert json.loads((tmp_path / "settings.json").read_text())["lr"] == 1e-3
    with pytest.raises(ConfigError, match=r"settings\.json: precision: .*'bf16'.*'fp32'"):
        ResultLog(path, {"epochs": 10.0, "precision": "fp32"})
    (tmp_path / "settings.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"settings\.json: not valid JSON"):
        ResultLog(path, {"epochs": 10.0})


def test_result_log_written_before_settings_is_not_labelled(tmp_path) -> None:
    path = tmp_path / "runs.jsonl"
    ResultLog(path).add({"task": "t", "seed": 1, "system": "a"})
    assert len(ResultLog(path, {"epochs": 3.0}).rows) == 1
    assert not (tmp_path / "settings.json").exists()  # its runs' settings are unknown: nothing is claimed


def test_result_log_legacy_settings_refuse_a_new_default(tmp_path) -> None:
    path = tmp_path / "runs.jsonl"
    ResultLog(path, {"epochs": 10.0}).add({"system": "a"})  # a log from before pooling was a setting
    with pytest.raises(ConfigError, match=r"settings\.json: pooling: .*'hf'.*'auto'"):
        ResultLog(path, {"epochs": 10.0, "pooling": "auto"}, legacy={"pooling": "hf"})
    assert len(ResultLog(path, {"epochs": 10.0, "pooling": "hf"}, legacy={"pooling": "hf"}).rows) == 1


def test_baseline_rows_use_the_model_head(tmp_path) -> None:
    from adapterkit.data.tasks import TaskSpec
    from adapterkit.experiments.common import baseline_row
    from adapterkit.model import AdaptedModel, load_base_model
    from adapterkit.testing import save_tiny_model

    hf, tok = load_base_model(str(save_tiny_model(tmp_path / "m")), pooling="max")
    spec = TaskSpec("t", "classification", ("text",), "label", ("0", "1"), "accuracy", {"train": "unused"})
    data = tuple([{"text": t, "label": i % 2} for i, t in enumerate(["good movie", "bad movie"] * n)] for n in (4, 2, 3))
    opts = {"epochs": 1.0, "batch_size": 4, "max_length": 16, "progress": "none", "cache_frozen_layers": True,
            "backbone_dropout": False}
    common = dict(label="x", seed=1, output_dir=tmp_path / "w")
    for system in ("majority", "probe", "head"):
        row = baseline_row(system, AdaptedModel(hf), tok, spec, data, opts, **common)
        assert 0 <= row["test_score"] <= 1 and {"dev_score", "trainable", "train_seconds", "history"} <= set(row)
    with pytest.raises(ConfigError, match="not a baseline"):
        baseline_row("lora", AdaptedModel(hf), tok, spec, data, opts, **common)
