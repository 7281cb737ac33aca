import pyro
import pyro.distributions as dist
import pytest
import torch

from probml.inference.importance import importance_sample
from probml.models.linear import (
    bayesian_linear_regression,
    linear_regression_posterior,
    simulate_linear_data,
)
from probml.utils import set_seed


def _data():
    X, y, _ = simulate_linear_data(12, 3, generator=torch.Generator().manual_seed(0))
    return X, y


def _mean_error(n, reps=8):
    X, y = _data()
    mean, _ = linear_regression_posterior(X, y)
    errs = []
    for r in range(reps):
        set_seed(100 + r)
        ws = importance_sample(bayesian_linear_regression, None, X, y, num_particles=n)
        errs.append(float((ws.mean("w").double() - mean).norm()))
    return sum(errs) / reps


def test_posterior_mean_error_falls_with_particles():
    e_small, e_large = _mean_error(200), _mean_error(20000)
    # error ~ 1/sqrt(ESS): 100x the particles should give far more than a 3x drop
    assert e_large < e_small / 3, (e_small, e_large)
    assert e_large < 0.05


def test_covariance_matches_exact_at_large_n():
    X, y = _data()
    mean, cov = linear_regression_posterior(X, y)
    set_seed(0)
    ws = importance_sample(bayesian_linear_regression, None, X, y, num_particles=200_000)
    assert torch.allclose(ws.covariance("w").double(), cov, atol=0.02)
    assert ws.ess > 1000
    draws = ws.resample(scheme="systematic", generator=1)["w"]
    assert draws.shape == (200_000, 3)
    assert torch.allclose(draws.double().mean(0), mean, atol=0.03)


def test_log_evidence_matches_closed_form():
    X, y = _data()
    # marginal likelihood of the conjugate model: y ~ N(0, X X^T + I)
    cov_y = X.double() @ X.double().T + torch.eye(12, dtype=torch.float64)
    exact = torch.distributions.MultivariateNormal(torch.zeros(12, dtype=torch.float64), cov_y)
    set_seed(3)
    ws = importance_sample(bayesian_linear_regression, None, X, y, num_particles=200_000)
    assert ws.log_evidence == pytest.approx(exact.log_prob(y.double()).item(), abs=0.05)


def test_user_prior_and_seed_reproducible():
    X, y = _data()
    prior = dist.StudentT(3.0, torch.zeros(3), torch.ones(3)).to_event(1)
    set_seed(7)
    a = importance_sample(bayesian_linear_regression, None, X, y, prior=prior, num_particles=500)
    set_seed(7)
    b = importance_sample(bayesian_linear_regression, None, X, y, prior=prior, num_particles=500)
    assert torch.equal(a.samples["w"], b.samples["w"])
    assert torch.equal(a.log_weights, b.log_weights)
    with pytest.raises(ValueError, match="num_particles"):
        importance_sample(bayesian_linear_regression, None, X, y, num_particles=0)
    with pytest.raises(TypeError, match="num_particles"):  # not silently truncated to 1
        importance_sample(bayesian_linear_regression, None, X, y, num_particles=1.5)
    with pytest.raises(ValueError, match="max_plate_nesting"):
        importance_sample(
            bayesian_linear_regression, None, X, y, num_particles=5, max_plate_nesting=-1
        )
    with pytest.raises(ValueError, match="prior must have event shape"):
        bayesian_linear_regression(X, y, prior=dist.Normal(0.0, 1.0))


