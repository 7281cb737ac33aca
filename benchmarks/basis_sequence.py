"""BASIS on the sequence task: a TinyLM policy on 2-digit addition, exact-match reward.

Per seed: a TinyLM (d = 64, 2 layers) supervised to 40% sampled success on 2048 prompts (the
reference policy; carry prompts down-weighted 20x in the warm-up so prompt difficulties spread
out, and a uniform warm-up as the contrast), offline values from K = 32 reference samples per
prompt, then 60 policy-gradient steps (Adam 1e-4, B = 128) for BASIS, BASIS with the offline
value as the baseline of prompts outside the active set (`basis-inactive-offline`, ours), its
Bayesian version (per batch, and filtered across steps with the spec's random walk on the
drift: `bayes-basis-rw`), offline-only values and REINFORCE++ (one rollout per prompt) and GRPO-8
(8 rollouts). Value MSE against 16 fresh rollouts per batch prompt at every step
(noise-corrected, see `probml.inference.sequence_rl`); success on a fixed probe set of 256 of
the task's prompts (4 samples each; the prompts also appear in training batches) at the end.

Run: `python benchmarks/basis_sequence.py` (5 seeds) or `--quick` (1 seed, 10 steps);
`--estimators grpo,bayes-basis-rw` runs a subset (every run is seeded, so a subset reproduces
the full run's rows);
`--lr-sweep-only` (3 seeds by default; `--seeds 5` for the table in docs/results.md) repeats
the carry-down-weighted runs of the three BASIS variants, GRPO-8, offline-only and REINFORCE++ at
Adam step sizes 3e-5, 1e-4 and 3e-4 (`--lrs 3e-5` runs a subset; the JSON holds the per-seed
value MSEs): how far the policy moves decides how stale the offline values get. `--pool 819`
trains on the first 819 of the 2048 prompts (same reference policies, offline counts sliced),
so a prompt recurs about 9.4 times in 60 steps instead of 3.75 (the spec bandit's rate).
`--side-by-side-only` (10 seeds by default; `--lrs` as above) measures every estimator's value
MSE on the same batches of one trajectory, driven once by GRPO-8 and once by BASIS with offline
inactive baselines (`run_sequence_rl(..., side_by_side=...)`): the estimators then differ only
in their estimates, not in the policy states they are measured at. The main table and the sweep
report the batch-wide floor: the best value MSE any shared logit shift and scale of the offline
values reaches on each run's batches (an oracle fitted to the Monte Carlo values;
`advantage.batch_wide_floor`). `benchmarks/basis_pool.py` pools the per-seed JSON of several
`--first-seed` blocks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, parse_args, save  # noqa: E402

from probml.inference.sequence_rl import (  # noqa: E402
    AdditionTask,
    addition_policy,
    offline_counts,
    run_sequence_rl,
    supervised_warmup,
)
from probml.results import markdown_table, mean_se  # noqa: E402

RUNS = [  # (warm-up, K, estimator)
    ("carry-down-weighted", 32, "basis"),
    ("carry-down-weighted", 32, "basis-inactive-offline"),
    ("carry-down-weighted", 32, "bayes-basis"),
    ("carry-down-weighted", 32, "bayes-basis-rw"),
    ("carry-down-weighted", 32, "bayes-basis-rw-eta"),
    ("carry-down-weighted", 32, "offline"),
    ("carry-down-weighted", 32, "grpo"),
    ("carry-down-weighted", 32, "reinforce++"),
    ("uniform", 32, "basis"),
    ("uniform", 32, "basis-inactive-offline"),
    ("uniform", 32, "offline"),
    ("uniform", 32, "grpo"),
    ("uniform", 32, "reinforce++"),
]


SWEEP = [
    "basis",
    "basis-inactive-offline",
    "bayes-basis-rw",
    "bayes-basis-rw-eta",
    "grpo",
    "offline",
    "reinforce++",
]
BASIS_VARIANTS = ["basis", "basis-inactive-offline", "bayes-basis-rw", "bayes-basis-rw-eta"]


def spec_order_holds(means: dict[str, float], variant: str) -> bool:
    """Whether ``variant`` < GRPO-8 < offline-only < REINFORCE++ in value MSE."""
    order = [variant, "grpo", "offline", "reinforce++"]
    return all(means[a] < means[b] for a, b in zip(order, order[1:]))


def carry_down_reference(task: AdditionTask, s: int):
    """The carry-down-weighted warm-up of seed ``s`` and its K = 32 offline counts."""
    torch.manual_seed(s)
    m = addition_policy()
    supervised_warmup(m, task, 0.4, seed=s, carry_weight=0.05)
    return m, offline_counts(m, task, 32, torch.Generator().manual_seed(100 + s), "cpu")


LRS = (3e-5, 1e-4, 3e-4)


def _row(lead: dict, e: str, vals, grpo_vals, means: dict, holds, extra=None) -> dict:
    """One estimator's table row: mean and standard error over seeds, rank among ``means``,
    the paired difference to GRPO-8 over seeds (same reference policy and offline values;
    ``grpo_vals`` None when GRPO-8 did not run), ``extra`` columns, whether the ordering
    holds."""
    m, se = mean_se(vals)
    d, dse = mean_se(np.subtract(vals, grpo_vals)) if grpo_vals is not None else ("-", "-")
    return {
        **lead,
        "estimator": e + ("-8" if e == "grpo" else ""),
        "value MSE": m,
        "se": se,
        "rank": sorted(means, key=means.get).index(e) + 1,
        "minus GRPO-8 (paired)": d if e != "grpo" else "-",
        "paired se": dse if e != "grpo" else "-",
        **(extra or {}),
        "spec ordering holds (this BASIS)": holds,
    }


def _run(reference, task: AdditionTask, estimator: str, steps: int, lr: float, s: int, k32, **kw):
    """One carry-down-weighted run of seed ``s`` at the sweeps' settings."""
    return run_sequence_rl(
        reference, task, estimator, steps=steps, batch_size=128, K=32, lr=lr, mc_rollouts=16,
        eval_every=steps, seed=1000 + s, offline=k32, **kw,
    )  # fmt: skip


