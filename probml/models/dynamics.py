r"""State-space models for data assimilation: linear-Gaussian (with the exact Kalman filter),
stochastic Lorenz-63 and Lorenz-96.

Every model is a hidden Markov model

.. math::
    x_0 \sim p_0, \qquad x_t \mid x_{t-1} \sim \mathcal N(f(x_{t-1}), Q), \qquad
    y_t \mid x_t \sim \mathcal N(h(x_t), R),

with a batched deterministic map ``f`` (``... x d -> ... x d``), Gaussian process noise and a
:class:`GaussianObservation` (linear ``H`` or any batched function such as
:math:`h(x) = \arctan(x_1)`). Each model

* simulates trajectories in torch (seeded, batched over trajectories): :meth:`simulate`;
* is a Pyro model over time, :meth:`model`, with sites ``x_0 .. x_T`` and ``y_1 .. y_T``, so
  Pyro's own inference (``SMCFilter``, ``Predictive``) runs on it;
* exposes ``sample_transition`` for filters that need the true dynamics (bootstrap PF, EnKF).

The surrogate world model of SURGE (:mod:`probml.models.diffusion`) is trained on transition
pairs simulated here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch

from probml.utils import (
    check_finite,
    check_int,
    check_positive,
    cholesky_factor,
    make_generator,
    shape_of,
)

__all__ = [
    "GaussianObservation",
    "StateSpaceModel",
    "LinearGaussianSSM",
    "Lorenz63",
    "Lorenz96",
    "kalman_filter",
    "rk4_step",
    "simulate_transition_pairs",
]


class GaussianObservation:
    r"""Observation model :math:`y = h(x) + \mathcal N(0, \mathrm{noise\_scale}^2 I_p)`.

    Args:
        h: a ``p x d`` matrix ``H`` (linear observation) or a batched callable
            ``... x d -> ... x p`` (differentiable for guided proposals).
        noise_scale: observation noise standard deviation (> 0).
        obs_dim: ``p``; required when ``h`` is a callable.
    """

    def __init__(
        self,
        h: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
        noise_scale: float,
        obs_dim: int | None = None,
    ):
        self.noise_scale = check_positive("noise_scale", noise_scale)
        if isinstance(h, torch.Tensor):
            if h.dim() != 2:
                raise ValueError(
                    f"h (a tensor H) must be a p x d matrix, got shape {tuple(h.shape)}"
                )
            self.H: torch.Tensor | None = h
            self.obs_dim = h.shape[0]
            self._fn = None
        elif callable(h):
            if obs_dim is None:
                raise ValueError("obs_dim (>= 1) is required when h is a callable")
            self.H = None
            self.obs_dim = check_int("obs_dim", obs_dim)
            self._fn = h
        else:
            raise TypeError(f"h must be a tensor H or a callable, got {type(h).__name__}")

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """``h(x)``: ``... x d -> ... x p``."""
        if self.H is not None:
            return x @ self.H.to(x).T
        m = self._fn(x)
        want = (*x.shape[:-1], self.obs_dim)
        if not isinstance(m, torch.Tensor) or m.shape != want:  # a shape test: no device sync
            got = shape_of(m)
            raise ValueError(
                f"h must map ... x d to ... x obs_dim: x of shape {tuple(x.shape)} gave {got}, "
                f"expected {want} (keep the last dimension, e.g. x[..., :1], not x[..., 0])"
            )
        return m

    def check_y(
        self, y: torch.Tensor, batch_shape: tuple[int, ...] = (), allow_missing: bool = False
    ) -> torch.Tensor:
        """Validate one observation ``batch_shape x p`` (shape, finiteness) and return it.
        With ``allow_missing``, NaN marks a missing component (inf is still refused)."""
        if not isinstance(y, torch.Tensor):
            y = torch.as_tensor(y)
        want = (*batch_shape, self.obs_dim)
        if tuple(y.shape) != want:
            raise ValueError(f"y must have shape {want} (batch x obs_dim), got {tuple(y.shape)}")
        if allow_missing:
            if bool(torch.isinf(y).any()):
                raise ValueError("y contains inf (NaN marks a missing component; inf does not)")
        elif not bool(torch.isfinite(y).all()):
            raise ValueError("y contains NaN or inf (the filters take NaN as a missing value)")
        return y

    def log_prob(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        extra_var: float | torch.Tensor = 0.0,
        observed: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r""":math:`\log \mathcal N(y; h(x), (\sigma^2 + \mathrm{extra\_var}) I)`.

        Args:
            y: ``batch x p``, broadcast against ``x``'s batch (``batch x N x d``: pass
               ``y.unsqueeze(-2)``).
            x: ``... x d``.
            extra_var: an added variance (the twist inflation :math:`r_k^2`).
            observed: optional boolean mask shaped like ``y`` (``False`` = missing, where
               ``y`` may be NaN). The noise is independent across components, so the
               density of the observed ones is the same formula over them alone; a row with
               nothing observed has log-density 0.
        Returns:
            ``...`` log-densities.
        """
        var = self.noise_scale**2 + extra_var
        if observed is None:
            r = y - self.mean(x)
            p = self.obs_dim
        else:
            r = torch.where(observed, torch.where(observed, y, 0.0) - self.mean(x), 0.0)
            p = observed.sum(-1).to(r.dtype)  # observed components per row
        log_var = torch.log(torch.as_tensor(var, dtype=r.dtype, device=r.device))
        return -0.5 * (r.pow(2).sum(-1) / var + p * math.log(2 * math.pi)) - 0.5 * p * log_var

    def sample(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        m = self.mean(x)
        return m + self.noise_scale * torch.randn(
            m.shape, generator=generator, device=m.device, dtype=m.dtype
        )

    def pyro_dist(self, x: torch.Tensor) -> dist.Distribution:
        m = self.mean(x)
        return dist.Normal(m, self.noise_scale).to_event(1)


def rk4_step(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dt: float) -> torch.Tensor:
    """One classical Runge-Kutta step of ``dx/dt = f(x)`` (batched over leading dims)."""
    check_finite("dt", dt)
    k1 = f(x)
    k2 = f(x + 0.5 * dt * k1)
    k3 = f(x + 0.5 * dt * k2)
    k4 = f(x + dt * k3)
    return x + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)


class StateSpaceModel:
    r"""Base class: :math:`x_t = f(x_{t-1}) + \varepsilon_t`, :math:`\varepsilon_t \sim
    \mathcal N(0, Q)` with ``Q = process_scale_tril @ process_scale_tril.T``."""

    dim: int
    observation: GaussianObservation

    def __init__(
        self,
        dim: int,
        observation: GaussianObservation,
        process_scale_tril: torch.Tensor,
        init_loc: torch.Tensor,
        init_scale_tril: torch.Tensor,
    ):
        self.dim = check_int("dim", dim)
        d = self.dim
        for name, value, want in (
            ("process_scale_tril", process_scale_tril, (d, d)),
            ("init_loc", init_loc, (d,)),
            ("init_scale_tril", init_scale_tril, (d, d)),
        ):
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != want:
                got = shape_of(value)
                raise ValueError(f"{name} must be a tensor of shape {want} for dim={d}, got {got}")
        self.observation = observation
        self.process_scale_tril = process_scale_tril
        self.init_loc = init_loc
        self.init_scale_tril = init_scale_tril

    # --- dynamics -------------------------------------------------------------------------
    def drift(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """The mean of :math:`x_t` given :math:`x_{t-1}` = ``x`` (``... x d -> ... x d``):
        what a subclass defines."""
        raise NotImplementedError

    @property
    def Q(self) -> torch.Tensor:
        L = self.process_scale_tril
        return L @ L.T

    def _drift(self, x_prev: torch.Tensor) -> torch.Tensor:
        loc = self.drift(x_prev)
        if not isinstance(loc, torch.Tensor) or loc.shape != x_prev.shape:
            got = shape_of(loc)
            raise ValueError(
                f"drift must map ... x d to ... x d: x of shape {tuple(x_prev.shape)} gave {got}"
            )
        return loc

    def transition_dist(self, x_prev: torch.Tensor) -> dist.MultivariateNormal:
        """:math:`p(x_t \\mid x_{t-1}) = N(f(x_{t-1}), Q)` for ``x_prev`` of ``... x d``
        (batch shape ``...``, event ``d``)."""
        loc = self._drift(x_prev)
        return dist.MultivariateNormal(loc, scale_tril=self.process_scale_tril.to(loc))

    def init_dist(self) -> dist.MultivariateNormal:
        """:math:`p(x_0)`: a ``d``-dimensional Gaussian (``init_loc``, ``init_scale_tril``)."""
        return dist.MultivariateNormal(self.init_loc, scale_tril=self.init_scale_tril)

    def sample_init(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n x d`` draws of ``x_0`` from :meth:`init_dist`, with ``generator`` only."""
        eps = torch.randn(
            n, self.dim, generator=generator, dtype=self.init_loc.dtype,
            device=self.init_loc.device,
        )  # fmt: skip
        return self.init_loc + eps @ self.init_scale_tril.T

    def sample_transition(
        self, x_prev: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw ``x_t ~ p(x_t | x_{t-1})`` for a batch ``... x d`` of previous states."""
        loc = self._drift(x_prev)
        eps = torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
        return loc + eps @ self.process_scale_tril.to(loc).T

    # alias so that the true model can be passed wherever a transition object is expected
    def sample(
        self, x_prev: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Same as :meth:`sample_transition` (``... x d`` in and out), so that the true
        model can stand wherever a transition object is expected."""
        return self.sample_transition(x_prev, generator)

    def simulate(
        self,
        num_steps: int,
        num_trajectories: int = 1,
        x0: torch.Tensor | None = None,
        generator: torch.Generator | int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Simulate states and observations.

        Args:
            num_steps: ``T`` assimilation times.
            num_trajectories: ``B`` independent trajectories.
            x0: optional ``B x d`` initial states (default: a draw from :meth:`init_dist`).
            generator: seed or :class:`torch.Generator`.

        Returns:
            ``xs``: ``T+1 x B x d`` (``xs[0] = x_0``) and ``ys``: ``T x B x p``.
        """
        num_steps = check_int("num_steps", num_steps)
        num_trajectories = check_int("num_trajectories", num_trajectories)
        gen = make_generator(generator, name="generator", device=self.init_loc.device)
        if x0 is None:
            x0 = self.sample_init(num_trajectories, gen)
        xs, ys = [x0], []
        x = x0
        for _ in range(int(num_steps)):  # time is sequential; trajectories are batched
            x = self.sample_transition(x, gen)
            xs.append(x)
            ys.append(self.observation.sample(x, gen))
        return torch.stack(xs), torch.stack(ys)

    def model(self, num_steps: int, ys: torch.Tensor | None = None) -> torch.Tensor:
        """Pyro model over time with sites ``x_0..x_T`` and ``y_1..y_T`` (``ys``: ``T x p``).

        Returns the final state. Usable with ``pyro.infer.Predictive`` or ``poutine.trace``.
        """
        num_steps = check_int("num_steps", num_steps)  # 2.5 ran 2 steps without a word
        if ys is not None and ys.shape[0] != num_steps:
            raise ValueError(f"ys must have {num_steps} rows (num_steps), got {ys.shape[0]}")
        x = pyro.sample("x_0", self.init_dist())
        for t in range(1, num_steps + 1):
            x = pyro.sample(f"x_{t}", self.transition_dist(x))
            pyro.sample(
                f"y_{t}", self.observation.pyro_dist(x), obs=None if ys is None else ys[t - 1]
            )
        return x


class LinearGaussianSSM(StateSpaceModel):
    r"""Linear-Gaussian state-space model :math:`x_t = A x_{t-1} + \mathcal N(0, Q)`,
    :math:`y_t = H x_t + \mathcal N(0, r^2 I)`: the exact-answer case (:func:`kalman_filter`).

    Args:
        A: ``d x d`` transition matrix.
        Q: ``d x d`` process covariance (positive definite).
        H: ``p x d`` observation matrix.
        obs_noise: observation noise standard deviation ``r``.
        init_loc, init_cov: the Gaussian prior of ``x_0`` (default ``0`` and ``I``).
    """

    def __init__(
        self,
        A: torch.Tensor,
        Q: torch.Tensor,
        H: torch.Tensor,
        obs_noise: float,
        init_loc: torch.Tensor | None = None,
        init_cov: torch.Tensor | None = None,
    ):
        d = A.shape[0]
        if A.shape != (d, d) or Q.shape != (d, d) or H.dim() != 2 or H.shape[1] != d:
            raise ValueError(
                f"A and Q must be d x d and H p x d; got A {tuple(A.shape)}, Q {tuple(Q.shape)},"
                f" H {tuple(H.shape)}"
            )
        check_finite("A", A)  # NaN simulated NaN states without a word
        init_loc = A.new_zeros(d) if init_loc is None else init_loc
        init_cov = torch.eye(d, dtype=A.dtype, device=A.device) if init_cov is None else init_cov
        super().__init__(
            d, GaussianObservation(H, obs_noise), cholesky_factor("Q", Q), init_loc,
            cholesky_factor("init_cov", init_cov),
        )  # fmt: skip
        self.A = A

    @classmethod
    def random(
        cls,
        dim: int = 10,
        obs_every: int = 2,
        obs_noise: float = 0.25,
        process_scale: float = 0.5,
        generator: torch.Generator | int | None = 0,
        dtype: torch.dtype = torch.float64,
    ) -> LinearGaussianSSM:
        """The spec's test problem: a stable random ``A`` (spectral radius 0.9), a random SPD
        ``Q`` with scale ``process_scale``, every ``obs_every``-th coordinate observed."""
        dim, obs_every = check_int("dim", dim), check_int("obs_every", obs_every)
        check_positive("process_scale", process_scale)  # NaN failed in Q's Cholesky factor
        gen = make_generator(generator, name="generator")
        M = torch.randn(dim, dim, generator=gen, dtype=dtype)
        A = 0.9 * M / torch.linalg.eigvals(M).abs().max()
        B = torch.randn(dim, dim, generator=gen, dtype=dtype) / math.sqrt(dim)
        Q = process_scale**2 * (0.5 * torch.eye(dim, dtype=dtype) + 0.5 * B @ B.T)
        H = torch.eye(dim, dtype=dtype)[::obs_every]
        return cls(A, Q, H, obs_noise)

    def drift(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.A.to(x).T

    def kalman_filter(
        self,
        ys: torch.Tensor,
        init_loc: torch.Tensor | None = None,
        init_cov: torch.Tensor | None = None,
    ):
        """:func:`kalman_filter` with this model's matrices (prior of ``x_0`` overridable)."""
        init_loc = self.init_loc if init_loc is None else init_loc
        init_cov = self.init_scale_tril @ self.init_scale_tril.T if init_cov is None else init_cov
        H, R = self.observation.H, self.observation.noise_scale**2
        return kalman_filter(self.A, self.Q, H, R, ys, init_loc, init_cov)


def kalman_filter(
    A: torch.Tensor,
    Q: torch.Tensor,
    H: torch.Tensor,
    R: float | torch.Tensor,
    ys: torch.Tensor,
    init_loc: torch.Tensor,
    init_cov: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Exact filtering posteriors :math:`p(x_t \mid y_{1:t}) = \mathcal N(m_t, P_t)`.

    Predict :math:`m^- = A m, P^- = A P A^\top + Q`; update with
    :math:`K = P^- H^\top (H P^- H^\top + R)^{-1}`.

    Args:
        A, Q: ``d x d``; H: ``p x d``; R: a scalar variance or ``p x p``.
        ys: ``T x p`` or ``T x B x p`` (B trajectories, shared matrices). NaN marks a
            missing component: the update then conditions on the observed ones alone (a row
            with none observed is a prediction step).
        init_loc: ``d`` or ``B x d``; init_cov: ``d x d`` prior of ``x_0``.

    Returns:
        means ``T x [B x] d``, covariances ``T x d x d`` (shared across trajectories: they do
        not depend on ``y``; with missing values they depend on which were missing, and are
        ``T x B x d x d`` for ``B`` trajectories) and the log marginal likelihood ``[B]`` of
        the observed values.
    """
    p = H.shape[0]
    Rm = R if isinstance(R, torch.Tensor) and R.dim() == 2 else torch.eye(p).to(A) * float(R)
    m, P = init_loc.to(A), init_cov.to(A)
    ys = ys.to(A)
    if bool(torch.isinf(ys).any()):
        raise ValueError("ys contains inf (NaN marks a missing value; inf does not)")
    observed = ~torch.isnan(ys)
    if not bool(observed.all()):
        return _kalman_missing(A, Q, H, Rm, ys, observed, m, P)
    means, covs, ll = [], [], 0.0
    for y in ys:
        m = m @ A.T
        P = A @ P @ A.T + Q
        S = H @ P @ H.T + Rm
        K = torch.linalg.solve(S, H @ P).T  # d x p
        r = y - m @ H.T
        ll = ll + dist.MultivariateNormal(torch.zeros_like(r), S).log_prob(r)
        m = m + r @ K.T
        P = P - K @ S @ K.T
        P = 0.5 * (P + P.T)
        means.append(m)
        covs.append(P)
    return torch.stack(means), torch.stack(covs), ll


def _kalman_missing(A, Q, H, Rm, ys, observed, m, P):
    r""":func:`kalman_filter` with missing components. A missing component gets a zero row of
    ``H``, a zero residual and a unit noise variance uncorrelated with the rest: the
    innovation covariance is then block-diagonal, the gain's columns for missing components
    are zero, and the update is the observed components' own. Each of those unit blocks adds
    :math:`-\frac12\log 2\pi` to the Gaussian log-density of the zero residual, which is
    taken back out."""
    eye_p = torch.eye(H.shape[0]).to(A)
    if ys.dim() == 3:  # per-trajectory covariances: the missing pattern differs between them
        P = P.expand(ys.shape[1], *P.shape)
    means, covs, ll = [], [], 0.0
    for y, o in zip(ys, observed):
        m = m @ A.T
        P = A @ P @ A.T + Q
        Ho = H * o.unsqueeze(-1).to(A)  # [B x] p x d
        S = Ho @ P @ Ho.mT + torch.where(o.unsqueeze(-1) & o.unsqueeze(-2), Rm, eye_p)
        K = torch.linalg.solve(S, Ho @ P).mT  # [B x] d x p
        r = torch.where(o, torch.where(o, y, 0.0) - m @ H.T, 0.0)
        ll = ll + dist.MultivariateNormal(torch.zeros_like(r), S).log_prob(r)
        ll = ll + 0.5 * math.log(2 * math.pi) * (~o).sum(-1).to(A)
        m = m + (K @ r.unsqueeze(-1)).squeeze(-1)
        P = P - K @ S @ K.mT
        P = 0.5 * (P + P.mT)
        means.append(m)
        covs.append(P)
    return torch.stack(means), torch.stack(covs), ll


class Lorenz63(StateSpaceModel):
    r"""Stochastic Lorenz-63: RK4 step of
    :math:`\dot x = (\sigma (x_2 - x_1), x_1(\rho - x_3) - x_2, x_1 x_2 - \beta x_3)` with
    ``dt`` then additive :math:`\mathcal N(0, q^2 I)` noise.

    The default observation is the FlowDAS protocol :math:`y = \arctan(x_1) +
    \mathcal N(0, 0.25^2)`; ``observation="identity"`` observes all three coordinates.
    The initial distribution is centred on a point of the attractor with scale ``init_scale``.
    """

    def __init__(
        self,
        dt: float = 0.025,
        process_noise: float = 0.1,
        obs_noise: float = 0.25,
        observation: str = "atan",
        init_scale: float = 1.0,
        sigma: float = 10.0,
        rho: float = 28.0,
        beta: float = 8.0 / 3.0,
        dtype: torch.dtype = torch.float32,
    ):
        self.dt = check_positive("dt", dt)
        for name, value in (("sigma", sigma), ("rho", rho), ("beta", beta)):
            check_finite(name, value)  # NaN simulated NaN states without a word
        self.params = (sigma, rho, beta)
        if observation == "atan":
            obs = GaussianObservation(lambda x: torch.atan(x[..., :1]), obs_noise, obs_dim=1)
        elif observation == "identity":
            obs = GaussianObservation(torch.eye(3, dtype=dtype), obs_noise)
        else:
            raise ValueError(f"observation must be 'atan' or 'identity', got {observation!r}")
        check_positive("process_noise", process_noise)
        check_positive("init_scale", init_scale)
        eye = torch.eye(3, dtype=dtype)
        super().__init__(
            3, obs, process_noise * eye, torch.tensor([1.5, -1.5, 25.0], dtype=dtype),
            init_scale * eye,
        )  # fmt: skip

    def vector_field(self, x: torch.Tensor) -> torch.Tensor:
        s, r, b = self.params
        x1, x2, x3 = x.unbind(-1)
        return torch.stack((s * (x2 - x1), x1 * (r - x3) - x2, x1 * x2 - b * x3), dim=-1)

    def drift(self, x: torch.Tensor) -> torch.Tensor:
        return rk4_step(self.vector_field, x, self.dt)

    def attractor_states(
        self, n: int, spin_up: int = 2000, generator: torch.Generator | int | None = None
    ) -> torch.Tensor:
        """``n x d`` states near the attractor (deterministic spin-up from random starts)."""
        n, spin_up = check_int("n", n), check_int("spin_up", spin_up, minimum=0)
        gen = make_generator(generator, name="generator")
        x = self.init_loc + 5.0 * torch.randn(n, self.dim, generator=gen, dtype=self.init_loc.dtype)
        for _ in range(spin_up):
            x = self.drift(x)
        return x


class Lorenz96(Lorenz63):
    r"""Stochastic Lorenz-96, :math:`\dot x_i = (x_{i+1} - x_{i-2}) x_{i-1} - x_i + F`
    (cyclic), RK4 with ``dt`` and additive :math:`\mathcal N(0, q^2 I)` noise; every
    ``obs_every``-th coordinate observed with noise ``obs_noise``. The initial distribution
    is :math:`\mathcal N(F \mathbf 1, \mathrm{init\_scale}^2 I)`, centred on the (unstable)
    fixed point :math:`x_i = F`."""

    def __init__(
        self,
        dim: int = 20,
        forcing: float = 8.0,
        dt: float = 0.05,
        process_noise: float = 0.1,
        obs_noise: float = 1.0,
        obs_every: int = 2,
        init_scale: float = 1.0,
        dtype: torch.dtype = torch.float32,
    ):
        check_int("dim", dim, 4)  # Lorenz-96 couples i-2 .. i+1
        obs_every = check_int("obs_every", obs_every)
        check_positive("init_scale", init_scale)
        self.dt = check_positive("dt", dt)
        check_finite("forcing", forcing)  # NaN simulated NaN states without a word
        self.forcing = float(forcing)
        check_positive("process_noise", process_noise)
        eye = torch.eye(dim, dtype=dtype)
        StateSpaceModel.__init__(
            self, dim, GaussianObservation(eye[::obs_every], obs_noise), process_noise * eye,
            torch.full((dim,), forcing, dtype=dtype), init_scale * eye,
        )  # fmt: skip

    def vector_field(self, x: torch.Tensor) -> torch.Tensor:
        return (x.roll(-1, -1) - x.roll(2, -1)) * x.roll(1, -1) - x + self.forcing


def simulate_transition_pairs(
    ssm: StateSpaceModel,
    num_starts: int = 4000,
    steps_per_start: int = 10,
    spin_up: int = 500,
    generator: torch.Generator | int | None = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training pairs ``(x_{t-1}, x_t)`` (each ``n x d``, ``n = num_starts * steps_per_start``)
    from short runs started on the attractor (or from the initial distribution for models
    without ``attractor_states``). ``x_t - drift(x_{t-1})`` is the process noise."""
    num_starts = check_int("num_starts", num_starts)
    steps_per_start = check_int("steps_per_start", steps_per_start)
    spin_up = check_int("spin_up", spin_up, minimum=0)
    gen = make_generator(generator, name="generator")
    if hasattr(ssm, "attractor_states"):
        x = ssm.attractor_states(num_starts, spin_up=spin_up, generator=gen)
    else:
        x = ssm.sample_init(num_starts, gen)
    prev, nxt = [], []
    for _ in range(steps_per_start):
        x_new = ssm.sample_transition(x, gen)
        prev.append(x)
        nxt.append(x_new)
        x = x_new
    return torch.cat(prev), torch.cat(nxt)
