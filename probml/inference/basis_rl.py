"""A small RL loop for comparing advantage estimators on the exact bandit
(:class:`probml.models.rollouts.LinearBandit`), where every true value is known.

Per step: draw ``B`` prompts, one rollout each (``G`` for group estimators), compute the
advantages, take a policy-gradient step ``theta += lr * mean_i A_i grad log pi(a_i | i)``
(Adam), and record the true mean reward over all prompts and the squared error of the value
estimate (the baseline) each estimator used against the exact ``V_i(theta)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from probml.inference.advantage import (
    SPOTracker,
    basis_advantages,
    grpo_advantages,
    offline_advantages,
    offline_values,
    reinforce_pp_advantages,
    rloo_advantages,
)
from probml.models.rollouts import LinearBandit, bayesian_loo_baseline
from probml.utils import progress

__all__ = ["BanditRLResult", "run_bandit_rl", "SINGLE_ROLLOUT", "GROUP"]

SINGLE_ROLLOUT = ("basis", "basis-linearised", "bayes-basis", "reinforce++", "offline", "spo")
GROUP = ("grpo", "rloo")


@dataclass
class BanditRLResult:
    """Curves of one run (one entry per step)."""

    estimator: str
    mean_reward: list[float] = field(default_factory=list)
    value_mse: list[float] = field(default_factory=list)
    rollouts: list[int] = field(default_factory=list)
    chosen_beta: list[float] = field(default_factory=list)


def run_bandit_rl(
    bandit: LinearBandit,
    estimator: str = "basis",
    steps: int = 300,
    batch_size: int = 128,
    group_size: int = 8,
    K: int = 16,
    lr: float = 0.05,
    seed: int = 0,
    verbose: bool = False,
) -> BanditRLResult:
    """Train the softmax-linear policy from ``theta = 0`` (the reference policy).

    Args:
        bandit: the environment.
        estimator: one of ``SINGLE_ROLLOUT`` or ``GROUP``.
        steps, batch_size: ``T`` and ``B``; group_size: ``G`` for ``"grpo"``/``"rloo"``.
        K: offline reference samples per prompt (for BASIS, offline-only and SPO priors).
        lr: Adam step size.
        seed: seed of prompts, rollouts and the offline samples.
    """
    if estimator not in SINGLE_ROLLOUT + GROUP:
        raise ValueError(f"estimator must be one of {SINGLE_ROLLOUT + GROUP}, got {estimator!r}")
    if batch_size < 2 or batch_size > bandit.num_prompts:
        raise ValueError(f"batch_size must be in [2, {bandit.num_prompts}], got {batch_size}")
    dev = bandit.features.device
    g = torch.Generator(device=dev).manual_seed(seed)
    theta = torch.zeros(bandit.dim, dtype=torch.float64, device=dev, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=lr)
    with torch.no_grad():
        v_ref = bandit.values(theta)
        k = torch.binomial(torch.full_like(v_ref, float(K)), v_ref, generator=g)
    p0 = offline_values(k, K)
    spo = SPOTracker(p0) if estimator == "spo" else None
    out = BanditRLResult(estimator)
    for _ in progress(range(steps), verbose=verbose, desc=f"bandit RL ({estimator})"):
        prompts = torch.randperm(bandit.num_prompts, generator=g, device=dev)[:batch_size]
        with torch.no_grad():
            v_true = bandit.values(theta, prompts)
            n_roll = group_size if estimator in GROUP else 1
            answers, rewards = bandit.sample(theta, prompts, n_roll, g)
            if estimator == "grpo":
                adv = grpo_advantages(rewards)
                value = rewards.mean(1)
            elif estimator == "rloo":
                adv = rloo_advantages(rewards)
                value = rewards.mean(1)
            else:
                r = rewards[:, 0]
                if estimator in ("basis", "basis-linearised"):
                    form = "blue" if estimator == "basis" else "linearised"
                    a, diag = basis_advantages(r, p0[prompts], form=form)
                    value = diag["baseline"]
                    out.chosen_beta.append(float(diag["beta"].median()))
                elif estimator == "bayes-basis":
                    value = bayesian_loo_baseline(r, p0[prompts])
                    a = r - value
                elif estimator == "reinforce++":
                    a = reinforce_pp_advantages(r)
                    value = r.mean().expand_as(r)
                elif estimator == "offline":
                    a = offline_advantages(r, p0[prompts])
                    value = p0[prompts]
                else:  # spo
                    value = spo.baseline(prompts)
                    a = spo.advantages(prompts, r)
                adv = a.unsqueeze(1)
            score = bandit.score_function(theta, prompts, answers)  # B x G x d
            grad = (adv.unsqueeze(-1) * score).mean((0, 1))
        opt.zero_grad()
        theta.grad = -grad  # ascent on expected reward
        opt.step()
        with torch.no_grad():
            out.mean_reward.append(float(bandit.values(theta).mean()))
            out.value_mse.append(float(((value - v_true) ** 2).mean()))
            out.rollouts.append(batch_size * n_roll)
    return out
