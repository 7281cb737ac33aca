import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from probml.datasets.gaussian import load_covariance_dataset, make_sparse_precision, sample_gaussian
from probml.inference.maxent import (
    CompletionError,
    exact_completion,
    maxent_completion,
    relaxed_completion,
)
from probml.inference.pace import (
    PACEGGM,
    GaussianMechanismCovariance,
    PerEntryGaussianCovariance,
    covariance_posterior,
    entry_sensitivities,
)
from probml.metrics import gaussian_kl, relative_error


def _support(K):
    d = K.shape[0]
    return [(i, j) for i in range(d) for j in range(i, d) if abs(K[i, j]) > 1e-12]


def test_exact_completion_recovers_sigma_on_true_support():
    S, K = make_sparse_precision(30, seed=3)
    E = _support(K)
    W, P = exact_completion(E, [S[i, j] for i, j in E], 30)
    assert (W - S).abs().max() / S.abs().max() < 1e-8
    mask = K.abs() > 1e-12
    assert P[~mask].abs().max() == 0.0
    assert torch.allclose(P, K, rtol=1e-6, atol=1e-8 * K.abs().max())


def test_completion_errors_and_relaxed_form_is_pd():
    # |rho| > 1 on a measured pair: no PD completion exists
    with pytest.raises(CompletionError):
        exact_completion([(0, 0), (1, 1), (0, 1)], [1.0, 1.0, 1.5], 2)
    Sig, P = maxent_completion(
        [(0, 0), (1, 1), (0, 1)], [1.0, 1.0, 1.5], 2, noise_scales=[0.1, 0.1, 0.5]
    )
    assert torch.linalg.eigvalsh(Sig).min() > 0 and torch.allclose(Sig, Sig.T)
    # a warm start that is not positive definite (PACE's previous round can be numerically
    # singular) falls back to the default start instead of failing in the Cholesky
    args = ([(0, 0), (1, 1), (0, 1)], [1.0, 1.0, 1.5], 2, [0.1, 0.1, 0.5])
    bad = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=torch.float64)
    assert torch.equal(relaxed_completion(*args, init=bad)[0], relaxed_completion(*args)[0])
    with pytest.raises(ValueError, match=r"every diagonal entry must be measured; missing \[1\]"):
        exact_completion([(0, 0), (0, 1)], [1.0, 0.1], 2)
    for bad in (float("inf"), float("nan"), 0.0):  # an infinite sd would weigh its entry 0
        with pytest.raises(ValueError, match="noise_scales must be finite and positive"):
            relaxed_completion([(0, 0), (1, 1), (0, 1)], [1.0, 1.0, 0.5], 2, [0.1, bad, 0.1])


def _large_scale_chain(seed=26):
    # a 4 x 4 chain (diagonal and first off-diagonal) with entries of order 1e4, noise sd 1.5
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(4, 4, generator=g, dtype=torch.float64) * 61
    S = A @ A.T + torch.eye(4, dtype=torch.float64)
    entries = [(i, i) for i in range(4)] + [(i, i + 1) for i in range(3)]
    noise = torch.randn(len(entries), generator=g, dtype=torch.float64) * 1.5
    return entries, torch.stack([S[i, j] for i, j in entries]) + noise


def test_relaxed_completion_on_large_scale_entries_is_quiet_and_pd():
    # solved on the raw values, L-BFGS line-search trial points overflowed here (f = inf,
    # which the search rejects) and printed RuntimeWarnings; the objective now also ignores
    # such overflow wherever it happens
    entries, values = _large_scale_chain()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        Sig, P = relaxed_completion(entries, values, 4, [1.5] * len(entries), lam=10.0)
    assert torch.linalg.eigvalsh(Sig).min() > 0 and torch.allclose(Sig, Sig.T)


def test_relaxed_completion_fits_large_scale_entries_within_the_noise():
    entries, values = _large_scale_chain()
    Sig, _ = relaxed_completion(entries, values, 4, [1.5] * len(entries), lam=10.0)
    fitted = torch.stack([Sig[i, j] for i, j in entries])
    # solved on the raw values (no rescaling inside), the fit was off by up to 98 here
    assert (fitted - values).abs().max() < 3 * 1.5


@pytest.mark.parametrize("c", [1e-4, 1e4])
def test_relaxed_completion_is_scale_equivariant(c):
    # values and noise scales times c: Sigma times c, precision over c
    entries, values = _large_scale_chain()
    values, noise = values / values.abs().max(), [0.01] * len(entries)
    Sig, P = relaxed_completion(entries, values, 4, noise, lam=0.1)
    Sig_c, P_c = relaxed_completion(entries, values * c, 4, [c * s for s in noise], lam=0.1)
    torch.testing.assert_close(Sig_c / c, Sig, rtol=1e-7, atol=0)
    torch.testing.assert_close(P_c * c, P, rtol=1e-6, atol=0)


def test_sensitivity_formulas_bound_brute_force():
    rng = np.random.default_rng(0)
    d, n = 4, 7
    b = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    for rel in ("replace", "add_remove"):
        D = entry_sensitivities(b, n, rel)
        worst = torch.zeros(d, d, dtype=torch.float64)
        worst_diag, worst_full, worst_scaled = 0.0, 0.0, 0.0
        for _ in range(3000):
            X = torch.as_tensor(rng.uniform(-1, 1, (n, d))) * b
            corner = torch.as_tensor(rng.choice([-1.0, 0.0, 1.0], size=d)) * b
            if rel == "replace":
                X2 = X.clone()
                X2[rng.integers(n)] = corner
                diff = (X.T @ X - X2.T @ X2) / n
            else:  # add one row, same public n
                diff = torch.outer(corner, corner) / n
            worst = torch.maximum(worst, diff.abs())
            worst_diag = max(worst_diag, float(diff.diagonal().norm()))
            # the scaled diagonal release: S_ii / Delta_ii has L2 sensitivity sqrt(d)
            worst_scaled = max(worst_scaled, float((diff.diagonal() / D.diagonal()).norm()))
            iu = torch.triu_indices(d, d)
            worst_full = max(worst_full, float(diff[iu[0], iu[1]].norm()))
        assert torch.all(worst <= D + 1e-12), rel
        assert worst_diag <= float(torch.sqrt((b**4).sum()) / n) + 1e-12
        assert worst_scaled <= d**0.5 + 1e-12
        iu = torch.triu_indices(d, d)
        assert worst_full <= float(D[iu[0], iu[1]].norm()) + 1e-12


