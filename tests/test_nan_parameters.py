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


@pytest.mark.parametrize(
    "call, name",
    [
        (_soft_cost, "lam"),
        (_astar, "beta"),
        (_relaxed_completion, "lam"),
        (_location_finding, "noise_scale"),
        (_ces, "nu"),
        (_scale_vector_priors, "weight_decay"),
        (_carry_weight, "carry_weight"),
    ],
)
def test_nan_parameter_is_rejected(call, name):
    with pytest.raises(ValueError, match=name):
        call()
