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
GATE_AVERAGE_HELP = ("gated only: real_tokens averages the per-token gate over the real tokens (padding masked); "
                     "all averages over every position, padding included, as the UniPELT authors' code does")
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
        if mask is None:
            mask = context_mask()
        """Gate values of ``x`` (batch, seq, hidden); ``mask`` (batch, seq'), 1 for real tokens (default: the
        forward context's attention mask; a mask that is not 2-D is not used).

        A mask shorter than the sequence (soft prompt tokens prepended in front of the text) counts the
        extra leading positions as real.
        """
        per_token = torch.sigmoid(self.linear(x))  # (batch, seq, 1)
        if mask is None or mask.dim() != 2 or self.average == "all":
            value = per_token.mean(dim=1, keepdim=True)
        else:
            m = real_token_mask(mask, x.shape[1]).to(per_token.dtype).unsqueeze(-1)
            value = (per_token * m).sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp_min(1.0)
        self.last = value.detach()
        return value


def context_mask() -> torch.Tensor | None:
    """The attention mask of the forward pass in progress (None outside ``AdaptedModel.forward``)."""
    from ..context import current

    ctx = current()
    return None if ctx is None else ctx.attention_mask


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
