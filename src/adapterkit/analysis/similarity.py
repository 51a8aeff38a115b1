"""Representational similarity of two sets of representations of the same points: linear CKA and RSA.

Pure functions over arrays (rows = points, columns = features), memory-bounded:

- linear CKA (Kornblith et al. 2019) is computed from feature-space statistics (X^T X, Y^T Y, X^T Y,
  column sums) that :class:`CKAStats` accumulates batch by batch, so the n x n Gram matrices are never
  formed: memory is O(d_x^2 + d_y^2 + d_x d_y) whatever the number of points;
- RSA correlates the upper triangles of the two pairwise cosine-similarity matrices. Pearson is exact and
  blockwise (``block_size`` rows of the similarity matrices at a time, O(block_size * n) memory);
  Spearman needs the ranks of every pair, so it ranks all pairs when there are at most ``max_pairs`` of
  them and a seeded uniform sample of ``max_pairs`` pairs otherwise (an estimate; the result says which).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import ConfigError

Correlation = Literal["pearson", "spearman"]
CORRELATIONS = ("pearson", "spearman")


def _as_2d(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ConfigError(f"{name}: expected a 2-D array (points x features), got shape {x.shape}")
    return x


def _check_pair(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_2d(x, "x"), _as_2d(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ConfigError(f"x, y: need the same points (rows), got {x.shape[0]} and {y.shape[0]}")
    if x.shape[0] < 2:
        raise ConfigError(f"x, y: need at least 2 points, got {x.shape[0]}")
    return x, y


# --- linear CKA -------------------------------------------------------------------------------------


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of ``x`` (n x d1) and ``y`` (n x d2): ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F),
    with column-centred Xc, Yc. 1 for identical representations; invariant to orthogonal transforms and
    isotropic scaling of either side."""
    x, y = _check_pair(x, y)
    stats = CKAStats(x.shape[1], y.shape[1])
    stats.update(x, y)
    return stats.value()


class CKAStats:
    """Running statistics for linear CKA over batches of paired points (float64, feature space only)."""

    def __init__(self, dim_x: int, dim_y: int) -> None:
        self.n = 0
        self.sx = np.zeros(dim_x)
        self.sy = np.zeros(dim_y)
        self.xx = np.zeros((dim_x, dim_x))
        self.yy = np.zeros((dim_y, dim_y))
        self.xy = np.zeros((dim_x, dim_y))
        self._shift_x: np.ndarray | None = None
        self._shift_y: np.ndarray | None = None

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        """Add paired points (rows of ``x`` and ``y``)."""
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
            raise ConfigError(f"x, y: expected paired 2-D batches, got shapes {x.shape} and {y.shape}")
        if x.shape[1] != self.sx.shape[0] or y.shape[1] != self.sy.shape[0]:
            raise ConfigError(f"x, y: feature sizes {x.shape[1]}, {y.shape[1]} differ from the statistics' "
                              f"{self.sx.shape[0]}, {self.sy.shape[0]}")
        if not len(x):
            return
        if self._shift_x is None:  # a shift near the mean keeps the centring free of cancellation
            self._shift_x, self._shift_y = x.mean(0), y.mean(0)
        x, y = x - self._shift_x, y - self._shift_y
        self.n += len(x)
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.xx += x.T @ x
        self.yy += y.T @ y
        self.xy += x.T @ y

    def value(self) -> float:
        """Linear CKA of all points added so far."""
        if self.n < 2:
            raise ConfigError(f"CKA: need at least 2 points, got {self.n}")
        mx, my = self.sx / self.n, self.sy / self.n
        xx = self.xx - self.n * np.outer(mx, mx)
        yy = self.yy - self.n * np.outer(my, my)
        xy = self.xy - self.n * np.outer(mx, my)
        denom = np.linalg.norm(xx) * np.linalg.norm(yy)
        if denom <= 0:
            return float("nan")  # a constant representation: CKA is undefined
        return float(np.sum(xy * xy) / denom)


# --- RSA --------------------------------------------------------------------------------------------


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


@dataclass
class RSAResult:
    """An RSA value and how it was obtained."""

    value: float
    pairs: int  # pairs correlated
    total_pairs: int  # n (n - 1) / 2
    exact: bool  # False when Spearman ran on a sample of the pairs


