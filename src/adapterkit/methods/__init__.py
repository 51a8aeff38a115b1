"""Adapter methods, one module each; importing this package registers them all by name."""
from . import (  # noqa: F401  # noqa: F401  (Adaptable Adapters, AdapterDrop)
    adaptable,
    adapterdrop,
    bottleneck,
    fusion,  # noqa: F401  (after the methods it fuses)
    lora,
    prefix,
    prompt,
    rational,
)
from .base import ACTIVATIONS, Attachment, BuildContext, register_activation  # noqa: F401
