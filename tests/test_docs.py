"""The generated reference pages are up to date, and the README keeps its two set-up commands first."""
from __future__ import annotations

import importlib.util
import sys
import types
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


def test_generated_blocks_are_current() -> None:
    generator = _generator()
    for rel in sorted({path for path, _, _ in generator.BLOCKS}):
        text = (ROOT / rel).read_text(encoding="utf-8")
        assert generator.with_blocks(rel, text) == text, f"{rel}: a generated block is stale: run scripts/gen_docs.py"


def test_readme_architecture_table_says_prefix_tuning_skips_mpnet() -> None:
    table = _generator().architectures_table()
    mpnet = next(line for line in table.splitlines() if line.startswith("| `mpnet`"))
    assert "| all " not in mpnet and "`prefix`" in mpnet and "AttentionInterface" in mpnet
    bert = next(line for line in table.splitlines() if line.startswith("| `bert`"))
    assert "| all " in bert


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = [line for line in readme.split("```")[1].strip().splitlines()]
    assert commands == [
        "bash scripts/setup.sh && .venv/bin/adapterkit demo --data-dir ../shared/data",
        "bash scripts/setup.sh && .venv/bin/python -m pytest -q",
    ]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert ci[-1] == commands[1]


def python_blocks(page: str) -> list[str]:
    """The ```python blocks of a Markdown page, in order."""
    text = (ROOT / page).read_text(encoding="utf-8")
    return [block.split("\n", 1)[1] for block in text.split("```")[1::2] if block.startswith("python\n")]


def test_the_add_a_method_walkthrough_runs(capsys) -> None:
    """docs/add-a-method.md cannot rot: its code blocks run, in order, in one namespace."""
    from adapterkit.registry import METHODS

    blocks = python_blocks("docs/add-a-method.md")
    assert len(blocks) >= 5
    module = types.ModuleType("add_a_method_walkthrough")  # a real module: dataclasses look their module up
    sys.modules[module.__name__] = module
    try:
        for i, block in enumerate(blocks):
            exec(compile(block, f"docs/add-a-method.md[block {i}]", "exec"), module.__dict__)  # noqa: S102
    finally:
        del sys.modules[module.__name__]
        for name in ("toy_gated", "toy_scalar_gated_pfeiffer"):
            METHODS.pop(name, None)
    out = capsys.readouterr().out
    assert "size: must be > 0, got 0" in out
    assert "['gated@0.01', 'gated.gate@0.1', 'base']" in out
    assert "['gate.layer0', 'gate.layer1']" in out


def test_the_readme_quick_start_imports_from_the_package() -> None:
    import adapterkit

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick = readme.split("## Quick start in Python", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    imports = quick.split("spec =", 1)[0]
    assert imports.startswith("\nfrom adapterkit import (")
    names = [n.strip() for n in imports.split("(", 1)[1].split(")", 1)[0].replace("\n", " ").split(",") if n.strip()]
    assert names and all(n in adapterkit.__all__ for n in names)
