"""UniPELT gates: initialisation, token averaging with and without padding, gradients."""
from __future__ import annotations

import pytest
import torch

from adapterkit.context import forward_context
from adapterkit.methods.gating import Gate, group_gates, real_token_mask, token_mask


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


def test_masks_are_computed_once_per_forward_pass():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    x = torch.randn(2, 4, 3)
    with forward_context(attention_mask=mask):
        first = token_mask(4, x)
        assert token_mask(4, x) is first  # cached in the context: shared by every gate of the pass
        assert token_mask(6, x)[0].shape == (2, 6, 1)  # prompt tokens in front: another length, another mask
    assert first[0].flatten(1).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]] and first[1].flatten().tolist() == [2, 4]
    assert token_mask(4, x) is None  # outside a forward pass, no mask given: plain mean


def test_grouped_gates_compute_together_and_match_single_gates():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    x = torch.randn(2, 5, 6, requires_grad=True)
    gates = [Gate(6) for _ in range(3)]
    with torch.no_grad():
        for g in gates:
            g.linear.bias.normal_()
    singles = [g(x, mask) for g in gates]
    group_gates(gates)
    calls = []
    handle = torch.nn.functional.linear
    try:
        torch.nn.functional.linear = lambda *a: calls.append(a[1].shape) or handle(*a)  # count the products
        with forward_context(attention_mask=mask):
            grouped = [g(x) for g in gates]
            other = gates[1](x.detach() + 1)  # another input: computed for it, not taken from the cache
    finally:
        torch.nn.functional.linear = handle
    assert calls == [(3, 6), (3, 6)]  # one product per input for the three gates
    for a, b in zip(singles, grouped, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    expected_other = gates[1]._mean(torch.sigmoid(gates[1].linear(x.detach() + 1)), mask)
    assert torch.allclose(other, expected_other, atol=1e-6)
    sum(v.sum() for v in grouped).backward()
    assert all(g.linear.weight.grad is not None and g.linear.weight.grad.abs().sum() > 0 for g in gates)
    with pytest.raises(ValueError, match="group_gates"):
        group_gates([Gate(6), Gate(6, average="all")])


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
