import math

import pyro
import pytest
import torch
from pyro.contrib.oed.eig import nmc_eig as pyro_nmc_eig

from probml.inference.eig import history_bounds, nmc_eig, sample_histories
from probml.models.experiments import LinearGaussianExperiment, LocationFinding

SIGMA = torch.tensor([[1.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 0.5]], dtype=torch.float64)


def test_nmc_eig_matches_the_linear_gaussian_closed_form():
    ex = LinearGaussianExperiment(SIGMA, noise_scale=0.5)
    xi = torch.tensor(
        [[1.0, -0.5, 0.8], [0.1, 0.2, 0.0]], dtype=torch.float64
    )  # two designs at once
    exact = torch.stack([ex.eig(x[None]) for x in xi])
    assert torch.allclose(exact[0], 0.5 * torch.log1p(xi[0] @ SIGMA @ xi[0] / 0.25))
    pyro.set_rng_seed(0)
    est = nmc_eig(ex, xi, "y", "theta", N=4000, M=2000, chunk_size=500)
    assert est.shape == (2,)
    assert torch.allclose(est, exact, atol=0.03)


@pytest.mark.parametrize("M, chunk_size", [(2, None), (5, 2)])
def test_nmc_eig_is_zero_for_an_experiment_that_says_nothing(M, chunk_size):
    """With every likelihood equal, log p(y | theta_n) equals the log of the mean of the M
    inner likelihoods: NMC is 0 for any M (a 1/M slip in the mean would give log 1.5 at
    M = 2, hidden in the noise at the usual M). With chunks that do not divide M, a last
    chunk drawing a full chunk's worth would give log(5/6)."""
    ex = LinearGaussianExperiment(SIGMA, noise_scale=1e8)
    pyro.set_rng_seed(0)
    est = nmc_eig(ex, torch.ones(1, 3, dtype=torch.float64), "y", N=50, M=M, chunk_size=chunk_size)
    assert float(est.abs().max()) < 1e-6


def test_history_bounds_reach_their_closed_form_limits():
    """sPCE is 0 for an experiment that says nothing (every likelihood is equal) and
    log(L + 1) for one that pins theta down (the contrastive likelihoods vanish); sNMC is 0 at
    the first. Each holds here to 1e-6, whatever the draws. This pins the L + 1 and the L of
    the two denominators: a slip between them moves the limits by log(4/3) = 0.29 at L = 3,
    and hides in the Monte Carlo noise at the usual L."""
    designs = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for noise, spce_limit in ((1e8, 0.0), (1e-4, math.log(4))):
        ex = LinearGaussianExperiment(SIGMA, noise_scale=noise)
        th0, ys = sample_histories(ex, designs, 50, generator=1)
        lo, hi = history_bounds(ex, designs, ys, th0, L=3, generator=2, per_history=True)
        assert torch.allclose(lo, torch.full_like(lo, spce_limit), atol=1e-6)
        if noise > 1:
            assert torch.allclose(hi, torch.zeros_like(hi), atol=1e-6)
        else:
            assert bool((hi > 100).all())  # the upper bound has no ceiling


def test_history_bounds_bracket_and_converge():
    ex = LinearGaussianExperiment(SIGMA, noise_scale=0.5)
    designs = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = float(ex.eig(designs))
    th0, ys = sample_histories(ex, designs, 1000, generator=1)
    lo_s, hi_s = history_bounds(ex, designs, ys, th0, L=20, generator=2)
    lo_b, hi_b = history_bounds(
        ex, designs, ys, th0, L=20_000, chunk_size=5_000, generator=2, per_history=True
    )
    se = float(lo_b.std() / math.sqrt(len(lo_b)))
    assert float(lo_s) < exact - 4 * se and float(hi_s) > exact + 4 * se  # small L: a clear bracket
    assert float(lo_s) <= float(lo_b.mean()) and float(hi_b.mean()) <= float(hi_s)  # tightening
    assert (
        abs(float(lo_b.mean()) - exact) < 4 * se + 0.02
        and abs(float(hi_b.mean()) - exact) < 4 * se + 0.05
    )
    # sPCE can never exceed log(L + 1)
    assert float(lo_s) <= math.log(21)
    with pytest.raises(ValueError, match="chunk_size"):  # once an endless loop
        history_bounds(ex, designs, ys, th0, L=20, chunk_size=0)


