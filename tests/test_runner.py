"""The runner: one run_system for the CLI, the demo, the zoo and every experiment; `adapterkit train` end to end
(run_training): bad options, previous runs, resume, full disks, kills."""
from __future__ import annotations

import ast
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import adapterkit.runner as runner
from adapterkit.cli import main
from adapterkit.errors import ConfigError
from adapterkit.options import DataOptions
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
                # close_distributed ends a torchrun process after the command; it trains nothing
                assert names <= {"TrainConfig", "encode", "close_distributed"}, \
                    f"{path.name} imports {sorted(names)} from training"
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


# --- reliability (issue 16) ------------------------------------------------------------------------

POS = ["good", "great", "fine", "lovely"]
NEG = ["bad", "awful", "poor", "dull"]
FILL = ["the", "movie", "was", "a", "plot", "very"]


def write_tsv(path: Path, n: int, seed: int, labels: tuple[str, ...] = ("neg", "pos")) -> Path:
    import random

    rng = random.Random(seed)
    lines = ["sentence\tlabel"]
    for i in range(n):
        label = labels[i % len(labels)]
        lines.append(f"the {rng.choice(FILL)} was {rng.choice(POS if label == 'pos' else NEG)}\t{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    return {"model": save_tiny_model(root / "tiny-bert", words=[*POS, *NEG, *FILL]),
            "train": write_tsv(root / "train.tsv", 16, 0), "dev": write_tsv(root / "dev.tsv", 8, 1),
            "three": write_tsv(root / "three.tsv", 9, 2, ("neg", "pos", "meh"))}


def args(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(files["model"]), "--train-file", str(files["train"]), "--dev-file",
            str(files["dev"]), "--text-columns", "sentence", "--epochs", "2", "--batch-size", "8", "--max-length", "16",
            "--lr", "1e-2", "--progress", "none", "--output-dir", str(out), *extra]


@pytest.mark.parametrize("method", ["probe", "majority"])
def test_train_runs_the_baselines_without_a_learning_rate(files, tmp_path: Path, method: str):
    """`train --method probe|majority` (offered by --help) runs with no --lr: baselines train nothing by gradient."""
    argv = [a for a in args(files, tmp_path / method, "--method", method) if a not in ("--lr", "1e-2")]
    assert main(argv) == 0
    assert json.loads((tmp_path / method / "results.json").read_text())["method"] == method


