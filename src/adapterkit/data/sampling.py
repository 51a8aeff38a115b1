"""Seeded, deterministic sampling: k-shot, low-resource subsets, dev carving, multi-task weights.

Every function takes an explicit ``seed`` and uses its own ``random.Random(seed)``, so results do
not depend on global random state. Selected examples keep their original relative order.
"""
from __future__ import annotations

import math
import numbers
import random
import warnings
from collections.abc import Sequence
from typing import Any

from adapterkit.errors import ConfigError, DataError

SHORT_CLASSES = ("error", "all")
"""What :func:`k_shot` does with a class that has fewer than k examples."""

Example = dict[str, Any]


def _labels(examples: Sequence[Example], label_key: str) -> list[Any] | None:
    """Class labels when every example has a discrete one, else None (float labels, QA, no labels)."""
    labels = [ex.get(label_key) for ex in examples]
    if not labels or not all(isinstance(v, (str, numbers.Integral)) for v in labels):
        return None
    return labels


def _sort_key(value: Any) -> tuple[str, str]:
    return (type(value).__name__, str(value))


def _group(labels: Sequence[Any]) -> dict[Any, list[int]]:
    groups: dict[Any, list[int]] = {}
    for i, lab in enumerate(labels):
        groups.setdefault(lab, []).append(i)
    return {k: groups[k] for k in sorted(groups, key=_sort_key)}


def _allocate(counts: dict[Any, int], n: int) -> dict[Any, int]:
    """Split ``n`` over classes in proportion to ``counts`` (largest-remainder method)."""
    total = sum(counts.values())
    exact = {k: n * c / total for k, c in counts.items()}
    quota = {k: min(counts[k], math.floor(v)) for k, v in exact.items()}
    left = n - sum(quota.values())
    order = sorted(counts, key=lambda k: (-(exact[k] - math.floor(exact[k])), _sort_key(k)))
    while left > 0:
        progressed = False
        for k in order:
            if left == 0:
                break
            if quota[k] < counts[k]:
                quota[k] += 1
                left -= 1
                progressed = True
        if not progressed:
            break
    return quota


def _select(
    examples: Sequence[Example], n: int, rng: random.Random, stratify: bool, label_key: str
) -> list[int]:
    """Indices of ``n`` examples, stratified by class when labels are discrete and ``stratify``."""
    labels = _labels(examples, label_key) if stratify else None
    if labels is None:
        chosen = rng.sample(range(len(examples)), n)
    else:
        groups = _group(labels)
        quota = _allocate({k: len(v) for k, v in groups.items()}, n)
        chosen = []
        for k, idx in groups.items():
            chosen.extend(rng.sample(idx, quota[k]))
    return sorted(chosen)


def _check_seed(seed: Any) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed: expected an int, got {seed!r}")


def k_shot(examples: Sequence[Example], k: int, seed: int, label_key: str = "label",
           short: str = "error", names: Sequence[str] | None = None) -> list[Example]:
    """``k`` examples per class, drawn with ``seed``.

    ``short`` says what a class with fewer than ``k`` examples gets: ``"error"`` (a DataError naming the
    classes) or ``"all"`` (every example it has, with a warning naming the classes; for long-tailed
    label sets such as ChemProt, whose rarest relation has 4 training examples). ``names``: label names in
    id order, for the messages.
    """
    _check_seed(seed)
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"k: expected a positive int, got {k!r}")
    if short not in SHORT_CLASSES:
        raise ConfigError(f"short_classes: expected one of {list(SHORT_CLASSES)}, got {short!r}")
    if not examples:
        raise DataError("k_shot: no examples to sample from")
    missing = [i for i, ex in enumerate(examples) if ex.get(label_key) is None]
    if missing:
        raise DataError(f"k_shot: field {label_key!r} missing in example {missing[0]}")
    groups = _group([ex[label_key] for ex in examples])
    short_counts = {lab: len(idx) for lab, idx in groups.items() if len(idx) < k}
    if short_counts:
        def shown(lab: Any) -> str:
            named = names is not None and isinstance(lab, int) and 0 <= lab < len(names)
            return f"{lab!r} ({names[lab]})" if named else repr(lab)

        detail = ", ".join(f"class {shown(lab)} has {c}" for lab, c in short_counts.items())
        if short == "error":
            raise DataError(f"k_shot: field {label_key!r}: need {k} examples per class but {detail} "
                            "(short_classes='all' takes every example of such a class)")
        warnings.warn(f"k_shot: fewer than {k} examples per class: {detail}; all of them are used",
                      stacklevel=2)
    rng = random.Random(seed)
    chosen: list[int] = []
    for idx in groups.values():
        chosen.extend(rng.sample(idx, min(k, len(idx))))
    return [examples[i] for i in sorted(chosen)]


