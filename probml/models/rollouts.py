r"""Generative models of per-prompt success for single-rollout RL (BASIS).

* :func:`logit_shift_model` **[design]**: the hierarchical logit-shift model of the spec,

  .. math::
      c \sim \mathrm{Categorical}(\text{grid}), \quad \eta_i \sim \mathcal N(0, \tau^2), \quad
      r_i \sim \mathrm{Bernoulli}\big(\sigma(\mathrm{logit}\, p_{0,i} + c + \eta_i)\big),

  where :math:`c = 1/\beta` is the batch-wide KL drift and :math:`\eta_i` the prompt-specific
  drift. With ``tau = 0`` and ``c`` enumerated, :func:`bayesian_loo_baseline` computes the
  exact leave-one-out posterior predictive :math:`P(r_i = 1 \mid r_{-i})`, a Bayesian BASIS
  baseline.
* :class:`LinearBandit`: the spec's exact bandit: ``N`` prompts x ``A`` candidate answers with
  features :math:`\phi(i, a) \in \mathbb R^d`, a softmax-linear policy
  :math:`\pi_\theta(a \mid i) \propto \exp(\theta^\top\phi(i,a))`, and correctness by a hidden
  linear rule, so every true value :math:`V_i(\theta) = \sum_a \pi_\theta(a|i) c(i,a)` is exact.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import config_enumerate

from probml.utils import (
    check_batch_probabilities,
    check_finite,
    check_indices,
    check_int,
    check_positive,
    make_generator,
    resolve_device,
)

__all__ = [
    "logit_shift_model",
    "bayesian_loo_baseline",
    "DriftFilter",
    "PromptDriftFilter",
    "gp_loo_baseline",
    "LinearBandit",
]


def _check_batch(rewards: torch.Tensor, p0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rewards, p0)`` as float64 ``B`` vectors: binary rewards, offline values in (0, 1)."""
    r = torch.as_tensor(rewards).double()
    p = check_batch_probabilities(
        "p0", p0, r, "rewards", hint=" (use offline_values to smooth counts)"
    )
    if not bool(((r == 0) | (r == 1)).all()):
        raise ValueError("rewards must be binary (0 or 1) for the logit-shift model")
    return r, p


def _check_grid(grid, min_size: int = 1) -> torch.Tensor:
    grid = torch.as_tensor(grid)
    if grid.dim() != 1 or grid.numel() < min_size:
        raise ValueError(
            f"c_grid must be a vector of >= {min_size} values, got shape {tuple(grid.shape)}"
        )
    check_finite("c_grid", grid)
    return grid


def _check_c_probs(c_probs, grid: torch.Tensor) -> torch.Tensor:
    """A prior over the drift grid: ``G`` finite non-negative weights, not all zero
    (normalised by the Categorical, as Pyro does)."""
    c_probs = torch.as_tensor(c_probs)
    if c_probs.shape != grid.shape:
        raise ValueError(
            f"c_probs must have one entry per c_grid value ({grid.numel()}), got shape "
            f"{tuple(c_probs.shape)}"
        )
    check_finite("c_probs", c_probs)
    if not bool((c_probs >= 0).all()) or not c_probs.sum() > 0:
        raise ValueError("c_probs must be non-negative and not all zero")
    return c_probs


