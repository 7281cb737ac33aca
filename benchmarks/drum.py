"""DRUM benchmark: worst-case target Brier under shifts of A | X, and the bias correction.

1. Continuous simulation (n = 4000 source and target rows, the spec's shift grid:
   ||delta|| <= 1.5, tau in {0.5, 1, 2}), several seeds: worst-case, grid-mean and no-shift
   target Brier of ERM on X, source-conditional imputation, the rho = 0 plug-in and DRUM (KL
   ball, rho in {0.1, 0.3}; transport ball, rho = 0.3). Fit seconds side by side.
2. Bias correction with a deliberately misspecified outcome model (logistic-linear, no X*A or
   A^2 terms), DRUM KL rho = 0.3 with and without the cross-fitted correction: RMSE of f
   against the Brier-optimal response to the fitted adversary, E_Q[mu_true(x, A)], and the
   target Brier (no shift; worst case).
3. Known answer: binary A, p = 0.15, rho = 0.1, mu = (0.2, 0.7) with known nuisances.

Run: `python benchmarks/drum.py` (5 seeds) or `--quick` (2 seeds).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, parse_args, save, timed  # noqa: E402

from probml.guides.generators import ConditionalBernoulli  # noqa: E402
from probml.inference.minimax import (  # noqa: E402
    DRUM,
    ERMOnX,
    ImputationBaseline,
    binary_brier_minimax,
)
from probml.models.transfer import BinaryShiftProblem, ContinuousShiftSimulation  # noqa: E402
from probml.results import markdown_table, mean_se, mean_se_rows  # noqa: E402


def methods(seed):
    kw = dict(num_iters=300, inner_steps=2, seed=seed, verbose=False)
    return {
        "ERM on X": ERMOnX(seed=seed),
        "imputation": ImputationBaseline(seed=seed),
        "plug-in (rho=0)": DRUM(rho=0.0, seed=seed, verbose=False),
        "DRUM KL rho=0.1": DRUM(rho=0.1, **kw),
        "DRUM KL rho=0.3": DRUM(rho=0.3, **kw),
        "DRUM transport rho=0.3": DRUM(rho=0.3, divergence="transport", **kw),
    }


def known_answer():
    prob = BinaryShiftProblem()
    Xs, As, ys, Xt = prob.sample(2000, 0)
    g0 = ConditionalBernoulli.constant(0.15)
    est = DRUM(rho=0.1, outcome_model=prob.outcome, source_conditional=g0, predictor="constant",
               verbose=False).fit(Xs, As, ys, Xt)  # fmt: skip
    f_star, (lo, hi), wc = binary_brier_minimax(0.15, 0.1, (0.2, 0.7))
    return [
        {"quantity": "q interval", "closed form": f"[{lo:.4f}, {hi:.4f}]",
         "DRUM": f"q = {float(est.adversary_.prob(Xt[:1]).detach()):.4f}"},
        {"quantity": "minimax f", "closed form": f"{f_star:.4f}",
         "DRUM": f"{float(est.predict_proba(Xt[:1])[0, 1]):.4f}"},
        {"quantity": "worst-case Brier", "closed form": f"{wc:.5f}",
         "DRUM": f"{est.worst_case_risk(Xt):.5f}"},
    ]  # fmt: skip


def main():
    args = parse_args(__doc__.splitlines()[0])
    seeds = args.seeds or (2 if args.quick else 5)
    sim = ContinuousShiftSimulation()
    res: dict[str, dict[str, list]] = {}
    bc: dict[str, dict[str, list]] = {"plain": {}, "bias-corrected": {}}
    for seed in range(seeds):
        Xs, As, ys = sim.sample_source(4000, seed)
        Xt = sim.sample_target_x(4000, seed + 100)
        for name, est in methods(seed).items():
            _, secs = timed(est.fit, Xs, As, ys, Xt)
            s = sim.summary(lambda x, e=est: torch.as_tensor(e.predict_proba(x)[:, 1]), 10000)
            r = res.setdefault(name, {"worst": [], "mean": [], "no_shift": [], "seconds": []})
            for k in ("worst", "mean", "no_shift"):
                r[k].append(s[k])
            r["seconds"].append(secs)
        for label, flag in (("plain", False), ("bias-corrected", True)):
            est = DRUM(rho=0.3, outcome_model="linear", bias_correction=flag, num_iters=300,
                       inner_steps=2, seed=seed, verbose=False).fit(Xs, As, ys, Xt)  # fmt: skip
            x = Xt[:2000]
            with torch.no_grad():  # 64 adversary draws, their base noise seeded from seed
                g = torch.Generator().manual_seed(seed + 200)
                a = est.adversary_.rsample(x.expand(64, *x.shape), generator=g)
                oracle = sim.outcome(x.expand_as(a), a).mean(0)
            f = torch.as_tensor(est.predict_proba(x)[:, 1])
            s = sim.summary(lambda z, e=est: torch.as_tensor(e.predict_proba(z)[:, 1]), 10000)
            b = bc[label]
            b.setdefault("rmse_vs_EQ_mu", []).append(float((f - oracle).pow(2).mean().sqrt()))
            b.setdefault("no_shift", []).append(s["no_shift"])
            b.setdefault("worst", []).append(s["worst"])
        print(f"seed {seed} done", flush=True)
    rows = []
    for name, r in res.items():
        row = {"method": name}
        for k in ("worst", "mean", "no_shift"):
            m, se = mean_se(r[k])
            row[f"{k} Brier"] = m
            row[f"{k} se"] = se
        row["fit s"] = float(np.mean(r["seconds"]))
        rows.append(row)
    bc_rows = mean_se_rows(bc, "DRUM KL rho=0.3, linear mu")
    ka = known_answer()
    print(f"\n## Continuous simulation ({seeds} seeds)\n")
    print(markdown_table(rows))
    print("\n## Bias correction, misspecified outcome model\n")
    print(markdown_table(bc_rows))
    print("\n## Known answer (binary A)\n")
    print(markdown_table(ka))
    path = save("drum", args.out, {"machine": machine(), "continuous": rows,
                                   "bias_correction": bc_rows, "known_answer": ka})  # fmt: skip
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
