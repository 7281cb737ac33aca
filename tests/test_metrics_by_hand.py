"""Metrics against values computed by hand (each case chosen so that a plausible wrong
formula gives a different number)."""

import math

import numpy as np
import pytest
import torch

from probml.metrics import multiplicative_calibration_error, relative_error


def test_relative_error_in_both_norms():
    """truth I, error diag(3, 4): Frobenius 5 / sqrt(2), spectral 4 / 1."""
    truth = torch.eye(2)
    est = truth + torch.diag(torch.tensor([3.0, 4.0]))
    assert relative_error(est, truth) == pytest.approx(5 / math.sqrt(2))
    assert relative_error(est, truth, ord=2) == pytest.approx(4.0)
    assert relative_error(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 1.0])) == pytest.approx(
        math.sqrt(9 + 9)
    )


def test_multiplicative_calibration_error_by_hand():
    """Two quantile bins: tau_pred in {1, 2} and in {4, 16} (geometric means sqrt 2 and 8,
    arithmetic 1.5 and 10, in another ratio). Bin 1: treated outcomes 3, 1 at propensities 0.5, 0.25 (weights 2, 4) and
    controls 1, 1 (weights 2, 4/3): IPW means 10/6 and 1, observed ratio 5/3. Bin 2: treated
    2, 2 and controls 1, 1 at propensity 0.5, observed ratio 2. The log errors,
    log(5 / (3 sqrt 2)) > 0 and log(2 / 8) < 0, have opposite signs, so the mean of
    their sizes differs from the size of their mean."""
    tau = np.array([1.0, 2.0, 1.0, 2.0, 4.0, 16.0, 4.0, 16.0])
    w = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    y = np.array([3.0, 1.0, 1.0, 1.0, 2.0, 2.0, 1.0, 1.0])
    e = np.array([0.5, 0.25, 0.5, 0.25, 0.5, 0.5, 0.5, 0.5])
    err2 = abs(math.log(2 / 8))
    expected = math.exp((math.log(5 / (3 * math.sqrt(2))) + err2) / 2)
    assert multiplicative_calibration_error(tau, w, y, e, n_bins=2) == pytest.approx(expected)
    # without propensities bin 1's means are plain: 2 and 1, observed ratio 2
    plain = math.exp((math.log(2 / math.sqrt(2)) + err2) / 2)
    assert multiplicative_calibration_error(tau, w, y, n_bins=2) == pytest.approx(plain)
    # a bin whose control outcomes are all zero carries no ratio: skipped (documented), so
    # the error is bin 2's alone
    y0 = y.copy()
    y0[[2, 3]] = 0.0
    assert multiplicative_calibration_error(tau, w, y0, n_bins=2) == pytest.approx(8 / 2)
    for bad in (0.0, -1.0):  # a ratio's log: log 0 = -inf, a negative one has none
        with pytest.raises(ValueError, match="tau_pred must be positive"):
            multiplicative_calibration_error(np.r_[tau[:-1], bad], w, y, n_bins=2)


def test_gaussian_kl_against_torch_and_by_hand():
    """KL(N(0, S) || N(0, H)) = (tr(H^-1 S) - d + log det H - log det S) / 2: for S = I and
    H = 2I in two dimensions, (1 - 2 + log 4) / 2; and torch's closed form on a dense pair
    (both orders: the divergence is not symmetric)."""
    from probml.metrics import gaussian_kl

    eye = torch.eye(2, dtype=torch.float64)
    assert gaussian_kl(eye, 2 * eye) == pytest.approx((1 - 2 + math.log(4)) / 2, rel=1e-12)
    g = torch.Generator().manual_seed(0)
    A, B = (torch.randn(4, 4, generator=g, dtype=torch.float64) for _ in range(2))
    S, H = A @ A.T + 0.5 * torch.eye(4), B @ B.T + 0.5 * torch.eye(4)
    mvn = torch.distributions.MultivariateNormal
    z = torch.zeros(4, dtype=torch.float64)
    for P, Q in ((S, H), (H, S)):
        want = float(torch.distributions.kl_divergence(mvn(z, P), mvn(z, Q)))
        assert gaussian_kl(P, Q) == pytest.approx(want, rel=1e-10)


def test_log_tau_mse_by_hand_and_its_errors_name_the_argument():
    """The mean squared log ratio; a shape mismatch and a non-positive ratio name
    ``tau_pred`` or ``tau_true`` (the message said only "ratios must be positive")."""
    from probml.metrics import log_tau_mse

    assert log_tau_mse([2.0, 1.0], [1.0, math.e]) == pytest.approx((math.log(2) ** 2 + 1) / 2)
    with pytest.raises(ValueError, match=r"^tau_pred and tau_true must have the same shape"):
        log_tau_mse([1.0, 2.0], [1.0])
    with pytest.raises(
        ValueError,
        match=r"^tau_pred must hold positive ratios \(no NaN\); entries that are not: 2$",
    ):
        log_tau_mse([0.0, float("nan"), 1.0], [1.0, 1.0, 1.0])
    with pytest.raises(
        ValueError,
        match=r"^tau_true must hold positive ratios \(no NaN\); entries that are not: 1$",
    ):
        log_tau_mse([1.0, 1.0], [1.0, -2.0])


def test_metric_edge_cases_are_refused_or_follow_their_documented_rule():
    """Bins are left-closed, so predictions tied at an inner edge share the upper bin; a
    zero truth, a NaN outcome, one group, a NaN unfairness, non-square covariances are
    refused; forecasts whose classes touch at one value (every y = 1 at or below every
    y = 0) are a quasi-complete separation: slope -inf."""
    from probml.metrics import (
        calibration_slope_intercept,
        gaussian_kl,
        pareto_front,
        qini_curve,
        unfairness,
    )

    tau = np.array([1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 4.0, 4.0, 4.0, 4.0])
    w = np.array([1, 0] * 6)
    y = np.array([2.0, 1.0, 2.0, 1.0, 5.0, 1.0, 5.0, 1.0, 3.0, 1.0, 3.0, 1.0])
    # edges (1, 2, 4): bin 0 holds the 1s (observed ratio 2, predicted 1), bin 1 the 2s and
    # 4s (treated mean 4, control 1: ratio 4; predicted geometric mean 2 sqrt 2)
    want = math.exp((math.log(2.0) + abs(math.log(4.0 / (2.0 * math.sqrt(2.0))))) / 2)
    assert multiplicative_calibration_error(tau, w, y, n_bins=2) == pytest.approx(want)
    with pytest.raises(ValueError, match="truth must be non-zero"):
        relative_error(torch.ones(3), torch.zeros(3))
    with pytest.raises(ValueError, match="score .* and y must be finite"):
        qini_curve(np.arange(4.0), np.array([0, 1, 0, 1]), np.array([1.0, np.nan, 0.0, 1.0]))
    with pytest.raises(ValueError, match="need at least two groups"):
        unfairness(np.arange(4.0), np.zeros(4))
    with pytest.raises(ValueError, match="risk and unfair must be finite"):
        pareto_front([1.0, 2.0], [0.5, np.nan])
    with pytest.raises(ValueError, match="need two d x d matrices"):
        gaussian_kl(torch.ones(2, 3), torch.ones(2, 3))
    slope, intercept = calibration_slope_intercept([0.2, 0.3, 0.3, 0.4], [1, 1, 0, 0])
    assert slope == -math.inf and math.isnan(intercept)
    slope, intercept = calibration_slope_intercept([0.2, 0.3, 0.3, 0.4], [0, 0, 1, 1])
    assert slope == math.inf and math.isnan(intercept)
