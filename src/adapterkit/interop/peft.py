"""peft LoRA adapters in and out: ``load_peft_adapter`` and ``save_peft_adapter`` (docs/format.md).

A peft directory holds ``adapter_config.json`` (``peft_type: LORA``, ``r``, ``lora_alpha``,
``target_modules``, ...) and ``adapter_model.safetensors`` with keys
``base_model.model.{module}.lora_A.weight`` / ``lora_B.weight`` and, for ``modules_to_save`` (the task
head), ``base_model.model.{module}.{param}``. LoRA maps onto :class:`~adapterkit.methods.lora.LoRAConfig`
(``use_rslora``: alpha * sqrt(r), which gives the same scale alpha / sqrt(r)); what adapterkit cannot
represent (DoRA, LoHa/LoKr/other peft types, per-module ranks, biases, ...) is refused naming the field.
peft itself is not needed at run time.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from ..architectures import LINEAR_SITES
from ..config import read_json
from ..errors import AdapterLoadError, ConfigError
from ..io import (
    add_with_weights,
    atomic_save_tensors,
    atomic_write_bytes,
    atomic_write_json,
    check_weights,
    read_tensors,
    safe_torch_load,
)
from ..methods.lora import LoRAConfig
from ..model import AdaptedModel
from .common import (
    check_head_tensors,
    copy_head_tensors,
    directory_of,
    fail,
    local_layer_index,
    plain_linear_modules,
    site_paths,
)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
BIN_NAME = "adapter_model.bin"
KEY_PREFIX = "base_model.model."
SUPPORTED = {"peft_type", "r", "lora_alpha", "target_modules", "lora_dropout", "bias", "use_rslora", "modules_to_save",
             "layers_to_transform", "layers_pattern", "exclude_modules", "fan_in_fan_out", "init_lora_weights"}
METADATA = {"task_type", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping", "peft_version",
            "megatron_core", "qalora_group_size", "ensure_weight_tying"}
"""Fields that describe the file or matter only with another (refused) field set."""
NAMED_REFUSALS = {
    "use_dora": "DoRA (weight-decomposed LoRA) has a magnitude vector adapterkit's LoRA does not",
    "rank_pattern": "per-module ranks are not supported (one r for all targets)",
    "alpha_pattern": "per-module alphas are not supported (one lora_alpha for all targets)",
    "lora_bias": "a bias on lora_B is not supported",
    "target_parameters": "LoRA on parameters (not modules) is not supported",
    "trainable_token_indices": "trainable token embeddings are not supported",
    "layer_replication": "layer replication changes the base model",
    "loftq_config": "LoftQ changes the base weights",
    "megatron_config": "Megatron parallel layers are not supported",
    "use_qalora": "QA-LoRA is not supported",
    "alora_invocation_tokens": "activated LoRA is not supported",
}
INIT_OK = (True, False, "gaussian", "eva")
"""``init_lora_weights`` values that leave the base weights as they are (others, e.g. PiSSA, change them)."""
TASK_TYPES = {"ForSequenceClassification": "SEQ_CLS", "ForQuestionAnswering": "QUESTION_ANS",
              "ForTokenClassification": "TOKEN_CLS", "ForCausalLM": "CAUSAL_LM", "ForConditionalGeneration": "SEQ_2_SEQ_LM"}


def _empty(value: Any) -> bool:
    return value is None or value is False or value == {} or value == [] or value == ""


def read_peft_config(directory: str | Path) -> dict[str, Any]:
    """``adapter_config.json`` of a peft LoRA directory, checked: refuses what adapterkit cannot represent."""
    path = directory_of(directory) / CONFIG_NAME
    try:
        cfg = read_json(path)
    except ConfigError as exc:
        raise AdapterLoadError(str(exc)) from None
    peft_type = cfg.get("peft_type")
    if peft_type != "LORA":
        raise fail(path, "peft_type", f"{peft_type!r} is not supported; only LORA (not LoHa, LoKr, IA3, prompt "
                   "methods, ...)")
    for key, value in cfg.items():
        if key in SUPPORTED or key in METADATA:
            continue
        if key in NAMED_REFUSALS and not _empty(value):
            raise fail(path, key, f"{value!r}: {NAMED_REFUSALS[key]}")
        if not _empty(value):
            raise fail(path, key, f"{value!r}: this peft option is not supported by adapterkit")
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in cfg:
            raise fail(path, key, "missing")
    r, alpha = cfg["r"], cfg["lora_alpha"]
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise fail(path, "r", f"expected a positive integer, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise fail(path, "lora_alpha", f"expected a positive number, got {alpha!r}")
    if cfg.get("bias", "none") != "none":
        raise fail(path, "bias", f"{cfg['bias']!r}: trained base-model biases are not supported; only 'none'")
    if cfg.get("fan_in_fan_out"):
        raise fail(path, "fan_in_fan_out", "Conv1D (GPT-2 style) weights are not supported")
    if cfg.get("init_lora_weights", True) not in INIT_OK:
        raise fail(path, "init_lora_weights", f"{cfg['init_lora_weights']!r} changes the base weights; "
                   f"supported: {list(INIT_OK)}")
    return cfg


def _matches(target: Any, name: str, linear_names: list[str]) -> bool:
    """peft's rule: a string is a regular expression over the whole name, a list matches names or suffixes."""
    if isinstance(target, str):
        if target == "all-linear":
            return True
        return re.fullmatch(target, name) is not None
    return name in target or any(name.endswith(f".{t}") for t in target)


