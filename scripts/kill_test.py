"""Kill `adapterkit train` with SIGKILL at random moments, resume with `--resume auto`, compare to an uninterrupted run.

Each trial starts a fresh run of a tiny saved model (``adapterkit.testing.save_tiny_model``) and kills it at
a moment aimed, in turn, at data loading (a random moment early in the run), mid-epoch (a random moment
after a complete checkpoint), a checkpoint save (as a new ``checkpoint-*`` directory appears) and the final
save (as ``adapter/`` appears); it notes what the output directory held at that moment, then runs the same command with ``--resume auto`` until it finishes. The final
adapter (and head) must equal the uninterrupted run's with the same seed within ``--atol``.

Usage::

    python scripts/kill_test.py [--trials 20] [--seed 0] [--out runs/kill_test]

Prints one line per trial and a summary table; exits 1 if any trial fails.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["good", "great", "fine", "lovely", "bad", "awful", "poor", "dull", "the", "movie", "was", "a", "plot"]


def write_tsv(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    lines = ["sentence\tlabel"]
    for i in range(n):
        label = ("neg", "pos")[i % 2]
        word = rng.choice(WORDS[:4] if label == "pos" else WORDS[4:8])
        lines.append(f"the {rng.choice(WORDS[8:])} was {word}\t{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


def phase(out: Path) -> str:
    """What the run was doing when it was killed, judged from its output directory."""
    adapter = out / "adapter"
    if (out / "results.json").exists():
        return "finished"
    if adapter.exists():
        return "final save"
    checkpoints = sorted(out.glob("checkpoint-*"))
    if not checkpoints:
        return "start-up / data loading / epoch 1"
    if any(not (c / "trainer_state.json").exists() for c in checkpoints) or list(out.glob("checkpoint-*/.*.tmp")):
        return "inside a checkpoint save"
    return "mid-epoch (after a checkpoint)"


def kill_when(proc: subprocess.Popen, out: Path, target: str, rng: random.Random, duration: float) -> float:
    """Wait (polling every millisecond) until the run reaches ``target``; returns the seconds waited.

    data loading: a random moment of the first fifth of an uninterrupted run (imports, reading and
    tokenising the data); checkpoint save: the moment a new ``checkpoint-*`` directory appears (its files
    are being written); mid-epoch: a random moment after a complete checkpoint; final save: the moment
    ``adapter/`` appears.
    """
    start = time.perf_counter()
    if target == "data loading":
        time.sleep(rng.uniform(0.0, duration / 5))
        return time.perf_counter() - start
    skip = rng.randrange(3) if target != "final save" else 0  # which checkpoint (epoch) to aim at
    seen: set[str] = set()
    while proc.poll() is None:
        if target == "final save" and (out / "adapter").exists():
            break
        if target in ("checkpoint save", "mid-epoch"):
            new = {p.name for p in out.glob("checkpoint-*")} - seen
            if new:
                seen |= new
                if len(seen) > skip:
                    if target == "mid-epoch":
                        while proc.poll() is None and not any((out / n / "trainer_state.json").exists() for n in new):
                            time.sleep(0.001)
                        time.sleep(rng.uniform(0.05, 0.6))
                    break
        time.sleep(0.001)
    return time.perf_counter() - start


def tensors(directory: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for name in ("adapter.safetensors", "head.safetensors"):
        out.update({f"{name}:{k}": v for k, v in load_file(str(directory / name)).items()})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--out", default="runs/kill_test")
    parser.add_argument("--atol", type=float, default=1e-6)
    parser.add_argument("--epochs", type=int, default=4)
    opts = parser.parse_args()

    sys.path.insert(0, str(ROOT / "src"))
    from adapterkit.testing import save_tiny_model

    root = Path(opts.out)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    model = save_tiny_model(root / "tiny-bert", words=WORDS)
    train, dev = write_tsv(root / "train.tsv", 48, 0), write_tsv(root / "dev.tsv", 16, 1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "adapterkit.cli", "train", "--model", str(model), "--train-file", str(train),
                "--dev-file", str(dev), "--text-columns", "sentence", "--epochs", str(opts.epochs), "--batch-size", "8",
                "--max-length", "16", "--lr", "1e-2", "--seed", "3", "--progress", "none", "--output-dir", str(out)]

    start = time.perf_counter()
    reference = subprocess.run(command(root / "reference"), env=env, capture_output=True, text=True)
    duration = time.perf_counter() - start
    if reference.returncode != 0:
        print(reference.stderr[-3000:])
        return 1
    expected = tensors(root / "reference" / "adapter")
    print(f"uninterrupted run: {duration:.1f}s, {len(expected)} tensors")

    rng = random.Random(opts.seed)
    targets = ("data loading", "mid-epoch", "checkpoint save", "final save")
    rows = []
    for trial in range(opts.trials):
        out = root / f"trial-{trial:02d}"
        target = targets[trial % len(targets)]
        proc = subprocess.Popen(command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        delay = kill_when(proc, out, target, rng, duration)
        killed = proc.poll() is None
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        where = phase(out) if killed else "finished before the kill"
        resumes, ok, detail = 0, False, ""
        while resumes < 3:
            resumes += 1
            done = subprocess.run([*command(out), "--resume", "auto"], env=env, capture_output=True, text=True)
            if done.returncode == 0:
                break
            detail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        if done.returncode == 0:
            got = tensors(out / "adapter")
            diff = max((float((got[k] - v).abs().max()) for k, v in expected.items() if k in got), default=float("inf"))
            ok = set(got) == set(expected) and diff <= opts.atol
            detail = f"max |diff| {diff:.2e}"
        rows.append((trial, delay, f"{target}: {where}", resumes, ok, detail))
        print(f"trial {trial:2d}: aimed at {target}, kill after {delay:5.2f}s ({where}); resumed in {resumes} run(s): "
              f"{'OK' if ok else 'FAIL'} ({detail})", flush=True)
    print("\n| trial | kill after (s) | aimed at: state found | resume runs | adapter equals reference (atol "
          f"{opts.atol:g}) |\n|---|---|---|---|---|")
    for trial, delay, where, resumes, ok, detail in rows:
        print(f"| {trial} | {delay:.2f} | {where} | {resumes} | {'yes' if ok else 'NO'} ({detail}) |")
    failures = sum(not r[4] for r in rows)
    print(f"\n{len(rows) - failures}/{len(rows)} trials OK; total {time.perf_counter() - start:.0f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
