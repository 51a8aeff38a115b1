"""Prompt tuning (Lester et al. 2021): trainable soft tokens inserted into the backbone's input embeddings.

One :class:`SoftPrompt` wraps the backbone (``ArchitectureSpec.prompt_module``). Its ``pre`` hook embeds
the input ids with the backbone's own input embedding, inserts the soft tokens at
``spec.prompt_insert_at`` (1 keeps a leading [CLS]/<s> first, 0 prepends) and extends the attention
mask and token type ids; its ``post`` hook removes the prompt positions from the hidden states, so task
heads and cross-attention see the original sequence positions.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from ..config import MethodConfig, check, opt
from ..context import current
from ..errors import ConfigError
from ..injection import AdapterModule
from ..registry import register_method
from ..routing import Rows, set_prompt_mask
from .base import Attachment, BuildContext


@functools.lru_cache(maxsize=64)
def _positional_names(cls: type) -> tuple[str, ...]:
    """Names of ``cls.forward``'s positional parameters (computed once per class, not per forward)."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = list(inspect.signature(cls.forward).parameters.values())[1:]  # drop self
    return tuple(p.name for p in params if p.kind in kinds)


def _as_kwargs(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` plus the positional ``args`` named after ``module.forward``'s parameters."""
    if not args:
        return dict(kwargs)
    names = _positional_names(type(module))
    if len(args) > len(names):
        raise TypeError(f"{type(module).__name__}.forward: too many positional arguments for soft prompts")
    return {**dict(zip(names[: len(args)], args, strict=True)), **kwargs}


class SoftPrompt(AdapterModule):
    """``num_tokens`` trainable embeddings inserted at ``insert_at`` of the wrapped backbone's input."""

    def __init__(self, init: torch.Tensor, insert_at: int) -> None:
        super().__init__()
        self.prompt = nn.Parameter(init.detach().clone())
        self.insert_at = insert_at

    @property
    def num_tokens(self) -> int:
        return self.prompt.shape[0]

    def _backbone(self) -> nn.Module:
        return self.wrapped_layer

    def _mark(self, inserted: bool) -> None:
        """Remember for ``post`` (in the forward context, a stack per call in flight) whether prompts went in."""
        current().state(self, "inserted", list).append(inserted)

    def _insert(self, x: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
        at = min(self.insert_at, x.shape[1])
        return torch.cat([x[:, :at], part, x[:, at:]], dim=1)

    def pre(self, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        backbone = self._backbone()
        kwargs = _as_kwargs(backbone, args, kwargs)
        past = kwargs.get("past_key_values")
        if past is not None and hasattr(past, "get_seq_length") and past.get_seq_length() > 0:
            # decoding with a cache that already holds the prompt: only the mask must count it
            mask = kwargs.get("attention_mask")
            if mask is not None and mask.dim() == 2:
                kwargs["attention_mask"] = self._insert(mask, mask.new_ones(mask.shape[0], self.num_tokens))
            kwargs.pop("position_ids", None)
            self._mark(False)
            return (), kwargs
        input_ids = kwargs.pop("input_ids", None)
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            if input_ids is None:
                raise ValueError("soft prompts need input_ids or inputs_embeds")
            embeds = backbone.get_input_embeddings()(input_ids)
        batch, n = embeds.shape[0], self.num_tokens
        prompt = self.prompt.to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
        kwargs["inputs_embeds"] = self._insert(embeds, prompt)
        kwargs["input_ids"] = None
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        if mask.dim() != 2:
            raise ValueError(f"soft prompts need a 2-D attention mask (batch, length), got shape {tuple(mask.shape)}")
        kwargs["attention_mask"] = self._insert(mask, mask.new_ones(batch, n))
        token_types = kwargs.get("token_type_ids")
        if token_types is not None:
            kwargs["token_type_ids"] = self._insert(token_types, token_types.new_zeros(token_types.shape[0], n))
        kwargs.pop("position_ids", None)  # the backbone recomputes positions for the longer sequence
        self._mark(True)
        return (), kwargs

    def _strip(self, x: torch.Tensor) -> torch.Tensor:
        at = min(self.insert_at, x.shape[1] - self.num_tokens)
        return torch.cat([x[:, :at], x[:, at + self.num_tokens :]], dim=1)

    def post(self, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        stack = current().state(self, "inserted")
        if not (stack.pop() if stack else True):
            return output
        main = output.get("last_hidden_state") if isinstance(output, dict) else (output[0] if output else None)
        if not isinstance(main, torch.Tensor) or main.dim() != 3:
            return output
        length = main.shape[1]  # stacked prompts: earlier post hooks may have stripped theirs already

        def strip_all(states: Any) -> Any:
            if isinstance(states, (tuple, list)) and states and all(
                isinstance(t, torch.Tensor) and t.dim() == 3 and t.shape[1] == length for t in states
            ):
                return type(states)(self._strip(t) for t in states)
            return states

        if isinstance(output, dict):  # a ModelOutput
            output["last_hidden_state"] = self._strip(main)
            if output.get("hidden_states") is not None:
                output["hidden_states"] = strip_all(output["hidden_states"])
            return output
        return (self._strip(main), *(strip_all(o) for o in output[1:]))

    # -- per-example routing: prompts of different lengths (or none) in one batch -----------------------------
    @classmethod
    def routing_family(cls) -> type[AdapterModule]:
        return SoftPrompt

    @classmethod
    def routed_pre(cls, groups: list[tuple[AdapterModule, Rows]], args: tuple,
                   kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        """Each row gets its adapter's prompt (None rows none); rows with a shorter prompt are padded at the end
        of the sequence (masked), so every real token keeps the position it has in a run with its own adapter."""
        first = groups[0][0]
        assert isinstance(first, SoftPrompt)
        backbone = first._backbone()
        kwargs = _as_kwargs(backbone, args, kwargs)
        past = kwargs.get("past_key_values")
        if past is not None and hasattr(past, "get_seq_length") and past.get_seq_length() > 0:
            raise ConfigError("method 'prompt': per-example routing cannot decode with a cache (the prompts in it "
                              "differ per row); route the first forward only, or run one adapter at a time")
        input_ids = kwargs.pop("input_ids", None)
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            if input_ids is None:
                raise ValueError("soft prompts need input_ids or inputs_embeds")
            embeds = backbone.get_input_embeddings()(input_ids)
        batch, length = embeds.shape[:2]
        at = min(first.insert_at, length)
        lengths = torch.zeros(batch, dtype=torch.long, device=embeds.device)
        for module, rows in groups:
            lengths[rows if isinstance(rows, slice) else rows.to(embeds.device)] = module.num_tokens  # type: ignore[union-attr]
        n = int(lengths.max())
        block = embeds.new_zeros(batch, n, embeds.shape[2])
        for module, rows in groups:
            prompt = module.prompt.to(embeds.dtype)  # type: ignore[union-attr]
            block[rows if isinstance(rows, slice) else rows.to(embeds.device), : prompt.shape[0]] = prompt
        j = torch.arange(length + n, device=embeds.device).unsqueeze(0)
        p = lengths.unsqueeze(1)
        # [text[:at], prompt (p), text[at:], padding (n - p)] from [text[:at], prompt + zeros (n), text[at:]]
        order = torch.where(j < at + p, j, torch.where(j < length + p, j + n - p, j - length + at))

        def insert(x: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
            full = torch.cat([x[:, :at], part, x[:, at:]], dim=1)
            index = order if full.dim() == 2 else order.unsqueeze(-1).expand(-1, -1, full.shape[2])
            return full.gather(1, index)

        kwargs["inputs_embeds"] = insert(embeds, block)
        kwargs["input_ids"] = None
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = torch.ones(batch, length, dtype=torch.long, device=embeds.device)
        if mask.dim() != 2:
            raise ValueError(f"soft prompts need a 2-D attention mask (batch, length), got shape {tuple(mask.shape)}")
        real = (torch.arange(n, device=mask.device).unsqueeze(0) < lengths.to(mask.device).unsqueeze(1)).to(mask.dtype)
        kwargs["attention_mask"] = insert(mask, real)
        token_types = kwargs.get("token_type_ids")
        if token_types is not None:
            kwargs["token_type_ids"] = insert(token_types, token_types.new_zeros(batch, n))
        kwargs.pop("position_ids", None)
        set_prompt_mask(kwargs["attention_mask"])
        current().state(SoftPrompt, "routed", list).append((lengths, at, length))
        return (), kwargs

    @classmethod
    def routed_post(cls, groups: list[tuple[AdapterModule, Rows]], args: tuple, kwargs: dict[str, Any],
                    output: Any) -> Any:
        """The hidden states at the text's own positions (each row's prompt and padding removed)."""
        lengths, at, length = current().state(SoftPrompt, "routed").pop()
        main = output.get("last_hidden_state") if isinstance(output, dict) else (output[0] if output else None)
        if not isinstance(main, torch.Tensor) or main.dim() != 3:
            return output
        total = main.shape[1]
        j = torch.arange(length, device=main.device).unsqueeze(0)
        index = torch.where(j < at, j, j + lengths.to(main.device).unsqueeze(1))

        def strip(x: torch.Tensor) -> torch.Tensor:
            return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[2]))

        def strip_all(states: Any) -> Any:
            if isinstance(states, (tuple, list)) and states and all(
                isinstance(t, torch.Tensor) and t.dim() == 3 and t.shape[1] == total for t in states
            ):
                return type(states)(strip(t) for t in states)
            return states

        if isinstance(output, dict):
            output["last_hidden_state"] = strip(main)
            if output.get("hidden_states") is not None:
                output["hidden_states"] = strip_all(output["hidden_states"])
            return output
        return (strip(main), *(strip_all(o) for o in output[1:]))


@register_method
@dataclass
class PromptTuningConfig(MethodConfig):
    """Soft prompt tokens in the input embeddings; the backbone stays frozen."""

    method: ClassVar[str] = "prompt"
    default_learning_rate: ClassVar[float] = 1e-2  # soft prompts need a high rate (Lester et al. 2021 use 0.3)
    num_tokens: int = opt(10, "number of soft prompt tokens")
    init: Literal["vocab", "random", "text"] = opt(
        "vocab", "vocab: embeddings of random vocabulary tokens; random: normal(0, 0.02); text: embeddings of init_text"
    )
    init_text: str | None = opt(None, "text whose token embeddings initialise the prompt (init: text)")
    seed: int = opt(0, "seed for choosing vocabulary tokens / random init")
    learning_rate: float | None = opt(None, "learning rate for the prompt (prompt tuning usually needs a high one)")

    def validate(self) -> None:
        check(self.layers is None, "layers", "soft prompts sit at the model's input, not in layers; leave it null")
        check(self.num_tokens > 0, "num_tokens", "must be > 0")
        check(self.init in ("vocab", "random", "text"), "init", f"unknown {self.init!r}; use vocab, random or text")
        check(self.init != "text" or bool(self.init_text), "init_text", "required when init is 'text'")

    def _text_ids(self, model: nn.Module) -> list[int]:
        from transformers import AutoTokenizer

        path = getattr(model.config, "_name_or_path", "") or ""
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as exc:  # noqa: BLE001 - any load failure means no tokenizer for this model
            raise ConfigError(f"init_text: cannot load the tokenizer of {path!r} to encode the text ({exc})") from None
        ids = tokenizer(self.init_text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ConfigError("init_text: encodes to no tokens")
        return [ids[i % len(ids)] for i in range(self.num_tokens)]

    def initial_prompt(self, model: nn.Module) -> torch.Tensor:
        weight = model.get_input_embeddings().weight.detach()
        gen = torch.Generator().manual_seed(self.seed)
        if self.init == "random":
            return (torch.randn(self.num_tokens, weight.shape[1], generator=gen) * 0.02).to(weight.dtype)
        if self.init == "text":
            ids = torch.tensor(self._text_ids(model))
        else:
            ids = torch.randint(0, weight.shape[0], (self.num_tokens,), generator=gen)
        return weight[ids.to(weight.device)].clone()

    def build(self, ctx: BuildContext) -> list[Attachment]:
        if not ctx.spec.prompt_module and getattr(ctx.model, "base_model", ctx.model) is ctx.model:
            raise ConfigError(
                f"method {self.method!r}: a bare {type(ctx.model).__name__} cannot be wrapped for soft prompts; "
                "load the model with a task head (e.g. AutoModelForSequenceClassification)"
            )
        prompt = SoftPrompt(self.initial_prompt(ctx.model), ctx.spec.prompt_insert_at)
        return [Attachment(None, "prompt", prompt)]
