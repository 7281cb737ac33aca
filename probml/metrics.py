"""Metrics shared by more than one method (filled as methods land)."""

from __future__ import annotations

import torch

__all__ = ["relative_error"]


def relative_error(estimate: torch.Tensor, truth: torch.Tensor, ord: str | int = "fro") -> float:
    """``||estimate - truth|| / ||truth||`` (Frobenius by default; ``2`` for spectral)."""
    if estimate.shape != truth.shape:
        raise ValueError(
            f"estimate shape {tuple(estimate.shape)} != truth shape {tuple(truth.shape)}"
        )
    diff = (estimate - truth).double()
    t = truth.double()
    if diff.dim() == 1:
        return float(diff.norm() / t.norm())
    return float(torch.linalg.matrix_norm(diff, ord=ord) / torch.linalg.matrix_norm(t, ord=ord))
