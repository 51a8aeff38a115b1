"""Where adapters attach, per model type: one row per architecture.

A *site* is a named place in a transformer layer. Paths are relative to one layer of a layer list
(``LayerGroup.path``, found by suffix in the model's module names, so task-head wrappers such as
``BertForSequenceClassification`` need no extra rows). Adding an architecture means adding a row.

Sites:
- ``attn_output``: the self-attention output projection (sequential adapters after attention).
- ``ffn_output``: the feed-forward output projection (sequential adapters after the FFN).
- ``ffn_block``: the module a *parallel* adapter runs beside; ``ffn_block_arg`` says which positional
  argument is the FFN input: 0 means ``out = block(x) + A(x)``; 1 (BERT-style ``Output(h, residual)``)
  means the adapter's output is added to the residual argument before the block's residual + LayerNorm.
- ``attn_block`` (BERT-like rows only): the attention output block ``SelfOutput(h, residual)``; with
  ``ffn_block`` it is where AdapterHub-style adapters (``original_ln``) reuse the block's LayerNorm.
- ``query``, ``key``, ``value``, ``output``, ``ffn_in``, ``ffn_out``: linear projections (LoRA targets).
- ``attention``: the self-attention module whose attention function receives prefix keys/values.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .errors import ConfigError, UnsupportedArchitectureError
from .registry import Registry

LINEAR_SITES = ("query", "key", "value", "output", "ffn_in", "ffn_out")


@dataclass(frozen=True)
class LayerGroup:
    """A list of transformer layers (e.g. an encoder or a decoder) and the site paths inside one layer."""

    path: str
    sites: dict[str, str]
    ffn_block_arg: int = 0


@dataclass(frozen=True)
class ArchitectureSpec:
    """How to find layers and sites in one model family."""

    model_type: str
    groups: tuple[LayerGroup, ...]
    prompt_module: str = ""
    """Module whose inputs get soft prompts: the backbone ("" = ``model.base_model``) or e.g. "encoder"."""
    prompt_insert_at: int = 1
    """Sequence position where soft prompts go: 1 keeps a leading [CLS]/<s> first, 0 prepends."""
    prefix_supported: bool = True
    """False where the model's attention does not go through transformers' AttentionInterface."""
    head_token: str = "cls"
    """The token the model's own classification head reads: ``cls`` (the first) or ``last`` (the last real token:
    decoders, and T5's decoder output at ``</s>``). Pooled heads standing in for the model's own use it."""
    aliases: tuple[str, ...] = field(default=())


def _bert_like(model_type: str, aliases: tuple[str, ...] = ()) -> ArchitectureSpec:
    sites = {
        "attn_output": "attention.output.dense",
        "ffn_output": "output.dense",
        "ffn_block": "output",
        "attn_block": "attention.output",
        "query": "attention.self.query",
        "key": "attention.self.key",
        "value": "attention.self.value",
        "output": "attention.output.dense",
        "ffn_in": "intermediate.dense",
        "ffn_out": "output.dense",
        "attention": "attention.self",
    }
    return ArchitectureSpec(model_type, (LayerGroup("encoder.layer", sites, ffn_block_arg=1),), aliases=aliases)


def _t5_group(path: str, ffn_index: int) -> LayerGroup:
    return LayerGroup(
        path,
        {
            "attn_output": "layer.0.SelfAttention.o",
            "ffn_output": f"layer.{ffn_index}.DenseReluDense.wo",
            "ffn_block": f"layer.{ffn_index}.DenseReluDense",
            "query": "layer.0.SelfAttention.q",
            "key": "layer.0.SelfAttention.k",
            "value": "layer.0.SelfAttention.v",
            "output": "layer.0.SelfAttention.o",
            "ffn_in": f"layer.{ffn_index}.DenseReluDense.wi",
            "ffn_out": f"layer.{ffn_index}.DenseReluDense.wo",
            "attention": "layer.0.SelfAttention",
        },
    )


ARCHITECTURES: Registry[ArchitectureSpec] = Registry("model type", error=UnsupportedArchitectureError)
"""Model type (and alias) -> its site table; add one with :func:`register_architecture`."""


def register_architecture(spec: ArchitectureSpec, *, replace: bool = False) -> ArchitectureSpec:
    """Add a model family's site table (under its ``model_type`` and each of its ``aliases``), so a user can
    adapt a new architecture without editing the package. A type already taken by another spec is an
    error unless ``replace``."""
    if not isinstance(spec, ArchitectureSpec):
        raise TypeError(f"register_architecture: expected an ArchitectureSpec, got {type(spec).__name__}")
    for name in (spec.model_type, *spec.aliases):
        old = ARCHITECTURES._items.get(name)
        if old is not None and old != spec and not replace:
            raise ConfigError(f"model type {name!r}: already registered; pass replace=True to replace it")
    for name in (spec.model_type, *spec.aliases):
        ARCHITECTURES.register(name, spec, replace=replace)
    return spec


for _spec in [
        _bert_like("bert"),
        _bert_like("roberta"),
        _bert_like("xlm-roberta"),
        _bert_like("electra"),
        ArchitectureSpec(
            "distilbert",
            (
                LayerGroup(
                    "transformer.layer",
                    {
                        "attn_output": "attention.out_lin",
                        "ffn_output": "ffn.lin2",
                        "ffn_block": "ffn",
                        "query": "attention.q_lin",
                        "key": "attention.k_lin",
                        "value": "attention.v_lin",
                        "output": "attention.out_lin",
                        "ffn_in": "ffn.lin1",
                        "ffn_out": "ffn.lin2",
                        "attention": "attention",
                    },
                ),
            ),
        ),
        ArchitectureSpec(
            "mpnet",
            (
                LayerGroup(
                    "encoder.layer",
                    {
                        "attn_output": "attention.attn.o",
                        "ffn_output": "output.dense",
                        "ffn_block": "output",
                        "query": "attention.attn.q",
                        "key": "attention.attn.k",
                        "value": "attention.attn.v",
                        "output": "attention.attn.o",
                        "ffn_in": "intermediate.dense",
                        "ffn_out": "output.dense",
                        "attention": "attention.attn",
                    },
                    ffn_block_arg=1,
                ),
            ),
            prefix_supported=False,
        ),
        ArchitectureSpec(
            "t5",
            (_t5_group("encoder.block", 1), _t5_group("decoder.block", 2)),
            prompt_module="encoder",
            prompt_insert_at=0,
            head_token="last",
        ),
        ArchitectureSpec(
            "llama",
            (
                LayerGroup(
                    "layers",
                    {
                        "attn_output": "self_attn.o_proj",
                        "ffn_output": "mlp.down_proj",
                        "ffn_block": "mlp",
                        "query": "self_attn.q_proj",
                        "key": "self_attn.k_proj",
                        "value": "self_attn.v_proj",
                        "output": "self_attn.o_proj",
                        "ffn_in": "mlp.up_proj",
                        "ffn_out": "mlp.down_proj",
                        "attention": "self_attn",
                    },
                ),
            ),
            prompt_insert_at=0,
            head_token="last",
            aliases=("mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2"),
        ),
]:
    register_architecture(_spec)


def get_architecture(model_type: str) -> ArchitectureSpec:
    """The site table for ``model_type``; unsupported types raise naming the supported ones."""
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"model type {model_type!r} is not supported; supported model types: {sorted(ARCHITECTURES)} "
            "(add one with architectures.register_architecture)"
        )
    return ARCHITECTURES[model_type]


@dataclass(frozen=True)
class Layer:
    """One transformer layer found in a model: its global index, module path and group."""

    index: int
    path: str
    group: LayerGroup


def find_layers(model: nn.Module, spec: ArchitectureSpec) -> list[Layer]:
    """All transformer layers of ``model``, numbered globally across groups (encoder, then decoder)."""
    names = dict(model.named_modules())
    layers: list[Layer] = []
    for group in spec.groups:
        matches = [n for n, m in names.items() if isinstance(m, nn.ModuleList) and (n == group.path or n.endswith("." + group.path))]
        if not matches:
            raise UnsupportedArchitectureError(
                f"model type {spec.model_type!r}: no layer list {group.path!r} found in {type(model).__name__}"
            )
        path = min(matches, key=len)
        for i in range(len(names[path])):
            layers.append(Layer(len(layers), f"{path}.{i}", group))
    return layers
