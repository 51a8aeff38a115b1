"""Import bottleneck adapters saved by AdapterHub (``adapters`` / ``adapter-transformers``).

An AdapterHub directory holds ``adapter_config.json`` and ``pytorch_adapter.bin`` (a torch pickle, read
only with ``weights_only=True``) or ``adapter.safetensors``. Pfeiffer-style adapters (``original_ln_before``)
become ``PfeifferConfig(original_ln=True)``, Houlsby-style ones ``HoulsbyConfig``; see docs/adapterhub.md.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..architectures import LINEAR_SITES
from ..config import MethodConfig, read_json
from ..errors import AdapterLoadError, ConfigError
from ..io import add_with_weights, check_weights, safe_torch_load
from ..methods.bottleneck import HoulsbyConfig, ParallelConfig, PfeifferConfig
from ..methods.lora import LoRAConfig
from ..methods.prefix import PrefixTuningConfig
from ..model import AdaptedModel
from .common import check_head_tensors, copy_head_tensors

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


def _rekey(raw: dict[str, torch.Tensor], weights: Path, pattern: re.Pattern[str], keep: Callable[[re.Match], bool],
           new_key: Callable[[re.Match], str], unexpected: str, empty: str,
           ) -> tuple[dict[str, torch.Tensor], set[str], set[int]]:
    """AdapterHub tensors under our keys, the adapter names and the layers they cover. ``pattern`` captures (layer, module,
    adapter name, ...); a key it does not match or ``keep`` rejects, several adapter names, or no tensor at
    all raise an error naming ``weights``."""
    state: dict[str, torch.Tensor] = {}
    names: set[str] = set()
    layers: set[int] = set()
    for key, tensor in raw.items():
        match = pattern.match(key)
        if match is None or not keep(match):
            raise _fail(weights, key, unexpected)
        names.add(match[3])
        layers.add(int(match[1]))
        state[new_key(match)] = tensor
    if len(names) > 1:
        raise _fail(weights, "adapters", f"holds several adapters {sorted(names)}; expected one")
    if not state:
        raise _fail(weights, "tensors", empty)
    return state, names, layers


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


def read_adapterhub_tensors(directory: Path, st_name: str = SAFETENSORS_NAME,
                            bin_name: str = BIN_NAME) -> tuple[dict[str, torch.Tensor], Path]:
    """The raw tensors of an AdapterHub directory: ``st_name`` (safetensors) if present, else ``bin_name``
    (a torch pickle, loaded with ``weights_only``)."""
    st, binary = directory / st_name, directory / bin_name
    if st.is_file():
        from ..io import read_tensors

        return read_tensors(st), st
    if not binary.is_file():
        raise AdapterLoadError(f"{directory}: weights: neither {bin_name} nor {st_name} found")
    data = safe_torch_load(binary)  # weights only: a pickle that needs more than tensors is refused
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
        raise AdapterLoadError(f"{binary}: expected a mapping of names to tensors")
    return data, binary


def _bottleneck(cfg: dict[str, Any], raw: dict[str, torch.Tensor], path: Path, weights: Path,
                hidden: int) -> tuple[MethodConfig, dict[str, torch.Tensor], set[str], list[int]]:
    """Bottleneck adapters (seq_bn, double_seq_bn, par_bn and their variants)."""
    cls, kwargs, leave_out = _method_config(cfg, path)
    config_sites = {"attention.output": "attn_output", "output": "ffn_output"}
    if kwargs.get("original_ln"):
        config_sites = {"attention.output": "attn_block", "output": "ffn_block"}
    if cls is ParallelConfig:
        config_sites = {"output": "ffn_block"}
    wanted = {"output"} | ({"attention.output"} if cls is HoulsbyConfig else set())
    state, names, layers = _rekey(
        raw, weights, _KEY, lambda m: m.group(2) in wanted,
        lambda m: f"layers.{m[1]}.{config_sites[m[2]]}.bottleneck.{_PARAMS[m[4]]}.{m[5]}",
        "not a bottleneck adapter weight of this config (expected e.g. "
        "'bert.encoder.layer.0.output.adapters.NAME.adapter_down.0.weight')", "no adapter weights found")
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
    return config, state, names, leave_out


_LORA_KEY = re.compile(
    r"^(?:.*\.)?encoder\.layer\.(\d+)\.(attention\.self\.query|attention\.self\.key|attention\.self\.value|"
    r"intermediate\.dense|output\.dense)\.loras\.([^.]+)\.(lora_A|lora_B)$"
)
_LORA_SITES = {"attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
               "intermediate.dense": "ffn_in", "output.dense": "ffn_out"}
_ATTN_MATRICES = {"q": "query", "k": "key", "v": "value"}


def _leave_out(cfg: dict[str, Any], path: Path) -> list[int]:
    leave_out = cfg.get("leave_out") or []
    if not isinstance(leave_out, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in leave_out):
        raise _fail(path, "config.leave_out", f"expected a list of layer indices, got {leave_out!r}")
    return leave_out


def _number(cfg: dict[str, Any], key: str, path: Path, *, integer: bool = False, positive: bool = True) -> Any:
    value = cfg.get(key)
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or (value <= 0 if positive else value < 0):
        raise _fail(path, f"config.{key}", f"expected a {'positive ' if positive else ''}{'integer' if integer else 'number'}, "
                    f"got {value!r}")
    return value


def _lora(cfg: dict[str, Any], raw: dict[str, torch.Tensor], path: Path,
          weights: Path) -> tuple[MethodConfig, dict[str, torch.Tensor], set[str], list[int]]:
    """AdapterHub LoRA (``architecture: lora``, ``composition_mode: add``) as :class:`LoRAConfig`."""
    refusals = {"use_gating": "gated LoRA", "use_dora": "DoRA", "vera_d": "VeRA", "vera_b": "VeRA"}
    for key, what in refusals.items():
        if cfg.get(key) not in (None, False):
            raise _fail(path, f"config.{key}", f"{cfg[key]!r}: {what} is not supported")
    if cfg.get("composition_mode", "add") != "add":
        raise _fail(path, "config.composition_mode", f"{cfg['composition_mode']!r} is not supported; only 'add'")
    matrices = cfg.get("attn_matrices") or []
    bad = [m for m in matrices if m not in _ATTN_MATRICES]
    if bad:
        raise _fail(path, "config.attn_matrices", f"{bad} not supported; use q, k, v")
    targets = [_ATTN_MATRICES[m] for m in matrices] if cfg.get("selfattn_lora", True) else []
    targets += ["ffn_in"] if cfg.get("intermediate_lora") else []
    targets += ["ffn_out"] if cfg.get("output_lora") else []
    if not targets:
        raise _fail(path, "config.selfattn_lora", "no matrix is adapted (selfattn_lora, intermediate_lora, output_lora)")
    r, alpha = _number(cfg, "r", path, integer=True), _number(cfg, "alpha", path)
    dropout = _number(cfg, "dropout", path, positive=False) if cfg.get("dropout") else 0.0
    leave_out = _leave_out(cfg, path)
    state, names, layers = _rekey(
        raw, weights, _LORA_KEY, lambda m: _LORA_SITES[m.group(2)] in targets,
        lambda m: f"layers.{m[1]}.{_LORA_SITES[m[2]]}.{m[4]}",
        "not a LoRA weight of this config (expected e.g. "
        "'bert.encoder.layer.0.attention.self.query.loras.NAME.lora_A')", "no LoRA weights found")
    try:
        config = LoRAConfig(r=r, alpha=float(alpha), dropout=float(dropout),
                            targets=tuple(s for s in LINEAR_SITES if s in targets),
                            layers=tuple(sorted(layers)) if leave_out else None)
    except ConfigError as exc:
        raise AdapterLoadError(f"{path}: config: {exc}") from None
    return config, state, names, leave_out


_PREFIX_KEY = re.compile(r"^(?:.*\.)?prefix_tuning\.prefix_tunings\.([^.]+)\.([^.]+)\.(.+)$")
_POOL_KEY = re.compile(r"^(?:.*\.)?encoder\.layer\.\d+\.attention\.self\.prefix_tuning\.pool\.prefix_tunings\.(.+)$")
_PREFIX_PARAMS = {"wte.weight": "embedding.weight", "control_trans.0.weight": "down.weight",
                  "control_trans.0.bias": "down.bias", "control_trans.2.weight": "up.weight",
                  "control_trans.2.bias": "up.bias"}


def _prefix(cfg: dict[str, Any], raw: dict[str, torch.Tensor], path: Path, weights: Path,
            hidden: int) -> tuple[MethodConfig, dict[str, torch.Tensor], set[str], list[int]]:
    """AdapterHub prefix tuning (encoder self-attention) as :class:`PrefixTuningConfig`.

    The MLP form maps one to one onto adapterkit's shared prefix encoder (``shared.*``); the flat form
    becomes per-layer keys/values ``layers.{i}.attention.kv`` of shape (prefix_length, 2, hidden), which
    :func:`load_adapterhub_adapter` reshapes to the model's (prefix_length, 2, heads, head_dim).
    """
    if cfg.get("use_gating"):
        raise _fail(path, "config.use_gating", "gated prefixes are not supported")
    if _leave_out(cfg, path):
        raise _fail(path, "config.leave_out", "prefix tuning with left-out layers is not supported")
    if cfg.get("encoder_prefix") is False:
        raise _fail(path, "config.encoder_prefix", "false (no encoder prefix) is not supported")
    flat = bool(cfg.get("flat"))
    if not flat and str(cfg.get("non_linearity", "tanh")).lower() != "tanh":
        raise _fail(path, "config.non_linearity", f"{cfg['non_linearity']!r}: the prefix MLP supports tanh only")
    length = _number(cfg, "prefix_length", path, integer=True)
    bottleneck = _number(cfg, "bottleneck_size", path, integer=True) if not flat else 512
    dropout = float(cfg.get("dropout") or 0.0)
    canonical: dict[str, torch.Tensor] = {}
    pooled: dict[str, torch.Tensor] = {}
    names: set[str] = set()
    for key, tensor in raw.items():
        pool = _POOL_KEY.match(key)
        if pool is not None:  # each layer's copy of the shared module (the same tensors)
            pooled[pool.group(1)] = tensor
            continue
        match = _PREFIX_KEY.match(key)
        if match is None:
            raise _fail(weights, key, "not a prefix-tuning weight (expected e.g. "
                        "'bert.prefix_tuning.prefix_tunings.NAME.self_prefix.wte.weight')")
        adapter, location, param = match.groups()
        if location != "self_prefix":
            raise _fail(weights, key, f"prefix location {location!r} is not supported; only self_prefix")
        names.add(adapter)
        canonical[param] = tensor
    for key, tensor in pooled.items():
        adapter, location, param = key.split(".", 2)
        if param not in canonical or not torch.equal(canonical[param], tensor):
            raise _fail(weights, key, "per-layer prefix weights differ from the shared ones")
    if len(names) > 1:
        raise _fail(weights, "adapters", f"holds several adapters {sorted(names)}; expected one")
    expected = {"control_trans"} if flat else set(_PREFIX_PARAMS)
    if set(canonical) != expected:
        raise _fail(weights, "tensors", f"prefix weights {sorted(canonical)}, expected {sorted(expected)} "
                    f"(flat: {flat})")
    if flat:
        total = canonical["control_trans"].numel()
        num_layers = total // (length * 2 * hidden)
        if num_layers * length * 2 * hidden != total:
            raise _fail(weights, "control_trans", f"{total} values do not divide into prefix_length {length} x 2 x "
                        f"hidden_size {hidden} per layer")
        kv = canonical["control_trans"].view(length, num_layers, 2, hidden)
        state = {f"layers.{i}.attention.kv": kv[:, i].clone() for i in range(num_layers)}
    else:
        state = {f"shared.{_PREFIX_PARAMS[k]}": v for k, v in canonical.items()}
        if state["shared.embedding.weight"].shape != (length, hidden):
            raise _fail(weights, "wte.weight", f"shape {tuple(state['shared.embedding.weight'].shape)}, expected "
                        f"({length}, {hidden})")
        bottleneck = state["shared.down.weight"].shape[0]
    config = PrefixTuningConfig(prefix_length=length, reparameterize=not flat, bottleneck_size=bottleneck,
                                dropout=dropout)
    return config, state, names, []


def _prefix_layers(config: MethodConfig, state: dict[str, torch.Tensor], hidden: int) -> int | None:
    """Number of layers an imported prefix adapter covers (None for other methods)."""
    if not isinstance(config, PrefixTuningConfig):
        return None
    if config.reparameterize:
        return state["shared.up.weight"].shape[0] // (2 * hidden)
    return len(state)


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
    architecture = cfg.get("architecture")
    raw, weights = read_adapterhub_tensors(directory)
    check_weights(weights, raw)
    if architecture in (None, "bottleneck"):
        config, state, names, leave_out = _bottleneck(cfg, raw, path, weights, hidden)
    elif architecture == "lora":
        config, state, names, leave_out = _lora(cfg, raw, path, weights)
    elif architecture == "prefix_tuning":
        config, state, names, leave_out = _prefix(cfg, raw, path, weights, hidden)
    else:
        raise _fail(path, "config.architecture", f"{architecture!r} is not supported; supported: bottleneck "
                    "adapters, lora, prefix_tuning")
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


HEAD_CONFIG_NAME = "head_config.json"
HEAD_SAFETENSORS_NAME = "model_head.safetensors"
HEAD_BIN_NAME = "pytorch_model_head.bin"
_HEAD_KEY = re.compile(r"^heads\.([^.]+)\.(\d+)\.(weight|bias)$")


def _head_modules(model: AdaptedModel) -> dict[str, str]:
    """AdapterHub classification-head layer index -> module of ``model``'s Hugging Face head."""
    cls = type(model.model).__name__
    if not cls.endswith("ForSequenceClassification"):
        raise ConfigError(f"the model ({cls}) has no sequence-classification head")
    if model.spec.model_type == "bert":
        return {"1": f"{model.model.base_model_prefix}.pooler.dense", "4": "classifier"}
    return {"1": "classifier.dense", "4": "classifier.out_proj"}  # RoBERTa, XLM-R


