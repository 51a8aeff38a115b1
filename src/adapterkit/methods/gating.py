"""UniPELT gates (Mao et al., ACL 2022): one scalar per example that scales a sub-module's contribution.

As in the authors' code: ``Linear(hidden, 1)`` with weights drawn from N(0, 0.02) and bias 0, a sigmoid per
token, averaged over the sequence. By default the average runs over the real tokens only (padding masked
out, the mask taken from the forward's ``attention_mask``); ``average="all"`` averages over every position,
padding included, as the authors' code does. The gate value of the last forward is kept (``last``), so a
gate analysis can read per-layer mean gate values after each batch.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

GATE_AVERAGES = ("real_tokens", "all")
GateAverage = Literal["real_tokens", "all"]


class Gate(nn.Module):
    """``g = mean_t sigmoid(W x_t + b)`` per example, shaped ``(batch, 1, 1)`` to scale ``(batch, seq, dim)``."""

    def __init__(self, hidden: int, average: GateAverage = "real_tokens") -> None:
        super().__init__()
        if average not in GATE_AVERAGES:
            raise ValueError(f"average: use one of {GATE_AVERAGES}, got {average!r}")
        self.linear = nn.Linear(hidden, 1)
        nn.init.normal_(self.linear.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.linear.bias)
        self.average = average
        self.last: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Gate values of ``x`` (batch, seq, hidden); ``mask`` (batch, seq'), 1 for real tokens.

        A mask shorter than the sequence (soft prompt tokens prepended in front of the text) counts the
        extra leading positions as real.
        """
        per_token = torch.sigmoid(self.linear(x))  # (batch, seq, 1)
        if mask is None or self.average == "all":
            value = per_token.mean(dim=1, keepdim=True)
        else:
            m = real_token_mask(mask, x.shape[1]).to(per_token.dtype).unsqueeze(-1)
            value = (per_token * m).sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp_min(1.0)
        self.last = value.detach()
        return value


def real_token_mask(mask: torch.Tensor, length: int) -> torch.Tensor:
    """``mask`` (batch, n) fitted to ``length`` positions: leading extra positions (prompt tokens) count as real."""
    if mask.dim() != 2:
        raise ValueError(f"attention mask: expected (batch, seq), got shape {tuple(mask.shape)}")
    extra = length - mask.shape[1]
    if extra == 0:
        return mask
    if extra > 0:
        return torch.cat([mask.new_ones(mask.shape[0], extra), mask], dim=1)
    return mask[:, -length:]
