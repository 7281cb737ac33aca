r"""Conjugate Bayesian linear regression: the reference model for importance sampling.

.. math::
    w \sim \mathcal N(0, s_w^2 I_d), \qquad y_i \mid w \sim \mathcal N(x_i^\top w, s_y^2),

whose posterior is Gaussian with precision :math:`\Lambda = I/s_w^2 + X^\top X / s_y^2` and mean
:math:`\mu = \Lambda^{-1} X^\top y / s_y^2`. Used to check inference routines against the exact
answer.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from probml.utils import (
    check_finite,
    check_int,
    check_positive,
    check_prior,
    plate_matvec,
    shape_of,
)

__all__ = ["bayesian_linear_regression", "linear_regression_posterior", "simulate_linear_data"]


def bayesian_linear_regression(
    X: torch.Tensor,
    y: torch.Tensor | None = None,
    prior_scale: float = 1.0,
    noise_scale: float = 1.0,
    prior: dist.Distribution | None = None,
) -> torch.Tensor:
    """Pyro model with a latent site ``"w"`` and an observed site ``"y"``.

    Args:
        X: ``n x d`` design matrix.
        y: ``n`` observations (``None`` to sample them).
        prior_scale: standard deviation ``s_w`` of the default Gaussian prior on ``w``.
        noise_scale: observation noise standard deviation ``s_y``.
        prior: optional user prior on ``w`` with event shape ``(d,)`` replacing the default.

    Returns:
        The sampled or observed ``y`` (``batch_shape x n``; batch dims come from enclosing
        plates, e.g. a particle plate).
    """
    n, d = X.shape
    noise_scale = check_positive("noise_scale", noise_scale)
    if prior is None:
        prior = dist.Normal(X.new_zeros(d), check_positive("prior_scale", prior_scale)).to_event(1)
    check_prior("prior", prior, (d,), X.dtype, X.device)
    w = pyro.sample("w", prior)  # batch x 1 x d under a particle plate, else d
    mean = plate_matvec(X, w)  # batch x n (or n)
    with pyro.plate("data", n, dim=-1):
        return pyro.sample("y", dist.Normal(mean, noise_scale), obs=y)


def linear_regression_posterior(
    X: torch.Tensor, y: torch.Tensor, prior_scale: float = 1.0, noise_scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact posterior mean (``d``) and covariance (``d x d``) of ``w``, in float64, for ``X``
    (``n x d``) and ``y`` (``n``)."""
    prior_scale = check_positive("prior_scale", prior_scale)  # its square hid a sign
    noise_scale = check_positive("noise_scale", noise_scale)
    _check_xy(X, y)
    X64, y64 = X.double(), y.double()
    d = X.shape[1]
    precision = torch.eye(d, dtype=torch.float64, device=X.device) / prior_scale**2
    precision = precision + X64.T @ X64 / noise_scale**2
    cov = torch.linalg.inv(precision)
    cov = 0.5 * (cov + cov.T)
    mean = cov @ (X64.T @ y64) / noise_scale**2
    return mean, cov


def simulate_linear_data(
    n: int,
    d: int,
    prior_scale: float = 1.0,
    noise_scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``X`` (``n x d``, standard normal), ``w`` from the prior and ``y``; returns
    ``(X, y, w)``."""
    n, d = check_int("n", n), check_int("d", d)
    prior_scale = check_positive("prior_scale", prior_scale, strict=False)  # 0: w = 0
    noise_scale = check_positive("noise_scale", noise_scale, strict=False)  # 0: no noise
    X = torch.randn(n, d, generator=generator)
    w = prior_scale * torch.randn(d, generator=generator)
    y = X @ w + noise_scale * torch.randn(n, generator=generator)
    return X, y, w


def _check_xy(X: torch.Tensor, y: torch.Tensor) -> None:
    """``X`` a finite ``n x d`` tensor and ``y`` a finite ``n`` one (a ``n x 1`` ``y``
    broadcast in ``X.T @ y`` to a ``d x 1`` mean)."""
    if not isinstance(X, torch.Tensor) or X.dim() != 2:
        raise ValueError(f"X must be an n x d tensor, got {shape_of(X)}")
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != (X.shape[0],):
        raise ValueError(
            f"y must be a tensor of shape ({X.shape[0]},) to match X, got {shape_of(y)}"
        )
    check_finite("X", X)
    check_finite("y", y)