def rsa(x: np.ndarray, y: np.ndarray, correlation: Correlation = "pearson", *, block_size: int = 512,
        max_pairs: int = 2_000_000, seed: int = 0) -> RSAResult:
    """RSA of ``x`` and ``y`` (n points each): the Pearson or Spearman correlation of the upper triangles
    (i < j) of their pairwise cosine-similarity matrices, computed ``block_size`` rows at a time."""
    x, y = _check_pair(x, y)
    if correlation not in CORRELATIONS:
        raise ConfigError(f"correlation: use one of {list(CORRELATIONS)}, got {correlation!r}")
    if block_size < 1 or max_pairs < 1:
        raise ConfigError("block_size, max_pairs: must be >= 1")
    xn, yn = _normalise(x), _normalise(y)
    n = len(xn)
    total = n * (n - 1) // 2
    if correlation == "pearson":
        return RSAResult(_blockwise_pearson(xn, yn, block_size), total, total, True)
    if total <= max_pairs:
        a, b = _triangles(xn, yn, block_size)
        exact = True
    else:
        rng = np.random.default_rng(seed)
        i = rng.integers(0, n, size=max_pairs)
        j = (i + rng.integers(1, n, size=max_pairs)) % n  # j != i, uniform over the other points
        a = np.einsum("pd,pd->p", xn[i], xn[j])
        b = np.einsum("pd,pd->p", yn[i], yn[j])
        exact = False
    from scipy.stats import rankdata

    value = _pearson(rankdata(a), rankdata(b))
    return RSAResult(value, len(a), total, exact)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt(np.dot(a, a) * np.dot(b, b))
    return float(np.dot(a, b) / denom) if denom > 0 else float("nan")


def _upper_blocks(xn: np.ndarray, yn: np.ndarray, block_size: int):  # noqa: ANN202 (a generator)
    """Yield (a, b): the similarities of pairs (i, j), i < j, for each block of rows i."""
    n = len(xn)
    for start in range(0, n - 1, block_size):
        stop = min(n - 1, start + block_size)
        sa = xn[start:stop] @ xn[start:].T  # rows i in [start, stop), columns j >= start
        sb = yn[start:stop] @ yn[start:].T
        rows = np.arange(start, stop)[:, None]
        keep = np.arange(start, n)[None, :] > rows
        yield sa[keep], sb[keep]


def _sums(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(sum a, sum b, sum a^2, sum b^2, sum ab) of two equal-shaped arrays."""
    a, b = a.ravel(), b.ravel()
    return np.array([a.sum(), b.sum(), np.dot(a, a), np.dot(b, b), np.dot(a, b)])


def _blockwise_pearson(xn: np.ndarray, yn: np.ndarray, block_size: int) -> float:
    """Pearson over the pairs i < j without masks: each block of rows [start, stop) against columns >= start
    is a symmetric square part (its upper triangle = (all - diagonal) / 2) and a rectangle above the diagonal.
    Values are shifted by a first estimate of their means, which keeps the sums free of cancellation."""
    n = len(xn)
    head = min(n, 256)
    shift_a = float(np.mean(xn[:head] @ xn[:head].T))
    shift_b = float(np.mean(yn[:head] @ yn[:head].T))
    total = np.zeros(5)
    for start in range(0, n, block_size):
        stop = min(n, start + block_size)
        a = xn[start:stop] @ xn[start:].T
        b = yn[start:stop] @ yn[start:].T
        a -= shift_a
        b -= shift_b
        w = stop - start
        square = _sums(a[:, :w], b[:, :w]) - _sums(np.diagonal(a[:, :w]), np.diagonal(b[:, :w]))
        total += square / 2 + _sums(a[:, w:], b[:, w:])
    m = n * (n - 1) / 2
    sa, sb, saa, sbb, sab = total
    cov = sab - sa * sb / m
    var = (saa - sa * sa / m) * (sbb - sb * sb / m)
    return float(cov / np.sqrt(var)) if var > 0 else float("nan")


def _triangles(xn: np.ndarray, yn: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(xn)
    a = np.empty(n * (n - 1) // 2)
    b = np.empty_like(a)
    at = 0
    for pa, pb in _upper_blocks(xn, yn, block_size):
        a[at: at + len(pa)] = pa
        b[at: at + len(pb)] = pb
        at += len(pa)
    return a, b
