"""The masked-LM loss with vocabulary logits at the masked tokens only (``MLMSpec.sparse_logits``).

The vocabulary projection (the output embeddings) is the largest matrix of a small model, and the loss reads
only the ~15% of tokens that are masked. A forward pre-hook on ``get_output_embeddings()`` gathers those
tokens' hidden states before it, so no model code is copied and any Hugging Face masked-LM class works.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import ConfigError


@contextmanager
def logits_only_at(model: Any, positions: Any) -> Iterator[None]:
    """Within the block, ``model``'s output-embedding projection (the masked-LM decoder) maps only the hidden
    states at ``positions`` (a bool ``[batch, length]`` mask) to vocabulary logits, so the model's output
    logits are ``[positions.sum(), vocab]`` in row-major order of the mask. Works on any Hugging Face
    masked-LM class whose head ends in ``get_output_embeddings()`` (BERT, RoBERTa, MPNet, DistilBERT, ...)."""
    decoder = model.get_output_embeddings()
    if decoder is None:
        raise ConfigError(f"model: {type(model).__name__} has no output embeddings (get_output_embeddings() is None); "
                          "masked-LM training needs a vocabulary projection (use sparse_logits=False)")

    def gather(_module: Any, args: tuple) -> tuple:
        hidden = args[0]
        if tuple(hidden.shape[:-1]) != tuple(positions.shape):
            raise RuntimeError(f"masked-LM decoder input {tuple(hidden.shape)} does not match the labels "
                               f"{tuple(positions.shape)}: cannot select the masked positions")
        return (hidden[positions], *args[1:])

    handle = decoder.register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


def masked_lm_loss(model: Any, hf_model: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
    """(loss, outputs) of one masked-LM batch: ``model`` (an adapted or DDP-wrapped model around ``hf_model``)
    runs without labels, the vocabulary logits are computed only at the masked positions
    (:func:`logits_only_at`), and the loss is their mean cross-entropy (the value the model's own loss
    would give). A batch without a masked token has loss 0 (still attached to the graph)."""
    import torch.nn.functional as F

    labels = inputs["labels"]
    chosen = labels != -100
    with logits_only_at(hf_model, chosen):
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
    logits = outputs.logits
    loss = F.cross_entropy(logits.float(), labels[chosen]) if logits.shape[0] else logits.sum() * 0.0
    return loss, outputs
