"""Tests for adapterkit.metrics against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from adapterkit.errors import ConfigError
from adapterkit.metrics import (
    METRICS,
    accuracy,
    compute_metrics,
    f1_binary,
    f1_macro,
    f1_micro,
    logits_to_predictions,
    matthews_corrcoef,
    normalize_answer,
    pearson,
    spearman,
    squad_em_f1,
)

P = [1, 0, 1, 1]
Y = [1, 0, 0, 1]


def test_accuracy_and_binary_f1():
    assert accuracy(P, Y) == 0.75
    assert f1_binary(P, Y) == pytest.approx(0.8)  # tp=2 fp=1 fn=0 -> 4/5
    assert f1_binary(P, Y, pos_label=0) == pytest.approx(2 / 3)  # tp=1 fp=0 fn=1
    assert f1_binary([0, 0], [0, 0]) == 0.0  # no positives anywhere


def test_mcc_binary_hand_computed():
    # TP=2 TN=1 FP=1 FN=0 -> (2*1 - 1*0) / sqrt(3*2*2*1)
    assert matthews_corrcoef(P, Y) == pytest.approx(2 / math.sqrt(12))
    # TP=6 TN=3 FP=1 FN=2 -> (18 - 2) / sqrt(7*8*4*5)
    y = [1] * 8 + [0] * 4
    p = [1] * 6 + [0] * 2 + [0] * 3 + [1]
    assert matthews_corrcoef(p, y) == pytest.approx(16 / math.sqrt(1120))
    assert matthews_corrcoef([1, 1, 1], [1, 0, 1]) == 0.0  # undefined -> 0
    assert matthews_corrcoef([0, 1, 0, 1], [0, 1, 0, 1]) == pytest.approx(1.0)
    assert matthews_corrcoef([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)


Y3 = [0, 0, 1, 1, 2, 2]
P3 = [0, 1, 1, 1, 2, 0]


def test_multiclass():
    # MCC: c=4, s=6, t=[2,2,2], p=[2,3,1] -> (24-12)/sqrt((36-14)*(36-12))
    assert matthews_corrcoef(P3, Y3) == pytest.approx(12 / math.sqrt(22 * 24))
    # per-class F1: 0.5, 0.8, 2/3
    assert f1_macro(P3, Y3) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert f1_micro(P3, Y3) == pytest.approx(4 / 6) == accuracy(P3, Y3)
    assert f1_micro(P3, Y3, classes=[1, 2]) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))  # tp=3 fp=1 fn=1
    assert f1_macro(["a", "b"], ["a", "a"]) == pytest.approx((2 / 3 + 0) / 2)


def test_correlations():
    assert pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6*2/(4*15)
    assert pearson([1, 1, 1], [1, 2, 3]) == 0.0


def test_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        accuracy([1, 2], [1])


def test_squad():
    assert normalize_answer("The  Cat!  ") == "cat"
    assert normalize_answer("an apple, a pear") == "apple pear"
    preds = {"a": "The Cat!", "b": "the big cat", "c": "dog"}
    refs = {"a": ["cat"], "b": ["a cat sat", "xyz"], "c": ["bird"], "d": ["missing"]}
    out = squad_em_f1(preds, refs)
    assert out["exact_match"] == pytest.approx(1 / 4)
    assert out["f1"] == pytest.approx((1 + 0.5 + 0 + 0) / 4)  # 'big cat' vs 'cat sat': p=r=1/2
    with pytest.raises(ValueError, match="no question has a non-empty reference"):
        squad_em_f1({"a": "x"}, {"a": [""]})


def test_compute_metrics_classification():
    out = compute_metrics(("classification", "f1"), P, Y)
    assert out == pytest.approx(
        {"accuracy": 0.75, "f1": 0.8, "matthews": 2 / math.sqrt(12), "score": 0.8}
    )
    out = compute_metrics(("classification", "macro_f1"), P3, Y3)
    assert set(out) == {"accuracy", "macro_f1", "micro_f1", "matthews", "score"}
    assert out["score"] == out["macro_f1"]
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.0, 1.0]])
    assert compute_metrics("classification", logits, Y)["score"] == 0.75


def test_compute_metrics_with_spec_like_object():
    class Spec:
        kind = "classification"
        metric = "matthews"
        labels = ("a", "b", "c")

    out = compute_metrics(Spec(), [0, 1, 1, 1], [0, 1, 1, 0])
    assert "macro_f1" in out and out["score"] == out["matthews"]


def test_compute_metrics_regression_and_qa():
    out = compute_metrics(("regression", "pearson_spearman"), np.array([[1.0], [2.0], [3.0], [4.0]]), [1, 3, 2, 4])
    assert out["pearson"] == pytest.approx(0.8)
    assert out["spearman"] == pytest.approx(0.8)
    assert out["pearson_spearman"] == pytest.approx(0.8) == out["score"]
    qa = compute_metrics("qa", {"a": "cat"}, {"a": ["the cat"]})
    assert qa["exact_match"] == qa["f1"] == qa["score"] == 1.0


def test_errors_and_registry():
    with pytest.raises(ConfigError, match="unknown task kind"):
        compute_metrics("ranking", [1], [1])
    with pytest.raises(ConfigError, match="unknown metric"):
        compute_metrics(("classification", "bleu"), [1], [1])
    for name in ("accuracy", "f1", "macro_f1", "micro_f1", "matthews", "pearson", "spearman", "squad_f1"):
        assert name in METRICS
    assert logits_to_predictions("classification", [[0.2, 0.8], [0.9, 0.1]]).tolist() == [1, 0]
    assert logits_to_predictions("regression", [[0.5], [1.5]]).tolist() == [0.5, 1.5]
    with pytest.raises(ConfigError):
        logits_to_predictions("qa", [[1.0]])