def test_a_guide_that_skips_or_invents_a_latent_site_is_an_error():
    # before: Pyro only warned, and a guide without b gave E[a | y] = 0.86 against the exact
    # 0.67 (b drawn from its prior inside the model, its density counted in the weight); a
    # guide with an auxiliary site gave 0.46
    import pyro
    import pyro.distributions as dist

    def model(y=None):
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        b = pyro.sample("b", dist.Normal(0.0, 1.0))
        return pyro.sample("y", dist.Normal(a + b, 0.5), obs=y)

    def skips_b(y=None):
        pyro.sample("a", dist.Normal(0.0, 1.0))

    def typo(y=None):
        pyro.sample("a", dist.Normal(0.0, 1.0))
        pyro.sample("bb", dist.Normal(0.0, 1.0))

    def auxiliary(y=None):  # right for an ELBO, not for importance weights
        u = pyro.sample("u", dist.Normal(0.0, 1.0), infer={"is_auxiliary": True})
        pyro.sample("a", dist.Normal(0.0 * u, 1.0))
        pyro.sample("b", dist.Normal(0.0, 1.0))

    def both(y=None):
        pyro.sample("a", dist.Normal(0.0, 1.0))
        pyro.sample("b", dist.Normal(0.0, 1.0))

    y = torch.tensor(1.5)
    with pytest.warns(UserWarning):  # Pyro's own warning comes first
        with pytest.raises(ValueError, match=r"missing \['b'\]"):
            importance_sample(model, skips_b, y, num_particles=100)
    with pytest.warns(UserWarning):
        with pytest.raises(ValueError, match=r"not in the model \['bb'\]"):
            importance_sample(model, typo, y, num_particles=100)
    with pytest.raises(ValueError, match=r"not in the model \['u'\]"):
        importance_sample(model, auxiliary, y, num_particles=100)
    set_seed(0)
    post = importance_sample(model, both, y, num_particles=100_000)
    assert abs(float(post.mean("a")) - 1.5 / 2.25) < 0.03  # exact E[a | y]


def test_local_latents_inside_a_plate_keep_their_plate_dimension():
    """A latent site inside a data plate (never run by a test before): its particles are
    ``N x n`` and the self-normalised means equal the exact Gaussian posterior. Model:
    mu ~ N(0, 1), z_i ~ N(mu, 1), y_i ~ N(z_i, 1); (mu, z) and y are jointly Gaussian."""
    import pyro

    y = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    def model(y):
        mu = pyro.sample("mu", dist.Normal(y.new_zeros(()), 1.0))
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("y", dist.Normal(z, 1.0), obs=y)

    def guide(y):
        pyro.sample("mu", dist.Normal(y.new_zeros(()), 1.5))
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Normal(y / 2, 1.0))

    set_seed(0)
    ws = importance_sample(model, guide, y, num_particles=100_000)
    assert ws.samples["mu"].shape == (100_000,) and ws.samples["z"].shape == (100_000, 3)
    C = torch.ones(4, 4, dtype=torch.float64)  # cov of (mu, z_1..z_3)
    C[1:, 1:] += torch.eye(3, dtype=torch.float64)
    exact = C[:, 1:] @ torch.linalg.solve(C[1:, 1:] + torch.eye(3, dtype=torch.float64), y)
    got = torch.cat([ws.mean("mu").reshape(1), ws.mean("z")])
    assert torch.allclose(got, exact, atol=0.03), (got, exact)


def test_the_exact_posterior_as_guide_gives_the_exact_evidence_with_every_draw():
    """Zero-variance importance sampling: with q = p(w | y) every weight equals p(y), so the
    log-evidence is exact to rounding (float64) with 50 particles, and the ESS is N."""
    X, y = _data()
    X, y = X.double(), y.double()
    mean, cov = linear_regression_posterior(X, y)

    def exact_guide(X, y=None):
        pyro.sample("w", dist.MultivariateNormal(mean, cov))

    cov_y = X @ X.T + torch.eye(12, dtype=torch.float64)
    exact = torch.distributions.MultivariateNormal(torch.zeros(12, dtype=torch.float64), cov_y)
    set_seed(0)
    ws = importance_sample(bayesian_linear_regression, exact_guide, X, y, num_particles=50)
    assert ws.log_evidence == pytest.approx(exact.log_prob(y).item(), abs=1e-9)
    assert ws.ess == pytest.approx(50.0, rel=1e-9)


