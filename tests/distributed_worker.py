"""Worker for test_distributed.py: run under ``torchrun --nproc_per_node 2`` (gloo, CPU).

Trains a tiny BERT with a bottleneck adapter through :func:`adapterkit.training.train` and writes
each rank's adapter tensors (and the initial ones) to OUT_DIR.
"""
from __future__ import annotations

import os
import random
import sys
from pathlib import Path

from safetensors.torch import save_file

from adapterkit.data.tasks import TaskSpec
from adapterkit.methods.bottleneck import BottleneckConfig
from adapterkit.model import AdaptedModel
from adapterkit.testing import tiny_model, tiny_tokenizer
from adapterkit.training import TrainConfig, close_distributed, train

WORDS = ["good", "great", "bad", "awful", "the", "movie", "was", "plot"]


def main(out_dir: str) -> None:
    out = Path(out_dir)
    rank = int(os.environ.get("RANK", "0"))
    tokenizer = tiny_tokenizer(out / f"tokenizer-{rank}", WORDS)  # a directory per rank: no write races
    adapted = AdaptedModel(tiny_model("bert", vocab_size=len(tokenizer)))
    adapted.add_adapter("a", BottleneckConfig(reduction_factor=4, init="near_identity"))
    if rank == 0:
        save_file({k: v.contiguous() for k, v in adapted.adapter_state_dict("a").items()}, str(out / "initial.safetensors"))
    rng = random.Random(rank)  # different data per rank: DDP must still keep the weights identical
    data = [{"text": f"the movie was {rng.choice(WORDS[:4])}", "text_pair": None, "label": i % 2} for i in range(32)]
    spec = TaskSpec("dist", "classification", ("text",), "label", ("0", "1"), "accuracy", {"train": "unused"})
    config = TrainConfig(output_dir=str(out / "run"), epochs=2, batch_size=4, learning_rate=1e-2, logging_steps=2,
                         progress="log", eval_each_epoch=False)
    result = train(adapted, tokenizer, spec, data, None, config, name=f"rank{rank}")
    tensors = {k: v.contiguous() for k, v in adapted.adapter_state_dict("a").items()}
    save_file(tensors, str(out / f"rank{rank}.safetensors"), metadata={"global_step": str(result.global_step)})
    assert close_distributed()  # the group torchrun's Trainer set up; left to interpreter exit, gloo can abort


if __name__ == "__main__":
    main(sys.argv[1])