def lr_sweep(
    task: AdditionTask, seeds, steps: int, sweep=SWEEP, lrs=LRS, pool: int | None = None
) -> tuple[list[dict], dict[str, list[float]]]:
    """The policy-movement sweep's rows over the seeds ``seeds`` and the per-seed value MSEs
    (``"lr|estimator"``). ``pool``: train on the first ``pool`` prompts of ``task`` only
    (the reference is still warmed up on all of them, the offline counts are sliced), so a
    prompt recurs ``128 steps / pool`` times instead of ``128 steps / N``."""
    rl_task = task if pool is None else AdditionTask(pool, seed=task.seed)
    mse: dict[tuple[float, str], list[float]] = {}
    gain: dict[tuple[float, str], list[float]] = {}
    floor: dict[tuple[float, str], list[float]] = {}
    for s in seeds:
        m, k32 = carry_down_reference(task, s)
        k32 = k32[: rl_task.num_prompts]
        for lr in lrs:
            for e in sweep:
                r = _run(m, rl_task, e, steps, lr, s, k32)
                mse.setdefault((lr, e), []).append(float(np.mean(r.value_mse)))
                floor.setdefault((lr, e), []).append(float(np.mean(r.floor_mse)))
                gain.setdefault((lr, e), []).append(r.mean_reward[-1] - r.mean_reward[0])
                print((lr, e), mse[lr, e][-1], flush=True)
    rows = []
    for lr in lrs:
        means = {e: float(np.mean(mse[lr, e])) for e in sweep}
        complete = {"grpo", "offline", "reinforce++"} <= set(sweep)
        for e in sweep:
            holds = spec_order_holds(means, e) if e in BASIS_VARIANTS and complete else "-"
            extra = {
                "batch-wide floor (oracle)": float(np.mean(floor[lr, e])),
                "probe success gain": float(np.mean(gain[lr, e])),
            }
            grpo = mse[lr, "grpo"] if "grpo" in sweep else None
            rows.append(_row({"lr": lr}, e, mse[lr, e], grpo, means, holds, extra))
    return rows, {f"{lr}|{e}": v for (lr, e), v in mse.items()}


