"""The Pyro models follow their data's device, and refuse a user prior on another device.

``meta`` tensors stand in for CUDA here (no GPU in CI): a tensor the model builds on the CPU
meets the meta data in an op that raises, so a model that runs and leaves every value and
log-density on ``meta`` builds nothing on a fixed device. Pyro's own argument checks read
values, which meta tensors do not have, so validation is off for these traces.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.poutine.subsample_messenger import _Subsample

from probml.models.adapters import spurious_factor_model
from probml.models.gaussian import private_covariance_model
from probml.models.linear import bayesian_linear_regression
from probml.models.regression import linear_outcome_model
from probml.models.treatment import ratio_q_model

META = torch.device("meta")
F64 = torch.float64


def _empty(*shape, dtype=F64):
    return torch.empty(*shape, device=META, dtype=dtype)


def _pace(**kw):
    entries = torch.tensor([[0, 0], [1, 1], [0, 1]], device=META)
    # LKJ sampling has no meta kernel: condition on the latent draws instead
    fixed = {"L_omega": _empty(2, 2), "scales": _empty(2)}
    model = poutine.condition(private_covariance_model, fixed)
    return model(entries, _empty(3), _empty(3), 2, 100, **kw)


X, y = _empty(10, 3), _empty(10)
CASES = {
    "bayesian_linear_regression": lambda: bayesian_linear_regression(X, y),
    "linear_outcome_model": lambda: linear_outcome_model(X, y, Z_new=X),
    "ratio_q_model": lambda: ratio_q_model(X, y, X, y, X_new=X),
    "ratio_q_model_rct": lambda: ratio_q_model(X, y, e0=0.5, X_new=X),
    "private_covariance_model": _pace,
    "private_covariance_model_scales": lambda: _pace(scale_prior=[1.0, 2.0]),
    "spurious_factor_model": lambda: spurious_factor_model(_empty(5, 8)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_model_builds_every_tensor_on_the_data_device(name):
    with pyro.validation_enabled(False):
        tr = poutine.trace(CASES[name]).get_trace()
        tr.compute_log_prob()
    # every sample site but the plates' index sites (Pyro keeps those on the CPU)
    sites = {s: n for s, n in tr.nodes.items() if n["type"] == "sample"}
    sites = {s: n for s, n in sites.items() if not isinstance(n["fn"], _Subsample)}
    assert sites
    for s, node in sites.items():
        assert node["value"].device == META, s
        assert node["log_prob"].device == META, s


def _cpu_prior(p):
    return dist.Normal(torch.zeros(p, dtype=F64), 1.0).to_event(1)


@pytest.mark.parametrize(
    "call, arg",
    [
        (lambda: bayesian_linear_regression(X, y, prior=_cpu_prior(3)), "prior"),
        (lambda: linear_outcome_model(X, y, coef_prior=_cpu_prior(3)), "coef_prior"),
        (lambda: ratio_q_model(X, y, e0=0.5, prior_q=_cpu_prior(3)), "prior_q"),
        (lambda: ratio_q_model(X, y, X, y, prior_e=_cpu_prior(3)), "prior_e"),
        (
            lambda: _pace(scale_prior=dist.HalfNormal(torch.ones(2, dtype=F64)).to_event(1)),
            "scale_prior",
        ),
    ],
)
def test_a_prior_on_another_device_is_refused_by_name(call, arg):
    with pyro.validation_enabled(False), pytest.raises(ValueError, match=f"^{arg} .*meta"):
        poutine.trace(call).get_trace()


def test_bayesian_linear_regression_checks_the_prior_dtype():
    X64, y64 = torch.randn(6, 2, dtype=F64), torch.randn(6, dtype=F64)
    prior = dist.Normal(torch.zeros(2), 1.0).to_event(1)  # float32
    with pytest.raises(ValueError, match="^prior must be built from torch.float64"):
        bayesian_linear_regression(X64, y64, prior=prior)
