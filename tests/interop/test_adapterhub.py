"""AdapterHub import and the ``original_ln`` bottleneck placement, checked against AdapterHub's equations."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from adapterkit.errors import AdapterLoadError, ConfigError
from adapterkit.interop.adapterhub import import_adapterhub, load_adapterhub_adapter
from adapterkit.io import read_tensors
from adapterkit.methods.bottleneck import HoulsbyConfig, ParallelConfig, PfeifferConfig
from adapterkit.methods.lora import LoRAConfig
from adapterkit.methods.prefix import PrefixTuningConfig
from adapterkit.model import AdaptedModel
from adapterkit.testing import tiny_batch, tiny_model

ACT = {"relu": F.relu, "swish": F.silu}
PFEIFFER = {"mh_adapter": False, "output_adapter": True, "reduction_factor": 16, "non_linearity": "relu",
            "original_ln_before": True, "original_ln_after": True, "residual_before_ln": True, "ln_before": False,
            "ln_after": False, "adapter_residual_before_ln": False, "init_weights": "bert", "scaling": 1.0,
            "leave_out": [], "architecture": None, "phm_layer": False, "is_parallel": False, "dropout": 0.0}
HOULSBY = dict(PFEIFFER, mh_adapter=True, original_ln_before=False, non_linearity="swish")


def hub_weights(config: dict, model_type: str = "bert", prefix: str | None = None, name: str = "sst",
                layers: int = 2, hidden: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """AdapterHub-keyed random weights (non-zero, so the adapter matters)."""
    g = torch.Generator().manual_seed(seed)
    rf = config["reduction_factor"]
    r = int(hidden // (rf["default"] if isinstance(rf, dict) else rf))
    prefix = f"{model_type}." if prefix is None else prefix
    blocks = ["output"] + (["attention.output"] if config["mh_adapter"] else [])
    out = {}
    for i in range(layers):
        if i in config["leave_out"]:
            continue
        for block in blocks:
            p = f"{prefix}encoder.layer.{i}.{block}.adapters.{name}."
            out |= {p + "adapter_down.0.weight": torch.randn(r, hidden, generator=g) * 0.5,
                    p + "adapter_down.0.bias": torch.randn(r, generator=g) * 0.5,
                    p + "adapter_up.weight": torch.randn(hidden, r, generator=g) * 0.5,
                    p + "adapter_up.bias": torch.randn(hidden, generator=g) * 0.5}
    return out


def write_hub(directory: Path, config: dict, weights: dict[str, torch.Tensor], *, model_type: str = "bert",
              fmt: str = "bin", hidden: int = 32, name: str = "sst") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"config": config, "hidden_size": hidden, "model_class": "BertForSequenceClassification",
            "model_name": "tiny", "model_type": model_type, "name": name, "version": "0.2.0"}
    (directory / "adapter_config.json").write_text(json.dumps(meta))
    if fmt == "bin":
        torch.save(weights, directory / "pytorch_adapter.bin")
    else:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(directory / "adapter.safetensors"))
    return directory


def reference_model(model_type: str, config: dict, weights: dict[str, torch.Tensor], name: str = "sst") -> nn.Module:
    """The plain tiny model with AdapterHub's bottleneck equations written out as block output hooks."""
    model = tiny_model(model_type)
    act = ACT[config["non_linearity"]]
    base = getattr(model, model.base_model_prefix)
    for i, layer in enumerate(base.encoder.layer):
        for block_name, block in (("output", layer.output), ("attention.output", layer.attention.output)):
            key = next((k for k in weights if f"layer.{i}.{block_name}.adapters.{name}.adapter_up.weight" in k
                        and (block_name != "output" or ".attention." not in k)), None)
            if key is None:
                continue
            p = key[: -len("adapter_up.weight")]
            dw, db = weights[p + "adapter_down.0.weight"], weights[p + "adapter_down.0.bias"]
            uw, ub = weights[p + "adapter_up.weight"], weights[p + "adapter_up.bias"]

            def hook(mod, args, out, dw=dw, db=db, uw=uw, ub=ub):  # noqa: ANN001, ANN202
                h, x = args
                y0 = mod.dropout(mod.dense(h))  # residual_before_ln: the residual is the pre-LN output
                y = mod.LayerNorm(y0 + x) if config["original_ln_before"] else y0
                a = F.linear(act(F.linear(y, dw, db)), uw, ub) * config["scaling"]
                return mod.LayerNorm(a + y0 + x)  # original_ln_after with the block's own LayerNorm

            block.register_forward_hook(hook)
    return model.eval()


