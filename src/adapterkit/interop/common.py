"""Helpers shared by the importers and exporters: head tensors, module names, failure messages."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import AdapterLoadError
from ..model import AdaptedModel


def fail(path: object, field: str, message: str) -> AdapterLoadError:
    """An AdapterLoadError ``'{path}: {field}: {message}'``."""
    return AdapterLoadError(f"{path}: {field}: {message}")


def check_head_tensors(model: AdaptedModel, tensors: dict[str, torch.Tensor], source: object) -> None:
    """Fail naming the key unless every tensor is a head parameter of ``model`` with the same shape."""
    params = model.head_parameters()
    for key, tensor in tensors.items():
        if key not in params:
            raise fail(source, key, f"no such head parameter in {type(model.model).__name__} "
                       f"(its head: {sorted(params)})")
        if tuple(params[key].shape) != tuple(tensor.shape):
            raise fail(source, key, f"shape {tuple(tensor.shape)} does not match the model's "
                       f"{tuple(params[key].shape)} (a different label set?)")


def copy_head_tensors(model: AdaptedModel, tensors: dict[str, torch.Tensor]) -> None:
    """Copy checked head tensors (see :func:`check_head_tensors`) into ``model``."""
    params = model.head_parameters()
    with torch.no_grad():
        for key, tensor in tensors.items():
            params[key].copy_(tensor.to(params[key].dtype))


def plain_linear_modules(model: AdaptedModel) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` of the Hugging Face model by its plain name (wrappers and adapters left out)."""
    out = {}
    for name, module in model.model.named_modules():
        if ".adapters." in f".{name}." or not isinstance(module, nn.Linear):
            continue
        out[name.replace(".base_layer", "")] = module
    return out


def site_paths(model: AdaptedModel, sites: tuple[str, ...]) -> dict[str, tuple[int, str]]:
    """Module path (plain names) -> (layer, site) for every layer and each of ``sites`` the layer has."""
    out: dict[str, tuple[int, str]] = {}
    for i, entry in enumerate(model.layers):
        for site in sites:
            if site in entry.group.sites:
                out.setdefault(model.site_path(i, site), (i, site))
    return out


def local_layer_index(model: AdaptedModel, layer: int) -> int:
    """The index of global layer ``layer`` inside its own layer list (encoder or decoder)."""
    return int(model.layers[layer].path.rsplit(".", 1)[1])


def directory_of(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise AdapterLoadError(f"{path}: not a directory")
    return path
