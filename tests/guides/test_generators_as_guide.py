"""A generator from :mod:`probml.guides.generators` reused as the amortized guide of a user's
own Pyro model: fitted by maximum likelihood on simulated ``(z, x)`` pairs (neural posterior
estimation), it is a proposal for importance sampling whose weights correct what it misses.
Known answer: a 1-D latent model whose posterior is computed exactly on a grid."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from probml.guides.generators import fit_source_conditional
from probml.inference.importance import importance_sample


def model(x_obs=None):
    z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
    # x = z^2 + z/2 + noise: for large x the posterior has two modes, one per sign of z
    return pyro.sample("x", dist.Normal(z**2 + 0.5 * z, 0.3).to_event(1), obs=x_obs)


def exact_posterior(x: float) -> tuple[float, float]:
    """Posterior mean of z and P(z > 0 | x) by quadrature on a fine grid."""
    z = torch.linspace(-6, 6, 24001, dtype=torch.float64)
    lp = dist.Normal(0.0, 1.0).log_prob(z) + dist.Normal(z**2 + 0.5 * z, 0.3).log_prob(
        torch.tensor(x, dtype=torch.float64)
    )
    w = (lp - lp.max()).exp()
    w = w / w.sum()
    return float((w * z).sum()), float(w[z > 0].sum())


@pytest.fixture(scope="module")
def flow():
    g = torch.Generator().manual_seed(0)
    Z = torch.randn(10_000, 1, generator=g)
    X = Z**2 + 0.5 * Z + 0.3 * torch.randn(10_000, 1, generator=g)
    return fit_source_conditional(Z, X, num_iters=800, hidden=32, verbose=False)


@pytest.mark.parametrize("x", [0.0, 1.5, 4.0])
def test_fitted_flow_is_an_amortized_guide_for_a_user_model(flow, x):
    def guide(x_obs=None):
        pyro.sample("z", flow.dist(x_obs))

    x_obs = torch.tensor([x])
    pyro.set_rng_seed(1)
    with torch.no_grad():
        post = importance_sample(model, guide, x_obs, num_particles=4000)
        prior = importance_sample(model, None, x_obs, num_particles=4000)
    z, w = post.samples["z"][:, 0], post.weights
    mean, p_pos = exact_posterior(x)
    assert post.ess / 4000 > 0.5  # a usable proposal at every x, both modes covered
    assert post.ess > 1.5 * prior.ess
    assert abs(float((w * z).sum()) - mean) < 0.1
    assert abs(float(w[z > 0].sum()) - p_pos) < 0.05


def test_transport_perturbation_cost_is_the_squared_shift():
    """DRUM's transport ball bounds E||G_phi(x, z) - G_0(x, z)||^2: the cost returned per row
    is the squared Euclidean length of the shift, in A's own units (the standardised shift
    times a_scale). Delta reads z and the standardised context; a constant source
    probability must lie strictly inside (0, 1)."""
    from probml.guides.generators import (
        ConditionalBernoulli,
        ConditionalFlow,
        TransportPerturbation,
    )

    flow = ConditionalFlow(a_dim=2, x_dim=3)
    with torch.no_grad():
        flow.a_scale.copy_(torch.tensor([2.0, 0.5]))
    adv = TransportPerturbation(flow)
    with torch.no_grad():
        adv.delta[-1].bias.copy_(torch.tensor([1.5, -4.0]))  # weight 0: a constant shift
    x, z = torch.randn(5, 3), torch.randn(5, 2)
    a, cost = adv(x, z)
    shift = torch.tensor([3.0, -2.0])  # (1.5, -4) * a_scale
    assert torch.allclose(a - flow.sample_with_noise(x, z), shift.expand(5, 2), atol=1e-6)
    assert torch.allclose(cost, torch.full((5,), 13.0), atol=1e-5)
    # Delta reads z and the context standardised by the source's buffers
    with torch.no_grad():
        flow.x_loc.copy_(torch.tensor([100.0, -50.0, 3.0]))
        flow.x_scale.copy_(torch.tensor([10.0, 5.0, 0.5]))
    adv = TransportPerturbation(flow)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in adv.delta.parameters():
            p.normal_()
        x = flow.x_loc + flow.x_scale * torch.randn(5, 3)
        a, _ = adv(x, z)
        want = adv.delta(torch.cat((z, (x - flow.x_loc) / flow.x_scale), -1)) * flow.a_scale
        assert torch.allclose(a - flow.sample_with_noise(x, z), want, atol=1e-5)
    with pytest.raises(ValueError, match="p must be in"):
        ConditionalBernoulli.constant(0.0)
    with pytest.raises(ValueError, match="p must be in"):
        ConditionalBernoulli.constant(1.0)


def test_every_flow_output_depends_on_every_noise_coordinate():
    """Two autoregressive blocks in one order would give a triangular Jacobian. Each of
    Pyro's blocks draws its own random order and the flow reverses the coordinates between
    blocks, so the Jacobian is dense (the reversal alone is a safeguard: with the random
    orders this test passes without it)."""
    from probml.guides.generators import ConditionalFlow

    torch.manual_seed(0)
    flow = ConditionalFlow(a_dim=3, x_dim=2)
    x, z = torch.randn(2), torch.randn(3)
    J = torch.autograd.functional.jacobian(lambda v: flow.sample_with_noise(x, v), z)
    assert bool((J.abs() > 1e-4).all()), J
    # the documented chain: block, reversal, block, then the unstandardisation
    chain = [type(t).__name__ for t in flow.dist(x).transforms]
    assert chain[1] == "Permute" and chain[-1] == "AffineTransform" and len(chain) == 4, chain
    assert flow.dist(x).transforms[1].permutation.tolist() == [2, 1, 0]


def test_bernoulli_adversary_tilts_a_frozen_base():
    from probml.guides.generators import ConditionalBernoulli

    adv = ConditionalBernoulli.constant(0.3, x_dim=2).copy()
    assert not any(p.requires_grad for p in adv.base.parameters())
    assert all(p.requires_grad for p in adv.tilt.parameters())
    assert torch.allclose(adv.prob(torch.randn(4, 2)), torch.full((4,), 0.3))  # tilt at zero


def test_fitting_the_binary_source_trains_the_base_only():
    """Documented: the source conditional is fitted with the tilt g = 0 (frozen), so its
    adversary's tilt starts at zero and the copy's probabilities are the fitted source's."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(400, 2, generator=g)
    A = (torch.rand(400, generator=g) < torch.sigmoid(2 * X[:, 0])).float()
    src = fit_source_conditional(A, X, binary=True, num_iters=200, verbose=False)
    assert all(float(p.abs().max()) == 0.0 for p in src.tilt[-1].parameters())
    assert not src.training and src.base[0].out_features == 16  # min(hidden = 32, 16)
    adv = src.copy()
    assert not any(p.requires_grad for p in adv.base.parameters())  # the fitted base frozen
    assert all(p.requires_grad for p in adv.tilt.parameters())
    x = torch.randn(5, 2, generator=g)
    with torch.no_grad():
        assert torch.equal(adv.prob(x), src.prob(x))
        assert float(src.prob(torch.tensor([[2.0, 0.0]]))) > 0.8  # the base did learn