def logits(model: nn.Module, batch: dict) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize(
    ("model_type", "config", "fmt", "prefix"),
    [("bert", PFEIFFER, "bin", None), ("roberta", PFEIFFER, "safetensors", ""), ("bert", HOULSBY, "safetensors", None),
     ("roberta", HOULSBY, "bin", None), ("bert", dict(PFEIFFER, reduction_factor={"default": 8, "1": 8}), "bin", None)],
)
def test_imported_adapter_matches_adapterhub_equations(tmp_path: Path, model_type: str, config: dict, fmt: str,
                                                        prefix: str | None) -> None:
    weights = hub_weights(config, model_type, prefix)
    directory = write_hub(tmp_path / "hub", config, weights, model_type=model_type, fmt=fmt)
    batch = tiny_batch(lengths=[8, 6], pad_token_id=1 if model_type == "roberta" else 0)
    model = AdaptedModel(tiny_model(model_type))
    plain = logits(model, batch)
    assert load_adapterhub_adapter(model, directory) == "sst"
    assert model.active_adapters == ("sst",)
    out = logits(model, batch)
    assert not torch.allclose(out, plain, atol=1e-4)
    assert torch.allclose(out, logits(reference_model(model_type, config, weights), batch), atol=1e-5)


def test_import_returns_config_state_and_metadata(tmp_path: Path) -> None:
    directory = write_hub(tmp_path / "hub", PFEIFFER, hub_weights(PFEIFFER))
    config, state, meta = import_adapterhub(directory, name="mine")
    assert isinstance(config, PfeifferConfig) and config.original_ln and config.activation == "relu"
    assert config.reduction_factor == 16 and config.layers is None
    assert "layers.0.ffn_block.bottleneck.down.weight" in state and len(state) == 8
    assert meta["name"] == "mine" and meta["source_name"] == "sst"
    assert (meta["model_type"], meta["hidden_size"]) == ("bert", 32)
    config, state, _ = import_adapterhub(write_hub(tmp_path / "h", HOULSBY, hub_weights(HOULSBY), fmt="st"))
    assert isinstance(config, HoulsbyConfig) and not config.original_ln and config.activation == "swish"
    assert "layers.1.attn_output.bottleneck.up.bias" in state


def test_leave_out(tmp_path: Path) -> None:
    config = dict(PFEIFFER, leave_out=[1])
    weights = hub_weights(config)
    directory = write_hub(tmp_path / "hub", config, weights)
    model = AdaptedModel(tiny_model("bert"))
    load_adapterhub_adapter(model, directory, "x")
    assert model.adapter_configs["x"].layers == (0,)
    assert {k.split(".")[1] for k in model.adapter_state_dict("x")} == {"0"}
    batch = tiny_batch()
    assert torch.allclose(logits(model, batch), logits(reference_model("bert", config, weights), batch), atol=1e-5)


