"""Metrics shared by more than one method (filled as methods land)."""

from __future__ import annotations

import torch

from probml.utils import (
    check_binary,
    check_finite,
    check_int,
    check_tensor,
    cholesky_factor,
    group_labels,
)

__all__ = [
    "relative_error",
    "qini_curve",
    "qini_coefficient",
    "multiplicative_calibration_error",
    "log_tau_mse",
    "gaussian_kl",
    "unfairness",
    "pareto_front",
    "crps_ensemble",
    "calibration_slope_intercept",
    "expected_calibration_error",
]


def relative_error(estimate: torch.Tensor, truth: torch.Tensor, ord: str | int = "fro") -> float:
    """``||estimate - truth|| / ||truth||`` (Frobenius by default; ``2`` for spectral)."""
    check_tensor("estimate", estimate)
    check_tensor("truth", truth)
    if estimate.shape != truth.shape:
        raise ValueError(
            f"estimate shape {tuple(estimate.shape)} != truth shape {tuple(truth.shape)}"
        )
    check_finite("estimate", estimate)
    check_finite("truth", truth)
    diff = (estimate - truth).double()
    t = truth.double()
    norm = t.norm() if diff.dim() == 1 else torch.linalg.matrix_norm(t, ord=ord)
    if not bool(norm > 0):
        raise ValueError("truth must be non-zero: the relative error divides by its norm")
    if diff.dim() == 1:
        return float(diff.norm() / norm)
    return float(torch.linalg.matrix_norm(diff, ord=ord) / norm)


# ----------------------------------------------------------------------------- ratio effects
def _check_uplift_inputs(score, w, y):
    import numpy as np

    score, w, y = (np.asarray(a, dtype=float).reshape(-1) for a in (score, w, y))
    if not (len(score) == len(w) == len(y)):
        raise ValueError(
            f"score, w, y must have equal length; got {len(score)}, {len(w)}, {len(y)}"
        )
    if len(y) == 0:
        raise ValueError("score, w, y must hold at least one unit")
    check_binary("w", w)
    if w.min() == w.max():  # one arm: the curve would rank outcomes, not uplift
        raise ValueError("w must contain both treated (1) and control (0) units")
    if not (np.isfinite(score).all() and np.isfinite(y).all()):
        raise ValueError("score (or tau_pred) and y must be finite")
    return score, w, y


def qini_curve(score, w, y):
    r"""Qini curve of a ranking ``score`` (any monotone transform of :math:`\hat\tau` ranks the
    same, so it applies to ratio effects as is).

    Units are sorted by decreasing score; at each cut-off :math:`k`,
    :math:`Q(k) = Y_T(k) - Y_C(k)\, N_T(k)/N_C(k)` (treated outcomes minus control outcomes
    rescaled to the treated count; 0 while no control unit is included). Units with tied
    scores form one block that is targeted together: :math:`Q` is computed at the block ends
    and is linear in between, so the curve does not depend on the order of the rows (a
    piecewise-constant model ties many units; sorting them by row order would rank them by
    however the data set happens to be stored).

    Args:
        score: ``n`` predicted effects (higher = treat first).
        w: ``n`` binary treatment indicators.
        y: ``n`` outcomes.

    Returns:
        ``(fraction, q)``: two arrays of length ``n + 1`` starting at ``(0, 0)``.
    """
    import numpy as np

    score, w, y = _check_uplift_inputs(score, w, y)
    order = np.argsort(-score, kind="stable")
    score, w, y = score[order], w[order], y[order]
    nt, nc = np.cumsum(w), np.cumsum(1 - w)
    yt, yc = np.cumsum(y * w), np.cumsum(y * (1 - w))
    q = np.concatenate([[0.0], yt - np.divide(yc * nt, nc, out=np.zeros_like(yc), where=nc > 0)])
    n = len(y)
    # block ends: the cut-offs k where the score changes (the sums there ignore tie order)
    knots = np.concatenate([[0], np.flatnonzero(np.diff(score) != 0) + 1, [n]])
    k = np.arange(n + 1)
    return k / n, np.interp(k, knots, q[knots])


