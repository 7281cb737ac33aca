r"""SURGE: sequential Monte Carlo over reverse-diffusion paths, and the filtering baselines.

For each assimilation time ``t`` with weighted particles :math:`\{x_{t-1}^i, W^i\}`, SURGE
samples :math:`x_t^i` from the diffusion world model :math:`p_\theta(x_t \mid x_{t-1}^i)` by a
guided reverse chain and weights the whole path (``K`` levels) so that the weighted particles
target :math:`p(x_t \mid y_{1:t})` under the surrogate (Wu et al.'s twisted diffusion SMC,
applied inside a particle filter):

.. math::
    w \leftarrow W \, h_K(z_K) \prod_{k=1}^{K}
    \frac{p_\theta(z_{k-1} \mid z_k)\, h_{k-1}(z_{k-1})}{q(z_{k-1} \mid z_k, y)\, h_k(z_k)},
    \qquad h_0(z_0) = p(y \mid x_t),

which telescopes to :math:`W\, p_\theta(z_{0:K})\, p(y \mid x_t) / q(z_{0:K})`: exact
importance weights for the path target. Systematic resampling whenever the ESS drops below
``ess_threshold * N``, inside the diffusion and at each time. Every particle, trajectory and
diffusion level is a batched tensor op; the only Python loops run over time and levels.

Baselines with the same ``init`` / ``step`` / ``filter`` interface:

* :class:`GuidedDiffusionFilter`: the same guided proposal with no SMC correction;
* :class:`BootstrapPF`: propagate with any transition (the true dynamics or the unguided
  surrogate), weight by :math:`p(y \mid x)`;
* :class:`EnKF`: the stochastic ensemble Kalman filter with perturbed observations;
* :func:`kalman_filter`: the exact answer for linear-Gaussian models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from probml.guides.diffusion import GuidedReverseProposal
from probml.inference.particles import (
    RESAMPLING_SCHEMES,
    effective_sample_size,
    gather_particles,
    normalize_log_weights,
    resample,
)
from probml.models.diffusion import DiffusionTransition
from probml.models.dynamics import GaussianObservation, kalman_filter
from probml.utils import check_int, check_interval, make_generator, progress, shape_of

__all__ = [
    "FilterResult",
    "ParticleFilter",
    "SURGE",
    "GuidedDiffusionFilter",
    "BootstrapPF",
    "EnKF",
    "kalman_filter",
    "weighted_moments",
    "evaluate_filter",
]


def weighted_moments(
    particles: torch.Tensor, log_w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean and standard deviation (``batch x d``) of ``batch x N x d`` particles."""
    w = normalize_log_weights(log_w).exp().unsqueeze(-1).to(particles)
    mean = (w * particles).sum(-2)
    var = (w * (particles - mean.unsqueeze(-2)).pow(2)).sum(-2)
    return mean, var.clamp_min(0).sqrt()


def _check_transition_matches(transition, particles: torch.Tensor) -> None:
    """A transition with weights (a trained diffusion model) computes in their dtype and on
    their device: refuse particles that differ, naming both, before the first step (the
    analytic models follow the particles)."""
    if not isinstance(transition, torch.nn.Module):
        return
    p = next(transition.parameters(), None)
    if p is not None and (p.dtype, p.device) != (particles.dtype, particles.device):
        raise ValueError(
            f"particles are {particles.dtype} on {particles.device} but the transition's "
            f"weights are {p.dtype} on {p.device}: convert one to the other (e.g. "
            "transition.to(particles) or particles.to(next(transition.parameters())))"
        )


@dataclass
class FilterResult:
    """What :meth:`ParticleFilter.filter` returns (``T`` times, ``B`` trajectories).

    Attributes:
        means, stds: ``T x B x d`` weighted posterior means and standard deviations.
        particles: ``T x B x N x d`` (``None`` unless ``keep_particles``).
        log_weights: ``T x B x N`` normalised log-weights (``None`` unless kept).
        ess: ``T x B`` effective sample size after each update.
        diffusion_ess: ``T x K x B`` ESS along the reverse diffusion (SURGE only).
        num_resamples: resampling events (summed over trajectories).
        log_evidence: ``B`` running estimate of :math:`\\log p(y_{1:T})` (float64; ``None``
            for the unweighted filters).
    """

    means: torch.Tensor
    stds: torch.Tensor
    ess: torch.Tensor
    particles: torch.Tensor | None = None
    log_weights: torch.Tensor | None = None
    diffusion_ess: torch.Tensor | None = None
    num_resamples: int = 0
    log_evidence: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)


