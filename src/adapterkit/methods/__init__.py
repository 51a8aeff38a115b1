"""Adapter methods, one module each; importing this package registers them all by name."""
from . import bottleneck, lora, prefix, prompt  # noqa: F401
from .base import ACTIVATIONS, Attachment, BuildContext, register_activation  # noqa: F401
