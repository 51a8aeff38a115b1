"""The registry of adapter methods by name (config classes)."""
from __future__ import annotations

from typing import Any, TypeVar

from .errors import ConfigError, where

METHODS: dict[str, type] = {}

C = TypeVar("C", bound=type)


def register_method(cls: C) -> C:
    """Class decorator: register a MethodConfig subclass under its ``method`` name."""
    if not cls.method:
        raise ValueError(f"{cls.__name__} has no method name")
    METHODS[cls.method] = cls
    return cls


def get_method(name: str, source: object | None = None) -> type:
    """The config class registered as ``name``; unknown names raise ConfigError listing known ones."""
    _load_builtin_methods()
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"{where(source, 'method')}unknown method {name!r}; known: {sorted(METHODS)}") from None


def config_from_dict(data: dict[str, Any], source: object | None = None) -> Any:
    """Build the right MethodConfig subclass from a mapping with a ``method`` key."""
    if not isinstance(data, dict) or "method" not in data:
        raise ConfigError(f"{where(source, 'method')}missing; every adapter config names its method")
    return get_method(data["method"], source).from_dict(data, source)


def _load_builtin_methods() -> None:
    from . import methods  # noqa: F401  (importing registers the built-in methods)
