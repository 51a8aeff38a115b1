"""The injection mechanism: wrapping, unwrapping, nesting, stacking order and attribute delegation."""
from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from adapterkit import injection
from adapterkit.injection import AdaptedModule, AdapterModule
from adapterkit.methods.bottleneck import ParallelAdapter, ParallelConfig, PfeifferConfig
from adapterkit.methods.lora import LoRAConfig
from adapterkit.model import AdaptedModel
from adapterkit.testing import tiny_model


class Recorder(AdapterModule):
    """Logs its hook calls into a shared list and adds ``delta`` to the output."""

    def __init__(self, tag: str, log: list[str], delta: float = 0.0, order: int = 10) -> None:
        super().__init__()
        self.tag, self.log, self.delta, self.order = tag, log, delta, order

    def pre(self, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        self.log.append(f"pre:{self.tag}")
        return args, kwargs

    def post(self, args: tuple, kwargs: dict[str, Any], output: torch.Tensor) -> torch.Tensor:
        self.log.append(f"post:{self.tag}")
        return output + self.delta


class Doubler(AdapterModule):
    """Multiplies the output by two: order-sensitive together with an additive adapter."""

    def post(self, args: tuple, kwargs: dict[str, Any], output: torch.Tensor) -> torch.Tensor:
        return output * 2


def toy() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), nn.Linear(4, 3)))


def test_wrap_and_unwrap_keep_the_original_object() -> None:
    model = toy()
    x = torch.randn(2, 4)
    original = model[1][1]
    expected = model(x)
    wrapper = injection.wrap(model, "1.1")
    assert isinstance(wrapper, AdaptedModule) and wrapper.base_layer is original
    assert model[1][1] is wrapper
    assert injection.wrap(model, "1.1") is wrapper  # idempotent
    assert torch.equal(model(x), expected)  # no active adapter: pass-through
    assert injection.unwrap(model, "1.1") is original
    assert model[1][1] is original
    assert injection.unwrap(model, "1.1") is original  # unwrapping a plain module is a no-op
    assert injection.wrappers(model) == {}


def test_attach_detach_restores_and_rejects_duplicates() -> None:
    model = toy()
    original = model[0]
    log: list[str] = []
    injection.attach(model, "0", "a", Recorder("a", log))
    with pytest.raises(ValueError, match="already attached"):
        injection.attach(model, "0", "a", Recorder("a", log))
    injection.attach(model, "0", "b", Recorder("b", log))
    injection.detach(model, "0", "a")
    assert isinstance(model[0], AdaptedModule) and list(model[0].adapters) == ["b"]
    injection.detach(model, "0", "b")
    assert model[0] is original
    injection.detach(model, "0", "b")  # detaching from an unwrapped module is harmless


def test_inactive_adapters_do_not_run() -> None:
    model = toy()
    x = torch.randn(2, 4)
    expected = model(x)
    log: list[str] = []
    injection.attach(model, "1.1", "a", Recorder("a", log, delta=1.0))
    assert torch.equal(model(x), expected) and log == []
    injection.set_active(model, ("a",))
    assert torch.allclose(model(x), expected + 1.0) and log == ["pre:a", "post:a"]
    injection.set_active(model, ("missing", "a"))  # names not attached at a site are ignored there
    model(x)


def test_stacking_follows_activation_order() -> None:
    model = toy()
    x = torch.randn(2, 4)
    base = model(x)
    log: list[str] = []
    injection.attach(model, "1.1", "add", Recorder("add", log, delta=1.0))
    injection.attach(model, "1.1", "dbl", Doubler())
    injection.set_active(model, ("add", "dbl"))
    assert torch.allclose(model(x), (base + 1.0) * 2)
    injection.set_active(model, ("dbl", "add"))
    assert torch.allclose(model(x), base * 2 + 1.0)


def test_low_order_modules_run_first_and_pre_hooks_precede_the_layer() -> None:
    model = toy()
    log: list[str] = []
    injection.attach(model, "0", "seq", Recorder("seq", log, order=10))
    injection.attach(model, "0", "lora", Recorder("lora", log, order=0))
    injection.set_active(model, ("seq", "lora"))
    model(torch.randn(1, 4))
    assert log == ["pre:lora", "pre:seq", "post:lora", "post:seq"]


def test_getattr_delegates_to_the_wrapped_module() -> None:
    model = toy()
    linear = model[0]
    wrapper = injection.wrap(model, "0")
    assert wrapper.weight is linear.weight
    assert wrapper.in_features == 4 and wrapper.out_features == 4
    assert isinstance(wrapper.adapters, nn.ModuleDict)  # own attributes win over delegation
    with pytest.raises(AttributeError):
        _ = wrapper.no_such_attribute
    # a wrapped parent's children stay reachable by path
    outer = injection.wrap(model, "1")
    assert injection.get_module(model, "1.1") is outer.base_layer[1]
    # parameters are reached through base_layer, so state_dict keys change but counts do not
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in toy().parameters())


