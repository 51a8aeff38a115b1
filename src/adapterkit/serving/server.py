"""The HTTP API over an :class:`~adapterkit.serving.AdapterPool` (FastAPI + uvicorn: ``pip install adapterkit[serve]``).

- ``POST /predict`` with ``{"adapter": NAME, "texts": [...]}`` (one adapter for all texts) or
  ``{"adapters": [NAME, ...], "texts": [...]}`` (one per text) answers ``{"predictions": [{"adapter",
  "prediction", "score", "scores"}, ...]}`` in the order of the texts (``scores``: every label's probability;
  regression: ``prediction`` and ``score`` are the value).
- ``GET /adapters``: the adapters the pool can serve and those loaded now (least recently used first).
- ``GET /health``: status and counters.

Requests go through a :class:`~adapterkit.serving.Batcher`, so requests that arrive together run as one
mixed-adapter batch. A bad request gets a 4xx answer ``{"error": MESSAGE, "field": FIELD}``: 400 for a body
that is not JSON, 404 for an unknown adapter, 422 for a missing or wrong field, an empty text list or a text
longer than the model takes. A failure inside the model is a 500 with the error's type and message, and the
server carries on with the next request.
"""
# No ``from __future__ import annotations``: FastAPI reads the endpoints' parameter annotations at run time.
import asyncio
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import opt
from ..errors import AdapterLoadError, ConfigError
from .batching import Batcher
from .pool import AdapterPool, RequestError

log = logging.getLogger("adapterkit.serving")

REQUEST_FIELDS = ("texts", "adapter", "adapters")


@dataclass
class ServeOptions:
    """``adapterkit serve``: where the adapters are, how many stay loaded, how requests are batched."""

    adapters_dir: str | None = opt(None, "folder of saved adapter directories, each served under its folder name")
    adapters: list[str] | None = opt(None, "comma-separated NAME=DIRECTORY or NAME=OWNER/REPO entries to serve too")
    hub: bool = opt(False, "true: a requested name found nowhere else that looks like a Hub repo id (owner/name) is "
                    "downloaded on first use (HF_HUB_OFFLINE=1: from the cache only). Off by default: a server "
                    "should not fetch whatever repo a client names")
    max_adapters: int | None = opt(32, "LRU limit: adapters kept loaded at once (0: no limit)")
    max_bytes: int | None = opt(None, "LRU limit: bytes of adapter and head tensors kept loaded (default: no limit)")
    host: str = opt("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = opt(8000, "port to listen on (0: a free port, printed at start)")
    max_batch: int = opt(64, "dynamic batching: most examples run as one mixed batch")
    max_wait_ms: float = opt(5.0, "dynamic batching: how long to wait for more requests after the first")
    batch_size: int = opt(32, "examples per forward pass")
    max_length: int | None = opt(None, "longest text in tokens; longer texts are refused (default: what the model "
                                 "takes)")


def _error(status: int, field: str | None, message: str) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message, "field": field}, status_code=status)