def _head_modules(model: AdaptedModel) -> set[str]:
    return {k.rsplit(".", 1)[0] for k in model.head_parameters()}


def resolve_targets(model: AdaptedModel, cfg: dict[str, Any], source: object) -> tuple[tuple[str, ...], tuple[int, ...] | None]:
    """(targets as adapterkit sites, layers or None for all) of a peft LoRA config on ``model``."""
    linear = plain_linear_modules(model)
    head = _head_modules(model)
    sites = site_paths(model, LINEAR_SITES)
    target, exclude = cfg["target_modules"], cfg.get("exclude_modules")
    if not isinstance(target, (str, list)) or (isinstance(target, list) and not all(isinstance(t, str) for t in target)):
        raise fail(source, "target_modules", f"expected a list of names or a regular expression, got {target!r}")
    layers_to_transform = cfg.get("layers_to_transform")
    if isinstance(layers_to_transform, int) and not isinstance(layers_to_transform, bool):
        layers_to_transform = [layers_to_transform]
    chosen: dict[int, set[str]] = {}
    for name in linear:
        if not _matches(target, name, list(linear)):
            continue
        if exclude and _matches(exclude, name, list(linear)):
            continue
        if target == "all-linear" and name in head:
            continue
        if name not in sites:
            raise fail(source, "target_modules", f"{target!r} selects {name!r}, which adapterkit's LoRA cannot adapt "
                       f"(it adapts {list(LINEAR_SITES)} inside the {model.spec.model_type} layers)")
        layer, site = sites[name]
        if layers_to_transform is not None and isinstance(target, list):
            if _peft_layer_index(name, cfg.get("layers_pattern")) not in layers_to_transform:
                continue
        chosen.setdefault(layer, set()).add(site)
    if not chosen:
        raise fail(source, "target_modules", f"{target!r} selects no module of this {type(model.model).__name__}")
    site_sets = {frozenset(s) for s in chosen.values()}
    if len(site_sets) > 1:
        raise fail(source, "target_modules", f"adapts different projections in different layers "
                   f"({ {i: sorted(s) for i, s in sorted(chosen.items())} }); adapterkit's LoRA needs the same ones")
    only = site_sets.pop()
    targets = tuple(s for s in LINEAR_SITES if s in only)
    layers = tuple(sorted(chosen))
    return targets, (None if layers == tuple(range(len(model.layers))) else layers)


