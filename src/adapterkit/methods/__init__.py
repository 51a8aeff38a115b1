"""Adapter methods, one module each. Importing this package imports only the shared protocol
(:mod:`.base`); the built-in methods register when first looked up by name
(``registry.get_method`` / ``registry.METHODS``), or on :func:`load_builtin`.
"""
from __future__ import annotations

import importlib

from .base import ACTIVATIONS, Attachment, BuildContext, NeuronGroup, register_activation

BUILTIN_MODULES = ("bottleneck", "lora", "prompt", "prefix", "rational", "adaptable", "adapterdrop", "fusion")
"""Modules of the built-in methods, in registration order."""


def load_builtin() -> None:
    """Import (and so register) every built-in method."""
    for name in BUILTIN_MODULES:
        importlib.import_module(f"{__name__}.{name}")


__all__ = ["ACTIVATIONS", "Attachment", "BUILTIN_MODULES", "BuildContext", "NeuronGroup", "load_builtin",
           "register_activation"]
