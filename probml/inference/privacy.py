r"""Differential-privacy accounting and mechanisms in :math:`\rho`-zCDP.

* A Gaussian release of a statistic with L2 sensitivity :math:`\Delta` and noise
  :math:`\sigma` is :math:`\rho = \Delta^2 / (2\sigma^2)`-zCDP.
* The exponential mechanism at :math:`\varepsilon_0` is :math:`\varepsilon_0`-bounded-range,
  hence :math:`\varepsilon_0^2/8`-zCDP (Cesar & Rogers 2021). Permute-and-flip is
  :math:`\varepsilon_0`-DP; we charge it the pure-DP bound :math:`\varepsilon_0^2/2`
  (conservative: no bounded-range result is used for it).
* zCDP composes additively; :math:`\rho`-zCDP is :math:`(\alpha, \alpha\rho)`-RDP for all
  :math:`\alpha > 1`, and RDP converts to :math:`(\varepsilon, \delta)`-DP by
  :math:`\varepsilon = \min_{\alpha>1} \alpha\rho + \frac{\log(1/\delta) - \log\alpha}{\alpha-1}
  + \log(1 - 1/\alpha)` (Balle et al. 2020, Thm. 21; the same formula Opacus applies on its grid
  of orders, here minimised over continuous :math:`\alpha`).

A :class:`PrivacyBudget` records every charge and raises :class:`PrivacyBudgetExceeded`
*before* a charge that would take the total past the budget, so no noisy value is ever
computed beyond it.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import brentq, minimize_scalar

from probml.utils import check_interval, check_positive, make_generator, numpy_generator

__all__ = [
    "PrivacyBudgetExceeded",
    "PrivacyBudget",
    "zcdp_to_dp",
    "dp_to_zcdp",
    "gaussian_mechanism",
    "exponential_mechanism",
    "permute_and_flip",
    "selection_cost",
]


class PrivacyBudgetExceeded(RuntimeError):
    """A charge would take the privacy spent past the budget; nothing was released."""


def zcdp_to_dp(rho: float, delta: float) -> float:
    r"""The smallest :math:`\varepsilon \ge 0` such that :math:`\rho`-zCDP implies
    :math:`(\varepsilon, \delta)`-DP under the RDP conversion above.

    For a tiny :math:`\rho` (e.g. below about :math:`10^{-9}` at :math:`\delta = 10^{-2}`) the
    formula's minimum dips below zero, towards :math:`\log(1-\delta)`; such a statement is
    valid but says nothing a user can read as a privacy loss, so the result is floored at 0
    (the weaker :math:`(0, \delta)` statement, which still holds)."""
    rho = check_positive("rho", rho, strict=False)
    delta = check_interval("delta", delta)
    if rho == 0.0:
        return 0.0
    log_inv_delta = -math.log(delta)

    def eps(a: float) -> float:
        return a * rho + (log_inv_delta - math.log(a)) / (a - 1.0) + math.log1p(-1.0 / a)

    # eps(alpha) is unimodal on (1, inf); bracket the minimiser near 1 + sqrt(log(1/delta)/rho)
    guess = 1.0 + math.sqrt(log_inv_delta / rho)
    res = minimize_scalar(
        eps, bounds=(1.0 + 1e-9, max(4.0 * guess, 10.0)), method="bounded", options={"xatol": 1e-10}
    )
    return max(0.0, float(min(res.fun, eps(guess))))


def dp_to_zcdp(epsilon: float, delta: float) -> float:
    r"""The largest :math:`\rho` whose zCDP guarantee implies :math:`(\varepsilon, \delta)`-DP
    (inverse of :func:`zcdp_to_dp`, solved by bisection)."""
    epsilon = check_positive("epsilon", epsilon)
    delta = check_interval("delta", delta)
    hi = epsilon  # rho = eps always gives eps(rho) > eps
    while zcdp_to_dp(hi, delta) < epsilon:
        hi *= 2.0
    rho = brentq(lambda r: zcdp_to_dp(r, delta) - epsilon, 1e-300, hi, xtol=1e-15, rtol=1e-12)
    # conservative side of the root
    while zcdp_to_dp(rho, delta) > epsilon:
        rho *= 1.0 - 1e-12
    return float(rho)


@dataclass
class PrivacyBudget:
    """A zCDP budget that can never be overspent.

    Args:
        rho: total budget :math:`\\rho > 0`.

    Attributes:
        charges: ``(label, rho)`` for every charge, in order.
    """

    rho: float
    charges: list[tuple[str, float]] = field(default_factory=list)

    def __post_init__(self):
        self.rho = check_positive("rho", self.rho)

    @classmethod
    def from_dp(cls, epsilon: float, delta: float) -> PrivacyBudget:
        """The zCDP budget equivalent to :math:`(\\varepsilon, \\delta)`-DP."""
        return cls(dp_to_zcdp(epsilon, delta))

    @property
    def spent(self) -> float:
        return math.fsum(r for _, r in self.charges)

    @property
    def remaining(self) -> float:
        return max(self.rho - self.spent, 0.0)

    def charge(self, rho: float, label: str = "") -> None:
        """Record a charge; raises :class:`PrivacyBudgetExceeded` (recording nothing) if
        ``spent + rho`` would exceed the budget."""
        rho = check_positive("rho", rho)
        if math.fsum([self.spent, rho]) > self.rho:
            raise PrivacyBudgetExceeded(
                f"charge {label!r} of rho={rho:.6g} exceeds the remaining budget "
                f"{self.remaining:.6g} (total {self.rho:.6g})"
            )
        self.charges.append((label, rho))

    def epsilon(self, delta: float) -> float:
        """:math:`\\varepsilon` of the spent budget at ``delta``."""
        return zcdp_to_dp(self.spent, delta)


def gaussian_mechanism(
    value: torch.Tensor,
    sensitivity: float,
    rho: float,
    budget: PrivacyBudget | None = None,
    generator: torch.Generator | int | None = None,
    label: str = "gaussian",
) -> tuple[torch.Tensor, float]:
    r"""Release ``value + N(0, sigma^2 I)`` with :math:`\sigma = \Delta/\sqrt{2\rho}`.

    Args:
        value: the exact statistic (any shape); ``sensitivity`` is its L2 sensitivity.
        rho: zCDP cost of this release; charged to ``budget`` *before* noise is drawn.
        generator: a seed or generator (reproducible noise, for research runs); ``None``
            seeds from the operating system, not from torch's global generator, whose seed
            is the same in every fresh process.

    Returns:
        ``(noisy value, sigma)``.
    """
    sensitivity = check_positive("sensitivity", sensitivity)
    rho = check_positive("rho", rho)
    if generator is None:  # fresh noise: a 62-bit seed from the OS (beyond check_seed's range)
        gen = torch.Generator(device=value.device)
        gen.manual_seed(secrets.randbits(62))
    else:  # before the charge: a bad seed spent the budget and released nothing
        gen = make_generator(generator, name="generator", device=value.device)
    if budget is not None:
        budget.charge(rho, label)
    sigma = sensitivity / math.sqrt(2.0 * rho)
    noise = torch.randn(value.shape, generator=gen, dtype=value.dtype, device=value.device)
    return value + sigma * noise, sigma


def selection_cost(epsilon: float, method: str = "exponential") -> float:
    """zCDP cost of one selection at ``epsilon`` (see the module docstring)."""
    epsilon = check_positive("epsilon", epsilon)
    if method == "exponential":
        return epsilon**2 / 8.0
    if method == "permute_and_flip":
        return epsilon**2 / 2.0
    raise ValueError(f"method must be 'exponential' or 'permute_and_flip', got {method!r}")


def _scores(scores) -> np.ndarray:
    q = np.asarray(scores, dtype=float).reshape(-1)
    if q.size == 0 or not np.isfinite(q).all():
        raise ValueError("scores must be a non-empty finite vector")
    return q


def exponential_mechanism(
    scores,
    epsilon: float,
    sensitivity: float = 1.0,
    budget: PrivacyBudget | None = None,
    generator: np.random.Generator | int | None = None,
    label: str = "exponential",
) -> int:
    r"""Pick index :math:`i` with probability :math:`\propto \exp(\varepsilon q_i / (2\Delta))`.

    Charged :math:`\varepsilon^2/8` to ``budget`` before sampling."""
    q = _scores(scores)
    epsilon = check_positive("epsilon", epsilon)
    sensitivity = check_positive("sensitivity", sensitivity)
    rng = numpy_generator(generator, "generator")  # before the charge, as the Gaussian's
    if budget is not None:
        budget.charge(selection_cost(epsilon, "exponential"), label)
    logits = epsilon * q / (2.0 * sensitivity)
    # Gumbel-max: argmax(logits + Gumbel) is an exact draw from the softmax
    return int(np.argmax(logits + rng.gumbel(size=q.size)))


def permute_and_flip(
    scores,
    epsilon: float,
    sensitivity: float = 1.0,
    budget: PrivacyBudget | None = None,
    generator: np.random.Generator | int | None = None,
    label: str = "permute_and_flip",
) -> int:
    r"""Permute-and-flip (McKenna & Sheldon 2020): visit candidates in random order, accept
    :math:`i` with probability :math:`\exp(\varepsilon (q_i - q_{max}) / (2\Delta))`.

    Vectorised: one permutation and one uniform per candidate; the first acceptance in
    permutation order is returned (the maximiser always accepts). Charged
    :math:`\varepsilon^2/2`."""
    q = _scores(scores)
    epsilon = check_positive("epsilon", epsilon)
    sensitivity = check_positive("sensitivity", sensitivity)
    rng = numpy_generator(generator, "generator")  # before the charge, as the Gaussian's
    if budget is not None:
        budget.charge(selection_cost(epsilon, "permute_and_flip"), label)
    order = rng.permutation(q.size)
    p = np.exp(epsilon * (q[order] - q.max()) / (2.0 * sensitivity))
    accepted = rng.uniform(size=q.size) < p
    accepted |= q[order] == q.max()
    return int(order[np.argmax(accepted)])
