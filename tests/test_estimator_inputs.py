"""The scikit-learn-style estimators (PACE-GGM and its baselines, the ratio learners,
FairRegressor, DRUM and its baselines) take what scikit-learn's own estimators take, and refuse
what those refuse, by name: sparse, complex, empty and wrongly shaped data. Before, a complex
``X`` lost its imaginary part with only a warning, a sparse one failed inside NumPy, a float32
source made DRUM fail at prediction time, and PACE-GGM's default ``rounds`` failed on every
two-column data set. The PACE estimators also pass scikit-learn's whole estimator check suite.
"""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from probml.inference.metalearners import (
    DRRatioLearner,
    LinearisedRatioLearner,
    QDRLearner,
    QLearner,
    SRatioLearner,
    TRatioLearner,
)
from probml.inference.minimax import DRUM, ERMOnX, ImputationBaseline
from probml.inference.pace import (
    PACEGGM,
    GaussianMechanismCovariance,
    PerEntryGaussianCovariance,
)
from probml.inference.transport import FairRegressor
from probml.utils import check_data


@parametrize_with_checks(
    [
        PACEGGM(random_state=0),
        GaussianMechanismCovariance(random_state=0),
        PerEntryGaussianCovariance(random_state=0),
    ]
)
def test_private_covariances_pass_scikit_learns_checks(estimator, check):
    check(estimator)


