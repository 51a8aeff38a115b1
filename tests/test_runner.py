"""One run_system for the CLI, the demo, the zoo and every experiment; one test-set evaluation."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import adapterkit.runner as runner
from adapterkit.cli import main
from adapterkit.testing import save_tiny_model
from adapterkit.zoo import ZooSource, build_zoo

SRC = Path(__file__).resolve().parents[1] / "src" / "adapterkit"
WORDS = ["good", "great", "bad", "awful", "the", "film", "was", "plot"]


def test_commands_zoo_and_experiments_train_only_through_the_runner():
    """Nothing but the runner (and pretraining) calls training.train/evaluate: they use run_system."""
    files = [SRC / "cli.py", SRC / "zoo.py", *sorted((SRC / "experiments").glob("*.py"))]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] == "training":
                names = {a.name for a in node.names}
                assert names <= {"TrainConfig", "encode"}, f"{path.name} imports {sorted(names)} from training"
    calls = [n for n in ast.walk(ast.parse((SRC / "experiments" / "common.py").read_text()))
             if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "run_system"]
    assert calls, "experiments run their systems through runner.run_system"


def test_cli_train_and_the_zoo_call_run_system(tmp_path: Path, monkeypatch):
    seen = []
    real = runner.run_system

    def spy(*args, **kwargs):
        seen.append(kwargs["label"])
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "run_system", spy)
    model = save_tiny_model(tmp_path / "tiny", words=WORDS)
    build_zoo(tmp_path / "zoo", [ZooSource("a", "sample_sentiment", "sentiment")], model=str(model), max_train=16,
              max_dev=8, epochs=1, batch_size=8, progress="none")
    train = tmp_path / "train.tsv"
    train.write_text("sentence\tlabel\n" + "".join(f"the film was {w}\t{w in ('good', 'great')}\n"
                                                   for w in ["good", "bad", "great", "awful"] * 4))
    assert main(["train", "--model", str(model), "--train-file", str(train), "--text-columns", "sentence",
                 "--epochs", "1", "--progress", "none", "--output-dir", str(tmp_path / "run")]) == 0
    assert seen == ["zoo:a", "pfeiffer"]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["method"] == "pfeiffer"
