import math

import pytest
import torch

from probml.guides.amortized import (
    AmortizedPosterior,
    DesignPolicy,
    GaussianPosterior,
    ParticlePosterior,
    PosteriorNet,
    random_walk_designs,
    train_posterior_net,
)
from probml.inference.eig import ace_eig
from probml.inference.planning import train_design_policy
from probml.models.experiments import LinearGaussianExperiment, LocationFinding

SIGMA = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)


def test_gaussian_posterior_is_the_conjugate_update_and_batches():
    ex = LinearGaussianExperiment(SIGMA, noise_scale=0.5)
    X = torch.tensor([[1.0, 0.0], [0.2, 0.9], [-0.5, 0.4]], dtype=torch.float64)
    y = torch.tensor([0.7, -0.2, 1.1], dtype=torch.float64)
    post = GaussianPosterior(ex)
    for x, yy in zip(X, y):
        post = post.condition(x, yy)
    prec = torch.linalg.inv(SIGMA) + X.T @ X / 0.25
    cov = torch.linalg.inv(prec)
    assert torch.allclose(post.cov, cov, atol=1e-10)
    assert torch.allclose(post.loc, cov @ X.T @ y / 0.25, atol=1e-10)
    batch = GaussianPosterior(ex).condition(X[:1].expand(4, 2), torch.randn(4, dtype=torch.float64))
    # a float32 design failed inside matmul (the particle posterior took it)
    single = GaussianPosterior(ex).condition(X[1].float(), y[1])
    assert torch.allclose(single.loc, GaussianPosterior(ex).condition(X[1], y[1]).loc, atol=1e-7)
    assert batch.sample(5, generator=0).shape == (5, 4, 2)
    # the importance-weighted particles agree with it (weights normalised in the mean: the
    # likelihoods of three observations are far from summing to one)
    parts = ParticlePosterior(ex, num_particles=200_000, generator=1)
    for x, yy in zip(X, y):
        parts = parts.condition(x, yy)
    assert torch.allclose(parts.mean(), post.loc, atol=0.01)


def test_ace_is_tight_with_the_exact_posterior_and_a_bound_otherwise():
    ex = LinearGaussianExperiment(SIGMA, noise_scale=0.5)
    d = torch.tensor([[1.0, 0.0], [0.3, 0.8]], dtype=torch.float64)
    exact = torch.stack([ex.eig(x[None]) for x in d])
    ace = ace_eig(GaussianPosterior(ex), d, num_outer=4000, L=4, generator=0)
    assert torch.allclose(ace, exact, atol=0.02)

    class PriorAsProposal(GaussianPosterior):  # never updates: ACE falls to a PCE-type bound
        def condition(self, design, y):
            shape = torch.broadcast_shapes(design.shape[:-1], torch.as_tensor(y).shape)
            return PriorAsProposal(
                self.experiment, self.loc.expand(*shape, 2), self.cov.expand(*shape, 2, 2)
            )

    loose = ace_eig(PriorAsProposal(ex), d, num_outer=4000, L=4, generator=0)
    assert bool((loose < exact - 0.1).all()) and bool((loose <= math.log(5) + 1e-9).all())
    with pytest.raises(ValueError, match="L"):
        ace_eig(GaussianPosterior(ex), d, L=0)


