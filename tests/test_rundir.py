"""Output directories: a previous run is not overwritten by accident, and one run at a time holds the lock."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapterkit.errors import ConfigError
from adapterkit.rundir import LOCK_NAME, RunLockedError, claim_output_dir, previous_run, run_lock


def fake_run(root: Path) -> Path:
    (root / "adapter").mkdir(parents=True)
    (root / "adapter" / "adapter_config.json").write_text("{}")
    (root / "checkpoint-4").mkdir()
    (root / "results.json").write_text("{}")
    (root / "notes.txt").write_text("mine")  # not the run's: never removed
    return root


def test_a_previous_run_is_refused_unless_resumed_or_overwritten(tmp_path: Path):
    out = fake_run(tmp_path / "run")
    assert previous_run(out) == ["results.json", "adapter", "checkpoint-4"]
    with pytest.raises(ConfigError, match=r"run: output_dir already holds a run \(results.json, adapter, checkpoint-4\); "
                                          r"pass --resume auto to continue it, --overwrite true"):
        with claim_output_dir(out, resume=False, overwrite=False):
            pass
    with claim_output_dir(out, resume="auto", overwrite=False):
        assert previous_run(out)  # resuming keeps it
    with claim_output_dir(out, resume=False, overwrite=True):
        assert previous_run(out) == []
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME, "notes.txt"]
    with claim_output_dir(tmp_path / "new", resume=False, overwrite=False):
        assert (tmp_path / "new").is_dir()


def test_a_second_holder_is_refused_naming_the_first(tmp_path: Path):
    with run_lock(tmp_path) as lock:
        assert lock == tmp_path / LOCK_NAME and f'"pid": {os.getpid()}' in lock.read_text()
        with pytest.raises(RunLockedError, match=rf"output_dir is in use by pid {os.getpid()} on host "
                                                 rf"{socket.gethostname()} \(since .*\) \(lock file .*{LOCK_NAME}\)"):
            with claim_output_dir(tmp_path, resume=False, overwrite=False):
                pass
    with run_lock(tmp_path):  # released
        pass


def test_the_lock_dies_with_its_holder(tmp_path: Path):
    code = (f"import sys, time; sys.path.insert(0, {str(Path(__file__).parents[1] / 'src')!r}); "
            "from adapterkit.rundir import run_lock\n"
            f"with run_lock({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"pid {proc.pid} on host"):
            with run_lock(tmp_path):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 10
    while True:  # SIGKILL: the kernel drops the lock, nothing stale is left
        try:
            with run_lock(tmp_path):
                break
        except RunLockedError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_non_zero_ranks_do_not_lock(tmp_path: Path, monkeypatch):
    with run_lock(tmp_path):
        monkeypatch.setenv("RANK", "1")
        with run_lock(tmp_path) as lock:
            assert lock is None
