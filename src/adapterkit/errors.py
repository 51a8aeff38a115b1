"""Errors that name the file and the field at fault."""
from __future__ import annotations


class AdapterKitError(Exception):
    """Base class for adapterkit errors."""


class ConfigError(AdapterKitError, ValueError):
    """A configuration value is missing, unknown or invalid."""


class AdapterLoadError(AdapterKitError):
    """An adapter directory or file cannot be loaded."""


class UnsupportedArchitectureError(AdapterKitError, ValueError):
    """The model type has no entry in the architecture table."""


class DataError(AdapterKitError, ValueError):
    """A data file is missing, malformed, or lacks a column or label."""


def where(source: object | None, field: str | None = None) -> str:
    """Format 'file: field' prefixes for error messages."""
    parts = [str(p) for p in (source, field) if p]
    return ": ".join(parts) + (": " if parts else "")
