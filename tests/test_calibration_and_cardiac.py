import numpy as np
import pytest

from probml.metrics import calibration_slope_intercept, expected_calibration_error


def test_calibration_slope_intercept_recovers_a_known_miscalibration():
    rng = np.random.default_rng(0)
    z = rng.normal(size=50000)
    y = rng.random(50000) < 1 / (1 + np.exp(-(0.3 + 0.5 * z)))  # truth: a = 0.3, b = 0.5
    p = 1 / (1 + np.exp(-z))
    b, a = calibration_slope_intercept(p, y)
    assert abs(b - 0.5) < 0.03 and abs(a - 0.3) < 0.03
    p_true = 1 / (1 + np.exp(-(0.3 + 0.5 * z)))
    assert expected_calibration_error(p_true, y) < 0.01
    assert expected_calibration_error(np.full(4, 0.9), [0, 0, 0, 1]) == pytest.approx(0.65)
    with pytest.raises(ValueError, match="same length"):
        expected_calibration_error([0.1], [0, 1])


def test_calibration_slope_says_when_no_maximum_likelihood_fit_exists():
    """Before, the optimiser's stopping point came back as the answer: forecasts that
    separate the outcomes gave a slope of 9.17 (the MLE is +inf), reversed ones -28.3, and
    one outcome class an intercept of -13.5 (the MLE is -inf)."""
    p = [0.1, 0.2, 0.8, 0.9]
    b, a = calibration_slope_intercept(p, [0, 0, 1, 1])
    assert b == np.inf and np.isnan(a)
    b, a = calibration_slope_intercept(p, [1, 0, 0, 0])
    assert b == -np.inf and np.isnan(a)
    b, a = calibration_slope_intercept([0.1, 0.5, 0.5, 0.9], [0, 0, 1, 1])  # a tie at the edge
    assert b == np.inf
    b, a = calibration_slope_intercept(p, [0, 0, 0, 0])
    assert np.isnan(b) and a == -np.inf
    assert np.isnan(calibration_slope_intercept([0.3] * 4, [0, 1, 0, 1])).all()
    # overlapping outcomes: the fit exists and equals an unpenalised logistic regression
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    q = rng.uniform(0.05, 0.95, 3000)
    y = (rng.uniform(size=3000) < q).astype(float)
    # and forecasts at 1e-5 and 1 - 1e-5, which the documented clip at 1e-6 leaves alone
    q = np.concatenate([q, [1e-5, 1e-5, 1 - 1e-5, 1 - 1e-5]])
    y = np.concatenate([y, [1.0, 0.0, 1.0, 0.0]])
    z = np.log(q / (1 - q))[:, None]
    ref = LogisticRegression(C=1e12, tol=1e-10, max_iter=1000).fit(z, y)
    b, a = calibration_slope_intercept(q, y)
    assert b == pytest.approx(ref.coef_[0, 0], abs=1e-5)
    assert a == pytest.approx(ref.intercept_[0], abs=1e-5)


def test_whas500_split_by_hand():
    """The split's rules on a table of six patients (no scikit-survival needed): died within
    the horizon -> y = 1, followed beyond it -> y = 0, censored alive before it -> dropped;
    source strictly below the age threshold; covariates standardised by the source."""
    pd = pytest.importorskip("pandas")
    from probml.datasets.cardiac import SHARED_COVARIATES, whas500_split

    ages = [50.0, 60.0, 65.0, 70.0, 80.0, 90.0]
    df = pd.DataFrame({c: np.arange(6.0) + 1 for c in SHARED_COVARIATES})
    df["age"] = ages
    df["chf"] = [1, 0, 1, 0, 1, 0]
    event = [True, False, False, True, False, True]
    time = [100.0, 400.0, 200.0, 365.0, 366.0, 1000.0]  # patient 2: censored alive at 200
    d = whas500_split(df, event, time, acute="chf", threshold=70, horizon=365)
    assert d["y_source"].tolist() == [1.0, 0.0]  # patients 0, 1 (age < 70; 2 dropped)
    assert d["y_target"].tolist() == [1.0, 0.0, 0.0]  # 70 is in the target; 90 died late
    assert d["A_source"].tolist() == [1.0, 0.0]
    src_age = np.array([50.0, 60.0])
    z = (np.array([70.0, 80.0, 90.0]) - src_age.mean()) / src_age.std()
    assert np.allclose(d["X_target"][:, 0].numpy(), z, atol=1e-5)
    assert np.allclose(d["X_source"].mean(0).numpy(), 0, atol=1e-6)
    with pytest.raises(ValueError, match="acute"):
        whas500_split(df, event, time, acute="age")


