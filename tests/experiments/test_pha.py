"""The PHA experiment end to end on a tiny model and real task files (multi-task grid and report)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from adapterkit.cli import main
from adapterkit.errors import ConfigError
from adapterkit.experiments import pha
from adapterkit.testing import save_tiny_model


def test_pha_grid_runs_every_system_and_resumes(tmp_path, data_dir, capsys: pytest.CaptureFixture) -> None:
    model = save_tiny_model(tmp_path / "tiny-bert", head="base")
    out = tmp_path / "out"
    argv = ["experiment", "pha", "--model", str(model), "--data-dir", str(data_dir), "--output-dir", str(out),
            "--tasks", "sst2,stsb,qnli", "--sizes", "16,32", "--seeds", "3", "--epochs", "1", "--dev-size", "8",
            "--test-size", "20", "--max-length", "16", "--systems", "majority,probe,pfeiffer,shared,full",
            "--holdout", "none", "--transfer-tasks", "", "--progress", "none", "--lrs", "full=1e-3"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert {(r["size"], r["system"]) for r in rows} == {
        (n, s) for n in (16, 32) for s in ("majority", "probe", "pfeiffer", "shared", "full")}
    for r in rows:
        assert set(r["scores"]) == {"sst2", "stsb", "qnli"}
        assert r["test_score"] == pytest.approx(sum(v if v == v else 0.0 for v in r["scores"].values()) / 3)
    per_task = next(r for r in rows if r["system"] == "pfeiffer" and r["size"] == 16)
    shared = next(r for r in rows if r["system"] == "shared" and r["size"] == 16)
    assert len(per_task["best_epoch"]) == 3  # one run per task
    assert per_task["trainable"] > shared["trainable"]  # three adapters against one
    report = (out / "results.md").read_text()
    assert "## Multi-task: mean test score over tasks" in report and "| majority |" in report
    assert "### Per task, N=32" in report and "(n=1)" in report
    assert (out / "pha_sizes.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(argv) == 0
    assert "10 already in" in capsys.readouterr().out


def _grid_and_transfer_argv(model, data_dir, out, systems: str) -> list[str]:
    """A one-size grid of ``systems`` on SST-2 and STS-B, then 4-shot transfer to the held-out RTE."""
    return ["experiment", "pha", "--model", str(model), "--data-dir", str(data_dir), "--output-dir", str(out),
            "--tasks", "sst2,stsb", "--sizes", "16", "--seeds", "3", "--epochs", "1", "--dev-size", "8",
            "--test-size", "20", "--max-length", "16", "--systems", systems, "--holdout", "rte",
            "--transfer-tasks", "", "--k-shots", "4", "--transfer-epochs", "1", "--progress", "none",
            "--pha-config", '{"bottleneck_size": 8}']


def test_pha_generated_systems_and_transfer(tmp_path, data_dir) -> None:
    model = save_tiny_model(tmp_path / "tiny-bert", head="base")
    out = tmp_path / "out"
    assert main(_grid_and_transfer_argv(model, data_dir, out, "hyperformer,pha")) == 0
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    grid = {r["system"]: r for r in rows if r["phase"] == "grid"}
    assert set(grid) == {"hyperformer", "pha"} and all(set(r["scores"]) == {"sst2", "stsb"} for r in grid.values())
    transfer = {r["system"]: r for r in rows if r["phase"] == "transfer"}
    assert set(transfer) == {"majority", "probe", "pfeiffer", "pha", "pha+hyper"}
    assert all(r["target"] == "rte" and r["k"] == 4 and r["test_score"] is not None for r in transfer.values())
    # the grid's PHA model (trained on sst2 and stsb, rte held out) is the source; it was not trained again
    assert (out / "sources" / "seed3_N16" / "source.json").is_file()
    assert "nearest trained prototype" in transfer["pha"]["init"]
    assert transfer["pha"]["trainable"] < transfer["pha+hyper"]["trainable"] < grid["pha"]["trainable"] + 10**6
    report = (out / "results.md").read_text()
    assert "## Few-shot transfer to rte (accuracy)" in report and "| pha+hyper |" in report
    assert (out / "pha_transfer_rte.png").stat().st_size > 1000


def test_pha_experiment_runs_on_t5_the_papers_backbone(tmp_path, data_dir) -> None:
    """On an encoder-decoder model the task heads read the decoder's last real token (as T5's own head does):
    the grid, the probe and the few-shot transfer run; PHA's decoder adapters are generated."""
    model = save_tiny_model(tmp_path / "tiny-t5", "t5", head="base")
    out = tmp_path / "out"
    assert main(_grid_and_transfer_argv(model, data_dir, out, "majority,probe,pfeiffer,pha")) == 0
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    grid = {r["system"]: r for r in rows if r["phase"] == "grid"}
    assert set(grid) == {"majority", "probe", "pfeiffer", "pha"}
    assert all(r["test_score"] is not None for r in grid.values())
    transfer = {r["system"] for r in rows if r["phase"] == "transfer"}
    assert {"pha", "pha+hyper", "probe"} <= transfer


