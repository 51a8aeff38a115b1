"""UniPELT (Mao et al., ACL 2022): gated bottleneck adapter + prefix tuning + LoRA in one adapter; and
``unipelt_prompt``, UniPELT with soft prompt tokens (the "prompt-tuning layer" of Chen, Pang and Yang 2024).

A composition, not a copy: a :class:`UniPELTConfig` holds an ordinary bottleneck, prefix and LoRA config
(and optionally a prompt config) and builds the chosen ``components`` with ``gated`` set on each, so every
module is the component method's own (``gated: true`` selects the gated subclasses: see
:mod:`adapterkit.methods.gating`). The defaults are the authors': a Pfeiffer adapter of width 48 after the
FFN, a prefix of length 10 through a 512-wide tanh MLP, LoRA of rank 8 on query and value; on BERT-base
that is 895K + 184K + 295K parameters (the prefix counted as its 10 x 12 x 2 x 768 values, as the paper
does; the MLP that produces them during training has 9.9M) plus 769 per gate.

Deliberate differences from the authors' code: the task head trains in every method (their prefix- and
LoRA-only runs froze it); the adapter sits after the FFN output projection (set ``adapter.original_ln``
for AdapterHub's ``original_ln_before`` placement, which reuses the block's LayerNorm, on BERT-like
models); gates average over real tokens unless ``gate_average`` is ``all`` (theirs includes padding).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from torch import nn

from ..config import MethodConfig, check, opt
from ..registry import register_method
from .base import Attachment, BuildContext
from .bottleneck import BottleneckConfig, PfeifferConfig
from .gating import GATE_AVERAGE_HELP, GATE_AVERAGES, Gate, group_gates
from .lora import LoRAConfig
from .prefix import PrefixEncoder, PrefixTuningConfig
from .prompt import PromptTuningConfig

COMPONENTS = {"A": "adapter", "P": "prefix", "L": "lora"}
COMPONENT_SETS = ("A", "P", "L", "AP", "AL", "PL", "APL")
READS_ATTENTION_INPUT = ("attention", "query", "key", "value")
"""Sites whose gate reads the attention module's input (the prefix; LoRA on the query/key/value projections)."""


def _component_help() -> str:
    return "which sub-modules: A (adapter), P (prefix), L (LoRA): one of " + ", ".join(COMPONENT_SETS)


@register_method
@dataclass
class UniPELTConfig(MethodConfig):
    """UniPELT: a gated bottleneck adapter, prefix tuning and LoRA combined (components A, P, L)."""

    method: ClassVar[str] = "unipelt"
    components: str = opt("APL", _component_help())
    gated: bool = opt(True, "gate every component (false: UniPELT-NoGate, the plain sum of the components)")
    gate_average: Literal["real_tokens", "all"] = opt("real_tokens", GATE_AVERAGE_HELP)
    adapter: BottleneckConfig = field(default_factory=lambda: PfeifferConfig(bottleneck_size=48),
                                      metadata={"help": "the adapter component (A): any bottleneck config"})
    prefix: PrefixTuningConfig = field(
        default_factory=lambda: PrefixTuningConfig(prefix_length=10, reparameterize=True, bottleneck_size=512),
        metadata={"help": "the prefix component (P)"})
    lora: LoRAConfig = field(default_factory=lambda: LoRAConfig(r=8, alpha=16.0, targets=("query", "value")),
                             metadata={"help": "the LoRA component (L)"})
    prompt: PromptTuningConfig | None = opt(None, "soft prompt tokens in front of the input (ungated), or null")
    learning_rate: float | None = opt(None, "learning rate of the whole adapter (the authors used 5e-4)")

    def validate(self) -> None:
        letters = str(self.components).upper()
        bad = sorted(set(letters) - set(COMPONENTS))
        check(not bad, "components", f"unknown component {bad[0] if bad else ''!r} in {self.components!r}; "
              + _component_help())
        check(letters in COMPONENT_SETS, "components", f"{self.components!r}: " + _component_help())
        self.components = letters
        check(isinstance(self.gated, bool), "gated", "must be true or false")
        check(self.gate_average in GATE_AVERAGES, "gate_average", f"use one of {list(GATE_AVERAGES)}")
        for name, cls in (("adapter", BottleneckConfig), ("prefix", PrefixTuningConfig), ("lora", LoRAConfig)):
            check(isinstance(getattr(self, name), cls), name, f"expected a {cls.__name__}")
        check(self.adapter.gatable, "adapter", f"method {self.adapter.method!r} cannot be gated")
        check(self.prompt is None or isinstance(self.prompt, PromptTuningConfig), "prompt", "expected a prompt config")

    def parts(self) -> list[tuple[str, MethodConfig]]:
        """(component name, its config as built: gated as this config says, restricted to ``layers``)."""
        out: list[tuple[str, MethodConfig]] = []
        for letter in self.components:
            name = COMPONENTS[letter]
            changes: dict[str, Any] = {"gated": self.gated, "gate_average": self.gate_average}
            if self.layers is not None:
                changes["layers"] = self.layers
            out.append((name, dataclasses.replace(getattr(self, name), **changes)))
        if self.prompt is not None:
            out.append(("prompt", self.prompt))
        return out

    @classmethod
    def unsupported(cls, arch: Any) -> str | None:
        reason = PrefixTuningConfig.unsupported(arch)  # the default components (APL) hold a prefix; "AL" builds
        return reason.replace("'prefix'", f"{cls.method!r} with a prefix component (P)") if reason else None

    def build(self, ctx: BuildContext) -> list[Attachment]:
        attachments: list[Attachment] = []
        for _, config in self.parts():
            attachments += config.build(ctx)
        # the prefix gate and the LoRA gates of one layer read the same input (the attention input): computed
        # together, one Linear(hidden, n) per layer (see gating.group_gates)
        by_layer: dict[int, list[Gate]] = {}
        for a in attachments:
            gate = getattr(a.module, "gate", None)
            if a.layer is not None and a.site in READS_ATTENTION_INPUT and isinstance(gate, Gate):
                by_layer.setdefault(a.layer, []).append(gate)
        for gates in by_layer.values():
            group_gates(gates)
        return attachments