def parse_request(body: bytes) -> tuple[Any, Any]:
    """(texts, adapter name or names) of a ``/predict`` body; RequestError (``status`` 400 for bad JSON)
    naming the field otherwise."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        error = RequestError("body", f"not valid JSON ({exc})")
        error.status = 400
        raise error from None
    if not isinstance(data, dict):
        raise RequestError("body", f"expected a JSON object with texts and adapter (or adapters), got "
                           f"{type(data).__name__}")
    unknown = sorted(set(data) - set(REQUEST_FIELDS))
    if unknown:
        raise RequestError(unknown[0], f"unknown field; known fields: {list(REQUEST_FIELDS)}")
    if "texts" not in data:
        raise RequestError("texts", "missing: give the texts to predict on, as a list of strings")
    if "adapter" in data and "adapters" in data:
        raise RequestError("adapters", "give adapter (one for all texts) or adapters (one per text), not both")
    if "adapter" in data:
        if not isinstance(data["adapter"], str):
            raise RequestError("adapter", f"expected an adapter name (a string; adapters takes one per text), got "
                               f"{type(data['adapter']).__name__}")
        return data["texts"], data["adapter"]
    if "adapters" in data:
        if not isinstance(data["adapters"], list):
            raise RequestError("adapters", f"expected a list of adapter names, one per text, got "
                               f"{type(data['adapters']).__name__}")
        return data["texts"], data["adapters"]
    raise RequestError("adapter", "missing: give adapter (one for all texts) or adapters (one per text)")


def create_app(pool: AdapterPool, batcher: Batcher) -> Any:
    """The FastAPI application over ``pool`` and ``batcher``."""
    from fastapi import FastAPI, Request

    app = FastAPI(title="adapterkit", description="Many adapters, one base model.")
    started = time.time()
    counts = {"requests": 0, "client_errors": 0, "server_errors": 0}

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        counts["requests"] += 1
        try:
            texts, names = parse_request(await request.body())
            encoded = pool.encode(texts, names)
            predictions = await asyncio.wrap_future(batcher.submit_encoded(encoded))
        except RequestError as exc:
            counts["client_errors"] += 1
            return _error(exc.status, exc.field, str(exc))
        except AdapterLoadError as exc:  # the adapter exists but cannot be loaded: the server's problem
            counts["server_errors"] += 1
            log.error("adapter load failed: %s", exc)
            return _error(500, "adapter", f"cannot load the adapter: {exc}")
        except Exception as exc:  # a failure inside the model: this request fails, the server carries on
            counts["server_errors"] += 1
            log.exception("prediction failed")
            return _error(500, None, f"internal error: {type(exc).__name__}: {exc}")
        return {"predictions": [p.to_dict() for p in predictions]}

    @app.get("/adapters")
    async def adapters() -> Any:
        return {"available": pool.available(), "loaded": pool.loaded(), "max_adapters": pool.max_adapters,
                "max_bytes": pool.max_bytes, "loaded_bytes": pool.loaded_bytes, "hub": pool.hub}

    @app.get("/health")
    async def health() -> Any:
        stats = pool.stats
        return {"status": "ok", "model": pool.model_name, "max_length": pool.max_length,
                "loaded_adapters": len(pool.loaded()), "uptime_s": round(time.time() - started, 3), **counts,
                "batches": batcher.stats.batches, "examples": batcher.stats.examples,
                "largest_batch": batcher.stats.largest_batch, "adapter_loads": stats.loads,
                "adapter_evictions": stats.evictions}

    return app


class Server:
    """A uvicorn server for ``app`` on ``host:port`` (port 0: a free one); ``url`` is known once started.

    ``run()`` serves in this thread until interrupted; ``start()`` serves in a background thread (tests,
    benchmarks) and ``stop()`` ends it.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "warning",
                 on_start: Callable[[str], None] | None = None) -> None:
        import uvicorn

        outer = self

        class _Uvicorn(uvicorn.Server):
            async def startup(self, sockets: Any = None) -> None:
                await super().startup(sockets)
                if self.started:
                    bound = self.servers[0].sockets[0].getsockname()
                    outer.url = f"http://{host}:{bound[1]}"
                    outer._ready.set()
                    if on_start is not None:
                        on_start(outer.url)

        self.url: str | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._server = _Uvicorn(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False))

    def run(self) -> None:
        self._server.run()

    def start(self, timeout: float = 30.0) -> "Server":
        self._thread = threading.Thread(target=self._server.run, name="adapterkit-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the server did not start within {timeout} s")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _entries(values: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values or []:
        name, sep, where = value.partition("=")
        if not sep or not name or not where:
            raise ConfigError(f"adapters: {value!r}: expected NAME=DIRECTORY or NAME=OWNER/REPO")
        out[name] = where
    return out


def pool_from_options(opts: ServeOptions, model: str | None) -> AdapterPool:
    """The pool ``adapterkit serve`` builds from its options."""
    return AdapterPool(model, adapters_dir=opts.adapters_dir, adapters=_entries(opts.adapters), hub=opts.hub,
                       max_adapters=opts.max_adapters or None, max_bytes=opts.max_bytes or None,
                       max_length=opts.max_length, batch_size=opts.batch_size)


def run_serve(opts: ServeOptions, model: str | None, say: Callable[[str], None] = print) -> None:
    """``adapterkit serve``: load the base model, serve until interrupted."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"serve: needs FastAPI and uvicorn ({exc.name} is not installed): pip install "
                          "'adapterkit[serve]'") from None
    if not opts.adapters_dir and not opts.adapters and not opts.hub:
        raise ConfigError("adapters_dir: give --adapters-dir or --adapters (or allow Hub ids with --hub true)")
    pool = pool_from_options(opts, model)
    batcher = Batcher(pool, max_batch=opts.max_batch, max_wait_ms=opts.max_wait_ms)
    where = ", ".join(x for x in (opts.adapters_dir, f"{len(pool.sources)} named" if pool.sources else None,
                                  "Hub ids" if opts.hub else None) if x)
    limit = f"up to {opts.max_adapters or 'any number of'} loaded" + (f", {opts.max_bytes} bytes" if opts.max_bytes
                                                                      else "")
    logging.basicConfig(level=logging.INFO, format="adapterkit serve: %(message)s", stream=sys.stderr)

    def started(url: str) -> None:
        say(f"serving adapters from {where} ({limit}) on {pool.model_name} at {url}  "
            f"(POST /predict, GET /adapters, GET /health)")

    try:
        Server(create_app(pool, batcher), opts.host, opts.port, on_start=started).run()
    finally:
        batcher.close()
