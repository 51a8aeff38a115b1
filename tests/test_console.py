"""Console output shared by the commands, the runner and the experiments."""
from __future__ import annotations

from adapterkit.console import Progress, fmt_seconds, say


def test_progress_counts_runs_and_gives_an_eta_after_the_first(capsys):
    progress = Progress(3, done=1)
    progress.step("a")
    progress.finish()
    progress.step("b")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("=== [2/3] a (elapsed ") and "ETA" not in lines[0]
    assert lines[1].startswith("=== [3/3] b (elapsed ") and "ETA" in lines[1]


def test_say_and_fmt_seconds(capsys):
    say("to stderr", err=True)
    assert capsys.readouterr().err == "to stderr\n"
    assert fmt_seconds(9.6) == "10s" and fmt_seconds(75) == "1m15s"
