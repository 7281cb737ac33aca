"""A small RL loop for comparing advantage estimators on the exact bandit
(:class:`probml.models.rollouts.LinearBandit`), where every true value is known.

Per step: draw ``B`` prompts, one rollout each (``G`` for group estimators), compute the
advantages, take a policy-gradient step ``theta += lr * mean_i A_i grad log pi(a_i | i)``
(Adam), and record the true mean reward over all prompts and the squared error of the value
estimate (the baseline) each estimator used against the exact ``V_i(theta)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from probml.inference.advantage import (
    SPOTracker,
    basis_advantages,
    batch_wide_floor,
    grpo_advantages,
    offline_advantages,
    offline_values,
    reinforce_pp_advantages,
    rloo_advantages,
)
from probml.models.rollouts import (
    DriftFilter,
    LinearBandit,
    PromptDriftFilter,
    bayesian_loo_baseline,
    gp_loo_baseline,
)
from probml.utils import check_int, check_positive, make_generator, progress

__all__ = [
    "BanditRLResult",
    "run_bandit_rl",
    "advantages_and_values",
    "check_estimator",
    "side_estimators",
    "estimate_on_first",
    "make_tracker",
    "SINGLE_ROLLOUT",
    "GROUP",
]

SINGLE_ROLLOUT = (
    "basis",
    "basis-linearised",
    "basis-calibrated",
    "basis-inactive-offline",
    "bayes-basis",
    "bayes-basis-rw",
    "bayes-basis-rw-eta",
    "gp-basis",
    "reinforce++",
    "offline",
    "spo",
)
GROUP = ("grpo", "rloo")
BASIS_FORMS = ("basis-linearised", "basis-calibrated")  # other "basis*" names use the BLUE form


def check_estimator(estimator: str) -> None:
    """Raise a ``ValueError`` unless ``estimator`` is one of the known advantage estimators."""
    if estimator not in SINGLE_ROLLOUT + GROUP:
        raise ValueError(f"estimator must be one of {SINGLE_ROLLOUT + GROUP}, got {estimator!r}")


def side_estimators(estimator: str, side_by_side: Sequence[str]) -> tuple[str, ...]:
    """The validated ``side_by_side`` estimators of a run driven by ``estimator`` (the driver
    and repeats dropped, order kept)."""
    if isinstance(side_by_side, str):
        raise ValueError(
            f"side_by_side must be a sequence of estimator names, got {side_by_side!r}"
        )
    side = tuple(dict.fromkeys(e for e in side_by_side if e != estimator))
    for e in side:
        check_estimator(e)
    return side


def check_loop_sizes(
    batch_size: int, num_prompts: int, group_size: int, estimators: Sequence[str]
) -> tuple[int, int]:
    """``(batch_size, group_size)`` of an RL loop as ints, after checking ``2 <= batch_size
    <= num_prompts`` and ``group_size >= 1`` (``>= 2`` when one of ``estimators`` is a
    group estimator, whose advantages need two rollouts per prompt); errors name them."""
    batch_size = check_int("batch_size", batch_size, 2)
    if batch_size > num_prompts:
        raise ValueError(f"batch_size must be in [2, {num_prompts}], got {batch_size}")
    group_size = check_int("group_size", group_size)
    if group_size < 2 and any(e in GROUP for e in estimators):
        raise ValueError(
            f"group_size must be >= 2 for the group estimators {GROUP}, got {group_size}"
        )
    return batch_size, group_size


def estimate_on_first(
    estimator: str,
    tracker: SPOTracker | DriftFilter | None,
    rewards: torch.Tensor,
    p0: torch.Tensor,
    prompts: torch.Tensor,
    features: torch.Tensor | None,
    group_size: int,
) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    """:func:`advantages_and_values` from the first rollout of each prompt of ``rewards``
    (``B x n``), or the first ``group_size`` for group estimators: how a run with
    ``side_by_side`` estimators feeds each one the rollouts it would have drawn alone."""
    r = rewards[:, : group_size if estimator in GROUP else 1]
    f = features if estimator == "gp-basis" else None
    return advantages_and_values(estimator, r, p0, prompts, tracker, f)


def make_tracker(estimator: str, p0: torch.Tensor) -> SPOTracker | DriftFilter | None:
    """The state an estimator carries across steps (``None`` for stateless ones); ``p0`` are
    the offline values of all prompts."""
    if estimator == "spo":
        return SPOTracker(p0)
    if estimator == "bayes-basis-rw":
        return DriftFilter().to(p0.device)
    if estimator == "bayes-basis-rw-eta":
        return PromptDriftFilter(p0.numel()).to(p0.device)
    return None


def advantages_and_values(
    estimator: str,
    rewards: torch.Tensor,
    p0: torch.Tensor,
    prompts: torch.Tensor,
    tracker: SPOTracker | DriftFilter | None = None,
    features: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    """One estimator's advantages (``B x G``) and the value estimate it uses (``B``; for group
    estimators the group mean) from rewards ``B x G`` (``G = 1`` for single-rollout ones).

    Returns ``(advantages, values, chosen beta or None)`` (BASIS: the median temperature
    over the prompts the calibration set, NaN when it set none); ``p0`` are the batch's
    offline values, ``prompts`` their indices (for the SPO tracker and the prompt-drift filter),
    ``tracker`` the estimator's state across steps (:func:`make_tracker`; ``"spo"``,
    ``"bayes-basis-rw"``, ``"bayes-basis-rw-eta"``), ``features`` the batch's prompt features
    (``B x F``, for ``"gp-basis"``)."""
    check_estimator(estimator)  # first: a mistyped "basis-..." name would run the BLUE form
    if estimator == "grpo":
        return grpo_advantages(rewards), rewards.mean(1), None
    if estimator == "rloo":
        return rloo_advantages(rewards), rewards.mean(1), None
    r = rewards[:, 0]
    beta = None
    if estimator.startswith("basis"):
        form = estimator.removeprefix("basis-") if estimator in BASIS_FORMS else "blue"
        inactive = "offline" if estimator == "basis-inactive-offline" else "zero"
        a, diag = basis_advantages(r, p0, form=form, inactive=inactive)
        value = diag["baseline"]
        beta = float(diag["beta"].nanmedian())  # over calibrated prompts (NaN: none)
    elif estimator == "bayes-basis":
        value = bayesian_loo_baseline(r, p0)
        a = r - value
    elif estimator == "bayes-basis-rw":
        if not isinstance(tracker, DriftFilter):
            raise ValueError("estimator 'bayes-basis-rw' needs a DriftFilter tracker")
        value = tracker.loo_baseline(r, p0)
        a = r - value
    elif estimator == "bayes-basis-rw-eta":
        if not isinstance(tracker, PromptDriftFilter):
            raise ValueError("estimator 'bayes-basis-rw-eta' needs a PromptDriftFilter tracker")
        value = tracker.loo_baseline(r, p0, prompts)
        a = r - value
    elif estimator == "gp-basis":
        if features is None:
            raise ValueError("estimator 'gp-basis' needs prompt features")
        value, _ = gp_loo_baseline(r, p0, features, fit_steps=20)
        a = r - value
    elif estimator == "reinforce++":
        a = reinforce_pp_advantages(r)
        value = r.mean().expand_as(r)
    elif estimator == "offline":
        a = offline_advantages(r, p0)
        value = p0
    elif estimator == "spo":
        if not isinstance(tracker, SPOTracker):
            raise ValueError("estimator 'spo' needs an SPOTracker tracker")
        value = tracker.baseline(prompts)
        a = tracker.advantages(prompts, r)
    else:  # pragma: no cover - every name of check_estimator has a branch above
        raise AssertionError(f"no branch for estimator {estimator!r}")
    return a.unsqueeze(1), value, beta


@dataclass
class BanditRLResult:
    """Curves of one run (one entry per step)."""

    estimator: str
    mean_reward: list[float] = field(default_factory=list)
    value_mse: list[float] = field(default_factory=list)
    rollouts: list[int] = field(default_factory=list)
    chosen_beta: list[float] = field(default_factory=list)
    #: per step, the best value MSE of any batch-wide shift and scale of the offline values
    #: (:func:`~probml.inference.advantage.batch_wide_floor`, fitted to the exact values)
    floor_mse: list[float] = field(default_factory=list)
    #: per step, the value MSE of each ``side_by_side`` estimator on the same batches
    side_value_mse: dict[str, list[float]] = field(default_factory=dict)


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
    side_by_side: tuple[str, ...] = (),
) -> BanditRLResult:
    """Train the softmax-linear policy from the reference policy ``bandit.reference_theta``
    (``theta = 0`` unless the bandit was built with ``reference_scale > 0``).

    Args:
        bandit: the environment.
        estimator: one of ``SINGLE_ROLLOUT`` or ``GROUP``.
        steps, batch_size: ``T`` and ``B``; group_size: ``G`` for ``"grpo"``/``"rloo"``.
        K: offline reference samples per prompt (for BASIS, offline-only and SPO priors).
        lr: Adam step size.
        seed: seed of prompts, rollouts and the offline samples.
        side_by_side: further estimators whose value errors are recorded on the same batches
            of the same trajectory (``side_value_mse``; exact values), each with its own
            state; they never touch the policy. Every step then draws the most rollouts any
            of them needs; single-rollout estimators, the driver included, see the first
            rollout of each prompt (as in :func:`~probml.inference.sequence_rl.run_sequence_rl`).

    Estimator details fixed by the loop: ``"spo"`` tracks with :class:`SPOTracker`'s
    defaults and records the baseline before its update; ``"gp-basis"`` describes a prompt
    by the mean of its answers' features (``d``) and fits its hyperparameters by 20 Adam
    steps on each batch.
    """
    check_estimator(estimator)
    side = side_estimators(estimator, side_by_side)
    check_int("steps", steps)
    check_int("K", K)
    check_positive("lr", lr, strict=False)  # lr = 0 keeps the reference policy
    batch_size, group_size = check_loop_sizes(
        batch_size, bandit.num_prompts, group_size, (estimator, *side)
    )
    dev = bandit.features.device
    g = make_generator(seed, device=dev)
    theta = bandit.reference_theta.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    with torch.no_grad():
        v_ref = bandit.values(theta)
        k = torch.binomial(torch.full_like(v_ref, float(K)), v_ref, generator=g)
    p0 = offline_values(k, K)
    tracker = make_tracker(estimator, p0)
    side_trackers = {e: make_tracker(e, p0) for e in side}
    out = BanditRLResult(estimator, side_value_mse={e: [] for e in side})
    n_roll = max(group_size if e in GROUP else 1 for e in (estimator, *side))
    use_features = "gp-basis" in (estimator, *side)
    for _ in progress(range(steps), verbose=verbose, desc=f"bandit RL ({estimator})"):
        prompts = torch.randperm(bandit.num_prompts, generator=g, device=dev)[:batch_size]
        with torch.no_grad():
            v_true = bandit.values(theta, prompts)
            answers, rewards = bandit.sample(theta, prompts, n_roll, g)
            feats = bandit.features[prompts].mean(1) if use_features else None  # GP-BASIS
            batch = (rewards, p0[prompts], prompts, feats, group_size)
            adv, value, beta = estimate_on_first(estimator, tracker, *batch)
            if beta is not None:
                out.chosen_beta.append(beta)
            for e in side:
                v = estimate_on_first(e, side_trackers[e], *batch)[1]
                out.side_value_mse[e].append(float(((v - v_true) ** 2).mean()))
            # the driver learns from the rollouts its advantages cover (the first, or the group)
            score = bandit.score_function(theta, prompts, answers[:, : adv.shape[1]])
            grad = (adv.unsqueeze(-1) * score).mean((0, 1))  # score: B x G x d
        opt.zero_grad()
        theta.grad = -grad  # ascent on expected reward
        opt.step()
        with torch.no_grad():
            out.mean_reward.append(float(bandit.values(theta).mean()))
            out.value_mse.append(float(((value - v_true) ** 2).mean()))
            out.floor_mse.append(batch_wide_floor(v_true, p0[prompts])[0])
            out.rollouts.append(batch_size * n_roll)
    return out
