"""Rational activations: initial fits, exact identity, numerical safety, gradients, use in an adapter."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adapterkit.methods.base import ACTIVATIONS, make_activation
from adapterkit.methods.bottleneck import PfeifferConfig
from adapterkit.methods.rational import RATIONAL_INITS, Rational, rational_coefficients
from adapterkit.model import AdaptedModel
from adapterkit.testing import tiny_batch, tiny_model

# Max abs error on [-3, 3] (float32 module, 20001 points); measured: relu 3.19e-2, gelu 2.49e-3,
# tanh 2.4e-6, sigmoid 1.8e-7, swish/silu 1.4e-6.
FIT_TOLERANCE = {"relu": 0.035, "gelu": 3e-3, "tanh": 1e-5, "sigmoid": 1e-6, "swish": 1e-5, "silu": 1e-5}
TARGETS = {"relu": torch.relu, "gelu": F.gelu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "swish": F.silu,
           "silu": F.silu}


@pytest.mark.parametrize("init", sorted(FIT_TOLERANCE))
def test_initial_fits_match_their_targets(init: str) -> None:
    x = torch.linspace(-3, 3, 20001)
    error = (Rational(init)(x) - TARGETS[init](x)).abs().max().item()
    assert error <= FIT_TOLERANCE[init], f"{init}: max abs error {error:.2e}"


def test_fits_are_cached_and_deterministic() -> None:
    assert rational_coefficients("gelu") is rational_coefficients("gelu")
    again = rational_coefficients.__wrapped__("gelu")
    assert again == rational_coefficients("gelu")


def test_identity_is_exactly_x_and_one_is_one() -> None:
    x = torch.cat([torch.randn(1000) * 10, torch.tensor([0.0, -0.0, 1e3, -1e3, 123.456])])
    assert torch.equal(Rational("identity")(x), x)
    assert torch.equal(Rational("one")(x), torch.ones_like(x))


def test_registered_names() -> None:
    assert {"rational", *(f"rational_{i}" for i in RATIONAL_INITS)} <= set(ACTIVATIONS)
    act = make_activation("rational", 8)
    assert isinstance(act, Rational) and act.init == "identity"
    assert make_activation("rational_gelu", 8).init == "gelu"
    assert make_activation("rational", 8) is not act  # one fresh module per adapter layer


@pytest.mark.parametrize("init", ["identity", "one", "relu", "gelu", "tanh"])
def test_large_inputs_and_their_gradients_stay_finite(init: str) -> None:
    act = Rational(init)
    with torch.no_grad():  # a trained-looking function: every coefficient non-zero
        act.numerator.add_(torch.linspace(0.1, 0.6, 6))
        act.denominator.add_(torch.linspace(-0.2, 0.2, 4))
    x = torch.tensor([1e4, -1e4, 5e3, -3e3, 1e3, 0.0, 2.5], requires_grad=True)
    out = act(x)
    assert torch.isfinite(out).all()
    (out * torch.linspace(-1, 1, 7)).sum().backward()
    for grad in (x.grad, act.numerator.grad, act.denominator.grad):
        assert torch.isfinite(grad).all()


def test_half_precision_inputs_are_evaluated_in_float32() -> None:
    x = torch.tensor([300.0, -300.0, 1.5], dtype=torch.float16)  # x^5 overflows float16
    out = Rational("gelu")(x)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_gradcheck_float64() -> None:
    torch.manual_seed(0)
    act = Rational("gelu").double()
    with torch.no_grad():
        act.denominator.add_(torch.tensor([0.3, -0.2, 0.1, 0.05], dtype=torch.float64))  # away from |b| = 0
    x = (torch.rand(12, dtype=torch.float64) * 4 + 0.1) * torch.tensor([1.0, -1.0]).repeat(6).double()
    x.requires_grad_()

    def fn(inp: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(act, {"numerator": a, "denominator": b}, (inp,))

    a = act.numerator.detach().clone().requires_grad_()
    b = act.denominator.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(fn, (x, a, b))


def test_zero_denominator_still_trains() -> None:
    act = Rational("identity")
    act(torch.linspace(-2, 2, 9)).pow(2).sum().backward()
    assert (act.denominator.grad != 0).all()


def test_pfeiffer_with_rational_activation_on_tiny_bert() -> None:
    model = AdaptedModel(tiny_model("bert"))
    model.add_adapter("r", PfeifferConfig(activation="rational", init="near_identity"))
    state = model.adapter_state_dict("r")
    assert state["layers.0.ffn_output.bottleneck.act.numerator"].shape == (6,)
    assert state["layers.1.ffn_output.bottleneck.act.denominator"].shape == (4,)
    model.train()
    model(**tiny_batch(num_labels=2)).loss.backward()
    params = model.adapter_parameters("r")
    for key in ("layers.0.ffn_output.bottleneck.act.numerator", "layers.1.ffn_output.bottleneck.act.denominator"):
        assert params[key].grad is not None and torch.isfinite(params[key].grad).all()
    assert params["layers.0.ffn_output.bottleneck.act.numerator"].grad.abs().sum() > 0