def test_our_nmc_agrees_with_pyro_on_location_finding():
    lf = LocationFinding()
    d = torch.tensor([[0.3, 0.7], [0.9, 0.1]], dtype=torch.float64)
    pyro.set_rng_seed(0)
    ours = nmc_eig(lf, d, "y", "theta", N=3000, M=1000)
    pyro.set_rng_seed(1)
    ref = pyro_nmc_eig(lf, d, "y", "theta", N=3000, M=1000)
    assert torch.allclose(ours, ref, atol=0.05), (ours, ref)


def test_location_signal_linear_prior_and_cost_maps_by_hand():
    from probml.models.experiments import LinearGaussianExperiment, quadratic_cost

    lf = LocationFinding(num_sources=2, dim=2)
    theta = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    xi = torch.tensor([0.5, 0.0], dtype=torch.float64)
    # both sources 0.5 away: log(0.1 + 2 / (1e-4 + 0.25)); on a source the 1e-4 caps it
    assert float(lf.mean(theta, xi)) == pytest.approx(math.log(0.1 + 2 / 0.2501), rel=1e-12)
    on_top = math.log(0.1 + 1e4 + 1 / 1.0001)
    assert float(lf.mean(theta, theta[0])) == pytest.approx(on_top, rel=1e-12)
    # a user's uniform prior on [2, 5]^(K x D): the draws fill that box
    lo, hi = (torch.full((1, 2), v, dtype=torch.float64) for v in (2.0, 5.0))
    box = LocationFinding(prior=pyro.distributions.Uniform(lo, hi).to_event(2))
    th = box.sample_prior(20_000, generator=torch.Generator().manual_seed(0))
    assert th.min() >= 2 and th.max() <= 5 and float(th.mean()) == pytest.approx(3.5, abs=0.03)
    # linear-Gaussian prior draws have the prior covariance (a factor with L != L^T)
    C = torch.tensor([[1.0, 0.8], [0.8, 2.0]], dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    draws = LinearGaussianExperiment(C).sample_prior(200_000, generator=g)
    assert torch.allclose(draws.T.cov(), C, atol=0.03)
    # the spec's cost map c(x) = 0.05 + exp(-|x|^2 / 4.5)
    x = torch.tensor([[0.0, 0.0], [1.5, 1.5]], dtype=torch.float64)
    want = torch.tensor([1.05, 0.05 + math.exp(-1.0)], dtype=torch.float64)
    assert torch.allclose(quadratic_cost(x), want)


def test_location_finding_model_and_priors():
    lf = LocationFinding(num_sources=2, dim=2)
    pyro.set_rng_seed(0)
    tr = pyro.poutine.trace(lf).get_trace(torch.rand(5, 2, dtype=torch.float64))
    assert tr.nodes["theta"]["value"].shape == (5, 2, 2) and tr.nodes["y"]["value"].shape == (5,)
    theta = lf.sample_prior(7, generator=torch.Generator().manual_seed(0))
    y = lf.sample_y(theta, torch.zeros(7, 2, dtype=torch.float64))
    assert lf.log_likelihood(theta, torch.zeros(7, 2, dtype=torch.float64), y).shape == (7,)
    with pytest.raises(ValueError, match="event shape"):
        LocationFinding(prior=pyro.distributions.Normal(0.0, 1.0))
    custom = pyro.distributions.Normal(torch.full((1, 2), 0.5, dtype=torch.float64), 0.1).to_event(
        2
    )
    assert LocationFinding(prior=custom).sample_prior(4).shape == (4, 1, 2)


def test_ces_model_works_with_both_nmc_estimators_and_its_censored_likelihood_normalises():
    from pyro.contrib.oed.eig import nmc_eig as pyro_nmc

    from probml.models.experiments import CES, CensoredSigmoidNormal

    ces = CES()
    d = torch.tensor([[10.0, 50, 30, 60, 20, 40], [90.0, 5, 5, 5, 90, 5]], dtype=torch.float64)
    targets = ["rho", "alpha", "u"]
    pyro.set_rng_seed(0)
    ours = nmc_eig(ces, d, "y", targets, N=2000, M=500, chunk_size=100)
    pyro.set_rng_seed(1)
    ref = pyro_nmc(ces, d, "y", targets, N=2000, M=500)
    assert torch.allclose(ours, ref, atol=0.08), (ours, ref)
    assert bool((ours > 0).all())
    # packed-theta likelihood agrees with the Pyro model's log-density
    tr = pyro.poutine.trace(ces).get_trace(d)
    tr.compute_log_prob()
    theta = torch.cat(
        [
            tr.nodes["rho"]["value"][:, None],
            tr.nodes["alpha"]["value"],
            tr.nodes["u"]["value"].log()[:, None],
        ],
        -1,
    )
    assert torch.allclose(
        ces.log_likelihood(theta, d, tr.nodes["y"]["value"]), tr.nodes["y"]["log_prob"]
    )
    # interior density integrates to one minus the two censored masses
    cs = CensoredSigmoidNormal(
        torch.tensor(0.3, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64), eps=0.01
    )
    grid = torch.linspace(0.01, 0.99, 100_001, dtype=torch.float64)[1:-1]
    ends = torch.tensor([0.01, 0.99], dtype=torch.float64)
    total = torch.trapezoid(cs.log_prob(grid).exp(), grid) + cs.log_prob(ends).exp().sum()
    assert abs(float(total) - 1.0) < 1e-3


def test_cost_maps_and_path_costs():
    from probml.models.experiments import (
        constant_cost,
        path_cost,
        quadratic_cost,
        terrain_cost,
    )

    prev = torch.tensor([0.1, 0.2], dtype=torch.float64)
    xi = torch.rand(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(path_cost(constant_cost)(prev, xi), (xi - prev).norm(dim=-1))
    fine = path_cost(quadratic_cost, num_points=2000)(prev, xi)
    assert torch.allclose(path_cost(quadratic_cost, 16)(prev, xi), fine, rtol=1e-3)
    x = torch.rand(100, 2, dtype=torch.float64)
    assert bool((terrain_cost(x) >= 0.2).all())
    assert float(quadratic_cost(torch.zeros(2, dtype=torch.float64))) == pytest.approx(1.05)
    with pytest.raises(ValueError, match="num_points"):
        path_cost(constant_cost, 0)


def test_experiment_formulas_by_hand_and_the_views_agree():
    """Known answers for the formulas that every view of an experiment shares (so agreement
    between the views cannot see them), and the agreements themselves: the packed
    likelihood against the Pyro model's site, ``sample_prior`` against the Pyro priors."""
    from probml.models.experiments import CES, terrain_cost

    # CES utility (sum_i alpha_i x_i^rho)^(1/rho): rho = 1/2, alpha = (0.2, 0.3, 0.5),
    # x = (1, 4, 9): (0.2 + 0.6 + 1.5)^2 = 5.29
    alpha = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    x = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64)
    assert float(CES.utility(torch.tensor(0.5).double(), alpha, x)) == pytest.approx(5.29)
    # the outcome's logit is N(u (U(x) - U(x')), (nu u (1 + |x - x'|))^2): identical baskets
    # but for a distance of 3 give mean 0 and sd 0.005 * 2 * 4 = 0.04 at u = 2
    ces = CES()
    theta = torch.tensor([0.5, 0.2, 0.3, 0.5, math.log(2.0)], dtype=torch.float64)
    d = torch.tensor([1.0, 4.0, 9.0, 1.0, 4.0, 12.0], dtype=torch.float64)
    y = torch.tensor(0.51, dtype=torch.float64)  # mu = u (U(x) - U(x')) < 0 here
    mu = 2.0 * (5.29 - float(CES.utility(torch.tensor(0.5).double(), alpha, d[3:])))
    logit = math.log(0.51 / 0.49)
    want = (
        -0.5 * ((logit - mu) / 0.04) ** 2
        - math.log(0.04 * math.sqrt(2 * math.pi))
        - math.log(0.51 * 0.49)
    )
    assert float(ces.log_likelihood(theta, d, y)) == pytest.approx(want, rel=1e-9)
    # CES's packed prior draws against the Pyro model's priors: rho ~ U(0, 1),
    # alpha ~ Dir(1, 1, 1), log u ~ N(1, 3^2)
    th = ces.sample_prior(40_000, generator=torch.Generator().manual_seed(0))
    assert float(th[:, 0].mean()) == pytest.approx(0.5, abs=0.01)
    assert float(th[:, 1].mean()) == pytest.approx(1 / 3, abs=0.01)
    assert float(th[:, 4].mean()) == pytest.approx(1.0, abs=0.06)
    assert float(th[:, 4].std()) == pytest.approx(3.0, abs=0.06)
    # location finding: the packed likelihood is the Pyro model's Gaussian site
    lf = LocationFinding(num_sources=2, dim=2, noise_scale=0.3)
    pyro.set_rng_seed(0)
    design = torch.rand(5, 2, dtype=torch.float64)
    tr = pyro.poutine.trace(lf).get_trace(design)
    tr.compute_log_prob()
    ll = lf.log_likelihood(tr.nodes["theta"]["value"], design, tr.nodes["y"]["value"])
    assert torch.allclose(ll, tr.nodes["y"]["log_prob"])
    # a terrain hill: floor + h at its centre, floor + h exp(-1/2) one width away
    c = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    pts = torch.tensor([[0.5, 0.5], [0.65, 0.5]], dtype=torch.float64)
    got = terrain_cost(pts, centers=c, heights=2.0, width=0.15, floor=0.2)
    assert torch.allclose(got, torch.tensor([2.2, 0.2 + 2 * math.exp(-0.5)]).double())


def test_estimator_inputs_are_checked_and_the_wrappers_and_histories_follow_their_seeds():
    """spce / snmc are the lower and upper halves of history_bounds; sample_histories draws
    theta and y from its generator alone (the same seed, the same histories); sizes below 1
    and a posterior without a density are refused by name."""
    from probml.inference.eig import ace_eig, snmc, spce

    ex = LinearGaussianExperiment(SIGMA, noise_scale=0.5)
    designs = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    th0, ys = sample_histories(ex, designs, 200, generator=1)
    th0b, ysb = sample_histories(ex, designs, 200, generator=1)
    assert torch.equal(th0, th0b) and torch.equal(ys, ysb)
    lo, hi = history_bounds(ex, designs, ys, th0, L=20, generator=2)
    assert float(lo) < float(hi)
    assert spce(ex, designs, ys, th0, L=20, generator=2) == lo
    assert snmc(ex, designs, ys, th0, L=20, generator=2) == hi
    with pytest.raises(ValueError, match="L must be >= 1"):
        history_bounds(ex, designs, ys, th0, L=0)
    xi = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="M must be >= 1"):
        nmc_eig(ex, xi, "y", N=10, M=0)
    with pytest.raises(ValueError, match="chunk_size"):
        nmc_eig(ex, xi, "y", N=10, M=5, chunk_size=0)
    # fractions: before, N = 2.5 reached torch's expand, and chunk_size = 2.5 ran as 2
    for kw, name in ((dict(N=2.5), "N"), (dict(M=2.5), "M"), (dict(chunk_size=2.5), "chunk_size")):
        with pytest.raises(TypeError, match=name):
            nmc_eig(ex, xi, "y", **{"N": 10, "M": 5, **kw})
    for kw, name in ((dict(L=2.5), "L"), (dict(chunk_size=2.5), "chunk_size")):
        with pytest.raises(TypeError, match=name):
            history_bounds(ex, designs, ys, th0, **{"L": 20, **kw})

    class NoDensity:
        experiment = ex

    with pytest.raises(TypeError, match="log_prob"):
        ace_eig(NoDensity(), xi)


