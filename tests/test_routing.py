"""Mixed-adapter batches (``adapter_names=``): every row equals that example run alone with its adapter, the
routing is checked, and methods that cannot be routed say so."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch

from adapterkit.config import MethodConfig
from adapterkit.errors import ConfigError
from adapterkit.injection import AdapterModule
from adapterkit.methods.base import Attachment, BuildContext
from adapterkit.methods.bottleneck import PfeifferConfig
from adapterkit.methods.fusion import FusionConfig
from adapterkit.methods.lora import LoRAConfig
from adapterkit.registry import METHODS, get_method
from adapterkit.routing import Routing, current_routing, scatter, select
from adapterkit.testing import padded_batch, perturb_adapter, routed_vs_solo, tiny_adapted, tiny_batch

TOL = 1e-5


NAMES = ["a", None, "b", "c", "a", "b"]


def test_routing_groups_rows_by_adapter_in_order_of_appearance() -> None:
    routing = Routing.build(["b", None, "a", "b"])
    assert routing.adapters == ("b", "a")
    assert routing.rows("b") == slice(0, 2) and routing.rows("a") == slice(2, 3) and routing.rows("c") is None
    assert routing.original_rows("b") == [0, 3] and routing.batch_size == 4
    x = torch.tensor([10, 11, 12, 13])
    assert routing.reorder(x).tolist() == [10, 13, 12, 11]  # b, b, a, None
    assert routing.restore(routing.reorder({"x": x}))["x"].tolist() == x.tolist()
    grouped = Routing.build(["a", "a", "b", None])
    assert grouped.order is None and grouped.reorder(x) is x  # already grouped: nothing moves


def test_scatter_copies_once_and_leaves_other_rows() -> None:
    base = torch.zeros(5, 2)
    out = scatter(base, [(slice(3, 5), torch.full((2, 2), 2.0)), (slice(1, 2), torch.ones(1, 2))])
    assert out.tolist() == [[0, 0], [1, 1], [0, 0], [2, 2], [2, 2]] and base.abs().sum() == 0
    out = scatter(base, [(torch.tensor([4, 0]), torch.ones(2, 2))])
    assert out.tolist() == [[1, 1], [0, 0], [0, 0], [0, 0], [1, 1]]
    assert select(torch.arange(4), torch.tensor([2, 0])).tolist() == [2, 0] and select(torch.arange(4), slice(1, 3)).tolist() == [1, 2]


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "llama", "t5"])
def test_mixed_bottleneck_and_lora_rows_equal_their_solo_runs(arch: str) -> None:
    model = tiny_adapted(arch, {"a": PfeifferConfig(init="near_identity"), "b": LoRAConfig(r=4),
                           "c": PfeifferConfig(reduction_factor=4, init="near_identity")})
    assert routed_vs_solo(model, padded_batch(arch), NAMES) <= TOL


def test_a_mixed_batch_differs_from_any_single_adapter_run() -> None:
    model = tiny_adapted("bert", {"a": PfeifferConfig(init="near_identity"), "b": LoRAConfig(r=4)})
    batch = padded_batch("bert", 2)
    with torch.no_grad():
        mixed = model(**batch, adapter_names=["a", "b"]).logits
        model.set_active_adapters("a")
        only_a = model(**batch).logits
    assert torch.allclose(mixed[0], only_a[0], atol=TOL) and not torch.allclose(mixed[1], only_a[1], atol=1e-3)


def test_routing_ignores_and_keeps_the_active_adapters() -> None:
    model = tiny_adapted("bert", {"a": PfeifferConfig(init="near_identity"), "b": PfeifferConfig(init="near_identity")})
    model.set_active_adapters("a", "b")  # a stack; routing gives each row one adapter, and leaves this as it is
    assert routed_vs_solo(model, padded_batch("bert", 3), [None, "b", "a"]) <= TOL
    assert model.active_adapters == ("a", "b")


def test_all_rows_none_is_the_bare_model() -> None:
    model = tiny_adapted("bert", {"a": PfeifferConfig(init="near_identity")})
    batch = padded_batch("bert", 3)
    with torch.no_grad():
        routed = model(**batch, adapter_names=[None] * 3).logits
        model.set_active_adapters()
        assert torch.equal(routed, model(**batch).logits)


def test_routing_trains_each_adapter_on_its_own_rows() -> None:
    model = tiny_adapted("bert", {"a": PfeifferConfig(init="near_identity"), "b": LoRAConfig(r=4)})
    model.set_active_adapters("a", "b")
    batch = tiny_batch(3, 8, num_labels=2)
    model.train()
    model(**batch, adapter_names=["a", "a", None]).loss.backward()
    grads = {n: p.grad for n in ("a", "b") for p in model.adapter_parameters(n).values()}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n == "a")
    assert all(p.grad is None for p in model.adapter_parameters("b").values())


def test_bad_adapter_names_are_clear_errors() -> None:
    model = tiny_adapted("bert", {"a": PfeifferConfig()})
    batch = padded_batch("bert", 2)
    with pytest.raises(ConfigError, match=r"adapter_names: 1 names for a batch of 2"):
        model(**batch, adapter_names=["a"])
    with pytest.raises(ConfigError, match=r"adapter_names\[1\]: no adapter 'zz'"):
        model(**batch, adapter_names=["a", "zz"])
    with pytest.raises(ConfigError, match=r"adapter_names: expected a list"):
        model(**batch, adapter_names="a")


def test_a_merged_lora_refuses_routing_naming_the_adapter() -> None:
    model = tiny_adapted("bert", {"m": LoRAConfig(r=4)})
    model.merge_adapter("m")
    with pytest.raises(ConfigError, match=r"adapter 'm' \(method 'lora'\) cannot be routed per example: .*merged"):
        model(**padded_batch("bert", 2), adapter_names=["m", None])
    model.unmerge_adapter("m")
    assert routed_vs_solo(model, padded_batch("bert", 2), ["m", None]) <= TOL


class Shift(AdapterModule):
    def post(self, args: tuple, kwargs: dict[str, Any], output: torch.Tensor) -> torch.Tensor:
        return output + 1.0


@dataclass
class ShiftConfig(MethodConfig):
    method: ClassVar[str] = "test_routing_shift"

    def build(self, ctx: BuildContext) -> list[Attachment]:
        return [Attachment(i, "ffn_output", Shift()) for i in ctx.layer_indices(self.layers)]


def test_a_method_without_routed_hooks_refuses_naming_the_method() -> None:
    model = tiny_adapted("bert", {"s": ShiftConfig()})
    with pytest.raises(ConfigError, match=r"adapter 's' \(method 'test_routing_shift'\) cannot be routed.*Shift defines "
                                          r"post but not route_post"):
        model(**padded_batch("bert", 2), adapter_names=["s", None])


class RowShift(Shift):
    def route_post(self, args: tuple, kwargs: dict[str, Any], output: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        assert current_routing() is not None
        return select(output, rows) + 1.0


@dataclass
class RowShiftConfig(ShiftConfig):
    method: ClassVar[str] = "test_routing_row_shift"

    def build(self, ctx: BuildContext) -> list[Attachment]:
        return [Attachment(i, "ffn_output", RowShift()) for i in ctx.layer_indices(self.layers)]


def test_a_user_method_routes_once_it_has_route_post() -> None:
    model = tiny_adapted("bert", {"s": RowShiftConfig(), "a": PfeifferConfig(init="near_identity")})
    assert routed_vs_solo(model, padded_batch("bert", 3), ["s", "a", None]) <= TOL


def test_routing_refuses_the_frozen_layer_cache() -> None:
    from adapterkit import frozen_cache

    model = tiny_adapted("bert", {"a": PfeifferConfig(layers=(1,))})
    model.backbone_dropout = False
    frozen_cache.enable(model, 1)
    with pytest.raises(ConfigError, match=r"adapter_names: per-example routing does not work with \['.*'\] attached"):
        model(**padded_batch("bert", 2), adapter_names=["a", None])
    frozen_cache.disable(model)
    assert routed_vs_solo(model, padded_batch("bert", 2), ["a", None]) <= TOL


def test_threads_route_different_batches_at_once() -> None:
    """The routing lives in each call's forward context, not on the model."""
    import threading

    model = tiny_adapted("bert", {"a": PfeifferConfig(init="near_identity"), "b": LoRAConfig(r=4)})
    batch = padded_batch("bert", 4)
    plans = [["a", "b", None, "a"], ["b", "b", "a", None], [None, "a", "b", "b"]]
    with torch.no_grad():
        expected = [model(**batch, adapter_names=p).logits for p in plans]
    results: dict[int, torch.Tensor] = {}

    def run(i: int) -> None:
        with torch.no_grad():
            for _ in range(5):
                results[i] = model(**batch, adapter_names=plans[i]).logits

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(plans))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(results[i], expected[i]) for i in range(len(plans)))


