"""Scales, weights and step sizes that passed unchecked into arithmetic: a negative prior scale
that a square hid, a cost map that could turn negative (and refill a travel budget), NaN that
turned every output to NaN. Each must be refused with an error that names it."""

import math

import pytest
import torch

NAN = math.nan


def _posterior(**kw):
    from probml.models.linear import linear_regression_posterior

    return lambda: linear_regression_posterior(torch.randn(5, 2), torch.randn(5), **kw)


def _simulate(**kw):
    from probml.models.linear import simulate_linear_data

    return lambda: simulate_linear_data(10, 2, **kw)


def _linear_model(**kw):
    import pyro

    from probml.models.linear import bayesian_linear_regression

    return lambda: pyro.poutine.trace(bayesian_linear_regression).get_trace(torch.randn(4, 2), **kw)


def _cost(fn, **kw):
    from probml.models import experiments

    return lambda: getattr(experiments, fn)(torch.rand(3, 2, dtype=torch.float64), **kw)


def _rk4():
    from probml.models.dynamics import rk4_step

    rk4_step(lambda x: -x, torch.ones(3), NAN)


def _norm_eps():
    from probml.models.layers import Norm

    Norm(4, eps=-1e-6)


def _intervention():
    from probml.inference.projection import ResidualIntervention
    from probml.models.lm import TinyLM, TinyLMConfig

    model = TinyLM(TinyLMConfig(vocab_size=8, d_model=8, n_layers=1, n_heads=1, context=4))
    ResidualIntervention(model, torch.ones(8), mode="add", alpha=NAN)


def _brier_minimax(mu):
    from probml.inference.minimax import binary_brier_minimax

    return lambda: binary_brier_minimax(0.3, 0.1, mu)


def _drum(**kw):
    import numpy as np

    from probml.inference.minimax import DRUM

    rng = np.random.default_rng(0)
    X, A, y = rng.normal(size=(20, 2)), rng.integers(0, 2, 20), np.arange(20) % 2
    return lambda: DRUM(num_iters=1, verbose=False, **kw).fit(X, A, y, X)


def _linear_diffusion(A, Q):
    from probml.models.diffusion import LinearGaussianDiffusion

    return lambda: LinearGaussianDiffusion(A, Q)


def _linear_ssm_nan_A():
    from probml.models.dynamics import LinearGaussianSSM

    LinearGaussianSSM(torch.eye(2) * NAN, torch.eye(2), torch.eye(2), 0.1)


def _noise_mlp_odd_time_features():
    from probml.models.diffusion import NoiseMLP

    NoiseMLP(2, time_features=15)  # built a layer one input too wide


def _infinite_weight_decay():
    from torch import nn

    from probml.models.layers import scale_vector_priors

    scale_vector_priors(nn.Linear(2, 2), math.inf)


@pytest.mark.parametrize(
    "call, name",
    [
        # the posterior squared both scales: -1 read as 1, 0 divided by zero
        (_posterior(prior_scale=-1.0), "prior_scale"),
        (_posterior(noise_scale=0.0), "noise_scale"),
        (_simulate(prior_scale=-1.0), "prior_scale"),
        (_simulate(noise_scale=NAN), "noise_scale"),
        (_linear_model(noise_scale=-1.0), "noise_scale"),
        # a negative floor or height made a path cost negative: the budget grew on the move
        (_cost("quadratic_cost", floor=-1.0), "floor"),
        (_cost("quadratic_cost", scale=0.0), "scale"),
        (_cost("terrain_cost", floor=-0.5), "floor"),
        (_cost("terrain_cost", heights=-5.0), "heights"),
        (_cost("terrain_cost", heights=NAN), "heights"),
        (_cost("terrain_cost", heights=torch.ones(3)), "heights"),
        (_cost("terrain_cost", centers=torch.zeros(2, 3)), "centers"),
        (_rk4, "dt"),
        (_norm_eps, "eps"),
        (_intervention, "alpha"),
        (_brier_minimax((NAN, 0.5)), r"mu\[0\]"),
        (_brier_minimax((0.2, 1.5)), r"mu\[1\]"),
        (_brier_minimax((0.2,)), "mu"),
        (_brier_minimax(0.5), "mu"),  # a number, not a pair: len() failed, naming nothing
        # a NaN or infinite radius passed a plain "rho < 0" test; a zero penalty is no penalty
        (_drum(rho=NAN), "rho"),
        (_drum(rho=math.inf), "rho"),
        (_drum(penalty=0.0), "penalty"),
        # matrices of the wrong shape failed in a matmul naming nothing; NaN ones (including a
        # NaN Q, whose NaN eigenvalues passed "lam <= 0") simulated NaN without a word
        (_linear_diffusion(torch.eye(2), torch.eye(3)), "Q"),
        (_linear_diffusion(torch.ones(2, 3), torch.eye(2)), "A"),
        (_linear_diffusion(torch.eye(2), torch.full((2, 2), NAN)), "Q"),
        (_linear_diffusion(torch.eye(2) * NAN, torch.eye(2)), "A"),
        (_linear_ssm_nan_A, "A"),
        (_noise_mlp_odd_time_features, "time_features"),
        (_infinite_weight_decay, "weight_decay"),  # a prior scale of 0
    ],
)
def test_bad_scale_is_rejected_by_name(call, name):
    with pytest.raises(ValueError, match=f"^{name}"):
        call()


def test_linear_posterior_refuses_a_column_y():
    """An ``n x 1`` ``y`` broadcast in ``X.T @ y`` into a ``d x 1`` "mean"; the posterior now
    asks for ``n`` values, and still matches the closed form on good input."""
    from probml.models.linear import linear_regression_posterior

    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(6, 2, generator=g), torch.randn(6, generator=g)
    with pytest.raises(ValueError, match=r"^y must be a tensor of shape \(6,\)"):
        linear_regression_posterior(X, y[:, None])
    mean, cov = linear_regression_posterior(X, y, prior_scale=2.0, noise_scale=0.5)
    X64, y64 = X.double(), y.double()
    precision = torch.eye(2, dtype=torch.float64) / 4.0 + X64.T @ X64 / 0.25
    assert torch.allclose(cov, torch.linalg.inv(precision))
    assert torch.allclose(mean, torch.linalg.solve(precision, X64.T @ y64) / 0.25)
