"""The experimental-design models against their stated distributions and checks."""

import math

import pyro.poutine as poutine
import pytest
import torch
from scipy import stats

from probml.models.experiments import (
    CES,
    CensoredSigmoidNormal,
    LinearGaussianExperiment,
    LocationFinding,
    check_experiment_shapes,
)


class _Line:
    """y = theta xi + N(0, 0.1^2) on [0, 1]: a user experiment with every member."""

    D = 1
    design_bounds = (0.0, 1.0)

    def sample_prior(self, n, generator=None):
        return torch.randn(n, 1, generator=generator, dtype=torch.float64)

    def sample_y(self, theta, design, generator=None):
        m = (theta * design).sum(-1)
        return m + 0.1 * torch.randn(m.shape, generator=generator, dtype=m.dtype)

    def rsample_y(self, theta, design, eps):
        return (theta * design).sum(-1) + 0.1 * eps

    def log_likelihood(self, theta, design, y):
        return torch.distributions.Normal((theta * design).sum(-1), 0.1).log_prob(y)


def test_shape_check_names_the_prior_and_the_reparameterised_outcome():
    check_experiment_shapes(_Line())

    class ThreeDraws(_Line):
        def sample_prior(self, n, generator=None):
            return super().sample_prior(n + 1, generator)

    class Column(_Line):
        def rsample_y(self, theta, design, eps):
            return super().rsample_y(theta, design, eps)[..., None]

    with pytest.raises(ValueError, match=r"sample_prior\(2\) must return 2 x theta_shape"):
        check_experiment_shapes(ThreeDraws())
    with pytest.raises(ValueError, match=r"experiment.rsample_y must return shape \(2, 2\)"):
        check_experiment_shapes(Column())


def test_built_in_experiments_name_bad_settings():
    with pytest.raises(ValueError, match="prior_cov must be P x P"):
        LinearGaussianExperiment(torch.ones(2, 3))
    with pytest.raises(ValueError, match="low < high"):
        LinearGaussianExperiment(torch.eye(2), design_bounds=(1.0, 1.0))
    with pytest.raises(ValueError, match=r"eps must be in \(0, 0.5\), got 0.6"):
        CES(eps=0.6)
    for name in ("nu", "log_u_scale"):  # each by its name; inf passed before
        with pytest.raises(ValueError, match=f"{name} must be finite and > 0"):
            CES(**{name: float("inf")})


def test_location_finding_signal_uses_its_base_and_max_signal():
    """log(b + sum_k 1 / (m + |xi - theta_k|^2)) with the given b and m."""
    lf = LocationFinding(num_sources=2, dim=2, base_signal=0.3, max_signal=0.5)
    theta = torch.tensor([[0.1, 0.2], [0.9, 0.4]], dtype=torch.float64)
    xi = torch.tensor([0.5, 0.5], dtype=torch.float64)
    want = math.log(0.3 + 1 / (0.5 + 0.16 + 0.09) + 1 / (0.5 + 0.16 + 0.01))
    assert float(lf.mean(theta, xi)) == pytest.approx(want)
    with pytest.raises(ValueError, match="max_signal"):
        LocationFinding(max_signal=0.0)  # an infinite signal at a source
    with pytest.raises(ValueError, match="base_signal"):
        LocationFinding(base_signal=-1.0)


def test_censored_sigmoid_normal_draws_put_the_tails_on_the_end_points():
    """y = clip(sigmoid(eta), eps, 1 - eps): the upper tail of eta lands exactly on 1 - eps
    with probability 1 - Phi((logit(1 - eps) - loc) / scale), the lower on eps."""
    torch.manual_seed(0)
    eps = 0.01
    d = CensoredSigmoidNormal(torch.tensor(2.0, dtype=torch.float64), torch.tensor(4.0), eps)
    y = d.sample((40_000,))
    logit = math.log((1 - eps) / eps)
    assert bool(((y >= eps) & (y <= 1 - eps)).all())
    up, low = float((y == 1 - eps).double().mean()), float((y == eps).double().mean())
    assert up == pytest.approx(1 - stats.norm.cdf((logit - 2.0) / 4.0), abs=0.01)
    assert low == pytest.approx(stats.norm.cdf((-logit - 2.0) / 4.0), abs=0.01)
    # expanded (as a plate does): the batch shape, and the same density in every entry
    e = d.expand((3,))
    assert e.batch_shape == (3,) and e.eps == eps
    assert torch.allclose(e.log_prob(y[:3]), d.log_prob(y[:3]))


def test_ces_prior_and_its_pyro_model_follow_the_stated_distributions():
    """rho ~ Beta(1, 1), alpha ~ Dir(1, 1, 1) (so alpha_1 ~ Beta(1, 2)), log u ~ N(1, 3^2):
    in the packed draws of ``sample_prior`` and in the Pyro model's sites alike (KS
    distances; about 0.004 expected at these sizes)."""
    ces, n = CES(), 40_000
    packed = ces.sample_prior(n, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    design = torch.full((n, 6), 50.0, dtype=torch.float64)
    tr = poutine.trace(ces).get_trace(design)
    sites = {
        "rho": tr.nodes["rho"]["value"],
        "alpha": tr.nodes["alpha"]["value"],
        "log_u": tr.nodes["u"]["value"].log(),
    }
    for rho, alpha, log_u in ((packed[:, 0], packed[:, 1:4], packed[:, 4]), sites.values()):
        assert stats.kstest(rho.numpy(), stats.uniform.cdf).statistic < 0.015
        assert stats.kstest(alpha[:, 0].numpy(), stats.beta(1, 2).cdf).statistic < 0.015
        assert torch.allclose(alpha.sum(-1), torch.ones(n, dtype=alpha.dtype))
        assert stats.kstest(log_u.numpy(), stats.norm(1, 3).cdf).statistic < 0.015


def test_ces_outcomes_are_clipped_to_the_censoring_points():
    """A design whose first basket is far better: most sigmoids round past 1 - eps and are
    clipped onto it exactly (a point mass), none lies outside [eps, 1 - eps]."""
    ces = CES(eps=0.01)
    theta = ces.sample_prior(2000, generator=torch.Generator().manual_seed(0))
    design = torch.tensor([[90.0, 80.0, 70.0, 5.0, 10.0, 1.0]], dtype=torch.float64)
    y = ces.sample_y(theta, design, generator=torch.Generator().manual_seed(1))
    assert bool(((y >= 0.01) & (y <= 0.99)).all())
    assert float((y == 0.99).double().mean()) > 0.8


def test_a_user_prior_follows_the_generator_and_leaves_the_global_rng_alone():
    """``LocationFinding.sample_prior`` with a user prior drew from, and moved, torch's
    global RNG whatever ``generator`` said; it now runs on a fork seeded from the
    generator. And its counts are integers (2.5 sources was 2)."""
    import pyro.distributions as dist

    prior = dist.Normal(torch.zeros(1, 2, dtype=torch.float64), 0.3).to_event(2)
    lf = LocationFinding(prior=prior)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = lf.sample_prior(5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), before)
    b = lf.sample_prior(5, generator=torch.Generator().manual_seed(7))
    c = lf.sample_prior(5, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == (5, 1, 2)
    for name, kw in (("num_sources", {"num_sources": 2.5}), ("dim", {"dim": 1.5})):
        with pytest.raises(TypeError, match=f"{name} must be an integer"):
            LocationFinding(**kw)
    with pytest.raises(ValueError, match="noise_scale must be finite"):
        LocationFinding(noise_scale=float("inf"))
