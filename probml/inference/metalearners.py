r"""Meta-learners for the ratio treatment effect

.. math:: \tau(x) = \frac{\mathbb E[Y \mid W=1, X=x]}{\mathbb E[Y \mid W=0, X=x]}
          = \frac{\mu_1(x)}{\mu_0(x)}, \qquad Y \ge 0.

* :class:`QLearner` **[paper]**: by Bayes' rule :math:`\tau = \mathrm{odds}(q) / \mathrm{odds}(e)`
  with :math:`q(x) = P(W=1 \mid Y=1, x)` and :math:`e(x) = P(W=1 \mid x)`, so
  :math:`\log\tau = \mathrm{logit}\, q - \mathrm{logit}\, e`: two classification tasks. For
  non-negative :math:`Y`, :math:`q` is the classifier of :math:`W` on :math:`X` with sample weights
  :math:`Y` (then :math:`\mathrm{odds}(q) = e\mu_1 / ((1-e)\mu_0)`).
* :class:`SRatioLearner`, :class:`TRatioLearner`: plug-in :math:`\hat\mu_1 / \hat\mu_0` from one
  model with :math:`W` as a feature, or one model per arm.
* Doubly robust **[paper; estimator details are our design]**, with cross-fitted pseudo-outcomes
  :math:`\varphi_1 = \hat\mu_1 + W(Y - \hat\mu_1)/\hat e`,
  :math:`\varphi_0 = \hat\mu_0 + (1-W)(Y - \hat\mu_0)/(1-\hat e)`:
  :class:`DRRatioLearner` regresses each on :math:`X` and takes the ratio;
  :class:`QDRLearner` stacks every unit twice (label 1 weight :math:`\varphi_1^+`, label 0 weight
  :math:`\varphi_0^+`) and reads :math:`\tau = p/(1-p)` off one classifier.
  Both are consistent when either :math:`\hat e` or :math:`\hat\mu` is.
* :class:`LinearisedRatioLearner`: the one-step linearised ratio pseudo-outcome. **Not** doubly
  robust (its remainder is second order in the outcome-model error); kept only as a contrast.

All follow scikit-learn: hyper-parameters in ``__init__`` (no work there), ``fit(X, w, y)``
returns ``self``, learned state ends in ``_``; any classifier / regressor can be a nuisance model
(cloned, never mutated). ``effect(X)`` returns :math:`\hat\tau(x)` (``n``),
``log_effect(X)`` its log.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from probml.exceptions import NotFittedError
from probml.utils import (
    check_binary,
    check_data,
    check_int,
    check_interval,
    check_positive,
    check_prior,
    check_seed,
    derive_seed,
    keep_global_rng,
    keep_param_store,
)

__all__ = [
    "QLearner",
    "SRatioLearner",
    "TRatioLearner",
    "DRRatioLearner",
    "QDRLearner",
    "LinearisedRatioLearner",
    "BayesianQLearner",
    "check_ratio_inputs",
]

Propensity = float | Callable[[np.ndarray], np.ndarray] | None


# ----------------------------------------------------------------------------- validation
def check_ratio_inputs(X, w, y=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validate ``X`` (``n x d``; a 1-D ``X`` is one column), binary ``w`` (``n``) and
    non-negative ``y`` (``n``): dense, real and finite (:func:`probml.utils.check_data`)."""
    X = check_data("X", X, column_from_1d=True)
    w = check_data("w", w, ndim=1)
    if len(w) != len(X):
        raise ValueError(f"w must have shape ({len(X)},) to match X, got {w.shape}")
    w = check_binary("w", w).astype(np.int64)
    if w.min() == w.max():
        raise ValueError("w must contain both treated (1) and control (0) units")
    if y is None:
        return X, w, None
    y = check_data("y", y, ndim=1)
    if len(y) != len(X):
        raise ValueError(f"y must have shape ({len(X)},) to match X, got {y.shape}")
    if (y < 0).any():
        raise ValueError(f"y must be non-negative for a ratio effect; min(y) = {y.min():.4g}")
    for arm in (0, 1):
        if y[w == arm].sum() <= 0:
            raise ValueError(f"every outcome in arm w={arm} is zero: the ratio is not identified")
    return X, w, y


def _check_X(X, n_features: int) -> np.ndarray:
    return check_data("X", X, n_features=n_features, column_from_1d=True)


