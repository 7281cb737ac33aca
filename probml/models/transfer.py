r"""DRUM's data model: a source with :math:`(Y, X, A)` and a target with :math:`X` only.

.. math::
    X \sim p_D(x), \quad A \mid X \sim p_D(a \mid x), \quad
    Y \mid X, A \sim \mathrm{Bernoulli}(\mu(X, A)), \qquad D \in \{S, T\},

with :math:`\mu` shared (:math:`p_T(y \mid x, a) = p_S(y \mid x, a)`), :math:`p_T(x)`
observed, and :math:`p_T(a \mid x)` unknown: ``A`` is structurally missing in the target.

* :func:`transfer_model`: the Pyro model of both samples (for users who want to put priors on
  the pieces), and :func:`tilted_model`: the exponentially tilted model whose ELBO with a
  generator as guide is DRUM's penalised inner objective (up to the factor ``lambda``).
* :class:`BinaryShiftProblem`: the known-answer case (binary ``A`` with constant
  :math:`P_S(A = 1 \mid x) = p`).
* :class:`ContinuousShiftSimulation`: the spec's continuous design with a grid of target
  shifts :math:`A \mid X \sim \mathcal N(BX + \delta, \tau^2 I)` and the exact (Monte Carlo
  with fixed draws) target Brier risk of any predictor.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch

from probml.utils import check_int, check_interval, check_positive, make_generator

__all__ = [
    "transfer_model",
    "tilted_model",
    "brier_risk",
    "log_risk",
    "BinaryShiftProblem",
    "ContinuousShiftSimulation",
]


def brier_risk(f: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    r"""Conditional Brier risk :math:`E[(f - Y)^2 \mid \mu] = (f - \mu)^2 + \mu(1 - \mu)`."""
    return (f - mu).pow(2) + mu * (1 - mu)


def log_risk(f: torch.Tensor, mu: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    r"""Conditional log loss :math:`-\mu \log f - (1 - \mu)\log(1 - f)`, with ``f`` clipped
    to ``[eps, 1 - eps]`` first (a forecast of exactly 0 or 1 would cost an infinite loss
    wherever :math:`\mu` is not 0 or 1)."""
    f = f.clamp(eps, 1 - eps)
    return -(mu * f.log() + (1 - mu) * (1 - f).log())


def transfer_model(
    x_source: torch.Tensor,
    x_target: torch.Tensor,
    source_conditional: Callable[[torch.Tensor], dist.Distribution],
    target_conditional: Callable[[torch.Tensor], dist.Distribution],
    outcome: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    a_source: torch.Tensor | None = None,
    y_source: torch.Tensor | None = None,
) -> None:
    """Pyro model of the two samples: sites ``a_source``, ``y_source`` (observed when given)
    and ``a_target`` (latent: never recorded). The conditionals return distributions with
    event shape ``(d_a,)`` (or scalar for binary ``A``)."""
    with pyro.plate("source", x_source.shape[0]):
        a = pyro.sample("a_source", source_conditional(x_source), obs=a_source)
        pyro.sample("y_source", dist.Bernoulli(probs=outcome(x_source, a)), obs=y_source)
    with pyro.plate("target", x_target.shape[0]):
        pyro.sample("a_target", target_conditional(x_target))


def tilted_model(
    x: torch.Tensor,
    source_conditional: Callable[[torch.Tensor], dist.Distribution],
    risk: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    lam: float,
) -> None:
    r"""The tilted model :math:`a \sim P_S(\cdot \mid x)`, factor :math:`\exp(r(x, a)/\lambda)`.

    For a guide :math:`q(a \mid x)`, :math:`\mathrm{ELBO} = \frac1\lambda\big(\mathbb E_q r -
    \lambda\, \mathrm{KL}(q \,\|\, P_S)\big)`: maximising it with SVI is DRUM's penalised inner
    maximisation, and its optimum is the tilt :math:`q^* \propto P_S e^{r/\lambda}`.
    """
    with pyro.plate("x", x.shape[0]):
        a = pyro.sample("a", source_conditional(x))
        pyro.factor("risk", risk(x, a) / lam)


@dataclass
class BinaryShiftProblem:
    """Binary ``A`` with :math:`P_S(A=1 \\mid x) = p` and :math:`\\mu(x, a) = \\mu_a`.

    ``X`` is one standard-normal column that affects nothing (so every ``x`` has the same
    minimax answer); the target ``X`` has the same law.
    """

    p: float = 0.15
    mu: tuple[float, float] = (0.2, 0.7)

    def __post_init__(self):
        check_interval("p", self.p)  # also rejects NaN
        if len(self.mu) != 2 or not all(0 <= m <= 1 for m in self.mu):
            raise ValueError(
                f"mu must be two outcome probabilities (a = 0, a = 1), got {self.mu!r}"
            )

    def outcome(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The true :math:`\\mu(x, a) = P(Y = 1 \\mid x, a)`, ``mu[a]`` whatever ``x``:
        ``x`` is ``... x 1``, ``a`` is ``...`` (or ``... x 1``); shape ``...``."""
        a = a.reshape(x.shape[:-1]).to(x)
        return self.mu[0] + (self.mu[1] - self.mu[0]) * a

    def sample(self, n: int, generator: torch.Generator | int | None = 0):
        """``(X_source n x 1, A_source n, y_source n, X_target n x 1)``."""
        n = check_int("n", n)
        gen = make_generator(generator, name="generator")
        x = torch.randn(n, 1, generator=gen)
        a = (torch.rand(n, generator=gen) < self.p).float()
        y = (torch.rand(n, generator=gen) < self.outcome(x, a)).float()
        xt = torch.randn(n, 1, generator=gen)
        return x, a, y, xt


