r"""Posteriors over ``theta`` given a design history, behind one interface, and the amortized
design policy.

Every posterior has ``condition(design, y) -> posterior`` (a new object; the history grows by
one step), ``sample(n, generator) -> n x batch x theta_shape``, ``mean()`` and ``history``
(``designs``, ``ys``). Three implementations:

* :class:`ParticlePosterior`: ``M`` prior particles reweighted by the likelihood of every
  observed ``(design, y)`` (exact as ``M`` grows, no training): the reference.
* :class:`AmortizedPosterior`: **[design]** a DeepSets network over the ``(xi, y)`` pairs with a
  mixture-of-diagonal-Gaussians head (:class:`PosteriorNet`), trained offline by NLL on
  simulated histories (:func:`train_posterior_net`); it has a density (``log_prob``), which the
  ACE bound needs, and conditions a whole batch of fantasised outcomes at once.
* :class:`GaussianPosterior`: the exact conjugate posterior of
  :class:`~probml.models.experiments.LinearGaussianExperiment` (for tests and as a reference
  for the ACE bound).

:class:`DesignPolicy` is the amortized-policy baseline of the spec: a softmax over candidate
designs (moves ``prev + offset`` on a grid, or a fixed absolute set) given the history; it is
trained by REINFORCE in :func:`probml.inference.planning.train_design_policy`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from probml.inference.particles import effective_sample_size, normalize_log_weights, resample
from probml.models.experiments import check_experiment
from probml.utils import (
    SavableModule,
    check_finite,
    check_int,
    check_positive,
    make_generator,
    progress,
    resolve_device,
)

__all__ = [
    "ParticlePosterior",
    "GaussianPosterior",
    "PosteriorNet",
    "AmortizedPosterior",
    "train_posterior_net",
    "random_walk_designs",
    "DesignPolicy",
]


class ParticlePosterior:
    """Importance-weighted prior particles.

    Args:
        experiment: provides ``sample_prior(n, generator)`` and ``log_likelihood``.
        num_particles: ``M``.
        generator: seed or generator for the prior draw.
    """

    def __init__(
        self,
        experiment,
        num_particles: int = 4096,
        generator=None,
        _particles: torch.Tensor | None = None,
        _log_w: torch.Tensor | None = None,
        _history: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        check_experiment(experiment, ("D", "sample_prior", "log_likelihood"))
        self.experiment = experiment
        if _particles is None:
            _particles = experiment.sample_prior(
                check_int("num_particles", num_particles),
                generator=make_generator(generator, name="generator"),
            )
            _log_w = torch.zeros(_particles.shape[0], dtype=_particles.dtype)
        self.particles, self.log_weights = _particles, _log_w
        self.history = _history if _history is not None else _empty_history(experiment)

    def condition(self, design: torch.Tensor, y: torch.Tensor | float) -> ParticlePosterior:
        """The posterior after observing ``y`` at ``design`` (``D``)."""
        _check_design(design, self.experiment.D)
        y = torch.as_tensor(y, dtype=self.particles.dtype)
        check_finite("y", y)  # NaN would blank every weight; name y, not the weights
        lw = self.log_weights + self.experiment.log_likelihood(self.particles, design, y)
        return ParticlePosterior(
            self.experiment,
            _particles=self.particles,
            _log_w=lw,
            _history=_append(self.history, design, y),
        )

    @property
    def ess(self) -> float:
        return float(effective_sample_size(self.log_weights))

    def normalized_log_weights(self) -> torch.Tensor:
        """``M`` log-weights that log-sum-exp to zero."""
        return normalize_log_weights(self.log_weights)

    def sample(self, n: int, generator=None) -> torch.Tensor:
        """``n`` equally weighted draws (systematic resampling)."""
        idx = resample(
            self.log_weights,
            check_int("n", n),
            scheme="systematic",
            generator=make_generator(generator, name="generator"),
        )
        return self.particles[idx]

    def mean(self) -> torch.Tensor:
        """The weighted mean of the particles (``theta_shape``)."""
        w = self.normalized_log_weights().exp()
        return (w.reshape(-1, *([1] * (self.particles.dim() - 1))) * self.particles).sum(0)


def _empty_history(experiment) -> tuple[torch.Tensor, torch.Tensor]:
    D = int(experiment.D)
    return torch.zeros(0, D, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)


def _check_design(design: torch.Tensor, D) -> None:
    """A design's last dimension must be the experiment's ``D`` (a shape check, no sync)."""
    if design.dim() < 1 or design.shape[-1] != int(D):
        raise ValueError(
            f"design must have the experiment's design dimension D = {int(D)} as its last "
            f"dimension, got shape {tuple(design.shape)}"
        )


def _append(history, design, y):
    designs, ys = history
    return (
        torch.cat([designs, design.reshape(1, -1).to(designs)]),
        torch.cat([ys, y.reshape(1).to(ys)]),
    )


class GaussianPosterior:
    r"""Exact posterior of a linear-Gaussian experiment, batched over histories.

    :math:`\Sigma_{post}^{-1} = \Sigma^{-1} + \xi\xi^\top/s^2`,
    :math:`\mu_{post} = \Sigma_{post}(\Sigma^{-1}\mu + \xi y/s^2)`. ``condition`` accepts a
    design ``... x P`` and outcomes ``...`` and returns a posterior with that batch shape.
    """

    def __init__(self, experiment, mean: torch.Tensor | None = None, cov=None):
        self.experiment = experiment
        P = experiment.prior_cov.shape[0]
        self.loc = torch.zeros(P, dtype=torch.float64) if mean is None else mean
        self.cov = experiment.prior_cov if cov is None else cov

    def _dist(self):
        return torch.distributions.MultivariateNormal(self.loc, covariance_matrix=self.cov)

    def condition(self, design: torch.Tensor, y) -> GaussianPosterior:
        """The exact posterior after ``y`` at ``design`` (``... x P`` and ``...``: batched)."""
        _check_design(design, self.loc.shape[-1])
        design = design.to(self.loc)  # a float32 design works, as with ParticlePosterior
        y = torch.as_tensor(y, dtype=self.loc.dtype)
        check_finite("y", y)  # NaN would give a NaN mean without a word
        s2 = self.experiment.noise_scale**2
        Sx = (self.cov @ design.unsqueeze(-1)).squeeze(-1)  # ... x P
        denom = (design * Sx).sum(-1) + s2
        gain = Sx / denom.unsqueeze(-1)
        resid = y - (design * self.loc).sum(-1)
        loc = self.loc + gain * resid.unsqueeze(-1)
        cov = self.cov - gain.unsqueeze(-1) * Sx.unsqueeze(-2)
        return GaussianPosterior(self.experiment, loc, cov)

    def sample(self, n: int, generator=None) -> torch.Tensor:
        """``n x [batch x] P`` draws, with ``generator`` only."""
        L = torch.linalg.cholesky(self.cov)
        z = torch.randn(
            check_int("n", n),
            *self.loc.shape,
            dtype=self.loc.dtype,
            generator=make_generator(generator, name="generator"),
        )
        return self.loc + (L @ z.unsqueeze(-1)).squeeze(-1)

    def log_prob(self, theta: torch.Tensor) -> torch.Tensor:
        """The Gaussian log density of ``theta`` (``... x P``)."""
        return self._dist().log_prob(theta)

    def mean(self) -> torch.Tensor:
        """The posterior mean (``[batch x] P``)."""
        return self.loc


def _mlp(d_in: int, hidden: int, d_out: int, depth: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(d_in if i == 0 else hidden, hidden), nn.SiLU()]
    return nn.Sequential(*layers, nn.Linear(hidden, d_out))


class _HistoryEncoder(SavableModule):
    """DeepSets summary of a history: ``sum_t phi([scaled xi_t, scaled y_t])`` plus ``log1p(T)``.

    Inputs are standardised by buffers (``design_low/high`` to ``[-1, 1]``, ``y_mean``,
    ``y_scale``) so one network serves any scale of design space or outcome."""

    def __init__(self, design_dim: int, hidden: int):
        super().__init__()
        self.design_dim = check_int("design_dim", design_dim)
        self.hidden = check_int("hidden", hidden)
        self.phi = _mlp(self.design_dim + 1, hidden, hidden)
        for name, v in (("design_low", 0.0), ("design_high", 1.0), ("y_mean", 0.0)):
            self.register_buffer(name, torch.tensor(v))
        self.register_buffer("y_scale", torch.tensor(1.0))

    def features(self, designs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """``... x T x D``, ``... x T`` -> per-step features ``... x T x H``."""
        dt = self.phi[0].weight.dtype
        x = 2 * (designs.to(dt) - self.design_low) / (self.design_high - self.design_low) - 1
        y = ((ys.to(dt) - self.y_mean) / self.y_scale).unsqueeze(-1)
        return self.phi(torch.cat([x, y], -1))

    def summary(self, designs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """``... x T x D``, ``... x T`` -> the history's summary ``... x (H + 1)``."""
        return self.summary_from_pooled(self.features(designs, ys).sum(-2), ys.shape[-1])

    @staticmethod
    def summary_from_pooled(pooled: torch.Tensor, T: int | torch.Tensor) -> torch.Tensor:
        """The summary of a ``T``-step history whose features sum to ``pooled``
        (``... x H`` -> ``... x (H + 1)``): what a loop that adds one step's features at a
        time passes to the heads. ``T`` is an int, or a tensor of step counts that broadcasts
        to ``...`` (one per prefix, as in :meth:`PosteriorNet.prefix_nll`); ``log1p(T)`` is
        taken in float64 and then cast, so every caller builds the same feature. An int
        (every deployed step) costs no host-to-device copy; a tensor is evaluated on the CPU
        (float64 everywhere, MPS included) and copied once."""
        if isinstance(T, int):
            return torch.cat([pooled, pooled.new_full((*pooled.shape[:-1], 1), math.log1p(T))], -1)
        t = torch.log1p(torch.as_tensor(T, dtype=torch.float64, device="cpu")).to(pooled)
        return torch.cat([pooled, t.expand(pooled.shape[:-1]).unsqueeze(-1)], -1)

    def fit_scaling(self, design_bounds, ys: torch.Tensor) -> None:
        self.design_low.fill_(float(design_bounds[0]))
        self.design_high.fill_(float(design_bounds[1]))
        self.y_mean.fill_(float(ys.mean()))
        self.y_scale.fill_(float(ys.std().clamp(min=1e-6)))