def test_amortized_posterior_learns_saves_and_conditions_in_batches(tmp_path):
    ex = LinearGaussianExperiment(SIGMA, noise_scale=0.5)
    net = train_posterior_net(ex, horizon=6, num_steps=1000, batch_size=128, hidden=32, seed=0)
    g = torch.Generator().manual_seed(5)
    theta = ex.sample_prior(200, generator=g)
    X = 2 * torch.rand(200, 6, 2, dtype=torch.float64, generator=g) - 1
    ys = ex.sample_y(theta.unsqueeze(1), X, generator=g)
    nll = net.prefix_nll(X, ys, theta).detach()  # 200 x 7
    # more data, better posterior: the NLL falls from the prior's to near the exact posterior's
    exact_nll = []
    for i in range(200):
        p = GaussianPosterior(ex)
        for t in range(6):
            p = p.condition(X[i, t], ys[i, t])
        exact_nll.append(-p.log_prob(theta[i]))
    exact_nll = torch.stack(exact_nll)
    assert float(nll[:, 6].mean()) < float(nll[:, 0].mean()) - 1.0
    assert float(nll[:, 6].mean()) < float(exact_nll.mean()) + 0.45
    post = AmortizedPosterior(net, ex)
    for t in range(6):
        post = post.condition(X[0, t], ys[0, t])
    batch = post.condition(X[0, :1].expand(3, 2), torch.zeros(3, dtype=torch.float64))
    assert batch.sample(4, generator=0).shape == (4, 3, 2)
    assert batch.log_prob(theta[:1]).shape == (3,)
    net.save(tmp_path / "q.pt")
    again = PosteriorNet.load(tmp_path / "q.pt")
    post2 = AmortizedPosterior(again, ex, *post.history)
    assert torch.allclose(post2.log_prob(theta[:5]), post.log_prob(theta[:5]))


def test_policy_training_learns_the_informative_designs():
    # absolute candidates: two strong designs and three nearly useless ones; REINFORCE on the
    # self-estimated information gain must move the policy's mass onto the strong ones
    ex = LinearGaussianExperiment(SIGMA, noise_scale=0.5)
    net = train_posterior_net(ex, horizon=3, num_steps=300, hidden=32, seed=0)
    cand = torch.tensor(
        [[1.0, 1.0], [1.0, -1.0], [0.05, 0.0], [0.0, 0.05], [0.02, 0.02]], dtype=torch.float64
    )
    pol = DesignPolicy(cand, relative=False, horizon=3, hidden=32)

    def strong_mass():
        d, y = torch.zeros(0, 2), torch.zeros(0)
        with torch.no_grad():
            logits = pol.logits(pol.summary(d, y), torch.zeros(2), 0)
        return float(torch.softmax(logits, -1)[:2].sum())

    hist = train_design_policy(pol, net, ex, num_iters=1, batch_size=64, lr=3e-3, seed=0)
    before = strong_mass()
    hist = train_design_policy(pol, net, ex, num_iters=250, batch_size=64, lr=3e-3, seed=1)
    after = strong_mass()
    assert before < 0.6 and after > 0.85, (before, after)  # measured: 0.42 -> 0.9+
    assert sum(hist[-10:]) > sum(hist[:10])
    with pytest.raises(ValueError, match="hidden"):
        train_design_policy(DesignPolicy(cand, hidden=8), net, ex, num_iters=1)
    # its settings, by name (before: a fractional horizon was truncated, and a NaN or
    # negative lr, gamma or entropy weight trained without a word)
    for kw, err, name in (
        (dict(horizon=2.5), TypeError, "horizon"),
        (dict(num_iters=1.5), TypeError, "num_iters"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(lr=float("nan")), ValueError, "lr"),
        (dict(gamma=0.0), ValueError, "gamma"),
        (dict(gamma=1.5), ValueError, "gamma"),
        (dict(entropy_weight=-0.1), ValueError, "entropy_weight"),
    ):
        with pytest.raises(err, match=name):
            train_design_policy(pol, net, ex, **{"num_iters": 1, **kw})


