r"""Conditional generators of the structurally missing covariates :math:`A` given :math:`X`:
DRUM's adversary (and, at initialisation, the source conditional :math:`G_0`).

* :class:`ConditionalFlow`: a conditional normalising flow built from Pyro's conditional
  transforms (affine autoregressive + spline layers on standardised ``A``), so
  :math:`\log q(a \mid x)` and density ratios are exact; reparameterised samples.
* :class:`ConditionalBernoulli`: a binary ``A`` with :math:`q(a = 1 \mid x) =
  \sigma(\mathrm{logit}\, p_0(x) + g_\phi(x))`, exact KL and enumeration over ``a``.
* :class:`TransportPerturbation`: a noise-outsourced generator
  :math:`G_\phi(x, z) = G_0(x, z) + \Delta_\phi(x, z)` with shared noise ``z``, for the
  transport-cost ball :math:`\mathbb E\|G_\phi - G_0\|^2 \le \rho`.

All are :class:`torch.nn.Module` s; :func:`fit_source_conditional` fits :math:`G_0` to source
pairs by maximum likelihood (progress bar, seeded), and :meth:`copy` starts the adversary at
:math:`G_0`.
"""

from __future__ import annotations

import copy

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn

from probml.utils import (
    check_finite,
    check_int,
    check_interval,
    check_positive,
    keep_global_rng,
    make_generator,
    progress,
)

__all__ = [
    "ConditionalFlow",
    "ConditionalBernoulli",
    "TransportPerturbation",
    "fit_source_conditional",
]