def test_sensitivity_formulas_are_attained():
    """The bounds above are tight: some pair of neighbours moves each entry of S by exactly
    Delta_ij (the extremes sit at the corners {-b, 0, b}^d, searched exhaustively). A looser
    Delta (twice the diagonal's, say) keeps privacy but wastes the budget on noise, and the
    brute-force test above cannot see it."""
    import itertools

    d, n = 3, 7
    b = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)
    corners = torch.tensor(list(itertools.product((-1.0, 0.0, 1.0), repeat=d))) * b
    outer = corners[:, :, None] * corners[:, None, :] / n  # C x d x d: one row's x x^T / n
    replace = (outer[:, None] - outer[None, :]).abs().amax((0, 1))  # one row swapped
    add_remove = outer.abs().amax(0)  # one row added (the same public n)
    assert torch.allclose(replace, entry_sensitivities(b, n, "replace"), atol=1e-12)
    assert torch.allclose(add_remove, entry_sensitivities(b, n, "add_remove"), atol=1e-12)


@settings(max_examples=12, deadline=None)
@given(
    eps=st.floats(0.05, 5.0),
    log_delta=st.floats(-9, -3),
    d=st.integers(2, 6),
    rounds=st.integers(0, 6),
    seed=st.integers(0, 1000),
    selection=st.sampled_from(["exponential", "permute_and_flip"]),
    center=st.booleans(),
    diagonal=st.sampled_from(["scaled", "isotropic"]),
)
def test_privacy_spent_never_exceeds_budget_and_output_is_pd(
    eps, log_delta, d, rounds, seed, selection, center, diagonal
):
    rounds = min(rounds, d * (d - 1) // 2)
    X = np.random.default_rng(seed).normal(size=(50, d))
    for est in (
        PACEGGM(
            eps,
            10**log_delta,
            bounds=2.0,
            rounds=rounds,
            selection=selection,
            center=center,
            diagonal=diagonal,
            random_state=seed,
        ),
        GaussianMechanismCovariance(eps, 10**log_delta, 2.0, center=center, random_state=seed),
        PerEntryGaussianCovariance(eps, 10**log_delta, 2.0, center=center, random_state=seed),
    ):
        est.fit(X)
        spent_eps, delta = est.privacy_spent_
        assert spent_eps <= eps and est.rho_spent_ <= est.budget_.rho
        assert spent_eps == pytest.approx(eps, rel=1e-6)  # the whole budget is used
        C = est.covariance_
        assert torch.allclose(C, C.T) and torch.linalg.eigvalsh(C).min() > 0


def test_pace_measures_in_order_and_error_falls_with_budget():
    S, _ = make_sparse_precision(8, n_extra_edges=2, scale_range=(0.5, 2.0), seed=1)
    X = sample_gaussian(S, 5000, seed=2).numpy()
    b = (3 * S.diagonal().sqrt()).numpy()
    sample_err = relative_error(torch.as_tensor(np.clip(X, -b, b).T @ np.clip(X, -b, b) / 5000), S)
    errs = []
    for eps in (0.1, 1.0, 1e4):
        e = np.mean(
            [
                relative_error(
                    PACEGGM(eps, 1e-5, b, rounds=28, random_state=s).fit(X).covariance_, S
                )
                for s in range(3)
            ]
        )
        errs.append(e)
    assert errs[0] > errs[1] > errs[2]
    # essentially no noise and every entry measured: the non-private sampling error
    assert errs[2] == pytest.approx(sample_err, rel=0.05, abs=1e-3)
    est = PACEGGM(1.0, 1e-5, b, rounds=5, random_state=0).fit(X)
    assert len(est.measured_) == 5 and len(set(est.measured_)) == 5
    assert all(i < j for i, j in est.measured_)


def test_scaled_diagonal_noise_follows_each_bound_and_keeps_kl_small():
    # marginal sds from 0.1 to 10: one isotropic noise level for the d variances swamps the
    # small ones (KL is scale-free); the scaled release gives variance i noise ~ b_i^2
    S, _ = make_sparse_precision(20, seed=5)
    X = sample_gaussian(S, 10_000, seed=6).numpy()
    b = (3 * S.diagonal().sqrt()).numpy()
    kl = {}
    for diagonal in ("scaled", "isotropic"):
        ests = [PACEGGM(1.0, 1e-5, b, diagonal=diagonal, random_state=s).fit(X) for s in range(2)]
        kl[diagonal] = np.mean([gaussian_kl(S, e.covariance_) for e in ests])
        assert ests[0].privacy_spent_[0] == pytest.approx(1.0, rel=1e-6)
        diag_scales = torch.tensor(ests[0].measurements_[2][:20])
        if diagonal == "scaled":
            ratio = diag_scales / torch.as_tensor(b**2)
            assert torch.allclose(ratio, ratio[0].expand(20), rtol=1e-12)
        else:
            assert torch.allclose(diag_scales, diag_scales[0].expand(20), rtol=1e-12)
    assert kl["scaled"] < 0.1 * kl["isotropic"], kl


def test_pace_beats_whole_matrix_gaussian_in_high_dimension():
    S, _ = make_sparse_precision(30, seed=0)
    X = sample_gaussian(S, 10_000, seed=1).numpy()
    b = (3 * S.diagonal().sqrt()).numpy()
    pace = np.mean(
        [
            relative_error(PACEGGM(1.0, 1e-5, b, random_state=s).fit(X).covariance_, S)
            for s in range(2)
        ]
    )
    gm = np.mean(
        [
            relative_error(
                GaussianMechanismCovariance(1.0, 1e-5, b, random_state=s).fit(X).covariance_, S
            )
            for s in range(2)
        ]
    )
    assert pace < 0.7 * gm, (pace, gm)


@pytest.mark.parametrize(
    "kwargs, X, match",
    [
        ({"epsilon": 0.0}, None, "epsilon"),
        ({"delta": 1.0}, None, "delta"),
        ({"bounds": [1.0, 1.0]}, None, "bounds must have length 3"),
        ({"bounds": [1.0, -1.0, 1.0]}, None, "bounds"),
        ({}, np.array([[1.0, np.nan, 0.0]] * 5), "Input X contains NaN"),
        ({}, np.ones((5, 3)) + 1j, "X: Complex data not supported"),
        ({}, np.ones((1, 3)), "X: Found array with 1 sample"),
        ({"selection": "greedy"}, None, "selection"),
        ({"rounds": 10}, None, "rounds"),
        ({"rounds": 10, "center": True}, None, "rounds"),  # before the private mean
        ({"center": True, "mean_fraction": 1.0}, None, "mean_fraction"),
        ({"center": True, "mean_fraction": 0.0}, None, "mean_fraction"),
        ({"lam": 0.0, "center": True}, None, "lam"),
        ({"diagonal": "whole"}, None, "diagonal"),
    ],
)
def test_bad_input_raises_before_noise(kwargs, X, match, monkeypatch):
    import probml.inference.pace as pace_mod

    calls = []
    monkeypatch.setattr(
        pace_mod,
        "gaussian_mechanism",
        lambda *a, **k: calls.append(1) or (_ for _ in ()).throw(AssertionError),
    )
    X = np.random.default_rng(0).normal(size=(20, 3)) if X is None else X
    with pytest.raises(ValueError, match=match):
        PACEGGM(**{"epsilon": 1.0, "delta": 1e-5, "bounds": 1.0, **kwargs}).fit(X)
    assert calls == []


def test_bayesian_posterior_post_processing():
    S, _ = make_sparse_precision(3, n_extra_edges=0, scale_range=(0.5, 2.0), seed=0)
    X = sample_gaussian(S, 3000, seed=1).numpy()
    est = PACEGGM(2.0, 1e-5, (3 * S.diagonal().sqrt()).numpy(), rounds=3, random_state=0).fit(X)
    draws = covariance_posterior(est, method="svi", num_samples=200, svi_steps=600)
    assert draws.shape == (200, 3, 3)
    assert torch.linalg.eigvalsh(draws).min() > 0
    assert relative_error(draws.mean(0), S) < 0.3
    nuts = covariance_posterior(est, method="nuts", num_samples=30, warmup_steps=30)
    assert nuts.shape == (30, 3, 3)
    # prior replaces the LKJ x scales prior, so a scale_prior beside it would be ignored
    import pyro.distributions as dist

    from probml.models.gaussian import LowerCholeskyBijection

    to_L = LowerCholeskyBijection()
    prior = dist.TransformedDistribution(
        dist.Normal(torch.zeros(6, dtype=torch.float64), 1.0).to_event(1), to_L
    )
    with pytest.raises(ValueError, match="scale_prior or prior, not both"):
        covariance_posterior(est, scale_prior=1.0, prior=prior)
    draws = covariance_posterior(est, method="svi", num_samples=50, svi_steps=300, prior=prior)
    assert draws.shape == (50, 3, 3) and torch.linalg.eigvalsh(draws).min() > 0


def test_bundled_dataset_and_kl():
    X, b, note = load_covariance_dataset("digits")
    assert X.shape[0] == 1797 and np.all(b == 16.0) and "16" in note
    est = PACEGGM(1.0, 1e-5, b, center=True, rounds=20, random_state=0).fit(X)
    assert est.covariance_.shape == (X.shape[1], X.shape[1])
    emp = torch.as_tensor(np.cov(X.T, bias=True))
    assert gaussian_kl(emp, emp) == pytest.approx(0.0, abs=1e-8)


def test_synthetic_precision_graph_and_the_bundled_bounds():
    """make_sparse_precision: a chain whose edges have both signs plus exactly
    n_extra_edges edges off the chain, and the precision is Sigma's inverse. A bundled set
    without a natural bound gets the largest observed |x| (diabetes is centred: negative
    values)."""
    S, K = make_sparse_precision(12, n_extra_edges=5, seed=2)
    assert torch.allclose(S @ K, torch.eye(12, dtype=torch.float64), atol=1e-10)
    chain = torch.diagonal(K, 1)
    assert bool((chain > 0).any()) and bool((chain < 0).any()) and bool((chain != 0).all())
    assert int((torch.triu(K, 2) != 0).sum()) == 5
    extra = torch.triu(make_sparse_precision(30, n_extra_edges=20, seed=2)[1], 2)
    extra = extra[extra != 0]  # the off-chain edges have random signs too
    assert extra.numel() == 20 and bool((extra > 0).any()) and bool((extra < 0).any())
    X, b, _ = load_covariance_dataset("diabetes")
    assert (X < 0).any() and np.array_equal(b, np.abs(X).max(0))
    # before the rescaling K_ii = 1.5 + sum_{j != i} |K_ij|: on two coordinates the partial
    # correlation is |k| / (1.5 + |k|) with |k| in [0.2, 0.4], which the diagonal rescaling
    # leaves unchanged; a scale range of one value gives equal marginal sds
    for seed in range(20):
        S, K = make_sparse_precision(2, n_extra_edges=0, scale_range=(2.0, 2.0), seed=seed)
        partial = float(K[0, 1].abs() / (K[0, 0] * K[1, 1]).sqrt())
        assert 0.2 / 1.7 - 1e-12 <= partial <= 0.4 / 1.9 + 1e-12, (seed, partial)
        assert torch.allclose(S.diagonal(), torch.full((2,), 4.0, dtype=torch.float64))


def test_seeded_refits_repeat_and_none_draws_fresh_noise():
    X = np.random.default_rng(0).normal(size=(200, 4))
    for cls in (PACEGGM, GaussianMechanismCovariance, PerEntryGaussianCovariance):
        est = cls(1.0, 1e-5, 3.0, center=True, random_state=7)
        first = est.fit(X).covariance_.clone()
        assert torch.equal(est.fit(X).covariance_, first)  # a refit draws the same noise
        assert torch.equal(cls(1.0, 1e-5, 3.0, center=True, random_state=7).fit(X).covariance_,
                           first)  # fmt: skip
        fresh = cls(1.0, 1e-5, 3.0, center=True)  # random_state=None, the default
        assert fresh.random_state is None
        a, b = fresh.fit(X).covariance_.clone(), fresh.fit(X).covariance_
        assert not torch.equal(a, b) and not torch.equal(a, first)
    # a rejected fit releases nothing, not even the private mean
    est = PACEGGM(1.0, 1e-5, 3.0, center=True, rounds=99, random_state=0)
    with pytest.raises(ValueError, match="rounds"):
        est.fit(X)
    assert not hasattr(est, "mean_")
    for lam in (0.0, float("inf")):  # an infinite log-det weight: no fit at all
        with pytest.raises(ValueError, match="lam must be finite and > 0"):
            PACEGGM(1.0, 1e-5, 3.0, lam=lam, random_state=0).fit(X)
    # a fractional seed was truncated (2.5 drew seed 2's noise); refused before any release
    for cls in (PACEGGM, GaussianMechanismCovariance):
        est = cls(1.0, 1e-5, 3.0, center=True, random_state=2.5)
        with pytest.raises(ValueError, match="random_state must be a non-negative int"):
            est.fit(X)
        assert not hasattr(est, "mean_")


def _adversarial_pair(n=20, b=(1.0, 2.0)):
    """``n`` rows at the corner ``(b_1, -b_2)`` (so ``S_01 = -b_1 b_2``), and the same data
    with one row added at ``(b_1, b_2)``: the off-diagonal entry moves the most it can."""
    X = np.tile([b[0], -b[1]], (n, 1))
    return X, np.vstack([X, [b[0], b[1]]]), np.asarray(b)


def test_add_remove_normalises_by_the_public_n_so_a_release_moves_within_its_sensitivity():
    """Under add/remove a neighbour has one row more. With the same seed, the noise of the two
    releases must be the same (its level may not depend on the data) and the released entry
    may move by at most the accounted ``Delta_01 = b_1 b_2 / n``. Dividing by the data's own
    row count moved it by ``2 b_1 b_2 / (n + 1)``, about twice that (about 4x the rho)."""
    X, X_added, b = _adversarial_pair()
    n = X.shape[0]
    kw = dict(bounds=b, neighbouring="add_remove", public_n=n, rounds=1, random_state=3)
    fits = [PACEGGM(epsilon=1.0, **kw).fit(data) for data in (X, X_added)]
    (e0, v0, s0), (e1, v1, s1) = (f.measurements_ for f in fits)
    assert e0[2] == e1[2] == (0, 1)
    assert s0 == s1  # same noise level
    delta01 = float(entry_sensitivities(torch.as_tensor(b), n, "add_remove")[0, 1])
    assert abs(v1[2] - v0[2]) <= delta01 * (1 + 1e-9)
    assert abs(v1[2] - v0[2]) >= 0.99 * delta01  # the pair is adversarial: the bound is met
    # the private mean of centred fits: L2 sensitivity ||b|| / n
    kw.update(center=True)
    means = [PACEGGM(epsilon=1.0, **kw).fit(data).mean_ for data in (X, X_added)]
    assert float((means[1] - means[0]).norm()) <= float(np.linalg.norm(b)) / n * (1 + 1e-9)


def test_public_n_is_required_for_add_remove_and_must_match_under_replace():
    X, _, b = _adversarial_pair()
    for cls in (PACEGGM, GaussianMechanismCovariance, PerEntryGaussianCovariance):
        with pytest.raises(ValueError, match="^public_n is required"):
            cls(bounds=b, neighbouring="add_remove").fit(X)
        with pytest.raises(ValueError, match="^public_n must equal the number of rows"):
            cls(bounds=b, public_n=X.shape[0] + 1).fit(X)
        with pytest.raises(ValueError, match="public_n"):
            cls(bounds=b, neighbouring="add_remove", public_n=0).fit(X)
        same = [cls(bounds=b, random_state=0, public_n=p).fit(X) for p in (None, X.shape[0])]
        assert torch.equal(same[0].covariance_, same[1].covariance_)
        # add/remove: the declared count scales S, whatever the rows (not checked: that
        # check would reveal the count)
        big = cls(bounds=b, neighbouring="add_remove", public_n=10 * X.shape[0]).fit(X)
        assert big.n_samples_ == 10 * X.shape[0]


def test_an_entry_given_twice_is_one_entry():
    """``(0, 1)`` and ``(1, 0)`` name one entry. Filled into a dense matrix, two different
    values landed on the two halves of a 'symmetric' matrix: the exact sweeps then failed
    after 500 sweeps with 'did not converge'. The relaxed fit kept only the last of two
    repeats in one orientation (here the variance 1.5 was dropped) and gave a reversed pair
    half its precision. Now exact repeats must agree (else a ValueError naming the entry),
    and relaxed repeats are pooled by precision, which leaves the objective unchanged up to
    a constant."""
    diag = [(0, 0), (1, 1), (2, 2)]
    one = exact_completion([*diag, (0, 1)], [1.0, 2.0, 1.5, 0.5], 3)[0]
    same = exact_completion([*diag, (0, 1), (1, 0)], [1.0, 2.0, 1.5, 0.5, 0.5], 3)[0]
    assert torch.equal(one, same)
    with pytest.raises(ValueError, match=r"^values: entry \(0, 1\) is given more than once"):
        exact_completion([*diag, (0, 1), (1, 0)], [1.0, 2.0, 1.5, 0.5, 0.2], 3)
    # relaxed: two measurements 0.5 (sd 0.1) and 0.1 (sd 0.2) of (0, 1), plus a repeated
    # variance, against the single pooled measurement of each
    ys, sds = [0.5, 0.1], [0.1, 0.2]
    prec = [s**-2 for s in sds]
    pooled = sum(p * y for p, y in zip(prec, ys)) / sum(prec)
    rep = relaxed_completion(
        [*diag, (0, 1), (1, 0), (2, 2)], [1.0, 2.0, 1.5, *ys, 1.3], 3, [0.1, 0.1, 0.1, *sds, 0.1]
    )[0]
    pool_var = (1.5 / 0.01 + 1.3 / 0.01) / (2 / 0.01)
    ref = relaxed_completion(
        [*diag, (0, 1)],
        [1.0, 2.0, pool_var, pooled],
        3,
        [0.1, 0.1, 0.5**0.5 * 0.1, sum(prec) ** -0.5],
    )[0]
    assert torch.allclose(rep, ref, atol=1e-9)
    assert abs(float(rep[0, 1]) - pooled) < abs(float(rep[0, 1]) - ys[0])  # both used


@pytest.mark.parametrize(
    "neighbouring, diagonal, selection",
    [
        ("replace", "scaled", "exponential"),
        ("replace", "isotropic", "permute_and_flip"),
        ("add_remove", "scaled", "permute_and_flip"),
        ("add_remove", "isotropic", "exponential"),
    ],
)
def test_every_release_adds_the_noise_its_true_sensitivity_needs(
    monkeypatch, neighbouring, diagonal, selection
):
    """A privacy audit of PACEGGM's releases. Each Gaussian release's noise sd must be
    Delta / sqrt(2 rho) for the Delta written out here by hand (not the one the estimator
    computes), with rho what it charged; each selection must be run at sensitivity 1 (its
    score is normalised by Delta_ij). Passing a smaller sensitivity to any mechanism (half
    an entry's, the scaled diagonal's 1 in place of sqrt(d), a replace mean's ||b||/n in
    place of 2||b||/n) breaks privacy, stays within the budget's ledger and, before this
    test, passed the suite."""
    import probml.inference.pace as pace

    b = np.array([0.5, 1.0, 2.0, 1.5])
    n, d = 40, 4
    X = np.random.default_rng(0).uniform(-1, 1, (n, d)) * b
    two = 2.0 if neighbouring == "replace" else 1.0
    true_sens = {"mean": two * np.linalg.norm(b) / n}
    true_sens["diagonal"] = (
        math.sqrt(d) if diagonal == "scaled" else math.sqrt((b**4).sum()) / n
    )  # scaled: S_ii / Delta_ii, each moving by <= 1
    for i in range(d):
        for j in range(i + 1, d):
            true_sens[f"measure ({i},{j})"] = two * b[i] * b[j] / n
    gaussian, selections = [], []
    real_gaussian = pace.gaussian_mechanism

    def audited_gaussian(value, sensitivity, rho, budget, generator=None, label=""):
        out, sigma = real_gaussian(
            value, sensitivity, rho, budget, generator=generator, label=label
        )
        gaussian.append((label, rho, sigma))
        return out, sigma

    def audited(real):
        def pick(scores, epsilon, sensitivity, budget, generator=None, label=""):
            selections.append(sensitivity)
            return real(scores, epsilon, sensitivity, budget, generator=generator, label=label)

        return pick

    monkeypatch.setattr(pace, "gaussian_mechanism", audited_gaussian)
    monkeypatch.setattr(pace, "exponential_mechanism", audited(pace.exponential_mechanism))
    monkeypatch.setattr(pace, "permute_and_flip", audited(pace.permute_and_flip))
    est = PACEGGM(
        epsilon=2.0, bounds=b, rounds=3, center=True, neighbouring=neighbouring,
        diagonal=diagonal, selection=selection, random_state=0,
        public_n=n if neighbouring == "add_remove" else None,
    ).fit(X)  # fmt: skip
    assert [g[0] for g in gaussian][:2] == ["mean", "diagonal"] and len(gaussian) == 2 + 3
    for label, rho, sigma in gaussian:
        assert sigma == pytest.approx(true_sens[label] / math.sqrt(2 * rho), rel=1e-12), label
    assert selections == [1.0, 1.0, 1.0]
    assert est.rho_spent_ <= est.budget_.rho


def test_selection_scores_have_sensitivity_one_and_rank_residuals_of_either_sign(monkeypatch):
    """The selections run at sensitivity 1, so the scores must move by at most 1 between
    neighbouring data sets: each is a residual divided by its entry's sensitivity Delta_ij.
    Checked on the first round's scores for data and a neighbour (one row replaced by a
    corner of the box) with Delta_ij = 20: the scores move by up to 0.37 here, an undivided
    residual by up to 7.5. And the residual counts by its size: a strongly negative entry is
    the one measured first."""
    import probml.inference.pace as pace

    real, scores = pace.exponential_mechanism, []

    def spy(q, epsilon, sensitivity, budget, generator=None, label=""):
        scores.append(np.array(q))
        return real(q, epsilon, sensitivity, budget, generator=generator, label=label)

    monkeypatch.setattr(pace, "exponential_mechanism", spy)
    b, n = np.full(3, 10.0), 10
    X = np.random.default_rng(2).uniform(-1, 1, (n, 3)) * b
    Xn = X.copy()
    Xn[0] = b * np.array([1.0, -1.0, 1.0])
    for data in (X, Xn):
        PACEGGM(epsilon=1.0, bounds=b, rounds=1, random_state=0).fit(data)
    moved = np.abs(scores[0] - scores[1]).max()
    assert 0.3 < moved <= 1.0 + 1e-9, moved
    x = np.random.default_rng(3).uniform(-1, 1, (200, 3))
    x[:, 1] = -x[:, 0]  # S_01 = -1/3; the other off-diagonal entries are near 0
    est = PACEGGM(epsilon=5.0, bounds=1.0, rounds=1, random_state=0).fit(x)
    assert est.measured_ == [(0, 1)]


def test_the_whole_matrix_baseline_adds_the_noise_of_its_l2_sensitivity(monkeypatch):
    """The same audit for GaussianMechanismCovariance: one release of the d(d+1)/2 entries at
    L2 sensitivity sqrt(sum_{i<=j} Delta_ij^2), Delta_ij written out by hand (replace)."""
    import probml.inference.pace as pace

    b = np.array([0.5, 1.0, 2.0])
    n = 30
    X = np.random.default_rng(1).uniform(-1, 1, (n, 3)) * b
    calls = []
    real = pace.gaussian_mechanism

    def audited(value, sensitivity, rho, budget, generator=None, label=""):
        out, sigma = real(value, sensitivity, rho, budget, generator=generator, label=label)
        calls.append((rho, sigma))
        return out, sigma

    monkeypatch.setattr(pace, "gaussian_mechanism", audited)
    pace.GaussianMechanismCovariance(epsilon=1.0, bounds=b, random_state=0).fit(X)
    deltas = [(b[i] ** 2 if i == j else 2 * b[i] * b[j]) / n for i in range(3) for j in range(i, 3)]
    ((rho, sigma),) = calls
    assert sigma == pytest.approx(math.sqrt(sum(x**2 for x in deltas)) / math.sqrt(2 * rho))


def test_the_per_entry_baseline_adds_the_noise_of_each_entry_sensitivity():
    """PerEntryGaussianCovariance draws its noise itself, so the audit is empirical: with a
    well-conditioned S (the projection to the PD cone then changes nothing), the released
    entries minus S, over 300 seeds, have sd Delta_ij / sqrt(2 rho / m) for the hand-written
    Delta_ij (replace) and the rho charged, m = d(d + 1)/2 entries."""
    b = np.array([1.0, 2.0, 1.5])
    n, d = 200, 3
    X = np.random.default_rng(2).uniform(-1, 1, (n, d)) * b
    S = X.T @ X / n
    iu = np.triu_indices(d)
    delta = np.where(iu[0] == iu[1], b[iu[0]] ** 2, 2 * b[iu[0]] * b[iu[1]]) / n
    z = []
    for seed in range(300):
        est = PerEntryGaussianCovariance(epsilon=8.0, bounds=b, random_state=seed).fit(X)
        sigma = delta / math.sqrt(2 * est.rho_spent_ / len(delta))
        z.append((est.covariance_.numpy()[iu] - S[iu]) / sigma)
    sd = np.std(z, axis=0, ddof=1)
    assert np.all(np.abs(sd - 1) < 0.15), sd  # 300 draws: the sd's own sd is about 0.04


@pytest.mark.parametrize("lam", [0.05, 1.0])
def test_relaxed_completion_meets_its_stationarity_conditions(lam):
    r"""At the optimum of sum_e (Sigma_e - y_e)^2 / 2 sigma_e^2 - lam log det Sigma, with each
    entry e a single number (Sigma_ij and Sigma_ji together): on a diagonal entry
    (Sigma_ii - y_ii) / sigma^2 = lam (Sigma^-1)_ii; on an off-diagonal one the log-det
    derivative counts both halves, (Sigma_ij - y_ij) / sigma^2 = 2 lam (Sigma^-1)_ij; and off
    the entries the precision is zero. A four-cycle with a chord missing, unequal noise."""
    entries = [(0, 0), (1, 1), (2, 2), (3, 3), (0, 1), (1, 2), (2, 3), (0, 3)]
    values = [1.0, 2.0, 1.5, 1.2, 0.9, -0.4, 1.3, 0.2]
    noise = [0.1, 0.2, 0.1, 0.3, 0.05, 0.2, 0.1, 0.4]
    Sig, P = relaxed_completion(entries, values, 4, noise, lam=lam)
    inv = torch.linalg.inv(Sig)
    fits = []
    for (i, j), y, s in zip(entries, values, noise):
        fits.append(float(Sig[i, j] - y) / s**2)
        logdet = lam * (1 if i == j else 2) * float(inv[i, j])
        assert fits[-1] == pytest.approx(logdet, abs=1e-5), (i, j)
    assert max(abs(f) for f in fits) > 0.04  # both sides are far from zero: a real balance
    assert abs(float(inv[0, 2])) < 1e-9 and abs(float(inv[1, 3])) < 1e-9
    assert torch.allclose(P, inv, atol=1e-8)


def test_exact_completion_ignores_the_values_a_warm_start_holds_on_the_entries():
    # a warm start only seeds the unmeasured entries: the measured ones, the diagonal
    # included, come from the values (the sweeps never rewrite a diagonal entry)
    S, K = make_sparse_precision(8, seed=1)
    E = _support(K)
    cold = exact_completion(E, [S[i, j] for i, j in E], 8)[0]
    A = torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    warm = exact_completion(E, [S[i, j] for i, j in E], 8, init=A @ A.T + 8 * torch.eye(8))[0]
    assert torch.allclose(warm, cold, atol=1e-9) and torch.allclose(cold, S, atol=1e-8)


def test_relaxed_completion_converges_where_the_variances_spread_over_ten_orders():
    """Variances from 1e-4 to 1e6 (real data has them, with the bounds at the raw maxima):
    one common scale left L-BFGS badly conditioned (over 10,000 iterations; after the 2,000
    allowed, 0.7% off the optimum in correlation units on a PACE benchmark set, without a
    word). Solved per coordinate, it converges quietly and meets its stationarity
    conditions."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    d = 6
    sd = torch.logspace(-2, 3, d, dtype=torch.float64)
    A = torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    C = A @ A.T + d * torch.eye(d, dtype=torch.float64)
    C = C / torch.outer(C.diagonal().sqrt(), C.diagonal().sqrt())
    S = C * torch.outer(sd, sd)
    entries = [(i, i) for i in range(d)] + [(i, i + 1) for i in range(d - 1)] + [(0, 5)]
    noise = [0.05 * float(sd[i] * sd[j]) for i, j in entries]
    g = torch.Generator().manual_seed(1)
    values = [float(S[i, j]) + s * float(torch.randn(1, generator=g, dtype=torch.float64))
              for (i, j), s in zip(entries, noise)]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        Sig, _ = relaxed_completion(entries, values, d, noise, lam=1.0)
    inv = torch.linalg.inv(Sig)
    for (i, j), y, s in zip(entries, values, noise):
        fit = float(Sig[i, j] - y) / s**2
        logdet = (1 if i == j else 2) * float(inv[i, j])
        assert fit == pytest.approx(logdet, rel=1e-5, abs=1e-5), (i, j)


def test_post_processing_floors_and_the_recentred_data_stay_within_their_bounds(monkeypatch):
    """Three documented steps no test looked at. (1) With ``center=True`` the centred data
    are clipped again, so the released second moments keep the bounds the sensitivities
    assume: data at +-b with a very noisy private mean must still give S_ii <= b_i^2 (without
    the re-clip S_ii = b^2 + (mu - xbar)^2 - xbar^2, far above it). (2) A noisy variance below
    its noise sd is raised to it. (3) ``project_to_pd`` clips eigenvalues at 1e-6 times the
    mean absolute diagonal."""
    import probml.inference.pace as pace
    from probml.inference.pace import project_to_pd

    b = np.array([1.0, 2.0, 0.5])
    X = np.where(np.random.default_rng(0).uniform(size=(50, 3)) < 0.5, -1.0, 1.0) * b
    released = {}
    real = pace.gaussian_mechanism

    def spy(value, sensitivity, rho, budget, generator=None, label=""):
        released[label] = value.clone()
        return real(value, sensitivity, rho, budget, generator=generator, label=label)

    monkeypatch.setattr(pace, "gaussian_mechanism", spy)
    est = PACEGGM(epsilon=0.5, bounds=b, rounds=0, center=True, diagonal="isotropic",
                  random_state=0).fit(X)  # fmt: skip
    assert float(est.mean_.abs().max()) > 1.0  # the mean's noise dwarfs the data
    assert bool((released["diagonal"] <= torch.tensor(b**2) * (1 + 1e-12)).all())
    # (2) six columns of variance 1e-6 under unit bounds: their noisy variances straddle 0
    Z = np.random.default_rng(1).choice([-1e-3, 1e-3], size=(200, 6))
    est = PACEGGM(epsilon=1.0, bounds=1.0, rounds=2, random_state=0).fit(Z)
    _, values, scales = est.measurements_
    v, s = np.array(values[:6]), np.array(scales[:6])
    assert (v >= s).all() and (v == s).any()
    # (3)
    M = torch.diag(torch.tensor([2.0, -1.0, 4.0], dtype=torch.float64))
    evals = torch.linalg.eigvalsh(project_to_pd(M))
    assert torch.allclose(evals, torch.tensor([1e-6 * 7 / 3, 2.0, 4.0], dtype=torch.float64))


def test_sample_gaussian_reads_seed_none_as_fresh_randomness_and_has_the_covariance():
    # None draws fresh randomness, as every other seed of the library (it was read as 0)
    S = torch.tensor([[2.0, 0.6], [0.6, 0.5]], dtype=torch.float64)
    X = sample_gaussian(S, 20_000, seed=None)
    assert not torch.equal(X, sample_gaussian(S, 20_000, seed=None))
    assert not torch.equal(X, sample_gaussian(S, 20_000))
    assert torch.equal(sample_gaussian(S, 5), sample_gaussian(S, 5, seed=0))  # the default
    # the covariance on a seeded draw: the unseeded one above failed in a make test run (at
    # 20 000 rows the variance entry's standard error, 0.02, is only 2.5 times below the
    # tolerance: by a normal approximation a few runs in a hundred fail); at 200 000 rows it
    # is 0.006, 8 times below
    Y = sample_gaussian(S, 200_000, seed=1)
    assert torch.allclose(Y.T @ Y / 200_000, S, atol=0.05)


def test_the_last_release_never_trips_the_ledger_by_rounding():
    """After the private mean each estimator spends what is left of the budget. At
    epsilon = 0.155 (delta 1e-5, mean fraction 0.05) the rho left plus the rho spent sum to
    more than the budget in floating point, so the release takes a hair less (1 - 1e-9 of
    it). The reported epsilon is that of the rho actually spent, and the precision is the
    covariance's inverse."""
    from probml.inference.privacy import zcdp_to_dp

    X = sample_gaussian(torch.eye(3, dtype=torch.float64), 300, seed=0).numpy()
    for cls in (GaussianMechanismCovariance, PerEntryGaussianCovariance, PACEGGM):
        est = cls(epsilon=0.155, delta=1e-5, bounds=4.0, center=True, random_state=0).fit(X)
        assert 0.999 * est.budget_.rho < est.rho_spent_ <= est.budget_.rho
        assert est.privacy_spent_[0] == zcdp_to_dp(est.rho_spent_, 1e-5) <= 0.155
        eye = torch.eye(3, dtype=torch.float64)
        assert torch.allclose(est.precision_ @ est.covariance_, eye, atol=1e-8)


def test_completion_inputs_tolerances_and_warnings(monkeypatch):
    """Edges of the completion solvers: an index equal to ``dim`` and a zero variance are
    refused by name; repeats of an exact entry must agree to 1e-12 relative (1e-6 is
    refused); the sweeps' tolerance is relative to the largest variance, so the completion
    is equivariant under a diagonal rescaling over eight orders of magnitude; the relaxed fit
    warns when L-BFGS stops early (the iteration limit, or a line search that gives up while
    the gradient is still large) and not when it stalls at the floating-point floor;
    ``maxent_completion`` passes ``lam`` and ``init`` on."""
    from sklearn.exceptions import ConvergenceWarning

    from probml.inference import maxent

    diag = [(0, 0), (1, 1), (2, 2)]
    with pytest.raises(ValueError, match="entries must index a 2 x 2"):
        exact_completion(diag, [1.0, 1.0, 1.0], 2)
    with pytest.raises(CompletionError, match="diagonal values must be positive"):
        exact_completion(diag, [1.0, 0.0, 1.0], 3)
    with pytest.raises(ValueError, match="more than once"):
        exact_completion([*diag, (0, 1), (1, 0)], [1.0, 1.0, 1.0, 0.5, 0.5 * (1 + 1e-6)], 3)
    # a 4-cycle (not chordal: the sweeps iterate) with variances rescaled over 1e-8 .. 1e8
    entries = [*diag, (3, 3), (0, 1), (1, 2), (2, 3), (0, 3)]
    vals = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.5, -0.4, 0.3, 0.2], dtype=torch.float64)
    D = torch.tensor([1e-4, 1.0, 1e2, 1e4], dtype=torch.float64)
    idx = torch.tensor(entries)
    W, K = exact_completion(entries, vals, 4)
    Ws, Ks = exact_completion(entries, vals * D[idx[:, 0]] * D[idx[:, 1]], 4)
    assert torch.allclose(Ws / (D[:, None] * D[None, :]), W, rtol=1e-10, atol=1e-14)
    assert torch.allclose(Ks * (D[:, None] * D[None, :]), K, rtol=1e-8, atol=1e-12)
    # the relaxed fit's convergence report
    args = (entries, vals, 4, [0.1] * 8)
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        relaxed_completion(*args, max_iter=1)
    real = maxent.minimize

    def gives_up(max_iter):
        def minimize(*a, **k):
            res = real(*a, **{**k, "options": {**k["options"], "maxiter": max_iter}})
            res.success, res.status, res.message = False, 2, "ABNORMAL (forced)"
            return res

        return minimize

    monkeypatch.setattr(maxent, "minimize", gives_up(1))
    with pytest.warns(ConvergenceWarning, match="ABNORMAL"):
        relaxed_completion(*args)
    monkeypatch.setattr(maxent, "minimize", gives_up(2000))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        relaxed_completion(*args)
    monkeypatch.setattr(maxent, "minimize", real)
    seen = {}
    monkeypatch.setattr(maxent, "relaxed_completion", lambda *a, **k: seen.update(k) or ("S", "P"))
    init = torch.eye(4, dtype=torch.float64)
    assert maxent_completion(*args, lam=0.3, init=init) == ("S", "P")
    assert seen["lam"] == 0.3 and seen["init"] is init


