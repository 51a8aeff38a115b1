"""Why each method has its own default learning rate: one few-shot comparison at candidate rates.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/lr_defaults.py --data-dir ../shared/data [--task citation_intent]
        [--k-shot 32] [--epochs 5] [--seed 42] [--systems pfeiffer@1e-4,pfeiffer@1e-3,...] [--out runs/lr-defaults]

Each system is ``METHOD@LR`` (``METHOD`` alone: the method's default rate) trained with ``adapterkit``'s one
training path on the bundled MiniLM: k examples per class from the task's train file, the epoch chosen on
the official dev set, scored on the official test set. The table has the majority-class baseline and the
frozen linear probe (``head``) beside the systems, and each system's last logged training loss (a rate too
low leaves it near ln(classes)); it goes to ``OUT/results.md`` and ``OUT/results.json``.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

DEFAULT_SYSTEMS = ("head@1e-3,pfeiffer@1e-4,pfeiffer@1e-3,lora@1e-4,lora@1e-3,full@2e-5,full@5e-5")


def main() -> None:
    from adapterkit.data.tasks import get_task
    from adapterkit.metrics import compute_metrics
    from adapterkit.options import DataOptions, ModelOptions
    from adapterkit.reporting import markdown_table
    from adapterkit.runner import default_learning_rate, run_training, split_data
    from adapterkit.training import TrainConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--task", default="citation_intent")
    parser.add_argument("--k-shot", type=int, default=32)
    parser.add_argument("--epochs", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--systems", default=DEFAULT_SYSTEMS)
    parser.add_argument("--out", default="runs/lr-defaults")
    args = parser.parse_args()

    spec = get_task(args.task)
    train, dev, test, notes = split_data(spec, args.data_dir, k_shot=args.k_shot, train_size=None, dev_size=None,
                                         seed=args.seed)
    out = Path(args.out)
    from adapterkit.data.tasks import load_split

    # the k-shot sample is balanced: the constant baseline predicts the most frequent class of the whole train file
    majority = Counter(ex["label"] for ex in load_split(spec, "train", args.data_dir)).most_common(1)[0][0]
    import numpy as np

    logits = np.zeros((len(test), spec.num_labels))
    logits[:, majority] = 1.0
    base = compute_metrics(spec, logits, np.asarray([ex["label"] for ex in test]))
    rows = [{"system": "majority class", "method": "-", "lr": None, "test_score": base["score"],
             "test_accuracy": base.get("accuracy"), "dev_score": None, "train_loss": None, "best_epoch": None, "train_seconds": None}]
    start = time.perf_counter()
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    for i, system in enumerate(systems):
        method, _, lr_text = system.partition("@")
        lr = float(lr_text) if lr_text else default_learning_rate(method)
        print(f"=== [{i + 1}/{len(systems)}] {method} lr {lr:g} (elapsed {time.perf_counter() - start:.0f}s)", flush=True)
        mode = method if method in ("full", "head") else "adapters"
        config = TrainConfig(output_dir=str(out / f"{method}-{lr:g}"), epochs=args.epochs, batch_size=16,
                             learning_rate=lr, max_length=args.max_length, seed=args.seed, train_mode=mode,
                             logging_steps=4, save_total_limit=1, save_optimizer=False, cleanup_checkpoints=True)
        row = run_training(DataOptions(), ModelOptions(method=method), config, spec=spec, examples=(train, dev, test),
                           label=f"{method}@{lr:g}")
        saved = json.loads((out / f"{method}-{lr:g}" / "results.json").read_text())
        log = json.loads((out / f"{method}-{lr:g}" / "train_result.json").read_text())["log_history"]
        losses = [e["loss"] for e in log if "loss" in e]
        rows.append({"system": f"{method}@{lr:g}", "method": method, "lr": f"{lr:g}", "test_score": row["test_score"],
                     "test_accuracy": (saved.get("test") or {}).get("accuracy"), "dev_score": row["dev_score"],
                     "train_loss": losses[-1] if losses else None,
                     "best_epoch": row["best_epoch"], "train_seconds": row["train_seconds"]})
    columns = {"system": "System", "lr": "LR", "test_score": f"Test {spec.metric}", "test_accuracy": "Test accuracy",
               "dev_score": f"Dev {spec.metric} (best)", "train_loss": "Last train loss", "best_epoch": "Best epoch",
               "train_seconds": "Train s"}
    title = (f"{spec.name}: {len(train)} train examples ({args.k_shot} per class), dev {len(dev or [])}, test "
             f"{len(test or [])}; all-MiniLM-L6-v2, {args.epochs:g} epochs, batch 16, seed {args.seed}")
    table = markdown_table(rows, columns, {"test_score": 4, "test_accuracy": 4, "dev_score": 4, "train_loss": 3,
                                           "best_epoch": 0,
                                           "train_seconds": 0})
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(f"{title}\n\n{table}\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"title": title, "notes": notes, "rows": rows}, indent=2))
    print(f"\n{title}\n\n{table}\n\nwrote {out / 'results.md'}; total {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
