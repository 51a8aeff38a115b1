"""Dynamic batching: requests that arrive close together run as one mixed-adapter batch.

A worker thread takes the first waiting request, then keeps collecting until ``max_wait_ms`` have passed
since it took that one or the batch holds ``max_batch`` examples (a request that would overflow waits for the
next batch; a request larger than ``max_batch`` runs alone). The batch runs through
:meth:`AdapterPool.predict_encoded`. When a batch of several requests fails inside the model, each request is
run again alone, so one request's failure is reported to that request only; the worker carries on.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .pool import AdapterPool, Encoded, Prediction


@dataclass
class BatchStats:
    """Counters since the batcher started."""

    batches: int = 0
    requests: int = 0
    examples: int = 0
    failures: int = 0
    largest_batch: int = 0
    batch_sizes: list[int] = field(default_factory=list)


class Batcher:
    """Collects requests for up to ``max_wait_ms`` or ``max_batch`` examples and runs them as one mixed batch."""

    def __init__(self, pool: AdapterPool, *, max_batch: int = 64, max_wait_ms: float = 5.0) -> None:
        if max_batch < 1:
            raise ConfigError(f"max_batch: must be at least 1, got {max_batch!r}")
        if max_wait_ms < 0:
            raise ConfigError(f"max_wait_ms: must be 0 or more, got {max_wait_ms!r}")
        self.pool = pool
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.stats = BatchStats()
        self._queue: queue.Queue[tuple[Encoded, Future] | None] = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="adapterkit-batcher", daemon=True)
        self._thread.start()

    def submit(self, texts: Sequence[str], adapter_names: str | Sequence[str]) -> Future:
        """Check and tokenize a request now (RequestError for a bad one), queue it, and return a future of its
        list of :class:`~adapterkit.serving.pool.Prediction`."""
        return self.submit_encoded(self.pool.encode(texts, adapter_names))

    def submit_encoded(self, request: Encoded) -> Future:
        if self._closed:
            raise RuntimeError("the batcher is closed")
        future: Future = Future()
        self._queue.put((request, future))
        return future

    def predict(self, texts: Sequence[str], adapter_names: str | Sequence[str],
                timeout: float | None = None) -> list[Prediction]:
        """``submit`` and wait for the answer."""
        return self.submit(texts, adapter_names).result(timeout)

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop the worker after the requests already queued."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join(timeout)

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the worker --------------------------------------------------------------------------------
    def _work(self) -> None:
        carry: tuple[Encoded, Future] | None = None
        while True:
            first = carry if carry is not None else self._queue.get()
            carry = None
            if first is None:
                return
            items = [first]
            size = len(first[0])
            deadline = time.monotonic() + self.max_wait
            stop = False
            while size < self.max_batch:
                timeout = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                if size + len(item[0]) > self.max_batch:
                    carry = item
                    break
                items.append(item)
                size += len(item[0])
            self._run(items)
            if stop:
                return

    def _run(self, items: list[tuple[Encoded, Future]]) -> None:
        live = [(req, fut) for req, fut in items if fut.set_running_or_notify_cancel()]
        if not live:
            return
        size = sum(len(req) for req, _ in live)
        self.stats.batches += 1
        self.stats.requests += len(live)
        self.stats.examples += size
        self.stats.largest_batch = max(self.stats.largest_batch, size)
        if len(self.stats.batch_sizes) < 100_000:
            self.stats.batch_sizes.append(size)
        try:
            results = self.pool.predict_encoded([req for req, _ in live])
        except BaseException as exc:  # reported to the request(s), the worker carries on
            if len(live) == 1:
                self.stats.failures += 1
                live[0][1].set_exception(exc)
                return
            for req, fut in live:  # find which request fails: each alone
                try:
                    fut.set_result(self.pool.predict_encoded([req])[0])
                except BaseException as one:
                    self.stats.failures += 1
                    fut.set_exception(one)
            return
        for (_, fut), result in zip(live, results, strict=True):
            fut.set_result(result)
