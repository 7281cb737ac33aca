"""BASIS benchmark on the exact bandit (N = 4096 prompts x 8 answers, theta in R^16).

1. Value MSE over 300 steps (and over the first 50, before the policy has drifted far) with
   B = 128 and one rollout per prompt (K offline samples in {16, 32}) for BASIS (BLUE, linearised
   and calibrated-only forms), its Bayesian version, GRPO-8's group mean,
   offline-only values, REINFORCE++'s batch mean and an SPO-style tracker.
2. Learning curves: final mean reward of BASIS (1 rollout) vs GRPO-8 (8 rollouts).
3. Drift sweep (static, from the logit-shift model): where prompt-specific drift erases the
   gain over GRPO-8; and a sweep with drift that is a smooth function of prompt features,
   where GP-BASIS (a gpytorch GP over the features) is compared with BASIS.
4. Policy-movement sweep (``--lr-sweep-only``): the Adam step size sets how far the policy
   moves from the reference in 300 steps; value MSE of BASIS, GRPO-8, offline-only and
   REINFORCE++ at each, whether the spec's ordering holds, and the batch-wide floor: the
   best value MSE any shared logit shift and scale of the offline values reaches on the same
   batches (an oracle fitted to the exact values; `advantage.batch_wide_floor`).
5. Cost of computing the advantages, as a ratio to GRPO's, same run.

Run: `python benchmarks/basis.py` (5 seeds) or `--quick` (2 seeds, 100 steps);
`python benchmarks/basis.py --drift-only` runs the two static drift sweeps alone,
`--lr-sweep-only` the policy-movement sweep alone.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args, save, timed  # noqa: E402

from probml.inference.advantage import basis_advantages, grpo_advantages, offline_values  # noqa: E402
from probml.inference.basis_rl import run_bandit_rl  # noqa: E402
from probml.models.rollouts import LinearBandit, gp_loo_baseline  # noqa: E402
from probml.results import markdown_table, mean_se  # noqa: E402

EARLY = 50  # steps in the early-window column of the value-MSE table
ESTIMATORS = [
    "basis",
    "basis-linearised",
    "basis-calibrated",
    "bayes-basis",
    "grpo",
    "offline",
    "reinforce++",
    "spo",
]


def _iid_drift(tau, B, K, g):
    p = torch.rand(B, generator=g, dtype=torch.float64) * 0.8 + 0.1
    k = torch.binomial(torch.full((B,), float(K), dtype=torch.float64), p, generator=g)
    return None, p, k, tau * torch.randn(B, generator=g, dtype=torch.float64)


def _feature_drift(tau, B, K, g):
    """eta_i = tau sqrt(2) cos(w^T x_i + b) of prompt features x_i ~ N(0, I_4)."""
    x = torch.randn(B, 4, generator=g, dtype=torch.float64)
    w = torch.randn(4, generator=g, dtype=torch.float64)
    b = 2 * math.pi * float(torch.rand(1, generator=g))
    eta = tau * math.sqrt(2) * torch.cos(x @ w + b)
    p = torch.rand(B, generator=g, dtype=torch.float64) * 0.8 + 0.1
    k = torch.binomial(torch.full((B,), float(K), dtype=torch.float64), p, generator=g)
    return x, p, k, eta


def drift_sweep(seeds: int, kind: str = "iid", B: int = 128, K: int = 16, c: float = 1.0):
    """Static value MSE under drift: iid prompt-specific (50 batches per seed) or a smooth
    function of prompt features (10 batches per seed, GP-BASIS added)."""
    draw, taus, batches, base = {
        "iid": (_iid_drift, [0.0, 0.25, 0.5, 1.0, 2.0], 50, 1000),
        "feature": (_feature_drift, [0.0, 0.5, 1.0, 2.0], 10, 2000),
    }[kind]
    label = "prompt drift tau" if kind == "iid" else "feature drift tau"
    rows = []
    for tau in taus:
        res = {"BASIS": [], "GRPO-8 group mean": [], "offline-only": []}
        if kind == "feature":
            res = {"BASIS": [], "GP-BASIS": [], **res}
        for s in range(seeds):
            g = torch.Generator().manual_seed(base + s)
            for _ in range(batches):
                x, p, k, eta = draw(tau, B, K, g)
                p0 = offline_values(k, K)
                v = torch.sigmoid(torch.logit(p) + c + eta)
                r = torch.bernoulli(v, generator=g)
                _, d = basis_advantages(r, p0)
                if x is not None:
                    res["GP-BASIS"].append(float(((gp_loo_baseline(r, p0, x)[0] - v) ** 2).mean()))
                r8 = torch.bernoulli(v[:, None].expand(B, 8), generator=g)
                res["BASIS"].append(float(((d["baseline"] - v) ** 2).mean()))
                res["GRPO-8 group mean"].append(float(((r8.mean(1) - v) ** 2).mean()))
                res["offline-only"].append(float(((p0 - v) ** 2).mean()))
        for name, vals in res.items():
            m, se = mean_se(vals)
            rows.append({label: tau, "estimator": name, "value MSE": m, "se": se})
    return rows


SWEEP_ESTIMATORS = ["basis", "grpo", "offline", "reinforce++"]


def lr_sweep(seeds: int, steps: int = 300, K: int = 16, B: int = 128):
    """Value MSE as the policy moves further from the reference (larger Adam steps)."""
    bandit = LinearBandit(num_prompts=4096, seed=0)
    rows = []
    for lr in [0.0005, 0.001, 0.002, 0.004]:
        mse: dict[str, list[float]] = {}
        gain: list[float] = []
        final: dict[str, list[float]] = {}
        floor: dict[str, list[float]] = {}
        for s in range(seeds):
            for e in SWEEP_ESTIMATORS:
                r = run_bandit_rl(bandit, e, steps=steps, batch_size=B, K=K, lr=lr, seed=s)
                mse.setdefault(e, []).append(float(np.mean(r.value_mse)))
                floor.setdefault(e, []).append(float(np.mean(r.floor_mse)))
                final.setdefault(e, []).append(r.mean_reward[-1])
                if e == "basis":
                    gain.append(r.mean_reward[-1] - r.mean_reward[0])
        means = {e: float(np.mean(v)) for e, v in mse.items()}
        order = sorted(means, key=means.get)
        holds = order == ["basis", "grpo", "offline", "reinforce++"]
        for e, v in mse.items():
            m, se = mean_se(v)
            rows.append(
                {
                    "lr": lr,
                    "BASIS reward gain": float(np.mean(gain)),
                    "estimator": e + ("-8" if e == "grpo" else ""),
                    "value MSE": m,
                    "se": se,
                    "rank": order.index(e) + 1,
                    "batch-wide floor (oracle)": float(np.mean(floor[e])),
                    "final reward / GRPO-8's": float(np.mean(final[e]) / np.mean(final["grpo"])),
                    "spec ordering holds": holds,
                }
            )
    return rows


def main():
    args = parse_args(__doc__.splitlines()[0], flags=("--drift-only", "--lr-sweep-only"))
    seeds = args.seeds or (2 if args.quick else 5)
    if args.drift_only:
        drift_rows, fdrift_rows = drift_sweep(seeds), drift_sweep(seeds, "feature")
        print(
            "## drift sweep (logit-shift model, c = 1, K = 16, B = 128)\n"
            + markdown_table(drift_rows)
            + "\n\n## feature-correlated drift (c = 1, K = 16, B = 128, 10 batches x seeds)\n"
            + markdown_table(fdrift_rows)
        )
        path = save("basis_drift", args.out, {"drift": drift_rows, "feature_drift": fdrift_rows})
        print(f"\nwrote {path}")
        return
    steps = 100 if args.quick else 300
    lr_title = f"## policy-movement sweep (K = 16, B = 128, {steps} steps, {seeds} seeds)\n"
    if args.lr_sweep_only:
        lr_rows = lr_sweep(seeds, steps)
        print(lr_title + markdown_table(lr_rows))
        path = save("basis_lr_sweep", args.out, {"lr_sweep": lr_rows, "seeds": seeds})
        print(f"\nwrote {path}")
        return
    bandit = LinearBandit(num_prompts=4096, seed=0)
    mse_rows, curve_rows = [], []
    finals: dict[tuple[int, str], list[float]] = {}
    for K in (16, 32):
        mse: dict[str, list[float]] = {}
        early: dict[str, list[float]] = {}  # before the policy has drifted far
        for s in range(seeds):
            for e in ESTIMATORS:
                r = run_bandit_rl(bandit, e, steps=steps, batch_size=128, K=K, lr=0.002, seed=s)
                mse.setdefault(e, []).append(float(np.mean(r.value_mse)))
                early.setdefault(e, []).append(float(np.mean(r.value_mse[:EARLY])))
                finals.setdefault((K, e), []).append(r.mean_reward[-1])
        ref = np.mean(mse["reinforce++"])
        for e, v in mse.items():
            m, se = mean_se(v)
            mse_rows.append(
                {
                    "K": K,
                    "estimator": e + ("-8" if e == "grpo" else ""),
                    "value MSE": m,
                    "se": se,
                    "% below REINFORCE++": 100 * (1 - m / ref),
                    f"value MSE, first {EARLY} steps": float(np.mean(early[e])),
                }
            )
    for (K, e), v in finals.items():
        if K == 16 and e in ("basis", "grpo", "reinforce++"):
            m, se = mean_se(v)
            curve_rows.append(
                {
                    "estimator": e + ("-8" if e == "grpo" else ""),
                    "rollouts/step": 1024 if e == "grpo" else 128,
                    "final mean reward": m,
                    "se": se,
                }
            )
    ratio = np.mean(finals[16, "basis"]) / np.mean(finals[16, "grpo"])
    drift_rows = drift_sweep(seeds)
    fdrift_rows = drift_sweep(seeds, "feature")
    lr_rows = lr_sweep(seeds, steps)
    g = torch.Generator().manual_seed(0)
    r1 = (torch.rand(128, generator=g) < 0.5).double()
    p0 = torch.rand(128, generator=g, dtype=torch.float64) * 0.8 + 0.1
    r8 = (torch.rand(128, 8, generator=g) < 0.5).double()
    t_basis = np.median([timed(basis_advantages, r1, p0)[1] for _ in range(50)])
    t_grpo = np.median([timed(grpo_advantages, r8)[1] for _ in range(50)])
    print(
        f"## value MSE on the exact bandit (B = 128, {steps} steps, {seeds} seeds)\n"
        + markdown_table(mse_rows)
    )
    print("\n## final mean reward (K = 16)\n" + markdown_table(curve_rows))
    print(f"\nBASIS final reward / GRPO-8 final reward = {ratio:.3f} at 1/8 of the rollouts")
    print(
        "\n## drift sweep (logit-shift model, c = 1, K = 16, B = 128)\n"
        + markdown_table(drift_rows)
    )
    print(
        "\n## feature-correlated drift (c = 1, K = 16, B = 128, 10 batches x seeds)\n"
        + markdown_table(fdrift_rows)
    )
    print("\n" + lr_title + markdown_table(lr_rows))
    print(
        f"\nadvantage computation at B = 128: BASIS {1e3 * t_basis:.3f} ms, GRPO-8 {1e3 * t_grpo:.3f} ms "
        f"(ratio {t_basis / t_grpo:.1f})"
    )
    path = save(
        "basis",
        args.out,
        {
            "value_mse": mse_rows,
            "final": curve_rows,
            "ratio": ratio,
            "drift": drift_rows,
            "feature_drift": fdrift_rows,
            "lr_sweep": lr_rows,
            "t_basis": t_basis,
            "t_grpo": t_grpo,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