def _check_floor(floor, upper: float | None = None) -> float:
    """``floor`` as a float in ``(0, upper)`` (a floor <= 0 would let a log see 0 or less)."""
    f = check_positive("floor", floor)
    if upper is not None and not f < upper:
        raise ValueError(f"floor must be < {upper}, got {floor!r}")
    return f


def _check_clip(clip: float) -> float:
    return check_interval("clip", clip, 0, 0.5, closed="left")


def _propensity_values(propensity: Propensity, X: np.ndarray) -> np.ndarray | None:
    """Known propensities at ``X``, validated to lie in (0, 1); ``None`` if not known."""
    if propensity is None:
        return None
    if callable(propensity):
        e = np.asarray(propensity(X), dtype=float).reshape(-1)
        if e.shape != (len(X),):
            raise ValueError(f"propensity(X) must return shape ({len(X)},), got {e.shape}")
    elif np.ndim(propensity) == 0:
        e = np.full(len(X), float(propensity))
    else:
        raise TypeError(
            "propensity must be a float (RCT) or a callable X -> e(X); an array cannot be "
            "evaluated at new X"
        )
    if not np.isfinite(e).all() or (e <= 0).any() or (e >= 1).any():
        raise ValueError(
            f"propensities must lie in (0, 1); got range [{e.min():.4g}, {e.max():.4g}]"
        )
    return e


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def _check_mean_models(learner, *names: str) -> None:
    """Each named nuisance model must give a mean: a regressor's ``predict``, or a classifier's
    ``predict_proba``. A classifier without it (``LinearSVC``, ``SVC(probability=False)``)
    would give labels, which would be read as probabilities."""
    from sklearn.base import is_classifier

    for name in names:
        model = getattr(learner, name)
        if model is not None and is_classifier(model) and not hasattr(model, "predict_proba"):
            raise TypeError(
                f"{name}: {type(model).__name__} is a classifier without predict_proba, so it "
                "gives labels, not probabilities; wrap it in "
                "sklearn.calibration.CalibratedClassifierCV"
            )


def _check_weighted(name: str, model) -> None:
    """A nuisance model fitted with sample weights must take them: scikit-learn's own
    ``TypeError`` (an unexpected keyword) names neither the slot nor the reason."""
    from sklearn.utils.validation import has_fit_parameter

    if not has_fit_parameter(model, "sample_weight"):
        raise TypeError(
            f"{name}: {type(model).__name__}.fit takes no sample_weight, which this learner "
            "needs here (the weights are the outcomes, or the pseudo-outcomes); pick a "
            "classifier that takes sample weights, such as LogisticRegression"
        )


def _mean_prediction(model, X: np.ndarray) -> np.ndarray:
    """``P(label 1 | X)`` for a classifier, ``predict(X)`` for a regressor."""
    if hasattr(model, "predict_proba"):
        proba = model.predict_proba(X)
        classes = list(getattr(model, "classes_", [0, 1]))
        return proba[:, classes.index(1)] if 1 in classes else np.zeros(len(X))
    return np.asarray(model.predict(X), dtype=float)


def _fit(model, X, y, sample_weight=None):
    m = clone(model)
    if sample_weight is None or np.all(sample_weight == 1.0):
        return m.fit(X, y)
    return m.fit(X, y, sample_weight=sample_weight)


def _folds(n_folds: int, w: np.ndarray, random_state) -> list[tuple[np.ndarray, np.ndarray]]:
    n_folds = check_int("n_folds", n_folds)
    if random_state is not None and not isinstance(random_state, np.random.RandomState):
        check_seed("random_state", random_state)  # scikit-learn's own message names no argument
    idx = np.arange(len(w))
    if n_folds == 1:
        return [(idx, idx)]
    # scikit-learn's own messages name its n_splits, or (one unit in an arm) none: a training
    # fold without that arm failed later, inside a nuisance model's fit
    if n_folds > len(w):
        raise ValueError(f"n_folds ({n_folds}) must be <= the number of units ({len(w)})")
    smaller = int(min((w == 1).sum(), (w == 0).sum()))
    if smaller < 2:
        raise ValueError(
            f"cross-fitting (n_folds = {n_folds}) needs >= 2 units in each arm, got {smaller} "
            "in one: a training fold would hold none of it (use n_folds=1 where allowed)"
        )
    splitter = StratifiedKFold(n_folds, shuffle=True, random_state=random_state)
    return list(splitter.split(idx, w))