class ParticleFilter:
    r"""Shared machinery: state, validation, adaptive resampling and the time loop.

    Particles have shape ``batch x N x d`` (``B`` independent filters run side by side); an
    unbatched ``N x d`` input is treated as ``B = 1`` and results are squeezed back.

    ``seed`` (an int or a generator) drives the filter's own noise: transitions and
    resampling. Draw the initial particles from another stream: with the same integer seed,
    the first transition noise repeats the initial draws and biases the estimates.

    After every assimilation step the log-weights are normalised (``logsumexp = 0``) and the
    normaliser is added to :attr:`log_evidence`, a running sum kept in float64. Left
    unnormalised, the weights would carry :math:`\log p(y_{1:t})` itself, which grows
    linearly with ``t``; in float32 its rounding would swamp the differences between
    particles in long runs (0.001 in log-weight at :math:`|\log p| \approx 2 \cdot 10^4`).
    """

    weighted: bool = True

    def __init__(
        self,
        observation: GaussianObservation,
        num_particles: int,
        ess_threshold: float = 0.5,
        resampling: Literal["multinomial", "stratified", "systematic"] = "systematic",
        seed: int | torch.Generator | None = None,
        keep_particles: bool = False,
        verbose: bool = True,
    ):
        if not isinstance(observation, GaussianObservation):
            raise TypeError(
                f"observation must be a GaussianObservation, got {type(observation).__name__}"
            )
        check_int("num_particles", num_particles, 2)
        check_interval("ess_threshold", ess_threshold, closed="both")
        if resampling not in RESAMPLING_SCHEMES:  # else only noticed at the first resampling
            raise ValueError(f"resampling must be one of {RESAMPLING_SCHEMES}, got {resampling!r}")
        self.observation = observation
        self.num_particles = int(num_particles)
        self.ess_threshold = float(ess_threshold)
        self.resampling = resampling
        self.seed = seed
        self.keep_particles = keep_particles
        self.verbose = verbose
        self.particles: torch.Tensor | None = None

    # --- state ------------------------------------------------------------------------------
    def init(self, particles: torch.Tensor) -> ParticleFilter:
        """Set the initial particles (``[B x] N x d``, equally weighted) and reset the RNG."""
        if not isinstance(particles, torch.Tensor) or particles.dim() not in (2, 3):
            raise ValueError("particles must be a tensor of shape N x d or B x N x d")
        if particles.shape[-2] != self.num_particles:
            raise ValueError(
                f"particles has {particles.shape[-2]} particles, expected num_particles="
                f"{self.num_particles}"
            )
        if not bool(torch.isfinite(particles).all()):
            raise ValueError("particles contains NaN or inf")
        _check_transition_matches(getattr(self, "transition", None), particles)
        self._squeeze = particles.dim() == 2
        self.particles = particles.unsqueeze(0) if self._squeeze else particles
        b, n = self.particles.shape[:2]
        self.log_weights = torch.full(
            (b, n), -math.log(n), dtype=self.particles.dtype, device=self.particles.device
        )
        self.generator = make_generator(self.seed, device=self.particles.device)
        self._log_norm = torch.zeros(b, dtype=torch.float64, device=self.particles.device)
        self.num_resamples = 0
        self.last_diffusion_ess: torch.Tensor | None = None
        return self

    @property
    def batch_shape(self) -> torch.Size:
        return self.particles.shape[:1]

    @property
    def log_evidence(self) -> torch.Tensor | None:
        r"""Running estimate of :math:`\log p(y_{1:t})` (``[B]``, float64) over the steps since
        :meth:`init`; ``None`` for the unweighted filters."""
        if self.particles is None:
            raise RuntimeError("call init(particles) before reading log_evidence")
        if not self.weighted:
            return None
        return self._log_norm[0] if self._squeeze else self._log_norm

    def _assimilate(self, y: torch.Tensor) -> None:
        """One step on a raw observation, then move the weights' normaliser into the
        evidence. An all ``-inf`` row stays as it is (ESS then raises
        :class:`~probml.inference.particles.ParticleDegeneracyError`)."""
        self._step(*self._check_y(y))
        lse = torch.logsumexp(self.log_weights, -1)
        self._log_norm = self._log_norm + lse.to(self._log_norm)
        self.log_weights = self.log_weights - torch.where(
            torch.isfinite(lse), lse, torch.zeros_like(lse)
        ).unsqueeze(-1)

    def _check_y(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(y, observed)``: ``observed`` is the ``batch x p`` mask of non-NaN components, or
        ``None`` when every component is observed (the filters then run unchanged)."""
        if self.particles is None:
            raise RuntimeError("call init(particles) before step(y)")
        y = torch.as_tensor(y)
        if self._squeeze and y.dim() == 1:
            y = y.unsqueeze(0)
        y = self.observation.check_y(y, self.batch_shape, allow_missing=True).to(self.particles)
        observed = ~torch.isnan(y)
        return y, None if bool(observed.all()) else observed

    def _maybe_resample(self, log_w: torch.Tensor, *tensors: torch.Tensor):
        """Resample the batch entries whose ESS < threshold * N; keeps each entry's total
        weight (so ``logsumexp(log_w)`` still tracks the evidence)."""
        n = log_w.shape[-1]
        ess = effective_sample_size(log_w)  # raises ParticleDegeneracyError on all -inf
        need = ess < self.ess_threshold * n
        if not bool(need.any()):
            return (log_w, *tensors)
        idx = resample(log_w, scheme=self.resampling, generator=self.generator)
        keep = torch.arange(n, device=log_w.device).expand_as(idx)
        idx = torch.where(need.unsqueeze(-1), idx, keep)
        self.num_resamples += int(need.sum())
        flat = (torch.logsumexp(log_w, -1, keepdim=True) - math.log(n)).expand_as(log_w)
        new_w = torch.where(need.unsqueeze(-1), flat, log_w)
        return (new_w, *(gather_particles(t, idx) for t in tensors))

    def step(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Assimilate one observation ``[B x] p``; returns particles and normalised
        log-weights. NaN marks a missing component: the update uses the observed ones, and a
        row with none observed only propagates the particles (weights unchanged)."""
        self._assimilate(y)
        lw = self.log_weights
        if self._squeeze:
            return self.particles[0], lw[0]
        return self.particles, lw

    def _step(
        self, y: torch.Tensor, observed: torch.Tensor | None
    ) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def filter(self, ys: torch.Tensor, particles: torch.Tensor | None = None) -> FilterResult:
        """Run over observations ``T x [B x] p`` (after :meth:`init`, or pass ``particles``);
        NaN marks a missing component (see :meth:`step`)."""
        if particles is not None:
            self.init(particles)
        if self.particles is None:
            raise RuntimeError("call init(particles) or pass particles=")
        if not isinstance(ys, torch.Tensor) or ys.dim() not in (2, 3):
            raise ValueError("ys must be a tensor of shape T x p or T x B x p")
        if ys.shape[0] < 1:
            raise ValueError("ys must hold at least one observation (T >= 1)")
        means, stds, ess, parts, lws, dess = [], [], [], [], [], []
        for y in progress(ys, verbose=self.verbose, desc=type(self).__name__, total=len(ys)):
            self._assimilate(y)
            m, s = weighted_moments(self.particles, self.log_weights)
            means.append(m)
            stds.append(s)
            ess.append(effective_sample_size(self.log_weights))
            if self.keep_particles:
                parts.append(self.particles)
                lws.append(self.log_weights)
            if self.last_diffusion_ess is not None:
                dess.append(self.last_diffusion_ess)
        sq = (lambda t: t[:, 0]) if self._squeeze else (lambda t: t)  # noqa: E731
        return FilterResult(
            means=sq(torch.stack(means)),
            stds=sq(torch.stack(stds)),
            ess=sq(torch.stack(ess)),
            particles=sq(torch.stack(parts)) if parts else None,
            log_weights=sq(torch.stack(lws)) if lws else None,
            diffusion_ess=(torch.stack(dess)[..., 0] if self._squeeze else torch.stack(dess))
            if dess
            else None,
            num_resamples=self.num_resamples,
            log_evidence=self.log_evidence,
        )


class SURGE(ParticleFilter):
    r"""SMC over reverse-diffusion paths with a twisted, guided proposal (see module docs).

    Args:
        transition: a :class:`~probml.models.diffusion.DiffusionTransition` (the surrogate
            world model :math:`p_\theta(x_t \mid x_{t-1})`).
        observation: :class:`~probml.models.dynamics.GaussianObservation`.
        num_particles: ``N``.
        num_diffusion_steps: ``K`` reverse levels.
        ess_threshold: resample when ESS < ``ess_threshold * N`` (inside the diffusion and at
            each time); 0 never resamples.
        twist: ``"inflated"`` (:math:`r_k^2 = \sigma_k^2/\alpha_k^2`) or ``"dps"``.
        resampling, seed, keep_particles, verbose: see :class:`ParticleFilter`.

    Example:
        >>> f = SURGE(transition, ssm.observation, num_particles=512, num_diffusion_steps=50)
        >>> result = f.filter(ys, particles=x0_particles)
        >>> result.means, result.diffusion_ess.min()
    """

    correct: bool = True

    def __init__(
        self,
        transition: DiffusionTransition,
        observation: GaussianObservation,
        num_particles: int,
        num_diffusion_steps: int = 50,
        ess_threshold: float = 0.5,
        twist: Literal["inflated", "dps"] = "inflated",
        resampling: Literal["multinomial", "stratified", "systematic"] = "systematic",
        seed: int | torch.Generator | None = None,
        keep_particles: bool = False,
        verbose: bool = True,
    ):
        super().__init__(
            observation, num_particles, ess_threshold, resampling, seed, keep_particles, verbose
        )
        if not isinstance(transition, DiffusionTransition):
            raise TypeError(
                f"transition must be a DiffusionTransition, got {type(transition).__name__}"
            )
        self.transition = transition
        self.num_diffusion_steps = check_int("num_diffusion_steps", num_diffusion_steps)
        self.proposal = GuidedReverseProposal(transition, observation, num_diffusion_steps, twist)

    def _step(self, y: torch.Tensor, observed: torch.Tensor | None) -> None:
        prop, K, gen = self.proposal, self.num_diffusion_steps, self.generator
        if self.correct:  # resample at each assimilation time when degenerate
            self.log_weights, self.particles = self._maybe_resample(
                self.log_weights, self.particles
            )
        cond = self.particles
        log_w = self.log_weights
        z = torch.randn(cond.shape, generator=gen, device=cond.device, dtype=cond.dtype)
        log_h, g, z0 = prop.twist(z, K, cond, y, observed=observed)
        log_w = log_w + log_h  # initial factor h_K(z_K); the proposal at level K is the prior
        ess_path = []
        for k in range(K, 0, -1):
            z_new, log_ratio = prop.propose(z, z0, g, k, gen)  # z_{k-1} ~ q(. | z_k, y)
            log_h_new, g_new, z0_new = prop.twist(
                z_new, k - 1, cond, y, grad=k > 1, observed=observed
            )
            if self.correct:
                # w <- w p(z_{k-1}|z_k) h_{k-1}(z_{k-1}) / (q(z_{k-1}|z_k, y) h_k(z_k))
                log_w = log_w + log_ratio + log_h_new - log_h
            z, log_h, g, z0 = z_new, log_h_new, g_new, z0_new
            if self.correct:
                ess_path.append(effective_sample_size(log_w))
                if k > 1:
                    log_w, z, cond, log_h, g, z0 = self._maybe_resample(
                        log_w, z, cond, log_h, g, z0
                    )
        self.particles = self.transition.decode(z0, cond).detach()
        self.log_weights = log_w.detach() if self.correct else self.log_weights
        self.last_diffusion_ess = torch.stack(ess_path) if ess_path else None


class GuidedDiffusionFilter(SURGE):
    """SURGE's guided proposal with no importance weights or resampling: guidance only.
    Its particles follow the proposal, not the posterior, so its bias does not fall with N."""

    correct = False
    weighted = False


class BootstrapPF(ParticleFilter):
    """Bootstrap particle filter: propagate with ``transition.sample(x, generator=...)`` (the
    true :class:`~probml.models.dynamics.StateSpaceModel` or an unguided diffusion model),
    weight by :math:`p(y \\mid x)`, resample when the ESS is low."""

    def __init__(self, transition, observation: GaussianObservation, num_particles: int, **kw):
        super().__init__(observation, num_particles, **kw)
        if not hasattr(transition, "sample"):
            raise TypeError("transition must have a sample(x_prev, generator=...) method")
        self.transition = transition

    def _step(self, y: torch.Tensor, observed: torch.Tensor | None) -> None:
        self.log_weights, self.particles = self._maybe_resample(self.log_weights, self.particles)
        x = self.transition.sample(self.particles, generator=self.generator)
        # w <- w p(y_obs | x)
        obs = None if observed is None else observed.unsqueeze(-2)
        self.log_weights = self.log_weights + self.observation.log_prob(
            y.unsqueeze(-2), x, observed=obs
        )
        self.particles = x


class EnKF(ParticleFilter):
    r"""Stochastic ensemble Kalman filter (perturbed observations), batched over trajectories.

    Forecast every member with ``transition.sample``, optionally inflate the spread, then
    :math:`x_i \leftarrow x_i + K (y + \epsilon_i - h(x_i))` with
    :math:`K = C_{xh} (C_{hh} + R)^{-1}` from ensemble (cross-)covariances, so a non-linear
    :math:`h` works too. Members stay equally weighted.
    """

    weighted = False

    def __init__(
        self,
        transition,
        observation: GaussianObservation,
        num_particles: int,
        inflation: float = 1.0,
        **kw,
    ):
        super().__init__(observation, num_particles, **kw)
        if not float(inflation) >= 1.0:  # NaN fails too
            raise ValueError(f"inflation must be >= 1, got {inflation!r}")
        self.transition = transition
        self.inflation = float(inflation)

    def _step(self, y: torch.Tensor, observed: torch.Tensor | None) -> None:
        x = self.transition.sample(self.particles, generator=self.generator)
        n = x.shape[-2]
        xm = x.mean(-2, keepdim=True)
        x = xm + self.inflation * (x - xm)
        hx = self.observation.mean(x)
        Xa = x - x.mean(-2, keepdim=True)
        Ya = hx - hx.mean(-2, keepdim=True)
        Cxy = Xa.transpose(-1, -2) @ Ya / (n - 1)  # B x d x p
        Cyy = Ya.transpose(-1, -2) @ Ya / (n - 1)
        Cyy = Cyy + self.observation.noise_scale**2 * torch.eye(Cyy.shape[-1]).to(Cyy)
        eps = self.observation.noise_scale * torch.randn(
            hx.shape, generator=self.generator, device=hx.device, dtype=hx.dtype
        )
        innov = y.unsqueeze(-2) + eps - hx  # B x N x p
        if observed is not None:
            # missing components: no innovation, no covariance with the rest and a unit
            # variance, so the gain is the observed components' own (zero for the rest)
            o = observed.unsqueeze(-2)  # B x 1 x p
            innov = torch.where(o, innov, 0.0)
            Cxy = Cxy * o
            eye = torch.eye(Cyy.shape[-1]).to(Cyy)
            Cyy = torch.where(o & o.transpose(-1, -2), Cyy, eye)
        gain_t = torch.linalg.solve(Cyy, Cxy.transpose(-1, -2))  # B x p x d  (= K^T)
        self.particles = x + innov @ gain_t


def evaluate_filter(
    filt: ParticleFilter, xs: torch.Tensor, ys: torch.Tensor, particles: torch.Tensor
) -> dict:
    """Run ``filt`` on ``B`` trajectories and score it against the truth.

    Args:
        filt: any filter of this module (its ``keep_particles`` is switched on for this run,
            CRPS needs the ensembles, and set back afterwards).
        xs: ``T+1 x B x d`` true states (``xs[0]`` is the initial state).
        ys: ``T x B x p`` observations.
        particles: ``B x N x d`` initial particles.

    Returns:
        ``rmse`` (root mean square error of the posterior mean over times, trajectories and
        coordinates), ``crps`` (mean over the same), ``mean_ess`` (fraction of N),
        ``min_diffusion_ess`` (fraction of N, SURGE only), ``seconds`` and the
        :class:`FilterResult`.
    """
    import time

    from probml.metrics import crps_ensemble

    if not (isinstance(xs, torch.Tensor) and isinstance(ys, torch.Tensor)) or (
        xs.dim() != 3
        or ys.dim() != 3
        or xs.shape[0] != ys.shape[0] + 1
        or xs.shape[1] != ys.shape[1]
    ):  # xs of T rows failed in a broadcast naming nothing (for T = 2 it broadcast silently)
        raise ValueError(
            "xs must be T+1 x B x d and ys T x B x p (xs[0] the initial state), got "
            f"{shape_of(xs)} and {shape_of(ys)}"
        )
    kept, filt.keep_particles = filt.keep_particles, True  # CRPS needs the ensembles
    try:
        t0 = time.perf_counter()
        res = filt.filter(ys, particles=particles)
        seconds = time.perf_counter() - t0
    finally:
        filt.keep_particles = kept  # the caller's setting, as it was
    truth = xs[1:].to(res.means)
    rmse = float((res.means - truth).pow(2).mean().sqrt())
    crps = float(crps_ensemble(res.particles, truth, res.log_weights).mean())
    n = particles.shape[-2]
    return {
        "rmse": rmse,
        "crps": crps,
        "mean_ess": float(res.ess.mean()) / n,
        "min_diffusion_ess": float(res.diffusion_ess.min()) / n
        if res.diffusion_ess is not None
        else float("nan"),
        "seconds": seconds,
        "result": res,
    }
