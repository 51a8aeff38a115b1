"""Learning-rate sweep aggregation and dev curves."""
from __future__ import annotations

from pathlib import Path

import pytest

from adapterkit.analysis.sweep import (
    aggregate,
    check_grid,
    curves_plot,
    mean_curve,
    overfitting_summary,
    sweep_plot,
)
from adapterkit.errors import ConfigError

ROWS = [
    # system a: lr 1e-4 seeds score 0.60, 0.70 (mean 65); lr 1e-3: 0.80, 0.80 (mean 80); lr 1e-2: 0.50 (one seed)
    {"system": "a", "lr": 1e-4, "seed": 1, "test_score": 0.60},
    {"system": "a", "lr": 1e-4, "seed": 2, "test_score": 0.70},
    {"system": "a", "lr": 1e-3, "seed": 1, "test_score": 0.80},
    {"system": "a", "lr": 1e-3, "seed": 2, "test_score": 0.80},
    {"system": "a", "lr": 1e-2, "seed": 1, "test_score": 0.50},
    {"system": "b", "lr": 1e-4, "seed": 1, "test_score": 0.70},
    {"system": "b", "lr": 1e-3, "seed": 1, "test_score": 0.72},
    {"system": "b", "lr": 1e-2, "seed": 1, "test_score": None},  # a failed run is not counted
]


def test_aggregate_by_hand() -> None:
    table = {r["system"]: r for r in aggregate(ROWS, ["a", "b", "missing"])}
    assert set(table) == {"a", "b"}
    a = table["a"]
    # per-lr means 65, 80, 50: grid mean 65, sample std 15, spread 30; best lr 1e-3; 5 runs
    assert a["grid mean"] == pytest.approx(65.0)
    assert a["grid std"] == pytest.approx(15.0)
    assert a["spread (max-min)"] == pytest.approx(30.0)
    assert a["best lr"] == "0.001" and a["runs"] == 5
    assert a["lr=0.0001"] == "65.0 ± 7.1"
    b = table["b"]
    assert b["grid mean"] == pytest.approx(71.0) and b["spread (max-min)"] == pytest.approx(2.0)
    assert b["grid std"] == pytest.approx(1.41, abs=0.01) and b["runs"] == 2


def test_grid_must_be_positive() -> None:
    assert check_grid(["1e-5", 3e-3]) == [1e-5, 3e-3]
    with pytest.raises(ConfigError, match=r"lrs: learning rates must be > 0, got 0"):
        check_grid([1e-4, 0])
    with pytest.raises(ConfigError, match=r"-0.001"):
        check_grid([-1e-3])
    with pytest.raises(ConfigError, match="empty"):
        check_grid([])


def test_curves_and_overfitting(tmp_path: Path) -> None:
    runs = [{"system": "ft", "curve": [{"epoch": 1.0, "dev_loss": 0.6}, {"epoch": 2.0, "dev_loss": 0.4},
                                       {"epoch": 3.0, "dev_loss": 0.9}]},
            {"system": "ft", "curve": [{"epoch": 1.0, "dev_loss": 0.8}, {"epoch": 2.0, "dev_loss": 0.6},
                                       {"epoch": 3.0, "dev_loss": 1.1}]},
            {"system": "ad", "curve": [{"epoch": 1.0, "dev_loss": 0.7}, {"epoch": 2.0, "dev_loss": 0.6},
                                       {"epoch": 3.0, "dev_loss": 0.55}]}]
    assert mean_curve(runs[:2]) == ([1.0, 2.0, 3.0], pytest.approx([0.7, 0.5, 1.0]))
    summary = {r["system"]: r for r in overfitting_summary(runs, ["ft", "ad"])}
    assert summary["ft"]["at epoch"] == 2.0 and summary["ft"]["rise after min"] == pytest.approx(0.5)
    assert summary["ad"]["rise after min"] == pytest.approx(0.0)
    p = curves_plot(tmp_path / "c.png", {"ft": runs[:2], "ad": runs[2:]})
    q = sweep_plot(tmp_path / "s.png", ROWS, ["a", "b"])
    assert p.stat().st_size > 1000 and q.stat().st_size > 1000
