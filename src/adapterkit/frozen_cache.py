"""Skip the frozen lower layers of an encoder in adapter training: compute them once per input, then reuse.

When the active adapters only have modules in layers ``L`` and above (e.g. a Pfeiffer adapter with
``layers=(3, 4, 5)`` of a 6-layer encoder), layers ``0..L-1`` are frozen and, with no dropout in the
backbone, deterministic: their output for an example never changes during training. :func:`enable`
attaches a :class:`FrozenLayerCache`, a *system attachment* of the :class:`AdaptedModel` (its modules
sit under the reserved adapter name ``"_cache"`` and stay active, after the adapters, whatever
adapters are activated):

- a pre hook on the backbone that keys every example of a training batch by its token ids, attention
  mask, token type ids and position ids (trailing padding trimmed);
- on layer ``L-1``, a post hook that stores each new example's hidden states (non-padding part, on the
  CPU, in the layer's output dtype) and a ``replace`` hook that, when *every* example of the batch is
  stored, returns them re-padded with zeros to the batch's length instead of running the layer;
- on layers ``0..L-2``, a ``replace`` hook that then returns the layer's input unchanged (skipped).

Padding positions differ from an uncached pass (zeros instead of computed values), which cannot affect
non-padding positions: every layer masks padded keys. Outputs at real tokens, the loss and gradients
equal the uncached ones up to float rounding. In eval mode the cache does nothing. Memory: one float
per (stored token x hidden size), e.g. 4 bytes x tokens x hidden in float32.

Usage::

    cache = frozen_cache.enable(adapted)   # after add_adapter / set_train_mode; backbone_dropout False
    ...train...
    frozen_cache.disable(adapted)          # the original modules are back; cache.stats stays readable

Activating other adapters keeps the cache on as long as its preconditions hold
(:meth:`FrozenLayerCache.check`, the one place they are checked); an activation that would break
them (an adapter with modules in a cached layer) raises ConfigError and changes nothing. Per-call
state (whether the running batch is a hit) lives in the forward context, not on the modules.
(The CLI flag is ``--cache-frozen-layers``; this module was ``layer_cache``.)
"""
from __future__ import annotations

import hashlib
import inspect
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from . import injection
from .context import current
from .errors import ConfigError
from .injection import AdapterModule

if TYPE_CHECKING:
    from .model import AdaptedModel

CACHE_NAME = "_cache"
"""Reserved adapter name of the cache's modules."""
SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "electra", "distilbert", "mpnet")
_PASS_THROUGH_ARGS = ("return_dict", "use_cache")
_DROPOUT_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout")


def first_adapted_layer(adapted: AdaptedModel, active: Sequence[str] | None = None) -> int:
    """Lowest layer index with a module of an active adapter (of ``active``, default the model's): 0 when one
    has a model-level module (a soft prompt), the number of layers when no active adapter has layer modules."""
    lowest = len(adapted.layers)
    for name in adapted.active_adapters if active is None else active:
        for prefix, _ in adapted.adapter_modules(name):
            kind, _, rest = prefix.partition(".")
            if kind == "model":
                return 0
            if kind == "layers":
                lowest = min(lowest, int(rest.split(".", 1)[0]))
    return lowest


@dataclass
class CacheStats:
    """Counters of a :class:`FrozenLayerCache` (examples, batches, stored entries and bytes)."""

    hits: int = 0
    """Examples served from the cache (their frozen layers skipped)."""
    misses: int = 0
    """Examples run through the frozen layers in training (stored when new)."""
    hit_batches: int = 0
    miss_batches: int = 0
    bypassed: int = 0
    """Training batches not cacheable (inputs_embeds, output_hidden_states/attentions requested)."""
    entries: int = 0
    bytes: int = 0