def qini_coefficient(score, w, y) -> float:
    r"""Area between the Qini curve and the random-targeting line, per unit:
    :math:`\frac1n \sum_{k=1}^n [Q(k) - \frac kn Q(n)] / n`. Positive means better than random."""
    import numpy as np

    frac, q = qini_curve(score, w, y)
    n = len(q) - 1
    return float(np.mean(q[1:] - frac[1:] * q[-1]) / n)


def multiplicative_calibration_error(tau_pred, w, y, propensity=None, n_bins: int = 10) -> float:
    r"""Multiplicative calibration error of predicted ratios:
    :math:`\exp\big(\mathrm{mean}_b\, |\log(\hat\tau^{obs}_b / \hat\tau^{pred}_b)|\big)` over
    quantile bins of the prediction (1 is perfect).

    In bin :math:`b` the observed ratio is the (inverse-propensity weighted if ``propensity``
    is given) treated mean over the control mean; the predicted one is the geometric mean of
    ``tau_pred``. Bins where an arm has no unit or a zero mean are skipped (documented: they
    carry no ratio information).
    """
    import numpy as np

    n_bins = check_int("n_bins", n_bins)
    tau_pred, w, y = _check_uplift_inputs(tau_pred, w, y)
    if not (tau_pred > 0).all():
        raise ValueError("tau_pred must be positive")
    e = np.full(len(y), 0.5) if propensity is None else np.asarray(propensity, float).reshape(-1)
    if e.shape != y.shape or not ((e > 0) & (e < 1)).all():  # NaN fails too
        raise ValueError("propensity must have the length of y and lie in (0, 1)")
    edges = np.quantile(tau_pred, np.linspace(0, 1, n_bins + 1))
    b = np.clip(np.searchsorted(edges, tau_pred, side="right") - 1, 0, n_bins - 1)
    wt, wc = w / e, (1 - w) / (1 - e)  # per-bin sums below: one bincount each

    def per_bin(weights):
        return np.bincount(b, weights=weights, minlength=n_bins)

    st, sc = per_bin(wt), per_bin(wc)
    both = (st > 0) & (sc > 0)  # an arm with no unit in the bin: no ratio
    mt = np.divide(per_bin(wt * y), st, out=np.zeros(n_bins), where=both)
    mc = np.divide(per_bin(wc * y), sc, out=np.zeros(n_bins), where=both)
    keep = both & (mt > 0) & (mc > 0)
    if not keep.any():
        raise ValueError("no bin has outcomes in both arms; use fewer bins")
    log_pred = per_bin(np.log(tau_pred))[keep] / np.bincount(b, minlength=n_bins)[keep]
    return float(np.exp(np.mean(np.abs(np.log(mt[keep] / mc[keep]) - log_pred))))


def log_tau_mse(tau_pred, tau_true) -> float:
    r""":math:`\frac1n \sum_i (\log\hat\tau_i - \log\tau_i)^2`."""
    import numpy as np

    a, b = np.asarray(tau_pred, float), np.asarray(tau_true, float)
    if a.shape != b.shape:
        raise ValueError(
            f"tau_pred and tau_true must have the same shape, got {a.shape} and {b.shape}"
        )
    if a.size == 0:
        raise ValueError("tau_pred and tau_true must hold at least one ratio")
    for name, v in (("tau_pred", a), ("tau_true", b)):
        if not (v > 0).all():  # NaN fails too
            n_bad = int((~(v > 0)).sum())
            raise ValueError(
                f"{name} must hold positive ratios (no NaN); entries that are not: {n_bad}"
            )
    return float(np.mean((np.log(a) - np.log(b)) ** 2))


