"""BASIS benchmark on the exact bandit (N = 4096 prompts x 8 answers, theta in R^16).

1. Value MSE over 300 steps with B = 128 and one rollout per prompt (K offline samples in
   {16, 32}) for BASIS (BLUE and linearised), its Bayesian version, GRPO-8's group mean,
   offline-only values, REINFORCE++'s batch mean and an SPO-style tracker.
2. Learning curves: final mean reward of BASIS (1 rollout) vs GRPO-8 (8 rollouts).
3. Drift sweep (static, from the logit-shift model): where prompt-specific drift erases the
   gain over GRPO-8.
4. Cost of computing the advantages, as a ratio to GRPO's, same run.

Run: `python benchmarks/basis.py` (5 seeds) or `--quick` (2 seeds, 100 steps).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args, save, timed  # noqa: E402

from probml.inference.advantage import basis_advantages, grpo_advantages, offline_values  # noqa: E402
from probml.inference.basis_rl import run_bandit_rl  # noqa: E402
from probml.models.rollouts import LinearBandit  # noqa: E402
from probml.results import markdown_table, mean_se  # noqa: E402

ESTIMATORS = ["basis", "basis-linearised", "bayes-basis", "grpo", "offline", "reinforce++", "spo"]


def drift_sweep(seeds: int, B: int = 128, K: int = 16, c: float = 1.0):
    rows = []
    for tau in [0.0, 0.25, 0.5, 1.0, 2.0]:
        res = {"BASIS": [], "GRPO-8 group mean": [], "offline-only": []}
        for s in range(seeds):
            g = torch.Generator().manual_seed(1000 + s)
            for _ in range(50):  # 50 batches per seed
                p = torch.rand(B, generator=g, dtype=torch.float64) * 0.8 + 0.1
                p0 = offline_values(
                    torch.binomial(torch.full((B,), float(K), dtype=torch.float64), p, generator=g),
                    K,
                )
                eta = tau * torch.randn(B, generator=g, dtype=torch.float64)
                v = torch.sigmoid(torch.logit(p) + c + eta)
                r = torch.bernoulli(v, generator=g)
                _, d = basis_advantages(r, p0)
                r8 = torch.bernoulli(v[:, None].expand(B, 8), generator=g)
                res["BASIS"].append(float(((d["baseline"] - v) ** 2).mean()))
                res["GRPO-8 group mean"].append(float(((r8.mean(1) - v) ** 2).mean()))
                res["offline-only"].append(float(((p0 - v) ** 2).mean()))
        for k, vals in res.items():
            m, se = mean_se(vals)
            rows.append({"prompt drift tau": tau, "estimator": k, "value MSE": m, "se": se})
    return rows


def main():
    args = parse_args(__doc__.splitlines()[0])
    seeds = args.seeds or (2 if args.quick else 5)
    steps = 100 if args.quick else 300
    bandit = LinearBandit(num_prompts=4096, seed=0)
    mse_rows, curve_rows = [], []
    finals: dict[tuple[int, str], list[float]] = {}
    for K in (16, 32):
        mse: dict[str, list[float]] = {}
        for s in range(seeds):
            for e in ESTIMATORS:
                r = run_bandit_rl(bandit, e, steps=steps, batch_size=128, K=K, lr=0.002, seed=s)
                mse.setdefault(e, []).append(float(np.mean(r.value_mse)))
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
            "t_basis": t_basis,
            "t_grpo": t_grpo,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
