"""Every public seed is checked by name before it reaches a random number generator.

Before, ``torch.manual_seed`` read ``2.5`` as 2 and ``"3"`` as 3 without a word, a
``torch.Generator`` and ``torch.manual_seed`` took ``-1``, NumPy took ``True`` as 1, and
``pyro.set_rng_seed`` refused ``2**32`` with a message that names no argument. Each call
below but ``numpy_generator`` (added with the check) accepted at least one of these values
or refused it in words that did not name the argument (measured before the change; see
docs/architecture.md)."""

import numpy as np
import pytest
import torch

BAD = [2.5, -1, True, "3", 2**32]


def _small():
    g = torch.Generator().manual_seed(0)
    X, A = torch.randn(20, 2, generator=g), torch.randn(20, 1, generator=g)
    y = (torch.arange(20) % 2).double()
    rng = np.random.default_rng(0)
    Xn = rng.normal(size=(30, 2))
    return X, A, y, Xn, Xn[:, 0] + 0.1, np.arange(30) % 2


def _calls():
    """``(argument, call(seed))`` for one public entry point each."""
    from probml.datasets.fairness import make_gaussian_groups
    from probml.datasets.gaussian import make_sparse_precision
    from probml.datasets.persona import LinearToy
    from probml.datasets.ratio import make_cell_data, make_ratio_data
    from probml.guides.generators import fit_source_conditional
    from probml.inference.expressivity import fit_shallow_net
    from probml.inference.metalearners import BayesianQLearner, DRRatioLearner, QLearner
    from probml.inference.minimax import DRUM, ERMOnX, ImputationBaseline, fit_outcome_model
    from probml.inference.pace import PACEGGM
    from probml.inference.pretrain import paired_models, synthetic_corpus
    from probml.inference.transport import FairRegressor, posterior_fair_predictions
    from probml.models.adapters import add_lora, fit_spurious_factor
    from probml.models.diffusion import train_transition_model
    from probml.models.rollouts import LinearBandit
    from probml.utils import make_generator, numpy_generator, set_seed

    X, A, y, Xn, yn, sn = _small()
    yb = (yn > 0).astype(float)
    mlp = {"num_iters": 1}
    return [
        ("seed", lambda s: set_seed(s)),
        ("seed", lambda s: make_generator(s)),
        ("seed", lambda s: numpy_generator(s)),
        ("seed", lambda s: make_gaussian_groups(50, seed=s)),
        ("seed", lambda s: make_sparse_precision(4, seed=s)),
        ("seed", lambda s: make_ratio_data(100, seed=s)),
        ("seed", lambda s: make_cell_data(100, seed=s)),
        ("seed", lambda s: LinearToy(dim=8, task_rank=2, seed=s)),
        ("seed", lambda s: LinearBandit(num_prompts=8, dim=2, seed=s)),
        ("seed", lambda s: synthetic_corpus(n_chars=1000, seed=s)),
        ("seed", lambda s: paired_models({"a": lambda: torch.nn.Linear(2, 2)}, seed=s)),
        ("seed", lambda s: fit_shallow_net("fixed", ("relu",), X, y, restarts=1, seed=s)),
        ("seed", lambda s: fit_source_conditional(A, X, num_iters=1, seed=s, verbose=False)),
        ("seed", lambda s: train_transition_model(X, X, num_iters=1, seed=s, verbose=False)),
        ("seed", lambda s: add_lora(torch.nn.Sequential(torch.nn.Linear(2, 2)), ["0"], 1, seed=s)),
        ("seed", lambda s: fit_spurious_factor(X[:6], 1, num_steps=1, num_samples=2, seed=s)),
        ("seed", lambda s: fit_outcome_model(X, A, y, seed=s, **mlp)),
        ("seed", lambda s: ERMOnX(seed=s, **mlp).fit(X, A, y)),
        ("seed", lambda s: ImputationBaseline(seed=s).fit(X, A, y)),
        ("seed", lambda s: DRUM(seed=s, verbose=False, **mlp).fit(X, A, y, X)),
        ("seed", lambda s: BayesianQLearner("svi", svi_steps=1, seed=s).fit(Xn, sn, yb)),
        ("random_state", lambda s: QLearner(n_folds=2, random_state=s).fit(Xn, sn, yb)),
        ("random_state", lambda s: DRRatioLearner(random_state=s).fit(Xn, sn, yb + 0.5)),
        ("random_state", lambda s: PACEGGM(random_state=s).fit(Xn)),
        ("random_state", lambda s: FairRegressor(random_state=s).fit(Xn, yn, sn)),
        ("seed", lambda s: posterior_fair_predictions(Xn, yn, sn, Xn, sn, seed=s)),
    ]


