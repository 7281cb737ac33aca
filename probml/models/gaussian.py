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

torch registers no bijection onto ``lower_cholesky`` (its ``LowerCholeskyTransform`` ignores the
upper triangle, so it is not one), and NUTS and Pyro's autoguides need one. A prior with that
support is therefore wrapped in :class:`CholeskyFactorPrior`, which keeps its density and adds
:class:`LowerCholeskyBijection`: :math:`\mathbb R^{d(d+1)/2} \to` lower-triangular matrices
with a positive diagonal, the diagonal through ``exp``.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch.distributions import biject_to, transform_to
from torch.distributions.transforms import Transform

from probml.utils import check_prior

__all__ = ["private_covariance_model", "CholeskyFactorPrior", "LowerCholeskyBijection"]


class _LowerCholeskyWithBijection(type(constraints.lower_cholesky)):
    """``lower_cholesky`` (the same set), with :class:`LowerCholeskyBijection` registered."""


lower_cholesky_bijective = _LowerCholeskyWithBijection()


def _tril_size(n: int) -> int:
    d = (math.isqrt(8 * n + 1) - 1) // 2
    if d * (d + 1) // 2 != n:
        raise ValueError(f"a vector of length {n} is not the lower triangle of a square matrix")
    return d


class LowerCholeskyBijection(Transform):
    r"""Bijection from :math:`\mathbb R^{d(d+1)/2}` onto ``d x d`` lower-triangular matrices
    with a positive diagonal: the vector fills the lower triangle row by row
    (``torch.tril_indices`` order) and the diagonal entries pass through ``exp``. Its log
    Jacobian determinant is :math:`\sum_i \log L_{ii}`. Shapes: ``... x d(d+1)/2`` to
    ``... x d x d``."""

    domain = constraints.real_vector
    codomain = lower_cholesky_bijective
    bijective = True

    def __eq__(self, other):
        return isinstance(other, LowerCholeskyBijection)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        d = _tril_size(x.shape[-1])
        i, j = torch.tril_indices(d, d, device=x.device)
        diag = i == j  # exp on the diagonal only (an unused inf would give NaN gradients)
        x = torch.where(diag, torch.where(diag, x, 0.0).exp(), x)
        L = x.new_zeros(*x.shape[:-1], d, d)
        L[..., i, j] = x
        return L

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        d = y.shape[-1]
        i, j = torch.tril_indices(d, d, device=y.device)
        v = y[..., i, j]
        diag = i == j  # log on the diagonal only (log 0 off it would give NaN gradients)
        return torch.where(diag, torch.where(diag, v, 1.0).log(), v)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y.diagonal(dim1=-2, dim2=-1).log().sum(-1)

    def forward_shape(self, shape):
        d = _tril_size(shape[-1])
        return (*shape[:-1], d, d)

    def inverse_shape(self, shape):
        d = shape[-1]
        return (*shape[:-2], d * (d + 1) // 2)


@biject_to.register(_LowerCholeskyWithBijection)
@transform_to.register(_LowerCholeskyWithBijection)
def _to_lower_cholesky(constraint):
    return LowerCholeskyBijection()


class CholeskyFactorPrior(dist.TorchDistribution):
    """``base`` (a distribution over ``d x d`` lower Cholesky factors) with the same samples
    and density, and a support that NUTS and Pyro's autoguides can map to an unconstrained
    space (:class:`LowerCholeskyBijection`).

    Example: a Wishart prior on ``Sigma``, written over its Cholesky factor,
    ``CholeskyFactorPrior(TransformedDistribution(Wishart(df, S), CholeskyTransform()))``
    (torch's Wishart sampler warns "Singular sample detected" on every draw, whether or not it
    is singular: pytorch/pytorch#122021). A prior built on :class:`LowerCholeskyBijection`
    itself, ``TransformedDistribution(Normal(loc, scale).to_event(1), LowerCholeskyBijection())``,
    needs no wrapper.
    """

    arg_constraints: dict = {}
    support = lower_cholesky_bijective

    def __init__(self, base: dist.Distribution, validate_args=None):
        if len(base.event_shape) != 2 or base.event_shape[0] != base.event_shape[1]:
            raise ValueError(
                f"base must have a square d x d event shape, got {tuple(base.event_shape)}"
            )
        self.base = base
        super().__init__(base.batch_shape, base.event_shape, validate_args=validate_args)

    @property
    def has_rsample(self) -> bool:
        return self.base.has_rsample

    def sample(self, sample_shape=()):
        return self.base.sample(sample_shape)

    def rsample(self, sample_shape=()):
        return self.base.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.base.log_prob(value)

    def expand(self, batch_shape, _instance=None):
        return CholeskyFactorPrior(self.base.expand(batch_shape))


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
            ``(d, d)``), replacing the LKJ x scales default. One with support
            ``lower_cholesky`` is wrapped in :class:`CholeskyFactorPrior`, so NUTS and
            autoguides can use it; any other support is used as given.

    Returns:
        ``Sigma`` (``d x d``), also recorded as the deterministic site ``"Sigma"``; under
        outer plates (``Predictive(parallel=True)``, vectorised ELBO particles) it is
        ``S x 1 x d x d`` and ``y`` is ``S x m``.
    """
    dtype, device = noise_scales.dtype, noise_scales.device
    if prior is None:
        if isinstance(scale_prior, torch.distributions.Distribution):
            # any float dtype: float32 scales promote against the float64 noise
            scale_dist = check_prior("scale_prior", scale_prior, (dim,), device=device)
        else:
            kappa = torch.as_tensor(scale_prior, dtype=dtype, device=device).expand(dim)
            scale_dist = dist.HalfNormal(kappa).to_event(1)
        L = pyro.sample("L_omega", dist.LKJCholesky(dim, noise_scales.new_tensor(eta)))
        s = pyro.sample("scales", scale_dist)
        Lc = s.unsqueeze(-1) * L
    else:
        # over d x d Cholesky factors of Sigma; any float dtype (the product promotes)
        check_prior("prior", prior, (dim, dim), device=device)
        support = prior.support  # lower_cholesky or a subclass (Pyro's softplus_lower_cholesky)
        if isinstance(support, type(constraints.lower_cholesky)) and not isinstance(
            support, _LowerCholeskyWithBijection
        ):  # torch and Pyro register no bijection onto these: add ours
            prior = CholeskyFactorPrior(prior)
        Lc = pyro.sample("L_sigma", prior)
    Sigma = pyro.deterministic("Sigma", Lc @ Lc.transpose(-1, -2))
    i, j = entries[:, 0], entries[:, 1]
    if Sigma.dim() == 2:
        mean, var_i, var_j = Sigma[i, j], Sigma[i, i], Sigma[j, j]  # m
    else:  # batch x 1 x d x d under outer plates; the size-1 slot is the measurement plate's
        m = entries.shape[0]
        S = Sigma.expand(*Sigma.shape[:-3], m, dim, dim)
        k = torch.arange(m, device=entries.device)
        mean, var_i, var_j = S[..., k, i, j], S[..., k, i, i], S[..., k, j, j]  # batch x m
    samp_var = (var_i * var_j + mean**2) / n
    with pyro.plate("measurements", entries.shape[0]):
        pyro.sample("y", dist.Normal(mean, (noise_scales**2 + samp_var).sqrt()), obs=values)
    return Sigma
