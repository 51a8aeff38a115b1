"""AdapterPool: each example answered by its own adapter and head, LRU eviction and transparent reload, bad
requests naming the field, Hub ids, threads."""
from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path

import pytest
import torch

from adapterkit.errors import AdapterLoadError, ConfigError
from adapterkit.io import save_adapter
from adapterkit.methods.bottleneck import PfeifferConfig
from adapterkit.model import AdaptedModel, load_base_model
from adapterkit.serving import AdapterPool, RequestError, UnknownAdapterError

from .conftest import TEXTS, Zoo, reference

_hub = importlib.util.spec_from_file_location("_interop_conftest", Path(__file__).parents[1] / "interop" / "conftest.py")
# the fake Hub of tests/interop (a local HTTP server that huggingface_hub is pointed at)
_hub_module = sys.modules.setdefault("_interop_conftest", importlib.util.module_from_spec(_hub))
if not hasattr(_hub_module, "fake_hub"):
    _hub.loader.exec_module(_hub_module)
fake_hub = _hub_module.fake_hub


def check(zoo: Zoo, predictions, names: list[str], texts: list[str], served_as: str | None = None) -> None:  # noqa: ANN001
    """Every prediction equals its adapter (a folder of the zoo) run alone on its text: label name, score, all
    label scores."""
    assert len(predictions) == len(texts)
    for pred, name, text in zip(predictions, names, texts, strict=True):
        logits = reference(zoo, name, [text])[0]
        assert pred.adapter == (served_as or name)
        if logits.numel() == 1:
            assert pred.prediction == pytest.approx(float(logits[0]), abs=1e-5)
            assert pred.scores is None
            continue
        probs = torch.softmax(logits.double(), -1)
        import json

        id2label = json.loads((zoo.adapters / name / "adapter_config.json").read_text())["head"]["id2label"]
        assert pred.prediction == id2label[str(int(probs.argmax()))]
        assert pred.score == pytest.approx(float(probs.max()), abs=1e-5)
        assert list(pred.scores) == [id2label[str(i)] for i in range(len(id2label))]
        assert list(pred.scores.values()) == pytest.approx(probs.tolist(), abs=1e-5)


def test_a_mixed_request_is_answered_by_each_examples_own_adapter_and_head(zoo: Zoo) -> None:
    pool = AdapterPool(str(zoo.base), adapters_dir=zoo.adapters, max_adapters=None, batch_size=4)
    names = [zoo.names[i % len(zoo.names)] for i in range(len(TEXTS) * 2)]
    texts = [TEXTS[i % len(TEXTS)] for i in range(len(names))]
    predictions = pool.predict(texts, names)
    check(zoo, predictions, names, texts)
    assert {p.prediction for p in predictions if p.adapter == "three"} <= {"contradiction", "entailment", "neutral"}
    assert pool.available() == sorted(zoo.names)
    assert sorted(e["name"] for e in pool.loaded()) == sorted(zoo.names)


def test_the_same_text_gets_different_answers_from_different_adapters(zoo: Zoo) -> None:
    pool = AdapterPool(str(zoo.base), adapters_dir=zoo.adapters)
    a, b = pool.predict(["the movie was good"] * 2, ["pf-a", "pf-b"])
    assert a.scores != b.scores  # a row answered with the other adapter would give the same scores


def test_lru_by_count_evicts_the_least_recently_used_and_reloads_it_transparently(zoo: Zoo) -> None:
    pool = AdapterPool(str(zoo.base), adapters_dir=zoo.adapters, max_adapters=2)
    first = pool.predict(TEXTS, "pf-a")
    pool.predict(TEXTS[:2], "pf-b")
    pool.predict(TEXTS[:2], "pf-a")  # pf-a is now the most recently used
    pool.predict(TEXTS[:2], "lora")  # evicts pf-b, not pf-a
    assert [e["name"] for e in pool.loaded()] == ["pf-a", "lora"]
    pool.predict(TEXTS[:2], "three")  # evicts pf-a
    assert [e["name"] for e in pool.loaded()] == ["lora", "three"]
    assert "pf-a" not in {n.removeprefix("pool") for n in pool.model.adapter_configs} and len(
        pool.model.adapter_configs) == 2  # evicted adapters are deleted from the model
    again = pool.predict(TEXTS, "pf-a")  # reloaded on demand
    assert [p.to_dict() for p in again] == [p.to_dict() for p in first]
    assert pool.stats.loads_by_name["pf-a"] == 2 and pool.stats.evictions == 3
    check(zoo, again, ["pf-a"] * len(TEXTS), TEXTS)