def test_parallel_config_maps_to_parallel(tmp_path: Path) -> None:
    config = dict(PFEIFFER, is_parallel=True, original_ln_before=False, reduction_factor=2, scaling=4.0)
    weights = hub_weights(config)
    model = AdaptedModel(tiny_model("bert"))
    load_adapterhub_adapter(model, write_hub(tmp_path / "hub", config, weights))
    assert isinstance(model.adapter_configs["sst"], ParallelConfig)
    # AdapterHub parallel: LN(y0 + s * A(x) + x) with x the block's residual input
    ref = tiny_model("bert")
    for i, layer in enumerate(ref.bert.encoder.layer):
        p = f"bert.encoder.layer.{i}.output.adapters.sst."

        def hook(mod, args, out, p=p):  # noqa: ANN001, ANN202
            h, x = args
            a = F.linear(F.relu(F.linear(x, weights[p + "adapter_down.0.weight"], weights[p + "adapter_down.0.bias"])),
                         weights[p + "adapter_up.weight"], weights[p + "adapter_up.bias"])
            return mod.LayerNorm(mod.dropout(mod.dense(h)) + 4.0 * a + x)

        layer.output.register_forward_hook(hook)
    batch = tiny_batch()
    assert torch.allclose(logits(model, batch), logits(ref, batch), atol=1e-5)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"architecture": "union"}, "config.architecture"),
        ({"architecture": "ia3"}, "config.architecture"),
        ({"phm_layer": True}, "config.phm_layer"),
        ({"ln_before": True}, "config.ln_before"),
        ({"ln_after": True}, "config.ln_after"),
        ({"scaling": "learned"}, "config.scaling"),
        ({"non_linearity": "gelu_new"}, "config.non_linearity"),
        ({"residual_before_ln": "post_add"}, "config.residual_before_ln"),
        ({"original_ln_after": False}, "config.original_ln_after"),
        ({"reduction_factor": {"default": 16, "0": 8}}, "config.reduction_factor"),
        ({"mh_adapter": True, "output_adapter": False}, "config.output_adapter"),
    ],
)
def test_rejected_configs_name_file_and_field(tmp_path: Path, change: dict, match: str) -> None:
    directory = write_hub(tmp_path / "hub", dict(PFEIFFER, **change), hub_weights(PFEIFFER))
    with pytest.raises(AdapterLoadError, match=f"adapter_config.json: {match}"):
        import_adapterhub(directory)


def test_missing_fields_and_model_type(tmp_path: Path) -> None:
    config = dict(PFEIFFER)
    del config["residual_before_ln"]
    with pytest.raises(AdapterLoadError, match="adapter_config.json: config.residual_before_ln: missing"):
        import_adapterhub(write_hub(tmp_path / "a", config, hub_weights(PFEIFFER)))
    with pytest.raises(AdapterLoadError, match="adapter_config.json: model_type: 'gpt2'"):
        import_adapterhub(write_hub(tmp_path / "b", PFEIFFER, hub_weights(PFEIFFER), model_type="gpt2"))


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(AdapterLoadError, match="not a directory"):
        import_adapterhub(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterLoadError, match="adapter_config.json: file not found"):
        import_adapterhub(tmp_path / "empty")
    directory = write_hub(tmp_path / "hub", PFEIFFER, hub_weights(PFEIFFER))
    (directory / "pytorch_adapter.bin").unlink()
    with pytest.raises(AdapterLoadError, match="weights: neither pytorch_adapter.bin nor adapter.safetensors"):
        import_adapterhub(directory)


def test_bad_weights(tmp_path: Path) -> None:
    weights = hub_weights(PFEIFFER)
    bad_key = {k.replace("adapter_down.0", "adapter_down.1"): v for k, v in weights.items()}
    with pytest.raises(AdapterLoadError, match=r"pytorch_adapter.bin: bert.encoder.layer.\d.output.adapters.sst.adapter_down.1"):
        import_adapterhub(write_hub(tmp_path / "a", PFEIFFER, bad_key))
    wrong = dict(weights)
    wrong["bert.encoder.layer.0.output.adapters.sst.adapter_up.weight"] = torch.zeros(32, 3)
    with pytest.raises(AdapterLoadError, match=r"adapter.safetensors: layers.0.ffn_block.bottleneck.up.weight: shape \(32, 3\)"):
        import_adapterhub(write_hub(tmp_path / "b", PFEIFFER, wrong, fmt="st"))
    houlsby_keys = hub_weights(HOULSBY)
    with pytest.raises(AdapterLoadError, match="attention.output.adapters.sst"):
        import_adapterhub(write_hub(tmp_path / "c", PFEIFFER, houlsby_keys))


def test_corrupt_and_unsafe_bin(tmp_path: Path) -> None:
    directory = write_hub(tmp_path / "hub", PFEIFFER, hub_weights(PFEIFFER))
    path = directory / "pytorch_adapter.bin"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(AdapterLoadError, match="pytorch_adapter.bin: cannot be read"):
        import_adapterhub(directory)
    torch.save({"x": Exploit()}, path)  # anything beyond tensors needs a full unpickler: refused
    with pytest.raises(AdapterLoadError, match=r"refusing to unpickle \S*pytorch_adapter.bin; convert it to safetensors"):
        import_adapterhub(directory)


