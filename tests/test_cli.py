"""The adapterkit command: YAML/flag merging, info --list, and a tiny train/eval/info run."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from adapterkit.cli import build_parser, main, merge_options, read_yaml_config
from adapterkit.errors import ConfigError

POS = ["good", "great", "fine", "lovely"]
NEG = ["bad", "awful", "poor", "dull"]
FILL = ["the", "movie", "was", "a", "plot", "very"]


def tiny_model_dir(tmp: Path) -> Path:
    """A 2-layer BERT with a 19-word vocabulary, saved like any Hugging Face model directory."""
    out = tmp / "tiny-bert"
    out.mkdir()
    vocab = out / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POS, *NEG, *FILL]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(out)
    cfg = BertConfig(vocab_size=5 + len(POS) + len(NEG) + len(FILL), hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertForSequenceClassification(cfg).save_pretrained(out)
    return out


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
    assert opts["lr"] == 1e-3  # YAML reads 1e-3 as a string without a dot; still a number here
    flag_only = merge_options(build_parser().parse_args(["train", "--epochs", "5"]))
    assert flag_only["epochs"] == 5.0 and flag_only["batch_size"] == 16


def test_unknown_yaml_key_names_file_and_key(tmp_path: Path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("epochs: 1\nlearnin_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: learnin_rate: unknown key"):
        read_yaml_config(cfg, "train")
    assert main(["train", "--config", str(cfg), "--task", "sst2"]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "learnin_rate" in err


def test_info_list(capsys):
    assert main(["info", "--list"]) == 0
    out = capsys.readouterr().out
    for word in ("pfeiffer", "lora", "full", "head", "sst2", "sample_sentiment", "bert", "roberta"):
        assert word in out
    assert main(["info", "--list", "methods"]) == 0
    assert "sst2" not in capsys.readouterr().out


def test_train_eval_info_on_own_tsv(tmp_path: Path, capsys):
    model = tiny_model_dir(tmp_path)
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
                 "--dev-file", str(dev), "--text-columns", "sentence", "--split", "dev"]) == 0
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
