"""Task heads that fit the model: pooling, optional L2-normalised features, and linear-probe fits.

A sequence-classification head is ``pooling -> (L2 normalisation) -> dropout -> linear``. Pooling modes:

- ``hf``: the model's own Hugging Face head, unchanged (BERT: the [CLS] vector through the model's pooler,
  then its classifier; RoBERTa: its dense+tanh head; decoders: the last token). Adapters saved before
  pooling was recorded load with this mode.
- ``cls``: the first token's last hidden state; ``cls+pooler``: the same through the backbone's pooler
  (BERT's dense+tanh layer, whose weights come from the checkpoint);
- ``mean`` / ``max``: mean / max over the non-padding tokens; ``mean_sqrt_len``: the sum over tokens
  divided by the square root of their number (a sentence-transformers mode); ``last``: the last
  non-padding token (decoders).

``auto`` (the default of :func:`adapterkit.model.load_base_model`) chooses from the model: a
sentence-transformers model directory (``modules.json`` and ``1_Pooling/config.json``, e.g. the bundled
all-MiniLM-L6-v2) gets the pooling it was trained with (mean pooling for MiniLM); a model whose pooler
weights are absent from the checkpoint (so would be random) gets ``mean``; otherwise the model's own
head (``hf``), whose pooler is trained where the checkpoint has one. Feeding a sentence-embedding
model's [CLS] token through a pooler it was never trained with throws away what it learned, and
few-shot training cannot recover that from 64 examples.

Linear probes (:func:`fit_linear`; on a model's frozen head features: ``adapterkit.training.probe_fit``
and, for LP-FT, ``adapterkit.training.init_head_from_probe``) are multinomial logistic regression (ridge regression for regression
tasks) fitted by full-batch LBFGS on frozen features, with the L2 strength chosen on a dev set. They serve
both as the ``probe`` baseline system and for LP-FT (Kumar et al. 2022, "Fine-Tuning can Distort
Pretrained Features and Underperform Out-of-Distribution"): initialising the head with a probe fitted on
the frozen features before fine-tuning means the first gradient steps do not push the backbone (or the
adapter) around to make up for a random head; the head starts at the probe's solution and training
can only improve on it as measured on dev.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .config import check, opt, read_json
from .errors import ConfigError

POOLINGS = ("hf", "cls", "cls+pooler", "mean", "max", "mean_sqrt_len", "last")
"""Concrete pooling modes (what a head uses and an adapter file records)."""
REQUESTS = ("auto", "sentence-transformers", *POOLINGS)
"""What a user may ask for: ``auto`` and ``sentence-transformers`` resolve to a concrete mode."""
L2_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
"""L2 strengths (on standardised features, per example) tried by :func:`fit_linear` when a dev set is given."""

_ST_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_lasttoken": "last",
    "pooling_mode_weightedmean_tokens": None,  # not supported
}
_ST_NAMES = {"cls": "cls", "mean": "mean", "max": "max", "mean_sqrt_len_tokens": "mean_sqrt_len", "lasttoken": "last"}


@dataclass
class HeadConfig:
    """How a classification/regression head turns the backbone's hidden states into one vector."""

    pooling: Literal["auto", "sentence-transformers", "hf", "cls", "cls+pooler", "mean", "max", "mean_sqrt_len",
                     "last"] = opt(
        "auto", "sequence head pooling; auto: the model's own (mean for sentence-transformers models such as the "
        "bundled MiniLM), hf: the Hugging Face head as is (see adapterkit.heads)")
    normalize: bool = opt(False, "L2-normalise the pooled vector before the linear layer")

    def __post_init__(self) -> None:
        check(self.pooling in REQUESTS, "pooling", f"use one of {list(REQUESTS)}, got {self.pooling!r}")
        check(isinstance(self.normalize, bool), "normalize", f"use true or false, got {self.normalize!r}")
        check(not (self.pooling == "hf" and self.normalize), "normalize",
              "needs a pooling head (pooling other than 'hf': the model's own head has no such option)")

    def to_dict(self) -> dict[str, Any]:
        return {"pooling": self.pooling, "normalize": self.normalize}

    @classmethod
    def from_dict(cls, data: Any, source: object = "head") -> HeadConfig:
        """From a saved head description; unknown or bad fields raise naming ``source``."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected an object with pooling and normalize")
        unknown = sorted(set(data) - {"pooling", "normalize"})
        if unknown:
            raise ConfigError(f"{source}: {unknown[0]}: unknown head field; known: ['normalize', 'pooling']")
        try:
            return cls(pooling=data.get("pooling", "hf"), normalize=bool(data.get("normalize", False)))
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None


# --- sentence-transformers pooling ---------------------------------------------------------------


def sentence_transformers_pooling(model_dir: str | Path | None) -> tuple[str, bool] | None:
    """(pooling mode, normalize) from a sentence-transformers model directory, or None when it is not one.

    Reads ``modules.json`` (the Pooling module's path, and whether a Normalize module follows) and the
    pooling config there (``1_Pooling/config.json`` when there is no ``modules.json``). A mode we cannot
    reproduce (weighted mean, or several modes concatenated) raises ConfigError naming the file.
    """
    if model_dir is None or not Path(model_dir).is_dir():
        return None
    root = Path(model_dir)
    modules_file = root / "modules.json"
    pooling_dir, normalize = None, False
    if modules_file.is_file():
        try:
            modules = json.loads(modules_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{modules_file}: not valid JSON ({exc})") from None
        if not isinstance(modules, list):
            raise ConfigError(f"{modules_file}: expected a list of modules")
        for module in modules:
            kind = str(module.get("type", "")) if isinstance(module, dict) else ""
            if kind.endswith(".Pooling") or kind == "Pooling":
                pooling_dir = root / str(module.get("path", ""))
            elif kind.endswith(".Normalize") or kind == "Normalize":
                normalize = True
        if pooling_dir is None:
            return None
    elif (root / "1_Pooling" / "config.json").is_file():
        pooling_dir = root / "1_Pooling"
    else:
        return None
    config_file = pooling_dir / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{config_file}: file not found (named by {modules_file})")
    config = read_json(config_file)
    if isinstance(config.get("pooling_mode"), str):
        name = config["pooling_mode"]
        if name not in _ST_NAMES:
            raise ConfigError(f"{config_file}: pooling_mode: {name!r} is not supported; supported: {sorted(_ST_NAMES)}")
        return _ST_NAMES[name], normalize
    on = [key for key in _ST_MODES if config.get(key)]
    if len(on) != 1:
        raise ConfigError(f"{config_file}: expected exactly one pooling_mode_* field set to true, got {on or 'none'}")
    mode = _ST_MODES[on[0]]
    if mode is None:
        raise ConfigError(f"{config_file}: {on[0]}: not supported; use cls, mean, max, mean_sqrt_len or last tokens")
    return mode, normalize


def resolve(config: HeadConfig, model: nn.Module, model_dir: str | Path | None, kind: str,
            missing_keys: Sequence[str] = ()) -> HeadConfig:
    """The concrete head for ``model`` (``auto`` and ``sentence-transformers`` resolved).

    ``missing_keys``: checkpoint keys ``from_pretrained`` had to initialise randomly (a pooler among them
    means the model's own pooler is untrained).
    """
    requested = config.pooling
    if kind == "qa":
        if requested not in ("auto", "hf"):
            raise ConfigError(f"pooling: {requested!r}: QA (token-level) heads keep the model's own head; use auto or hf")
        return HeadConfig("hf", False)
    if getattr(model.config, "is_encoder_decoder", False) and requested in ("auto", "sentence-transformers"):
        return HeadConfig("hf", False) if not config.normalize else HeadConfig(head_token(model), True)
    if requested in ("auto", "sentence-transformers"):
        st = sentence_transformers_pooling(model_dir)
        if st is not None:
            return HeadConfig(st[0], config.normalize)
        if requested == "sentence-transformers":
            raise ConfigError(f"pooling: sentence-transformers: {model_dir}: no modules.json or 1_Pooling/config.json")
        if any(".pooler." in k or k.startswith("pooler.") for k in missing_keys):
            return HeadConfig("mean", config.normalize)
        return HeadConfig("hf", False) if not config.normalize else HeadConfig(head_token(model), True)
    if requested == "cls+pooler" and find_pooler(model) is None:
        raise ConfigError(f"pooling: cls+pooler: {type(model).__name__} has no pooler; use cls, mean or max")
    return HeadConfig(requested, config.normalize)


# --- pooling -------------------------------------------------------------------------------------


def unwrap(module: nn.Module) -> nn.Module:
    """The module an adapter wrapper (``base_layer``) wraps, or ``module`` itself."""
    while hasattr(module, "base_layer") and isinstance(module.base_layer, nn.Module):
        module = module.base_layer
    return module


def find_pooler(model: nn.Module) -> nn.Module | None:
    """The backbone's pooler module (BERT-style ``pooler``), or None."""
    backbone = unwrap(model.base_model)
    pooler = getattr(backbone, "pooler", None)
    return pooler if isinstance(pooler, nn.Module) else None


def head_token(model: nn.Module) -> str:
    """The pooling of the token the model's own head reads: the site table's ``head_token`` (``cls`` for encoders
    and unknown types; ``last`` for decoders and T5)."""
    from .architectures import ARCHITECTURES

    model_type = getattr(model.config, "model_type", "")
    return ARCHITECTURES[model_type].head_token if model_type in ARCHITECTURES else "cls"


def own_head_config(model: nn.Module) -> HeadConfig:
    """The pooled head that reads what the model's own (``hf``) head reads: [CLS] through the pooler where the
    backbone has one, else :func:`head_token`. Multi-task heads, probes and LP-FT use it where the model's own
    head cannot serve."""
    return HeadConfig("cls+pooler" if find_pooler(model) is not None else head_token(model))


def pooler_with(pooler: nn.Module | None, head_tensors: dict[str, torch.Tensor]) -> Any:
    """``pooler`` run with the pooler weights among ``head_tensors`` (saved head names, e.g.
    ``bert.pooler.dense.weight``), matched to the pooler's own parameter names even where an adapter wraps
    its layers (``dense.base_layer.weight``); ``pooler`` itself when there are none (or no pooler)."""
    weights = {k.rpartition("pooler.")[2]: t for k, t in head_tensors.items() if ".pooler." in f".{k}"}
    if pooler is None or not weights:
        return pooler
    from torch.func import functional_call

    actual = {f".{n}".replace(".base_layer.", ".")[1:]: n for n, _ in pooler.named_parameters()}
    weights = {actual.get(k, k): t for k, t in weights.items()}

    def run(x: torch.Tensor) -> torch.Tensor:
        return functional_call(pooler, weights, (x,))
    return run


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, mode: str,
         pooler: nn.Module | None = None) -> torch.Tensor:
    """One vector per sequence from ``hidden`` (batch, tokens, width); padding (mask 0) is ignored."""
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    mask = attention_mask.to(hidden.device)
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "cls+pooler":
        if pooler is None:
            raise ConfigError("pooling: cls+pooler: the model has no pooler")
        return pooler(hidden)
    if mode in ("mean", "mean_sqrt_len"):
        total = (hidden * m).sum(1)
        count = m.sum(1).clamp(min=1.0)
        return total / (count if mode == "mean" else count.sqrt())
    if mode == "max":
        filled = hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min)
        return filled.max(1).values
    if mode == "last":
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = (positions * (mask > 0)).max(1).values  # right or left padding
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ConfigError(f"pooling: {mode!r}: not a concrete mode; use one of {list(POOLINGS[1:])}")


