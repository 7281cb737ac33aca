r"""Bayesian model of private covariance measurements (free post-processing in privacy).

.. math::
    L_\Omega \sim \mathrm{LKJCholesky}(d, \eta), \quad s_i \sim \mathrm{HalfNormal}(\kappa_i),
    \quad \Sigma = \mathrm{diag}(s) L_\Omega L_\Omega^\top \mathrm{diag}(s),

    y_e \sim \mathcal N\big(\Sigma_e,\ \sigma_e^2 + v_e(\Sigma)\big), \qquad
    v_{ij}(\Sigma) = (\Sigma_{ii}\Sigma_{jj} + \Sigma_{ij}^2) / n,

where :math:`\sigma_e` is the privacy noise of measurement :math:`e` and :math:`v_e` the
sampling variance of a Gaussian second moment. User priors: any positive distribution over
the ``d`` scales (``scale_prior``), or a prior over the Cholesky factor of :math:`\Sigma`
itself (``prior``, support ``lower_cholesky``) replacing the LKJ x scales default.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

__all__ = ["private_covariance_model"]


def private_covariance_model(
    entries: torch.Tensor,
    values: torch.Tensor | None,
    noise_scales: torch.Tensor,
    dim: int,
    n: int,
    scale_prior: torch.Tensor | float = 1.0,
    eta: float = 1.0,
    prior: dist.Distribution | None = None,
) -> torch.Tensor:
    """Pyro model of noisy measured entries given the covariance.

    Args:
        entries: ``m x 2`` long tensor of measured ``(i, j)``.
        values: ``m`` noisy measurements (``None`` to simulate).
        noise_scales: ``m`` privacy-noise standard deviations.
        dim: ``d``; n: number of data rows (public).
        scale_prior: HalfNormal scale(s) ``kappa`` of the marginal standard deviations
            (``d`` or a number), or any distribution over the ``d`` positive scales
            (event shape ``(d,)``), e.g. ``HalfCauchy(...).to_event(1)``.
        eta: LKJ concentration.
        prior: optional user prior over the Cholesky factor of ``Sigma`` (event shape
            ``(d, d)``, support ``lower_cholesky``), replacing the LKJ x scales default.

    Returns:
        ``Sigma`` (``d x d``), also recorded as the deterministic site ``"Sigma"``.
    """
    dtype = noise_scales.dtype
    if prior is None:
        if isinstance(scale_prior, dist.Distribution):
            scale_dist = scale_prior
        else:
            kappa = torch.as_tensor(scale_prior, dtype=dtype).expand(dim)
            scale_dist = dist.HalfNormal(kappa).to_event(1)
        L = pyro.sample("L_omega", dist.LKJCholesky(dim, torch.tensor(eta, dtype=dtype)))
        s = pyro.sample("scales", scale_dist)
        Lc = s.unsqueeze(-1) * L
    else:
        Lc = pyro.sample("L_sigma", prior)
    Sigma = pyro.deterministic("Sigma", Lc @ Lc.transpose(-1, -2))
    i, j = entries[:, 0], entries[:, 1]
    mean = Sigma[..., i, j]
    samp_var = (Sigma[..., i, i] * Sigma[..., j, j] + mean**2) / n
    with pyro.plate("measurements", entries.shape[0]):
        pyro.sample("y", dist.Normal(mean, (noise_scales**2 + samp_var).sqrt()), obs=values)
    return Sigma