ROUTED = {"adaptable", "adapterdrop", "bottleneck", "fusion", "houlsby", "lora", "parallel", "pfeiffer", "prefix", "prompt",
          "unipelt", "unipelt_prompt"}
"""Methods whose mixed batches are exact; any other registered method must refuse, naming itself."""


BUILT_IN = sorted(m for m in METHODS if get_method(m).__module__.startswith("adapterkit.methods."))


@pytest.mark.parametrize("method", BUILT_IN)
def test_every_registered_method_routes_exactly_or_refuses_by_name(method: str) -> None:
    model = tiny_adapted("bert", {"p": PfeifferConfig(init="near_identity")})
    config = FusionConfig(adapters=("p",)) if method == "fusion" else get_method(method)()
    model.add_adapter("m", config)
    perturb_adapter(model, "m", seed=3)
    model.eval()
    names = ["m", None, "p", "m"]
    if method in ROUTED:
        assert routed_vs_solo(model, padded_batch("bert", 4), names) <= TOL
    else:
        with pytest.raises(ConfigError, match=rf"adapter 'm' \(method '{method}'\) cannot be routed per example: \S"):
            model(**padded_batch("bert", 4), adapter_names=names)


def test_segmented_products_see_weight_changes_and_train() -> None:
    """The concatenated weights kept between no-grad calls follow in-place updates; with gradients both
    adapters of a segmented product get theirs."""
    model = tiny_adapted("bert", {"a": PfeifferConfig(init="near_identity"), "b": PfeifferConfig(init="near_identity"),
                                  "c": LoRAConfig(r=4), "d": LoRAConfig(r=4)})
    batch, names = padded_batch("bert", 4), ["a", "b", "c", "d"]
    assert routed_vs_solo(model, batch, names) <= TOL
    perturb_adapter(model, "b", seed=9)
    perturb_adapter(model, "d", seed=9)
    assert routed_vs_solo(model, batch, names) <= TOL
    model.train()
    model.set_active_adapters("a", "b", "c", "d")
    model(**tiny_batch(4, 8, num_labels=2), adapter_names=names).loss.backward()
    for name in names:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.adapter_parameters(name).values()), name
