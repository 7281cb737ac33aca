"""WHAS500 (Worcester Heart Attack Study) as a DRUM transfer problem, read from the data file
that ships inside scikit-survival (the ``survival`` extra; nothing is downloaded).

Outcome ``Y``: death within ``horizon`` days of admission (patients censored alive before the
horizon are dropped: their 1-year status is unknown). Shared covariates ``X``: age, gender,
heart rate, systolic and diastolic blood pressure, BMI (standardised on the source). The
structurally missing covariate ``A``: one acute in-hospital complication (default ``chf``,
congestive heart failure), recorded in the source only. Split by age: source below
``threshold``, target at or above it (the target's labels are returned for evaluation only).
"""

from __future__ import annotations

import numpy as np
import torch

from probml.utils import check_finite, check_positive

__all__ = ["load_whas500_transfer", "whas500_split", "SHARED_COVARIATES", "ACUTE_VARIABLES"]

SHARED_COVARIATES = ("age", "gender", "hr", "sysbp", "diasbp", "bmi")
ACUTE_VARIABLES = ("chf", "sho", "afb", "cvd", "av3", "miord", "mitype")


def load_whas500_transfer(
    acute: str = "chf", threshold: float = 70.0, horizon: float = 365.0
) -> dict[str, torch.Tensor | list[str]]:
    """Source ``(X, A, y)`` and target ``X`` (plus the held-out target ``y``) of WHAS500
    (:func:`whas500_split` on scikit-survival's bundled file).

    Returns:
        ``X_source``, ``A_source``, ``y_source``, ``X_target``, ``y_target`` (float tensors)
        and ``x_names``.
    """
    if acute not in ACUTE_VARIABLES:
        raise ValueError(f"acute must be one of {ACUTE_VARIABLES}, got {acute!r}")
    try:
        from sksurv.datasets import load_whas500
    except ImportError as exc:
        raise ImportError(
            "the WHAS500 benchmark needs scikit-survival: pip install 'probml[survival]'"
        ) from exc
    df, surv = load_whas500()
    return whas500_split(df, surv["fstat"], surv["lenfol"], acute, threshold, horizon)


def whas500_split(
    df,
    event,
    time,
    acute: str = "chf",
    threshold: float = 70.0,
    horizon: float = 365.0,
) -> dict[str, torch.Tensor | list[str]]:
    """The transfer split of a WHAS500-like table (see the module docstring).

    Args:
        df: a table (``pandas.DataFrame``) with the columns of :data:`SHARED_COVARIATES` and
            ``acute``, one row per patient.
        event: ``n`` booleans, death observed; time: ``n`` follow-up lengths (days).
        acute: the source-only covariate; threshold: the age split; horizon: days.

    Patients who died within ``horizon`` have ``y = 1``; those followed beyond it, ``y = 0``;
    those censored alive at or before it are dropped. Covariates are standardised by the
    source's means and standard deviations; a covariate constant in the source keeps scale 1
    (as scikit-learn's ``StandardScaler``), so its target values are only centred.

    Raises:
        ValueError: ``event``/``time`` not one entry per row of ``df``; a NaN, infinite or
            negative ``time``; a missing (NaN) covariate; ``horizon <= 0``; a non-finite
            ``threshold``; or a split that leaves the source or the target without patients.
    """
    if acute not in ACUTE_VARIABLES:
        raise ValueError(f"acute must be one of {ACUTE_VARIABLES}, got {acute!r}")
    horizon = check_positive("horizon", horizon)
    check_finite("threshold", threshold)
    event, time = np.asarray(event, dtype=bool).reshape(-1), np.asarray(time, dtype=float)
    time = time.reshape(-1)
    for name, a in (("event", event), ("time", time)):
        if a.shape[0] != len(df):
            raise ValueError(
                f"{name} must have one entry per row of df ({len(df)}), got {a.shape[0]}"
            )
    check_finite("time", time)
    if (time < 0).any():
        raise ValueError(f"time must be >= 0 (days of follow-up), got min {time.min():g}")
    died = event & (time <= horizon)
    known = died | (time > horizon)
    df = df[known].copy()
    y = died[known].astype(float)
    X = np.column_stack([df[c].astype(float).to_numpy() for c in SHARED_COVARIATES])
    A = df[acute].astype(float).to_numpy()
    for name, a in zip((*SHARED_COVARIATES, acute), (*X.T, A)):
        check_finite(f"df[{name!r}]", a)
    src = X[:, 0] < threshold
    if not src.any() or src.all():
        side = "source (age < threshold)" if not src.any() else "target (age >= threshold)"
        raise ValueError(
            f"threshold={threshold!r} leaves the {side} without patients of known status"
        )
    mu, sd = X[src].mean(0), X[src].std(0)
    sd = np.where(sd > 0, sd, 1.0)
    Xs = (X - mu) / sd
    t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return {
        "X_source": t(Xs[src]),
        "A_source": t(A[src]),
        "y_source": t(y[src]),
        "X_target": t(Xs[~src]),
        "y_target": t(y[~src]),
        "x_names": list(SHARED_COVARIATES),
    }