def _default_classifier():
    return LogisticRegression(C=1e4, max_iter=2000)


def _default_final_regressor():
    # pseudo-outcomes are noisy (inverse-propensity terms): a shallow, strongly regularised
    # boosting model; a flexible one overfits and the ratio of two such fits is unstable
    return HistGradientBoostingRegressor(
        max_iter=50, learning_rate=0.05, max_depth=3, min_samples_leaf=500, random_state=0
    )


def _default_outcome_model(y: np.ndarray):
    if np.isin(y, (0.0, 1.0)).all():
        return _default_classifier()
    return HistGradientBoostingRegressor(loss="poisson", max_iter=200, random_state=0)


class _RatioLearner(BaseEstimator):
    """Shared ``effect`` / ``log_effect`` API."""

    def log_effect(self, X) -> np.ndarray:
        """``log tau_hat(x)`` for each row of ``X`` (``n x d``); returns ``n``."""
        if not hasattr(self, "n_features_in_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit(X, w, y) first")
        return self._log_effect(_check_X(X, self.n_features_in_))

    def effect(self, X) -> np.ndarray:
        """``tau_hat(x) = mu_1(x) / mu_0(x)`` for each row of ``X``; returns ``n``."""
        return np.exp(self.log_effect(X))


# ----------------------------------------------------------------------------- Q-Learner
class QLearner(_RatioLearner):
    r"""The Q-Learner: :math:`\log\hat\tau = \mathrm{logit}\,\hat q - \mathrm{logit}\,\hat e`.

    Args:
        classifier: classifier for :math:`q` (``W`` on ``X`` among converters, or weighted by
            ``Y``). Default: logistic regression (nearly unpenalised), which makes
            :math:`\log\tau` log-linear in ``X``.
        propensity_model: classifier for :math:`e` when the propensity is not given to ``fit``
            (default: same as ``classifier``).
        n_folds: number of cross-fitting folds; fold models are averaged in logit space.
            ``1`` fits once on all data.
        clip: :math:`\hat e` and :math:`\hat q` are clipped to ``[clip, 1 - clip]``.
        random_state: seed of the fold split.
    """

    def __init__(
        self,
        classifier=None,
        propensity_model=None,
        n_folds: int = 1,
        clip: float = 0.01,
        random_state: int | None = 0,
    ):
        self.classifier = classifier
        self.propensity_model = propensity_model
        self.n_folds = n_folds
        self.clip = clip
        self.random_state = random_state

    def fit(self, X, w, y, propensity: Propensity = None) -> QLearner:
        """Fit :math:`q` (and :math:`e` unless ``propensity`` is given: a float for an RCT or a
        callable ``X -> e(X)``)."""
        X, w, y = check_ratio_inputs(X, w, y)
        clip = _check_clip(self.clip)
        _propensity_values(propensity, X)  # validate before any fitting
        _check_mean_models(self, "classifier", "propensity_model")
        clf = self.classifier if self.classifier is not None else _default_classifier()
        if not np.isin(y, (0.0, 1.0)).all():  # binary y: every converter has weight 1
            _check_weighted("classifier", clf)
        emodel = self.propensity_model if self.propensity_model is not None else clf
        self.q_models_, self.e_models_ = [], []
        for train, _ in _folds(self.n_folds, w, self.random_state):
            pos = train[y[train] > 0]
            if np.unique(w[pos]).size < 2:
                raise ValueError("a fold has converters (y > 0) in only one arm; use fewer folds")
            self.q_models_.append(_fit(clf, X[pos], w[pos], sample_weight=y[pos]))
            if propensity is None:
                self.e_models_.append(_fit(emodel, X[train], w[train]))
        self.propensity_ = propensity
        self._clip = clip
        self.n_features_in_ = X.shape[1]
        return self

    def q(self, X) -> np.ndarray:
        """:math:`\\hat q(x)`, fold-averaged in logit space and clipped."""
        X = _check_X(X, self.n_features_in_)
        z = np.mean(
            [
                _logit(np.clip(_mean_prediction(m, X), self._clip, 1 - self._clip))
                for m in self.q_models_
            ],
            axis=0,
        )
        return 1.0 / (1.0 + np.exp(-z))

    def propensity(self, X) -> np.ndarray:
        """:math:`\\hat e(x)` (the given propensity, or the fitted one), clipped."""
        X = _check_X(X, self.n_features_in_)
        known = _propensity_values(self.propensity_, X)
        if known is not None:
            return np.clip(known, self._clip, 1 - self._clip)
        z = np.mean(
            [
                _logit(np.clip(_mean_prediction(m, X), self._clip, 1 - self._clip))
                for m in self.e_models_
            ],
            axis=0,
        )
        return 1.0 / (1.0 + np.exp(-z))

    def _log_effect(self, X):
        return _logit(self.q(X)) - _logit(self.propensity(X))


