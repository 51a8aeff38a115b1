"""Markdown tables, mean ± std and PNG plots."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from adapterkit.reporting import (
    bar_plot,
    format_mean_std,
    line_plot,
    markdown_table,
    mean_std,
    results_figure,
    text_table,
)

PNG = b"\x89PNG\r\n\x1a\n"


def test_markdown_table_columns_and_alignment():
    rows = [{"method": "pfeiffer", "score": 0.81234, "params": 12345}, {"method": "a|b", "score": None, "params": 7}]
    table = markdown_table(rows, {"method": "Method", "score": "Score", "params": "Params"})
    lines = table.strip().splitlines()
    assert lines[0] == "| Method | Score | Params |"
    assert lines[1] == "|---|---:|---:|"
    assert lines[2] == "| pfeiffer | 0.8123 | 12,345 |"
    assert lines[3] == "| a\\|b |  | 7 |"
    assert markdown_table(rows, ["method"]).splitlines()[0] == "| method |"
    assert "params" in markdown_table(rows).splitlines()[0]


def test_text_table_aligns():
    out = text_table([{"a": "x", "b": 1.5}], ["a", "b"], digits=1)
    assert out.splitlines()[2].split() == ["x", "1.5"]


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([5.0]) == (5.0, 0.0)
    assert all(math.isnan(v) for v in mean_std([]))
    assert format_mean_std([0.5, 0.7], digits=1, scale=100) == "60.0 ± 14.1"
    assert mean_std([0.1, 0.3])[1] == pytest.approx(math.sqrt(0.02))


def test_plots_write_png(tmp_path: Path):
    bar = bar_plot(tmp_path / "bar.png", ["a", "b"], [0.5, 0.7], errors=[0.1, 0.0], annotations=["1k", "2M"],
                   title="t", ylabel="acc")
    line = line_plot(tmp_path / "sub" / "line.png", {"a": ([1, 2], [0.1, 0.2])}, xlabel="epoch", logx=True)
    fig = results_figure(tmp_path / "fig.png", [{"n": "a", "s": 0.5, "p": 1200}], name_key="n", score_key="s",
                         params_key="p", histories={"a": ([1, 2], [0.4, 0.5])}, title="demo")
    for path in (bar, line, fig):
        assert path.read_bytes()[:8] == PNG
