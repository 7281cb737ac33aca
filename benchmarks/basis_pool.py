"""Pool the per-seed JSON of several `basis_sequence.py` sweep or side-by-side runs.

The sequence sweeps run in blocks of seeds (`--first-seed`, `--seeds`), often two blocks side
by side; each writes the per-seed value MSE of every estimator (`per_seed`, keyed
``"lr|estimator"`` or ``"lr|driver|estimator"``) and its seeds. This script pools blocks by
seed and prints, per key: the mean value MSE and its standard error over seeds, the paired
difference to GRPO-8 (on the same seeds, same trajectory driver), its standard error, and in
how many seeds the estimator is below GRPO-8; for sweep files also the seed-weighted mean of
the blocks' batch-wide floors. A seed found in two files must carry the same value (a re-run
reproduces it exactly) or the script stops.

`--log-ratio` adds the paired log ratio ``log(MSE / MSE_GRPO-8)`` per seed, its mean and standard
error over seeds: a scale-free comparison that weighs every seed equally (the seeds' value
MSEs differ by a factor of several between reference policies).

`--minus C.json,D.json` pools a second set on the same seeds and prints, per key, the paired
difference between the two sets of each estimator's difference to GRPO-8 (e.g. the effect of
`--pool 819` against the full pool). `--lr 1e-4` keeps one step size.

`--plot FILE.png` draws each estimator's per-seed log ratios to GRPO-8 (one dot per seed, the
mean with two standard errors): whether an ordering holds in the mean or in every seed.

Run: `python benchmarks/basis_pool.py A.json B.json [--minus C.json,D.json] [--lr 1e-4]
[--log-ratio] [--plot FILE.png]`
(the JSON files are those `basis_sequence.py --out DIR` writes).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from probml.results import markdown_table, mean_se

FLOOR = "batch-wide floor (oracle)"


def _seeds(payload: dict, path: str) -> list[int]:
    seeds = payload.get("seeds")
    if isinstance(seeds, int):  # files written before --first-seed existed: seeds 0 .. n-1
        return list(range(seeds))
    if not isinstance(seeds, list):
        raise SystemExit(f"{path}: no 'seeds' entry; not a basis_sequence.py sweep file")
    return [int(s) for s in seeds]


def load(paths: list[str], lr: float | None = None):
    """``values[key][seed]`` and ``floors[key] = [(n_seeds, floor), ...]`` over ``paths``;
    keys are ``(lr, *names)`` with the step size as a float."""
    values: dict[tuple, dict[int, float]] = {}
    floors: dict[tuple, list[tuple[int, float]]] = {}
    for path in paths:
        try:
            payload = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SystemExit(f"{path}: cannot read ({err})") from None
        if "per_seed" not in payload:
            raise SystemExit(f"{path}: no 'per_seed' entry; not a basis_sequence.py sweep file")
        seeds = _seeds(payload, path)
        for key, vals in payload["per_seed"].items():
            parts = key.split("|")
            k = (float(parts[0]), *parts[1:])
            if len(vals) != len(seeds):
                raise SystemExit(f"{path}: {key} has {len(vals)} values for {len(seeds)} seeds")
            if lr is not None and k[0] != lr:
                continue
            got = values.setdefault(k, {})
            for s, v in zip(seeds, vals):
                if s in got and got[s] != v:
                    raise SystemExit(f"{key}, seed {s}: {got[s]} and {v} in different files")
                got[s] = float(v)
        for row in payload.get("rows", []):
            if FLOOR in row and "trajectory of" not in row:
                est = row["estimator"].removesuffix("-8")
                k = (float(row["lr"]), est)
                if lr is None or k[0] == lr:
                    floors.setdefault(k, []).append((len(seeds), float(row[FLOOR])))
    if not values:
        raise SystemExit("no per-seed values matched")
    return values, floors


def _grpo(key: tuple) -> tuple:
    return (*key[:-1], "grpo")


def _paired(values: dict, key: tuple, log: bool = False) -> dict[int, float]:
    """``value - GRPO-8`` per seed (``log``: ``log(value / GRPO-8)``, value MSEs must be
    > 0), on the seeds both have."""
    g = values.get(_grpo(key), {})
    out = {}
    for s, v in sorted(values[key].items()):
        if s not in g:
            continue
        if not log:
            out[s] = v - g[s]
        elif v <= 0 or g[s] <= 0:
            key_name = "|".join(map(str, key))
            raise SystemExit(f"{key_name}, seed {s}: a value MSE <= 0 has no log ratio")
        else:
            out[s] = float(np.log(v / g[s]))
    return out


def pooled_rows(values: dict, floors: dict, log_ratio: bool = False) -> list[dict]:
    """One row per key; with ``log_ratio`` also the paired log ratio to GRPO-8."""
    rows = []
    for key in sorted(values, key=lambda k: (k[0], *k[1:-1])):
        v = np.array(list(values[key].values()))
        m, se = mean_se(v)
        d = np.array(list(_paired(values, key).values()))
        is_grpo = key[-1] == "grpo"
        row = {"lr": key[0]}
        if len(key) == 3:
            row["trajectory of"] = key[1] + ("-8" if key[1] == "grpo" else "")
        row |= {
            "estimator": key[-1] + ("-8" if is_grpo else ""),
            "seeds": len(v),
            "value MSE": m,
            "se": se,
        }
        if is_grpo or len(d) < 2:
            row |= {"minus GRPO-8 (paired)": "-", "paired se": "-", "seeds below GRPO-8": "-"}
        else:
            dm, dse = mean_se(d)
            row |= {
                "minus GRPO-8 (paired)": dm,
                "paired se": dse,
                "seeds below GRPO-8": f"{int((d < 0).sum())}/{len(d)}",
            }
        if log_ratio:
            lr_ = [] if is_grpo else list(_paired(values, key, log=True).values())
            if len(lr_) < 2:
                row |= {"log ratio to GRPO-8 (paired)": "-", "log ratio se": "-"}
            else:
                lm, lse = mean_se(lr_)
                row |= {"log ratio to GRPO-8 (paired)": lm, "log ratio se": lse}
        if key in floors:
            n, f = np.array(floors[key]).T
            row[FLOOR] = float((n * f).sum() / n.sum())
        rows.append(row)
    return rows


def plot_log_ratios(values: dict, path: str) -> None:
    """Per-seed log ratios to GRPO-8, one column per key (GRPO-8 itself left out), with the
    mean and two standard errors; saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in sorted(values, key=lambda k: (k[0], *k[1:])) if k[-1] != "grpo"]
    series = [(k, np.array(list(_paired(values, k, log=True).values()))) for k in keys]
    series = [(k, x) for k, x in series if len(x) >= 2]
    if not series:
        raise SystemExit("--plot: no estimator shares two or more seeds with GRPO-8")
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(series), 4))
    jitter = np.random.default_rng(0)  # fixed: the figure is the same on every run
    for i, (_, x) in enumerate(series):
        ax.scatter(i + jitter.uniform(-0.25, 0.25, len(x)), x, s=9, alpha=0.5, color="C0")
        m, se = mean_se(x)
        ax.errorbar(i, m, yerr=2 * se, fmt="s", color="C3", capsize=6, ms=6)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xticks(range(len(series)))
    labels = [f"{'|'.join(k[1:])}\nlr {k[0]:g}, {len(x)} seeds" for k, x in series]
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("log(value MSE / GRPO-8's), per seed")
    ax.set_title("paired log ratio to GRPO-8 (red: mean +- 2 SE)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def contrast_rows(a: dict, b: dict) -> list[dict]:
    """Per key: set A minus set B of the estimator's paired difference to GRPO-8."""
    rows = []
    for key in sorted((k for k in a if k in b), key=lambda k: (k[0], *k[1:-1])):
        if key[-1] == "grpo":
            continue
        da, db = _paired(a, key), _paired(b, key)
        common = sorted(set(da) & set(db))
        if len(common) < 2:
            continue
        diff = np.array([da[s] - db[s] for s in common])
        m, se = mean_se(diff)
        rows.append(
            {"lr": key[0], "estimator": "|".join(key[1:]), "seeds": len(common),
             "(A - GRPO-8) - (B - GRPO-8)": m, "paired se": se}
        )  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help="per-seed JSON files of basis_sequence.py")
    p.add_argument("--minus", default=None, help="comma-separated files of a second set (B)")
    p.add_argument("--lr", type=float, default=None, help="keep one step size")
    p.add_argument(
        "--log-ratio", action="store_true", help="add the paired log ratio to GRPO-8's value MSE"
    )
    p.add_argument("--plot", default=None, help="PNG file for the per-seed log ratios")
    args = p.parse_args(argv)
    values, floors = load(args.files, args.lr)
    print(markdown_table(pooled_rows(values, floors, args.log_ratio)))
    if args.minus:
        other, _ = load(args.minus.split(","), args.lr)
        print("\nA = the files, B = --minus, paired over the seeds both have:\n")
        print(markdown_table(contrast_rows(values, other)))
    if args.plot:
        plot_log_ratios(values, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
