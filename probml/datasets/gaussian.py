r"""Gaussian data with a sparse precision (a known graphical model), and bundled real data
for private covariance estimation.

:func:`make_sparse_precision` follows the PACE-GGM spec: a chain graph plus a few random
edges, then a diagonal rescaling so the marginal standard deviations are log-uniform in
``scale_range`` (the precision's support is unchanged by the rescaling).
"""

from __future__ import annotations

import numpy as np
import torch

from probml.utils import check_int, cholesky_factor, make_generator, numpy_generator

__all__ = [
    "make_sparse_precision",
    "sample_gaussian",
    "load_covariance_dataset",
    "COVARIANCE_DATASETS",
]


def make_sparse_precision(
    d: int,
    n_extra_edges: int = 10,
    scale_range: tuple[float, float] = (0.1, 10.0),
    seed: int | None = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Return ``(Sigma, precision)`` (``d x d`` float64) with a chain + random-edge graph.

    Before the rescaling, the precision has chain edges ``(i, i + 1)`` of random sign and
    size in [0.2, 0.4], ``n_extra_edges`` edges ``(i, j)``, ``j > i + 1``, of random sign and
    size in [0.1, 0.3], and the diagonally dominant diagonal
    :math:`K_{ii} = 1.5 + \sum_{j \ne i} |K_{ij}|` (so its eigenvalues are at least 1.5).

    Args:
        d: dimension (>= 2).
        n_extra_edges: random non-chain edges added (fewer if the graph is too small).
        scale_range: marginal standard deviations are log-uniform in this range.
        seed: seed.
    """
    check_int("d", d, 2)
    check_int("n_extra_edges", n_extra_edges, 0)
    lo, hi = (float(v) for v in scale_range)
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo <= hi):
        raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range}")
    rng = numpy_generator(seed)
    K = np.eye(d)
    for i in range(d - 1):
        K[i, i + 1] = K[i + 1, i] = rng.choice([-1, 1]) * rng.uniform(0.2, 0.4)
    added, tries = 0, 0
    while added < n_extra_edges and tries < 100 * (n_extra_edges + 1):
        tries += 1
        i, j = sorted(rng.choice(d, size=2, replace=False))
        if j - i > 1 and K[i, j] == 0:
            K[i, j] = K[j, i] = rng.choice([-1, 1]) * rng.uniform(0.1, 0.3)
            added += 1
    # diagonal dominance keeps K positive definite
    K += np.diag(np.abs(K).sum(1) - 1.0 + 0.5)
    Sigma = np.linalg.inv(K)
    target_sd = np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1]), d))
    D = target_sd / np.sqrt(np.diag(Sigma))
    Sigma = D[:, None] * Sigma * D[None, :]
    K = K / D[:, None] / D[None, :]
    Sigma = 0.5 * (Sigma + Sigma.T)
    return torch.as_tensor(Sigma), torch.as_tensor(0.5 * (K + K.T))


def sample_gaussian(Sigma: torch.Tensor, n: int, seed: int | None = 0) -> torch.Tensor:
    """``n x d`` draws from ``N(0, Sigma)`` (float64), from a generator seeded with ``seed``
    (:func:`probml.utils.make_generator`: ``None`` draws fresh randomness, as in
    :func:`make_sparse_precision`)."""
    check_int("n", n, 0)
    g = make_generator(seed)  # a fraction was truncated
    S = torch.as_tensor(Sigma, dtype=torch.float64)
    if S.dim() != 2 or S.shape[0] != S.shape[1]:
        raise ValueError(f"Sigma must be a square d x d matrix, got shape {tuple(S.shape)}")
    L = cholesky_factor("Sigma", S)
    return torch.randn(n, S.shape[0], generator=g, dtype=torch.float64) @ L.T


# name -> (loader, public per-coordinate bound after centring, note)
COVARIANCE_DATASETS = {
    "digits": ("load_digits", 16.0, "pixel intensities in [0, 16]: natural public bound 16"),
    "diabetes": ("load_diabetes", None, "bounds: observed range (assumed public)"),
    "wine": ("load_wine", None, "bounds: observed range (assumed public)"),
    "breast_cancer": ("load_breast_cancer", None, "bounds: observed range (assumed public)"),
}


def load_covariance_dataset(name: str) -> tuple[np.ndarray, np.ndarray, str]:
    """A scikit-learn bundled data set (no download) and per-coordinate bounds.

    Returns ``(X, bounds, note)``. Digits use the natural public bound 16; for the others the
    bound is the observed maximum absolute value, which a real deployment would have to
    know from public domain knowledge (stated in ``note``). Constant columns are dropped.
    """
    if name not in COVARIANCE_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {sorted(COVARIANCE_DATASETS)}")
    import sklearn.datasets as skd

    loader, bound, note = COVARIANCE_DATASETS[name]
    X = getattr(skd, loader)().data.astype(float)
    X = X[:, X.std(0) > 0]
    bounds = np.full(X.shape[1], bound) if bound is not None else np.abs(X).max(0)
    return X, bounds, note
