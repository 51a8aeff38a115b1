"""Import bottleneck adapters saved by AdapterHub (``adapters`` / ``adapter-transformers``).

An AdapterHub directory holds ``adapter_config.json`` and ``pytorch_adapter.bin`` (a torch pickle, read
only with ``weights_only=True``) or ``adapter.safetensors``. Pfeiffer-style adapters (``original_ln_before``)
become ``PfeifferConfig(original_ln=True)``, Houlsby-style ones ``HoulsbyConfig``; see docs/adapterhub.md.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..config import MethodConfig, read_json
from ..errors import AdapterLoadError, ConfigError
from ..io import add_with_weights
from ..methods.bottleneck import HoulsbyConfig, ParallelConfig, PfeifferConfig
from ..model import AdaptedModel

CONFIG_NAME = "adapter_config.json"
BIN_NAME = "pytorch_adapter.bin"
SAFETENSORS_NAME = "adapter.safetensors"
MODEL_TYPES = ("bert", "roberta", "xlm-roberta")
ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "swish": "swish", "silu": "swish", "tanh": "tanh", "linear": "identity"}
REQUIRED = ("mh_adapter", "output_adapter", "reduction_factor", "non_linearity", "original_ln_before",
            "original_ln_after", "residual_before_ln")
_KEY = re.compile(
    r"^(?:.*\.)?encoder\.layer\.(\d+)\.(attention\.output|output)\.adapters\.([^.]+)\."
    r"(adapter_down\.0|adapter_up)\.(weight|bias)$"
)
_PARAMS = {"adapter_down.0": "down", "adapter_up": "up"}


def _fail(path: Path, field: str, message: str) -> AdapterLoadError:
    return AdapterLoadError(f"{path}: {field}: {message}")


def _reduction_factor(value: Any, path: Path) -> float:
    if isinstance(value, dict):
        values = set(value.values())
        if len(values) != 1:
            raise _fail(path, "config.reduction_factor", f"per-layer reduction factors {value} differ; not supported")
        value = values.pop()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise _fail(path, "config.reduction_factor", f"expected a positive number, got {value!r}")
    return float(value)


def _method_config(cfg: dict[str, Any], path: Path) -> tuple[type[MethodConfig], dict[str, Any], list[int]]:
    """The adapterkit config class, its keyword arguments and ``leave_out`` from AdapterHub's ``config``."""
    for key in REQUIRED:
        if key not in cfg:
            raise _fail(path, f"config.{key}", "missing")
    architecture = cfg.get("architecture")
    if architecture not in (None, "bottleneck"):
        raise _fail(path, "config.architecture", f"{architecture!r} is not a bottleneck adapter; not supported")
    rejects = {
        "phm_layer": "PHM (compacter) layers", "ln_before": "an adapter LayerNorm before the bottleneck",
        "ln_after": "an adapter LayerNorm after the bottleneck", "use_gating": "gated adapters",
        "cross_adapter": "cross-attention adapters",
    }
    for key, what in rejects.items():
        if cfg.get(key):
            raise _fail(path, f"config.{key}", f"{what} are not supported")
    if cfg.get("inv_adapter"):
        raise _fail(path, "config.inv_adapter", "invertible adapters are not supported")
    if cfg["original_ln_after"] is not True:
        raise _fail(path, "config.original_ln_after", "only true is supported")
    if cfg["residual_before_ln"] is not True:
        raise _fail(path, "config.residual_before_ln", f"only true is supported, got {cfg['residual_before_ln']!r}")
    scaling = cfg.get("scaling", 1.0)
    if isinstance(scaling, bool) or not isinstance(scaling, (int, float)):
        raise _fail(path, "config.scaling", f"{scaling!r} (learned scaling) is not supported; only numbers")
    act = str(cfg["non_linearity"]).lower()
    if act not in ACTIVATIONS:
        raise _fail(path, "config.non_linearity", f"unknown {cfg['non_linearity']!r}; supported: {sorted(ACTIVATIONS)}")
    leave_out = cfg.get("leave_out") or []
    if not isinstance(leave_out, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in leave_out):
        raise _fail(path, "config.leave_out", f"expected a list of layer indices, got {leave_out!r}")
    mh, out, before = cfg["mh_adapter"], cfg["output_adapter"], cfg["original_ln_before"]
    kwargs: dict[str, Any] = {
        "reduction_factor": _reduction_factor(cfg["reduction_factor"], path),
        "activation": ACTIVATIONS[act],
        "scaling": float(scaling),
        "init": "identity",
    }
    if cfg.get("is_parallel"):
        if mh or not out or before:
            raise _fail(path, "config.is_parallel", "parallel adapters only with output_adapter true, "
                        "mh_adapter false and original_ln_before false")
        return ParallelConfig, kwargs, leave_out
    if not out:
        raise _fail(path, "config.output_adapter", "adapters only after attention (mh_adapter) are not supported")
    return (HoulsbyConfig if mh else PfeifferConfig), {**kwargs, "original_ln": bool(before)}, leave_out


