r"""Bayesian outcome model for fair regression (Pyro).

.. math:: \beta \sim \mathcal N(0, s_\beta^2 I),\ \sigma \sim \mathrm{HalfNormal}(s_\sigma),\
          Y_i \mid X_i, S_i \sim \mathcal N(\beta^\top z_i, \sigma^2),

with :math:`z = (1, x, \text{one-hot}(s))` (aware) or :math:`(1, x)` (unaware). Each posterior
draw of :math:`\eta` is post-processed by the same OT maps as the point estimate
(:func:`probml.inference.transport.posterior_fair_predictions`), giving posterior bands on the
fair predictions and on their unfairness. Custom priors: ``coef_prior`` (event shape ``(p,)``).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from probml.utils import check_prior, plate_matvec

__all__ = ["linear_outcome_model"]


def linear_outcome_model(
    Z: torch.Tensor,
    y: torch.Tensor | None = None,
    coef_scale: float = 5.0,
    noise_scale: float = 2.0,
    coef_prior: dist.Distribution | None = None,
    Z_new: torch.Tensor | None = None,
) -> torch.Tensor:
    """Args:
    Z: ``n x p`` design (intercept and, when aware, the one-hot sensitive columns included).
    y: ``n`` outcomes; coef_prior: optional prior over the ``p`` coefficients.
    Z_new: ``m x p`` rows at which ``"eta"`` (the regression function) is recorded.

    The model vectorises under outer plates (``Predictive(parallel=True)``, vectorised ELBO
    particles): ``beta`` is then ``S x 1 x p`` and ``y`` ``S x n``.
    """
    p = Z.shape[-1]
    prior = (
        check_prior("coef_prior", coef_prior, (p,), Z.dtype, Z.device)
        if coef_prior is not None
        else dist.Normal(Z.new_zeros(p), coef_scale).to_event(1)
    )
    beta = pyro.sample("beta", prior)
    sigma = pyro.sample("sigma", dist.HalfNormal(Z.new_tensor(noise_scale)))
    with pyro.plate("data", Z.shape[0]):
        out = pyro.sample("y", dist.Normal(plate_matvec(Z, beta), sigma), obs=y)
    if Z_new is not None:
        pyro.deterministic("eta", plate_matvec(Z_new, beta))
    return out
