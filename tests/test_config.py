"""Method configs: strict parsing, type errors, validation, round trips and help texts."""
from __future__ import annotations

import dataclasses
import json
from typing import ClassVar

import pytest

from adapterkit.config import MethodConfig, opt, read_json
from adapterkit.errors import ConfigError
from adapterkit.methods.bottleneck import BottleneckConfig, HoulsbyConfig, ParallelConfig, PfeifferConfig
from adapterkit.methods.lora import LoRAConfig
from adapterkit.registry import METHODS, config_from_dict, get_method, register_method

get_method("lora")  # importing adapterkit.methods registers every built-in method
SOURCE = "runs/exp1/adapter_config.json"


def test_builtin_methods_are_registered() -> None:
    assert {"bottleneck", "houlsby", "pfeiffer", "parallel", "lora"} <= set(METHODS)
    for name, cls in METHODS.items():
        assert issubclass(cls, MethodConfig) and cls.method == name


def test_unknown_field_names_source_and_field() -> None:
    with pytest.raises(ConfigError) as info:
        LoRAConfig.from_dict({"method": "lora", "r": 4, "rank_typo": 3}, SOURCE)
    message = str(info.value)
    assert SOURCE in message and "rank_typo" in message and "'r'" in message  # lists known fields


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_rejects_unknown_fields(method: str) -> None:
    with pytest.raises(ConfigError, match="not_a_field"):
        config_from_dict({"method": method, "not_a_field": 1}, SOURCE)


@pytest.mark.parametrize(
    ("data", "field_name"),
    [
        ({"r": "8"}, "r"),
        ({"r": True}, "r"),
        ({"r": 8.5}, "r"),
        ({"alpha": "big"}, "alpha"),
        ({"targets": "query"}, "targets"),
        ({"targets": ["query", 3]}, "targets"),
        ({"layers": [0, "1"]}, "layers"),
        ({"learning_rate": "fast"}, "learning_rate"),
    ],
)
def test_type_errors_name_the_field(data: dict, field_name: str) -> None:
    with pytest.raises(ConfigError) as info:
        LoRAConfig.from_dict({"method": "lora", **data}, SOURCE)
    assert SOURCE in str(info.value) and field_name in str(info.value)


def test_coercion_of_json_values() -> None:
    cfg = LoRAConfig.from_dict({"method": "lora", "alpha": 32, "targets": ["key"], "layers": [0, 1]})
    assert cfg.alpha == 32.0 and isinstance(cfg.alpha, float)
    assert cfg.targets == ("key",) and cfg.layers == (0, 1)
    assert PfeifferConfig.from_dict({"bottleneck_size": None}).bottleneck_size is None
    with pytest.raises(ConfigError, match="placement"):
        BottleneckConfig.from_dict({"placement": "sideways"}, SOURCE)
    with pytest.raises(ConfigError, match="init"):
        BottleneckConfig.from_dict({"init": "random"}, SOURCE)


@pytest.mark.parametrize(
    ("cls", "kwargs", "field_name"),
    [
        (LoRAConfig, {"r": -1}, "r"),
        (LoRAConfig, {"r": 0}, "r"),
        (LoRAConfig, {"alpha": 0.0}, "alpha"),
        (LoRAConfig, {"dropout": 1.5}, "dropout"),
        (LoRAConfig, {"targets": ()}, "targets"),
        (LoRAConfig, {"targets": ("query", "qkv")}, "targets"),
        (PfeifferConfig, {"dropout": 1.5}, "dropout"),
        (PfeifferConfig, {"dropout": -0.1}, "dropout"),
        (PfeifferConfig, {"activation": "sparkle"}, "activation"),
        (PfeifferConfig, {"reduction_factor": -2.0}, "reduction_factor"),
        (PfeifferConfig, {"bottleneck_size": 0}, "bottleneck_size"),
        (PfeifferConfig, {"layers": ()}, "layers"),
        (PfeifferConfig, {"placement": "houlsby"}, "placement"),
        (HoulsbyConfig, {"placement": "parallel"}, "placement"),
        (ParallelConfig, {"placement": "pfeiffer"}, "placement"),
    ],
)
def test_validation_errors_name_the_field(cls: type, kwargs: dict, field_name: str) -> None:
    with pytest.raises(ConfigError, match=field_name):
        cls(**kwargs)
    with pytest.raises(ConfigError) as info:
        cls.from_dict({"method": cls.method, **kwargs}, SOURCE)
    assert str(info.value).startswith(SOURCE) and field_name in str(info.value)


def test_unknown_activation_lists_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        HoulsbyConfig(activation="sparkle")
    assert "sparkle" in str(info.value) and "relu" in str(info.value)


def test_method_mismatch_and_unknown_method() -> None:
    with pytest.raises(ConfigError, match="expected 'lora'"):
        LoRAConfig.from_dict({"method": "pfeiffer"}, SOURCE)
    with pytest.raises(ConfigError) as info:
        config_from_dict({"method": "magic"}, SOURCE)
    assert "magic" in str(info.value) and "lora" in str(info.value)
    with pytest.raises(ConfigError, match="method"):
        config_from_dict({"r": 8}, SOURCE)
    with pytest.raises(ConfigError, match="mapping"):
        LoRAConfig.from_dict(["r", 8], SOURCE)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_round_trip_every_method(method: str) -> None:
    cls = METHODS[method]
    config = cls()
    data = config.to_dict()
    assert data["method"] == method
    assert set(data) == {"method"} | {f.name for f in dataclasses.fields(cls)}
    again = config_from_dict(json.loads(json.dumps(data)), SOURCE)
    assert type(again) is cls and again == config
    assert again.to_dict() == data


