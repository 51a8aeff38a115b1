"""Checkpoints of the trainable tensors: the index the Trainer's resume reads, and the resume point."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers.trainer_utils import load_sharded_checkpoint

from adapterkit.errors import AdapterLoadError, ConfigError
from adapterkit.methods.bottleneck import PfeifferConfig
from adapterkit.model import AdaptedModel
from adapterkit.testing import tiny_model
from adapterkit.training import (
    INDEX_NAME,
    TRAINABLE_NAME,
    load_checkpoint_weights,
    resume_point,
    save_checkpoint_weights,
)


def adapted(seed: int) -> AdaptedModel:
    model = AdaptedModel(tiny_model("bert", seed=seed))
    model.add_adapter("a", PfeifferConfig(reduction_factor=4))
    with torch.no_grad():
        for p in model.adapter_parameters("a").values():
            p.normal_(generator=torch.Generator().manual_seed(seed))
    return model


def test_the_index_lists_only_the_trainable_tensors_and_hugging_face_loads_it(tmp_path: Path):
    source, target = adapted(0), adapted(1)
    save_checkpoint_weights(source, tmp_path)
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    trainable = {n for n, p in source.named_parameters() if p.requires_grad}
    assert set(index["weight_map"]) == trainable == set(load_file(str(tmp_path / TRAINABLE_NAME)))
    assert set(index["weight_map"].values()) == {TRAINABLE_NAME}
    result = load_sharded_checkpoint(target, tmp_path, strict=False)  # what Trainer.train(resume_from_checkpoint) runs
    assert not result.unexpected_keys and not set(result.missing_keys) & trainable
    theirs = dict(target.named_parameters())
    assert all(torch.equal(p, theirs[n]) for n, p in source.named_parameters() if n in trainable)


def test_our_loader_names_the_file_on_a_mismatch(tmp_path: Path):
    save_checkpoint_weights(adapted(0), tmp_path)
    other = AdaptedModel(tiny_model("bert"))
    other.add_adapter("b", PfeifferConfig(reduction_factor=4))
    with pytest.raises(AdapterLoadError, match=TRAINABLE_NAME):
        load_checkpoint_weights(other, tmp_path)


def test_resume_point(tmp_path: Path):
    assert resume_point(tmp_path, False) is None and resume_point(tmp_path, "auto") is None
    with pytest.raises(ConfigError, match="resume"):
        resume_point(tmp_path, True)
    ckpt = tmp_path / "checkpoint-4"
    ckpt.mkdir()
    (ckpt / TRAINABLE_NAME).write_bytes(b"x")
    (ckpt / "trainer_state.json").write_text('{"global_step": 4}')
    assert resume_point(tmp_path, True) == resume_point(tmp_path, "auto") == str(ckpt)