@register_method
@dataclass
class UniPELTPromptConfig(UniPELTConfig):
    """UniPELT with a prompt-tuning layer: the gated A+P+L combination plus soft prompt tokens (length 10)."""

    method: ClassVar[str] = "unipelt_prompt"
    prompt: PromptTuningConfig | None = field(default_factory=lambda: PromptTuningConfig(num_tokens=10),
                                              metadata={"help": "the soft prompt component"})

    def validate(self) -> None:
        super().validate()
        check(self.prompt is not None, "prompt", "unipelt_prompt needs a prompt config (use unipelt without one)")


def component_parameter_counts(adapted: nn.Module, name: str) -> dict[str, dict[str, int]]:
    """Per component of UniPELT adapter ``name``: ``trainable`` parameters and ``kept`` parameters (what the
    adapter needs after training: a reparameterised prefix counts as its prefix values, as in the paper),
    each with and without the gates (``gates``: the gate parameters of that component)."""
    config = adapted.adapter_configs[name]
    out: dict[str, dict[str, int]] = {}
    for component, _ in (config.parts() if isinstance(config, UniPELTConfig) else [(config.method, config)]):
        out[component] = {"trainable": 0, "kept": 0, "gates": 0}
    for prefix, module in adapted.adapter_modules(name):
        component = _component_of(prefix, module)
        counts = out.setdefault(component, {"trainable": 0, "kept": 0, "gates": 0})
        total = sum(p.numel() for p in module.parameters())
        gates = sum(p.numel() for n, p in module.named_parameters() if n.startswith("gate."))
        counts["trainable"] += total
        counts["gates"] += gates
        if isinstance(module, PrefixEncoder):
            prefix_length, two, kv_heads, head_dim = module.shape
            layers = module.up.out_features // (two * kv_heads * head_dim)
            counts["kept"] += prefix_length * two * kv_heads * head_dim * layers
        else:
            counts["kept"] += total
    return out


_SITE_COMPONENT = {"attention": "prefix", "query": "lora", "key": "lora", "value": "lora", "output": "lora",
                   "ffn_in": "lora", "ffn_out": "lora", "prompt": "prompt", "shared": "prefix"}


def _component_of(prefix: str, module: nn.Module) -> str:
    site = "shared" if prefix == "shared" else prefix.split(".")[-1]
    return _SITE_COMPONENT.get(site, "adapter")


def summarize_counts(counts: dict[str, dict[str, int]], keys: Sequence[str] = ("trainable", "kept", "gates")) -> dict[str, int]:
    """Totals over components."""
    return {k: sum(c[k] for c in counts.values()) for k in keys}
