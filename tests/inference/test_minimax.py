import math

import numpy as np
import pyro.distributions as pyro_dist
import pyro.poutine as poutine
import pytest
import torch

from probml.guides.generators import (
    ConditionalBernoulli,
    ConditionalFlow,
    TransportPerturbation,
    fit_source_conditional,
)
from probml.inference.minimax import (
    DRUM,
    ERMOnX,
    ImputationBaseline,
    bernoulli_kl_interval,
    binary_brier_minimax,
)
from probml.models.transfer import (
    BinaryShiftProblem,
    ContinuousShiftSimulation,
    brier_risk,
    log_risk,
    tilted_model,
    transfer_model,
)


def _known_g0(p: float) -> ConditionalBernoulli:
    return ConditionalBernoulli.constant(p)


def test_closed_forms_of_the_spec():
    lo, hi = bernoulli_kl_interval(0.15, 0.1)
    assert abs(lo - 0.0196) < 1e-4 and abs(hi - 0.3293) < 1e-4
    f, _, wc = binary_brier_minimax(0.15, 0.1, (0.2, 0.7))
    assert abs(f - 0.3646) < 1e-4
    # brute force: minimax over a grid of f and the two endpoints of the interval
    fs = np.linspace(0, 1, 100001)
    risk = np.maximum(
        *(q * ((fs - 0.7) ** 2 + 0.21) + (1 - q) * ((fs - 0.2) ** 2 + 0.16) for q in (lo, hi))
    )
    assert abs(fs[risk.argmin()] - f) < 1e-4 and abs(risk.min() - wc) < 1e-8
    # the same brute force where the worst case is the interval's lower end (the risk falls
    # with q here): the worst case is the larger of the two ends, not the upper one
    f, (lo, hi), wc = binary_brier_minimax(0.3, 0.05, (0.45, 0.9))
    ends = [q * ((fs - 0.9) ** 2 + 0.09) + (1 - q) * ((fs - 0.45) ** 2 + 0.2475) for q in (lo, hi)]
    risk = np.maximum(*ends)
    assert abs(fs[risk.argmin()] - f) < 1e-4 and abs(risk.min() - wc) < 1e-8
    assert ends[0][risk.argmin()] > ends[1][risk.argmin()] + 1e-3
    # mu_1 < mu_0: f(q) falls with q, so the clip's interval is [f(q_hi), f(q_lo)]; here it
    # holds 1/2, the minimax prediction (an interval read the other way round gave f(q_hi))
    f, (lo, hi), wc = binary_brier_minimax(0.5, 0.1, (0.8, 0.1))
    ends = [q * ((fs - 0.1) ** 2 + 0.09) + (1 - q) * ((fs - 0.8) ** 2 + 0.16) for q in (lo, hi)]
    risk = np.maximum(*ends)
    assert hi * 0.1 + (1 - hi) * 0.8 < 0.5 < lo * 0.1 + (1 - lo) * 0.8
    assert f == 0.5 and abs(fs[risk.argmin()] - f) < 1e-4 and abs(risk.min() - wc) < 1e-8
    assert bernoulli_kl_interval(0.3, 0.0) == pytest.approx((0.3, 0.3), abs=1e-9)
    # an end point within 1e-3 of 1 (KL(1 || 1/2) = log 2 = 0.693 just above rho = 0.69)
    lo, hi = bernoulli_kl_interval(0.5, 0.69)
    kl = hi * math.log(hi / 0.5) + (1 - hi) * math.log((1 - hi) / 0.5)
    assert hi > 0.999 and kl == pytest.approx(0.69, abs=1e-9) and lo == pytest.approx(1 - hi)
    assert bernoulli_kl_interval(0.3, math.inf) == (0.0, 1.0)
    for rho in (-0.1, math.nan):
        with pytest.raises(ValueError, match="rho"):
            bernoulli_kl_interval(0.3, rho)


def test_the_predictor_starts_at_the_source_mean_outcome():
    """The predictor's output bias starts at logit(mean y): with a learning rate of 1e-12
    and no adversary, a constant predictor still predicts the source's mean outcome."""
    Xs, As, ys, Xt = BinaryShiftProblem().sample(2000, 0)
    est = DRUM(rho=0.0, predictor="constant", num_iters=1, lr=1e-12, verbose=False)
    est.fit(Xs, As, ys, Xt)
    assert float(est.predict_proba(Xt[:3])[:, 1].mean()) == pytest.approx(
        float(ys.mean()), abs=1e-6
    )


def test_drum_matches_the_binary_minimax_with_known_nuisances():
    prob = BinaryShiftProblem()
    Xs, As, ys, Xt = prob.sample(2000, 0)
    g0 = _known_g0(0.15)
    kw = dict(outcome_model=prob.outcome, source_conditional=g0, predictor="constant")
    est = DRUM(rho=0.1, verbose=False, **kw).fit(Xs, As, ys, Xt)
    f_star, (_, q_hi), wc = binary_brier_minimax(0.15, 0.1, (0.2, 0.7))
    p = est.predict_proba(Xt[:5])[:, 1]
    assert np.abs(p - f_star).max() < 0.01, p
    assert abs(est.worst_case_risk(Xt) - wc) < 2e-3
    assert abs(float(est.adversary_.prob(Xt[:1]).detach()) - q_hi) < 0.01
    assert abs(est.divergence_ - 0.1) < 0.01  # the constraint binds
    plug = DRUM(rho=0.0, verbose=False, **kw).fit(Xs, As, ys, Xt)
    assert np.abs(plug.predict_proba(Xt[:5])[:, 1] - 0.275).max() < 0.005