def test_a_known_source_is_frozen_and_the_fit_checks_its_data():
    """``ConditionalBernoulli.constant`` is a known conditional: nothing in it trains. The
    fit names a NaN in ``A`` and a row count of ``A`` unlike ``X``'s; and a flow fitted to
    an ``A`` with a constant column keeps a positive scale there (its log-density finite)."""
    from probml.guides.generators import ConditionalBernoulli

    known = ConditionalBernoulli.constant(0.3, x_dim=2)
    assert not any(p.requires_grad for p in known.parameters())
    g = torch.Generator().manual_seed(0)
    X, A = torch.randn(50, 2, generator=g), torch.randn(50, 2, generator=g)
    bad = A.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="A must be finite"):
        fit_source_conditional(bad, X, num_iters=1, verbose=False)
    with pytest.raises(ValueError, match="A and X must have the same rows, got 49 and 50"):
        fit_source_conditional(A[:49], X, num_iters=1, verbose=False)
    with pytest.raises(ValueError, match="X must be n x d_x with n >= 1, got shape"):
        fit_source_conditional(A[:0], X[:0], num_iters=1, verbose=False)
    A[:, 1] = 2.0  # a constant column: standard deviation 0
    flow = fit_source_conditional(A, X, num_iters=0, verbose=False)
    assert float(flow.a_scale[1]) > 0 and float(flow.a_loc[1]) == 2.0
    with torch.no_grad():
        assert bool(torch.isfinite(flow.log_prob(A, X)).all())