class PosteriorNet(_HistoryEncoder):
    r"""``q(theta | history)``: a mixture of ``components`` diagonal Gaussians over the flattened
    ``theta`` (standardised by buffers), with parameters from the DeepSets summary.

    Shapes: ``designs`` ``... x T x D``, ``ys`` ``... x T``; :meth:`distribution` has batch
    shape ``...`` and event shape ``(P,)`` in standardised coordinates. **[design]** The spec
    asks for a mixture head per theta dimension; a joint mixture of diagonal Gaussians keeps
    correlations between coordinates (e.g. the two coordinates of a source)."""

    def __init__(self, design_dim: int, theta_dim: int, hidden: int = 64, components: int = 6):
        super().__init__(design_dim, hidden)
        check_int("theta_dim", theta_dim)
        check_int("components", components)
        self.config = {
            "design_dim": design_dim,
            "theta_dim": theta_dim,
            "hidden": hidden,
            "components": components,
        }
        self.theta_dim, self.components = int(theta_dim), int(components)
        self.rho = _mlp(hidden + 1, hidden, components * (1 + 2 * theta_dim))
        self.register_buffer("theta_mean", torch.zeros(theta_dim))
        self.register_buffer("theta_scale", torch.ones(theta_dim))

    def distribution_from_summary(self, summary: torch.Tensor) -> MixtureSameFamily:
        out = self.rho(summary)
        C, P = self.components, self.theta_dim
        logits = out[..., :C]
        loc = out[..., C : C + C * P].unflatten(-1, (C, P))
        scale = torch.nn.functional.softplus(out[..., C + C * P :].unflatten(-1, (C, P))) + 1e-3
        return MixtureSameFamily(Categorical(logits=logits), Independent(Normal(loc, scale), 1))

    def distribution(self, designs: torch.Tensor, ys: torch.Tensor) -> MixtureSameFamily:
        return self.distribution_from_summary(self.summary(designs, ys))

    def standardize(self, theta_flat: torch.Tensor) -> torch.Tensor:
        return (theta_flat.to(self.theta_mean) - self.theta_mean) / self.theta_scale

    def log_prob_flat(self, q: MixtureSameFamily, theta_flat: torch.Tensor) -> torch.Tensor:
        """``log q(theta)`` in the original coordinates (Jacobian of the standardisation)."""
        return q.log_prob(self.standardize(theta_flat)) - self.theta_scale.log().sum()

    def prefix_nll(
        self, designs: torch.Tensor, ys: torch.Tensor, theta_flat: torch.Tensor
    ) -> torch.Tensor:
        """NLL of ``theta`` (``B x P``) after every prefix ``t = 0..T`` of the histories
        (``B x T x D``, ``B x T``) in one pass (cumulative sums of the features):
        ``B x (T + 1)``."""
        f = self.features(designs, ys)  # B x T x H
        pooled = torch.cat([torch.zeros_like(f[:, :1]), f.cumsum(1)], 1)  # B x (T+1) x H
        summary = self.summary_from_pooled(pooled, torch.arange(ys.shape[1] + 1))
        q = self.distribution_from_summary(summary)
        return -self.log_prob_flat(q, theta_flat.unsqueeze(1))