def gaussian_kl(Sigma: torch.Tensor, Sigma_hat: torch.Tensor) -> float:
    r""":math:`\mathrm{KL}(N(0,\Sigma) \,\|\, N(0,\hat\Sigma)) = \frac12[\mathrm{tr}(\hat\Sigma^{-1}\Sigma)
    - d + \log\det\hat\Sigma - \log\det\Sigma]` (float64; both ``d x d`` positive definite)."""
    S = check_tensor("Sigma", Sigma).double()
    H = check_tensor("Sigma_hat", Sigma_hat).double()
    if S.shape != H.shape or S.dim() != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"need two d x d matrices, got {tuple(S.shape)} and {tuple(H.shape)}")
    Lh = cholesky_factor("Sigma_hat", H)
    Ls = cholesky_factor("Sigma", S)
    tr = torch.cholesky_solve(S, Lh).diagonal().sum()
    logdet_h = 2 * Lh.diagonal().log().sum()
    logdet_s = 2 * Ls.diagonal().log().sum()
    return float(0.5 * (tr - S.shape[0] + logdet_h - logdet_s))


# ----------------------------------------------------------------------------- fairness
def unfairness(pred, sensitive, kind: str = "w2", decimals: int = 8):
    r"""Demographic-parity unfairness of predictions between groups.

    * ``"w2"``: squared 2-Wasserstein distance between the two groups' prediction
      distributions (for more groups: the largest pairwise value); POT's 1-D solver.
    * ``"ks"``: Kolmogorov-Smirnov distance (largest pairwise).
    * ``"tv"``: total variation between the empirical distributions of predictions rounded to
      ``decimals`` (meaningful where predictions are pooled onto shared values).

    ``pred`` is ``n`` predictions (returns a float) or ``S x n``, one row per posterior draw
    with the same ``sensitive`` labels (returns ``S`` values, computed for all rows at once).
    """
    import itertools

    import numpy as np
    import ot
    from scipy.stats import ks_2samp

    decimals = check_int("decimals", decimals, None)  # 2.5 passed (negative rounds to tens)
    pred = np.asarray(pred, float)
    s, groups = group_labels("sensitive", sensitive)
    if not np.isfinite(pred).all():
        raise ValueError("pred must be finite (a NaN prediction has no place in a distribution)")
    if pred.ndim == 2 and pred.shape == (len(s), 1) and len(s) > 1:
        pred = pred.reshape(-1)  # an n x 1 column is one prediction vector, as before
    one = pred.ndim == 1
    P = pred.reshape(1, -1) if one else pred
    if P.ndim != 2 or len(s) != P.shape[1]:
        raise ValueError(
            f"pred must be n or S x n with n = len(sensitive) = {len(s)}, got shape {pred.shape}"
        )
    if len(groups) < 2:
        raise ValueError("need at least two groups")
    if kind not in ("w2", "ks", "tv"):
        raise ValueError(f"kind must be 'w2', 'ks' or 'tv', got {kind!r}")
    vals = []
    for g, h in itertools.combinations(groups, 2):
        a, b = P[:, s == g], P[:, s == h]  # S x n_g, S x n_h
        if kind == "w2":
            vals.append(np.asarray(ot.wasserstein_1d(a.T, b.T, p=2), float))
        elif kind == "ks":
            vals.append(np.asarray(ks_2samp(a, b, axis=1).statistic, float))
        else:
            vals.append(_tv_rows(np.round(a, decimals), np.round(b, decimals)))
    out = np.max(np.stack(vals), axis=0)
    return float(out[0]) if one else out


