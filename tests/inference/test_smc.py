"""SURGE against the exact Kalman answer on the linear-Gaussian model with the exact score."""

import math

import pytest
import torch

from probml.guides.diffusion import GuidedReverseProposal
from probml.inference.particles import ParticleDegeneracyError, effective_sample_size
from probml.inference.smc import (
    SURGE,
    BootstrapPF,
    EnKF,
    GuidedDiffusionFilter,
    evaluate_filter,
    kalman_filter,
    weighted_moments,
)
from probml.models.diffusion import LinearGaussianDiffusion, NeuralDiffusionTransition
from probml.models.dynamics import GaussianObservation, LinearGaussianSSM, Lorenz63

K, B, D = 50, 20, 10


@pytest.fixture(scope="module")
def lg_problem():
    """d = 10, every other coordinate observed, R = 0.25^2 I, 20 replicates of one step."""
    ssm = LinearGaussianSSM.random(dim=D, obs_every=2, obs_noise=0.25)
    tr = LinearGaussianDiffusion(ssm.A, ssm.Q)
    xs, ys = ssm.simulate(1, B, generator=1)
    m0, P0 = xs[0], 0.25 * torch.eye(D, dtype=torch.float64)
    Ak, Qk = tr.effective_transition(K)

    def reference(A, Q):
        H = ssm.observation.H
        out = [kalman_filter(A, Q, H, 0.25**2, ys[:, b], m0[b], P0) for b in range(B)]
        return torch.stack([o[0][0] for o in out]), out[0][1][0], torch.stack([o[2] for o in out])

    return {
        "ssm": ssm,
        "tr": tr,
        "ys": ys,
        "m0": m0,
        "surrogate": reference(Ak, Qk),  # exact posterior under the K-level surrogate
        "true": reference(ssm.A, ssm.Q),  # exact posterior under the true model
    }


def _prior_particles(m0, n, seed):
    g = torch.Generator().manual_seed(seed)
    return m0[:, None] + 0.5 * torch.randn(B, n, D, dtype=torch.float64, generator=g)


def _run(cls, p, n, **kw):
    f = cls(p["tr"], p["ssm"].observation, n, K, seed=0, verbose=False, **kw)
    return f.filter(p["ys"], particles=_prior_particles(p["m0"], n, n))


def _maha(mean, ref_mean, ref_cov):
    Li = torch.linalg.inv(torch.linalg.cholesky(ref_cov))
    return float(((mean - ref_mean) @ Li.T).norm(dim=-1).mean())


def test_surge_is_consistent_and_guidance_alone_is_biased(lg_problem):
    m_ref, P_ref, _ = lg_problem["surrogate"]
    err, err_guided, var_ratio = {}, {}, {}
    for n in (1000, 4000):
        res = _run(SURGE, lg_problem, n)
        err[n] = _maha(res.means[0], m_ref, P_ref)
        var_ratio[n] = float((res.stds[0] ** 2).sum(-1).mean() / P_ref.diagonal().sum())
        err_guided[n] = _maha(_run(GuidedDiffusionFilter, lg_problem, n).means[0], m_ref, P_ref)
    # Monte Carlo error in posterior-sd units is ~ sqrt(d / ESS): 0.2 at N = 1000
    assert err[1000] < 0.3, err
    assert err[4000] < 0.8 * err[1000], err
    # guidance without the SMC correction: a bias that does not shrink with N
    assert err_guided[1000] > 3 * err[1000]
    assert err_guided[4000] > 0.9 * err_guided[1000], err_guided
    assert 0.9 < var_ratio[1000] < 1.1 and 0.9 < var_ratio[4000] < 1.1, var_ratio
    # against the true model's Kalman filter (K = 50 discretisation gap included)
    m_true, P_true, _ = lg_problem["true"]
    res = _run(SURGE, lg_problem, 4000)
    ratio_true = float((res.stds[0] ** 2).sum(-1).mean() / P_true.diagonal().sum())
    assert 0.8 < ratio_true < 1.2
    assert _maha(res.means[0], m_true, P_true) < 0.3


