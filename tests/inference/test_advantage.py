import math

import numpy as np
import pyro
import pytest
import torch

from probml.inference.advantage import (
    SPOTracker,
    astar_po_values,
    basis_advantages,
    batch_wide_floor,
    grpo_advantages,
    kl_optimal_values,
    offline_advantages,
    offline_values,
    reinforce_pp_advantages,
    rloo_advantages,
)
from probml.inference.basis_rl import run_bandit_rl
from probml.models.rollouts import (
    DriftFilter,
    LinearBandit,
    PromptDriftFilter,
    bayesian_loo_baseline,
    logit_shift_model,
)


@pytest.mark.parametrize("form", ["blue", "linearised"])
def test_equal_values_give_the_leave_one_out_mean(form):
    r = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0])
    _, d = basis_advantages(r, torch.full((7,), 0.3), form=form)
    loo = (r.sum() - r) / 6
    assert torch.allclose(d["baseline"].float(), loo, atol=1e-6)


@pytest.mark.parametrize("form", ["blue", "linearised", "calibrated"])
def test_baseline_of_prompt_i_ignores_r_i(form):
    g = torch.Generator().manual_seed(0)
    p0 = torch.rand(12, generator=g, dtype=torch.float64) * 0.8 + 0.1
    r = (torch.rand(12, generator=g) < 0.5).double()
    _, d = basis_advantages(r, p0, form=form)
    for i in range(12):
        r2 = r.clone()
        r2[i] = 1 - r2[i]
        _, d2 = basis_advantages(r2, p0, form=form)
        # a function of r_{-i} only (up to float rounding of the leave-out sums)
        assert abs(float(d2["baseline"][i] - d["baseline"][i])) < 1e-12
        assert not torch.equal(d2["baseline"], d["baseline"])  # but the others see r_i


def _basis_by_loops(r, p0, grid, eps, form):
    """BASIS by the module docstring's formulas, one prompt and one temperature at a time:
    prompt i's temperature minimises sum_{j in A, j != i} (r_j - b_j^{(-i, -j)})^2, and its
    baseline is b_i^{(-i)} at that temperature, clamped to [0, 1]; 0 off the active set."""
    B = len(r)
    active = [eps < float(p) < 1 - eps for p in p0]

    def value(k, beta):
        return float(kl_optimal_values(p0[k : k + 1], beta)[0])

    def b(j, beta, out):  # baseline of j from the active prompts not in `out`
        ks = [k for k in range(B) if active[k] and k not in out]
        if form == "blue":
            num = sum(float(r[k]) / (1 - value(k, beta)) for k in ks)
            den = sum(value(k, beta) / (1 - value(k, beta)) for k in ks)
            return value(j, beta) * num / den if den > 0 else 0.0
        s2 = {k: value(k, beta) * (1 - value(k, beta)) for k in [*ks, j]}
        den = sum(s2[k] for k in ks)
        res = sum(float(r[k]) - value(k, beta) for k in ks)
        return value(j, beta) + s2[j] * (res / den if den > 0 else 0.0)

    baselines, betas = [], []
    for i in range(B):
        if not active[i]:
            baselines.append(0.0)
            betas.append(None)
            continue
        losses = [
            sum((float(r[j]) - b(j, beta, {i, j})) ** 2 for j in range(B) if active[j] and j != i)
            for beta in grid
        ]
        beta = grid[int(np.argmin(losses))]
        baselines.append(min(max(b(i, beta, {i}), 0.0), 1.0))
        betas.append(beta)
    return torch.tensor(baselines, dtype=torch.float64), betas


@pytest.mark.parametrize("seed", [1, 3, 7])
@pytest.mark.parametrize("form", ["blue", "linearised"])
def test_basis_matches_its_formulas_computed_by_loops(form, seed):
    """The vectorised leave-two-out calibration (chunked G x c x B tensors) against the
    formulas evaluated one prompt, one temperature and one leave-out set at a time, with two
    prompts outside the active set. (The chosen temperatures are what the calibration
    decides: a fine grid, and draws where the prompts pick several, make a wrong
    leave-two-out sum change them; with a coarse grid one survived.)"""
    g = torch.Generator().manual_seed(seed)
    p0 = torch.rand(9, generator=g, dtype=torch.float64) * 0.8 + 0.1
    p0[2], p0[6] = 0.01, 0.995  # inactive at eps = 0.02
    r = (torch.rand(9, generator=g, dtype=torch.float64) < p0).double()
    grid = (0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, float("inf"))
    want, betas = _basis_by_loops(r, p0, grid, 0.02, form)
    adv, d = basis_advantages(r, p0, beta_grid=grid, form=form, chunk_size=4)
    assert torch.allclose(d["baseline"], want, atol=1e-12, rtol=0)
    assert torch.allclose(adv, r - want, atol=1e-12, rtol=0)
    act = d["active"].tolist()
    assert act == [b is not None for b in betas]
    assert [float(x) for x, a in zip(d["beta"], act) if a] == [b for b in betas if b is not None]
    assert bool(d["beta"][~d["active"]].isnan().all())  # no temperature set their baseline
    assert len(set(betas) - {None}) > 1  # the prompts do not all pick one temperature


def test_whitened_advantages_are_the_plain_ones_over_their_sd():
    """``whiten=True`` (never run by a test before) rescales the advantages by their standard
    deviation and changes neither the baseline nor the chosen temperatures."""
    g = torch.Generator().manual_seed(4)
    p0 = torch.rand(64, generator=g, dtype=torch.float64) * 0.8 + 0.1
    r = (torch.rand(64, generator=g, dtype=torch.float64) < p0).double()
    plain, d = basis_advantages(r, p0)
    white, dw = basis_advantages(r, p0, whiten=True)
    assert torch.allclose(white, plain / plain.std())
    assert abs(float(white.std()) - 1.0) < 1e-12
    assert torch.equal(d["baseline"], dw["baseline"]) and torch.equal(d["beta"], dw["beta"])
    # advantages that are all equal have sd 0: they stay finite (zero), not 0 / 0
    flat, _ = basis_advantages(torch.zeros(4), torch.full((4,), 0.01), whiten=True)
    assert torch.equal(flat, torch.zeros(4))


def test_integer_rewards_give_the_float_answers():
    """Integer rewards (0/1 counts) are read as float64, not rejected by mean() or std()."""
    r = torch.tensor([1, 0, 0, 1, 1])
    R = torch.tensor([[1, 0, 1], [0, 0, 1]])
    assert torch.equal(reinforce_pp_advantages(r), reinforce_pp_advantages(r.double()))
    assert torch.equal(grpo_advantages(R), grpo_advantages(R.double()))
    assert torch.equal(rloo_advantages(R), rloo_advantages(R.double()))
    p0 = torch.full((5,), 0.4, dtype=torch.float64)
    assert torch.equal(basis_advantages(r, p0)[0], basis_advantages(r.double(), p0)[0])


@pytest.mark.parametrize("bad", [2.5, True, 0])
def test_basis_chunk_size_is_a_positive_count(bad):
    r, p0 = torch.tensor([1.0, 0.0, 1.0]), torch.full((3,), 0.5)
    with pytest.raises((TypeError, ValueError), match="chunk_size must be"):
        basis_advantages(r, p0, chunk_size=bad)
    # a batch whose advantages spread by less than 1e-2 (every prompt inactive, offline
    # baselines 0.0050 .. 0.0058): still divided by their own sd, not by a floor
    p0 = torch.linspace(0.005, 0.0058, 5, dtype=torch.float64)
    plain, _ = basis_advantages(torch.zeros(5), p0, inactive="offline")
    white, _ = basis_advantages(torch.zeros(5), p0, inactive="offline", whiten=True)
    assert float(plain.std()) < 1e-3 and torch.allclose(white, plain / plain.std())


