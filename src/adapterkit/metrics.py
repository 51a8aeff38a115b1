"""Evaluation metrics as pure functions on arrays and lists (no scikit-learn).

All scores are fractions in [0, 1] (correlations in [-1, 1]); SQuAD EM/F1 are fractions too,
not percentages. :func:`compute_metrics` returns every metric relevant to a task kind and the
task's primary metric again under ``"score"``.
"""
from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from adapterkit.errors import ConfigError

KINDS = ("classification", "regression", "qa")


def _pair(predictions: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(predictions)
    y = np.asarray(labels)
    if p.shape != y.shape:
        raise ValueError(f"predictions have shape {p.shape} but labels have shape {y.shape}")
    if p.size == 0:
        raise ValueError("cannot compute a metric on zero examples")
    return p, y


def accuracy(predictions: Any, labels: Any) -> float:
    """Fraction of predictions equal to the labels."""
    p, y = _pair(predictions, labels)
    return float(np.mean(p == y))


def _f1(tp: float, fp: float, fn: float) -> float:
    denom = 2 * tp + fp + fn
    return 0.0 if denom == 0 else 2 * tp / denom


def f1_binary(predictions: Any, labels: Any, pos_label: Any = 1) -> float:
    """F1 of the positive class ``pos_label`` (0.0 when it is never predicted nor present)."""
    p, y = _pair(predictions, labels)
    tp = float(np.sum((p == pos_label) & (y == pos_label)))
    fp = float(np.sum((p == pos_label) & (y != pos_label)))
    fn = float(np.sum((p != pos_label) & (y == pos_label)))
    return _f1(tp, fp, fn)


def _classes(p: np.ndarray, y: np.ndarray, labels: Iterable[Any] | None) -> list[Any]:
    if labels is not None:
        return list(labels)
    return sorted(set(p.tolist()) | set(y.tolist()))


def f1_macro(predictions: Any, labels: Any, classes: Iterable[Any] | None = None) -> float:
    """Unweighted mean of per-class F1 over ``classes`` (default: every class seen in either input)."""
    p, y = _pair(predictions, labels)
    cls = _classes(p, y, classes)
    scores = [f1_binary(p, y, pos_label=c) for c in cls]
    return float(np.mean(scores)) if scores else 0.0


def f1_micro(predictions: Any, labels: Any, classes: Iterable[Any] | None = None) -> float:
    """F1 from true/false positives pooled over ``classes`` (equals accuracy when all classes count)."""
    p, y = _pair(predictions, labels)
    cls = _classes(p, y, classes)
    tp = fp = fn = 0.0
    for c in cls:
        tp += float(np.sum((p == c) & (y == c)))
        fp += float(np.sum((p == c) & (y != c)))
        fn += float(np.sum((p != c) & (y == c)))
    return _f1(tp, fp, fn)


def matthews_corrcoef(predictions: Any, labels: Any) -> float:
    """Matthews correlation (multi-class generalisation by Gorodkin); 0.0 when undefined."""
    p, y = _pair(predictions, labels)
    cls = _classes(p, y, None)
    index = {c: i for i, c in enumerate(cls)}
    cm = np.zeros((len(cls), len(cls)), dtype=np.float64)
    for t, q in zip(y.tolist(), p.tolist(), strict=True):
        cm[index[t], index[q]] += 1
    t_k = cm.sum(axis=1)
    p_k = cm.sum(axis=0)
    c = np.trace(cm)
    s = cm.sum()
    cov_ytyp = c * s - np.dot(t_k, p_k)
    cov_ypyp = s * s - np.dot(p_k, p_k)
    cov_ytyt = s * s - np.dot(t_k, t_k)
    denom = cov_ypyp * cov_ytyt
    return 0.0 if denom == 0 else float(cov_ytyp / math.sqrt(denom))


def _float_pair(predictions: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p, y = _pair(np.asarray(predictions, dtype=np.float64), np.asarray(labels, dtype=np.float64))
    return p.ravel(), y.ravel()


def pearson(predictions: Any, labels: Any) -> float:
    """Pearson correlation; 0.0 when either input is constant (the correlation is undefined)."""
    from scipy import stats

    p, y = _float_pair(predictions, labels)
    if p.size < 2 or np.all(p == p[0]) or np.all(y == y[0]):
        return 0.0
    return float(stats.pearsonr(p, y)[0])


def spearman(predictions: Any, labels: Any) -> float:
    """Spearman rank correlation; 0.0 when either input is constant."""
    from scipy import stats

    p, y = _float_pair(predictions, labels)
    if p.size < 2 or np.all(p == p[0]) or np.all(y == y[0]):
        return 0.0
    return float(stats.spearmanr(p, y)[0])


def pearson_spearman(predictions: Any, labels: Any) -> float:
    """Mean of Pearson and Spearman correlations (the usual single STS-B number)."""
    return (pearson(predictions, labels) + spearman(predictions, labels)) / 2


# --- SQuAD v1.1 -----------------------------------------------------------------------------------

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Official SQuAD v1.1 normalisation: lower-case, drop punctuation and articles, squeeze spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def squad_exact(prediction: str, ground_truth: str) -> float:
    """1.0 when the normalised strings are equal."""
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def squad_token_f1(prediction: str, ground_truth: str) -> float:
    """Token-overlap F1 of the normalised strings (official SQuAD v1.1 definition)."""
    pred = normalize_answer(prediction).split()
    gold = normalize_answer(ground_truth).split()
    common = Counter(pred) & Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred)
    recall = same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_em_f1(
    predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]
) -> dict[str, float]:
    """SQuAD v1.1 exact match and F1 as fractions, max over each question's reference answers.

    Questions missing from ``predictions`` score 0 (as in the official script). Questions whose
    reference list is empty or holds only empty strings (answers withheld) cannot be scored: a
    ``ValueError`` is raised when no question has a reference answer.
    """
    em = f1 = 0.0
    n = 0
    for qid, golds in references.items():
        golds = [g for g in golds if g.strip()]
        if not golds:
            continue
        n += 1
        pred = predictions.get(qid, "")
        em += max(squad_exact(pred, g) for g in golds)
        f1 += max(squad_token_f1(pred, g) for g in golds)
    if n == 0:
        raise ValueError(
            "squad_em_f1: no question has a non-empty reference answer (answers withheld in this file?)"
        )
    return {"exact_match": em / n, "f1": f1 / n}