def test_drum_log_loss_matches_its_binary_minimax():
    """``loss="log"`` was never run by a test. Known answer: the risk is the cross-entropy
    CE(m(q), f) with m(q) = q mu_1 + (1 - q) mu_0, linear in q, so by the minimax theorem
    min_f max_q CE = max over m in [m(q_lo), m(q_hi)] of the binary entropy H(m): f* is the
    entropy maximiser clipped to that interval (here m(q_hi) = 0.3646, as for Brier) and the
    worst-case risk is H(f*)."""
    prob = BinaryShiftProblem()
    Xs, As, ys, Xt = prob.sample(2000, 0)
    kw = dict(outcome_model=prob.outcome, source_conditional=_known_g0(0.15), predictor="constant")
    est = DRUM(rho=0.1, loss="log", verbose=False, **kw).fit(Xs, As, ys, Xt)
    f_star, (_, q_hi), _ = binary_brier_minimax(0.15, 0.1, (0.2, 0.7))
    entropy = -(f_star * math.log(f_star) + (1 - f_star) * math.log(1 - f_star))
    assert np.abs(est.predict_proba(Xt[:5])[:, 1] - f_star).max() < 0.01
    assert abs(est.worst_case_risk(Xt) - entropy) < 2e-3
    assert abs(float(est.adversary_.prob(Xt[:1]).detach()) - q_hi) < 0.01
    # the conditional risk itself: the expected cross-entropy of a Bernoulli(mu) label
    mu, f = torch.tensor([0.2, 0.7]), torch.tensor([0.4, 0.9])
    direct = -(mu * f.log() + (1 - mu) * (1 - f).log())
    assert torch.allclose(log_risk(f, mu), direct)


def test_penalised_form_reaches_the_tilted_fixed_point():
    # with penalty lambda: q = p e^{r1/lam} / Z, f = q mu1 + (1 - q) mu0 (fixed point)
    prob, lam, p = BinaryShiftProblem(), 0.05, 0.15
    Xs, As, ys, Xt = prob.sample(1000, 1)
    est = DRUM(  # rho = 0: the penalty replaces the radius (not the plug-in)
        rho=0.0, penalty=lam, outcome_model=prob.outcome, source_conditional=_known_g0(p),
        predictor="constant", verbose=False, num_iters=600,
    ).fit(Xs, As, ys, Xt)  # fmt: skip
    from scipy.optimize import brentq

    def gap(f):  # E_q(f)[mu] - f is decreasing in f; its root is the saddle point
        r1, r0 = (f - 0.7) ** 2 + 0.21, (f - 0.2) ** 2 + 0.16
        q = 1 / (1 + (1 - p) / p * math.exp((r0 - r1) / lam))
        return q * 0.7 + (1 - q) * 0.2 - f

    f = brentq(gap, 0.2, 0.7)
    assert abs(float(est.predict_proba(Xt[:1])[0, 1]) - f) < 0.01


def test_drum_with_fitted_nuisances_is_close_to_the_closed_form():
    prob = BinaryShiftProblem()
    Xs, As, ys, Xt = prob.sample(20000, 3)
    est = DRUM(rho=0.1, predictor="constant", verbose=False, num_iters=300).fit(Xs, As, ys, Xt)
    assert abs(float(est.predict_proba(Xt[:1])[0, 1]) - 0.3646) < 0.03


def test_tilted_and_transfer_models_are_pyro_models():
    x = torch.randn(5, 1)
    g0 = _known_g0(0.3)
    # a fixed a with ones in it (a draw of five zeros, p = 0.17, made the factor's check vacuous)
    fixed = {"a": torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])}
    tr = poutine.trace(poutine.condition(tilted_model, data=fixed)).get_trace(
        x, lambda z: pyro_dist.Bernoulli(logits=g0.logits(z)),
        lambda z, a: a * 2.0, 0.5,
    )  # fmt: skip
    a = tr.nodes["a"]["value"]
    lp = tr.log_prob_sum()
    ref = torch.distributions.Bernoulli(0.3).log_prob(a).sum() + (a * 2.0 / 0.5).sum()
    assert torch.allclose(lp, ref, atol=1e-5)
    tr2 = poutine.trace(transfer_model).get_trace(
        x, x, lambda z: pyro_dist.Bernoulli(probs=torch.full(z.shape[:1], 0.3)),
        lambda z: pyro_dist.Bernoulli(probs=torch.full(z.shape[:1], 0.6)),
        lambda z, a: 0.2 + 0.5 * a,
    )  # fmt: skip
    assert {"a_source", "y_source", "a_target"} <= set(tr2.nodes)