@pytest.mark.parametrize("form", ["blue", "linearised"])
def test_chunked_calibration_equals_one_chunk(form):
    # the G x chunk x B leave-two-out tensor is built in chunks of prompts: same result
    g = torch.Generator().manual_seed(3)
    p0 = torch.rand(37, generator=g, dtype=torch.float64) * 0.98 + 0.01
    r = (torch.rand(37, generator=g) < 0.5).double()
    a_one, d_one = basis_advantages(r, p0, form=form)
    for chunk in (1, 5, 36):
        a, d = basis_advantages(r, p0, form=form, chunk_size=chunk)
        torch.testing.assert_close(d["beta"], d_one["beta"], rtol=0, atol=0, equal_nan=True)
        assert torch.equal(a, a_one)
    with pytest.raises(ValueError, match="chunk_size"):
        basis_advantages(r, p0, chunk_size=0)


def test_calibrated_form_is_the_closed_form_value_at_the_loo_temperature():
    # rewards drawn at a logit shift c = 1 (beta = 1, on the grid): with B = 20000 every
    # prompt's leave-one-out calibration picks beta = 1, and the baseline is V_i(1) exactly
    g = torch.Generator().manual_seed(1)
    p0 = torch.rand(20_000, generator=g, dtype=torch.float64) * 0.8 + 0.1
    r = torch.bernoulli(kl_optimal_values(p0, 1.0), generator=g)
    _, d = basis_advantages(r, p0, form="calibrated")
    assert torch.all(d["beta"] == 1.0)
    torch.testing.assert_close(d["baseline"], kl_optimal_values(p0, 1.0))
    # no drift: the calibration picks beta = inf (c = 0) and the baseline is p0
    r0 = torch.bernoulli(p0, generator=g)
    _, d0 = basis_advantages(r0, p0, form="calibrated")
    assert torch.all(torch.isinf(d0["beta"]))
    torch.testing.assert_close(d0["baseline"], p0)
    with pytest.raises(ValueError, match="form"):
        basis_advantages(r0, p0, form="ratio")


def test_inactive_prompts_get_zero_baseline_and_fallback():
    p0 = torch.tensor([0.005, 0.5, 0.4, 0.995, 0.6])
    r = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0])
    adv, d = basis_advantages(r, p0, eps=0.02)
    assert d["active"].tolist() == [False, True, True, False, True]
    assert d["baseline"][0] == 0 and d["baseline"][3] == 0
    assert adv[3] == 1.0
    _, d1 = basis_advantages(r[:2], p0[:2], eps=0.02)  # one active prompt: documented fallback
    assert d1["fallback"] and torch.all(d1["baseline"] == 0)
    # our alternative: inactive prompts keep their offline value (A = r - p0), active ones
    # are unchanged, and the inactive baselines ignore every reward
    adv_o, d_o = basis_advantages(r, p0, eps=0.02, inactive="offline")
    assert torch.allclose(d_o["baseline"][[0, 3]], p0[[0, 3]].double())
    assert torch.equal(d_o["baseline"][d["active"]], d["baseline"][d["active"]])
    assert adv_o[3] == pytest.approx(1 - 0.995)
    _, d_f = basis_advantages(1 - r, p0, eps=0.02, inactive="offline")
    assert torch.equal(d_f["baseline"][[0, 3]], d_o["baseline"][[0, 3]])
    _, d1o = basis_advantages(r[:2], p0[:2], eps=0.02, inactive="offline")
    assert d1o["fallback"] and torch.allclose(d1o["baseline"], p0[:2].double())
    with pytest.raises(ValueError, match="inactive"):
        basis_advantages(r, p0, inactive="drop")


def test_bandit_correct_answers_are_the_top_scoring_ones_under_the_hidden_rule():
    """Each prompt has m_i in 1..A-1 correct answers: the m_i with the highest score under the
    hidden rule (so every prompt has a correct and a wrong answer, and the reference values
    m_i / A spread over (0, 1))."""
    b = LinearBandit(num_prompts=2000, num_answers=5, dim=4, seed=3)
    m = b.correct.sum(1)
    assert bool(((m >= 1) & (m <= 4)).all()) and set(m.long().tolist()) == {1, 2, 3, 4}
    score = b.features @ b.hidden_rule
    lowest_correct = torch.where(b.correct.bool(), score, math.inf).amin(1)
    highest_wrong = torch.where(b.correct.bool(), -math.inf, score).amax(1)
    assert bool((lowest_correct > highest_wrong).all())
    assert torch.allclose(b.values(torch.zeros(4, dtype=torch.float64)), m / 5)


