"""What the commands, the runner and the experiments print: progress lines with elapsed time and ETA."""
from __future__ import annotations

import sys
import time


def say(line: str, *, err: bool = False) -> None:
    """Print one line now (stdout, or stderr with ``err=True``)."""
    print(line, file=sys.stderr if err else sys.stdout, flush=True)


def fmt_seconds(seconds: float) -> str:
    """``75`` -> ``"1m15s"``, ``9.6`` -> ``"10s"``."""
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """Log lines with elapsed time and ETA over a known number of runs (``done`` of them finished before)."""

    def __init__(self, total: int, done: int = 0) -> None:
        self.total, self.done, self.start, self.ran = total, done, time.perf_counter(), 0

    def step(self, label: str) -> None:
        """Announce the next run."""
        elapsed = time.perf_counter() - self.start
        eta = f", ETA {elapsed / self.ran * (self.total - self.done):.0f}s" if self.ran else ""
        say(f"=== [{self.done + 1}/{self.total}] {label} (elapsed {elapsed:.0f}s{eta})")

    def finish(self) -> None:
        """Count the run announced last as done."""
        self.done += 1
        self.ran += 1


def quiet_transformers() -> None:
    """Keep the terminal to our progress lines: transformers' load reports and notices go below error level."""
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
