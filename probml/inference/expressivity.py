"""Fitting small networks to exact targets (the MoA / LA expressivity checks).

:func:`fit_shallow_net` minimises the mean squared error of a
:class:`probml.models.layers.ShallowNet` by L-BFGS from several random restarts (every
parameter drawn from N(0, 1), except MoA gates, which restart from their zero init) and
returns the best error and network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from probml.models.layers import ShallowNet
from probml.utils import check_finite, check_int, check_seed, derive_seed, keep_global_rng

__all__ = ["fit_shallow_net"]


@keep_global_rng
def fit_shallow_net(
    kind: str,
    dictionary: Sequence[str],
    X: torch.Tensor,
    y: torch.Tensor,
    width: int = 1,
    restarts: int = 12,
    max_iter: int = 500,
    seed: int = 0,
) -> tuple[float, ShallowNet]:
    """Best-of-``restarts`` L-BFGS fit of a width-``width`` network.

    Args:
        kind: ``"fixed"``, ``"la"`` or ``"moa"``; dictionary: activation names.
        X: ``n x d`` finite inputs (the network takes their dtype and device); y: ``n``
            finite targets.
        seed: restart ``r`` uses ``torch.manual_seed(seed + r)`` (modulo ``2**32``,
            :func:`probml.utils.derive_seed`).

    Returns:
        ``(mse, net)`` of the best restart.

    Raises:
        RuntimeError: when no restart reaches a finite error (it returned ``(inf, None)``).
    """
    check_int("restarts", restarts)
    check_int("width", width)
    check_int("max_iter", max_iter)
    seed = check_seed("seed", seed)
    if X.dim() != 2 or y.shape != (X.shape[0],):
        raise ValueError(
            f"X must be n x d and y of shape (n,), got {tuple(X.shape)} and {tuple(y.shape)}"
        )
    check_finite("X", X)  # a NaN made every restart's error NaN: (inf, None) came back
    check_finite("y", y)
    best, best_net = float("inf"), None
    for r in range(restarts):
        torch.manual_seed(derive_seed(seed, r))
        net = ShallowNet(X.shape[1], width, kind, dictionary).to(X.dtype)
        for name, p in net.named_parameters():
            if name.startswith("gate"):
                torch.nn.init.zeros_(p)
            else:
                torch.nn.init.normal_(p)
        net.to(X.device)  # drawn on the CPU first: the same restarts on every device
        opt = torch.optim.LBFGS(
            net.parameters(),
            max_iter=max_iter,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-14,
            tolerance_change=1e-16,
        )

        def closure(opt=opt, net=net):
            opt.zero_grad()
            loss = ((net(X) - y) ** 2).mean()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            mse = float(((net(X) - y) ** 2).mean())
        if mse < best:
            best, best_net = mse, net
    if best_net is None:
        raise RuntimeError(
            f"no restart of {restarts} reached a finite error (every fit overflowed or "
            "diverged); rescale X and y"
        )
    return best, best_net
