"""DRUM on real data: WHAS500 (scikit-survival's bundled file), source = patients under 70,
target = 70 and over, acute complication (congestive heart failure) missing in the target.

Outcome: death within one year. Shared X: age, gender, heart rate, blood pressures, BMI.
All models are logistic-linear (224 source rows, 22 deaths). Metrics on the target's held-out
labels: AUC, Brier, calibration slope and intercept, ECE;
mean and standard error over training seeds (the split is fixed). Needs the `survival` extra
(`pip install -e '.[survival]'`).

Run: `python benchmarks/drum_real.py` (5 seeds) or `--quick` (2 seeds).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, parse_args, save, skip  # noqa: E402

from probml.datasets.cardiac import load_whas500_transfer  # noqa: E402
from probml.inference.minimax import DRUM, ERMOnX, ImputationBaseline  # noqa: E402
from probml.metrics import calibration_slope_intercept, expected_calibration_error  # noqa: E402
from probml.results import markdown_table, mean_se_rows  # noqa: E402


def main():
    args = parse_args(__doc__.splitlines()[0])
    seeds = args.seeds or (2 if args.quick else 5)
    try:
        d = load_whas500_transfer()
    except ImportError as exc:  # the optional survival extra is not installed
        skip(str(exc))
    Xs, As, ys, Xt, yt = (d[k] for k in ("X_source", "A_source", "y_source", "X_target",
                                          "y_target"))  # fmt: skip
    groups: dict[str, dict[str, list]] = {}
    for seed in range(seeds):
        # 224 source rows with 22 deaths: logistic-linear models throughout (an MLP overfits)
        kw = dict(seed=seed, verbose=False, num_iters=300, outcome_model="linear",
                  predictor="linear")  # fmt: skip
        methods = {
            "ERM on X": ERMOnX(seed=seed, linear=True),
            "imputation": ImputationBaseline(outcome_model="linear", seed=seed),
            "plug-in (rho=0)": DRUM(rho=0.0, **kw),
            "DRUM KL rho=0.05": DRUM(rho=0.05, **kw),
            "DRUM KL rho=0.2": DRUM(rho=0.2, **kw),
        }
        for name, est in methods.items():
            est.fit(Xs, As, ys, Xt)
            p = est.predict_proba(Xt)[:, 1]
            y = yt.numpy()
            slope, intercept = calibration_slope_intercept(p, y)
            g = groups.setdefault(name, {})
            for k, v in {
                "AUC": roc_auc_score(y, p),
                "Brier": float(np.mean((p - y) ** 2)),
                "cal. slope": slope,
                "cal. intercept": intercept,
                "ECE": expected_calibration_error(p, y),
            }.items():
                g.setdefault(k, []).append(v)
    rows = mean_se_rows(groups, "method")
    print(f"## WHAS500: source age < 70 (n={len(ys)}, 1-year mortality {float(ys.mean()):.3f}),"
          f" target age >= 70 (n={len(yt)}, {float(yt.mean()):.3f}); {seeds} seeds\n")  # fmt: skip
    print(markdown_table(rows))
    path = save("drum_real", args.out, {"machine": machine(), "rows": rows})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