class AmortizedPosterior:
    """The posterior interface over a trained :class:`PosteriorNet`.

    Args:
        net: the trained network; experiment: the model (gives the shape of ``theta``).
        designs, ys: the history (``... x T x D``, ``... x T``; default empty).
    """

    def __init__(self, net: PosteriorNet, experiment, designs=None, ys=None):
        self.net, self.experiment = net, experiment
        if (designs is None) != (ys is None):
            raise ValueError("designs and ys must be given together (or both left out)")
        if designs is None:
            designs, ys = _empty_history(experiment)
        elif designs.dim() < 2 or designs.shape[:-1] != ys.shape:
            raise ValueError(
                "designs must be ... x T x D and ys ... x T with the same leading shape, got "
                f"{tuple(designs.shape)} and {tuple(ys.shape)}"
            )
        self.designs, self.ys = designs, ys
        self._theta_shape = tuple(experiment.sample_prior(1).shape[1:])

    @property
    def history(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.designs, self.ys

    def condition(self, design: torch.Tensor, y) -> AmortizedPosterior:
        """Append ``(design, y)``; ``design`` ``... x D`` and ``y`` ``...`` may carry a batch
        (e.g. ``C x N`` fantasised outcomes), giving a batch of posteriors."""
        _check_design(design, self.designs.shape[-1])
        y = torch.as_tensor(y, dtype=self.ys.dtype)
        batch = torch.broadcast_shapes(self.ys.shape[:-1], y.shape, design.shape[:-1])
        T, D = self.ys.shape[-1], self.designs.shape[-1]
        designs = torch.cat(
            [self.designs.expand(*batch, T, D), design.expand(*batch, D).unsqueeze(-2)], -2
        )
        ys = torch.cat([self.ys.expand(*batch, T), y.expand(batch).unsqueeze(-1)], -1)
        return AmortizedPosterior(self.net, self.experiment, designs, ys)

    @torch.no_grad()
    def _q(self) -> MixtureSameFamily:
        return self.net.distribution(self.designs, self.ys)

    @torch.no_grad()
    def sample(self, n: int, generator=None) -> torch.Tensor:
        """``n x batch x theta_shape`` draws from the mixture, with ``generator`` only (the
        global RNG is untouched)."""
        n = check_int("n", n)
        gen = make_generator(generator, name="generator")
        q = self._q()
        probs = q.mixture_distribution.probs  # batch x C
        comp = q.component_distribution.base_dist  # loc, scale: batch x C x P
        batch, C = probs.shape[:-1], probs.shape[-1]
        idx = torch.multinomial(probs.reshape(-1, C).cpu(), n, replacement=True, generator=gen)
        idx = idx.T.reshape(n, *batch).to(probs.device)  # n x batch
        pick = idx[..., None, None].expand(n, *batch, 1, comp.loc.shape[-1])
        loc = comp.loc.expand(n, *comp.loc.shape).gather(-2, pick).squeeze(-2)
        scale = comp.scale.expand(n, *comp.scale.shape).gather(-2, pick).squeeze(-2)
        eps = torch.randn(loc.shape, generator=gen, dtype=loc.dtype).to(loc.device)
        theta = self.net.theta_mean + self.net.theta_scale * (loc + scale * eps)
        return theta.to(torch.float64).reshape(n, *batch, *self._theta_shape)

    @torch.no_grad()
    def log_prob(self, theta: torch.Tensor) -> torch.Tensor:
        """``log q(theta | history)``; ``theta`` ``... x theta_shape`` broadcasting against the
        batch."""
        flat = theta.reshape(*theta.shape[: theta.dim() - len(self._theta_shape)], -1)
        return self.net.log_prob_flat(self._q(), flat).to(torch.float64)

    @torch.no_grad()
    def mean(self) -> torch.Tensor:
        """The mixture mean (exact): ``batch x theta_shape``."""
        q = self._q()
        z = (
            q.mixture_distribution.probs.unsqueeze(-1) * q.component_distribution.base_dist.loc
        ).sum(-2)
        theta = self.net.theta_mean + self.net.theta_scale * z
        return theta.to(torch.float64).reshape(*z.shape[:-1], *self._theta_shape)


def random_walk_designs(
    start: torch.Tensor, delta: float, low: float, high: float
) -> Callable[[int, int, torch.Generator], torch.Tensor]:
    """A design sampler for :func:`train_posterior_net`: uniform ``L_inf`` steps of at most
    ``delta`` from ``start``, clipped to ``[low, high]`` (``B x T x D``)."""
    check_positive("delta", delta)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"low and high must be finite with low < high, got {low} and {high}")

    def sampler(B: int, T: int, generator: torch.Generator) -> torch.Tensor:
        D = start.shape[-1]
        steps = delta * (2 * torch.rand(B, T, D, dtype=torch.float64, generator=generator) - 1)
        x, out = start.to(torch.float64).expand(B, D), []
        for t in range(T):
            x = (x + steps[:, t]).clamp(low, high)
            out.append(x)
        return torch.stack(out, 1)

    return sampler


