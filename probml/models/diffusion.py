r"""Conditional diffusion models of a transition :math:`p(x_t \mid x_{t-1})`: SURGE's world model.

**Forward process (VP).** In the model's coordinates :math:`z` (an affine standardisation of
:math:`x_t` given the condition :math:`c = x_{t-1}`, see :meth:`DiffusionTransition.decode`),
:math:`z_s = \alpha(s) z + \sigma(s)\varepsilon` for diffusion time :math:`s \in [0, 1]` with
:math:`\alpha(s) = \exp(-\tfrac12\int_0^s \beta)`, :math:`\beta(s) = \beta_{\min} +
s(\beta_{\max} - \beta_{\min})` and :math:`\sigma^2 = 1 - \alpha^2`.

**Reverse process (DDPM).** ``K`` levels :math:`s_K = 1 > \dots > s_0 = s_{\min}`. With the
Tweedie estimate :math:`\hat z_0(z_k) = (z_k - \sigma_k \hat\varepsilon)/\alpha_k`,

.. math::
    z_{k-1} \mid z_k \sim \mathcal N\!\Big(\tfrac{\alpha_{k-1} b_k^2}{\sigma_k^2} \hat z_0
        + \tfrac{a_k \sigma_{k-1}^2}{\sigma_k^2} z_k,\;
        \tfrac{b_k^2 \sigma_{k-1}^2}{\sigma_k^2} I\Big), \quad a_k = \alpha_k/\alpha_{k-1},\;
        b_k^2 = 1 - a_k^2,

and the sample is :math:`x_t = \mathrm{decode}(\hat z_0(z_0), c)` (a final Tweedie denoise).
Every step is a Gaussian kernel with a closed-form density, which SURGE's importance weights
need.

Two transitions:

* :class:`LinearGaussianDiffusion`: the **exact** noise predictor of
  :math:`x_t \mid c \sim \mathcal N(Ac, Q)`, no training; its whole reverse chain is affine
  Gaussian, so :meth:`LinearGaussianDiffusion.effective_transition` gives the surrogate's exact
  :math:`p(x_t \mid c) = \mathcal N(A_K c, Q_K)` for ``K`` levels (the exact target of SURGE).
* :class:`NeuralDiffusionTransition`: an MLP noise predictor trained by denoising score
  matching (:func:`train_transition_model`) on simulated pairs; saved and loaded with
  ``torch.save``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from probml.utils import (
    SavableModule,
    check_finite,
    check_int,
    check_interval,
    check_positive,
    keep_global_rng,
    make_generator,
    progress,
    shape_of,
)

__all__ = [
    "VPSchedule",
    "DiffusionTransition",
    "LinearGaussianDiffusion",
    "NoiseMLP",
    "NeuralDiffusionTransition",
    "train_transition_model",
]


@dataclass(frozen=True)
class VPSchedule:
    """The variance-preserving schedule with a linear :math:`\\beta(s)`."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    s_min: float = 1e-3

    def __post_init__(self):
        if not (math.isfinite(self.beta_max) and 0 < self.beta_min <= self.beta_max):
            raise ValueError(
                f"need 0 < beta_min <= beta_max < inf, got beta_min={self.beta_min!r}, "
                f"beta_max={self.beta_max!r}"
            )
        check_interval("s_min", self.s_min)  # s = 0 is the data itself (sigma = 0)

    def alpha(self, s: torch.Tensor) -> torch.Tensor:
        log_a = -0.5 * (self.beta_min * s + 0.5 * (self.beta_max - self.beta_min) * s**2)
        return torch.exp(log_a)

    def sigma(self, s: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(-torch.expm1(2 * torch.log(self.alpha(s))))

    def levels(self, num_steps: int, dtype=torch.float64, device=None) -> torch.Tensor:
        """Diffusion times ``s_0 < ... < s_K`` (``K + 1`` values, ``s_K = 1``), quadratically
        spaced (``s_k = s_min + (1 - s_min) (k/K)^2``): finer steps at low noise, where
        the DDPM kernel's discretisation error concentrates."""
        num_steps = check_int("num_diffusion_steps", num_steps)
        u = torch.linspace(0.0, 1.0, num_steps + 1, dtype=dtype, device=device)
        return self.s_min + (1.0 - self.s_min) * u**2

    def reverse_coefficients(self, num_steps: int, dtype=torch.float64, device=None):
        """Per level ``k = 1..K`` (index ``k-1``): the DDPM posterior coefficients
        ``(c_x0, c_z, var)`` and the level's ``(alpha, sigma)`` for ``k = 0..K``."""
        s = self.levels(num_steps, dtype=dtype, device=device)
        al, sg = self.alpha(s), self.sigma(s)
        a = al[1:] / al[:-1]
        b2 = 1 - a**2
        c_x0 = al[:-1] * b2 / sg[1:] ** 2
        c_z = a * sg[:-1] ** 2 / sg[1:] ** 2
        var = b2 * sg[:-1] ** 2 / sg[1:] ** 2
        return c_x0, c_z, var, al, sg, s


class DiffusionTransition(nn.Module):
    """Base class of a conditional diffusion model of :math:`x_t \\mid c`.

    Subclasses implement :meth:`eps` (the noise predictor in ``z`` coordinates) and may
    override :meth:`decode` (default identity). ``state_dim`` is ``d``.
    """

    def __init__(self, state_dim: int, schedule: VPSchedule | None = None):
        super().__init__()
        self.state_dim = check_int("state_dim", state_dim)
        self.schedule = schedule or VPSchedule()

    def eps(self, z: torch.Tensor, s: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Predicted noise ``... x d`` at diffusion time ``s`` (scalar tensor) given ``cond``."""
        raise NotImplementedError  # pragma: no cover

    def decode(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Map model coordinates to the state ``x_t`` (affine in ``z``)."""
        return z

    def decode_scale(self) -> torch.Tensor | float:
        """Per-coordinate scale of :meth:`decode` (``d`` or a float)."""
        return 1.0

    def tweedie(
        self, z: torch.Tensor, k: int, cond: torch.Tensor, coeffs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z0_hat, eps_hat)`` at level ``k``; ``coeffs`` from ``schedule.reverse_coefficients``."""
        _, _, _, al, sg, s = coeffs
        e = self.eps(z, s[k].to(z), cond)
        return (z - sg[k].to(z) * e) / al[k].to(z), e

    @torch.no_grad()
    def sample(
        self,
        cond: torch.Tensor,
        num_steps: int = 50,
        generator: torch.Generator | int | None = None,
    ) -> torch.Tensor:
        """Unguided ancestral sampling of ``x_t`` for each condition ``cond`` (``... x d``)."""
        gen = make_generator(generator, name="generator", device=cond.device)
        coeffs = self.schedule.reverse_coefficients(num_steps, device=cond.device)
        c_x0, c_z, var = coeffs[:3]
        z = torch.randn(cond.shape, generator=gen, device=cond.device, dtype=cond.dtype)
        for k in range(num_steps, 0, -1):  # reverse diffusion; particles are batched
            z0, _ = self.tweedie(z, k, cond, coeffs)
            mean = c_x0[k - 1].to(z) * z0 + c_z[k - 1].to(z) * z
            noise = torch.randn(z.shape, generator=gen, device=z.device, dtype=z.dtype)
            z = mean + var[k - 1].sqrt().to(z) * noise
        z0, _ = self.tweedie(z, 0, cond, coeffs)
        return self.decode(z0, cond)


class LinearGaussianDiffusion(DiffusionTransition):
    r"""Exact diffusion model of :math:`x_t \mid c \sim \mathcal N(Ac, Q)` (no training).

    The noised marginal is :math:`z_s \mid c \sim \mathcal N(\alpha A c, \alpha^2 Q +
    \sigma^2 I)`, so the exact noise predictor is
    :math:`\hat\varepsilon = \sigma (\alpha^2 Q + \sigma^2 I)^{-1} (z_s - \alpha A c)`
    (computed through the eigendecomposition of ``Q``; only ``Q``'s lower triangle is read, as
    by :func:`torch.linalg.eigh` and :class:`~probml.models.dynamics.LinearGaussianSSM`).

    Args:
        A: ``d x d`` transition matrix; Q: ``d x d`` positive definite covariance (both
            finite); schedule: the VP schedule (default :class:`VPSchedule`).
    """

    def __init__(self, A: torch.Tensor, Q: torch.Tensor, schedule: VPSchedule | None = None):
        if not isinstance(A, torch.Tensor) or A.dim() != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"A must be a d x d tensor, got {shape_of(A)}")
        if not isinstance(Q, torch.Tensor) or tuple(Q.shape) != tuple(A.shape):
            raise ValueError(f"Q must be a tensor of A's shape {tuple(A.shape)}, got {shape_of(Q)}")
        check_finite("A", A)  # NaN gave NaN samples without a word
        check_finite("Q", Q)
        super().__init__(A.shape[0], schedule)
        lam, V = torch.linalg.eigh(Q)
        if bool((lam <= 0).any()):
            raise ValueError("Q must be positive definite")
        self.register_buffer("A", A)
        self.register_buffer("lam", lam)
        self.register_buffer("V", V)

    def _precision(self, s: torch.Tensor) -> torch.Tensor:
        al, sg = self.schedule.alpha(s), self.schedule.sigma(s)
        return (self.V / (al**2 * self.lam + sg**2)) @ self.V.T

    def eps(self, z: torch.Tensor, s: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        al, sg = self.schedule.alpha(s), self.schedule.sigma(s)
        r = z - al * cond @ self.A.to(z).T
        return sg * r @ self._precision(s).to(z)

    def effective_transition(self, num_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        r"""``(A_K, Q_K)`` with :math:`x_t \mid c \sim \mathcal N(A_K c, Q_K)` exactly under the
        ``K``-level DDPM sampler (the chain is affine Gaussian; float64)."""
        c_x0, c_z, var, al, sg, s = self.schedule.reverse_coefficients(num_steps)
        d = self.state_dim
        eye = torch.eye(d, dtype=torch.float64)
        A = self.A.double()

        def tweedie_maps(k):  # z0_hat = Mz z + Mc c
            P = self._precision(s[k]).double()
            Mz = (eye - sg[k] ** 2 * P) / al[k]
            Mc = sg[k] ** 2 * P @ A
            return Mz, Mc

        G = torch.zeros(d, d, dtype=torch.float64)  # z_K = G c + noise(C)
        C = eye.clone()
        for k in range(num_steps, 0, -1):
            Mz, Mc = tweedie_maps(k)
            M = c_x0[k - 1] * Mz + c_z[k - 1] * eye
            G = M @ G + c_x0[k - 1] * Mc
            C = M @ C @ M.T + var[k - 1] * eye
        Mz, Mc = tweedie_maps(0)
        return Mz @ G + Mc, Mz @ C @ Mz.T


class NoiseMLP(nn.Module):
    """MLP noise predictor ``eps(z, s, c)`` with a sinusoidal embedding of ``s``."""

    def __init__(self, state_dim: int, hidden: int = 128, depth: int = 3, time_features: int = 16):
        super().__init__()
        # sine and cosine features come in pairs: an odd count built a layer one input too wide
        if check_int("time_features", time_features, 2) % 2:
            raise ValueError(f"time_features must be even, got {time_features}")
        self.time_features = time_features
        layers: list[nn.Module] = []
        width = 2 * state_dim + time_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, state_dim))
        self.net = nn.Sequential(*layers)
        freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), time_features // 2))
        self.register_buffer("freqs", freqs)

    def forward(self, z: torch.Tensor, s: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        s = torch.as_tensor(s, dtype=z.dtype, device=z.device)
        ang = s.unsqueeze(-1) * self.freqs.to(z)
        emb = torch.cat((ang.sin(), ang.cos()), dim=-1).expand(*z.shape[:-1], -1)
        return self.net(torch.cat((z, cond, emb), dim=-1))


class NeuralDiffusionTransition(DiffusionTransition, SavableModule):
    r"""A learned conditional diffusion transition in standardised residual coordinates
    :math:`z = (x_t - c - m) / v` (``m``, ``v`` the mean and scale of the increments), with
    the condition standardised as :math:`(c - \mu_c)/\sigma_c`."""

    def __init__(
        self,
        state_dim: int,
        hidden: int = 128,
        depth: int = 3,
        schedule: VPSchedule | None = None,
    ):
        for name, value in (("state_dim", state_dim), ("hidden", hidden), ("depth", depth)):
            check_int(name, value)  # 2.5 or -1 failed inside nn.Linear, naming nothing
        super().__init__(state_dim, schedule)
        self.net = NoiseMLP(state_dim, hidden, depth)
        self.config = {"state_dim": state_dim, "hidden": hidden, "depth": depth}
        for name in ("inc_mean", "cond_mean"):
            self.register_buffer(name, torch.zeros(state_dim))
        for name in ("inc_scale", "cond_scale"):
            self.register_buffer(name, torch.ones(state_dim))

    def _c(self, cond: torch.Tensor) -> torch.Tensor:
        return (cond - self.cond_mean.to(cond)) / self.cond_scale.to(cond)

    def eps(self, z: torch.Tensor, s: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.net(z, s, self._c(cond))

    def encode(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return (x - cond - self.inc_mean.to(x)) / self.inc_scale.to(x)

    def decode(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return cond + self.inc_mean.to(z) + self.inc_scale.to(z) * z

    def decode_scale(self) -> torch.Tensor:
        return self.inc_scale


@keep_global_rng
def train_transition_model(
    x_prev: torch.Tensor,
    x_next: torch.Tensor,
    hidden: int = 128,
    depth: int = 3,
    num_iters: int = 3000,
    batch_size: int = 512,
    lr: float = 2e-3,
    schedule: VPSchedule | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> tuple[NeuralDiffusionTransition, dict]:
    r"""Fit a :class:`NeuralDiffusionTransition` by denoising score matching,
    :math:`\min_\theta \mathbb E_{s, z, \varepsilon} \|\hat\varepsilon_\theta(\alpha z +
    \sigma\varepsilon, s, c) - \varepsilon\|^2` with :math:`s \sim U(s_{\min}, 1)`.

    Args:
        x_prev, x_next: ``n x d`` simulated transition pairs :math:`(x_{t-1}, x_t)`,
            ``n >= 2``.
        hidden, depth: MLP width and number of hidden layers.
        num_iters, batch_size, lr: Adam with cosine decay.
        seed: seeds initialisation and minibatches.

    Returns:
        The trained model (eval mode) and ``{"loss": [...], "seconds": float}``.
    """
    if x_prev.dim() != 2 or x_prev.shape != x_next.shape:
        raise ValueError(
            "x_prev and x_next must both be n x d; got "
            f"{tuple(x_prev.shape)} and {tuple(x_next.shape)}"
        )
    check_finite("x_prev", x_prev)
    check_finite("x_next", x_next)
    if x_prev.shape[0] < 2:  # the increments are standardised by their sd
        raise ValueError(f"x_prev and x_next need n >= 2 pairs, got {x_prev.shape[0]}")
    num_iters = check_int("num_iters", num_iters, 0)
    batch_size = check_int("batch_size", batch_size)
    check_positive("lr", lr)
    gen = make_generator(seed, device=x_prev.device)  # checks seed before the global RNG reads it
    torch.manual_seed(seed)
    n, d = x_prev.shape
    model = NeuralDiffusionTransition(d, hidden, depth, schedule).to(x_prev)
    inc = x_next - x_prev
    model.inc_mean.copy_(inc.mean(0))
    model.inc_scale.copy_(inc.std(0).clamp_min(1e-6))
    model.cond_mean.copy_(x_prev.mean(0))
    model.cond_scale.copy_(x_prev.std(0).clamp_min(1e-6))
    z_all = model.encode(x_next, x_prev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, num_iters)
    sch = model.schedule
    losses = []
    t0 = time.perf_counter()
    for _ in progress(range(num_iters), verbose=verbose, desc="score matching"):
        idx = torch.randint(0, n, (batch_size,), generator=gen, device=x_prev.device)
        z, c = z_all[idx], x_prev[idx]
        s = sch.s_min + (1 - sch.s_min) * torch.rand(
            batch_size, 1, generator=gen, device=z.device, dtype=z.dtype
        )
        e = torch.randn(z.shape, generator=gen, device=z.device, dtype=z.dtype)
        zs = sch.alpha(s) * z + sch.sigma(s) * e
        loss = (model.net(zs, s.squeeze(-1), model._c(c)) - e).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    return model, {"loss": losses, "seconds": time.perf_counter() - t0}
