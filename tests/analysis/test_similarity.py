"""Linear CKA and RSA against hand computations and direct NumPy versions."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from adapterkit.analysis.similarity import CKAStats, linear_cka, rsa
from adapterkit.errors import ConfigError


def direct_cka(x: np.ndarray, y: np.ndarray) -> float:
    """CKA through the n x n Gram matrices (HSIC with the centring matrix), as in Kornblith et al. 2019."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, ell = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float(np.sum(k * ell) / (np.linalg.norm(k) * np.linalg.norm(ell)))


def direct_rsa(x: np.ndarray, y: np.ndarray, spearman: bool = False) -> float:
    def cos(a: np.ndarray) -> np.ndarray:
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        return a @ a.T

    iu = np.triu_indices(len(x), 1)
    a, b = cos(x)[iu], cos(y)[iu]
    return float(spearmanr(a, b)[0] if spearman else np.corrcoef(a, b)[0, 1])


def test_cka_hand_computed() -> None:
    # x = [[1,0],[0,1],[0,0]], y = [[1],[0],[0]]: centred, Xc^T Xc = [[2/3,-1/3],[-1/3,2/3]], Yc^T Yc = 2/3,
    # Xc^T Yc = [2/3, -1/3]: CKA = (4/9 + 1/9) / (sqrt(10/9) * 2/3) = (5/9) / (2/3 * sqrt(10)/3)
    x = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    y = np.array([[1.0], [0.0], [0.0]])
    assert linear_cka(x, y) == pytest.approx((5 / 9) / (2 / 3 * np.sqrt(10) / 3))


def test_cka_of_itself_is_one_and_matches_gram_form() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 8)), rng.normal(size=(50, 5))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, y) == pytest.approx(direct_cka(x, y))
    assert linear_cka(x, y) < 0.5


def test_cka_invariant_to_rotation_and_isotropic_scaling() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 6)) + 3.0
    y = x @ rng.normal(size=(6, 6)) + 0.5 * rng.normal(size=(40, 6))
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    base = linear_cka(x, y)
    assert linear_cka(x @ q, y) == pytest.approx(base)
    assert linear_cka(x, 7.5 * y) == pytest.approx(base)
    assert linear_cka(2.0 * x @ q, y @ q.T) == pytest.approx(base)
    # not invariant to an arbitrary (non-orthogonal) linear map: the check above could fail
    assert linear_cka(x * np.arange(1, 7), y) != pytest.approx(base, abs=1e-3)


def test_cka_batches_equal_one_pass() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(30, 4)) + 100.0, rng.normal(size=(30, 3))
    stats = CKAStats(4, 3)
    for i in range(0, 30, 7):
        stats.update(x[i: i + 7], y[i: i + 7])
    assert stats.value() == pytest.approx(direct_cka(x, y))


def test_rsa_matches_direct_numpy_tiny_case() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(9, 4)), rng.normal(size=(9, 6))
    for block in (1, 2, 4, 100):
        res = rsa(x, y, "pearson", block_size=block)
        assert res.value == pytest.approx(direct_rsa(x, y))
        assert res.pairs == res.total_pairs == 36 and res.exact
        assert rsa(x, y, "spearman", block_size=block).value == pytest.approx(direct_rsa(x, y, spearman=True))
    assert rsa(x, x).value == pytest.approx(1.0)
    assert rsa(x, 3.0 * x).value == pytest.approx(1.0)  # cosine ignores scale


def test_rsa_hand_computed_three_points() -> None:
    # x: unit vectors at 0, 90, 180 degrees: cosines (0,1)=0, (0,2)=-1, (1,2)=0
    # y: at 0, 60, 120 degrees: cosines 0.5, -0.5, 0.5. Pearson of (0,-1,0) and (0.5,-0.5,0.5) = 1.
    x = np.array([[1.0, 0], [0, 1], [-1, 0]])
    y = np.array([[1.0, 0], [0.5, np.sqrt(3) / 2], [-0.5, np.sqrt(3) / 2]])
    assert rsa(x, y).value == pytest.approx(1.0)
    y2 = np.array([[1.0, 0], [-1, 0], [0, 1]])  # cosines -1, 0, 0: Pearson with (0,-1,0) = -0.5
    assert rsa(x, y2).value == pytest.approx(-0.5)


def test_spearman_sampled_pairs_is_close_and_flagged() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(120, 5))
    y = x + 0.5 * rng.normal(size=(120, 5))
    exact = rsa(x, y, "spearman")
    approx = rsa(x, y, "spearman", max_pairs=3000, seed=1)
    assert exact.exact and not approx.exact and approx.pairs == 3000
    assert approx.value == pytest.approx(exact.value, abs=0.05)


def test_bad_inputs() -> None:
    with pytest.raises(ConfigError, match="same points"):
        linear_cka(np.zeros((3, 2)), np.zeros((4, 2)))
    with pytest.raises(ConfigError, match="at least 2 points"):
        rsa(np.zeros((1, 2)), np.zeros((1, 2)))
    with pytest.raises(ConfigError, match="correlation"):
        rsa(np.ones((3, 2)), np.ones((3, 2)), "kendall")
