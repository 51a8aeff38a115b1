"""Saving and loading adapters: round trips, mismatch and corruption errors, atomic writes, no pickle."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from adapterkit import injection
from adapterkit import io as akio
from adapterkit.errors import AdapterLoadError
from adapterkit.methods.bottleneck import PfeifferConfig
from adapterkit.methods.lora import LoRAConfig
from adapterkit.model import AdaptedModel
from adapterkit.registry import METHODS, get_method
from adapterkit.testing import tiny_batch, tiny_model

get_method("lora")  # importing adapterkit.methods registers every built-in method
IDS = tiny_batch()["input_ids"]


def tiny(seed: int = 0, *, model_type: str = "bert", **overrides) -> AdaptedModel:
    return AdaptedModel(tiny_model(model_type, seed=seed, **overrides))


def logits(model: nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits


def trained(model: AdaptedModel, name: str, config, seed: int = 5) -> AdaptedModel:
    """Add adapter ``name`` with random (non-identity) weights."""
    model.add_adapter(name, config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.adapter_parameters(name).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


@pytest.fixture
def saved(tmp_path: Path) -> tuple[AdaptedModel, Path]:
    model = trained(tiny(), "pf", PfeifferConfig())
    return model, akio.save_adapter(model, "pf", tmp_path / "pf", include_head=True)


STANDALONE_METHODS = sorted(set(METHODS) - {"fusion"})
"""Fusion needs the adapters it fuses; its round trip is in tests/methods/test_fusion.py."""


@pytest.mark.parametrize("method", STANDALONE_METHODS)
def test_round_trip_every_method(method: str, tmp_path: Path) -> None:
    source = tiny(seed=0)
    if method == "prefix" and not source.spec.prefix_supported:
        pytest.skip("prefix unsupported")
    trained(source, "x", METHODS[method]())
    expected = logits(source)
    directory = akio.save_adapter(source, "x", tmp_path / "x")
    assert {p.name for p in directory.iterdir()} == {akio.CONFIG_NAME, akio.WEIGHTS_NAME, "README.md"}  # + the card
    target = tiny(seed=0)  # same base weights, fresh adapter-free model
    assert akio.load_adapter(target, directory) == "x"
    assert target.active_adapters == ("x",)
    assert target.adapter_configs["x"] == source.adapter_configs["x"]
    assert torch.equal(logits(target), expected)
    for key, tensor in source.adapter_state_dict("x").items():
        assert torch.equal(target.adapter_state_dict("x")[key], tensor), key


def test_saved_files_format(saved: tuple[AdaptedModel, Path]) -> None:
    model, directory = saved
    meta = json.loads((directory / akio.CONFIG_NAME).read_text())
    assert meta["format"] == "adapterkit" and meta["format_version"] == akio.FORMAT_VERSION == "1.1" and meta["name"] == "pf"
    assert meta["config"] == model.adapter_configs["pf"].to_dict()
    assert meta["base_model"]["model_type"] == "bert" and meta["base_model"]["hidden_size"] == 32
    assert meta["head"]["num_labels"] == 2 and meta["head"]["model_class"] == "BertForSequenceClassification"
    assert set(load_file(str(directory / akio.WEIGHTS_NAME))) == set(model.adapter_state_dict("pf"))


def test_head_save_and_load(saved: tuple[AdaptedModel, Path]) -> None:
    model, directory = saved
    expected = logits(model)
    other = tiny(seed=0)
    with torch.no_grad():  # a different head, as after fine-tuning another task
        other.model.classifier.weight.normal_()
    akio.load_adapter(other, directory, load_head=False)
    assert not torch.equal(logits(other), expected)
    other.delete_adapter("pf")
    akio.load_adapter(other, directory, name="renamed")
    assert "renamed" in other.adapter_configs
    assert torch.equal(logits(other), expected)
    head = load_file(str(directory / akio.HEAD_NAME))
    assert set(head) == {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"}


def test_saving_without_head_removes_a_stale_head_file(saved: tuple[AdaptedModel, Path]) -> None:
    model, directory = saved
    akio.save_adapter(model, "pf", directory)
    assert not (directory / akio.HEAD_NAME).exists()
    assert "head" not in json.loads((directory / akio.CONFIG_NAME).read_text())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"hidden_size": 48}, "base_model.hidden_size"),
        ({"num_hidden_layers": 3}, "base_model.num_layers"),
        ({"model_type": "roberta"}, "base_model.model_type"),
    ],
)
def test_mismatched_model_is_rejected(saved: tuple[AdaptedModel, Path], kwargs: dict, field: str) -> None:
    _, directory = saved
    other = tiny(**kwargs)
    with pytest.raises(AdapterLoadError) as info:
        akio.load_adapter(other, directory)
    message = str(info.value)
    assert str(directory / akio.CONFIG_NAME) in message and field in message
    assert other.adapter_configs == {} and injection.wrappers(other.model) == {}


def test_truncated_safetensors(saved: tuple[AdaptedModel, Path]) -> None:
    _, directory = saved
    weights = directory / akio.WEIGHTS_NAME
    data = weights.read_bytes()
    for cut in (len(data) // 2, 8, 3):
        weights.write_bytes(data[:cut])
        other = tiny()
        with pytest.raises(AdapterLoadError, match=str(weights)):
            akio.load_adapter(other, directory)
        assert other.adapter_configs == {} and injection.wrappers(other.model) == {}
    weights.write_bytes(b"")
    with pytest.raises(AdapterLoadError, match=akio.WEIGHTS_NAME):
        akio.load_adapter(tiny(), directory)
    weights.unlink()
    with pytest.raises(AdapterLoadError, match="file not found"):
        akio.load_adapter(tiny(), directory)


def test_corrupt_json(saved: tuple[AdaptedModel, Path]) -> None:
    _, directory = saved
    config = directory / akio.CONFIG_NAME
    config.write_text('{"format": "adapterkit", ', encoding="utf-8")
    with pytest.raises(AdapterLoadError, match=str(config)):
        akio.load_adapter(tiny(), directory)
    config.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(AdapterLoadError, match=str(config)):
        akio.load_adapter(tiny(), directory)
    config.unlink()
    with pytest.raises(AdapterLoadError, match="not found"):
        akio.load_adapter(tiny(), directory)
    with pytest.raises(AdapterLoadError, match="not a directory"):
        akio.load_adapter(tiny(), directory / "nowhere")


def _edit_meta(directory: Path, edit) -> Path:
    path = directory / akio.CONFIG_NAME
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda m: m.update(surprise=1), "surprise"),
        (lambda m: m.update(format="other"), "format"),
        (lambda m: m.pop("base_model"), "base_model"),
        (lambda m: m["base_model"].pop("hidden_size"), "base_model.hidden_size"),
        (lambda m: m.pop("config"), "config"),
    ],
)
def test_bad_adapter_config_fields(saved: tuple[AdaptedModel, Path], edit, expected: str) -> None:
    _, directory = saved
    path = _edit_meta(directory, edit)
    with pytest.raises(AdapterLoadError) as info:
        akio.load_adapter(tiny(), directory)
    assert str(path) in str(info.value) and expected in str(info.value)


def test_unknown_field_in_method_config(saved: tuple[AdaptedModel, Path]) -> None:
    _, directory = saved
    path = _edit_meta(directory, lambda m: m["config"].update(squeeze=3))
    other = tiny()
    with pytest.raises(AdapterLoadError) as info:
        akio.load_adapter(other, directory)
    message = str(info.value)
    assert str(path) in message and "config" in message and "squeeze" in message
    assert other.adapter_configs == {}
    _edit_meta(directory, lambda m: m["config"].pop("squeeze"))
    _edit_meta(directory, lambda m: m["config"].update(dropout=2.0))
    with pytest.raises(AdapterLoadError, match="dropout"):
        akio.load_adapter(tiny(), directory)


def test_wrong_shape_tensor(saved: tuple[AdaptedModel, Path]) -> None:
    _, directory = saved
    weights = directory / akio.WEIGHTS_NAME
    tensors = load_file(str(weights))
    key = sorted(tensors)[0]
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, *tensors[key].shape[1:])
    save_file(tensors, str(weights))
    other = tiny()
    with pytest.raises(AdapterLoadError) as info:
        akio.load_adapter(other, directory)
    assert str(weights) in str(info.value) and key in str(info.value)
    assert other.adapter_configs == {} and injection.wrappers(other.model) == {}  # the failed adapter is removed


def test_missing_and_unexpected_tensor_keys(saved: tuple[AdaptedModel, Path]) -> None:
    _, directory = saved
    weights = directory / akio.WEIGHTS_NAME
    tensors = load_file(str(weights))
    key = sorted(tensors)[0]
    tensors["layers.0.bogus.weight"] = tensors.pop(key)
    save_file(tensors, str(weights))
    with pytest.raises(AdapterLoadError) as info:
        akio.load_adapter(tiny(), directory)
    assert key in str(info.value) and "layers.0.bogus.weight" in str(info.value)


def test_head_with_different_number_of_labels(saved: tuple[AdaptedModel, Path]) -> None:
    _, directory = saved
    other = tiny(num_labels=3)
    before = {k: v.clone() for k, v in other.head_state_dict().items()}
    with pytest.raises(AdapterLoadError) as info:
        akio.load_adapter(other, directory)
    message = str(info.value)
    assert str(directory / akio.HEAD_NAME) in message
    assert "classifier.weight" in message or "classifier.bias" in message  # names the mismatched key
    for key, value in other.head_state_dict().items():  # nothing was half-copied
        assert torch.equal(value, before[key]), key
    # the adapter alone still loads onto the 3-label model
    fresh = tiny(num_labels=3)
    akio.load_adapter(fresh, directory, load_head=False)
    assert fresh.active_adapters == ("pf",)


def test_failed_head_load_leaves_no_adapter(saved: tuple[AdaptedModel, Path]) -> None:
    _, directory = saved
    other = tiny(num_labels=3)
    with pytest.raises(AdapterLoadError):
        akio.load_adapter(other, directory)
    assert other.adapter_configs == {} and injection.wrappers(other.model) == {}


def test_atomic_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    model = trained(tiny(), "lo", LoRAConfig())
    directory = akio.save_adapter(model, "lo", tmp_path / "out", include_head=True)
    akio.save_adapter(model, "lo", directory, include_head=True)  # overwrite in place
    assert {p.name for p in directory.iterdir()} == {akio.CONFIG_NAME, akio.WEIGHTS_NAME, akio.HEAD_NAME, "README.md"}


def test_failure_mid_write_keeps_the_old_files(saved: tuple[AdaptedModel, Path], monkeypatch) -> None:
    model, directory = saved
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    with torch.no_grad():
        for p in model.adapter_parameters("pf").values():
            p.add_(1.0)

    def failing_replace(src, dst) -> None:
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(akio.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        akio.save_adapter(model, "pf", directory, include_head=True)
    with pytest.raises(OSError, match="simulated"):
        akio.atomic_write_json(directory / akio.CONFIG_NAME, {"format": "broken"})
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in directory.iterdir()}
    assert after == before  # old files intact, no temporary file left behind


def test_loading_never_unpickles(saved: tuple[AdaptedModel, Path], monkeypatch) -> None:
    _, directory = saved

    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used while loading an adapter")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    other = tiny()
    akio.load_adapter(other, directory)
    assert other.active_adapters == ("pf",)
    assert not any(p.suffix in {".bin", ".pt", ".pkl"} for p in directory.iterdir())
    assert os.path.getsize(directory / akio.WEIGHTS_NAME) > 0


@pytest.mark.parametrize("method", STANDALONE_METHODS)
def test_head_round_trip_every_method(method: str, tmp_path: Path) -> None:
    """Head keys must not depend on which adapter wraps what (e.g. a soft prompt wrapping the backbone)."""
    source = trained(tiny(seed=0), "x", METHODS[method]())
    with torch.no_grad():
        source.model.classifier.weight.normal_()
    expected = logits(source)
    directory = akio.save_adapter(source, "x", tmp_path / "x", include_head=True)
    assert set(load_file(str(directory / akio.HEAD_NAME))) == {
        "bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"
    }
    target = tiny(seed=0)
    akio.load_adapter(target, directory)
    assert torch.equal(logits(target), expected)


# --- reliability (issue 16): bad adapter files, full disks, permissions, pickles ------------------


@pytest.mark.parametrize("corrupt, match", [
    (lambda t: {k: v.to(torch.int32) for k, v in t.items()}, r"dtype torch.int32 is not a floating-point type"),
    (lambda t: {k: torch.full_like(v, float("nan")) for k, v in t.items()}, r"all values are NaN or infinite"),
    (lambda t: {k: (v.clone().index_fill_(0, torch.tensor([0]), float("inf")) if v.ndim else v) for k, v in t.items()},
     r"\d+ of \d+ values are NaN or infinite"),
])
def test_unusable_tensors_are_refused(saved: tuple[AdaptedModel, Path], corrupt, match: str) -> None:
    _, directory = saved
    path = directory / akio.WEIGHTS_NAME
    save_file(corrupt(load_file(str(path))), str(path))
    with pytest.raises(AdapterLoadError, match=rf"adapter\.safetensors: layers\.\d+\.\S+: {match}"):
        akio.load_adapter(tiny(), directory)
    head = directory / akio.HEAD_NAME
    save_file({k: v.to(torch.int32) for k, v in load_file(str(head)).items()}, str(head))
    with pytest.raises(AdapterLoadError, match=r"head\.safetensors: \S+: dtype torch.int32"):
        akio.load_head_weights(tiny(), head)


@pytest.mark.parametrize("version, match", [
    (2, r"format_version: 2 is not supported .*newer adapterkit"),
    ("1", r"format_version: expected a version number .*, got '1'"),
    ("one", r"format_version: expected a version number .*, got 'one'"),
    (None, r"format_version: expected a version number .*, got None"),
    (0, r"format_version: 0 is not supported"),
    (True, r"format_version: expected a version number .*, got True"),
])
def test_format_version_checked(saved: tuple[AdaptedModel, Path], version, match: str) -> None:
    _, directory = saved
    meta = json.loads((directory / akio.CONFIG_NAME).read_text())
    meta["format_version"] = version
    (directory / akio.CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(AdapterLoadError, match=rf"adapter_config\.json: {match}"):
        akio.read_adapter_config(directory)


def test_head_num_labels_must_match_the_head_tensors(saved: tuple[AdaptedModel, Path]) -> None:
    _, directory = saved
    meta = json.loads((directory / akio.CONFIG_NAME).read_text())
    meta["head"]["num_labels"] = 3
    (directory / akio.CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(AdapterLoadError, match=r"adapter_config\.json: head\.num_labels: 3, but no tensor in "
                                               r"head\.safetensors has 3 outputs"):
        akio.load_adapter(tiny(), directory)


def test_a_two_label_head_on_a_three_label_model(saved: tuple[AdaptedModel, Path]) -> None:
    _, directory = saved
    with pytest.raises(AdapterLoadError, match=r"head\.safetensors: classifier\.\w+: shape \(2,( 32)?\) does not "
                                               r"match the model's \(3,( 32)?\) \(a different label set\?\)"):
        akio.load_adapter(tiny(num_labels=3), directory)


def test_disk_full_leaves_no_complete_looking_file(tmp_path: Path, monkeypatch) -> None:
    import errno

    model = trained(tiny(), "pf", PfeifferConfig())

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(akio, "save_file", full)
    with pytest.raises(OSError, match=r"pf/adapter\.safetensors: cannot write \(No space left on device\)") as info:
        akio.save_adapter(model, "pf", tmp_path / "pf", include_head=True)
    assert info.value.errno == errno.ENOSPC
    assert list((tmp_path / "pf").iterdir()) == []  # no temporary file, nothing that looks like an adapter
    with pytest.raises(AdapterLoadError, match="adapter_config.json"):
        akio.load_adapter(tiny(), tmp_path / "pf")


def test_saved_files_honour_the_umask(tmp_path: Path) -> None:
    model = trained(tiny(), "pf", PfeifferConfig())
    old = os.umask(0o022)
    try:
        akio.save_adapter(model, "pf", tmp_path / "a", include_head=True)
        os.umask(0o077)
        akio.atomic_write_json(tmp_path / "private.json", {})
    finally:
        os.umask(old)
    for name in (akio.CONFIG_NAME, akio.WEIGHTS_NAME, akio.HEAD_NAME):
        assert (tmp_path / "a" / name).stat().st_mode & 0o777 == 0o644, name
    assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600


def test_safe_torch_load_refuses_pickles(tmp_path: Path) -> None:
    path = tmp_path / "optimizer.pt"
    torch.save({"state": {}, "param_groups": [{"lr": 0.1}]}, path)
    assert akio.safe_torch_load(path)["param_groups"][0]["lr"] == 0.1
    torch.save({"x": _NotATensor()}, path)
    with pytest.raises(AdapterLoadError, match=r"refusing to unpickle \S*optimizer\.pt; convert it to safetensors"):
        akio.safe_torch_load(path)
    torch.save({"x": torch.zeros(3)}, path)
    path.write_bytes(path.read_bytes()[:60])  # truncated
    with pytest.raises(AdapterLoadError, match=r"optimizer\.pt: cannot be read as a torch tensor file"):
        akio.safe_torch_load(path)


class _NotATensor:
    pass


# -- format versions ------------------------------------------------------------------------------------
FIXTURES = Path(__file__).parent / "fixtures" / "format_1_0"


@pytest.mark.parametrize("method", ["pfeiffer", "lora", "prefix", "adaptable"])
def test_files_written_before_format_1_1_still_load(method: str) -> None:
    """Adapter directories saved by the previous release (format_version 1) load and give its logits."""
    expected = load_file(str(FIXTURES / "expected_logits.safetensors"))[method]
    model = tiny(seed=0)
    assert akio.load_adapter(model, FIXTURES / method) == method
    assert torch.allclose(logits(model), expected, atol=1e-6)


def _rewrite(directory: Path, **changes) -> Path:
    meta = json.loads((directory / akio.CONFIG_NAME).read_text())
    for key, value in changes.items():
        if key == "config_extra":
            meta["config"].update(value)
        else:
            meta[key] = value
    (directory / akio.CONFIG_NAME).write_text(json.dumps(meta))
    return directory


@pytest.mark.parametrize("version", ["one", None, True, 1.5, [1], "1.x", "-1", "1"])
def test_format_version_must_be_a_version_number(saved, version) -> None:
    _, directory = saved
    _rewrite(directory, format_version=version)
    with pytest.raises(AdapterLoadError, match=r"adapter_config.json: format_version: expected a version number"):
        akio.load_adapter(tiny(), directory)


@pytest.mark.parametrize("version", [2, "2.0", "3.1"])
def test_a_newer_major_format_is_refused(saved, version) -> None:
    _, directory = saved
    _rewrite(directory, format_version=version)
    with pytest.raises(AdapterLoadError, match=r"adapter_config.json: format_version: .*not supported \(written by a newer, incompatible"):
        akio.load_adapter(tiny(), directory)


def test_a_newer_minor_format_drops_unknown_fields_with_a_warning(saved) -> None:
    source, directory = saved
    expected = logits(source)
    _rewrite(directory, format_version="1.99", config_extra={"future_knob": 3}, provenance={"by": "future"})
    target = tiny()
    with pytest.warns(UserWarning) as caught:
        akio.load_adapter(target, directory)
    text = " ".join(str(w.message) for w in caught)
    assert "future_knob" in text and "provenance" in text and str(directory / akio.CONFIG_NAME) in text
    assert target.adapter_configs["pf"] == source.adapter_configs["pf"]
    assert torch.equal(logits(target), expected)


def test_the_current_minor_format_stays_strict_about_unknown_fields(saved) -> None:
    _, directory = saved
    _rewrite(directory, config_extra={"future_knob": 3})
    with pytest.raises(AdapterLoadError, match="future_knob: unknown field"):
        akio.load_adapter(tiny(), directory)