# ----------------------------------------------------------------------------- S / T
class SRatioLearner(_RatioLearner):
    """One outcome model with ``W`` as the last feature; :math:`\\hat\\tau = \\hat\\mu(x,1)/\\hat\\mu(x,0)`.

    Args:
        model: classifier (binary ``Y``) or regressor; default by the outcome's type: a
            logistic regression for 0/1 outcomes, else gradient boosting with the Poisson
            loss (its predictions are positive, as a ratio's terms must be).
        floor: :math:`\\hat\\mu` is floored at ``floor`` before the ratio (documented clipping).
    """

    def __init__(self, model=None, floor: float = 1e-6):
        self.model = model
        self.floor = floor

    def fit(self, X, w, y, propensity: Propensity = None) -> SRatioLearner:
        """``propensity`` is not used (an outcome-model learner needs none); it is checked
        like the other learners' so a wrong value is not silently accepted."""
        _check_floor(self.floor)
        X, w, y = check_ratio_inputs(X, w, y)
        _propensity_values(propensity, X)
        _check_mean_models(self, "model")
        m = self.model if self.model is not None else _default_outcome_model(y)
        self.model_ = _fit(m, np.column_stack([X, w]), y)
        self.n_features_in_ = X.shape[1]
        return self

    def _log_effect(self, X):
        one, zero = np.ones(len(X)), np.zeros(len(X))
        mu1 = _mean_prediction(self.model_, np.column_stack([X, one]))
        mu0 = _mean_prediction(self.model_, np.column_stack([X, zero]))
        return np.log(np.maximum(mu1, self.floor)) - np.log(np.maximum(mu0, self.floor))


class TRatioLearner(_RatioLearner):
    """One outcome model per arm; :math:`\\hat\\tau = \\hat\\mu_1(x)/\\hat\\mu_0(x)`."""

    def __init__(self, model=None, model_treated=None, floor: float = 1e-6):
        self.model = model
        self.model_treated = model_treated
        self.floor = floor

    def fit(self, X, w, y, propensity: Propensity = None) -> TRatioLearner:
        """``propensity`` is not used; checked as in :meth:`SRatioLearner.fit`."""
        _check_floor(self.floor)
        X, w, y = check_ratio_inputs(X, w, y)
        _propensity_values(propensity, X)
        _check_mean_models(self, "model", "model_treated")
        m0 = self.model if self.model is not None else _default_outcome_model(y)
        m1 = self.model_treated if self.model_treated is not None else m0
        self.model0_ = _fit(m0, X[w == 0], y[w == 0])
        self.model1_ = _fit(m1, X[w == 1], y[w == 1])
        self.n_features_in_ = X.shape[1]
        return self

    def _log_effect(self, X):
        mu1 = np.maximum(_mean_prediction(self.model1_, X), self.floor)
        mu0 = np.maximum(_mean_prediction(self.model0_, X), self.floor)
        return np.log(mu1) - np.log(mu0)


