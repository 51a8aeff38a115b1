"""Zero-shot STS-B: Spearman correlation x100 between the gold scores and the cosine of mean-pooled embeddings.

No training: it measures how well a model's frozen sentence embeddings already order sentence pairs by
similarity, the property all-MiniLM-L6-v2 was trained for. Use it to see what continued pretraining (e.g. a
TAPT model from ``adapterkit pretrain``) did to a sentence-embedding model. Run:

    PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/sts_cosine.py --data-dir ../shared/data MODEL [MODEL ...]

``MODEL``: a model directory or Hub id; ``base`` is the bundled MiniLM.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


@torch.no_grad()
def embed(model, tokenizer, texts: list[str], batch_size: int = 64, max_length: int = 128) -> torch.Tensor:
    """Mean-pooled last hidden states (padding excluded), one row per text."""
    from adapterkit.heads import pool

    rows = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        rows.append(pool(model(**enc).last_hidden_state, enc["attention_mask"], "mean"))
    return torch.cat(rows)


def main() -> None:
    from scipy.stats import spearmanr
    from transformers import AutoModel, AutoTokenizer

    from adapterkit.data.tasks import load_task
    from adapterkit.model import default_model_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--split", default="dev", help="STS-B split with gold scores (default: dev, GLUE's test)")
    args = parser.parse_args()
    examples = load_task("stsb", args.data_dir, [args.split])[args.split]
    gold = [float(ex["label"]) for ex in examples]
    print(f"| model | STS-B {args.split} Spearman x100 (cosine of mean-pooled embeddings, {len(examples)} pairs) |")
    print("|---|---|")
    for name in args.models:
        path = default_model_path() if name == "base" else name
        tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
        a = embed(model, tokenizer, [ex["text"] for ex in examples])
        b = embed(model, tokenizer, [ex["text_pair"] for ex in examples])
        cosine = torch.nn.functional.cosine_similarity(a, b).tolist()
        print(f"| {name} | {100 * spearmanr(cosine, gold).statistic:.1f} |", flush=True)


if __name__ == "__main__":
    main()
