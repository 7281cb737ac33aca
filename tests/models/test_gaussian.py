import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from probml.models.gaussian import private_covariance_model


def test_private_covariance_model_likelihood_and_priors():
    entries = torch.tensor([[0, 0], [1, 1], [2, 2], [0, 1]])
    scales = torch.tensor([0.1, 0.2, 0.3, 0.05], dtype=torch.float64)
    pyro.set_rng_seed(0)
    tr = poutine.trace(private_covariance_model).get_trace(entries, None, scales, 3, 100)
    Sigma = tr.nodes["Sigma"]["value"]
    assert torch.linalg.eigvalsh(Sigma).min() > 0
    y = tr.nodes["y"]["fn"]
    i, j = entries[:, 0], entries[:, 1]
    samp_var = (Sigma[i, i] * Sigma[j, j] + Sigma[i, j] ** 2) / 100
    assert torch.allclose(y.mean, Sigma[i, j])
    assert torch.allclose(y.stddev, (scales**2 + samp_var).sqrt())
    # a user prior on the scales, and one on the Cholesky factor of Sigma
    hc = dist.HalfCauchy(torch.ones(3, dtype=torch.float64)).to_event(1)
    tr2 = poutine.trace(private_covariance_model).get_trace(
        entries, None, scales, 3, 100, scale_prior=hc
    )
    assert tr2.nodes["scales"]["fn"] is hc
    L = torch.tensor([[1.0, 0, 0], [0.5, 1.0, 0], [0.0, 0.2, 2.0]], dtype=torch.float64)
    delta_prior = dist.Delta(L, event_dim=2)
    tr3 = poutine.trace(private_covariance_model).get_trace(
        entries, None, scales, 3, 100, prior=delta_prior
    )
    assert torch.allclose(tr3.nodes["Sigma"]["value"], L @ L.T)
