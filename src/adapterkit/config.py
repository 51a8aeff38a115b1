"""Dataclass configs: validation, help text, and strict (de)serialisation; the method protocol.

Every method config derives from :class:`MethodConfig`, the abstract base of the method protocol
(docs/design.md): it declares ``build(ctx)``, the shared fields ``layers`` and ``learning_rate``,
``parameter_groups`` (explicit optimizer groups) and ``context_inputs`` (batch keys the method reads
from the forward context). Fields carry their help text in ``metadata={"help": ...}``;
:meth:`MethodConfig.from_dict` rejects unknown fields and names the file and the field at fault.
A field annotated with a ``MethodConfig`` type (or a tuple of them) holds nested method configs,
which round-trip through ``to_dict`` / ``from_dict`` with their own ``method`` key.
"""
from __future__ import annotations

import abc
import dataclasses
import json
import types
import typing
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import ConfigError, where

if TYPE_CHECKING:
    from torch import nn

    from .methods.base import Attachment, BuildContext


def opt(default: Any, help: str, *, aliases: tuple[str, ...] = (), **kwargs: Any) -> Any:
    """A dataclass field with help text (mutable defaults are copied per instance).

    ``aliases`` are other names of the option on the command line and in YAML files (``("lr",)``).
    """
    metadata = {"help": help, **({"aliases": tuple(aliases)} if aliases else {})}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata, **kwargs)
    return field(default=default, metadata=metadata, **kwargs)


def _coerce(value: Any, annotation: Any, source: object | None, name: str, strict: bool = True) -> Any:
    """Coerce JSON/YAML values (lists, strings, numbers, nested method configs) to the annotated type, or fail clearly."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if isinstance(annotation, type) and issubclass(annotation, MethodConfig):
        if isinstance(value, annotation):
            return value
        from .registry import config_from_dict

        nested = config_from_dict(value, where(source, name).rstrip(": ") or name, strict=strict)
        if not isinstance(nested, annotation):
            raise ConfigError(f"{where(source, name)}expected a {annotation.__name__}, got method {nested.method!r}")
        return nested
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, source, name, strict)
            except ConfigError as exc:
                errors.append(str(exc))
        if len(errors) == 1 and _is_config(next(a for a in args if a is not type(None))):
            raise ConfigError(errors[0])  # the nested config's own, more precise error
        raise ConfigError(f"{where(source, name)}cannot read {value!r} as {annotation}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where(source, name)}{value!r} is not one of {list(args)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where(source, name)}expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, source, f"{name}[{i}]" if _is_config(inner) else name, strict)
                 for i, v in enumerate(value)]
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


def _is_config(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, MethodConfig)


def _plain(value: Any) -> Any:
    """A field value as JSON-ready data (nested configs as their ``to_dict``, tuples as lists)."""
    if isinstance(value, MethodConfig):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass
class ParamGroup:
    """Optimizer group a method returns from ``parameter_groups``: a name, parameters and a rate (None: the
    trainer's)."""

    name: str
    params: list[nn.Parameter]
    lr: float | None = None


@dataclass
class MethodConfig(abc.ABC):
    """Abstract base of every adapter method config (the method protocol; see docs/design.md).

    A subclass sets ``method`` (the registered name), declares its fields with :func:`opt`, checks them
    in ``validate`` and implements ``build(ctx) -> list[Attachment]``. ``layers`` and ``learning_rate``
    are shared by every method (a subclass may redeclare them to change the help text or default).
    """

    method: ClassVar[str] = ""
    context_inputs: ClassVar[tuple[str, ...]] = ()
    """Batch keys (besides ``task_ids``) that ``AdaptedModel.forward`` moves into the forward context for this method."""

    layers: tuple[int, ...] | None = opt(None, "layer indices that get the method's modules (default: all)")
    learning_rate: float | None = opt(None, "learning rate for this adapter's parameters (default: the trainer's)")
    #: The trainer's base learning rate when none is given (``--lr``): the adapter and the task head train
    #: at it. 1e-3 suits freshly initialised adapters on small data sets (1e-4, the rate often quoted for
    #: adapters on large data sets, barely moves them in a few hundred steps; see the README's
    #: "Default learning rates"). A subclass sets its own.
    default_learning_rate: ClassVar[float] = 1e-3
    #: The task head's rate when ``train`` gets neither ``--lr`` nor ``--head-learning-rate`` (None: the base
    #: rate). For methods whose default rate is too low for a freshly initialised head.
    default_head_learning_rate: ClassVar[float | None] = None

    def __post_init__(self) -> None:
        check(self.layers is None or len(self.layers) > 0, "layers", "must name at least one layer, or be null for all")
        check(self.learning_rate is None or self.learning_rate > 0, "learning_rate", "must be > 0 or null")
        self.validate()

    def validate(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Raise ConfigError naming the field when a value is out of range."""

    @abc.abstractmethod
    def build(self, ctx: BuildContext) -> list[Attachment]:
        """The modules of one adapter and where they go (``Attachment(layer, site, module)``)."""

    def parameter_groups(self, modules: Sequence[tuple[str, nn.Module]]) -> list[ParamGroup]:
        """Optimizer groups over this adapter's ``modules`` ((key prefix, module) pairs, as built). The
        default is one group ``adapter`` at ``learning_rate``; parameters no group claims get that rate too."""
        return [ParamGroup("adapter", [p for _, m in modules for p in m.parameters()], self.learning_rate)]
    def check_state_dict(self, state: dict[str, Any], source: object = None) -> None:  # noqa: B027 - optional hook
        """Raise AdapterLoadError naming ``source`` and the config field when saved tensors ``state`` cannot
        belong to this config (run before the generic key and shape checks, for a clearer message)."""

    @classmethod
    def unsupported(cls, arch: Any) -> str | None:
        """Why this method cannot attach to models of architecture ``arch`` (an ``ArchitectureSpec``), or
        None when it can. The README's architecture table is generated from this, and the architecture tests
        check it against what actually attaches and trains."""
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **{f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: object | None = None, *, strict: bool = True) -> MethodConfig:
        """Build a config from a mapping; ill-typed fields raise ConfigError naming them. Unknown fields raise
        too, unless ``strict`` is False (adapter files written by a newer minor version): then they are
        dropped with a warning naming them."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where(source)}expected a mapping for a {cls.method!r} config, got {type(data).__name__}")
        data = dict(data)
        declared = data.pop("method", cls.method)
        if declared != cls.method:
            raise ConfigError(f"{where(source, 'method')}expected {cls.method!r}, got {declared!r}")
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown and strict:
            raise ConfigError(
                f"{where(source, unknown[0])}unknown field for method {cls.method!r}; known fields: {sorted(known)}"
            )
        if unknown:
            warnings.warn(f"{where(source)}ignoring fields {unknown} unknown to method {cls.method!r} in this version "
                          "of adapterkit (the file was written by a newer one)", stacklevel=2)
            for key in unknown:
                del data[key]
        kwargs = {k: _coerce(v, hints[k], source, k, strict) for k, v in data.items()}
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
