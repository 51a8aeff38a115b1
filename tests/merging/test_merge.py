"""Merge methods: registry, (weighted) averages, OT alignment (permutations, function preservation, widths)."""
from __future__ import annotations

import pytest
import torch

from adapterkit.errors import ConfigError
from adapterkit.merging import (
    MERGE_METHODS,
    align_bottleneck,
    align_to_anchor,
    collect_bottleneck_activations,
    get_merge,
    merge_adapters,
    neuron_cost_activations,
    neuron_cost_weights,
    register_merge,
    transport_map,
)
from adapterkit.methods.bottleneck import Bottleneck, PfeifferConfig
from adapterkit.model import AdaptedModel
from adapterkit.testing import tiny_batch, tiny_model

P0 = "layers.0.ffn_output.bottleneck."


def random_state(seed: int, r: int = 8, hidden: int = 32, layers: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i in range(layers):
        p = f"layers.{i}.ffn_output.bottleneck."
        state |= {p + "down.weight": torch.randn(r, hidden, generator=g), p + "down.bias": torch.randn(r, generator=g),
                  p + "up.weight": torch.randn(hidden, r, generator=g), p + "up.bias": torch.randn(hidden, generator=g)}
    return state


def permuted(state: dict[str, torch.Tensor], seed: int = 5) -> dict[str, torch.Tensor]:
    out = dict(state)
    for key in state:
        if key.endswith("down.weight"):
            p = key[: -len("down.weight")]
            perm = torch.randperm(state[key].shape[0], generator=torch.Generator().manual_seed(seed))
            out[p + "down.weight"], out[p + "down.bias"] = state[key][perm], state[p + "down.bias"][perm]
            out[p + "up.weight"] = state[p + "up.weight"][:, perm]
    return out


def snapshot(states: list[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in s.items()} for s in states]


def assert_unchanged(states: list[dict], before: list[dict]) -> None:
    for s, b in zip(states, before, strict=True):
        assert s.keys() == b.keys() and all(torch.equal(s[k], b[k]) for k in s)


def test_registry_lookup_and_unknown_name() -> None:
    assert {"average", "weighted", "ot_weights", "ot_activations"} <= set(MERGE_METHODS)
    assert get_merge("average") is MERGE_METHODS["average"]
    with pytest.raises(ConfigError, match="known.*average"):
        get_merge("nope")

    @register_merge("first_only_test")
    def first(states, **kw):  # noqa: ANN001, ANN003, ANN202
        return dict(states[0])

    try:
        assert merge_adapters("first_only_test", [{"a": torch.ones(1)}])["a"].item() == 1
    finally:
        del MERGE_METHODS["first_only_test"]


def test_average_and_weighted() -> None:
    a, b = random_state(0), random_state(1)
    before = snapshot([a, b])
    avg = merge_adapters("average", [a, b])
    assert all(torch.allclose(avg[k], (a[k] + b[k]) / 2) for k in a)
    w = merge_adapters("weighted", [a, b], weights=[3, 1])
    assert all(torch.allclose(w[k], 0.75 * a[k] + 0.25 * b[k]) for k in a)
    assert_unchanged([a, b], before)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"weights": [1.0]}, "2 adapters"), ({"weights": [1.0, -1.0]}, "non-negative"), ({"weights": [0, 0]}, "positive"),
     ({}, "required")],
)
def test_weighted_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        merge_adapters("weighted", [random_state(0), random_state(1)], **kwargs)


def test_average_names_key_and_adapter() -> None:
    a, b = random_state(0), random_state(1)
    b[P0 + "up.bias"] = torch.zeros(5)
    with pytest.raises(ConfigError, match=r"states\[1\].*layers.0.ffn_output.bottleneck.up.bias.*shape"):
        merge_adapters("average", [a, b])
    del b[P0 + "up.bias"]
    with pytest.raises(ConfigError, match=r"states\[1\].*up.bias.*missing"):
        merge_adapters("average", [a, b])
    with pytest.raises(ConfigError, match="weights"):
        merge_adapters("average", [a, a], weights=[1, 2])


def test_permuted_copy_aligns_back_exactly() -> None:
    a = random_state(0)
    b = permuted(a)
    assert not torch.equal(a[P0 + "down.weight"], b[P0 + "down.weight"])
    before = snapshot([a, b])
    aligned = align_to_anchor([a, b], 0, lambda i, p: neuron_cost_weights([a, b][i], a, p))[1]
    assert all(torch.equal(aligned[k], a[k]) for k in a)
    merged = merge_adapters("ot_weights", [a, b])
    assert all(torch.equal(merged[k], a[k]) for k in a)
    assert_unchanged([a, b], before)


def test_transport_map_square_is_permutation_over_n() -> None:
    cost = torch.rand(6, 6, generator=torch.Generator().manual_seed(0))
    t = transport_map(cost)
    assert torch.equal((t * 6).round().sum(0), torch.ones(6)) and torch.equal((t * 6).round().sum(1), torch.ones(6))
    assert set((t * 6).round().unique().tolist()) == {0.0, 1.0}


def neck_from(state: dict[str, torch.Tensor], prefix: str, activation: str = "relu") -> Bottleneck:
    r, hidden = state[prefix + "down.weight"].shape
    neck = Bottleneck(hidden, r, activation, "identity", 0.0, 1.0)
    neck.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    return neck.eval()


