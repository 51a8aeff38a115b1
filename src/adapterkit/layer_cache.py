"""Former name of :mod:`adapterkit.frozen_cache` (the frozen-layer cache); kept so old imports work.

Every name is looked up in :mod:`adapterkit.frozen_cache` when used (``FrozenPrefixCache`` is the old
name of ``FrozenLayerCache``).
"""
from __future__ import annotations

from typing import Any

from . import frozen_cache

_RENAMED = {"FrozenPrefixCache": "FrozenLayerCache"}


def __getattr__(name: str) -> Any:
    return getattr(frozen_cache, _RENAMED.get(name, name))
