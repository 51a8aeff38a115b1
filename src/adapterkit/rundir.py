"""A training run's output directory: refuse to overwrite a previous run by accident, and lock it.

``claim_output_dir`` is what ``adapterkit train`` does before it trains: a directory that already holds
a run (results, a saved adapter or model, checkpoints) is refused unless the run is resumed or
``overwrite`` is given (then the previous run's files, and only those, are removed), and an exclusive
lock (``.adapterkit.lock``: ``flock`` plus the holder's pid, host and start time) keeps a second
process out while the first trains. The operating system drops the lock when its holder dies, even by
SIGKILL, so a killed run never leaves a stale lock.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError

LOCK_NAME = ".adapterkit.lock"
#: What a previous run leaves in its output directory (removed by ``overwrite``; nothing else is).
RUN_FILES = ("results.json", "train_result.json", "predictions.json", "adapter", "model")


class RunLockedError(ConfigError):
    """Another process holds the output directory's lock."""


def previous_run(output_dir: str | Path) -> list[str]:
    """Names of the previous run's files in ``output_dir`` (empty when there is none)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [name for name in RUN_FILES if (root / name).exists()]
    found += sorted(p.name for p in root.glob("checkpoint-*") if p.is_dir())
    return found


def remove_previous_run(output_dir: str | Path) -> None:
    """Delete what :func:`previous_run` lists (the run's own files only, never anything else)."""
    root = Path(output_dir)
    for name in previous_run(root):
        path = root / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _is_main_process() -> bool:
    """False on the non-zero ranks of a torchrun / accelerate launch (rank 0 takes the lock for all)."""
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


@contextlib.contextmanager
def run_lock(output_dir: str | Path) -> Iterator[Path | None]:
    """Hold ``output_dir``'s exclusive lock; a second holder fails at once naming the first (pid, host).

    Yields the lock file (None where locking is unavailable: no ``fcntl``, or a non-zero rank).
    """
    if not _is_main_process():
        yield None
        return
    try:
        import fcntl
    except ImportError:  # (Windows) no advisory locks: run unlocked
        yield None
        return
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(f"{root}: output_dir is in use by {_holder(path)} (lock file {path}); wait for "
                                 "that run to finish, or train into another --output-dir") from None
        except OSError as exc:  # a file system without locks (some network mounts): say so, and go on
            print(f"warning: {path}: cannot lock ({exc}); two runs into this directory would not be stopped",
                  file=sys.stderr, flush=True)
            yield None
            return
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": " ".join(sys.argv[:1] + sys.argv[1:2])}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing releases the lock


def _holder(path: Path) -> str:
    """'pid 123 on host h (since T)', from the lock file, or a plain description when it cannot be read."""
    try:
        info: dict[str, Any] = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info.get("pid"):
        return "another process"
    return f"pid {info['pid']} on host {info.get('host', '?')} (since {info.get('started', '?')})"


@contextlib.contextmanager
def claim_output_dir(output_dir: str | Path, *, resume: bool | str, overwrite: bool) -> Iterator[None]:
    """Lock ``output_dir`` for one training run; refuse a previous run there unless resuming or overwriting.

    With ``overwrite``, the previous run's files (:data:`RUN_FILES` and ``checkpoint-*``) are removed
    once the lock is held.
    """
    with run_lock(output_dir):
        found = previous_run(output_dir)
        if found and resume is False:
            if not overwrite:
                raise ConfigError(
                    f"{output_dir}: output_dir already holds a run ({', '.join(found[:4])}"
                    f"{', ...' if len(found) > 4 else ''}); pass --resume auto to continue it, --overwrite true "
                    "to replace it, or choose another --output-dir"
                )
            if _is_main_process():
                remove_previous_run(output_dir)
        yield
