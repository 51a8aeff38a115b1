"""peft LoRA import and export, checked against peft itself on tiny models."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adapterkit.errors import AdapterLoadError, ConfigError
from adapterkit.interop.peft import load_peft_adapter, save_peft_adapter
from adapterkit.methods.bottleneck import PfeifferConfig
from adapterkit.methods.lora import LoRAConfig
from adapterkit.model import AdaptedModel
from adapterkit.testing import tiny_batch, tiny_model

peft = pytest.importorskip("peft")  # a dev dependency (pyproject.toml): always there under CI


def randomize(module: torch.nn.Module, seed: int = 1) -> None:
    """Random values in every trainable tensor, so that LoRA B and the head matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def logits(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def peft_dir(tmp_path: Path, model_type: str = "bert", **lora) -> tuple[Path, torch.Tensor]:
    """A peft LoRA directory saved by peft from a tiny model, and peft's logits on ``tiny_batch()``."""
    base = tiny_model(model_type, num_labels=3)
    pm = peft.get_peft_model(base, peft.LoraConfig(task_type="SEQ_CLS", **{"r": 4, "lora_alpha": 8, **lora}))
    randomize(pm)
    out = tmp_path / "peft"
    pm.save_pretrained(out)
    return out, logits(pm, tiny_batch(num_labels=3))


@pytest.mark.parametrize(
    ("model_type", "lora", "targets", "layers"),
    [
        ("bert", {"target_modules": ["query", "value"]}, ("query", "value"), None),
        ("bert", {"target_modules": ["key", "dense"], "use_rslora": True, "exclude_modules": ["pooler.dense"]},
         ("key", "output", "ffn_in", "ffn_out"), None),
        ("roberta", {"target_modules": ["query", "value"], "layers_to_transform": [1]}, ("query", "value"), (1,)),
        ("bert", {"target_modules": r".*layer\.0\.attention\.self\.(query|key)"}, ("query", "key"), (0,)),
        ("llama", {"target_modules": ["q_proj", "v_proj", "down_proj"], "lora_dropout": 0.1},
         ("query", "value", "ffn_out"), None),
    ],
)
def test_import_matches_peft(tmp_path: Path, model_type: str, lora: dict, targets: tuple, layers: tuple | None) -> None:
    directory, expected = peft_dir(tmp_path, model_type, **lora)
    model = AdaptedModel(tiny_model(model_type, num_labels=3))
    before = logits(model, tiny_batch(num_labels=3))
    name = load_peft_adapter(model, directory, "imp")
    config = model.adapter_configs[name]
    assert isinstance(config, LoRAConfig) and set(config.targets) == set(targets) and config.layers == layers
    assert config.dropout == lora.get("lora_dropout", 0.0)
    got = logits(model, tiny_batch(num_labels=3))
    assert not torch.allclose(got, before, atol=1e-3)  # the adapter and head matter
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


@pytest.mark.parametrize(
    ("model_type", "config"),
    [
        ("bert", LoRAConfig(r=4, alpha=16, targets=("query", "value"))),
        ("bert", LoRAConfig(r=2, alpha=4, targets=("output", "ffn_out"), layers=(1,))),  # output.dense is ambiguous
        ("roberta", LoRAConfig(r=3, alpha=3, targets=("key", "ffn_in"), layers=(0,))),
        ("llama", LoRAConfig(r=4, alpha=8, targets=("query", "key", "value", "output", "ffn_in", "ffn_out"))),
    ],
)
def test_export_loads_in_peft_with_same_outputs(tmp_path: Path, model_type: str, config: LoRAConfig) -> None:
    model = AdaptedModel(tiny_model(model_type, num_labels=3))
    model.add_adapter("mine", config)
    randomize(model)  # LoRA and the head (incl. BERT's pooler) train
    ours = logits(model, tiny_batch(num_labels=3))
    save_peft_adapter(model, "mine", tmp_path / "out")
    meta = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert meta["peft_type"] == "LORA" and meta["task_type"] == "SEQ_CLS"
    loaded = peft.PeftModel.from_pretrained(tiny_model(model_type, num_labels=3), tmp_path / "out")
    theirs = logits(loaded, tiny_batch(num_labels=3))
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()
    # and back: our import of our export gives the same config and outputs
    again = AdaptedModel(tiny_model(model_type, num_labels=3))
    load_peft_adapter(again, tmp_path / "out")
    assert again.adapter_configs["default"] == config
    assert torch.allclose(logits(again, tiny_batch(num_labels=3)), ours, atol=1e-5)


def test_export_refuses_other_methods(tmp_path: Path) -> None:
    model = AdaptedModel(tiny_model("bert"))
    model.add_adapter("p", PfeifferConfig())
    with pytest.raises(ConfigError, match="method 'pfeiffer' has no peft equivalent"):
        save_peft_adapter(model, "p", tmp_path)


def edit_config(directory: Path, **changes) -> None:
    path = directory / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"use_dora": True}, "use_dora"),
        ({"peft_type": "LOHA"}, "peft_type"),
        ({"rank_pattern": {"query": 8}}, "rank_pattern"),
        ({"alpha_pattern": {"query": 8}}, "alpha_pattern"),
        ({"bias": "all"}, "bias"),
        ({"lora_bias": True}, "lora_bias"),
        ({"init_lora_weights": "pissa"}, "init_lora_weights"),
        ({"layer_replication": [[0, 2]]}, "layer_replication"),
        ({"some_future_option": 3}, "some_future_option"),
        ({"target_modules": ["query", "pooler.dense"]}, "target_modules"),
        ({"target_modules": ["nothing_like_this"]}, "target_modules"),
        ({"r": 0}, "r"),
    ],
)
def test_refusals_name_file_and_field(tmp_path: Path, changes: dict, field: str) -> None:
    directory, _ = peft_dir(tmp_path, target_modules=["query", "value"])
    edit_config(directory, **changes)
    model = AdaptedModel(tiny_model("bert", num_labels=3))
    with pytest.raises(AdapterLoadError, match=f"adapter_config.json: {field}: "):
        load_peft_adapter(model, directory)
    assert model.adapter_configs == {}