def test_synthetic_data_settings_are_checked_by_name():
    """An infinite end of ``scale_range`` and a non-square ``Sigma`` are refused by name
    (before: NaN marginal scales, and torch's Cholesky error naming no argument)."""
    for bad in ((0.1, float("inf")), (float("-inf"), 1.0)):
        with pytest.raises(ValueError, match="scale_range"):
            make_sparse_precision(5, scale_range=bad)
    with pytest.raises(ValueError, match="Sigma must be a square"):
        sample_gaussian(torch.ones(2, 3, dtype=torch.float64), 10)


def test_completion_settings_and_warm_starts_are_checked_by_name():
    """Before, ``max_sweeps = 2.5`` and ``dim = 2.5`` failed inside ``range``/``torch.zeros``
    naming nothing, a negative ``tol`` could never be met, and a warm start of the wrong
    shape failed in an index assignment."""
    args = ([(0, 0), (1, 1), (0, 1)], [1.0, 1.0, 0.5])
    cases = (
        (lambda: exact_completion(*args, 2, max_sweeps=2.5), TypeError, "max_sweeps"),
        (lambda: exact_completion(*args, 2.5), TypeError, "dim"),
        (lambda: exact_completion(*args, 2, tol=-1.0), ValueError, "tol"),
        (lambda: exact_completion(*args, 2, init=torch.eye(3)), ValueError, "init must be a 2 x 2"),
        (lambda: relaxed_completion(*args, 2, [0.1] * 3, init=torch.eye(3)), ValueError, "init"),
        (
            lambda: relaxed_completion(*args, 2, [0.1] * 3, init=torch.full((2, 2), float("nan"))),
            ValueError,
            "init must be finite",
        ),
    )
    for call, err, match in cases:
        with pytest.raises(err, match=match):
            call()
    W, _ = exact_completion(*args, 2, init=torch.eye(2, dtype=torch.float64))
    assert torch.allclose(W, torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64))


