import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from probml.models.regression import linear_outcome_model


def test_linear_outcome_model_sites_and_custom_prior():
    Z = torch.cat([torch.ones(5, 1), torch.randn(5, 2)], 1).double()
    Zn = Z[:2]
    pyro.set_rng_seed(0)
    tr = poutine.trace(linear_outcome_model).get_trace(Z, None, Z_new=Zn)
    beta = tr.nodes["beta"]["value"]
    assert beta.shape == (3,)
    assert torch.allclose(tr.nodes["y"]["fn"].mean, Z @ beta)
    assert torch.allclose(tr.nodes["eta"]["value"], Zn @ beta)
    point = dist.Delta(torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64), event_dim=1)
    tr2 = poutine.trace(linear_outcome_model).get_trace(Z, None, coef_prior=point, Z_new=Zn)
    assert torch.allclose(
        tr2.nodes["eta"]["value"], Zn @ torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    )


def test_default_priors_follow_coef_scale_and_noise_scale():
    """The documented defaults: beta ~ N(0, coef_scale^2 I) (5 by default) and
    sigma ~ HalfNormal(noise_scale) (2 by default), and both arguments are read."""
    Z = torch.ones(4, 3, dtype=torch.float64)
    for kwargs, (cs, ns) in (
        ({}, (5.0, 2.0)),
        ({"coef_scale": 0.3, "noise_scale": 7.0}, (0.3, 7.0)),
    ):
        tr = poutine.trace(linear_outcome_model).get_trace(Z, None, **kwargs)
        beta_fn = tr.nodes["beta"]["fn"].base_dist
        assert torch.allclose(beta_fn.loc, torch.zeros(3, dtype=torch.float64))
        assert torch.allclose(beta_fn.scale, torch.full((3,), cs, dtype=torch.float64))
        assert float(tr.nodes["sigma"]["fn"].scale) == ns


def test_eta_is_recorded_at_new_rows_and_sigma_is_the_likelihood_scale():
    """``eta`` is Z_new @ beta for rows that are not rows of Z; sigma's prior is a half-normal
    (its density at 1, not just its scale parameter) and a conditioned sigma is the
    likelihood's standard deviation, however small."""
    g = torch.Generator().manual_seed(0)
    Z = torch.randn(6, 3, dtype=torch.float64, generator=g)
    Zn = torch.randn(4, 3, dtype=torch.float64, generator=g)
    beta = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    sigma = torch.tensor(0.01, dtype=torch.float64)
    model = poutine.condition(linear_outcome_model, data={"beta": beta, "sigma": sigma})
    tr = poutine.trace(model).get_trace(Z, None, noise_scale=3.0, Z_new=Zn)
    assert torch.allclose(tr.nodes["eta"]["value"], Zn @ beta)
    assert torch.equal(tr.nodes["y"]["fn"].scale, sigma.expand(6))
    half_normal = torch.distributions.HalfNormal(torch.tensor(3.0, dtype=torch.float64))
    one = torch.tensor(1.0, dtype=torch.float64)
    assert torch.allclose(tr.nodes["sigma"]["fn"].log_prob(one), half_normal.log_prob(one))