def train_posterior_net(
    experiment,
    design_sampler: Callable[[int, int, torch.Generator], torch.Tensor] | None = None,
    horizon: int = 30,
    num_steps: int = 2000,
    batch_size: int = 256,
    hidden: int = 64,
    components: int = 6,
    lr: float = 2e-3,
    seed: int = 0,
    device: torch.device | str | None = None,
    verbose: bool = False,
) -> PosteriorNet:
    r"""Fit a :class:`PosteriorNet` by minimising :math:`-\frac{1}{T+1}\sum_{t=0}^{T}
    \log q(\theta \mid h_{1:t})` on simulated histories: ``theta`` from the prior, designs from
    ``design_sampler(B, T, generator)`` (default uniform in the design box), outcomes from the
    likelihood; fresh histories every step (no overfitting to a fixed set); Adam at ``lr``,
    annealed by a cosine to 0 over ``num_steps`` (``CosineAnnealingLR``). The net works in
    coordinates fitted to 4096 simulated histories: ``theta`` standardised by their mean and
    standard deviation (its ``theta_mean`` / ``theta_scale``), designs and outcomes by
    :meth:`fit_scaling`. ``seed`` seeds the simulation generator and the initial weights
    (torch's global RNG is left as it was)."""
    horizon, num_steps = check_int("horizon", horizon), check_int("num_steps", num_steps)
    batch_size = check_int("batch_size", batch_size, minimum=2)
    check_int("hidden", hidden)
    check_int("components", components)
    check_positive("lr", lr)
    # None is the CPU here (not resolve_device's "CUDA when available"); a named device is
    # checked by name before any work ("cuda" without CUDA failed in torch's lazy init)
    dev = resolve_device(device) if device is not None else torch.device("cpu")
    gen = make_generator(seed)
    lo, hi = experiment.design_bounds
    D = int(experiment.D)
    if design_sampler is None:

        def design_sampler(B, T, g):
            return lo + (hi - lo) * torch.rand(B, T, D, dtype=torch.float64, generator=g)

    def simulate(B):
        theta = experiment.sample_prior(B, generator=gen)
        designs = design_sampler(B, horizon, gen)
        ys = experiment.sample_y(theta.unsqueeze(1), designs, generator=gen)
        return theta.reshape(B, -1), designs, ys

    theta0, d0, y0 = simulate(4096)
    with torch.random.fork_rng(devices=[]):  # seeded initial weights, global RNG untouched
        torch.manual_seed(seed)
        net = PosteriorNet(D, theta0.shape[-1], hidden, components)
    net.fit_scaling((lo, hi), y0)
    net.theta_mean.copy_(theta0.mean(0))
    net.theta_scale.copy_(theta0.std(0).clamp(min=1e-6))
    net = net.to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, num_steps)
    for _ in progress(range(num_steps), verbose=verbose, desc="posterior net"):
        theta, designs, ys = (v.to(net.theta_mean.device) for v in simulate(batch_size))
        loss = net.prefix_nll(designs, ys, theta).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.cpu().eval()