class FrozenLayerCache:
    """Hidden states after layer ``layer - 1`` per distinct input; see the module docstring. A system
    attachment of the model (``AdaptedModel.system_attachments[CACHE_NAME]``)."""

    name = CACHE_NAME

    def __init__(self, adapted: AdaptedModel, layer: int) -> None:
        self.layer = layer
        self._adapted = weakref.ref(adapted)
        self.entries: dict[bytes, torch.Tensor] = {}
        self.stats = CacheStats()
        self.tuple_len = 0
        """0: the layers return a tensor; n: an n-tuple whose first item is the hidden states."""
        backbone = adapted.model.base_model
        frozen = [injection.get_module(adapted.model, adapted.layers[i].path) for i in range(layer)]
        frozen = [m.base_layer if isinstance(m, injection.AdaptedModule) else m for m in frozen]
        embeddings = getattr(backbone, "embeddings", None)
        self._frozen: list[nn.Module] = [m for m in [embeddings, *frozen] if m is not None]
        self._frozen_params = [p for m in self._frozen for p in m.parameters()]
        self._zero_dropout = _zero_dropout(adapted.config, self._frozen)
        self._signature = inspect.signature(backbone.forward)
        self._config = adapted.config

    # -- preconditions (the one place they are checked) -----------------------------------------
    def check(self, adapted: AdaptedModel, active: tuple[str, ...], *, runtime: bool = False) -> None:
        """ConfigError naming ``cache_frozen_layers`` unless caching layers ``0..layer-1`` is exact with the
        adapters ``active``: a supported encoder with a task head, train mode ``adapters``, no active
        module below ``layer``, a deterministic (dropout-free) frozen part; with ``runtime``, also the
        modules' current training flags and ``requires_grad`` (checked at every cached training batch)."""
        check_preconditions(adapted, self.layer, active, zero_dropout=self._zero_dropout)
        if runtime:
            if not self._zero_dropout and any(m.training for m in self._frozen):
                raise ConfigError("cache_frozen_layers: the frozen layers run in training mode with dropout, so their "
                                  "outputs are random; set backbone_dropout false (AdaptedModel.backbone_dropout = False)")
            if any(p.requires_grad for p in self._frozen_params):
                raise ConfigError(f"cache_frozen_layers: parameters below layer {self.layer} train; "
                                  "the cache needs train_mode 'adapters' with frozen lower layers")

    # -- per forward (state in the forward context) ----------------------------------------------
    def begin(self, args: tuple, kwargs: dict[str, Any], training: bool) -> None:
        """Called on entering the backbone: decide whether this batch is a hit, a miss or not cached."""
        ctx = current()
        ctx.set_state(self, "hit", None)
        ctx.set_state(self, "pending", None)
        if not training:
            return
        adapted = self._adapted()
        if adapted is not None:
            self.check(adapted, adapted.active_adapters, runtime=True)
        inputs = self._inputs(args, kwargs)
        if inputs is None:
            self.stats.bypassed += 1
            return
        keys, lengths = _keys(*inputs)
        if all(k in self.entries for k in keys):
            ctx.set_state(self, "hit", (keys, lengths, inputs[0].shape[1]))
            self.stats.hits += len(keys)
            self.stats.hit_batches += 1
        else:
            ctx.set_state(self, "pending", (keys, lengths))
            self.stats.misses += len(keys)
            self.stats.miss_batches += 1

    def end(self) -> None:
        ctx = current()
        ctx.pop_state(self, "hit")
        ctx.pop_state(self, "pending")

    @property
    def hit(self) -> bool:
        """True while a batch whose examples are all stored runs."""
        ctx = current()
        return ctx is not None and ctx.state(self, "hit") is not None

    def shaped(self, hidden: torch.Tensor) -> Any:
        """``hidden`` in the layers' output structure (a tensor, or a tuple led by it)."""
        return hidden if self.tuple_len == 0 else (hidden, *([None] * (self.tuple_len - 1)))

    def cached(self, like: torch.Tensor) -> torch.Tensor:
        """The stored hidden states of the current batch, zero-padded to its length, on ``like``'s device."""
        keys, lengths, width = current().state(self, "hit")
        rows = [self.entries[k] for k in keys]
        out = torch.zeros(len(rows), width, rows[0].shape[-1], dtype=rows[0].dtype)
        for b, (row, n) in enumerate(zip(rows, lengths, strict=True)):
            out[b, :n] = row
        return out.to(like.device, non_blocking=True)

    def record(self, output: Any) -> None:
        """Store the new examples' hidden states from layer ``layer - 1``'s output."""
        pending = current().pop_state(self, "pending")
        if pending is None:
            return
        keys, lengths = pending
        self.tuple_len = len(output) if isinstance(output, tuple) else 0
        host = (output[0] if isinstance(output, tuple) else output).detach().cpu()
        for b, (key, n) in enumerate(zip(keys, lengths, strict=True)):
            if key not in self.entries:
                row = host[b, :n].clone()
                self.entries[key] = row
                self.stats.entries += 1
                self.stats.bytes += row.numel() * row.element_size()

    def clear(self) -> None:
        """Drop every stored entry (the counters of hits and misses stay)."""
        self.entries.clear()
        self.stats.entries = self.stats.bytes = 0

    # -- inputs -------------------------------------------------------------------------------
    def _inputs(self, args: tuple, kwargs: dict[str, Any]) -> tuple | None:
        """(input_ids, attention_mask, token_type_ids, position_ids), or None when the call is not cacheable."""
        if getattr(self._config, "output_hidden_states", False) or getattr(self._config, "output_attentions", False):
            return None
        try:
            bound = self._signature.bind_partial(*args, **kwargs).arguments
        except TypeError:  # the backbone itself will say what is wrong
            return None
        values: dict[str, Any] = {}
        for name, value in bound.items():
            kind = self._signature.parameters[name].kind
            values.update(value if kind is inspect.Parameter.VAR_KEYWORD else {name: value})
        ids = values.pop("input_ids", None)
        inputs = (ids, *(values.pop(k, None) for k in ("attention_mask", "token_type_ids", "position_ids")))
        extra = [k for k, v in values.items() if k not in _PASS_THROUGH_ARGS and v is not None and v is not False]
        if ids is None or ids.dim() != 2 or extra:
            return None
        return inputs


