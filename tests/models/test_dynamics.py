import math

import pyro.poutine as poutine
import pytest
import torch

from probml.models.diffusion import (
    LinearGaussianDiffusion,
    NeuralDiffusionTransition,
    VPSchedule,
    train_transition_model,
)
from probml.models.dynamics import (
    GaussianObservation,
    LinearGaussianSSM,
    Lorenz63,
    Lorenz96,
    StateSpaceModel,
    kalman_filter,
    rk4_step,
    simulate_transition_pairs,
)


def test_simulate_shapes_and_seed():
    ssm = LinearGaussianSSM.random(dim=6)
    xs, ys = ssm.simulate(5, num_trajectories=3, generator=4)
    assert xs.shape == (6, 3, 6) and ys.shape == (5, 3, 3)
    xs2, ys2 = ssm.simulate(5, num_trajectories=3, generator=4)
    assert torch.equal(xs, xs2) and torch.equal(ys, ys2)


def test_pyro_model_sites_and_log_prob_match_transition():
    ssm = LinearGaussianSSM.random(dim=4)
    _, ys = ssm.simulate(3, generator=0)
    tr = poutine.trace(ssm.model).get_trace(3, ys[:, 0])
    assert {"x_0", "x_1", "x_2", "x_3", "y_1", "y_3"} <= set(tr.nodes)
    x1, x2 = tr.nodes["x_1"]["value"], tr.nodes["x_2"]["value"]
    lp = tr.nodes["x_2"]["fn"].log_prob(x2)
    ref = torch.distributions.MultivariateNormal(ssm.A @ x1, ssm.Q).log_prob(x2)
    assert torch.allclose(lp, ref)


def test_kalman_matches_brute_force_gaussian_conditioning():
    # one step: x1 = A x0 + e, y = H x1 + v; joint Gaussian conditioning by hand
    ssm = LinearGaussianSSM.random(dim=4, obs_every=2)
    _, ys = ssm.simulate(1, generator=2)
    m, P, ll = ssm.kalman_filter(ys[:, 0])
    A, Q, H = ssm.A, ssm.Q, ssm.observation.H
    Px = A @ A.T + Q
    S = H @ Px @ H.T + 0.25**2 * torch.eye(2, dtype=torch.float64)
    mean = Px @ H.T @ torch.linalg.solve(S, ys[0, 0])
    cov = Px - Px @ H.T @ torch.linalg.solve(S, H @ Px)
    assert torch.allclose(m[0], mean) and torch.allclose(P[0], cov)
    ref = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), S)
    assert torch.allclose(ll, ref.log_prob(ys[0, 0]))


def test_kalman_batched_over_trajectories():
    ssm = LinearGaussianSSM.random(dim=4)
    _, ys = ssm.simulate(4, num_trajectories=3, generator=2)
    m, _, ll = ssm.kalman_filter(ys)
    m1, _, ll1 = ssm.kalman_filter(ys[:, 1])
    assert m.shape == (4, 3, 4) and torch.allclose(m[:, 1], m1) and torch.allclose(ll[1], ll1)


def test_lorenz_models_step_and_observe():
    l63 = Lorenz63()
    xs, ys = l63.simulate(10, num_trajectories=2, generator=0)
    assert xs.shape == (11, 2, 3) and ys.shape == (10, 2, 1)
    assert bool((ys.abs() < 2.6).all())  # atan(x1) + small noise
    l96 = Lorenz96(dim=8)
    xs, ys = l96.simulate(3, num_trajectories=2, generator=0)
    assert xs.shape == (4, 2, 8) and ys.shape == (3, 2, 4)
    # a fixed point of Lorenz-96: x_i = F everywhere
    x = torch.full((8,), 8.0)
    assert torch.allclose(l96.drift(x), x, atol=1e-5)


