"""The adapter zoo: build (resumable), index, select by track; the CLI's zoo command."""
from __future__ import annotations

import json

import pytest

from adapterkit.cli import main
from adapterkit.errors import ConfigError
from adapterkit.io import load_adapter
from adapterkit.model import AdaptedModel, load_base_model
from adapterkit.testing import save_tiny_model
from adapterkit.zoo import ZooSource, build_zoo, parse_source, read_zoo, select


def test_parse_source_forms() -> None:
    assert parse_source("sst2") == ZooSource("sst2", "sst2", "sentiment")
    assert parse_source("b=stsb@3#1/2") == ZooSource("b", "stsb", "paraphrase", 3, (1, 2))
    assert parse_source("mine=sample_sentiment:domain") == ZooSource("mine", "sample_sentiment", "domain")
    with pytest.raises(ConfigError, match="no known track"):
        parse_source("unknown_task")
    with pytest.raises(ConfigError, match="track"):
        parse_source("x=sst2:nonsense")
    with pytest.raises(ConfigError, match="part"):
        ZooSource("x", "sst2", "sentiment", part=(2, 2))


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    root = tmp_path_factory.mktemp("zoo")
    model = save_tiny_model(root / "tiny-bert", words=["good", "bad", "film", "great", "awful", "plot"])
    sources = [ZooSource("a", "sample_sentiment", "sentiment", part=(0, 2)),
               ZooSource("b", "sample_sentiment", "domain", seed=2, part=(1, 2))]
    entries = build_zoo(root / "zoo", sources, model=str(model), max_train=24, max_dev=8, epochs=1, batch_size=8,
                        progress="none")
    return root, model, sources, entries


def test_build_writes_adapters_and_index(tiny_zoo: tuple) -> None:
    root, model, _, entries = tiny_zoo
    assert [e.name for e in entries] == ["a", "b"]
    index = json.loads((root / "zoo" / "zoo.json").read_text())
    assert [a["track"] for a in index["adapters"]] == ["sentiment", "domain"]
    for e in entries:
        assert e.train_size == 24 and e.dev_size == 8 and e.dev_score is not None
        assert e.base_model["model_type"] == "bert" and e.method == "pfeiffer"
        hf, _ = load_base_model(str(model))
        adapted = AdaptedModel(hf)
        assert load_adapter(adapted, e.directory(root / "zoo"), load_head=False) == e.name
    assert not (root / "zoo" / "_work").exists()


def test_disjoint_parts_see_different_data(tiny_zoo: tuple) -> None:
    from adapterkit.zoo import source_data

    _, _, sources, _ = tiny_zoo
    a, _ = source_data(sources[0], None, 1000, 8)
    b, _ = source_data(sources[1], None, 1000, 8)
    texts_a, texts_b = {x["text"] for x in a}, {x["text"] for x in b}
    assert texts_a and texts_b and not texts_a & texts_b


def test_rebuild_skips_existing_and_select(tiny_zoo: tuple) -> None:
    root, model, sources, entries = tiny_zoo
    before = (root / "zoo" / "a" / "adapter.safetensors").stat().st_mtime_ns
    again = build_zoo(root / "zoo", sources, model=str(model), max_train=24, max_dev=8, epochs=1, progress="none")
    assert [e.name for e in again] == ["a", "b"]
    assert (root / "zoo" / "a" / "adapter.safetensors").stat().st_mtime_ns == before
    assert [e.name for e in select(again, tracks=["domain"])] == ["b"]
    assert select(again, exclude_tasks=["sample_sentiment"]) == []
    with pytest.raises(ConfigError, match="'zzz'"):
        select(again, names=["zzz"])


def test_read_zoo_errors_name_the_file(tmp_path) -> None:
    (tmp_path / "zoo.json").write_text(json.dumps({"adapters": [{"name": "x"}]}))
    with pytest.raises(ConfigError, match=r"zoo.json: adapters\[0\]\.\w+: missing"):
        read_zoo(tmp_path)
    assert read_zoo(tmp_path / "nothing") == []


def test_cli_zoo_list(tiny_zoo: tuple, capsys: pytest.CaptureFixture) -> None:
    root, *_ = tiny_zoo
    assert main(["zoo", "list", "--zoo-dir", str(root / "zoo")]) == 0
    out = capsys.readouterr().out
    assert "sentiment" in out and "domain" in out and "sample_sentiment" in out
    assert main(["zoo", "list", "--zoo-dir", str(root / "empty")]) == 2