def test_generators_density_and_transport():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(3000, 2, generator=g)
    A = X @ torch.tensor([[0.8, 0.3], [0.0, 0.6]]) + torch.randn(3000, 2, generator=g)
    flow = fit_source_conditional(A, X, num_iters=400, verbose=False)
    assert isinstance(flow, ConditionalFlow)
    # the fitted flow's density is close to the true Gaussian conditional on average
    true = torch.distributions.MultivariateNormal(
        X @ torch.tensor([[0.8, 0.3], [0.0, 0.6]]), torch.eye(2)
    )
    with torch.no_grad():
        gap = float((flow.log_prob(A, X) - true.log_prob(A)).mean())
    assert abs(gap) < 0.1
    # one-pass draw + density (cached inverse) equals the density computed afresh, and its
    # gradient reaches the flow's parameters
    adv = flow.copy()
    a, lp = adv.rsample_and_log_prob(X[:50])
    assert torch.allclose(lp, adv.log_prob(a.detach().clone(), X[:50]), atol=1e-4)
    lp.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in adv.parameters())
    tp = TransportPerturbation(flow)
    z = torch.randn(10, 2)
    a, cost = tp(X[:10], z)
    assert torch.allclose(a, flow.sample_with_noise(X[:10], z), atol=1e-5)  # starts at G0
    assert float(cost.detach().abs().max()) == 0.0
    # the noise-outsourced draw is a draw of the flow itself, its output scale included:
    # for A far from 0 and 1 in location and scale, its moments are those of the flow's own
    # sampler at one context
    far = fit_source_conditional(5.0 + 3.0 * A, X, num_iters=50, verbose=False)
    x = X[:1].expand(4000, 2)
    with torch.no_grad():
        own = far.dist(x).sample(x.shape[:-1])
        outsourced = far.sample_with_noise(x, torch.randn(4000, 2, generator=g))
    assert torch.allclose(outsourced.mean(0), own.mean(0), atol=0.3)
    assert torch.allclose(outsourced.std(0), own.std(0), rtol=0.1)
    for kw, match in (({"batch_size": 0}, "batch_size"), ({"lr": float("nan")}, "lr"),
                      ({"binary": True}, "binary")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            fit_source_conditional(A, X, num_iters=1, verbose=False, **kw)


def test_continuous_claim_small_scale():
    """DRUM's worst-case target Brier over the shift grid beats ERM, imputation and plug-in."""
    sim = ContinuousShiftSimulation()
    Xs, As, ys = sim.sample_source(3000, 0)
    Xt = sim.sample_target_x(3000, 100)
    wc = {}
    for name, est in {
        "erm": ERMOnX(),
        "impute": ImputationBaseline(),
        "plugin": DRUM(rho=0.0, verbose=False),
        "drum": DRUM(rho=0.3, verbose=False, num_iters=200, inner_steps=2),
    }.items():
        est.fit(Xs, As, ys, Xt)
        wc[name] = sim.worst_case_risk(
            lambda x, e=est: torch.as_tensor(e.predict_proba(x)[:, 1]), n=5000
        )[0]
    assert wc["drum"] < min(wc["erm"], wc["impute"], wc["plugin"]) - 0.003, wc


def test_bias_correction_reduces_error_with_misspecified_outcome():
    sim = ContinuousShiftSimulation()
    Xs, As, ys = sim.sample_source(3000, 1)
    Xt = sim.sample_target_x(3000, 101)
    errs = []
    for bc in (False, True):
        est = DRUM(
            rho=0.3, outcome_model="linear", bias_correction=bc, verbose=False, num_iters=150,
            inner_steps=2, seed=1,
        ).fit(Xs, As, ys, Xt)  # fmt: skip
        x = Xt[:1000]
        with torch.no_grad():  # the Brier-optimal response to the fitted adversary
            a = est.adversary_.rsample(x.expand(64, *x.shape))
            oracle = sim.outcome(x.expand_as(a), a).mean(0)
        f = torch.as_tensor(est.predict_proba(x)[:, 1])
        errs.append(float((f - oracle).pow(2).mean().sqrt()))
    assert errs[1] < 0.75 * errs[0], errs


def _corrected_under_a_wrong_outcome_model(seed, x_effect=0.0):
    """DRUM with bias correction and the outcome model mu_hat = 0.4 + 0.1 a^2 (0.4 + 0.1 a on
    a in {0, 1}; the square tells E_Q mu(x, A) from mu(x, E_Q A), which a model linear in a
    cannot), on 20,000 source rows of :class:`BinaryShiftProblem` (with ``x_effect *
    tanh(x)`` added to the outcome's probability when given) and a target half that size,
    shifted by 0.5 in x."""
    Xs, As, ys, Xt = BinaryShiftProblem().sample(20_000, seed)
    if x_effect:
        g = torch.Generator().manual_seed(5)
        p = 0.2 + 0.5 * As + x_effect * torch.tanh(Xs[:, 0])
        ys = (torch.rand(20_000, generator=g) < p).float()
    Xt = Xt[:10_000] + 0.5
    est = DRUM(
        rho=0.1, outcome_model=lambda x, a: 0.4 + 0.1 * a.reshape(x.shape[:-1]).to(x) ** 2,
        source_conditional=_known_g0(0.15), predictor="constant", bias_correction=True,
        num_iters=200, verbose=False,
    ).fit(Xs, As, ys, Xt)  # fmt: skip
    return est, Xs, As, ys, Xt


def test_bias_correction_recovers_the_adversarys_mean_outcome_from_any_predictor():
    r"""The corrected predictor f + c^T phi solves an estimating equation that holds at the
    truth when the density ratios are right, however wrong the outcome model: here
    mu_hat(x, a) = 0.4 + 0.1 a against the true 0.2 + 0.5 a, a target shifted by 0.5 in x (so
    omega = p_T / p_S varies, and logistic regression, the default domain classifier, is
    well specified), and a target sample half the source's size. Binary A: the adversary's
    ratio r_Q = q / p on a = 1 and (1 - q) / (1 - p) on a = 0 is exact. So the corrected
    prediction must be E_Q mu = 0.2 + 0.5 q (q the fitted adversary's), from the fitted
    predictor (0.43: the response to the wrong mu_hat) and from an arbitrary one (0.8) alike.
    The second case sets the predictor and reruns the correction (private members)."""
    from probml.inference.minimax import _ConstantLogit

    est, Xs, As, ys, Xt = _corrected_under_a_wrong_outcome_model(0)
    with torch.no_grad():
        q = float(est.adversary_.prob(Xt[:1]))
        plain = float(torch.sigmoid(est.predictor_(Xt[:1])))
    truth = 0.2 + 0.5 * q
    assert q > 0.3 and abs(plain - truth) > 0.06  # the adversary moved; f alone is off
    assert abs(float(est.predict_proba(Xt)[:, 1].mean()) - truth) < 0.02
    est.predictor_ = _ConstantLogit()
    with torch.no_grad():
        est.predictor_.bias.fill_(math.log(0.8 / 0.2))
    est.correction_ = est._bias_correction(Xs, As, ys, Xt)
    assert abs(float(est.predict_proba(Xt)[:, 1].mean()) - truth) < 0.02


def test_bias_correction_is_cross_fitted(monkeypatch):
    """Each fold's residuals and plug-in use the outcome model fitted without that fold: the
    model fitted on every source row (``outcome_model_``, the game's) does not enter the
    correction at all. Fold models are replaced by a constant here; changing the full-data
    model must leave the correction exactly as it was."""
    import probml.inference.minimax as minimax

    Xs, As, ys, Xt = BinaryShiftProblem().sample(2000, 3)
    est = DRUM(
        rho=0.1, outcome_model="linear", source_conditional=_known_g0(0.15),
        predictor="constant", bias_correction=True, num_iters=5, verbose=False,
    ).fit(Xs, As, ys, Xt[:1000])  # fmt: skip

    def const(c):
        return lambda x, a: torch.full(x.shape[:-1], c, dtype=x.dtype)

    monkeypatch.setattr(minimax, "_resolve_outcome", lambda *args: const(0.6))
    corrections = []
    for full in (0.3, 0.9):
        est.outcome_model_ = const(full)
        corrections.append(est._bias_correction(Xs, As, ys, Xt[:1000]))
    assert torch.equal(corrections[0], corrections[1])
    assert float(corrections[0].abs().max()) > 1e-3  # a correction that does something


def test_bias_correction_weighs_each_source_row_by_its_own_density_ratio():
    r"""As above, with an outcome that depends on x, which the outcome model ignores:
    mu(x, a) = 0.2 + 0.5 a + 0.15 tanh(x), so the residuals Y - mu_hat carry x and the
    correction must reweigh each source row by omega(x) = p_T(x) / p_S(x) at that row. The
    corrected prediction's target mean must be E_T E_Q mu (about 0.05 above the source-mean
    answer here, the target being shifted by 0.5). Density ratios taken on other rows than
    the residuals they weigh would give the source mean."""
    est, Xs, _, _, Xt = _corrected_under_a_wrong_outcome_model(1, x_effect=0.15)
    with torch.no_grad():
        q = est.adversary_.prob(Xt)
    truth = float((0.2 + 0.5 * q + 0.15 * torch.tanh(Xt[:, 0])).mean())
    source_answer = float((0.2 + 0.5 * q).mean() + 0.15 * torch.tanh(Xs[:, 0]).mean())
    assert truth - source_answer > 0.04
    assert abs(float(est.predict_proba(Xt)[:, 1].mean()) - truth) < 0.015


def test_brier_risk_is_the_expected_squared_error():
    mu = torch.tensor([0.2, 0.7])
    f = torch.tensor([0.4, 0.4])
    direct = mu * (f - 1) ** 2 + (1 - mu) * f**2
    assert torch.allclose(brier_risk(f, mu), direct)
    # the log loss clamps a prediction of exactly 0 or 1 to [eps, 1 - eps] (a finite loss)
    half = torch.full((2,), 0.5, dtype=torch.float64)
    edge = log_risk(torch.tensor([0.0, 1.0], dtype=torch.float64), half, eps=1e-6)
    want = -0.5 * (math.log(1e-6) + math.log(1 - 1e-6))
    assert torch.allclose(edge, torch.full((2,), want, dtype=torch.float64), rtol=1e-12)


def test_continuous_simulation_outcome_is_the_documented_logit():
    """mu(x, a) = sigmoid(-0.5 + 0.5 x1 - 0.5 x2 + 0.8 a1 - 0.5 a2 + 0.8 x1 a1 - 0.4 a2^2);
    the summary's no-shift entry and the oracle response to an adversary's draws."""
    sim = ContinuousShiftSimulation()
    x, a = torch.tensor([[1.0, -1.0]]), torch.tensor([[0.5, 2.0]])
    eta = -0.5 + 0.5 * 1 - 0.5 * (-1) + 0.8 * 0.5 - 0.5 * 2 + 0.8 * 1 * 0.5 - 0.4 * 2**2
    assert float(sim.outcome(x, a)) == pytest.approx(1 / (1 + math.exp(-eta)), rel=1e-6)
    # the summary's no-shift risk is the grid point delta = 0, tau = 1; the oracle response
    # to an adversary is the mean of mu over its draws
    out = sim.summary(lambda x: torch.full((x.shape[0],), 0.4), n=500)
    want = sim.target_risk(lambda x: torch.full((x.shape[0],), 0.4), (0.0, 0.0), 1.0, n=500)
    assert out["no_shift"] == want and out["grid"][((0.0, 0.0), 1.0)] == want
    assert out["no_shift"] != out["grid"][((0.0, 0.0), 0.5)]
    draws = torch.stack([a, torch.zeros(1, 2)])  # S = 2 draws for one x
    both = (sim.outcome(x, a) + sim.outcome(x, torch.zeros(1, 2))) / 2
    assert torch.allclose(sim.oracle_q_prediction(x, draws), both)


def test_bad_input():
    for mu in ((0.2, 1.5), (-0.1, 0.7), (0.2, 0.5, 0.7)):  # two probabilities in [0, 1]
        with pytest.raises(ValueError, match="mu must be two outcome probabilities"):
            BinaryShiftProblem(mu=mu)
    prob = BinaryShiftProblem()
    Xs, As, ys, Xt = prob.sample(200, 0)
    fast = dict(verbose=False, num_iters=2)
    with pytest.raises(ValueError, match="same number of rows"):
        DRUM(**fast).fit(Xs, As[:-1], ys, Xt)
    with pytest.raises(ValueError, match="rho"):
        DRUM(rho=-0.1, **fast).fit(Xs, As, ys, Xt)
    Xn = Xs.clone()
    Xn[0, 0] = float("nan")
    with pytest.raises(ValueError, match="X_source"):
        DRUM(**fast).fit(Xn, As, ys, Xt)
    with pytest.raises(ValueError, match="binary"):
        DRUM(**fast).fit(Xs, As, ys * 2, Xt)
    with pytest.raises(ValueError, match="bias_correction"):
        DRUM(divergence="transport", bias_correction=True, **fast).fit(Xs, As, ys, Xt)
    with pytest.raises(ValueError, match="continuous A"):
        DRUM(divergence="transport", **fast).fit(Xs, As, ys, Xt)
    with pytest.raises(ValueError, match="n_folds"):
        DRUM(bias_correction=True, n_folds=1, **fast).fit(Xs, As, ys, Xt)
    est = DRUM(rho=0.0, **fast)
    with pytest.raises(RuntimeError, match="not fitted"):
        est.predict_proba(Xt)
    est.fit(Xs, As, ys, Xt)
    with pytest.raises(ValueError, match="A is not available at prediction"):
        est.predict_proba(torch.cat((Xt, As[:, None]), 1))
    with pytest.raises(ValueError, match="X_target"):
        DRUM(**fast).fit(Xs, As, ys, torch.randn(5, 3))
    for kw, name in (({"lr": 0.0}, "lr"), ({"adversary_lr": float("nan")}, "adversary_lr"),
                     ({"dual_lr": -1.0}, "dual_lr"), ({"inner_steps": 0}, "inner_steps"),
                     ({"num_draws": 0}, "num_draws"), ({"batch_size": 0}, "batch_size"),
                     ({"penalty": float("inf")}, "penalty")):  # fmt: skip
        with pytest.raises(ValueError, match=name):
            DRUM(**{**fast, **kw}).fit(Xs, As, ys, Xt)


def test_user_predictor_and_outcome_with_a_column_output():
    # nn.Linear(d, 1) returns n x 1 logits and a user mu(x, a) may return ... x 1; before,
    # either broadcast against the n-vector of the other into an n x n risk without a word.
    # With the weight frozen at 0 the linear predictor is a constant: the closed form holds.
    from torch import nn

    prob = BinaryShiftProblem()
    Xs, As, ys, Xt = prob.sample(2000, 0)
    lin = nn.Linear(Xs.shape[1], 1)
    nn.init.zeros_(lin.weight)
    lin.weight.requires_grad_(False)
    ybar = float(ys.float().mean())  # start where the built-in predictors start
    nn.init.constant_(lin.bias, math.log(ybar / (1 - ybar)))
    est = DRUM(
        rho=0.1, predictor=lin, outcome_model=lambda x, a: prob.outcome(x, a)[..., None],
        source_conditional=_known_g0(0.15), verbose=False,
    ).fit(Xs, As, ys, Xt)  # fmt: skip
    f_star = binary_brier_minimax(0.15, 0.1, (0.2, 0.7))[0]
    p = est.predict_proba(Xt[:5])[:, 1]
    assert p.shape == (5,) and np.abs(p - f_star).max() < 0.01, p
    wide = nn.Linear(Xs.shape[1], 2)
    with pytest.raises(ValueError, match=r"predictor must return one value per row"):
        DRUM(rho=0.1, predictor=wide, verbose=False, num_iters=2).fit(Xs, As, ys, Xt)
    with pytest.raises(ValueError, match=r"outcome_model must return one value per row"):
        ImputationBaseline(outcome_model=lambda x, a: torch.cat([x, x], -1)).fit(
            Xs, As, ys
        ).predict_proba(Xt[:3])


def test_a_given_source_conditional_must_fit_the_data():
    # before: a flow of the wrong width failed in a broadcast deep in the fit, naming nothing
    sim = ContinuousShiftSimulation()
    Xs, As, ys = sim.sample_source(200, 0)
    Xt = sim.sample_target_x(200, 1)
    kw = dict(rho=0.1, verbose=False, num_iters=2)
    with pytest.raises(
        ValueError, match=r"is for \(d_x, d_a\) = \(2, 3\), but the data have \(2, 2\)"
    ):
        DRUM(source_conditional=ConditionalFlow(3, 2), **kw).fit(Xs, As, ys, Xt)
    with pytest.raises(ValueError, match=r"is for \(d_x, d_a\) = \(3, 2\)"):
        DRUM(source_conditional=ConditionalFlow(2, 3), **kw).fit(Xs, As, ys, Xt)
    with pytest.raises(TypeError, match="must be a ConditionalFlow for a continuous A"):
        DRUM(source_conditional=_known_g0(0.3), **kw).fit(Xs, As, ys, Xt)
    prob = BinaryShiftProblem()
    Xb, Ab, yb, Xtb = prob.sample(200, 0)
    with pytest.raises(TypeError, match="must be a ConditionalBernoulli for a binary A"):
        DRUM(source_conditional=ConditionalFlow(1, 1), **kw).fit(Xb, Ab, yb, Xtb)
    DRUM(source_conditional=_known_g0(0.15), **kw).fit(Xb, Ab, yb, Xtb)  # the right one runs


def test_continuous_simulation_by_hand():
    """The simulation's pieces against their definitions: A | X = B X + noise in the source
    (least squares recovers B), the shift grid (radius 0 once, other radii in eight
    directions, times each tau), and the target risk of a constant predictor f = 0.2, which
    is 0.04 + 0.6 E[mu(X, A)] under the shift, against an independent Monte Carlo draw of
    X ~ N(m_T, I), A ~ N(B X + delta, tau^2 I)."""
    sim = ContinuousShiftSimulation()
    X, A, _ = sim.sample_source(20_000, 0)
    coef = torch.linalg.lstsq(X, A).solution  # A = X coef: coef = B^T
    assert torch.allclose(coef, torch.tensor(sim.B).T, atol=0.03)
    assert len(sim.grid) == 3 + 2 * 8 * 3
    r = 1.5 / math.sqrt(2)
    assert any(abs(d[0] - r) < 1e-12 and abs(d[1] + r) < 1e-12 and t == 2.0 for d, t in sim.grid)
    delta, tau = (0.75, 0.0), 2.0
    risk = sim.target_risk(lambda x: torch.full(x.shape[:1], 0.2), delta, tau, n=20_000)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(400_000, 2, generator=g) + torch.tensor(sim.target_x_shift)
    a = x @ torch.tensor(sim.B).T + torch.tensor(delta) + tau * torch.randn(400_000, 2, generator=g)
    assert risk == pytest.approx(0.04 + 0.6 * float(sim.outcome(x, a).mean()), abs=0.004)
    s = sim.summary(lambda x: torch.full(x.shape[:1], 0.2), n=2000)
    assert s["mean"] == pytest.approx(sum(s["grid"].values()) / 51)
    assert s["worst"] == max(s["grid"].values()) > s["mean"]


def test_a_single_binary_column_gets_the_exact_adversary():
    """An ``n x 1`` 0/1 ``A`` (a one-column table) is the binary case, as a 1-D one is: the
    tilted-Bernoulli adversary and the same fit (a flow fitted to 0/1 values before)."""
    prob = BinaryShiftProblem()
    Xs, As, ys, Xt = prob.sample(1000, 0)
    kw = dict(outcome_model=prob.outcome, predictor="constant", num_iters=40, verbose=False)
    flat = DRUM(rho=0.1, **kw).fit(Xs, As, ys, Xt)
    column = DRUM(rho=0.1, **kw).fit(Xs, As[:, None], ys, Xt)
    assert isinstance(column.adversary_, ConditionalBernoulli)
    assert np.array_equal(column.predict_proba(Xt[:20]), flat.predict_proba(Xt[:20]))
    imp = ImputationBaseline(outcome_model=prob.outcome).fit(Xs, As[:, None], ys, Xt)
    assert isinstance(imp.g0_, ConditionalBernoulli)
    # two 0/1 columns are a continuous A (the flow's case): a Bernoulli generator is refused
    two = torch.stack([As, 1 - As], 1)
    with pytest.raises(TypeError, match="ConditionalFlow for a continuous A"):
        DRUM(rho=0.1, source_conditional=_known_g0(0.15), **kw).fit(Xs, two, ys, Xt)


def test_imputation_plugs_in_the_conditional_mean_of_a():
    """Binary A: mu(x, P(A = 1 | x)), the probability itself (not a thresholded label);
    continuous A: mu at the mean of ``num_draws`` draws from G0 (noise from a generator
    seeded by ``seed``), recomputed here by hand."""
    prob = BinaryShiftProblem()
    Xs, As, ys, Xt = prob.sample(1000, 0)
    imp = ImputationBaseline(outcome_model=prob.outcome).fit(Xs, As, ys, Xt)
    with torch.no_grad():
        q = imp.g0_.prob(Xt[:10])
        want = prob.outcome(Xt[:10], q)
    assert 0.05 < float(q.min()) and float(q.max()) < 0.95  # a threshold would give 0 or 1
    assert np.allclose(imp.predict_proba(Xt[:10])[:, 1], want.numpy(), atol=1e-6)

    sim = ContinuousShiftSimulation()
    Xs, As, ys = sim.sample_source(500, 0)

    def mu(x, a):  # nonlinear in a: the mean of the draws is not the mean of mu
        return torch.sigmoid(3 * a[..., 0] + x[..., 0])

    imp = ImputationBaseline(outcome_model=mu, num_draws=16, seed=4).fit(Xs, As, ys, Xs)
    x = Xs[:10]
    with torch.no_grad():
        gen = torch.Generator().manual_seed(4)
        a_bar = imp.g0_.rsample(x.expand(16, *x.shape), gen).mean(0)
        want = mu(x, a_bar)
    assert np.allclose(imp.predict_proba(x)[:, 1], want.numpy(), atol=1e-6)


def test_a_linear_predictor_is_logistic_linear():
    """``predictor="linear"``: the fitted logit is affine in x (the MLP's is not)."""
    sim = ContinuousShiftSimulation()
    Xs, As, ys = sim.sample_source(500, 0)
    Xt = sim.sample_target_x(500, 100)
    g0 = fit_source_conditional(As, Xs, num_iters=50, verbose=False)
    x0, x1 = Xt[:1], Xt[1:2]
    line = torch.cat([x0 + s * (x1 - x0) for s in (0.0, 1.0, 2.0, 3.0)])
    for kind, affine in (("linear", True), ("mlp", False)):
        est = DRUM(rho=0.1, predictor=kind, num_iters=30, outcome_model=sim.outcome,
                   source_conditional=g0, verbose=False).fit(Xs, As, ys, Xt)  # fmt: skip
        p = torch.as_tensor(est.predict_proba(line)[:, 1], dtype=torch.float64)
        second = (p.logit()[2:] - 2 * p.logit()[1:-1] + p.logit()[:-2]).abs().max()
        assert (float(second) < 1e-4) == affine, (kind, float(second))


def test_each_step_draws_a_fresh_minibatch_of_target_rows():
    """``batch_size`` target rows per step, drawn afresh (documented): over 60 steps of 16
    rows out of 200, most rows are seen (a fixed first batch would show 16)."""
    prob = BinaryShiftProblem()
    Xs, As, ys, _ = prob.sample(300, 0)
    Xt = torch.arange(200.0)[:, None]  # each target row is its own id
    seen = set()

    def outcome(x, a):
        seen.update(x[..., 0].reshape(-1).tolist())
        return prob.outcome(x, a)

    DRUM(rho=0.1, batch_size=16, num_iters=60, outcome_model=outcome, predictor="constant",
         source_conditional=_known_g0(0.15), verbose=False).fit(Xs, As, ys, Xt)  # fmt: skip
    assert len(seen & set(range(200))) > 150


def test_worst_case_risk_is_the_risk_of_the_corrected_predictions():
    """With the bias correction, ``worst_case_risk`` is the adversary's expected Brier risk of
    what ``predict_proba`` returns (the corrected predictions), by enumeration over A."""
    prob = BinaryShiftProblem()
    Xs, As, ys, Xt = prob.sample(2000, 0)
    Xt = Xt + torch.linspace(-1, 1, Xt.shape[0])[:, None]  # an x-dependent correction
    est = DRUM(rho=0.1, bias_correction=True, outcome_model="linear", predictor="constant",
               source_conditional=_known_g0(0.15), num_iters=100, verbose=False)  # fmt: skip
    est.fit(Xs, As, ys, Xt)
    assert float(est.correction_.abs().max()) > 1e-3  # the correction moves the predictions
    f = torch.as_tensor(est.predict_proba(Xt)[:, 1]).to(Xt)
    with torch.no_grad():
        q = est.adversary_.prob(Xt)
        mu1 = est.outcome_model_(Xt, torch.ones_like(q))
        mu0 = est.outcome_model_(Xt, torch.zeros_like(q))
    risk = q * brier_risk(f, mu1) + (1 - q) * brier_risk(f, mu0)
    assert est.worst_case_risk(Xt) == pytest.approx(float(risk.mean()), abs=1e-6)
    # a correction that would carry a prediction past 0 or 1 is clamped to [1e-4, 1 - 1e-4]
    est.correction_ = torch.zeros_like(est.correction_)
    est.correction_[0] = 5.0
    p = est.predict_proba(Xt)
    assert np.allclose(p[:, 1], 1 - 1e-4) and np.allclose(p.sum(1), 1.0)


@pytest.mark.parametrize("divergence", ["kl", "transport"])
def test_worst_case_risk_of_a_continuous_a_is_reproducible_and_leaves_the_global_rng(divergence):
    """A continuous adversary's risk is a Monte Carlo mean: its draws drew from torch's global
    RNG (a different answer on every call, and the caller's stream moved). Now they come
    from a generator seeded by ``seed``, the same ``num_draws`` draws per row by hand."""
    sim = ContinuousShiftSimulation()
    Xs, As, ys = sim.sample_source(400, 0)
    est = DRUM(rho=0.1, divergence=divergence, num_iters=3, num_draws=8, seed=2, verbose=False)
    est.fit(Xs, As, ys, Xs)
    state = torch.get_rng_state()
    first = est.worst_case_risk(Xs[:50])
    assert est.worst_case_risk(Xs[:50]) == first and torch.equal(torch.get_rng_state(), state)
    x = Xs[:50]
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        f = torch.as_tensor(est.predict_proba(x)[:, 1]).to(x)
        xs = x.expand(8, *x.shape)
        if divergence == "kl":
            a = est.adversary_.rsample(xs, gen)
        else:
            a = est.adversary_(xs, torch.randn(8, 50, est.a_dim_, generator=gen).to(x))[0]
        want = brier_risk(f, est.outcome_model_(xs, a)).mean()
    assert first == pytest.approx(float(want), abs=1e-6)  # float32 data


def test_nuisance_fits_do_not_depend_on_the_covariates_units():
    """The logistic nets standardise their inputs: an outcome model (and ERM on X) fitted
    with X in other units (x 1000, shifted) predicts the same, to rounding."""
    from probml.inference.minimax import fit_outcome_model

    sim = ContinuousShiftSimulation()
    Xs, As, ys = sim.sample_source(400, 0)
    Xs, As = Xs.double(), As.double()
    Xb = 1000 * Xs + 50
    mu, mu_b = (fit_outcome_model(x, As, ys, num_iters=100) for x in (Xs, Xb))
    with torch.no_grad():
        assert torch.allclose(mu(Xs[:20], As[:20]), mu_b(Xb[:20], As[:20]), atol=1e-6)
    erm, erm_b = (ERMOnX(num_iters=100).fit(x, As, ys) for x in (Xs, Xb))
    assert np.allclose(erm.predict_proba(Xs[:20]), erm_b.predict_proba(Xb[:20]), atol=1e-6)


def test_the_transport_ball_holds_the_adversarys_cost_at_rho():
    """``divergence="transport"``: the dual update keeps the adversary's transport cost
    E ||G_phi(X, Z) - G_0(X, Z)||^2 near rho (measured: 0.051 at rho = 0.05, 0.299 at 0.3, mean
    of the last 100 steps), and the adversary's own cost on the target agrees."""
    sim = ContinuousShiftSimulation()
    Xs, As, ys = sim.sample_source(1000, 0)
    Xt = sim.sample_target_x(1000, 100)
    g0 = fit_source_conditional(As, Xs, num_iters=200, verbose=False)
    est = DRUM(rho=0.1, divergence="transport", num_iters=300, source_conditional=g0,
               verbose=False).fit(Xs, As, ys, Xt)  # fmt: skip
    tail = float(np.mean(est.history_["divergence"][-100:]))
    assert tail == pytest.approx(0.1, rel=0.2)
    z = torch.randn(Xt.shape[0], 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, cost = est.adversary_(Xt, z)
    assert float(cost.mean()) == pytest.approx(0.1, rel=0.3)


def test_binary_divergence_stays_finite_when_the_adversary_reaches_zero():
    """A binary adversary pushed to q = 0 (its logit underflows, here a logit of -inf) has
    KL(q || p0) = -log(1 - p0) in the limit; the divergence uses q log q -> 0 (a small eps
    inside the logs), where 0 * log 0 would be NaN and poison the adversary's gradient."""
    est = DRUM(verbose=False)
    est.source_conditional_ = ConditionalBernoulli.constant(0.3)
    zero = ConditionalBernoulli.constant(1e-60)  # float32 logit of 1e-60: -inf
    x = torch.zeros(4, 1)
    with torch.no_grad():
        assert float(zero.prob(x).max()) == 0.0
    risk, kl = est._expected_risk(
        zero, torch.full((4,), 0.5), x, lambda x, a: torch.full(x.shape[:-1], 0.4), True
    )
    assert torch.isfinite(risk).all() and torch.allclose(kl, torch.full((4,), -math.log(0.7)))


def test_the_play_uses_target_minibatches_and_returns_the_averaged_predictor(monkeypatch):
    """Each round of the game sees ``batch_size`` target rows (all of them for ``None``), and
    the fitted predictor is the Polyak average of the second half of the play (the
    AveragedModel's module, updated once per round from ``num_iters // 2`` on), not the last
    iterate."""

    class Recording(torch.nn.Module):
        rows: list = []  # a class attribute: shared with the copy DRUM trains

        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(1, 1)

        def forward(self, x):
            Recording.rows.append(x.shape[0])
            return self.lin(x).squeeze(-1)

    made = []

    class Averaged(torch.optim.swa_utils.AveragedModel):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.updates = 0
            made.append(self)

        def update_parameters(self, model):
            self.updates += 1
            super().update_parameters(model)

    monkeypatch.setattr(torch.optim.swa_utils, "AveragedModel", Averaged)
    prob = BinaryShiftProblem()
    Xs, As, ys, Xt = prob.sample(400, 0)
    kw = dict(rho=0.1, outcome_model=prob.outcome, source_conditional=_known_g0(0.15),
              predictor=Recording(), num_iters=6, verbose=False)  # fmt: skip
    for batch_size, want in ((7, 7), (None, Xt.shape[0])):
        Recording.rows.clear()
        est = DRUM(batch_size=batch_size, **kw).fit(Xs, As, ys, Xt)
        assert set(Recording.rows) == {want}
        assert est.predictor_.fn is made[-1].module.fn and made[-1].updates == 3


def test_predict_labels_a_tie_at_one_half_as_zero_like_scikit_learn():
    """``predict`` thresholds the probability: 1 strictly above 0.5, 0 at or below it, as a
    scikit-learn logistic regression labels a zero decision value."""
    g = torch.Generator().manual_seed(0)
    X, A = torch.randn(20, 2, generator=g), torch.randn(20, 1, generator=g)
    y = (torch.arange(20) % 2).double()
    m = ERMOnX(num_iters=1).fit(X, A, y)
    m._predict = lambda x: torch.tensor([0.5, 0.5 + 1e-12, 0.5 - 1e-12], dtype=torch.float64)
    assert m.predict(X[:3]).tolist() == [0, 1, 0]