# ----------------------------------------------------------------------------- DR family
class _PseudoOutcomeLearner(_RatioLearner):
    """Cross-fitted nuisances and the AIPW pseudo-outcomes :math:`\\varphi_0, \\varphi_1`."""

    def _final_model(self, n: int):
        """``final_model``, or the default, with a warning when the default cannot split."""
        if self.final_model is not None:
            return self.final_model
        final = _default_final_regressor()
        if n < 2 * final.min_samples_leaf:
            warnings.warn(
                f"{type(self).__name__}: the default final model's leaves hold at least "
                f"{final.min_samples_leaf} units, so on {n} units it cannot split and predicts "
                f"one effect for every x (it ranks no one). Pass final_model= for small data",
                UserWarning,
                stacklevel=3,
            )
        return final

    def _pseudo_outcomes(self, X, w, y, propensity):
        clip = _check_clip(self.clip)
        known = _propensity_values(propensity, X)
        _check_mean_models(self, "outcome_model", "propensity_model")
        m_out = self.outcome_model if self.outcome_model is not None else _default_outcome_model(y)
        m_e = self.propensity_model if self.propensity_model is not None else _default_classifier()
        n = len(y)
        mu0, mu1, e = np.empty(n), np.empty(n), np.empty(n)
        check_int("n_folds", self.n_folds, 2)  # cross-fitting needs two folds
        for train, test in _folds(self.n_folds, w, self.random_state):
            t0, t1 = train[w[train] == 0], train[w[train] == 1]
            mu0[test] = _mean_prediction(_fit(m_out, X[t0], y[t0]), X[test])
            mu1[test] = _mean_prediction(_fit(m_out, X[t1], y[t1]), X[test])
            e[test] = (
                known[test]
                if known is not None
                else _mean_prediction(_fit(m_e, X[train], w[train]), X[test])
            )
        e = np.clip(e, clip, 1 - clip)
        # phi_1 = mu_1 + W (Y - mu_1)/e ;  phi_0 = mu_0 + (1 - W)(Y - mu_0)/(1 - e)
        phi1 = mu1 + w * (y - mu1) / e
        phi0 = mu0 + (1 - w) * (y - mu0) / (1 - e)
        self.nuisances_ = {"mu0": mu0, "mu1": mu1, "e": e}
        return mu0, mu1, phi0, phi1


_DR_DOC = """
    Args:
        outcome_model: nuisance model for :math:`\\mu_w` (fit per arm; default by outcome type).
        propensity_model: classifier for :math:`e` unless a propensity is given to ``fit``.
        {final}
        n_folds: cross-fitting folds (>= 2): nuisances for a unit are fitted without its fold.
        clip: :math:`\\hat e` is clipped to ``[clip, 1 - clip]``.
        floor: the final :math:`\\hat\\mu` estimates are floored at ``floor`` before the ratio
            (DR-ratio's default ``None``: 1% of each arm's mean outcome).
        random_state: seed of the fold split.
"""


class DRRatioLearner(_PseudoOutcomeLearner):
    __doc__ = (
        r"""DR-ratio: regress :math:`\varphi_1` and :math:`\varphi_0` on ``X``; take the ratio."""
        + _DR_DOC.format(
            final="final_model: regressor for the pseudo-outcomes (default shallow, regularised gradient boosting)."
        )
    )

    def __init__(
        self,
        outcome_model=None,
        propensity_model=None,
        final_model=None,
        n_folds: int = 5,
        clip: float = 0.01,
        floor: float | None = None,
        random_state: int | None = 0,
    ):
        self.outcome_model = outcome_model
        self.propensity_model = propensity_model
        self.final_model = final_model
        self.n_folds = n_folds
        self.clip = clip
        self.floor = floor
        self.random_state = random_state

    def fit(self, X, w, y, propensity: Propensity = None) -> DRRatioLearner:
        """Cross-fit the nuisances and fit the final model: ``X`` ``n x d``, binary ``w``,
        non-negative ``y``; ``propensity`` known (a float or a callable of ``X``) or ``None``
        (fitted)."""
        if self.floor is not None:
            _check_floor(self.floor)
        X, w, y = check_ratio_inputs(X, w, y)
        _, _, phi0, phi1 = self._pseudo_outcomes(X, w, y, propensity)
        final = self._final_model(len(y))
        self.final0_ = _fit(final, X, phi0)
        self.final1_ = _fit(final, X, phi1)
        # regressions of pseudo-outcomes can dip to or below 0: floor each arm's prediction
        # (default: 1% of that arm's mean outcome) before the ratio
        self.floor_ = (
            (0.01 * y[w == 0].mean(), 0.01 * y[w == 1].mean())
            if self.floor is None
            else (float(self.floor), float(self.floor))
        )
        self.n_features_in_ = X.shape[1]
        return self

    def _log_effect(self, X):
        num = np.maximum(np.asarray(self.final1_.predict(X), float), self.floor_[1])
        den = np.maximum(np.asarray(self.final0_.predict(X), float), self.floor_[0])
        return np.log(num) - np.log(den)


