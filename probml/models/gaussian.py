r"""Bayesian model of private covariance measurements (free post-processing in privacy).

.. math::
    L_\Omega \sim \mathrm{LKJCholesky}(d, \eta), \quad s_i \sim \mathrm{HalfNormal}(\kappa_i),
    \quad \Sigma = \mathrm{diag}(s) L_\Omega L_\Omega^\top \mathrm{diag}(s),

    y_e \sim \mathcal N\big(\Sigma_e,\ \sigma_e^2 + v_e(\Sigma)\big), \qquad
    v_{ij}(\Sigma) = (\Sigma_{ii}\Sigma_{jj} + \Sigma_{ij}^2) / n,

where :math:`\sigma_e` is the privacy noise of measurement :math:`e` and :math:`v_e` the
sampling variance of a Gaussian second moment. Any prior over :math:`\Sigma` can replace the
default (pass ``prior`` with event shape ``(d, d)``).
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
            (``d`` or a number).
        eta: LKJ concentration.
        prior: optional user prior over ``Sigma`` (event shape ``(d, d)``), replacing the
            LKJ x HalfNormal default; its samples must be positive definite.

    Returns:
        ``Sigma`` (``d x d``), also recorded as the deterministic site ``"Sigma"``.
    """
    dtype = noise_scales.dtype
    if prior is None:
        kappa = torch.as_tensor(scale_prior, dtype=dtype).expand(dim)
        L = pyro.sample("L_omega", dist.LKJCholesky(dim, torch.tensor(eta, dtype=dtype)))
        s = pyro.sample("scales", dist.HalfNormal(kappa).to_event(1))
        Lc = s.unsqueeze(-1) * L
        Sigma = pyro.deterministic("Sigma", Lc @ Lc.transpose(-1, -2))
    else:
        Sigma = pyro.deterministic("Sigma", pyro.sample("Sigma_raw", prior))
    i, j = entries[:, 0], entries[:, 1]
    mean = Sigma[..., i, j]
    samp_var = (Sigma[..., i, i] * Sigma[..., j, j] + mean**2) / n
    with pyro.plate("measurements", entries.shape[0]):
        pyro.sample("y", dist.Normal(mean, (noise_scales**2 + samp_var).sqrt()), obs=values)
    return Sigma
