"""Shared fixtures: the real data directory (../shared/data from the repository root)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data; skipped where it is absent, except under CI (CI=true), where that is a failure."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{SHARED_DATA}: shared data directory missing on CI")
        pytest.skip(f"{SHARED_DATA}: shared data directory not present")
    return SHARED_DATA
