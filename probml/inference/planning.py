r"""Constrained sequential design: constraints, planners and the experiment loop.

**[paper]** Online multi-step lookahead over scenario trees under dynamic constraints, scoring
branches by expected information gain under the current posterior. **[design]** (from the spec):

* constraints on every parent-to-child edge: :class:`StepBound` (L_inf or L2 ball),
  :class:`TravelBudget` (remaining budget minus the summed cost of the path must stay >= 0);
* the EIG of a candidate next design under a :class:`~probml.guides.amortized.ParticlePosterior`
  by nested Monte Carlo: :math:`\theta_n \sim q`, :math:`y_n \sim p(y|\theta_n,\xi)`,
  :math:`\log p(y_n|\mathcal D, \xi) = \log\sum_m w_m p(y_n|\theta_m, \xi)`, vectorised over
  candidates, outer and inner samples;
* :class:`ScenarioTreePlanner`: depth ``D`` tree, ``branching`` fantasised outcomes per node,
  value = EIG + discount x mean over children of their best value; only the root design is
  executed (receding horizon). Designs are chosen among candidates drawn uniformly from the
  feasible set (the spec's grid fallback; the BoTorch / SLSQP refinement is not built yet);
* baselines :class:`GreedyPlanner` (depth 0) and :class:`RandomFeasiblePlanner`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from probml.guides.amortized import ParticlePosterior
from probml.utils import make_generator, progress

__all__ = [
    "StepBound",
    "TravelBudget",
    "ConstraintViolation",
    "next_design_eig",
    "RandomFeasiblePlanner",
    "GreedyPlanner",
    "ScenarioTreePlanner",
    "ExperimentResult",
    "run_experiment",
]


class ConstraintViolation(ValueError):
    """An infeasible start, a spent budget, or a design outside the feasible set."""


@dataclass
class StepBound:
    """``||xi_t - xi_{t-1}|| <= delta`` in the ``"inf"`` or ``2`` norm, inside ``[low, high]^D``."""

    delta: float
    norm: str = "inf"
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self):
        if self.delta <= 0:
            raise ValueError(f"delta must be > 0, got {self.delta}")
        self.norm = str(self.norm)
        if self.norm not in ("inf", "2"):
            raise ValueError(f"norm must be 'inf' or 2, got {self.norm!r}")

    def distance(self, prev: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        d = xi - prev
        return d.abs().amax(-1) if self.norm == "inf" else d.norm(dim=-1)

    def feasible(self, prev: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        inside = ((xi >= self.low - 1e-12) & (xi <= self.high + 1e-12)).all(-1)
        return inside & (self.distance(prev, xi) <= self.delta * (1 + 1e-9))

    def sample(self, prev: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` uniform draws from the feasible set around ``prev`` (``n x D``)."""
        D = prev.shape[-1]
        if self.norm == "inf":
            lo = (prev - self.delta).clamp(min=self.low)
            hi = (prev + self.delta).clamp(max=self.high)
            return lo + (hi - lo) * torch.rand(n, D, dtype=prev.dtype, generator=generator)
        out = torch.empty(0, D, dtype=prev.dtype)
        while out.shape[0] < n:  # rejection from the enclosing box
            lo = (prev - self.delta).clamp(min=self.low)
            hi = (prev + self.delta).clamp(max=self.high)
            c = lo + (hi - lo) * torch.rand(4 * n, D, dtype=prev.dtype, generator=generator)
            out = torch.cat([out, c[self.feasible(prev, c)]])
        return out[:n]


