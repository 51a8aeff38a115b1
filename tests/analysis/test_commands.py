"""``adapterkit analyze similarity`` on tiny saved models."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adapterkit.cli import main
from adapterkit.testing import save_tiny_model

WORDS = ("the", "a", "movie", "was", "good", "great", "bad", "awful", "plot", "actors")


@pytest.fixture()
def saved(tmp_path: Path) -> dict[str, Path]:
    from transformers import AutoModelForSequenceClassification

    from adapterkit.io import save_adapter
    from adapterkit.methods.bottleneck import HoulsbyConfig
    from adapterkit.model import AdaptedModel, load_base_model

    base = save_tiny_model(tmp_path / "base", words=WORDS)
    tuned = AutoModelForSequenceClassification.from_pretrained(base)
    with torch.no_grad():  # a "fully fine-tuned" model: every weight of the top layer moved
        for p in tuned.bert.encoder.layer[1].parameters():
            p.add_(0.3 * torch.randn_like(p))
    tuned.save_pretrained(tmp_path / "full" / "model")
    hf, _ = load_base_model(str(base))
    adapted = AdaptedModel(hf)
    adapted.add_adapter("houlsby", HoulsbyConfig())
    save_adapter(adapted, "houlsby", tmp_path / "houlsby" / "adapter")
    probe = tmp_path / "probe.txt"
    probe.write_text("\n".join(["the movie was good", "a bad plot", "great actors", "the plot was awful",
                                "good movie", "the actors were great and the plot was good"]))
    deep = save_tiny_model(tmp_path / "deep", words=WORDS, num_hidden_layers=3)
    return {"base": base, "full": tmp_path / "full" / "model", "adapter": tmp_path / "houlsby" / "adapter",
            "probe": probe, "deep": deep}


def test_similarity_writes_json_and_png(saved: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc = main(["analyze", "similarity", str(saved["base"]), str(saved["full"]), str(saved["adapter"]),
               "--probe", str(saved["probe"]), "--tokens", "all", "--output-dir", str(out)])
    assert rc == 0
    data = json.loads((out / "similarity.json").read_text())
    assert set(data["models"]) == {"full/model", "houlsby/adapter"}
    full, adapter = data["models"]["full/model"], data["models"]["houlsby/adapter"]
    assert full["layers"] == [0, 1, 2] and len(full["cka"]) == 3 and len(full["rsa"]) == 3
    assert full["cka"][:2] == pytest.approx([1.0, 1.0]) and full["cka"][2] < 0.999
    # a fresh Houlsby adapter starts near the identity: almost no deviation anywhere
    assert min(adapter["cka"]) > 0.99
    assert (out / "similarity.png").stat().st_size > 1000


def test_similarity_errors(saved: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["analyze", "similarity", str(saved["base"]), str(saved["deep"]), "--probe", str(saved["probe"]),
               "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and str(saved["base"]) in err and str(saved["deep"]) in err and "3 layers" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    rc = main(["analyze", "similarity", str(saved["base"]), str(saved["full"]), "--probe", str(empty)])
    assert rc == 2 and "empty.txt: probe set is empty" in capsys.readouterr().err
    rc = main(["analyze", "similarity", str(saved["base"]), "--probe", str(saved["probe"])])
    assert rc == 2 and "at least one TUNED" in capsys.readouterr().err


def test_lr_sweep_command_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from adapterkit.analysis.sweep import aggregate

    model = save_tiny_model(tmp_path / "m", words=WORDS + ("film", "boring", "fun", "loved", "hated"))
    out = tmp_path / "sweep"
    args = ["analyze", "lr-sweep", "--task", "sample_sentiment", "--model", str(model), "--systems",
            "houlsby:bottleneck_size=8,full", "--lrs", "1e-3,1e-2", "--seeds", "1", "--train-size", "24",
            "--dev-size", "8", "--epochs", "2", "--batch-size", "8", "--max-length", "24", "--progress", "none",
            "--output-dir", str(out)]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    runs = [r for r in rows if "lr" in r]
    assert len(runs) == 4 and {r["system"] for r in rows} == {"houlsby:bottleneck_size=8", "full", "trivial",
                                                              "linear probe"}
    for r in runs:  # every run logs dev loss and dev score per epoch
        assert [c["epoch"] for c in r["curve"]] == [1.0, 2.0]
        assert all(c["dev_loss"] > 0 and 0 <= c["dev_score"] <= 1 for c in r["curve"])
    md = (out / "lr_sweep.md").read_text()
    for line in aggregate(runs, ["houlsby:bottleneck_size=8", "full"]):
        assert f"| {line['system']} |" in md and f"{line['grid std']:.2f}".rstrip("0").rstrip(".") in md
    assert "frozen linear probe" in md and "trivial" in md
    assert (out / "lr_sweep.png").stat().st_size > 1000 and (out / "dev_loss.png").stat().st_size > 1000
    capsys.readouterr()
    assert main(args[:8] + ["--lrs", "1e-3,0"] + args[10:]) == 2
    assert "learning rates must be > 0, got 0" in capsys.readouterr().err
