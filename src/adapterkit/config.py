"""Dataclass configs: validation, help text, and strict (de)serialisation.

Every method config derives from :class:`MethodConfig`. Fields carry their help text in
``metadata={"help": ...}``; :meth:`MethodConfig.from_dict` rejects unknown fields and names the file
and the field at fault.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .errors import ConfigError, where


def opt(default: Any, help: str, *, aliases: tuple[str, ...] = (), **kwargs: Any) -> Any:
    """A dataclass field with help text (mutable defaults are copied per instance).

    ``aliases`` are other names of the option on the command line and in YAML files (``("lr",)``).
    """
    metadata = {"help": help, **({"aliases": tuple(aliases)} if aliases else {})}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


def _coerce(value: Any, annotation: Any, source: object | None, name: str) -> Any:
    """Coerce JSON/YAML values (lists, strings, numbers) to the annotated type, or fail clearly."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, source, name)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where(source, name)}cannot read {value!r} as {annotation}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where(source, name)}{value!r} is not one of {list(args)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where(source, name)}expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, source, name) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where(source, name)}expected a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where(source, name)}expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where(source, name)}expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where(source, name)}expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where(source, name)}expected a string, got {value!r}")
    return value


@dataclass
class MethodConfig:
    """Base of every adapter method config; subclasses set ``method`` and validate in ``validate``."""

    method: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the field when a value is out of range."""

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return {"method": self.method, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: object | None = None) -> MethodConfig:
        """Build a config from a mapping; unknown or ill-typed fields raise ConfigError naming them."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where(source)}expected a mapping for a {cls.method!r} config, got {type(data).__name__}")
        data = dict(data)
        declared = data.pop("method", cls.method)
        if declared != cls.method:
            raise ConfigError(f"{where(source, 'method')}expected {cls.method!r}, got {declared!r}")
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(
                f"{where(source, unknown[0])}unknown field for method {cls.method!r}; known fields: {sorted(known)}"
            )
        kwargs = {k: _coerce(v, hints[k], source, k) for k, v in data.items()}
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            if source is not None and not str(exc).startswith(str(source)):
                raise ConfigError(f"{where(source)}{exc}") from None
            raise

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> help text, for the CLI and docs."""
        return field_help(cls)


def field_help(cls: type) -> dict[str, str]:
    """Field name -> help text of a dataclass whose fields were made with :func:`opt`."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def check(condition: bool, field_name: str, message: str) -> None:
    """Raise ConfigError for ``field_name`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{field_name}: {message}")


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON object from ``path``; a corrupt file raises ConfigError naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level")
    return data
