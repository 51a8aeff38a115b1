"""The generated reference pages are up to date, and the README keeps its two set-up commands first."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page", ["docs/methods.md", "docs/training.md"])
def test_generated_pages_are_current(page: str) -> None:
    expected = _generator().PAGES[page]()
    assert (ROOT / page).read_text(encoding="utf-8") == expected, f"{page} is stale: run scripts/gen_docs.py"


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = [line for line in readme.split("```")[1].strip().splitlines()]
    assert commands == [
        "bash scripts/setup.sh && .venv/bin/adapterkit demo --data-dir ../shared/data",
        "bash scripts/setup.sh && .venv/bin/python -m pytest -q",
    ]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert ci[-1] == commands[1]