def test_amortized_sampling_uses_only_its_generator_and_the_mean_is_exact():
    ex = LinearGaussianExperiment(SIGMA, noise_scale=0.5)
    net = train_posterior_net(ex, horizon=3, num_steps=20, hidden=16, seed=0)
    # standardisation buffers away from (0, 1), where a missing shift or scale is invisible
    net.theta_mean.copy_(torch.tensor([1.0, -2.0]))
    net.theta_scale.copy_(torch.tensor([3.0, 0.5]))
    post = AmortizedPosterior(net, ex).condition(torch.tensor([1.0, 0.5]), torch.tensor(0.7))
    state = torch.get_rng_state()
    a = post.sample(20_000, generator=3)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    assert torch.equal(a, post.sample(20_000, generator=3))  # reproducible
    assert torch.allclose(a.mean(0), post.mean(), atol=0.03)
    # the draws have the mixture's total variance (in the original coordinates)
    var = float((net.theta_scale**2 * post._q().variance).sum())
    assert float(a.var(0).sum()) == pytest.approx(var, rel=0.05)
    # the density of the draws: E log q(theta) = E_z log q_std(z) - sum log scale, with z
    # drawn by the mixture itself in standardised coordinates
    with torch.random.fork_rng():
        torch.manual_seed(0)
        z = post._q().sample((20_000,))
    neg_entropy = float(post._q().log_prob(z).mean()) - float(net.theta_scale.log().sum())
    assert float(post.log_prob(a).mean()) == pytest.approx(neg_entropy, abs=0.05)
    # training and inference summarise a history alike: the NLL after every prefix equals
    # the amortised posterior's log density after that prefix
    X = torch.rand(4, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    theta = ex.sample_prior(4, generator=torch.Generator().manual_seed(2))
    ys = ex.sample_y(theta.unsqueeze(1), X, generator=torch.Generator().manual_seed(3))
    nll = net.prefix_nll(X, ys, theta).detach()
    for t in range(4):
        q_t = AmortizedPosterior(net, ex, X[:, :t], ys[:, :t])
        assert torch.allclose(-q_t.log_prob(theta), nll[:, t].double(), atol=1e-5), t


def test_mixture_mean_weighs_the_components_and_scaling_is_fitted_from_the_data():
    ex = LinearGaussianExperiment(SIGMA, noise_scale=0.5)
    torch.manual_seed(0)
    net = PosteriorNet(design_dim=2, theta_dim=2, hidden=8, components=3).double()
    with torch.no_grad():  # far from equal mixture weights, so weighing them matters
        net.rho[-1].bias[:3] += torch.tensor([3.0, 0.0, -3.0], dtype=torch.float64)
    net.theta_mean.copy_(torch.tensor([1.0, -2.0]))
    net.theta_scale.copy_(torch.tensor([3.0, 0.5]))
    post = AmortizedPosterior(net, ex).condition(torch.tensor([1.0, 0.5]), torch.tensor(0.7))
    q = post._q()
    assert float(q.mixture_distribution.probs.max()) > 0.8
    expected = net.theta_mean + net.theta_scale * q.mean  # torch's own mixture mean
    assert torch.allclose(post.mean(), expected.double(), atol=1e-10)
    ys = torch.tensor([1.0, 2.0, 6.0], dtype=torch.float64)
    net.fit_scaling((-2.0, 3.0), ys)
    assert (float(net.design_low), float(net.design_high)) == (-2.0, 3.0)
    assert float(net.y_mean) == pytest.approx(3.0) and float(net.y_scale) == pytest.approx(
        float(ys.std())
    )


def test_fit_amortized_is_reproducible_from_its_seed_alone():
    from probml.inference.planning import StepBound, fit_amortized
    from probml.models.experiments import LocationFinding

    lf = LocationFinding()
    kw = dict(horizon=4, net_steps=5, policy_iters=2, hidden=16, seed=3)
    torch.manual_seed(0)
    net1, pol1 = fit_amortized(lf, [StepBound(0.1)], **kw)
    state = torch.get_rng_state()
    torch.manual_seed(123)  # a different global state must not matter
    net2, pol2 = fit_amortized(lf, [StepBound(0.1)], **kw)
    for a, b in zip(list(net1.parameters()) + list(pol1.parameters()),
                    list(net2.parameters()) + list(pol2.parameters())):  # fmt: skip
        assert torch.equal(a, b)
    torch.manual_seed(0)
    fit_amortized(lf, [StepBound(0.1)], **kw)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone


def test_bad_arguments_are_named():
    from probml.guides.amortized import ParticlePosterior, random_walk_designs

    ex = LinearGaussianExperiment(SIGMA, noise_scale=0.5)
    offsets = DesignPolicy.grid_offsets(0.1, 2, 3)
    cases = [
        (lambda: ParticlePosterior(ex, 2.5), TypeError, "num_particles must be an integer"),
        (lambda: ParticlePosterior(ex, 8, generator=0).sample(0), ValueError, "n must be"),
        (lambda: ParticlePosterior(ex, 8).condition(torch.zeros(3), 1.0), ValueError, "D = 2"),
        (lambda: GaussianPosterior(ex).condition(torch.zeros(3), 1.0), ValueError, "D = 2"),
        # a NaN outcome gave a NaN Gaussian posterior without a word, and blanked every
        # particle weight (the error then named the log-weights)
        (
            lambda: GaussianPosterior(ex).condition(torch.ones(2).double(), math.nan),
            ValueError,
            "y must",
        ),
        (
            lambda: ParticlePosterior(ex, 8).condition(torch.ones(2).double(), math.nan),
            ValueError,
            "y must",
        ),
        (lambda: PosteriorNet(2, 2, hidden=0), ValueError, "hidden must be >= 1"),
        (lambda: PosteriorNet(2, 2, components=0), ValueError, "components must be >= 1"),
        (lambda: train_posterior_net(ex, horizon=2, num_steps=1, lr=0.0), ValueError, "lr"),
        (lambda: train_posterior_net(ex, horizon=0), ValueError, "horizon must be >= 1"),
        (lambda: train_posterior_net(ex, batch_size=1), ValueError, "batch_size must be >= 2"),
        (lambda: DesignPolicy(offsets, horizon=0), ValueError, "horizon must be >= 1"),
        (lambda: DesignPolicy(offsets * math.nan), ValueError, "candidates must be finite"),
        (lambda: DesignPolicy(offsets[:1]), ValueError, "A >= 2"),  # one move: no choice
        (lambda: DesignPolicy.grid_offsets(math.nan, 2), ValueError, "delta"),
        (lambda: DesignPolicy.grid_offsets(0.1, 2, 0), ValueError, "points must be >= 1"),
        (lambda: random_walk_designs(torch.zeros(2), 0.1, 1.0, -1.0), ValueError, "low < high"),
        (lambda: random_walk_designs(torch.zeros(2), -0.1, -1.0, 1.0), ValueError, "delta"),
    ]
    for call, err, msg in cases:
        with pytest.raises(err, match=msg):
            call()
    net = PosteriorNet(2, 2, hidden=8)
    with pytest.raises(ValueError, match="designs and ys must be given together"):
        AmortizedPosterior(net, ex, designs=torch.zeros(1, 2))
    with pytest.raises(ValueError, match="same leading shape"):
        AmortizedPosterior(net, ex, torch.zeros(3, 2), torch.zeros(2))
    post = AmortizedPosterior(net, ex)
    with pytest.raises(ValueError, match="D = 2"):
        post.condition(torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match="n must be >= 1"):
        post.sample(0)


def test_information_rewards_and_the_reinforce_loss_by_hand():
    """r_t = gamma^t max(0, NLL_{t-1} - NLL_t): a step that loses information earns 0, not a
    penalty. The loss uses rewards-to-go with a per-step batch-mean baseline: for rewards
    (1, 2) and (3, 0) the returns-to-go are (3, 2) and (3, 0), the baselines 3 and 1, so only
    the second actions carry weight (+1 and -1); the entropy bonus is subtracted."""
    from probml.inference.planning import information_rewards, reinforce_loss

    nll = torch.tensor([[3.0, 2.0, 2.5, 1.0], [1.0, 1.0, 0.0, 0.0]])
    r = information_rewards(nll, gamma=0.5)
    assert torch.allclose(r, torch.tensor([[1.0, 0.0, 0.375], [0.0, 0.5, 0.0]]))
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], requires_grad=True)
    rewards = torch.tensor([[1.0, 2.0], [3.0, 0.0]], dtype=torch.float64)
    entropy = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    loss = reinforce_loss(logp, rewards, entropy, entropy_weight=0.1)
    assert float(loss.detach()) == pytest.approx(-(-2.0 - -3.0) / 2 - 0.1 * 2.0)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[0.0, -0.5], [0.0, 0.5]]))


