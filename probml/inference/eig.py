r"""Expected-information-gain estimators, vectorised over designs, outer and inner samples.

* :func:`nmc_eig`: nested Monte Carlo EIG of a design for any Pyro model. It is the estimator
  of :func:`pyro.contrib.oed.eig.nmc_eig` (same argument names, same draws under the same
  seed: the ``M`` inner prior draws are shared by the ``N`` outer samples) with one addition:
  the inner expectation is processed in chunks of ``chunk_size`` draws to bound memory:

  .. math:: \widehat{\mathrm{EIG}} = \frac1N\sum_n \Big[\log p(y_n|\theta_n,\xi)
            - \log\frac1M\sum_m p(y_n|\theta_m,\xi)\Big].

* :func:`history_bounds` (and :func:`spce`, :func:`snmc`): sequential PCE lower and NMC upper
  bounds on the total information of realised design histories (Foster et al. 2021):

  .. math:: \mathrm{sPCE} = \mathbb E\Big[\log\frac{p(h_T|\theta_0)}
            {\frac1{L+1}\sum_{l=0}^{L} p(h_T|\theta_l)}\Big] \le I_T \le
            \mathbb E\Big[\log\frac{p(h_T|\theta_0)}{\frac1L\sum_{l=1}^{L}p(h_T|\theta_l)}\Big] = \mathrm{sNMC},

  with contrastive :math:`\theta_{1:L}` from the prior, processed in chunks so that ``L`` can be
  1e6 on a CPU.

* :func:`ace_eig`: the ACE-style lower bound on the EIG of a next design under a posterior
  network :math:`q` used both as the current belief and, conditioned on the fantasised outcome,
  as the proposal (Foster et al. 2020):

  .. math:: \mathrm{EIG}(\xi) \ge \mathbb E\Big[\log p(y|\theta_0,\xi) - \log\frac1{L+1}
            \sum_{l=0}^{L}\frac{q(\theta_l|\mathcal D)\,p(y|\theta_l,\xi)}
            {q(\theta_l|\mathcal D,\xi,y)}\Big],

  :math:`\theta_0 \sim q(\cdot|\mathcal D)`, :math:`y \sim p(y|\theta_0,\xi)`,
  :math:`\theta_{1:L} \sim q(\cdot|\mathcal D,\xi,y)`; tight when the proposal is the exact
  posterior.

Experiments provide ``sample_prior(n, generator)``, ``sample_y(theta, design, generator)`` and
a broadcasting ``log_likelihood(theta, design, y)`` (see :mod:`probml.models.experiments`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pyro
import torch
from pyro import poutine

from probml.utils import check_int, make_generator

__all__ = ["nmc_eig", "history_bounds", "spce", "snmc", "sample_histories", "ace_eig"]


def _lexpand(x: torch.Tensor, *shape: int) -> torch.Tensor:
    return x.expand(*shape, *x.shape)


def nmc_eig(
    model: Callable,
    design: torch.Tensor,
    observation_labels: str | Sequence[str],
    target_labels: str | Sequence[str] | None = None,
    N: int = 100,
    M: int = 10,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Nested Monte Carlo EIG of ``design`` (``batch x D``; returns ``batch``).

    Args:
        model: Pyro model taking the design as its only argument, with latent target sites and
            observation sites; it must vectorise over leading design dimensions.
        observation_labels: the observation sites ``y``.
        target_labels: kept for compatibility with Pyro's signature (every non-observed site
            is resampled for the inner expectation, i.e. no nuisance variables).
        N: outer samples; M: inner samples; chunk_size: inner samples per chunk (default all).
    """
    if isinstance(observation_labels, str):
        observation_labels = [observation_labels]
    N, M = check_int("N", N), check_int("M", M)
    if chunk_size is not None:
        chunk_size = check_int("chunk_size", chunk_size)
    trace = poutine.trace(model).get_trace(_lexpand(design, N))
    trace.compute_log_prob()
    y = {lab: trace.nodes[lab]["value"] for lab in observation_labels}
    conditional = sum(trace.nodes[lab]["log_prob"] for lab in observation_labels)  # N x batch
    chunk = M if chunk_size is None else chunk_size
    log_sum = None  # running log-sum-exp over the inner draws: memory m x N x batch per chunk
    for start in range(0, M, chunk):
        m = min(chunk, M - start)
        cond_model = pyro.condition(model, data={lab: _lexpand(v, m) for lab, v in y.items()})
        # m prior draws shared by all N outer samples (design m x 1 x batch broadcasts to y)
        tr = poutine.trace(cond_model).get_trace(_lexpand(design, m, 1))
        tr.compute_log_prob()
        inner = sum(tr.nodes[lab]["log_prob"] for lab in observation_labels)  # m x N x batch
        part = torch.logsumexp(inner, 0)
        log_sum = part if log_sum is None else torch.logaddexp(log_sum, part)
    marginal = log_sum - math.log(M)
    return (conditional - marginal).mean(0)