def test_real_loha_and_dora_files_are_refused(tmp_path: Path) -> None:
    base = tiny_model("bert", num_labels=3)
    peft.get_peft_model(base, peft.LoHaConfig(r=2, target_modules=["query"])).save_pretrained(tmp_path / "loha")
    model = AdaptedModel(tiny_model("bert", num_labels=3))
    with pytest.raises(AdapterLoadError, match="peft_type: 'LOHA' is not supported"):
        load_peft_adapter(model, tmp_path / "loha")
    dora = peft.get_peft_model(tiny_model("bert", num_labels=3),
                               peft.LoraConfig(r=2, target_modules=["query"], use_dora=True))
    dora.save_pretrained(tmp_path / "dora")
    with pytest.raises(AdapterLoadError, match="use_dora: True: DoRA"):
        load_peft_adapter(model, tmp_path / "dora")


def test_different_targets_per_layer_and_bad_weights(tmp_path: Path) -> None:
    directory, _ = peft_dir(tmp_path, target_modules=r".*layer\.0\.attention\.self\.query|.*layer\.1\.attention\.self\.value")
    model = AdaptedModel(tiny_model("bert", num_labels=3))
    with pytest.raises(AdapterLoadError, match="target_modules: adapts different projections in different layers"):
        load_peft_adapter(model, directory)
    directory, _ = peft_dir(tmp_path / "b", target_modules=["query"])
    from safetensors.torch import load_file, save_file

    weights = load_file(directory / "adapter_model.safetensors")
    weights["base_model.model.bert.embeddings.word_embeddings.lora_embedding_A"] = torch.zeros(4, 100)
    save_file(weights, directory / "adapter_model.safetensors")
    with pytest.raises(AdapterLoadError, match="adapter_model.safetensors: base_model.model.bert.embeddings"):
        load_peft_adapter(model, directory)
    assert model.adapter_configs == {}


def test_adapter_saved_on_the_bare_backbone_loads_under_a_head(tmp_path: Path) -> None:
    """peft keys of a bare ``BertModel`` (``base_model.model.encoder...``) map onto ``bert.encoder...``."""
    pm = peft.get_peft_model(tiny_model("bert", head="base"), peft.LoraConfig(r=2, target_modules=["value"]))
    randomize(pm)
    pm.save_pretrained(tmp_path / "bare")
    batch = {k: v for k, v in tiny_batch().items() if k != "labels"}
    with torch.no_grad():
        expected = pm.eval()(**batch).last_hidden_state
    model = AdaptedModel(tiny_model("bert"))
    load_peft_adapter(model, tmp_path / "bare")
    with torch.no_grad():
        got = model.eval()(**batch, output_hidden_states=True).hidden_states[-1]
    assert torch.allclose(got, expected, atol=1e-5)