DRIVERS = ("grpo", "basis-inactive-offline")


def side_by_side(
    task: AdditionTask, seeds, steps: int, lrs=LRS, drivers=DRIVERS, sweep=SWEEP
) -> tuple[list[dict], dict[str, list[float]]]:
    """Every estimator's value MSE on the same batches of one trajectory per driver
    (``run_sequence_rl(..., side_by_side=...)``) over the seeds ``seeds``: rows and per-seed
    values (``"lr|driver|estimator"``)."""
    mse: dict[tuple[float, str, str], list[float]] = {}
    for s in seeds:
        m, k32 = carry_down_reference(task, s)
        for lr in lrs:
            for drv in drivers:
                r = _run(m, task, drv, steps, lr, s, k32, side_by_side=tuple(sweep))
                curves = {drv: r.value_mse, **r.side_value_mse}
                for e in sweep:
                    mse.setdefault((lr, drv, e), []).append(float(np.mean(curves[e])))
                print((lr, drv), {e: round(mse[lr, drv, e][-1], 5) for e in sweep}, flush=True)
    rows = []
    for lr in lrs:
        for drv in drivers:
            means = {e: float(np.mean(mse[lr, drv, e])) for e in sweep}
            for e in sweep:
                holds = spec_order_holds(means, e) if e in BASIS_VARIANTS else "-"
                lead = {"lr": lr, "trajectory of": drv + ("-8" if drv == "grpo" else "")}
                grpo = mse[lr, drv, "grpo"]
                rows.append(_row(lead, e, mse[lr, drv, e], grpo, means, holds))
    return rows, {f"{lr}|{d}|{e}": v for (lr, d, e), v in mse.items()}