def test_attractors_have_their_known_statistics():
    # Lorenz-63 (sigma, rho, beta) = (10, 28, 8/3): mean z about 23.55, x and y symmetric
    x = Lorenz63().attractor_states(2000, generator=0)
    assert abs(float(x[:, 2].mean()) - 23.55) < 0.6 and float(x[:, :2].mean(0).abs().max()) < 0.5
    assert bool((x[:, :2].abs() < 30).all()) and bool(((x[:, 2] > 0) & (x[:, 2] < 50)).all())
    # Lorenz-96, F = 8: mean about 2.35 and standard deviation about 3.64 per coordinate
    x = Lorenz96(dim=8).attractor_states(1000, spin_up=500, generator=0)
    assert abs(float(x.mean()) - 2.35) < 0.25 and abs(float(x.std()) - 3.64) < 0.25
    # the cyclic vector field, written out coordinate by coordinate
    l96, z = Lorenz96(dim=6, forcing=3.0), torch.randn(6, dtype=torch.float64)
    loop = [(z[(i + 1) % 6] - z[i - 2]) * z[i - 1] - z[i] + 3.0 for i in range(6)]
    assert torch.allclose(l96.vector_field(z), torch.stack(loop))
    assert Lorenz63(observation="identity").simulate(2, generator=0)[1].shape == (2, 1, 3)


def test_transition_pairs_chain_and_carry_the_process_noise():
    l63 = Lorenz63(process_noise=0.1)
    xp, xn = simulate_transition_pairs(l63, 500, 4, spin_up=500, generator=0)
    assert xp.shape == xn.shape == (2000, 3)
    assert torch.equal(xp[500:], xn[:-500])  # each run continues from its last state
    noise = xn - l63.drift(xp)
    assert float(noise.mean(0).abs().max()) < 0.01
    assert torch.allclose(noise.std(0), torch.full((3,), 0.1), rtol=0.05)
    # a model without attractor_states starts from init_dist, drawn with the generator only
    lg, state = LinearGaussianSSM.random(dim=3), torch.get_rng_state()
    a, b = (
        simulate_transition_pairs(lg, 50, 2, generator=4),
        simulate_transition_pairs(lg, 50, 2, generator=4),
    )
    assert torch.equal(a[0], b[0]) and torch.equal(torch.get_rng_state(), state)
    for kw, msg in (({"num_starts": 0}, "num_starts"), ({"steps_per_start": 0}, "steps_per"),
                    ({"spin_up": -1}, "spin_up"), ({"num_starts": 2.5}, "integer")):  # fmt: skip
        with pytest.raises((ValueError, TypeError), match=msg):
            simulate_transition_pairs(l63, **{"num_starts": 4, **kw})


def test_rk4_step_is_the_fourth_order_taylor_step_on_a_linear_field():
    # for dx/dt = a x, classical RK4 multiplies x by 1 + h + h^2/2 + h^3/6 + h^4/24 (h = a dt)
    x = torch.tensor([1.0, -2.0], dtype=torch.float64)
    a, dt = -1.3, 0.2
    h = a * dt
    expected = x * (1 + h + h**2 / 2 + h**3 / 6 + h**4 / 24)
    assert torch.allclose(rk4_step(lambda v: a * v, x, dt), expected, rtol=0, atol=1e-14)


def test_random_linear_model_and_its_own_kalman_prior():
    ssm = LinearGaussianSSM.random(dim=6, generator=3)
    assert float(torch.linalg.eigvals(ssm.A).abs().max()) == pytest.approx(0.9, abs=1e-12)
    C = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    A = torch.tensor([[0.9, 0.1], [0.0, 0.8]], dtype=torch.float64)
    H = torch.eye(2, dtype=torch.float64)[:1]
    ssm = LinearGaussianSSM(A, 0.1 * torch.eye(2, dtype=torch.float64), H, 0.3, init_cov=C)
    _, ys = ssm.simulate(4, generator=0)
    mine = ssm.kalman_filter(ys[:, 0])  # the model's own prior of x_0: N(0, C)
    ref = kalman_filter(A, ssm.Q, H, 0.09, ys[:, 0], torch.zeros(2, dtype=torch.float64), C)
    for a, b in zip(mine, ref):
        assert torch.allclose(a, b, atol=1e-12)