@pytest.mark.parametrize("estimator", ["basis", "bayes-basis-rw", "bayes-basis-rw-eta"])
def test_basis_policy_gradient_is_unbiased_on_a_tiny_bandit(estimator):
    bandit = LinearBandit(num_prompts=6, num_answers=4, dim=3, seed=1)
    theta = torch.tensor([0.3, -0.5, 0.2], dtype=torch.float64, requires_grad=True)
    prompts = torch.arange(6)
    exact = torch.autograd.grad(bandit.values(theta, prompts).mean(), theta)[0]
    p0 = torch.tensor([0.2, 0.5, 0.7, 0.4, 0.6, 0.3], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    reps, grads = 6000, []
    th = theta.detach()
    grid = torch.linspace(0, 2, 9, dtype=torch.float64)
    filt = (
        PromptDriftFilter(6, c_grid=grid, step_sds=(0.1, 0.5))
        if estimator.endswith("eta")
        else DriftFilter(grid, step_sds=(0.1, 0.5))
    )
    extra = (prompts,) if estimator.endswith("eta") else ()
    for _ in range(5):  # a filter state that has seen past batches (eta: of these prompts)
        filt.loo_baseline(bandit.sample(th, prompts, 1, g)[1][:, 0], p0, *extra)
    for _ in range(reps):
        a, r = bandit.sample(th, prompts, 1, g)
        if estimator == "basis":
            adv, _ = basis_advantages(r[:, 0], p0)
        else:  # the filter's state is fixed; only r_{-i} of the current batch enters b_i
            adv = r[:, 0] - filt.loo_baseline(r[:, 0], p0, *extra, update=False)
        grads.append((adv[:, None] * bandit.score_function(th, prompts, a)[:, 0]).mean(0))
    G = torch.stack(grads)
    se = G.std(0) / math.sqrt(reps)
    assert torch.all((G.mean(0) - exact).abs() < 4 * se + 1e-4), (G.mean(0), exact, se)


def test_textbook_estimators_on_hand_computed_cases():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    adv = reinforce_pp_advantages(r)
    assert torch.allclose(adv, (r - 0.5) / torch.tensor([0.5, -0.5, -0.5, 0.5]).std())
    assert torch.allclose(reinforce_pp_advantages(r, whiten=False), r - 0.5)
    R = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    assert torch.allclose(grpo_advantages(R, scale_std=False), R - torch.tensor([[0.75], [0.25]]))
    std = torch.tensor([[0.5], [0.5]])
    assert torch.allclose(grpo_advantages(R), (R - torch.tensor([[0.75], [0.25]])) / (std + 1e-6))
    loo = torch.tensor(
        [[1 - 2 / 3, 0 - 1.0, 1 - 2 / 3, 1 - 2 / 3], [0 - 1 / 3, 0 - 1 / 3, 0 - 1 / 3, 1.0]]
    )
    assert torch.allclose(rloo_advantages(R), loo)
    assert torch.allclose(offline_advantages(r, torch.full((4,), 0.25)), r - 0.25)
    assert torch.allclose(
        offline_values(torch.tensor([0, 16]), 16), torch.tensor([0.5 / 17, 16.5 / 17]).double()
    )
    assert astar_po_values(torch.tensor([[0.0, 1.0]]), 1e-3).item() == pytest.approx(1.0, abs=1e-2)
    assert astar_po_values(torch.tensor([[0.0, 1.0]]), 1e3).item() == pytest.approx(0.5, abs=1e-3)
    p = torch.tensor([0.2, 0.5], dtype=torch.float64)
    assert torch.allclose(kl_optimal_values(p, float("inf")), p)
    assert torch.allclose(torch.logit(kl_optimal_values(p, 0.5)), torch.logit(p) + 2.0)
    spo = SPOTracker(torch.tensor([0.5, 0.5]), strength=2.0, discount=1.0)
    a = spo.advantages(torch.tensor([0]), torch.tensor([1.0]))
    assert a.item() == 0.5 and spo.baseline(torch.tensor([0])).item() == pytest.approx(2 / 3)
    # with forgetting: (a, b) = (2, 2) -> (0.5 * 2 + 1, 0.5 * 2 + 0) = (2, 1), mean 2/3
    spo = SPOTracker(torch.tensor([0.5]), strength=4.0, discount=0.5)
    spo.advantages(torch.tensor([0]), torch.tensor([1.0]))
    assert spo.baseline(torch.tensor([0])).item() == pytest.approx(2 / 3)
    # a prompt twice in one call lost all but one reward (its counts are written once), and a
    # prior mean outside [0, 1] gave a negative pseudo-count: both refused now
    spo = SPOTracker(torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="distinct"):
        spo.advantages(torch.tensor([0, 0]), torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match=r"prompts must be \(1,\) indices in \[0, 2\)"):
        spo.advantages(torch.tensor([0, 1]), torch.tensor([1.0]))
    # indices as PromptDriftFilter takes them: a float or an index past the last prompt (an
    # IndexError naming nothing) and a bool mask (it failed inside the update) are refused,
    # and the counts are left as they were
    a0, b0 = spo.a.clone(), spo.b.clone()
    for bad, match in (
        (torch.tensor([0.0, 1.0]), "prompts must be integer indices, got dtype torch.float32"),
        (torch.tensor([True, False]), "prompts must be integer indices, got dtype torch.bool"),
        (torch.tensor([0, 2]), r"prompts must be \(2,\) indices in \[0, 2\)"),
    ):
        with pytest.raises(ValueError, match=match):
            spo.advantages(bad, torch.tensor([1.0, 0.0]))
    assert torch.equal(spo.a, a0) and torch.equal(spo.b, b0)
    with pytest.raises(ValueError, match=r"rewards must have shape \(B,\)"):
        spo.advantages(torch.tensor([[0, 1]]), torch.tensor([[1.0, 0.0]]))
    for bad in (torch.tensor([0.5, 1.5]), torch.tensor([float("nan")]), torch.ones(2, 2) / 2):
        with pytest.raises(ValueError, match="prior_values"):
            SPOTracker(bad)
    with pytest.raises(ValueError, match="eps"):
        grpo_advantages(torch.tensor([[1.0, 0.0]]), eps=-1e-6)
    # a discount of 0 forgets the prior and every reward but the last: refused ((0, 1])
    with pytest.raises(ValueError, match=r"discount must be in \(0, 1\]"):
        SPOTracker(torch.tensor([0.5]), discount=0.0)
    # a NaN reward is named before any estimator uses it (the binary form's range test
    # lets NaN through: NaN < 0 and NaN > 1 are both false)
    nan = torch.tensor([1.0, float("nan"), 0.0])
    for call in (
        lambda: reinforce_pp_advantages(nan),
        lambda: basis_advantages(nan, torch.full((3,), 0.5)),
        lambda: grpo_advantages(nan.reshape(1, 3)),
    ):
        with pytest.raises(ValueError, match="^rewards must be finite$"):
            call()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: basis_advantages(torch.tensor([0.0, 2.0]), torch.tensor([0.5, 0.5])), r"\[0, 1\]"),
        (
            lambda: basis_advantages(torch.tensor([0.0, 1.0]), torch.tensor([0.5, 0.5, 0.5])),
            "shape",
        ),
        (lambda: basis_advantages(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.5])), "inside"),
        (
            lambda: basis_advantages(torch.tensor([0.0, 1.0]), torch.tensor([0.4, 0.5]), form="x"),
            "form",
        ),
        (lambda: grpo_advantages(torch.tensor([1.0, 0.0])), "B x G"),
        (lambda: rloo_advantages(torch.ones(3, 1)), "G >= 2"),
        (lambda: offline_values(torch.tensor([5]), 4), "k must"),
        # before: a NaN count gave a NaN value, and 2.5 of 4 passed as a count
        (lambda: offline_values(torch.tensor([1.0, float("nan")]), 4), "k must lie"),
        (lambda: offline_values(torch.tensor([2.5]), 4), "k must hold counts"),
        # before: a NaN prior value gave a NaN advantage without a word
        (lambda: offline_advantages(torch.ones(2), torch.tensor([0.5, float("nan")])), "(0, 1)"),
        (lambda: kl_optimal_values(torch.tensor([0.5]), -1.0), "beta"),
        (lambda: kl_optimal_values(torch.tensor([0.5]), float("nan")), "beta"),
        (lambda: kl_optimal_values(torch.tensor([1.5]), 1.0), "p0"),
        (lambda: LinearBandit(num_prompts=4, num_answers=1), "num_answers"),
        (lambda: LinearBandit(num_prompts=0), "num_prompts"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_kl_optimal_values_needs_a_floating_p0():
    # an integer p0 cast beta to an integer: beta = 0.5 became 0 (V = 1) without a word
    with pytest.raises(TypeError, match="p0 must be a floating torch.Tensor, got torch.int64"):
        kl_optimal_values(torch.tensor([0, 1]), 0.5)
    with pytest.raises(TypeError, match="p0 must be a floating torch.Tensor, got ndarray"):
        kl_optimal_values(np.array([0.5]), 0.5)


def test_bayesian_loo_baseline_matches_direct_enumeration_and_ignores_r_i():
    g = torch.Generator().manual_seed(3)
    p0 = torch.rand(9, generator=g, dtype=torch.float64) * 0.8 + 0.1
    r = (torch.rand(9, generator=g) < 0.6).double()
    grid = torch.linspace(0, 2, 5, dtype=torch.float64)
    b = bayesian_loo_baseline(r, p0, grid)
    pred = torch.sigmoid(torch.logit(p0)[None] + grid[:, None])  # G x B
    ll = r * pred.log() + (1 - r) * (1 - pred).log()
    for i in range(9):
        w = torch.softmax(ll.sum(1) - ll[:, i], 0)
        assert b[i].item() == pytest.approx(float((w * pred[:, i]).sum()), rel=1e-10)
    r2 = r.clone()
    r2[4] = 1 - r2[4]
    assert abs(float(bayesian_loo_baseline(r2, p0, grid)[4] - b[4])) < 1e-12
    pyro.set_rng_seed(0)
    assert logit_shift_model(p0, tau=0.3).shape == (9,)
    for bad in (-0.3, math.nan):  # both ran the model without the prompt drift, silently
        with pytest.raises(ValueError, match="tau must be finite and >= 0"):
            logit_shift_model(p0, tau=bad)


def _shared_drift_batches(seed, T=60, B=64):
    """Batches of the logit-shift model whose drift c_t rises from 0.5 to 2 over T steps."""
    g = torch.Generator().manual_seed(seed)
    for t in range(T):
        p0 = torch.rand(B, generator=g, dtype=torch.float64) * 0.8 + 0.1
        v = torch.sigmoid(torch.logit(p0) + 0.5 + 1.5 * t / (T - 1))
        yield p0, v, torch.bernoulli(v, generator=g)


def test_drift_filter_is_exact_enumeration_and_ignores_r_i():
    grid = torch.linspace(0, 2, 9, dtype=torch.float64)
    filt = DriftFilter(grid, step_sds=(0.05, 0.3))
    batches = list(_shared_drift_batches(0, T=4, B=12))
    for p0, _, r in batches[:3]:
        filt.loo_baseline(r, p0)
    p0, _, r = batches[3]
    # by hand: joint (sigma, c) prior after one random-walk step, then leave-one-out Bayes
    kern = torch.exp(
        -0.5 * ((grid[:, None] - grid[None]) / torch.tensor([0.05, 0.3])[:, None, None]) ** 2
    )
    prior = torch.einsum("sg,sgh->sh", filt.posterior, kern / kern.sum(-1, keepdim=True))
    pred = torch.sigmoid(torch.logit(p0)[None] + grid[:, None])  # G x B
    ll = r * pred.log() + (1 - r) * (1 - pred).log()
    b = filt.loo_baseline(r, p0, update=False)
    for i in range(12):
        w = prior * torch.exp(ll.sum(1) - ll[:, i])[None]
        # rel 1e-6: torch's Categorical clamps prior probabilities below 2e-16
        assert b[i].item() == pytest.approx(
            float((w.sum(0) * pred[:, i]).sum() / w.sum()), rel=1e-6
        )
    r2 = r.clone()
    r2[5] = 1 - r2[5]
    b2 = filt.loo_baseline(r2, p0, update=False)
    assert abs(float(b2[5] - b[5])) < 1e-12 and float((b2 - b).abs().max()) > 1e-6
    post = prior * torch.exp(ll.sum(1))[None]
    filt.loo_baseline(r, p0)
    assert torch.allclose(filt.posterior, post / post.sum(), rtol=1e-6, atol=1e-12)
    with pytest.raises(ValueError, match="binary"):
        filt.loo_baseline(r * 0.5, p0)
    with pytest.raises(ValueError, match="shape"):
        filt.loo_baseline(r, p0[:5])
    with pytest.raises(ValueError, match="p0"):
        bayesian_loo_baseline(r, torch.ones_like(p0))
    with pytest.raises(ValueError, match="step_sds"):
        DriftFilter(step_sds=(0.1, -1.0))
    with pytest.raises(ValueError, match="c_grid"):
        DriftFilter(c_grid=torch.zeros(1))


def test_drift_filter_tracks_a_moving_drift_better_than_per_batch_bayes():
    filt, err_rw, err_batch = DriftFilter(), [], []
    for t, (p0, v, r) in enumerate(_shared_drift_batches(1)):
        b_rw, b_batch = filt.loo_baseline(r, p0), bayesian_loo_baseline(r, p0)
        if t >= 10:
            err_rw.append(float(((b_rw - v) ** 2).mean()))
            err_batch.append(float(((b_batch - v) ** 2).mean()))
    assert filt.mean_drift() == pytest.approx(2.0, abs=0.3)
    assert np.mean(err_rw) < 0.5 * np.mean(err_batch), (np.mean(err_rw), np.mean(err_batch))


def test_prompt_drift_filter_with_tau_zero_is_the_drift_filter_and_ignores_r_i():
    grid = torch.linspace(0, 2, 9, dtype=torch.float64)
    plain = DriftFilter(grid, step_sds=(0.05, 0.3))
    eta0 = PromptDriftFilter(12, taus=(0.0,), c_grid=grid, step_sds=(0.05, 0.3))
    idx = torch.arange(12)
    for p0, _, r in _shared_drift_batches(0, T=4, B=12):
        b, b0 = plain.loo_baseline(r, p0), eta0.loo_baseline(r, p0, idx)
        assert torch.allclose(b0, b, rtol=1e-6, atol=1e-12)
    assert eta0.mean_drift() == pytest.approx(plain.mean_drift(), rel=1e-6)
    # with prompt-specific drift in play: b_i still ignores r_i, and the others see it
    filt = PromptDriftFilter(12, c_grid=grid, step_sds=(0.05, 0.3))
    for p0, _, r in _shared_drift_batches(1, T=4, B=12):
        filt.loo_baseline(r, p0, idx)
    b = filt.loo_baseline(r, p0, idx, update=False)
    r2 = r.clone()
    r2[5] = 1 - r2[5]
    b2 = filt.loo_baseline(r2, p0, idx, update=False)
    assert abs(float(b2[5] - b[5])) < 1e-12 and float((b2 - b).abs().max()) > 1e-6
    with pytest.raises(ValueError, match="prompts"):
        filt.loo_baseline(r, p0)
    with pytest.raises(ValueError, match="prompts"):
        filt.loo_baseline(r, p0, idx + 1)  # index 12 is out of range
    with pytest.raises(ValueError, match="integer"):
        filt.loo_baseline(r, p0, idx + 0.5)  # not truncated silently
    with pytest.raises(ValueError, match="prompts must be integer indices, got dtype torch.bool"):
        filt.loo_baseline(r, p0, idx % 2 == 0)  # a mask is not a list of indices
    # an offline value a hair below 1 makes sigmoid(logit p0 + c) round to 1 at large c; a
    # miss there has likelihood 0, and without the clamp (-inf) - (-inf) made its baseline NaN
    edge = PromptDriftFilter(3)
    p_edge = torch.tensor([1 - 1e-16, 0.5, 0.5], dtype=torch.float64)
    b = edge.loo_baseline(torch.tensor([0.0, 1.0, 1.0]), p_edge, torch.arange(3))
    assert bool(torch.isfinite(b).all()) and bool(torch.isfinite(edge.posterior).all())
    with pytest.raises(ValueError, match="taus"):
        PromptDriftFilter(12, taus=(0.0, -0.5))
    with pytest.raises(ValueError, match="eta_grid"):
        PromptDriftFilter(12, eta_grid=torch.tensor([-1.0, 1.0]))
    for grid in ([0.0], [0.0, float("nan")]):  # one point is no grid; a NaN poisons q
        with pytest.raises(ValueError, match="eta_grid must be a vector of >= 2 finite values"):
            PromptDriftFilter(12, eta_grid=torch.tensor(grid))
    with pytest.raises(ValueError, match="num_prompts"):
        PromptDriftFilter(0)


def test_prompt_drift_filter_counts_a_prompt_drawn_twice_in_one_batch_twice():
    filt = PromptDriftFilter(4, taus=(1.0,))
    p0 = torch.full((4,), 0.5, dtype=torch.float64)
    filt.loo_baseline(torch.tensor([1.0, 1.0, 1.0, 0.0]), p0, torch.tensor([0, 0, 1, 2]))
    q = torch.softmax(filt.log_q[:, 0], -1)  # N x E posteriors of eta
    mean = (q * filt.eta_grid).sum(-1)
    assert torch.allclose(q.sum(-1), torch.ones(4, dtype=torch.float64))
    # prompt 0 (two successes) moved further up than prompt 1 (one); 3 was not drawn
    assert mean[0] > mean[1] > 0 > mean[2] and abs(float(mean[3])) < 1e-12
    # log_q holds normalised log posteriors (renormalised after each update, so they do not
    # drift towards -inf over a long run)
    assert torch.allclose(torch.logsumexp(filt.log_q, -1), torch.zeros(4, 1, dtype=torch.float64))


def test_prompt_drift_filter_is_the_docstring_formula_by_enumeration():
    """b_i, the (tau, sigma, c) posterior and the eta messages, each prompt by hand."""
    grid = torch.linspace(0, 2, 5, dtype=torch.float64)
    taus, sds = (0.0, 0.5, 1.0), (0.05, 0.3)
    filt = PromptDriftFilter(8, taus=taus, c_grid=grid, step_sds=sds)
    idx = torch.tensor([0, 1, 2, 3, 4, 5])
    for p0, _, r in _shared_drift_batches(3, T=3, B=6):
        filt.loo_baseline(r, p0, idx)
    p0, _, r = next(_shared_drift_batches(4, T=2, B=6))
    idx = torch.tensor([2, 6, 0, 7, 2, 5])  # prompt 2 twice; 6 and 7 not seen before
    log_q0 = filt.log_q.clone()
    prior = filt.predictive_prior()  # T S G
    q = torch.softmax(log_q0[idx], -1)  # B T E
    succ = torch.sigmoid(
        torch.logit(p0)[None, :, None] + grid[:, None, None] + filt.eta_grid
    )  # G B E
    P = torch.einsum("bte,gbe->tgb", q, succ)  # T G B
    lik = torch.where(r.bool(), P, 1 - P)  # T G B
    b = filt.loo_baseline(r, p0, idx)
    msgs = torch.zeros(6, len(taus), filt.eta_grid.numel(), dtype=torch.float64)
    for i in range(6):
        others = torch.cat([lik[..., :i], lik[..., i + 1 :]], -1).prod(-1)  # T G
        w = prior * others[:, None]  # T S G
        assert b[i].item() == pytest.approx(
            float((w * P[:, None, :, i]).sum() / w.sum()), rel=1e-10
        )
        w_c = w.sum(1) / w.sum((1, 2))[:, None]  # T G: c given r_{-i} and tau
        p_ri = succ[:, i] if r[i] else 1 - succ[:, i]  # G E
        msgs[i] = torch.einsum("tg,ge->te", w_c, p_ri)
    post = prior * lik.prod(-1)[:, None]
    assert torch.allclose(filt.posterior, post / post.sum(), rtol=1e-10, atol=1e-15)
    for n in range(8):
        mine = (idx == n).nonzero().flatten()
        q_n = torch.softmax(log_q0[n], -1) * msgs[mine].prod(0)
        assert torch.allclose(
            torch.softmax(filt.log_q[n], -1), q_n / q_n.sum(-1, keepdim=True), atol=1e-12
        ), n


def _prompt_drift_batches(seed, tau, N=48, T=80, B=24):
    """Batches of the spec's model with a static prompt drift eta_i ~ N(0, tau^2) on N recurring
    prompts and a shared drift rising from 0.3 to 1.3: (prompts, p0, true values, rewards)."""
    g = torch.Generator().manual_seed(seed)
    p0_all = torch.rand(N, generator=g, dtype=torch.float64) * 0.8 + 0.1
    eta = tau * torch.randn(N, generator=g, dtype=torch.float64)
    for t in range(T):
        idx = torch.randperm(N, generator=g)[:B]
        v = torch.sigmoid(torch.logit(p0_all[idx]) + 0.3 + t / (T - 1) + eta[idx])
        yield idx, p0_all[idx], v, torch.bernoulli(v, generator=g)


@pytest.mark.parametrize("tau", [0.0, 1.0])
def test_prompt_drift_filter_learns_prompt_drift_only_when_there_is_some(tau):
    plain, filt = DriftFilter(), PromptDriftFilter(48)
    err_plain, err_eta = [], []
    for t, (idx, p0, v, r) in enumerate(_prompt_drift_batches(2, tau)):
        b_plain, b_eta = plain.loo_baseline(r, p0), filt.loo_baseline(r, p0, idx)
        if t >= 20:  # after each prompt has been seen about ten times
            err_plain.append(float(((b_plain - v) ** 2).mean()))
            err_eta.append(float(((b_eta - v) ** 2).mean()))
    w = filt.tau_weights()  # over taus (0, 0.25, 0.5, 1)
    if tau == 0:  # nothing prompt-specific to learn: no harm, small taus favoured
        assert np.mean(err_eta) < 1.1 * np.mean(err_plain), (err_eta, err_plain)
        assert float(w[0]) > 0.5, w
    else:  # the filter learns each prompt's drift from its own past rewards
        assert np.mean(err_eta) < 0.6 * np.mean(err_plain), (err_eta, err_plain)
        assert float(w[0]) < 0.01 and float(w[2:].sum()) > 0.9, w


def test_bandit_value_mse_ordering_small_scale():
    bandit = LinearBandit(num_prompts=1024, seed=0)
    mse = {
        e: np.mean(
            run_bandit_rl(bandit, e, steps=100, batch_size=128, K=32, lr=0.005, seed=1).value_mse
        )
        for e in ["basis", "bayes-basis", "bayes-basis-rw", "grpo", "offline", "reinforce++"]
    }
    assert mse["basis"] < 0.5 * mse["reinforce++"] and mse["basis"] < 0.5 * mse["offline"], mse
    assert mse["basis"] < mse["grpo"], mse  # one rollout vs eight
    # the random-walk filter carries the drift across steps: below the per-batch posterior
    assert mse["bayes-basis-rw"] < 0.97 * mse["bayes-basis"] < 0.97 * mse["grpo"], mse


def test_batch_wide_floor_recovers_a_shared_shift_and_sees_prompt_specific_drift():
    g = torch.Generator().manual_seed(0)
    p0 = torch.rand(256, generator=g, dtype=torch.float64) * 0.9 + 0.05
    # a shared logit shift and scale: recovered, floor zero up to the grid
    v = 0.8 * torch.sigmoid(torch.logit(p0) - 1.3)
    floor, a, c = batch_wide_floor(v, p0)
    assert floor < 1e-10 and abs(a - 0.8) < 1e-6 and abs(c + 1.3) < 1e-6
    # the default grid steps by 0.01: a shift between tenths is found too
    floor, a, c = batch_wide_floor(0.8 * torch.sigmoid(torch.logit(p0) + 0.37), p0)
    assert floor < 1e-10 and abs(a - 0.8) < 1e-6 and abs(c - 0.37) < 1e-6
    # prompt-specific drift: the floor is the residual around the best shared fit, and it
    # equals the MSE of the fitted member; it never exceeds the offline values' MSE (a=1, c=0)
    eta = torch.randn(256, generator=g, dtype=torch.float64)
    floors = []
    for tau in (0.25, 1.0, 2.0):
        v = torch.sigmoid(torch.logit(p0) + 0.5 + tau * eta)
        floor, a, c = batch_wide_floor(v, p0)
        fit = a * torch.sigmoid(torch.logit(p0) + c)
        assert math.isclose(floor, float(((fit - v) ** 2).mean()), rel_tol=1e-12)
        assert floor <= float(((p0 - v) ** 2).mean())
        floors.append(floor)
    assert floors[0] < floors[1] < floors[2], floors
    # noise is subtracted
    f0, _, _ = batch_wide_floor(v, p0)
    f1, _, _ = batch_wide_floor(v, p0, noise=torch.full((256,), 0.01, dtype=torch.float64))
    assert math.isclose(f0 - f1, 0.01, rel_tol=1e-9)
    with pytest.raises(ValueError, match="prior_values"):
        batch_wide_floor(v, torch.ones(256))
    with pytest.raises(ValueError, match="shape"):
        batch_wide_floor(v, p0[:10])
    with pytest.raises(ValueError, match="shifts"):
        batch_wide_floor(v, p0, shifts=torch.tensor([]))
    for bad in (float("inf"), float("nan")):  # an inf shift put a NaN or 1 in the grid
        with pytest.raises(ValueError, match="shifts must be .* finite"):
            batch_wide_floor(v, p0, shifts=torch.tensor([0.0, bad]))
    with pytest.raises(ValueError, match="noise"):
        batch_wide_floor(v, p0, noise=torch.ones(3))


def test_bandit_loop_records_the_batch_wide_floor():
    bandit = LinearBandit(num_prompts=256, seed=0)
    off = run_bandit_rl(bandit, "offline", steps=20, batch_size=64, K=16, lr=0.01, seed=0)
    assert len(off.floor_mse) == 20
    assert all(f <= v + 1e-12 for f, v in zip(off.floor_mse, off.value_mse))


def test_bandit_loop_details_by_hand(monkeypatch):
    """The bandit loop's records by hand: the floor of each step's batch (recomputed from the
    exact values of the same prompts), SPO's value is the tracker's baseline before its
    update (with SPOTracker's defaults), GP-BASIS sees each prompt's mean answer features
    and fits for 20 steps; a batch of one prompt is refused."""
    from probml.inference import basis_rl

    bandit = LinearBandit(num_prompts=64, seed=1)
    seen, real_floor = [], basis_rl.batch_wide_floor
    monkeypatch.setattr(
        basis_rl, "batch_wide_floor", lambda v, p0: seen.append((v, p0)) or real_floor(v, p0)
    )
    out = run_bandit_rl(bandit, "offline", steps=3, batch_size=16, lr=0.05, seed=2)
    assert [real_floor(v, p0)[0] for v, p0 in seen] == out.floor_mse
    assert all(not math.isclose(f, 0.0, abs_tol=1e-12) for f in out.floor_mse)
    trackers, calls = [], []
    real_make, real_gp = basis_rl.make_tracker, basis_rl.gp_loo_baseline
    monkeypatch.setattr(
        basis_rl, "make_tracker", lambda e, p0: trackers.append(real_make(e, p0)) or trackers[-1]
    )
    monkeypatch.setattr(
        basis_rl,
        "gp_loo_baseline",
        lambda r, p0, f, **k: calls.append((f, k)) or real_gp(r, p0, f, **k),
    )
    spo = run_bandit_rl(bandit, "spo", steps=1, batch_size=16, lr=0.05, seed=3)
    t = trackers[0]
    assert isinstance(t, SPOTracker) and t.discount == SPOTracker(torch.ones(1) / 2).discount
    # replay the step: the recorded value is the baseline the advantages were taken against
    g = torch.Generator().manual_seed(3)
    v_ref = bandit.values(bandit.reference_theta)
    k = torch.binomial(torch.full_like(v_ref, 16.0), v_ref, generator=g)
    prompts = torch.randperm(64, generator=g)[:16]
    _, r = bandit.sample(bandit.reference_theta, prompts, 1, g)
    before = SPOTracker(offline_values(k, 16)).baseline(prompts)
    v_true = bandit.values(bandit.reference_theta, prompts)
    assert spo.value_mse[0] == pytest.approx(float(((before - v_true) ** 2).mean()), rel=1e-12)
    run_bandit_rl(bandit, "gp-basis", steps=1, batch_size=16, lr=0.05, seed=4)
    feats, kw = calls[0]
    g = torch.Generator().manual_seed(4)
    torch.binomial(torch.full_like(v_ref, 16.0), v_ref, generator=g)
    prompts = torch.randperm(64, generator=g)[:16]
    assert torch.equal(feats, bandit.features[prompts].mean(1)) and kw == {"fit_steps": 20}
    with pytest.raises(ValueError, match="batch_size"):
        run_bandit_rl(bandit, "basis", steps=1, batch_size=1)


def test_bandit_loop_side_by_side():
    bandit = LinearBandit(num_prompts=256, seed=0)
    kw = dict(steps=6, batch_size=32, K=16, lr=0.01, seed=2)
    g8 = run_bandit_rl(bandit, "grpo", **kw)
    # GRPO draws 8 rollouts anyway: beside it the driver's run is unchanged
    both = run_bandit_rl(bandit, "grpo", side_by_side=("offline", "bayes-basis-rw", "grpo"), **kw)
    assert both.value_mse == g8.value_mse and both.mean_reward == g8.mean_reward
    assert both.rollouts == g8.rollouts and set(both.side_value_mse) == {
        "offline",
        "bayes-basis-rw",
    }
    # the offline values are one member of the batch-wide family whose best member is the floor
    assert all(f <= v + 1e-12 for f, v in zip(both.floor_mse, both.side_value_mse["offline"]))
    # side estimators keep their own state and do not interact: the filter's errors are the
    # same with or without the offline values beside it
    other = run_bandit_rl(bandit, "grpo", side_by_side=("bayes-basis-rw",), **kw)
    assert other.side_value_mse["bayes-basis-rw"] == both.side_value_mse["bayes-basis-rw"]
    # a single-rollout driver beside a group estimator: 8 rollouts drawn, the driver uses one
    one = run_bandit_rl(bandit, "basis", side_by_side=("grpo",), **kw)
    assert one.rollouts == [256] * 6 and len(one.side_value_mse["grpo"]) == 6
    # and with no group estimator beside it, a single-rollout driver is its own run
    solo = run_bandit_rl(bandit, "basis", **kw)
    alone = run_bandit_rl(bandit, "basis", side_by_side=("offline",), **kw)
    assert alone.value_mse == solo.value_mse and alone.mean_reward == solo.mean_reward
    # a temperature is logged by the BASIS estimators only, one per step
    assert len(solo.chosen_beta) == 6 and g8.chosen_beta == []
    # GP-BASIS beside a driver that is not: the loop builds the prompt features for it
    gp = run_bandit_rl(bandit, "basis", side_by_side=("gp-basis",), **kw)
    assert gp.value_mse == solo.value_mse and len(gp.side_value_mse["gp-basis"]) == 6
    assert np.isfinite(gp.side_value_mse["gp-basis"]).all()
    with pytest.raises(ValueError, match="side_by_side"):
        run_bandit_rl(bandit, "basis", side_by_side="grpo", **kw)
    with pytest.raises(ValueError, match="estimator"):
        run_bandit_rl(bandit, "basis", side_by_side=("ppo",), **kw)


def test_bandit_reference_policy_option():
    base = LinearBandit(num_prompts=512, seed=3)
    peaked = LinearBandit(num_prompts=512, seed=3, reference_scale=1.0)
    # the default world is unchanged by the option: same features and answers, uniform reference
    assert torch.equal(base.features, peaked.features) and torch.equal(base.correct, peaked.correct)
    assert torch.equal(base.reference_theta, torch.zeros(16, dtype=torch.float64))
    assert torch.allclose(base.values(base.reference_theta), base.correct.mean(1))
    # a peaked reference unrelated to correctness spreads the values towards 0 and 1
    v0, v1 = base.values(base.reference_theta), peaked.values(peaked.reference_theta)
    assert float(v1.var()) > 2 * float(v0.var())
    # the RL loop starts from the reference: with lr = 0 the mean reward stays at its value
    res = run_bandit_rl(peaked, "offline", steps=2, batch_size=32, lr=0.0, seed=0)
    assert res.mean_reward[-1] == pytest.approx(float(v1.mean()), abs=1e-12)
    with pytest.raises(ValueError, match="reference_scale"):
        LinearBandit(num_prompts=8, reference_scale=-1.0)


def _feature_drift_batch(seed, B=128, K=16, tau=2.0):
    from probml.inference.advantage import offline_values

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 4, generator=g, dtype=torch.float64)
    w = torch.randn(4, generator=g, dtype=torch.float64)
    eta = tau * math.sqrt(2) * torch.cos(x @ w + 1.0)
    p = torch.rand(B, generator=g, dtype=torch.float64) * 0.8 + 0.1
    k = torch.binomial(torch.full((B,), float(K), dtype=torch.float64), p, generator=g)
    v = torch.sigmoid(torch.logit(p) + 1.0 + eta)
    return x, offline_values(k, K), v, torch.bernoulli(v, generator=g)


