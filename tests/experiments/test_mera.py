"""The MerA experiment end to end on a tiny model and real task files (few examples, one epoch)."""
from __future__ import annotations

import json

import pytest

from adapterkit.cli import main
from adapterkit.experiments import mera
from adapterkit.testing import save_tiny_model
from adapterkit.zoo import ZooSource, build_zoo


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, data_dir) -> tuple:
    root = tmp_path_factory.mktemp("mera")
    model = save_tiny_model(root / "tiny-bert", head="base")
    sources = [ZooSource("sst2", "sst2", "sentiment"), ZooSource("qnli", "qnli", "nli"),
               ZooSource("xnli_en", "xnli_en", "nli"), ZooSource("rte", "rte", "nli")]
    build_zoo(root / "zoo", sources, data_dir=data_dir, model=str(model), max_train=16, max_dev=8, epochs=1, max_length=32,
              batch_size=8, progress="none")
    return root, model, data_dir


def test_mera_runs_every_system_and_resumes(setup: tuple, capsys: pytest.CaptureFixture) -> None:
    root, model, data_dir = setup
    out = root / "out"
    argv = ["experiment", "mera", "--model", str(model), "--data-dir", str(data_dir), "--zoo-dir", str(root / "zoo"),
            "--output-dir", str(out), "--tasks", "rte", "--k-shots", "2", "--seeds", "7", "--epochs", "1",
            "--max-length", "32", "--progress", "none"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [r["system"] for r in rows] == list(mera.SYSTEMS)
    by = {r["system"]: r for r in rows}
    assert all(r["test_score"] is not None and 0 <= r["test_score"] <= 1 for r in rows)
    assert all("rte" not in r.get("pool", []) for r in rows)  # the target's own adapter never takes part
    assert by["fusion"]["adapters"] == ["sst2", "qnli", "xnli_en"]
    assert sorted(by["fusion-st"]["adapters"]) == ["qnli", "xnli_en"]  # same track: NLI
    assert by["mera-ot-w-st"]["anchor"] in ("qnli", "xnli_en")
    assert by["single"]["adapters"][0] in ("sst2", "qnli", "xnli_en")
    assert by["full"]["trainable"] > 10 * by["scratch"]["trainable"]
    assert by["probe"]["trainable"] == 2 * 33 and by["majority"]["trainable"] == 0  # a linear map on 32 features
    assert by["head"]["trainable"] == 32 * 33 + 2 * 33  # hf head of the tiny BERT: its pooler + classifier
    assert by["fusion"]["trainable"] > by["mera-avg"]["trainable"] == by["scratch"]["trainable"]
    report = (out / "results.md").read_text()
    assert "head pooling auto" in report and "| majority |" in report and "| probe |" in report
    assert "RTE k=2" in report and "mera-ot-act-st" in report and "## Zoo" in report
    assert (out / "mera.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(argv) == 0  # everything is logged: a rerun trains nothing
    assert f"{len(mera.SYSTEMS)} already in" in capsys.readouterr().out
    assert len((out / "runs.jsonl").read_text().splitlines()) == len(mera.SYSTEMS)


def test_mera_errors(setup: tuple, tmp_path) -> None:
    root, model, data_dir = setup
    base = ["experiment", "mera", "--model", str(model), "--data-dir", str(data_dir), "--output-dir", str(tmp_path)]
    assert main([*base, "--zoo-dir", str(tmp_path / "nozoo")]) == 2
    assert main([*base, "--zoo-dir", str(root / "zoo"), "--systems", "nonsense"]) == 2
    assert main([*base, "--zoo-dir", str(root / "zoo"), "--tasks", "stsb"]) == 2  # a regression target
