"""Masked-LM pretraining throughput: ``adapterkit.pretraining.pretrain`` against a plain transformers MLM Trainer.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_pretrain.py [--blocks 64] [--repeats 3] [--threads 1] [--out FILE]

Both sides train the bundled MiniLM (with the same newly built masked-LM head) for one epoch on the same
blocks of tokens (ChemProt training text from ``--data-dir``, or the packaged sample sentences), with the
same batch size, learning rate, masking (15%, 80/10/10) and seed, and both save one checkpoint at the end
of the epoch. The plain side is what a user would write without adapterkit: ``AutoModelForMaskedLM``,
``DataCollatorForLanguageModeling`` and ``transformers.Trainer``. Runs alternate (plain, ours, plain,
ours, ...) in this one process so drift on a shared machine hits both; the figure is the median of the
wall time of ``Trainer.train`` over the repeats, as tokens (non-padding, per epoch) per second. Ours runs
twice per repeat: with the vocabulary logits at the masked tokens only (the default) and at every token.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def corpus_texts(data_dir: Path | None, blocks: int, max_length: int) -> tuple[list[str], str]:
    from adapterkit.data.tasks import get_task
    from adapterkit.pretraining import task_texts

    if data_dir is not None and (data_dir / "domain" / "chemprot" / "train.txt").is_file():
        texts, source = task_texts(get_task("chemprot"), data_dir), "ChemProt train text"
    else:
        texts, source = task_texts(get_task("sample_sentiment")), "packaged sample sentences"
    # roughly enough texts for ``blocks`` blocks (the cut below makes it exact)
    return texts[: max(8, blocks * max_length // 40)], source


def plain_run(dataset, lr: float, batch: int, seed: int, out: str) -> float:
    """Seconds of trainer.train() for the plain transformers recipe."""
    from transformers import (
        AutoModelForMaskedLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from adapterkit.model import default_model_path

    set_seed(seed)
    tok = AutoTokenizer.from_pretrained(default_model_path())
    model = AutoModelForMaskedLM.from_pretrained(default_model_path())
    args = TrainingArguments(output_dir=out, num_train_epochs=1, per_device_train_batch_size=batch, learning_rate=lr,
                             warmup_steps=0.06, lr_scheduler_type="linear", seed=seed, save_strategy="epoch",
                             logging_steps=10, report_to="none", disable_tqdm=True, use_cpu=True,
                             remove_unused_columns=False)
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=DataCollatorForLanguageModeling(tok, mlm_probability=0.15))
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def ours_run(texts: list[str], lr: float, batch: int, max_length: int, seed: int, out: str,
             sparse: bool = True) -> tuple[float, int]:
    from adapterkit.pretraining import MLMSpec, pretrain
    from adapterkit.training import TrainConfig

    cfg = TrainConfig(output_dir=out, epochs=1, batch_size=batch, learning_rate=lr, max_length=max_length, seed=seed,
                      progress="none", save_total_limit=1)
    result = pretrain(texts, cfg, spec=MLMSpec(sparse_logits=sparse), say=lambda _: None)
    return result.train_seconds, result.tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--blocks", type=int, default=64, help="blocks of --max-length tokens in the corpus")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from adapterkit.data.preprocess import encode_mlm
    from adapterkit.model import default_model_path

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(default_model_path())
    texts, source = corpus_texts(args.data_dir if args.data_dir.is_dir() else None, args.blocks, args.max_length)
    dataset = encode_mlm(tok, texts, args.max_length)
    n = min(len(dataset), args.blocks)
    # cut the texts so that our side encodes to the very same blocks
    while len(encode_mlm(tok, texts, args.max_length)) > n:
        texts = texts[:-1]
    dataset = encode_mlm(tok, texts, args.max_length)
    tokens = int(sum(map(sum, dataset["attention_mask"])))
    lr, seed = 1e-4, 0
    plain_s, ours_s, dense_s = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            plain_s.append(plain_run(dataset, lr, args.batch_size, seed, f"{tmp}/plain{r}"))
            for sparse, times in ((True, ours_s), (False, dense_s)):
                seconds, our_tokens = ours_run(texts, lr, args.batch_size, args.max_length, seed, f"{tmp}/ours{r}{sparse}",
                                               sparse=sparse)
                assert our_tokens == tokens, (our_tokens, tokens)
                times.append(seconds)
            print(f"repeat {r + 1}: plain {tokens / plain_s[-1]:.0f} tokens/s, ours {tokens / ours_s[-1]:.0f} tokens/s, "
                  f"ours with logits at every token {tokens / dense_s[-1]:.0f} tokens/s", flush=True)
    plain, ours, dense = (tokens / statistics.median(t) for t in (plain_s, ours_s, dense_s))
    lines = [
        f"MiniLM masked-LM pretraining, {len(dataset)} blocks x {args.max_length} tokens ({tokens} tokens, {source}), "
        f"batch {args.batch_size}, 1 epoch, {args.repeats} alternating repeats, {args.threads} thread(s), "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "",
        "| loop | tokens/s (median) | ratio to plain |",
        "|---|---|---|",
        f"| plain transformers Trainer + DataCollatorForLanguageModeling | {plain:.0f} | 1.00 |",
        f"| adapterkit pretrain (Trainer path, method full; logits at the masked tokens) | {ours:.0f} | {ours / plain:.2f} |",
        f"| adapterkit pretrain, --sparse-logits false (logits at every token) | {dense:.0f} | {dense / plain:.2f} |",
    ]
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