def test_gp_loo_baseline_is_exact_leave_one_out_and_ignores_r_i():
    from probml.models.rollouts import gp_loo_baseline

    x, p0, v, r = _feature_drift_batch(0, B=40)
    base, hp = gp_loo_baseline(r, p0, x, fit_steps=30)
    # brute force: the GP posterior mean at x_i from the other 39 points, same hyperparameters
    e = r - p0

    def k(a, b):
        d2 = ((a[:, None] - b[None]) ** 2).sum(-1)
        return hp["outputscale"] * torch.exp(-0.5 * d2 / hp["lengthscale"] ** 2)

    for i in (0, 7, 39):
        keep = torch.arange(40) != i
        Kmm = k(x[keep], x[keep]) + hp["noise"] * torch.eye(39, dtype=torch.float64)
        mu = hp["mean"] + k(x[i : i + 1], x[keep]) @ torch.linalg.solve(Kmm, e[keep] - hp["mean"])
        assert float((p0[i] + mu).clamp(0, 1)) == pytest.approx(float(base[i]), abs=1e-8)
    # with fixed hyperparameters the baseline of i is a function of the other rewards only
    flipped = r.clone()
    flipped[5] = 1 - flipped[5]
    b2, _ = gp_loo_baseline(flipped, p0, x, hyperparameters=hp)
    assert float(b2[5]) == pytest.approx(float(base[5]), abs=1e-7)  # softplus round trip
    assert float((b2 - base).abs().max()) > 1e-4  # the others do see r_5
    with pytest.raises(ValueError, match="features"):
        gp_loo_baseline(r, p0, x[:5])
    with pytest.raises(ValueError, match="at least 3 prompts"):
        gp_loo_baseline(r[:2], p0[:2], x[:2])
    with pytest.raises(TypeError, match="fit_steps"):
        gp_loo_baseline(r, p0, x, fit_steps=2.5)
    with pytest.raises(ValueError, match="lr"):
        gp_loo_baseline(r, p0, x, lr=0.0)
    # these went into the GP without a word: a reward of 0.5, an offline value of 0 or 1, a
    # NaN feature; and a misspelt or negative hyperparameter failed inside gpytorch
    with pytest.raises(ValueError, match="rewards must be binary"):
        gp_loo_baseline(torch.full_like(r, 0.5), p0, x)
    with pytest.raises(ValueError, match=r"p0 must lie strictly inside \(0, 1\)"):
        gp_loo_baseline(r, torch.zeros_like(p0), x)
    bad_x = x.clone()
    bad_x[3, 1] = float("nan")
    with pytest.raises(ValueError, match="features must be finite"):
        gp_loo_baseline(r, p0, bad_x)
    with pytest.raises(ValueError, match="hyperparameters must be a dict with keys"):
        gp_loo_baseline(r, p0, x, hyperparameters={**hp, "noise_var": 0.1})
    with pytest.raises(ValueError, match=r"hyperparameters\['noise'\] must be finite and > 0"):
        gp_loo_baseline(r, p0, x, hyperparameters={**hp, "noise": -0.1})
    with pytest.raises(ValueError, match=r"hyperparameters\['mean'\] must be finite"):
        gp_loo_baseline(r, p0, x, hyperparameters={**hp, "mean": float("nan")})
    # no fitting step: the documented starting values (mean 0, outputscale 0.01, ...)
    _, start = gp_loo_baseline(r, p0, x, fit_steps=0)
    want = {"mean": 0.0, "outputscale": 0.01, "lengthscale": 1.0, "noise": 0.2}
    assert start == pytest.approx(want, rel=1e-6)