def test_get_module_empty_path_is_the_model() -> None:
    model = toy()
    assert injection.get_module(model, "") is model


@pytest.mark.parametrize("parallel_first", [True, False])
def test_nested_wrapping_parallel_on_output_and_pfeiffer_on_dense(parallel_first: bool) -> None:
    base = tiny_model("bert")
    originals = dict(base.named_modules())
    ids = torch.randint(3, 100, (2, 8))
    base.eval()
    with torch.no_grad():
        before = base(input_ids=ids).logits
    model = AdaptedModel(base)
    configs = {"par": ParallelConfig(init="near_identity"), "pf": PfeifferConfig(init="near_identity")}
    order = ["par", "pf"] if parallel_first else ["pf", "par"]
    for name in order:
        model.add_adapter(name, configs[name])
    model.set_active_adapters("par", "pf")

    outer = base.bert.encoder.layer[0].output
    assert isinstance(outer, AdaptedModule) and list(outer.adapters) == ["par"]
    assert isinstance(outer.adapters["par"], ParallelAdapter)
    inner = outer.base_layer.dense
    assert isinstance(inner, AdaptedModule) and list(inner.adapters) == ["pf"]
    assert outer.dense is inner  # delegation reaches the wrapped child
    assert outer.active == ("par", "pf") and inner.active == ("par", "pf")

    # both adapters take part in the forward pass and receive gradients
    model.train()
    model(input_ids=ids, labels=torch.tensor([0, 1])).loss.backward()
    for name in order:
        grads = [p.grad for p in model.adapter_parameters(name).values()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), name

    for name in reversed(order):
        model.delete_adapter(name)
    after = dict(base.named_modules())
    assert after.keys() == originals.keys() and all(after[k] is originals[k] for k in originals)
    base.eval()
    with torch.no_grad():
        assert torch.equal(base(input_ids=ids).logits, before)


def test_lora_and_pfeiffer_on_the_same_projection() -> None:
    """LoRA (order 0) extends the projection, then the sequential adapter transforms its output."""
    base = tiny_model("bert")
    model = AdaptedModel(base)
    model.add_adapter("pf", PfeifferConfig(init="near_identity"))
    model.add_adapter("lo", LoRAConfig(targets=("ffn_out",)))
    model.set_active_adapters("pf", "lo")
    wrapper = base.bert.encoder.layer[1].output.dense
    assert isinstance(wrapper, AdaptedModule) and set(wrapper.adapters) == {"pf", "lo"}
    with torch.no_grad():
        for _, m in model.adapter_modules("lo"):
            m.lora_B.normal_()
    x = torch.randn(2, 5, 64)
    lora, seq = wrapper.adapters["lo"], wrapper.adapters["pf"]
    linear = wrapper.base_layer
    with torch.no_grad():
        y = linear(x) + (x @ lora.lora_A.T @ lora.lora_B.T) * lora.scaling
        expected = y + seq.bottleneck(y)
        assert torch.allclose(wrapper(x), expected, atol=1e-5)


def test_attach_binds_the_module_to_its_site_and_detach_unbinds() -> None:
    model = AdaptedModel(tiny_model("bert"))
    from adapterkit.methods.prefix import PrefixAttention, PrefixTuningConfig

    model.add_adapter("p", PrefixTuningConfig(layers=(1,)))
    (path, att), = [(p, a) for p, a in model._attachments["p"] if p]
    module = att.module
    assert isinstance(module, PrefixAttention)
    assert module.wrapper is injection.get_module(model.model, path) and module.wrapped_layer is module.wrapper.base_layer
    assert module.shared_module is model.shared["p"] and module.layer_index == 1 and module.adapter_name == "p"
    assert module.binding.site == "attention"
    model.delete_adapter("p")
    assert module.binding is None
    with pytest.raises(RuntimeError, match="not attached"):
        module.wrapper  # noqa: B018


def test_attach_places_the_module_on_the_wrapped_layers_dtype() -> None:
    host = nn.Sequential(nn.Linear(4, 4).to(torch.float64))
    module = Recorder("r", [], delta=1.0)
    module.extra = nn.Linear(4, 4)  # float32 when made
    injection.attach(host, "0", "r", module)
    assert module.extra.weight.dtype == torch.float64


def test_a_failing_bind_leaves_the_model_as_it_was() -> None:
    class Refuses(AdapterModule):
        def bind(self, wrapper):
            raise ValueError("no")

    model = toy()
    original = model[0]
    with pytest.raises(ValueError, match="no"):
        injection.attach(model, "0", "x", Refuses())
    assert model[0] is original
