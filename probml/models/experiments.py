r"""Experimental-design models: Pyro models with a ``theta`` site and an observation site
``y``, each with a vectorised ``log_likelihood``.

* :class:`LinearGaussianExperiment`: :math:`\theta \sim N(0, \Sigma)`,
  :math:`y = \xi^\top\theta + \varepsilon`, :math:`\varepsilon \sim N(0, s^2)`; its expected
  information gain is known in closed form (:meth:`~LinearGaussianExperiment.eig`).
* :class:`LocationFinding` (the headline BED task): :math:`K` sources
  :math:`\theta_k \sim U[0,1]^D` (or a user prior), signal
  :math:`y = \log(0.1 + \sum_k 1/(10^{-4} + \|\xi - \theta_k\|^2)) + N(0, s^2)`.

Shapes: a design ``xi`` is ``batch x D``; ``theta`` is ``batch x P`` (linear) or
``batch x K x D`` (location finding); ``y`` is ``batch``. ``log_likelihood`` broadcasts over
any leading dimensions.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch

__all__ = ["LinearGaussianExperiment", "LocationFinding"]


class LinearGaussianExperiment:
    """Linear-Gaussian design problem with a closed-form EIG.

    Args:
        prior_cov: ``P x P`` prior covariance of ``theta`` (zero mean).
        noise_scale: observation noise ``s``.
    """

    def __init__(self, prior_cov: torch.Tensor, noise_scale: float = 1.0):
        self.prior_cov = torch.as_tensor(prior_cov, dtype=torch.float64)
        self.noise_scale = float(noise_scale)
        self.prior = dist.MultivariateNormal(
            torch.zeros(self.prior_cov.shape[0], dtype=torch.float64),
            covariance_matrix=self.prior_cov,
        )

    def __call__(self, design: torch.Tensor) -> torch.Tensor:
        """Pyro model: ``design`` is ``batch x P``; samples ``theta`` and ``y`` per batch entry."""
        with pyro.plate_stack("designs", design.shape[:-1]):
            theta = pyro.sample("theta", self.prior)
            return pyro.sample("y", dist.Normal((design * theta).sum(-1), self.noise_scale))

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        L = torch.linalg.cholesky(self.prior_cov)
        return torch.randn(n, L.shape[0], dtype=torch.float64, generator=generator) @ L.T

    def sample_y(self, theta: torch.Tensor, design: torch.Tensor, generator=None) -> torch.Tensor:
        mean = (design * theta).sum(-1)
        return mean + self.noise_scale * torch.randn(
            mean.shape, dtype=mean.dtype, generator=generator
        )

    def log_likelihood(
        self, theta: torch.Tensor, design: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        return dist.Normal((design * theta).sum(-1), self.noise_scale).log_prob(y)

    def eig(self, designs: torch.Tensor) -> torch.Tensor:
        r"""Closed-form information of a fixed design sequence ``T x P``:
        :math:`\frac12\log\det(I_T + \Xi\Sigma\Xi^\top / s^2)`."""
        X = torch.as_tensor(designs, dtype=torch.float64).reshape(-1, self.prior_cov.shape[0])
        M = (
            torch.eye(X.shape[0], dtype=torch.float64)
            + X @ self.prior_cov @ X.T / self.noise_scale**2
        )
        return 0.5 * torch.logdet(M)


class LocationFinding:
    """Location finding with ``num_sources`` sources in ``dim`` dimensions.

    Args:
        num_sources: ``K``; dim: ``D``; noise_scale: ``s``.
        prior: a distribution over ``theta`` with event shape ``(K, D)`` (default
            ``U[0, 1]^{K x D}``).
    """

    def __init__(
        self,
        num_sources: int = 1,
        dim: int = 2,
        noise_scale: float = 0.5,
        prior: dist.Distribution | None = None,
        base_signal: float = 0.1,
        max_signal: float = 1e-4,
    ):
        self.K, self.D, self.noise_scale = int(num_sources), int(dim), float(noise_scale)
        self.base_signal, self.max_signal = base_signal, max_signal
        if prior is None:
            prior = dist.Uniform(
                torch.zeros(self.K, self.D, dtype=torch.float64),
                torch.ones(self.K, self.D, dtype=torch.float64),
            ).to_event(2)
        if tuple(prior.event_shape) != (self.K, self.D):
            raise ValueError(
                f"prior must have event shape ({self.K}, {self.D}), got {tuple(prior.event_shape)}"
            )
        self.prior = prior

    def mean(self, theta: torch.Tensor, design: torch.Tensor) -> torch.Tensor:
        """``theta``: ``... x K x D``; ``design``: ``... x D`` -> ``...``."""
        sq = ((design.unsqueeze(-2) - theta) ** 2).sum(-1)  # ... x K
        return torch.log(self.base_signal + (1.0 / (self.max_signal + sq)).sum(-1))

    def __call__(self, design: torch.Tensor) -> torch.Tensor:
        """Pyro model: ``design`` is ``batch x D``."""
        with pyro.plate_stack("designs", design.shape[:-1]):
            theta = pyro.sample("theta", self.prior)
            return pyro.sample("y", dist.Normal(self.mean(theta, design), self.noise_scale))

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if isinstance(self.prior, dist.Independent) and isinstance(
            self.prior.base_dist, dist.Uniform
        ):
            lo, hi = self.prior.base_dist.low, self.prior.base_dist.high
            return lo + (hi - lo) * torch.rand(
                n, self.K, self.D, dtype=lo.dtype, generator=generator
            )
        return self.prior.sample((n,))

    def sample_y(self, theta: torch.Tensor, design: torch.Tensor, generator=None) -> torch.Tensor:
        m = self.mean(theta, design)
        return m + self.noise_scale * torch.randn(m.shape, dtype=m.dtype, generator=generator)

    def log_likelihood(
        self, theta: torch.Tensor, design: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        m = self.mean(theta, design)
        return (
            -0.5 * ((y - m) / self.noise_scale) ** 2
            - math.log(self.noise_scale)
            - 0.5 * math.log(2 * math.pi)
        )
