"""Adapter methods, one module each. Importing this package imports only the shared protocol
(:mod:`.base`); the built-in methods register when first looked up by name
(``registry.get_method`` / ``registry.METHODS``), or on :func:`load_builtin`.
"""
from __future__ import annotations

import importlib

from .base import ACTIVATIONS, Attachment, BuildContext, NeuronGroup, register_activation


def load_builtin() -> None:
    """Import (and so register) every built-in method (``registry.BUILTIN_METHOD_MODULES``)."""
    from ..registry import BUILTIN_METHOD_MODULES

    for module in BUILTIN_METHOD_MODULES:
        importlib.import_module(module)


__all__ = ["ACTIVATIONS", "Attachment", "BuildContext", "NeuronGroup", "load_builtin", "register_activation"]
