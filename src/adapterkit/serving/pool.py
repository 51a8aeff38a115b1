"""AdapterPool: one base model, many adapters loaded on demand under an LRU limit, and ``predict``.

An adapter is asked for by name. A name is looked up, in order, in the pool's explicit ``adapters`` mapping
(name -> directory or Hub id), as a sub-folder of ``adapters_dir`` holding an ``adapter_config.json``, and
(with ``hub=True``) as a Hugging Face Hub repo id ``owner/name`` (downloaded on first use into the Hub cache,
see :mod:`adapterkit.interop.hub`). Each adapter must have been saved with its head
(``save_adapter(..., include_head=True)``, as ``adapterkit train`` does): each example is scored by its own
adapter and its own head, with that head's label names.

Loaded adapters are kept in least-recently-used order; when more than ``max_adapters`` are loaded, or their
tensors (adapter + head) take more than ``max_bytes``, the least recently used ones are deleted from the
model. An evicted adapter asked for again is loaded again, transparently. A batch that needs more adapters
than the limit allows runs in several parts, so every request is answered whatever the limit.

A batch runs as one mixed-adapter forward (``AdaptedModel.forward(..., adapter_names=...)``, see
:mod:`adapterkit.routing`): adapters with the model's own kind of head (pooling ``hf``) carry it as their
own head in the model; adapters with a pooled head get their rows' hidden states through it in the pool
(so adapters with different label sets share one batch).

``predict`` and ``encode`` are safe to call from several threads: tokenization and the model each run under
a lock (the model is shared and its set of loaded adapters changes).
"""
from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import AdapterLoadError, ConfigError

_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
"""What a name must look like to be looked up as a folder of ``adapters_dir`` (no path separators, no '..')."""


class RequestError(ConfigError):
    """A bad request: ``field`` names what is wrong (``texts``, ``texts[3]``, ``adapter``, ...); ``status`` is
    the HTTP status the server answers with."""

    status = 422

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class UnknownAdapterError(RequestError):
    """No adapter of that name in the pool's mapping, folder, or (with the Hub on) as a Hub repo id."""

    status = 404


@dataclass
class Prediction:
    """One example's answer: the adapter that gave it, the predicted label (regression: the value), its score
    (the label's probability; regression: the value) and, for classification, every label's probability."""

    adapter: str
    prediction: str | float
    score: float
    scores: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"adapter": self.adapter, "prediction": self.prediction, "score": self.score}
        if self.scores is not None:
            out["scores"] = self.scores
        return out


@dataclass
class Encoded:
    """A validated request: token ids per text and the adapter name of each."""

    ids: list[list[int]]
    names: list[str]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class _Entry:
    """A loaded adapter: its name in the model (``key``), its head and what its outputs mean."""

    name: str
    key: str
    directory: Path
    method: str
    kind: str  # classification | regression
    labels: list[str]
    head_config: Any
    head: dict[str, torch.Tensor]  # tensors copied into the model's own head (hf heads; a cls+pooler head's pooler)
    pooled: torch.nn.Module | None  # the adapter's own pooled head (pooling other than hf)
    nbytes: int
    load_seconds: float
    uses: int = 0


@dataclass
class PoolStats:
    """Counters since the pool was made."""

    loads: int = 0
    evictions: int = 0
    hits: int = 0
    load_seconds: float = 0.0
    examples: int = 0
    forward_seconds: float = 0.0
    loads_by_name: dict[str, int] = field(default_factory=dict)


