r"""The guided reverse-diffusion proposal of SURGE and its twist functions.

For an observation :math:`y \sim \mathcal N(h(x), R)` and a diffusion transition with Tweedie
estimate :math:`\hat x_0(z_k) = \mathrm{decode}(\hat z_0(z_k), c)`, the **twist** at level
``k`` is

.. math::
    h_k(z_k) = \mathcal N\big(y;\, h(\hat x_0(z_k)),\, R + r_k^2 I\big), \qquad
    r_k^2 = \frac{\sigma_k^2}{\alpha_k^2}\, \bar v^2 \quad\text{("inflated")}
    \quad\text{or}\quad r_k^2 = 0 \quad\text{("dps")},

with :math:`\bar v^2` the mean squared decode scale (1 for the exact linear-Gaussian model)
and :math:`h_0 = p(y \mid x_t)` exactly. :math:`\sigma_k^2/\alpha_k^2` is the variance of
:math:`z_0` given :math:`z_k` under a flat prior, so the inflated twist does not trust a
Tweedie estimate at high noise; the plain DPS twist does and degenerates.

The **proposal** shifts the unguided DDPM kernel :math:`\mathcal N(\mu_k, v_k I)` by the
twist's gradient: :math:`q(z_{k-1} \mid z_k, y) = \mathcal N(\mu_k + v_k \nabla \log h_k(z_k),
v_k I)`. Any twist gives a consistent SMC (the weights correct it); a good twist keeps the
effective sample size high.
"""

from __future__ import annotations

from typing import Literal

import torch

from probml.models.diffusion import DiffusionTransition
from probml.models.dynamics import GaussianObservation
from probml.utils import check_int, check_positive

__all__ = ["GuidedReverseProposal", "TWISTS"]

TWISTS = ("inflated", "dps")


class GuidedReverseProposal:
    """Twist evaluations and guided proposals for ``num_steps`` reverse-diffusion levels.

    Args:
        transition: the diffusion world model.
        observation: the Gaussian observation model.
        num_steps: ``K`` diffusion levels.
        twist: ``"inflated"`` (SURGE) or ``"dps"`` (no inflation).
        guidance_scale: multiplies the gradient in the proposal mean (1 = the twist's own
            gradient; 0 = the unguided prior kernel, i.e. bootstrap over the diffusion path).
    """

    def __init__(
        self,
        transition: DiffusionTransition,
        observation: GaussianObservation,
        num_steps: int,
        twist: Literal["inflated", "dps"] = "inflated",
        guidance_scale: float = 1.0,
    ):
        if twist not in TWISTS:
            raise ValueError(f"twist must be one of {TWISTS}, got {twist!r}")
        check_positive("guidance_scale", guidance_scale, strict=False)
        self.transition = transition
        self.observation = observation
        self.num_steps = check_int("num_steps", num_steps)
        self.twist_kind = twist
        self.guidance_scale = float(guidance_scale)
        self.coeffs = transition.schedule.reverse_coefficients(self.num_steps)
        _, _, _, al, sg, _ = self.coeffs
        scale = torch.as_tensor(transition.decode_scale(), dtype=torch.float64)
        v2 = float(scale.pow(2).mean())
        r2 = sg**2 / al**2 * v2 if twist == "inflated" else torch.zeros_like(sg)
        r2[0] = 0.0  # h_0 = p(y | x_t): the final twist is the exact likelihood
        self.r2 = r2

    def twist(
        self,
        z: torch.Tensor,
        k: int,
        cond: torch.Tensor,
        y: torch.Tensor,
        grad: bool = True,
        observed: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``(log h_k(z), grad_z log h_k(z), z0_hat)`` for particles ``z``: ``batch x N x d``,
        ``y``: ``batch x p``. The gradient flows through the noise predictor. ``observed``:
        optional ``batch x p`` mask of the observed components (the twist uses those alone;
        with none observed it is flat, so the proposal is the unguided kernel)."""
        y = y.unsqueeze(-2)
        obs = None if observed is None else observed.unsqueeze(-2)
        if not grad:
            with torch.no_grad():
                z0, _ = self.transition.tweedie(z, k, cond, self.coeffs)
                x0 = self.transition.decode(z0, cond)
                return self.observation.log_prob(y, x0, float(self.r2[k]), obs), None, z0
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            z0, _ = self.transition.tweedie(z, k, cond, self.coeffs)
            x0 = self.transition.decode(z0, cond)
            log_h = self.observation.log_prob(y, x0, float(self.r2[k]), obs)
            (g,) = torch.autograd.grad(log_h.sum(), z)
        return log_h.detach(), g, z0.detach()

    def prior_moments(self, z: torch.Tensor, z0: torch.Tensor, k: int):
        """Mean ``batch x N x d`` and variance (scalar) of the unguided kernel from level k."""
        c_x0, c_z, var = self.coeffs[:3]
        return c_x0[k - 1].to(z) * z0 + c_z[k - 1].to(z) * z, var[k - 1].to(z)

    def propose(
        self,
        z: torch.Tensor,
        z0: torch.Tensor,
        grad: torch.Tensor,
        k: int,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Draw :math:`z_{k-1} \sim q` and return it with
        :math:`\log p_\theta(z_{k-1} \mid z_k) - \log q(z_{k-1} \mid z_k, y)` (``batch x N``).

        With a shared variance ``v`` and shift :math:`\delta = v\,g`, the log-ratio is
        :math:`\sum_j [-(z'-\mu)_j g_j + \tfrac{v}{2} g_j^2]`.
        """
        mean, v = self.prior_moments(z, z0, k)
        g = self.guidance_scale * grad
        noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        z_new = mean + v * g + v.sqrt() * noise
        log_ratio = (-(z_new - mean) * g + 0.5 * v * g.pow(2)).sum(-1)
        return z_new, log_ratio
