r"""Advantage estimators for critic-free RL with verifiable (binary) rewards.

Every estimator is a pure tensor function: rewards in, advantages out, so it plugs into any RL
loop. Shapes: ``B`` prompts; single-rollout estimators take ``rewards`` of shape ``B``; group
estimators take ``B x G``.

**BASIS** ([paper]: offline initial values, a batch-wise leave-one-out baseline with BLUE
weights, online calibration of the KL temperature on a grid, an active set; [design]: the
exact formulas below, from the spec)::

    offline:    p0_i = (k_i + 1/2) / (K + 1)                      (k_i of K reference samples)
    V_i(beta) = p0_i e^{1/beta} / (p0_i e^{1/beta} + 1 - p0_i)     (KL-optimal policy's value)
    active:     A = {i : eps < V_i < 1 - eps}
    BLUE LOO:   b_i(beta) = V_i sum_{j in A\i} r_j/(1-V_j) / sum_{j in A\i} V_j/(1-V_j)
    calibrate:  beta_i = argmin_beta sum_{j in A\i} (r_j - b_j^{(-i)}(beta))^2
    advantage:  A_i = r_i - b_i(beta_i) on A; A_i = r_i off A (zero baseline)

(``b_i`` is clamped to [0, 1], the range of a binary reward's value; with small batches the
BLUE ratio can leave it.)

The calibration is itself leave-one-out (``b_j^{(-i)}`` also excludes prompt ``i``), so the
baseline of prompt ``i`` is a function of the other prompts' rewards only and the policy
gradient stays exactly unbiased. The ``"linearised"`` form
``b_i = V_i + s_i^2 sum_{j != i}(r_j - V_j) / sum_{j != i} s_j^2`` with ``s^2 = V(1-V)`` is the
alternative the spec allows.
"""

from __future__ import annotations

import math

import torch

from probml.utils import (
    check_batch_probabilities,
    check_indices,
    check_int,
    check_interval,
    check_positive,
    check_tensor,
)

__all__ = [
    "offline_values",
    "kl_optimal_values",
    "batch_wide_floor",
    "basis_advantages",
    "reinforce_pp_advantages",
    "grpo_advantages",
    "rloo_advantages",
    "offline_advantages",
    "astar_po_values",
    "SPOTracker",
    "DEFAULT_BETA_GRID",
]

_TWO_OUT_ELEMENTS = 2**24  # elements per chunk of the G x chunk x B leave-two-out tensor

DEFAULT_BETA_GRID = (
    0.1,
    0.15,
    0.2,
    0.25,
    0.35,
    0.5,
    0.7,
    1.0,
    1.4,
    2.0,
    3.0,
    5.0,
    10.0,
    float("inf"),
)


def _check_rewards(
    rewards: torch.Tensor, name: str = "rewards", binary: bool = False
) -> torch.Tensor:
    check_tensor(name, rewards)
    r = rewards if rewards.is_floating_point() else rewards.double()
    if not bool(torch.isfinite(r).all()):
        raise ValueError(f"{name} must be finite")
    if binary and bool(((r < 0) | (r > 1)).any()):
        raise ValueError(
            f"{name} must lie in [0, 1] for the binary-reward form; got range "
            f"[{float(r.min()):.3g}, {float(r.max()):.3g}]"
        )
    return r


def _check_prior_values(prior_values, like: torch.Tensor, name: str) -> torch.Tensor:
    """``prior_values`` as float64 on ``like``'s device: shape ``(B,)`` like ``like``, inside
    (0, 1)."""
    return check_batch_probabilities(
        "prior_values", prior_values, like, name, hint="; use offline_values(k, K)"
    )


def offline_values(k: torch.Tensor, K: int) -> torch.Tensor:
    """Smoothed offline success rates ``(k + 1/2) / (K + 1)`` from ``k`` of ``K`` reference samples."""
    K = check_int("K", K)
    k = torch.as_tensor(k)
    if not bool(((k >= 0) & (k <= K)).all()):  # NaN fails too
        raise ValueError(f"k must lie in [0, K={K}]")
    if k.is_floating_point() and not bool((k == k.round()).all()):
        raise ValueError("k must hold counts (whole numbers of correct reference samples)")
    return (k.double() + 0.5) / (K + 1)