def test_policy_training_spends_each_episodes_budget_once_and_keeps_the_encoders():
    """Episodes are run under the constraints: every episode's path cost stays within the
    travel budget (moves of length 1 between candidates sqrt(2) apart, budget 1.5: one move,
    then only staying put is affordable). When nothing is affordable the episode stays put,
    and such steps carry no gradient. The policy's encoder is the posterior net's, frozen
    unless ``train_encoder``; the net is handed back trainable."""
    from probml.inference.planning import TravelBudget

    ex = LinearGaussianExperiment(SIGMA, noise_scale=0.5)
    net = train_posterior_net(ex, horizon=3, num_steps=20, hidden=16, seed=0)
    cand = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    designs = []
    sample_y = ex.sample_y

    def recording_sample_y(theta, xi, generator=None):
        designs.append(xi.detach().clone())
        return sample_y(theta, xi, generator=generator)

    ex.sample_y = recording_sample_y
    net_phi = {k: v.clone() for k, v in net.phi.state_dict().items()}

    def run(budget, **kw):
        designs.clear()
        pol = DesignPolicy(cand, relative=False, horizon=3, hidden=16)
        head = [p.detach().clone() for p in pol.head.parameters()]
        hist = train_design_policy(
            pol, net, ex, [TravelBudget(budget)], start=torch.zeros(2), num_iters=4,
            batch_size=64, lr=1e-2, seed=0, **kw,
        )  # fmt: skip
        path = torch.stack(designs).reshape(4, 3, 64, 2)  # iteration x step x episode x D
        full = torch.cat([torch.zeros(4, 1, 64, 2, dtype=path.dtype), path], 1)
        cost = (full[:, 1:] - full[:, :-1]).norm(dim=-1).sum(1)  # 4 x 64
        moved = [not torch.equal(p.detach(), h) for p, h in zip(pol.head.parameters(), head)]
        return pol, hist, cost, any(moved)

    pol, hist, cost, moved = run(1.5)
    assert float(cost.max()) <= 1.5 + 1e-9 and float(cost.min()) == pytest.approx(1.0)
    assert moved
    pol, hist, cost, moved = run(0.5)  # every candidate out of reach from the start
    assert float(cost.max()) == 0.0 and all(math.isfinite(h) for h in hist)
    assert not moved  # stuck steps: log-probability 0, entropy 0, no gradient
    # free moves, so later steps' choices depend on the encoder's summary of the history
    pol, *_ = run(10.0)
    assert all(torch.equal(v, pol.phi.state_dict()[k]) for k, v in net_phi.items())
    assert all(p.requires_grad for p in net.parameters())
    pol, *_ = run(10.0, train_encoder=True)
    assert not all(torch.equal(v, pol.phi.state_dict()[k]) for k, v in net_phi.items())


