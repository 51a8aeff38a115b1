"""Run options: dataclasses whose fields are the command-line flags and the YAML keys.

One source for every option of ``adapterkit train|eval|demo|zoo|experiment``: a dataclass field made
with :func:`adapterkit.config.opt` gives the flag (``--field-name`` plus the field's ``aliases``), its
type (from the annotation: ``bool`` reads true/false, ``Literal`` gives choices, ``list[str]`` reads
``a,b,c``), its help text and its default; a YAML file given with ``--config`` uses the field names
as keys. :class:`adapterkit.training.TrainConfig` holds the training options; :class:`DataOptions`
and :class:`ModelOptions` hold what is not training (where the examples come from, which model and
method). A command lists its :class:`Group`\\ s; :func:`add_arguments`, :func:`defaults` and
:func:`read_yaml` all read the same list.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .config import opt
from .errors import ConfigError

TRUE = ("true", "yes", "1")
FALSE = ("false", "no", "0")
NONE = ("none", "null")


@dataclass
class DataOptions:
    """Where the examples come from (a registered task, your own files or a Hub data set) and how they are sampled."""

    task: str | None = opt(None, "a registered task name (see `adapterkit info --list`)")
    data_dir: str | None = opt(None, "data directory of registered tasks (default: $ADAPTERKIT_DATA_DIR)")
    train_file: str | None = opt(
        None, "your own CSV/TSV/JSONL/Parquet (QA: SQuAD JSON) training file (instead of --task)")
    dev_file: str | None = opt(None, "your own dev file")
    test_file: str | None = opt(None, "your own test file")
    hub_dataset: str | None = opt(
        None, "a Hugging Face Hub data set, DATASET or DATASET:CONFIG (needs internet); splits "
        "train/validation/test become train/dev/test")
    no_header: bool = opt(
        False, "your CSV/TSV files have no header row: name columns by index (--text-columns 0 --label-column 1)")
    text_columns: list[str] | None = opt(None, "comma-separated text column(s), 1 or 2 (default: text)")
    label_column: str = opt("label", "label column")
    labels: list[str] | None = opt(None, "comma-separated label names in id order (default: from the file)")
    kind: Literal["classification", "regression", "qa"] = opt("classification", "task kind for your own files")
    k_shot: int | None = opt(None, "keep k training examples per class")
    train_size: int | None = opt(None, "keep N training examples (stratified)")
    dev_size: int | None = opt(
        None, "carve N dev examples from train (a registered task's official dev set then becomes its test set; "
        "your --test-file stays the test set; not with --dev-file)")


@dataclass
class ModelOptions:
    """Which base model, and which adapter method to add to it."""

    model: str | None = opt(None, "Hugging Face model id or local path (default: the bundled all-MiniLM-L6-v2)")
    method: str | None = opt(
        None, "a registered adapter method, 'full' or 'head', or a baseline: 'probe' (logistic regression on the "
        "frozen features) or 'majority' (default: pfeiffer, or the method of --init-adapter)")
    adapter_config: Any = opt(None, "JSON object or path to a JSON/YAML file overriding method fields")
    adapter_name: str | None = opt(None, "name of the adapter (default: the method name)")
    init_adapter: str | None = opt(
        None, "start from this saved adapter's weights (e.g. from `adapterkit pretrain --method ...`); its method and "
        "fields are used")


@dataclass(frozen=True)
class Group:
    """Some fields of an options dataclass offered by a command, with per-command defaults and help."""

    cls: type
    only: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    help: dict[str, str] = field(default_factory=dict)
    positional: tuple[str, ...] = ()

    def fields(self) -> list[dataclasses.Field]:
        """The offered fields, in the dataclass's order."""
        all_fields = {f.name: f for f in dataclasses.fields(self.cls)}
        names = [n for n in (self.only or all_fields) if n not in self.exclude]
        unknown = [n for n in [*names, *self.defaults, *self.help] if n not in all_fields]
        if unknown:
            raise ConfigError(f"{self.cls.__name__}: {unknown[0]}: no such option")
        return [all_fields[n] for n in names]

    def default(self, f: dataclasses.Field) -> Any:
        """The command's default of field ``f``."""
        if f.name in self.defaults:
            value = self.defaults[f.name]
            return list(value) if isinstance(value, (list, tuple)) else value
        if f.default_factory is not dataclasses.MISSING:
            return f.default_factory()
        return None if f.default is dataclasses.MISSING else f.default


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def convert(value: Any, annotation: Any) -> Any:
    """``value`` (a command-line string, or a YAML value) as the annotated type; ValueError when it is not one."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None or isinstance(value, str) and value.lower() in NONE and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(value, arg)
            except ValueError:
                pass
        raise ValueError(value)
    if origin is Literal:
        for choice in args:
            if value == choice or isinstance(value, str) and str(choice) == value:
                return choice
        raise ValueError(value)
    if origin in (list, tuple):
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ValueError(value)
        inner = args[0] if args else Any
        converted = [convert(v, inner) for v in items]
        return tuple(converted) if origin is tuple else converted
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in TRUE + FALSE:
            return value.lower() in TRUE
        raise ValueError(value)
    if annotation in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(value)
        number = float(value)  # YAML reads 1e-3 as a string
        if annotation is int:
            if not number.is_integer():
                raise ValueError(value)
            return int(number)
        return number
    if annotation is str:
        if isinstance(value, (dict, list, tuple)):
            raise ValueError(value)
        return str(value)
    return value


def _choices(annotation: Any) -> list[str]:
    """The allowed words of a Literal (or bool) annotation, for help texts."""
    if annotation is bool:
        return ["true", "false"]
    if typing.get_origin(annotation) is Literal:
        return [str(a) for a in typing.get_args(annotation)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [c for a in typing.get_args(annotation) for c in _choices(a)]
    return []


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _argparse_type(annotation: Any) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return convert(text, annotation)
        except ValueError:
            choices = _choices(annotation)
            raise argparse.ArgumentTypeError(
                f"invalid value {text!r}" + (f" (use {', '.join(choices)})" if choices else "")) from None

    parse.__name__ = getattr(annotation, "__name__", "value")
    return parse


def add_arguments(parser: argparse.ArgumentParser, groups: Sequence[Group]) -> None:
    """One flag per offered field (``--name`` and ``--alias``); values stay unset unless given (SUPPRESS),
    so that ``adapterkit.cli.merge_options`` can tell flags from defaults."""
    for group in groups:
        hints = _hints(group.cls)
        for f in group.fields():
            annotation = hints[f.name]
            text = group.help.get(f.name, f.metadata.get("help", ""))
            default = group.default(f)
            choices = _choices(annotation)
            if default is not None and default != []:
                text += f" (default: {_show(default)})"
            kwargs: dict[str, Any] = {"help": text.replace("%", "%%"), "type": _argparse_type(annotation)}
            if typing.get_origin(annotation) is Literal:
                kwargs["choices"] = list(typing.get_args(annotation))
            elif choices:
                kwargs["metavar"] = "{" + ",".join(choices) + "}"
            if annotation is bool or annotation == (bool | None):
                kwargs.update(nargs="?", const=True)  # a bare --flag means true
            if f.name in group.positional:
                parser.add_argument(f.name, nargs="?", **kwargs)
            else:
                aliases = [_flag(a) for a in f.metadata.get("aliases", ())]
                parser.add_argument(_flag(f.name), *aliases, dest=f.name, **kwargs)


def defaults(groups: Sequence[Group]) -> dict[str, Any]:
    """Option name -> the command's default."""
    return {f.name: group.default(f) for group in groups for f in group.fields()}


