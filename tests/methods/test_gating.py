"""UniPELT gates: initialisation, token averaging with and without padding, gradients."""
from __future__ import annotations

import pytest
import torch

from adapterkit.methods.gating import Gate, real_token_mask


def test_gate_init_matches_unipelt():
    torch.manual_seed(0)
    gate = Gate(4096)
    assert gate.linear.weight.shape == (1, 4096) and torch.count_nonzero(gate.linear.bias) == 0
    assert abs(gate.linear.weight.std().item() - 0.02) < 0.002 and abs(gate.linear.weight.mean().item()) < 0.002


def test_gate_averages_real_tokens_or_all():
    gate = Gate(3)
    with torch.no_grad():
        gate.linear.weight.copy_(torch.tensor([[1.0, 0.0, 0.0]]))
    x = torch.zeros(2, 4, 3)
    x[0, :, 0] = torch.tensor([0.0, 2.0, -50.0, -50.0])  # the last two positions of row 0 are padding
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    g = gate(x, mask)
    assert g.shape == (2, 1, 1)
    expected0 = (0.5 + torch.sigmoid(torch.tensor(2.0)).item()) / 2
    assert g[0, 0, 0].item() == pytest.approx(expected0) and g[1, 0, 0].item() == pytest.approx(0.5)
    assert torch.equal(gate.last, g.detach())
    authors = Gate(3, average="all")
    authors.load_state_dict(gate.state_dict())
    assert authors(x, mask)[0, 0, 0].item() == pytest.approx(expected0 / 2)  # padding counted (sigmoid(-50) ~ 0)
    assert gate(x)[0, 0, 0].item() == pytest.approx(expected0 / 2)  # no mask: every position
    with pytest.raises(ValueError, match="average"):
        Gate(3, average="mean")


def test_mask_fitting_for_prompt_tokens():
    mask = torch.tensor([[1, 1, 0]])
    assert real_token_mask(mask, 5).tolist() == [[1, 1, 1, 1, 0]]
    assert real_token_mask(mask, 3).tolist() == [[1, 1, 0]]
    with pytest.raises(ValueError, match="attention mask"):
        real_token_mask(torch.ones(3), 3)


def test_gate_gradients():
    gate = Gate(8)
    x = torch.randn(2, 5, 8)
    (gate(x, torch.tensor([[1, 1, 1, 0, 0], [1] * 5])) * 3).sum().backward()
    assert gate.linear.weight.grad is not None and gate.linear.weight.grad.abs().sum() > 0
    assert gate.linear.bias.grad is not None and gate.linear.bias.grad.abs().sum() > 0
