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


def test_whas500_transfer_split():
    pytest.importorskip("sksurv")
    from probml.datasets.cardiac import load_whas500_transfer

    d = load_whas500_transfer(acute="chf", threshold=70)
    assert d["X_source"].shape[1] == 6 and d["A_source"].shape[0] == d["X_source"].shape[0]
    assert d["X_target"].shape[0] + d["X_source"].shape[0] == 500
    assert set(d["A_source"].unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="acute"):
        load_whas500_transfer(acute="age")
