"""Library routines seed the global RNGs for reproducible results of their own, and leave the
caller's torch, NumPy and Python RNG states as they found them."""

import random

import numpy as np
import pytest
import torch

from probml.utils import keep_global_rng


def _states():
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()  # noqa: NPY002


def _same(a, b):
    return torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def _draw(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002
    random.seed(seed)
    return float(torch.rand(1)), float(np.random.rand()), random.random()  # noqa: NPY002


def test_keep_global_rng_restores_and_nests_like_unguarded_code():
    guarded_draw = keep_global_rng(_draw)

    def outer(seed):  # an inner reseed, then draws that continue from the inner call's state
        first = _draw(seed)
        return first, float(torch.rand(1))

    torch.manual_seed(7)
    before = _states()
    value = guarded_draw(3)
    assert _same(before, _states())  # restored
    assert value == _draw(3)  # and the draws were the seeded ones
    guarded_outer = keep_global_rng(lambda s: (guarded_draw(s), float(torch.rand(1))))
    # from a caller state unlike the inner seed's: after _draw(3) above, a guard that
    # restored in between would continue seed 3's stream too and pass unseen
    torch.manual_seed(7)
    nested = guarded_outer(3)
    assert nested == outer(3)  # the nested guard does not restore in between
    torch.manual_seed(7)
    before = _states()
    guarded_outer(3)
    assert _same(before, _states())

    @keep_global_rng
    def fails():
        torch.manual_seed(0)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fails()
    assert _same(before, _states())


def _calls():
    from probml.datasets.fairness import make_gaussian_groups
    from probml.datasets.gaussian import make_sparse_precision, sample_gaussian
    from probml.datasets.persona import PersonaWorld
    from probml.datasets.ratio import make_ratio_data
    from probml.guides.generators import fit_source_conditional
    from probml.inference.expressivity import fit_shallow_net
    from probml.inference.metalearners import BayesianQLearner
    from probml.inference.minimax import DRUM, ERMOnX, ImputationBaseline, fit_outcome_model
    from probml.inference.pace import PACEGGM, covariance_posterior
    from probml.inference.persona_experiment import pretrain_persona_model
    from probml.inference.pretrain import paired_models
    from probml.inference.transport import posterior_fair_predictions
    from probml.models.adapters import fit_spurious_factor
    from probml.models.diffusion import train_transition_model
    from probml.models.lm import TinyLM, TinyLMConfig
    from probml.models.transfer import ContinuousShiftSimulation

    sim = ContinuousShiftSimulation()
    Xs, As, ys = sim.sample_source(200, 0)
    Xt = sim.sample_target_x(200, 1)
    xp = torch.randn(100, 3, generator=torch.Generator().manual_seed(0))
    cfg = TinyLMConfig(vocab_size=20, d_model=16, n_layers=1, n_heads=2, context=8)
    x = torch.linspace(-2, 2, 21, dtype=torch.float64)[:, None]
    S, _ = make_sparse_precision(3, n_extra_edges=0, scale_range=(0.5, 2.0), seed=0)
    pace = PACEGGM(2.0, 1e-5, (3 * S.diagonal().sqrt()).numpy(), rounds=3, random_state=0)
    pace.fit(sample_gaussian(S, 300, seed=1).numpy())
    g = make_gaussian_groups(80, p1=0.5, seed=3)
    r = make_ratio_data(300, d=2, base_logit=-1.5, seed=4)
    q = BayesianQLearner(method="svi", svi_steps=10, num_samples=5)
    g0 = fit_source_conditional(As, Xs, num_iters=5, verbose=False)

    def mu(x, a):  # a known outcome model: the nuisance fits are tested on their own below
        return torch.sigmoid(x[..., 0] + a[..., 0])

    drum = dict(outcome_model=mu, source_conditional=g0, num_iters=5, inner_steps=1, seed=0)
    imputation = ImputationBaseline(outcome_model=mu).fit(Xs, As, ys)
    return {
        "DRUM": lambda: DRUM(rho=0.1, **drum, verbose=False).fit(Xs, As, ys, Xt).predictor_,
        "DRUM transport": lambda: (
            DRUM(rho=0.3, divergence="transport", **drum, verbose=False)
            .fit(Xs, As, ys, Xt)
            .predictor_
        ),
        "ERMOnX": lambda: ERMOnX(num_iters=10).fit(Xs, As, ys).net_,
        "imputation predict": lambda: torch.as_tensor(imputation.predict_proba(Xt[:20])),
        "fit_outcome_model": lambda: fit_outcome_model(Xs, As, ys, "linear").net,
        "fit_source_conditional": lambda: fit_source_conditional(
            As, Xs, num_iters=5, verbose=False
        ),
        "train_transition_model": lambda: train_transition_model(
            xp, xp + 0.1, num_iters=5, verbose=False
        )[0],
        "paired_models": lambda: paired_models({"a": lambda: TinyLM(cfg)}, seed=3)["a"],
        "fit_shallow_net": lambda: fit_shallow_net(
            "la", ("relu",), x, torch.relu(x[:, 0]), restarts=2, max_iter=5
        )[1],
        "covariance_posterior": lambda: covariance_posterior(
            pace, method="svi", num_samples=5, svi_steps=5
        ),
        "posterior_fair_predictions": lambda: torch.as_tensor(
            posterior_fair_predictions(
                g.X[:60],
                g.y[:60],
                g.sensitive[:60],
                g.X[60:],
                g.sensitive[60:],
                num_samples=5,
                warmup_steps=5,
            )[0]
        ),  # fmt: skip
        "BayesianQLearner": lambda: torch.as_tensor(
            q.fit(r.X, r.w, r.y, propensity=0.5).log_effect_samples(r.X[:5])
        ),
        "fit_spurious_factor": lambda: fit_spurious_factor(
            torch.randn(4, 6, generator=torch.Generator().manual_seed(0)),
            num_task=2,
            num_steps=5,
            num_samples=5,
        )["u"],  # fmt: skip
        "pretrain_persona_model": lambda: pretrain_persona_model(
            PersonaWorld(), num_steps=2, cache=False, verbose=False, d_model=16
        ),
    }


def _flat(out) -> torch.Tensor:
    if isinstance(out, torch.nn.Module):
        return torch.cat([v.detach().reshape(-1).double() for v in out.state_dict().values()])
    return torch.as_tensor(out).detach().reshape(-1).double()


def test_seeded_routines_are_reproducible_and_leave_the_caller_rngs_alone():
    calls = _calls()
    for name, call in calls.items():
        _draw(11)
        before = _states()
        first = _flat(call())
        assert _same(before, _states()), f"{name} changed the caller's global RNG state"
        _draw(12)  # another caller state: the same result
        assert torch.equal(first, _flat(call())), f"{name} depends on the caller's RNG state"


def test_pyro_routines_put_the_callers_parameter_store_back():
    import pyro

    from probml.inference.pace import PACEGGM, covariance_posterior
    from probml.models.adapters import fit_spurious_factor

    pyro.clear_param_store()
    w = pyro.param("user_w", torch.tensor([1.0, 2.0]))
    fit_spurious_factor(torch.randn(4, 6), num_task=2, num_steps=3, num_samples=2)
    pace = PACEGGM(2.0, 1e-5, np.ones(2), rounds=1, random_state=0).fit(np.zeros((50, 2)))
    covariance_posterior(pace, method="svi", num_samples=2, svi_steps=2)
    store = pyro.get_param_store()
    assert list(store.keys()) == ["user_w"] and torch.equal(store["user_w"].detach(), w.detach())
    pyro.clear_param_store()


def test_keep_param_store_runs_on_an_empty_store_and_puts_the_callers_back():
    import pyro

    from probml.utils import keep_param_store

    @keep_param_store
    def inner(fail=False):
        seen = sorted(pyro.get_param_store().keys())
        pyro.param("inner_w", torch.zeros(2))
        if fail:
            raise RuntimeError("boom")
        return seen

    pyro.clear_param_store()
    w = pyro.param("user_w", torch.tensor([1.0, 2.0]))
    assert inner() == []  # the caller's parameters are not visible inside
    with pytest.raises(RuntimeError, match="boom"):
        inner(fail=True)
    store = pyro.get_param_store()
    assert list(store.keys()) == ["user_w"] and torch.equal(store["user_w"].detach(), w.detach())
    pyro.clear_param_store()


def test_bayesian_q_learner_keeps_the_callers_parameter_store():
    import pyro

    from probml.datasets.ratio import make_ratio_data
    from probml.inference.metalearners import BayesianQLearner

    d = make_ratio_data(400, seed=3)
    pyro.clear_param_store()
    w = pyro.param("user_w", torch.tensor([1.0, 2.0]))
    a = BayesianQLearner(method="svi", svi_steps=60, num_samples=20).fit(d.X, d.w, d.y, 0.5)
    first = a.log_effect_samples(d.X[:5])
    store = pyro.get_param_store()
    assert list(store.keys()) == ["user_w"] and torch.equal(store["user_w"].detach(), w.detach())
    # a second fit, then a caller's parameter under the guide's own name: the first
    # learner's draws do not change (its guide reads its own parameters)
    BayesianQLearner(method="svi", svi_steps=60, num_samples=20, seed=5).fit(d.X, d.w, d.y, 0.5)
    names = [f"AutoMultivariateNormal.{k}" for k in a.guide_.state_dict()]
    assert names  # the guide holds its parameters on itself
    for name, value in zip(names, a.guide_.state_dict().values()):
        pyro.param(name, torch.ones_like(value) * 3.0)
    assert np.array_equal(a.log_effect_samples(d.X[:5]), first)
    assert sorted(store.keys()) == sorted(["user_w", *names])  # the caller's entries stay
    pyro.clear_param_store()
