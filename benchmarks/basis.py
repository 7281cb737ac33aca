"""BASIS benchmark on the exact bandit (N = 4096 prompts x 8 answers, theta in R^16).

1. Value MSE over 300 steps (and over the first 50, before the policy has drifted far) with
   B = 128 and one rollout per prompt (K offline samples in {16, 32}) for BASIS (BLUE, linearised
   and calibrated-only forms), its Bayesian version (per batch, and filtered across steps with
   the spec's random walk on the drift: ``bayes-basis-rw``; plus each prompt's own drift:
   ``bayes-basis-rw-eta``), GRPO-8's group mean, offline-only values, REINFORCE++'s batch
   mean and an SPO-style tracker.
2. Learning curves: final mean reward of BASIS (1 rollout) vs GRPO-8 (8 rollouts).
3. Drift sweep (static, from the logit-shift model): where prompt-specific drift erases the
   gain over GRPO-8; and a sweep with drift that is a smooth function of prompt features,
   where GP-BASIS (a gpytorch GP over the features) is compared with BASIS.
4. Policy-movement sweep (``--lr-sweep-only``): the Adam step size sets how far the policy
   moves from the reference in 300 steps; value MSE of BASIS, both drift filters, GRPO-8,
   offline-only and REINFORCE++ at each, whether the spec's ordering holds (with either
   BASIS), and the batch-wide floor: the
   best value MSE any shared logit shift and scale of the offline values reaches on the same
   batches (an oracle fitted to the exact values; `advantage.batch_wide_floor`).
5. Cost of computing the advantages (BASIS, the drift filters, GRPO-8), as a ratio to GRPO's,
   same run (``--timing-only`` alone).
6. A bandit calibrated to the spec's reference simulation (``--calibrated-only``): the
   reference policy's scale and the step size are chosen on a grid so that the three
   baselines (GRPO-8, offline-only, REINFORCE++; never BASIS) match the spec's reference
   value MSEs at B = 256, K = 32 on a calibration seed; then the value-MSE table at
   (B, K) = (128, 8), (128, 16), (128, 32) and (256, 32) on the evaluation seeds (the spec:
   BASIS needs K >= 16 to beat G = 8), and the
   policy-movement sweep at half, once and twice the chosen step size.

Run: `python benchmarks/basis.py` (5 seeds) or `--quick` (2 seeds, 100 steps);
`python benchmarks/basis.py --drift-only` runs the two static drift sweeps alone,
`--lr-sweep-only` the policy-movement sweep alone, `--calibrated-only` item 6 alone (not part of
the full run).
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
from probml.models.rollouts import (  # noqa: E402
    DriftFilter,
    LinearBandit,
    PromptDriftFilter,
    gp_loo_baseline,
)
from probml.results import markdown_table, mean_se  # noqa: E402

EARLY = 50  # steps in the early-window column of the value-MSE table
ESTIMATORS = [
    "basis",
    "basis-linearised",
    "basis-calibrated",
    "bayes-basis",
    "bayes-basis-rw",
    "bayes-basis-rw-eta",
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


SWEEP_ESTIMATORS = [
    "basis",
    "bayes-basis-rw",
    "bayes-basis-rw-eta",
    "grpo",
    "offline",
    "reinforce++",
]
BASELINES = ["grpo", "offline", "reinforce++"]  # the spec's ordering after BASIS


def lr_sweep(
    seeds: int,
    steps: int = 300,
    K: int = 16,
    B: int = 128,
    lrs=(0.0005, 0.001, 0.002, 0.004),
    bandit: LinearBandit | None = None,
):
    """Value MSE as the policy moves further from the reference (larger Adam steps)."""
    bandit = LinearBandit(num_prompts=4096, seed=0) if bandit is None else bandit
    rows = []
    for lr in lrs:
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
        holds = {
            b: sorted([b] + BASELINES, key=means.get) == [b] + BASELINES
            for b in ("basis", "bayes-basis-rw", "bayes-basis-rw-eta")
        }
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
                    "spec ordering holds (basis)": holds["basis"],
                    "(bayes-basis-rw)": holds["bayes-basis-rw"],
                    "(bayes-basis-rw-eta)": holds["bayes-basis-rw-eta"],
                }
            )
    return rows


def value_mse_table(
    bandit: LinearBandit,
    seeds: int,
    steps: int,
    lr: float,
    configs=((128, 16), (128, 32)),
    estimators=ESTIMATORS,
):
    """Value MSE (whole run and first ``EARLY`` steps) of every estimator, each training its
    own policy, for each ``(B, K)`` in ``configs``; plus each run's final mean reward."""
    mse_rows = []
    finals: dict[tuple[int, int, str], list[float]] = {}
    with_b = len({b for b, _ in configs}) > 1  # a B column only where B varies
    for B, K in configs:
        mse: dict[str, list[float]] = {}
        early: dict[str, list[float]] = {}  # before the policy has drifted far
        for s in range(seeds):
            for e in estimators:
                r = run_bandit_rl(bandit, e, steps=steps, batch_size=B, K=K, lr=lr, seed=s)
                mse.setdefault(e, []).append(float(np.mean(r.value_mse)))
                early.setdefault(e, []).append(float(np.mean(r.value_mse[:EARLY])))
                finals.setdefault((B, K, e), []).append(r.mean_reward[-1])
        ref = np.mean(mse["reinforce++"])
        for e, v in mse.items():
            m, se = mean_se(v)
            mse_rows.append(
                {
                    **({"B": B} if with_b else {}),
                    "K": K,
                    "estimator": e + ("-8" if e == "grpo" else ""),
                    "value MSE": m,
                    "se": se,
                    "% below REINFORCE++": 100 * (1 - m / ref),
                    f"value MSE, first {EARLY} steps": float(np.mean(early[e])),
                }
            )
    return mse_rows, finals


