"""Adaptable Adapters (Moosavi et al., NAACL 2022): rational activations plus a learned layer switch.

Each layer gets a Pfeiffer adapter (after the FFN output) with a :class:`~.rational.Rational`
activation and a two-way switch with logits ``switch = [skip, adapter]``. The sequential adapter
computes ``out = h + bottleneck(h)``; the switched one computes

    out = h + w_adapter * bottleneck(h) = w_skip * h + w_adapter * (h + bottleneck(h)),

the paper's ``w_skip * skip + w_adapter * adapter`` (the two forms agree because ``w_skip + w_adapter
= 1``); the layer's own residual and LayerNorm follow as usual. Training: ``w = softmax((switch + g)
/ tau)`` with Gumbel noise ``g`` drawn per example from torch's RNG (soft; straight-through hard with
``hard_train``). Evaluation: hard argmax, ``w_adapter`` is 1 when the adapter logit is strictly larger
than the skip logit and 0 otherwise, in which case the bottleneck is not computed at all.

After training, :func:`selected_layers` / :func:`selection_record` read which layers chose the
adapter, :func:`write_selection` / :func:`read_selection` keep that on disk, and
:func:`aa_focused_config` turns it into an ordinary Pfeiffer config ("AA-focused": adapters with
rational activations only in the selected layers). With ``tau_schedule="anneal"``, pass
``tau_callback(adapted, name)`` to ``training.train(callbacks=...)``; it sets ``tau = max(tau_min,
tau * exp(-anneal_rate * step))`` before every optimizer step.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

from ..config import ParamGroup, check, opt, read_json
from ..errors import ConfigError
from ..injection import AdapterModule
from ..registry import register_method
from ..routing import Rows, select
from .base import Attachment, BuildContext
from .bottleneck import Bottleneck, BottleneckConfig, PfeifferConfig, SequentialAdapter
from .rational import RATIONAL_INITS

if TYPE_CHECKING:
    from ..model import AdaptedModel

RATIONAL_PARAMETERS = 10
"""Coefficients of one rational activation (6 numerator + 4 denominator)."""


class SwitchedAdapter(AdapterModule):
    """``h -> h + w_adapter * Up(R(Down(h)))`` with a Gumbel-softmax switch over [skip, adapter]."""

    def __init__(self, bottleneck: Bottleneck, switch_init: Sequence[float], tau: float, hard_train: bool = False) -> None:
        super().__init__()
        self.bottleneck = bottleneck
        self.switch = nn.Parameter(torch.tensor([float(v) for v in switch_init]))
        self.tau = float(tau)
        self.hard_train = hard_train

    def uses_adapter(self) -> bool:
        """The evaluation-time choice: the adapter logit is strictly larger than the skip logit."""
        return bool(self.switch[1] > self.switch[0])

    def gate_weights(self, batch_size: int, device: torch.device | None = None) -> torch.Tensor:
        """Training-time weights ``[batch_size, 2]`` (skip, adapter), one Gumbel draw per example."""
        logits = self.switch.float().to(device) if device is not None else self.switch.float()
        noise = torch.empty(batch_size, 2, device=logits.device).exponential_()
        gumbel = -noise.clamp_min(torch.finfo(noise.dtype).tiny).log()
        soft = torch.softmax((logits + gumbel) / self.tau, dim=-1)
        if not self.hard_train:
            return soft
        hard = torch.nn.functional.one_hot(soft.argmax(dim=-1), 2).to(soft.dtype)
        return hard - soft.detach() + soft

    def fusion_refusal(self) -> str | None:
        return None

    def fusion_output(self, args: tuple, kwargs: dict[str, Any], output: torch.Tensor) -> torch.Tensor:
        return self.post(args, kwargs, output)

    def post(self, args: tuple, kwargs: dict[str, Any], output: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return output + self.bottleneck(output) if self.uses_adapter() else output
        weights = self.gate_weights(output.shape[0], output.device)
        w_adapter = weights[:, 1].to(output.dtype).view(-1, *([1] * (output.dim() - 1)))
        return output + w_adapter * self.bottleneck(output)

    def routing_refusal(self) -> str | None:
        if self.training:
            return ("in training its Gumbel switch draws noise for the whole batch; route it per example in "
                    "evaluation (model.eval()), where the switch is a fixed choice")
        return None

    def route_post(self, args: tuple, kwargs: dict[str, Any], output: torch.Tensor, rows: Rows) -> torch.Tensor:
        if self.training:
            raise ConfigError(f"adapter {self.adapter_name!r}: method 'adaptable': {self.routing_refusal()}")
        h = select(output, rows)
        return h + self.bottleneck(h) if self.uses_adapter() else h


@register_method
@dataclass
class AdaptableConfig(BottleneckConfig):
    """Moosavi et al. 2022: Pfeiffer adapters with rational activations and a learned per-layer switch."""

    method: ClassVar[str] = "adaptable"
    gatable: ClassVar[bool] = False
    placement: Literal["houlsby", "pfeiffer", "parallel"] = opt("pfeiffer", "fixed: pfeiffer (after the FFN)")
    activation: str = opt("rational", "activation in the bottleneck; 'rational' is initialised by rational_init")
    rational_init: str = opt(
        "identity", f"initial rational function when activation is 'rational': {', '.join(RATIONAL_INITS)} "
        "(the authors' runs used 'one')"
    )
    tau: float = opt(0.1, "Gumbel-softmax temperature (the start value when annealing)")
    tau_schedule: Literal["fixed", "anneal"] = opt(
        "fixed", "fixed: tau throughout; anneal: tau * exp(-anneal_rate * step), at least tau_min (use tau_callback)"
    )
    tau_min: float = opt(0.01, "lowest temperature when annealing")
    anneal_rate: float = opt(1e-3, "annealing rate per optimizer step")
    switch_init: tuple[float, ...] = opt((0.5, 0.5), "initial switch logits [skip, adapter]")
    hard_train: bool = opt(False, "straight-through hard Gumbel-softmax in training (default: soft weights)")
    switch_lr: float = opt(0.05, "learning rate of the switch logits")
    rational_lr: float = opt(0.01, "learning rate of the rational coefficients")
    learning_rate: float | None = opt(1e-4, "learning rate of the adapter weights (Down, Up)")

    def validate(self) -> None:
        super().validate()
        check(self.placement == "pfeiffer", "placement", "adaptable adapters are placed pfeiffer-style")
        check(not getattr(self, "original_ln", False), "original_ln", "not supported by adaptable adapters")
        check(self.rational_init in RATIONAL_INITS, "rational_init", f"unknown {self.rational_init!r}; known: {list(RATIONAL_INITS)}")
        check(self.tau > 0, "tau", f"must be > 0, got {self.tau}")
        check(self.tau_schedule in ("fixed", "anneal"), "tau_schedule", f"unknown {self.tau_schedule!r}; use fixed or anneal")
        check(0 < self.tau_min <= self.tau, "tau_min", f"must be in (0, tau={self.tau}], got {self.tau_min}")
        check(self.anneal_rate >= 0, "anneal_rate", f"must be >= 0, got {self.anneal_rate}")
        check(len(self.switch_init) == 2, "switch_init", f"needs two logits [skip, adapter], got {list(self.switch_init)}")
        check(self.switch_lr > 0, "switch_lr", f"must be > 0, got {self.switch_lr}")
        check(self.rational_lr > 0, "rational_lr", f"must be > 0, got {self.rational_lr}")
        check(self.learning_rate is None or self.learning_rate > 0, "learning_rate", "must be > 0 or null")

    def activation_name(self) -> str:
        """The registered activation the bottleneck uses (``rational`` resolved by ``rational_init``)."""
        return f"rational_{self.rational_init}" if self.activation == "rational" else self.activation

    def tau_at(self, step: int) -> float:
        """Temperature at optimizer step ``step`` under ``tau_schedule``."""
        if self.tau_schedule == "fixed":
            return self.tau
        return max(self.tau_min, self.tau * math.exp(-self.anneal_rate * step))

    def parameter_groups(self, modules: Sequence[tuple[str, nn.Module]]) -> list[ParamGroup]:
        """Three groups: the switch logits (``switch_lr``), the rational coefficients (``rational_lr``) and the
        bottleneck weights (``learning_rate``)."""
        switched = [m for _, m in modules if isinstance(m, SwitchedAdapter)]
        switch = [m.switch for m in switched]
        act = [p for m in switched for p in m.bottleneck.act.parameters()]
        taken = {id(p) for p in (*switch, *act)}
        rest = [p for _, m in modules for p in m.parameters() if id(p) not in taken]
        return [ParamGroup("adapter", rest, self.learning_rate), ParamGroup("switch", switch, self.switch_lr),
                ParamGroup("rational", act, self.rational_lr)]

    def build(self, ctx: BuildContext) -> list[Attachment]:
        switched = functools.partial(SwitchedAdapter, switch_init=self.switch_init, tau=self.tau, hard_train=self.hard_train)
        return super().build(ctx.with_factories({SequentialAdapter: switched}))


# -- working with a trained adaptable adapter ---------------------------------------------------------


def switched_modules(adapted: AdaptedModel, name: str) -> list[tuple[int, SwitchedAdapter]]:
    """(layer index, module) of adapter ``name``, which must be an adaptable adapter."""
    out = []
    for prefix, module in adapted.adapter_modules(name):
        if isinstance(module, SwitchedAdapter):
            out.append((int(prefix.split(".")[1]), module))
    if not out:
        raise ConfigError(f"adapter {name!r}: not an adaptable adapter (method {adapted.adapter_configs[name].method!r})")
    return sorted(out, key=lambda item: item[0])


def set_tau(adapted: AdaptedModel, name: str, tau: float) -> None:
    """Set the Gumbel-softmax temperature of every switch of adapter ``name``."""
    if tau <= 0:
        raise ConfigError(f"tau: must be > 0, got {tau}")
    for _, module in switched_modules(adapted, name):
        module.tau = float(tau)


def tau_callback(adapted: AdaptedModel, name: str) -> Any:
    """A ``TrainerCallback`` that applies adapter ``name``'s ``tau_schedule`` before each optimizer step."""
    from transformers import TrainerCallback

    config = adapted.adapter_configs[name]
    if not isinstance(config, AdaptableConfig):
        raise ConfigError(f"adapter {name!r}: not an adaptable adapter (method {config.method!r})")

    class TauSchedule(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            set_tau(adapted, name, config.tau_at(state.global_step))

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            set_tau(adapted, name, config.tau_at(state.global_step))

    return TauSchedule()


def selected_layers(adapted: AdaptedModel, name: str) -> list[int]:
    """Layers whose adapter logit is larger than the skip logit (those that run at evaluation)."""
    return [i for i, module in switched_modules(adapted, name) if module.uses_adapter()]


def selection_record(adapted: AdaptedModel, name: str) -> dict[str, Any]:
    """JSON-ready record: selected ``layers``, ``logits`` per layer ([skip, adapter]), ``tau``, ``num_layers``."""
    modules = switched_modules(adapted, name)
    config = adapted.adapter_configs[name]
    return {
        "adapter": name,
        "layers": [i for i, module in modules if module.uses_adapter()],
        "logits": {str(i): [float(v) for v in module.switch.detach().cpu().tolist()] for i, module in modules},
        "tau": modules[0][1].tau,
        "num_layers": len(adapted.layers),
        "config": config.to_dict(),
    }


def write_selection(path: str | Path, record: Mapping[str, Any]) -> Path:
    """Write a selection record as JSON (atomically); returns the path."""
    from ..io import atomic_write_json

    path = Path(path)
    atomic_write_json(path, dict(record))
    return path


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_selection(path: str | Path) -> dict[str, Any]:
    """Read and validate a selection record; errors name the file and the field."""
    record = read_json(path)
    for key in ("layers", "num_layers"):
        if key not in record:
            raise ConfigError(f"{path}: {key}: missing")
    num_layers = record["num_layers"]
    if not _int(num_layers) or num_layers < 1:
        raise ConfigError(f"{path}: num_layers: expected a positive integer, got {num_layers!r}")
    layers = record["layers"]
    if not isinstance(layers, list) or not all(_int(i) for i in layers):
        raise ConfigError(f"{path}: layers: expected a list of layer indices, got {layers!r}")
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise ConfigError(f"{path}: layers: indices {bad} out of range for num_layers={num_layers}")
    logits = record.get("logits", {})
    if not isinstance(logits, dict) or not all(
        isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v) for v in logits.values()
    ):
        raise ConfigError(f"{path}: logits: expected {{layer: [skip, adapter]}}, got {logits!r}")
    tau = record.get("tau")
    if tau is not None and (not isinstance(tau, (int, float)) or tau <= 0):
        raise ConfigError(f"{path}: tau: expected a positive number, got {tau!r}")
    config = record.get("config")
    if config is not None and not isinstance(config, dict):
        raise ConfigError(f"{path}: config: expected an object, got {config!r}")
    return record