@pytest.mark.parametrize("bad", BAD, ids=repr)
@pytest.mark.parametrize("i", range(len(_calls())))
def test_a_bad_seed_is_refused_by_name(i, bad):
    arg, call = _calls()[i]
    with pytest.raises(ValueError, match=rf"\b{arg} must be a non-negative int below 2\*\*32"):
        call(bad)


def test_a_good_seed_still_gives_the_same_draws():
    """The checks return the seed unchanged: the generators' streams are those of before."""
    from probml.utils import check_seed, make_generator, numpy_generator

    assert check_seed("seed", np.int64(7)) == 7 and type(check_seed("seed", np.int64(7))) is int
    assert check_seed("seed", 2**32 - 1) == 2**32 - 1
    a = torch.rand(3, generator=make_generator(5))
    assert torch.equal(a, torch.rand(3, generator=torch.Generator().manual_seed(5)))
    assert np.array_equal(numpy_generator(5).random(3), np.random.default_rng(5).random(3))
    g = np.random.default_rng(1)
    assert numpy_generator(g) is g  # a generator passes through, as make_generator's does
    assert numpy_generator(None).random() != numpy_generator(None).random()


def test_derived_seeds_wrap_at_the_top_of_the_range():
    """A seed that feeds several streams derives the others as ``(seed + k) % 2**32``: the
    largest accepted seed works where ``seed + k`` was refused (naming the derived value)."""
    from probml.inference.metalearners import BayesianQLearner
    from probml.inference.minimax import DRUM
    from probml.utils import derive_seed

    assert derive_seed(5, 3) == 8 and derive_seed(2**32 - 1, 1000) == 999
    with pytest.raises(ValueError, match="random_state must be"):
        derive_seed(-1, 1, name="random_state")
    top = 2**32 - 1
    X, A, y, Xn, yn, sn = _small()
    yb = (yn > 0).astype(float)
    # log_effect_samples seeds Pyro with seed + 1 (NumPy refused 2**32)
    q = BayesianQLearner("svi", svi_steps=1, num_samples=4, seed=top).fit(Xn, sn, yb)
    assert q.log_effect_samples(Xn[:3]).shape == (4, 3)
    # the cross-fitted correction fits fold k's outcome model with seed + k + 1
    drum = DRUM(seed=top, verbose=False, num_iters=1, bias_correction=True, n_folds=2)
    assert drum.fit(X, A, y, X).correction_ is not None


def test_a_seed_given_as_generator_is_named_generator():
    """Where the argument is ``generator`` (a seed or a torch.Generator), a bad seed is
    refused under that name; ``make_generator`` named it ``seed`` whatever the caller's
    argument was."""
    from probml.inference.particles import resample
    from probml.models.dynamics import LinearGaussianSSM

    ssm = LinearGaussianSSM.random(dim=2)
    for call in (
        lambda g: LinearGaussianSSM.random(dim=2, generator=g),
        lambda g: ssm.simulate(2, generator=g),
        lambda g: resample(torch.zeros(4), generator=g),
    ):
        with pytest.raises(ValueError, match="^generator must be a non-negative int"):
            call(-1)
