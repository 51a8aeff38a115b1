"""Has a trained PHA model collapsed its features? A check on a transfer source that ``adapterkit experiment pha`` kept.

For each source task, on its first test examples: the mean pairwise cosine similarity of the pooled features the
task heads read, and the spread (std across examples, mean over outputs) of the head's outputs, with the PHA adapter
active and switched off; the same cosine for the retriever's instance embeddings z. Collapsed features have cosine
near 1 and outputs that do not vary across inputs (every prediction the same class: the majority baseline). Then
one mixed training batch in training mode: the task loss and the two weighted contrastive terms of the loss. Run:

    PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/pha_collapse_check.py --run runs/pha --seed 42 --size 100 \\
        --data-dir ../shared/data

``--run`` is the experiment's output directory (its ``settings.json`` gives the model and head options; the model
is ``sources/seed{SEED}_N{SIZE}``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def load(run: Path, seed: int, size: int) -> tuple:
    """(adapted, tokenizer, multi-task spec, settings) of the PHA model kept in ``run``."""
    from safetensors.torch import load_file

    from adapterkit.data.tasks import get_task
    from adapterkit.experiments.pha import build_multitask
    from adapterkit.io import load_adapter
    from adapterkit.training.multitask import MultiTaskSpec

    settings = json.loads((run / "settings.json").read_text(encoding="utf-8"))
    source = run / "sources" / f"seed{seed}_N{size}"
    tasks = json.loads((source / "source.json").read_text(encoding="utf-8"))["tasks"]
    mt = MultiTaskSpec(tuple(get_task(t) for t in tasks))
    opts = {k: settings.get(k) for k in ("model", "pooling", "normalize", "heads", "pha_config")}
    adapted, tokenizer, _, _ = build_multitask("pha", mt, opts)
    adapted.delete_adapter("pha")
    load_adapter(adapted, source / "adapter", "pha", load_head=False)
    adapted.set_active_adapters("pha")
    adapted.pooled_head.load_state_dict(load_file(str(source / "heads.safetensors")))
    return adapted, tokenizer, mt, settings


def batch_of(tokenizer, mt, examples: dict[str, list], max_length: int) -> dict[str, torch.Tensor]:
    """One batch of ``examples`` (task -> examples), encoded and padded as multi-task training does."""
    from adapterkit.training import collator
    from adapterkit.training.multitask import tag

    keys = ("input_ids", "attention_mask", "task_ids", "labels")
    rows = []
    for task, exs in examples.items():
        ds = mt.encode(tokenizer, tag(exs, task), max_length)
        rows += [{k: ds[i][k] for k in keys} for i in range(len(ds))]
    return dict(collator(tokenizer)(rows))


def mean_pairwise_cosine(x: torch.Tensor) -> float:
    xn = torch.nn.functional.normalize(x.float(), dim=-1)
    sim = xn @ xn.T
    n = x.shape[0]
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


def features_and_outputs(adapted, batch: dict[str, torch.Tensor], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled features the heads read, head outputs) in evaluation mode."""
    seen: list[torch.Tensor] = []
    handle = adapted.pooled_head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    adapted.eval()
    try:
        with torch.no_grad():
            out = adapted(**{k: v for k, v in batch.items() if k != "labels"})
    finally:
        handle.remove()
    return seen[-1], out.logits[:, :width]


def main() -> None:
    from adapterkit.data.tasks import get_task
    from adapterkit.experiments.pha import TaskData
    from adapterkit.methods.pha import auxiliary_losses, instance_embeddings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--examples", type=int, default=64, help="test examples per task")
    args = parser.parse_args()
    torch.manual_seed(0)
    adapted, tokenizer, mt, settings = load(args.run, args.seed, args.size)
    data = {t.name: TaskData(get_task(t.name), args.data_dir, settings.get("test_size")) for t in mt.tasks}
    print(f"PHA source {args.run}/sources/seed{args.seed}_N{args.size}: tasks {list(mt.names)}\n")
    print("| task | pooled-feature cosine, PHA on | PHA off | head-output std, PHA on | PHA off | z cosine |")
    print("|---|---|---|---|---|---|")
    for task in mt.tasks:
        batch = batch_of(tokenizer, mt, {task.name: data[task.name].test[: args.examples]}, settings["max_length"])
        width = mt.outputs(task)
        on_f, on_o = features_and_outputs(adapted, batch, width)
        z = instance_embeddings(adapted, "pha", {k: v for k, v in batch.items() if k != "labels"})
        adapted.set_active_adapters()
        off_f, off_o = features_and_outputs(adapted, batch, width)
        adapted.set_active_adapters("pha")
        print(f"| {task.name} | {mean_pairwise_cosine(on_f):.4f} | {mean_pairwise_cosine(off_f):.4f} | "
              f"{float(on_o.std(0).mean()):.2e} | {float(off_o.std(0).mean()):.2e} | {mean_pairwise_cosine(z):.4f} |")
    per_task = max(2, settings["batch_size"] // len(mt.tasks))
    train = {t.name: data[t.name].grid_split(args.size, settings["dev_size"], args.seed)[0][:per_task] for t in mt.tasks}
    batch = batch_of(tokenizer, mt, train, settings["max_length"])
    adapted.train()
    with torch.no_grad():
        out = adapted(**batch)
    aux = {k: float(v) for k, v in auxiliary_losses(out).items()}
    print(f"\nOne training batch ({per_task} training examples per task, training mode): loss {float(out.loss):.4f} = "
          f"task loss {float(out.loss) - sum(aux.values()):.4f} + " + " + ".join(f"{k} {v:.4f}" for k, v in aux.items()))


if __name__ == "__main__":
    main()
