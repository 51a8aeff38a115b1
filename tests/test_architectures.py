"""Every supported architecture x every registered method, on tiny randomly initialised models."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import transformers as tf
from torch import nn

from adapterkit import injection
from adapterkit.architectures import ARCHITECTURES, get_architecture
from adapterkit.config import MethodConfig
from adapterkit.errors import ConfigError, UnsupportedArchitectureError
from adapterkit.methods.bottleneck import (
    BottleneckConfig,
    HoulsbyConfig,
    ParallelAdapter,
    ParallelConfig,
    PfeifferConfig,
)
from adapterkit.methods.lora import LoRAConfig
from adapterkit.model import AdaptedModel
from adapterkit.registry import METHODS, get_method
from adapterkit.testing import tiny_batch, tiny_model

get_method("lora")  # importing adapterkit.methods registers every built-in method

NUM_LABELS = 3


@dataclass(frozen=True)
class Arch:
    """A tiny model type and what the architecture table is expected to say about it."""

    model_type: str
    num_layers: int = 2
    prefix_supported: bool = True

    def __str__(self) -> str:
        return self.model_type


ARCHS = [
    Arch("bert"),
    Arch("roberta"),
    Arch("xlm-roberta"),
    Arch("electra"),
    Arch("distilbert"),
    Arch("mpnet", prefix_supported=False),
    Arch("t5", num_layers=4),
    Arch("llama"),
]


def tiny(model_type: str, seed: int = 0) -> nn.Module:
    """A fresh tiny model of ``model_type`` with deterministic weights."""
    return tiny_model(model_type, num_labels=NUM_LABELS, seed=seed)


def batch() -> dict[str, torch.Tensor]:
    """Token ids avoiding the special ids 0/1 except a final EOS (=1, which T5's classification head needs)."""
    return tiny_batch(eos_token_id=1, num_labels=NUM_LABELS)


def logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in inputs.items() if k != "labels"}).logits


FUSED = ("fused0", "fused1")


def default_config(method: str, **fields: object) -> MethodConfig:
    """A method's default config; fusion fuses ``FUSED`` and AdapterDrop drops nothing (every parameter trains)."""
    if method == "fusion":
        fields.setdefault("adapters", FUSED)
    if method == "adapterdrop":
        fields.setdefault("drop_max_layers", 0)
    return METHODS[method](**fields)


def prepare(model: AdaptedModel, method: str, layers: tuple[int, ...] | None = None) -> list[str]:
    """Add what ``method`` builds on (the adapters a fusion layer fuses); returns their names."""
    if method != "fusion":
        return []
    for name in FUSED:
        model.add_adapter(name, PfeifferConfig(init="near_identity", layers=layers), activate=False)
    return list(FUSED)


def promises_identity(config: MethodConfig) -> bool:
    """Methods whose freshly initialised adapter is an exact no-op."""
    if isinstance(config, BottleneckConfig):
        return config.init == "identity"
    return isinstance(config, LoRAConfig)


def module_snapshot(model: nn.Module) -> dict[str, nn.Module]:
    return dict(model.named_modules())


def test_architecture_rows_match_expectations() -> None:
    for arch in ARCHS:
        spec = get_architecture(arch.model_type)
        assert spec.prefix_supported is arch.prefix_supported, arch.model_type
        assert len(AdaptedModel(tiny(arch.model_type)).layers) == arch.num_layers


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("arch", ARCHS, ids=str)
def test_method_trains_only_adapter_and_head(arch: Arch, method: str) -> None:
    base = tiny(arch.model_type)
    inputs = batch()
    before = logits(base, inputs)
    model = AdaptedModel(base)
    config = default_config(method)
    originals = module_snapshot(base)

    if config.unsupported(get_architecture(arch.model_type)):  # what the README's architecture table says
        assert method in ("prefix", "unipelt", "unipelt_prompt") and not arch.prefix_supported  # (UniPELT: a prefix)
        with pytest.raises(ConfigError, match=arch.model_type):
            model.add_adapter("a", config)
        assert module_snapshot(base).keys() == originals.keys()
        assert not injection.wrappers(base)
        return

    prepare(model, method)
    model.add_adapter("a", config)
    assert model.active_adapters == ("a",)
    adapter_params = {id(p) for p in model.adapter_parameters("a").values()}
    assert adapter_params, f"{method} on {arch.model_type} created no parameters"
    head_names = set(model.head_parameter_names())
    assert head_names, arch.model_type

    if promises_identity(config):
        diff = (logits(model, inputs) - before).abs().max().item()
        assert diff < 1e-6, f"fresh {method} adapter changed {arch.model_type} outputs by {diff}"

    model.train()
    out = model(**inputs)
    assert torch.isfinite(out.loss)
    out.loss.backward()

    base_with_grad = [
        n for n, p in base.named_parameters() if p.grad is not None and id(p) not in adapter_params and n not in head_names
    ]
    assert base_with_grad == [], f"{method} on {arch.model_type}: base parameters got gradients"
    for key, p in model.adapter_parameters("a").items():
        assert p.requires_grad and p.grad is not None, f"{method}: {key} got no gradient"
    assert any(p.grad.abs().sum() > 0 for p in model.adapter_parameters("a").values())
    head = dict(base.named_parameters())
    assert all(head[n].grad is not None for n in head_names)
    grouped = [id(p) for group in model.parameter_groups(1e-3) for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("arch", ARCHS, ids=str)
def test_deleting_all_adapters_restores_modules_and_outputs(arch: Arch) -> None:
    base = tiny(arch.model_type)
    inputs = batch()
    originals = module_snapshot(base)
    before = logits(base, inputs)
    model = AdaptedModel(base)
    names = []
    for method in sorted(METHODS):
        if method in ("prefix", "unipelt", "unipelt_prompt") and not arch.prefix_supported:  # (UniPELT holds a prefix)
            continue
        config = default_config(method)
        if isinstance(config, BottleneckConfig):
            config = default_config(method, init="near_identity")  # a non-trivial adapter, so deletion matters
        names += prepare(model, method)
        model.add_adapter(method, config)
        names.append(method)
    model.set_active_adapters(*names)
    assert not torch.equal(logits(model, inputs), before)
    for name in names:
        model.delete_adapter(name)
    after = module_snapshot(base)
    assert after.keys() == originals.keys()
    assert all(after[k] is originals[k] for k in originals)
    assert not injection.wrappers(base)
    assert torch.equal(logits(model, inputs), before)


def test_unsupported_model_type_names_it_and_the_supported_ones() -> None:
    cfg = tf.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    with pytest.raises(UnsupportedArchitectureError) as info:
        AdaptedModel(tf.GPT2Model(cfg))
    message = str(info.value)
    assert "'gpt2'" in message
    for supported in ("bert", "distilbert", "llama", "t5"):
        assert f"'{supported}'" in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("model_type", "input_arg"), [("bert", 1), ("mpnet", 1), ("distilbert", 0), ("llama", 0), ("t5", 0)])
