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
    assert "Layers selected by AA" in (out / "results.md").read_text()
    capsys.readouterr()
    assert main(argv) == 0
    assert "8 already in" in capsys.readouterr().out
    lines = (out / "runs.jsonl").read_text()
    more_seeds = [*argv[: argv.index("--seeds") + 1], "3,4", *argv[argv.index("--seeds") + 2:]]
    assert main([*more_seeds, "--report-only", "true"]) == 0  # seed 4 is missing: reported as is, not trained
    assert (out / "runs.jsonl").read_text() == lines
    assert "(n=1)" in (out / "results.md").read_text()


def test_aa_focused_config_follows_the_selection(tmp_path) -> None:
    opts = {"lr": 1e-3}
    path = tmp_path / "sel.json"
    with pytest.raises(ConfigError, match="run the 'aa' system first"):
        adaptable.adapter_config("aa-focused", opts, path)
    write_selection(path, {"layers": [1, 3], "num_layers": 4, "logits": {}})
    config = adaptable.adapter_config("aa-focused", opts, path)
    assert isinstance(config, PfeifferConfig) and config.layers == (1, 3) and config.activation == "rational"
    write_selection(path, {"layers": [], "num_layers": 4})
    assert adaptable.adapter_config("aa-focused", opts, path) is None  # nothing selected: head only


def test_adaptable_option_errors(tmp_path) -> None:
    argv = ["experiment", "adaptable", "--output-dir", str(tmp_path), "--backbone-dropout", "true"]
    assert main(argv) == 2  # the frozen-layer cache needs a deterministic backbone
    assert main(["experiment", "adaptable", "--output-dir", str(tmp_path), "--systems", "nope"]) == 2