def read_peft_tensors(directory: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The tensors of ``adapter_model.safetensors`` (or ``adapter_model.bin``, loaded with ``weights_only``)."""
    st, binary = directory / WEIGHTS_NAME, directory / BIN_NAME
    if st.is_file() or not binary.is_file():
        return read_tensors(st), st
    data = safe_torch_load(binary)  # weights only: a pickle that needs more than tensors is refused
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
        raise AdapterLoadError(f"{binary}: expected a mapping of names to tensors")
    return data, binary


def import_peft(model: AdaptedModel, directory: str | Path) -> tuple[LoRAConfig, dict[str, torch.Tensor],
                                                                    dict[str, torch.Tensor], dict[str, Any]]:
    """Read a peft LoRA directory for ``model``: (config, adapter state, head state, peft config)."""
    directory = directory_of(directory)
    source = directory / CONFIG_NAME
    cfg = read_peft_config(directory)
    targets, layers = resolve_targets(model, cfg, source)
    r, alpha = cfg["r"], float(cfg["lora_alpha"])
    if cfg.get("use_rslora"):
        alpha = alpha * math.sqrt(r)  # rsLoRA scales by alpha / sqrt(r) = (alpha sqrt(r)) / r
    dropout = float(cfg.get("lora_dropout") or 0.0)
    try:
        config = LoRAConfig(r=r, alpha=alpha, dropout=dropout, targets=targets, layers=layers)
    except ConfigError as exc:
        raise AdapterLoadError(f"{source}: {exc}") from None
    raw, weights = read_peft_tensors(directory)
    check_weights(weights, raw)
    sites = site_paths(model, targets)
    prefix = model.model.base_model_prefix
    head_params = model.head_parameters()
    save = cfg.get("modules_to_save") or []
    state: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        name = key[len(KEY_PREFIX):] if key.startswith(KEY_PREFIX) else key
        match = re.fullmatch(r"(.+)\.(lora_[AB])\.weight", name)
        if match:
            module = match.group(1)
            if module not in sites and f"{prefix}.{module}" in sites:
                module = f"{prefix}.{module}"
            if module not in sites:
                raise fail(weights, key, "a LoRA weight for a module the config does not target in this model")
            layer, site = sites[module]
            state[f"layers.{layer}.{site}.{match.group(2)}"] = tensor
            continue
        plain = name.replace(".modules_to_save.default.", ".")
        if plain not in head_params and f"{prefix}.{plain}" in head_params:
            plain = f"{prefix}.{plain}"
        if not any(plain == m or plain.startswith(f"{m}.") or f".{m}." in f".{plain}" for m in save):
            raise fail(weights, key, "neither a LoRA weight (lora_A/lora_B) nor in modules_to_save "
                       "(lora_embedding_*, lora_magnitude_vector and other peft extras are not supported)")
        head[plain] = tensor
    if not state:
        raise fail(weights, "tensors", "no LoRA weights found")
    check_head_tensors(model, head, weights)
    return config, state, head, cfg


def load_peft_adapter(model: AdaptedModel, directory: str | Path, name: str | None = None, *,
                      activate: bool = True, load_head: bool = True) -> str:
    """Add a peft LoRA adapter (and its ``modules_to_save`` head, unless ``load_head`` is false) to ``model``.

    The adapter is called ``name`` (default ``"default"``, peft's name); returns it. ``directory`` may be a
    Hub repo id ``owner/name`` (see :mod:`adapterkit.interop.hub`). A failure leaves the model as it was.
    """
    from .hub import resolve_adapter_dir

    directory = directory_of(resolve_adapter_dir(directory))
    config, state, head, _ = import_peft(model, directory)
    name = name or "default"
    try:
        add_with_weights(model, name, config, state, directory / WEIGHTS_NAME, activate=activate)
    except ConfigError as exc:
        raise AdapterLoadError(f"{directory / CONFIG_NAME}: {exc}") from None
    if load_head and head:
        copy_head_tensors(model, head)
    return name


# --- export ---------------------------------------------------------------------------------------


def _peft_layer_index(name: str, pattern: str | list[str] | None = None) -> int | None:
    """The layer number peft reads from a module name for ``layers_to_transform`` (``layers_pattern``: the
    name of the layer list, e.g. ``layer``)."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern or [])
    regex = rf".*\.(?:{'|'.join(re.escape(p) for p in patterns)})\.(\d+)\." if patterns else r".*\.[^.]*\.(\d+)\."
    match = re.match(regex, name)
    return int(match.group(1)) if match else None


def _target_modules(model: AdaptedModel, config: LoRAConfig) -> tuple[list[str] | str, list[int] | None]:
    """peft ``target_modules`` and ``layers_to_transform``: short names (``["query", "value"]``) when peft's
    matching rule selects exactly our modules with them, else a regular expression of the module names."""
    layers = list(config.layers) if config.layers is not None else list(range(len(model.layers)))
    wanted = {model.site_path(i, s) for i in layers for s in config.targets}
    short = sorted({model.site_path(i, s).rsplit(".", 1)[1] for i in layers for s in config.targets})
    selected = {n for n in plain_linear_modules(model) if any(n.endswith(f".{t}") for t in short)}
    to_transform = None
    if config.layers is not None:
        to_transform = sorted({local_layer_index(model, i) for i in layers})
        selected = {n for n in selected if _peft_layer_index(n) in to_transform}
    if selected == wanted:
        return short, to_transform
    return "|".join(re.escape(n) for n in sorted(wanted)), None


def peft_config_dict(model: AdaptedModel, name: str, *, include_head: bool = True) -> dict[str, Any]:
    """The peft ``adapter_config.json`` of LoRA adapter ``name``."""
    config = model.adapter_configs[name]
    if not isinstance(config, LoRAConfig):
        raise ConfigError(f"adapter {name!r}: method {config.method!r} has no peft equivalent; only lora exports to peft")
    targets, layers = _target_modules(model, config)
    cls = type(model.model).__name__
    task_type = next((t for suffix, t in TASK_TYPES.items() if cls.endswith(suffix)), None)
    return {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": model.base_model_info()["name_or_path"] or None,
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": targets,
        "layers_to_transform": layers,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "modules_to_save": _modules_to_save(model) if include_head else None,
        "inference_mode": True,
    }


def _modules_to_save(model: AdaptedModel) -> list[str] | None:
    """Modules holding the head: top-level ones outside the backbone (``classifier``) and backbone ones
    (``bert.pooler``)."""
    prefix = model.model.base_model_prefix + "."
    out = set()
    for key in model.head_parameters():
        parts = key.split(".")
        out.add(".".join(parts[:2]) if key.startswith(prefix) else parts[0])
    return sorted(out) or None


def save_peft_adapter(model: AdaptedModel, name: str, directory: str | Path, *, include_head: bool = True) -> Path:
    """Write LoRA adapter ``name`` as a peft directory that ``peft.PeftModel.from_pretrained(base, directory)``
    loads; with ``include_head`` the task head goes in as ``modules_to_save``."""
    directory = Path(directory)
    meta = peft_config_dict(model, name, include_head=include_head)
    tensors: dict[str, torch.Tensor] = {}
    for key, tensor in model.adapter_state_dict(name).items():
        _, layer, site, param = key.split(".")
        tensors[f"{KEY_PREFIX}{model.site_path(int(layer), site)}.{param}.weight"] = tensor
    if include_head:
        tensors.update({f"{KEY_PREFIX}{k}": v for k, v in model.head_state_dict().items()})
    atomic_save_tensors(directory / WEIGHTS_NAME, tensors, {"format": "pt"})
    atomic_write_json(directory / CONFIG_NAME, meta)
    from .card import CARD_NAME, adapter_card

    cls = type(model.model).__name__
    card_meta = {"name": name, "config": model.adapter_configs[name].to_dict(), "base_model": model.base_model_info(),
                 "head": {"model_class": cls} if include_head else {}}
    counts = model.count_parameters()
    card = adapter_card(card_meta, adapter_parameters=counts[f"adapter:{name}"],
                        head_parameters=counts["head"] if include_head else None, library="peft")
    atomic_write_bytes(directory / CARD_NAME, card.encode("utf-8"))
    return directory
