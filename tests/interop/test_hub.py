"""Hub repo ids for adapter directories and uploads, against a local fake Hub (conftest.py), never the network."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from adapterkit.cli import main
from adapterkit.errors import AdapterLoadError
from adapterkit.interop.hub import looks_like_repo_id, resolve_adapter_dir
from adapterkit.io import load_adapter, save_adapter
from adapterkit.methods.bottleneck import PfeifferConfig
from adapterkit.model import AdaptedModel
from adapterkit.testing import save_tiny_model, tiny_batch, tiny_model

WORDS = ["good", "great", "bad", "awful", "the", "movie", "was"]


def trained_like(model_type: str = "bert", seed: int = 3) -> AdaptedModel:
    model = AdaptedModel(tiny_model(model_type))
    model.add_adapter("sst", PfeifferConfig(reduction_factor=4))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def logits(model: torch.nn.Module) -> torch.Tensor:
    batch = {k: v for k, v in tiny_batch().items() if k != "labels"}
    with torch.no_grad():
        return model.eval()(**batch).logits


def test_repo_ids_and_paths(tmp_path: Path) -> None:
    assert looks_like_repo_id("owner/name") and looks_like_repo_id("owner/name@v1.0")
    assert not looks_like_repo_id(tmp_path) and not looks_like_repo_id("a/b/c") and not looks_like_repo_id("../x")
    (tmp_path / "owner").mkdir()
    assert resolve_adapter_dir(tmp_path / "owner") == tmp_path / "owner"


def test_save_push_and_load_by_repo_id(tmp_path: Path, fake_hub) -> None:  # noqa: ANN001
    model = trained_like()
    save_adapter(model, "sst", tmp_path / "ad", include_head=True, push_to_hub="me/sst-adapter")
    files = fake_hub.repos["me/sst-adapter"]
    assert set(files) == {"adapter_config.json", "adapter.safetensors", "head.safetensors", "README.md"}
    assert files["adapter.safetensors"] == (tmp_path / "ad" / "adapter.safetensors").read_bytes()
    fresh = AdaptedModel(tiny_model("bert"))
    assert load_adapter(fresh, "me/sst-adapter") == "sst"
    assert torch.allclose(logits(fresh), logits(model), atol=1e-6)
    assert any(r.startswith("GET /me/sst-adapter/resolve/") for r in fake_hub.requests)


def test_offline_uses_the_cache_and_says_when_it_cannot(tmp_path: Path, fake_hub, monkeypatch) -> None:  # noqa: ANN001
    from huggingface_hub import constants

    save_adapter(trained_like(), "sst", tmp_path / "ad", include_head=True, push_to_hub="me/cached")
    online = resolve_adapter_dir("me/cached")  # downloads into the cache
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    before = len(fake_hub.requests)
    assert resolve_adapter_dir("me/cached") == online  # from the cache, no request
    assert len(fake_hub.requests) == before
    with pytest.raises(AdapterLoadError, match="me/never-downloaded: .*HF_HUB_OFFLINE is set and the repository is not "
                       "in the Hub cache"):
        load_adapter(AdaptedModel(tiny_model("bert")), "me/never-downloaded")
    with pytest.raises(AdapterLoadError, match="cannot push while HF_HUB_OFFLINE is set"):
        save_adapter(trained_like(), "sst", tmp_path / "b", push_to_hub="me/other")
    assert len(fake_hub.requests) == before


def test_missing_repo_and_unreachable_hub(tmp_path: Path, fake_hub, monkeypatch) -> None:  # noqa: ANN001
    from huggingface_hub import constants

    with pytest.raises(AdapterLoadError, match="me/missing: not a local directory, so read as a Hugging Face Hub repo "
                       "id: no such repository"):
        resolve_adapter_dir("me/missing")
    dead = "http://127.0.0.1:9"  # nothing listens on the discard port
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", dead + "/{repo_id}/resolve/{revision}/{filename}")
    with pytest.raises(AdapterLoadError, match="cannot reach http://127.0.0.1:9 and the repository is not in the Hub cache"):
        resolve_adapter_dir("me/anything")


def test_cli_push_and_eval_by_repo_id(tmp_path: Path, fake_hub, capsys) -> None:  # noqa: ANN001
    base = save_tiny_model(tmp_path / "tiny", words=WORDS)
    from adapterkit.model import load_base_model

    hf, _ = load_base_model(str(base))
    model = AdaptedModel(hf)
    model.add_adapter("sst", PfeifferConfig(reduction_factor=4))
    save_adapter(model, "sst", tmp_path / "ad", include_head=True)
    assert main(["push", str(tmp_path / "ad"), "me/cli-adapter", "--message", "first"]) == 0
    assert "pushed" in capsys.readouterr().out and "README.md" in fake_hub.repos["me/cli-adapter"]
    rng = random.Random(0)
    rows = ["sentence\tlabel"] + [f"the movie was {rng.choice(['good', 'bad'])}\t{rng.choice(['0', '1'])}" for _ in range(8)]
    (tmp_path / "test.tsv").write_text("\n".join(rows) + "\n")
    assert main(["eval", "me/cli-adapter", "--test-file", str(tmp_path / "test.tsv"), "--text-columns", "sentence",
                 "--labels", "0,1", "--max-length", "16"]) == 0
    out = capsys.readouterr().out
    assert "adapter 'sst'" in out and "accuracy" in out
    assert main(["push", str(tmp_path / "tiny"), "me/not-an-adapter"]) == 2
    assert "adapter_config.json" in capsys.readouterr().err


def test_card_is_pushed_with_front_matter(tmp_path: Path, fake_hub) -> None:  # noqa: ANN001
    save_adapter(trained_like(), "sst", tmp_path / "ad", push_to_hub="me/carded")
    card = fake_hub.repos["me/carded"]["README.md"].decode()
    assert card.startswith("---\n") and "library_name: adapterkit" in card
    assert json.loads(fake_hub.repos["me/carded"]["adapter_config.json"])["name"] == "sst"
    assert fake_hub.cards_validated >= 1  # upload_folder had the fake Hub check the card's YAML


def test_peft_and_adapterhub_loaders_take_repo_ids(tmp_path: Path, fake_hub) -> None:  # noqa: ANN001
    peft = pytest.importorskip("peft")
    from adapterkit.interop.adapterhub import load_adapterhub_adapter
    from adapterkit.interop.hub import push_adapter_dir
    from adapterkit.interop.peft import load_peft_adapter

    pm = peft.get_peft_model(tiny_model("bert"), peft.LoraConfig(r=2, target_modules=["query"], init_lora_weights=False))
    pm.save_pretrained(tmp_path / "peft")
    push_adapter_dir(tmp_path / "peft", "me/peft-lora")
    model = AdaptedModel(tiny_model("bert"))
    assert load_peft_adapter(model, "me/peft-lora", "lo") == "lo"
    assert torch.allclose(logits(model), logits(pm), atol=1e-5)
    fixture = Path(__file__).resolve().parent.parent / "fixtures" / "adapterhub" / "bert" / "lora"
    push_adapter_dir(fixture, "me/hub-lora")
    bare = AdaptedModel(tiny_model("bert", head="base", vocab_size=48, max_position_embeddings=24))
    assert load_adapterhub_adapter(bare, "me/hub-lora", load_head=False) == "sst"
