"""``train`` under torchrun with 2 CPU processes (gloo): DDP keeps the adapter identical on every rank."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("distributed_worker.py")


def test_ddp_two_cpu_processes(tmp_path: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(WORKER), str(tmp_path)]
    # A session of its own, so that a hang kills the launcher *and* its workers.
    proc = subprocess.Popen(cmd, env={**env, "CUDA_VISIBLE_DEVICES": ""}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"torchrun timed out:\n{output[-3000:]}")
    assert proc.returncode == 0, output[-5000:]
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    initial = load_file(str(tmp_path / "initial.safetensors"))
    assert set(ranks[0]) == set(ranks[1]) == set(initial)
    for key in initial:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    assert any(not torch.equal(ranks[0][k], initial[k]) for k in initial)
    with safe_open(str(tmp_path / "rank0.safetensors"), "pt") as f:
        # 32 examples, batch 4 per device, 2 devices, 2 epochs: 8 optimizer steps (the data is sharded).
        assert f.metadata()["global_step"] == "8"
