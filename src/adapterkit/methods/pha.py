"""Prototype-based HyperAdapter (PHA; Zhao, Fu and He, EMNLP 2023), after the authors' code (Bumble666/PHA).

One hypernetwork generates the bottleneck adapters of every layer from (task prototype ++ layer embedding):
Linear(64+64 -> 128), ReLU, Linear(128 -> 64), LayerNorm, then four heads for Down/Up weight and bias, with
the authors' "hyperfanin" initialisation. By default the adapters sit beside each FFN (parallel, bottleneck
64); on an encoder-decoder model (T5) the encoder gets one ordinary learned adapter per layer and only the
decoder's adapters are generated, as the authors do (``encoder_adapter``).

An instance-dense retriever embeds each example: z = MLP(mean-pooled final hidden states of the encoder /
backbone), MLP = Linear(hidden -> 128), ReLU, Linear(128 -> 64). As in the authors' code, z feeds only the
two contrastive losses, not the hypernetwork. Prototypes are one learned vector per task (the code,
default) or the running mean of the task's instance embeddings (the paper's description;
``prototypes: running_mean``).

Training loss = task loss + ``instance_loss_weight`` x supervised InfoNCE between instances (same task =
positive, :func:`instance_loss`) + ``prototype_loss_weight`` x prototype-instance loss with the positive
prototype left out of the denominator (:func:`prototype_loss`). In training mode the retriever records both
(already weighted) in the forward context; ``AdaptedModel.forward`` returns them as ``outputs.aux_losses``
and adds them to ``outputs.loss``, so the one Trainer path trains them with no extra hook
(:func:`auxiliary_losses` reads them back for logging).

API: ``PHAConfig`` (method ``pha``); the model-level object ``adapted.shared[name]`` (:class:`PHAShared`:
hypernetwork, retriever, prototypes, layer embeddings; :func:`pha_module`); :func:`materialize` (one task's
generated adapter as an ordinary bottleneck adapter); :func:`instance_embeddings` (retriever output for a
batch); :func:`add_task` (a new task's prototype, for few-shot transfer).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MethodConfig, check, opt
from ..context import current, forward_context
from ..errors import ConfigError
from ..heads import pool
from ..injection import AdapterModule
from ..registry import register_method
from .base import Attachment, BuildContext
from .bottleneck import Bottleneck, BottleneckConfig, ParallelAdapter, SequentialAdapter
from .hypernet import (
    FIXED_ACTIVATIONS,
    GeneratedBottleneck,
    GeneratedParallelAdapter,
    GeneratedSequentialAdapter,
    HyperNetShared,
    Slot,
    check_shared_tensor,
)

PROTOTYPE_MODES = ("learned", "running_mean")
HYPERFANIN_SCALE = 1e-3
"""The authors multiply the hyperfanin bound by 1e-3, so that the generated adapters start close to a no-op
(``PHAConfig.init_scale``'s default)."""


PROTOTYPE_DENOMINATORS = ("negatives", "all")


class NoPositivePairWarning(UserWarning):
    """A training batch had no two examples of the same task: the instance loss is 0 for it."""


class RetrieverCollapseWarning(UserWarning):
    """PHA's retriever reads hidden states written by its generated adapters (no shared encoder adapters) and is
    not detached: the contrastive losses can collapse those states to one vector per task."""


# -- the losses (pure functions) ----------------------------------------------------------------------------
def instance_loss(z: torch.Tensor, task_ids: torch.Tensor, temperature: float = 0.1) -> tuple[torch.Tensor, int]:
    """Supervised InfoNCE on L2-normalised instance embeddings ``z`` (batch, d); positives are the other examples
    of the same task. For anchor i with positives P(i): -1/|P(i)| sum_p [s_ip/t - log sum_{a != i} exp(s_ia/t)],
    averaged over the anchors that have a positive. Returns (loss, number of such anchors); the loss is 0 (with
    a gradient path) when there is none."""
    zn = F.normalize(z, dim=-1)
    sim = zn @ zn.T / temperature
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    positive = (task_ids.reshape(-1, 1) == task_ids.reshape(1, -1)) & ~eye
    log_prob = sim - torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
    counts = positive.sum(1)
    anchors = counts > 0
    if not bool(anchors.any()):
        return z.sum() * 0.0, 0
    per_anchor = -(log_prob * positive).sum(1)[anchors] / counts[anchors]
    return per_anchor.mean(), int(anchors.sum())


def prototype_loss(z: torch.Tensor, prototypes: torch.Tensor, task_ids: torch.Tensor,
                   temperature: float = 0.1, denominator: str = "negatives") -> torch.Tensor:
    """Prototype-instance loss, mean over the batch of -[s(z_i, p_t)/t - log sum_k exp(s(z_i, p_k)/t)] with cosine s.

    ``denominator="negatives"`` (the authors' code): the sum runs over k != t, the positive prototype left out. The
    loss then goes below 0 (down to -2/t + log(tasks - 1)) and its gradient on s(z_i, p_t) stays -1/t however well
    z_i already matches p_t, so it keeps pulling every instance of a task onto one direction. ``"all"``: the
    standard InfoNCE over all prototypes (>= 0; its pull fades once the positive dominates). Needs at least two
    prototypes (ConfigError otherwise)."""
    if prototypes.shape[0] < 2:
        raise ConfigError("tasks: the prototype loss needs at least two tasks (set prototype_loss_weight to 0)")
    if denominator not in PROTOTYPE_DENOMINATORS:
        raise ConfigError(f"prototype_denominator: {denominator!r}; use one of {list(PROTOTYPE_DENOMINATORS)}")
    sim = F.normalize(z, dim=-1) @ F.normalize(prototypes, dim=-1).T / temperature
    ids = task_ids.reshape(-1, 1)
    positive = sim.gather(1, ids).squeeze(1)
    if denominator == "negatives":
        sim = sim.masked_fill(torch.zeros_like(sim, dtype=torch.bool).scatter_(1, ids, True), float("-inf"))
    return (torch.logsumexp(sim, dim=1) - positive).mean()


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``hidden`` (batch, seq, d) over the positions where ``mask`` is 1 (all positions when the mask is
    missing or does not fit, e.g. with prompt tokens prepended)."""
    fits = mask is not None and tuple(mask.shape) == tuple(hidden.shape[:2])
    return pool(hidden, mask if fits else None, "mean")


# -- the model-level module -----------------------------------------------------------------------------------
class PHAShared(HyperNetShared):
    """Hypernetwork + retriever + prototypes + layer embeddings of one PHA adapter (``adapted.shared[name]``).

    Learned prototypes are ``prototypes.weight`` (tasks, prototype_dim); running-mean prototypes are the
    buffers ``prototype_mean`` and ``prototype_count`` (saved with the adapter, updated in training).
    """

    def __init__(self, config: PHAConfig, hidden: int, slots: list[Slot]) -> None:
        super().__init__(config.tasks, slots, hidden, config.bottleneck_size, config.prototype_dim,
                         config.layer_embedding_dim, config.hypernet_hidden, config.hypernet_dim, False, None)
        self.mode = config.prototypes
        self.momentum = config.prototype_momentum
        self.layer_embedding = nn.Embedding(len(slots), config.layer_embedding_dim)
        self.retriever = nn.Sequential(nn.Linear(hidden, config.retriever_hidden), nn.ReLU(),
                                       nn.Linear(config.retriever_hidden, config.prototype_dim))
        if self.mode == "learned":
            self.prototypes = nn.Embedding(len(config.tasks), config.prototype_dim)
        else:
            self.register_buffer("prototype_mean", torch.randn(len(config.tasks), config.prototype_dim))
            self.register_buffer("prototype_count", torch.zeros(len(config.tasks)))
            self.trained_buffers = ("prototype_mean", "prototype_count")  # training checkpoints keep them
        self.hyperfanin_init(config.init_scale)

    def hyperfanin_init(self, scale: float = HYPERFANIN_SCALE) -> None:
        """The authors' init: head weights U(+-s sqrt(3 / (d * fan))) with s = ``scale`` (theirs 1e-3), d the trunk
        width and fan the generated layer's fan-in (size for Up, hidden for Down); bias heads U(+-s sqrt(3 / d));
        head biases 0."""
        d = self.weight_down.in_features
        bounds = {"weight_down": math.sqrt(3 / (d * self.hidden)), "weight_up": math.sqrt(3 / (d * self.size)),
                  "bias_down": math.sqrt(3 / d), "bias_up": math.sqrt(3 / d)}
        for name, bound in bounds.items():
            head = getattr(self, name)
            nn.init.uniform_(head.weight, -scale * bound, scale * bound)
            nn.init.zeros_(head.bias)

    def slot_embeddings(self) -> torch.Tensor:
        return self.layer_embedding.weight

    def condition_table(self) -> torch.Tensor:
        return self.prototype_table()

    def prototype_table(self) -> torch.Tensor:
        """(tasks, prototype_dim): the learned prototypes, or the running means."""
        return self.prototypes.weight if self.mode == "learned" else self.prototype_mean

    def conditions(self, ctx: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        given = ctx.get("prototypes") if ctx is not None else None
        if given is None:
            return super().conditions(ctx)
        given = torch.as_tensor(given, device=self.weight_down.weight.device, dtype=self.weight_down.weight.dtype)
        if given.shape[-1] != self.cond_dim or given.dim() not in (1, 2):
            raise ConfigError(f"prototypes: shape {tuple(given.shape)}; expected (batch, {self.cond_dim}) or "
                              f"({self.cond_dim},) (prototype_dim of this adapter)")
        if given.dim() == 1:
            return given.unsqueeze(0), None
        unique, inverse = torch.unique(given, dim=0, return_inverse=True)
        return unique, (inverse if unique.shape[0] > 1 else None)

    def encode(self, pooled: torch.Tensor) -> torch.Tensor:
        """Instance embeddings z = retriever(mean-pooled hidden states)."""
        return self.retriever(pooled.to(self.retriever[0].weight.dtype))

    @torch.no_grad()
    def update_prototypes(self, z: torch.Tensor, task_ids: torch.Tensor) -> None:
        """Running-mean mode: fold the batch's instance embeddings into their tasks' means (cumulative mean, or an
        exponential one with ``prototype_momentum``)."""
        z = z.detach().to(self.prototype_mean.dtype)
        for t in torch.unique(task_ids).tolist():
            rows = z[task_ids == t]
            n, count = rows.shape[0], float(self.prototype_count[t])
            mean = rows.mean(0)
            if count == 0:
                self.prototype_mean[t] = mean
            elif self.momentum is None:
                self.prototype_mean[t] += (mean - self.prototype_mean[t]) * (n / (count + n))
            else:
                self.prototype_mean[t] = self.momentum * self.prototype_mean[t] + (1 - self.momentum) * mean
            self.prototype_count[t] += n


class RetrieverTap(AdapterModule):
    """At the model-level ``prompt`` site (the backbone, or T5's encoder): embeds each example with the retriever
    from the output's mean-pooled final hidden states, keeps z in the forward context (``pha.z`` record and
    state) and, in training, records the weighted auxiliary losses (and updates running-mean prototypes)."""

    order = 20  # after any other output transform at the site

    def __init__(self, instance_weight: float, prototype_weight: float, temperature: float,
                 detach: bool = False, denominator: str = "negatives", reads_generated: bool = False) -> None:
        super().__init__()
        self.instance_weight, self.prototype_weight, self.temperature = instance_weight, prototype_weight, temperature
        self.detach, self.denominator = detach, denominator
        # the losses train the generated adapters through the states the retriever reads: warn once, at the first
        # training forward (not at load or inference)
        self.collapse_risk = reads_generated and not detach and bool(instance_weight or prototype_weight)

    def post(self, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        ctx = current()
        shared: PHAShared = self.shared_module  # type: ignore[assignment]
        mask = kwargs.get("attention_mask", ctx.attention_mask if ctx is not None else None)
        z = shared.encode(mean_pool(hidden.detach() if self.detach else hidden, mask))
        if ctx is None:
            return output
        ctx.set_state(shared, "z", z)
        ctx.record(f"{self.adapter_name}.z", z)
        if not self.training:
            return output
        if self.collapse_risk:
            self.collapse_risk = False
            warnings.warn(f"pha adapter {self.adapter_name!r}: the retriever reads hidden states written by the "
                          "generated adapters, so the contrastive losses can collapse them to one vector per task "
                          "(measured on MiniLM: classification tasks at the majority class, docs/results/pha.md); "
                          "set detach_retriever: true", RetrieverCollapseWarning, stacklevel=2)
        ids = shared.task_ids(ctx)
        if ids is None:
            ids = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
        if self.instance_weight:
            loss, anchors = instance_loss(z, ids, self.temperature)
            if anchors == 0:
                warnings.warn(f"pha adapter {self.adapter_name!r}: a training batch has no two examples of the same "
                              "task, so the instance contrastive loss is 0 for it; mix tasks in batches of more than "
                              "one example per task", NoPositivePairWarning, stacklevel=2)
            ctx.record("aux_loss", (f"{self.adapter_name}.instance", self.instance_weight * loss))
        if self.prototype_weight and len(shared.tasks) > 1:
            loss = prototype_loss(z, shared.prototype_table(), ids, self.temperature, self.denominator)
            ctx.record("aux_loss", (f"{self.adapter_name}.prototype", self.prototype_weight * loss))
        if shared.mode == "running_mean":
            shared.update_prototypes(z, ids)
        return output


def _encoder_layers(ctx: BuildContext) -> set[int]:
    """Layers of the first layer group (the encoder) of an encoder-decoder model; empty otherwise."""
    if len(ctx.spec.groups) < 2:
        return set()
    first = ctx.spec.groups[0]
    return {layer.index for layer in ctx.layers if layer.group is first}


@register_method
@dataclass
class PHAConfig(MethodConfig):
    """Prototype-based HyperAdapter: adapters generated by a hypernetwork from task prototypes (Zhao et al. 2023)."""

    method: ClassVar[str] = "pha"
    context_inputs: ClassVar[tuple[str, ...]] = ("prototypes",)

    tasks: tuple[str, ...] = opt(("task",), "task names, one prototype each; the batch key task_ids indexes "
                                 "this list (may be left out of the batch when there is one task)")
    placement: Literal["parallel", "pfeiffer", "houlsby"] = opt(
        "parallel", "where the adapters go: parallel: beside the FFN (the authors'); pfeiffer: after the FFN "
        "output; houlsby: after attention and FFN outputs")
    bottleneck_size: int = opt(64, "adapter bottleneck width")
    activation: str = opt("relu", f"activation inside the adapters: one of {', '.join(FIXED_ACTIVATIONS)}")
    prototype_dim: int = opt(64, "width of task prototypes and of the retriever's instance embeddings")
    layer_embedding_dim: int = opt(64, "width of the layer embedding concatenated to the prototype")
    hypernet_hidden: int = opt(128, "hidden width of the hypernetwork trunk (the authors hard-code 128)")
    hypernet_dim: int = opt(64, "output width of the trunk (LayerNorm, then the weight heads)")
    retriever_hidden: int = opt(128, "hidden width of the retriever MLP (hidden -> this -> prototype_dim)")
    prototypes: Literal["learned", "running_mean"] = opt(
        "learned", "learned: one free vector per task (the authors' code, default); running_mean: the mean of the "
        "task's instance embeddings seen in training (the paper's description)")
    prototype_momentum: float | None = opt(
        None, "running_mean only: null = cumulative mean over all instances seen; a number m in (0, 1) = "
        "exponential mean p <- m p + (1 - m) batch mean")
    encoder_adapter: Literal["shared", "generated"] = opt(
        "shared", "encoder-decoder models (T5): shared = one learned adapter per encoder layer, generated only "
        "in the decoder (the authors'); generated = generated everywhere")
    instance_loss_weight: float = opt(0.1, "weight of the instance-instance InfoNCE loss (0 turns it off)")
    prototype_loss_weight: float = opt(0.1, "weight of the prototype-instance loss (0 turns it off)")
    temperature: float = opt(0.1, "temperature of both contrastive losses")
    prototype_denominator: Literal["negatives", "all"] = opt(
        "negatives", "prototype loss denominator: negatives = the other tasks' prototypes only (the authors' code; "
        "unbounded pull of every instance onto its prototype, which collapsed MiniLM's features without LP-FT, "
        "docs/results/pha.md); all = standard InfoNCE over every prototype")
    detach_retriever: bool = opt(
        False, "true: the retriever reads the backbone's output detached, so the contrastive losses train only the "
        "retriever and the prototypes, not the adapters through the representations the task heads read. Set it on "
        "encoder-only models: there the losses collapse those representations to one vector per task "
        "(docs/results/pha.md; training warns there while this is false); the authors' T5 retriever reads an "
        "encoder with shared adapters")
    init_scale: float = opt(HYPERFANIN_SCALE, "multiplier of the hyperfanin bound of the weight heads: the authors' "
                            "1e-3 starts the generated adapters near a no-op (slow to leave it in a short run); 1 "
                            "gives generated weights of an ordinary fan-in init")
    layers: tuple[int, ...] | None = opt(None, "layer indices that get an adapter (default: all)")
    learning_rate: float | None = opt(None, "learning rate for the adapter's parameters (default: the trainer's; "
                                      "the authors use 3e-4 at batch 128)")

    def validate(self) -> None:
        check(isinstance(self.tasks, tuple) and len(self.tasks) > 0 and all(isinstance(t, str) and t for t in self.tasks),
              "tasks", "name at least one task (non-empty strings)")
        check(len(set(self.tasks)) == len(self.tasks), "tasks", f"duplicate task names in {list(self.tasks)}")
        check(self.placement in ("parallel", "pfeiffer", "houlsby"), "placement", f"unknown {self.placement!r}")
        for name in ("bottleneck_size", "prototype_dim", "layer_embedding_dim", "hypernet_hidden", "hypernet_dim",
                     "retriever_hidden"):
            check(getattr(self, name) > 0, name, "must be > 0")
        check(self.activation in FIXED_ACTIVATIONS, "activation", f"use one of {list(FIXED_ACTIVATIONS)}")
        check(self.prototypes in PROTOTYPE_MODES, "prototypes", f"use one of {list(PROTOTYPE_MODES)}")
        check(self.prototype_momentum is None or 0.0 < self.prototype_momentum < 1.0, "prototype_momentum",
              "must be in (0, 1), or null for the cumulative mean")
        check(self.encoder_adapter in ("shared", "generated"), "encoder_adapter", f"unknown {self.encoder_adapter!r}")
        check(self.instance_loss_weight >= 0, "instance_loss_weight", "must be >= 0")
        check(self.prototype_loss_weight >= 0, "prototype_loss_weight", "must be >= 0")
        check(self.temperature > 0, "temperature", "must be > 0")
        check(self.prototype_denominator in PROTOTYPE_DENOMINATORS, "prototype_denominator",
              f"use one of {list(PROTOTYPE_DENOMINATORS)}")
        check(self.init_scale > 0, "init_scale", "must be > 0")

    def bottleneck_config(self) -> BottleneckConfig:
        """The ordinary bottleneck adapter with this placement and size (what :func:`materialize` produces)."""
        return BottleneckConfig(placement=self.placement, bottleneck_size=self.bottleneck_size,
                                activation=self.activation, layers=self.layers)

    def build(self, ctx: BuildContext) -> list[Attachment]:
        plain = self.bottleneck_config()
        shared_layers = _encoder_layers(ctx) if self.encoder_adapter == "shared" else set()
        slots: list[Slot] = []
        out: list[Attachment] = []
        for layer in ctx.layer_indices(self.layers):
            for site in plain.sites():
                if layer in shared_layers:
                    module = plain.make_module(ctx, layer, site)
                    for lin in (module.bottleneck.down, module.bottleneck.up):  # the authors' encoder adapter init
                        nn.init.xavier_uniform_(lin.weight, gain=1e-4)
                        nn.init.zeros_(lin.bias)
                    out.append(Attachment(layer, site, module))
                    continue
                slot = len(slots)
                slots.append(Slot(layer, site, 1 if site.startswith("attn") else 0))
                gen = ctx.with_factories({
                    Bottleneck: lambda hidden, size, act, init, dropout, scaling, _s=slot: GeneratedBottleneck(
                        _s, hidden, size, act, dropout),
                    ParallelAdapter: GeneratedParallelAdapter,
                    SequentialAdapter: GeneratedSequentialAdapter,
                })
                out.append(Attachment(layer, site, plain.make_module(gen, layer, site)))
        if not slots:
            raise ConfigError("layers: PHA generates no adapter here (every selected layer is an encoder layer with "
                              "encoder_adapter: shared); select decoder layers or use encoder_adapter: generated")
        shared = PHAShared(self, ctx.hidden_size, slots)
        tap = RetrieverTap(self.instance_loss_weight, self.prototype_loss_weight, self.temperature,
                           self.detach_retriever, self.prototype_denominator, reads_generated=not shared_layers)
        return [Attachment(None, "shared", shared), *out, Attachment(None, "prompt", tap)]

    def check_state_dict(self, state: dict[str, torch.Tensor], source: object = None) -> None:
        """Clear errors (naming the file and the config field) when saved hypernetwork tensors do not fit this config."""
        n = len(self.tasks)
        table = "shared.prototypes.weight" if self.prototypes == "learned" else "shared.prototype_mean"
        saved = state.get(table)
        if saved is not None and saved.dim() == 2 and saved.shape[1] != self.prototype_dim:
            check_shared_tensor(state, table, (n, self.prototype_dim), source, "prototype_dim",
                                f"prototypes of width {self.prototype_dim}")
        check_shared_tensor(state, table, (n, self.prototype_dim), source, "tasks", f"{n} tasks {list(self.tasks)}")
        check_shared_tensor(state, "shared.trunk.0.weight",
                            (self.hypernet_hidden, self.prototype_dim + self.layer_embedding_dim), source,
                            "prototype_dim", "the hypernetwork's input (prototype_dim + layer_embedding_dim)")
        check_shared_tensor(state, "shared.retriever.2.weight", (self.prototype_dim, self.retriever_hidden), source,
                            "prototype_dim", "the retriever's output width")


# -- helpers on an AdaptedModel ---------------------------------------------------------------------------
def pha_module(adapted: Any, name: str) -> PHAShared:
    """The model-level module (hypernetwork, retriever, prototypes) of PHA adapter ``name``."""
    config = adapted.adapter_configs.get(name)
    if not isinstance(config, PHAConfig):
        have = sorted(n for n, c in adapted.adapter_configs.items() if isinstance(c, PHAConfig))
        raise ConfigError(f"adapter {name!r}: not a pha adapter; pha adapters here: {have}")
    return adapted.shared[name]


def auxiliary_losses(outputs: Any) -> dict[str, torch.Tensor]:
    """The weighted auxiliary losses a training forward recorded (``outputs.aux_losses``; {} when none). They are
    already part of ``outputs.loss``; a caller that computes its own task loss adds ``sum(...values())``."""
    return dict(getattr(outputs, "aux_losses", None) or {})


def instance_embeddings(adapted: Any, name: str, batch: dict[str, Any]) -> torch.Tensor:
    """The retriever's instance embeddings z (batch, prototype_dim) for ``batch`` (no labels needed; no grad)."""
    pha_module(adapted, name)
    batch = {k: v for k, v in batch.items() if k != "labels"}
    was_training = adapted.training
    adapted.eval()
    try:
        with torch.no_grad(), forward_context() as ctx:
            adapted(**batch)
    finally:
        adapted.train(was_training)
    found = ctx.records.get(f"{name}.z")
    if not found:
        raise ConfigError(f"adapter {name!r}: inactive, so the retriever did not run; activate it first")
    return found[-1]


def generated_weights(adapted: Any, name: str, task: str | int | None = None,
                      prototype: torch.Tensor | None = None) -> dict[tuple[int, str], dict[str, torch.Tensor]]:
    """The adapter weights PHA adapter ``name`` generates for ``task`` (or for a given ``prototype`` vector):
    (layer, site) -> {down.weight, down.bias, up.weight, up.bias} (generated slots only)."""
    shared = pha_module(adapted, name)
    if prototype is None:
        if task is None:
            raise ConfigError("task: give a task (name or index) or a prototype vector")
        prototype = shared.prototype_table()[shared.task_index(task)]
    prototype = torch.as_tensor(prototype, device=shared.weight_down.weight.device,
                                dtype=shared.weight_down.weight.dtype)
    return {(s.layer, s.site): w for s, w in shared.weights_for(prototype).items()}


def materialize(adapted: Any, name: str, task: str | int | None = None, new_name: str | None = None, *,
                prototype: torch.Tensor | None = None, activate: bool = False) -> str:
    """Add an ordinary bottleneck adapter ``new_name`` (default ``{name}-{task}``) holding the weights PHA adapter
    ``name`` generates for ``task`` (or ``prototype``), and the shared encoder adapters as they are. It runs,
    saves and merges like any bottleneck adapter, with no hypernetwork at inference; on a single-task batch its
    outputs equal the PHA adapter's exactly. Returns the new adapter's name."""
    config: PHAConfig = adapted.adapter_configs.get(name)  # type: ignore[assignment]
    shared = pha_module(adapted, name)
    label = shared.tasks[shared.task_index(task)] if task is not None else "prototype"
    new_name = new_name or f"{name}-{label}"
    state: dict[str, torch.Tensor] = {}
    for (layer, site), weights in generated_weights(adapted, name, task, prototype).items():
        for key, tensor in weights.items():
            state[f"layers.{layer}.{site}.bottleneck.{key}"] = tensor
    for key, tensor in adapted.adapter_state_dict(name).items():
        if key.startswith("layers."):  # the learned (shared) encoder adapters of an encoder-decoder model
            state[key] = tensor.detach().clone()
    adapted.add_adapter(new_name, config.bottleneck_config(), activate=False)
    try:
        adapted.load_adapter_state_dict(new_name, state, f"materialize({name!r}, {label!r})")
    except Exception:
        adapted.delete_adapter(new_name)
        raise
    if activate:
        adapted.set_active_adapters(new_name)
    return new_name


def add_task(adapted: Any, name: str, task: str, init: torch.Tensor | str | None = None) -> int:
    """Add task ``task`` to PHA adapter ``name`` (a new prototype row; its config's ``tasks`` grows, so the adapter
    saves and loads with it). ``init``: a vector (prototype_dim,), the name of a known task to copy, or None for
    the mean of the known prototypes. Returns the new task's index."""
    config: PHAConfig = adapted.adapter_configs.get(name)  # type: ignore[assignment]
    shared = pha_module(adapted, name)
    if task in shared.tasks:
        raise ConfigError(f"task: {task!r} is already one of {list(shared.tasks)}")
    table = shared.prototype_table().detach()
    if init is None:
        vector = table.mean(0)
    elif isinstance(init, str):
        vector = table[shared.task_index(init)]
    else:
        vector = torch.as_tensor(init, dtype=table.dtype, device=table.device).reshape(-1)
        if vector.shape[0] != config.prototype_dim:
            raise ConfigError(f"init: a prototype of width {vector.shape[0]}; this adapter's prototype_dim is "
                              f"{config.prototype_dim}")
    rows = torch.cat([table, vector.reshape(1, -1).to(table)], dim=0)
    if shared.mode == "learned":
        grad = shared.prototypes.weight.requires_grad
        shared.prototypes = nn.Embedding(rows.shape[0], rows.shape[1]).to(rows.device, rows.dtype)
        with torch.no_grad():
            shared.prototypes.weight.copy_(rows)
        shared.prototypes.weight.requires_grad_(grad)
    else:
        shared.prototype_mean = rows
        shared.prototype_count = torch.cat([shared.prototype_count, shared.prototype_count.new_zeros(1)])
    config.tasks = (*config.tasks, task)
    shared.tasks = config.tasks
    return len(config.tasks) - 1


def prototype_only_parameters(adapted: Any, name: str, tasks: Sequence[str | int]) -> list[nn.Parameter]:
    """For few-shot transfer: freeze every parameter of PHA adapter ``name`` except the learned prototype table,
    and zero the gradient of its rows other than ``tasks`` (a hook), so only those prototypes move. Returns the
    trainable parameters."""
    shared = pha_module(adapted, name)
    if shared.mode != "learned":
        raise ConfigError("prototypes: only learned prototypes can be trained (this adapter uses running_mean)")
    rows = torch.tensor([shared.task_index(t) for t in tasks], device=shared.prototypes.weight.device)
    for p in adapted.adapter_parameters(name).values():
        p.requires_grad_(False)
    weight = shared.prototypes.weight
    weight.requires_grad_(True)
    keep = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    keep[rows] = 1.0
    old = getattr(shared, "_row_hook", None)
    if old is not None:
        old.remove()
    shared.__dict__["_row_hook"] = weight.register_hook(lambda g: g * keep)
    return [weight]
