import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from probml.inference.particles import (
    RESAMPLING_SCHEMES,
    ParticleDegeneracyError,
    effective_sample_size,
    gather_particles,
    log_mean_exp,
    normalize_log_weights,
    resample,
)

weights_st = st.lists(st.floats(min_value=0.01, max_value=1.0), min_size=2, max_size=8)


@pytest.mark.parametrize("scheme", RESAMPLING_SCHEMES)
@settings(max_examples=15, deadline=None)
@given(raw=weights_st, seed=st.integers(0, 2**31 - 1))
def test_resampling_is_unbiased(scheme, raw, seed):
    w = torch.tensor(raw, dtype=torch.float64)
    w = w / w.sum()
    n, reps = w.numel(), 20000
    log_w = w.log().expand(reps, n)  # reps independent resamplings, batched
    idx = resample(log_w, scheme=scheme, generator=seed)
    assert idx.shape == (reps, n)
    counts = torch.zeros(reps, n, dtype=torch.float64).scatter_add_(
        1, idx, torch.ones_like(idx, dtype=torch.float64)
    )
    mean = counts.mean(0)
    se = counts.std(0) / math.sqrt(reps)
    # E[offspring_i] = N w_i; 5 standard errors (+ a floor for near-deterministic counts)
    assert torch.all((mean - n * w).abs() <= 5 * se + 2e-3), (mean, n * w)


@pytest.mark.parametrize("scheme", ["stratified", "systematic"])
def test_low_variance_schemes_keep_floor_counts(scheme):
    # systematic/stratified give each particle at least floor(N w_i) - 1 offspring
    w = torch.tensor([0.5, 0.25, 0.125, 0.125], dtype=torch.float64)
    idx = resample(w.log().expand(1000, 4), scheme=scheme, generator=0)
    counts = torch.zeros(1000, 4, dtype=torch.long).scatter_add_(1, idx, torch.ones_like(idx))
    assert torch.all(counts >= (4 * w).floor().long() - 1)


def test_systematic_counts_are_floor_or_ceil_and_stratified_ones_need_not_be():
    """Systematic points lie exactly 1/M apart, so particle i gets floor(M w_i) or
    ceil(M w_i) offspring. Stratified points are independent within their strata: with
    w = (0.3, 0.4, 0.3) and M = 3 the middle particle gets all three (ceil(1.2) = 2) when the
    first point falls in [0.3, 1/3) and the last in [2/3, 0.7): probability 0.1 x 0.1."""
    w = torch.tensor([0.3, 0.4, 0.3], dtype=torch.float64)
    counts = {}
    for scheme in ("systematic", "stratified"):
        idx = resample(w.log().expand(5000, 3), scheme=scheme, generator=0)
        counts[scheme] = torch.zeros(5000, 3, dtype=torch.long).scatter_add_(
            1, idx, torch.ones_like(idx)
        )
    c = counts["systematic"]
    assert bool(((c >= (3 * w).floor()) & (c <= (3 * w).ceil())).all())
    share = float((counts["stratified"][:, 1] == 3).double().mean())
    assert share == pytest.approx(0.01, abs=0.005)


def test_ess_bounds():
    n = 37
    assert effective_sample_size(torch.zeros(n)).item() == pytest.approx(n)
    point = torch.full((n,), -math.inf)
    point[5] = 0.0
    assert effective_sample_size(point).item() == pytest.approx(1.0)
    batched = torch.stack([torch.zeros(n), point])
    assert torch.allclose(effective_sample_size(batched), torch.tensor([n, 1.0]))


