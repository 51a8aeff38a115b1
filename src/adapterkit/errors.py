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


def unpickle_refusal(path: object, exc: BaseException) -> AdapterLoadError:
    """The error for a pickle that a weights-only ``torch.load`` refused: "refusing to unpickle FILE"."""
    import re

    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. |\n\n|$)", str(exc), re.S)
    reason = " ".join((found.group(1) if found else (str(exc).splitlines() or [type(exc).__name__])[0]).split())
    return AdapterLoadError(
        f"refusing to unpickle {path}; convert it to safetensors (it needs more than a weights-only load: {reason})"
    )


class DataWarning(UserWarning):
    """A data file was read under an assumption the user should know about (e.g. its quoting)."""
