"""How much does a small dev set add noise to epoch selection? (few-shot SST-2, frozen-feature head)

For each seed: k examples per class for training, a dev *pool* carved from the rest of the training file and
the official dev set (capped) as test, all disjoint. A linear head on the frozen model's pooled features is
trained as the ``head`` system is (AdamW, lr 1e-2, batch 16, linear decay, 20 epochs) and its predictions on
the dev pool and the test set are kept after every epoch. Then, for each dev size m, many dev sets of m
examples are drawn from the pool (stratified) and the epoch with the best dev accuracy is selected (first
best, as the Trainer does). Reported per m: the mean test accuracy of the selected epoch, the mean gap to the
oracle epoch (best test accuracy) and the spread of the selected test accuracy across dev draws; and the same
for the probe's L2 strength. Run:

    PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/fewshot_selection_noise.py --data-dir ../shared/data \\
        --output docs/results/fewshot_selection.md

Frozen features make every epoch cheap, so the whole study runs in minutes on a CPU; it measures selection
noise, not the adapters' own training curves (those differ, but the dev-set arithmetic does not).
"""
from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import torch


def stratified(labels: np.ndarray, m: int, rng: random.Random) -> list[int]:
    """m indices with the classes as balanced as the pool allows (all of them when m >= the pool)."""
    if m >= len(labels):
        return list(range(len(labels)))
    by: dict[int, list[int]] = {}
    for i, y in enumerate(labels.tolist()):
        by.setdefault(int(y), []).append(i)
    classes = sorted(by)
    per = [m // len(classes) + (1 if j < m % len(classes) else 0) for j in range(len(classes))]
    return [i for c, n in zip(classes, per, strict=True) for i in rng.sample(by[c], min(n, len(by[c])))]


def train_head_epochs(x: torch.Tensor, y: torch.Tensor, evals: list[torch.Tensor], epochs: int, seed: int,
                      lr: float = 1e-2, batch: int = 16) -> list[list[np.ndarray]]:
    """Per epoch, the predictions on each of ``evals`` of a linear head trained like the ``head`` system."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
    torch.nn.init.normal_(head.weight, std=0.02)
    torch.nn.init.zeros_(head.bias)
    drop = torch.nn.Dropout(0.1)
    steps = epochs * ((len(x) + batch - 1) // batch)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    warm = max(1, int(0.06 * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / max(1, steps - warm)))
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(epochs):
        head.train()
        for idx in torch.randperm(len(x), generator=g).split(batch):
            loss = torch.nn.functional.cross_entropy(head(drop(x[idx])), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        head.eval()
        with torch.no_grad():
            out.append([head(e).argmax(-1).numpy() for e in evals])
    return out


def main() -> None:
    from adapterkit.data.sampling import carve_dev, k_shot, subsample
    from adapterkit.data.tasks import get_task, load_task
    from adapterkit.heads import fit_linear
    from adapterkit.model import AdaptedModel, load_base_model
    from adapterkit.training import example_features

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--output", default="runs/fewshot_selection.md")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--seeds", default="42,92,111,245,651")
    p.add_argument("--pool", type=int, default=512, help="dev pool size")
    p.add_argument("--dev-sizes", default="16,32,64,128,256,512")
    p.add_argument("--draws", type=int, default=200)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--test-size", type=int, default=500)
    p.add_argument("--max-length", type=int, default=64)
    args = p.parse_args()
    spec = get_task("sst2")
    data = load_task(spec, args.data_dir, ["train", "dev"])
    hf, tok = load_base_model(None, "classification", 2, pooling="auto")
    model = AdaptedModel(hf)
    sizes = [int(s) for s in args.dev_sizes.split(",")]
    per_size: dict[int, dict[str, list[float]]] = {m: {"sel": [], "gap": [], "spread": [], "probe_sel": [],
                                                         "probe_gap": []} for m in sizes}
    oracle_all, last_all = [], []
    start = time.perf_counter()
    for seed in [int(s) for s in args.seeds.split(",")]:
        rest, pool = carve_dev(data["train"], args.pool, seed)
        train = k_shot(rest, args.k, seed)
        test = subsample(data["dev"], args.test_size, seed)
        feats = [example_features(model, tok, spec, part, args.max_length) for part in (train, pool, test)]
        ys = [np.asarray([e["label"] for e in part]) for part in (train, pool, test)]
        preds = train_head_epochs(feats[0], torch.tensor(ys[0]), feats[1:], args.epochs, seed)
        dev_acc = np.stack([(p[0] == ys[1]) for p in preds])  # epochs x pool (correct or not)
        test_acc = np.asarray([(p[1] == ys[2]).mean() for p in preds])
        oracle_all.append(test_acc.max())
        last_all.append(test_acc[-1])
        # the probe: its L2 strength chosen on the same dev draws
        grid = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
        fits = [fit_linear(feats[0], torch.tensor(ys[0]), 2, l2=l2) for l2 in grid]
        probe_dev = np.stack([(f.predict(feats[1]).argmax(-1).numpy() == ys[1]) for f in fits])
        probe_test = np.asarray([(f.predict(feats[2]).argmax(-1).numpy() == ys[2]).mean() for f in fits])
        rng = random.Random(seed)
        for m in sizes:
            selected, probe_selected = [], []
            for _ in range(args.draws if m < len(pool) else 1):  # the whole pool: one "draw"
                idx = stratified(ys[1], m, rng)
                selected.append(test_acc[int(np.argmax(dev_acc[:, idx].mean(1)))])  # first best epoch
                scores = probe_dev[:, idx].mean(1)
                best = max(range(len(grid)), key=lambda j: (scores[j], grid[j]))  # ties: stronger L2, as fit_linear
                probe_selected.append(probe_test[best])
            per_size[m]["sel"].append(float(np.mean(selected)))
            per_size[m]["gap"].append(float(test_acc.max() - np.mean(selected)))
            per_size[m]["spread"].append(float(np.std(selected)))
            per_size[m]["probe_sel"].append(float(np.mean(probe_selected)))
            per_size[m]["probe_gap"].append(float(probe_test.max() - np.mean(probe_selected)))
        print(f"seed {seed}: oracle epoch test {test_acc.max():.3f} (epoch {int(np.argmax(test_acc)) + 1}), last "
              f"{test_acc[-1]:.3f}; elapsed {time.perf_counter() - start:.0f}s", flush=True)
    lines = [
        "| dev size | head: selected-epoch test acc | gap to oracle epoch | spread over dev draws (std) | "
        "probe: selected-L2 test acc | gap to oracle L2 |", "|---|---|---|---|---|---|"]
    for m in sizes:
        v = per_size[m]
        lines.append(f"| {m} | {100 * np.mean(v['sel']):.1f} | {100 * np.mean(v['gap']):.1f} | "
                     f"{100 * np.mean(v['spread']):.1f} | {100 * np.mean(v['probe_sel']):.1f} | "
                     f"{100 * np.mean(v['probe_gap']):.1f} |")
    text = (f"SST-2, k={args.k} per class, seeds {args.seeds}, bundled MiniLM mean-pooled frozen features; dev pool "
            f"{args.pool}, {args.draws} stratified dev draws per size; test {args.test_size}; {args.epochs} epochs. "
            f"Oracle epoch (best test accuracy) mean {100 * np.mean(oracle_all):.1f}, last epoch "
            f"{100 * np.mean(last_all):.1f}. Accuracy x100, means over seeds.\n\n" + "\n".join(lines) + "\n")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