class QDRLearner(_PseudoOutcomeLearner):
    __doc__ = r"""Q-DR: one weighted classifier on every unit stacked twice, label 1 with weight
    :math:`\varphi_1` and label 0 with weight :math:`\varphi_0`; :math:`\hat\tau = p/(1-p)`.
    The population solution is :math:`p = \bar\varphi_1 / (\bar\varphi_1 + \bar\varphi_0)`,
    i.e. :math:`p/(1-p)` = the DR-ratio. With :math:`\hat\mu = 0` and a known :math:`e` it
    reduces to the Q-Learner's odds-ratio form.

    **[design]** The spec clips negative weights at zero. That biases the estimator even when
    both nuisances are right (:math:`\mathbb E[\varphi_1^+] \ne \mu_1`), so by default the signed
    weights are kept (``negative_weights="keep"``; scikit-learn's logistic regression accepts
    them and solves the same estimating equation); ``"clip"`` gives the literal variant.""" + _DR_DOC.format(
        final="classifier: the final weighted classifier (default logistic).\n"
        '        negative_weights: ``"keep"`` (signed weights) or ``"clip"`` (at 0).'
    )

    def __init__(
        self,
        outcome_model=None,
        propensity_model=None,
        classifier=None,
        n_folds: int = 5,
        clip: float = 0.01,
        floor: float = 1e-6,
        negative_weights: str = "keep",
        random_state: int | None = 0,
    ):
        self.outcome_model = outcome_model
        self.propensity_model = propensity_model
        self.classifier = classifier
        self.negative_weights = negative_weights
        self.n_folds = n_folds
        self.clip = clip
        self.floor = floor
        self.random_state = random_state

    def fit(self, X, w, y, propensity: Propensity = None) -> QDRLearner:
        """Cross-fit the nuisances and fit the final model: ``X`` ``n x d``, binary ``w``,
        non-negative ``y``; ``propensity`` known (a float or a callable of ``X``) or ``None``
        (fitted)."""
        if self.negative_weights not in ("keep", "clip"):
            raise ValueError(
                f"negative_weights must be 'keep' or 'clip', got {self.negative_weights!r}"
            )
        _check_floor(self.floor, upper=0.5)  # p is clipped to [floor, 1 - floor]
        _check_mean_models(self, "classifier")
        clf = self.classifier if self.classifier is not None else _default_classifier()
        _check_weighted("classifier", clf)
        X, w, y = check_ratio_inputs(X, w, y)
        _, _, phi0, phi1 = self._pseudo_outcomes(X, w, y, propensity)
        n = len(y)
        Xs = np.vstack([X, X])
        labels = np.concatenate([np.ones(n, dtype=np.int64), np.zeros(n, dtype=np.int64)])
        weights = np.concatenate([phi1, phi0])
        self.negative_weight_fraction_ = float(np.mean(weights < 0))
        if self.negative_weights == "clip":
            weights = np.maximum(weights, 0.0)
        keep = weights != 0
        self.classifier_ = clone(clf).fit(Xs[keep], labels[keep], sample_weight=weights[keep])
        self.n_features_in_ = X.shape[1]
        return self

    def _log_effect(self, X):
        p = np.clip(_mean_prediction(self.classifier_, X), self.floor, 1 - self.floor)
        return _logit(p)


class LinearisedRatioLearner(_PseudoOutcomeLearner):
    __doc__ = r"""One-step linearised ratio pseudo-outcome (a documented **contrast**, not DR):

    .. math:: \psi = \frac{\hat\mu_1}{\hat\mu_0} + \frac{\varphi_1 - \hat\mu_1}{\hat\mu_0}
              - \frac{\hat\mu_1 (\varphi_0 - \hat\mu_0)}{\hat\mu_0^2},

    regressed on ``X``. Its bias is second order in the outcome-model error, so it fails when
    :math:`\hat\mu` is wrong even with the right propensity.""" + _DR_DOC.format(
        final="final_model: regressor for psi (default gradient boosting)."
    )

    def __init__(
        self,
        outcome_model=None,
        propensity_model=None,
        final_model=None,
        n_folds: int = 5,
        clip: float = 0.01,
        floor: float = 1e-6,
        random_state: int | None = 0,
    ):
        self.outcome_model = outcome_model
        self.propensity_model = propensity_model
        self.final_model = final_model
        self.n_folds = n_folds
        self.clip = clip
        self.floor = floor
        self.random_state = random_state

    def fit(self, X, w, y, propensity: Propensity = None) -> LinearisedRatioLearner:
        """Cross-fit the nuisances and fit the final model: ``X`` ``n x d``, binary ``w``,
        non-negative ``y``; ``propensity`` known (a float or a callable of ``X``) or ``None``
        (fitted)."""
        _check_floor(self.floor)
        X, w, y = check_ratio_inputs(X, w, y)
        mu0, mu1, phi0, phi1 = self._pseudo_outcomes(X, w, y, propensity)
        mu0 = np.maximum(mu0, self.floor)
        psi = mu1 / mu0 + (phi1 - mu1) / mu0 - mu1 * (phi0 - mu0) / mu0**2
        final = self._final_model(len(y))
        self.final_ = _fit(final, X, psi)
        self.n_features_in_ = X.shape[1]
        return self

    def _log_effect(self, X):
        return np.log(np.maximum(np.asarray(self.final_.predict(X), float), self.floor))


