"""Per-layer representational similarity between two models on a probe set (batched, memory-bounded).

:func:`layer_similarity` runs both models over the probe in batches, takes the hidden states of every
layer (index 0 = the embeddings' output, i = transformer layer i), keeps the real tokens (padding and,
by default, special tokens excluded), and feeds them to per-layer accumulators: linear CKA needs only
feature-space statistics; RSA keeps the selected points (n x d per layer, never n x n) and correlates
their similarity matrices blockwise. Token choices (``tokens``):

- ``"all"``: every real token;
- ``"sample:N"``: N real tokens drawn uniformly (seeded) from the whole probe, the same for both models;
- ``"sentence"``: one mean-pooled vector per probe sentence.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, DataError
from .similarity import CORRELATIONS, CKAStats, rsa

METRICS = ("cka", "rsa")
Probe = list[tuple[str, str | None]]  # (text, text_pair)


@dataclass
class SimilarityOptions:
    """What to compare and how."""

    metrics: tuple[str, ...] = ("cka", "rsa")
    tokens: str = "sample:2000"
    correlation: str = "pearson"
    include_special: bool = False
    batch_size: int = 32
    max_length: int = 128
    block_size: int = 512
    max_pairs: int = 2_000_000
    seed: int = 0

    def __post_init__(self) -> None:
        self.metrics = tuple(self.metrics)
        bad = [m for m in self.metrics if m not in METRICS]
        if bad or not self.metrics:
            raise ConfigError(f"metrics: use some of {list(METRICS)}, got {list(self.metrics)}")
        if self.correlation not in CORRELATIONS:
            raise ConfigError(f"correlation: use one of {list(CORRELATIONS)}, got {self.correlation!r}")
        self.sample_size  # validates tokens  # noqa: B018
        for name in ("batch_size", "max_length", "block_size", "max_pairs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")

    @property
    def sample_size(self) -> int | None:
        """N of ``sample:N`` (None for ``all`` and ``sentence``)."""
        if self.tokens in ("all", "sentence"):
            return None
        head, _, n = self.tokens.partition(":")
        if head != "sample" or not n.isdigit() or int(n) < 2:
            raise ConfigError(f"tokens: use 'all', 'sentence' or 'sample:N' (N >= 2), got {self.tokens!r}")
        return int(n)


@dataclass
class SimilarityResult:
    """Per-layer similarities (index 0 = embeddings) and what they were computed on."""

    layers: list[int]
    scores: dict[str, list[float]]  # metric -> one value per layer
    points: int  # representations compared per layer
    sentences: int
    options: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, **self.scores, "points": self.points, "sentences": self.sentences,
                "options": self.options, "seconds": round(self.seconds, 2), "notes": self.notes}


# --- models -------------------------------------------------------------------------------------------


def _hf(model: nn.Module) -> nn.Module:
    return model.model if hasattr(model, "active_adapters") and hasattr(model, "model") else model


def backbone(model: nn.Module) -> nn.Module:
    """The module whose ``hidden_states`` are compared: the encoder of encoder-decoder models, else the
    base model (adapters injected into it run as usual)."""
    hf = _hf(model)
    if getattr(hf.config, "is_encoder_decoder", False):
        return hf.get_encoder()
    return hf.base_model


def shape_of(model: nn.Module) -> tuple[int, int]:
    """(layers, hidden size) from the model's config."""
    cfg = _hf(model).config
    layers = next((getattr(cfg, k) for k in ("num_hidden_layers", "n_layers", "num_layers") if hasattr(cfg, k)), None)
    width = next((getattr(cfg, k) for k in ("hidden_size", "dim", "d_model") if hasattr(cfg, k)), None)
    return int(layers), int(width)


def check_comparable(model_a: nn.Module, model_b: nn.Module, name_a: str = "model A", name_b: str = "model B") -> None:
    """Fail naming both models when their depth or width differ (similarity is compared layer by layer)."""
    sa, sb = shape_of(model_a), shape_of(model_b)
    if sa != sb:
        raise ConfigError(f"models: {name_a} has {sa[0]} layers of width {sa[1]}, {name_b} has {sb[0]} layers of "
                          f"width {sb[1]}; layer-wise similarity needs the same depth and width")