def test_policy_training_sees_the_history_as_deployment_does(monkeypatch):
    """Inside an episode the rewards' NLLs are -log q(theta | h_{1:t}) of the posterior net
    (its one-pass ``prefix_nll`` on the episode's own designs and outcomes), and the policy's
    summary at step t is the one it computes from the first t steps at deployment
    (``policy.summary``): the running sums of features are those of the whole history."""
    import probml.inference.planning as planning

    ex = LinearGaussianExperiment(SIGMA, noise_scale=0.5)
    net = train_posterior_net(ex, horizon=3, num_steps=20, hidden=16, seed=0)
    cand = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], dtype=torch.float64)
    pol = DesignPolicy(cand, relative=False, horizon=3, hidden=16)
    seen = {"theta": [], "xi": [], "y": [], "summ": [], "nll": []}
    sample_prior, sample_y, logits = ex.sample_prior, ex.sample_y, pol.logits
    rewards = planning.information_rewards

    def record(key, value):
        seen[key].append(value.detach().clone())
        return value

    ex.sample_prior = lambda n, generator=None: record("theta", sample_prior(n, generator))
    ex.sample_y = lambda th, xi, generator=None: record(
        "y", sample_y(th, record("xi", xi), generator)
    )
    pol.logits = lambda summ, prev, t, mask=None: logits(record("summ", summ), prev, t, mask)
    monkeypatch.setattr(
        planning, "information_rewards", lambda nll, gamma: rewards(record("nll", nll), gamma)
    )
    train_design_policy(pol, net, ex, num_iters=1, batch_size=8, seed=0)
    designs, ys = torch.stack(seen["xi"], 1), torch.stack(seen["y"], 1)  # 8 x 3 x 2, 8 x 3
    theta = seen["theta"][0].reshape(8, -1)
    with torch.no_grad():
        want = net.prefix_nll(designs, ys, theta)
        assert torch.allclose(seen["nll"][0], want.to(seen["nll"][0]), atol=1e-5)
        for t in range(3):
            deploy = pol.summary(designs[:, :t], ys[:, :t])
            assert torch.allclose(seen["summ"][t], deploy.to(seen["summ"][t]), atol=1e-5)


