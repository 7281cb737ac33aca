r"""Relaxed fair regression by optimal transport (aware and unaware; W2 and TV penalties).

Objective: :math:`\min_f \mathbb E(\eta - f)^2 + \lambda\, U(f)` with :math:`\eta` the Bayes
regressor and :math:`U` a demographic-parity penalty between the groups' prediction
distributions. **[paper]** optimal predictors are OT maps, for aware (S known at prediction)
and unaware settings, under squared-W2 and TV penalties. **[design]** the estimators below (from
the spec, checked numerically):

* **Aware, W2**: :math:`f_t(x, s) = (1-t)\eta + t\,\bar Q(F_s(\eta))` with
  :math:`\bar Q = \sum_s p_s Q_s`; :math:`t = \lambda/(\lambda + p_1p_2)` for two groups and
  :math:`U = W_2^2(\nu_1, \nu_2)`, :math:`t = \lambda/(1+\lambda)` for the barycentric penalty
  :math:`U = \min_\nu \sum_s p_s W_2^2(\nu_s, \nu)` (any number of groups).
* **Aware, TV** (two groups): minimise :math:`p_1p_2\,PW_m(\mu_1,\mu_2) + \lambda(1-m)` over
  the pooled mass :math:`m`: exact OT with one dummy node per side at cost :math:`\lambda/2`
  (``ot.emd``); paired individuals get :math:`p_1y_1 + p_2y_2`, others keep :math:`\eta`.
* **Unaware, exact DP and TV** (Divol-Gaucher coupling): with :math:`\pi(x) = P(S=1|x)` and
  :math:`\delta = \pi/p_1 - (1-\pi)/p_2`, couple :math:`\delta^+ P` with :math:`\delta^- P` under
  cost :math:`(\eta^+ - \eta^-)^2 / (|\delta^+| + |\delta^-|)`; a matched pair gets the
  :math:`1/|\delta|`-weighted mean; TV pools only pairs cheaper than :math:`\lambda` (dummy
  nodes again).
* **Unaware, W2**: alternate the monotone coupling :math:`\gamma \in \Pi(a, b)`
  (``ot.emd_1d``), :math:`a_i = \pi_i/(np_1)`, :math:`b_i = (1-\pi_i)/(np_2)`, and the linear
  solve :math:`(I/n + \lambda L_\gamma) f = \eta/n` (sparse Laplacian); warm start from the best
  straight interpolation toward the exact-DP solution. Each half-step minimises the objective
  over one block, so it never increases.
"""

from __future__ import annotations

import warnings

import numpy as np
import ot
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import spsolve
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neighbors import KNeighborsRegressor

from probml.exceptions import NotFittedError
from probml.utils import (
    check_data,
    check_int,
    check_interval,
    check_positive,
    check_prior,
    check_seed,
    group_labels,
    keep_global_rng,
    numpy_generator,
)

__all__ = [
    "w2_interpolation_weight",
    "fair_w2_aware",
    "fair_tv_aware",
    "fair_dp_unaware",
    "fair_tv_unaware",
    "fair_w2_unaware",
    "unaware_w2_objective",
    "FairRegressor",
    "posterior_fair_predictions",
]


# ----------------------------------------------------------------------------- validation
def _as_vector(name: str, v) -> np.ndarray:
    """``v`` (``n`` or ``n x 1``) as a dense, real, finite float64 vector."""
    if not sp.issparse(v) and np.ndim(v) == 2 and np.shape(v)[1] == 1:
        v = np.reshape(v, -1)
    return check_data(name, v, ndim=1)