class Exploit:
    pass


def test_model_compatibility_checks_and_rollback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = AdaptedModel(tiny_model("bert"))
    roberta = write_hub(tmp_path / "r", PFEIFFER, hub_weights(PFEIFFER, "roberta"), model_type="roberta")
    with pytest.raises(AdapterLoadError, match="adapter_config.json: model_type: adapter is for 'roberta'"):
        load_adapterhub_adapter(model, roberta)
    wide = write_hub(tmp_path / "w", PFEIFFER, hub_weights(PFEIFFER, hidden=64), hidden=64)
    with pytest.raises(AdapterLoadError, match="adapter_config.json: hidden_size: adapter has 64"):
        load_adapterhub_adapter(model, wide)
    deep = write_hub(tmp_path / "d", PFEIFFER, hub_weights(PFEIFFER, layers=3))
    with pytest.raises(AdapterLoadError, match="config.leave_out"):
        load_adapterhub_adapter(model, deep)
    ok = write_hub(tmp_path / "ok", PFEIFFER, hub_weights(PFEIFFER))

    def boom(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AdapterLoadError("boom")

    monkeypatch.setattr(model, "load_adapter_state_dict", boom)
    with pytest.raises(AdapterLoadError, match="boom"):
        load_adapterhub_adapter(model, ok)
    assert model.adapter_configs == {} and not any(".adapters." in n for n, _ in model.named_parameters())
    assert all(not layer.output.dropout._forward_hooks for layer in model.model.bert.encoder.layer)


def test_original_ln_config_sites_validation_and_training() -> None:
    model = AdaptedModel(tiny_model("bert"))
    model.add_adapter("h", HoulsbyConfig(original_ln=True, init="near_identity"))
    keys = set(model.adapter_state_dict("h"))
    assert "layers.0.attn_block.bottleneck.down.weight" in keys and "layers.1.ffn_block.bottleneck.up.bias" in keys
    model.train()
    model(**tiny_batch(num_labels=2)).loss.backward()
    assert all(p.grad is not None for p in model.adapter_parameters("h").values())
    model.delete_adapter("h")
    assert all(not layer.output.dropout._forward_hooks for layer in model.model.bert.encoder.layer)
    with pytest.raises(ConfigError, match="original_ln"):
        BottleneckConfigParallel()
    distil = AdaptedModel(tiny_model("distilbert"))
    with pytest.raises(ConfigError, match="original_ln: distilbert"):
        distil.add_adapter("p", PfeifferConfig(original_ln=True))
    assert distil.adapter_configs == {} and not any(".adapters." in n for n, _ in distil.named_parameters())


def BottleneckConfigParallel() -> ParallelConfig:  # noqa: N802
    return ParallelConfig(original_ln=True)


# --- real files written by the `adapters` library (scripts/make_adapterhub_fixtures.py) ------------------

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "adapterhub"
REAL = {
    ("bert", "seq_bn"): PfeifferConfig(original_ln=True, init="identity"),
    ("bert", "double_seq_bn"): HoulsbyConfig(init="identity"),
    ("bert", "par_bn"): ParallelConfig(init="identity"),
    ("roberta", "seq_bn"): PfeifferConfig(original_ln=True, init="identity"),
    ("roberta", "double_seq_bn"): HoulsbyConfig(init="identity"),
    ("roberta", "par_bn"): ParallelConfig(init="identity"),
    ("bert", "lora"): LoRAConfig(r=4, alpha=8.0, targets=("query", "key", "value", "ffn_in")),
    ("bert", "prefix_tuning"): PrefixTuningConfig(prefix_length=5, bottleneck_size=16),
    ("bert", "prefix_tuning_flat"): PrefixTuningConfig(prefix_length=3, reparameterize=False),
}


def fixture_model(arch: str, head: bool = True) -> nn.Module:
    from transformers import AutoModel, AutoModelForSequenceClassification

    base = FIXTURES / arch / "base"
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=3) if head else AutoModel.from_pretrained(base)
    return model.eval()


