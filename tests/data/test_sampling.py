"""Tests for adapterkit.data.sampling."""
from __future__ import annotations

from collections import Counter

import pytest

from adapterkit.data.sampling import carve_dev, k_shot, subsample, temperature_sample_weights
from adapterkit.errors import ConfigError, DataError


def _examples(counts: dict[int, int]) -> list[dict]:
    out = []
    for label, n in counts.items():
        out += [{"text": f"{label}-{i}", "label": label} for i in range(n)]
    return out


EX = _examples({0: 60, 1: 30, 2: 10})


def test_k_shot_is_stratified_and_deterministic():
    a = k_shot(EX, 4, seed=1)
    assert Counter(e["label"] for e in a) == {0: 4, 1: 4, 2: 4}
    assert a == k_shot(EX, 4, seed=1)
    assert a != k_shot(EX, 4, seed=2)
    assert len({e["text"] for e in a}) == 12


def test_k_shot_too_few_names_class():
    with pytest.raises(DataError, match="class 2 has 10"):
        k_shot(EX, 11, seed=0)
    with pytest.raises(ConfigError):
        k_shot(EX, 0, seed=0)


def test_k_shot_short_all_takes_every_example_of_a_short_class_and_warns():
    with pytest.warns(UserWarning, match="class 2 has 10"):
        a = k_shot(EX, 12, seed=0, short="all")
    assert Counter(e["label"] for e in a) == {0: 12, 1: 12, 2: 10}
    assert {e["text"] for e in a if e["label"] == 2} == {f"2-{i}" for i in range(10)}
    with pytest.raises(ConfigError, match="short_classes"):
        k_shot(EX, 4, seed=0, short="skip")


def test_subsample_keeps_proportions():
    sub = subsample(EX, 20, seed=3)
    assert len(sub) == 20
    assert Counter(e["label"] for e in sub) == {0: 12, 1: 6, 2: 2}
    assert sub == subsample(EX, 20, seed=3)
    odd = subsample(EX, 7, seed=0)  # 4.2, 2.1, 0.7 -> largest remainder gives 4, 2, 1
    assert Counter(e["label"] for e in odd) == {0: 4, 1: 2, 2: 1}
    assert subsample(EX, 1000, seed=0) == EX


def test_subsample_float_labels_plain_random():
    reg = [{"text": str(i), "label": i / 10} for i in range(50)]
    sub = subsample(reg, 10, seed=0)
    assert len(sub) == 10 and len({e["text"] for e in sub}) == 10
    assert sub == subsample(reg, 10, seed=0)


def test_carve_dev_disjoint():
    train, dev = carve_dev(EX, 10, seed=5)
    assert len(train) == 90 and len(dev) == 10
    assert not {e["text"] for e in train} & {e["text"] for e in dev}
    assert Counter(e["label"] for e in dev) == {0: 6, 1: 3, 2: 1}
    train_f, dev_f = carve_dev(EX, 0.2, seed=5)
    assert len(dev_f) == 20 and len(train_f) == 80
    assert carve_dev(EX, 10, seed=5) == (train, dev)
    with pytest.raises(DataError, match="non-empty"):
        carve_dev(EX, 100, seed=0)
    with pytest.raises(ConfigError):
        carve_dev(EX, 1.5, seed=0)


def test_temperature_weights():
    w = temperature_sample_weights({"a": 100, "b": 400}, T=1)
    assert w == pytest.approx({"a": 0.2, "b": 0.8})
    w2 = temperature_sample_weights({"a": 100, "b": 400}, T=2)
    assert w2 == pytest.approx({"a": 10 / 30, "b": 20 / 30})
    big = temperature_sample_weights({"a": 1, "b": 10_000}, T=1e9)
    assert big["a"] == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ConfigError):
        temperature_sample_weights({"a": 1}, T=0)
    with pytest.raises(ConfigError):
        temperature_sample_weights({"a": 0}, T=1)


def test_split_by_group_whole_groups_and_fractions():
    from adapterkit.data.sampling import split_by_group

    examples = [{"title": f"t{i % 10}", "i": i} for i in range(100)]
    parts = split_by_group(examples, (0.6, 0.2, 0.2), seed=0)
    groups = [{ex["title"] for ex in part} for part in parts]
    assert [len(g) for g in groups] == [6, 2, 2]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    assert sorted(ex["i"] for part in parts for ex in part) == list(range(100))
    assert all([ex["i"] for ex in part] == sorted(ex["i"] for ex in part) for part in parts)  # file order kept
    assert split_by_group(list(reversed(examples)), (0.6, 0.2, 0.2), seed=0)[2][0]["title"] in groups[2]
    assert split_by_group(examples, (0.6, 0.2, 0.2), seed=1) != parts
    assert [len({e["title"] for e in p}) for p in split_by_group(examples[:30], (0.9, 0.05, 0.05), 0)] == [8, 1, 1]
    with pytest.raises(DataError, match="cannot fill"):
        split_by_group(examples[:2], (0.5, 0.25, 0.25), 0)
    with pytest.raises(ConfigError, match="fractions"):
        split_by_group(examples, (0.5, 0.2), 0)
    with pytest.raises(DataError, match="no 'title' field"):
        split_by_group([{"x": 1}], (1.0,), 0)
