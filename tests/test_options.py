"""Run options: one source (dataclass fields) for the flags, their help and defaults, and the YAML keys."""
from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest

from adapterkit import options
from adapterkit.cli import build_parser, merge_options, read_yaml_config
from adapterkit.errors import ConfigError
from adapterkit.options import DataOptions, Group, ModelOptions, convert
from adapterkit.training import TrainConfig

SRC = Path(__file__).resolve().parents[1] / "src" / "adapterkit"


def _subparser(command: str):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # argparse keeps subparsers here
    return sub.choices[command]


def test_every_train_config_field_is_a_train_flag_with_its_help_and_default():
    actions = {a.dest: a for a in _subparser("train")._actions}
    for f in dataclasses.fields(TrainConfig):
        if f.name == "train_mode":  # follows --method (full, head, or adapters)
            assert f.name not in actions
            continue
        action = actions[f.name]
        assert f"--{f.name.replace('_', '-')}" in action.option_strings
        assert f.metadata["help"].replace("%", "%%") in action.help, f.name
        if f.default is not None:
            assert "(default: " in action.help, f.name
    assert "--lr" in actions["learning_rate"].option_strings  # an alias from the field's metadata
    defaults = merge_options(build_parser().parse_args(["train"]))
    config = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name in defaults:
            assert defaults[f.name] == f.default, f.name
    assert options.build(TrainConfig, defaults) == config


def test_every_data_and_model_option_is_a_train_flag():
    actions = {a.dest for a in _subparser("train")._actions}
    assert {f.name for f in dataclasses.fields(DataOptions)} <= actions
    assert {f.name for f in dataclasses.fields(ModelOptions)} <= actions


VALUES = {bool: (True, "true"), int: (12, "12"), float: (0.25, "0.25"), str: ("x/y", "x/y")}


def _sample(annotation):
    """A value of ``annotation`` other than its default, and how a command line writes it."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return args[-1], str(args[-1])
    if args and typing.get_origin(annotation) is not list:
        return _sample(args[0])
    if typing.get_origin(annotation) is list:
        return ["a", "b"], "a,b"
    return VALUES[annotation]


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(TrainConfig) if f.name != "train_mode"])
def test_a_yaml_key_and_a_flag_set_the_same_train_config_field(tmp_path: Path, name: str):
    hints = typing.get_type_hints(TrainConfig)
    value, text = _sample(hints[name])
    if name == "resume":
        value, text = "auto", "auto"
    if name in ("cache_frozen_layers",):  # needs backbone_dropout false
        extra = {"backbone_dropout": False}
    else:
        extra = {}
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"{name}: {text}\n")
    from_yaml = read_yaml_config(cfg, "train")
    from_flag = merge_options(build_parser().parse_args(["train", f"--{name.replace('_', '-')}", text]))
    assert from_yaml == {name: value}
    assert from_flag[name] == value
    assert getattr(options.build(TrainConfig, {**from_flag, **extra}), name) == value


def test_flags_override_the_yaml_file_and_aliases_work(tmp_path: Path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("lr: 0.5\nbackbone-dropout: false\nepochs: 4\nsave_total_limit: null\n")
    opts = merge_options(build_parser().parse_args(["train", "--config", str(cfg), "--epochs", "2", "--lr", "1e-3"]))
    assert (opts["learning_rate"], opts["epochs"], opts["backbone_dropout"]) == (1e-3, 2.0, False)
    assert opts["save_total_limit"] is None
    config = options.build(TrainConfig, opts)
    assert config.learning_rate == 1e-3 and config.save_total_limit is None


def test_bad_values_name_the_file_and_the_key(tmp_path: Path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("epochs: many\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: epochs: invalid value 'many'"):
        read_yaml_config(cfg, "train")
    cfg.write_text("progress: loud\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: progress: invalid value"):
        read_yaml_config(cfg, "train")
    cfg.write_text("zoo_dir: x\n")  # a key of another command
    with pytest.raises(ConfigError, match=r"bad\.yaml: zoo_dir: unknown key for `adapterkit train`"):
        read_yaml_config(cfg, "train")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--backbone-dropout", "maybe"])


def test_command_defaults_come_from_the_groups():
    demo = merge_options(build_parser().parse_args(["demo"]))
    assert demo["epochs"] == 20.0 and demo["max_length"] == 64 and demo["k_shot"] == 32
    assert demo["methods"] == ["majority", "probe", "head", "pfeiffer", "lora", "full"]
    zoo = merge_options(build_parser().parse_args(["zoo", "build"]))
    assert (zoo["epochs"], zoo["learning_rate"], zoo["batch_size"]) == (2.0, 1e-3, 32)
    mera = merge_options(build_parser().parse_args(["experiment", "mera", "--k-shots", "4,8"]))
    assert mera["k_shots"] == [4, 8] and mera["learning_rate"] == 1e-3 and mera["backbone_dropout"] is False


def test_learning_rate_and_doc_stride_defaults_follow_other_fields():
    assert TrainConfig().learning_rate == 1e-3  # adapters; `adapterkit train` uses each method's own default
    assert TrainConfig(train_mode="full").learning_rate == 5e-5
    assert TrainConfig(train_mode="head").learning_rate == 1e-3
    assert TrainConfig(train_mode="full", learning_rate=0.1).learning_rate == 0.1
    assert TrainConfig(max_length=48).doc_stride == 12 and TrainConfig(max_length=1024).doc_stride == 128


def test_convert_reads_command_line_words_and_yaml_values():
    assert convert("a, b", list[str]) == ["a", "b"] and convert([1, 2], list[str]) == ["1", "2"]
    assert convert("1,2", list[int]) == [1, 2] and convert("1e-3", float) == 1e-3
    assert convert("auto", bool | typing.Literal["auto"]) == "auto"
    assert convert("no", bool | typing.Literal["auto"]) is False
    assert convert("null", int | None) is None and convert(3.0, int) == 3
    for value, annotation in (("2.5", int), (True, int), ("x", bool), ("fp8", typing.Literal["fp32"])):
        with pytest.raises(ValueError):
            convert(value, annotation)
    with pytest.raises(ConfigError, match="no_such_field"):
        Group(TrainConfig, only=("no_such_field",)).fields()


def _imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every ``from X import name`` in a file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            out += [("." * node.level + (node.module or ""), a.name) for a in node.names]
    return out


def test_cli_runner_zoo_and_experiments_import_no_private_helpers():
    files = [SRC / "cli.py", SRC / "runner.py", SRC / "zoo.py", *sorted((SRC / "experiments").glob("*.py"))]
    for path in files:
        for module, name in _imports(path):
            assert not name.startswith("_"), f"{path.name} imports private {name} from {module}"
            if path.parent.name == "experiments":
                assert module not in ("..cli", "adapterkit.cli"), f"{path.name} imports the CLI"
