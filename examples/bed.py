"""Constrained Bayesian experimental design: location finding under a step bound and a budget.

A hidden source in [0, 1]^2; each step moves the measurement point by at most 0.1 (L_inf) and
the total L2 travel is capped. Offline, a posterior network and a REINFORCE design policy are
trained on simulated histories; online, four planners run: random feasible walk, the policy
masked to the feasible set, greedy one-step EIG and the scenario-tree planner (warm-started by
the policy). The sPCE lower bound of each executed history is reported and the paths are
plotted over the final particle posterior; the table also gives the error of the amortized
posterior's mean.
"""

from __future__ import annotations

from pathlib import Path

import torch

from probml.guides.amortized import AmortizedPosterior
from probml.inference.eig import history_bounds
from probml.inference.planning import (
    GreedyPlanner,
    MaskedPolicyPlanner,
    RandomFeasiblePlanner,
    ScenarioTreePlanner,
    StepBound,
    TravelBudget,
    fit_amortized,
    run_experiment,
)
from probml.models.experiments import LocationFinding
from probml.registry import ExampleResult, script_main

DESCRIPTION = (
    "Constrained BED: location finding with a 0.1 step bound and a travel budget, three planners"
)


def run(fast: bool, seed: int, device: torch.device, out_dir: Path) -> ExampleResult:
    lf = LocationFinding()
    g = torch.Generator().manual_seed(seed)
    theta = torch.rand(1, 2, dtype=torch.float64, generator=g)
    steps = 10 if fast else 30
    constraints = [StepBound(0.1), TravelBudget(2.0)]
    net, policy = fit_amortized(
        lf,
        constraints,
        horizon=steps,
        net_steps=200 if fast else 800,
        policy_iters=100 if fast else 800,
        seed=seed,
    )
    planners = {
        "random": RandomFeasiblePlanner(),
        "masked policy": MaskedPolicyPlanner(policy),
        "greedy": GreedyPlanner(num_candidates=32, num_outer=32),
        "tree": ScenarioTreePlanner(depth=2, branching=3, num_outer=16, policy=policy),
    }
    rows, results = [], {}
    for name, pl in planners.items():
        r = run_experiment(lf, pl, theta, steps, constraints, num_particles=2048, seed=seed)
        lo, hi = history_bounds(lf, r.designs, r.ys[None], theta[None], L=50_000, generator=seed)
        amortized = AmortizedPosterior(net, lf, r.designs, r.ys)
        rows.append(
            {
                "planner": name,
                "steps": len(r.ys),
                "travel": sum(r.costs),
                "sPCE": float(lo),
                "sNMC": float(hi),
                "posterior-mean error": float((r.posterior.mean() - theta).norm()),
                "amortized-mean error": float((amortized.mean() - theta).norm()),
                "s per decision": sum(r.decision_seconds) / len(r.decision_seconds),
            }
        )
        results[name] = r
    fig = out_dir / "bed_paths.png"
    _plot(results, theta, fig)
    best = max(rows, key=lambda r: r["sPCE"])["planner"]
    return ExampleResult(
        headline="sPCE: "
        + ", ".join(f"{r['planner']} {r['sPCE']:.2f}" for r in rows)
        + f" (best: {best}; one history, noisy)",
        table=rows,
        figures=[fig],
    )


def _plot(results, theta, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(3.6 * len(results), 3.8))
    for ax, (name, r) in zip(axes, results.items()):
        post = r.posterior
        w = post.normalized_log_weights().exp()
        p = post.particles[:, 0, :]
        ax.scatter(p[:, 0], p[:, 1], s=3, c=w, cmap="Greys", alpha=0.6)
        path_ = torch.cat([torch.full((1, 2), 0.5, dtype=torch.float64), r.designs])
        ax.plot(path_[:, 0], path_[:, 1], "o-", ms=3, color="tab:blue")
        ax.plot(theta[0, 0], theta[0, 1], "r*", ms=14)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    script_main(run)
