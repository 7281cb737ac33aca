r"""Constrained sequential design: constraints, planners, policy training and the experiment loop.

**[paper]** Online multi-step lookahead over scenario trees under dynamic constraints, scoring
branches by expected information gain under the current posterior. **[design]** (from the spec,
details ours):

* constraints on every parent-to-child edge, bundled by :class:`Constraints`:
  :class:`StepBound` (L_inf or L2 ball), :class:`TravelBudget` (remaining budget minus the cost
  of the move must stay >= 0), :class:`SoftCost` (the value becomes
  :math:`V / (1 + \lambda \bar c)`, :math:`\bar c` the discounted mean edge cost of the plan);
  designs also stay in the experiment's box ``experiment.design_bounds``;
* the EIG of a candidate next design under any posterior by nested Monte Carlo
  (:func:`next_design_eig`): :math:`\theta_n \sim q`, :math:`y_n = g(\theta_n, \xi, \epsilon_n)`,
  :math:`\log p(y_n|\mathcal D, \xi) = \log\sum_m w_m p(y_n|\theta_m, \xi)`, vectorised over
  candidates, outer and inner samples; with the draws held fixed (common random numbers) it is
  a smooth function of the design, which SciPy's SLSQP refines under the constraints
  (:func:`refine_designs`);
* :class:`ScenarioTreePlanner`: depth ``D`` tree, ``branching`` fantasised outcomes per node,
  value = EIG + discount x mean over children of their best value; only the root design is
  executed (receding horizon). Root candidates: uniform feasible draws, the amortized policy's
  top-k (warm start) and their SLSQP refinements;
* baselines :class:`GreedyPlanner` (depth 0), :class:`MaskedPolicyPlanner` (the REINFORCE policy
  of :func:`train_design_policy` masked to the feasible set), :class:`RandomFeasiblePlanner`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from probml.guides.amortized import (
    DesignPolicy,
    ParticlePosterior,
    PosteriorNet,
    random_walk_designs,
    train_posterior_net,
)
from probml.models.experiments import check_experiment, check_experiment_shapes
from probml.utils import (
    check_int,
    check_interval,
    check_positive,
    derive_seed,
    make_generator,
    progress,
)

__all__ = [
    "StepBound",
    "TravelBudget",
    "SoftCost",
    "Constraints",
    "ConstraintViolation",
    "Planner",
    "next_design_eig",
    "refine_designs",
    "RandomFeasiblePlanner",
    "GreedyPlanner",
    "ScenarioTreePlanner",
    "MaskedPolicyPlanner",
    "train_design_policy",
    "information_rewards",
    "reinforce_loss",
    "fit_amortized",
    "ExperimentResult",
    "run_experiment",
]

_TOL = 1e-9


class ConstraintViolation(ValueError):
    """An infeasible start, a spent budget, or a design outside the feasible set."""


def _l2(prev: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
    return (xi - prev).norm(dim=-1)


class _MoveCost:
    """``edge_cost`` from an optional ``cost`` field, shared by the two cost constraints."""

    cost: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None

    def edge_cost(self, prev: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        """The move's cost (``...``): ``cost(prev, xi)``, or its Euclidean length."""
        return _l2(prev, xi) if self.cost is None else self.cost(prev, xi)


@dataclass
class StepBound:
    """``||xi_t - xi_{t-1}|| <= delta`` in the ``"inf"`` or ``"2"`` norm."""

    delta: float
    norm: str = "inf"

    def __post_init__(self):
        if not self.delta > 0:
            raise ValueError(f"delta must be > 0, got {self.delta}")
        self.norm = str(self.norm)
        if self.norm not in ("inf", "2"):
            raise ValueError(f"norm must be 'inf' or '2', got {self.norm!r}")

    def distance(self, prev: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        """The move's length in the bound's norm (``...``; broadcast over leading dims)."""
        d = xi - prev
        return d.abs().amax(-1) if self.norm == "inf" else d.norm(dim=-1)


@dataclass
class TravelBudget(_MoveCost):
    """Total path cost ``sum_t cost(xi_{t-1}, xi_t) <= budget`` (default cost: L2 distance;
    see :func:`probml.models.experiments.path_cost` for cost maps)."""

    budget: float
    cost: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self):
        if not self.budget > 0:
            raise ValueError(f"budget must be > 0, got {self.budget}")


@dataclass
class SoftCost(_MoveCost):
    r"""Soft movement cost: a plan's value :math:`V` becomes :math:`V / (1 + \lambda \bar c)`
    with :math:`\bar c` the discounted mean edge cost along the plan (default cost: L2)."""

    lam: float
    cost: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self):
        if not self.lam >= 0:  # NaN fails too
            raise ValueError(f"lam must be >= 0, got {self.lam}")