_CARRIED = ("reduction_factor", "bottleneck_size", "init", "dropout", "scaling", "learning_rate")


def aa_focused_config(selection: Mapping[str, Any] | Sequence[int], **overrides: Any) -> PfeifferConfig:
    """An ordinary Pfeiffer config with rational activations in the selected layers only ("AA-focused").

    ``selection`` is a record (from :func:`selection_record` / :func:`read_selection`) or a list of
    layer indices. Sizes, init and learning rate follow the record's adaptable config when it has one;
    ``overrides`` are Pfeiffer config fields and win. No selected layer is a ConfigError.
    """
    kwargs: dict[str, Any] = {"activation": "rational"}
    if isinstance(selection, Mapping):
        layers = selection.get("layers")
        if layers is None:
            raise ConfigError("layers: the selection record has no 'layers' field")
        source = selection.get("config") or {}
        kwargs.update({k: source[k] for k in _CARRIED if k in source})
        if source.get("activation", "rational") != "rational":
            kwargs["activation"] = source["activation"]
        elif source.get("rational_init", "identity") != "identity":
            kwargs["activation"] = f"rational_{source['rational_init']}"
    else:
        layers = selection
    known = {f.name for f in dataclasses.fields(PfeifferConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"{unknown[0]}: not a pfeiffer config field; known fields: {sorted(known)}")
    kwargs.update(overrides)
    if "layers" not in overrides:
        if not layers:
            raise ConfigError(
                "layers: no layer selected (every switch prefers skip), so an AA-focused adapter would be empty; "
                "train the adaptable adapter longer or use a plain adapter"
            )
        kwargs["layers"] = tuple(sorted(int(i) for i in layers))
    return PfeifferConfig(**kwargs)


def parameter_report(hidden_size: int, num_layers: int, reduction_factor: float = 16.0,
                     selected: Sequence[int] | None = None) -> dict[str, int]:
    """Adapter parameter counts: ``standard`` Pfeiffer (fixed activation, every layer), ``adaptable``
    (rational + 2 switch logits per layer) and ``aa_focused`` (rational adapters in ``selected`` only)."""
    size = BottleneckConfig(reduction_factor=reduction_factor).size(hidden_size)
    per_layer = 2 * hidden_size * size + size + hidden_size
    focused = len(set(selected)) if selected is not None else num_layers
    return {
        "standard": num_layers * per_layer,
        "adaptable": num_layers * (per_layer + RATIONAL_PARAMETERS + 2),
        "aa_focused": focused * (per_layer + RATIONAL_PARAMETERS),
    }
