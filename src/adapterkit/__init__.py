"""adapterkit: adapters (bottleneck, LoRA, prompt/prefix tuning, fusion, merging, ...) for Hugging Face models.

The public API is importable from the package itself (``from adapterkit import AdaptedModel,
LoRAConfig``); names load lazily on first use, so ``import adapterkit`` stays light (no torch or
transformers until a name is used). docs/design.md explains the method protocol, the forward context
and composition; docs/add-a-method.md walks through writing a method.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # models and adapters
    "AdaptedModel": "adapterkit.model",
    "load_base_model": "adapterkit.model",
    "save_adapter": "adapterkit.io",
    "load_adapter": "adapterkit.io",
    # the method protocol
    "MethodConfig": "adapterkit.config",
    "ParamGroup": "adapterkit.config",
    "opt": "adapterkit.config",
    "check": "adapterkit.config",
    "Attachment": "adapterkit.methods.base",
    "BuildContext": "adapterkit.methods.base",
    "NeuronGroup": "adapterkit.methods.base",
    "Mergeable": "adapterkit.methods.base",
    "HasNeurons": "adapterkit.methods.base",
    "register_activation": "adapterkit.methods.base",
    "AdapterModule": "adapterkit.injection",
    "AdaptedModule": "adapterkit.injection",
    "ForwardContext": "adapterkit.context",
    "forward_context": "adapterkit.context",
    "current_context": "adapterkit.context:current",
    # registries
    "Registry": "adapterkit.registry",
    "METHODS": "adapterkit.registry",
    "register_method": "adapterkit.registry",
    "get_method": "adapterkit.registry",
    "config_from_dict": "adapterkit.registry",
    "ArchitectureSpec": "adapterkit.architectures",
    "LayerGroup": "adapterkit.architectures",
    "register_architecture": "adapterkit.architectures",
    # built-in methods
    "BottleneckConfig": "adapterkit.methods.bottleneck",
    "HoulsbyConfig": "adapterkit.methods.bottleneck",
    "PfeifferConfig": "adapterkit.methods.bottleneck",
    "ParallelConfig": "adapterkit.methods.bottleneck",
    "LoRAConfig": "adapterkit.methods.lora",
    "PromptTuningConfig": "adapterkit.methods.prompt",
    "PrefixTuningConfig": "adapterkit.methods.prefix",
    "FusionConfig": "adapterkit.methods.fusion",
    "AdaptableConfig": "adapterkit.methods.adaptable",
    "AdapterDropConfig": "adapterkit.methods.adapterdrop",
    # merging, data, training
    "merge_adapters": "adapterkit.merging",
    "register_merge": "adapterkit.merging",
    "get_task": "adapterkit.data.tasks",
    "load_task": "adapterkit.data.tasks",
    "register_task": "adapterkit.data.tasks",
    "k_shot": "adapterkit.data.sampling",
    "TrainConfig": "adapterkit.training",
    "train": "adapterkit.training",
    "evaluate": "adapterkit.training",
    # other formats and the Hub
    "load_peft_adapter": "adapterkit.interop.peft",
    "save_peft_adapter": "adapterkit.interop.peft",
    "load_adapterhub_adapter": "adapterkit.interop.adapterhub",
    "convert_adapter": "adapterkit.interop.convert",
    "push_adapter_dir": "adapterkit.interop.hub",
    # errors
    "AdapterKitError": "adapterkit.errors",
    "ConfigError": "adapterkit.errors",
    "AdapterLoadError": "adapterkit.errors",
    "UnsupportedArchitectureError": "adapterkit.errors",
    "DataError": "adapterkit.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'adapterkit' has no attribute {name!r}")
    module, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module), attr or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from .architectures import ArchitectureSpec, LayerGroup, register_architecture  # noqa: F401
    from .config import MethodConfig, ParamGroup, check, opt  # noqa: F401
    from .context import ForwardContext, forward_context  # noqa: F401
    from .context import current as current_context  # noqa: F401
    from .injection import AdaptedModule, AdapterModule  # noqa: F401
    from .interop.adapterhub import load_adapterhub_adapter  # noqa: F401
    from .interop.convert import convert_adapter  # noqa: F401
    from .interop.hub import push_adapter_dir  # noqa: F401
    from .interop.peft import load_peft_adapter, save_peft_adapter  # noqa: F401
    from .io import load_adapter, save_adapter  # noqa: F401
    from .methods.base import Attachment, BuildContext, NeuronGroup, register_activation  # noqa: F401
    from .model import AdaptedModel, load_base_model  # noqa: F401
    from .registry import METHODS, Registry, config_from_dict, get_method, register_method  # noqa: F401