def main():
    args = parse_args(
        __doc__.splitlines()[0],
        flags=("--lr-sweep-only", "--side-by-side-only"),
        options={
            "--estimators": "comma-separated subset of the estimators to run",
            "--lrs": "comma-separated step sizes (--lr-sweep-only, --side-by-side-only)",
            "--first-seed": "first seed of the sweeps (default 0; seeds first .. first+n-1)",
            "--pool": "RL prompt pool of --lr-sweep-only: the first n of the 2048 prompts",
        },
    )
    only = None if args.estimators is None else args.estimators.split(",")
    known = set(SWEEP) | {e for _, _, e in RUNS}
    if only is not None and not set(only) <= known:
        raise SystemExit(
            f"--estimators: unknown {sorted(set(only) - known)}; known {sorted(known)}"
        )
    lrs = LRS if args.lrs is None else tuple(float(x) for x in args.lrs.split(","))
    if not all(x > 0 for x in lrs):
        raise SystemExit(f"--lrs: step sizes must be positive, got {args.lrs}")
    steps = 10 if args.quick else 60
    first = int(args.first_seed or 0)
    if first < 0:
        raise SystemExit(f"--first-seed must be >= 0, got {first}")
    task = AdditionTask(2048, seed=0)
    if args.pool is not None and not (
        args.pool.isdigit() and 128 <= int(args.pool) <= task.num_prompts and args.lr_sweep_only
    ):
        raise SystemExit(f"--pool needs --lr-sweep-only and 128 <= n <= 2048, got {args.pool}")
    pool = None if args.pool is None else int(args.pool)
    if args.side_by_side_only and only is not None:
        raise SystemExit("--estimators does not apply to --side-by-side-only (all run at once)")
    if args.side_by_side_only or args.lr_sweep_only:
        if args.side_by_side_only:
            seeds = args.seeds or (1 if args.quick else 10)
            rows, per_seed = side_by_side(task, range(first, first + seeds), steps, lrs)
            title, name = "value MSE side by side on common batches", "basis_sequence_side"
        else:
            seeds = args.seeds or (1 if args.quick else 3)
            sweep = [e for e in SWEEP if only is None or e in only]
            rows, per_seed = lr_sweep(task, range(first, first + seeds), steps, sweep, lrs, pool)
            title, name = "policy-movement sweep", "basis_sequence_lr"
        print(
            f"## {title}, carry-down-weighted, K = 32, B = 128, {steps} steps, seeds {first}-"
            f"{first + seeds - 1}, prompt pool {pool or task.num_prompts} ({machine()})\n"
            + markdown_table(rows)
        )
        payload = {
            "rows": rows,
            "pool": pool or task.num_prompts,
            "steps": steps,
            "seeds": list(range(first, first + seeds)),
            "per_seed": per_seed,
        }
        print(f"\nwrote {save(name, args.out, payload)}")
        return
    seeds = args.seeds or (1 if args.quick else 5)
    mse, early, final, spread, floor = {}, {}, {}, {}, {}
    for s in range(seeds):
        refs = {}
        for warm, cw in (("carry-down-weighted", 0.05), ("uniform", 1.0)):
            torch.manual_seed(s)
            m = addition_policy()
            supervised_warmup(m, task, 0.4, seed=s, carry_weight=cw)
            g = torch.Generator().manual_seed(100 + s)
            k32 = offline_counts(m, task, 32, g, "cpu")
            refs[warm] = (m, {32: k32})
            spread.setdefault(warm, []).append(float((k32.double() / 32).var()))
        for warm, K, e in RUNS:
            if only is not None and e not in only:
                continue
            m, ks = refs[warm]
            r = run_sequence_rl(
                m,
                task,
                e,
                steps=steps,
                batch_size=128,
                K=K,
                lr=1e-4,
                mc_rollouts=16,
                eval_every=steps,
                seed=1000 + s,
                offline=ks[K],
            )
            key = (warm, K, e)
            mse.setdefault(key, []).append(float(np.mean(r.value_mse)))
            early.setdefault(key, []).append(float(np.mean(r.value_mse[:10])))
            floor.setdefault(key, []).append(float(np.mean(r.floor_mse)))
            final.setdefault(key, []).append(r.mean_reward[-1])
            print(key, mse[key][-1], final[key][-1], flush=True)
    rows = []
    for key in mse:
        warm, K, e = key
        m, se = mean_se(mse[key])
        fm, fse = mean_se(final[key])
        ref = np.mean(mse.get((warm, 32, "reinforce++"), np.nan))
        rows.append(
            {
                "warm-up": warm,
                "K": K if e not in ("grpo", "reinforce++") else "-",
                "estimator": e + ("-8" if e == "grpo" else ""),
                "rollouts/step": 1024 if e == "grpo" else 128,
                "value MSE": m,
                "se": se,
                "% below REINFORCE++": 100 * (1 - m / ref),
                "MSE, first 10 steps": float(np.mean(early[key])),
                "batch-wide floor (oracle)": float(np.mean(floor[key])),
                "final success": fm,
                "final se": fse,
            }
        )
    cd = "carry-down-weighted"
    ratio = np.mean(final.get((cd, 32, "basis"), np.nan)) / np.mean(
        final.get((cd, 32, "grpo"), np.nan)
    )
    sp = {w: float(np.mean(v)) for w, v in spread.items()}
    print(
        f"## 2-digit addition, TinyLM, B = 128, {steps} steps, {seeds} seeds ({machine()})\n"
        f"variance of the reference success rate across prompts: {sp}\n" + markdown_table(rows)
    )
    print(f"\nBASIS (K = 32) final success / GRPO-8 final success = {ratio:.3f}")
    path = save(
        "basis_sequence",
        args.out,
        {"rows": rows, "ratio": ratio, "spread": sp, "steps": steps, "seeds": seeds},
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