def head_features(hidden: torch.Tensor, attention_mask: torch.Tensor | None, config: HeadConfig,
                  pooler: Any = None) -> torch.Tensor:
    """What a pooled head of ``config`` feeds its linear layer: the pooled, optionally L2-normalised, vectors."""
    x = pool(hidden, attention_mask, config.pooling, pooler)
    if config.normalize:
        x = nn.functional.normalize(x.float(), dim=-1).to(x.dtype)
    return x


class PooledHead(nn.Module):
    """``pool -> (L2 normalise) -> dropout -> linear``; the linear layer maps to the task's outputs."""

    def __init__(self, config: HeadConfig, hidden_size: int, num_outputs: int, dropout: float = 0.1,
                 init_std: float = 0.02) -> None:
        super().__init__()
        if config.pooling not in POOLINGS[1:]:
            raise ConfigError(f"pooling: {config.pooling!r}: a pooled head needs a concrete mode, not auto/hf")
        self.config = config
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_outputs)
        nn.init.normal_(self.classifier.weight, std=init_std)
        nn.init.zeros_(self.classifier.bias)

    def features(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None,
                 pooler: nn.Module | None = None) -> torch.Tensor:
        """The pooled (and, if configured, L2-normalised) vectors the linear layer sees."""
        return head_features(hidden, attention_mask, self.config, pooler)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(features))