@config_enumerate
def logit_shift_model(
    p0: torch.Tensor,
    rewards: torch.Tensor | None = None,
    c_grid: torch.Tensor | None = None,
    c_probs: torch.Tensor | None = None,
    tau: float = 0.0,
) -> torch.Tensor:
    """Pyro model of one batch of single-rollout rewards.

    Args:
        p0: ``B`` reference success rates in (0, 1).
        rewards: ``B`` observed binary rewards (``None`` to simulate).
        c_grid: ``G`` candidate drifts ``c = 1/beta`` (default ``0 .. 4``); ``c`` is a discrete
            site, enumerated in parallel by ``TraceEnum_ELBO`` / :func:`bayesian_loo_baseline`.
        c_probs: ``G`` prior weights on ``c_grid`` (default uniform; normalised).
        tau: prompt-specific drift scale (``0``: none).

    Returns:
        ``B`` rewards.
    """
    if c_grid is None:
        c_grid = torch.linspace(0.0, 4.0, 17, dtype=p0.dtype, device=p0.device)
    c_grid = _check_grid(c_grid)
    if c_probs is None:
        c_probs = torch.full_like(c_grid, 1.0 / c_grid.numel())
    c_probs = _check_c_probs(c_probs, c_grid)
    tau = check_positive("tau", tau, strict=False)  # a negative or NaN tau meant "none"
    k = pyro.sample("c_index", dist.Categorical(c_probs))
    shift = c_grid[k]
    with pyro.plate("prompts", p0.shape[-1], dim=-1):
        logits = torch.logit(p0) + shift  # enumerated: shift is G x 1 -> logits G x B
        if tau > 0:
            logits = logits + pyro.sample("eta", dist.Normal(torch.zeros_like(p0), tau))
        return pyro.sample("r", dist.Bernoulli(logits=logits), obs=rewards)


