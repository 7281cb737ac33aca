"""Constrained BED benchmark: location finding with a 0.1 step bound.

sPCE (lower bound, L = 1e5 contrastive samples) of the executed histories for the scenario-tree
planner (depth 2, branching 3, beam 4), greedy one-step EIG and a random feasible walk, over
10 true thetas x 2 seeds, T = 20 steps, travel budget 3; time per design decision for each
planner; our `nmc_eig` vs Pyro's `nmc_eig` on the same model and sample sizes (time ratio,
same run). The masked amortized-policy baseline is not built yet.

Run: `python benchmarks/bed.py` or `--quick` (3 thetas x 1 seed, T = 8).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyro
import torch
from pyro.contrib.oed.eig import nmc_eig as pyro_nmc_eig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args, save, timed  # noqa: E402

from probml.inference.eig import history_bounds, nmc_eig  # noqa: E402
from probml.inference.planning import (  # noqa: E402
    GreedyPlanner,
    RandomFeasiblePlanner,
    ScenarioTreePlanner,
    StepBound,
    TravelBudget,
    run_experiment,
)
from probml.models.experiments import LocationFinding  # noqa: E402
from probml.results import markdown_table, mean_se  # noqa: E402


def main():
    args = parse_args(__doc__.splitlines()[0])
    n_theta, n_seed, T = (3, 1, 8) if args.quick else (10, 2, 20)
    lf = LocationFinding()
    thetas = torch.rand(
        n_theta, 1, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(123)
    )
    planners = {
        "scenario tree (D=2, f=3)": lambda: ScenarioTreePlanner(depth=2, branching=3, num_outer=16),
        "greedy (one-step EIG)": lambda: GreedyPlanner(num_candidates=64, num_outer=16),
        "random feasible walk": lambda: RandomFeasiblePlanner(),
    }
    rows = []
    for name, make in planners.items():
        designs, ys, th0, secs, decisions = [], [], [], 0.0, 0
        for i in range(n_theta):
            for seed in range(n_seed):
                r, t = timed(
                    run_experiment,
                    lf,
                    make(),
                    thetas[i],
                    T,
                    StepBound(0.1),
                    TravelBudget(3.0),
                    num_particles=1024,
                    seed=1000 * i + seed,
                )
                assert len(r.ys) == T, "budget exhausted early"
                designs.append(r.designs)
                ys.append(r.ys)
                th0.append(thetas[i])
                secs += t
                decisions += len(r.ys)
        lo, hi = history_bounds(
            lf,
            torch.stack(designs),
            torch.stack(ys),
            torch.stack(th0),
            L=100_000,
            chunk_size=10_000,
            generator=7,
            per_history=True,
        )
        m, se = mean_se(lo.numpy())
        rows.append(
            {
                "planner": name,
                "sPCE": m,
                "se": se,
                "sNMC": float(hi.mean()),
                "s per decision": secs / decisions,
                "histories": len(designs),
            }
        )
    d = torch.rand(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    pyro.set_rng_seed(0)
    ours, t_ours = timed(nmc_eig, lf, d, "y", "theta", 2000, 2000)
    pyro.set_rng_seed(0)
    ref, t_ref = timed(pyro_nmc_eig, lf, d, "y", "theta", 2000, 2000)
    eig_row = {
        "designs": 16,
        "N": 2000,
        "M": 2000,
        "max |ours - pyro|": float((ours - ref).abs().max()),
        "ours s": t_ours,
        "pyro s": t_ref,
        "time ratio ours/pyro": t_ours / t_ref,
    }
    print(
        f"## location finding, delta = 0.1, T = {T}, {n_theta} thetas x {n_seed} seeds\n"
        + markdown_table(rows)
    )
    print(
        "\n## nmc_eig vs pyro.contrib.oed.eig.nmc_eig (same model and sizes)\n"
        + markdown_table([eig_row])
    )
    path = save("bed", args.out, {"planners": rows, "nmc": eig_row, "T": T})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