def test_whas500_transfer_split():
    pytest.importorskip("sksurv")
    from probml.datasets.cardiac import load_whas500_transfer

    d = load_whas500_transfer(acute="chf", threshold=70)
    assert d["X_source"].shape[1] == 6 and d["A_source"].shape[0] == d["X_source"].shape[0]
    assert d["X_target"].shape[0] + d["X_source"].shape[0] == 500
    assert set(d["A_source"].unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="acute"):
        load_whas500_transfer(acute="age")


def test_calibration_metrics_refuse_what_is_not_a_binary_forecast():
    """Before, ``p`` outside [0, 1] or NaN and non-binary ``y`` gave a number (a NaN ``p``
    a NaN), and ``n_bins=0`` gave an ECE of exactly 0."""
    from probml.metrics import multiplicative_calibration_error

    for p, y, what in (
        ([1.5, 0.2], [1, 0], "p must"),
        ([np.nan, 0.2], [1, 0], "p must"),
        ([0.5, 0.2], [2, 0], "y must"),
        ([], [], "at least one"),
    ):
        with pytest.raises(ValueError, match=what):
            expected_calibration_error(p, y)
        with pytest.raises(ValueError, match=what):
            calibration_slope_intercept(p, y)
    for bad in (0, -1, 2.5):
        with pytest.raises((ValueError, TypeError), match="n_bins"):
            expected_calibration_error([0.5], [1], n_bins=bad)
        with pytest.raises((ValueError, TypeError), match="n_bins"):
            multiplicative_calibration_error([1.0, 2.0], [0, 1], [1.0, 1.0], n_bins=bad)


def test_expected_calibration_error_matches_its_definition_bin_by_bin():
    """The bincount form against the per-bin mean gaps it replaced (an invariant of the change)."""
    rng = np.random.default_rng(3)
    p = np.concatenate([rng.random(997), [0.0, 1.0, 0.3]])  # both ends and a bin edge
    y = (rng.random(1000) < p).astype(float)
    n_bins = 7
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1)
    direct = sum(
        (idx == b).mean() * abs(y[idx == b].mean() - p[idx == b].mean())
        for b in range(n_bins)
        if (idx == b).any()
    )
    assert expected_calibration_error(p, y, n_bins) == pytest.approx(direct, rel=1e-12)
    # p = 1 joins the last bin (not a bin of its own past the end, nor the first): with
    # y = 0 there and p = 0.95, y = 1 beside it, the last bin's gap is |-1 + 0.05| / 2
    assert expected_calibration_error([1.0, 0.95], [0, 1], n_bins=2) == pytest.approx(0.475)