def bayesian_loo_baseline(
    rewards: torch.Tensor,
    p0: torch.Tensor,
    c_grid: torch.Tensor | None = None,
    c_probs: torch.Tensor | None = None,
    return_posterior: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Leave-one-out posterior predictive :math:`P(r_i = 1 \mid r_{-i})` under
    :func:`logit_shift_model` with ``tau = 0``, by enumerating the drift ``c``.

    The per-prompt log-likelihoods come from one enumerated trace of the model (shape
    ``G x B``); the posterior of ``c`` without prompt ``i`` is proportional to the prior times
    the other prompts' likelihoods, so the baseline of ``i`` never sees ``r_i``.

    Args:
        return_posterior: also return the ``G`` posterior of ``c`` given the whole batch
            (what a filter carries to the next step; :class:`DriftFilter`).

    Returns:
        ``B`` baselines (and the ``G`` posterior).
    """
    rewards, p0 = _check_batch(rewards, p0)
    if c_grid is not None:
        c_grid = _check_grid(c_grid).to(p0)
    enum_model = poutine.enum(logit_shift_model, first_available_dim=-2)
    tr = poutine.trace(enum_model).get_trace(p0, rewards, c_grid, c_probs)
    tr.compute_log_prob()
    loglik = tr.nodes["r"]["log_prob"]  # G x B (c enumerated on dim -2)
    log_prior = tr.nodes["c_index"]["log_prob"].reshape(-1, 1)  # G x 1
    grid = (
        torch.linspace(0.0, 4.0, 17, dtype=p0.dtype, device=p0.device)
        if c_grid is None
        else c_grid.double()
    )
    total = loglik.sum(-1, keepdim=True)
    log_post_loo = log_prior + total - loglik  # G x B: excludes prompt i
    post = torch.softmax(log_post_loo, dim=0)
    pred = torch.sigmoid(torch.logit(p0)[None, :] + grid[:, None])  # G x B
    baseline = (post * pred).sum(0)
    if return_posterior:
        return baseline, torch.softmax((log_prior + total).reshape(-1), dim=0)
    return baseline


class DriftFilter:
    r"""Bayes-BASIS with the spec's random walk on the drift: a grid filter over
    :math:`c_t = 1/\beta_t` across RL steps.

    The spec's Pyro view puts a random walk on ``c_t``; :func:`bayesian_loo_baseline` alone
    starts every batch from a flat prior, so it re-estimates the drift from ``B`` single
    rewards each step. This filter carries the posterior instead:

    .. math::

        \pi_t(\sigma, c) = \sum_{c'} \pi_{t-1}(\sigma, c')\, K_\sigma(c', c), \qquad
        b_i = \sum_{\sigma, c} \pi_t(\sigma, c \mid r_{t,-i})\,
            \mathrm{sigmoid}(\mathrm{logit}\,p_{0,i} + c),

    with :math:`K_\sigma(c', \cdot) \propto \mathcal N(\cdot - c'; 0, \sigma^2)` normalised on
    the grid,

    then :math:`\pi_t(\sigma, c \mid r_t)` by Bayes' rule. **[design]** The random-walk
    scale :math:`\sigma` is not fixed: each value in ``step_sds`` is a hypothesis with a
    uniform prior, weighted by its marginal likelihood as the run goes (a joint grid over
    ``(sigma, c)``). The baseline of prompt ``i`` depends on past batches and on ``r_{t,-i}``,
    never on ``r_{t,i}``, so the policy gradient stays unbiased (tested).

    Args:
        c_grid: ``G`` drift values (default ``0 .. 4`` in steps of 0.05).
        step_sds: random-walk standard deviations per step (each ``> 0``).
    """

    def __init__(
        self,
        c_grid: torch.Tensor | None = None,
        step_sds: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3),
    ):
        grid = torch.linspace(0.0, 4.0, 81, dtype=torch.float64) if c_grid is None else c_grid
        grid = _check_grid(torch.as_tensor(grid, dtype=torch.float64), min_size=2)
        sds = torch.as_tensor(step_sds, dtype=torch.float64)
        if sds.dim() != 1 or sds.numel() == 0 or not bool((sds > 0).all()):
            raise ValueError(
                f"step_sds must be a non-empty list of positive values, got {step_sds}"
            )
        self.c_grid, self.step_sds = grid, sds
        # S x G x G transition kernels, rows normalised on the grid
        diff = grid[None, :, None] - grid[None, None, :]
        kern = torch.exp(-0.5 * (diff / sds[:, None, None]) ** 2)
        self.transition = kern / kern.sum(-1, keepdim=True)
        S, G = sds.numel(), grid.numel()
        self.posterior = torch.full((S, G), 1.0 / (S * G), dtype=torch.float64)

    def to(self, device: torch.device | str) -> DriftFilter:
        device = resolve_device(device)
        self.c_grid, self.step_sds = self.c_grid.to(device), self.step_sds.to(device)
        self.transition, self.posterior = self.transition.to(device), self.posterior.to(device)
        return self

    def predictive_prior(self) -> torch.Tensor:
        """``S x G`` prior of ``(sigma, c)`` for the next batch (one random-walk step)."""
        return torch.einsum("sg,sgh->sh", self.posterior, self.transition)

    def loo_baseline(
        self, rewards: torch.Tensor, p0: torch.Tensor, update: bool = True
    ) -> torch.Tensor:
        """Predict one step and return the ``B`` leave-one-out baselines of the batch
        (``rewards``, ``p0``: ``B``); then, if ``update``, condition the filter on the batch."""
        prior = self.predictive_prior()
        S, G = prior.shape
        baseline, post = bayesian_loo_baseline(
            rewards, p0, self.c_grid.repeat(S), prior.reshape(-1), return_posterior=True
        )
        if update:
            self.posterior = post.reshape(S, G)
        return baseline

    def mean_drift(self) -> float:
        """Posterior mean of ``c`` after the last update."""
        return float((self.posterior.sum(0) * self.c_grid).sum())


class PromptDriftFilter(DriftFilter):
    r""":class:`DriftFilter` plus the spec's prompt-specific drift :math:`\eta_i`, learned from
    each prompt's own earlier rewards.

    The spec's model is :math:`r_i \sim \mathrm{Bernoulli}(\sigma(\mathrm{logit}\,p_{0,i} +
    c_t + \eta_i))` with :math:`\eta_i \sim \mathcal N(0, \tau^2)`. Within one batch each
    prompt has a single reward, so :math:`\eta_i` cannot be told apart from noise; across
    steps a prompt recurs, and its earlier rewards say how far its success has moved away from
    the shared drift. **[design]** The filter keeps, for every prompt and every hypothesis
    :math:`\tau`, a posterior :math:`q_i(e \mid \tau)` over a grid of :math:`\eta` values
    (initially the discretised prior; :math:`\tau = 0` is a point mass at 0), and a joint
    posterior over :math:`(\tau, \sigma, c)`:

    .. math::

        P_i(\tau, c) = \sum_e q_i(e \mid \tau)\, \sigma(\mathrm{logit}\,p_{0,i} + c + e),
        \qquad
        b_i = \frac{\sum_{\tau,\sigma,c} \pi_t(\tau,\sigma,c) \prod_{j \ne i}
            P_j^{r_j}(1-P_j)^{1-r_j}\, P_i}{\sum_{\tau,\sigma,c} \pi_t(\tau,\sigma,c)
            \prod_{j \ne i} P_j^{r_j}(1-P_j)^{1-r_j}},

    with :math:`\pi_t` the posterior after one random-walk step of ``c`` (as in
    :class:`DriftFilter`; :math:`\tau` is static, weighted by its marginal likelihood). After
    the batch, :math:`q_i(e \mid \tau) \propto q_i(e \mid \tau) \sum_c w_{-i}(c \mid \tau)\,
    p(r_i \mid c, e)` with :math:`w_{-i}` the posterior of ``c`` given the other rewards (an
    assumed-density step: ``c`` and the :math:`\eta_i` are carried as independent). The
    baseline of prompt ``i`` depends on earlier batches and on :math:`r_{t,-i}`, never on
    :math:`r_{t,i}`, so the policy gradient stays unbiased (tested). With ``taus=(0.0,)`` it is
    :class:`DriftFilter` (tested). :math:`\eta_i` also absorbs the error of the offline value
    :math:`p_{0,i}` itself.

    Cost per batch: ``O(T G B E)`` time and ``O(G B E + T G B)`` memory (``T`` values of tau,
    ``E`` grid points of eta; the rewards depend on ``(tau, c)`` only, so ``sigma`` is summed
    out before the leave-one-out step), plus ``O(T S G^2)`` for the random-walk step; state
    ``O(N T E)`` for ``N`` prompts.

    Args:
        num_prompts: ``N``, the number of distinct prompts (indices ``0 .. N-1``).
        taus: prompt-specific drift scales (each ``>= 0``), hypotheses with a uniform prior.
        eta_grid: ``E`` values of :math:`\eta` (default ``-4 .. 4`` in steps of 0.2; must
            contain 0 when a tau is 0).
        c_grid, step_sds: as :class:`DriftFilter`.
    """

    def __init__(
        self,
        num_prompts: int,
        taus: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0),
        eta_grid: torch.Tensor | None = None,
        c_grid: torch.Tensor | None = None,
        step_sds: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3),
    ):
        super().__init__(c_grid, step_sds)
        num_prompts = check_int("num_prompts", num_prompts)
        t = torch.as_tensor(taus, dtype=torch.float64)
        if t.dim() != 1 or t.numel() == 0 or not bool((t >= 0).all() & torch.isfinite(t).all()):
            raise ValueError(f"taus must be a non-empty list of finite values >= 0, got {taus}")
        e = 0.2 * torch.arange(-20, 21, dtype=torch.float64) if eta_grid is None else eta_grid
        e = torch.as_tensor(e, dtype=torch.float64)
        if e.dim() != 1 or e.numel() < 2 or not bool(torch.isfinite(e).all()):
            raise ValueError(
                f"eta_grid must be a vector of >= 2 finite values, got shape {tuple(e.shape)}"
            )
        if bool((t == 0).any()) and float(e.abs().min()) > 1e-12:
            raise ValueError("eta_grid must contain 0 when one of the taus is 0")
        # T x E discretised priors of eta; tau = 0 is a point mass at 0
        scale = torch.where(t > 0, t, torch.ones_like(t))[:, None]
        prior = torch.where(
            (t > 0)[:, None],
            torch.exp(-0.5 * (e[None] / scale) ** 2),
            (e.abs() <= 1e-12)[None].double(),
        )
        self.taus, self.eta_grid, self.num_prompts = t, e, int(num_prompts)
        self.log_q = (
            (prior / prior.sum(-1, keepdim=True)).log()[None].repeat(int(num_prompts), 1, 1)
        )
        S, G = self.posterior.shape
        self.posterior = torch.full(
            (t.numel(), S, G), 1.0 / (t.numel() * S * G), dtype=torch.float64
        )

    def to(self, device: torch.device | str) -> PromptDriftFilter:
        device = resolve_device(device)
        super().to(device)
        self.taus, self.eta_grid = self.taus.to(device), self.eta_grid.to(device)
        self.log_q = self.log_q.to(device)
        return self

    def predictive_prior(self) -> torch.Tensor:
        """``T x S x G`` prior of ``(tau, sigma, c)`` for the next batch (one random-walk step)."""
        return torch.einsum("tsg,sgh->tsh", self.posterior, self.transition)

    def loo_baseline(
        self,
        rewards: torch.Tensor,
        p0: torch.Tensor,
        prompts: torch.Tensor | None = None,
        update: bool = True,
    ) -> torch.Tensor:
        """Predict one step and return the ``B`` leave-one-out baselines of the batch
        (``rewards``, ``p0``: ``B``; ``prompts``: their ``B`` indices in ``0 .. N-1``); then, if
        ``update``, condition the drift posterior and the prompts' eta posteriors on it."""
        r, p0 = _check_batch(rewards, p0)
        if prompts is None:
            raise ValueError("prompts (the batch's prompt indices) are required")
        idx = check_indices("prompts", prompts, self.num_prompts, r.shape, self.log_q.device)
        prior = self.predictive_prior()  # T S G
        T, S, G = prior.shape
        q = torch.softmax(self.log_q[idx], -1)  # B T E
        lin = torch.logit(p0)[None, :, None] + self.c_grid[:, None, None] + self.eta_grid
        succ = torch.sigmoid(lin)  # G B E
        P = torch.einsum("bte,gbe->tgb", q, succ).clamp(1e-15, 1 - 1e-15)  # T G B
        hit = r.bool()
        ll = torch.where(hit, P.log(), torch.log1p(-P))  # T G B
        ll_tot = ll.sum(-1)  # T G
        # the rewards depend on (tau, c) only, so sigma is summed out of the leave-one-out
        # posteriors: T x G x B instead of T x S x G x B
        log_tc = prior.sum(1).clamp_min(1e-300).log() + ll_tot  # T G
        loo = torch.softmax((log_tc[..., None] - ll).reshape(-1, r.numel()), 0)
        loo = loo.reshape(T, G, -1)  # (tau, c) without prompt i, for each i
        baseline = (loo * P).sum((0, 1))
        if update:
            log_joint = prior.clamp_min(1e-300).log() + ll_tot[:, None, :]  # T S G
            self.posterior = torch.softmax(log_joint.reshape(-1), 0).reshape(T, S, G)
            w = loo / loo.sum(1, keepdim=True).clamp_min(1e-300)  # c given r_{-i} and tau
            # p(r_i | c, e) is succ for a hit and 1 - succ for a miss; w sums to 1 over c, so
            # the message of a miss is 1 minus that of a hit (no G x B x E tensor for it)
            m = torch.einsum("tgb,gbe->bte", w, succ)  # B T E
            msg = torch.where(hit[:, None, None], m, 1 - m).clamp_min(1e-300).log()
            # index_add_: a prompt drawn twice in one batch gets both messages
            self.log_q.index_add_(0, idx, msg)
            rows = idx.unique()
            self.log_q[rows] -= torch.logsumexp(self.log_q[rows], -1, keepdim=True)
        return baseline

    def mean_drift(self) -> float:
        """Posterior mean of ``c`` after the last update."""
        return float((self.posterior.sum((0, 1)) * self.c_grid).sum())

    def tau_weights(self) -> torch.Tensor:
        """``T`` posterior weights of the ``taus`` after the last update."""
        return self.posterior.sum((1, 2))


class LinearBandit:
    """The exact bandit of the BASIS spec.

    Args:
        num_prompts: ``N``; num_answers: ``A``; dim: feature dimension ``d``.
        seed: seed of the features, the hidden rule, the per-prompt thresholds and the
            reference policy's direction.
        reference_scale: ``s >= 0``. **[design]** The reference policy is
            ``theta_ref = s z`` with ``z ~ N(0, I_d)`` drawn independently of the hidden rule:
            ``s = 0`` (default) is the uniform policy, so ``V_i(theta_ref) = m_i / A``; a
            larger ``s`` makes the reference peaked on answers unrelated to correctness, which
            spreads the prompt values towards 0 and 1 (as a pretrained model's are). The spec
            fixes neither; ``benchmarks/basis.py --calibrate`` picks ``s`` (and the step size)
            from the spec's reference statistics of the baselines.

    Attributes:
        features: ``N x A x d``; correct: ``N x A`` in {0, 1}; reference_theta: ``d``.
    """

    def __init__(
        self,
        num_prompts: int = 4096,
        num_answers: int = 8,
        dim: int = 16,
        seed: int = 0,
        device: torch.device | str | None = None,
        reference_scale: float = 0.0,
    ):
        if not (reference_scale >= 0 and math.isfinite(reference_scale)):
            raise ValueError(f"reference_scale must be finite and >= 0, got {reference_scale}")
        check_int("num_prompts", num_prompts)
        check_int("dim", dim)
        check_int("num_answers", num_answers, 2)  # a prompt needs a correct and a wrong answer
        g = make_generator(seed)
        self.features = torch.randn(num_prompts, num_answers, dim, generator=g, dtype=torch.float64)
        w = torch.randn(dim, generator=g, dtype=torch.float64)
        score = self.features @ w  # N x A
        # a per-prompt number of correct answers m_i in 1..A-1: the m_i highest-scoring
        # answers are correct, so base success rates spread over (0, 1)
        m = torch.randint(1, num_answers, (num_prompts, 1), generator=g)
        rank = score.argsort(1).argsort(1)  # 0 = lowest score
        self.correct = (rank >= num_answers - m).double()
        self.hidden_rule = w
        # drawn last, so the default world (s = 0) is unchanged by the option
        self.reference_theta = reference_scale * torch.randn(dim, generator=g, dtype=torch.float64)
        if device is not None:
            device = resolve_device(device)  # "cuda" without CUDA failed in torch's lazy init
            self.features, self.correct = self.features.to(device), self.correct.to(device)
            self.reference_theta = self.reference_theta.to(device)
        self.num_prompts, self.num_answers, self.dim = num_prompts, num_answers, dim

    def policy(self, theta: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """``pi_theta(a | i)``: ``B x A`` (all prompts when ``prompts`` is None)."""
        f = self.features if prompts is None else self.features[prompts]
        return torch.softmax(f @ theta, dim=-1)

    def values(self, theta: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """Exact success probabilities ``V_i(theta)``: ``B``."""
        c = self.correct if prompts is None else self.correct[prompts]
        return (self.policy(theta, prompts) * c).sum(-1)

    def sample(
        self, theta: torch.Tensor, prompts: torch.Tensor, num: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``num`` answers per prompt: ``(answers B x num, rewards B x num)``."""
        num = check_int("num", num)  # <= 0 failed inside torch.multinomial, naming nothing
        pi = self.policy(theta, prompts)
        a = torch.multinomial(pi, num, replacement=True, generator=generator)
        return a, self.correct[prompts].gather(1, a)

    def score_function(
        self, theta: torch.Tensor, prompts: torch.Tensor, answers: torch.Tensor
    ) -> torch.Tensor:
        r""":math:`\nabla_\theta \log\pi_\theta(a|i) = \phi(i,a) - \mathbb E_\pi\phi(i,\cdot)`:
        ``B x num x d`` for ``answers`` ``B x num``."""
        f = self.features[prompts]  # B x A x d
        mean_f = (self.policy(theta, prompts).unsqueeze(-1) * f).sum(1, keepdim=True)
        chosen = f.gather(1, answers.unsqueeze(-1).expand(*answers.shape, f.shape[-1]))
        return chosen - mean_f


def gp_loo_baseline(
    rewards: torch.Tensor,
    p0: torch.Tensor,
    features: torch.Tensor,
    fit_steps: int = 50,
    lr: float = 0.1,
    hyperparameters: dict | None = None,
) -> tuple[torch.Tensor, dict]:
    r"""GP-BASIS: a leave-one-out baseline that shares drift between prompts with similar
    features (the spec's GP over prompt features, with gpytorch).

    **[design]** A Gaussian-process regression on the probability scale (a linear-Gaussian
    stand-in for the logit-shift model with :math:`\eta \sim GP`): the residuals
    :math:`e_j = r_j - p_{0,j}` over the prompt features get a constant mean ``m`` (the
    batch-wide drift) and an RBF kernel (the prompt-specific, feature-correlated drift) plus
    Bernoulli-level noise; the baseline is the exact leave-one-out predictive mean

    .. math:: b_i = p_{0,i} + m + (e_i - m) - [K^{-1}(e - m)]_i / [K^{-1}]_{ii},

    clamped to ``[0, 1]``. For fixed hyperparameters ``b_i`` is a function of ``r_{-i}`` only
    (tested); fitted by marginal likelihood on the batch (``hyperparameters=None``) they see
    every reward, an ``O(1/B)`` dependence we accept and document.

    Args:
        rewards: ``B`` binary rewards; p0: ``B`` offline values; features: ``B x F``.
        fit_steps, lr: Adam steps on the exact marginal likelihood, from mean 0, outputscale
            0.01, lengthscale 1 and noise 0.2 (``fit_steps=0`` keeps these).
        hyperparameters: fixed ``{"mean", "outputscale", "lengthscale", "noise"}`` (skips the fit).

    Returns:
        ``(baseline B, fitted hyperparameters)``.
    """
    import gpytorch

    r, p0 = _check_batch(rewards, p0)  # binary rewards, p0 inside (0, 1), both B
    X = torch.as_tensor(features, dtype=torch.float64, device=r.device)
    if X.dim() != 2 or X.shape[0] != r.shape[0]:
        raise ValueError(f"features must be B x F with B = {r.shape[0]}, got {tuple(X.shape)}")
    check_finite("features", X)
    if r.shape[0] < 3:
        raise ValueError("gp_loo_baseline needs at least 3 prompts")
    fit_steps = check_int("fit_steps", fit_steps, 0)
    check_positive("lr", lr)
    if hyperparameters is not None:  # checked here: gpytorch's own errors name no key
        keys = {"mean", "outputscale", "lengthscale", "noise"}
        if not isinstance(hyperparameters, dict) or set(hyperparameters) != keys:
            got = sorted(hyperparameters) if isinstance(hyperparameters, dict) else hyperparameters
            raise ValueError(f"hyperparameters must be a dict with keys {sorted(keys)}, got {got}")
        check_finite("hyperparameters['mean']", hyperparameters["mean"])
        for key in ("outputscale", "lengthscale", "noise"):
            check_positive(f"hyperparameters[{key!r}]", hyperparameters[key])
    e = r - p0

    class _GP(gpytorch.models.ExactGP):
        def __init__(self, x, y, lik):
            super().__init__(x, y, lik)
            self.mean_module = gpytorch.means.ConstantMean()
            self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(
                self.mean_module(x), self.covar_module(x)
            )

    lik = gpytorch.likelihoods.GaussianLikelihood().double().to(r.device)
    gp = _GP(X, e, lik).double().to(r.device)
    if hyperparameters is None:
        lik.noise = 0.2
        gp.covar_module.outputscale = 0.01
        gp.covar_module.base_kernel.lengthscale = 1.0
        gp.train()
        lik.train()
        opt = torch.optim.Adam(gp.parameters(), lr=lr)
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(lik, gp)
        with torch.enable_grad():  # callers often run inside no_grad (RL loops)
            for _ in range(fit_steps):
                opt.zero_grad()
                loss = -mll(gp(X), e)
                loss.backward()
                opt.step()
    else:
        gp.mean_module.constant.data.fill_(float(hyperparameters["mean"]))
        gp.covar_module.outputscale = float(hyperparameters["outputscale"])
        gp.covar_module.base_kernel.lengthscale = float(hyperparameters["lengthscale"])
        lik.noise = float(hyperparameters["noise"])
    with torch.no_grad():
        m = gp.mean_module.constant.reshape(())
        K = gp.covar_module(X).to_dense() + lik.noise * torch.eye(
            len(e), dtype=e.dtype, device=e.device
        )
        Kinv = torch.linalg.inv(K)
        loo_resid = (e - m) - (Kinv @ (e - m)) / Kinv.diagonal()
        baseline = (p0 + m + loo_resid).clamp(0.0, 1.0)
        hp = {
            "mean": float(m),
            "outputscale": float(gp.covar_module.outputscale),
            "lengthscale": float(gp.covar_module.base_kernel.lengthscale),
            "noise": float(lik.noise),
        }
    return baseline, hp