def test_pha_options_are_checked() -> None:
    assert pha.learning_rates({"lrs": "pha=3e-3"})["pha"] == 3e-3
    with pytest.raises(ConfigError, match="lrs: 'bogus'"):
        pha.learning_rates({"lrs": "bogus=1"})
    assert main(["experiment", "pha", "--systems", "nonsense"]) == 2
    assert main(["experiment", "pha", "--holdout", "stsb", "--systems", "majority"]) == 2  # regression: no k per class


def test_pha_report_marks_runs_at_the_trivial_baseline(tmp_path) -> None:
    """Grid (mean and per task) and transfer cells count the runs whose score equals the majority baseline's on
    the same size (or k), task and seed."""
    from adapterkit.options import defaults

    opts = {**defaults(pha.OPTIONS), "output_dir": str(tmp_path), "tasks": ["sst2", "rte"], "sizes": [100],
            "seeds": [1], "max_length": 64, "holdout": "rte", "transfer_tasks": [], "k_shots": [4]}
    grid = [{"phase": "grid", "size": 100, "seed": 1, "system": s, "test_score": v, "scores": scores,
             "trainable": 1, "train_seconds": 1.0}
            for s, v, scores in (("majority", 0.51, {"sst2": 0.51, "rte": 0.51}), ("pfeiffer", 0.51, {"sst2": 0.51, "rte": 0.51}),
                                 ("pha", 0.6, {"sst2": 0.51, "rte": 0.69}))]  # pha: SST-2 alone collapsed
    transfer = [{"phase": "transfer", "target": "rte", "k": 4, "seed": 1, "system": s, "test_score": v,
                 "trainable": 1} for s, v in (("majority", 0.527), ("pha", 0.527), ("pfeiffer", 0.55))]
    pha.report(grid + transfer, opts)
    text = (tmp_path / "results.md").read_text()
    assert "| pfeiffer | 51.0 ± 0.0 (n=1, †1) |" in text and "| pha | 60.0 ± 0.0 (n=1) |" in text
    assert "| pha | 52.7 ± 0.0 (n=1, †1) |" in text and "| pfeiffer | 55.0 ± 0.0 (n=1) |" in text
    assert "| pha | 51.0 ± 0.0 (n=1, †1) | 69.0 ± 0.0 (n=1) |" in text  # the per-task table
    assert "| pfeiffer | 51.0 ± 0.0 (n=1, †1) | 51.0 ± 0.0 (n=1, †1) |" in text
    assert text.count("†k: k of the cell's runs") == 3


def test_kshot_split_splits_short_classes_or_refuses_them() -> None:
    from adapterkit.errors import DataError

    target = object.__new__(pha.TaskData)
    target.spec = SimpleNamespace(name="toy", labels=["a", "b", "c"])
    target.pool = [{"id": i, "label": 0} for i in range(40)] + [{"id": 100 + i, "label": 1} for i in range(7)]
    target.pool += [{"id": 200 + i, "label": 2} for i in range(12)]
    assert target.short_classes(4) == {1: 7} and target.short_classes(2) == {}
    train, dev = target.kshot_split(4, seed=0, short="split")
    ids = [ex["id"] for ex in train + dev]
    assert len(ids) == len(set(ids))  # disjoint
    per = {(part, lab): sum(ex["label"] == lab for ex in rows) for part, rows in (("t", train), ("d", dev))
           for lab in range(3)}
    assert per == {("t", 0): 4, ("d", 0): 4, ("t", 1): 4, ("d", 1): 3, ("t", 2): 4, ("d", 2): 4}
    assert target.kshot_split(2, seed=0, short="error") == target.kshot_split(2, seed=0, short="split")
    with pytest.raises(DataError, match=r"toy: k_shots: k=4 needs 8 examples per class .* class 1 \(b\) has 7"):
        target.kshot_split(4, seed=0, short="error")


def test_pha_refuses_short_transfer_classes_before_training(tmp_path, data_dir, capsys) -> None:
    argv = ["experiment", "pha", "--model", str(save_tiny_model(tmp_path / "m", head="base")), "--data-dir",
            str(data_dir), "--output-dir", str(tmp_path / "out"), "--tasks", "sst2", "--sizes", "16", "--seeds", "3",
            "--systems", "majority", "--holdout", "rte", "--transfer-tasks", "", "--k-shots", "100000",
            "--short-classes", "error", "--progress", "none"]
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert "rte: k_shots: k=100000 needs 200000 examples per class" in err
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written
