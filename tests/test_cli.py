"""The adapterkit command: YAML/flag merging, info --list, and a tiny train/eval/info run."""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest

from adapterkit.cli import build_parser, main, merge_options, read_yaml_config
from adapterkit.errors import ConfigError
from adapterkit.testing import kill_after_first_checkpoint, save_tiny_model

POS = ["good", "great", "fine", "lovely"]
NEG = ["bad", "awful", "poor", "dull"]
FILL = ["the", "movie", "was", "a", "plot", "very"]


def write_tsv(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    lines = ["sentence\tlabel"]
    for i in range(n):
        label = ["neg", "pos"][i % 2]
        word = rng.choice(POS if label == "pos" else NEG)
        lines.append(f"the {rng.choice(FILL)} was {word}\t{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_yaml_and_flags_merge(tmp_path: Path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("epochs: 2\nbatch_size: 4\nmethod: lora\ntext_columns: [a, b]\nadapter-config: {r: 4}\nlr: 1e-3\n")
    args = build_parser().parse_args(["train", "--config", str(cfg), "--batch-size", "8", "--task", "sst2"])
    opts = merge_options(args)
    assert opts["epochs"] == 2.0 and opts["batch_size"] == 8 and opts["method"] == "lora"
    assert opts["text_columns"] == ["a", "b"] and opts["adapter_config"] == {"r": 4}
    assert opts["task"] == "sst2" and opts["seed"] == 42 and opts["output_dir"] == "runs/train"
    assert opts["learning_rate"] == 1e-3  # YAML key `lr` is an alias; YAML reads 1e-3 as a string, still a number
    flag_only = merge_options(build_parser().parse_args(["train", "--epochs", "5"]))
    assert flag_only["epochs"] == 5.0 and flag_only["batch_size"] == 16
    assert flag_only["precision"] == "fp32"


def test_precision_flag_and_yaml(tmp_path: Path):
    assert merge_options(build_parser().parse_args(["train", "--precision", "bf16"]))["precision"] == "bf16"
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("precision: bf16\nepochs: 1\n")
    opts = merge_options(build_parser().parse_args(["experiment", "adaptable", "--config", str(cfg)]))
    assert opts["precision"] == "bf16" and opts["epochs"] == 1.0
    with pytest.raises(SystemExit):  # argparse names the allowed values
        build_parser().parse_args(["eval", "--precision", "fp8"])


def test_unknown_yaml_key_names_file_and_key(tmp_path: Path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("epochs: 1\nlearnin_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: learnin_rate: unknown key"):
        read_yaml_config(cfg, "train")
    assert main(["train", "--config", str(cfg), "--task", "sst2"]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "learnin_rate" in err


def test_a_successful_command_closes_the_process_group_and_a_failed_one_does_not(monkeypatch, capsys):
    import adapterkit.training as training

    calls = []
    monkeypatch.setattr(training, "close_distributed", lambda: calls.append(1) or False)
    assert main(["info", "--list"]) == 0 and calls == [1]
    assert main(["info", "/nonexistent/adapter"]) == 2 and calls == [1]


def test_info_list(capsys):
    assert main(["info", "--list"]) == 0
    out = capsys.readouterr().out
    for word in ("pfeiffer", "lora", "full", "head", "sst2", "sample_sentiment", "bert", "roberta"):
        assert word in out
    assert main(["info", "--list", "methods"]) == 0
    assert "sst2" not in capsys.readouterr().out


def test_python_dash_m_runs_the_cli():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "adapterkit", "info", "--list", "methods"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "pfeiffer" in done.stdout and "sst2" not in done.stdout


def test_train_eval_info_on_own_tsv(tmp_path: Path, capsys):
    model = save_tiny_model(tmp_path / "tiny-bert", words=[*POS, *NEG, *FILL])  # 19-word vocabulary
    train = write_tsv(tmp_path / "train.tsv", 24, 0)
    dev = write_tsv(tmp_path / "dev.tsv", 8, 1)
    out = tmp_path / "run"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model: {model}\nepochs: 1\nbatch_size: 8\nprogress: none\nmax_length: 16\n")
    code = main(["train", "--config", str(cfg), "--train-file", str(train), "--dev-file", str(dev),
                 "--text-columns", "sentence", "--method", "pfeiffer", "--adapter-config", '{"reduction_factor": 4}',
                 "--lr", "1e-2", "--output-dir", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "pfeiffer" in printed and "Trainable params" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "pfeiffer" and 0 <= results["dev"]["score"] <= 1
    meta = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert meta["config"]["reduction_factor"] == 4.0 and meta["head"]["id2label"] == {"0": "neg", "1": "pos"}
    assert not list(out.glob("checkpoint-*/model.safetensors"))

    assert main(["eval", str(out / "adapter"), "--model", str(model), "--train-file", str(train),
                 "--dev-file", str(dev), "--text-columns", "sentence", "--split", "dev", "--output-dir",
                 str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "score" in printed and "accuracy" in printed

    assert main(["info", str(out / "adapter")]) == 0
    printed = capsys.readouterr().out
    assert "adapter.safetensors" in printed and "head.safetensors" in printed


def test_train_errors_are_one_line(tmp_path: Path, capsys):
    assert main(["train", "--task", "no_such_task"]) == 2
    assert "unknown task" in capsys.readouterr().err
    assert main(["train", "--train-file", str(write_tsv(tmp_path / "t.tsv", 4, 0)), "--text-columns", "sentence",
                 "--method", "nonsense", "--model", "unused"]) == 2


def test_train_from_a_hub_dataset(tmp_path: Path, capsys, monkeypatch):
    """--hub-dataset builds the task from datasets.load_dataset (stubbed here: no network in tests)."""
    import datasets

    rows = [line.split("\t") for line in write_tsv(tmp_path / "x.tsv", 24, 3).read_text().splitlines()[1:]]
    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_list([{"review": t, "stars": lab} for t, lab in rows])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    model = save_tiny_model(tmp_path / "tiny-bert", words=[*POS, *NEG, *FILL])
    code = main(["train", "--hub-dataset", "someone/reviews:en", "--text-columns", "review", "--label-column", "stars",
                 "--labels", "neg,pos", "--model", str(model), "--epochs", "1", "--batch-size", "8", "--max-length",
                 "16", "--progress", "none", "--output-dir", str(tmp_path / "run")])
    assert code == 0
    assert ("someone/reviews", "en", "train") in calls and ("someone/reviews", "en", "validation") in calls
    assert "pfeiffer" in capsys.readouterr().out
    assert main(["train", "--hub-dataset", "someone/reviews", "--text-columns", "review"]) == 2
    assert "--labels" in capsys.readouterr().err
    assert main(["train", "--hub-dataset", "a/b", "--task", "sst2"]) == 2
    assert "not --task and --hub-dataset" in capsys.readouterr().err


def test_train_resumes_after_sigkill(tmp_path: Path):
    """Kill a real `adapterkit train` process with SIGKILL after its first checkpoint; --resume auto finishes it."""
    import os
    import signal
    import subprocess
    import sys

    model = save_tiny_model(tmp_path / "tiny-bert", words=[*POS, *NEG, *FILL])
    train_file, dev_file = write_tsv(tmp_path / "train.tsv", 48, 0), write_tsv(tmp_path / "dev.tsv", 8, 1)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "adapterkit.cli", "train", "--model", str(model), "--train-file", str(train_file),
           "--dev-file", str(dev_file), "--text-columns", "sentence", "--epochs", "60", "--batch-size", "8",
           "--max-length", "16", "--lr", "1e-2", "--seed", "3", "--output-dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert kill_after_first_checkpoint(cmd, out, env=env) == -signal.SIGKILL, "training finished before it could be killed"
    assert not (out / "results.json").exists()

    done = subprocess.run([*cmd, "--resume", "auto"], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming at step" in done.stderr
    assert json.loads((out / "train_result.json").read_text())["global_step"] == 60 * 6
    assert json.loads((out / "results.json").read_text())["method"] == "pfeiffer"
    assert (out / "adapter" / "adapter.safetensors").is_file()


def test_train_with_the_frozen_layer_cache(tmp_path: Path, capsys):
    model = save_tiny_model(tmp_path / "tiny-bert", words=[*POS, *NEG, *FILL], num_hidden_layers=3)
    train = write_tsv(tmp_path / "train.tsv", 16, 0)
    dev = write_tsv(tmp_path / "dev.tsv", 8, 1)
    common = ["train", "--model", str(model), "--train-file", str(train), "--dev-file", str(dev), "--text-columns",
              "sentence", "--adapter-config", '{"layers": [2]}', "--epochs", "2", "--progress", "none",
              "--max-length", "16", "--cache-frozen-layers", "true"]
    assert main([*common, "--output-dir", str(tmp_path / "on"), "--backbone-dropout", "false"]) == 0
    assert json.loads((tmp_path / "on" / "results.json").read_text())["dev"]["score"] is not None
    capsys.readouterr()
    assert main([*common, "--output-dir", str(tmp_path / "bad")]) == 2  # the cache needs a deterministic backbone
    assert "cache_frozen_layers" in capsys.readouterr().err


def test_demo_on_the_packaged_sample(tmp_path: Path, capsys):
    model = save_tiny_model(tmp_path / "tiny-bert", head="base", words=[*POS, *NEG, *FILL])
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(model), "--methods", "pfeiffer,full", "--epochs", "1", "--output-dir",
                 str(out), "--progress", "none"]) == 0
    assert "packaged sample" in capsys.readouterr().out
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["system"] for r in rows] == ["pfeiffer", "full"] and all(r["test_score"] is not None for r in rows)
    assert (out / "results.png").stat().st_size > 1000 and "| pfeiffer" in (out / "results.md").read_text()


# --- eval and info on bad inputs (issue 16): one clear line, never a traceback ------------------------


@pytest.fixture(scope="module")
def trained_adapter(tmp_path_factory) -> dict[str, Path]:
    """A tiny adapter trained from a *relative* --model path (as a user in their project directory would)."""
    root = tmp_path_factory.mktemp("cli")
    save_tiny_model(root / "models" / "tiny-bert", words=[*POS, *NEG, *FILL])
    train_file = write_tsv(root / "train.tsv", 16, 0)
    three = root / "three.tsv"
    three.write_text("sentence\tlabel\nthe movie was good\tpos\nthe plot was bad\tneg\nthe movie was a\tmeh\n")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["train", "--model", "models/tiny-bert", "--train-file", "train.tsv", "--text-columns", "sentence",
                     "--epochs", "1", "--batch-size", "8", "--max-length", "16", "--progress", "none",
                     "--output-dir", "run"]) == 0
    finally:
        os.chdir(cwd)
    return {"root": root, "adapter": root / "run" / "adapter", "train": train_file, "three": three,
            "model": root / "models" / "tiny-bert"}


def test_eval_from_another_directory_finds_the_base_model(trained_adapter, tmp_path: Path, monkeypatch, capsys):
    meta = json.loads((trained_adapter["adapter"] / "adapter_config.json").read_text())
    assert meta["base_model"]["relative_path"] == "../../models/tiny-bert"
    monkeypatch.chdir(tmp_path)
    assert main(["eval", str(trained_adapter["adapter"]), "--test-file", str(trained_adapter["train"]),
                 "--text-columns", "sentence"]) == 0
    assert "accuracy" in capsys.readouterr().out
    moved = tmp_path / "moved"  # an old-style record: only a relative name, nowhere to be found
    shutil.copytree(trained_adapter["adapter"], moved)
    meta["base_model"] = {k: v for k, v in meta["base_model"].items() if k != "relative_path"}
    meta["base_model"]["name_or_path"] = "./models/tiny-bert"
    (moved / "adapter_config.json").write_text(json.dumps(meta))
    assert main(["eval", str(moved), "--test-file", str(trained_adapter["train"]), "--text-columns", "sentence"]) == 2
    err = capsys.readouterr().err
    assert (f"{moved / 'adapter_config.json'}: base_model.name_or_path: './models/tiny-bert' is not a directory "
            f"(tried {moved / 'models/tiny-bert'}, models/tiny-bert); give the base model with --model") in err


def test_eval_a_two_label_head_on_three_labels(trained_adapter, capsys):
    code = main(["eval", str(trained_adapter["adapter"]), "--test-file", str(trained_adapter["three"]),
                 "--text-columns", "sentence"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{trained_adapter['three']}: row 3: column 'label': label 'meh' is not one of " \
                                   "the task's labels ['neg', 'pos']" in err
    code = main(["eval", str(trained_adapter["adapter"]), "--test-file", str(trained_adapter["three"]),
                 "--text-columns", "sentence", "--labels", "neg,pos,meh"])
    assert code == 2
    assert ("adapter_config.json: head.num_labels: the head was saved for 2 labels ['neg', 'pos']; task 'three' has 3"
            in capsys.readouterr().err)


def test_info_on_a_truncated_safetensors_file(trained_adapter, tmp_path: Path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(trained_adapter["adapter"], broken)
    weights = broken / "adapter.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    assert main(["info", str(broken)]) == 2
    assert f"adapterkit info: error: {weights}: not a valid safetensors file" in capsys.readouterr().err
    weights.unlink()
    assert main(["info", str(broken)]) == 2
    assert f"{weights}: file not found" in capsys.readouterr().err


def test_an_unexpected_error_is_one_line(monkeypatch, capsys):
    import adapterkit.cli as cli

    def boom(args):
        raise TypeError("something unforeseen")

    monkeypatch.setattr(cli, "cmd_info", boom)
    monkeypatch.delenv("ADAPTERKIT_DEBUG", raising=False)
    assert main(["info", "--list"]) == 1
    err = capsys.readouterr().err
    assert err == ("adapterkit info: internal error: TypeError: something unforeseen (set ADAPTERKIT_DEBUG=1 to see "
                   "the traceback, and please report it)\n")
    monkeypatch.setenv("ADAPTERKIT_DEBUG", "1")
    with pytest.raises(TypeError):
        main(["info", "--list"])


def _headerless(path: Path, n: int, seed: int) -> Path:
    rows = write_tsv(path, n, seed).read_text().splitlines()[1:]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_train_uses_every_named_file_and_eval_keeps_split_names(tmp_path: Path, capsys):
    model = save_tiny_model(tmp_path / "tiny-bert", words=[*POS, *NEG, *FILL])
    train, dev, test = (_headerless(tmp_path / f"{n}.tsv", k, i) for i, (n, k) in
                        enumerate((("a", 24), ("b", 8), ("c", 10))))
    common = ["--model", str(model), "--epochs", "1", "--batch-size", "8", "--max-length", "16", "--progress", "none",
              "--text-columns", "0", "--label-column", "1"]
    assert main(["train", "--train-file", str(train), "--dev-file", str(dev), "--test-file", str(test), "--dev-size",
                 "4", *common, "--no-header"]) == 2
    assert "drop --dev-size" in capsys.readouterr().err
    assert main(["train", "--train-file", str(train), "--test-file", str(test), *common]) == 2
    err = capsys.readouterr().err
    assert "looks like data" in err and "--no-header" in err
    out = tmp_path / "run"
    assert main(["train", "--train-file", str(train), "--test-file", str(test), "--dev-size", "4", *common,
                 "--no-header", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"test: {test} (10 examples)" in printed and "20 train / 4 dev / 10 test" in printed
    assert "official dev" not in printed
    assert main(["train", "--test-file", str(test), *common, "--no-header"]) == 2
    assert "without --train-file" in capsys.readouterr().err
    assert main(["eval", str(out / "adapter"), "--test-file", str(test), "--split", "train", *common[:2],
                 "--no-header", "--text-columns", "0", "--label-column", "1"]) == 2
    assert "--split train but no --train-file" in capsys.readouterr().err


def _pairs(path: Path, n: int, seed: int, labels: bool = True) -> Path:
    """A headerless sentence-pair TSV: first sentence, second sentence[, label same/diff]."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        a, same = rng.choice(POS + NEG), i % 2 == 0
        b = rng.choice(POS if (a in POS) == same else NEG)
        lines.append("\t".join([f"the movie was {a}", f"a plot very {b}", *(["same" if same else "diff"] if labels
                                                                             else [])]))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_eval_and_predict_remember_the_training_options(tmp_path: Path, capsys):
    model = save_tiny_model(tmp_path / "tiny-bert", words=[*POS, *NEG, *FILL])
    out = tmp_path / "run"
    assert main(["train", "--train-file", str(_pairs(tmp_path / "train.tsv", 24, 0)), "--no-header", "--text-columns",
                 "0,1", "--label-column", "2", "--model", str(model), "--epochs", "1", "--batch-size", "8",
                 "--max-length", "12", "--progress", "none", "--output-dir", str(out)]) == 0
    meta = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert meta["extra"]["data"] == {"kind": "classification", "text_columns": ["0", "1"], "label_column": "2",
                                     "labels": ["diff", "same"], "max_length": 12, "no_header": True,
                                     "metric": "accuracy"}
    test = _pairs(tmp_path / "test.tsv", 10, 1)
    ev = tmp_path / "eval"
    assert main(["eval", str(out / "adapter"), "--test-file", str(test), "--output-dir", str(ev)]) == 0
    printed = capsys.readouterr().out
    assert f"[test], 10 examples from {test}" in printed and "accuracy" in printed
    metrics = json.loads((ev / "metrics.json").read_text())
    rows = [json.loads(line) for line in (ev / "predictions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(10))
    assert {r["gold"] for r in rows} == {"same", "diff"} and all(r["prediction"] in ("same", "diff") for r in rows)
    assert metrics["metrics"]["accuracy"] == sum(r["gold"] == r["prediction"] for r in rows) / 10

    unlabelled = _pairs(tmp_path / "new.tsv", 6, 2, labels=False)
    preds = tmp_path / "preds.jsonl"
    assert main(["predict", str(out / "adapter"), "--input", str(unlabelled), "--output", str(preds)]) == 0
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == 6 and all(r["prediction"] in ("same", "diff") and 0.5 <= r["score"] <= 1 for r in rows)

    # an adapter saved before the data record: the head still gives kind and label names, flags the rest
    del meta["extra"]["data"]
    (out / "adapter" / "adapter_config.json").write_text(json.dumps(meta))
    assert main(["eval", str(out / "adapter"), "--test-file", str(test), "--output-dir", str(ev)]) == 2
    assert "column 'text' not found" in capsys.readouterr().err
    assert main(["eval", str(out / "adapter"), "--test-file", str(test), "--no-header", "--text-columns", "0,1",
                 "--label-column", "2", "--max-length", "12", "--output-dir", str(tmp_path / "eval-old")]) == 0
    assert json.loads((tmp_path / "eval-old" / "metrics.json").read_text())["metrics"] == metrics["metrics"]


def test_predict_regression_on_an_unlabelled_file(tmp_path: Path):
    model = save_tiny_model(tmp_path / "tiny-bert", head="regression", words=[*POS, *NEG, *FILL])
    train = tmp_path / "scores.csv"
    train.write_text("review,stars\n" + "".join(f"the movie was {w},{4.5 if w in POS else 1.0}\n"
                                                  for w in (POS + NEG) * 3))
    out = tmp_path / "run"
    assert main(["train", "--train-file", str(train), "--text-columns", "review", "--label-column", "stars",
                 "--kind", "regression", "--model", str(model), "--epochs", "1", "--batch-size", "8",
                 "--max-length", "12", "--progress", "none", "--output-dir", str(out)]) == 0
    new = tmp_path / "new.jsonl"
    new.write_text('{"review": "the movie was good"}\n{"review": "the movie was awful"}\n')
    preds = tmp_path / "preds.jsonl"
    assert main(["predict", str(out / "adapter"), "--input", str(new), "--output", str(preds)]) == 0
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1]
    assert all(isinstance(r["prediction"], float) and r["score"] == r["prediction"] for r in rows)


def test_help_and_info_show_the_default_learning_rates_that_train_uses(tmp_path: Path, capsys):
    from adapterkit.runner import default_learning_rate

    lr_help = next(a.help for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions
                   if a.dest == "learning_rate")
    assert "0.001 for" in lr_help and "head" in lr_help.split("0.001 for")[1].split("e-")[0]
    assert "5e-05 for full" in lr_help and "0.01 for prompt" in lr_help and "1e-4" not in lr_help
    assert main(["info", "--list", "methods"]) == 0
    listing = capsys.readouterr().out
    assert "default lr" in listing
    assert any(line.split()[:3] == ["head", "0.001", "0.001"] for line in listing.splitlines())
    assert any(line.split()[:3] == ["prefix", "0.0003", "0.003"] for line in listing.splitlines())
    model = save_tiny_model(tmp_path / "tiny-bert", words=[*POS, *NEG, *FILL])
    train = write_tsv(tmp_path / "train.tsv", 16, 0)
    for method in ("head", "pfeiffer"):
        out = tmp_path / method
        assert main(["train", "--train-file", str(train), "--text-columns", "sentence", "--method", method, "--model",
                     str(model), "--epochs", "1", "--batch-size", "8", "--max-length", "12", "--progress", "none",
                     "--output-dir", str(out)]) == 0
        assert json.loads((out / "results.json").read_text())["learning_rate"] == default_learning_rate(method)
    # prefix tuning's slow default rate comes with a faster head, unless a rate is given
    common = ["--train-file", str(train), "--text-columns", "sentence", "--method", "prefix", "--model", str(model),
              "--epochs", "1", "--batch-size", "8", "--max-length", "12", "--progress", "none"]
    for extra, lrs in (([], (3e-4, 3e-3)), (["--lr", "1e-3"], (1e-3, None)),
                       (["--head-learning-rate", "1e-2"], (3e-4, 1e-2))):
        out = tmp_path / f"prefix{len(extra)}{extra[-1] if extra else ''}"
        assert main(["train", *common, *extra, "--output-dir", str(out)]) == 0
        results = json.loads((out / "results.json").read_text())
        assert (results["learning_rate"], results["head_learning_rate"]) == lrs


def test_demo_baselines_pooling_lp_init_and_patience(tmp_path: Path, capsys):
    model = save_tiny_model(tmp_path / "tiny-bert", head="base", words=[*POS, *NEG, *FILL])
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(model), "--methods", "majority,probe,pfeiffer", "--epochs", "4",
                 "--pooling", "mean", "--lp-init", "true", "--patience", "1", "--output-dir", str(out),
                 "--progress", "none"]) == 0
    printed = capsys.readouterr().out
    assert "head: mean pooling; LP-FT init" in printed
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["system"] for r in rows] == ["majority", "probe", "pfeiffer"]
    assert rows[0]["trainable"] == 0 and rows[1]["trainable"] == 2 * 33 and rows[1]["best_epoch"] is None
    assert 0 <= rows[1]["test_score"] <= 1
    with pytest.raises(SystemExit):  # argparse: not a choice
        main(["demo", "--model", str(model), "--pooling", "average"])