def final_reward_rows(finals, B: int = 128, K: int = 16):
    rows = []
    for e in ("basis", "grpo", "reinforce++"):
        m, se = mean_se(finals[B, K, e])
        rows.append(
            {
                "estimator": e + ("-8" if e == "grpo" else ""),
                "rollouts/step": B * (8 if e == "grpo" else 1),
                "final mean reward": m,
                "se": se,
            }
        )
    return rows


#: the spec's reference simulation (B = 256, K = 32): value MSE of the three baselines
SPEC_REFERENCE = {"grpo": 0.018, "offline": 0.033, "reinforce++": 0.104}
CAL_SCALES = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
CAL_LRS = [0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004]
CAL_SEED = 100  # not one of the evaluation seeds 0..seeds-1


def calibrate(steps: int = 300, scales=CAL_SCALES, lrs=CAL_LRS):
    """Pick the reference-policy scale ``s`` and the Adam step size from the spec's reference
    simulation, using the **baselines only** (GRPO-8, offline-only, REINFORCE++; never BASIS):
    the grid point minimising ``sum_e log(MSE_e / reference_e)^2`` at B = 256, K = 32, one
    calibration seed. Returns ``(rows, best_scale, best_lr)``."""
    rows = []
    for scale in scales:
        bandit = LinearBandit(num_prompts=4096, seed=0, reference_scale=scale)
        for lr in lrs:
            mse = {
                e: float(
                    np.mean(
                        run_bandit_rl(
                            bandit, e, steps=steps, batch_size=256, K=32, lr=lr, seed=CAL_SEED
                        ).value_mse
                    )
                )
                for e in SPEC_REFERENCE
            }
            loss = sum(math.log(mse[e] / t) ** 2 for e, t in SPEC_REFERENCE.items())
            rows.append(
                {
                    "reference scale s": scale,
                    "lr": lr,
                    **{f"{e + ('-8' if e == 'grpo' else '')} MSE": m for e, m in mse.items()},
                    "calibration loss": loss,
                }
            )
    best = min(rows, key=lambda r: r["calibration loss"])
    return rows, best["reference scale s"], best["lr"]


