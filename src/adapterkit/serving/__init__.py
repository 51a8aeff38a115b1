"""Serving many adapters from one base model: an LRU pool of adapters loaded on demand, dynamic batching,
and an HTTP server (``adapterkit serve``; FastAPI + uvicorn, the optional extra ``adapterkit[serve]``).

- :class:`AdapterPool` (``pool.py``): one base model, adapters loaded by name from a folder of saved adapter
  directories, explicit paths or Hub repo ids, kept under an LRU limit (by count and/or bytes; an evicted
  adapter is reloaded when asked for again); ``predict(texts, adapter_names)`` returns each example's label
  and score from its own adapter and head. Safe to call from several threads.
- :class:`Batcher` (``batching.py``): collects requests for up to N ms or B examples and runs them as one
  mixed batch through the pool.
- ``server.py``: the HTTP API (``POST /predict``, ``GET /adapters``, ``GET /health``) over a batcher.
"""
from __future__ import annotations

from .batching import Batcher
from .pool import AdapterPool, Prediction, RequestError, UnknownAdapterError

__all__ = ["AdapterPool", "Batcher", "Prediction", "RequestError", "UnknownAdapterError"]