def test_lru_by_bytes_keeps_the_loaded_tensors_under_the_limit(zoo: Zoo) -> None:
    probe = AdapterPool(str(zoo.base), adapters_dir=zoo.adapters)
    probe.predict(["good"], ["pf-a"])
    one = probe.loaded()[0]["bytes"]
    assert one > 0
    pool = AdapterPool(str(zoo.base), adapters_dir=zoo.adapters, max_adapters=None, max_bytes=2 * one + one // 2)
    for name in ("pf-a", "pf-b", "three", "pf-a", "pf-b"):
        pool.predict(["good"], name)
        assert pool.loaded_bytes <= pool.max_bytes
    assert len(pool.loaded()) == 2 and pool.stats.evictions >= 2


def test_a_batch_needing_more_adapters_than_the_lru_holds_is_answered_in_parts(zoo: Zoo) -> None:
    pool = AdapterPool(str(zoo.base), adapters_dir=zoo.adapters, max_adapters=2)
    names = ["pf-a", "pf-b", "lora", "three", "pf-a", "score"]
    texts = TEXTS[:len(names)]
    check(zoo, pool.predict(texts, names), names, texts)
    assert len(pool.loaded()) <= 2


@pytest.mark.parametrize(("texts", "names", "field", "error"), [
    ([], "pf-a", "texts", RequestError),
    ("one string", "pf-a", "texts", RequestError),
    (["good", 3], "pf-a", "texts[1]", RequestError),
    (["good", "bad " * 80], "pf-a", "texts[1]", RequestError),  # over the tiny model's 64 positions
    (["good"], "nope", "adapter", UnknownAdapterError),
    (["good"], "../adapters/pf-a", "adapter", UnknownAdapterError),
    (["good"], "", "adapter", RequestError),
    (["good", "bad"], ["pf-a", "nope"], "adapters[1]", UnknownAdapterError),
    (["good", "bad"], ["pf-a"], "adapters", RequestError),
])
def test_bad_requests_name_the_field(zoo: Zoo, texts, names, field, error) -> None:  # noqa: ANN001
    pool = AdapterPool(str(zoo.base), adapters_dir=zoo.adapters, hub=False)
    with pytest.raises(error) as info:
        pool.predict(texts, names)
    assert info.value.field == field and str(info.value).startswith(f"{field}: ")
    assert isinstance(info.value, ConfigError)
    assert pool.loaded() == []


def test_a_text_at_the_maximum_length_is_served(zoo: Zoo) -> None:
    pool = AdapterPool(str(zoo.base), adapters_dir=zoo.adapters, max_length=10)
    text = " ".join(["good"] * 8)  # [CLS] + 8 + [SEP] = 10 tokens
    assert pool.predict([text], "pf-a")[0].adapter == "pf-a"
    with pytest.raises(RequestError, match=r"texts\[0\]: 11 tokens, more than the model's maximum of 10"):
        pool.predict([text + " good"], "pf-a")


def test_adapters_by_explicit_path_and_an_adapter_without_its_head(zoo: Zoo, tmp_path: Path) -> None:
    hf, _ = load_base_model(str(zoo.base), pooling="mean")
    model = AdaptedModel(hf)
    model.add_adapter("bare", PfeifferConfig(reduction_factor=4))
    save_adapter(model, "bare", tmp_path / "bare")  # no head
    pool = AdapterPool(str(zoo.base), adapters={"first": zoo.adapters / "pf-a", "headless": tmp_path / "bare"})
    assert pool.available() == ["first", "headless"]
    check(zoo, pool.predict(TEXTS[:3], "first"), ["pf-a"] * 3, TEXTS[:3], served_as="first")
    with pytest.raises(AdapterLoadError, match=r"head\.safetensors: missing: the pool serves adapters saved with"):
        pool.predict(["good"], "headless")


def test_hub_repo_ids_load_on_first_use(zoo: Zoo, fake_hub) -> None:  # noqa: ANN001
    files = {p.name: p.read_bytes() for p in (zoo.adapters / "pf-b").iterdir()}
    fake_hub.add("someone/pf-b", files)
    pool = AdapterPool(str(zoo.base))
    assert pool.has_adapter("someone/pf-b") and not pool.has_adapter("no-slash")
    predictions = pool.predict(TEXTS[:3], "someone/pf-b")
    assert [p.adapter for p in predictions] == ["someone/pf-b"] * 3
    expected = AdapterPool(str(zoo.base), adapters_dir=zoo.adapters).predict(TEXTS[:3], "pf-b")
    assert [p.scores for p in predictions] == [p.scores for p in expected]
    with pytest.raises(UnknownAdapterError, match="someone/missing: .*no such repository") as info:
        pool.predict(["good"], "someone/missing")
    assert info.value.field == "adapter" and info.value.status == 404
    off = AdapterPool(str(zoo.base), hub=False)
    with pytest.raises(UnknownAdapterError, match="someone/pf-b"):
        off.predict(["good"], "someone/pf-b")


def test_concurrent_calls_from_threads_get_their_own_answers(zoo: Zoo) -> None:
    pool = AdapterPool(str(zoo.base), adapters_dir=zoo.adapters, max_adapters=2, batch_size=3)
    jobs = [(zoo.names[i % len(zoo.names)], TEXTS[i % len(TEXTS):] or TEXTS) for i in range(14)]
    expected = [[p.to_dict() for p in pool.predict(texts, name)] for name, texts in jobs]
    results: list = [None] * len(jobs)
    errors: list = []

    def work(i: int) -> None:
        try:
            for _ in range(3):
                name, texts = jobs[i]
                results[i] = [p.to_dict() for p in pool.predict(texts, name)]
                assert results[i] == expected[i]
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == expected


def test_pool_options_are_checked(zoo: Zoo, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_adapters: must be at least 1"):
        AdapterPool(str(zoo.base), max_adapters=0)
    with pytest.raises(ConfigError, match="adapters_dir: .*no such directory"):
        AdapterPool(str(zoo.base), adapters_dir=tmp_path / "absent")