def test_random_walk_designs_are_a_symmetric_walk_in_the_box():
    """Uniform L_inf steps of at most delta, accumulated: consecutive designs (and the first
    from ``start``) differ by at most delta, the walk wanders beyond delta from the start, its
    displacement has mean 0 (steps on [-delta, delta]) and it stays in the box."""
    start = torch.tensor([0.5, 0.5], dtype=torch.float64)
    walk = random_walk_designs(start, 0.05, 0.0, 1.0)(4000, 30, torch.Generator().manual_seed(0))
    path = torch.cat([start.expand(4000, 1, 2), walk], 1)
    assert float((path[:, 1:] - path[:, :-1]).abs().max()) <= 0.05 + 1e-12
    moved = walk[:, -1] - start
    assert float(moved.abs().max()) > 0.3  # sd of 30 steps: 0.05 sqrt(30 / 3) = 0.16
    assert float(moved.mean(0).abs().max()) < 0.01
    assert float(walk.min()) >= 0.0 and float(walk.max()) <= 1.0


def test_the_posterior_net_standardises_theta_by_prior_draws():
    """Documented: theta is standardised by the mean and standard deviation of prior draws
    (location finding: U[0, 1] coordinates, mean 0.5 and sd 0.289)."""
    lf = LocationFinding()
    net = train_posterior_net(lf, horizon=2, num_steps=1, hidden=8, seed=0)
    assert torch.allclose(net.theta_mean, torch.full((2,), 0.5), atol=0.02)
    assert torch.allclose(net.theta_scale, torch.full((2,), 12**-0.5), atol=0.01)


def test_policy_grid_and_time_input():
    """``grid_offsets`` holds all ``points^dim`` moves, the zero move and the corners included;
    the policy reads the step as ``t / horizon``: the same weights with twice the horizon give
    at step 2t the logits of step t."""
    grid = DesignPolicy.grid_offsets(0.1, 2, 5)
    assert grid.shape == (25, 2) and bool((grid == 0).all(-1).any())
    assert {tuple(c) for c in grid[(grid.abs() == 0.1).all(-1)].tolist()} == {
        (-0.1, -0.1), (-0.1, 0.1), (0.1, -0.1), (0.1, 0.1),
    }  # fmt: skip
    torch.manual_seed(0)
    pol = DesignPolicy(grid, horizon=8, hidden=16)
    twice = DesignPolicy(grid, horizon=16, hidden=16)
    twice.load_state_dict(pol.state_dict())
    summary, prev = torch.randn(17), torch.tensor([0.3, 0.6], dtype=torch.float64)
    with torch.no_grad():
        a, b = pol.logits(summary, prev, 3), twice.logits(summary, prev, 6)
        assert torch.allclose(a, b) and not torch.allclose(a, pol.logits(summary, prev, 0))


def test_prefix_summaries_carry_the_same_step_feature_as_deployment():
    """``prefix_nll`` builds its per-prefix summaries with ``summary_from_pooled``, as the
    deployed loops do: the last coordinate is ``log1p(t)`` exactly (taken in float64, then
    cast), and after the prefix of ``t`` steps the NLL is that of ``distribution`` on the
    first ``t`` steps."""
    pooled = torch.randn(3, 5, 4)
    summ = PosteriorNet.summary_from_pooled(pooled, torch.arange(5))
    assert summ.shape == (3, 5, 5) and torch.equal(summ[..., :4], pooled)
    for t in range(5):
        one = PosteriorNet.summary_from_pooled(pooled[:, t], t)
        assert torch.equal(summ[:, t], one)
        assert float(one[0, -1]) == pytest.approx(math.log1p(t), rel=1e-7)
    torch.manual_seed(0)
    net = PosteriorNet(design_dim=2, theta_dim=2, hidden=8)
    g = torch.Generator().manual_seed(4)
    X, ys = torch.rand(6, 3, 2, generator=g), torch.randn(6, 3, generator=g)
    theta = torch.randn(6, 2, generator=g)
    with torch.no_grad():
        nll = net.prefix_nll(X, ys, theta)
        for t in range(4):
            q = net.distribution(X[:, :t], ys[:, :t])
            assert torch.allclose(nll[:, t], -net.log_prob_flat(q, theta), atol=1e-5), t