# ----------------------------------------------------------------------------- Bayesian Q
class BayesianQLearner(_RatioLearner):
    r"""Bayesian Q-Learner on :func:`probml.models.treatment.ratio_q_model` (binary ``Y``).

    Posterior over the two logistic models by NUTS (``method="nuts"``, default for small
    problems) or SVI with an :class:`~pyro.infer.autoguide.AutoMultivariateNormal` guide
    (``method="svi"``); credible bands on :math:`\log\tau(x)` via :class:`pyro.infer.Predictive`.
    Coefficients are on standardised covariates (the priors are stated on that scale).

    Args:
        method: ``"nuts"`` or ``"svi"``.
        prior_q, prior_e: user priors over the ``d + 1`` coefficients (intercept first, then the
            standardised covariates): float64, event shape ``(d + 1,)``. ``prior_e`` is used
            only when ``fit`` estimates the propensity (``propensity=None``).
        num_samples, warmup_steps: NUTS settings; ``num_samples`` is also the number of draws
            from the SVI guide.
        svi_steps, lr: SVI settings.
        seed: seed for Pyro's RNG (the caller's global RNG states are restored after
            :meth:`fit` and the posterior draws).
        verbose: progress bar.

    The caller's Pyro parameter store is left as it was: :meth:`fit` and the posterior draws
    run on an empty store, and the SVI guide keeps its parameters on its own module.
    """

    def __init__(
        self,
        method: str = "nuts",
        prior_q=None,
        prior_e=None,
        num_samples: int = 500,
        warmup_steps: int = 300,
        svi_steps: int = 2000,
        lr: float = 0.02,
        seed: int = 0,
        verbose: bool = False,
    ):
        self.method = method
        self.prior_q = prior_q
        self.prior_e = prior_e
        self.num_samples = num_samples
        self.warmup_steps = warmup_steps
        self.svi_steps = svi_steps
        self.lr = lr
        self.seed = seed
        self.verbose = verbose

    def _design(self, X: np.ndarray):
        import torch

        Z = (X - self.x_mean_) / self.x_scale_
        return torch.as_tensor(np.column_stack([np.ones(len(X)), Z]), dtype=torch.float64)

    @keep_global_rng
    @keep_param_store
    def fit(self, X, w, y, propensity: float | None = None) -> BayesianQLearner:
        """Posterior of the two logistic models: ``X`` ``n x d``, binary ``w`` and ``y``;
        ``propensity`` a known constant in (0, 1), or ``None`` (the propensity model is fitted
        jointly)."""
        import pyro
        import torch
        from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
        from pyro.infer.autoguide import AutoMultivariateNormal

        from probml.models.treatment import ratio_q_model
        from probml.utils import progress

        if self.method not in ("nuts", "svi"):
            raise ValueError(f"method must be 'nuts' or 'svi', got {self.method!r}")
        check_int("num_samples", self.num_samples, 1)
        check_seed("seed", self.seed)
        if self.method == "nuts":
            check_int("warmup_steps", self.warmup_steps, 0)
        else:
            check_int("svi_steps", self.svi_steps, 1)
            check_positive("lr", self.lr)
        X, w, y = check_ratio_inputs(X, w, y)
        check_binary("y", y)  # the Q-model's likelihood is a Bernoulli (weighted y: QLearner)
        if propensity is not None:
            # a callable or per-unit array (which the other learners take) has no place in
            # the Bayesian model, which fits e(x) itself when propensity is None
            if callable(propensity) or isinstance(propensity, (str, bytes)):
                raise TypeError(
                    "propensity must be a float in (0, 1) (a known RCT propensity) or None "
                    "(the Bayesian model then fits e(x)), got "
                    f"{type(propensity).__name__}"
                )
            if np.ndim(propensity) != 0 or not 0 < float(propensity) < 1:
                raise ValueError(
                    "propensity must be a float in (0, 1) for the Bayesian model, got "
                    f"{propensity!r}"
                )
        self.x_mean_, self.x_scale_ = X.mean(0), X.std(0) + 1e-12
        self.n_features_in_ = X.shape[1]
        D = self._design(X)
        for name in ("prior_q", "prior_e"):  # before any sampling; d + 1 = intercept + covariates
            if getattr(self, name) is not None:
                check_prior(name, getattr(self, name), (D.shape[1],), D.dtype)
        conv = torch.as_tensor(y > 0)
        wt = torch.as_tensor(w, dtype=torch.float64)
        self._model_kwargs = dict(
            Xq=D[conv],
            wq=wt[conv],
            Xe=None if propensity is not None else D,
            we=None if propensity is not None else wt,
            e0=None if propensity is None else float(propensity),
            prior_q=self.prior_q,
            prior_e=self.prior_e,
        )
        pyro.set_rng_seed(self.seed)  # on an empty parameter store (keep_param_store)
        if self.method == "nuts":
            mcmc = MCMC(
                NUTS(ratio_q_model),
                num_samples=self.num_samples,
                warmup_steps=self.warmup_steps,
                disable_progbar=not self.verbose,
            )
            mcmc.run(**self._model_kwargs)
            self.posterior_samples_ = mcmc.get_samples()
            self.guide_ = None
        else:
            guide = AutoMultivariateNormal(ratio_q_model)
            svi = SVI(ratio_q_model, guide, pyro.optim.Adam({"lr": self.lr}), Trace_ELBO())
            self.elbo_ = []
            for _ in progress(range(self.svi_steps), verbose=self.verbose, desc="SVI"):
                self.elbo_.append(-svi.step(**self._model_kwargs))
            self.guide_ = guide
            self.posterior_samples_ = None
        return self

    @keep_global_rng
    @keep_param_store  # the guide's own parameters, not a caller's of the same name
    def log_effect_samples(self, X) -> np.ndarray:
        """Posterior draws of :math:`\\log\\tau` at the rows of ``X``: ``num_samples x n``."""
        import pyro
        from pyro.infer import Predictive

        from probml.models.treatment import ratio_q_model

        if not hasattr(self, "n_features_in_"):
            raise NotFittedError("BayesianQLearner is not fitted; call fit(X, w, y) first")
        Xn = self._design(_check_X(X, self.n_features_in_))
        pyro.set_rng_seed(derive_seed(self.seed, 1))
        if self.guide_ is None:
            samples = self.posterior_samples_  # {site: S x p}
        else:
            samples = Predictive(self.guide_, num_samples=self.num_samples, parallel=True)(
                **self._model_kwargs
            )
            samples = {k: v for k, v in samples.items() if k in ("beta_q", "beta_e")}
        # every draw in one vectorised pass: there a coefficient draw is S x 1 x p, its size-1
        # slot the data plate's (Pyro's Predictive would pass an S x p draw on as it is)
        samples = {k: v.detach().unsqueeze(-2) for k, v in samples.items()}
        pred = Predictive(
            ratio_q_model, posterior_samples=samples, return_sites=["log_tau"], parallel=True
        )
        draws = pred(**self._model_kwargs, X_new=Xn)["log_tau"].detach().cpu().numpy()
        return draws.reshape(draws.shape[0], len(Xn))

    def _log_effect(self, X):
        return self.log_effect_samples(X).mean(0)

    def credible_interval(self, X, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """Equal-tailed ``level`` credible band on :math:`\\tau(x)`: ``(lower, upper)``, each ``n``."""
        check_interval("level", level)
        s = self.log_effect_samples(X)
        a = (1 - level) / 2
        return np.exp(np.quantile(s, a, axis=0)), np.exp(np.quantile(s, 1 - a, axis=0))
