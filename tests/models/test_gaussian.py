import math

import pyro
import pyro.distributions as dist
import pytest
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


def test_lower_cholesky_bijection_round_trip_and_jacobian():
    from probml.models.gaussian import LowerCholeskyBijection

    t = LowerCholeskyBijection()
    torch.manual_seed(0)
    x = torch.randn(5, 2, 6, dtype=torch.float64)  # batch 5 x 2, d = 3
    L = t(x)
    assert L.shape == (5, 2, 3, 3) == t.forward_shape(x.shape)
    assert t.inverse_shape(L.shape) == x.shape
    assert torch.equal(L, L.tril()) and (L.diagonal(dim1=-2, dim2=-1) > 0).all()
    assert torch.allclose(t.inv(L), x)
    # log |det J| against autograd's Jacobian of x -> the lower triangle of L
    i, j = torch.tril_indices(3, 3)
    x0 = x[0, 0]
    J = torch.autograd.functional.jacobian(lambda v: t(v)[i, j], x0)
    assert torch.allclose(t.log_abs_det_jacobian(x0, t(x0)), torch.linalg.slogdet(J)[1])
    # finite gradients both ways where an off-diagonal entry is 0 or large (NUTS starts
    # from such points)
    eye = torch.eye(3, dtype=torch.float64, requires_grad=True)
    t.inv(eye).sum().backward()
    assert torch.isfinite(eye.grad).all()
    big = torch.full((6,), 800.0, dtype=torch.float64)
    big[[0, 2, 5]] = 0.0  # diagonal entries, tril order
    big.requires_grad_(True)
    t(big).sum().backward()
    assert torch.isfinite(big.grad).all()
    with pytest.raises(ValueError, match="lower triangle"):
        t(torch.zeros(4))


def _flat_likelihood_nuts(prior, num_samples=400):
    # two measurements with noise sd 1e4: the posterior is the prior
    from pyro.infer import MCMC, NUTS

    kw = dict(
        entries=torch.tensor([[0, 0], [0, 1]]),
        values=torch.tensor([1.0, 0.3], dtype=torch.float64),
        noise_scales=torch.tensor([1e4, 1e4], dtype=torch.float64),
        dim=2,
        n=100,
    )
    pyro.set_rng_seed(0)
    mcmc = MCMC(
        NUTS(private_covariance_model), num_samples=num_samples, warmup_steps=200,
        disable_progbar=True,
    )  # fmt: skip
    mcmc.run(prior=prior, **kw)
    return mcmc.get_samples()["L_sigma"]


def test_a_lower_cholesky_prior_runs_under_nuts_and_is_recovered():
    # torch registers no bijection onto lower_cholesky; the model wraps such a prior in
    # CholeskyFactorPrior. With a flat likelihood NUTS must return the prior: a Wishart on
    # Sigma (E Sigma = df S), written over its Cholesky factor.
    import warnings

    from pyro.distributions.transforms import CholeskyTransform

    S = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    df = torch.tensor(5.0, dtype=torch.float64)
    wishart = dist.TransformedDistribution(
        dist.Wishart(df, covariance_matrix=S), CholeskyTransform()
    )
    with warnings.catch_warnings():  # torch flags every Wishart draw as singular (#122021)
        warnings.filterwarnings("ignore", "Singular sample detected")
        L = _flat_likelihood_nuts(wishart)
    Sigma = L @ L.mT
    # closed forms: E Sigma = df S; E log det Sigma = sum_i digamma((df - i) / 2) + d log 2
    # + log det S. A dropped Jacobian moves the log det mean by 0.6 and the diagonal by 16-20 %;
    # with these draws the errors are 0.01 and under 3 %
    i = torch.arange(2, dtype=torch.float64)
    exact = torch.special.digamma((df - i) / 2).sum() + 2 * math.log(2) + torch.logdet(S)
    assert abs(torch.logdet(Sigma).mean() - exact) < 0.25
    ratio = Sigma.mean(0).diagonal() / (df * S).diagonal()
    assert ((ratio > 0.9) & (ratio < 1.1)).all(), ratio


def test_a_log_cholesky_gaussian_prior_is_recovered_with_its_jacobian():
    from probml.models.gaussian import LowerCholeskyBijection

    t = LowerCholeskyBijection()
    loc = torch.tensor([0.2, -0.5, 0.1], dtype=torch.float64)
    prior = dist.TransformedDistribution(dist.Normal(loc, 0.5).to_event(1), t)
    v = t.inv(_flat_likelihood_nuts(prior))
    # a prior built on the bijection itself is used without a wrapper; its Jacobian cancels
    # against the one NUTS adds, so this checks the path, not the Jacobian (tested above)
    assert torch.allclose(v.mean(0), loc, atol=0.1), v.mean(0)
    assert ((v.std(0) > 0.4) & (v.std(0) < 0.6)).all(), v.std(0)