def read_adapterhub_tensors(directory: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The raw tensors of an AdapterHub directory (safetensors preferred; a .bin loads with ``weights_only``)."""
    st, binary = directory / SAFETENSORS_NAME, directory / BIN_NAME
    if st.is_file():
        from ..io import read_tensors

        return read_tensors(st), st
    if not binary.is_file():
        raise AdapterLoadError(f"{directory}: weights: neither {BIN_NAME} nor {SAFETENSORS_NAME} found")
    try:
        data = torch.load(binary, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt, or a pickle that needs more than tensors
        raise AdapterLoadError(f"{binary}: cannot be read as a tensor state dict ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
        raise AdapterLoadError(f"{binary}: expected a mapping of names to tensors")
    return data, binary


def import_adapterhub(directory: str | Path, *, name: str | None = None) -> tuple[MethodConfig, dict[str, torch.Tensor], dict]:
    """Read an AdapterHub bottleneck adapter: (adapterkit config, state dict in adapterkit keys, metadata).

    Metadata: ``name`` (``name`` or the saved one), ``source_name``, ``model_type``, ``hidden_size``,
    ``model_name``, ``model_class``, ``leave_out``, ``weights`` (the file read).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise AdapterLoadError(f"{directory}: not a directory")
    path = directory / CONFIG_NAME
    try:
        meta = read_json(path)
    except ConfigError as exc:
        raise AdapterLoadError(str(exc)) from None
    cfg = meta.get("config")
    if not isinstance(cfg, dict):
        raise _fail(path, "config", "missing or not an object")
    model_type = meta.get("model_type")
    if model_type not in MODEL_TYPES:
        raise _fail(path, "model_type", f"{model_type!r} is not supported; supported: {list(MODEL_TYPES)}")
    hidden = meta.get("hidden_size")
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden <= 0:
        raise _fail(path, "hidden_size", f"expected a positive integer, got {hidden!r}")
    cls, kwargs, leave_out = _method_config(cfg, path)
    raw, weights = read_adapterhub_tensors(directory)
    config_sites = {"attention.output": "attn_output", "output": "ffn_output"}
    if kwargs.get("original_ln"):
        config_sites = {"attention.output": "attn_block", "output": "ffn_block"}
    if cls is ParallelConfig:
        config_sites = {"output": "ffn_block"}
    wanted = {"output"} | ({"attention.output"} if cls is HoulsbyConfig else set())
    state: dict[str, torch.Tensor] = {}
    names: set[str] = set()
    layers: set[int] = set()
    for key, tensor in raw.items():
        match = _KEY.match(key)
        if match is None or match.group(2) not in wanted:
            raise _fail(weights, key, "not a bottleneck adapter weight of this config (expected e.g. "
                        "'bert.encoder.layer.0.output.adapters.NAME.adapter_down.0.weight')")
        layer, block, adapter, param, kind = match.groups()
        names.add(adapter)
        layers.add(int(layer))
        state[f"layers.{layer}.{config_sites[block]}.bottleneck.{_PARAMS[param]}.{kind}"] = tensor
    if len(names) > 1:
        raise _fail(weights, "adapters", f"holds several adapters {sorted(names)}; expected one")
    if not state:
        raise _fail(weights, "tensors", "no adapter weights found")
    clash = sorted(layers & set(leave_out))
    if clash:
        raise _fail(path, "config.leave_out", f"layers {clash} are left out but have weights in {weights.name}")
    config_kwargs = dict(kwargs)
    if leave_out:
        config_kwargs["layers"] = tuple(sorted(layers))
    try:
        config = cls(**config_kwargs)
    except ConfigError as exc:
        raise AdapterLoadError(f"{path}: config: {exc}") from None
    size = config.size(hidden)
    for key, tensor in state.items():
        expected = {"down.weight": (size, hidden), "down.bias": (size,), "up.weight": (hidden, size), "up.bias": (hidden,)}
        shape = expected[key.split("bottleneck.", 1)[1]]
        if tuple(tensor.shape) != shape:
            raise _fail(weights, key, f"shape {tuple(tensor.shape)}, expected {shape} (hidden_size {hidden}, "
                        f"reduction_factor {config.reduction_factor:g})")
    info = {
        "name": name or meta.get("name") or next(iter(names)),
        "source_name": meta.get("name") or next(iter(names)),
        "model_type": model_type,
        "hidden_size": hidden,
        "model_name": meta.get("model_name"),
        "model_class": meta.get("model_class"),
        "leave_out": list(leave_out),
        "weights": str(weights),
    }
    return config, state, info


def load_adapterhub_adapter(adapted: AdaptedModel, directory: str | Path, name: str | None = None, *,
                            activate: bool = True) -> str:
    """Import an AdapterHub adapter onto ``adapted`` (activated after the active ones); returns its name.

    Model type, hidden size and ``leave_out`` are checked against the model first; a failed load removes
    the half-added adapter again.
    """
    directory = Path(directory)
    config, state, info = import_adapterhub(directory, name=name)
    source = directory / CONFIG_NAME
    mine = adapted.base_model_info()
    if info["model_type"] != mine["model_type"]:
        raise _fail(source, "model_type", f"adapter is for {info['model_type']!r}, this model is {mine['model_type']!r}")
    if info["hidden_size"] != mine["hidden_size"]:
        raise _fail(source, "hidden_size", f"adapter has {info['hidden_size']}, this model has {mine['hidden_size']}")
    layers = {int(k.split(".")[1]) for k in state}
    expected = set(range(mine["num_layers"])) - set(info["leave_out"])
    if layers != expected:
        raise _fail(source, "config.leave_out", f"weights cover layers {sorted(layers)}, but the model's "
                    f"{mine['num_layers']} layers minus leave_out {info['leave_out']} are {sorted(expected)}")
    try:
        return add_with_weights(adapted, info["name"], config, state, info["weights"], activate=activate)
    except ConfigError as exc:  # e.g. a name already taken, or a model without the block the placement needs
        raise AdapterLoadError(f"{source}: {exc}") from None