@torch.no_grad()
def hidden_states(model: nn.Module, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Hidden states of every layer (embeddings first), each (batch, seq, hidden), in float32."""
    was = model.training
    model.eval()
    try:
        out = backbone(model)(**batch, output_hidden_states=True)
    finally:
        model.train(was)
    return [h.float() for h in out.hidden_states]


# --- probe --------------------------------------------------------------------------------------------


def read_probe(source: str | Path, *, data_dir: Any = None, split: str | None = None, column: str | None = None,
               limit: int | None = None, seed: int = 0) -> Probe:
    """A probe set: a ``.txt`` file (one sentence per line), a table file (CSV/TSV/JSONL/Parquet; text from
    ``column``, default the first of text/sentence/premise/question), or a registered task name (its
    ``split``, default dev, else test, else train; sentence pairs kept as pairs). ``limit`` keeps a seeded
    sample of that many sentences. An empty probe is an error naming the source."""
    path = Path(source)
    probe: Probe
    if path.is_file():
        if path.suffix == ".txt":
            probe = [(line.strip(), None) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            from ..data.formats import read_table

            rows = read_table(path)
            if rows and column is None:
                column = next((c for c in ("text", "sentence", "premise", "question", "sentence1") if c in rows[0]),
                              None)
                if column is None:
                    raise DataError(f"{path}: probe column: none of text/sentence/premise/question; pass --probe-column "
                                    f"(columns: {list(rows[0])})")
            if rows and column not in rows[0]:
                raise DataError(f"{path}: {column}: no such column (columns: {list(rows[0])})")
            probe = [(str(r[column]).strip(), None) for r in rows if str(r.get(column) or "").strip()]
    else:
        from ..data.tasks import TASKS, load_split

        if str(source) not in TASKS:
            raise DataError(f"{source}: probe: neither a file nor a registered task")
        from ..data.tasks import get_task

        spec = get_task(str(source))
        split = split or next(s for s in ("dev", "test", "train") if s in spec.splits)
        examples = load_split(spec, split, data_dir)
        if spec.kind == "qa":
            probe = [(ex["question"], ex["context"]) for ex in examples]
        else:
            probe = [(ex["text"], ex.get("text_pair")) for ex in examples if ex["text"].strip()]
    if not probe:
        raise DataError(f"{source}: probe set is empty (no non-blank sentences)")
    if limit and len(probe) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(probe), limit, replace=False))
        probe = [probe[i] for i in keep]
    return probe


def encode_probe(tokenizer: Any, probe: Probe, max_length: int) -> list[dict[str, list[int]]]:
    """Tokenised probe sentences (unpadded), with a ``special_tokens_mask``."""
    if not probe:
        raise DataError("probe: empty probe set")
    out = []
    for text, pair in probe:
        enc = tokenizer(text, pair, truncation=True, max_length=max_length, return_special_tokens_mask=True)
        out.append({k: list(v) for k, v in enc.items()})
    return out


def _keep_mask(enc: dict[str, list[int]], include_special: bool) -> list[bool]:
    special = enc.get("special_tokens_mask") or [0] * len(enc["input_ids"])
    keep = [include_special or not s for s in special]
    return keep if any(keep) else [True] * len(keep)  # a sentence of special tokens only: keep them


# --- the computation ----------------------------------------------------------------------------------


def layer_similarity(model_a: nn.Module, model_b: nn.Module, tokenizer: Any, probe: Probe,
                     options: SimilarityOptions | None = None, *, names: tuple[str, str] = ("model A", "model B"),
                     progress: bool = False) -> SimilarityResult:
    """Similarity of ``model_a`` and ``model_b`` at every layer on ``probe`` (see the module docstring)."""
    opts = options or SimilarityOptions()
    check_comparable(model_a, model_b, *names)
    start = time.perf_counter()
    encoded = encode_probe(tokenizer, probe, opts.max_length)
    keeps = [_keep_mask(e, opts.include_special) for e in encoded]
    total = sum(sum(k) for k in keeps)
    chosen: set[tuple[int, int]] | None = None
    notes = []
    if opts.sample_size is not None:
        if opts.sample_size >= total:
            notes.append(f"tokens: sample of {opts.sample_size} >= the {total} real tokens: all tokens used")
        else:
            flat = [(s, p) for s, keep in enumerate(keeps) for p, k in enumerate(keep) if k]
            pick = np.random.default_rng(opts.seed).choice(len(flat), opts.sample_size, replace=False)
            chosen = {flat[i] for i in pick}
    n_layers, width = shape_of(model_a)
    cka = [CKAStats(width, width) for _ in range(n_layers + 1)] if "cka" in opts.metrics else None
    points: list[list[list[np.ndarray]]] | None = [[[], []] for _ in range(n_layers + 1)] if "rsa" in opts.metrics else None
    device_a = next(model_a.parameters()).device
    device_b = next(model_b.parameters()).device
    names_in = ("input_ids", "attention_mask", "token_type_ids")
    n_points = 0
    for b0 in range(0, len(encoded), opts.batch_size):
        rows = encoded[b0: b0 + opts.batch_size]
        batch = tokenizer.pad([{k: r[k] for k in names_in if k in r} for r in rows], return_tensors="pt")
        states_a = hidden_states(model_a, {k: v.to(device_a) for k, v in batch.items()})
        states_b = hidden_states(model_b, {k: v.to(device_b) for k, v in batch.items()})
        if len(states_a) != n_layers + 1 or len(states_b) != n_layers + 1:
            raise ConfigError(f"models: {names[0]} gave {len(states_a)} hidden states, {names[1]} {len(states_b)}; "
                              f"expected {n_layers + 1}")
        select = _selection(batch["attention_mask"], keeps[b0: b0 + len(rows)], b0, chosen, opts.tokens)
        for layer, (ha, hb) in enumerate(zip(states_a, states_b, strict=True)):
            xa, xb = _pick(ha.cpu(), select, opts.tokens), _pick(hb.cpu(), select, opts.tokens)
            if cka is not None:
                cka[layer].update(xa, xb)
            if points is not None:
                points[layer][0].append(xa.astype(np.float32))
                points[layer][1].append(xb.astype(np.float32))
        n_points += len(select[0]) if opts.tokens != "sentence" else len(rows)
        if progress:
            done = min(len(encoded), b0 + opts.batch_size)
            elapsed = time.perf_counter() - start
            print(f"similarity: {done}/{len(encoded)} sentences, elapsed {elapsed:.0f}s, "
                  f"ETA {elapsed / done * (len(encoded) - done):.0f}s", flush=True)
    if n_points < 2:
        raise DataError(f"probe: only {n_points} representation(s) selected; need at least 2")
    scores: dict[str, list[float]] = {}
    if cka is not None:
        scores["cka"] = [s.value() for s in cka]
    if points is not None:
        values, exact = [], True
        for layer_points in points:
            res = rsa(np.concatenate(layer_points[0]), np.concatenate(layer_points[1]), opts.correlation,  # type: ignore[arg-type]
                      block_size=opts.block_size, max_pairs=opts.max_pairs, seed=opts.seed)
            values.append(res.value)
            exact = exact and res.exact
        scores["rsa"] = values
        if not exact:
            notes.append(f"rsa: Spearman on a sample of {opts.max_pairs} pairs (more pairs than max_pairs)")
    return SimilarityResult(list(range(n_layers + 1)), scores, n_points, len(encoded),
                            {k: v for k, v in opts.__dict__.items()}, time.perf_counter() - start, notes)


def _selection(mask: torch.Tensor, keeps: Sequence[list[bool]], offset: int, chosen: set | None,
               tokens: str) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
    """Row/column indices of the selected tokens, or (sentence mode) a (batch, seq) weight matrix."""
    keep = torch.zeros_like(mask, dtype=torch.bool)
    for r, k in enumerate(keeps):
        length = int(mask[r].sum())
        row = torch.tensor(k[:length], dtype=torch.bool)
        if chosen is not None:
            row = row & torch.tensor([(offset + r, p) in chosen for p in range(length)], dtype=torch.bool)
        # real tokens sit where the mask is 1 (right or left padding)
        keep[r, mask[r].bool()] = row
    if tokens == "sentence":
        weights = keep.float()
        return weights / weights.sum(1, keepdim=True).clamp_min(1.0)
    return keep.nonzero(as_tuple=True)


def _pick(h: torch.Tensor, select: Any, tokens: str) -> np.ndarray:
    if tokens == "sentence":
        return torch.einsum("bs,bsd->bd", select, h).double().numpy()
    rows, cols = select
    return h[rows, cols].double().numpy()


# --- loading models for the command line ------------------------------------------------------------


def load_for_analysis(source: str | None, *, base: str | None = None) -> tuple[nn.Module, Any, str]:
    """(model, tokenizer, description) for a model directory / Hub id, or an adapter directory (the base
    model it names, or ``base``, with the adapter loaded and active). ``None``: the bundled MiniLM."""
    from transformers import AutoModel, AutoTokenizer

    from ..io import CONFIG_NAME, load_adapter, read_adapter_config
    from ..model import AdaptedModel, default_model_path

    if source is not None and (Path(source) / CONFIG_NAME).is_file() and not (Path(source) / "config.json").is_file():
        meta = read_adapter_config(source)
        base_path = base or meta["base_model"].get("name_or_path") or default_model_path()
        tokenizer = AutoTokenizer.from_pretrained(base_path)
        adapted = AdaptedModel(AutoModel.from_pretrained(base_path))
        name = load_adapter(adapted, source, load_head=False)
        adapted.eval()
        return adapted, tokenizer, f"{source} (adapter {name!r} on {base_path})"
    path = source or default_model_path()
    if source is not None and not Path(source).exists() and "/" not in str(source):
        raise ConfigError(f"{source}: not a model directory, adapter directory or Hub id")
    model = AutoModel.from_pretrained(path)
    model.eval()
    return model, AutoTokenizer.from_pretrained(path), str(path)


def similarity_plot(path: str | Path, results: dict[str, SimilarityResult], title: str = "") -> Path:
    """Similarity against layer, one line per tuned model; one panel per metric."""
    from ..reporting import pyplot

    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics = [m for m in METRICS if any(m in r.scores for r in results.values())]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for i, (name, res) in enumerate(results.items()):
            if metric in res.scores:
                ax.plot(res.layers, res.scores[metric], marker="o", label=name, color=f"C{i % 10}")
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_ylabel(metric.upper())
        ax.set_title(f"{metric.upper()} with the base model")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
