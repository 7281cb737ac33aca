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

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import config_enumerate

__all__ = ["logit_shift_model", "bayesian_loo_baseline", "gp_loo_baseline", "LinearBandit"]


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
        c_probs: ``G`` prior probabilities (default uniform).
        tau: prompt-specific drift scale (``0``: none).

    Returns:
        ``B`` rewards.
    """
    if c_grid is None:
        c_grid = torch.linspace(0.0, 4.0, 17, dtype=p0.dtype, device=p0.device)
    if c_probs is None:
        c_probs = torch.full_like(c_grid, 1.0 / c_grid.numel())
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
) -> torch.Tensor:
    r"""Leave-one-out posterior predictive :math:`P(r_i = 1 \mid r_{-i})` under
    :func:`logit_shift_model` with ``tau = 0``, by enumerating the drift ``c``.

    The per-prompt log-likelihoods come from one enumerated trace of the model (shape
    ``G x B``); the posterior of ``c`` without prompt ``i`` is proportional to the prior times
    the other prompts' likelihoods, so the baseline of ``i`` never sees ``r_i``.

    Returns:
        ``B`` baselines.
    """
    p0 = p0.double()
    rewards = rewards.double()
    enum_model = poutine.enum(logit_shift_model, first_available_dim=-2)
    tr = poutine.trace(enum_model).get_trace(p0, rewards, c_grid, c_probs)
    tr.compute_log_prob()
    loglik = tr.nodes["r"]["log_prob"]  # G x B (c enumerated on dim -2)
    log_prior = tr.nodes["c_index"]["log_prob"].reshape(-1, 1)  # G x 1
    grid = torch.linspace(0.0, 4.0, 17, dtype=p0.dtype) if c_grid is None else c_grid.double()
    total = loglik.sum(-1, keepdim=True)
    log_post_loo = log_prior + total - loglik  # G x B: excludes prompt i
    post = torch.softmax(log_post_loo, dim=0)
    pred = torch.sigmoid(torch.logit(p0)[None, :] + grid[:, None])  # G x B
    return (post * pred).sum(0)


class LinearBandit:
    """The exact bandit of the BASIS spec.

    Args:
        num_prompts: ``N``; num_answers: ``A``; dim: feature dimension ``d``.
        seed: seed of the features, the hidden rule and the per-prompt thresholds.

    Attributes:
        features: ``N x A x d``; correct: ``N x A`` in {0, 1}.
    """

    def __init__(
        self,
        num_prompts: int = 4096,
        num_answers: int = 8,
        dim: int = 16,
        seed: int = 0,
        device: torch.device | str | None = None,
    ):
        g = torch.Generator().manual_seed(seed)
        self.features = torch.randn(num_prompts, num_answers, dim, generator=g, dtype=torch.float64)
        w = torch.randn(dim, generator=g, dtype=torch.float64)
        score = self.features @ w  # N x A
        # a per-prompt number of correct answers m_i in 1..A-1: the m_i highest-scoring
        # answers are correct, so base success rates spread over (0, 1)
        m = torch.randint(1, num_answers, (num_prompts, 1), generator=g)
        rank = score.argsort(1).argsort(1)  # 0 = lowest score
        self.correct = (rank >= num_answers - m).double()
        self.hidden_rule = w
        if device is not None:
            self.features, self.correct = self.features.to(device), self.correct.to(device)
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
        fit_steps, lr: Adam steps on the exact marginal likelihood.
        hyperparameters: fixed ``{"mean", "outputscale", "lengthscale", "noise"}`` (skips the fit).

    Returns:
        ``(baseline B, fitted hyperparameters)``.
    """
    import gpytorch

    r = torch.as_tensor(rewards, dtype=torch.float64)
    p0 = torch.as_tensor(p0, dtype=torch.float64, device=r.device)
    X = torch.as_tensor(features, dtype=torch.float64, device=r.device)
    if r.dim() != 1 or p0.shape != r.shape or X.dim() != 2 or X.shape[0] != r.shape[0]:
        raise ValueError(
            "rewards and p0 must be B vectors and features B x F; got "
            f"{tuple(r.shape)}, {tuple(p0.shape)}, {tuple(X.shape)}"
        )
    if r.shape[0] < 3:
        raise ValueError("gp_loo_baseline needs at least 3 prompts")
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