def test_surge_log_evidence_matches_kalman(lg_problem):
    res = _run(SURGE, lg_problem, 4000)
    _, _, ll = lg_problem["surrogate"]
    # ll includes the prior x_0 ~ N(m0, 0.25 I); the particles were drawn from it
    assert float((res.log_evidence - ll).abs().mean()) < 0.1


def test_dps_twist_degenerates(lg_problem):
    res_dps = _run(SURGE, lg_problem, 1000, twist="dps")
    res_inf = _run(SURGE, lg_problem, 1000)
    assert float(res_dps.diffusion_ess.min()) < 0.05 * 1000
    assert float(res_inf.diffusion_ess.min()) > 0.2 * 1000
    assert res_dps.num_resamples > res_inf.num_resamples


def test_bootstrap_pf_and_enkf_on_linear_gaussian():
    ssm = LinearGaussianSSM.random(dim=4, obs_every=1, obs_noise=0.5)
    xs, ys = ssm.simulate(5, num_trajectories=8, generator=3)
    m, P, _ = ssm.kalman_filter(ys, init_loc=torch.zeros(8, 4, dtype=torch.float64))
    x0 = torch.randn(8, 4000, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    pf = BootstrapPF(ssm, ssm.observation, 4000, seed=1, verbose=False).filter(ys, x0)
    enkf = EnKF(ssm, ssm.observation, 4000, seed=1, verbose=False).filter(ys, x0)
    for res in (pf, enkf):  # both are consistent on linear-Gaussian models
        assert res.means.shape == (5, 8, 4)
        assert float((res.means - m).abs().max()) < 0.15
        assert torch.allclose(res.stds[-1].pow(2).mean(0), P[-1].diagonal(), rtol=0.15)
    assert pf.log_evidence.shape == (8,) and enkf.log_evidence is None


def test_evaluate_filter_scores_match_the_kalman_posterior():
    # RMSE of the posterior mean and the CRPS of the particle cloud against the truth, next to
    # the exact Kalman values (the Gaussian CRPS in closed form)
    ssm = LinearGaussianSSM.random(dim=4, obs_every=1, obs_noise=0.5)
    xs, ys = ssm.simulate(5, num_trajectories=8, generator=3)
    m, P, _ = ssm.kalman_filter(ys, init_loc=torch.zeros(8, 4, dtype=torch.float64))
    x0 = torch.randn(8, 4000, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    filt = BootstrapPF(ssm, ssm.observation, 4000, seed=1, verbose=False)
    out = evaluate_filter(filt, xs, ys, x0)
    assert filt.keep_particles is False  # switched on for the run only, then set back
    s = P.diagonal(dim1=-2, dim2=-1).sqrt()[:, None].expand_as(m)  # T x B x d
    z = (xs[1:] - m) / s
    phi = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    crps = s * (z * torch.erf(z / math.sqrt(2)) + 2 * phi - 1 / math.sqrt(math.pi))
    assert out["rmse"] == pytest.approx(float((m - xs[1:]).pow(2).mean().sqrt()), rel=0.03)
    assert out["crps"] == pytest.approx(float(crps.mean()), rel=0.03)
    assert 0 < out["mean_ess"] <= 1 and math.isnan(out["min_diffusion_ess"])
    assert out["result"].particles.shape == (5, 8, 4000, 4)  # kept for the CRPS
    # the ESS recorded after each update is the kept weights' own, and mean_ess its mean / N
    res = out["result"]
    assert torch.allclose(res.ess, effective_sample_size(res.log_weights), rtol=1e-12)
    assert float(res.ess.min()) < 0.99 * 4000  # the weights are not all equal
    assert out["mean_ess"] == pytest.approx(float(res.ess.mean()) / 4000, rel=1e-12)


def test_surge_scores_report_the_smallest_diffusion_ess_and_guidance_stays_unweighted():
    ssm = LinearGaussianSSM.random(dim=2, obs_every=1, obs_noise=0.1)
    tr = LinearGaussianDiffusion(ssm.A, ssm.Q)
    xs, ys = ssm.simulate(3, num_trajectories=4, generator=0)
    x0 = torch.randn(4, 32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = evaluate_filter(SURGE(tr, ssm.observation, 32, 10, seed=2, verbose=False), xs, ys, x0)
    d = out["result"].diffusion_ess  # T x K x B
    assert out["min_diffusion_ess"] == float(d.min()) / 32 and float(d.min()) < float(d.mean())
    # the guidance-only filter carries no weights: they stay equal at every time
    res = GuidedDiffusionFilter(tr, ssm.observation, 32, 10, seed=2, verbose=False,
                                keep_particles=True).filter(ys, x0)  # fmt: skip
    assert torch.allclose(res.log_weights, torch.full_like(res.log_weights, -math.log(32)))
    assert res.log_evidence is None


def test_unbatched_interface_and_seed():
    ssm = LinearGaussianSSM.random(dim=4)
    tr = LinearGaussianDiffusion(ssm.A, ssm.Q)
    _, ys = ssm.simulate(3, generator=0)
    x0 = torch.zeros(64, 4, dtype=torch.float64)
    f = SURGE(tr, ssm.observation, 64, 10, seed=5, verbose=False, keep_particles=True)
    r1 = f.filter(ys[:, 0], x0)
    r2 = f.filter(ys[:, 0], x0)
    assert r1.means.shape == (3, 4) and r1.particles.shape == (3, 64, 4)
    assert r1.diffusion_ess.shape == (3, 10)
    assert torch.equal(r1.means, r2.means)
    f.init(x0)
    parts, lw = f.step(ys[0, 0])
    assert parts.shape == (64, 4) and math.isclose(float(lw.exp().sum()), 1.0, rel_tol=1e-9)
    m, s = weighted_moments(parts, lw)
    assert m.shape == (4,) and bool((s > 0).all())


def test_nonlinear_observation_guidance_runs():
    l63 = Lorenz63()
    A = torch.eye(3)
    tr = LinearGaussianDiffusion(A, 0.01 * torch.eye(3))  # a random-walk surrogate
    xs, ys = l63.simulate(2, generator=0)
    f = SURGE(tr, l63.observation, 128, 8, seed=0, verbose=False)
    res = f.filter(ys[:, 0], xs[0, 0].expand(128, 3).clone())
    assert bool(torch.isfinite(res.means).all())


def test_bad_input_raises_clear_errors(lg_problem):
    ssm, tr = lg_problem["ssm"], lg_problem["tr"]
    f = SURGE(tr, ssm.observation, 16, 5, seed=0, verbose=False)
    with pytest.raises(RuntimeError, match="init"):
        f.step(torch.zeros(5))
    f.init(torch.zeros(16, D, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        f.step(torch.zeros(4))
    with pytest.raises(ValueError, match="inf"):  # NaN marks a missing value; inf does not
        f.step(torch.tensor([0.0, float("inf"), 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="num_particles"):
        f.init(torch.zeros(8, D))
    with pytest.raises(ValueError, match="NaN or inf"):
        f.init(torch.full((16, D), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="num_particles must be >= 2"):
        SURGE(tr, ssm.observation, 1, 5)
    with pytest.raises(ValueError, match=r"ess_threshold must be in \[0, 1\]"):
        SURGE(tr, ssm.observation, 16, 5, ess_threshold=1.5)
    with pytest.raises(ValueError, match="at least one observation"):
        f.filter(torch.zeros(0, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="noise_scale"):
        GaussianObservation(torch.eye(2), -1.0)
    with pytest.raises(ValueError, match="twist"):
        GuidedReverseProposal(tr, ssm.observation, 5, twist="bogus")
    with pytest.raises(TypeError, match="DiffusionTransition"):
        SURGE(ssm, ssm.observation, 16, 5)
    with pytest.raises(ValueError, match="resampling"):
        SURGE(tr, ssm.observation, 16, 5, resampling="residual")
    with pytest.raises(ValueError, match="inflation"):
        EnKF(ssm, ssm.observation, 16, inflation=float("nan"))
    for bad in (torch.zeros(16, dtype=torch.float64), torch.zeros(1, 1, 16, D)):
        with pytest.raises(ValueError, match="particles must be a tensor of shape N x d or B x N"):
            f.init(bad)
    f.init(torch.zeros(1, 16, D, dtype=torch.float64))  # batched: y must be B x p too
    with pytest.raises(ValueError, match=r"y must have shape \(1, 5\)"):
        f.step(torch.zeros(5, dtype=torch.float64))
    xs, ys = ssm.simulate(2, 1, generator=0)
    with pytest.raises(ValueError, match=r"xs must be T\+1 x B x d and ys T x B x p"):
        evaluate_filter(f, xs[1:], ys, torch.zeros(1, 16, D, dtype=torch.float64))


def test_weighted_moments_of_particles_far_from_the_origin():
    """Two passes (mean, then squared deviations): a one-pass E[x^2] - E[x]^2 loses every
    digit of a spread of 0.01 around 1e8 in float64."""
    g = torch.Generator().manual_seed(0)
    parts = 1e8 + 0.01 * torch.randn(1, 500, 2, generator=g, dtype=torch.float64)
    lw = torch.randn(1, 500, generator=g, dtype=torch.float64)
    m, s = weighted_moments(parts, lw)
    w = torch.softmax(lw, -1)[..., None]
    dev = parts - 1e8  # the same moments computed on the centred values
    m0 = (w * dev).sum(-2)
    s0 = (w * (dev - m0[:, None]).pow(2)).sum(-2).sqrt()
    assert torch.allclose(m - 1e8, m0, rtol=0, atol=1e-7)
    assert torch.allclose(s, s0, rtol=1e-6, atol=0)


def test_all_weights_zero_raises_named_error():
    # an observation map that puts every particle infinitely far away: all weights are 0
    ssm = LinearGaussianSSM.random(dim=2, obs_every=1)
    tr = LinearGaussianDiffusion(ssm.A, ssm.Q)
    obs = GaussianObservation(lambda x: x + float("inf"), 0.1, obs_dim=2)
    f = SURGE(tr, obs, 16, 4, seed=0, verbose=False)
    f.init(torch.zeros(16, 2, dtype=torch.float64))
    with pytest.raises(ParticleDegeneracyError):
        f.step(torch.zeros(2, dtype=torch.float64))
    pf = BootstrapPF(ssm, obs, 16, seed=0, verbose=False)
    pf.init(torch.zeros(16, 2, dtype=torch.float64))
    pf.step(torch.zeros(2, dtype=torch.float64))  # the all -inf row stays -inf (not NaN)
    with pytest.raises(ParticleDegeneracyError, match="every particle has weight zero"):
        pf.step(torch.zeros(2, dtype=torch.float64))


def test_float32_weights_stay_precise_in_long_runs():
    """The weights must not carry log p(y_1:t): in float32 its rounding (0.001 at
    |log p| ~ 2e4, growing with t) would swamp the differences between particles. With
    resampling at every step the prior weights are flat, so each step's normalised
    log-weights must equal the softmax of that step's likelihood increment. The evidence is
    accumulated apart, in float64, and matches between step() and filter()."""
    ssm = LinearGaussianSSM.random(dim=20, obs_every=1, obs_noise=0.3, dtype=torch.float32)
    _, ys = ssm.simulate(300, 1, generator=1)
    N = 300
    x0 = ssm.sample_init(N, torch.Generator().manual_seed(5))
    pf = BootstrapPF(ssm, ssm.observation, N, ess_threshold=1.0, seed=3, verbose=False)
    pf.init(x0)
    errors = []
    for t in range(len(ys)):
        parts, lw = pf.step(ys[t, 0])
        inc = ssm.observation.log_prob(ys[t].double(), parts.double())
        errors.append(float((lw.double() - (inc - torch.logsumexp(inc, -1))).abs().max()))
    assert max(errors) < 2e-4, max(errors)
    assert float(pf.log_evidence) < -1e4  # the regime where the old weights lost 1e-3
    assert pf.log_evidence.dtype == torch.float64 and pf.log_evidence.shape == ()
    res = BootstrapPF(
        ssm, ssm.observation, N, ess_threshold=1.0, seed=3, keep_particles=True, verbose=False
    ).filter(ys[:, 0], particles=x0)
    assert torch.equal(res.log_evidence, pf.log_evidence)
    assert torch.allclose(torch.logsumexp(res.log_weights, -1), torch.zeros(()), atol=1e-5)


def test_filters_refuse_particles_of_another_dtype_than_a_trained_transition():
    """A trained diffusion model computes in its weights' dtype: float64 particles with a
    float32 model failed inside the first matmul ("mat1 and mat2 must have the same dtype").
    SURGE and a bootstrap filter on the unguided model now refuse them at init, naming both;
    the analytic models follow the particles' dtype, as before."""
    from probml.models.diffusion import train_transition_model

    g = torch.Generator().manual_seed(0)
    xp = torch.randn(64, 2, generator=g)
    model, _ = train_transition_model(xp, 0.5 * xp, hidden=8, depth=1, num_iters=2, verbose=False)
    obs = GaussianObservation(torch.eye(2), 0.5)
    x0 = torch.randn(16, 2, generator=g)
    ys = torch.zeros(2, 2)
    for filt in (SURGE(model, obs, 16, 3, seed=0, verbose=False), BootstrapPF(model, obs, 16)):
        with pytest.raises(ValueError, match="particles are torch.float64 .*torch.float32"):
            filt.init(x0.double())
        filt.verbose = False
        assert filt.filter(ys, particles=x0).means.dtype == torch.float32
    lg = LinearGaussianSSM.random(dim=2, obs_every=1)  # float64 matrices, float32 particles
    lin = LinearGaussianDiffusion(lg.A, lg.Q)
    assert SURGE(lin, obs, 16, 3, verbose=False).filter(ys, x0).means.dtype == torch.float32


def test_enkf_collapses_onto_a_perfect_observation_of_the_whole_state():
    """With H = I and (nearly) no observation noise the Kalman gain of any full-rank ensemble
    is the identity, so every member moves onto y. The gain uses the same ensemble
    normaliser in C_xy and C_yy; mixing n and n - 1 leaves (1/n)(x - y) behind (0.2 here)."""

    class Stay:  # a transition that leaves the state where it is
        def sample(self, x, generator=None):
            return x

    obs = GaussianObservation(torch.eye(2, dtype=torch.float64), 1e-7)
    x0 = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0.3, -1.2], dtype=torch.float64)
    filt = EnKF(Stay(), obs, 5, seed=1, verbose=False).init(x0)
    parts, _ = filt.step(y)
    assert torch.allclose(parts, y.expand(5, 2), atol=1e-5)
    # inflation scales the forecast spread about its mean (checked with nothing observed,
    # where the update leaves the forecast alone)
    filt = EnKF(Stay(), obs, 5, inflation=1.5, seed=1, verbose=False).init(x0)
    parts, _ = filt.step(torch.full((2,), float("nan"), dtype=torch.float64))
    mean = x0.mean(0)
    assert torch.allclose(parts, mean + 1.5 * (x0 - mean), atol=1e-12)


def test_inflated_twist_is_the_exact_likelihood_under_a_flat_prior():
    """r_k^2 = sigma_k^2 / alpha_k^2 is the variance of z_0 given z_k under a flat prior, so
    with a nearly flat transition (Q = 1e9) the inflated twist equals the exact
    p(y | z_k) = N(y; z_k / alpha_k, R + sigma_k^2 / alpha_k^2) at every level; the DPS twist
    (r = 0) does not."""
    A = torch.eye(1, dtype=torch.float64)
    tr = LinearGaussianDiffusion(A, 1e9 * torch.eye(1, dtype=torch.float64))
    obs = GaussianObservation(torch.eye(1, dtype=torch.float64), 0.3)
    K = 20
    z = torch.linspace(-2, 2, 7, dtype=torch.float64).reshape(1, 7, 1)
    cond, y = torch.zeros(1, 7, 1, dtype=torch.float64), torch.tensor([[0.4]], dtype=torch.float64)
    _, _, _, al, sg, _ = tr.schedule.reverse_coefficients(K)
    # h_0 = p(y | x_t) exactly: no inflation at level 0 (sigma_0 / alpha_0 = 0.0105 is not 0)
    exact = torch.distributions.Normal(z[..., 0] / al[0], 0.3).log_prob(y)
    log_h, _, _ = GuidedReverseProposal(tr, obs, K).twist(z, 0, cond, y, grad=False)
    assert torch.allclose(log_h, exact, atol=1e-9)
    for k in (3, 10, 17):
        var = 0.3**2 + sg[k] ** 2 / al[k] ** 2
        exact = torch.distributions.Normal(z[..., 0] / al[k], var.sqrt()).log_prob(y)
        log_h, _, _ = GuidedReverseProposal(tr, obs, K).twist(z, k, cond, y, grad=False)
        assert torch.allclose(log_h, exact, atol=1e-4), k
        # the gradient path evaluates the same twist (level k's inflation) and its gradient
        log_g, g, _ = GuidedReverseProposal(tr, obs, K).twist(z, k, cond, y, grad=True)
        assert torch.allclose(log_g, log_h, rtol=0, atol=1e-12), k
        slope = (y - z[..., 0] / al[k]) / var / al[k]  # d/dz of the exact log-density
        assert torch.allclose(g[..., 0], slope, rtol=1e-3, atol=1e-6), k
        dps, _, _ = GuidedReverseProposal(tr, obs, K, twist="dps").twist(z, k, cond, y, grad=False)
        assert float((dps - exact).abs().max()) > 0.1


def test_inflation_uses_the_mean_squared_decode_scale():
    """r_k^2 = sigma_k^2 / alpha_k^2 * mean(v^2) with v the per-coordinate decode scale: here
    v = (1, 3), mean(v^2) = 5 (the squared mean scale would be 4); "dps" has r = 0."""
    tr = NeuralDiffusionTransition(2, hidden=4, depth=1)
    tr.inc_scale.copy_(torch.tensor([1.0, 3.0]))
    obs = GaussianObservation(torch.eye(2, dtype=torch.float64), 0.3)
    _, _, _, al, sg, _ = tr.schedule.reverse_coefficients(10)
    r2 = GuidedReverseProposal(tr, obs, 10).r2
    assert r2[0] == 0.0 and torch.allclose(r2[1:], (sg**2 / al**2 * 5.0)[1:], rtol=1e-6)
    assert torch.equal(GuidedReverseProposal(tr, obs, 10, twist="dps").r2, torch.zeros(11).to(r2))


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0])
def test_guided_proposal_and_its_log_ratio_by_hand(scale, lg_problem):
    """q = N(mu + scale * v g, v I); the returned log-ratio is log p(z' | z) - log q(z' | z)
    with p = N(mu, v I), the unguided kernel (scale 0: q is p, the ratio 0)."""
    prop = GuidedReverseProposal(lg_problem["tr"], lg_problem["ssm"].observation, K,
                                 guidance_scale=scale)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 5, D, dtype=torch.float64, generator=g)
    z0, grad = torch.randn_like(z), torch.randn(z.shape, dtype=z.dtype, generator=g)
    mean, v = prop.prior_moments(z, z0, 7)
    z_new, log_ratio = prop.propose(z, z0, grad, 7, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(z.shape, dtype=z.dtype, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(z_new, mean + scale * v * grad + v.sqrt() * noise, atol=1e-12)
    p = torch.distributions.Normal(mean, v.sqrt()).log_prob(z_new).sum(-1)
    q = torch.distributions.Normal(mean + scale * v * grad, v.sqrt()).log_prob(z_new).sum(-1)
    assert torch.allclose(log_ratio, p - q, atol=1e-9)


def test_weighted_moments_by_hand():
    # particles 0, 1, 3 with weights 1/2, 1/4, 1/4: mean 1, variance 1/2 + 0 + 4/4 = 1.5
    parts = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    lw = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64).log() + 7.0  # unnormalised
    m, s = weighted_moments(parts, lw)
    assert torch.allclose(m, torch.tensor([1.0], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(s, torch.tensor([1.5], dtype=torch.float64).sqrt(), atol=1e-12)


def test_resampling_count_is_summed_over_the_batch():
    # ess_threshold = 1 resamples every entry at every step whose incoming weights are not
    # exactly uniform: all but the first (the weights after init are), so B (T - 1) = 12;
    # 0 never resamples
    ssm = LinearGaussianSSM.random(dim=4)
    _, ys = ssm.simulate(5, num_trajectories=3, generator=0)
    x0 = torch.zeros(3, 32, 4, dtype=torch.float64)
    for thr, want in ((1.0, 12), (0.0, 0)):
        pf = BootstrapPF(ssm, ssm.observation, 32, seed=0, verbose=False, ess_threshold=thr)
        assert pf.filter(ys, x0).num_resamples == want


def test_surge_resamples_at_each_assimilation_time_when_degenerate():
    """With one diffusion level there is no resampling inside the reverse path, so every
    resampling happens at the start of an assimilation time. At ``ess_threshold = 0.999``
    any visibly unequal weights count as degenerate: after the first observation every step
    resamples (2 of 3 steps; the first starts from equal weights)."""
    ssm = LinearGaussianSSM.random(dim=2, obs_every=1, obs_noise=0.5)
    tr = LinearGaussianDiffusion(ssm.A, ssm.Q)
    xs, ys = ssm.simulate(3, 1, generator=0)
    filt = SURGE(tr, ssm.observation, 64, num_diffusion_steps=1, ess_threshold=0.999, seed=1,
                 verbose=False)  # fmt: skip
    res = filt.filter(ys[:, 0], particles=xs[0, 0] + torch.randn(64, 2, dtype=xs.dtype))
    assert res.num_resamples == 2


def test_surge_resamples_inside_the_reverse_path_at_every_level_but_the_last():
    """At ``ess_threshold = 1`` every non-uniform weight vector is degenerate. Inside the
    reverse path SURGE checks after each level k = K..2 (not after the last, where the
    particles are decoded), so T times give at least T (K - 1) resamplings there, plus one at
    each assimilation time after the first (its incoming weights are unequal)."""
    ssm = LinearGaussianSSM.random(dim=2, obs_every=1, obs_noise=0.5)
    tr = LinearGaussianDiffusion(ssm.A, ssm.Q)
    xs, ys = ssm.simulate(3, 1, generator=0)
    T, K = 3, 5
    filt = SURGE(tr, ssm.observation, 64, num_diffusion_steps=K, ess_threshold=1.0, seed=1,
                 verbose=False)  # fmt: skip
    x0 = xs[0, 0] + torch.randn(64, 2, dtype=xs.dtype, generator=torch.Generator().manual_seed(2))
    res = filt.filter(ys[:, 0], particles=x0)
    assert T * (K - 1) + (T - 1) <= res.num_resamples <= T * K
    with pytest.raises(TypeError, match="sample"):  # BootstrapPF needs a sampler
        BootstrapPF(object(), ssm.observation, 16)