def test_parallel_adapter_trains(model_type: str, input_arg: int) -> None:
    base = tiny(model_type)
    inputs = batch()
    before = logits(base, inputs)
    model = AdaptedModel(base)
    model.add_adapter("par", ParallelConfig())
    modules = [m for _, m in model.adapter_modules("par")]
    assert modules and all(isinstance(m, ParallelAdapter) and m.input_arg == input_arg for m in modules)
    assert (logits(model, inputs) - before).abs().max() < 1e-6
    params = model.adapter_parameters("par")
    optimizer = torch.optim.SGD(params.values(), lr=0.5)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        model(**inputs).loss.backward()
        optimizer.step()
    ups = [p for k, p in params.items() if ".up." in k]
    downs = [p for k, p in params.items() if ".down.weight" in k]
    assert all(p.abs().sum() > 0 for p in ups), "Up stayed at zero: the adapter output never reached the loss"
    assert all(p.grad.abs().sum() > 0 for p in downs), "Down got no gradient after Up moved"
    assert (logits(model, inputs) - before).abs().max() > 1e-4


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "llama", "t5"])
def test_houlsby_attaches_two_per_layer(model_type: str) -> None:
    model = AdaptedModel(tiny(model_type))
    model.add_adapter("h", HoulsbyConfig())
    sites = [(att.layer, att.site) for _, att in model._attachments["h"]]
    n = len(model.layers)
    assert sorted(sites) == sorted((i, s) for i in range(n) for s in ("attn_output", "ffn_output"))
    assert len(injection.wrappers(model.model)) == 2 * n
    for path, wrapper in injection.wrappers(model.model).items():
        assert list(wrapper.adapters) == ["h"], path


LAYERED_METHODS = sorted(m for m in METHODS if m != "prompt")  # prompt is model-level


def test_every_method_has_the_shared_layers_field_and_prompt_refuses_it() -> None:
    assert all("layers" in METHODS[m].help() for m in METHODS)
    with pytest.raises(ConfigError, match="layers"):
        METHODS["prompt"](layers=(1,))


@pytest.mark.parametrize("method", LAYERED_METHODS)
def test_layers_option_attaches_only_to_selected_layer(method: str) -> None:
    model = AdaptedModel(tiny("bert"))
    prepare(model, method, layers=(1,))
    model.add_adapter("one", default_config(method, layers=(1,)))
    layer_sites = [att for _, att in model._attachments["one"] if att.layer is not None]
    assert layer_sites and {att.layer for att in layer_sites} == {1}
    # unipelt_prompt's model-level prompt; PHA's retriever reads the backbone's output there
    prompt_site = model.site_path(None, "prompt") if method in ("unipelt_prompt", "pha") else None
    for path in injection.wrappers(model.model):
        assert ".layer.1." in path + "." or path == prompt_site, path
    with pytest.raises(ConfigError, match="out of range"):
        model.add_adapter("bad", default_config(method, layers=(2,)))


def test_t5_numbers_encoder_then_decoder_layers() -> None:
    model = AdaptedModel(tiny("t5"))
    paths = [layer.path for layer in model.layers]
    assert paths == [
        "transformer.encoder.block.0", "transformer.encoder.block.1",
        "transformer.decoder.block.0", "transformer.decoder.block.1",
    ]
    model.add_adapter("p", get_method("pfeiffer")(layers=(1, 2)))
    assert sorted(injection.wrappers(model.model)) == [
        "transformer.decoder.block.0.layer.2.DenseReluDense.wo",
        "transformer.encoder.block.1.layer.1.DenseReluDense.wo",
    ]
    model.add_adapter("l", LoRAConfig(layers=(3,), targets=("query", "ffn_in")))
    assert "transformer.decoder.block.1.layer.0.SelfAttention.q" in injection.wrappers(model.model)
    assert "transformer.decoder.block.1.layer.2.DenseReluDense.wi" in injection.wrappers(model.model)


def test_every_architecture_alias_resolves() -> None:
    for name, spec in ARCHITECTURES.items():
        assert get_architecture(name) is spec
        assert name == spec.model_type or name in spec.aliases