def test_user_prior_in_svi_and_bad_event_shape():
    from probml.models.gaussian import CholeskyFactorPrior, LowerCholeskyBijection

    entries = torch.tensor([[0, 0], [1, 1], [0, 1]])
    scales = torch.full((3,), 0.1, dtype=torch.float64)
    values = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    prior = dist.TransformedDistribution(
        dist.Normal(torch.zeros(3, dtype=torch.float64), 1.0).to_event(1), LowerCholeskyBijection()
    )
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoMultivariateNormal

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoMultivariateNormal(private_covariance_model)
    svi = SVI(private_covariance_model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    losses = [svi.step(entries, values, scales, 2, 100, prior=prior) for _ in range(300)]
    assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20
    with pytest.raises(ValueError, match=r"prior must have event shape \(3, 3\)"):
        private_covariance_model(entries, None, scales, 3, 100, prior=prior)
    with pytest.raises(ValueError, match="square"):
        CholeskyFactorPrior(dist.Normal(torch.zeros(3), 1.0).to_event(1))


def test_default_prior_puts_the_scales_on_the_marginal_standard_deviations():
    # Sigma = diag(s) L L^T diag(s) with L an LKJ correlation factor: Sigma_ii = s_i^2 and
    # Sigma / (s s^T) has a unit diagonal (scaling L's columns instead would not give that)
    pyro.set_rng_seed(0)
    entries = torch.tensor([[0, 0], [1, 1], [2, 2], [0, 1]])
    tr = poutine.trace(private_covariance_model).get_trace(
        entries, None, torch.full((4,), 0.1, dtype=torch.float64), 3, 100
    )
    Sigma, s = tr.nodes["Sigma"]["value"], tr.nodes["scales"]["value"]
    assert torch.allclose(Sigma.diagonal(), s**2)
    L = tr.nodes["L_omega"]["value"]
    assert torch.allclose(Sigma, torch.outer(s, s) * (L @ L.T))


def test_default_priors_read_eta_and_kappa_and_the_wrapper_checks_and_expands():
    """The default prior is LKJ(eta) x HalfNormal(kappa) with the arguments given (a number
    or one kappa per coordinate); CholeskyFactorPrior refuses a non-square event and expands
    to a batch like any distribution."""
    from probml.models.gaussian import CholeskyFactorPrior

    entries = torch.tensor([[0, 0], [1, 1], [2, 2]])
    scales = torch.full((3,), 0.1, dtype=torch.float64)
    kappa = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)
    for sp, want in ((2.5, torch.full((3,), 2.5, dtype=torch.float64)), (kappa, kappa)):
        tr = poutine.trace(private_covariance_model).get_trace(
            entries, None, scales, 3, 100, scale_prior=sp, eta=4.0
        )
        assert float(tr.nodes["L_omega"]["fn"].concentration) == 4.0
        assert torch.equal(tr.nodes["scales"]["fn"].base_dist.scale, want)
    L = torch.tensor([[1.0, 0.0], [0.3, 2.0]], dtype=torch.float64)
    prior = CholeskyFactorPrior(dist.Delta(L, event_dim=2))
    big = prior.expand((4,))
    assert isinstance(big, CholeskyFactorPrior) and big.batch_shape == (4,)
    assert big.sample().shape == (4, 2, 2) and big.log_prob(L).shape == (4,)
    with pytest.raises(ValueError, match="square"):
        CholeskyFactorPrior(dist.Delta(torch.zeros(2, 3), event_dim=2))


def test_cholesky_factor_prior_reparameterises_exactly_when_its_base_does():
    from probml.models.gaussian import CholeskyFactorPrior, LowerCholeskyBijection

    base = dist.TransformedDistribution(
        dist.Normal(torch.zeros(3), 1.0).to_event(1), LowerCholeskyBijection()
    )
    wrapped = CholeskyFactorPrior(base)
    assert wrapped.has_rsample is True
    loc = torch.zeros(3, requires_grad=True)
    moved = CholeskyFactorPrior(
        dist.TransformedDistribution(dist.Normal(loc, 1.0).to_event(1), LowerCholeskyBijection())
    )
    (g,) = torch.autograd.grad(moved.rsample().sum(), loc)  # gradients flow through rsample
    assert bool(torch.isfinite(g).all()) and bool((g != 0).any())
    lkj = dist.LKJCholesky(2, torch.tensor(1.0))  # no rsample in Pyro
    assert CholeskyFactorPrior(lkj).has_rsample is False
