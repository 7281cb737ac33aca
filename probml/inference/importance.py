r"""Vectorised importance sampling (and resampling) on any Pyro model and guide.

Particles are drawn in one vectorised pass with
:func:`pyro.infer.importance.vectorized_importance_weights`; the weights

.. math:: \log \tilde w_k = \log p(x, z_k) - \log q(z_k), \qquad z_k \sim q

are handled with the shared particle toolkit (:mod:`probml.inference.particles`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.infer.importance import vectorized_importance_weights

from probml.inference.particles import (
    effective_sample_size,
    gather_particles,
    log_mean_exp,
    normalize_log_weights,
    resample,
)
from probml.utils import check_int

__all__ = ["WeightedSamples", "importance_sample", "prior_guide"]


def prior_guide(model: Callable) -> Callable:
    """A guide that proposes every latent site from the model's own prior (observed sites hidden)."""
    return poutine.block(model, hide_fn=lambda msg: msg.get("is_observed", False))


@dataclass
class WeightedSamples:
    """Weighted particles of the latent sites.

    Attributes:
        samples: site name -> ``N x event_shape`` tensor (a site inside plates keeps their
            sizes: ``N x plate sizes x event_shape``).
        log_weights: ``N`` unnormalised log-weights.
    """

    samples: dict[str, torch.Tensor]
    log_weights: torch.Tensor

    @property
    def num_particles(self) -> int:
        return int(self.log_weights.shape[-1])

    @property
    def weights(self) -> torch.Tensor:
        """``N`` normalised weights."""
        return normalize_log_weights(self.log_weights).exp()

    @property
    def ess(self) -> float:
        """Effective sample size ``1 / sum w^2``."""
        return float(effective_sample_size(self.log_weights))

    @property
    def log_evidence(self) -> float:
        r"""The unbiased-in-:math:`p(x)` estimate :math:`\log \frac1N\sum_k \tilde w_k`."""
        return float(log_mean_exp(self.log_weights))

    def mean(self, site: str) -> torch.Tensor:
        """Self-normalised estimate of ``E[site]`` (``event_shape``)."""
        v = self.samples[site]
        w = self.weights.to(v.dtype).reshape(-1, *([1] * (v.dim() - 1)))
        return (w * v).sum(0)

    def covariance(self, site: str) -> torch.Tensor:
        """Self-normalised covariance of a vector site (``d x d``)."""
        v = self.samples[site].reshape(self.num_particles, -1)
        w = self.weights.to(v.dtype)
        c = v - (w[:, None] * v).sum(0)
        return (w[:, None] * c).T @ c

    def resample(
        self,
        num_samples: int | None = None,
        scheme: str = "systematic",
        generator: torch.Generator | int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Equally weighted draws: site -> ``M x event_shape``."""
        idx = resample(self.log_weights, num_samples, scheme=scheme, generator=generator)  # M
        return {k: gather_particles(v, idx) for k, v in self.samples.items()}


def _latent_sites(trace) -> set[str]:
    return {
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site.get("is_observed", False)
    }


def _check_guide_covers_model(model_trace, guide_trace) -> None:
    """Importance weights ``log p(x, z) - log q(z)`` are only right when the guide proposes
    every latent site of the model and no other. A model site the guide skips is drawn from
    the prior inside the model, so its prior density enters the weight with no proposal
    density to cancel it. A guide site the model lacks (auxiliary or not) enters with its
    proposal density alone. Pyro only warns (and accepts auxiliary sites, which are right for
    ELBOs, not here); this is an error naming the sites."""
    model_sites, guide_sites = _latent_sites(model_trace), _latent_sites(guide_trace)
    missing, extra = sorted(model_sites - guide_sites), sorted(guide_sites - model_sites)
    if missing or extra:
        parts = [f"missing {missing}"] if missing else []
        parts += [f"not in the model {extra} (auxiliary sites included)"] if extra else []
        raise ValueError("guide must sample exactly the model's latent sites: " + "; ".join(parts))


def importance_sample(
    model: Callable,
    guide: Callable | None,
    *args,
    num_particles: int,
    max_plate_nesting: int = 1,
    **kwargs,
) -> WeightedSamples:
    """Draw ``num_particles`` weighted particles of ``model``'s latent sites from ``guide``.

    Args:
        model: a Pyro model with static structure; observed sites carry ``obs=``.
        guide: a Pyro guide over the latent sites (``None``: the prior, :func:`prior_guide`).
        *args, **kwargs: passed to both.
        num_particles: ``N``.
        max_plate_nesting: how many plates the model nests (the particle plate goes left of them).

    Returns:
        :class:`WeightedSamples` with each latent site as ``N x event_shape`` (``N x plate
        sizes x event_shape`` inside plates).
    """
    num_particles = check_int("num_particles", num_particles)
    check_int("max_plate_nesting", max_plate_nesting, 0)
    guide = prior_guide(model) if guide is None else guide
    log_w, model_trace, guide_trace = vectorized_importance_weights(
        model,
        guide,
        *args,
        num_samples=num_particles,
        max_plate_nesting=max_plate_nesting,
        **kwargs,
    )
    _check_guide_covers_model(model_trace, guide_trace)
    samples: dict[str, torch.Tensor] = {}
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site.get("is_observed", False):
            continue
        # Pyro's particle plate sits at dim -(max_plate_nesting + 1) and every site is
        # broadcast out to it, so particles are already the leading dimension
        v = site["value"]
        ev = tuple(site["fn"].event_shape)
        rest = v.shape[1 : v.dim() - len(ev)]
        if all(s == 1 for s in rest):
            v = v.reshape(int(num_particles), *ev)
        samples[name] = v
    return WeightedSamples(samples, log_w.reshape(int(num_particles)))