def test_the_conjugate_posterior_and_simulator_follow_both_scales():
    """At s_w = 3 and s_y = 0.5 (the other tests use 1 and 1) the closed form
    Lambda = I / s_w^2 + X^T X / s_y^2, mu = Lambda^-1 X^T y / s_y^2 must equal Gaussian
    conditioning on the joint: Cov(w, y) = s_w^2 X^T, Cov(y) = s_w^2 X X^T + s_y^2 I."""
    sw, sy = 3.0, 0.5
    X, y, w = simulate_linear_data(
        6, 3, prior_scale=sw, noise_scale=sy, generator=torch.Generator().manual_seed(1)
    )
    X, y = X.double(), y.double()
    mean, cov = linear_regression_posterior(X, y, prior_scale=sw, noise_scale=sy)
    K = sw**2 * X @ X.T + sy**2 * torch.eye(6, dtype=torch.float64)
    C = sw**2 * X.T  # Cov(w, y)
    assert torch.allclose(mean, C @ torch.linalg.solve(K, y), atol=1e-10)
    assert torch.allclose(
        cov, sw**2 * torch.eye(3, dtype=torch.float64) - C @ torch.linalg.solve(K, C.T), atol=1e-10
    )
    # the simulator draws w with sd s_w and the noise with sd s_y
    Xb, yb, wb = simulate_linear_data(
        4000, 50, prior_scale=sw, noise_scale=sy, generator=torch.Generator().manual_seed(2)
    )
    assert float(wb.std()) == pytest.approx(sw, rel=0.15)
    assert float((yb - Xb @ wb).std()) == pytest.approx(sy, rel=0.05)


def test_the_model_reads_both_scales_and_the_posterior_covariance_is_symmetric():
    """The Pyro model's default prior is N(0, s_w^2 I) and its likelihood N(X w, s_y^2) at the
    scales passed (the other tests run at 1 and 1); the closed-form covariance is exactly
    symmetric (a MultivariateNormal built from it is then valid)."""
    from pyro import poutine

    X = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    tr = poutine.trace(bayesian_linear_regression).get_trace(X, None, 3.0, 0.5)
    w_fn, y_fn = tr.nodes["w"]["fn"].base_dist, tr.nodes["y"]["fn"]
    assert torch.equal(w_fn.scale, torch.full((3,), 3.0, dtype=torch.float64))
    assert torch.equal(y_fn.scale, torch.full((5,), 0.5, dtype=torch.float64))
    assert torch.allclose(y_fn.loc, X @ tr.nodes["w"]["value"])
    y = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    # columns on scales 1e-2 .. 1e3: the inverse of the precision alone is not symmetric here
    Xs = X * torch.logspace(-2, 3, 3, dtype=torch.float64)
    _, cov = linear_regression_posterior(Xs, y, prior_scale=3.0, noise_scale=0.5)
    assert torch.equal(cov, cov.T)


def test_ess_and_resampling_schemes_by_hand():
    """``ess`` is 1 / sum w^2 of the normalised weights; ``resample`` follows its ``scheme``
    (the particle toolkit's draws of the same scheme and generator)."""
    from probml.inference.importance import WeightedSamples
    from probml.inference.particles import gather_particles, resample

    log_w = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)) + 3.0
    ws = WeightedSamples({"z": torch.arange(4.0)[:, None] * torch.ones(4, 2)}, log_w)
    assert ws.ess == pytest.approx(1 / (0.01 + 0.04 + 0.09 + 0.16), rel=1e-12)
    for scheme in ("multinomial", "systematic"):
        got = ws.resample(200, scheme=scheme, generator=7)["z"]
        idx = resample(log_w, 200, scheme=scheme, generator=7)
        assert torch.equal(got, gather_particles(ws.samples["z"], idx)), scheme
    a = ws.resample(200, scheme="multinomial", generator=7)["z"]
    b = ws.resample(200, scheme="systematic", generator=7)["z"]
    assert not torch.equal(a, b)


def test_samples_hold_the_latent_sites_only_even_when_the_guide_observes():
    """A guide that carries an observed site (here the model itself, ``y`` observed) gives
    samples of the latent sites only; the observed values are data, not particles."""
    import warnings

    X, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Pyro: "y" in the guide, not the model
        ws = importance_sample(
            bayesian_linear_regression, bayesian_linear_regression, X, y, num_particles=10
        )
    assert set(ws.samples) == {"w"} and ws.samples["w"].shape == (10, 3)