def squad_exact_match(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> float:
    """SQuAD exact match (fraction)."""
    return squad_em_f1(predictions, references)["exact_match"]


def squad_f1(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> float:
    """SQuAD token F1 (fraction)."""
    return squad_em_f1(predictions, references)["f1"]


#: Metric functions by name; every one takes ``(predictions, labels)``.
METRICS: dict[str, Callable[..., float]] = {
    "accuracy": accuracy,
    "f1": f1_binary,
    "f1_binary": f1_binary,
    "macro_f1": f1_macro,
    "micro_f1": f1_micro,
    "matthews": matthews_corrcoef,
    "mcc": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
    "pearson_spearman": pearson_spearman,
    "squad_em": squad_exact_match,
    "exact_match": squad_exact_match,
    "squad_f1": squad_f1,
}

_DEFAULT_METRIC = {"classification": "accuracy", "regression": "spearman", "qa": "squad_f1"}


def logits_to_predictions(kind: str, logits: Any) -> np.ndarray:
    """Turn model outputs into predictions: arg-max class ids, or the squeezed regression value."""
    arr = np.asarray(logits)
    if kind == "classification":
        return arr.argmax(axis=-1) if arr.ndim >= 2 else arr.astype(np.int64)
    if kind == "regression":
        if arr.ndim >= 2 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        return arr.astype(np.float64)
    raise ConfigError(f"kind: logits_to_predictions handles 'classification' or 'regression', not {kind!r}")


def _kind_metric_labels(spec: Any) -> tuple[str, str, Sequence[Any] | None]:
    if isinstance(spec, str):
        kind, metric, names = spec, None, None
    elif isinstance(spec, (tuple, list)) and len(spec) == 2:
        (kind, metric), names = spec, None
    elif hasattr(spec, "kind") and hasattr(spec, "metric"):
        kind, metric, names = spec.kind, spec.metric, getattr(spec, "labels", None)
    else:
        raise ConfigError(f"compute_metrics: expected a TaskSpec, a kind, or (kind, metric); got {spec!r}")
    if kind not in KINDS:
        raise ConfigError(f"kind: unknown task kind {kind!r}; known kinds are {list(KINDS)}")
    metric = metric or _DEFAULT_METRIC[kind]
    if metric not in METRICS:
        raise ConfigError(f"metric: unknown metric {metric!r}; known metrics are {sorted(METRICS)}")
    return kind, metric, names


def compute_metrics(spec: Any, predictions: Any, labels: Any) -> dict[str, float]:
    """All metrics relevant to the task kind, plus the primary metric under ``"score"``.

    ``spec`` is a TaskSpec (anything with ``kind``/``metric``/``labels``), a kind string, or a
    ``(kind, metric)`` pair. Classification: ``accuracy``, ``f1`` (binary, when two classes) or
    ``macro_f1`` and ``micro_f1``, and ``matthews``; logits (2-D) are arg-maxed. Regression:
    ``pearson``, ``spearman`` and their mean ``pearson_spearman``. QA: ``predictions`` maps id to
    answer text and ``labels`` maps id to reference answers; gives ``exact_match`` and ``f1``.
    """
    kind, metric, names = _kind_metric_labels(spec)
    if kind == "qa":
        out = squad_em_f1(predictions, labels)
        out["squad_em"] = out["exact_match"]
        out["squad_f1"] = out["f1"]
        out["score"] = out[metric if metric in out else "f1"]
        return out
    preds = np.asarray(predictions)
    y = np.asarray(labels)
    if kind == "classification":
        if preds.ndim == y.ndim + 1:
            preds = logits_to_predictions(kind, preds)
        n_classes = len(names) if names else len(set(y.tolist()) | set(preds.tolist()))
        out = {"accuracy": accuracy(preds, y)}
        if n_classes <= 2:
            out["f1"] = f1_binary(preds, y)
        else:
            # Classes seen in either array, as scikit-learn does (absent classes would score 0).
            out["macro_f1"] = f1_macro(preds, y)
            out["micro_f1"] = f1_micro(preds, y)
        out["matthews"] = matthews_corrcoef(preds, y)
    else:
        if preds.ndim == y.ndim + 1:
            preds = logits_to_predictions(kind, preds)
        out = {"pearson": pearson(preds, y), "spearman": spearman(preds, y)}
        out["pearson_spearman"] = (out["pearson"] + out["spearman"]) / 2
    out["score"] = out[metric] if metric in out else float(METRICS[metric](preds, y))
    return out