def _eta_and_labels(
    eta, s, name: str = "eta", label_name: str = "s"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(eta, s, groups)``: a vector, its labels (none missing) and their distinct values."""
    eta = _as_vector(name, eta)
    s, groups = group_labels(label_name, s)
    if len(s) != len(eta):
        raise ValueError(f"{label_name} must have the length of {name} ({len(eta)}), got {len(s)}")
    return eta, s, groups


def _check_eta_s(
    eta, s, name: str = "eta", label_name: str = "s"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(eta, s, groups)``: a vector, its labels, and at least two groups among them (errors
    name ``name`` and ``label_name``: the caller's arguments)."""
    eta, s, groups = _eta_and_labels(eta, s, name, label_name)
    if len(groups) < 2:
        raise ValueError(f"need at least two groups in {label_name}, got {groups.tolist()}")
    return eta, s, groups


def _check_known_groups(name: str, s: np.ndarray, groups, seen_in: str) -> None:
    """Every label of ``s`` is among ``groups``: the maps have no quantiles for another
    group, and its rows would keep eta, unmapped, without a word."""
    unknown = np.setdiff1d(np.unique(s), np.asarray(groups))
    if len(unknown):
        raise ValueError(f"{name} has groups not seen in {seen_in}: {unknown.tolist()}")


def w2_interpolation_weight(lam: float, p: np.ndarray, penalty: str = "pairwise") -> float:
    r""":math:`t` of the aware W2 solution: :math:`\lambda/(\lambda + p_1p_2)` for two groups with
    ``penalty="pairwise"``, :math:`\lambda/(1+\lambda)` with ``penalty="barycentric"``."""
    lam = check_positive("lam", lam, strict=False)
    if penalty == "barycentric":
        return lam / (1.0 + lam)
    if len(p) != 2:
        raise ValueError(
            "the pairwise W2 penalty is defined for two groups; use penalty='barycentric'"
        )
    return lam / (lam + p[0] * p[1]) if lam > 0 else 0.0


class _QuantileMaps:
    """Per-group empirical CDFs and quantile functions of reference predictions, for ``S``
    draws at once: the reference ``eta`` is ``S x n`` (or ``n``, one draw), one row per
    posterior draw, and its labels ``s`` are shared by the rows."""

    def __init__(self, eta: np.ndarray, s: np.ndarray, groups: np.ndarray):
        eta = np.atleast_2d(eta)
        self.groups = groups
        self.sorted = {g: np.sort(eta[:, s == g], axis=1) for g in groups}
        self.p = np.array([np.mean(s == g) for g in groups])

    def cdf(self, g, x: np.ndarray) -> np.ndarray:
        """Mid-rank empirical CDF of group ``g`` at ``x`` (``S x m``, row by row), kept in
        (0, 1): the average of the strict and the weak counts."""
        ref = torch.from_numpy(self.sorted[g])
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=ref.numpy().dtype))
        ref = ref.expand(xt.shape[0], -1) if ref.shape[0] == 1 else ref
        lo = torch.searchsorted(ref.contiguous(), xt, side="left").numpy()
        hi = torch.searchsorted(ref.contiguous(), xt, side="right").numpy()
        k = ref.shape[1]
        return np.clip((lo + hi) / (2.0 * k), 0.5 / k, 1 - 0.5 / k)

    def barycenter_quantile(self, u: np.ndarray) -> np.ndarray:
        """``sum_g p_g Q_g(u)`` row by row (``u``: ``S x m``; NumPy's linear quantile)."""
        return sum(p * _row_quantile(self.sorted[g], u) for p, g in zip(self.p, self.groups))

    def transport(self, eta: np.ndarray, s: np.ndarray, t: float) -> np.ndarray:
        """``(1 - t) eta + t Qbar(F_s(eta))`` for ``eta`` of ``m`` or ``S x m``."""
        out = np.atleast_2d(eta).copy()
        for g in self.groups:
            m = s == g
            if m.any():
                e = out[:, m]
                out[:, m] = (1 - t) * e + t * self.barycenter_quantile(self.cdf(g, e))
        return out[0] if np.ndim(eta) == 1 else out


def _row_quantile(a: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Row ``i`` of ``a`` (sorted, ``S x k`` or ``1 x k``) at the levels ``u[i]`` (``S x m``),
    by NumPy's default linear rule: position ``u (k - 1)``, interpolated between neighbours."""
    k = a.shape[1]
    a = np.broadcast_to(a, (u.shape[0], k))
    pos = u * (k - 1)
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, k - 1)
    i1 = np.minimum(i0 + 1, k - 1)
    lo, hi = np.take_along_axis(a, i0, 1), np.take_along_axis(a, i1, 1)
    return lo + (pos - i0) * (hi - lo)


