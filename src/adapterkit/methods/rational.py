"""Learnable rational activations (Molina et al. 2020, "safe" Padé units), as used by Adaptable Adapters.

``R(x) = P(x) / Q(x)`` with ``P(x) = a_0 + a_1 x + ... + a_5 x^5`` and
``Q(x) = 1 + |b_1 x| + |b_2 x^2| + |b_3 x^3| + |b_4 x^4|`` (the safe form: ``Q >= 1``, so no poles).
One :class:`Rational` per adapter layer; its ten coefficients are scalars shared by every bottleneck
neuron. Registered activations: ``rational`` (identity initialisation, the default of ``adaptable``)
and ``rational_<init>`` for every name in :data:`RATIONAL_INITS`.

Numerical safety: the input is clamped to ``[-bound, bound]`` (default 1e3) before evaluation, so
``|x| <= 1e3`` is evaluated exactly and larger inputs get ``R(±bound)`` with zero input gradient.
Real bottleneck pre-activations are O(10); the clamp only keeps ``x^5`` (and the coefficient
gradients, which grow like ``|x|^9 / Q^2``) far from float32 overflow. Half-precision inputs are
evaluated in float32 and cast back.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import register_activation

NUMERATOR_DEGREE = 5
DENOMINATOR_DEGREE = 4
FIT_RANGE = (-3.0, 3.0)
"""Interval on which the ``relu``/``gelu``/... initialisations are fitted."""

_TARGETS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "swish": F.silu,
    "silu": F.silu,
}
RATIONAL_INITS: tuple[str, ...] = ("identity", "one", *_TARGETS)
"""Initialisations: identity (R(x) = x), one (R(x) = 1, the authors' runs) and least-squares fits."""

Coefficients = tuple[tuple[float, ...], tuple[float, ...]]


def _safe_abs(b: torch.Tensor) -> torch.Tensor:
    """``|b|`` whose derivative at 0 is +1 (not 0), so zero-initialised denominators still train."""
    return torch.where(b >= 0, b, -b)


def rational(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """Evaluate the safe rational function by Horner's rule (elementwise, no clamping, no dtype change)."""
    a = numerator
    b = _safe_abs(denominator)
    p = torch.addcmul(a[4], a[5], x)
    for k in range(NUMERATOR_DEGREE - 2, -1, -1):
        p = torch.addcmul(a[k], p, x)
    ax = x.abs()
    q = torch.addcmul(b[2], b[3], ax)
    for k in range(DENOMINATOR_DEGREE - 3, -1, -1):
        q = torch.addcmul(b[k], q, ax)
    q = torch.addcmul(torch.ones((), dtype=q.dtype, device=q.device), q, ax)
    return p / q


@functools.cache  # lru_cache(maxsize=None): each fit runs once per process
def rational_coefficients(init: str) -> Coefficients:
    """(numerator a_0..a_5, denominator b_1..b_4) for ``init``; fits run once per process (cached).

    Fits: a Sanathanan-Koerner iteration of linearised non-negative least squares (``P(x) - f(x)
    sum_k c_k |x|^k = f(x)``, ``c >= 0``, reweighted by ``1 / Q``) on 601 points of [-3, 3], then
    L-BFGS in float64 on the mean fourth power of the error of the safe form. Deterministic; well
    under a second per name (~0.1 s for relu). Max abs errors on [-3, 3] of the float32 module: relu
    3.2e-2, gelu 2.5e-3, tanh 2.4e-6, sigmoid 1.8e-7, swish/silu 1.4e-6 (tests/methods/test_rational.py).
    """
    if init == "identity":
        return (0.0, 1.0, 0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0)
    if init == "one":
        return (1.0, 0.0, 0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0)
    if init not in _TARGETS:
        raise ConfigError(f"rational_init: unknown {init!r}; known: {list(RATIONAL_INITS)}")
    if init == "silu":
        return rational_coefficients("swish")
    return _fit(_TARGETS[init])


def _fit(target: Callable[[torch.Tensor], torch.Tensor], points: int = 601, reweights: int = 5,
         steps: int = 200) -> Coefficients:
    import numpy as np
    from scipy.optimize import nnls

    x = torch.linspace(*FIT_RANGE, points, dtype=torch.float64)
    y = target(x)
    xn, yn, ax = x.numpy(), y.numpy(), x.abs().numpy()
    powers = np.stack([xn**j for j in range(NUMERATOR_DEGREE + 1)], axis=1)
    cross = np.stack([-yn * ax**k for k in range(1, DENOMINATOR_DEGREE + 1)], axis=1)
    system = np.concatenate([powers, -powers, cross], axis=1)  # a = a+ - a-, c >= 0
    weights = np.ones_like(xn)
    for _ in range(reweights):
        solution, _ = nnls(system * weights[:, None], yn * weights, maxiter=50 * system.shape[1])
        a0 = solution[: NUMERATOR_DEGREE + 1] - solution[NUMERATOR_DEGREE + 1 : 2 * NUMERATOR_DEGREE + 2]
        c0 = solution[2 * NUMERATOR_DEGREE + 2 :]
        weights = 1.0 / (1.0 + sum(c0[k - 1] * ax**k for k in range(1, DENOMINATOR_DEGREE + 1)))
    a = torch.tensor(a0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(c0, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([a, b], lr=1.0, max_iter=steps, history_size=20, tolerance_grad=1e-14,
                                  tolerance_change=1e-16, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = (rational(x, a, b) - y).pow(4).mean()
        loss.backward()
        return loss

    start_error = (rational(x, a, b) - y).abs().max().item()
    best = (a.detach().clone(), b.detach().clone())
    optimizer.step(closure)
    with torch.no_grad():
        if (rational(x, a, b) - y).abs().max().item() < start_error:  # keep the refinement only if it helps
            best = (a.detach().clone(), b.detach().clone())
    return tuple(best[0].tolist()), tuple(best[1].abs().tolist())


class Rational(nn.Module):
    """``R(x) = P(x) / Q(x)`` with learnable ``numerator`` (a_0..a_5) and ``denominator`` (b_1..b_4)."""

    def __init__(self, init: str = "identity", bound: float = 1e3) -> None:
        super().__init__()
        if bound <= 0:
            raise ConfigError(f"bound: must be > 0, got {bound}")
        numerator, denominator = rational_coefficients(init)
        self.init = init
        self.bound = float(bound)
        self.numerator = nn.Parameter(torch.tensor(numerator, dtype=torch.float32))
        self.denominator = nn.Parameter(torch.tensor(denominator, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)
        xc = x.to(dtype).clamp(-self.bound, self.bound)
        out = rational(xc, self.numerator.to(dtype), self.denominator.to(dtype))
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"init={self.init!r}, bound={self.bound:g}"


def _factory(init: str) -> Callable[[int], nn.Module]:
    def make(dim: int) -> nn.Module:
        return Rational(init)

    return make


register_activation("rational", _factory("identity"))
for _init in RATIONAL_INITS:
    register_activation(f"rational_{_init}", _factory(_init))
