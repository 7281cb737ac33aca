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

Your own experiment needs no base class: any object with the members of :class:`Experiment`
runs in the planners, posteriors and bounds (:func:`check_experiment` says which are missing).
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import pyro
import pyro.distributions as dist
import torch

from probml.utils import (
    check_finite,
    check_int,
    check_interval,
    check_positive,
    check_prior,
    cholesky_factor,
    shape_of,
)

__all__ = [
    "Experiment",
    "check_experiment",
    "check_experiment_shapes",
    "LinearGaussianExperiment",
    "LocationFinding",
    "CES",
    "CensoredSigmoidNormal",
    "constant_cost",
    "quadratic_cost",
    "terrain_cost",
    "path_cost",
]


@runtime_checkable
class Experiment(Protocol):
    r"""What the BED planners, posteriors and bounds ask of an experiment (a structural type:
    no base class is needed).

    One design :math:`\xi \in [\text{low}, \text{high}]^D` gives one scalar outcome
    :math:`y`. Every method broadcasts over leading dimensions: ``theta`` is ``... x
    theta_shape``, ``design`` is ``... x D`` and ``y`` is ``...`` (the planners pass, e.g.,
    ``theta`` as ``1 x N x theta_shape`` against designs ``C x 1 x D``).

    Attributes:
        D: the design dimension.
        design_bounds: ``(low, high)``, the box every design lies in.
    """

    D: int
    design_bounds: tuple[float, float]

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n x theta_shape`` prior draws, from ``generator`` only."""
        ...

    def sample_y(
        self, theta: torch.Tensor, design: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        r"""Outcomes :math:`y \sim p(y \mid \theta, \xi)`, from ``generator`` only."""
        ...

    def rsample_y(
        self, theta: torch.Tensor, design: torch.Tensor, eps: torch.Tensor
    ) -> torch.Tensor:
        """The same outcome as a function of standard-normal noise ``eps`` (shape of ``y``):
        the planners fix ``eps`` across candidate designs (common random numbers), and SLSQP
        refinement differentiates it in ``design``. For non-Gaussian noise map ``eps``
        through the noise's quantile function (CES clips a sigmoid of a Gaussian)."""
        ...

    def log_likelihood(
        self, theta: torch.Tensor, design: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        r""":math:`\log p(y \mid \theta, \xi)`, broadcast over leading dimensions."""
        ...


EXPERIMENT_MEMBERS = (
    "D",
    "design_bounds",
    "sample_prior",
    "sample_y",
    "rsample_y",
    "log_likelihood",
)


def check_experiment(experiment, members: tuple[str, ...] = EXPERIMENT_MEMBERS) -> None:
    """Raise a ``TypeError`` naming the ``members`` of :class:`Experiment` that ``experiment``
    lacks (``isinstance`` alone would only say no). Each routine asks for what it uses: the
    random planner and the bounds need no ``rsample_y``, the EIG planners do."""
    missing = [m for m in members if not hasattr(experiment, m)]
    if missing:
        raise TypeError(
            f"experiment ({type(experiment).__name__}) lacks {missing}: see "
            "probml.models.experiments.Experiment for what each must do"
        )


def check_experiment_shapes(experiment) -> None:
    """Call each method of ``experiment`` once on two prior draws and two designs (the centre
    of the box), alone and in the broadcast pattern the planners use (``theta`` ``1 x 2 x
    theta_shape`` against designs ``2 x 1 x D``), and raise a ``ValueError`` naming the first
    method whose output has the wrong shape. A ``... x 1`` outcome would otherwise broadcast
    against the particles into a wrong EIG without a word. The draws come from a generator of
    this check's own; :func:`~probml.inference.planning.run_experiment` calls it once."""
    gen = torch.Generator().manual_seed(0)
    theta = experiment.sample_prior(2, generator=gen)
    if not isinstance(theta, torch.Tensor) or theta.dim() < 1 or theta.shape[0] != 2:
        got = shape_of(theta)
        raise ValueError(f"experiment.sample_prior(2) must return 2 x theta_shape, got {got}")
    low, high = experiment.design_bounds
    D = int(experiment.D)
    dtype = theta.dtype if theta.is_floating_point() else torch.get_default_dtype()
    centre = (torch.as_tensor(low, dtype=dtype) + torch.as_tensor(high, dtype=dtype)) / 2
    design = centre.expand(2, D).clone()

    def expect(name: str, out, want: tuple[int, ...], pattern: str) -> torch.Tensor:
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
            got = shape_of(out)
            raise ValueError(
                f"experiment.{name} must return shape {want} for {pattern}, got {got}: one "
                "scalar outcome per (theta, design) pair, broadcast over leading dimensions "
                "(see probml.models.experiments.Experiment)"
            )
        return out

    pair = "theta 2 x theta_shape and design 2 x D"
    grid = "theta 1 x 2 x theta_shape and design 2 x 1 x D"
    y = expect("sample_y", experiment.sample_y(theta, design, generator=gen), (2,), pair)
    th, de = theta.unsqueeze(0), design.unsqueeze(1)
    y_grid = y.reshape(1, 2).expand(2, 2)
    if hasattr(experiment, "rsample_y"):  # members a routine does not use may be missing
        eps = torch.zeros(2, 2, dtype=dtype)
        y_grid = expect("rsample_y", experiment.rsample_y(th, de, eps), (2, 2), grid)
    if hasattr(experiment, "log_likelihood"):
        expect("log_likelihood", experiment.log_likelihood(theta, design, y), (2,), pair)
        expect("log_likelihood", experiment.log_likelihood(th, de, y_grid), (2, 2), grid)


class LinearGaussianExperiment:
    """Linear-Gaussian design problem with a closed-form EIG.

    Args:
        prior_cov: ``P x P`` prior covariance of ``theta`` (zero mean).
        noise_scale: observation noise ``s``.
        design_bounds: the box ``[low, high]^P`` that designs live in (used by planners).
    """

    def __init__(
        self,
        prior_cov: torch.Tensor,
        noise_scale: float = 1.0,
        design_bounds: tuple[float, float] = (-1.0, 1.0),
    ):
        self.prior_cov = torch.as_tensor(prior_cov, dtype=torch.float64)
        if self.prior_cov.dim() != 2 or self.prior_cov.shape[0] != self.prior_cov.shape[1]:
            raise ValueError(f"prior_cov must be P x P, got shape {tuple(self.prior_cov.shape)}")
        self._prior_tril = cholesky_factor("prior_cov", self.prior_cov)
        self.noise_scale = check_positive("noise_scale", noise_scale)
        self.D = self.prior_cov.shape[0]
        low, high = float(design_bounds[0]), float(design_bounds[1])
        if not low < high:  # NaN fails too
            raise ValueError(
                f"design_bounds must be (low, high) with low < high, got {design_bounds}"
            )
        self.design_bounds = (low, high)
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
        r"""``n x P`` draws of :math:`\theta \sim N(0, \Sigma)` (:class:`Experiment`)."""
        L = self._prior_tril
        return torch.randn(n, L.shape[0], dtype=torch.float64, generator=generator) @ L.T

    def sample_y(self, theta: torch.Tensor, design: torch.Tensor, generator=None) -> torch.Tensor:
        r""":math:`y = \xi^\top\theta + s\varepsilon`, broadcast (:class:`Experiment`)."""
        mean = (design * theta).sum(-1)
        return mean + self.noise_scale * torch.randn(
            mean.shape, dtype=mean.dtype, generator=generator
        )

    def rsample_y(self, theta: torch.Tensor, design: torch.Tensor, eps: torch.Tensor):
        """Reparameterised outcome ``xi^T theta + s eps`` (differentiable in ``design``)."""
        return (design * theta).sum(-1) + self.noise_scale * eps

    def log_likelihood(
        self, theta: torch.Tensor, design: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """Gaussian log density of ``y``, broadcast (:class:`Experiment`)."""
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
    r"""Location finding with ``num_sources`` sources in ``dim`` dimensions.

    Args:
        num_sources: ``K``; dim: ``D``; noise_scale: ``s``.
        prior: a distribution over ``theta`` with event shape ``(K, D)`` (default
            ``U[0, 1]^{K x D}``).
        base_signal: ``b`` (>= 0), the background in
            :math:`y = \log(b + \sum_k 1/(m + \|\xi - \theta_k\|^2)) + N(0, s^2)`.
        max_signal: ``m`` (> 0; the spec's ``1e-4``): ``1/m`` is the largest signal one
            source gives, reached at :math:`\xi = \theta_k`, where it keeps ``y`` finite.
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
        # int() truncated 2.5 sources to 2 without a word; an infinite noise passed
        self.K, self.D = check_int("num_sources", num_sources), check_int("dim", dim)
        self.noise_scale = check_positive("noise_scale", noise_scale)
        self.base_signal = check_positive("base_signal", base_signal, strict=False)
        self.max_signal = check_positive("max_signal", max_signal)
        self.design_bounds = (0.0, 1.0)
        if prior is None:
            prior = dist.Uniform(
                torch.zeros(self.K, self.D, dtype=torch.float64),
                torch.ones(self.K, self.D, dtype=torch.float64),
            ).to_event(2)
        self.prior = check_prior("prior", prior, (self.K, self.D))

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
        """``n x K x D`` source positions from the prior (:class:`Experiment`). A user prior
        samples through torch's global RNG, so with a ``generator`` it runs on a fork of that
        RNG seeded from the generator: the draws follow the generator and the caller's
        global stream does not move (it drew from, and moved, the global RNG)."""
        n = check_int("n", n, 0)
        if isinstance(self.prior, dist.Independent) and isinstance(
            self.prior.base_dist, dist.Uniform
        ):
            lo, hi = self.prior.base_dist.low, self.prior.base_dist.high
            return lo + (hi - lo) * torch.rand(
                n, self.K, self.D, dtype=lo.dtype, generator=generator
            )
        if generator is None:
            return self.prior.sample((n,))
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):  # the BED experiments run on the CPU
            torch.manual_seed(seed)
            return self.prior.sample((n,))

    def sample_y(self, theta: torch.Tensor, design: torch.Tensor, generator=None) -> torch.Tensor:
        """The log signal plus :math:`N(0, s^2)` noise, broadcast (:class:`Experiment`)."""
        m = self.mean(theta, design)
        return m + self.noise_scale * torch.randn(m.shape, dtype=m.dtype, generator=generator)

    def rsample_y(self, theta: torch.Tensor, design: torch.Tensor, eps: torch.Tensor):
        """Reparameterised outcome ``mean(theta, xi) + s eps`` (differentiable in ``design``)."""
        return self.mean(theta, design) + self.noise_scale * eps

    def log_likelihood(
        self, theta: torch.Tensor, design: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """Gaussian log density of ``y`` around the log signal (:class:`Experiment`)."""
        m = self.mean(theta, design)
        return (
            -0.5 * ((y - m) / self.noise_scale) ** 2
            - math.log(self.noise_scale)
            - 0.5 * math.log(2 * math.pi)
        )


class CensoredSigmoidNormal(dist.TorchDistribution):
    r"""``y = clip(sigmoid(eta), eps, 1 - eps)`` with ``eta ~ N(loc, scale^2)``.

    The density is the logit-normal one inside ``(eps, 1 - eps)`` and a point mass
    :math:`\Phi((\mathrm{logit}\,\epsilon - \mu)/\sigma)` (resp. the upper tail) at each end,
    as in the CES task of Foster et al. (2020).
    """

    arg_constraints = {
        "loc": dist.constraints.real,
        "scale": dist.constraints.positive,
    }
    has_rsample = False

    def __init__(self, loc, scale, eps: float = 2.0**-22, validate_args=None):
        self.loc, self.scale = torch.broadcast_tensors(
            torch.as_tensor(loc), torch.as_tensor(scale, dtype=torch.as_tensor(loc).dtype)
        )
        self.eps = float(eps)
        super().__init__(self.loc.shape, validate_args=validate_args)

    @property
    def support(self):
        return dist.constraints.interval(self.eps, 1 - self.eps)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return CensoredSigmoidNormal(
            self.loc.expand(batch_shape), self.scale.expand(batch_shape), self.eps
        )

    def sample(self, sample_shape=()):
        shape = self._extended_shape(torch.Size(sample_shape))
        with torch.no_grad():
            eta = self.loc.expand(shape) + self.scale.expand(shape) * torch.randn(
                shape, dtype=self.loc.dtype, device=self.loc.device
            )
            return torch.sigmoid(eta).clamp(self.eps, 1 - self.eps)

    def log_prob(self, value):
        lo, hi = math.log(self.eps / (1 - self.eps)), math.log((1 - self.eps) / self.eps)
        v = value.clamp(self.eps, 1 - self.eps)
        logit = torch.log(v) - torch.log1p(-v)
        z = (logit - self.loc) / self.scale
        inner = (
            -0.5 * z**2
            - torch.log(self.scale)
            - 0.5 * math.log(2 * math.pi)
            - torch.log(v)
            - torch.log1p(-v)
        )
        lower = torch.special.log_ndtr((lo - self.loc) / self.scale)
        upper = torch.special.log_ndtr(-(hi - self.loc) / self.scale)
        tol = self.eps * 1e-3
        return torch.where(
            value <= self.eps + tol, lower, torch.where(value >= 1 - self.eps - tol, upper, inner)
        )


class CES:
    r"""Constant elasticity of substitution (Foster et al. 2020; the spec's second task).

    ``theta = (rho, alpha_1..3, log u)`` (5-D), :math:`\rho\sim\mathrm{Beta}(1,1)`,
    :math:`\alpha\sim\mathrm{Dir}(1,1,1)`, :math:`\log u\sim N(1, 3^2)`. A design is two baskets
    ``xi = (x, x')`` in ``[0, 100]^6``; utility :math:`U(x) = (\sum_i \alpha_i x_i^\rho)^{1/\rho}`,
    :math:`\eta \sim N(u (U(x) - U(x')),\ (\nu u (1 + \|x - x'\|))^2)`, and
    ``y = clip(sigmoid(eta), eps, 1 - eps)`` (:class:`CensoredSigmoidNormal`).

    The Pyro model has sites ``rho``, ``alpha``, ``u`` and ``y``; the estimators use the packed
    ``... x 5`` parameter of :meth:`sample_prior`.
    """

    def __init__(self, nu: float = 0.005, eps: float = 2.0**-22, log_u_scale: float = 3.0):
        # one message named all three, and an infinite nu or log_u_scale passed
        self.nu = check_positive("nu", nu)
        self.eps = check_interval("eps", eps, 0, 0.5)
        self.log_u_scale = check_positive("log_u_scale", log_u_scale)
        self.D = 6
        self.design_bounds = (0.0, 100.0)
        one = torch.ones((), dtype=torch.float64)
        self.rho_prior = dist.Beta(one, one)
        self.alpha_prior = dist.Dirichlet(torch.ones(3, dtype=torch.float64))
        self.log_u_prior = dist.Normal(one, self.log_u_scale * one)

    @staticmethod
    def utility(rho: torch.Tensor, alpha: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``(sum_i alpha_i x_i^rho)^(1/rho)``; ``rho``: ``...``, ``alpha``, ``x``: ``... x 3``."""
        r = rho.unsqueeze(-1)
        return ((x.clamp(min=1e-10) ** r) * alpha).sum(-1).clamp(min=1e-300) ** (1.0 / rho)

    def _eta(self, rho, alpha, u, design):
        x, xp = design[..., :3], design[..., 3:]
        mu = u * (self.utility(rho, alpha, x) - self.utility(rho, alpha, xp))
        sigma = self.nu * u * (1 + (x - xp).norm(dim=-1))
        return mu, sigma

    def _unpack(self, theta):
        return theta[..., 0], theta[..., 1:4], theta[..., 4].exp()

    def __call__(self, design: torch.Tensor) -> torch.Tensor:
        """Pyro model: ``design`` is ``batch x 6``."""
        with pyro.plate_stack("designs", design.shape[:-1]):
            rho = pyro.sample("rho", self.rho_prior)
            alpha = pyro.sample("alpha", self.alpha_prior)
            u = pyro.sample("u", dist.LogNormal(1.0, self.log_u_scale))
            mu, sigma = self._eta(rho, alpha, u, design)
            return pyro.sample("y", CensoredSigmoidNormal(mu, sigma, self.eps))

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n x 5`` packed draws ``(rho, alpha, log u)``."""
        g = generator
        rho = torch.rand(n, dtype=torch.float64, generator=g)
        e = -torch.log(torch.rand(n, 3, dtype=torch.float64, generator=g))  # Dir(1,1,1)
        alpha = e / e.sum(-1, keepdim=True)
        log_u = 1.0 + self.log_u_scale * torch.randn(n, dtype=torch.float64, generator=g)
        return torch.cat([rho[:, None], alpha, log_u[:, None]], -1)

    def sample_y(self, theta: torch.Tensor, design: torch.Tensor, generator=None) -> torch.Tensor:
        """Censored outcomes in ``[eps, 1 - eps]``, broadcast (:class:`Experiment`)."""
        mu, sigma = self._eta(*self._unpack(theta), design)
        eps = torch.randn(mu.shape, dtype=mu.dtype, generator=generator)
        return self.rsample_y(theta, design, eps).detach()

    def rsample_y(self, theta: torch.Tensor, design: torch.Tensor, eps: torch.Tensor):
        """``clip(sigmoid(mu + sigma eps))``: the outcome as a function of the noise."""
        mu, sigma = self._eta(*self._unpack(theta), design)
        return torch.sigmoid(mu + sigma * eps).clamp(self.eps, 1 - self.eps)

    def log_likelihood(
        self, theta: torch.Tensor, design: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """:class:`CensoredSigmoidNormal` log density of ``y`` (:class:`Experiment`)."""
        mu, sigma = self._eta(*self._unpack(theta), design)
        return CensoredSigmoidNormal(mu, sigma, self.eps).log_prob(y)


# ---------------------------------------------------------------------------------------------
# cost maps: c(x) >= 0 over the design space; an edge's cost integrates c along the segment


def constant_cost(x: torch.Tensor) -> torch.Tensor:
    """``c(x) = 1``: the edge cost is the path length."""
    return torch.ones(x.shape[:-1], dtype=x.dtype, device=x.device)


def quadratic_cost(x: torch.Tensor, scale: float = 4.5, floor: float = 0.05) -> torch.Tensor:
    r"""The spec's map :math:`c(x) = c_0 + \exp(-\|x\|^2 / s)`, by default
    :math:`0.05 + \exp(-\|x\|^2 / 4.5)`. ``scale`` :math:`s > 0`; ``floor`` :math:`c_0 \ge 0`
    (a negative cost would refill a travel budget)."""
    scale = check_positive("scale", scale)
    floor = check_positive("floor", floor, strict=False)
    return floor + torch.exp(-(x**2).sum(-1) / scale)


def terrain_cost(
    x: torch.Tensor,
    centers: torch.Tensor | None = None,
    heights: torch.Tensor | float = 2.0,
    width: float = 0.15,
    floor: float = 0.2,
) -> torch.Tensor:
    r"""A bump ("terrain") map :math:`c(x) = c_0 + \sum_j h_j \exp(-\|x - m_j\|^2 / 2w^2)`;
    default: two hills in the unit square. ``centers`` is ``K x D``, ``heights`` a number or
    ``K`` values, each finite and ``>= 0``, as is ``floor``: a negative cost would refill a
    travel budget."""
    check_positive("width", width)
    floor = check_positive("floor", floor, strict=False)
    if centers is None:
        centers = torch.tensor([[0.3, 0.7], [0.7, 0.3]], dtype=x.dtype, device=x.device)
    centers = torch.as_tensor(centers, dtype=x.dtype, device=x.device)
    if centers.dim() != 2 or centers.shape[-1] != x.shape[-1]:
        raise ValueError(
            f"centers must be K x {x.shape[-1]} (K hills in the designs' dimension), got "
            f"{tuple(centers.shape)}"
        )
    h = torch.as_tensor(heights, dtype=x.dtype, device=x.device)
    if h.dim() > 1 or (h.dim() == 1 and h.numel() != centers.shape[0]):
        raise ValueError(
            f"heights must be a number or {centers.shape[0]} values (one per centre), got "
            f"shape {tuple(h.shape)}"
        )
    check_finite("heights", h)
    if bool((h < 0).any()):
        raise ValueError(f"heights must be >= 0, got {h.tolist()}")
    sq = ((x.unsqueeze(-2) - centers) ** 2).sum(-1)
    return floor + (h * torch.exp(-sq / (2 * width**2))).sum(-1)


def path_cost(cost_map=constant_cost, num_points: int = 8):
    r"""Turn a cost map into an edge cost for :class:`~probml.inference.planning.TravelBudget`:
    :math:`c(\xi_{t-1}, \xi_t) = \|\xi_t - \xi_{t-1}\| \cdot \frac1P\sum_p c(x_p)` with
    ``x_p`` the midpoints of ``P = num_points`` equal pieces of the segment (midpoint rule;
    exact for the constant map). Vectorised over leading dimensions."""
    num_points = check_int("num_points", num_points)

    def edge_cost(prev: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        s = (torch.arange(num_points, dtype=xi.dtype, device=xi.device) + 0.5) / num_points
        d = xi - prev
        pts = prev.unsqueeze(-2) + s[:, None] * d.unsqueeze(-2)  # ... x P x D
        return d.norm(dim=-1) * cost_map(pts).mean(-1)

    return edge_cost
