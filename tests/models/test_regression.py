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