def test_nmc_eig_takes_one_label_as_a_string_whatever_its_length():
    """``observation_labels="obs"`` is one site, not the sites "o", "b" and "s": a model whose
    label is longer than one character gives the same estimate as with ``["obs"]``."""
    import pyro.distributions as dist

    def model(design):
        theta = pyro.sample("theta", dist.Normal(torch.zeros(design.shape[:-1]), 1.0))
        return pyro.sample("obs", dist.Normal(theta * design[..., 0], 0.5))

    xi = torch.tensor([[1.0], [0.3]])
    pyro.set_rng_seed(0)
    a = nmc_eig(model, xi, "obs", N=2000, M=1000)
    pyro.set_rng_seed(0)
    b = nmc_eig(model, xi, ["obs"], N=2000, M=1000)
    assert torch.equal(a, b) and a.shape == (2,)
    exact = 0.5 * torch.log1p(xi[:, 0] ** 2 / 0.25)  # the linear-Gaussian closed form
    assert torch.allclose(a, exact, atol=0.05)

    def two_sites(design):  # two observations of theta: both labels enter the estimate
        theta = pyro.sample("theta", dist.Normal(torch.zeros(design.shape[:-1]), 1.0))
        pyro.sample("obs1", dist.Normal(theta * design[..., 0], 0.5))
        return pyro.sample("obs2", dist.Normal(theta * design[..., 0], 0.5))

    pyro.set_rng_seed(0)
    both = nmc_eig(two_sites, xi, ["obs1", "obs2"], N=2000, M=1000)
    assert torch.allclose(both, 0.5 * torch.log1p(2 * xi[:, 0] ** 2 / 0.25), atol=0.05)