def test_normalisation_is_stable_for_very_negative_log_weights():
    offsets = torch.tensor([0.0, -1.0, -2.0], dtype=torch.float64)
    expected = torch.softmax(offsets, 0)
    lw = -1e4 + offsets
    nlw = normalize_log_weights(lw)
    assert torch.allclose(nlw.exp(), expected, atol=1e-12)
    assert effective_sample_size(lw).item() == pytest.approx(1 / (expected**2).sum().item())
    expected_lme = -1e4 + torch.logsumexp(offsets, 0).item() - math.log(3)
    assert log_mean_exp(lw).item() == pytest.approx(expected_lme, abs=1e-9)
    with pytest.raises(ValueError, match="at least one element"):  # not math's "domain error"
        log_mean_exp(torch.zeros(2, 0))
    # along another dim: log mean of (0, log 3) per column is log 2
    assert torch.allclose(log_mean_exp(torch.tensor([[0.0], [math.log(3.0)]]), dim=0),
                          torch.tensor([math.log(2.0)]))  # fmt: skip
    # float32: finite, and only float32 rounding of the -1e4 offset remains (spacing ~1e-3)
    nlw32 = normalize_log_weights(lw.float())
    assert torch.isfinite(nlw32).all()
    assert torch.allclose(nlw32.exp().double(), expected, atol=2e-3)


def test_degenerate_weights_raise_named_error():
    with pytest.raises(ParticleDegeneracyError, match="all log-weights are -inf"):
        normalize_log_weights(torch.full((2, 4), -math.inf))
    with pytest.raises(ParticleDegeneracyError, match="NaN"):
        resample(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ParticleDegeneracyError, match=r"NaN or \+inf"):
        normalize_log_weights(torch.tensor([0.0, math.inf]))
    with pytest.raises(ParticleDegeneracyError, match="all log-weights are -inf"):
        effective_sample_size(torch.tensor([[0.0, 0.0], [-math.inf, -math.inf]]))  # one entry
    with pytest.raises(ValueError, match="scheme"):
        resample(torch.zeros(3), scheme="residual")
    with pytest.raises(ValueError, match="num_samples"):
        resample(torch.zeros(3), num_samples=0)
    for bad in (2.5, True):  # before: int(2.5) drew 2 ancestors, True drew 1
        with pytest.raises(TypeError, match="num_samples must be an integer"):
            resample(torch.zeros(3), num_samples=bad)
    with pytest.raises(ValueError, match="N >= 1"):
        normalize_log_weights(torch.zeros(2, 0))  # no particle is not "all weights zero"
    with pytest.raises(TypeError, match="floating point"):
        resample(torch.zeros(3, dtype=torch.long))


def test_systematic_resampling_of_a_million_equal_float32_weights_keeps_each_once():
    """Equal weights and M = N: every systematic bin [i/N, (i+1)/N) holds one point, so each
    particle is kept exactly once. Float32 log-weights normalised in float32 sum to
    1 - 2.4e-7 here: without the division of the cumulative sums by their total, the bins
    shift by a quarter of their width by the end and some particles get two copies."""
    n = 1_000_000
    idx = resample(torch.zeros(n, dtype=torch.float32), scheme="systematic", generator=0)
    assert torch.equal(torch.bincount(idx, minlength=n), torch.ones(n, dtype=torch.long))


def test_resample_seed_reproducible_and_num_samples():
    lw = torch.randn(3, 10)
    for scheme in RESAMPLING_SCHEMES:
        a = resample(lw, num_samples=25, scheme=scheme, generator=123)
        b = resample(lw, num_samples=25, scheme=scheme, generator=123)
        assert a.shape == (3, 25) and torch.equal(a, b)
        assert a.min() >= 0 and a.max() < 10


def test_gather_particles_batched():
    x = torch.arange(2 * 4 * 3.0).reshape(2, 4, 3)
    anc = torch.tensor([[3, 3, 0, 1], [2, 2, 2, 2]])
    out = gather_particles(x, anc)
    assert out.shape == (2, 4, 3)
    assert torch.equal(out[0, 0], x[0, 3]) and torch.equal(out[1, 3], x[1, 2])
    with pytest.raises(ValueError, match="batch_shape"):
        gather_particles(x, anc[:1])