def read_yaml(path: str | Path, groups: Sequence[Group], command: str) -> dict[str, Any]:
    """Read ``--config``: a mapping of option names (underscores or dashes, or an alias) to values.

    Values are read as the fields' types; an unknown key or a value of the wrong type is a ConfigError
    naming the file and the key.
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values")
    types_by_name: dict[str, Any] = {}
    names: dict[str, str] = {}
    for group in groups:
        hints = _hints(group.cls)
        for f in group.fields():
            types_by_name[f.name] = hints[f.name]
            names[f.name] = f.name
            names.update({a.replace("-", "_"): f.name for a in f.metadata.get("aliases", ())})
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = names.get(str(key).replace("-", "_"))
        if name is None:
            raise ConfigError(f"{path}: {key}: unknown key for `adapterkit {command}`; known keys: {sorted(types_by_name)}")
        try:
            out[name] = None if value is None else convert(value, types_by_name[name])
        except ValueError:
            raise ConfigError(f"{path}: {key}: invalid value {value!r}") from None
    return out


def build(cls: type, opts: dict[str, Any], **changes: Any) -> Any:
    """An instance of ``cls`` from the options of its fields in ``opts`` (others ignored), with ``changes`` applied."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{**{k: v for k, v in opts.items() if k in names}, **changes})