def kl_optimal_values(p0: torch.Tensor, beta: torch.Tensor | float) -> torch.Tensor:
    r"""Value of the KL-regularised optimal policy for binary reward at temperature ``beta``:
    :math:`V = p_0 e^{1/\beta} / (p_0 e^{1/\beta} + 1 - p_0)`, i.e.
    :math:`\mathrm{logit}\,V = \mathrm{logit}\,p_0 + 1/\beta` (``beta = inf`` gives ``p0``).

    ``p0``: ``B`` in [0, 1]; ``beta``: scalar or ``G``, each >= 0 (``0`` gives 1 where
    ``p0 > 0``); with ``G`` the result is ``G x B``."""
    if not isinstance(p0, torch.Tensor) or not p0.is_floating_point():
        # an integer p0 would also truncate beta (cast to p0's dtype) without a word
        got = p0.dtype if isinstance(p0, torch.Tensor) else type(p0).__name__
        raise TypeError(f"p0 must be a floating torch.Tensor, got {got}")
    beta = torch.as_tensor(beta, dtype=p0.dtype, device=p0.device)
    if not bool(((p0 >= 0) & (p0 <= 1)).all()):
        raise ValueError("p0 must lie in [0, 1]")
    if not bool((beta >= 0).all()):  # NaN fails too
        raise ValueError(f"beta must be >= 0 (inf allowed), got {beta.tolist()!r}")
    return _kl_optimal_values(p0, beta)


