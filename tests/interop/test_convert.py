"""``adapterkit convert`` between peft, AdapterHub and adapterkit files, checked by outputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adapterkit.cli import main
from adapterkit.interop.peft import load_peft_adapter
from adapterkit.io import load_adapter, read_tensors, save_adapter
from adapterkit.methods.lora import LoRAConfig
from adapterkit.model import AdaptedModel
from adapterkit.testing import tiny_batch, tiny_model

peft = pytest.importorskip("peft")  # a dev dependency (pyproject.toml)
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "adapterhub"


def logits(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def fixture_model(num_labels: int = 3) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(FIXTURES / "bert" / "base", num_labels=num_labels).eval()


def test_peft_to_adapterkit_and_back(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    base_dir = tmp_path / "base"
    tiny_model("bert", num_labels=3).save_pretrained(base_dir)
    pm = peft.get_peft_model(tiny_model("bert", num_labels=3),
                             peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    pm.save_pretrained(tmp_path / "peft")
    batch = tiny_batch(num_labels=3)
    expected = logits(pm, batch)
    assert main(["convert", "--from", "peft", "--to", "adapterkit", str(tmp_path / "peft"), str(tmp_path / "ak"),
                 "--model", str(base_dir), "--name", "sent"]) == 0
    assert "adapter 'sent' (lora) with its 3-label head" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "ak").iterdir()} >= {"adapter_config.json", "adapter.safetensors",
                                                             "head.safetensors", "README.md"}
    model = AdaptedModel(tiny_model("bert", num_labels=3))
    assert load_adapter(model, tmp_path / "ak") == "sent"
    assert torch.allclose(logits(model, batch), expected, atol=1e-5)
    assert main(["convert", "--from", "adapterkit", "--to", "peft", str(tmp_path / "ak"), str(tmp_path / "peft2"),
                 "--model", str(base_dir)]) == 0
    again = peft.PeftModel.from_pretrained(tiny_model("bert", num_labels=3), tmp_path / "peft2")
    assert torch.allclose(logits(again, batch), expected, atol=1e-5)


def test_adapterhub_to_adapterkit_and_peft(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    base = str(FIXTURES / "bert" / "base")
    expected = read_tensors(FIXTURES / "bert" / "seq_bn" / "expected.safetensors")
    assert main(["convert", "--from", "adapterhub", "--to", "adapterkit", str(FIXTURES / "bert" / "seq_bn"),
                 str(tmp_path / "seq"), "--model", base]) == 0
    meta = json.loads((tmp_path / "seq" / "adapter_config.json").read_text())
    assert meta["head"]["id2label"] == {"0": "neg", "1": "neu", "2": "pos"}
    assert meta["extra"]["converted_from"]["format"] == "adapterhub"
    model = AdaptedModel(fixture_model())
    load_adapter(model, tmp_path / "seq")
    assert torch.allclose(logits(model, expected), expected["logits"], atol=1e-5)
    # AdapterHub LoRA -> peft: peft's outputs equal AdapterHub's
    lora = read_tensors(FIXTURES / "bert" / "lora" / "expected.safetensors")
    assert main(["convert", "--from", "adapterhub", "--to", "peft", str(FIXTURES / "bert" / "lora"),
                 str(tmp_path / "lora-peft"), "--model", base]) == 0
    loaded = peft.PeftModel.from_pretrained(fixture_model(), tmp_path / "lora-peft")
    assert torch.allclose(logits(loaded, lora), lora["logits"], atol=1e-5)
    capsys.readouterr()
    # a bottleneck adapter has no peft form
    assert main(["convert", "--from", "adapterhub", "--to", "peft", str(FIXTURES / "bert" / "seq_bn"),
                 str(tmp_path / "no"), "--model", base]) == 2
    assert "method 'pfeiffer' has no peft equivalent" in capsys.readouterr().err


def test_convert_without_head_and_bad_input(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    base_dir = tmp_path / "base"
    tiny_model("roberta", head="base").save_pretrained(base_dir)
    model = AdaptedModel(tiny_model("roberta", head="base"))
    model.add_adapter("x", LoRAConfig(r=2, targets=("key",)))
    save_adapter(model, "x", tmp_path / "ak")
    assert main(["convert", "--from", "adapterkit", "--to", "peft", str(tmp_path / "ak"), str(tmp_path / "p"),
                 "--model", str(base_dir)]) == 0
    assert "without a head" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "p" / "adapter_config.json").read_text())
    assert cfg["modules_to_save"] is None and cfg["target_modules"] == ["key"]
    back = AdaptedModel(tiny_model("roberta", head="base"))
    load_peft_adapter(back, tmp_path / "p")
    assert back.adapter_configs["default"] == LoRAConfig(r=2, targets=("key",))
    assert main(["convert", "--from", "peft", "--to", "adapterkit", str(tmp_path / "nothing"), str(tmp_path / "o"),
                 "--model", str(base_dir)]) == 2
    assert "nothing: not a directory" in capsys.readouterr().err