def read_adapterhub_head(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path] | None:
    """(head config, raw tensors, weights file) of an AdapterHub head saved with the adapter, or None.

    Only the classification head that matches Hugging Face's (``layers: 2``, ``tanh``, no pooler, biases:
    dense + tanh on the first token, then the output layer) is accepted; others are refused naming the field.
    """
    directory = Path(directory)
    path = directory / HEAD_CONFIG_NAME
    if not path.is_file():
        return None
    try:
        meta = read_json(path)
    except ConfigError as exc:
        raise AdapterLoadError(str(exc)) from None
    cfg = meta.get("config")
    if not isinstance(cfg, dict):
        raise _fail(path, "config", "missing or not an object")
    wanted = {"head_type": "classification", "layers": 2, "activation_function": "tanh", "use_pooler": False,
              "bias": True}
    for key, value in wanted.items():
        if cfg.get(key, value) != value:
            raise _fail(path, f"config.{key}", f"{cfg.get(key)!r}: only {key}={value!r} heads map onto a Hugging "
                        "Face sequence-classification head")
    num_labels = cfg.get("num_labels")
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
        raise _fail(path, "config.num_labels", f"expected a positive integer, got {num_labels!r}")
    label2id = cfg.get("label2id")
    if label2id is not None and (not isinstance(label2id, dict) or sorted(label2id.values()) != list(range(num_labels))):
        raise _fail(path, "config.label2id", f"expected a mapping of labels to 0..{num_labels - 1}, got {label2id!r}")
    raw, weights = read_adapterhub_tensors(directory, HEAD_SAFETENSORS_NAME, HEAD_BIN_NAME)
    check_weights(weights, raw)
    return cfg, raw, weights


