"""The one Registry class: duplicates are errors in every registry; architectures can be added from outside."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from adapterkit.architectures import ARCHITECTURES, ArchitectureSpec, register_architecture
from adapterkit.config import MethodConfig
from adapterkit.data.tasks import TASKS, get_task, register_task
from adapterkit.errors import ConfigError, UnsupportedArchitectureError
from adapterkit.experiments import EXPERIMENTS, register_experiment
from adapterkit.merging import MERGE_METHODS, register_merge
from adapterkit.methods.lora import LoRAConfig
from adapterkit.model import AdaptedModel
from adapterkit.registry import METHODS, Registry, get_method, register_method
from adapterkit.testing import tiny_batch, tiny_model


def test_registry_basics() -> None:
    loaded = []
    reg: Registry[int] = Registry("widget", loader=lambda: loaded.append(reg.register("builtin", 0)))
    assert "builtin" in reg and loaded == [0]  # the loader runs once, on first read
    reg.register("a", 1)
    reg.register("a", 1)  # the same value again: no-op
    with pytest.raises(ConfigError, match="widget 'a': already registered"):
        reg.register("a", 2)
    with pytest.raises(ConfigError, match="widget 'a': already registered"):
        reg["a"] = 2
    reg.register("a", 2, replace=True)
    assert reg["a"] == 2 and sorted(reg) == ["a", "builtin"] and len(reg) == 2
    with pytest.raises(ConfigError, match=r"f: x: unknown widget 'b'; known: \['a', 'builtin'\]"):
        reg.get_or_raise("b", "f", "x")
    del reg["a"]
    assert list(reg) == ["builtin"]


def test_every_registry_is_a_registry_and_refuses_a_second_different_entry() -> None:
    for registry in (METHODS, MERGE_METHODS, TASKS, EXPERIMENTS, ARCHITECTURES):
        assert isinstance(registry, Registry)

    @dataclass
    class Other(MethodConfig):
        method: ClassVar[str] = "lora"

        def build(self, ctx):
            return []

    with pytest.raises(ConfigError, match="method 'lora': already registered"):
        register_method(Other)
    assert get_method("lora") is LoRAConfig
    with pytest.raises(ConfigError, match="merge method 'average': already registered"):
        register_merge("average")(lambda states, **kw: states[0])
    with pytest.raises(ConfigError, match="task 'sst2': already registered"):
        register_task(dataclasses.replace(get_task("sst2"), description="another"))
    with pytest.raises(ConfigError, match="experiment 'mera': already registered"):
        register_experiment("mera", "somewhere.else")
    with pytest.raises(ConfigError, match="model type 'bert': already registered"):
        register_architecture(dataclasses.replace(ARCHITECTURES["bert"], prefix_supported=False))


def test_register_architecture_adds_a_model_family_without_editing_the_package() -> None:
    hf = tiny_model("bert")
    hf.config.model_type = "toy-encoder"  # a model family adapterkit does not know
    with pytest.raises(UnsupportedArchitectureError, match="'toy-encoder' is not supported.*register_architecture"):
        AdaptedModel(hf)
    spec = ArchitectureSpec("toy-encoder", ARCHITECTURES["bert"].groups, aliases=("toy-encoder-2",))
    register_architecture(spec)
    try:
        assert ARCHITECTURES["toy-encoder-2"] is spec
        model = AdaptedModel(hf)
        model.add_adapter("lo", LoRAConfig())
        out = model(**tiny_batch(num_labels=2))
        out.loss.backward()
        assert all(p.grad is not None for p in model.adapter_parameters("lo").values())
        assert torch.isfinite(out.logits).all()
    finally:
        del ARCHITECTURES["toy-encoder"], ARCHITECTURES["toy-encoder-2"]