class _Capture(AdapterModule):
    """On the backbone: starts and ends each forward pass of the cache."""

    order = 100  # after any other pre hook, so it sees the backbone's final inputs

    def __init__(self, cache: FrozenLayerCache) -> None:
        super().__init__()
        self.cache = cache

    def pre(self, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        self.cache.begin(args, kwargs, self.training)
        return args, kwargs

    def post(self, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        self.cache.end()
        return output


class _Skip(AdapterModule):
    """On layers 0..L-2: on a hit, return the layer's input unchanged (layer L-1 replaces it anyway)."""

    def __init__(self, cache: FrozenLayerCache) -> None:
        super().__init__()
        self.cache = cache

    def replace(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        if not self.cache.hit:
            return None
        return self.cache.shaped(args[0] if args else kwargs["hidden_states"])


class _Record(_Skip):
    """On layer L-1: on a hit, return the stored hidden states; on a miss, store the new ones."""

    def replace(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        if not self.cache.hit:
            return None
        return self.cache.shaped(self.cache.cached(args[0] if args else kwargs["hidden_states"]))

    def post(self, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        if not self.cache.hit:
            self.cache.record(output)
        return output


def _zero_dropout(config: Any, modules: list[nn.Module]) -> bool:
    """True when the frozen part has no dropout at all (then training mode is deterministic too)."""
    if any((getattr(config, f, None) or 0) > 0 for f in _DROPOUT_FIELDS):
        return False
    return all(m.p == 0 for root in modules for m in root.modules() if isinstance(m, nn.Dropout))


def _keys(ids: torch.Tensor, mask: torch.Tensor | None, token_types: torch.Tensor | None,
          positions: torch.Tensor | None) -> tuple[list[bytes], list[int]]:
    """Per row: a 128-bit digest of its inputs up to its last non-padding token, and that length."""
    ids = ids.detach().cpu()
    width = ids.shape[1]
    if mask is None:
        binary = torch.ones_like(ids, dtype=torch.uint8)
        lengths = [width] * ids.shape[0]
    else:
        binary = (mask.detach().cpu() != 0).to(torch.uint8)
        lengths = (binary * torch.arange(1, width + 1)).amax(dim=1).tolist()
    extras = [t.detach().cpu().expand_as(ids) if t is not None else None for t in (token_types, positions)]
    keys = []
    for b, n in enumerate(lengths):
        h = hashlib.blake2b(digest_size=16)
        for tag, t in ((b"i", ids), (b"m", binary), (b"t", extras[0]), (b"p", extras[1])):
            h.update(tag)
            if t is not None:
                row = t[b, :n].contiguous()
                h.update(f"{row.dtype}:{n}".encode())
                h.update(row.numpy().tobytes())
        keys.append(h.digest())
    return keys, lengths


def _check_supported(adapted: AdaptedModel) -> None:
    model_type = adapted.config.model_type
    if model_type not in SUPPORTED_MODEL_TYPES:
        if len(adapted.spec.groups) > 1:
            why = ("it is an encoder-decoder model: its layers are numbered encoder first and the decoder's depend "
                   "on the decoder inputs too")
        else:
            why = ("it is a decoder-only model: its layers take rotary position embeddings and a causal mask built "
                   "outside the layer list, and batches are usually left-padded; the cache keys are not checked for that")
        raise ConfigError(f"cache_frozen_layers: model type {model_type!r} is not supported ({why}); "
                          f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if adapted.model.base_model is adapted.model:
        raise ConfigError("cache_frozen_layers: needs a model with a task head (the cache reads the inputs the "
                          "head passes to the backbone)")


def check_preconditions(adapted: AdaptedModel, layer: int, active: Sequence[str] | None = None, *,
                        zero_dropout: bool | None = None) -> None:
    """The static preconditions of caching layers ``0..layer-1`` with the adapters ``active`` (default: the
    model's active ones); ConfigError naming ``cache_frozen_layers`` and what to change."""
    _check_supported(adapted)
    if adapted.train_mode != "adapters":
        raise ConfigError(f"cache_frozen_layers: needs train_mode 'adapters', not {adapted.train_mode!r} "
                          "(the lower layers must be frozen)")
    limit = first_adapted_layer(adapted, active)
    if not 1 <= layer <= limit:
        raise ConfigError(f"cache_frozen_layers: nothing to cache below layer {layer}; the active adapters have "
                          f"modules from layer {limit} on, so the cached layer count must be in [1, {limit}] "
                          "(disable the cache before activating adapters in the cached layers)")
    if zero_dropout is None:
        frozen = [injection.get_module(adapted.model, adapted.layers[i].path) for i in range(layer)]
        frozen = [m.base_layer if isinstance(m, injection.AdaptedModule) else m for m in frozen]
        zero_dropout = _zero_dropout(adapted.config, frozen)
    if adapted.backbone_dropout and not zero_dropout:
        raise ConfigError("cache_frozen_layers: the backbone runs with dropout in training, so the frozen layers "
                          "are not deterministic; set backbone_dropout false")


def enable(adapted: AdaptedModel, layer: int | None = None) -> FrozenLayerCache:
    """Attach a cache for layers ``0..layer-1`` (default: all layers below :func:`first_adapted_layer`).

    Raises ConfigError naming ``cache_frozen_layers`` unless the model is an encoder-only one, the train
    mode is ``"adapters"``, the backbone runs without dropout in training (``backbone_dropout`` False,
    or every dropout probability of the frozen part is 0) and at least one layer is frozen. A cache
    already enabled is replaced (its entries dropped).
    """
    if layer is None:
        _check_supported(adapted)
        layer = first_adapted_layer(adapted)
    check_preconditions(adapted, layer)
    disable(adapted)
    cache = FrozenLayerCache(adapted, layer)
    model = adapted.model
    sites: list[tuple[str, AdapterModule]] = [(model.base_model_prefix, _Capture(cache))]
    sites += [(adapted.layers[i].path, _Skip(cache)) for i in range(layer - 1)]
    sites.append((adapted.layers[layer - 1].path, _Record(cache)))
    adapted.add_system_attachment(cache, sites)
    return cache


def get_cache(adapted: AdaptedModel) -> FrozenLayerCache | None:
    """The enabled cache of ``adapted``, or None."""
    cache = adapted.system_attachments.get(CACHE_NAME)
    return cache if isinstance(cache, FrozenLayerCache) else None


def disable(adapted: AdaptedModel) -> FrozenLayerCache | None:
    """Detach the cache's modules (the model's original module objects are back) and return the cache."""
    cache = get_cache(adapted)
    adapted.remove_system_attachment(CACHE_NAME)
    return cache
