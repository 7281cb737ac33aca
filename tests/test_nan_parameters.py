"""A NaN passes every ``x < 0`` or ``x <= 0`` check; each parameter below once slipped through
one. They must be rejected with an error that names them."""

import math

import pytest
import torch
from torch import nn

NAN = math.nan


def _soft_cost():
    from probml.inference.planning import SoftCost

    SoftCost(NAN)


def _astar():
    from probml.inference.advantage import astar_po_values

    astar_po_values(torch.ones(2, 3), NAN)


def _relaxed_completion():
    from probml.inference.maxent import relaxed_completion

    relaxed_completion([(0, 0)], [1.0], 1, [1.0], lam=NAN)


def _location_finding():
    from probml.models.experiments import LocationFinding

    LocationFinding(noise_scale=NAN)


def _ces():
    from probml.models.experiments import CES

    CES(nu=NAN)


def _scale_vector_priors():
    from probml.models.layers import scale_vector_priors

    scale_vector_priors(nn.Linear(2, 2), NAN)


def _carry_weight():
    from probml.inference.sequence_rl import AdditionTask, addition_policy, supervised_warmup

    supervised_warmup(addition_policy(d_model=16, n_layers=1), AdditionTask(), carry_weight=NAN)


def _log_tau_mse():
    from probml.metrics import log_tau_mse

    log_tau_mse([1.0, NAN], [1.0, 2.0])


def _qini():
    from probml.metrics import qini_curve

    qini_curve([0.1, NAN, 0.3, 0.2], [0, 1, 0, 1], [1.0, 0.0, 1.0, 0.0])


def _calibration_propensity():
    from probml.metrics import multiplicative_calibration_error

    multiplicative_calibration_error([1.0] * 4, [0, 1, 0, 1], [1.0] * 4, [NAN] * 4, n_bins=1)


def _beta_grid():
    from probml.inference.advantage import basis_advantages

    basis_advantages(torch.tensor([0.0, 1.0]), torch.tensor([0.4, 0.5]), beta_grid=[1.0, NAN])


def _slant_gain():
    from probml.datasets.persona import SlantWorld

    SlantWorld(slant_gain=NAN)


def _ratio_data(**kw):
    from probml.datasets.ratio import make_ratio_data

    return lambda: make_ratio_data(100, d=3, **kw)


def _lorenz63_rho():
    from probml.models.dynamics import Lorenz63

    Lorenz63(rho=NAN)


def _lorenz96_forcing():
    from probml.models.dynamics import Lorenz96

    Lorenz96(forcing=NAN)


def _sparse_precision():
    from probml.datasets.gaussian import make_sparse_precision

    make_sparse_precision(5, scale_range=(NAN, 1.0))


def _gaussian_groups(**kw):
    from probml.datasets.fairness import make_gaussian_groups

    return lambda: make_gaussian_groups(50, **kw)


@pytest.mark.parametrize(
    "call, name",
    [
        # NaN confounding drew data with no treated unit; a NaN base logit no converter
        (_ratio_data(confounding=NAN), "confounding"),
        (_ratio_data(base_logit=NAN), "base_logit"),
        (_ratio_data(log_tau_intercept=math.inf), "log_tau_intercept"),
        (_ratio_data(gamma=[0.1, NAN, 0.0]), "gamma"),
        (_gaussian_groups(mean_shift=NAN), "mean_shift"),
        (_gaussian_groups(noise=-1.0), "noise"),
        (_gaussian_groups(beta=[1.0, NAN]), "beta"),
        # NaN Lorenz parameters simulated NaN states; a NaN scale range overflowed in NumPy
        (_lorenz63_rho, "rho"),
        (_lorenz96_forcing, "forcing"),
        (_sparse_precision, "scale_range"),
        (_soft_cost, "lam"),
        (_astar, "beta"),
        (_relaxed_completion, "lam"),
        (_location_finding, "noise_scale"),
        (_ces, "nu"),
        (_scale_vector_priors, "weight_decay"),
        (_carry_weight, "carry_weight"),
        (_log_tau_mse, "positive"),
        (_qini, "finite"),
        (_calibration_propensity, "propensity"),
        (_beta_grid, "beta_grid"),
        (_slant_gain, "slant_gain"),
    ],
)
def test_nan_parameter_is_rejected(call, name):
    with pytest.raises(ValueError, match=name):
        call()