def _kl_optimal_values(p0: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """:func:`kl_optimal_values` on inputs already checked (no device synchronisation)."""
    shift = torch.where(torch.isinf(beta), torch.zeros_like(beta), 1.0 / beta)
    logit = torch.logit(p0) + shift.reshape(*shift.shape, *([1] * p0.dim()))
    return torch.sigmoid(logit)


def batch_wide_floor(
    values: torch.Tensor,
    prior_values: torch.Tensor,
    noise: torch.Tensor | None = None,
    shifts: torch.Tensor | None = None,
) -> tuple[float, float, float]:
    r"""The smallest value MSE a batch-wide correction of the offline values can reach (an
    oracle diagnostic, not an estimator: it is fitted to the true values).

    The family is :math:`\hat v_i(a, c) = a\,\sigma(\mathrm{logit}\,p_{0,i} + c)`: one shared
    logit shift ``c`` (the KL temperature, ``c = 1/beta``) and one shared scale ``a`` (the BLUE
    ratio); ``a = 1`` is the calibrated-only form. The floor is

    .. math:: \min_{a, c}\ \frac1B\sum_i \big(\hat v_i(a, c) - V_i\big)^2 - \frac1B\sum_i n_i,

    with ``c`` on a grid (``shifts``, default -4..4 in steps of 0.01) and ``a`` in closed form.
    The BLUE and calibrated-only baselines belong to this family up to their clamp to [0, 1],
    the active set's zero baselines and the small differences between their leave-one-out
    (per-prompt) temperatures, so the floor is, to that approximation, a lower bound on their
    value MSE whatever temperature they choose. When it exceeds another estimator's value
    MSE, the drift from the reference is mostly prompt-specific: no batch-wide temperature
    can follow it.

    Args:
        values: ``B`` true values (or unbiased Monte Carlo estimates of them).
        prior_values: ``B`` offline values ``p0`` in ``(0, 1)``.
        noise: optional ``B`` variances of ``values`` (subtracted, as in the loops' value MSE).
        shifts: the grid of logit shifts (``S``).

    Returns:
        ``(floor, a, c)``: the floor and its minimisers.
    """
    v = torch.as_tensor(values).double()
    p0 = _check_prior_values(prior_values, v, "values")
    c = torch.linspace(-4, 4, 801, dtype=v.dtype, device=v.device) if shifts is None else shifts
    c = torch.as_tensor(c, dtype=v.dtype, device=v.device)
    if c.dim() != 1 or c.numel() == 0 or not bool(torch.isfinite(c).all()):
        raise ValueError(
            f"shifts must be a non-empty 1-D grid of finite values, got {tuple(c.shape)}"
        )
    if noise is not None and torch.as_tensor(noise).shape != v.shape:
        raise ValueError(
            f"noise must have the shape of values {tuple(v.shape)}, got "
            f"{tuple(torch.as_tensor(noise).shape)}"
        )
    q = torch.sigmoid(torch.logit(p0) + c[:, None])  # S x B
    a = (q @ v) / (q * q).sum(1).clamp_min(1e-300)  # least-squares scale per shift
    mse = ((a[:, None] * q - v) ** 2).mean(1)
    best = int(mse.argmin())
    n = 0.0 if noise is None else float(torch.as_tensor(noise).double().mean())
    return float(mse[best]) - n, float(a[best]), float(c[best])


def basis_advantages(
    rewards: torch.Tensor,
    prior_values: torch.Tensor,
    beta_grid: tuple[float, ...] | torch.Tensor = DEFAULT_BETA_GRID,
    eps: float = 0.02,
    form: str = "blue",
    whiten: bool = False,
    chunk_size: int | None = None,
    inactive: str = "zero",
) -> tuple[torch.Tensor, dict]:
    r"""BASIS advantages for one rollout per prompt.

    Args:
        rewards: ``B`` binary rewards in ``[0, 1]``.
        prior_values: ``B`` offline values ``p0_i`` in ``(0, 1)`` (see :func:`offline_values`).
        beta_grid: candidate KL temperatures (``inf`` = no drift from the reference).
        eps: active-set margin: prompts whose offline value ``p0_i`` lies within ``eps`` of 0
            or 1 are outside the active set (they take no part in the calibration or the
            BLUE sums).
        form: ``"blue"`` (the BLUE-weighted leave-one-out), ``"linearised"``, or
            ``"calibrated"`` (**[design]**, ours: :math:`b_i = V_i(\hat\beta_i)`, the
            closed-form value at the leave-one-out temperature with no second per-batch
            correction; the calibration loss of prompt ``i`` is
            :math:`\sum_{j \in A \setminus i} (r_j - V_j(\beta))^2`, ``O(G B)``). It
            estimates the batch-wide drift once instead of twice, so it is less noisy.
        whiten: divide the advantages by their standard deviation (the scale is not
            data-independent, as in REINFORCE++; off by default).
        chunk_size: prompts per chunk of the leave-two-out calibration (a ``G x chunk x B``
            tensor); ``None`` picks the largest chunk within about 2**24 elements (128 MiB in
            float64), so memory stays bounded at any ``B``; the result does not depend on it.
        inactive: the baseline of prompts outside the active set: ``"zero"`` (the spec's
            :math:`A_i = r_i`) or ``"offline"`` (**[design]**, ours: :math:`b_i = p_{0,i}`). The
            zero baseline suits prompts near 0; for a prompt the reference always solves
            (``p0`` near 1) it gives :math:`A_i \approx 1` on every draw, pure gradient noise,
            and a value error near 1. Either choice ignores every reward, so the gradient
            stays unbiased.

    Returns:
        ``(advantages, diagnostics)``: advantages ``B``; diagnostics has ``beta`` (``B``, the
        temperature chosen for each prompt; NaN where the calibration sets no baseline: an
        inactive prompt, or every prompt in a fallback), ``active`` (``B`` bool),
        ``baseline`` (``B``) and ``fallback`` (True when fewer than two prompts are active:
        every prompt then gets the ``inactive`` baseline).
    """
    r = _check_rewards(rewards, binary=True).double()
    p0 = _check_prior_values(prior_values, r, "rewards")
    if form not in ("blue", "linearised", "calibrated"):
        raise ValueError(f"form must be 'blue', 'linearised' or 'calibrated', got {form!r}")
    check_interval("eps", eps, 0, 0.5, closed="left")
    if inactive not in ("zero", "offline"):
        raise ValueError(f"inactive must be 'zero' or 'offline', got {inactive!r}")
    if chunk_size is not None:
        chunk_size = check_int("chunk_size", chunk_size)  # True is not a count
    grid = torch.as_tensor(beta_grid, dtype=torch.float64, device=r.device).reshape(-1)
    if grid.numel() == 0 or not bool((grid > 0).all()):  # NaN fails too
        raise ValueError("beta_grid must be a non-empty set of positive temperatures")
    B = r.numel()
    V = _kl_optimal_values(p0, grid)  # G x B; p0 and grid checked above
    active = (p0 > eps) & (p0 < 1 - eps)  # uses the offline values only: independent of r
    a = active.double()
    if form == "blue":
        w_num, w_den = a / (1 - V), a * V / (1 - V)  # G x B per-prompt terms
        wr = w_num * r
        num_tot, den_tot = wr.sum(-1, keepdim=True), w_den.sum(-1, keepdim=True)
        den1 = den_tot - w_den  # b = V * num / den, 0 where den == 0; excludes i
        b_loo = torch.where(
            den1 > 0, V * (num_tot - wr) / den1.clamp_min(1e-300), torch.zeros_like(V)
        )

        def two_out(sl: slice) -> torch.Tensor:  # b_j^{(-i)}, i in sl: G x c x B
            num2 = num_tot[..., None] - wr[:, sl, None] - wr[:, None, :]
            den2 = den_tot[..., None] - w_den[:, sl, None] - w_den[:, None, :]
            return torch.where(
                den2 > 0, V[:, None, :] * num2 / den2.clamp_min(1e-300), torch.zeros_like(num2)
            )

    elif form == "calibrated":
        # b_i = V_i(beta_hat_i): no second, per-batch correction on top of the temperature
        b_loo, two_out = V, None
    else:
        s2 = a * V * (1 - V)
        res = a * (r - V)
        s_tot, r_tot = s2.sum(-1, keepdim=True), res.sum(-1, keepdim=True)
        den = s_tot - s2
        b_loo = V + s2 * torch.where(
            den > 0, (r_tot - res) / den.clamp_min(1e-300), torch.zeros_like(den)
        )

        def two_out(sl: slice) -> torch.Tensor:
            den2 = s_tot[..., None] - s2[:, sl, None] - s2[:, None, :]
            num2 = r_tot[..., None] - res[:, sl, None] - res[:, None, :]
            return V[:, None, :] + s2[:, None, :] * torch.where(
                den2 > 0, num2 / den2.clamp_min(1e-300), torch.zeros_like(den2)
            )

    # calibration loss of prompt i: sum over active j != i of (r_j - b_j^{(-i)})^2
    if two_out is None:  # b_j does not depend on r_i: the total minus prompt i's own term
        own = a * (r - V) ** 2  # G x B
        loss = own.sum(-1, keepdim=True) - own
    else:  # leave-two-out baselines, G x c x B per chunk of c prompts i
        rows = chunk_size or max(1, _TWO_OUT_ELEMENTS // (grid.numel() * B))
        loss = torch.empty_like(V)
        for start in range(0, B, rows):
            sl = slice(start, min(start + rows, B))
            mask = a[None, :] * a[sl, None]
            ii = torch.arange(sl.start, sl.stop, device=r.device)
            mask[ii - sl.start, ii] = 0.0  # j != i
            loss[:, sl] = (mask * (r[None, None, :] - two_out(sl)) ** 2).sum(-1)
    best = loss.argmin(0)  # B: grid index chosen for each prompt
    # a value of a binary reward lies in [0, 1]; clamping keeps b_i a function of r_{-i} only
    baseline = b_loo.gather(0, best[None]).squeeze(0).clamp(0.0, 1.0)
    fallback = int(active.sum()) < 2
    calibrated = active & (not fallback)  # the prompts whose baseline the calibration sets
    off = torch.zeros_like(baseline) if inactive == "zero" else p0
    baseline = torch.where(calibrated, baseline, off)
    adv = r - baseline
    if whiten:
        adv = adv / adv.std().clamp_min(1e-8)
    # an inactive prompt's loss is zero at every temperature: argmin's grid[0] means nothing
    beta = torch.where(calibrated, grid[best], torch.full_like(baseline, math.nan))
    diag = {"beta": beta, "active": active, "baseline": baseline, "fallback": fallback}
    return adv.to(rewards.dtype if rewards.is_floating_point() else torch.float64), diag


def reinforce_pp_advantages(rewards: torch.Tensor, whiten: bool = True) -> torch.Tensor:
    """REINFORCE++ with one rollout per prompt: ``r - mean(r)`` over the batch, then
    divided by the batch standard deviation (global whitening) when ``whiten``."""
    r = _check_rewards(rewards)
    adv = r - r.mean()
    return adv / adv.std().clamp_min(1e-8) if whiten and r.numel() > 1 else adv


def grpo_advantages(
    rewards: torch.Tensor, scale_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO: ``B x G`` rewards; advantage ``(r - group mean) / (group std + eps)`` (or without
    the std scaling)."""
    r = _check_rewards(rewards)
    if r.dim() != 2 or r.shape[1] < 2:
        raise ValueError(f"grpo_advantages needs B x G rewards with G >= 2, got {tuple(r.shape)}")
    check_positive("eps", eps, strict=False)  # a negative eps could cancel a group's std
    adv = r - r.mean(1, keepdim=True)
    return adv / (r.std(1, keepdim=True) + eps) if scale_std else adv


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """RLOO: ``B x G`` rewards; ``r_ig - mean_{g' != g} r_ig'``."""
    r = _check_rewards(rewards)
    if r.dim() != 2 or r.shape[1] < 2:
        raise ValueError(f"rloo_advantages needs B x G rewards with G >= 2, got {tuple(r.shape)}")
    G = r.shape[1]
    return r - (r.sum(1, keepdim=True) - r) / (G - 1)


def offline_advantages(rewards: torch.Tensor, prior_values: torch.Tensor) -> torch.Tensor:
    """Offline-values-only baseline: ``r_i - p0_i`` (``B``, in the rewards' dtype); ``p0`` is
    checked like every estimator's prior values (shape ``B``, inside (0, 1), so no NaN)."""
    r = _check_rewards(rewards)
    return r - _check_prior_values(prior_values, r, "rewards").to(r.dtype)


def astar_po_values(reference_rewards: torch.Tensor, beta: float) -> torch.Tensor:
    r"""A*-PO's offline optimal soft value :math:`V^* = \beta \log \frac1K \sum_k e^{r_k/\beta}`
    from ``B x K`` reference rewards."""
    r = _check_rewards(reference_rewards, "reference_rewards")
    if not beta > 0:  # NaN fails too
        raise ValueError(f"beta must be > 0, got {beta}")
    return beta * (torch.logsumexp(r / beta, dim=-1) - math.log(r.shape[-1]))


class SPOTracker:
    """SPO-style per-prompt Beta tracker: the baseline of prompt ``i`` is ``a_i / (a_i + b_i)``;
    after a reward, ``(a, b) <- (rho a + r, rho b + 1 - r)`` (discount ``rho``).

    Args:
        prior_values: ``N`` initial means (e.g. offline values); num_prompts = ``N``.
        strength: prior pseudo-count ``a + b``.
        discount: forgetting factor ``rho`` in (0, 1].
    """

    def __init__(self, prior_values: torch.Tensor, strength: float = 4.0, discount: float = 0.9):
        p = torch.as_tensor(prior_values, dtype=torch.float64)
        if p.dim() != 1 or p.numel() == 0 or not bool(((p >= 0) & (p <= 1)).all()):
            raise ValueError(  # NaN fails too; a mean outside [0, 1] gave a negative count
                f"prior_values must be N means in [0, 1] (a 1-D tensor), got shape {tuple(p.shape)}"
            )
        check_interval("discount", discount, closed="right")
        strength = check_positive("strength", strength)
        self.a = strength * p
        self.b = strength * (1 - p)
        self.discount = discount

    def baseline(self, prompts: torch.Tensor) -> torch.Tensor:
        """The tracked Beta means ``a / (a + b)`` of ``prompts`` (indices, ``B``)."""
        return self.a[prompts] / (self.a[prompts] + self.b[prompts])

    def advantages(self, prompts: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        """Advantages for ``prompts`` (``B`` distinct indices) with the pre-update baseline,
        then update. A prompt repeated within one call is refused: its counts are written
        once, so all but one of its rewards would be lost."""
        r = _check_rewards(rewards, binary=True).double()
        if r.dim() != 1:
            raise ValueError(f"rewards must have shape (B,), got {tuple(r.shape)}")
        # a float index or one past the last prompt was an IndexError naming nothing; a bool
        # mask failed inside the update
        prompts = check_indices("prompts", prompts, self.a.numel(), r.shape, self.a.device)
        if torch.unique(prompts).numel() != prompts.numel():
            raise ValueError("prompts must be distinct within one call to advantages")
        adv = r - self.baseline(prompts)
        self.a[prompts] = self.discount * self.a[prompts] + r
        self.b[prompts] = self.discount * self.b[prompts] + (1 - r)
        return adv
