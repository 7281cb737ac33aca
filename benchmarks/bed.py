"""Constrained BED benchmark: location finding with a 0.1 step bound and a travel budget.

sPCE (lower bound, L = 1e5 contrastive samples; sNMC upper bound alongside) of the executed
histories for: the scenario-tree planner (depth 2, branching 3, beam 4), the same tree warm-started
by the amortized policy's top-4 moves and SLSQP-refined root designs, greedy one-step EIG (plain
and SLSQP-refined), the REINFORCE policy masked to the feasible set, and a random feasible walk;
10 true thetas x 2 seeds, T = 20 steps, travel budget 3. Time per design decision for each
planner (the offline training of the posterior net and the policy is timed separately). Our
`nmc_eig` vs Pyro's `nmc_eig` on the same model and sample sizes (median of 3 alternating timed
runs after one warm-up each; time ratio, same run).

CES (`--ces`): 6-D designs in [0, 100], L2 travel budget 200, T = 10, 10 true thetas x 1 seed:
sPCE / sNMC with L = 1e6 (the bounds saturate at log(L + 1), so CES needs a large L) for the
random walk, greedy one-step EIG and a depth-1 scenario tree.

Run: `python benchmarks/bed.py` or `--quick` (3 thetas x 1 seed, T = 8, short training);
`python benchmarks/bed.py --ces` for the CES section alone, `--nmc-only` for the `nmc_eig` vs
Pyro comparison alone, `--planners "masked amortized policy,random feasible walk"` for some
rows of the location-finding table (each row's numbers are the same as in a full run).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyro
import torch
from pyro.contrib.oed.eig import nmc_eig as pyro_nmc_eig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, parse_args, save, timed  # noqa: E402

from probml.inference.eig import history_bounds, nmc_eig  # noqa: E402
from probml.inference.planning import (  # noqa: E402
    GreedyPlanner,
    MaskedPolicyPlanner,
    RandomFeasiblePlanner,
    ScenarioTreePlanner,
    StepBound,
    TravelBudget,
    fit_amortized,
    run_experiment,
)
from probml.models.experiments import CES, LocationFinding  # noqa: E402
from probml.results import markdown_table, mean_se  # noqa: E402


def _score(experiment, planners, thetas, T, constraints, L, particles, n_seed=1):
    """Run every planner on every theta and seed; sPCE / sNMC rows with time per decision."""
    rows = []
    for name, make in planners.items():
        designs, ys, th0, secs = [], [], [], []
        for i in range(len(thetas)):
            for seed in range(n_seed):
                r = run_experiment(experiment, make(), thetas[i], T, constraints,
                                   num_particles=particles, seed=1000 * i + seed)  # fmt: skip
                assert len(r.ys) == T, "budget exhausted early"
                designs.append(r.designs)
                ys.append(r.ys)
                th0.append(thetas[i])
                secs += r.decision_seconds
        lo, hi = history_bounds(experiment, torch.stack(designs), torch.stack(ys),
                                torch.stack(th0), L=L, chunk_size=10_000, generator=7,
                                per_history=True)  # fmt: skip
        m, se = mean_se(lo.numpy())
        rows.append(
            {
                "planner": name,
                "sPCE": m,
                "se": se,
                "sNMC": float(hi.mean()),
                "s per decision": sum(secs) / len(secs),
                "histories": len(designs),
            }
        )
        print(f"{name}: sPCE {m:.2f} +- {se:.2f}", flush=True)
    return rows


def ces_section(args):
    ces = CES()
    n = 3 if args.quick else 10
    thetas = ces.sample_prior(n, generator=torch.Generator().manual_seed(5))
    planners = {
        "scenario tree (D=1, f=3)": lambda: ScenarioTreePlanner(depth=1, branching=3, num_outer=32),
        "greedy (one-step EIG)": lambda: GreedyPlanner(num_candidates=64, num_outer=32),
        "random feasible walk": lambda: RandomFeasiblePlanner(),
    }
    L = 10_000 if args.quick else 1_000_000
    rows = _score(ces, planners, thetas, 10, [TravelBudget(200.0)], L, 2048)
    print(
        f"## CES, L2 budget 200, T = 10, {n} thetas, L = {L:.0e} ({machine()})\n"
        + markdown_table(rows)
    )
    path = save("bed_ces", args.out, {"planners": rows, "L": L, "machine": machine()})
    print(f"\nwrote {path}")


def nmc_comparison(lf) -> dict:
    """Our `nmc_eig` against Pyro's on the same model, designs and sizes (median of 3
    alternating timed calls after one warm-up round each)."""
    d = torch.rand(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    times = {"ours": [], "pyro": []}
    fns = {"ours": nmc_eig, "pyro": pyro_nmc_eig}
    for rep in range(4):  # the first round warms both up and is not counted
        for name, fn in fns.items():
            pyro.set_rng_seed(0)
            out, t = timed(fn, lf, d, "y", "theta", 2000, 2000)
            if rep:
                times[name].append(t)
            if name == "ours":
                ours = out
            else:
                ref = out
    t_ours, t_ref = (sorted(times[k])[1] for k in ("ours", "pyro"))  # medians of 3
    eig_row = {
        "designs": 16,
        "N": 2000,
        "M": 2000,
        "max |ours - pyro|": float((ours - ref).abs().max()),
        "ours s": t_ours,
        "pyro s": t_ref,
        "time ratio ours/pyro": t_ours / t_ref,
    }
    return eig_row


def main():
    args = parse_args(
        __doc__.splitlines()[0],
        flags=("--ces", "--nmc-only"),
        options={"--planners": "comma-separated row names to run (default: every row)"},
    )
    if args.ces:
        return ces_section(args)
    if args.nmc_only:
        row = nmc_comparison(LocationFinding())
        print(f"## nmc_eig vs pyro.contrib.oed.eig.nmc_eig ({machine()})\n" + markdown_table([row]))
        path = save("bed_nmc", args.out, {"nmc": row, "machine": machine()})
        print(f"\nwrote {path}")
        return
    n_theta, n_seed, T = (3, 1, 8) if args.quick else (10, 2, 20)
    net_steps, policy_iters = (200, 100) if args.quick else (600, 1200)
    lf = LocationFinding()
    constraints = [StepBound(0.1), TravelBudget(3.0)]
    thetas = torch.rand(
        n_theta, 1, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(123)
    )
    (net, policy), t_offline = timed(
        fit_amortized,
        lf,
        constraints,
        horizon=T,
        net_steps=net_steps,
        policy_iters=policy_iters,
        seed=0,
    )
    planners = {
        "scenario tree (D=2, f=3)": lambda: ScenarioTreePlanner(depth=2, branching=3, num_outer=16),
        "tree + policy warm start + SLSQP": lambda: ScenarioTreePlanner(
            depth=2, branching=3, num_outer=16, policy=policy, refine="slsqp"
        ),
        "greedy (one-step EIG)": lambda: GreedyPlanner(num_candidates=64, num_outer=16),
        "greedy + SLSQP": lambda: GreedyPlanner(num_candidates=64, num_outer=16, refine="slsqp"),
        "masked amortized policy": lambda: MaskedPolicyPlanner(policy),
        "random feasible walk": lambda: RandomFeasiblePlanner(),
    }
    if args.planners:  # a subset of rows: each row's bounds use their own generator (seed 7)
        keep = [n.strip() for n in args.planners.split(",")]
        unknown = sorted(set(keep) - set(planners))
        if unknown:
            raise SystemExit(f"--planners: unknown rows {unknown}; rows: {list(planners)}")
        planners = {n: planners[n] for n in keep}
    rows = _score(lf, planners, thetas, T, constraints, 100_000, 1024, n_seed)
    eig_row = nmc_comparison(lf)
    print(
        f"## location finding, delta = 0.1, budget 3, T = {T}, {n_theta} thetas x {n_seed} seeds"
        f" ({machine()}; offline training {t_offline:.0f} s)\n" + markdown_table(rows)
    )
    print(
        "\n## nmc_eig vs pyro.contrib.oed.eig.nmc_eig (same model and sizes)\n"
        + markdown_table([eig_row])
    )
    path = save(
        "bed",
        args.out,
        {"planners": rows, "nmc": eig_row, "T": T, "offline_s": t_offline, "machine": machine()},
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