def _tv_rows(a, b):
    """Total variation between the empirical distributions of each row of ``a`` (``S x n_a``)
    and of ``b`` (``S x n_b``): half the summed absolute net mass over the distinct values."""
    import numpy as np

    S, n_a, n_b = a.shape[0], a.shape[1], b.shape[1]
    v = np.concatenate((a, b), axis=1)
    # integer weights (n_b per a, -n_a per b): the sums are exact, equal rows give exactly 0
    w = np.concatenate((np.full(a.shape, float(n_b)), np.full(b.shape, -float(n_a))), axis=1)
    order = np.argsort(v, axis=1, kind="stable")
    v, w = np.take_along_axis(v, order, 1), np.take_along_axis(w, order, 1)
    cs = np.cumsum(w, axis=1)
    last = np.ones_like(v, dtype=bool)  # the last position of each run of equal values
    last[:, :-1] = v[:, 1:] != v[:, :-1]
    # net mass of a run = the cumulative sum at its end minus that at the previous run's end
    flat = cs[last]  # row-major: every row's run ends in order
    counts = last.sum(1)
    prev = np.concatenate(([0.0], flat[:-1]))
    prev[np.cumsum(counts)[:-1]] = 0.0  # every row starts from zero
    net = np.abs(flat - prev)
    rows = np.bincount(np.repeat(np.arange(S), counts), weights=net, minlength=S)
    return 0.5 * rows / (n_a * n_b)


def pareto_front(risk, unfair) -> list[int]:
    """Indices of the points not dominated in (risk, unfairness), sorted by unfairness."""
    import numpy as np

    risk, unfair = np.asarray(risk, float).reshape(-1), np.asarray(unfair, float).reshape(-1)
    if risk.shape != unfair.shape:
        raise ValueError(
            f"risk and unfair must have the same length, got {risk.size} and {unfair.size}"
        )
    if not (np.isfinite(risk).all() and np.isfinite(unfair).all()):
        raise ValueError("risk and unfair must be finite: a NaN point cannot be ranked")
    order = np.lexsort((risk, unfair))  # by unfairness, ties by risk
    r = risk[order]
    # on the front: strictly lower risk than every point before it in that order (a point
    # equal to an earlier one is left out: one index per point of the front)
    before = np.concatenate(([np.inf], np.minimum.accumulate(r)[:-1]))
    return order[r < before].tolist()


