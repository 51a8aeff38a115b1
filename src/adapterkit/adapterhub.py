"""Kept for compatibility: the AdapterHub importer lives in :mod:`adapterkit.interop.adapterhub`."""
from .interop.adapterhub import (  # noqa: F401
    import_adapterhub,
    load_adapterhub_adapter,
    read_adapterhub_tensors,
)
