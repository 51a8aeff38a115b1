"""Registries by name: one small :class:`Registry` class, and the registry of adapter methods (config classes).

The same class serves methods (here), merge methods (``merging.MERGE_METHODS``), tasks
(``data.tasks.TASKS``), experiments (``experiments.EXPERIMENTS``) and architectures
(``architectures.ARCHITECTURES``). Registering a name a second time with a different value is an
error (``replace=True`` overrides on purpose); registering the same value again is a no-op, so a
module imported twice is harmless. Unknown names raise ConfigError listing the known ones.

Built-in methods register on first lookup (``adapterkit.methods.load_builtin``), so importing
:mod:`adapterkit.model` does not import every method.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, Generic, TypeVar

from .errors import ConfigError, where

V = TypeVar("V")
C = TypeVar("C", bound=type)


class Registry(MutableMapping[str, V], Generic[V]):
    """Name -> value. ``kind`` names what is registered in error messages; ``loader`` (optional) is called
    once, on first read, to register the built-in entries."""

    def __init__(self, kind: str, loader: Callable[[], Any] | None = None,
                 error: type[Exception] = ConfigError) -> None:
        self.kind = kind
        self._items: dict[str, V] = {}
        self._loader = loader
        self._error = error

    def _load(self) -> None:
        loader, self._loader = self._loader, None
        if loader is not None:
            try:
                loader()
            except BaseException:
                self._loader = loader
                raise

    def register(self, name: str, value: V, *, replace: bool = False) -> V:
        """Register ``value`` as ``name``; a different value under a taken name raises unless ``replace``."""
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{self.kind}: a registered name must be a non-empty string, got {name!r}")
        old = self._items.get(name)
        if old is not None and not replace and old is not value and old != value:
            raise ConfigError(f"{self.kind} {name!r}: already registered ({old!r}); pass replace=True to replace it")
        self._items[name] = value
        return value

    def get_or_raise(self, name: str, source: object | None = None, field: str | None = None) -> V:
        """The value registered as ``name``; unknown names raise (ConfigError) naming the known ones."""
        self._load()
        try:
            return self._items[name]
        except (KeyError, TypeError):
            prefix = where(source, field)
            raise self._error(f"{prefix}unknown {self.kind} {name!r}; known: {sorted(self._items)}") from None

    # MutableMapping: reading loads the built-ins first; ``registry[name] = value`` is ``register``
    def __getitem__(self, name: str) -> V:
        self._load()
        return self._items[name]

    def __setitem__(self, name: str, value: V) -> None:
        self.register(name, value)

    def __delitem__(self, name: str) -> None:
        del self._items[name]

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(list(self._items))

    def __len__(self) -> int:
        self._load()
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._items)})"


BUILTIN_METHOD_MODULES = tuple(f"adapterkit.methods.{m}" for m in (
    "bottleneck", "lora", "prompt", "prefix", "rational", "adaptable", "adapterdrop", "fusion", "unipelt", "pha",
    "hyperformer"))
"""Modules that register the built-in methods, imported by name on first lookup (no import statement, so
the registry does not depend on the methods that depend on it)."""


def _load_builtin_methods() -> None:
    for module in BUILTIN_METHOD_MODULES:
        importlib.import_module(module)


METHODS: Registry[type] = Registry("method", _load_builtin_methods)
"""Method name -> MethodConfig subclass."""


def register_method(cls: C) -> C:
    """Class decorator: register a MethodConfig subclass under its ``method`` name (a second, different
    class under the same name is an error)."""
    if not getattr(cls, "method", ""):
        raise ValueError(f"{cls.__name__} has no method name")
    METHODS.register(cls.method, cls)
    return cls


def get_method(name: str, source: object | None = None) -> type:
    """The config class registered as ``name``; unknown names raise ConfigError listing known ones."""
    return METHODS.get_or_raise(name, source, "method")


def config_from_dict(data: dict[str, Any], source: object | None = None, *, strict: bool = True) -> Any:
    """Build the right MethodConfig subclass from a mapping with a ``method`` key (``strict``: see
    ``MethodConfig.from_dict``)."""
    if not isinstance(data, dict) or "method" not in data:
        raise ConfigError(f"{where(source, 'method')}missing; every adapter config names its method")
    return get_method(data["method"], source).from_dict(data, source, strict=strict)
