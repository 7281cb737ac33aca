r"""Posteriors over ``theta`` given a design history, behind one interface.

:class:`ParticlePosterior` is the reference: ``M`` prior particles reweighted by the likelihood
of every observed ``(design, y)`` (exact as ``M`` grows, no training). ``condition`` returns a
new posterior; ``sample`` resamples with the shared particle toolkit.

(The amortized posterior network and the design policy of the spec are not built yet.)
"""

from __future__ import annotations

import torch

from probml.inference.particles import effective_sample_size, normalize_log_weights, resample
from probml.utils import make_generator

__all__ = ["ParticlePosterior"]


class ParticlePosterior:
    """Importance-weighted prior particles.

    Args:
        experiment: provides ``sample_prior(n, generator)`` and ``log_likelihood``.
        num_particles: ``M``.
        generator: seed or generator for the prior draw.
    """

    def __init__(
        self,
        experiment,
        num_particles: int = 4096,
        generator=None,
        _particles: torch.Tensor | None = None,
        _log_w: torch.Tensor | None = None,
    ):
        self.experiment = experiment
        if _particles is None:
            _particles = experiment.sample_prior(
                int(num_particles), generator=make_generator(generator)
            )
            _log_w = torch.zeros(_particles.shape[0], dtype=_particles.dtype)
        self.particles, self.log_weights = _particles, _log_w

    def condition(self, design: torch.Tensor, y: torch.Tensor | float) -> ParticlePosterior:
        """The posterior after observing ``y`` at ``design`` (``D``)."""
        y = torch.as_tensor(y, dtype=self.particles.dtype)
        lw = self.log_weights + self.experiment.log_likelihood(self.particles, design, y)
        return ParticlePosterior(self.experiment, _particles=self.particles, _log_w=lw)

    @property
    def ess(self) -> float:
        return float(effective_sample_size(self.log_weights))

    def normalized_log_weights(self) -> torch.Tensor:
        return normalize_log_weights(self.log_weights)

    def sample(self, n: int, generator=None) -> torch.Tensor:
        """``n`` equally weighted draws (systematic resampling)."""
        idx = resample(
            self.log_weights, n, scheme="systematic", generator=make_generator(generator)
        )
        return self.particles[idx]

    def mean(self) -> torch.Tensor:
        w = self.normalized_log_weights().exp()
        return (w.reshape(-1, *([1] * (self.particles.dim() - 1))) * self.particles).sum(0)