@pytest.mark.parametrize("extra, message", [
    (["--k-shot", "0"], "k_shot: must be a whole number >= 1, got 0"),
    (["--dev-size", "0"], "dev_size: must be a whole number >= 1, got 0"),
    (["--train-size", "-3"], "train_size: must be a whole number >= 1, got -3"),
    (["--lr", "inf"], "learning_rate: must be a finite number > 0, got inf"),
    (["--lr", "nan"], "learning_rate: must be a finite number > 0, got nan"),
    (["--lr", "0"], "learning_rate: must be a finite number > 0, got 0.0"),
    (["--epochs", "inf"], "epochs: must be finite, got inf"),
    (["--k-shot", "4", "--train-size", "8"], "k_shot: give --k-shot (4 per class) or --train-size (8 in all), not both"),
    (["--seed", "-1"], "seed: must be in [0, 2**32), got -1"),
])
def test_bad_options_are_refused_before_anything_runs(files, tmp_path: Path, capsys, extra, message):
    assert main(args(files, tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err
    assert err.strip().startswith(f"adapterkit train: error: {message}") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_yaml_list_option_given_a_number(files, tmp_path: Path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("text_columns: 5\n")
    assert main([*args(files, tmp_path / "run"), "--config", str(cfg)]) == 2
    assert "run.yaml: text_columns: invalid value 5" in capsys.readouterr().err
    cfg.write_text("output_dir: [a, b]\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert "run.yaml: output_dir: invalid value ['a', 'b']" in capsys.readouterr().err


def test_max_length_beyond_the_model_is_clamped_with_a_warning(files, tmp_path: Path, capsys):
    run = args(files, tmp_path / "run", "--epochs", "1")
    run[run.index("--max-length") + 1] = "1000"  # the tiny model has 64 positions
    assert main(run) == 0
    assert "warning: max_length: 1000 is more than the model takes (64 positions" in capsys.readouterr().err


def test_a_second_run_into_the_same_directory(files, tmp_path: Path, capsys):
    out = tmp_path / "run"
    assert main(args(files, out, "--epochs", "1")) == 0
    first = (out / "results.json").read_bytes()
    capsys.readouterr()
    assert main(args(files, out, "--epochs", "1", "--seed", "7")) == 2
    err = capsys.readouterr().err
    assert f"{out}: output_dir already holds a run (results.json, train_result.json, adapter, checkpoint-2)" in err
    assert "--resume auto" in err and "--overwrite true" in err
    assert (out / "results.json").read_bytes() == first  # untouched
    assert main(args(files, out, "--epochs", "1", "--seed", "7", "--overwrite", "true")) == 0
    assert (out / "results.json").read_bytes() != first


def test_resume_refuses_another_run_length(files, tmp_path: Path, capsys):
    out = tmp_path / "run"
    assert main(args(files, out)) == 0  # 2 epochs of 2 steps
    capsys.readouterr()
    more = args(files, out, "--resume", "auto")
    more[more.index("--epochs") + 1] = "5"
    assert main(more) == 2
    err = capsys.readouterr().err
    assert "resume: the checkpoint belongs to a run of 4 steps (step 4, batch size 8); this run asks for 10 steps" in err
    assert "--overwrite true" in err
    assert main(args(files, out, "--resume", "auto")) == 0  # same length: a finished run stays finished


def test_resume_skips_a_truncated_checkpoint(files, tmp_path: Path, capsys):
    out = tmp_path / "run"
    assert main(args(files, out, "--epochs", "3")) == 0
    capsys.readouterr()
    state = out / "checkpoint-6" / "trainer_state.json"
    state.write_text(state.read_text()[:40])  # e.g. a full disk while it was written
    (out / "results.json").unlink()
    assert main(args(files, out, "--epochs", "3", "--resume", "auto")) == 0
    err = capsys.readouterr().err
    assert f"{out / 'checkpoint-6'}: incomplete checkpoint (trainer_state.json is truncated or invalid" in err
    before = next(p for p in out.glob("checkpoint-*") if p.name != "checkpoint-6")  # the best one is kept too
    assert f"resuming from {before}" in err
    assert json.loads((out / "train_result.json").read_text())["global_step"] == 6


def test_a_pickle_in_a_checkpoint_is_refused(files, tmp_path: Path, capsys):
    import torch

    out = tmp_path / "run"
    assert main(args(files, out)) == 0
    capsys.readouterr()
    torch.save({"state": {}, "param_groups": [], "x": _Payload()}, out / "checkpoint-4" / "optimizer.pt")
    assert main(args(files, out, "--resume", "auto")) == 2
    assert (f"refusing to unpickle {out / 'checkpoint-4' / 'optimizer.pt'}; convert it to safetensors"
            in capsys.readouterr().err)


class _Payload:
    pass


def test_disk_full_during_the_final_save(files, tmp_path: Path, capsys, monkeypatch):
    from adapterkit import io as akio

    real = akio.save_file

    def full(tensors, filename, metadata=None):
        if Path(filename).parent.name != "adapter":  # checkpoints still fit
            return real(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(akio, "save_file", full)
    out = tmp_path / "run"
    assert main(args(files, out, "--epochs", "1")) == 2
    err = capsys.readouterr().err
    assert f"adapterkit train: error: [Errno {errno.ENOSPC}] {out / 'adapter' / 'adapter.safetensors'}: cannot write " \
           "(No space left on device)" in err
    assert not (out / "adapter" / "adapter_config.json").exists() and not list((out / "adapter").iterdir())
    assert not (out / "results.json").exists()


def test_disk_full_during_a_checkpoint(files, tmp_path: Path, capsys, monkeypatch):
    from adapterkit import io as akio

    real = akio.save_file

    def full(tensors, filename, metadata=None):
        if Path(filename).parent.name != "checkpoint-4":
            return real(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(akio, "save_file", full)
    out = tmp_path / "run"
    assert main(args(files, out)) == 2
    err = capsys.readouterr().err
    assert f"{out / 'checkpoint-4'}: cannot write the checkpoint" in err and "No space left on device" in err
    assert not (out / "checkpoint-4").exists() and (out / "checkpoint-2" / "trainer_state.json").is_file()
    monkeypatch.undo()
    assert main(args(files, out, "--resume", "auto")) == 0  # the complete checkpoint before it resumes


def test_model_with_a_head_for_other_labels(files, tmp_path: Path, capsys):
    run = args(files, tmp_path / "run")
    run[run.index("--train-file") + 1] = str(files["three"])
    assert main(run) == 2
    assert (f"adapterkit train: error: {files['model']}: num_labels: the model's task head has 2 outputs and this "
            "classification task needs 3") in capsys.readouterr().err


def test_a_pickle_only_model_directory(files, tmp_path: Path, capsys):
    import torch
    from safetensors.torch import load_file

    model = tmp_path / "pickled"
    shutil.copytree(files["model"], model)
    state = load_file(str(model / "model.safetensors"))
    (model / "model.safetensors").unlink()
    torch.save({**state, "payload": _Payload()}, model / "pytorch_model.bin")
    run = args(files, tmp_path / "run")
    run[run.index("--model") + 1] = str(model)
    assert main(run) == 2
    assert (f"refusing to unpickle {model / 'pytorch_model.bin'}; convert it to safetensors"
            in capsys.readouterr().err)


def _cmd(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    run = args(files, out, *extra)
    run[run.index("--epochs") + 1] = "20"
    return [sys.executable, "-m", "adapterkit.cli", *run]


def test_sigint_prints_one_line_and_leaves_a_resumable_run(files, tmp_path: Path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    from adapterkit.rundir import run_lock
    from adapterkit.training.checkpoints import check_resume_compatible, last_checkpoint

    proc = subprocess.Popen(_cmd(files, out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and last_checkpoint(out) is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"adapterkit train: interrupted; checkpoints so far are in {out}: run the same command with "
                     "--resume auto to continue"]
    checkpoint = last_checkpoint(out)  # resumable: a complete checkpoint of this run, and the lock released
    assert checkpoint is not None
    check_resume_compatible(checkpoint, 40, 20, 8)  # 20 epochs of 16 examples in batches of 8
    with run_lock(out):
        pass


# --- which task and which splits (no model is loaded) ---


def resolve_task(opts: dict, purpose: str = "train"):
    return runner.resolve_task(DataOptions(**opts), purpose)


def _file(path: Path, n: int, offset: int = 0) -> str:
    rows = [f"text {offset + i}\t{['neg', 'pos'][i % 2]}" for i in range(n)]
    path.write_text("text\tlabel\n" + "\n".join(rows) + "\n")
    return str(path)


@pytest.fixture
def split_files(tmp_path: Path) -> dict[str, str]:
    return {"train_file": _file(tmp_path / "a.tsv", 40), "dev_file": _file(tmp_path / "b.tsv", 12, 100),
            "test_file": _file(tmp_path / "c.tsv", 18, 200)}


def _split(opts: dict, **kw):
    spec = resolve_task(opts)
    return runner.split_data(spec, None, k_shot=opts.get("k_shot"), train_size=None, dev_size=opts.get("dev_size"), seed=0,
                      own_files=True, **kw)


def test_three_files_are_used_as_named(split_files):
    train, dev, test, notes = _split(dict(split_files))
    assert (len(train), len(dev), len(test)) == (40, 12, 18)
    assert {e["text"] for e in test} == {f"text {200 + i}" for i in range(18)}
    assert any(split_files["test_file"] in n and "18 examples" in n for n in notes)
    assert not any("official dev" in n for n in notes)


def test_dev_file_with_dev_size_is_refused_naming_what_to_drop(split_files):
    with pytest.raises(ConfigError, match="--dev-file already gives the dev set; drop --dev-size"):
        resolve_task({**split_files, "dev_size": 6})
    opts = {k: v for k, v in split_files.items() if k != "test_file"}
    with pytest.raises(ConfigError, match="drop --dev-size"):
        resolve_task({**opts, "dev_size": 6})


def test_dev_size_carves_from_train_and_keeps_the_test_file(split_files):
    opts = {"train_file": split_files["train_file"], "test_file": split_files["test_file"], "dev_size": 8}
    train, dev, test, notes = _split(opts)
    assert (len(train), len(dev), len(test)) == (32, 8, 18)
    assert {e["text"] for e in dev} <= {f"text {i}" for i in range(40)}
    assert any("carved from the train file" in n and split_files["train_file"] in n for n in notes)
    assert any(n.startswith("test: " + split_files["test_file"]) for n in notes)


@pytest.mark.parametrize("alone", ["test_file", "dev_file"])
def test_a_dev_or_test_file_alone_is_not_trained_on(split_files, alone):
    with pytest.raises(ConfigError, match=r"without --train-file.*would be trained on"):
        resolve_task({alone: split_files[alone]})
    assert resolve_task({alone: split_files[alone]}, "eval").splits == (alone.removesuffix("_file"),)


def test_a_task_together_with_files_is_refused(split_files):
    with pytest.raises(ConfigError, match="not --task and --test-file"):
        resolve_task({"task": "sst2", "test_file": split_files["test_file"]})


def test_headerless_files_through_the_options(tmp_path):
    path = tmp_path / "plain.tsv"
    path.write_text("a fine film\tpos\na dull film\tneg\n")
    spec = resolve_task({"train_file": str(path), "no_header": True, "text_columns": ["0"], "label_column": "1"})
    assert spec.labels == ("neg", "pos") and not spec.header


def test_each_method_has_its_own_default_learning_rate():
    from adapterkit.methods.bottleneck import PfeifferConfig
    from adapterkit.methods.lora import LoRAConfig
    from adapterkit.methods.prefix import PrefixTuningConfig
    from adapterkit.methods.prompt import PromptTuningConfig
    from adapterkit.runner import default_learning_rate
    from adapterkit.training import DEFAULT_LEARNING_RATES

    assert default_learning_rate("pfeiffer") == PfeifferConfig.default_learning_rate == 1e-3
    assert default_learning_rate("lora") == LoRAConfig.default_learning_rate == 1e-3
    assert default_learning_rate("prompt") == PromptTuningConfig.default_learning_rate == 1e-2
    assert default_learning_rate("prefix") == PrefixTuningConfig.default_learning_rate == 3e-4  # 1e-3 collapsed
    from adapterkit.runner import default_head_learning_rate

    assert default_head_learning_rate("prefix") == PrefixTuningConfig.default_head_learning_rate == 3e-3
    assert default_head_learning_rate("pfeiffer") is None and default_head_learning_rate("full") is None
    assert default_learning_rate("full") == DEFAULT_LEARNING_RATES["full"] == 5e-5
    assert default_learning_rate("head") == DEFAULT_LEARNING_RATES["head"] == 1e-3
