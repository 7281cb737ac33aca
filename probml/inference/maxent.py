r"""Maximum-entropy (Dempster) covariance completion.

Given entries :math:`E` (always including the diagonal) with values :math:`y_E`,

.. math:: \hat\Sigma = \arg\max_{\Sigma \succ 0} \log\det\Sigma \quad \text{s.t.}\quad
          \Sigma_E = y_E

is the covariance of the Gaussian graphical model on graph :math:`E`: its precision is zero
off :math:`E`. :func:`exact_completion` solves it by the regression sweeps of Hastie,
Tibshirani & Friedman (ESL, Algorithm 17.1).

Noisy :math:`y_E` may have no positive-definite completion. :func:`relaxed_completion` then solves

.. math:: \min_{\Sigma \succ 0} \sum_{e \in E} \frac{(\Sigma_e - y_e)^2}{2\sigma_e^2}
          - \lambda \log\det\Sigma,

whose stationarity condition :math:`\lambda\Sigma^{-1} = G` with :math:`G` supported on
:math:`E` makes the optimum a GGM on :math:`E` too. It is optimised over a Cholesky factor
(positive definite by construction, warm-startable; L-BFGS with the analytic gradient),
then cleaned with one exact completion of
its own entries so the returned precision is exactly zero off :math:`E`.
:func:`maxent_completion` picks the exact solver when ``noise_scales`` is ``None``.
All computations are float64.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import minimize
from sklearn.exceptions import ConvergenceWarning

from probml.utils import check_finite, check_int, check_positive, shape_of

__all__ = ["CompletionError", "exact_completion", "relaxed_completion", "maxent_completion"]


class CompletionError(ValueError):
    """The prescribed entries have no positive-definite completion (or the sweeps diverged)."""


def _entry_mask(entries, dim: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.as_tensor(entries, dtype=torch.long, device=device).reshape(-1, 2)
    if idx.numel() and (idx.min() < 0 or idx.max() >= dim):
        raise ValueError(f"entries must index a {dim} x {dim} matrix")
    mask = torch.zeros(dim, dim, dtype=torch.bool, device=device)
    mask[idx[:, 0], idx[:, 1]] = True
    mask[idx[:, 1], idx[:, 0]] = True
    if not bool(mask.diagonal().all()):
        missing = (~mask.diagonal()).nonzero().flatten().tolist()
        raise ValueError(f"every diagonal entry must be measured; missing {missing[:10]}")
    return idx, mask


def _check_init(init, dim: int) -> None:
    """A warm start must be a finite ``dim x dim`` tensor (errors name ``init``)."""
    if init is None:
        return
    if not isinstance(init, torch.Tensor) or tuple(init.shape) != (dim, dim):
        raise ValueError(f"init must be a {dim} x {dim} tensor, got {shape_of(init)}")
    check_finite("init", init)


def _fill(idx: torch.Tensor, v: torch.Tensor, dim: int) -> torch.Tensor:
    """The symmetric ``d x d`` matrix holding ``v`` at ``idx`` (one value per entry, checked
    by :func:`_merge_repeats`), zero elsewhere."""
    S = torch.zeros(dim, dim, dtype=torch.float64, device=idx.device)
    S[idx[:, 0], idx[:, 1]] = v
    S[idx[:, 1], idx[:, 0]] = v
    return S


def _merge_repeats(
    idx: torch.Tensor, values, noise_scales=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    r"""One value per entry: ``(i, j)`` and ``(j, i)`` name the same entry.

    Without ``noise_scales`` (exact completion) repeats must carry the same value (to 1e-12
    relative). With them, repeats are noisy measurements of one entry and are pooled by
    precision: :math:`\sum_k (s - y_k)^2 / 2\sigma_k^2` equals
    :math:`(s - \bar y)^2 / 2\bar\sigma^2` plus a constant, with
    :math:`\bar\sigma^{-2} = \sum_k \sigma_k^{-2}` and
    :math:`\bar y = \bar\sigma^2 \sum_k y_k / \sigma_k^2`, so the fit is unchanged. (A dense
    matrix filled with the repeats would keep one of them, or put two values on the two
    halves of a symmetric matrix.)"""
    v = torch.as_tensor(values, dtype=torch.float64, device=idx.device).reshape(-1)
    if v.numel() != idx.shape[0]:
        raise ValueError(f"values has {v.numel()} entries for {idx.shape[0]} index pairs")
    if not bool(torch.isfinite(v).all()):
        raise ValueError("values must be finite")
    sig = None
    if noise_scales is not None:
        sig = torch.as_tensor(noise_scales, dtype=torch.float64, device=idx.device).reshape(-1)
        if sig.numel() != idx.shape[0]:
            raise ValueError(
                f"noise_scales has {sig.numel()} entries for {idx.shape[0]} index pairs"
            )
        if not bool(torch.isfinite(sig).all()) or not bool((sig > 0).all()):
            raise ValueError("noise_scales must be finite and positive")
    canon = torch.stack([idx.min(1).values, idx.max(1).values], 1)
    uniq, inv = torch.unique(canon, dim=0, return_inverse=True)
    if uniq.shape[0] == idx.shape[0]:  # no repeats: unchanged
        return idx, v, sig
    u = uniq.shape[0]
    if sig is None:
        hi = torch.full((u,), -torch.inf, dtype=v.dtype, device=v.device).scatter_reduce(
            0, inv, v, "amax"
        )
        lo = torch.full((u,), torch.inf, dtype=v.dtype, device=v.device).scatter_reduce(
            0, inv, v, "amin"
        )
        bad = (hi - lo) > 1e-12 * torch.maximum(hi.abs(), lo.abs()).clamp_min(1e-300)
        if bool(bad.any()):
            k = int(bad.nonzero()[0])
            i, j = uniq[k].tolist()
            raise ValueError(
                f"values: entry ({i}, {j}) is given more than once with different values "
                f"({float(lo[k]):.6g} and {float(hi[k]):.6g}); an exact completion needs one "
                "value per entry (relaxed_completion pools noisy repeats)"
            )
        return uniq, lo, None
    prec = sig**-2
    total = torch.zeros(u, dtype=v.dtype, device=v.device).index_add_(0, inv, prec)
    pooled = torch.zeros(u, dtype=v.dtype, device=v.device).index_add_(0, inv, prec * v) / total
    return uniq, pooled, total**-0.5


def _neighbours(mask: torch.Tensor, j: int) -> torch.Tensor:
    row = mask[j].clone()
    row[j] = False
    return row.nonzero().flatten()


def exact_completion(
    entries: Sequence[tuple[int, int]] | torch.Tensor,
    values: Sequence[float] | torch.Tensor,
    dim: int,
    tol: float = 1e-12,
    max_sweeps: int = 500,
    init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact max-entropy completion (ESL Algorithm 17.1).

    Args:
        entries: ``m x 2`` index pairs ``(i, j)``; symmetric pairs are implied; every ``(i, i)``
            must be present. An entry given twice (``(i, j)`` and ``(j, i)`` included) must
            carry the same value.
        values: ``m`` prescribed values.
        dim: ``d``.
        tol: stop when the largest change of ``W`` in a sweep is below ``tol`` (relative to
            the largest diagonal value).
        max_sweeps: a :class:`CompletionError` is raised if not converged by then.
        init: optional warm start for ``W`` (``d x d``).

    Returns:
        ``(Sigma, precision)``, each ``d x d`` float64; ``Sigma`` matches the values on the
        entries and ``precision`` is zero off them.

    Raises:
        CompletionError: no positive-definite completion was found.
    """
    dim, max_sweeps = check_int("dim", dim), check_int("max_sweeps", max_sweeps)
    check_positive("tol", tol, strict=False)
    _check_init(init, dim)
    idx, mask = _entry_mask(entries, dim)
    idx, values, _ = _merge_repeats(idx, values)
    S = _fill(idx, values, dim)
    if bool((S.diagonal() <= 0).any()):
        raise CompletionError("diagonal values must be positive")
    W = S.clone() if init is None else init.to(torch.float64).clone()
    W[mask] = S[mask]
    scale = float(S.diagonal().max())
    nbrs = [_neighbours(mask, j) for j in range(dim)]
    betas = torch.zeros(dim, dim, dtype=torch.float64, device=S.device)  # row j: beta of node j
    for _ in range(max_sweeps):
        delta = 0.0
        for j in range(dim):
            nb = nbrs[j]
            beta = torch.zeros(dim, dtype=torch.float64, device=S.device)
            if nb.numel():
                try:
                    beta[nb] = torch.linalg.solve(W[nb][:, nb], S[nb, j])
                except RuntimeError as exc:  # singular system
                    raise CompletionError(
                        "no positive-definite completion (singular sweep)"
                    ) from exc
            # w_12 <- W_11 beta (beta is zero at j, so W @ beta is W_11 beta off the j-th entry)
            w = W @ beta
            if float(S[j, j] - w @ beta) <= 0.0:  # Schur complement: W would not be PD
                raise CompletionError(
                    "no positive-definite completion (non-positive Schur complement)"
                )
            w[j] = W[j, j]
            delta = max(delta, float((W[:, j] - w).abs().max()))
            W[:, j] = w
            W[j, :] = w
            betas[j] = beta
        if not torch.isfinite(W).all():
            raise CompletionError("sweeps diverged: no positive-definite completion")
        if delta <= tol * scale:
            break
    else:
        raise CompletionError(
            f"sweeps did not converge in {max_sweeps} sweeps (last change {delta:.3g})"
        )
    # precision from the final regressions: theta_jj = 1/(s_jj - w_12^T beta), theta_12 = -beta theta_jj
    denom = S.diagonal() - (W * betas).sum(1)  # w_12^T beta = sum_k W[j,k] beta_j[k]
    if bool((denom <= 0).any()):
        raise CompletionError("no positive-definite completion (non-positive Schur complement)")
    K = -betas / denom[:, None]
    K.diagonal().copy_(1.0 / denom)
    K = K.T
    K = 0.5 * (K + K.T)
    K[~mask] = 0.0
    W = 0.5 * (W + W.T)
    try:
        torch.linalg.cholesky(W)
    except RuntimeError as exc:
        raise CompletionError("completion is not positive definite") from exc
    return W, K