@dataclass
class TravelBudget:
    """Total path cost ``sum_t cost(xi_{t-1}, xi_t) <= budget`` (default cost: L2 distance)."""

    budget: float
    cost: object = None

    def __post_init__(self):
        if self.budget <= 0:
            raise ValueError(f"budget must be > 0, got {self.budget}")

    def edge_cost(self, prev: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return (xi - prev).norm(dim=-1) if self.cost is None else self.cost(prev, xi)


def next_design_eig(
    posterior: ParticlePosterior,
    designs: torch.Tensor,
    num_outer: int = 64,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """NMC EIG of each candidate design (``C x D`` -> ``C``) under ``posterior``."""
    ex = posterior.experiment
    gen = make_generator(generator)
    theta_n = posterior.sample(num_outer, generator=gen)  # N x ...
    C = designs.shape[0]
    d_cn = designs.reshape(C, 1, *designs.shape[1:])
    y = ex.sample_y(theta_n.unsqueeze(0), d_cn, generator=gen)  # C x N
    cond = ex.log_likelihood(theta_n.unsqueeze(0), d_cn, y)  # C x N
    th_m = posterior.particles.reshape(1, 1, *posterior.particles.shape)  # 1 x 1 x M x ...
    lw = posterior.normalized_log_weights()  # M
    inner = ex.log_likelihood(
        th_m, designs.reshape(C, 1, 1, *designs.shape[1:]), y.unsqueeze(-1)
    )  # C x N x M
    marg = torch.logsumexp(inner + lw, dim=-1)
    return (cond - marg).mean(-1)


class RandomFeasiblePlanner:
    """A uniformly random feasible move (respecting the remaining budget)."""

    def __init__(self, num_candidates: int = 64):
        self.num_candidates = num_candidates

    def plan(
        self,
        posterior,
        prev,
        step: StepBound,
        budget: TravelBudget | None,
        remaining: float,
        generator: torch.Generator,
    ) -> torch.Tensor:
        cand = _feasible_candidates(prev, step, budget, remaining, self.num_candidates, generator)
        return cand[torch.randint(0, cand.shape[0], (1,), generator=generator)].squeeze(0)


def _feasible_candidates(prev, step, budget, remaining, n, generator) -> torch.Tensor:
    cand = step.sample(prev, n, generator)
    cand = torch.cat([cand, prev.unsqueeze(0)])  # staying put is always feasible (cost 0)
    if budget is not None:
        cand = cand[budget.edge_cost(prev, cand) <= remaining + 1e-12]
    if cand.shape[0] == 0:
        raise ConstraintViolation(
            f"no feasible design: the remaining budget {remaining:.4g} pays for no move"
        )
    return cand


class GreedyPlanner:
    """One-step lookahead: the feasible candidate with the highest EIG."""

    def __init__(self, num_candidates: int = 64, num_outer: int = 64):
        self.num_candidates, self.num_outer = num_candidates, num_outer

    def plan(self, posterior, prev, step, budget, remaining, generator) -> torch.Tensor:
        cand = _feasible_candidates(prev, step, budget, remaining, self.num_candidates, generator)
        eig = next_design_eig(posterior, cand, self.num_outer, generator)
        return cand[int(eig.argmax())]


class ScenarioTreePlanner:
    """Receding-horizon scenario-tree planning (see the module docstring).

    Args:
        depth: lookahead depth ``D`` (0 is greedy); branching: fantasised outcomes per node;
        discount: ``gamma``; num_candidates: candidates per inner node; num_outer: NMC outer
        samples; root_candidates: candidates at the root (default 64, as many as
        :class:`GreedyPlanner`, so lookahead never searches the executed design more coarsely);
        expand_top: only the ``expand_top`` candidates with the highest immediate EIG at a node
        are expanded into subtrees (a beam: the tree costs ``O((k b)^D)`` instead of
        ``O((C b)^D)`` EIG evaluations).
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
    ):
        if depth < 0 or branching < 1:
            raise ValueError("depth must be >= 0 and branching >= 1")
        self.depth, self.branching, self.discount = depth, branching, discount
        self.num_candidates, self.num_outer = num_candidates, num_outer
        self.root_candidates, self.expand_top = root_candidates, expand_top

    def _value(self, posterior, prev, step, budget, remaining, depth, generator, n_cand=None):
        n_cand = self.num_candidates if n_cand is None else n_cand
        cand = _feasible_candidates(prev, step, budget, remaining, n_cand, generator)
        eig = next_design_eig(posterior, cand, self.num_outer, generator)
        if depth == 0:
            best = int(eig.argmax())
            return float(eig[best]), cand[best]
        # expand only the top-k candidates by immediate EIG (beam); the others are not chosen
        values = torch.full_like(eig, -math.inf)
        ex = posterior.experiment
        for c in eig.argsort(descending=True)[: self.expand_top].tolist():
            xi = cand[c]
            cost = float(budget.edge_cost(prev, xi)) if budget is not None else 0.0
            theta0 = posterior.sample(self.branching, generator=generator)
            ys = ex.sample_y(theta0, xi.expand(self.branching, *xi.shape), generator=generator)
            child = [
                self._value(
                    posterior.condition(xi, ys[b]),
                    xi,
                    step,
                    budget,
                    remaining - cost,
                    depth - 1,
                    generator,
                )[0]
                for b in range(self.branching)
            ]
            values[c] = eig[c] + self.discount * sum(child) / self.branching
        best = int(values.argmax())
        return float(values[best]), cand[best]

    def plan(self, posterior, prev, step, budget, remaining, generator) -> torch.Tensor:
        return self._value(
            posterior,
            prev,
            step,
            budget,
            remaining,
            self.depth,
            generator,
            n_cand=self.root_candidates,
        )[1]


@dataclass
class ExperimentResult:
    designs: torch.Tensor
    ys: torch.Tensor
    costs: list[float] = field(default_factory=list)
    posterior: ParticlePosterior | None = None


def run_experiment(
    experiment,
    planner,
    theta_true: torch.Tensor,
    num_steps: int,
    step: StepBound,
    budget: TravelBudget | None = None,
    start: torch.Tensor | None = None,
    num_particles: int = 2048,
    seed: int = 0,
    verbose: bool = False,
) -> ExperimentResult:
    """Run ``num_steps`` design decisions against ``theta_true``; stops early (documented) when
    no budget is left. Every executed design is checked against the constraints before use."""
    gen = make_generator(seed)
    D = experiment.D if hasattr(experiment, "D") else theta_true.shape[-1]
    prev = (
        torch.full((D,), 0.5, dtype=torch.float64)
        if start is None
        else torch.as_tensor(start, dtype=torch.float64)
    )
    if not bool(((prev >= step.low) & (prev <= step.high)).all()):
        raise ConstraintViolation(f"start {prev.tolist()} lies outside [{step.low}, {step.high}]^D")
    remaining = math.inf if budget is None else float(budget.budget)
    post = ParticlePosterior(experiment, num_particles, generator=gen)
    designs, ys, costs = [], [], []
    for _ in progress(range(num_steps), verbose=verbose, desc="design steps"):
        if remaining <= 1e-12:
            break
        try:
            xi = planner.plan(post, prev, step, budget, remaining, gen)
        except ConstraintViolation:
            if designs:  # the budget pays for no further move: stop (documented)
                break
            raise
        cost = float(budget.edge_cost(prev, xi)) if budget is not None else 0.0
        if not bool(step.feasible(prev, xi)) or cost > remaining + 1e-12:
            raise ConstraintViolation("the planner proposed an infeasible design")  # never executed
        y = experiment.sample_y(theta_true, xi, generator=gen)
        post = post.condition(xi, y)
        remaining -= cost
        designs.append(xi)
        ys.append(y)
        costs.append(cost)
        prev = xi
    if not designs:
        raise ConstraintViolation("the travel budget is already spent: no design can be executed")
    return ExperimentResult(torch.stack(designs), torch.stack(ys).reshape(-1), costs, post)