# ----------------------------------------------------------------------------- forecasting
def crps_ensemble(
    particles: torch.Tensor, truth: torch.Tensor, log_weights: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Continuous ranked probability score of a (weighted) ensemble, per coordinate.

    :math:`\mathrm{CRPS}(F, x) = \mathbb E|X - x| - \tfrac12 \mathbb E|X - X'|` for
    :math:`X, X' \sim F = \sum_i w_i \delta_{x_i}`; the second term in
    :math:`O(N \log N)` from sorted members:
    :math:`\mathbb E|X - X'| = 2 \sum_i w_i x_{(i)} (2 F_i - w_i - 1)`, :math:`F_i` the
    cumulative weight. Lower is better; equals the absolute error for a point mass.

    Args:
        particles: ``... x N x d`` ensemble members.
        truth: ``... x d``.
        log_weights: ``... x N`` (``None``: equal weights).

    Returns:
        ``... x d`` CRPS values (average them for a summary).
    """
    check_tensor("particles", particles)
    check_tensor("truth", truth)
    if log_weights is not None:
        check_tensor("log_weights", log_weights)
    if particles.dim() < 2:
        raise ValueError(f"particles must be ... x N x d, got shape {tuple(particles.shape)}")
    if particles.shape[:-2] + particles.shape[-1:] != truth.shape:
        raise ValueError(
            f"truth must have shape {tuple(particles.shape[:-2] + particles.shape[-1:])}, "
            f"got {tuple(truth.shape)}"
        )
    n = particles.shape[-2]
    if n == 0:
        raise ValueError("particles must hold at least one particle (N >= 1)")
    check_finite("particles", particles)
    check_finite("truth", truth)
    if log_weights is None:
        w = particles.new_full(particles.shape[:-1], 1.0 / n)
    else:
        if log_weights.shape != particles.shape[:-1]:
            raise ValueError(
                f"log_weights must have shape {tuple(particles.shape[:-1])}, "
                f"got {tuple(log_weights.shape)}"
            )
        # -inf is a particle of weight zero; NaN, +inf or an all-zero ensemble is no weighting
        if bool(torch.isnan(log_weights).any() | (log_weights == torch.inf).any()) or bool(
            (log_weights == -torch.inf).all(-1).any()
        ):
            raise ValueError("log_weights must be finite or -inf, with a finite one per ensemble")
        w = torch.softmax(log_weights, dim=-1).to(particles)
    w = w.unsqueeze(-1).expand_as(particles)
    term1 = (w * (particles - truth.unsqueeze(-2)).abs()).sum(-2)
    xs, order = particles.sort(dim=-2)
    ws = torch.gather(w, -2, order)
    cdf = ws.cumsum(-2)
    term2 = 2 * (ws * xs * (2 * cdf - ws - 1)).sum(-2)
    return term1 - 0.5 * term2


# ----------------------------------------------------------------------------- calibration
def _check_binary_forecasts(p, y):
    """``p`` and ``y`` as float vectors of one length: ``p`` finite in [0, 1], ``y`` binary."""
    import numpy as np

    p = np.asarray(p, float).reshape(-1)
    y = np.asarray(y, float).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"p and y must have the same length, got {p.size} and {y.size}")
    if p.size == 0:
        raise ValueError("p and y must hold at least one forecast")
    if not ((p >= 0) & (p <= 1)).all():  # NaN fails too
        raise ValueError("p must hold probabilities in [0, 1] (no NaN)")
    check_binary("y", y)
    return p, y


def calibration_slope_intercept(p, y) -> tuple[float, float]:
    r"""Logistic recalibration :math:`\mathrm{logit}\, P(Y=1) = a + b\, \mathrm{logit}(p)`
    by maximum likelihood: returns ``(b, a)``; a calibrated model has slope 1, intercept 0.
    ``p`` is clipped to ``[1e-6, 1 - 1e-6]`` before the logit (0 and 1 have none).

    Where the maximum-likelihood fit does not exist the answer says so instead of returning
    where the optimiser stopped: forecasts that separate the outcomes (every ``y = 1`` ranked
    at or above every ``y = 0``, or at or below) give a slope of ``+inf`` (``-inf``) and a NaN
    intercept; a single outcome class gives a NaN slope and an intercept of ``-inf``
    (``+inf``); a constant forecast gives NaN for both (the slope is not identified)."""
    import numpy as np
    from scipy.optimize import minimize

    p, y = _check_binary_forecasts(p, y)
    p = np.clip(p, 1e-6, 1 - 1e-6)
    z = np.log(p / (1 - p))
    pos, neg = z[y == 1], z[y == 0]
    if pos.size == 0 or neg.size == 0:  # one class: P(Y = 1) is 0 or 1 everywhere
        return float("nan"), float("inf") if pos.size else float("-inf")
    if z.min() == z.max():
        return float("nan"), float("nan")
    if neg.max() <= pos.min():  # (quasi-)complete separation: the likelihood rises forever
        return float("inf"), float("nan")
    if pos.max() <= neg.min():
        return float("-inf"), float("nan")

    def nll(theta):
        eta = theta[0] + theta[1] * z
        r = 1.0 / (1.0 + np.exp(-eta)) - y  # d nll / d eta
        return float(np.sum(np.logaddexp(0, eta) - y * eta)), np.array([r.sum(), (r * z).sum()])

    res = minimize(nll, x0=np.array([0.0, 1.0]), jac=True, method="BFGS")
    return float(res.x[1]), float(res.x[0])


def expected_calibration_error(p, y, n_bins: int = 10) -> float:
    r""":math:`\sum_b \frac{n_b}{n} |\bar y_b - \bar p_b| = \frac1n \sum_b |\sum_{i \in b}
    (y_i - p_i)|` over ``n_bins`` equal-width bins of ``p`` (``p = 1`` joins the last bin)."""
    import numpy as np

    n_bins = check_int("n_bins", n_bins)
    p, y = _check_binary_forecasts(p, y)
    idx = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    gap = np.bincount(idx, weights=y - p, minlength=n_bins)  # per bin: sum of y - p
    return float(np.abs(gap).sum() / p.size)