def advantage_timing(B: int = 128, reps: int = 50) -> dict[str, float]:
    """Median seconds to compute one batch's advantages (one thread, this machine)."""
    g = torch.Generator().manual_seed(0)
    r1 = (torch.rand(B, generator=g) < 0.5).double()
    p0 = torch.rand(B, generator=g, dtype=torch.float64) * 0.8 + 0.1
    r8 = (torch.rand(B, 8, generator=g) < 0.5).double()
    filt, eta = DriftFilter(), PromptDriftFilter(4096)
    idx = torch.randperm(4096, generator=g)[:B]
    calls = {
        "basis": lambda: basis_advantages(r1, p0),
        "bayes-basis-rw": lambda: filt.loo_baseline(r1, p0),
        "bayes-basis-rw-eta": lambda: eta.loo_baseline(r1, p0, idx),
        "grpo-8": lambda: grpo_advantages(r8),
    }
    return {k: float(np.median([timed(f)[1] for _ in range(reps)])) for k, f in calls.items()}


def timing_line(times: dict[str, float], B: int = 128) -> str:
    g = times["grpo-8"]
    parts = ", ".join(f"{k} {1e3 * t:.3f} ms ({t / g:.1f}x GRPO-8)" for k, t in times.items())
    return f"advantage computation at B = {B}: {parts}"


def main():
    args = parse_args(
        __doc__.splitlines()[0],
        flags=("--drift-only", "--lr-sweep-only", "--calibrated-only", "--timing-only"),
    )
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
    if args.timing_only:
        print(timing_line(advantage_timing()))
        return
    if args.calibrated_only:
        cal_rows, scale, lr = calibrate(steps)
        print(
            f"## calibration to the spec's reference (B = 256, K = 32, {steps} steps, seed "
            f"{CAL_SEED}; baselines only)\n" + markdown_table(cal_rows)
        )
        print(f"\nchosen: reference scale s = {scale}, lr = {lr}")
        bandit = LinearBandit(num_prompts=4096, seed=0, reference_scale=scale)
        v_ref = bandit.values(bandit.reference_theta)
        print(
            f"reference values: mean {float(v_ref.mean()):.3f}, variance {float(v_ref.var()):.4f}"
        )
        mse_rows, finals = value_mse_table(
            bandit,
            seeds,
            steps,
            lr,
            configs=((128, 8), (128, 16), (128, 32), (256, 32)),
            estimators=ESTIMATORS + ["basis-inactive-offline"],
        )
        curve_rows = final_reward_rows(finals)
        ratio = np.mean(finals[128, 16, "basis"]) / np.mean(finals[128, 16, "grpo"])
        # half and double the chosen step size: is the ordering a knife-edge?
        cal_lr_rows = lr_sweep(seeds, steps, lrs=(lr / 2, lr, 2 * lr), bandit=bandit)
        print(f"\n## value MSE in the calibrated bandit ({steps} steps, {seeds} seeds)")
        print(markdown_table(mse_rows))
        print("\n## final mean reward (B = 128, K = 16)\n" + markdown_table(curve_rows))
        print(f"\nBASIS final reward / GRPO-8 final reward = {ratio:.3f} at 1/8 of the rollouts")
        print(
            f"\n## policy-movement sweep in the calibrated bandit (K = 16, B = 128, lr = "
            f"{lr / 2}, {lr}, {2 * lr})\n" + markdown_table(cal_lr_rows)
        )
        payload = {
            "calibration": cal_rows,
            "scale": scale,
            "lr": lr,
            "value_mse": mse_rows,
            "lr_sweep": cal_lr_rows,
        }
        path = save("basis_calibrated", args.out, {**payload, "final": curve_rows, "ratio": ratio})
        print(f"\nwrote {path}")
        return
    if args.lr_sweep_only:
        lr_rows = lr_sweep(seeds, steps)
        print(lr_title + markdown_table(lr_rows))
        path = save("basis_lr_sweep", args.out, {"lr_sweep": lr_rows, "seeds": seeds})
        print(f"\nwrote {path}")
        return
    bandit = LinearBandit(num_prompts=4096, seed=0)
    mse_rows, finals = value_mse_table(bandit, seeds, steps, lr=0.002)
    curve_rows = final_reward_rows(finals)
    ratio = np.mean(finals[128, 16, "basis"]) / np.mean(finals[128, 16, "grpo"])
    drift_rows = drift_sweep(seeds)
    fdrift_rows = drift_sweep(seeds, "feature")
    lr_rows = lr_sweep(seeds, steps)
    times = advantage_timing()
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
    print("\n" + timing_line(times))
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
            "timing_s": times,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