def test_gp_basis_beats_basis_under_feature_correlated_drift():
    from probml.models.rollouts import gp_loo_baseline

    mse_basis, mse_gp = [], []
    for s in range(8):
        x, p0, v, r = _feature_drift_batch(s)
        _, d = basis_advantages(r, p0)
        b, _ = gp_loo_baseline(r, p0, x)
        mse_basis.append(float(((d["baseline"] - v) ** 2).mean()))
        mse_gp.append(float(((b - v) ** 2).mean()))
    assert np.mean(mse_gp) < 0.8 * np.mean(mse_basis), (np.mean(mse_gp), np.mean(mse_basis))


def test_gp_basis_runs_in_the_bandit_loop_and_needs_features():
    from probml.inference.basis_rl import advantages_and_values

    res = run_bandit_rl(LinearBandit(num_prompts=256, seed=0), "gp-basis", steps=3, batch_size=32)
    assert len(res.value_mse) == 3 and all(np.isfinite(res.value_mse))
    r = torch.tensor([[1.0], [0.0], [1.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="features"):
        advantages_and_values("gp-basis", r, torch.full((3,), 0.5), torch.arange(3))
    # a mistyped BASIS name: it used to run the BLUE form without a word
    with pytest.raises(ValueError, match="^estimator must be one of"):
        advantages_and_values("basis-calibratd", r, torch.full((3,), 0.5), torch.arange(3))


def test_drift_prior_is_checked_by_name():
    # before: a c_probs of the wrong length failed in a broadcast, a c_grid shorter than
    # c_probs with an IndexError, a NaN in c_grid deep in Pyro's Bernoulli
    from probml.models.rollouts import bayesian_loo_baseline

    r = torch.tensor([1.0, 0.0, 1.0, 0.0])
    p0 = torch.tensor([0.3, 0.5, 0.6, 0.2], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"c_probs must have one entry per c_grid value \(17\)"):
        bayesian_loo_baseline(r, p0, c_probs=torch.ones(3) / 3)
    with pytest.raises(ValueError, match=r"c_probs must have one entry per c_grid value \(5\)"):
        bayesian_loo_baseline(r, p0, c_grid=torch.linspace(0, 4, 5), c_probs=torch.ones(17))
    with pytest.raises(ValueError, match="c_probs must be non-negative"):
        bayesian_loo_baseline(r, p0, c_probs=torch.tensor([-0.1] + [1.1 / 16] * 16))
    with pytest.raises(ValueError, match="c_grid must be finite"):
        bayesian_loo_baseline(r, p0, c_grid=torch.tensor([0.0, float("nan")]))
    # legal: unnormalised weights (normalised, as by Pyro's Categorical) and a one-point grid
    a = bayesian_loo_baseline(r, p0, c_probs=2 * torch.ones(17))
    assert torch.allclose(a, bayesian_loo_baseline(r, p0))
    one = bayesian_loo_baseline(r, p0, c_grid=[1.0])
    assert torch.allclose(one, torch.sigmoid(torch.logit(p0) + 1.0))


def test_linearised_basis_baseline_by_hand():
    """form='linearised' with one temperature (beta = inf, so V = p0):
    b_i = V_i + s_i^2 sum_{j != i}(r_j - V_j) / sum_{j != i} s_j^2, s^2 = V (1 - V)."""
    p0 = torch.tensor([0.2, 0.5, 0.7, 0.4], dtype=torch.float64)
    r = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    adv, diag = basis_advantages(r, p0, beta_grid=(math.inf,), form="linearised")
    s2 = p0 * (1 - p0)
    want = torch.stack(
        [p0[i] + s2[i] * ((r - p0).sum() - (r - p0)[i]) / (s2.sum() - s2[i]) for i in range(4)]
    )
    assert torch.allclose(diag["baseline"], want.clamp(0, 1), atol=1e-12)
    assert torch.allclose(adv, r - diag["baseline"], atol=1e-12)


def test_prompt_drift_filter_starts_from_the_discretised_eta_prior():
    # every prompt starts at N(0, tau^2) on the eta grid -4 .. 4 (step 0.2 resolves even
    # tau = 0.25; the truncation at 4 tau costs 0.07% of the variance at tau = 1); tau = 0 is
    # a point mass at 0
    f = PromptDriftFilter(3, taus=(0.0, 0.25, 0.5, 1.0))
    q = torch.softmax(f.log_q[2], -1)  # T x E
    var = (q * f.eta_grid**2).sum(-1)
    assert torch.allclose(var, torch.tensor([0.0, 0.0625, 0.25, 1.0], dtype=torch.float64),
                          rtol=1e-3, atol=1e-9)  # fmt: skip
    assert torch.allclose((q * f.eta_grid).sum(-1), torch.zeros(4, dtype=torch.float64))


def test_the_loops_dispatch_to_the_documented_estimator_forms():
    """What each loop hands an estimator: single-rollout estimators the first rollout of each
    prompt, group ones the first ``group_size``; side-by-side names without the driver and
    without repeats. The dispatch's own choices: ``basis-inactive-offline`` is the BLUE form
    with the offline fallback, the reported beta is the batch median, and REINFORCE++'s
    value is the batch mean reward."""
    from probml.inference.basis_rl import (
        advantages_and_values,
        estimate_on_first,
        side_estimators,
    )

    g = torch.Generator().manual_seed(0)
    rewards = (torch.rand(40, 8, generator=g) < 0.5).double()
    p0 = 0.1 + 0.8 * torch.rand(40, generator=g, dtype=torch.float64)
    p0[:5] = 0.99  # outside the active set (within eps of 1): zero or offline fallback
    prompts = torch.arange(40)
    a1, v1, _ = estimate_on_first("basis", None, rewards, p0, prompts, None, 4)
    a_ref, d_ref = basis_advantages(rewards[:, 0], p0)
    assert torch.allclose(a1[:, 0], a_ref) and torch.allclose(v1, d_ref["baseline"])
    ag, vg, _ = estimate_on_first("grpo", None, rewards, p0, prompts, None, 4)
    assert torch.allclose(ag, grpo_advantages(rewards[:, :4]))
    assert torch.allclose(vg, rewards[:, :4].mean(1))
    ar, vr, _ = estimate_on_first("rloo", None, rewards, p0, prompts, None, 4)
    assert torch.allclose(ar, rloo_advantages(rewards[:, :4]))
    assert torch.allclose(vr, rewards[:, :4].mean(1))  # the group mean, as GRPO's
    assert side_estimators("basis", ["offline", "basis", "grpo", "offline"]) == ("offline", "grpo")
    r = rewards[:, :1]
    a, v, beta = advantages_and_values("basis-inactive-offline", r, p0, prompts)
    a_off, d_off = basis_advantages(r[:, 0], p0, form="blue", inactive="offline")
    assert torch.allclose(a[:, 0], a_off) and torch.allclose(v, d_off["baseline"])
    assert not torch.allclose(a_off, basis_advantages(r[:, 0], p0, inactive="zero")[0])
    # eight prompts, whose leave-one-out temperatures differ (0.1 five times, 0.35, 0.5, 10)
    g = torch.Generator().manual_seed(0)
    r8 = (torch.rand(8, generator=g) < 0.5).double()
    p8 = 0.1 + 0.8 * torch.rand(8, generator=g, dtype=torch.float64)
    betas = basis_advantages(r8, p8)[1]["beta"]
    _, _, beta = advantages_and_values("basis", r8[:, None], p8, torch.arange(8))
    assert beta == pytest.approx(float(betas.median())) and beta < float(betas.mean()) - 1
    # no prompt calibrated (all inactive, a fallback): no temperature to report (it said grid[0])
    _, _, beta = advantages_and_values("basis", r8[:, None] * 0, p8 * 0 + 0.005, torch.arange(8))
    assert math.isnan(beta)
    _, v, _ = advantages_and_values("reinforce++", r, p0, prompts)
    assert torch.allclose(v, r[:, 0].mean().expand(40))
    # the offline estimator's value is the offline p0 itself; the two named BASIS forms run
    # their own form, not the BLUE one (their advantages differ from BLUE's on this batch)
    _, v, _ = advantages_and_values("offline", r, p0, prompts)
    assert torch.equal(v, p0)
    blue = basis_advantages(r[:, 0], p0)[0]
    for form in ("linearised", "calibrated"):
        a, v, _ = advantages_and_values(f"basis-{form}", r, p0, prompts)
        a_ref, d_ref = basis_advantages(r[:, 0], p0, form=form)
        assert torch.allclose(a[:, 0], a_ref) and torch.allclose(v, d_ref["baseline"])
        assert not torch.allclose(a_ref, blue)


def test_bandit_loop_draws_only_the_rollouts_its_estimators_need_and_checks_lr():
    """A single-rollout estimator draws one rollout per prompt whatever ``group_size`` says
    (the group size matters only when a group estimator runs), and a negative ``lr`` (a
    descent on the expected reward) is refused; ``lr = 0`` keeps the reference policy."""
    bandit = LinearBandit(num_prompts=64, seed=0)
    one = run_bandit_rl(bandit, "basis", steps=3, batch_size=16, group_size=8, K=4)
    assert one.rollouts == [16] * 3
    both = run_bandit_rl(bandit, "basis", steps=3, batch_size=16, group_size=8, K=4,
                         side_by_side=("grpo",))  # fmt: skip
    assert both.rollouts == [16 * 8] * 3
    with pytest.raises(ValueError, match="lr must be finite and >= 0"):
        run_bandit_rl(bandit, "basis", steps=1, batch_size=16, lr=-0.1)
    still = run_bandit_rl(bandit, "basis", steps=3, batch_size=16, K=4, lr=0.0)
    assert len(set(still.mean_reward)) == 1


def test_bandit_group_policy_gradient_learns_from_every_rollout_of_the_group():
    """GRPO on the bandit raises the expected reward; paired with one rollout's score
    function, the group's advantages (which sum to zero) would leave theta where it is."""
    bandit = LinearBandit(num_prompts=256, seed=0)
    res = run_bandit_rl(bandit, "grpo", steps=30, batch_size=32, K=16, lr=0.05, seed=0)
    assert res.mean_reward[-1] > res.mean_reward[0] + 0.02, res.mean_reward[::10]


@pytest.mark.parametrize("form", ["blue", "linearised", "calibrated"])
def test_inactive_prompts_take_no_part_in_the_active_baselines(form):
    """Documented: prompts whose p0 lies within eps of 0 or 1 (p0 = eps included) are outside
    the active set and take no part in the calibration or the leave-one-out sums, so flipping
    their rewards leaves every active prompt's baseline unchanged."""
    g = torch.Generator().manual_seed(2)
    p0 = torch.rand(10, generator=g, dtype=torch.float64) * 0.8 + 0.1
    p0[[2, 7]] = torch.tensor([0.02, 0.01], dtype=torch.float64)  # eps exactly, and below
    r = (torch.rand(10, generator=g, dtype=torch.float64) < p0).double()
    _, d = basis_advantages(r, p0, eps=0.02, form=form)
    assert d["active"].tolist() == [i not in (2, 7) for i in range(10)]
    for flip in ([2], [7], [2, 7]):
        r2 = r.clone()
        r2[flip] = 1 - r2[flip]
        _, d2 = basis_advantages(r2, p0, eps=0.02, form=form)
        assert torch.allclose(d2["baseline"], d["baseline"], atol=1e-12), flip
    with pytest.raises(ValueError, match="eps"):
        basis_advantages(r, p0, eps=0.5)


def test_output_dtypes_and_a_single_prompt_batch():
    """Advantages come back in the rewards' floating dtype (float64 for integer rewards);
    REINFORCE++ on one prompt has no spread to whiten by: its advantage is 0, not NaN."""
    p0 = torch.tensor([0.3, 0.6, 0.5], dtype=torch.float64)
    for r, dtype in (
        (torch.tensor([1.0, 0.0, 1.0]), torch.float32),
        (torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64), torch.float64),
        (torch.tensor([1, 0, 1]), torch.float64),
    ):
        adv, _ = basis_advantages(r, p0)
        assert adv.dtype == dtype
    one = reinforce_pp_advantages(torch.tensor([1.0]))
    assert one.tolist() == [0.0]


def test_filters_at_extreme_offline_values_and_the_models_eta_scale():
    """The prompt-drift filter clamps its success probabilities only at 1e-15 from 0 and 1:
    with tau = 0 it still equals the drift filter for offline values of 1e-6 and 1 - 1e-6
    (whose baselines are of that order, not of a coarser floor). The Pyro model's
    prompt-specific drift is N(0, tau^2)."""
    from pyro import poutine

    grid = torch.linspace(0, 1, 5, dtype=torch.float64)
    plain = DriftFilter(grid, step_sds=(0.1,))
    eta0 = PromptDriftFilter(4, taus=(0.0,), c_grid=grid, step_sds=(0.1,))
    p0 = torch.tensor([1e-6, 0.4, 0.6, 1 - 1e-6], dtype=torch.float64)
    r = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    b, b0 = plain.loo_baseline(r, p0), eta0.loo_baseline(r, p0, torch.arange(4))
    assert torch.allclose(b0, b, rtol=1e-9, atol=1e-15)
    assert float(b0[0]) < 1e-5 and float(1 - b0[3]) < 1e-5
    tr = poutine.trace(logit_shift_model).get_trace(p0, None, None, None, 0.3)
    eta = tr.nodes["eta"]["fn"]
    assert torch.equal(eta.loc, torch.zeros(4, dtype=torch.float64)) and bool(
        (eta.scale == 0.3).all()
    )


def test_drift_models_refuse_degenerate_priors_and_keep_their_documented_grids():
    """An all-zero prior over the drift grid, a zero random-walk scale (a 0/0 kernel), an
    infinite tau (a flat prior over the eta grid, not a scale) and an infinite reference
    scale (NaN policies) are refused by name; the defaults are the documented grids."""
    p0 = torch.full((4,), 0.5, dtype=torch.float64)
    r = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    grid = torch.linspace(0, 2, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="c_probs must be non-negative and not all zero"):
        bayesian_loo_baseline(r, p0, grid, torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="step_sds must be a non-empty list of positive"):
        DriftFilter(step_sds=(0.1, 0.0))
    with pytest.raises(ValueError, match="taus must be a non-empty list of finite values"):
        PromptDriftFilter(4, taus=(0.5, math.inf))
    with pytest.raises(ValueError, match="reference_scale must be finite"):
        LinearBandit(num_prompts=8, reference_scale=math.inf)
    filt = DriftFilter()  # "0 .. 4 in steps of 0.05", four random-walk scales
    assert torch.allclose(filt.c_grid, 0.05 * torch.arange(81, dtype=torch.float64))
    assert filt.step_sds.tolist() == [0.01, 0.03, 0.1, 0.3]


def test_bandit_samples_with_replacement_at_the_policy_probabilities():
    """More answers than candidates are drawn with replacement, at ``pi_theta(a | i)``."""
    bandit = LinearBandit(num_prompts=3, num_answers=4, dim=3, seed=2)
    theta = torch.tensor([0.5, -1.0, 0.3], dtype=torch.float64)
    prompts = torch.arange(3)
    a, rew = bandit.sample(theta, prompts, 20_000, torch.Generator().manual_seed(0))
    assert a.shape == rew.shape == (3, 20_000)
    freq = torch.nn.functional.one_hot(a, 4).double().mean(1)  # 3 x 4
    assert float((freq - bandit.policy(theta, prompts)).abs().max()) < 0.015
    assert torch.equal(rew, bandit.correct[prompts].gather(1, a))