def subsample(
    examples: Sequence[Example], n: int, seed: int, stratify: bool = True, label_key: str = "label"
) -> list[Example]:
    """``n`` examples (all of them when ``n >= len(examples)``).

    With ``stratify`` and discrete labels the class proportions are kept (largest-remainder
    rounding); float labels, missing labels or ``stratify=False`` give a plain random sample.
    """
    _check_seed(seed)
    if not isinstance(n, int) or n < 0:
        raise ConfigError(f"n: expected a non-negative int, got {n!r}")
    if n >= len(examples):
        return list(examples)
    rng = random.Random(seed)
    return [examples[i] for i in _select(examples, n, rng, stratify, label_key)]


def carve_dev(
    examples: Sequence[Example],
    n_dev: int | float,
    seed: int,
    stratify: bool = True,
    label_key: str = "label",
) -> tuple[list[Example], list[Example]]:
    """Split ``examples`` into disjoint ``(train, dev)``; ``n_dev`` is a count or a fraction in (0, 1).

    Used for the UniPELT protocol (hold out 1000 training examples as dev, use the official dev
    as test) and for few-shot model selection.
    """
    _check_seed(seed)
    total = len(examples)
    if isinstance(n_dev, float) and not n_dev.is_integer():
        if not 0 < n_dev < 1:
            raise ConfigError(f"n_dev: a fraction must lie in (0, 1), got {n_dev}")
        count = max(1, round(n_dev * total))
    elif isinstance(n_dev, (int, float)) and not isinstance(n_dev, bool):
        count = int(n_dev)
    else:
        raise ConfigError(f"n_dev: expected an int or a fraction, got {n_dev!r}")
    if count < 1 or count >= total:
        raise DataError(f"carve_dev: n_dev={n_dev} must leave both splits non-empty ({total} examples)")
    rng = random.Random(seed)
    dev_idx = set(_select(examples, count, rng, stratify, label_key))
    train = [ex for i, ex in enumerate(examples) if i not in dev_idx]
    dev = [ex for i, ex in enumerate(examples) if i in dev_idx]
    return train, dev


def split_by_group(
    examples: Sequence[Example], fractions: Sequence[float], seed: int, group_key: str = "title"
) -> list[list[Example]]:
    """Split ``examples`` into ``len(fractions)`` disjoint parts by whole groups (e.g. SQuAD articles).

    The sorted group names are shuffled with ``random.Random(seed)`` and cut into consecutive runs of
    ``round(fraction * groups)`` groups (largest remainder; every part gets at least one group), so no
    group is in two parts, the same names give the same parts whatever the file order, and parallel
    files with the same group names (XQuAD's languages) split alike. Examples keep their file order.
    """
    _check_seed(seed)
    if not fractions or any(not f > 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError(f"fractions: expected positive fractions summing to 1, got {list(fractions)}")
    missing = [i for i, ex in enumerate(examples) if group_key not in ex]
    if missing:
        raise DataError(f"split_by_group: example {missing[0]} has no {group_key!r} field")
    names = sorted({str(ex[group_key]) for ex in examples})
    if len(names) < len(fractions):
        raise DataError(f"split_by_group: {len(names)} {group_key} groups cannot fill {len(fractions)} parts")
    random.Random(seed).shuffle(names)
    exact = [f * len(names) for f in fractions]
    counts = {i: math.floor(x) for i, x in enumerate(exact)}
    for i in sorted(range(len(exact)), key=lambda j: (-(exact[j] - counts[j]), j))[: len(names) - sum(counts.values())]:
        counts[i] += 1
    short = [i for i, c in counts.items() if c == 0]
    for i in short:  # take a group from the largest part
        donor = max(counts, key=lambda j: counts[j])
        counts[donor] -= 1
        counts[i] = 1
    part_of: dict[str, int] = {}
    start = 0
    for i in range(len(fractions)):
        for name in names[start : start + counts[i]]:
            part_of[name] = i
        start += counts[i]
    parts: list[list[Example]] = [[] for _ in fractions]
    for ex in examples:
        parts[part_of[str(ex[group_key])]].append(ex)
    return parts


def temperature_sample_weights(sizes: dict[str, int], T: float) -> dict[str, float]:
    """Multi-task sampling probabilities ``p_i ∝ n_i ** (1 / T)`` (T=1 proportional, T→∞ uniform)."""
    if not sizes:
        raise ConfigError("sizes: no tasks given")
    if not isinstance(T, (int, float)) or T <= 0 or math.isnan(T):
        raise ConfigError(f"T: temperature must be > 0, got {T!r}")
    for name, n in sizes.items():
        if n <= 0:
            raise ConfigError(f"sizes: {name}: dataset size must be > 0, got {n}")
    raw = {name: float(n) ** (1.0 / T) for name, n in sizes.items()}
    total = sum(raw.values())
    return {name: v / total for name, v in raw.items()}
