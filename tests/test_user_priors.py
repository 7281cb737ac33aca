"""User priors: every entry point that takes one names it when its shape or dtype is wrong,
before any sampling (before this check, a float32 prior met the float64 design in a matrix
product whose error named nothing, and a wrong length failed inside NUTS)."""

import numpy as np
import pyro.distributions as dist
import pytest
import torch


def _laplace(n, dtype=torch.float64, event=True):
    d = dist.Laplace(torch.zeros(n, dtype=dtype), 1.0)
    return d.to_event(1) if event else d


def _fair(prior):
    from probml.inference.transport import posterior_fair_predictions

    rng = np.random.default_rng(0)
    X, s = rng.normal(size=(50, 2)), rng.integers(0, 2, 50)
    y = X @ [1.0, -0.5] + 0.8 * s
    # p = intercept + 2 covariates + 1 group indicator = 4
    posterior_fair_predictions(X, y, s, X[:3], s[:3], num_samples=5, warmup_steps=5,
                               coef_prior=prior)  # fmt: skip


def _bayes_q(prior):
    from probml import BayesianQLearner
    from probml.datasets.ratio import make_ratio_data

    d = make_ratio_data(500, d=3, base_logit=-1.0, seed=0)  # p = 1 + 3 = 4
    BayesianQLearner(method="svi", svi_steps=2, num_samples=5, prior_q=prior).fit(
        d.X, d.w, d.y, propensity=0.5
    )


def _covariance(prior):
    from probml.models.gaussian import private_covariance_model

    entries = torch.tensor([[0, 0], [1, 1]])
    private_covariance_model(entries, None, torch.ones(2, dtype=torch.float64), 2, 10,
                             scale_prior=prior)  # fmt: skip


def _linear(prior):
    from probml.models.linear import bayesian_linear_regression

    bayesian_linear_regression(torch.randn(5, 4), prior=prior)


ROUTINES = [(_fair, "coef_prior", True), (_bayes_q, "prior_q", True),
            (_covariance, "scale_prior", False), (_linear, "prior", False)]  # fmt: skip
SIZE = {_fair: 4, _bayes_q: 4, _covariance: 2, _linear: 4}


@pytest.mark.parametrize("call, name, checks_dtype", ROUTINES, ids=[r[1] for r in ROUTINES])
def test_a_bad_prior_is_named(call, name, checks_dtype):
    n = SIZE[call]
    with pytest.raises(ValueError, match=rf"{name} must have event shape \({n},\)"):
        call(_laplace(n + 1))
    with pytest.raises(ValueError, match=r"\.to_event\(1\)"):
        call(_laplace(n, event=False))
    batched = dist.Laplace(torch.zeros(2, n, dtype=torch.float64), 1.0).to_event(1)
    with pytest.raises(ValueError, match=r"no batch shape, got batch shape \(2,\)"):
        call(batched)  # the right event shape, but a batch of two priors
    if checks_dtype:  # the design enters a matrix product with a draw
        with pytest.raises(ValueError, match=f"{name} must be built from torch.float64"):
            call(_laplace(n, dtype=torch.float32))


def test_not_a_distribution_is_named():
    with pytest.raises(TypeError, match="coef_prior must be a distribution"):
        _fair(torch.zeros(4))


def test_a_good_user_prior_runs():
    _fair(_laplace(4))
    _bayes_q(_laplace(4))
    _covariance(dist.HalfCauchy(torch.ones(2)).to_event(1))  # float32 scales promote: allowed