def _head_state(model: AdaptedModel, head: tuple[dict[str, Any], dict[str, torch.Tensor], Path],
                source: Path) -> dict[str, torch.Tensor]:
    cfg, raw, weights = head
    try:
        modules = _head_modules(model)
    except ConfigError as exc:
        raise _fail(source.parent / HEAD_CONFIG_NAME, "head", f"{exc}; load without the head (load_head=False)") from None
    state = {}
    for key, tensor in raw.items():
        match = _HEAD_KEY.match(key)
        if match is None or match.group(2) not in modules:
            raise _fail(weights, key, "not a weight of a 2-layer classification head (heads.NAME.1.*, heads.NAME.4.*)")
        state[f"{modules[match.group(2)]}.{match.group(3)}"] = tensor
    check_head_tensors(model, state, weights)
    return state


def load_adapterhub_adapter(adapted: AdaptedModel, directory: str | Path, name: str | None = None, *,
                            activate: bool = True, load_head: bool = True) -> str:
    """Import an AdapterHub adapter onto ``adapted`` (activated after the active ones); returns its name.

    Model type, hidden size and ``leave_out`` are checked against the model first; a failed load removes
    the half-added adapter again. With ``load_head`` a classification head saved beside the adapter
    (``head_config.json``) is loaded into the model's head (its number of labels must match). ``directory``
    may be a Hub repo id ``owner/name`` (see :mod:`adapterkit.interop.hub`).
    """
    from .hub import resolve_adapter_dir

    directory = resolve_adapter_dir(directory)
    config, state, info = import_adapterhub(directory, name=name)
    source = directory / CONFIG_NAME
    mine = adapted.base_model_info()
    if info["model_type"] != mine["model_type"]:
        raise _fail(source, "model_type", f"adapter is for {info['model_type']!r}, this model is {mine['model_type']!r}")
    if info["hidden_size"] != mine["hidden_size"]:
        raise _fail(source, "hidden_size", f"adapter has {info['hidden_size']}, this model has {mine['hidden_size']}")
    prefix_layers = _prefix_layers(config, state, info["hidden_size"])
    if prefix_layers is not None:
        if prefix_layers != mine["num_layers"]:
            raise _fail(source, "config.prefix_length", f"the prefix covers {prefix_layers} layers, the model has "
                        f"{mine['num_layers']}")
        if not config.reparameterize:
            ctx = adapted.build_context()
            state = {k: v.reshape(v.shape[0], 2, ctx.num_key_value_heads, ctx.head_dim) for k, v in state.items()}
    else:
        layers = {int(k.split(".")[1]) for k in state}
        expected = set(range(mine["num_layers"])) - set(info["leave_out"])
        if layers != expected:
            raise _fail(source, "config.leave_out", f"weights cover layers {sorted(layers)}, but the model's "
                        f"{mine['num_layers']} layers minus leave_out {info['leave_out']} are {sorted(expected)}")
    head = read_adapterhub_head(directory) if load_head else None
    head_state = _head_state(adapted, head, source) if head is not None else {}
    try:
        name = add_with_weights(adapted, info["name"], config, state, info["weights"], activate=activate)
    except ConfigError as exc:  # e.g. a name already taken, or a model without the block the placement needs
        raise AdapterLoadError(f"{source}: {exc}") from None
    copy_head_tensors(adapted, head_state)
    return name
