"""Adapters with their own task head (``load_adapter(own_head=True)``): each row of a mixed-adapter batch is
classified (or answered) by its adapter's head."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adapterkit.errors import AdapterLoadError
from adapterkit.heads import HeadConfig
from adapterkit.io import load_adapter, save_adapter
from adapterkit.methods.bottleneck import PfeifferConfig
from adapterkit.methods.lora import LoRAConfig
from adapterkit.methods.prompt import PromptTuningConfig
from adapterkit.model import AdaptedModel
from adapterkit.testing import padded_batch, perturb_adapter, routed_vs_solo, tiny_model

CONFIGS = {"a": PfeifferConfig(init="near_identity"), "b": LoRAConfig(r=4),
           "c": PromptTuningConfig(num_tokens=3, init="random")}


def fresh(arch: str, head: str, pooling: str, num_labels: int = 3) -> AdaptedModel:
    num_labels = 2 if head == "qa" else num_labels  # start and end
    model = AdaptedModel(tiny_model(arch, head, num_labels=num_labels))  # same seed: the same backbone every time
    if pooling != "hf":
        torch.manual_seed(0)
        model.set_head(HeadConfig(pooling))
    return model


def save_trained(tmp: Path, arch: str, head: str, pooling: str, name: str, seed: int, num_labels: int = 3) -> Path:
    """An adapter saved with a head of its own weights (as if each was trained on its own task)."""
    model = fresh(arch, head, pooling, num_labels)
    model.add_adapter(name, CONFIGS[name])
    perturb_adapter(model, name, seed=seed)
    g = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for p in model.head_parameters().values():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    return save_adapter(model, name, tmp / name, include_head=True)


@pytest.mark.parametrize(("arch", "head", "pooling"), [("bert", "classification", "hf"), ("bert", "classification", "mean"),
                                                       ("bert", "classification", "cls+pooler"), ("roberta", "classification", "hf"),
                                                       ("bert", "qa", "hf"), ("distilbert", "regression", "hf")])
def test_each_row_uses_its_adapters_own_head(tmp_path: Path, arch: str, head: str, pooling: str) -> None:
    dirs = {n: save_trained(tmp_path, arch, head, pooling, n, seed) for seed, n in enumerate(CONFIGS)}
    server = fresh(arch, head, pooling)
    for d in dirs.values():
        load_adapter(server, d, own_head=True, activate=False)
    server.eval()
    names = ["a", None, "b", "c", "a", "c"]
    batch = padded_batch(arch)
    with torch.no_grad():
        mixed = server(**batch, adapter_names=names)
    for i, name in enumerate(names):  # the reference: a fresh model with the adapter's head loaded as *the* head
        alone = fresh(arch, head, pooling)
        if name is not None:
            load_adapter(alone, dirs[name])
        with torch.no_grad():
            solo = alone.eval()(**{k: v[i : i + 1] for k, v in batch.items()})
        for key in ("logits", "start_logits", "end_logits"):
            if key in mixed:
                assert (mixed[key][i] - solo[key][0]).abs().max() <= 1e-5, (key, i, name)
    assert routed_vs_solo(server, batch, names) <= 1e-5  # an active adapter uses its own head too
    keys = sorted(server.head_parameters())
    assert all(not torch.equal(server.adapter_head_state_dict("a")[k], server.head_state_dict()[k]) for k in keys
               if k.endswith("classifier.weight") or k.endswith("qa_outputs.weight"))


def test_a_head_with_another_number_of_labels_is_a_clear_error(tmp_path: Path) -> None:
    saved = save_trained(tmp_path, "bert", "classification", "hf", "a", 0, num_labels=5)
    server = fresh("bert", "classification", "hf", num_labels=3)
    with pytest.raises(AdapterLoadError, match=r"head.safetensors: adapter 'a': head: classifier\.(bias|weight): shape \(5,"
                                               r".*does not match the model's \(3,.*\(a different number of labels"):
        load_adapter(server, saved, own_head=True)
    assert "a" not in server.adapter_configs  # nothing left behind


def test_a_pooled_head_needs_a_pooled_model(tmp_path: Path) -> None:
    saved = save_trained(tmp_path, "bert", "classification", "mean", "a", 0)
    with pytest.raises(AdapterLoadError, match=r"head.pooling: its head uses 'mean' pooling and the model's 'hf'"):
        load_adapter(fresh("bert", "classification", "hf"), saved, own_head=True)


def test_own_head_round_trips_and_leaves_the_model_head(tmp_path: Path) -> None:
    saved = save_trained(tmp_path, "bert", "classification", "hf", "a", 0)
    server = fresh("bert", "classification", "hf")
    before = {k: v.clone() for k, v in server.head_state_dict().items()}
    load_adapter(server, saved, own_head=True)
    assert all(torch.equal(before[k], v) for k, v in server.head_state_dict().items())
    again = save_adapter(server, "a", tmp_path / "again", include_head=True)
    from adapterkit.io import read_tensors

    assert all(torch.equal(read_tensors(saved / "head.safetensors")[k], t)
               for k, t in read_tensors(again / "head.safetensors").items())
    server.delete_adapter("a")
    assert server.adapter_heads == {} and not any(".adapters." in n for n, _ in server.model.named_buffers())
