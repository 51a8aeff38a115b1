"""UniPELT gates (Mao et al., ACL 2022): one scalar per example that scales a sub-module's contribution.

As in the authors' code: ``Linear(hidden, 1)`` with weights drawn from N(0, 0.02) and bias 0, a sigmoid per
token, averaged over the sequence. By default the average runs over the real tokens only (padding masked
out, the mask taken from the forward's ``attention_mask``); ``average="all"`` averages over every position,
padding included, as the authors' code does. The gate value of the last forward is kept (``last``), so a
gate analysis can read per-layer mean gate values after each batch.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

GATE_AVERAGES = ("real_tokens", "all")
GATE_AVERAGE_HELP = ("gated only: real_tokens averages the per-token gate over the real tokens (padding masked); "
                     "all averages over every position, padding included, as the UniPELT authors' code does")
GateAverage = Literal["real_tokens", "all"]


class Gate(nn.Module):
    """``g = mean_t sigmoid(W x_t + b)`` per example, shaped ``(batch, 1, 1)`` to scale ``(batch, seq, dim)``.

    Gates that read the same input (UniPELT's prefix gate and its query/value LoRA gates all read the layer
    input) can be grouped with :func:`group_gates`: the first of them called in a forward pass computes the
    whole group with one ``Linear(hidden, n)`` (one read of the input, one input-gradient product in the
    backward pass) and the others take their column, when they are called with that same tensor.
    Each gate keeps its own ``Linear(hidden, 1)`` parameters either way.
    """

    def __init__(self, hidden: int, average: GateAverage = "real_tokens") -> None:
        super().__init__()
        if average not in GATE_AVERAGES:
            raise ValueError(f"average: use one of {GATE_AVERAGES}, got {average!r}")
        self.linear = nn.Linear(hidden, 1)
        nn.init.normal_(self.linear.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.linear.bias)
        self.average = average
        self.last: torch.Tensor | None = None
        self._group: tuple[Gate, ...] = ()  # a plain tuple: the other gates are not submodules of this one
        self._index = 0

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Gate values of ``x`` (batch, seq, hidden); ``mask`` (batch, seq'), 1 for real tokens (default: the
        forward context's attention mask; a mask that is not 2-D is not used).

        A mask shorter than the sequence (soft prompt tokens prepended in front of the text) counts the
        extra leading positions as real. The mask's weights are computed once per forward pass and shared by
        every gate (:func:`token_mask`).
        """
        ctx = None
        if mask is None:
            from ..context import current

            ctx = current()
        if ctx is not None and len(self._group) > 1:
            value = self._group_values(ctx, x)[..., self._index:self._index + 1]
        else:
            value = self._mean(torch.sigmoid(self.linear(x)), mask)
        self.last = value.detach()
        return value

    def _mean(self, per_token: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(batch, seq, n) per-token gate values -> (batch, 1, n), averaged as ``self.average`` says."""
        weights = None if self.average == "all" else token_mask(per_token.shape[1], per_token, mask)
        if weights is None:
            return per_token.mean(dim=1, keepdim=True)
        real, count = weights
        return (per_token * real).sum(dim=1, keepdim=True) / count

    def _group_values(self, ctx: Any, x: torch.Tensor) -> torch.Tensor:
        """(batch, 1, n) values of every gate of this gate's group for input ``x``, computed once per pass."""
        leader = self._group[0]
        cached = ctx.state(leader, "group")
        if cached is not None and cached[0] is x:
            return cached[1]
        weight = torch.cat([g.linear.weight for g in self._group])
        bias = torch.cat([g.linear.bias for g in self._group])
        values = self._mean(torch.sigmoid(F.linear(x, weight, bias)), None)
        ctx.set_state(leader, "group", (x, values))
        return values


def group_gates(gates: Sequence[Gate]) -> None:
    """Let ``gates`` (that read the same input tensor, e.g. one layer's attention input) be computed together;
    gates of one group must share their input width and averaging. A gate called with another tensor than
    the group's last input recomputes the group for it, so a wrong grouping costs time, never correctness."""
    gates = list(gates)
    if len(gates) < 2:
        return
    widths = {g.linear.in_features for g in gates}
    averages = {g.average for g in gates}
    if len(widths) > 1 or len(averages) > 1:
        raise ValueError(f"group_gates: gates differ in input width {sorted(widths)} or averaging {sorted(averages)}")
    group = tuple(gates)
    for i, gate in enumerate(group):
        gate._group, gate._index = group, i


_MASKS = object()
"""Owner of the per-forward cache of averaging masks in the forward context."""


def token_mask(length: int, like: torch.Tensor, mask: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(real, count): ``real`` (batch, length, 1) is 1 at the real tokens, ``count`` (batch, 1, 1) their number
    (at least 1), in ``like``'s dtype and device; None when there is no usable (2-D) mask.

    ``mask`` None: the forward context's attention mask, and the result is cached in the context, so a
    forward pass computes it once per sequence length (not once per gate and layer).
    """
    ctx = None
    if mask is None:
        from ..context import current

        ctx = current()
        mask = None if ctx is None else ctx.attention_mask
    if mask is None or mask.dim() != 2:
        return None
    key = (length, like.dtype, like.device)
    if ctx is not None:
        cached = ctx.state(_MASKS, "masks", dict).get(key)
        if cached is not None and cached[0].shape[0] == like.shape[0]:
            return cached
    real = real_token_mask(mask, length).to(device=like.device, dtype=like.dtype).unsqueeze(-1)
    result = (real, real.sum(dim=1, keepdim=True).clamp_min(1.0))
    if ctx is not None:
        ctx.state(_MASKS, "masks", dict)[key] = result
    return result


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


# --- gate analysis ---------------------------------------------------------------------------------------


def gate_modules(adapted: nn.Module, name: str) -> dict[tuple[int, str], Gate]:
    """Adapter ``name``'s gates by (layer, gate label): the label is the site (``ffn_output`` for a Pfeiffer
    adapter, ``attention`` for a prefix, ``query``/``value`` for LoRA), plus the sub-module path when a site
    module holds more than one gate."""
    out: dict[tuple[int, str], Gate] = {}
    for prefix, module in adapted.adapter_modules(name):
        parts = prefix.split(".")
        if parts[0] != "layers":
            continue
        layer, site = int(parts[1]), parts[2]
        gates = [(sub, m) for sub, m in module.named_modules() if isinstance(m, Gate)]
        for sub, gate in gates:
            label = site if len(gates) == 1 else f"{site}.{sub}"
            out[(layer, label)] = gate
    return out


class GateRecorder:
    """Context manager that sums the gate values of adapter ``name`` (default: every active adapter; labels then
    start with the adapter's name) over the forward passes run inside it.

    ``means()`` then gives the mean gate value per (layer, label) over all examples seen (each example
    weighs the same, whatever its batch; for QA, each window of a long context). ``required=False``: an
    adapter without gates records nothing instead of failing.
    """

    def __init__(self, adapted: nn.Module, name: str | None = None, *, required: bool = True) -> None:
        names = [name] if name is not None else list(adapted.active_adapters)
        self.gates: dict[tuple[int, str], Gate] = {}
        for n in names:
            for (layer, label), gate in gate_modules(adapted, n).items():
                self.gates[(layer, label if len(names) == 1 else f"{n}:{label}")] = gate
        if not self.gates and required:
            raise ValueError(f"adapter {name or names!r}: has no gates (use a method config with gated: true)")
        self.sums = {key: 0.0 for key in self.gates}
        self.counts = {key: 0 for key in self.gates}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> GateRecorder:
        for key, gate in self.gates.items():
            self._handles.append(gate.register_forward_hook(self._hook(key)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, key: tuple[int, str]):  # noqa: ANN202
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            values = output.detach().float().reshape(output.shape[0], -1).mean(dim=1)
            self.sums[key] += float(values.sum())
            self.counts[key] += int(values.numel())

        return hook

    def means(self) -> dict[tuple[int, str], float]:
        return {k: self.sums[k] / self.counts[k] for k in self.gates if self.counts[k]}


def gate_table(means: dict[tuple[int, str], float]) -> dict[str, object]:
    """JSON-ready ``{"layers": [...], "gates": [...], "mean": [[per gate] per layer]}`` (null where absent)."""
    layers = sorted({layer for layer, _ in means})
    labels = sorted({label for _, label in means})
    return {"layers": layers, "gates": labels,
            "mean": [[means.get((layer, label)) for label in labels] for layer in layers]}


def write_gate_report(means: dict[tuple[int, str], float], directory: str, title: str = "mean gate value") -> tuple[str, str]:
    """Write ``gates.json`` and a layer x gate heat map ``gates.png`` to ``directory``; returns both paths."""
    from pathlib import Path

    from ..io import atomic_write_json
    from ..reporting import heatmap

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    table = gate_table(means)
    atomic_write_json(out / "gates.json", table)
    png = heatmap(out / "gates.png", [str(layer) for layer in table["layers"]], list(table["gates"]),
                  [[float("nan") if v is None else v for v in row] for row in table["mean"]], title=title,
                  xlabel="gate", ylabel="layer", vmin=0.0, vmax=1.0)
    return str(out / "gates.json"), str(png)