def test_whas500_split_reads_the_named_acute_column_and_drops_a_censoring_at_the_horizon():
    """A patient censored alive exactly at the horizon has an unknown status there (dropped,
    as the docstring says: "censored alive at or before it"); ``acute`` picks its column."""
    pd = pytest.importorskip("pandas")
    from probml.datasets.cardiac import SHARED_COVARIATES, whas500_split

    df = pd.DataFrame({c: np.arange(4.0) + 1 for c in SHARED_COVARIATES})
    df["age"] = [50.0, 55.0, 60.0, 80.0]
    df["chf"] = [1, 1, 1, 1]
    df["afb"] = [0, 1, 0, 1]
    event = [False, False, True, False]
    time = [365.0, 500.0, 30.0, 400.0]  # patient 0: censored alive on day 365
    d = whas500_split(df, event, time, acute="afb", threshold=70, horizon=365)
    assert d["y_source"].tolist() == [0.0, 1.0]  # patients 1 and 2
    assert d["A_source"].tolist() == [1.0, 0.0]  # their afb, not their chf


def _whas_table(pd, ages):
    from probml.datasets.cardiac import SHARED_COVARIATES

    df = pd.DataFrame({c: np.arange(len(ages), dtype=float) + 1 for c in SHARED_COVARIATES})
    df["age"] = ages
    df["chf"] = [i % 2 for i in range(len(ages))]
    return df


def test_whas500_split_refuses_what_would_give_nan_or_misaligned_rows():
    """Before, a threshold below every age gave an empty source and NaN target covariates
    (the mean of nothing), a NaN follow-up time dropped its patient silently, a NaN covariate
    went through to the tensors, ``horizon <= 0`` labelled everyone alive and short
    ``event``/``time`` failed inside pandas naming neither."""
    pd = pytest.importorskip("pandas")
    from probml.datasets.cardiac import whas500_split

    df = _whas_table(pd, [50.0, 60.0, 80.0, 90.0])
    event, time = [True, False, True, False], [100.0, 400.0, 30.0, 500.0]
    assert whas500_split(df, event, time)["X_target"].isfinite().all()
    cases = [
        (dict(threshold=40.0), "source"),
        (dict(threshold=100.0), "target"),
        (dict(threshold=float("nan")), "threshold"),
        (dict(horizon=0.0), "horizon"),
        (dict(horizon=float("nan")), "horizon"),
        (dict(time=[100.0, np.nan, 30.0, 500.0]), "time"),
        (dict(time=[100.0, -1.0, 30.0, 500.0]), "time"),
        (dict(time=time[:3]), "time"),
        (dict(event=event[:3]), "event"),
    ]
    for kw, what in cases:
        args = {"event": event, "time": time, **kw}
        e, t = args.pop("event"), args.pop("time")
        with pytest.raises(ValueError, match=what):
            whas500_split(df, e, t, **args)
    with pytest.raises(TypeError, match="threshold must be numeric"):
        whas500_split(df, event, time, threshold="70")
    bad = df.copy()
    bad.loc[1, "bmi"] = np.nan
    with pytest.raises(ValueError, match="bmi"):
        whas500_split(bad, event, time)
    bad = df.copy()
    bad.loc[0, "chf"] = np.nan
    with pytest.raises(ValueError, match="chf"):
        whas500_split(bad, event, time)


def test_whas500_split_centres_a_covariate_constant_in_the_source_without_dividing_by_zero():
    """A covariate constant in the source keeps scale 1 (StandardScaler's rule): its target
    values are the raw differences from the source value, not blown up by 1e9."""
    pd = pytest.importorskip("pandas")
    from probml.datasets.cardiac import SHARED_COVARIATES, whas500_split

    df = _whas_table(pd, [50.0, 60.0, 80.0, 90.0])
    df["gender"] = [1.0, 1.0, 0.0, 1.0]
    d = whas500_split(df, [True, False, True, False], [100.0, 400.0, 30.0, 500.0])
    g = SHARED_COVARIATES.index("gender")
    assert d["X_source"][:, g].tolist() == [0.0, 0.0]
    assert d["X_target"][:, g].tolist() == [-1.0, 0.0]
    hr = SHARED_COVARIATES.index("hr")  # 1, 2 in the source: mean 1.5, sd 0.5
    assert d["X_target"][:, hr].tolist() == pytest.approx([3.0, 5.0])