def relaxed_completion(
    entries: Sequence[tuple[int, int]] | torch.Tensor,
    values: Sequence[float] | torch.Tensor,
    dim: int,
    noise_scales: Sequence[float] | torch.Tensor,
    lam: float = 1.0,
    init: torch.Tensor | None = None,
    max_iter: int = 2000,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Relaxed max-entropy fit to noisy entries (see the module docstring).

    Args:
        entries, values, dim: as in :func:`exact_completion`.
        noise_scales: ``m`` standard deviations :math:`\sigma_e` of the values. An entry
            measured more than once is fitted to all its measurements (pooled by precision).
        lam: weight :math:`\lambda > 0` of the log-det term.
        init: warm start ``Sigma`` (``d x d``), e.g. the previous round's; if it is not
            numerically positive definite, the default start (the diagonal of the values) is
            used instead.
        max_iter: L-BFGS iterations; a ``sklearn.exceptions.ConvergenceWarning`` says when
            the solver stopped before converging.

    Returns:
        ``(Sigma, precision)``: symmetric positive definite, precision zero off the entries.

    The fit is equivariant under a diagonal change of scale: values and noise scales
    :math:`D y D` and :math:`D \sigma D` give :math:`D \Sigma D` (the log-det term only shifts
    by :math:`2 \log\det D`). It is therefore solved in coordinates where every variance is
    about 1, :math:`s_i = \sqrt{\max(|y_{ii}|, \sigma_{ii})}`, and scaled back. L-BFGS's
    tolerances are absolute, and its conditioning follows the spread of the variances: solved
    on the raw values it stopped far from the optimum on entries of order 1e4, and with one
    common scale it needed over 10,000 iterations (0.7% off in correlation units after 2,000)
    where variances spread over six orders of magnitude; per coordinate, under 200.
    """
    dim = check_int("dim", dim)
    _check_init(init, dim)
    idx, mask = _entry_mask(entries, dim)
    idx, values, noise_scales = _merge_repeats(idx, values, noise_scales)
    y = _fill(idx, values, dim)
    sig = _fill(idx, noise_scales, dim)  # positive: checked by _merge_repeats
    if not lam > 0:  # NaN fails too
        raise ValueError(f"lam must be > 0, got {lam}")
    max_iter = check_int("max_iter", max_iter)
    # solve on unit-scale coordinates (see the docstring): D y D and D sigma D with
    # D = diag(1 / s); Sigma is D^-1 Sigma' D^-1, its precision D Sigma'^-1 D
    s = torch.maximum(y.diagonal().abs(), sig.diagonal()).sqrt()
    ss = s[:, None] * s[None, :]
    y, sig = y / ss, sig / ss
    init = None if init is None else init.to(torch.float64) / ss
    wmat = torch.where(mask, 1.0 / sig.clamp_min(1e-300) ** 2, torch.zeros_like(sig))
    # each off-diagonal entry appears twice in the symmetric sum: halve its weight
    wmat = torch.where(torch.eye(dim, dtype=torch.bool), wmat, 0.5 * wmat)
    diag = y.diagonal().clamp_min(1e-8 * float(y.diagonal().abs().max()) + 1e-300)
    try:  # the warm start; one that is not numerically positive definite (e.g. an
        # ill-conditioned previous round) is replaced by the default diagonal start
        start = torch.diag(diag) if init is None else 0.5 * (init + init.T)
        L0 = torch.linalg.cholesky(start.to(torch.float64)).cpu().numpy()
    except torch.linalg.LinAlgError:  # not a shape error: those still raise
        L0 = torch.linalg.cholesky(torch.diag(diag).to(torch.float64)).cpu().numpy()
    Wn, yn = wmat.cpu().numpy(), y.cpu().numpy()
    tril = np.tril_indices(dim)
    on_diag = tril[0] == tril[1]

    def unpack(theta: np.ndarray) -> np.ndarray:
        # positive diagonal: L is a Cholesky factor. exp is taken of the diagonal entries only:
        # large off-diagonal entries would overflow it needlessly.
        vals = theta.copy()
        vals[on_diag] = np.exp(theta[on_diag])
        L = np.zeros((dim, dim))
        L[tril] = vals
        return L

    @np.errstate(over="ignore")  # a line search's trial point may overflow: f = inf, rejected
    def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
        # f = 1/2 sum W (L L^T - y)^2 - 2 lam sum log L_ii ;  df/dL = 2 (W o R) L - 2 lam diag(1/L_ii)
        L = unpack(theta)
        R = Wn * (L @ L.T - yn)
        f = 0.5 * float((R * (L @ L.T - yn)).sum()) - 2.0 * lam * float(theta[on_diag].sum())
        G = 2.0 * R @ L
        g = G[tril]
        g[on_diag] = g[on_diag] * np.exp(theta[on_diag]) - 2.0 * lam  # chain rule through exp
        return f, g

    theta0 = L0[tril].copy()
    theta0[on_diag] = np.log(theta0[on_diag])
    res = minimize(
        fun,
        theta0,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "ftol": 1e-15, "gtol": 1e-10},
    )
    # L-BFGS-B's "ABNORMAL" (a line search that cannot improve) once the gradient has fallen
    # a millionfold is convergence to the floating-point floor (heavy weights, noise sds far
    # below the entries, keep the last gradient well above zero); the iteration limit is not
    g0 = float(np.abs(fun(theta0)[1]).max())
    stalled = res.status == 2 and float(np.abs(res.jac).max()) <= 1e-6 * max(g0, 1.0)
    if not (res.success or stalled):
        warnings.warn(
            f"relaxed_completion: L-BFGS stopped before convergence ({res.message}); the fit "
            f"may be off its optimum (raise max_iter, now {max_iter})",
            ConvergenceWarning,
            stacklevel=2,
        )
    L = torch.as_tensor(unpack(res.x), dtype=torch.float64, device=y.device)
    Sigma = L @ L.T
    # clean-up: the exact completion of the fitted entries (they have a PD completion: Sigma)
    fitted = Sigma[idx[:, 0], idx[:, 1]]
    try:
        Sigma, precision = exact_completion(idx, fitted, dim, init=Sigma)
    except CompletionError:  # pragma: no cover - numerical corner; Sigma itself is PD
        precision = torch.linalg.inv(Sigma)
    return Sigma * ss, precision / ss


def maxent_completion(
    entries: Sequence[tuple[int, int]] | torch.Tensor,
    values: Sequence[float] | torch.Tensor,
    dim: int,
    noise_scales: Sequence[float] | torch.Tensor | None = None,
    lam: float = 1.0,
    init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Max-entropy covariance with the given entries: exact when ``noise_scales`` is ``None``,
    else the relaxed noisy form. Returns ``(Sigma, precision)``, symmetric positive definite."""
    if noise_scales is None:
        return exact_completion(entries, values, dim, init=init)
    return relaxed_completion(entries, values, dim, noise_scales, lam=lam, init=init)