class ConditionalFlow(nn.Module):
    """Conditional normalising flow :math:`q_\\phi(a \\mid x)` on ``a`` in ``R^{d_a}``.

    Args:
        a_dim, x_dim: dimensions of ``A`` and ``X``.
        hidden: hidden width of the conditioner networks.
        num_layers: pairs of autoregressive blocks (``d_a >= 2``) or spline layers (1-D).
    """

    def __init__(self, a_dim: int, x_dim: int, hidden: int = 32, num_layers: int = 1):
        super().__init__()
        for name, value in (
            ("a_dim", a_dim),
            ("x_dim", x_dim),
            ("hidden", hidden),
            ("num_layers", num_layers),
        ):
            check_int(name, value)
        self.a_dim, self.x_dim = int(a_dim), int(x_dim)
        layers: list = []
        if self.a_dim >= 2:  # affine autoregressive blocks with a permutation in between
            for _ in range(max(2, 2 * num_layers)):
                layers.append(
                    T.conditional_affine_autoregressive(a_dim, x_dim, hidden_dims=[hidden, hidden])
                )
        else:  # 1-D: a conditional rational-quadratic spline (non-Gaussian shapes)
            for _ in range(num_layers):
                layers.append(T.conditional_spline(1, x_dim, hidden_dims=[hidden], bound=4.0))
        self.layers = nn.ModuleList(layers)
        self.register_buffer("a_loc", torch.zeros(a_dim))
        self.register_buffer("a_scale", torch.ones(a_dim))
        self.register_buffer("x_loc", torch.zeros(x_dim))
        self.register_buffer("x_scale", torch.ones(x_dim))

    def standardise(self, A: torch.Tensor, X: torch.Tensor) -> None:
        """Set the buffers to the means and sds of ``A`` (``n x d_a``) and ``X`` (``n x d_x``);
        a constant column keeps a tiny positive scale. One row has no sd (it was NaN)."""
        if A.shape[0] < 2:
            raise ValueError(f"a continuous A needs n >= 2 rows to standardise, got {A.shape[0]}")
        self.a_loc.copy_(A.mean(0))
        self.a_scale.copy_(A.std(0).clamp_min(1e-6))
        self.x_loc.copy_(X.mean(0))
        self.x_scale.copy_(X.std(0).clamp_min(1e-6))

    def dist(self, x: torch.Tensor) -> dist.Distribution:
        """The conditional distribution of ``A`` for contexts ``x`` (``... x d_x``)."""
        ctx = (x - self.x_loc) / self.x_scale
        base = dist.Normal(ctx.new_zeros(self.a_dim), 1.0).to_event(1)
        # cache_size=1 throughout: log_prob of a value just drawn from this distribution
        # object reuses the forward pass instead of inverting the autoregressive layers
        out = T.AffineTransform(self.a_loc, self.a_scale, event_dim=1, cache_size=1)
        chain: list = []
        for i, layer in enumerate(self.layers):
            if i and self.a_dim >= 2:  # reverse the order between autoregressive blocks
                perm = torch.arange(self.a_dim - 1, -1, -1, device=x.device)
                chain.append(T.Permute(perm, cache_size=1))
            chain.append(layer)
        cond = dist.ConditionalTransformedDistribution(base, [*chain, out])
        return cond.condition(ctx)

    def rsample(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One reparameterised draw per context row: ``... x d_x -> ... x d_a``. With
        ``generator`` the base noise comes from it (torch's global RNG is not used)."""
        if generator is None:
            return self.dist(x).rsample(x.shape[:-1])
        shape = (*x.shape[:-1], self.a_dim)
        z = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
        return self.sample_with_noise(x, z)

    def log_prob(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\log g(a \\mid x)` for ``a`` (``... x d_a``) given ``x`` (``... x d_x``):
        shape ``...``."""
        return self.dist(x).log_prob(a)

    def rsample_and_log_prob(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One reparameterised draw per context row and its log-density, from one forward
        pass (the inverse of the autoregressive layers is read from their cache)."""
        d = self.dist(x)
        a = d.rsample(x.shape[:-1])
        return a, d.log_prob(a)

    def sample_with_noise(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Push base noise ``z`` (``... x d_a``) through the flow: the noise-outsourced view."""
        d = self.dist(x)
        a = z
        for t in d.transforms:
            a = t(a)
        return a

    def copy(self) -> ConditionalFlow:
        """A trainable copy (the adversary starts at the source conditional)."""
        return copy.deepcopy(self).requires_grad_(True)


class ConditionalBernoulli(nn.Module):
    """Binary ``A``: :math:`q(a = 1 \\mid x) = \\sigma(\\mathrm{logit}\\, p_0(x) + g_\\phi(x))`.

    Fitted as the source conditional (``g = 0`` and a logistic-MLP ``p_0``); :meth:`copy`
    gives an adversary whose tilt ``g`` starts at zero.
    """

    def __init__(self, x_dim: int, hidden: int = 16):
        super().__init__()
        check_int("x_dim", x_dim)
        check_int("hidden", hidden)
        self.base = nn.Sequential(nn.Linear(x_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.tilt = nn.Sequential(nn.Linear(x_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.tilt[-1].weight)
        nn.init.zeros_(self.tilt[-1].bias)
        self.tilt.requires_grad_(False)
        self.a_dim = 1

    @classmethod
    def constant(cls, p: float, x_dim: int = 1) -> ConditionalBernoulli:
        r"""A known source conditional :math:`P(A = 1 \mid x) = p` for every ``x``."""
        check_interval("p", p)
        g = cls(x_dim)
        with torch.no_grad():
            for m in g.base:
                if isinstance(m, nn.Linear):
                    m.weight.zero_()
                    m.bias.zero_()
            g.base[-1].bias.fill_(float(torch.logit(torch.tensor(p))))
        return g.requires_grad_(False)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logit of :math:`P(A = 1 \\mid x)` (base plus tilt): ``x`` is ``... x d_x``, the
        result ``...``."""
        return (self.base(x) + self.tilt(x)).squeeze(-1)

    def prob(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`P(A = 1 \\mid x)`, shape ``...`` for ``x`` of ``... x d_x``."""
        return torch.sigmoid(self.logits(x))

    def log_prob(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Bernoulli log-probability of ``a`` in {0, 1} (``...``, or ``... x 1``) given ``x``
        (``... x d_x``): shape ``...``."""
        return dist.Bernoulli(logits=self.logits(x)).log_prob(a.reshape(x.shape[:-1]).to(x))

    def copy(self) -> ConditionalBernoulli:
        """An adversary at the source conditional: base frozen, tilt trainable from zero."""
        new = copy.deepcopy(self)
        new.base.requires_grad_(False)
        new.tilt.requires_grad_(True)
        return new


class TransportPerturbation(nn.Module):
    """:math:`G_\\phi(x, z) = G_0(x, z) + \\Delta_\\phi(x, z)`, ``Delta`` an MLP started at 0.

    ``Delta`` reads the base noise ``z`` and the context standardised by the source's own
    buffers, ``(x - x_loc) / x_scale``, and its output is in standardised units of ``A``:
    the shift added to ``G_0`` is that output times ``a_scale``."""

    def __init__(self, source: ConditionalFlow, hidden: int = 32):
        super().__init__()
        check_int("hidden", hidden)
        self.source = source.copy().requires_grad_(False)
        d_a, d_x = source.a_dim, source.x_dim
        self.a_dim, self.x_dim = d_a, d_x
        self.delta = nn.Sequential(nn.Linear(d_a + d_x, hidden), nn.Tanh(), nn.Linear(hidden, d_a))
        nn.init.zeros_(self.delta[-1].weight)
        nn.init.zeros_(self.delta[-1].bias)
        self.delta.to(source.x_loc)  # the source's dtype and device (float64 data failed)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, cost)``: the perturbed draw and :math:`\\|G_\\phi - G_0\\|^2` per row."""
        a0 = self.source.sample_with_noise(x, z)
        shift = self.delta(torch.cat((z, (x - self.source.x_loc) / self.source.x_scale), -1))
        shift = shift * self.source.a_scale
        return a0 + shift, shift.pow(2).sum(-1)


@keep_global_rng
def fit_source_conditional(
    A: torch.Tensor,
    X: torch.Tensor,
    binary: bool = False,
    hidden: int = 32,
    num_iters: int = 1000,
    lr: float = 1e-2,
    batch_size: int = 512,
    seed: int = 0,
    verbose: bool = True,
) -> ConditionalFlow | ConditionalBernoulli:
    """Fit :math:`G_0 \\approx P_S(A \\mid X)` by maximum likelihood (Adam, minibatches).

    Args:
        A: ``n x d_a`` (or ``n`` for binary) source covariates; X: ``n x d_x``.
        binary: ``A`` in {0, 1}: a :class:`ConditionalBernoulli`; else a
            :class:`ConditionalFlow`.
        hidden: width of the flow's conditioner networks; the binary case's logistic MLP
            takes ``min(hidden, 16)`` units.

    Returns:
        The fitted conditional, in eval mode (a binary one with its tilt at zero).
    """
    check_finite("A", A)
    check_finite("X", X)
    if A.shape[0] != X.shape[0]:
        raise ValueError(f"A and X must have the same rows, got {A.shape[0]} and {X.shape[0]}")
    if X.dim() != 2 or X.shape[0] < 1:
        raise ValueError(f"X must be n x d_x with n >= 1, got shape {tuple(X.shape)}")
    if binary and not bool(((A == 0) | (A == 1)).all()):
        raise ValueError("binary=True needs A in {0, 1}")
    batch_size = check_int("batch_size", batch_size)
    num_iters = check_int("num_iters", num_iters, 0)
    check_positive("lr", lr)
    gen = make_generator(seed, device=X.device)  # checks seed before the global RNG reads it
    torch.manual_seed(seed)
    if binary:
        model: nn.Module = ConditionalBernoulli(X.shape[1], hidden=min(hidden, 16))
        A = A.reshape(-1)
    else:
        A = A.reshape(A.shape[0], -1)
        model = ConditionalFlow(A.shape[1], X.shape[1], hidden=hidden)
        model.standardise(A, X)
    model = model.to(X)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    n = X.shape[0]
    for _ in progress(range(num_iters), verbose=verbose, desc="fit G0"):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen, device=X.device)
        loss = -model.log_prob(A[idx], X[idx]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()