def test_posterior_net_floors_its_scales_and_outcome_scaling():
    """Two safeguards of the network: a component scale never falls below 1e-3 (a head that
    drives its softplus to 0 would give an infinite density), and constant simulated outcomes
    get an outcome scale of 1e-6, not 0 (whose features would be NaN). A design box with an
    infinite end is refused by name."""

    net = PosteriorNet(design_dim=2, theta_dim=2, hidden=8, components=3)
    with torch.no_grad():
        net.rho[-1].weight.zero_()
        net.rho[-1].bias.fill_(-1000.0)  # every logit, location and pre-softplus scale
    q = net.distribution(torch.zeros(1, 2), torch.zeros(1))
    scale = q.component_distribution.base_dist.scale
    assert torch.allclose(scale, torch.full_like(scale, 1e-3))
    assert bool(torch.isfinite(q.log_prob(torch.zeros(2))).all())
    net.fit_scaling((0.0, 1.0), torch.full((50,), 3.0))
    assert float(net.y_scale) == pytest.approx(1e-6)
    assert bool(torch.isfinite(net.features(torch.rand(4, 2), torch.full((4,), 3.0))).all())
    for low, high in ((0.0, math.inf), (-math.inf, 1.0)):
        with pytest.raises(ValueError, match="finite"):
            random_walk_designs(torch.zeros(2), 0.1, low, high)


def test_absolute_candidates_ignore_the_previous_design_and_a_walk_needs_a_box():
    """``relative=False``: the candidates are the fixed designs wherever the previous design
    is; ``random_walk_designs`` refuses an empty box (``low == high``)."""
    fixed = torch.tensor([[0.1, 0.2], [0.7, 0.4], [0.5, 0.9]], dtype=torch.float64)
    pol = DesignPolicy(fixed, relative=False, horizon=4, hidden=8)
    prev = torch.tensor([[0.3, 0.3], [0.8, 0.1]], dtype=torch.float64)
    assert torch.equal(pol.designs_at(prev), fixed.expand(2, 3, 2))
    rel = DesignPolicy(fixed, relative=True, horizon=4, hidden=8)
    assert torch.equal(rel.designs_at(prev), prev[:, None] + fixed)
    with pytest.raises(ValueError, match="low < high"):
        random_walk_designs(torch.zeros(2), 0.1, 1.0, 1.0)


def test_the_step_feature_of_a_tensor_of_counts_is_the_float64_value_cast():
    """float32's own log1p differs from the float64 value cast to float32 at some counts
    (428, 1217, 1578): the summary of a tensor of counts must match the int path there too."""
    pooled = torch.zeros(3, 4)
    counts = [428, 1217, 1578]
    summ = PosteriorNet.summary_from_pooled(pooled, torch.tensor(counts))
    for i, t in enumerate(counts):
        assert torch.equal(summ[i], PosteriorNet.summary_from_pooled(pooled[i], t))


def test_posterior_net_training_anneals_its_rate_by_a_cosine(monkeypatch):
    """Documented: Adam at ``lr``, annealed by a cosine to 0 over ``num_steps``: at step t the
    rate is ``lr (1 + cos(pi t / T)) / 2``."""
    rates, real_step = [], torch.optim.Adam.step

    def step(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    train_posterior_net(LocationFinding(), horizon=2, num_steps=4, batch_size=4, hidden=8, lr=2e-3)
    want = [1e-3 * (1 + math.cos(math.pi * t / 4)) for t in range(4)]
    assert rates == pytest.approx(want)
