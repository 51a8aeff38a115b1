"""Tiny randomly initialised Hugging Face models, batches and model directories for fast adapter tests.

Every supported architecture has a tiny version (hidden size 32, 2 layers, 4 attention heads, FFN 64,
vocabulary 100) that builds in milliseconds on a CPU::

    from adapterkit.model import AdaptedModel
    from adapterkit.testing import tiny_batch, tiny_model

    model = AdaptedModel(tiny_model("llama"))
    model.add_adapter("a", MyAdapterConfig())
    model(**tiny_batch(num_labels=2)).loss.backward()

``tiny_model`` seeds torch's global generator before building, so the same arguments give the same
weights (and an adapter added right after gets the same initialisation too).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import transformers
from torch import nn

from .architectures import ARCHITECTURES

Head = Literal["classification", "regression", "qa", "base", "seq2seq"]

_SIZES: dict[str, Any] = dict(
    vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    max_position_embeddings=64,
)
_LLAMA_STYLE: dict[str, Any] = dict(_SIZES, head_dim=8, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
LLAMA_STYLE_TYPES = ("llama", *ARCHITECTURES["llama"].aliases)
"""Model types that share the Llama site table (``architectures.ARCHITECTURES["llama"]`` and its aliases)."""

TINY_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "bert": dict(_SIZES),
    "roberta": dict(_SIZES, pad_token_id=1),
    "xlm-roberta": dict(_SIZES, pad_token_id=1),
    "electra": dict(_SIZES, embedding_size=32),
    "distilbert": dict(vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64),
    "mpnet": dict(_SIZES),
    "t5": dict(
        vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    ),
    **{model_type: dict(_LLAMA_STYLE) for model_type in LLAMA_STYLE_TYPES},
}
"""Model type -> the keyword arguments (in that model's own config names) of its tiny config."""

_RENAMES: dict[str, dict[str, str]] = {
    "distilbert": {"hidden_size": "dim", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads",
                   "intermediate_size": "hidden_dim"},
    "t5": {"hidden_size": "d_model", "num_hidden_layers": "num_layers", "num_attention_heads": "num_heads",
           "intermediate_size": "d_ff", "head_dim": "d_kv"},
}


def _derived(model_type: str, kw: dict[str, Any]) -> dict[str, Any]:
    """Sizes that follow from others (e.g. the head size), recomputed after size overrides."""
    if model_type == "t5":
        return {"d_kv": kw["d_model"] // kw["num_heads"], "num_decoder_layers": kw["num_layers"]}
    if model_type in LLAMA_STYLE_TYPES:
        return {"head_dim": kw["hidden_size"] // kw["num_attention_heads"]}
    return {}


_HEADS: dict[str, str] = {
    "classification": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "regression": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "qa": "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES",
    "base": "MODEL_MAPPING_NAMES",
    "seq2seq": "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
}
"""Head -> the transformers auto-mapping (model type -> class name) that names its model class."""


def head_class(model_type: str, head: Head) -> type[nn.Module]:
    """The transformers class of ``model_type`` with ``head`` (e.g. t5 + seq2seq: T5ForConditionalGeneration)."""
    if head not in _HEADS:
        raise ValueError(f"head {head!r}: use one of {sorted(_HEADS)}")
    names = getattr(transformers.models.auto.modeling_auto, _HEADS[head])
    if model_type not in names:
        raise ValueError(f"model type {model_type!r} has no {head!r} head in transformers")
    return getattr(transformers, names[model_type])


def tiny_config(model_type: str, **overrides: Any) -> transformers.PretrainedConfig:
    """The tiny config of ``model_type``; ``overrides`` are config fields.

    The generic size names (``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
    ``intermediate_size``) work for every model type; dependent sizes (T5's ``d_kv`` and decoder depth,
    the Llama-style ``head_dim``) follow unless given too.
    """
    try:
        kw = dict(TINY_ARCHITECTURES[model_type])
    except KeyError:
        raise ValueError(f"no tiny model for model type {model_type!r}; known: {sorted(TINY_ARCHITECTURES)}") from None
    renames = _RENAMES.get(model_type, {})
    overrides = {renames.get(k, k): v for k, v in overrides.items()}
    kw.update(overrides)
    kw.update({k: v for k, v in _derived(model_type, kw).items() if k not in overrides})
    return transformers.AutoConfig.for_model(model_type, **kw)


def tiny_model(model_type: str, head: Head = "classification", num_labels: int = 2, seed: int = 0,
               **overrides: Any) -> nn.Module:
    """A tiny ``model_type`` model with a ``head``, its weights drawn after ``torch.manual_seed(seed)``.

    ``head``: classification (``num_labels`` outputs), regression (one output, MSE loss), qa (start/end
    span logits), base (the bare backbone) or seq2seq (an encoder-decoder LM head: T5). ``overrides``
    go to :func:`tiny_config` (e.g. ``attn_implementation="eager"``, ``num_hidden_layers=3``).
    """
    model_class = head_class(model_type, head)
    if head == "regression":
        num_labels, overrides = 1, {"problem_type": "regression", **overrides}
    config = tiny_config(model_type, num_labels=num_labels, **overrides)
    torch.manual_seed(seed)
    return model_class(config)


def tiny_batch(batch_size: int = 2, seq_len: int = 8, *, seed: int = 1, vocab_size: int = 100,
               lengths: Sequence[int] | None = None, eos_token_id: int | None = None, pad_token_id: int = 0,
               num_labels: int | None = None) -> dict[str, torch.Tensor]:
    """Random ``input_ids`` (avoiding the special ids 0-2) and ``attention_mask``, from a generator seeded ``seed``.

    ``lengths``: real tokens per row; the rest is ``pad_token_id`` with mask 0 (default: no padding).
    ``eos_token_id``: put on each row's last real token (T5 and Llama-style classification heads want
    one). ``num_labels``: also draw class ``labels``.
    """
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (batch_size, seq_len), generator=g)
    mask = torch.ones_like(ids)
    for row, length in enumerate(lengths or [seq_len] * batch_size):
        if eos_token_id is not None:
            ids[row, length - 1] = eos_token_id
        ids[row, length:] = pad_token_id
        mask[row, length:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if num_labels is not None:
        batch["labels"] = torch.randint(0, num_labels, (batch_size,), generator=g)
    return batch


SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
DEFAULT_WORDS = ("the", "a", "movie", "was", "good", "great", "bad", "awful")


def tiny_tokenizer(directory: str | Path, words: Sequence[str] = DEFAULT_WORDS) -> transformers.BertTokenizerFast:
    """A whole-word BERT tokenizer: ids 0-4 are the special tokens, then ``words`` (anything else is [UNK]).

    Writes ``vocab.txt`` into ``directory``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join([*SPECIAL_TOKENS, *words]) + "\n")
    return transformers.BertTokenizerFast(vocab=str(vocab))  # (transformers 5 ignores ``vocab_file=``)


def save_tiny_model(directory: str | Path, model_type: str = "bert", head: Head = "classification", *,
                    tokenizer: Any = None, words: Sequence[str] = DEFAULT_WORDS, num_labels: int = 2, seed: int = 0,
                    **overrides: Any) -> Path:
    """Save a tiny model and a tokenizer to ``directory``, loadable like any Hugging Face model directory.

    Without ``tokenizer``, a :func:`tiny_tokenizer` over ``words``; the model's vocabulary is the
    tokenizer's size unless ``vocab_size`` is given. Returns ``directory``.
    """
    directory = Path(directory)
    if tokenizer is None:
        tokenizer = tiny_tokenizer(directory, words)
    overrides.setdefault("vocab_size", len(tokenizer))
    tiny_model(model_type, head, num_labels=num_labels, seed=seed, **overrides).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def kill_after_first_checkpoint(cmd: Sequence[str], output_dir: str | Path, *, timeout: float = 120.0,
                                env: dict[str, str] | None = None) -> int:
    """Run ``cmd`` (a training command) and SIGKILL its process group once ``output_dir`` holds a complete
    checkpoint (the one ``--resume auto`` would pick). Returns the exit code (``-SIGKILL`` when killed)."""
    import os
    import signal
    import subprocess
    import time

    from .training.checkpoints import last_checkpoint

    proc = subprocess.Popen(list(cmd), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline and last_checkpoint(output_dir) is None:
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc.returncode


def perturb_adapter(model: Any, name: str, scale: float = 0.2, seed: int = 1) -> None:
    """Add N(0, ``scale``) noise to adapter ``name``'s parameters (many start as an exact no-op), so that tests
    comparing adapters see each one's effect."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.adapter_parameters(name).values():
            p.add_((torch.randn(p.shape, generator=g) * scale).to(p.device, p.dtype))


def tiny_adapted(model_type: str = "bert", configs: dict[str, Any] | None = None, head: Head = "classification",
                 **overrides: Any) -> Any:
    """An ``AdaptedModel`` over :func:`tiny_model` with ``configs`` (name -> method config) added, each moved off
    its no-op initialisation (:func:`perturb_adapter`), in eval mode."""
    from .model import AdaptedModel

    model = AdaptedModel(tiny_model(model_type, head, **overrides))
    for seed, (name, config) in enumerate((configs or {}).items()):
        model.add_adapter(name, config)
        perturb_adapter(model, name, seed=seed)
    return model.eval()


def padded_batch(model_type: str, batch_size: int = 6, seq_len: int = 8) -> dict[str, torch.Tensor]:
    """A batch whose rows have different lengths (padding on the right), with the end-of-sequence token that
    T5 and Llama-style classification heads need."""
    lengths = [seq_len - (3 * i) % (seq_len - 2) for i in range(batch_size)]
    return tiny_batch(batch_size, seq_len, lengths=lengths, eos_token_id=1 if model_type == "t5" else 2)


def routed_vs_solo(model: Any, batch: dict[str, torch.Tensor], names: Sequence[str | None]) -> float:
    """The largest absolute difference between a mixed-adapter forward (``adapter_names=names``) and each row
    run alone with only its adapter active (none for a None row), over every per-example tensor of the
    output (logits, start/end logits, hidden states). The model's active adapters are restored after."""
    previous = model.active_adapters
    worst = 0.0
    try:
        with torch.no_grad():
            mixed = model(**batch, adapter_names=list(names))
            for i, name in enumerate(names):
                model.set_active_adapters(*([name] if name is not None else []))
                solo = model(**{k: v[i : i + 1] for k, v in batch.items()})
                for key, value in mixed.items():
                    if not isinstance(value, torch.Tensor) or value.dim() == 0:
                        continue
                    other = solo[key]
                    if value.shape[1:] != other.shape[1:]:
                        raise AssertionError(f"{key}: row {i} has shape {tuple(other.shape[1:])} alone and "
                                             f"{tuple(value.shape[1:])} in the mixed batch")
                    worst = max(worst, float((value[i].float() - other[0].float()).abs().max()))
    finally:
        model.set_active_adapters(*previous)
    return worst