def _nbytes(tensors: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


class AdapterPool:
    """One base model serving many adapters (see the module docstring).

    ``model``: a Hub id or local directory of the base model (None: the bundled MiniLM), loaded with
    :func:`adapterkit.model.load_base_model`. ``max_adapters`` / ``max_bytes``: the LRU limits (None: no
    limit). ``max_length``: the longest text in tokens (default and upper bound: what the model takes).
    ``batch_size``: examples per forward pass (rows are sorted by length first, so a batch pads little).
    """

    def __init__(self, model: str | None = None, *, adapters_dir: str | Path | None = None,
                 adapters: Mapping[str, str | Path] | None = None, hub: bool = True, max_adapters: int | None = 32,
                 max_bytes: int | None = None, max_length: int | None = None, batch_size: int = 32,
                 device: str | torch.device | None = None) -> None:
        from ..model import AdaptedModel, load_base_model
        from ..runner import model_max_positions

        if max_adapters is not None and (isinstance(max_adapters, bool) or max_adapters < 1):
            raise ConfigError(f"max_adapters: must be at least 1 (or None for no limit), got {max_adapters!r}")
        if max_bytes is not None and max_bytes < 1:
            raise ConfigError(f"max_bytes: must be positive (or None for no limit), got {max_bytes!r}")
        if batch_size < 1:
            raise ConfigError(f"batch_size: must be at least 1, got {batch_size!r}")
        self.adapters_dir = Path(adapters_dir) if adapters_dir is not None else None
        if self.adapters_dir is not None and not self.adapters_dir.is_dir():
            raise ConfigError(f"adapters_dir: {self.adapters_dir}: no such directory")
        self.sources: dict[str, str] = {str(k): str(v) for k, v in (adapters or {}).items()}
        self.hub = hub
        self.max_adapters = max_adapters
        self.max_bytes = max_bytes
        self.batch_size = batch_size
        hf_model, self.tokenizer = load_base_model(model, "classification", 2, pooling="hf")
        self.model = AdaptedModel(hf_model).eval()
        if device is not None:
            self.model.to(device)
        self.device = next(self.model.parameters()).device
        self.model_name = str(model) if model else "bundled all-MiniLM-L6-v2"
        limit = model_max_positions(self.model.model, self.tokenizer)
        if max_length is not None and max_length < 1:
            raise ConfigError(f"max_length: must be at least 1, got {max_length!r}")
        self.max_length = min(x for x in (max_length, limit, 512 if limit is None else None) if x is not None)
        self._own_head = dict(self.model.head_parameters())  # the model's own head (pooling hf)
        self._hidden = self.model.build_context().hidden_size
        self._loaded: OrderedDict[str, _Entry] = OrderedDict()  # LRU order: least recently used first
        self._counter = 0
        self._model_lock = threading.RLock()
        self._tokenizer_lock = threading.Lock()
        self.stats = PoolStats()

    # -- names ------------------------------------------------------------------------------------
    def _source(self, name: Any, field: str) -> str:
        """Where adapter ``name`` comes from (a directory or a Hub id); UnknownAdapterError when nowhere."""
        if not isinstance(name, str) or not name:
            raise RequestError(field, f"expected an adapter name (a non-empty string), got {name!r}")
        if name in self.sources:
            return self.sources[name]
        if self.adapters_dir is not None and _PLAIN_NAME.fullmatch(name) and ".." not in name:
            candidate = self.adapters_dir / name
            if (candidate / "adapter_config.json").is_file():
                return str(candidate)
        if self.hub:
            from ..interop.hub import looks_like_repo_id

            if looks_like_repo_id(name):
                return name
        where = [w for w, on in ((f"a folder of {self.adapters_dir}", self.adapters_dir is not None),
                                 ("the pool's adapters", bool(self.sources)),
                                 ("a Hub repo id owner/name", self.hub)) if on]
        looked = " or ".join(where) or "nowhere: the pool has no adapters_dir, no adapters and no Hub"
        raise UnknownAdapterError(field, f"no adapter {name!r} (looked for {looked})")

    def has_adapter(self, name: str) -> bool:
        """True when ``name`` is loaded or can be found (a Hub id counts when the Hub is on; it is fetched on use)."""
        try:
            self._source(name, "adapter")
        except RequestError:
            return False
        return True

    def available(self) -> list[str]:
        """Names the pool can serve without the Hub: the mapping's names and ``adapters_dir``'s adapter folders."""
        names = set(self.sources)
        if self.adapters_dir is not None:
            names.update(p.name for p in self.adapters_dir.iterdir()
                         if _PLAIN_NAME.fullmatch(p.name) and (p / "adapter_config.json").is_file())
        return sorted(names)

    def loaded(self) -> list[dict[str, Any]]:
        """The loaded adapters, least recently used first: name, method, kind, labels, bytes."""
        with self._model_lock:
            return [{"name": e.name, "method": e.method, "kind": e.kind, "labels": e.labels, "bytes": e.nbytes}
                    for e in self._loaded.values()]

    @property
    def loaded_bytes(self) -> int:
        return sum(e.nbytes for e in list(self._loaded.values()))

    # -- requests ---------------------------------------------------------------------------------
    def encode(self, texts: Any, adapter_names: Any) -> Encoded:
        """Check and tokenize one request: ``texts`` a non-empty list of strings, ``adapter_names`` one name for
        all or one per text. RequestError naming the field (``texts``, ``texts[i]``, ``adapter``, ``adapters[i]``)."""
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise RequestError("texts", f"expected a list of strings, got {type(texts).__name__}")
        if not texts:
            raise RequestError("texts", "empty list: give at least one text")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise RequestError(f"texts[{i}]", f"expected a string, got {type(text).__name__}")
        if isinstance(adapter_names, str) or adapter_names is None or not isinstance(adapter_names, Sequence):
            self._source(adapter_names, "adapter")
            names = [adapter_names] * len(texts)
        else:
            if len(adapter_names) != len(texts):
                raise RequestError("adapters", f"{len(adapter_names)} adapter names for {len(texts)} texts: give one "
                                   "per text (or one adapter for all)")
            names = list(adapter_names)
            checked: set[Any] = set()
            for i, name in enumerate(names):
                if isinstance(name, str) and name in checked:
                    continue
                self._source(name, f"adapters[{i}]")
                checked.add(name)
        with self._tokenizer_lock:
            ids = self.tokenizer(list(texts), add_special_tokens=True, truncation=False, padding=False,
                                 return_attention_mask=False, verbose=False)["input_ids"]
        for i, row in enumerate(ids):
            if len(row) > self.max_length:
                raise RequestError(f"texts[{i}]", f"{len(row)} tokens, more than the model's maximum of "
                                   f"{self.max_length}")
        return Encoded([list(r) for r in ids], names)

    def predict(self, texts: Sequence[str], adapter_names: str | Sequence[str]) -> list[Prediction]:
        """Each text's prediction from its adapter (``adapter_names``: one name for all, or one per text)."""
        return self.predict_encoded([self.encode(texts, adapter_names)])[0]

    def predict_encoded(self, requests: Sequence[Encoded]) -> list[list[Prediction]]:
        """Run several encoded requests as one mixed batch; one list of predictions per request."""
        ids = [row for r in requests for row in r.ids]
        names = [n for r in requests for n in r.names]
        flat: list[Prediction | None] = [None] * len(ids)
        for part in self._parts(names):
            with self._model_lock:
                entries = self._ensure([names[i] for i in part])
                outputs = self._run([ids[i] for i in part], [entries[names[i]] for i in part])
            for i, pred in zip(part, outputs, strict=True):
                flat[i] = pred
        out, start = [], 0
        for r in requests:
            out.append(flat[start:start + len(r)])
            start += len(r)
        return out  # type: ignore[return-value]

    def _parts(self, names: list[str]) -> list[list[int]]:
        """Row indices in parts that each need no more adapters than the LRU keeps (count and estimated bytes)."""
        parts: list[list[int]] = []
        current: list[int] = []
        seen: dict[str, int] = {}
        for i, name in enumerate(names):
            if name not in seen:
                size = self._estimate_bytes(name)
                over_count = self.max_adapters is not None and len(seen) + 1 > self.max_adapters
                over_bytes = self.max_bytes is not None and seen and sum(seen.values()) + size > self.max_bytes
                if over_count or over_bytes:
                    parts.append(current)
                    current, seen = [], {}
                seen[name] = size
            current.append(i)
        if current:
            parts.append(current)
        return parts

    def _estimate_bytes(self, name: str) -> int:
        entry = self._loaded.get(name)
        if entry is not None:
            return entry.nbytes
        if self.max_bytes is None:
            return 0
        source = Path(self.sources.get(name, "")) if name in self.sources else (
            self.adapters_dir / name if self.adapters_dir is not None else None)
        if source is None or not source.is_dir():
            return 0
        return sum(p.stat().st_size for p in (source / "adapter.safetensors", source / "head.safetensors")
                   if p.is_file())

    # -- loading and eviction ---------------------------------------------------------------------
    def _ensure(self, names: Sequence[str]) -> dict[str, _Entry]:
        """Load the adapters ``names`` (LRU-touching those already loaded), evicting others to stay in bounds."""
        needed = list(dict.fromkeys(names))
        entries: dict[str, _Entry] = {}
        for name in needed:
            entry = self._loaded.get(name)
            if entry is None:
                self._evict(keep=set(entries), room=1)
                entry = self._load(name)
                self._loaded[name] = entry
            else:
                self.stats.hits += 1
                self._loaded.move_to_end(name)
            entries[name] = entry
        self._evict(keep=set(entries), room=0)
        return entries

    def _evict(self, keep: set[str], room: int) -> None:
        """Delete least recently used adapters (not those in ``keep``) until ``room`` more fit by count and the
        loaded bytes are within ``max_bytes``."""
        def over() -> bool:
            if self.max_adapters is not None and len(self._loaded) + room > self.max_adapters:
                return True
            return self.max_bytes is not None and self.loaded_bytes > self.max_bytes

        for name in list(self._loaded):
            if not over():
                break
            if name in keep:
                continue
            entry = self._loaded.pop(name)
            self.model.delete_adapter(entry.key)
            self.stats.evictions += 1

    def evict(self, name: str) -> bool:
        """Unload adapter ``name`` now (it is loaded again when asked for); False when it was not loaded."""
        with self._model_lock:
            entry = self._loaded.pop(name, None)
            if entry is None:
                return False
            self.model.delete_adapter(entry.key)
            self.stats.evictions += 1
            return True

    def _load(self, name: str) -> _Entry:
        """Read adapter ``name`` (its directory or Hub repo) and add it to the model, inactive, with its head."""
        from .. import io
        from ..heads import PooledHead
        from ..interop.hub import resolve_adapter_dir
        from ..registry import config_from_dict

        start = time.perf_counter()
        source = self._source(name, "adapter")
        try:
            directory = resolve_adapter_dir(source)
        except AdapterLoadError as exc:  # a Hub id the Hub does not have is an unknown adapter, not a server fault
            if source == name and "no such repository" in str(exc):
                raise UnknownAdapterError("adapter", str(exc)) from None
            raise
        meta = io.read_adapter_config(directory)
        source = directory / io.CONFIG_NAME
        io.check_compatible(self.model, meta, source)
        head_path = directory / io.HEAD_NAME
        head_meta = meta.get("head")
        if not head_meta or not head_path.is_file():
            raise AdapterLoadError(f"{head_path}: missing: the pool serves adapters saved with their head "
                                   "(save_adapter(..., include_head=True), as adapterkit train saves them)")
        model_class = str(head_meta.get("model_class") or "")
        if "QuestionAnswering" in model_class or "ForSequenceClassification" not in model_class:
            raise AdapterLoadError(f"{source}: head.model_class: {model_class!r}: the pool serves sequence "
                                   "classification and regression heads")
        regression = head_meta.get("problem_type") == "regression"
        num_labels = head_meta.get("num_labels")
        io.check_head_labels(meta, head_path, source)
        id2label = head_meta.get("id2label") or {}
        labels = [str(id2label.get(str(i), i)) for i in range(int(num_labels or 0))] if not regression else []
        head_config = io.saved_head_config(meta, source)
        try:
            config = config_from_dict(meta["config"], f"{source}: config",
                                      strict=not io.check_format_version(meta, source))
        except ConfigError as exc:
            raise AdapterLoadError(str(exc)) from None
        tensors = io.read_tensors(directory / io.WEIGHTS_NAME)
        io.check_weights(directory / io.WEIGHTS_NAME, tensors)
        head = io.read_tensors(head_path)
        io.check_weights(head_path, head)
        pooled = None
        if head_config.pooling != "hf":
            weight = head.pop("pooled_head.classifier.weight", None)
            bias = head.pop("pooled_head.classifier.bias", None)
            if weight is None or bias is None:
                raise AdapterLoadError(f"{head_path}: pooled_head.classifier.weight: missing for the saved "
                                       f"pooling {head_config.pooling!r}")
            pooled = PooledHead(head_config, self._hidden, int(weight.shape[0]))
            if tuple(weight.shape) != tuple(pooled.classifier.weight.shape):
                raise AdapterLoadError(f"{head_path}: pooled_head.classifier.weight: shape {tuple(weight.shape)} does "
                                       f"not fit hidden size {self._hidden}")
            with torch.no_grad():
                pooled.classifier.weight.copy_(weight)
                pooled.classifier.bias.copy_(bias)
            pooled.to(self.device).eval()
            labels = labels if not regression else []
        for key, tensor in head.items():
            own = self._own_head.get(key)
            if own is None:
                raise AdapterLoadError(f"{head_path}: {key}: no such head parameter in {type(self.model.model).__name__}")
            if tuple(own.shape) != tuple(tensor.shape):
                raise AdapterLoadError(
                    f"{head_path}: {key}: shape {tuple(tensor.shape)}, but the pool's base model has "
                    f"{tuple(own.shape)}: a head of the model's own kind (pooling hf) must have as many outputs as "
                    "the pool's base model; save the adapter with a pooled head (e.g. --pooling mean)")
        head = {k: v.to(self.device) for k, v in head.items()}
        head_bytes = _nbytes(head)
        self._counter += 1
        key = f"pool{self._counter}"
        io.add_with_weights(self.model, key, config, tensors, directory / io.WEIGHTS_NAME, activate=False)
        if pooled is None:  # the model's own kind of head: routed per row by the model (its own head)
            try:
                self.model.set_adapter_head(key, head, head_config)
            except ConfigError as exc:
                self.model.delete_adapter(key)
                raise AdapterLoadError(f"{head_path}: {exc}") from None
            head = {}  # held by the model now
        nbytes = _nbytes(tensors) + head_bytes + (_nbytes(dict(pooled.state_dict())) if pooled is not None else 0)
        seconds = time.perf_counter() - start
        self.stats.loads += 1
        self.stats.load_seconds += seconds
        self.stats.loads_by_name[name] = self.stats.loads_by_name.get(name, 0) + 1
        return _Entry(name, key, directory, config.method, "regression" if regression else "classification",
                      labels, head_config, head, pooled, nbytes, seconds)

    # -- the model ----------------------------------------------------------------------------------
    def _pad(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(r) for r in rows)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if left else slice(0, len(row))
            ids[i, span] = torch.tensor(row, dtype=torch.long)
            mask[i, span] = 1
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}

    def _run(self, ids: list[list[int]], entries: list[_Entry]) -> list[Prediction]:
        """Predictions for ``ids`` (rows sorted by length into batches of ``batch_size``), each by its entry."""
        start = time.perf_counter()
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: list[Prediction | None] = [None] * len(ids)
        for b in range(0, len(order), self.batch_size):
            rows = order[b:b + self.batch_size]
            batch = self._pad([ids[i] for i in rows])
            logits = self._forward_rows(batch, [entries[i] for i in rows])
            for i, row_logits in zip(rows, logits, strict=True):
                out[i] = self._prediction(entries[i], row_logits)
                entries[i].uses += 1
        self.stats.examples += len(ids)
        self.stats.forward_seconds += time.perf_counter() - start
        return out  # type: ignore[return-value]

    def _forward_rows(self, batch: dict[str, torch.Tensor], entries: list[_Entry]) -> list[torch.Tensor]:
        """Logits of each row of ``batch`` under its own adapter and head, from ONE mixed-adapter forward
        (``AdaptedModel.forward(..., adapter_names=...)``: every site module runs each adapter on its own rows).

        An adapter with the model's own kind of head (pooling ``hf``) has it registered as its own head
        (``AdaptedModel.set_adapter_head``), so its rows' logits come out of that forward; an adapter with a
        pooled head (any other pooling, any number of labels) gets its rows' hidden states through its head here.
        """
        from ..heads import find_pooler, pooler_with

        pooled = any(e.pooled is not None for e in entries)
        with torch.inference_mode():
            output = self.model(**batch, adapter_names=[e.key for e in entries], output_hidden_states=pooled)
            out = list(output.logits.float().cpu()) if output.logits is not None else [None] * len(entries)
            if not pooled:
                return out
            hidden, mask = output.hidden_states[-1], batch["attention_mask"]
            pooler = find_pooler(self.model.model)
            groups: dict[str, list[int]] = {}
            for i, entry in enumerate(entries):
                if entry.pooled is not None:
                    groups.setdefault(entry.key, []).append(i)
            for rows in groups.values():
                entry = entries[rows[0]]
                index = torch.tensor(rows, device=self.device)
                features = entry.pooled.features(hidden.index_select(0, index), mask.index_select(0, index),
                                                 pooler_with(pooler, entry.head))
                for row, logits in zip(rows, entry.pooled(features).float().cpu(), strict=True):
                    out[row] = logits
        return out

    @staticmethod
    def _prediction(entry: _Entry, logits: torch.Tensor) -> Prediction:
        if entry.kind == "regression":
            value = float(logits.reshape(-1)[0])
            return Prediction(entry.name, value, value)
        probs = torch.softmax(logits.double(), dim=-1)
        k = int(probs.argmax())
        names = entry.labels if len(entry.labels) == probs.numel() else [str(i) for i in range(probs.numel())]
        return Prediction(entry.name, names[k], float(probs[k]), {n: float(p) for n, p in zip(names, probs, strict=True)})