def _float_pair(name: str, v) -> tuple[float, float]:
    """``v`` as two finite floats; errors name ``name``."""
    try:
        a, b = (float(x) for x in v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be two numbers, got {v!r}") from None
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"{name} must be finite, got {v!r}")
    return a, b


@dataclass
class ContinuousShiftSimulation:
    r"""The spec's continuous simulation, :math:`X, A \in \mathbb R^2`.

    Source: :math:`X \sim \mathcal N(0, I)`, :math:`A \mid X \sim \mathcal N(BX, I)`.
    Target: :math:`X \sim \mathcal N(m_T, I)`, :math:`A \mid X \sim \mathcal N(BX + \delta,
    \tau^2 I)` over a grid of :math:`\|\delta\| \le 1.5`, :math:`\tau \in \{0.5, 1, 2\}`
    (radii ``deltas``, each non-zero one in eight directions 45 degrees apart, times
    ``taus``: 51 shifts by default).
    :math:`\mu(x, a) = \sigma(\eta)` with :math:`\eta = -0.5 + 0.5 x_1 - 0.5 x_2 + 0.8 a_1 -
    0.5 a_2 + 0.8 x_1 a_1 - 0.4 a_2^2` (the ``X*A`` and ``A^2`` terms make the minimax differ
    from the plug-in).
    """

    target_x_shift: tuple[float, float] = (0.5, 0.0)
    B: tuple[tuple[float, float], tuple[float, float]] = ((0.8, 0.0), (0.3, 0.6))
    deltas: tuple[float, ...] = (0.0, 0.75, 1.5)
    taus: tuple[float, ...] = (0.5, 1.0, 2.0)
    grid: list[tuple[tuple[float, float], float]] = field(init=False)

    def __post_init__(self):
        self.target_x_shift = _float_pair("target_x_shift", self.target_x_shift)
        B = tuple(tuple(row) for row in self.B)
        if len(B) != 2 or any(len(row) != 2 for row in B):
            raise ValueError(f"B must be a 2 x 2 matrix (two rows of two), got {self.B!r}")
        self.B = (_float_pair("B[0]", B[0]), _float_pair("B[1]", B[1]))
        self.deltas, self.taus = tuple(self.deltas), tuple(self.taus)
        if not self.deltas or not all(math.isfinite(r) and r >= 0 for r in self.deltas):
            raise ValueError(f"deltas must be finite radii >= 0 (at least one), got {self.deltas}")
        if not self.taus or not all(math.isfinite(t) and t > 0 for t in self.taus):
            raise ValueError(f"taus must be finite scales > 0 (at least one), got {self.taus}")
        grid = []
        for r, tau in itertools.product(self.deltas, self.taus):
            angles = [0.0] if r == 0 else [k * math.pi / 4 for k in range(8)]
            for th in angles:
                grid.append(((r * math.cos(th), r * math.sin(th)), tau))
        self.grid = grid

    def outcome(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The true :math:`\\mu(x, a)` (logistic with an interaction and a quadratic term):
        ``x`` and ``a`` are ``... x 2``; shape ``...``."""
        eta = (
            -0.5 + 0.5 * x[..., 0] - 0.5 * x[..., 1] + 0.8 * a[..., 0] - 0.5 * a[..., 1]
            + 0.8 * x[..., 0] * a[..., 0] - 0.4 * a[..., 1] ** 2
        )  # fmt: skip
        return torch.sigmoid(eta)

    def _Bt(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.B, dtype=x.dtype, device=x.device).T

    def sample_source(self, n: int, generator: torch.Generator | int | None = 0):
        """``(X n x 2, A n x 2, y n)`` from the source."""
        n = check_int("n", n)
        gen = make_generator(generator, name="generator")
        x = torch.randn(n, 2, generator=gen)
        a = x @ self._Bt(x) + torch.randn(n, 2, generator=gen)
        y = (torch.rand(n, generator=gen) < self.outcome(x, a)).float()
        return x, a, y

    def sample_target_x(self, n: int, generator: torch.Generator | int | None = 1):
        """``n x 2`` target covariates: standard normal shifted by ``target_x_shift`` (``A``
        and ``Y`` are not observed in the target)."""
        n = check_int("n", n)
        gen = make_generator(generator, name="generator")
        return torch.randn(n, 2, generator=gen) + torch.tensor(self.target_x_shift)

    def target_risk(
        self,
        predict: Callable[[torch.Tensor], torch.Tensor],
        delta: tuple[float, float],
        tau: float,
        n: int = 20000,
        generator: torch.Generator | int | None = 123,
    ) -> float:
        """Target Brier risk of ``predict`` (``n x 2 -> n`` probabilities) under one shift,
        integrating ``Y`` exactly and ``(X, A)`` by ``n`` fixed draws (common random numbers
        across predictors)."""
        n, tau = check_int("n", n), check_positive("tau", tau)
        gen = make_generator(generator, name="generator")
        x = self.sample_target_x(n, gen)
        a = x @ self._Bt(x) + torch.tensor(delta) + tau * torch.randn(n, 2, generator=gen)
        with torch.no_grad():
            f = predict(x).reshape(-1).to(x)
        return float(brier_risk(f, self.outcome(x, a)).mean())

    def worst_case_risk(self, predict, n: int = 20000) -> tuple[float, dict]:
        """Max target Brier over the shift grid, and every grid point's risk."""
        risks = {(d, t): self.target_risk(predict, d, t, n) for d, t in self.grid}
        return max(risks.values()), risks

    def summary(self, predict, n: int = 20000) -> dict:
        """``worst`` (max over the grid), ``mean`` (grid average) and ``no_shift`` (delta = 0,
        tau = 1: the source's law of ``A`` given ``X``) target Brier risks of ``predict``, plus
        ``grid`` (every point's risk). ``no_shift`` is computed on its own when the grid lacks
        that point (``deltas`` without 0 or ``taus`` without 1); it never enters ``worst``
        or ``mean`` then."""
        worst, risks = self.worst_case_risk(predict, n)
        key = ((0.0, 0.0), 1.0)
        no_shift = risks[key] if key in risks else self.target_risk(predict, *key, n)
        return {
            "worst": worst,
            "mean": float(sum(risks.values()) / len(risks)),
            "no_shift": no_shift,
            "grid": risks,
        }

    def oracle_q_prediction(self, x: torch.Tensor, a_draws: torch.Tensor) -> torch.Tensor:
        """``E_Q[mu(x, A)]`` from draws ``S x n x 2`` of an adversary (the Brier-optimal
        response to ``Q``)."""
        return self.outcome(x.expand_as(a_draws), a_draws).mean(0)
