r"""The particle toolkit shared by every SMC and importance-sampling routine in probml.

Particles live along the **last** dimension of a log-weight tensor ``log_w`` of shape
``batch_shape x N``; every function here is batched over ``batch_shape`` (no Python loop over
batch entries or particles).

Notation: unnormalised log-weights :math:`\ell_i`, normalised weights
:math:`w_i = \exp(\ell_i - \operatorname{logsumexp}_j \ell_j)`.

* :func:`normalize_log_weights`: :math:`\log w_i`, stable for :math:`\ell_i \approx -10^4`.
* :func:`log_mean_exp`: :math:`\log \frac1N \sum_i e^{\ell_i}`, the log of an
  importance-sampling estimate of a normalising constant.
* :func:`effective_sample_size`: :math:`\mathrm{ESS} = 1 / \sum_i w_i^2 \in [1, N]`.
* :func:`resample`: ancestor indices :math:`a_1..a_M` with
  :math:`\mathbb{E}[\#\{k : a_k = i\}] = M w_i` for the multinomial, stratified and systematic
  schemes (all three unbiased; stratified and systematic have lower variance).
* :func:`gather_particles`: index a particle tensor ``batch_shape x N x event`` by ancestors.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from probml.utils import check_int, check_tensor, make_generator

__all__ = [
    "ParticleDegeneracyError",
    "normalize_log_weights",
    "log_mean_exp",
    "effective_sample_size",
    "resample",
    "gather_particles",
    "RESAMPLING_SCHEMES",
]

RESAMPLING_SCHEMES = ("multinomial", "stratified", "systematic")
Scheme = Literal["multinomial", "stratified", "systematic"]


class ParticleDegeneracyError(RuntimeError):
    """Every particle of some batch entry has zero weight (all log-weights are ``-inf``) or a
    log-weight is NaN/``+inf``: the weighted particle system no longer represents a
    distribution."""


def _check_log_weights(log_w: torch.Tensor, name: str = "log_weights") -> None:
    check_tensor(name, log_w)
    if log_w.dim() < 1 or log_w.shape[-1] < 1:
        raise ValueError(
            f"{name} must have shape batch_shape x N with N >= 1, got {tuple(log_w.shape)}"
        )
    if not log_w.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {log_w.dtype}")
    if torch.isnan(log_w).any() or (log_w == math.inf).any():
        raise ParticleDegeneracyError(f"{name} contains NaN or +inf")
    if (log_w == -math.inf).all(dim=-1).any():
        raise ParticleDegeneracyError(
            f"{name}: every particle has weight zero (all log-weights are -inf) "
            "in at least one batch entry"
        )


def normalize_log_weights(log_w: torch.Tensor) -> torch.Tensor:
    """Normalised log-weights ``log_w - logsumexp(log_w)`` along the last dimension.

    Args:
        log_w: ``batch_shape x N`` unnormalised log-weights (``-inf`` allowed for some, not all).

    Returns:
        ``batch_shape x N`` tensor whose ``exp`` sums to one along the last dimension.

    Raises:
        ParticleDegeneracyError: a batch entry has all weights zero, or a NaN/+inf log-weight.
    """
    _check_log_weights(log_w)
    return log_w - torch.logsumexp(log_w, dim=-1, keepdim=True)


def log_mean_exp(x: torch.Tensor, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    r""":math:`\log \frac1N \sum_i \exp x_i` along ``dim`` (stable; ``-inf`` if all are ``-inf``)."""
    n = x.shape[dim]
    if n == 0:
        raise ValueError("log_mean_exp needs at least one element along dim")
    return torch.logsumexp(x, dim=dim, keepdim=keepdim) - math.log(n)


def effective_sample_size(log_w: torch.Tensor) -> torch.Tensor:
    r"""Kish's effective sample size :math:`1 / \sum_i w_i^2` of normalised weights.

    Args:
        log_w: ``batch_shape x N`` unnormalised log-weights.

    Returns:
        ``batch_shape`` tensor with values in ``[1, N]``: ``N`` for equal weights, ``1`` for a
        point mass.
    """
    lw = normalize_log_weights(log_w)
    return torch.exp(-torch.logsumexp(2.0 * lw, dim=-1))


def resample(
    log_w: torch.Tensor,
    num_samples: int | None = None,
    scheme: Scheme = "systematic",
    generator: torch.Generator | int | None = None,
) -> torch.Tensor:
    r"""Draw ancestor indices from the weights, batched over leading dimensions.

    With normalised weights :math:`w` and cumulative sums :math:`c_i = \sum_{j \le i} w_j`, the
    ancestors are :math:`a_k = \min\{i : c_i > u_k\}` for points

    * multinomial: :math:`u_k \sim U(0, 1)` i.i.d. (via :func:`torch.multinomial`);
    * stratified: :math:`u_k = (k + U_k) / M`, :math:`U_k \sim U(0,1)` i.i.d.;
    * systematic: :math:`u_k = (k + U) / M`, one :math:`U \sim U(0,1)` per batch entry.

    Each :math:`u_k` is marginally uniform, so every scheme gives
    :math:`\mathbb{E}[\#\{k : a_k = i\}] = M w_i`.

    Args:
        log_w: ``batch_shape x N`` unnormalised log-weights.
        num_samples: ``M``, the number of ancestors to draw (default ``N``).
        scheme: ``"multinomial"``, ``"stratified"`` or ``"systematic"``.
        generator: a seed or :class:`torch.Generator` (on ``log_w``'s device) for
            reproducibility.

    Returns:
        ``batch_shape x M`` long tensor of ancestor indices in ``[0, N)``.
    """
    if scheme not in RESAMPLING_SCHEMES:
        raise ValueError(f"scheme must be one of {RESAMPLING_SCHEMES}, got {scheme!r}")
    lw = normalize_log_weights(log_w)
    batch_shape, n = lw.shape[:-1], lw.shape[-1]
    m = n if num_samples is None else check_int("num_samples", num_samples)
    gen = make_generator(generator, name="generator", device=lw.device)
    # float64 cumulative sums keep the last bin from being starved by rounding
    w = lw.double().exp().reshape(-1, n)
    b = w.shape[0]
    if scheme == "multinomial":
        idx = torch.multinomial(w, m, replacement=True, generator=gen)
        return idx.reshape(*batch_shape, m)
    k = torch.arange(m, device=w.device, dtype=w.dtype)
    if scheme == "stratified":
        u = torch.rand(b, m, device=w.device, dtype=w.dtype, generator=gen)
    else:  # systematic
        u = torch.rand(b, 1, device=w.device, dtype=w.dtype, generator=gen).expand(b, m)
    points = (k + u) / m
    cdf = torch.cumsum(w, dim=-1)
    cdf = cdf / cdf[:, -1:]
    idx = torch.searchsorted(cdf, points.contiguous(), right=True).clamp_(max=n - 1)
    return idx.reshape(*batch_shape, m)


def gather_particles(particles: torch.Tensor, ancestors: torch.Tensor) -> torch.Tensor:
    """Select particles by ancestor index, batched.

    Args:
        particles: ``batch_shape x N x event_shape`` (``event_shape`` may be empty).
        ancestors: ``batch_shape x M`` long tensor from :func:`resample`.

    Returns:
        ``batch_shape x M x event_shape`` tensor ``particles[..., ancestors[...], ...]``.
    """
    nb = ancestors.dim() - 1
    if particles.shape[:nb] != ancestors.shape[:-1]:
        raise ValueError(
            "particles and ancestors must share batch_shape: "
            f"got {tuple(particles.shape[:nb])} and {tuple(ancestors.shape[:-1])}"
        )
    event_shape = particles.shape[nb + 1 :]
    idx = ancestors.reshape(*ancestors.shape, *([1] * len(event_shape))).expand(
        *ancestors.shape, *event_shape
    )
    return torch.gather(particles, nb, idx)
