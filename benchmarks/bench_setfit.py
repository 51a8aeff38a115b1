"""SetFit beside adapterkit's frozen linear probe on few-shot SST-2 (an optional comparison, not a dependency).

SetFit (Tunstall et al. 2022) fine-tunes a sentence-transformers model contrastively on pairs of the few
training examples, then fits a logistic-regression head. It is not installed with adapterkit; run this
script with an interpreter that has ``setfit`` (it installs beside transformers 5 in its own virtualenv):

    python3 -m venv /tmp/setfit-venv
    /tmp/setfit-venv/bin/pip install torch==2.13.0 && /tmp/setfit-venv/bin/pip install "transformers>=5,<6" setfit
    PYTHONPATH=src OMP_NUM_THREADS=1 /tmp/setfit-venv/bin/python benchmarks/bench_setfit.py --data-dir ../shared/data

(adapterkit itself must be importable: ``PYTHONPATH=src`` and its dependencies in that venv, or
``pip install -e .`` there.) For each seed it draws the same train / dev / test split as
``adapterkit experiment fewshot`` (k per class; dev carved from train; test = the official dev set, capped),
trains SetFit from the bundled all-MiniLM-L6-v2 and scores the test set; the adapterkit probe is measured
in the same run on the same split, so the two columns compare like with like.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--seeds", default="42")
    p.add_argument("--test-size", type=int, default=500)
    p.add_argument("--iterations", type=int, default=5, help="SetFit num_iterations (pairs per example)")
    p.add_argument("--max-length", type=int, default=64)
    args = p.parse_args()
    try:
        from datasets import Dataset
        from setfit import SetFitModel, Trainer, TrainingArguments
    except ImportError as exc:
        raise SystemExit(f"setfit is not installed here ({exc}); see this script's docstring") from None
    from adapterkit.data.tasks import get_task
    from adapterkit.experiments.fewshot import split
    from adapterkit.model import AdaptedModel, default_model_path, load_base_model
    from adapterkit.runner import run_baseline
    from adapterkit.training import TrainConfig

    spec = get_task("sst2")
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        train, dev, test = split(spec, args.data_dir, args.k, seed, args.test_size)
        hf, tok = load_base_model(None, "classification", 2)
        probe = run_baseline("probe", AdaptedModel(hf), tok, spec, (train, dev, test),
                             TrainConfig(max_length=args.max_length))
        start = time.perf_counter()
        model = SetFitModel.from_pretrained(default_model_path())
        trainer = Trainer(model=model, args=TrainingArguments(batch_size=16, num_epochs=1, num_iterations=args.iterations,
                                                              max_length=args.max_length, seed=seed, report_to="none"),
                          train_dataset=Dataset.from_dict({"text": [e["text"] for e in train],
                                                           "label": [e["label"] for e in train]}))
        trainer.train()
        predictions = np.asarray(model.predict([e["text"] for e in test]))
        accuracy = float((predictions == np.asarray([e["label"] for e in test])).mean())
        rows.append((seed, probe["test_score"], accuracy, time.perf_counter() - start))
        print(f"seed {seed}: probe {probe['test_score']:.4f}, SetFit {accuracy:.4f} ({rows[-1][3]:.0f}s)", flush=True)
    print("\n| seed | adapterkit probe | SetFit | SetFit train+predict s |\n|---|---|---|---|")
    for seed, pr, sf, s in rows:
        print(f"| {seed} | {100 * pr:.1f} | {100 * sf:.1f} | {s:.0f} |")
    print(f"| mean | {100 * np.mean([r[1] for r in rows]):.1f} | {100 * np.mean([r[2] for r in rows]):.1f} | |")


if __name__ == "__main__":
    main()
