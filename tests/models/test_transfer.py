import math

import pytest
import torch

from probml.models.transfer import BinaryShiftProblem, ContinuousShiftSimulation, log_risk


def _half(x):
    return torch.full((x.shape[0],), 0.5)


def test_no_shift_risk_is_reported_when_the_grid_lacks_the_unshifted_point():
    """Before, a grid without tau = 1 (or without radius 0) made ``summary`` fail with a
    KeyError; the unshifted risk is now computed on its own and stays out of worst/mean."""
    sim = ContinuousShiftSimulation(deltas=(0.75,), taus=(0.5, 2.0))
    assert len(sim.grid) == 16

    def slope(x):
        return torch.sigmoid(x[:, 0])

    out = sim.summary(slope, n=2000)
    assert out["no_shift"] == sim.target_risk(slope, (0.0, 0.0), 1.0, 2000)
    assert ((0.0, 0.0), 1.0) not in out["grid"]
    assert out["worst"] == max(out["grid"].values())
    assert out["mean"] == pytest.approx(sum(out["grid"].values()) / 16, rel=1e-12)
    full = ContinuousShiftSimulation().summary(slope, n=2000)  # the default grid has the point
    assert full["no_shift"] == full["grid"][((0.0, 0.0), 1.0)]


def test_simulation_settings_are_checked_by_name():
    for kw, name in (
        (dict(deltas=(-0.5, 1.0)), "deltas"),
        (dict(deltas=()), "deltas"),
        (dict(taus=(0.0,)), "taus"),
        (dict(taus=(math.nan,)), "taus"),
        (dict(B=((1.0, 0.0),)), "B"),
        (dict(B=((1.0, math.inf), (0.0, 1.0))), "B"),
        (dict(target_x_shift=(0.5,)), "target_x_shift"),
    ):
        with pytest.raises(ValueError, match=name):
            ContinuousShiftSimulation(**kw)
    sim = ContinuousShiftSimulation()
    with pytest.raises(ValueError, match="tau"):
        sim.target_risk(_half, (0.0, 0.0), -1.0, 100)
    for call in (
        lambda: sim.sample_source(2.5),
        lambda: sim.sample_target_x(0),
        lambda: sim.target_risk(_half, (0.0, 0.0), 1.0, 10.5),
        lambda: BinaryShiftProblem().sample(2.5),
    ):
        with pytest.raises((TypeError, ValueError), match="n must"):
            call()


def test_log_risk_clips_the_forecast_as_documented():
    mu = torch.tensor([0.3, 0.3], dtype=torch.float64)
    got = log_risk(torch.tensor([0.0, 1.0], dtype=torch.float64), mu, eps=1e-6)
    want = (
        -(0.3 * math.log(1e-6) + 0.7 * math.log(1 - 1e-6)),
        -(0.3 * math.log(1 - 1e-6) + 0.7 * math.log(1e-6)),
    )
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12)


def test_source_sample_follows_its_stated_law():
    """Source: X ~ N(0, I), A | X ~ N(B X, I), y | X, A ~ Bernoulli(mu(X, A)); the target's X
    is shifted by ``target_x_shift``. Moments of 200,000 draws (standard errors ~0.003)."""
    sim = ContinuousShiftSimulation()
    x, a, y = sim.sample_source(200_000, generator=0)
    resid = a - x @ torch.tensor(sim.B).T
    assert torch.allclose(x.mean(0), torch.zeros(2), atol=0.015)
    assert torch.allclose(torch.cov(resid.T), torch.eye(2), atol=0.02)
    assert torch.allclose(torch.linalg.lstsq(x, a).solution.T, torch.tensor(sim.B), atol=0.02)
    assert abs(float(y.mean() - sim.outcome(x, a).mean())) < 0.01
    xt = sim.sample_target_x(200_000, generator=1)
    assert torch.allclose(xt.mean(0), torch.tensor(sim.target_x_shift), atol=0.015)
