import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from probml.guides.amortized import ParticlePosterior
from probml.inference.planning import (
    ConstraintViolation,
    GreedyPlanner,
    RandomFeasiblePlanner,
    ScenarioTreePlanner,
    StepBound,
    TravelBudget,
    next_design_eig,
    run_experiment,
)
from probml.models.experiments import LinearGaussianExperiment, LocationFinding


@settings(max_examples=10, deadline=None)
@given(
    delta=st.floats(0.02, 0.5),
    norm=st.sampled_from(["inf", "2"]),
    budget=st.floats(0.05, 2.0),
    seed=st.integers(0, 10_000),
    planner=st.sampled_from(["random", "greedy"]),
)
def test_executed_designs_respect_step_bound_and_budget(delta, norm, budget, seed, planner):
    lf = LocationFinding()
    theta = torch.rand(1, 1, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))[
        0
    ]
    pl = (
        RandomFeasiblePlanner()
        if planner == "random"
        else GreedyPlanner(num_candidates=16, num_outer=16)
    )
    step, tb = StepBound(delta, norm), TravelBudget(budget)
    r = run_experiment(lf, pl, theta, 8, step, tb, num_particles=256, seed=seed)
    path = torch.cat([torch.full((1, 2), 0.5, dtype=torch.float64), r.designs])
    assert bool(step.feasible(path[:-1], path[1:]).all())
    assert sum(r.costs) <= budget + 1e-9
    assert torch.allclose(
        torch.tensor(r.costs, dtype=torch.float64), (path[1:] - path[:-1]).norm(dim=-1)
    )


def test_infeasible_start_and_spent_budget_are_clear_errors():
    lf = LocationFinding()
    theta = torch.tensor([[0.3, 0.3]], dtype=torch.float64)
    with pytest.raises(ConstraintViolation, match="outside"):
        run_experiment(
            lf, RandomFeasiblePlanner(), theta, 3, StepBound(0.1), start=torch.tensor([1.5, 0.5])
        )
    tiny = TravelBudget(1e-6, cost=lambda prev, xi: torch.ones(xi.shape[:-1], dtype=xi.dtype))
    # every move costs 1 > budget: the planner may only stay put (cost counted as 1 too) -> none executable
    with pytest.raises(ConstraintViolation):
        run_experiment(lf, GreedyPlanner(8, 8), theta, 3, StepBound(0.1), tiny)
    with pytest.raises(ValueError, match="delta"):
        StepBound(0.0)


def test_particle_posterior_and_next_design_eig_linear_gaussian():
    Sigma = torch.eye(2, dtype=torch.float64)
    ex = LinearGaussianExperiment(Sigma, noise_scale=0.5)
    post = ParticlePosterior(ex, 20_000, generator=0)
    designs = torch.tensor([[1.0, 0.0], [0.3, 0.3]], dtype=torch.float64)
    eig = next_design_eig(post, designs, num_outer=2000, generator=1)
    exact = torch.stack([ex.eig(d[None]) for d in designs])
    assert torch.allclose(eig, exact, atol=0.05)
    # after observing along the first axis, the posterior mean moves and the ESS falls
    p2 = post.condition(designs[0], torch.tensor(1.5, dtype=torch.float64))
    assert p2.ess < post.ess and float(p2.mean()[0]) > 0.5


def test_tree_planner_returns_a_feasible_design():
    lf = LocationFinding()
    post = ParticlePosterior(lf, 512, generator=0)
    prev = torch.tensor([0.5, 0.5], dtype=torch.float64)
    step = StepBound(0.1)
    g = torch.Generator().manual_seed(0)
    xi = ScenarioTreePlanner(depth=1, branching=2, num_candidates=6, num_outer=8).plan(
        post, prev, step, None, float("inf"), g
    )
    assert bool(step.feasible(prev, xi))