class Constraints:
    """The constraints of one experiment, bundled: at most one :class:`StepBound`,
    :class:`TravelBudget` and :class:`SoftCost`, plus the design box ``[low, high]^D``.

    Args:
        constraints: a sequence of constraint objects.
        design_bounds: ``(low, high)`` of the design box.
    """

    def __init__(self, constraints: Sequence = (), design_bounds: tuple[float, float] = (0, 1)):
        self.step: StepBound | None = None
        self.budget: TravelBudget | None = None
        self.soft: SoftCost | None = None
        for c in constraints:
            slot = {StepBound: "step", TravelBudget: "budget", SoftCost: "soft"}.get(type(c))
            if slot is None:
                raise TypeError(
                    f"constraints must be StepBound, TravelBudget or SoftCost, got {type(c)}"
                )
            if getattr(self, slot) is not None:
                raise ValueError(f"at most one {type(c).__name__} is allowed")
            setattr(self, slot, c)
        self.low, self.high = float(design_bounds[0]), float(design_bounds[1])
        if not self.low < self.high:
            raise ValueError(f"design_bounds must have low < high, got {design_bounds}")

    def start_position(self, start, dim: int) -> torch.Tensor:
        """``start`` as a float64 tensor, or the centre of the box when it is ``None``."""
        if start is None:
            return torch.full((dim,), 0.5 * (self.low + self.high), dtype=torch.float64)
        return torch.as_tensor(start, dtype=torch.float64)

    def edge_cost(self, prev: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        """Budget cost of the move (zero without a budget)."""
        if self.budget is None:
            return torch.zeros(xi.shape[:-1], dtype=xi.dtype, device=xi.device)
        return self.budget.edge_cost(prev, xi)

    def soft_cost(self, prev: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        """The :class:`SoftCost` edge cost of the move (zero without one)."""
        if self.soft is None:
            return torch.zeros(xi.shape[:-1], dtype=xi.dtype, device=xi.device)
        return self.soft.edge_cost(prev, xi)

    def penalise(self, value, mean_cost):
        """``V / (1 + lam * mean_cost)`` (identity without a soft cost)."""
        return value if self.soft is None else value / (1 + self.soft.lam * mean_cost)

    def feasible(self, prev: torch.Tensor, xi: torch.Tensor, remaining: float) -> torch.Tensor:
        """Boolean ``...``: inside the box, the step bound and the remaining budget."""
        ok = ((xi >= self.low - _TOL) & (xi <= self.high + _TOL)).all(-1)
        if self.step is not None:
            ok = ok & (self.step.distance(prev, xi) <= self.step.delta * (1 + _TOL))
        if self.budget is not None:
            ok = ok & (self.edge_cost(prev, xi) <= remaining + _TOL)
        return ok

    def _shrink_to_budget(self, prev, cand, remaining):
        """Halve violating moves towards ``prev`` (keeps box and step feasibility)."""
        if self.budget is None:
            return cand
        for _ in range(40):
            bad = self.edge_cost(prev, cand) > remaining
            if not bool(bad.any()):
                break
            cand = torch.where(bad.unsqueeze(-1), prev + 0.5 * (cand - prev), cand)
        return cand

    def sample(
        self, prev: torch.Tensor, n: int, remaining: float, generator: torch.Generator
    ) -> torch.Tensor:
        """``<= n + 1`` feasible candidates: draws from the step region (uniform for L_inf;
        uniform in the L2 ball then projected on the box) or the box, moves over the budget
        halved towards ``prev``, and ``prev`` itself. Raises :class:`ConstraintViolation`
        when nothing is feasible."""
        D, dt = prev.shape[-1], prev.dtype
        lo = torch.full((D,), self.low, dtype=dt)
        hi = torch.full((D,), self.high, dtype=dt)
        if self.step is not None and self.step.norm == "inf":
            lo = torch.maximum(lo, prev - self.step.delta)
            hi = torch.minimum(hi, prev + self.step.delta)
        if self.step is not None and self.step.norm == "2":
            g = torch.randn(n, D, dtype=dt, generator=generator)
            r = self.step.delta * torch.rand(n, 1, dtype=dt, generator=generator) ** (1 / D)
            cand = (prev + r * g / g.norm(dim=-1, keepdim=True)).clamp(self.low, self.high)
        else:
            cand = lo + (hi - lo) * torch.rand(n, D, dtype=dt, generator=generator)
        cand = torch.cat([cand, prev.unsqueeze(0)])  # staying put (cost 0 for a path cost)
        cand = self._shrink_to_budget(prev, cand, remaining)
        cand = cand[self.feasible(prev, cand, remaining)]
        if cand.shape[0] == 0:
            raise ConstraintViolation(
                f"no feasible design: the remaining budget {remaining:.4g} pays for no move"
            )
        return cand

    def _pull_back_to_budget(self, prev, xi, remaining, steps: int = 60):
        """The farthest point of each segment ``prev -> xi`` whose move the remaining budget
        pays for: bisection on the fraction of the move (``xi`` itself when affordable). When
        staying put is affordable, every point kept is, whatever the cost map (otherwise
        ``prev`` comes back and the caller's feasibility check refuses it); for a cost that
        grows along the segment (a length, a path integral of a positive terrain) it is the
        budget's boundary to ``2^-steps`` of the move."""
        if self.budget is None:
            return xi
        over = self.edge_cost(prev, xi) > remaining
        if not bool(over.any()):
            return xi
        move = xi - prev
        lo = torch.zeros(xi.shape[:-1], dtype=xi.dtype, device=xi.device)  # affordable
        hi = torch.ones_like(lo)
        for _ in range(steps):
            mid = 0.5 * (lo + hi)
            ok = self.edge_cost(prev, prev + mid.unsqueeze(-1) * move) <= remaining
            lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
        return torch.where(over.unsqueeze(-1), prev + lo.unsqueeze(-1) * move, xi)

    def project(self, prev: torch.Tensor, xi: torch.Tensor, remaining: float) -> torch.Tensor:
        """Map a nearly feasible design (e.g. an optimiser's output) into the feasible set:
        clip to the box, scale the move into the step ball, then pull it back along the move
        to where the remaining budget pays for it (bisection; an optimiser's output that
        overshoots a binding budget by rounding stays on the budget's boundary). Box and step
        feasibility are kept: both sets are convex and contain ``prev``."""
        xi = xi.clamp(self.low, self.high)
        if self.step is not None:
            d = self.step.distance(prev, xi)
            scale = torch.clamp(self.step.delta / d.clamp(min=1e-300), max=1.0)
            xi = prev + scale.unsqueeze(-1) * (xi - prev)
        return self._pull_back_to_budget(prev, xi, remaining)


def _inner_particles(posterior, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted particles for the inner (marginal) expectation: a particle posterior's own, or
    4096 equally weighted draws from any other posterior."""
    if isinstance(posterior, ParticlePosterior):
        return posterior.particles, posterior.normalized_log_weights()
    th = posterior.sample(4096, generator=generator)
    return th, torch.full((th.shape[0],), -math.log(th.shape[0]), dtype=torch.float64)


@dataclass
class _EIGDraws:
    """The random numbers of a common-random-numbers EIG estimate."""

    theta_n: torch.Tensor  # N x theta_shape, outer draws from the posterior
    eps: torch.Tensor  # N, standard normal noise of the outcome
    particles: torch.Tensor  # M x theta_shape
    log_w: torch.Tensor  # M


def _draws(posterior, num_outer: int, generator: torch.Generator) -> _EIGDraws:
    theta_n = posterior.sample(num_outer, generator=generator)
    eps = torch.randn(num_outer, dtype=torch.float64, generator=generator)
    return _EIGDraws(theta_n, eps, *_inner_particles(posterior, generator))


def _eig_given(experiment, draws: _EIGDraws, designs: torch.Tensor) -> torch.Tensor:
    """NMC EIG of ``designs`` (``C x D``) with fixed draws; differentiable in ``designs``."""
    C = designs.shape[0]
    d_cn = designs.reshape(C, 1, *designs.shape[1:])
    y = experiment.rsample_y(draws.theta_n.unsqueeze(0), d_cn, draws.eps)  # C x N
    cond = experiment.log_likelihood(draws.theta_n.unsqueeze(0), d_cn, y)  # C x N
    th_m = draws.particles.reshape(1, 1, *draws.particles.shape)
    inner = experiment.log_likelihood(
        th_m, designs.reshape(C, 1, 1, *designs.shape[1:]), y.unsqueeze(-1)
    )  # C x N x M
    return (cond - torch.logsumexp(inner + draws.log_w, dim=-1)).mean(-1)


def next_design_eig(
    posterior,
    designs: torch.Tensor,
    num_outer: int = 64,
    generator: torch.Generator | int | None = None,
) -> torch.Tensor:
    """NMC EIG of each candidate design (``C x D`` -> ``C``) under ``posterior`` (a
    :class:`~probml.guides.amortized.ParticlePosterior` or any posterior with ``sample``)."""
    check_experiment(posterior.experiment, ("rsample_y", "log_likelihood"))
    draws = _draws(posterior, num_outer, make_generator(generator, name="generator"))
    return _eig_given(posterior.experiment, draws, designs)


def refine_designs(
    posterior,
    starts: torch.Tensor,
    prev: torch.Tensor,
    constraints: Constraints,
    remaining: float,
    num_outer: int = 64,
    max_iter: int = 30,
    generator: torch.Generator | int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Refine each start (``R x D``) by SciPy's SLSQP on the common-random-numbers EIG
    (penalised by the soft cost), under the box, the step bound (bounds for L_inf, a smooth
    inequality for L2) and the remaining budget. Returns the refined designs (projected into the
    feasible set; a start is kept where refinement did not improve it) and their values."""
    from scipy.optimize import minimize

    ex = posterior.experiment
    draws = _draws(posterior, num_outer, make_generator(generator, name="generator"))

    def score(x: torch.Tensor) -> torch.Tensor:
        return constraints.penalise(_eig_given(ex, draws, x), constraints.soft_cost(prev, x))

    lo = np.full(prev.shape[-1], constraints.low)
    hi = np.full(prev.shape[-1], constraints.high)
    st = constraints.step
    if st is not None and st.norm == "inf":
        lo = np.maximum(lo, prev.numpy() - st.delta)
        hi = np.minimum(hi, prev.numpy() + st.delta)
    cons = []

    def torch_fn(f):
        def fun(x):
            return float(f(torch.as_tensor(x, dtype=torch.float64)))

        def jac(x):
            t = torch.as_tensor(x, dtype=torch.float64).requires_grad_(True)
            (g,) = torch.autograd.grad(f(t), t)
            return g.numpy()

        return fun, jac

    if st is not None and st.norm == "2":
        fun, jac = torch_fn(lambda x: st.delta**2 - ((x - prev) ** 2).sum())
        cons.append({"type": "ineq", "fun": fun, "jac": jac})
    if constraints.budget is not None:
        fun, jac = torch_fn(lambda x: remaining - constraints.edge_cost(prev, x + 1e-12))
        cons.append({"type": "ineq", "fun": fun, "jac": jac})
    obj, obj_jac = torch_fn(lambda x: -score(x.unsqueeze(0))[0])
    out = []
    for x0 in starts:
        res = minimize(
            obj,
            x0.numpy(),
            jac=obj_jac,
            method="SLSQP",
            bounds=list(zip(lo, hi)),
            constraints=cons,
            options={"maxiter": max_iter},
        )
        out.append(torch.as_tensor(res.x, dtype=torch.float64))
    refined = constraints.project(prev, torch.stack(out), remaining)
    with torch.no_grad():
        v_new, v_old = score(refined), score(starts)
    keep = v_new >= v_old
    return torch.where(keep.unsqueeze(-1), refined, starts), torch.where(keep, v_new, v_old)


@runtime_checkable
class Planner(Protocol):
    """What :func:`run_experiment` asks of a planner (a structural type: no base class)."""

    def plan(
        self,
        posterior,
        prev: torch.Tensor,
        constraints: Constraints,
        remaining: float,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """The next design (``D``), given the current ``posterior`` (it carries the history),
        the previous design ``prev`` (``D``), the bundled ``constraints`` and the
        ``remaining`` travel budget (``inf`` without one). Draw randomness from ``generator``
        only. A design outside the feasible set is never executed: :func:`run_experiment`
        raises :class:`ConstraintViolation`; :meth:`Constraints.sample` gives feasible
        candidates and :meth:`Constraints.project` maps a near-feasible design into the set."""
        ...


class RandomFeasiblePlanner:
    """A uniformly random feasible move (respecting the remaining budget)."""

    def __init__(self, num_candidates: int = 64):
        self.num_candidates = check_int("num_candidates", num_candidates)

    def plan(self, posterior, prev, constraints, remaining, generator) -> torch.Tensor:
        """The next design (see :class:`Planner`)."""
        cand = constraints.sample(prev, self.num_candidates, remaining, generator)
        return cand[torch.randint(0, cand.shape[0], (1,), generator=generator)].squeeze(0)


class GreedyPlanner:
    """One-step lookahead: the feasible candidate with the highest (cost-penalised) EIG;
    ``refine="slsqp"`` polishes the ``num_restarts`` best candidates with :func:`refine_designs`.
    """

    def __init__(
        self,
        num_candidates: int = 64,
        num_outer: int = 64,
        refine: str | None = None,
        num_restarts: int = 4,
        refine_outer: int = 256,
    ):
        _check_refine(refine)
        self.num_candidates = check_int("num_candidates", num_candidates)
        self.num_outer = check_int("num_outer", num_outer)
        self.refine = refine
        self.num_restarts = check_int("num_restarts", num_restarts)
        self.refine_outer = check_int("refine_outer", refine_outer)

    def plan(self, posterior, prev, constraints, remaining, generator) -> torch.Tensor:
        """The next design (see :class:`Planner`)."""
        cand = constraints.sample(prev, self.num_candidates, remaining, generator)
        eig = next_design_eig(posterior, cand, self.num_outer, generator)
        score = constraints.penalise(eig, constraints.soft_cost(prev, cand))
        if self.refine is None:
            return cand[int(score.argmax())]
        top = cand[score.argsort(descending=True)[: self.num_restarts]]
        refined, values = refine_designs(
            posterior, top, prev, constraints, remaining, self.refine_outer, generator=generator
        )
        return refined[int(values.argmax())]


def _check_refine(refine):
    if refine not in (None, "slsqp"):
        raise ValueError(f"refine must be None or 'slsqp', got {refine!r}")


class ScenarioTreePlanner:
    """Receding-horizon scenario-tree planning (see the module docstring).

    Args:
        depth: lookahead depth ``D`` (0 is greedy); branching: fantasised outcomes per node;
        discount: ``gamma``; num_candidates: candidates per inner node; num_outer: NMC outer
        samples; root_candidates: uniform feasible candidates at the root;
        expand_top: only the ``expand_top`` candidates with the highest immediate score at a
        node are expanded into subtrees (a beam: ``O((k b)^D)`` EIG evaluations instead of
        ``O((C b)^D)``);
        refine: ``"slsqp"`` adds the SLSQP refinements of the ``num_restarts`` best root
        candidates (on the immediate EIG, with ``refine_outer`` common outer draws: few draws
        let the optimiser fit their noise) to the root candidates;
        policy: a trained :class:`~probml.guides.amortized.DesignPolicy` whose ``policy_top_k``
        most probable feasible designs join the root candidates (warm start).
    """

    def __init__(
        self,
        depth: int = 2,
        branching: int = 3,
        discount: float = 0.6,
        num_candidates: int = 16,
        num_outer: int = 32,
        root_candidates: int = 64,
        expand_top: int = 4,
        refine: str | None = None,
        num_restarts: int = 4,
        refine_outer: int = 256,
        policy: DesignPolicy | None = None,
        policy_top_k: int = 4,
    ):
        check_interval("discount", discount, closed="both")
        _check_refine(refine)
        self.depth = check_int("depth", depth, 0)
        self.branching = check_int("branching", branching)
        self.discount = discount
        self.num_candidates = check_int("num_candidates", num_candidates)
        self.num_outer = check_int("num_outer", num_outer)
        self.root_candidates = check_int("root_candidates", root_candidates)
        self.expand_top = check_int("expand_top", expand_top)
        self.refine = refine
        self.num_restarts = check_int("num_restarts", num_restarts)
        self.refine_outer = check_int("refine_outer", refine_outer)
        self.policy, self.policy_top_k = policy, check_int("policy_top_k", policy_top_k, 0)

    def _root_candidates(self, posterior, prev, constraints, remaining, generator):
        cand = constraints.sample(prev, self.root_candidates, remaining, generator)
        if self.policy is not None:
            warm = _policy_designs(self.policy, posterior, prev, constraints, remaining)[0]
            cand = torch.cat([cand, warm[: self.policy_top_k]])
        if self.refine is not None:
            eig = next_design_eig(posterior, cand, self.num_outer, generator)
            top = cand[eig.argsort(descending=True)[: self.num_restarts]]
            refined, _ = refine_designs(
                posterior, top, prev, constraints, remaining, self.refine_outer, generator=generator
            )
            cand = torch.cat([cand, refined])
        return cand

    def _value(self, posterior, prev, constraints, remaining, depth, generator, cand=None):
        """Best ``(V, design, S, W)`` at a node: ``V`` the discounted EIG of the plan, ``S/W``
        its discounted mean soft cost."""
        if cand is None:
            cand = constraints.sample(prev, self.num_candidates, remaining, generator)
        eig = next_design_eig(posterior, cand, self.num_outer, generator)
        soft = constraints.soft_cost(prev, cand)
        V, S, W = eig.clone(), soft.clone(), torch.ones_like(eig)
        if depth > 0:
            # expand the top-k candidates by immediate score (beam); the others are not chosen
            immediate = constraints.penalise(eig, soft)
            expand = immediate.argsort(descending=True)[: self.expand_top]
            mask = torch.zeros_like(eig, dtype=torch.bool)
            mask[expand] = True
            ex = posterior.experiment
            for c in expand.tolist():
                xi = cand[c]
                cost = float(constraints.edge_cost(prev, xi))
                theta0 = posterior.sample(self.branching, generator=generator)
                ys = ex.sample_y(theta0, xi.expand(self.branching, *xi.shape), generator=generator)
                kids = [
                    self._value(
                        posterior.condition(xi, ys[b]),
                        xi,
                        constraints,
                        remaining - cost,
                        depth - 1,
                        generator,
                    )
                    for b in range(self.branching)
                ]
                g = self.discount
                V[c] = eig[c] + g * sum(k[0] for k in kids) / self.branching
                S[c] = soft[c] + g * sum(k[2] for k in kids) / self.branching
                W[c] = 1 + g * sum(k[3] for k in kids) / self.branching
            score = constraints.penalise(V, S / W).masked_fill(~mask, -math.inf)
        else:
            score = constraints.penalise(V, S)
        best = int(score.argmax())
        return float(V[best]), cand[best], float(S[best]), float(W[best])

    def plan(self, posterior, prev, constraints, remaining, generator) -> torch.Tensor:
        """The next design (see :class:`Planner`)."""
        cand = self._root_candidates(posterior, prev, constraints, remaining, generator)
        return self._value(
            posterior, prev, constraints, remaining, self.depth, generator, cand=cand
        )[1]


def _policy_designs(policy: DesignPolicy, posterior, prev, constraints, remaining):
    """The policy's feasible candidate designs, most probable first, and their logits."""
    designs, ys = posterior.history
    with torch.no_grad():
        summary = policy.summary(designs, ys)
        cand = policy.designs_at(prev)
        feas = constraints.feasible(prev, cand, remaining)
        if not bool(feas.any()):
            raise ConstraintViolation(
                f"no feasible policy candidate: the remaining budget {remaining:.4g} pays for "
                "no move"
            )
        logits = policy.logits(summary, prev, ys.shape[-1], feas)
    order = logits.argsort(descending=True)[: int(feas.sum())]
    # prev + offset can land a rounding error outside the box (0.9 + 0.1 > 1 in floating
    # point), inside the feasibility tolerance: executed designs lie in the box itself
    return cand[order].clamp(constraints.low, constraints.high), logits[order]


class MaskedPolicyPlanner:
    """The amortized policy's most probable design among the feasible candidates
    (``greedy=True``) or a draw from the masked softmax."""

    def __init__(self, policy: DesignPolicy, greedy: bool = True):
        self.policy, self.greedy = policy, greedy

    def plan(self, posterior, prev, constraints, remaining, generator) -> torch.Tensor:
        """The next design (see :class:`Planner`)."""
        cand, logits = _policy_designs(self.policy, posterior, prev, constraints, remaining)
        if self.greedy:
            return cand[0]
        p = torch.softmax(logits.double(), 0)
        return cand[int(torch.multinomial(p, 1, generator=generator))]


def information_rewards(nll: torch.Tensor, gamma: float) -> torch.Tensor:
    r"""The policy's rewards from a path of posterior NLLs.

    Args:
        nll: ``B x (T + 1)``, :math:`\mathrm{NLL}_t = -\log q(\theta \mid h_{1:t})` for
            ``t = 0 .. T`` (``t = 0``: before any experiment).
        gamma: the discount.

    Returns:
        ``B x T``: column ``t`` (experiment ``t = 0 .. T - 1``) is
        :math:`\gamma^t \max(0, \mathrm{nll}_{:,t} - \mathrm{nll}_{:,t+1})`, the spec's
        :math:`r_t = \gamma^t \max(0, \mathrm{NLL}_{t-1} - \mathrm{NLL}_t)` with experiments
        counted from 0: the first reward is undiscounted.
    """
    gain = (nll[:, :-1] - nll[:, 1:]).clamp(min=0)
    steps = torch.arange(gain.shape[1], dtype=torch.float64, device=gain.device)
    return (gamma**steps).to(gain.dtype) * gain


def reinforce_loss(
    logp: torch.Tensor, rewards: torch.Tensor, entropy: torch.Tensor, entropy_weight: float
) -> torch.Tensor:
    r"""REINFORCE with rewards-to-go, a per-step batch-mean baseline and an entropy bonus:

    .. math:: L = -\frac1B\sum_b\sum_t \log\pi(a_{bt})\,\big(G_{bt} - \bar G_t\big)
              - \frac{w}{B}\sum_b\sum_t H_{bt}, \qquad G_{bt} = \sum_{s \ge t} r_{bs},
              \quad \bar G_t = \frac1B\sum_b G_{bt}.

    Args:
        logp: ``B x T`` log-probabilities of the actions taken (differentiable).
        rewards: ``B x T``; entropy: ``B x T`` policy entropies; entropy_weight: ``w``.
    """
    G = rewards.flip(1).cumsum(1).flip(1)  # reward-to-go
    adv = (G - G.mean(0, keepdim=True)).to(logp.dtype)
    loss = -(logp * adv).sum(1).mean()
    return loss - entropy_weight * entropy.sum(1).mean()


def train_design_policy(
    policy: DesignPolicy,
    posterior_net: PosteriorNet,
    experiment,
    constraints: Sequence = (),
    start: torch.Tensor | None = None,
    horizon: int | None = None,
    num_iters: int = 300,
    batch_size: int = 128,
    lr: float = 1e-3,
    gamma: float = 0.95,
    entropy_weight: float = 0.01,
    train_encoder: bool = False,
    seed: int = 0,
    verbose: bool = False,
) -> list[float]:
    r"""REINFORCE on the self-estimated information gain (the spec's reward):
    :math:`r_t = \gamma^t \max(0, \mathrm{NLL}_{t-1} - \mathrm{NLL}_t)` with
    :math:`\mathrm{NLL}_t = -\log q(\theta \mid h_{1:t})` under the frozen posterior net and the
    simulated ``theta``. Episodes run under the constraints (infeasible candidates masked; the
    budget is tracked per episode), vectorised over the batch; the baseline is the batch mean
    return at each step, plus an entropy bonus. The policy's history encoder starts as a copy
    of the posterior net's (so ``policy.hidden`` must match) and stays frozen unless
    ``train_encoder``. The rewards are :func:`information_rewards` (its docstring fixes the
    indexing) and the loss :func:`reinforce_loss`. Returns the mean total reward per
    iteration."""
    cons = Constraints(constraints, experiment.design_bounds)
    T = policy.horizon if horizon is None else check_int("horizon", horizon)
    num_iters = check_int("num_iters", num_iters, 0)
    batch_size = check_int("batch_size", batch_size)
    check_positive("lr", lr)
    check_positive("entropy_weight", entropy_weight, strict=False)
    check_interval("gamma", gamma, closed="right")  # NaN fails too
    gen = make_generator(seed)
    D = int(experiment.D)
    start = cons.start_position(start, D)
    if policy.hidden != posterior_net.hidden:
        raise ValueError(
            f"policy.hidden ({policy.hidden}) must equal posterior_net.hidden "
            f"({posterior_net.hidden}): the policy starts from the posterior net's encoder"
        )
    # the policy head sits on the posterior net's history encoder (copied, frozen unless
    # train_encoder): learning the summary from the REINFORCE signal alone collapsed to a
    # history-independent path in our runs
    enc = {
        k: v for k, v in posterior_net.state_dict().items() if not k.startswith(("rho", "theta"))
    }
    policy.load_state_dict(enc, strict=False)
    for p in posterior_net.parameters():
        p.requires_grad_(False)
    for p in policy.phi.parameters():
        p.requires_grad_(train_encoder)
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=lr)
    budget = math.inf if cons.budget is None else float(cons.budget.budget)
    history = []
    for _ in progress(range(num_iters), verbose=verbose, desc="policy (REINFORCE)"):
        B = batch_size
        theta = experiment.sample_prior(B, generator=gen)
        theta_flat = theta.reshape(B, -1)
        prev = start.expand(B, D)
        remaining = torch.full((B,), budget, dtype=torch.float64)
        f_pol = torch.zeros(B, policy.hidden)
        f_post = torch.zeros(B, posterior_net.hidden)
        logps, entropies = [], []
        with torch.no_grad():
            nlls = [_net_nll(posterior_net, f_post, 0, theta_flat)]
        for t in range(T):
            cand = policy.designs_at(prev)  # B x A x D
            feas = cons.feasible(prev.unsqueeze(1), cand, math.inf)
            if cons.budget is not None:
                feas = feas & (
                    cons.edge_cost(prev.unsqueeze(1), cand) <= remaining.unsqueeze(1) + _TOL
                )
            summ = policy.summary_from_pooled(f_pol, t)
            stuck = ~feas.any(1)  # nothing affordable (absolute candidates): stay put
            feas[stuck, 0] = True
            logits = policy.logits(summ, prev, t, feas)
            a = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(1)
            logp = torch.log_softmax(logits, -1).gather(1, a[:, None]).squeeze(1)
            logps.append(logp.masked_fill(stuck, 0.0))
            probs = torch.softmax(logits, -1)
            entropies.append(-(probs * torch.log_softmax(logits, -1).nan_to_num(0.0)).sum(-1))
            xi = torch.where(stuck.unsqueeze(1), prev, cand[torch.arange(B), a])
            remaining = remaining - cons.edge_cost(prev, xi)
            y = experiment.sample_y(theta, xi, generator=gen)
            f_pol = f_pol + policy.features(xi.unsqueeze(1), y.unsqueeze(1)).squeeze(1)
            with torch.no_grad():
                f_post = f_post + posterior_net.features(xi.unsqueeze(1), y.unsqueeze(1)).squeeze(1)
                nlls.append(_net_nll(posterior_net, f_post, t + 1, theta_flat))
            prev = xi
        R = information_rewards(torch.stack(nlls, 1), gamma)  # B x T
        loss = reinforce_loss(torch.stack(logps, 1), R, torch.stack(entropies, 1), entropy_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(R.sum(1).mean()))
    for p in posterior_net.parameters():
        p.requires_grad_(True)
    return history


def fit_amortized(
    experiment,
    constraints: Sequence,
    horizon: int = 20,
    start: torch.Tensor | None = None,
    net_steps: int = 600,
    policy_iters: int = 600,
    hidden: int = 64,
    grid_points: int = 5,
    seed: int = 0,
    verbose: bool = False,
) -> tuple[PosteriorNet, DesignPolicy]:
    """The offline stage for a step-bounded task: a posterior net trained on random walks
    under the step bound, then a relative-move policy (a ``grid_points^D`` grid of moves)
    trained by :func:`train_design_policy` under the constraints. Reproducible from ``seed``
    alone (torch's global RNG is neither used nor changed)."""
    for name, value, low in (
        ("horizon", horizon, 1),
        ("net_steps", net_steps, 1),
        ("policy_iters", policy_iters, 0),
        ("hidden", hidden, 1),
        ("grid_points", grid_points, 1),
    ):
        check_int(name, value, low)  # by these names: the helpers' errors named their own
    cons = Constraints(constraints, experiment.design_bounds)
    if cons.step is None:
        raise ValueError("fit_amortized needs a StepBound (the policy's moves are relative)")
    D = int(experiment.D)
    start = cons.start_position(start, D)
    walk = random_walk_designs(start, cons.step.delta, cons.low, cons.high)
    net = train_posterior_net(
        experiment, walk, horizon, net_steps, hidden=hidden, seed=seed, verbose=verbose
    )
    with torch.random.fork_rng(devices=[]):  # seeded initial weights, global RNG untouched
        torch.manual_seed(derive_seed(seed, 1))
        policy = DesignPolicy(
            DesignPolicy.grid_offsets(cons.step.delta, D, grid_points),
            horizon=horizon,
            hidden=hidden,
        )
    train_design_policy(
        policy,
        net,
        experiment,
        constraints,
        start=start,
        num_iters=policy_iters,
        lr=3e-3,
        seed=seed,
        verbose=verbose,
    )
    return net, policy.eval()


def _net_nll(net: PosteriorNet, pooled: torch.Tensor, t: int, theta_flat: torch.Tensor):
    summ = net.summary_from_pooled(pooled, t)
    return -net.log_prob_flat(net.distribution_from_summary(summ), theta_flat)


@dataclass
class ExperimentResult:
    """Executed designs ``T x D``, outcomes ``T``, per-step budget and soft costs, the final
    posterior and the wall-clock seconds of each design decision."""

    designs: torch.Tensor
    ys: torch.Tensor
    costs: list[float] = field(default_factory=list)
    posterior: object = None
    soft_costs: list[float] = field(default_factory=list)
    decision_seconds: list[float] = field(default_factory=list)


def run_experiment(
    experiment,
    planner,
    theta_true: torch.Tensor,
    num_steps: int,
    constraints: Sequence = (),
    start: torch.Tensor | None = None,
    posterior=None,
    num_particles: int = 2048,
    seed: int = 0,
    verbose: bool = False,
) -> ExperimentResult:
    """Run ``num_steps`` design decisions against ``theta_true``.

    Args:
        constraints: :class:`StepBound`, :class:`TravelBudget` and/or :class:`SoftCost`.
        start: the position before the first design (default the centre of the box).
        posterior: the initial posterior (default a :class:`ParticlePosterior` with
            ``num_particles`` prior particles).

    Stops early (documented) when no budget is left. Every design is checked against the
    constraints before it is executed; an infeasible start or a spent budget is a
    :class:`ConstraintViolation`.
    """
    check_int("num_steps", num_steps)
    check_experiment(experiment, ("D", "design_bounds", "sample_prior", "sample_y"))
    check_experiment_shapes(experiment)
    if not isinstance(planner, Planner):
        raise TypeError(
            f"planner ({type(planner).__name__}) must have a plan(posterior, prev, constraints, "
            "remaining, generator) method: see probml.inference.planning.Planner"
        )
    cons = Constraints(constraints, experiment.design_bounds)
    # the shape of one prior draw, from a generator of its own (the run's stream is untouched)
    want = tuple(experiment.sample_prior(1, generator=make_generator(0)).shape[1:])
    if not isinstance(theta_true, torch.Tensor) or tuple(theta_true.shape) not in (
        want,
        (1, *want),
    ):
        got = tuple(theta_true.shape) if isinstance(theta_true, torch.Tensor) else type(theta_true)
        raise ValueError(
            f"theta_true must be a tensor of shape {want} (or (1, *{want})), got {got}"
        )
    gen = make_generator(seed)
    D = int(experiment.D)
    prev = cons.start_position(start, D)
    if prev.shape != (D,):
        raise ValueError(f"start must have shape ({D},), got {tuple(prev.shape)}")
    if not bool(((prev >= cons.low) & (prev <= cons.high)).all()):
        raise ConstraintViolation(f"start {prev.tolist()} lies outside [{cons.low}, {cons.high}]^D")
    remaining = math.inf if cons.budget is None else float(cons.budget.budget)
    post = (
        ParticlePosterior(experiment, num_particles, generator=gen)
        if posterior is None
        else posterior
    )
    out = ExperimentResult(torch.zeros(0, D), torch.zeros(0))
    designs, ys = [], []
    for _ in progress(range(num_steps), verbose=verbose, desc="design steps"):
        if remaining <= _TOL:
            break
        t0 = time.perf_counter()
        try:
            xi = planner.plan(post, prev, cons, remaining, gen)
        except ConstraintViolation:
            if designs:  # the budget pays for no further move: stop (documented)
                break
            raise
        out.decision_seconds.append(time.perf_counter() - t0)
        cost = float(cons.edge_cost(prev, xi))
        if not bool(cons.feasible(prev, xi, remaining)):
            raise ConstraintViolation("the planner proposed an infeasible design")  # never executed
        y = experiment.sample_y(theta_true, xi, generator=gen)
        post = post.condition(xi, y)
        remaining -= cost
        designs.append(xi)
        ys.append(y)
        out.costs.append(cost)
        out.soft_costs.append(float(cons.soft_cost(prev, xi)))
        prev = xi
    if not designs:
        raise ConstraintViolation("the travel budget is already spent: no design can be executed")
    out.designs, out.ys, out.posterior = torch.stack(designs), torch.stack(ys).reshape(-1), post
    return out