def run(model: nn.Module, expected: dict[str, torch.Tensor]) -> object:
    model.eval()
    with torch.no_grad():
        return model(input_ids=expected["input_ids"], attention_mask=expected["attention_mask"])


@pytest.mark.parametrize(("arch", "fixture"), sorted(REAL))
def test_real_adapterhub_files_give_adapterhub_outputs(arch: str, fixture: str) -> None:
    directory = FIXTURES / arch / fixture
    expected = read_tensors(directory / "expected.safetensors")
    model = AdaptedModel(fixture_model(arch))
    before = run(model, expected).logits
    name = load_adapterhub_adapter(model, directory)
    assert name == "sst" and model.adapter_configs[name] == REAL[arch, fixture]
    got = run(model, expected).logits
    assert not torch.allclose(before, expected["logits"], atol=1e-3)
    assert torch.allclose(got, expected["logits"], atol=1e-5), (got - expected["logits"]).abs().max()
    # without the head, onto the bare backbone: the last hidden state (padding positions aside)
    bare = AdaptedModel(fixture_model(arch, head=False))
    with pytest.raises(AdapterLoadError, match="head_config.json: head: .*load_head=False"):
        load_adapterhub_adapter(bare, directory)
    assert bare.adapter_configs == {}
    load_adapterhub_adapter(bare, directory, "x", load_head=False)
    mask = expected["attention_mask"].bool()
    hidden = run(bare, expected).last_hidden_state
    assert torch.allclose(hidden[mask], expected["hidden"][mask], atol=1e-5)


def test_real_head_mismatch_and_unsupported_head(tmp_path: Path) -> None:
    import shutil

    model = AdaptedModel(tiny_model("bert", num_labels=2, vocab_size=48, max_position_embeddings=24))
    with pytest.raises(AdapterLoadError, match=r"model_head.safetensors: classifier\.(weight|bias): shape \(3"):
        load_adapterhub_adapter(model, FIXTURES / "bert" / "seq_bn")
    assert model.adapter_configs == {}
    directory = Path(shutil.copytree(FIXTURES / "bert" / "seq_bn", tmp_path / "h"))
    head = json.loads((directory / "head_config.json").read_text())
    head["config"]["use_pooler"] = True
    (directory / "head_config.json").write_text(json.dumps(head))
    with pytest.raises(AdapterLoadError, match="head_config.json: config.use_pooler: True"):
        load_adapterhub_adapter(AdaptedModel(fixture_model("bert")), directory)


@pytest.mark.parametrize(
    ("fixture", "change", "field"),
    [
        ("lora", {"use_dora": True}, "config.use_dora"),
        ("lora", {"composition_mode": "scale"}, "config.composition_mode"),
        ("lora", {"vera_d": 0.1}, "config.vera_d"),
        ("lora", {"attn_matrices": ["q", "o"]}, "config.attn_matrices"),
        ("prefix_tuning", {"use_gating": True}, "config.use_gating"),
        ("prefix_tuning", {"leave_out": [0]}, "config.leave_out"),
        ("prefix_tuning", {"non_linearity": "relu"}, "config.non_linearity"),
        ("lora", {"architecture": "ia3"}, "config.architecture"),
        ("seq_bn", {"architecture": "union"}, "config.architecture"),
    ],
)
def test_real_lora_and_prefix_refusals(tmp_path: Path, fixture: str, change: dict, field: str) -> None:
    import shutil

    directory = Path(shutil.copytree(FIXTURES / "bert" / fixture, tmp_path / fixture))
    meta = json.loads((directory / "adapter_config.json").read_text())
    meta["config"].update(change)
    (directory / "adapter_config.json").write_text(json.dumps(meta))
    with pytest.raises(AdapterLoadError, match=f"adapter_config.json: {field}: "):
        import_adapterhub(directory)


def test_old_module_path_still_imports() -> None:
    import adapterkit.adapterhub as legacy

    assert legacy.load_adapterhub_adapter is load_adapterhub_adapter and legacy.import_adapterhub is import_adapterhub