@pytest.mark.parametrize("cost_kind", ["weights", "activations"])
def test_alignment_preserves_the_function(cost_kind: str) -> None:
    a, b = random_state(0), random_state(1)
    x = torch.randn(20, 32, generator=torch.Generator().manual_seed(3))
    if cost_kind == "weights":
        cost = neuron_cost_weights(b, a, P0)
    else:
        acts = [neck_from(s, P0).act(neck_from(s, P0).down(x)) for s in (b, a)]
        cost = neuron_cost_activations(*acts)
    aligned = align_bottleneck(b, P0, transport_map(cost))
    assert not torch.equal(aligned[P0 + "down.weight"], b[P0 + "down.weight"])  # it did permute
    with torch.no_grad():
        assert torch.allclose(neck_from(aligned, P0)(x), neck_from(b, P0)(x), atol=1e-6)


def test_alignment_preserves_adapted_model_output() -> None:
    batch = tiny_batch(lengths=[8, 5])
    model = AdaptedModel(tiny_model("bert"))
    for name, seed in (("a", 0), ("b", 1)):
        model.add_adapter(name, PfeifferConfig(reduction_factor=4), activate=False)
        model.load_adapter_state_dict(name, random_state(seed))
    acts = [collect_bottleneck_activations(model, n, batch) for n in ("a", "b")]
    assert set(acts[0]) == {P0, "layers.1.ffn_output.bottleneck."} and acts[0][P0].shape == (13, 8)
    assert model.active_adapters == ()
    states = [model.adapter_state_dict(n) for n in ("a", "b")]
    costs = {"weights": lambda i, p: neuron_cost_weights(states[i], states[0], p),
             "activations": lambda i, p: neuron_cost_activations(acts[i][p], acts[0][p])}
    model.eval()
    model.set_active_adapters("b")
    with torch.no_grad():
        ref = model(**batch).logits
    for cost in costs.values():
        aligned = align_to_anchor(states, 0, cost)[1]
        model.add_adapter("c", PfeifferConfig(reduction_factor=4))
        model.load_adapter_state_dict("c", aligned)
        with torch.no_grad():
            assert torch.allclose(model(**batch).logits, ref, atol=1e-6)
        model.delete_adapter("c")


def test_unequal_widths_give_anchor_shapes_and_marginals() -> None:
    small, big = random_state(0, r=4), random_state(1, r=8)
    t = transport_map(neuron_cost_weights(small, big, P0))
    assert t.shape == (4, 8)
    assert torch.allclose(t.sum(1), torch.full((4,), 1 / 4, dtype=t.dtype), atol=1e-9)
    assert torch.allclose(t.sum(0), torch.full((8,), 1 / 8, dtype=t.dtype), atol=1e-9)
    for anchor, width in ((1, 8), (0, 4)):
        merged = merge_adapters("ot_weights", [small, big], anchor=anchor, weights=[1, 1])
        assert merged[P0 + "down.weight"].shape == (width, 32) and merged[P0 + "up.weight"].shape == (32, width)
    aligned = align_bottleneck(small, P0, t)
    # barycentric move: every anchor neuron gets the mean of the rows sent to it; Up mass is conserved
    assert torch.allclose(aligned[P0 + "up.weight"].sum(1), small[P0 + "up.weight"].sum(1), atol=1e-5)


def test_ot_activations_validation() -> None:
    a, b = random_state(0), random_state(1)
    with pytest.raises(ConfigError, match="activations: required"):
        merge_adapters("ot_activations", [a, b])
    good = {P0: torch.randn(5, 8), "layers.1.ffn_output.bottleneck.": torch.randn(5, 8)}
    with pytest.raises(ConfigError, match="one per adapter"):
        merge_adapters("ot_activations", [a, b], activations=[good])
    with pytest.raises(ConfigError, match=r"activations\[1\].*layers.1.*missing"):
        merge_adapters("ot_activations", [a, b], activations=[good, {P0: torch.randn(5, 8)}])
    with pytest.raises(ConfigError, match=r"activations\[1\].*expected \[tokens, 8\]"):
        merge_adapters("ot_activations", [a, b], activations=[good, {**good, P0: torch.randn(5, 3)}])
    merged = merge_adapters("ot_activations", [a, b], activations=[good, good])
    assert merged.keys() == a.keys()


def test_extra_module_tensors_are_averaged_and_checked() -> None:
    a, b = random_state(0), random_state(1)
    a[P0 + "act.numerator"], b[P0 + "act.numerator"] = torch.ones(3), 3 * torch.ones(3)
    merged = merge_adapters("ot_weights", [a, b])
    assert torch.equal(merged[P0 + "act.numerator"], 2 * torch.ones(3))
    b[P0 + "act.numerator"] = torch.ones(4)
    with pytest.raises(ConfigError, match="act.numerator"):
        merge_adapters("ot_weights", [a, b])


def test_merged_state_loads_and_trains() -> None:
    model = AdaptedModel(tiny_model("bert"))
    states = [random_state(0, r=8), random_state(1, r=4), random_state(2, r=8)]
    merged = merge_adapters("ot_weights", states, anchor=0)
    model.add_adapter("m", PfeifferConfig(reduction_factor=4))
    model.load_adapter_state_dict("m", merged)
    model.train()
    model(**tiny_batch(num_labels=2)).loss.backward()
    grads = [p.grad for p in model.adapter_parameters("m").values()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
