import math

import pyro
import pytest
import torch
from pyro import poutine

from probml.models.treatment import default_coef_prior, ratio_q_model


def test_ratio_q_model_sites_and_log_tau_identity():
    g = torch.Generator().manual_seed(0)
    Xq = torch.cat([torch.ones(7, 1), torch.randn(7, 2, generator=g)], 1).double()
    wq = (torch.rand(7, generator=g) < 0.5).double()
    Xe = torch.cat([torch.ones(11, 1), torch.randn(11, 2, generator=g)], 1).double()
    we = (torch.rand(11, generator=g) < 0.5).double()
    Xn = Xe[:4]
    pyro.set_rng_seed(0)
    tr = poutine.trace(ratio_q_model).get_trace(Xq, wq, Xe, we, X_new=Xn)
    bq, be = tr.nodes["beta_q"]["value"], tr.nodes["beta_e"]["value"]
    assert bq.shape == (3,) and be.shape == (3,)
    assert tr.nodes["w_q"]["fn"].batch_shape == (7,) and tr.nodes["w_e"]["fn"].batch_shape == (11,)
    # log tau = x^T beta_q - logit e(x) = x^T (beta_q - beta_e)
    assert torch.allclose(tr.nodes["log_tau"]["value"], Xn @ (bq - be))
    # known RCT propensity: no beta_e site, log tau = x^T beta_q - logit e0
    tr0 = poutine.trace(ratio_q_model).get_trace(Xq, wq, e0=0.25, X_new=Xn)
    assert "beta_e" not in tr0.nodes
    expected = Xn @ tr0.nodes["beta_q"]["value"] - math.log(0.25 / 0.75)
    assert torch.allclose(tr0.nodes["log_tau"]["value"], expected)
    with pytest.raises(ValueError, match="Xe and we"):
        ratio_q_model(Xq, wq)
    with pytest.raises(ValueError, match="Xe and we"):  # else w_e sampled, not observed
        ratio_q_model(Xq, wq, Xe)
    for bad in (0.0, 1.0, float("nan")):  # ZeroDivisionError, a math domain error, NaN bands
        with pytest.raises(ValueError, match=r"e0 must be a propensity in \(0, 1\)"):
            ratio_q_model(Xq, wq, e0=bad, X_new=Xn)
    assert default_coef_prior(3).event_shape == (3,)


def test_default_coefficient_prior_is_the_documented_normal():
    # Normal(0, 2.5) per coefficient (Gelman et al.'s weakly informative default), on both
    # the q and the e regressions when no prior is given
    X = torch.ones(4, 3, dtype=torch.float64)
    w = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    tr = poutine.trace(ratio_q_model).get_trace(X, w, X, w)
    for site in ("beta_q", "beta_e"):
        fn = tr.nodes[site]["fn"]
        assert fn.event_shape == (3,)
        assert torch.equal(fn.base_dist.scale, torch.full((3,), 2.5, dtype=torch.float64))
        assert torch.equal(fn.base_dist.loc, torch.zeros(3, dtype=torch.float64))
    wide = default_coef_prior(2, scale=10.0, dtype=torch.float32)  # the scale is a parameter
    assert torch.equal(wide.base_dist.scale, torch.full((2,), 10.0)) and wide.event_shape == (2,)