def fair_w2_aware(
    eta, s, t: float, reference: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """Aware W2 predictions ``(1 - t) eta + t Qbar(F_s(eta))``.

    Args:
        eta: ``n`` predictions of the Bayes regressor; s: ``n`` group labels.
        t: interpolation weight in [0, 1] (see :func:`w2_interpolation_weight`).
        reference: ``(eta_ref, s_ref)`` defining the CDFs and quantiles (default: the inputs).
    """
    if reference is None:
        eta, s, groups = _check_eta_s(eta, s)
        ref = (eta, s, groups)
    else:  # the reference needs two groups; the rows mapped may come from one
        ref = _check_eta_s(*reference, "reference[0]", "reference[1]")
        eta, s, _ = _eta_and_labels(eta, s)
        _check_known_groups("s", s, ref[2], "the reference")
    check_interval("t", t, closed="both")
    return _QuantileMaps(*ref).transport(eta, s, t)


def _partial_pooling(y1, y2, w1, w2, cost, lam: float):
    """Exact partial OT with one dummy node per side at cost lam/2 (``ot.emd``).

    Returns the ``n1 x n2`` plan of the real pairs."""
    n1, n2 = len(y1), len(y2)
    M = np.zeros((n1 + 1, n2 + 1))
    M[:n1, :n2] = cost
    M[:n1, n2] = lam / 2.0  # unmatched mass of side 1
    M[n1, :n2] = lam / 2.0  # unmatched mass of side 2
    a = np.concatenate([w1, [w2.sum()]])
    b = np.concatenate([w2, [w1.sum()]])
    plan = ot.emd(a, b, M, numItermax=10_000_000)
    return plan[:n1, :n2]


def fair_tv_aware(eta, s, lam: float, method: str = "partial", return_plan: bool = False):
    r"""Aware TV predictions for two groups (see the module docstring).

    A pooled individual gets the plan-weighted average of :math:`p_1y_1 + p_2y_2` over its
    partners; the unpooled fraction keeps :math:`\eta`.

    Args:
        method: ``"partial"`` (default): the exact minimiser of
            :math:`p_1p_2 PW_m(\mu_1, \mu_2) + \lambda(1-m)` by partial OT (dummy nodes,
            ``ot.emd``). ``"threshold"``: the spec's shortcut: pair everyone by the full
            quadratic OT (the monotone coupling, ``ot.emd_1d``) and pool only pairs with
            :math:`p_1p_2(y_1-y_2)^2 < \lambda`. The shortcut has the sharp transition of the
            spec (shifted groups: everyone pooled iff :math:`\lambda > p_1p_2c^2`) but its
            objective is never below the exact one; exact partial OT pools overlapping mass at
            smaller :math:`\lambda` and needs a larger one to pool everyone.

    Returns:
        ``n`` predictions (and the plan and the value of the objective if ``return_plan``).
    """
    eta, s, groups = _check_eta_s(eta, s)
    if len(groups) != 2:
        raise ValueError("the aware TV penalty is implemented for two groups")
    if method not in ("partial", "threshold"):
        raise ValueError(f"method must be 'partial' or 'threshold', got {method!r}")
    lam = check_positive("lam", lam, strict=False)
    g1, g2 = groups
    i1, i2 = np.flatnonzero(s == g1), np.flatnonzero(s == g2)
    p1, p2 = len(i1) / len(s), len(i2) / len(s)
    y1, y2 = eta[i1], eta[i2]
    cost = p1 * p2 * (y1[:, None] - y2[None, :]) ** 2
    w1, w2 = np.full(len(i1), 1 / len(i1)), np.full(len(i2), 1 / len(i2))
    if method == "partial":
        plan = _partial_pooling(y1, y2, w1, w2, cost, lam)
    else:  # "threshold" (checked above)
        full = sp.coo_array(ot.emd_1d(y1, y2, w1, w2, dense=False))
        keep = cost[full.row, full.col] < lam
        plan = np.zeros_like(cost)
        plan[full.row[keep], full.col[keep]] = full.data[keep]
    pooled = p1 * y1[:, None] + p2 * y2[None, :]
    out = eta.copy()
    m1, m2 = plan.sum(1), plan.sum(0)
    out[i1] = (plan * pooled).sum(1) / w1 + (1 - m1 / w1) * y1
    out[i2] = (plan * pooled).sum(0) / w2 + (1 - m2 / w2) * y2
    if return_plan:
        value = float((plan * cost).sum() + lam * (1 - plan.sum()))
        return out, plan, value
    return out


def _delta(pi: np.ndarray, p1: float) -> np.ndarray:
    return pi / p1 - (1 - pi) / (1 - p1)


def _check_unaware(eta, group_probability, p1) -> tuple[np.ndarray, np.ndarray, float]:
    """Validated ``(eta, pi, p1)`` of the unaware estimators."""
    eta = _as_vector("eta", eta)
    pi = _as_vector("group_probability", group_probability)
    if pi.shape != eta.shape or (pi < 0).any() or (pi > 1).any():
        raise ValueError("group_probability must have the length of eta and lie in [0, 1]")
    p1 = check_interval("p1", p1)
    return eta, pi, p1


def _unaware_pairs(eta, pi, p1):
    d = _delta(pi, p1)
    pos, neg = np.flatnonzero(d > 1e-12), np.flatnonzero(d < -1e-12)
    n = len(eta)
    wp, wn = d[pos] / n, -d[neg] / n
    # The two sides' delta masses are equal in the population, not in a sample: scale both to
    # one common total. Which total is immaterial: the plans (full or partial, the dummy
    # nodes included) scale with it, and the predictions use plan / weight ratios only.
    total = 0.5 * (wp.sum() + wn.sum())
    if len(pos) and len(neg):
        wp, wn = wp * total / wp.sum(), wn * total / wn.sum()
    ap, an = np.abs(d[pos]), np.abs(d[neg])
    cost = (eta[pos][:, None] - eta[neg][None, :]) ** 2 / (ap[:, None] + an[None, :])
    ystar = (eta[pos][:, None] / ap[:, None] + eta[neg][None, :] / an[None, :]) / (
        1 / ap[:, None] + 1 / an[None, :]
    )
    return pos, neg, wp, wn, cost, ystar


def _apply_pairs(eta, pos, neg, wp, wn, plan, ystar):
    out = eta.copy()
    if len(pos) and len(neg):
        mp, mn = plan.sum(1), plan.sum(0)
        out[pos] = (plan * ystar).sum(1) / wp + (1 - mp / wp) * eta[pos]
        out[neg] = (plan * ystar).sum(0) / wn + (1 - mn / wn) * eta[neg]
    return out


def fair_dp_unaware(eta, group_probability, p1: float) -> np.ndarray:
    """Unaware exact demographic parity (Divol-Gaucher coupling).

    Args:
        eta: ``n`` predictions of the Bayes regressor on X only.
        group_probability: ``n`` values of ``pi(x) = P(S = 1 | x)``.
        p1: ``P(S = 1)``.
    """
    eta, pi, p1 = _check_unaware(eta, group_probability, p1)
    pos, neg, wp, wn, cost, ystar = _unaware_pairs(eta, pi, p1)
    if not (len(pos) and len(neg)):
        return eta.copy()
    plan = ot.emd(wp, wn, cost, numItermax=10_000_000)
    return _apply_pairs(eta, pos, neg, wp, wn, plan, ystar)


def fair_tv_unaware(eta, group_probability, p1: float, lam: float) -> np.ndarray:
    """Unaware TV: the same coupling, pooling only pairs whose cost is below ``lam``."""
    eta, pi, p1 = _check_unaware(eta, group_probability, p1)
    lam = check_positive("lam", lam, strict=False)
    pos, neg, wp, wn, cost, ystar = _unaware_pairs(eta, pi, p1)
    if not (len(pos) and len(neg)):
        return eta.copy()
    plan = _partial_pooling(eta[pos], eta[neg], wp, wn, cost, lam)
    return _apply_pairs(eta, pos, neg, wp, wn, plan, ystar)


def unaware_w2_objective(f, eta, a, b, lam) -> tuple[float, sp.coo_array]:
    r"""``(1/n) sum (eta - f)^2 + lam sum gamma_ij (f_i - f_j)^2`` at the monotone coupling
    ``gamma`` of ``(f, a)`` and ``(f, b)``; returns the value and ``gamma``."""
    gamma = ot.emd_1d(f, f, a, b, dense=False)
    g = sp.coo_array(gamma)
    pen = float((g.data * (f[g.row] - f[g.col]) ** 2).sum())
    return float(np.mean((eta - f) ** 2) + lam * pen), g


def fair_w2_unaware(
    eta,
    group_probability,
    p1: float,
    lam: float,
    max_iter: int = 50,
    tol: float = 1e-10,
    return_history: bool = False,
):
    """Unaware W2 by alternating minimisation with the interpolation warm start.

    Stops when a round lowers the objective by at most ``tol`` (relative); a
    ``sklearn.exceptions.ConvergenceWarning`` says when ``max_iter`` rounds did not get there.

    Returns:
        ``n`` predictions (and the list of objective values if ``return_history``).
    """
    eta, pi, p1 = _check_unaware(eta, group_probability, p1)
    lam = check_positive("lam", lam, strict=False)
    check_int("max_iter", max_iter)
    tol = check_positive("tol", tol, strict=False)  # a negative tol never stops
    if not (pi > 0).any() or not (pi < 1).any():
        raise ValueError("group_probability must be above 0 and below 1 somewhere (both groups)")
    n = len(eta)
    a, b = pi / (n * p1), (1 - pi) / (n * (1 - p1))
    a, b = a / a.sum(), b / b.sum()
    f_dp = fair_dp_unaware(eta, pi, p1)
    # warm start: best point on the segment from eta to the exact-DP solution
    ts = np.linspace(0, 1, 21)
    vals = [unaware_w2_objective((1 - t) * eta + t * f_dp, eta, a, b, lam)[0] for t in ts]
    f = (1 - ts[int(np.argmin(vals))]) * eta + ts[int(np.argmin(vals))] * f_dp
    obj, gamma = unaware_w2_objective(f, eta, a, b, lam)
    history = [obj]
    for _ in range(max_iter):
        # f-step: (I/n + lam L_gamma) f = eta / n, L = diag(rowsum + colsum) - gamma - gamma^T
        W = gamma + gamma.T
        L = sp.diags(np.asarray(W.sum(1)).ravel()) - W
        f = spsolve(sp.csr_array(sp.identity(n) / n + lam * L), eta / n)
        # gamma-step: monotone coupling at the new f
        obj, gamma = unaware_w2_objective(f, eta, a, b, lam)
        history.append(obj)
        if history[-2] - obj <= tol * max(abs(obj), 1e-12):
            break
    else:
        warnings.warn(
            f"fair_w2_unaware: the alternating minimisation did not converge in max_iter = "
            f"{max_iter} rounds (last decrease {history[-2] - history[-1]:.3g}); the "
            "predictions may be off the optimum",
            ConvergenceWarning,
            stacklevel=2,
        )
    return (f, history) if return_history else f


# ----------------------------------------------------------------------------- estimator
class FairRegressor(BaseEstimator):
    """Post-process any regressor into the optimal predictor under a DP penalty.

    Args:
        estimator: scikit-learn regressor for the Bayes regressor ``eta`` (default linear);
            aware: fitted on ``[X, one-hot(S)]``; unaware: on ``X``.
        penalty: ``"w2"`` or ``"tv"``.
        strength: ``lambda >= 0``; for unaware W2 and both TV variants in the units of the
            objective; aware W2 uses ``t = lambda/(lambda + p1 p2)`` (two groups) or
            ``lambda/(1 + lambda)`` (more groups, barycentric penalty).
        aware: whether ``sensitive`` is available at prediction time.
        group_classifier: classifier of ``S`` on ``X`` (unaware; default logistic).
        calibration_fraction: share of the data kept for the OT step (the rest fits ``eta``);
            ``None`` fits ``eta`` on all the data and calibrates on its in-sample predictions
            (reasonable for low-variance regressors such as linear models; the OT maps then see
            slightly optimistic predictions).
        extension: regressor for the out-of-sample shift ``f - eta`` (default 15-NN), fitted on
            ``(eta, s)`` (aware TV) or ``(eta, delta)`` (unaware).
        random_state: seed of the split: row ``i`` is a calibration row when the ``i``-th
            draw of ``numpy.random.default_rng(random_state).uniform`` is below
            ``calibration_fraction``.
    """

    def __init__(
        self,
        estimator=None,
        penalty: str = "w2",
        strength: float = 1.0,
        aware: bool = True,
        group_classifier=None,
        calibration_fraction: float | None = 0.5,
        extension=None,
        random_state: int | None = 0,
    ):
        self.estimator = estimator
        self.penalty = penalty
        self.strength = strength
        self.aware = aware
        self.group_classifier = group_classifier
        self.calibration_fraction = calibration_fraction
        self.extension = extension
        self.random_state = random_state

    def _design(self, X, s):
        return (
            np.column_stack([X, (s[:, None] == self.groups_[None, :]).astype(float)])
            if self.aware
            else X
        )

    def fit(self, X, y, sensitive) -> FairRegressor:
        """Fit the regressor ``eta`` and the fairness map.

        Args:
            X: ``n x d`` covariates (without the sensitive attribute).
            y: ``n`` real outcomes.
            sensitive: ``n`` group labels (two or more groups).
        """
        if self.penalty not in ("w2", "tv"):
            raise ValueError(f"penalty must be 'w2' or 'tv', got {self.penalty!r}")
        lam = check_positive("strength", self.strength, strict=False)
        X = check_data("X", X)
        y, s, groups = _check_eta_s(y, sensitive, "y", "sensitive")
        if len(X) != len(y):
            raise ValueError(f"X must have len(y) = {len(y)} rows, got shape {X.shape}")
        if self.calibration_fraction is not None and not 0 < self.calibration_fraction < 1:
            raise ValueError(
                f"calibration_fraction must be in (0, 1) or None, got {self.calibration_fraction}"
            )
        if (not self.aware or self.penalty == "tv") and len(groups) != 2:
            raise ValueError("unaware and TV fair regression are implemented for two groups")
        self.groups_ = groups
        rng = numpy_generator(self.random_state, "random_state")
        if self.calibration_fraction is None:
            cal = train = np.ones(len(y), dtype=bool)
        else:
            cal = rng.uniform(size=len(y)) < self.calibration_fraction
            train = ~cal
            for part, rows in (("calibration", cal), ("training", train)):
                missing = sorted(set(groups.tolist()) - set(np.unique(s[rows]).tolist()))
                if missing:
                    raise ValueError(
                        f"groups {missing} have no rows in the {part} split "
                        f"(calibration_fraction={self.calibration_fraction}, random_state="
                        f"{self.random_state}); use more data, another split or None"
                    )
        est = self.estimator if self.estimator is not None else LinearRegression()
        self.eta_model_ = clone(est).fit(self._design(X[train], s[train]), y[train])
        self.p_ = np.array([np.mean(s == g) for g in groups])
        Xc, sc = X[cal], s[cal]
        eta_c = self._eta(self._design(Xc, sc))
        ext = self.extension if self.extension is not None else KNeighborsRegressor(15)
        if self.aware:
            if self.penalty == "w2":
                penalty = "pairwise" if len(groups) == 2 else "barycentric"
                self.t_ = w2_interpolation_weight(lam, self.p_, penalty)
                self.maps_ = _QuantileMaps(eta_c, sc, groups)
            else:
                f = fair_tv_aware(eta_c, sc, lam)
                Z = np.column_stack([eta_c, sc == groups[1]])
                self.extension_ = clone(ext).fit(Z, f - eta_c)
        else:
            clf = (
                self.group_classifier
                if self.group_classifier is not None
                else LogisticRegression(max_iter=2000)
            )
            if not hasattr(clf, "predict_proba"):
                raise TypeError(
                    f"group_classifier: {type(clf).__name__} has no predict_proba; the unaware "
                    "maps need P(S | X) (wrap it in sklearn.calibration.CalibratedClassifierCV)"
                )
            self.group_model_ = clone(clf).fit(X[train], s[train] == groups[1])
            pi = self.group_model_.predict_proba(Xc)[:, 1]
            p1 = self.p_[1]
            f = (
                fair_w2_unaware(eta_c, pi, p1, lam)
                if self.penalty == "w2"
                else fair_tv_unaware(eta_c, pi, p1, lam)
            )
            Z = np.column_stack([eta_c, _delta(pi, p1)])
            self.extension_ = clone(ext).fit(Z, f - eta_c)
        self.n_features_in_ = X.shape[1]
        return self

    def _eta(self, Z: np.ndarray) -> np.ndarray:
        """The base model's ``n`` predictions; an ``n x 1`` column (as some wrappers return)
        is flattened, anything else is an error naming ``estimator``."""
        eta = np.asarray(self.eta_model_.predict(Z), dtype=float)
        if eta.shape == (len(Z), 1):
            eta = eta[:, 0]
        if eta.shape != (len(Z),):
            raise ValueError(
                f"estimator must predict one value per row: {len(Z)} rows gave shape {eta.shape}"
            )
        return eta

    def predict(self, X, sensitive=None) -> np.ndarray:
        """``n`` fair predictions at ``X`` (``n x d``); ``sensitive`` (``n`` labels seen in
        :meth:`fit`) is required for an aware model and refused for an unaware one."""
        if not hasattr(self, "eta_model_"):
            raise NotFittedError("FairRegressor is not fitted; call fit(X, y, sensitive) first")
        X = check_data("X", X, n_features=self.n_features_in_)
        if self.aware:
            if sensitive is None:
                raise ValueError("sensitive is required at prediction time for an aware model")
            s, _ = group_labels("sensitive", sensitive)
            if len(s) != len(X):
                raise ValueError(f"sensitive must have length {len(X)}, got {len(s)}")
            _check_known_groups("sensitive", s, self.groups_, "fit")
            eta = self._eta(self._design(X, s))
            if self.penalty == "w2":
                return self.maps_.transport(eta, s, self.t_)
            return eta + self.extension_.predict(np.column_stack([eta, s == self.groups_[1]]))
        if sensitive is not None:
            raise ValueError("an unaware model must not be given sensitive at prediction time")
        eta = self._eta(X)
        pi = self.group_model_.predict_proba(X)[:, 1]
        return eta + self.extension_.predict(np.column_stack([eta, _delta(pi, self.p_[1])]))


@keep_global_rng
def posterior_fair_predictions(
    X,
    y,
    sensitive,
    X_new,
    sensitive_new,
    strength: float = 1.0,
    num_samples: int = 200,
    warmup_steps: int = 200,
    coef_prior=None,
    seed: int = 0,
):
    """Posterior bands for aware W2 fair predictions under the Bayesian linear outcome model.

    NUTS on :func:`probml.models.regression.linear_outcome_model` (covariates standardised
    with the training mean and sd, so ``coef_prior`` is on that scale); each posterior draw of
    ``eta`` at ``X_new`` is mapped by :func:`fair_w2_aware` (reference: the draw's own
    predictions on the training data), and its W2 unfairness recorded.

    ``coef_prior``: a float64 distribution with event shape ``(p,)``, ``p = 1 + d + (G - 1)``:
    the intercept, the ``d`` standardised covariates, and an indicator for every group but the
    first (the groups in sorted order).

    Returns:
        ``(fair_draws, unfairness_draws)``: ``num_samples x m`` and ``num_samples``.
    """
    import pyro
    from pyro.infer import MCMC, NUTS

    from probml.metrics import unfairness
    from probml.models.regression import linear_outcome_model

    check_int("num_samples", num_samples)
    check_int("warmup_steps", warmup_steps, 0)
    # by its own name: w2_interpolation_weight, which receives it, would say "lam"
    strength = check_positive("strength", strength, strict=False)
    seed = check_seed("seed", seed)
    X = check_data("X", X)
    X_new = check_data("X_new", X_new, n_features=X.shape[1])
    y, s, groups = _check_eta_s(y, sensitive, "y", "sensitive")
    if len(X) != len(y):
        raise ValueError(f"X must have len(y) = {len(y)} rows, got shape {X.shape}")
    s_new, _ = group_labels("sensitive_new", sensitive_new)
    if len(s_new) != len(X_new):
        raise ValueError("sensitive_new must have the length of X_new")
    _check_known_groups("sensitive_new", s_new, groups, "sensitive")
    t = w2_interpolation_weight(
        strength,
        np.array([np.mean(s == g) for g in groups]),
        "pairwise" if len(groups) == 2 else "barycentric",
    )

    mu, sd = X.mean(0), X.std(0) + 1e-12  # standardised covariates: a well-conditioned posterior

    def design(A, g):
        cols = [np.ones(len(A)), (A - mu) / sd, (g[:, None] == groups[None, 1:])]
        return torch.as_tensor(np.column_stack(cols), dtype=torch.float64)

    Z, Zn = design(X, s), design(X_new, s_new)
    if coef_prior is not None:  # intercept, covariates, one indicator per group but the first
        check_prior("coef_prior", coef_prior, (Z.shape[1],), Z.dtype)
    pyro.set_rng_seed(seed)
    mcmc = MCMC(
        NUTS(linear_outcome_model, full_mass=True),
        num_samples=num_samples,
        warmup_steps=warmup_steps,
        disable_progbar=True,
    )
    mcmc.run(Z, torch.as_tensor(y.copy()), coef_prior=coef_prior)
    beta = mcmc.get_samples()["beta"]  # S x p
    eta_train = (Z @ beta.T).T.numpy()  # S x n, the model's regression function at every draw
    eta_new = (Zn @ beta.T).T.numpy()  # S x m
    # every draw at once: draw i is mapped with its own training predictions as reference
    fair = _QuantileMaps(eta_train, s, groups).transport(eta_new, s_new, t)
    return fair, unfairness(fair, s_new, "w2")