def test_observation_validation():
    with pytest.raises(ValueError, match="noise_scale"):
        GaussianObservation(torch.eye(2), 0.0)
    with pytest.raises(ValueError, match="obs_dim"):
        GaussianObservation(torch.sin, 0.1)
    obs = GaussianObservation(torch.eye(2), 0.1)
    with pytest.raises(ValueError, match="shape"):
        obs.check_y(torch.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        obs.check_y(torch.tensor([0.0, float("nan")]))


def test_exact_score_and_effective_transition():
    ssm = LinearGaussianSSM.random(dim=5)
    tr = LinearGaussianDiffusion(ssm.A, ssm.Q)
    # the exact noise predictor equals -sigma * grad log N(z; alpha A c, alpha^2 Q + sigma^2 I)
    s = torch.tensor(0.4, dtype=torch.float64)
    al, sg = tr.schedule.alpha(s), tr.schedule.sigma(s)
    c = torch.randn(5, dtype=torch.float64)
    z = torch.randn(5, dtype=torch.float64, requires_grad=True)
    cov = al**2 * ssm.Q + sg**2 * torch.eye(5, dtype=torch.float64)
    lp = torch.distributions.MultivariateNormal(al * ssm.A @ c, cov).log_prob(z)
    (score,) = torch.autograd.grad(lp, z)
    assert torch.allclose(tr.eps(z.detach(), s, c), -sg * score)
    # many levels: the sampler converges to the true transition
    A200, Q200 = tr.effective_transition(200)
    assert torch.allclose(A200, ssm.A, atol=1e-3)
    assert (Q200 - ssm.Q).norm() / ssm.Q.norm() < 0.05
    # the sampler's draws have the effective transition's moments
    A50, Q50 = tr.effective_transition(50)
    cond = c.expand(20000, 5)
    x = tr.sample(cond, 50, generator=1)
    assert torch.allclose(x.mean(0), A50 @ c, atol=0.03)
    assert (torch.cov(x.T) - Q50).norm() / Q50.norm() < 0.05


def test_schedule_levels_and_validation():
    sch = VPSchedule()
    s = sch.levels(10)
    assert s.shape == (11,) and float(s[-1]) == 1.0 and bool((s.diff() > 0).all())
    al, sg = sch.alpha(s), sch.sigma(s)
    assert torch.allclose(al**2 + sg**2, torch.ones_like(s))
    # alpha(s) = exp(-1/2 int_0^s beta), beta linear from 0.1 to 20: exp(-(0.1 + 19.9 / 2) / 2)
    one = torch.ones((), dtype=torch.float64)
    assert float(sch.alpha(one)) == pytest.approx(math.exp(-0.5 * (0.1 + 0.5 * 19.9)))
    # the DDPM posterior q(z_{k-1} | z_k, z_0) carries the forward marginals back exactly:
    # z_k ~ N(alpha_k x0, sigma_k^2) gives c_x0 x0 + c_z z_k + sqrt(var) eps with mean
    # alpha_{k-1} x0 and variance sigma_{k-1}^2
    c_x0, c_z, var, al, sg, _ = sch.reverse_coefficients(10)
    assert torch.allclose(c_x0 + c_z * al[1:], al[:-1], atol=1e-12)
    assert torch.allclose(c_z**2 * sg[1:] ** 2 + var, sg[:-1] ** 2, atol=1e-12)
    with pytest.raises(ValueError, match="num_diffusion_steps"):
        sch.levels(0)


def test_train_transition_model_learns_and_round_trips(tmp_path):
    # tiny: x_t = 0.5 x_{t-1} + N(0, 0.3^2); the learned sampler gets the slope and scale
    g = torch.Generator().manual_seed(0)
    xp = torch.randn(4000, 1, generator=g)
    xn = 0.5 * xp + 0.3 * torch.randn(4000, 1, generator=g)
    model, info = train_transition_model(xp, xn, hidden=32, depth=2, num_iters=600, verbose=False)
    assert info["loss"][-1] < info["loss"][0]
    c = torch.tensor([[1.0]]).expand(4000, 1)
    x = model.sample(c, 30, generator=0)
    assert abs(float(x.mean()) - 0.5) < 0.08 and abs(float(x.std()) - 0.3) < 0.08
    path = tmp_path / "tr.pt"
    model.save(path)
    again = NeuralDiffusionTransition.load(path)
    assert torch.equal(again.sample(c[:5], 10, generator=3), model.sample(c[:5], 10, generator=3))
    with pytest.raises(ValueError, match="x_prev"):
        train_transition_model(xp, xn[:10], verbose=False)


def test_kalman_filter_function_accepts_matrix_noise():
    ssm = LinearGaussianSSM.random(dim=3, obs_every=1)
    _, ys = ssm.simulate(2, generator=0)
    R = 0.25**2 * torch.eye(3, dtype=torch.float64)
    a = kalman_filter(ssm.A, ssm.Q, ssm.observation.H, R, ys[:, 0], ssm.init_loc, torch.eye(3))
    b = ssm.kalman_filter(ys[:, 0])
    assert torch.allclose(a[0], b[0])


class _Decaying(StateSpaceModel):
    """x_t = 0.9 x_{t-1} + noise (d = 1), observed through a user callable h."""

    def __init__(self, h, **shapes):
        eye = torch.eye(1)
        kw = dict(process_scale_tril=0.1 * eye, init_loc=torch.zeros(1), init_scale_tril=eye)
        kw.update(shapes)
        super().__init__(1, GaussianObservation(h, noise_scale=0.2, obs_dim=1), **kw)

    def drift(self, x):
        return 0.9 * x


def test_a_user_system_with_wrong_shapes_is_named():
    # h = x[..., 0] drops the observation dimension. Before, with one trajectory, y - h(x)
    # broadcast p = 1 against the N particles and the sum over p summed over them: every
    # particle got the same weight (ESS = N at every step), and the filter ignored the data
    # without a word
    from probml.inference.smc import BootstrapPF

    good = _Decaying(lambda x: x[..., :1])
    _, ys = good.simulate(5, 1, generator=0)
    ys = ys[:, 0]  # T x p: one trajectory
    init = good.sample_init(64, torch.Generator().manual_seed(1))
    res = BootstrapPF(good, good.observation, 64, verbose=False).filter(ys, particles=init)
    assert float(res.ess.max()) < 63  # the data move the weights
    bad = _Decaying(lambda x: x[..., 0])
    with pytest.raises(ValueError, match=r"h must map \.\.\. x d to \.\.\. x obs_dim"):
        BootstrapPF(bad, bad.observation, 64, verbose=False).filter(ys, particles=init)

    class Flat(_Decaying):
        def drift(self, x):
            return 0.9 * x[..., 0]

    flat = Flat(lambda x: x[..., :1])
    with pytest.raises(ValueError, match=r"drift must map \.\.\. x d to \.\.\. x d"):
        flat.sample(torch.zeros(4, 1))
    with pytest.raises(ValueError, match=r"init_loc must be a tensor of shape \(1,\)"):
        _Decaying(lambda x: x[..., :1], init_loc=torch.zeros(2))
    with pytest.raises(ValueError, match=r"process_scale_tril must be a tensor of shape \(1, 1\)"):
        _Decaying(lambda x: x[..., :1], process_scale_tril=torch.ones(1))


def test_initial_and_transition_draws_have_their_covariances():
    """A correlated prior and process noise (every built-in model has diagonal ones, where
    L and L^T give the same draws): the draws' covariances are L L^T."""
    A = torch.eye(2, dtype=torch.float64)
    Q = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
    P0 = torch.tensor([[4.0, -1.5], [-1.5, 1.0]], dtype=torch.float64)
    ssm = LinearGaussianSSM(A, Q, torch.eye(2, dtype=torch.float64), 0.1, init_cov=P0)
    g = torch.Generator().manual_seed(0)
    x0 = ssm.sample_init(40_000, generator=g)
    assert torch.allclose(torch.cov(x0.T), P0, atol=0.08)
    x1 = ssm.sample_transition(torch.zeros(40_000, 2, dtype=torch.float64), generator=g)
    assert torch.allclose(torch.cov(x1.T), Q, atol=0.03)


def test_sampler_matches_the_effective_transition_on_coarse_schedules():
    """At s_min = 0.3 and K = 6 levels the final Tweedie denoise and the last level's map move
    the answer (at s_min = 1e-3 they barely do), and with beta_max = 1 (alpha(1) = 0.76, not
    0.007) so does the random start at s = 1: the sampler's draws must still have the
    effective transition's moments (200,000 draws; measured gaps below 5e-4 in the mean and
    0.4% in the covariance)."""
    A = torch.tensor([[0.9, 0.2], [-0.1, 0.7]], dtype=torch.float64)
    Q = torch.tensor([[0.5, 0.1], [0.1, 0.2]], dtype=torch.float64)
    c = torch.tensor([1.0, -2.0], dtype=torch.float64)
    for schedule in (VPSchedule(s_min=0.3), VPSchedule(beta_max=1.0, s_min=0.3)):
        tr = LinearGaussianDiffusion(A, Q, schedule)
        AK, QK = tr.effective_transition(6)
        x = tr.sample(c.expand(200_000, 2), num_steps=6, generator=0)
        assert torch.allclose(x.mean(0), AK @ c, atol=0.005)
        assert (torch.cov(x.T) - QK).norm() / QK.norm() < 0.02
    # the first coarse chain is far from the true transition: the check is not vacuous
    QK = LinearGaussianDiffusion(A, Q, VPSchedule(s_min=0.3)).effective_transition(6)[1]
    assert (QK - Q).norm() / Q.norm() > 0.5


def test_a_constant_beta_schedule_and_the_learned_models_coordinates():
    """beta_min = beta_max is allowed (documented <=): alpha(s) = exp(-beta s / 2). The
    learned transition works in z = (x_t - c - m) / v with m, v the increments' mean and
    scale, and the condition standardised by its own mean and scale (as documented)."""
    sch = VPSchedule(beta_min=2.0, beta_max=2.0)
    s = torch.tensor([0.25, 1.0], dtype=torch.float64)
    assert torch.allclose(sch.alpha(s), torch.exp(-s))
    g = torch.Generator().manual_seed(0)
    c = 5.0 + 2.0 * torch.randn(4000, 2, generator=g)
    x = c + torch.tensor([3.0, -1.0]) + torch.tensor([0.5, 2.0]) * torch.randn(4000, 2, generator=g)
    model, _ = train_transition_model(c, x, hidden=8, depth=1, num_iters=1, verbose=False)
    assert torch.allclose(model.inc_mean, torch.tensor([3.0, -1.0]), atol=0.1)
    assert torch.allclose(model.inc_scale, torch.tensor([0.5, 2.0]), rtol=0.05)
    assert torch.allclose(model.cond_mean, torch.tensor([5.0, 5.0]), atol=0.1)
    assert torch.allclose(model.cond_scale, torch.tensor([2.0, 2.0]), rtol=0.05)
    z = model.encode(x, c)
    assert torch.allclose(model.decode(z, c), x, atol=1e-5)
    assert torch.allclose(z.mean(0), torch.zeros(2), atol=1e-4)


def test_pyro_observation_site_and_lorenz_defaults():
    """The Pyro model's observation density is the filters' (noise_scale, not 1); Lorenz-96
    observes every ``obs_every``-th coordinate; Lorenz-63's initial distribution is centred on
    a point of the attractor (0.11 from the nearest of 150,000 attractor states, measured;
    the origin, a saddle off it, is 0.88 away)."""
    obs = GaussianObservation(torch.tensor([[1.0, 0.5]], dtype=torch.float64), 0.3)
    x = torch.tensor([[0.2, -1.0], [1.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([[0.4], [1.5]], dtype=torch.float64)
    assert torch.allclose(obs.pyro_dist(x).log_prob(y), obs.log_prob(y, x))
    l96 = Lorenz96(dim=12, obs_every=3)
    assert l96.observation.obs_dim == 4
    assert torch.equal(l96.observation.H.argmax(1), torch.tensor([0, 3, 6, 9]))
    l63 = Lorenz63(dtype=torch.float64)
    xs = l63.attractor_states(3000, generator=0)
    states = [xs]
    for _ in range(50):
        xs = l63.drift(xs)
        states.append(xs)
    dist_to_attractor = (torch.cat(states) - l63.init_loc).norm(dim=-1).min()
    assert float(dist_to_attractor) < 0.3


def test_simulated_noise_seeds_and_the_pyro_model_by_hand():
    """``simulate`` draws observations with noise ``obs_noise`` (not its square) and follows
    its generator; the Pyro model's ``y_t`` sites hold the rows of ``ys`` and score them with
    N(H x_t, r^2 I); ``simulate_transition_pairs`` starts from ``attractor_states`` with its
    ``spin_up``; Lorenz-96 starts around its fixed point x_i = F."""
    ssm = LinearGaussianSSM.random(dim=4, obs_every=1, obs_noise=0.25)
    xs, ys = ssm.simulate(50, num_trajectories=400, generator=1)
    resid = ys - xs[1:] @ ssm.observation.H.T
    assert abs(float(resid.std()) - 0.25) < 0.01
    assert not torch.equal(ys, ssm.simulate(50, num_trajectories=400, generator=2)[1])
    tr = poutine.trace(ssm.model).get_trace(2, ys[:2, 0])
    tr.compute_log_prob()
    for t in (1, 2):
        node, x = tr.nodes[f"y_{t}"], tr.nodes[f"x_{t}"]["value"]
        assert node["is_observed"] and torch.equal(node["value"], ys[t - 1, 0])
        want = torch.distributions.Normal(x @ ssm.observation.H.T, 0.25).log_prob(ys[t - 1, 0])
        assert torch.allclose(node["log_prob"], want.sum())
    l63 = Lorenz63()
    xp, _ = simulate_transition_pairs(l63, 30, 2, spin_up=7, generator=3)
    torch.testing.assert_close(xp[:30], l63.attractor_states(30, spin_up=7, generator=3))
    l96 = Lorenz96(dim=5, forcing=3.0, init_scale=0.5)
    assert torch.equal(l96.init_loc, torch.full((5,), 3.0))
    assert torch.equal(l96.init_scale_tril, 0.5 * torch.eye(5))


def test_models_name_bad_settings():
    """Shapes, sizes and scales are checked where they are given, naming the argument."""
    H = torch.eye(2)
    cases = [
        (
            lambda: GaussianObservation(torch.ones(3), 0.1),
            r"h \(a tensor H\) must be a p x d matrix",
        ),
        (lambda: GaussianObservation(torch.sin, 0.1, obs_dim=0), "obs_dim"),
        (lambda: LinearGaussianSSM(torch.eye(2), torch.eye(3), H, 0.1), "A and Q must be d x d"),
        (lambda: LinearGaussianSSM.random(dim=2).simulate(0), "num_steps"),
        (lambda: Lorenz96(dim=3), "dim must be >= 4"),
        (lambda: Lorenz63(dt=0.0), "dt"),
        (lambda: Lorenz63(process_noise=-0.1), "process_noise"),
        (lambda: Lorenz63(init_scale=0.0), "init_scale"),
        # NaN failed inside Q's Cholesky factor, naming Q
        (lambda: LinearGaussianSSM.random(dim=2, process_scale=float("nan")), "process_scale"),
        (lambda: LinearGaussianSSM.random(dim=2).model(0), "num_steps must be >= 1"),
    ]
    for make, match in cases:
        with pytest.raises(ValueError, match=match):
            make()
    ssm = LinearGaussianSSM.random(dim=2)
    _, ys = ssm.simulate(3, generator=0)
    with pytest.raises(ValueError, match="ys must have 3 rows"):
        poutine.trace(ssm.model).get_trace(3, ys[:2, 0])
    with pytest.raises(TypeError, match="num_steps must be an integer"):  # ran 2 steps
        poutine.trace(ssm.model).get_trace(2.5)
    bad = ys[:, 0].clone()
    bad[1, 0] = float("inf")
    with pytest.raises(ValueError, match="ys contains inf"):
        ssm.kalman_filter(bad)


def test_diffusion_settings_are_checked_and_training_follows_its_documentation(monkeypatch):
    """Schedules, the exact model's Q and the guidance scale are checked; training draws its
    minibatches from a generator seeded by ``seed``, decays the learning rate to 0 (cosine),
    keeps a constant coordinate finite (its scale floored at 1e-6), returns eval mode; the
    learned noise predictor sees the condition standardised."""
    from probml.guides.diffusion import GuidedReverseProposal
    from probml.models import diffusion

    with pytest.raises(ValueError, match="beta_min <= beta_max"):
        VPSchedule(beta_min=2.0, beta_max=1.0)
    with pytest.raises(ValueError, match="s_min"):
        VPSchedule(s_min=1.0)
    with pytest.raises(ValueError, match="positive definite"):
        LinearGaussianDiffusion(torch.eye(2), -torch.eye(2))
    ssm = LinearGaussianSSM.random(dim=2)
    tr = LinearGaussianDiffusion(ssm.A, ssm.Q)
    with pytest.raises(ValueError, match="guidance_scale"):
        GuidedReverseProposal(tr, ssm.observation, 5, guidance_scale=-1.0)
    g = torch.Generator().manual_seed(0)
    xp = torch.randn(300, 2, generator=g)
    xp[:, 1] = 3.0  # a constant condition coordinate
    xn = xp + torch.stack((0.2 * torch.randn(300, generator=g), torch.zeros(300)), 1)
    with pytest.raises(ValueError, match="x_prev"):
        train_transition_model(xp.index_fill(0, torch.tensor([0]), float("nan")), xn)
    with pytest.raises(ValueError, match="lr"):
        train_transition_model(xp, xn, lr=0.0)
    seeds, opts = [], []
    real_gen, real_adam = diffusion.make_generator, torch.optim.Adam

    def gen(seed, **kw):
        seeds.append(seed)
        return real_gen(seed, **kw)

    class Adam(real_adam):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            opts.append(self)

    monkeypatch.setattr(diffusion, "make_generator", gen)
    monkeypatch.setattr(torch.optim, "Adam", Adam)
    model, _ = train_transition_model(xp, xn, hidden=8, depth=1, num_iters=4, seed=7,
                                      verbose=False)  # fmt: skip
    assert seeds == [7] and opts[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert not model.training
    assert model.inc_scale[1] == 1e-6 and model.cond_scale[1] == 1e-6
    assert bool(torch.isfinite(model.sample(xp[:50], 5, generator=0)).all())
    z, c = torch.randn(4, 2), torch.randn(4, 2)
    s = torch.tensor(0.3)
    torch.testing.assert_close(
        model.eps(z, s, c), model.net(z, s, (c - model.cond_mean) / model.cond_scale)
    )


def test_missing_components_give_finite_gradients_and_the_filter_symmetric_covariances():
    """With a NaN (missing) component of ``y`` the gradient of the log-density in ``x`` (what
    a guided proposal follows) is finite, zero along the missing component; the Kalman
    covariances are symmetric to the last bit (symmetrised after each update); ``H``
    with the wrong number of columns is named."""
    obs = GaussianObservation(torch.eye(2, dtype=torch.float64), 0.5)
    y = torch.tensor([[0.3, float("nan")]], dtype=torch.float64)
    x = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    obs.log_prob(y, x, observed=~torch.isnan(y)).sum().backward()
    assert bool(torch.isfinite(x.grad).all()) and float(x.grad[0, 1]) == 0.0
    assert float(x.grad[0, 0]) == pytest.approx(0.3 / 0.25)
    ssm = LinearGaussianSSM.random(dim=5, obs_every=2, generator=3)
    _, ys = ssm.simulate(20, generator=4)
    for data in (ys[:, 0], torch.where(torch.arange(3) == 1, float("nan"), ys[:, 0])):
        covs = ssm.kalman_filter(data)[1]
        assert torch.equal(covs, covs.mT)
    with pytest.raises(ValueError, match="H p x d"):
        LinearGaussianSSM(ssm.A, ssm.Q, torch.eye(3, dtype=torch.float64), 0.1)