def sample_histories(
    experiment, designs: torch.Tensor, N: int, generator: torch.Generator | int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``theta0`` (``N x ...``) from the prior and ``y`` (``N x T``) for a fixed ``T x D``
    design sequence."""
    N = check_int("N", N)
    gen = make_generator(generator, name="generator")
    theta0 = experiment.sample_prior(N, generator=gen)
    th = theta0.unsqueeze(1)  # N x 1 x ...
    ys = experiment.sample_y(th, designs.unsqueeze(0).expand(N, *designs.shape), generator=gen)
    return theta0, ys


def history_bounds(
    experiment,
    designs: torch.Tensor,
    ys: torch.Tensor,
    theta0: torch.Tensor,
    L: int = 10_000,
    chunk_size: int = 2_000,
    generator: torch.Generator | int | None = None,
    per_history: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """sPCE and sNMC of realised histories.

    Args:
        experiment: provides ``sample_prior`` and ``log_likelihood``.
        designs: ``T x D`` (shared) or ``N x T x D`` (per-history, e.g. adaptive policies).
        ys: ``N x T`` outcomes; theta0: ``N x ...`` the parameters that generated them.
        L: contrastive samples (shared across histories); chunk_size: per chunk.

    Returns:
        ``(spce, snmc)``: scalars (means over the ``N`` histories), or the ``N`` per-history
        terms when ``per_history`` (for standard errors).
    """
    L, chunk_size = check_int("L", L), check_int("chunk_size", chunk_size)
    N, T = ys.shape
    if designs.dim() == 2:
        designs = designs.unsqueeze(0).expand(N, *designs.shape)
    gen = make_generator(generator, name="generator")
    th0 = theta0.unsqueeze(1)  # N x 1 x ...
    log_p0 = experiment.log_likelihood(th0, designs, ys).sum(-1)  # N
    # running log-sum-exp over the contrastive samples, chunk by chunk: memory N x chunk x T
    run = torch.full((N,), -math.inf, dtype=log_p0.dtype, device=log_p0.device)
    done = 0
    while done < L:
        c = min(chunk_size, L - done)
        th = experiment.sample_prior(c, generator=gen)  # c x ...
        th = th.unsqueeze(0).unsqueeze(2)  # 1 x c x 1 x ...
        lp = experiment.log_likelihood(th, designs.unsqueeze(1), ys.unsqueeze(1)).sum(-1)  # N x c
        run = torch.logaddexp(run, torch.logsumexp(lp, dim=1))
        done += c
    spce_val = log_p0 - (torch.logaddexp(run, log_p0) - math.log(L + 1))
    snmc_val = log_p0 - (run - math.log(L))
    if per_history:
        return spce_val, snmc_val
    return spce_val.mean(), snmc_val.mean()


def spce(experiment, designs, ys, theta0, L: int = 10_000, chunk_size: int = 2_000, generator=None):
    """Sequential PCE lower bound (see :func:`history_bounds`)."""
    return history_bounds(experiment, designs, ys, theta0, L, chunk_size, generator)[0]


def snmc(experiment, designs, ys, theta0, L: int = 10_000, chunk_size: int = 2_000, generator=None):
    """Sequential NMC upper bound (see :func:`history_bounds`)."""
    return history_bounds(experiment, designs, ys, theta0, L, chunk_size, generator)[1]


def ace_eig(
    posterior,
    designs: torch.Tensor,
    num_outer: int = 256,
    L: int = 64,
    generator: torch.Generator | int | None = None,
) -> torch.Tensor:
    """ACE lower bound (see the module docstring) for each design ``C x D`` -> ``C``.

    Args:
        posterior: a posterior with a density and batched conditioning
            (:class:`~probml.guides.amortized.AmortizedPosterior`,
            :class:`~probml.guides.amortized.GaussianPosterior`); its ``experiment`` gives the
            likelihood.
        num_outer: ``N`` outer draws ``(theta_0, y)``; L: contrastive draws per outer draw.
    """
    num_outer, L = check_int("num_outer", num_outer), check_int("L", L)
    if not hasattr(posterior, "log_prob"):
        raise TypeError("ace_eig needs a posterior with log_prob (e.g. AmortizedPosterior)")
    ex = posterior.experiment
    gen = make_generator(generator, name="generator")
    C = designs.shape[0]
    theta0 = posterior.sample(num_outer, generator=gen)  # N x ...
    d = designs.reshape(C, 1, *designs.shape[1:])  # C x 1 x D
    y = ex.sample_y(theta0.unsqueeze(0), d, generator=gen)  # C x N
    proposal = posterior.condition(d, y)  # batch C x N
    theta_l = proposal.sample(L, generator=gen)  # L x C x N x ...
    th0 = theta0.unsqueeze(0).expand(C, *theta0.shape)  # C x N x ...
    thetas = torch.cat([th0.unsqueeze(0), theta_l], 0)  # (L+1) x C x N x ...
    log_terms = (
        posterior.log_prob(thetas) + ex.log_likelihood(thetas, d, y) - proposal.log_prob(thetas)
    )
    log_p0 = ex.log_likelihood(th0, d, y)  # C x N
    return (log_p0 - (torch.logsumexp(log_terms, 0) - math.log(L + 1))).mean(-1)