def _data(n=60, d=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    w = np.arange(n) % 2
    return X, w, rng.poisson(2.0, n) + 0.5, (np.arange(n) // 2) % 2


def _fitters():
    """``name -> fit(X)`` for every estimator whose first argument is the design ``X``."""
    _, w, y, s = _data()
    yb = (np.arange(60) % 3 == 0).astype(float)
    small = {"num_iters": 2, "verbose": False}
    return {
        "PACEGGM": lambda X: PACEGGM(random_state=0).fit(X),
        "GaussianMechanismCovariance": lambda X: GaussianMechanismCovariance(
            0.5, random_state=0
        ).fit(X),
        "FairRegressor": lambda X: FairRegressor().fit(X, y, s),
        "QLearner": lambda X: QLearner().fit(X, w, y),
        "TRatioLearner": lambda X: TRatioLearner().fit(X, w, y),
        "DRUM": lambda X: DRUM(**small).fit(X, w, yb, _data()[0]),
    }


BAD = {
    "complex": (lambda X: X + 1j, ValueError, "Complex data not supported"),
    "sparse": (sp.csr_matrix, TypeError, "Sparse data was passed"),
    "no columns": (lambda X: X[:, :0], ValueError, "0 feature"),
    "three dims": (lambda X: X[None], ValueError, "dim 3"),
}


@pytest.mark.parametrize("estimator", list(_fitters()))
@pytest.mark.parametrize("bad", list(BAD))
def test_bad_containers_are_refused_by_name(estimator, bad):
    make, error, match = BAD[bad]
    X = _data()[0]
    with pytest.raises(error, match=match) as info:
        _fitters()[estimator](make(X))
    assert "X" in str(info.value)  # X or X_source: the argument is named


def _output(est, X):
    """A fitted estimator's answer at ``X``, whatever its kind."""
    for name in ("covariance_",):
        if hasattr(est, name):
            return np.asarray(getattr(est, name))
    if hasattr(est, "effect"):
        return est.effect(X)
    if hasattr(est, "predict_proba"):
        return est.predict_proba(X)
    return est.predict(X, _data()[3])


@pytest.mark.parametrize("estimator", list(_fitters()))
def test_lists_and_read_only_arrays_give_the_same_fit(estimator):
    """A list and a read-only array (a memory map, say) fit exactly as the array does (an
    invariant kept through the move to ``check_data``; the old code passed it too)."""
    X = _data()[0]
    ro = X.copy()
    ro.flags.writeable = False
    fits = [_fitters()[estimator](v) for v in (X, X.tolist(), ro)]
    ref = _output(fits[0], X)
    for est in fits[1:]:
        np.testing.assert_allclose(_output(est, X), ref, rtol=0, atol=1e-12)


@pytest.mark.filterwarnings("ignore:.*cannot split:UserWarning")  # 60 units: on purpose
def test_ratio_and_fair_vectors_are_checked():
    X, w, y, s = _data()
    with pytest.raises(ValueError, match="y: Complex data"):
        QLearner().fit(X, w, y + 1j)
    with pytest.raises(ValueError, match="Input w contains NaN"):
        SRatioLearner().fit(X, np.where(w == 1, np.nan, 0.0), y)
    with pytest.raises(ValueError, match="y: Complex data"):
        FairRegressor().fit(X, y + 1j, s)
    # an n x 1 outcome is a vector, as before
    a = FairRegressor().fit(X, y[:, None], s).predict(X, s)
    assert np.allclose(a, FairRegressor().fit(X, y, s).predict(X, s))
    for cls in (DRRatioLearner, LinearisedRatioLearner, QDRLearner):
        est = cls(n_folds=2).fit(X, w, y)
        with pytest.raises(ValueError, match=r"X must have 3 columns \(as in fit\)"):
            est.effect(X[:, :2])
    fr = FairRegressor().fit(X, y, s)
    with pytest.raises(ValueError, match=r"X must have 3 columns \(as in fit\)"):
        fr.predict(X[:, :2], s)


def test_drum_works_in_the_source_dtype_and_device():
    """X_source sets the working dtype; the others follow it, at fit and at prediction."""
    X, w, _, _ = _data(80)
    yb = (np.arange(80) % 3 == 0).astype(float)
    kw = {"num_iters": 5, "verbose": False, "outcome_model": "linear"}
    ref = DRUM(**kw).fit(X.astype(np.float32), w, yb, X.astype(np.float32))
    for Xs, Xt in (
        (X.astype(np.float32), X),  # float32 source, float64 target
        (torch.tensor(X, dtype=torch.float32), X),  # a float32 tensor beside numpy
    ):
        est = DRUM(**kw).fit(Xs, w, yb, Xt)
        p = est.predict_proba(X)  # float64 at prediction
        assert np.isfinite(p).all() and p.shape == (80, 2)
    assert ref.dtype_ == torch.float64  # numpy input goes through check_data (float64)
    assert est.dtype_ == torch.float32
    for m in (ERMOnX(num_iters=5), ImputationBaseline(outcome_model="linear")):
        m.fit(torch.tensor(X, dtype=torch.float32), w, yb, X)
        assert np.isfinite(m.predict_proba(X)).all()


def test_drum_refuses_degenerate_sources():
    X, w, _, _ = _data()
    yb = (np.arange(60) % 3 == 0).astype(float)
    kw = {"num_iters": 2, "verbose": False}
    with pytest.raises(ValueError, match="X_source: Found array with 1 sample"):
        DRUM(**kw).fit(X[:1], w[:1], yb[:1], X)
    with pytest.raises(ValueError, match="y_source must contain both classes"):
        DRUM(**kw).fit(X, w, np.zeros(60), X)
    with pytest.raises(ValueError, match="X_source must be real"):
        DRUM(**kw).fit(torch.tensor(X) + 1j, w, yb, X)
    with pytest.raises(ValueError, match="X_target must have at least 1 row"):
        DRUM(**kw).fit(X, w, yb, torch.zeros(0, 3))
    # a tensor with rows and no column (a slice X[:, :0]) is refused by name, as NumPy's is
    with pytest.raises(ValueError, match=r"X_source must have at least 2 row\(s\) and one column"):
        DRUM(**kw).fit(torch.tensor(X)[:, :0], w, yb, X)
    # y_source with all 1s has one class too, as all 0s does
    with pytest.raises(ValueError, match="y_source must contain both classes"):
        DRUM(**kw).fit(X, w, np.ones(60), X)


def test_drum_family_supports_get_params_and_clone():
    est = DRUM(rho=0.2, num_iters=7, seed=3)
    c = clone(est)
    assert c is not est and c.get_params() == est.get_params()
    assert clone(ERMOnX(hidden=8)).hidden == 8
    assert ImputationBaseline().set_params(seed=5).seed == 5


@pytest.mark.parametrize("d, rounds", [(1, 0), (2, 1), (3, 3), (5, 5)])
def test_pace_default_rounds_fit_every_width(d, rounds):
    X = np.random.default_rng(d).uniform(-1, 1, size=(500, d))
    est = PACEGGM(random_state=0).fit(X)
    assert len(est.measured_) == rounds
    assert est.rho_spent_ <= est.budget_.rho * (1 + 1e-12)
    with pytest.raises(TypeError, match="rounds must be an integer"):
        PACEGGM(rounds=1.5, random_state=0).fit(X)


def test_check_data_names_the_argument():
    with pytest.raises(ValueError, match="w: Found array with 0 sample"):
        check_data("w", np.zeros(0), ndim=1)
    with pytest.raises(ValueError, match="Input w contains NaN"):  # scikit-learn names it
        check_data("w", [1.0, np.nan], ndim=1)
    with pytest.raises(ValueError, match=r"v must be 1-D, got shape \(2, 2\)"):
        check_data("v", np.eye(2), ndim=1)
    assert check_data("X", [1.0, 2.0], column_from_1d=True).shape == (2, 1)
    assert check_data("X", np.ones((2, 2), np.float32)).dtype == np.float64
    with pytest.raises(ValueError, match="needs ndim=2"):
        check_data("w", [1.0], ndim=1, n_features=1)


def test_drum_transport_takes_float64_data_and_leaves_given_modules_alone():
    """``divergence="transport"`` built its perturbation in float32, so float64 data (plain
    NumPy arrays) failed in the first matrix product. A given generator or predictor was also
    frozen, cast and trained in place; now the fit works on copies."""
    from probml.guides.generators import ConditionalBernoulli
    from probml.models.transfer import BinaryShiftProblem, ContinuousShiftSimulation

    sim = ContinuousShiftSimulation()
    Xs, As, ys = sim.sample_source(300, 0)
    Xt = sim.sample_target_x(300, 1)
    est = DRUM(rho=0.3, divergence="transport", num_iters=5, verbose=False)
    est.fit(*(t.double().numpy() for t in (Xs, As, ys, Xt)))
    assert est.dtype_ == torch.float64
    assert np.isfinite(est.predict_proba(Xt[:5].numpy())).all()

    Xs, As, ys, Xt = BinaryShiftProblem().sample(500, 0)
    g0 = ConditionalBernoulli.constant(0.15).requires_grad_(True)  # float32, trainable
    lin = torch.nn.Linear(1, 1)
    before = [p.detach().clone() for p in lin.parameters()]
    assert all(p.requires_grad for p in g0.parameters())
    est = DRUM(rho=0.1, source_conditional=g0, predictor=lin, num_iters=20, verbose=False)
    est.fit(Xs.double(), As, ys, Xt.double())  # float64 data with a float32 generator
    assert all(p.requires_grad for p in g0.parameters())  # not frozen in place
    assert next(g0.parameters()).dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(before, lin.parameters()))
    assert lin.weight.dtype == torch.float32
    assert np.isfinite(est.predict_proba(Xt[:5].double())).all()