def test_round_trip_non_default_values() -> None:
    config = LoRAConfig(r=4, alpha=8.0, dropout=0.1, targets=("key", "ffn_out"), layers=(0, 2), learning_rate=1e-3)
    assert LoRAConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    config2 = HoulsbyConfig(bottleneck_size=7, activation="gelu", init="near_identity", layers=(1,))
    assert config_from_dict(json.loads(json.dumps(config2.to_dict()))) == config2


@pytest.mark.parametrize("method", sorted(METHODS))
def test_help_texts_are_non_empty(method: str) -> None:
    texts = METHODS[method].help()
    assert set(texts) == {f.name for f in dataclasses.fields(METHODS[method])}
    assert all(isinstance(t, str) and t.strip() for t in texts.values()), texts


def test_mutable_defaults_are_not_shared() -> None:
    a, b = LoRAConfig(), LoRAConfig()
    assert a == b and a.to_dict() is not b.to_dict()


def test_read_json_errors_name_the_file(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="bad.json"):
        read_json(bad)
    (tmp_path / "list.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ConfigError, match="top level"):
        read_json(tmp_path / "list.json")
    with pytest.raises(ConfigError, match="not found"):
        read_json(tmp_path / "missing.json")


# -- the method protocol and composition --------------------------------------------------------------
def test_method_config_is_an_abstract_base_with_the_shared_fields() -> None:
    from dataclasses import dataclass
    from typing import ClassVar

    @dataclass
    class NoBuild(MethodConfig):
        method: ClassVar[str] = "test_no_build"

    with pytest.raises(TypeError, match="abstract"):
        NoBuild()
    for cls in METHODS.values():
        fields = {f.name for f in dataclasses.fields(cls)}
        assert {"layers", "learning_rate"} <= fields, cls
    with pytest.raises(ConfigError, match="learning_rate"):
        LoRAConfig(learning_rate=-1.0)


@dataclasses.dataclass
class ComboConfig(MethodConfig):
    """A composed method: other methods' configs held as nested fields, built side by side."""

    method: ClassVar[str] = "test_combo"
    parts: tuple[MethodConfig, ...] = opt((), "the methods combined")
    gate: LoRAConfig | None = opt(None, "an optional LoRA")

    def build(self, ctx):
        parts = [*self.parts, *([self.gate] if self.gate is not None else [])]
        return [att for part in parts for att in part.build(ctx)]


@pytest.fixture
def combo():
    """ComboConfig, registered for the test only."""
    register_method(ComboConfig)
    yield ComboConfig
    del METHODS["test_combo"]


def test_nested_configs_round_trip_through_dicts(combo) -> None:
    config = combo(parts=(PfeifferConfig(reduction_factor=4), HoulsbyConfig(layers=(1,))), gate=LoRAConfig(r=2))
    data = json.loads(json.dumps(config.to_dict()))
    assert data["parts"][0] == {**PfeifferConfig(reduction_factor=4).to_dict()} and data["gate"]["method"] == "lora"
    assert config_from_dict(data, SOURCE) == config
    data["parts"][1]["reduction_factor"] = "big"
    with pytest.raises(ConfigError, match=r"adapter_config.json: parts\[1\].*reduction_factor.*expected a number"):
        config_from_dict(data, SOURCE)
    data["parts"][1] = {"method": "lora", "r": 1}
    data["gate"] = {"method": "pfeiffer"}
    with pytest.raises(ConfigError, match="gate: expected a LoRAConfig, got method 'pfeiffer'"):
        config_from_dict(data, SOURCE)


def test_nested_configs_round_trip_through_save_and_load(combo, tmp_path) -> None:
    import torch

    from adapterkit import io as akio
    from adapterkit.model import AdaptedModel
    from adapterkit.testing import tiny_batch, tiny_model

    source = AdaptedModel(tiny_model("bert"))
    source.add_adapter("c", combo(parts=(PfeifferConfig(init="near_identity"),), gate=LoRAConfig(r=2)))
    with torch.no_grad():
        for p in source.adapter_parameters("c").values():
            p.normal_(0, 0.1)
    batch = tiny_batch()
    source.eval()
    expected = source(**batch).logits
    akio.save_adapter(source, "c", tmp_path / "c")
    target = AdaptedModel(tiny_model("bert"))
    akio.load_adapter(target, tmp_path / "c")
    target.eval()
    assert target.adapter_configs["c"] == source.adapter_configs["c"]
    assert torch.equal(target(**batch).logits, expected)


def test_parameter_groups_are_returned_by_the_method() -> None:
    import torch

    from adapterkit.config import ParamGroup
    from adapterkit.model import AdaptedModel
    from adapterkit.testing import tiny_model

    class HalfRate(LoRAConfig):
        method = "lora"  # not registered: only used directly

        def parameter_groups(self, modules):
            a = [m.lora_A for _, m in modules]
            return [ParamGroup("A", a, 0.5)]  # B is not claimed: it gets learning_rate

    model = AdaptedModel(tiny_model("bert"))
    model.add_adapter("lo", HalfRate(learning_rate=0.1))
    groups = {g["name"]: g for g in model.parameter_groups(1e-3)}
    assert set(groups) == {"lo.A@0.5", "lo@0.1", "base"}
    assert all(p.shape[0] == 8 for p in groups["lo.A@0.5"]["params"])  # lora_A is (r, in)
    assert len(groups["lo.A@0.5"]["params"]) == len(groups["lo@0.1"]["params"])
    torch.optim.AdamW(list(groups.values()))
