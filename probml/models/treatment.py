r"""Bayesian Q-model for ratio treatment effects (Pyro).

Two logistic models on standardised covariates :math:`\tilde x = (1, (x - m)/s)`:

.. math::
    \beta_q \sim p(\beta_q), \quad W_i \mid X_i, Y_i = 1 \sim \mathrm{Bern}(\sigma(\tilde x_i^\top\beta_q))
    \quad\text{(converters only)};

    \beta_e \sim p(\beta_e), \quad W_i \mid X_i \sim \mathrm{Bern}(\sigma(\tilde x_i^\top\beta_e))
    \quad\text{(all units; omitted when the RCT propensity } e_0 \text{ is known)},

so that :math:`\log\tau(x) = \tilde x^\top\beta_q - \mathrm{logit}\, e(x)` (the Q-Learner
identity). With ``X_new`` given, the deterministic site ``"log_tau"`` holds
:math:`\log\tau` at those points, for :class:`pyro.infer.Predictive` bands.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch

from probml.utils import check_prior, plate_matvec

__all__ = ["ratio_q_model", "default_coef_prior"]


def default_coef_prior(p: int, scale: float = 2.5, dtype=torch.float64, device=None):
    """Weakly informative ``Normal(0, scale)`` prior on ``p`` logistic coefficients
    (Gelman et al.'s default for standardised inputs)."""
    return dist.Normal(torch.zeros(p, dtype=dtype, device=device), scale).to_event(1)


def ratio_q_model(
    Xq: torch.Tensor,
    wq: torch.Tensor,
    Xe: torch.Tensor | None = None,
    we: torch.Tensor | None = None,
    e0: float | None = None,
    prior_q: dist.Distribution | None = None,
    prior_e: dist.Distribution | None = None,
    X_new: torch.Tensor | None = None,
) -> None:
    """The Pyro model.

    Args:
        Xq: ``n_1 x p`` design rows (with intercept column) of the converters (``Y = 1``).
        wq: ``n_1`` treatment labels of the converters.
        Xe, we: ``n x p`` design and ``n`` labels of all units (for :math:`e`); omit when
            ``e0`` is given.
        e0: known RCT propensity in (0, 1).
        prior_q, prior_e: priors over the ``p`` coefficients (event shape ``(p,)``); default
            :func:`default_coef_prior`.
        X_new: ``m x p`` design rows at which ``"log_tau"`` is recorded.

    The model vectorises under outer plates (``Predictive(parallel=True)``, vectorised ELBO
    particles): the coefficients are then ``S x 1 x p``.
    """
    if e0 is not None and not 0.0 < float(e0) < 1.0:  # logit e0 below: 0 and 1 have none
        raise ValueError(f"e0 must be a propensity in (0, 1), got {e0!r}")
    p = Xq.shape[-1]
    prior_q = (
        check_prior("prior_q", prior_q, (p,), Xq.dtype, Xq.device)
        if prior_q is not None
        else default_coef_prior(p, dtype=Xq.dtype, device=Xq.device)
    )
    beta_q = pyro.sample("beta_q", prior_q)
    with pyro.plate("converters", Xq.shape[0]):
        pyro.sample("w_q", dist.Bernoulli(logits=plate_matvec(Xq, beta_q)), obs=wq)
    if e0 is None:
        if Xe is None or we is None:
            raise ValueError("Xe and we are required when e0 is not given")
        prior_e = (
            check_prior("prior_e", prior_e, (p,), Xe.dtype, Xe.device)
            if prior_e is not None
            else default_coef_prior(p, dtype=Xe.dtype, device=Xe.device)
        )
        beta_e = pyro.sample("beta_e", prior_e)
        with pyro.plate("units", Xe.shape[0]):
            pyro.sample("w_e", dist.Bernoulli(logits=plate_matvec(Xe, beta_e)), obs=we)
    if X_new is not None:
        logit_e = plate_matvec(X_new, beta_e) if e0 is None else math.log(e0 / (1.0 - e0))
        pyro.deterministic("log_tau", plate_matvec(X_new, beta_q) - logit_e)