def head_loss(logits: torch.Tensor, labels: torch.Tensor, problem_type: str | None, num_labels: int) -> torch.Tensor:
    """The loss a Hugging Face sequence-classification head would compute for ``problem_type``."""
    if problem_type == "regression" or (problem_type is None and num_labels == 1):
        return nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float())
    if problem_type == "multi_label_classification":
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
    return nn.functional.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.view(-1).long())


# --- linear probes -------------------------------------------------------------------------------


@dataclass
class LinearFit:
    """A fitted linear map ``x @ weight.T + bias`` (weight: outputs x features) and how it was chosen."""

    weight: torch.Tensor
    bias: torch.Tensor
    l2: float
    dev_score: float | None = None

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return x.double() @ self.weight.double().T + self.bias.double()


def _fit_once(x: torch.Tensor, y: torch.Tensor, num_outputs: int, l2: float, regression: bool,
              max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit on standardised float64 features; returns (weight, bias) in the standardised space."""
    n, d = x.shape
    if regression:  # ridge regression, closed form
        xa = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], 1)
        reg = torch.eye(d + 1, dtype=x.dtype) * l2 * n
        reg[-1, -1] = 0.0
        sol = torch.linalg.solve(xa.T @ xa + reg, xa.T @ y.double().view(n, 1))
        return sol[:-1].T.contiguous(), sol[-1].clone()
    weight = torch.zeros(num_outputs, d, dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(num_outputs, dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                                  history_size=20, line_search_fn="strong_wolfe")
    target = y.long()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(x @ weight.T + bias, target) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def fit_linear(train_x: torch.Tensor, train_y: torch.Tensor, num_outputs: int, *, regression: bool = False,
               dev_x: torch.Tensor | None = None, dev_y: torch.Tensor | None = None,
               score_fn: Any = None, l2_grid: Sequence[float] = L2_GRID, l2: float = 1e-2,
               max_iter: int = 500) -> LinearFit:
    """Logistic regression (ridge for ``regression``) on frozen features by full-batch LBFGS (deterministic).

    Features are standardised with the training mean and standard deviation, and the fitted map is folded
    back so that it applies to raw features. With a dev set, the L2 strength is the one of ``l2_grid``
    with the best dev score (``score_fn(logits, labels) -> float``; default accuracy, or negative MSE),
    ties to the stronger regularisation; without one, ``l2`` is used.
    """
    x = train_x.detach().double().cpu()
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp(min=1e-6)
    xs = (x - mean) / std
    y = train_y.detach().cpu()

    def fold(w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return w / std, b - (w / std) @ mean

    def default_score(logits: torch.Tensor, labels: torch.Tensor) -> float:
        if regression:
            return -float((logits.squeeze(-1) - labels.double()).pow(2).mean())
        return float((logits.argmax(-1) == labels.long()).double().mean())

    score = score_fn or default_score
    if dev_x is None or dev_y is None or len(dev_y) == 0:
        w, b = fold(*_fit_once(xs, y, num_outputs, l2, regression, max_iter))
        return LinearFit(w.float(), b.float(), l2)
    best: LinearFit | None = None
    for strength in sorted(l2_grid, reverse=True):
        w, b = fold(*_fit_once(xs, y, num_outputs, strength, regression, max_iter))
        fit = LinearFit(w.float(), b.float(), strength)
        fit.dev_score = score(fit.predict(dev_x.detach().cpu()), dev_y.detach().cpu())
        if best is None or (fit.dev_score > best.dev_score + 1e-12 and not math.isnan(fit.dev_score)):
            best = fit
    assert best is not None
    return best

