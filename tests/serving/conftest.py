"""A tiny base model and a folder of saved adapters (several methods, heads and label sets) for the serving tests."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from adapterkit.io import load_adapter, save_adapter
from adapterkit.methods.bottleneck import PfeifferConfig
from adapterkit.methods.lora import LoRAConfig
from adapterkit.methods.prefix import PrefixTuningConfig
from adapterkit.model import AdaptedModel, load_base_model
from adapterkit.testing import save_tiny_model

WORDS = ["the", "a", "movie", "was", "good", "great", "bad", "awful", "plot", "actors", "not"]
TEXTS = ["the movie was good", "awful", "the plot was not great", "bad actors", "a movie", "good good good",
         "the the the plot", "not bad"]


@dataclass(frozen=True)
class Zoo:
    base: Path
    adapters: Path
    names: tuple[str, ...]


def randomise(model: AdaptedModel, name: str, seed: int) -> None:
    """Random adapter and head weights, so that every adapter answers differently."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in [*model.adapter_parameters(name).values(), *model.head_parameters().values()]:
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def save_random_adapter(base: Path, out: Path, config, *, seed: int, kind: str = "classification",  # noqa: ANN001
                        labels: list[str] | None = None, pooling: str = "mean") -> Path:
    labels = labels or ["negative", "positive"]
    num = len(labels) if kind == "classification" else 1
    id2label = dict(enumerate(labels)) if kind == "classification" else None
    hf, _ = load_base_model(str(base), kind, num, id2label, pooling=pooling)
    model = AdaptedModel(hf)
    model.add_adapter("x", config)
    randomise(model, "x", seed)
    return save_adapter(model, "x", out, include_head=True)


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    root = tmp_path_factory.mktemp("serving")
    base = save_tiny_model(root / "base", head="base", words=WORDS)
    ads = root / "adapters"
    save_random_adapter(base, ads / "pf-a", PfeifferConfig(reduction_factor=4), seed=1)
    save_random_adapter(base, ads / "pf-b", PfeifferConfig(reduction_factor=4), seed=2)
    save_random_adapter(base, ads / "lora", LoRAConfig(r=2), seed=3)
    save_random_adapter(base, ads / "prefix", PrefixTuningConfig(prefix_length=3), seed=4)
    save_random_adapter(base, ads / "three", PfeifferConfig(reduction_factor=4), seed=5,
                        labels=["contradiction", "entailment", "neutral"])
    save_random_adapter(base, ads / "score", LoRAConfig(r=2), seed=6, kind="regression")
    save_random_adapter(base, ads / "own-head", PfeifferConfig(reduction_factor=4), seed=7, pooling="hf")
    save_random_adapter(base, ads / "pooler", LoRAConfig(r=2), seed=8, pooling="cls+pooler")
    names = ("pf-a", "pf-b", "lora", "prefix", "three", "score", "own-head", "pooler")
    return Zoo(base, ads, names)


def reference(zoo: Zoo, name: str, texts: list[str]) -> list[torch.Tensor]:
    """Each text's logits from a fresh model with only adapter ``name`` loaded (the adapter run alone)."""
    import json

    meta = json.loads((zoo.adapters / name / "adapter_config.json").read_text())
    head = meta["head"]
    kind = "regression" if head["problem_type"] == "regression" else "classification"
    hf, tokenizer = load_base_model(str(zoo.base), kind, head["num_labels"], pooling=head["pooling"])
    model = AdaptedModel(hf)
    load_adapter(model, zoo.adapters / name)
    model.eval()
    out = []
    with torch.no_grad():
        for text in texts:
            out.append(model(**tokenizer([text], return_tensors="pt")).logits[0].float())
    return out


def same(answers: list, expected: list) -> bool:
    """Equal answers: same adapter and label, scores (regression: values) within 1e-5 (padding to another width
    moves the last digits)."""
    def labels(rows: list) -> list:
        return [[(p["adapter"], p["prediction"] if isinstance(p["prediction"], str) else None) for p in a]
                for a in rows]

    assert labels(answers) == labels(expected)
    assert [[p["score"] for p in a] for a in answers] == [pytest.approx([p["score"] for p in a], abs=1e-5)
                                                          for a in expected]
    return True