class DesignPolicy(_HistoryEncoder):
    r"""Softmax policy over candidate designs given the history.

    Candidates are ``prev + offsets`` (``relative=True``; ``offsets`` is an ``A x D`` grid of
    moves, e.g. :meth:`grid_offsets`, which contains the zero move) or a fixed ``A x D`` set of
    absolute designs. Inputs: the DeepSets summary of the history, the scaled previous design
    and ``t / horizon``. Infeasible candidates are masked by the caller (``mask``).
    """

    def __init__(
        self,
        candidates: torch.Tensor,
        relative: bool = True,
        horizon: int = 30,
        hidden: int = 64,
    ):
        candidates = torch.as_tensor(candidates, dtype=torch.float64)
        if candidates.dim() != 2 or candidates.shape[0] < 2:
            raise ValueError("candidates must be an A x D tensor with A >= 2")
        check_finite("candidates", candidates)
        check_int("horizon", horizon)
        super().__init__(candidates.shape[1], hidden)
        self.config = {
            "candidates": candidates,
            "relative": relative,
            "horizon": horizon,
            "hidden": hidden,
        }
        self.relative, self.horizon = bool(relative), int(horizon)
        self.register_buffer("candidates", candidates)
        self.head = _mlp(hidden + 1 + self.design_dim + 1, hidden, candidates.shape[0])

    @staticmethod
    def grid_offsets(delta: float, dim: int, points: int = 5) -> torch.Tensor:
        """All moves on a ``points^dim`` grid over ``[-delta, delta]^dim`` (odd ``points``
        includes the zero move)."""
        check_positive("delta", delta)
        dim, points = check_int("dim", dim), check_int("points", points)
        axis = torch.linspace(-delta, delta, points, dtype=torch.float64)
        return torch.cartesian_prod(*[axis] * dim).reshape(-1, dim)

    def designs_at(self, prev: torch.Tensor) -> torch.Tensor:
        """Candidate designs ``... x A x D`` for previous designs ``... x D``."""
        c = self.candidates.to(prev)
        return prev.unsqueeze(-2) + c if self.relative else c.expand(*prev.shape[:-1], *c.shape)

    def logits(
        self, summary: torch.Tensor, prev: torch.Tensor, t: int, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        dt = self.head[0].weight.dtype
        x = 2 * (prev.to(dt) - self.design_low) / (self.design_high - self.design_low) - 1
        tt = torch.full((*x.shape[:-1], 1), t / self.horizon, dtype=dt, device=x.device)
        out = self.head(torch.cat([summary.to(dt), x, tt], -1))
        if mask is not None:
            out = out.masked_fill(~mask, -math.inf)
        return out
