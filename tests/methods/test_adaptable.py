"""Adaptable Adapters: switch semantics, determinism, learning rates, layer selection and AA-focused configs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from adapterkit import io as akio
from adapterkit.errors import ConfigError
from adapterkit.methods.adaptable import (
    AdaptableConfig,
    SwitchedAdapter,
    aa_focused_config,
    parameter_report,
    read_selection,
    selected_layers,
    selection_record,
    set_tau,
    switched_modules,
    tau_callback,
    write_selection,
)
from adapterkit.methods.bottleneck import PfeifferConfig
from adapterkit.methods.rational import Rational
from adapterkit.model import AdaptedModel
from adapterkit.testing import padded_batch, routed_vs_solo, tiny_adapted, tiny_batch, tiny_model

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def adapted(config: AdaptableConfig | None = None, layers: int = 2) -> AdaptedModel:
    model = AdaptedModel(tiny_model("bert", num_hidden_layers=layers, **NO_DROPOUT))
    model.add_adapter("aa", config or AdaptableConfig())
    return model


def set_switch(model: AdaptedModel, layer: int, skip: float, adapter: float) -> None:
    with torch.no_grad():
        dict(switched_modules(model, "aa"))[layer].switch.copy_(torch.tensor([skip, adapter]))


def test_defaults_follow_the_paper() -> None:
    config = AdaptableConfig()
    assert (config.reduction_factor, config.tau, config.switch_init) == (16.0, 0.1, (0.5, 0.5))
    assert (config.learning_rate, config.switch_lr, config.rational_lr) == (1e-4, 0.05, 0.01)
    model = adapted()
    modules = switched_modules(model, "aa")
    assert [i for i, _ in modules] == [0, 1]
    neck = modules[0][1].bottleneck
    assert isinstance(neck.act, Rational) and neck.act.init == "identity" and neck.down.weight.shape == (2, 32)
    assert "layers.0.ffn_output.switch" in model.adapter_state_dict("aa")


@pytest.mark.parametrize(("field", "value"), [("tau", 0.0), ("rational_init", "cubic"), ("switch_init", (1.0,)),
                                              ("tau_schedule", "cosine"), ("tau_min", 0.5), ("placement", "houlsby")])
def test_invalid_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        AdaptableConfig(**{field: value})


def test_fresh_adapter_is_an_exact_no_op_in_training_and_evaluation() -> None:
    batch = tiny_batch()
    base = tiny_model("bert", **NO_DROPOUT)
    before = logits(base.eval(), batch)
    model = AdaptedModel(base)
    model.add_adapter("aa", AdaptableConfig())  # identity rational, Up = 0
    set_switch(model, 0, 0.0, 1.0)  # layer 0 runs its (zero) adapter at evaluation too
    assert torch.equal(logits(model.eval(), batch), before)
    assert torch.equal(logits(model.train(), batch), before)


def test_evaluation_is_hard_and_skips_the_bottleneck() -> None:
    model = adapted(AdaptableConfig(init="near_identity"))
    model.eval()
    batch = tiny_batch()
    calls: list[int] = []
    for i, module in switched_modules(model, "aa"):
        module.bottleneck.register_forward_hook(lambda *_, i=i: calls.append(i))
    plain = logits(model, batch)  # initial logits tie: skip wins everywhere
    assert calls == [] and selected_layers(model, "aa") == []
    set_switch(model, 1, -1.0, 2.0)
    one = logits(model, batch)
    assert calls == [1] and not torch.equal(one, plain)
    assert torch.equal(logits(model, batch), one)  # deterministic
    set_switch(model, 0, 3.0, 2.9)
    set_switch(model, 1, 3.0, 2.9)
    calls.clear()
    assert torch.equal(logits(model, batch), plain) and calls == []


def test_training_weights_are_per_example_and_seeded() -> None:
    module = SwitchedAdapter(nn.Identity(), (0.5, 0.5), tau=0.1)  # type: ignore[arg-type]
    torch.manual_seed(3)
    w = module.gate_weights(64)
    torch.manual_seed(3)
    assert torch.equal(module.gate_weights(64), w)
    assert w.shape == (64, 2) and torch.allclose(w.sum(-1), torch.ones(64))
    assert 0 < (w[:, 1] > 0.5).sum() < 64  # different examples pick different sides
    hard = SwitchedAdapter(nn.Identity(), (0.5, 0.5), tau=0.1, hard_train=True)  # type: ignore[arg-type]
    assert set(hard.gate_weights(16).flatten().tolist()) <= {0.0, 1.0}


def test_training_forward_is_stochastic_but_reproducible() -> None:
    model = adapted(AdaptableConfig(init="near_identity", scaling=50.0)).train()
    batch = tiny_batch(batch_size=4)
    torch.manual_seed(0)
    first = logits(model, batch)
    torch.manual_seed(0)
    assert torch.equal(logits(model, batch), first)
    assert not torch.equal(logits(model, batch), first)


def train_steps(seed: int, steps: int = 4) -> AdaptedModel:
    model = adapted(AdaptableConfig(init="near_identity"))
    optimizer = torch.optim.AdamW(model.parameter_groups(1e-3))
    torch.manual_seed(seed)
    model.train()
    for step in range(steps):
        optimizer.zero_grad()
        model(**tiny_batch(batch_size=4, num_labels=2, seed=step)).loss.backward()
        optimizer.step()
    return model


def test_selection_is_reproducible_for_a_fixed_seed() -> None:
    one, two = train_steps(seed=5), train_steps(seed=5)
    record = selection_record(one, "aa")
    assert record == selection_record(two, "aa")
    assert record["logits"] != {"0": [0.5, 0.5], "1": [0.5, 0.5]}  # the switches moved
    assert record["layers"] == selected_layers(one, "aa")
    assert record["num_layers"] == 2 and record["tau"] == 0.1


def test_parameter_groups_get_their_learning_rates() -> None:
    model = adapted()
    groups = model.parameter_groups(3e-3)
    names = {id(p): k for k, p in model.adapter_parameters("aa").items()}
    by_lr = {g["lr"]: {names.get(id(p), "head") for p in g["params"]} for g in groups}
    assert set(by_lr) == {1e-4, 0.05, 0.01, 3e-3}
    assert by_lr[0.05] == {"layers.0.ffn_output.switch", "layers.1.ffn_output.switch"}
    assert by_lr[0.01] == {f"layers.{i}.ffn_output.bottleneck.act.{p}" for i in (0, 1)
                           for p in ("numerator", "denominator")}
    assert all(".down." in k or ".up." in k for k in by_lr[1e-4]) and len(by_lr[1e-4]) == 8
    assert by_lr[3e-3] == {"head"}


def test_tau_schedule_and_callback() -> None:
    config = AdaptableConfig(tau=1.0, tau_schedule="anneal", tau_min=0.1, anneal_rate=0.01)
    assert config.tau_at(0) == 1.0 and config.tau_at(100) == pytest.approx(0.36788, rel=1e-4)
    assert config.tau_at(10_000) == 0.1 and AdaptableConfig().tau_at(10_000) == 0.1
    model = adapted(config)
    callback = tau_callback(model, "aa")

    class State:
        global_step = 100

    callback.on_step_begin(None, State(), None)
    assert all(m.tau == pytest.approx(0.36788, rel=1e-4) for _, m in switched_modules(model, "aa"))
    set_tau(model, "aa", 0.5)
    assert selection_record(model, "aa")["tau"] == 0.5


def test_selection_files_round_trip_and_errors_name_the_field(tmp_path: Path) -> None:
    model = adapted(layers=3)
    set_switch(model, 2, 0.0, 1.0)
    path = write_selection(tmp_path / "sel" / "selection.json", selection_record(model, "aa"))
    record = read_selection(path)
    assert record["layers"] == [2] and record["logits"]["2"] == [0.0, 1.0] and record["num_layers"] == 3
    bad = dict(record, layers=[5])
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match=r"bad\.json: layers: .*out of range"):
        read_selection(tmp_path / "bad.json")
    (tmp_path / "nolayers.json").write_text(json.dumps({"num_layers": 3}))
    with pytest.raises(ConfigError, match=r"nolayers\.json: layers: missing"):
        read_selection(tmp_path / "nolayers.json")


def test_aa_focused_config_is_a_plain_pfeiffer_adapter(tmp_path: Path) -> None:
    source = adapted(AdaptableConfig(rational_init="one"), layers=3)
    set_switch(source, 0, 0.0, 1.0)
    set_switch(source, 2, 0.0, 1.0)
    config = aa_focused_config(selection_record(source, "aa"), dropout=0.1)
    assert type(config) is PfeifferConfig
    assert (config.layers, config.activation, config.dropout, config.learning_rate) == ((0, 2), "rational_one", 0.1, 1e-4)
    assert aa_focused_config([1]).activation == "rational"

    model = AdaptedModel(tiny_model("bert", num_hidden_layers=3))
    model.add_adapter("focused", config)
    with torch.no_grad():
        for p in model.adapter_parameters("focused").values():
            p.normal_(0, 0.1)
    assert sorted(model.adapter_state_dict("focused"))[0] == "layers.0.ffn_output.bottleneck.act.denominator"
    batch = tiny_batch()
    expected = logits(model.eval(), batch)
    akio.save_adapter(model, "focused", tmp_path / "focused")
    other = AdaptedModel(tiny_model("bert", num_hidden_layers=3))
    akio.load_adapter(other, tmp_path / "focused")
    assert other.adapter_configs["focused"] == config
    assert torch.equal(logits(other.eval(), batch), expected)


def test_aa_focused_needs_a_selected_layer() -> None:
    with pytest.raises(ConfigError, match="layers: no layer selected"):
        aa_focused_config(selection_record(adapted(), "aa"))
    with pytest.raises(ConfigError, match="not_a_field"):
        aa_focused_config([0], not_a_field=1)


def test_parameter_report_matches_counted_parameters() -> None:
    model = AdaptedModel(tiny_model("bert", num_hidden_layers=3))
    model.add_adapter("aa", AdaptableConfig(reduction_factor=4))
    model.add_adapter("std", PfeifferConfig(reduction_factor=4))
    model.add_adapter("focused", aa_focused_config([0, 2], reduction_factor=4))
    counts = model.count_parameters()
    report = parameter_report(32, 3, reduction_factor=4, selected=[0, 2])
    assert report == {"standard": counts["adapter:std"], "adaptable": counts["adapter:aa"],
                      "aa_focused": counts["adapter:focused"]}
    assert report["aa_focused"] < 0.7 * report["standard"]


def test_selection_functions_reject_other_methods() -> None:
    model = AdaptedModel(tiny_model("bert"))
    model.add_adapter("p", PfeifferConfig())
    with pytest.raises(ConfigError, match="not an adaptable adapter"):
        selected_layers(model, "p")


# -- mixed-adapter batches (adapter_names=): each row equals its solo run --------------------------------
def test_routing_adaptable_in_evaluation_and_a_clear_refusal_in_training() -> None:
    model = tiny_adapted("bert", {"on": AdaptableConfig(init="near_identity", switch_init=(0.0, 1.0)),
                                  "off": AdaptableConfig(init="near_identity", switch_init=(1.0, 0.0))})
    assert routed_vs_solo(model, padded_batch("bert", 4), ["on", "off", None, "on"]) <= 1e-5
    model.train()
    with pytest.raises(ConfigError, match=r"adapter 'on' \(method 'adaptable'\) cannot be routed per example: in "
                                          r"training its Gumbel switch"):
        model(**padded_batch("bert", 2), adapter_names=["on", None])