def test_pace_ends_with_the_exact_completion_of_its_measurements_when_one_exists():
    """With a generous budget the noisy entries have a positive-definite completion: every
    round completes them exactly (ESL 17.1, up to 100 sweeps), so the estimate is that exact
    completion (to 1e-12; 1e-15 measured) and ``relaxed_`` is False. Cutting the sweeps
    made every round fall back to the relaxed form (4e-5 away, ``relaxed_`` True). The
    precision is exactly symmetric, as documented."""
    S, _ = make_sparse_precision(6, n_extra_edges=2, scale_range=(0.5, 2.0), seed=1)
    X = sample_gaussian(S, 2000, seed=2).numpy()
    b = 4 * np.sqrt(np.diag(S.numpy()))
    est = PACEGGM(50.0, 1e-5, b, rounds=6, random_state=0).fit(X)
    entries, values, _ = est.measurements_
    W, _ = exact_completion(entries, values, 6)
    assert est.relaxed_ is False
    assert torch.allclose(est.covariance_, W, atol=1e-12, rtol=0)
    # the documented symmetric precision: exactly (an inverse alone is off by ~1e-18 here)
    assert torch.equal(est.precision_, est.precision_.T)


def test_posterior_defaults_and_the_projection_of_an_asymmetric_matrix():
    """``covariance_posterior``: ``method="auto"`` is NUTS for d <= 20 and the default scale
    prior is the public bounds / 2 (each equal, draw for draw, to saying so). And
    ``project_to_pd`` symmetrises first: ``eigh`` alone would read one triangle only."""
    from probml.inference.pace import project_to_pd

    X = np.random.default_rng(0).normal(size=(300, 3)).clip(-2, 2)
    est = PACEGGM(epsilon=2.0, bounds=2.0, random_state=0).fit(X)
    nuts = {"num_samples": 4, "warmup_steps": 4}
    assert torch.equal(
        covariance_posterior(est, "auto", **nuts), covariance_posterior(est, "nuts", **nuts)
    )
    svi = {"num_samples": 4, "svi_steps": 5}
    default = covariance_posterior(est, "svi", **svi)
    assert torch.equal(
        default, covariance_posterior(est, "svi", scale_prior=est.bounds_ / 2, **svi)
    )
    assert not torch.equal(
        default, covariance_posterior(est, "svi", scale_prior=est.bounds_, **svi)
    )
    M = torch.tensor([[2.0, 1.0], [0.0, 2.0]], dtype=torch.float64)
    assert torch.allclose(project_to_pd(M), 0.5 * (M + M.T), atol=1e-12)
