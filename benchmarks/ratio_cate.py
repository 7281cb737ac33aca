"""Ratio CATE benchmark: the paper's claims at small scale, with standard errors.

1. RCT at ~1% conversion (spec's linear baseline and a complex baseline): log-tau MSE of the
   Q-Learner vs S/T-ratio learners (and the DR learners).
2. Confounded observational data (log-linear and complex baselines, and a complex baseline
   with a non-linear propensity, where every logistic nuisance model is wrong): DR-ratio and
   Q-DR vs plug-in learners.
3. Real data shipped in packages: Qini coefficient and multiplicative calibration on
   held-out halves.
4. Sweep of the baseline's non-linearity at a fixed ~0.9% conversion rate (``--sweep-only``),
   at n and 10 n training units: how wrong the logistic outcome models of the S/T learners
   must be, and how large the sample, before the Q-Learner, which never models mu_0, beats
   them; paired per-seed differences.
5. Fit time of each learner as a ratio to the Q-Learner's, same run; EconML's T/S/DR learners
   and CausalML's T/S classifiers side by side when installed
   (`.venv/bin/pip install econml causalml`; not dependencies).

Run: `python benchmarks/ratio_cate.py` (10 seeds) or `--quick` (3 seeds, smaller n);
`--both-only` runs the confounded-both scenario alone, `--sweep-only` the strength sweep alone,
`--real-only` the real-data part alone.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args, save, timed  # noqa: E402

from probml.datasets.ratio import load_ratio_dataset, make_ratio_data  # noqa: E402
from probml.inference.metalearners import (  # noqa: E402
    DRRatioLearner,
    QDRLearner,
    QLearner,
    SRatioLearner,
    TRatioLearner,
)
from probml.metrics import (  # noqa: E402
    log_tau_mse,
    multiplicative_calibration_error,
    qini_coefficient,
)
from probml.results import markdown_table, mean_se  # noqa: E402


def learners(known_e: float | None):
    clf = LogisticRegression(C=1e4, max_iter=2000)
    return {
        "Q-Learner": (QLearner(classifier=clf), known_e),
        "S-ratio": (SRatioLearner(model=clf), None),
        "T-ratio": (TRatioLearner(model=clf), None),
        "DR-ratio": (DRRatioLearner(outcome_model=clf, propensity_model=clf), None),
        "Q-DR": (QDRLearner(outcome_model=clf, propensity_model=clf, classifier=clf), None),
    }


def econml_learners():
    try:
        from econml.dr import DRLearner
        from econml.metalearners import SLearner, TLearner
    except ImportError:
        return {}
    clf = LogisticRegression(C=1e4, max_iter=2000)
    return {
        "EconML T (ratio)": TLearner(models=clf),
        "EconML S (ratio)": SLearner(overall_model=clf),
        "EconML DRLearner (diff.)": DRLearner(
            model_propensity=clf, model_regression=clf, discrete_outcome=True
        ),
    }


def causalml_learners():
    try:
        from causalml.inference.meta import BaseSClassifier, BaseTClassifier
    except ImportError:
        return {}
    clf = LogisticRegression(C=1e4, max_iter=2000)
    return {
        "CausalML T (ratio)": BaseTClassifier(learner=clf),
        "CausalML S (ratio)": BaseSClassifier(learner=clf),
    }


def causalml_ratio(est, X):
    """CausalML's meta-learners return per-arm outcome predictions as components."""
    _, yc, yt = est.predict(X, return_components=True, verbose=False)
    key = next(iter(yt))
    return np.maximum(yt[key], 1e-6) / np.maximum(yc[key], 1e-6)


def econml_ratio(name, est, X):
    """EconML's T/S learners predict differences; their fitted outcome models give the ratio."""
    if name.startswith("EconML T"):
        mu0 = est.models[0].predict_proba(X)[:, 1]
        mu1 = est.models[1].predict_proba(X)[:, 1]
    elif name.startswith("EconML S"):
        Z0 = np.column_stack([X, np.ones(len(X)), np.zeros(len(X))])
        Z1 = np.column_stack([X, np.zeros(len(X)), np.ones(len(X))])
        mu0 = est.overall_model.predict_proba(Z0)[:, 1]
        mu1 = est.overall_model.predict_proba(Z1)[:, 1]
    else:
        return None
    return np.maximum(mu1, 1e-6) / np.maximum(mu0, 1e-6)


def synthetic(scenario: str, seeds: int, n: int, rows: list, timings: dict):
    if scenario == "rct-linear":
        kw = dict(base_logit=-5.0, baseline="linear")
    elif scenario == "rct-complex":
        kw = dict(base_logit=-6.0, baseline="nonlinear")
    elif scenario == "confounded":
        kw = dict(base_logit=-3.0, baseline="linear", confounding=1.5)
    elif scenario == "confounded-complex":
        # outcome models misspecified, propensity model right
        kw = dict(base_logit=-3.0, baseline="nonlinear", confounding=1.5)
    else:  # confounded-both: outcome and propensity models both misspecified
        kw = dict(
            base_logit=-3.0, baseline="nonlinear", confounding=1.5, propensity_shape="nonlinear"
        )
    mse: dict[str, list[float]] = {}
    rate = []
    for seed in range(seeds):
        d = make_ratio_data(2 * n, d=5, seed=seed, **kw)
        rate.append(d.info["conversion_rate"])
        tr, te = slice(0, n), slice(n, 2 * n)
        known = 0.5 if "rct" in scenario else None
        for name, (est, prop) in learners(known).items():
            _, t = timed(est.fit, d.X[tr], d.w[tr], d.y[tr], propensity=prop)
            mse.setdefault(name, []).append(log_tau_mse(est.effect(d.X[te]), d.tau[te]))
            timings.setdefault(name, []).append(t)
        for name, est in causalml_learners().items():
            _, t = timed(est.fit, d.X[tr], treatment=d.w[tr], y=d.y[tr])
            timings.setdefault(name, []).append(t)
            mse.setdefault(name, []).append(log_tau_mse(causalml_ratio(est, d.X[te]), d.tau[te]))
        for name, est in econml_learners().items():
            _, t = timed(est.fit, d.y[tr], d.w[tr], X=d.X[tr])
            timings.setdefault(name, []).append(t)
            tau = econml_ratio(name, est, d.X[te])
            if tau is not None:
                mse.setdefault(name, []).append(log_tau_mse(tau, d.tau[te]))
    mse["Q-DR minus Q-Learner (paired)"] = list(np.subtract(mse["Q-DR"], mse["Q-Learner"]))
    mse["T-ratio minus Q-Learner (paired)"] = list(np.subtract(mse["T-ratio"], mse["Q-Learner"]))
    for name, v in mse.items():
        m, se = mean_se(v)
        rows.append(
            {
                "scenario": scenario,
                "conv. rate": float(np.mean(rate)),
                "learner": name,
                "log-tau MSE": m,
                "se": se,
                "n_train": n,
                "seeds": seeds,
            }
        )


def calibrate_base_logit(target: float, strength: float, lo: float = -20.0, hi: float = 0.0):
    """``b_0`` whose expected conversion rate (e_0 = 0.5, fixed covariate draw) is ``target``."""
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        d = make_ratio_data(
            200_000, d=5, base_logit=mid, baseline="nonlinear", baseline_strength=strength, seed=0
        )
        rate = float(np.mean(0.5 * d.mu0 + 0.5 * d.mu1))
        lo, hi = (mid, hi) if rate < target else (lo, mid)
    return 0.5 * (lo + hi)


def strength_sweep(seeds: int, n: int, rows: list, target: float = 0.009):
    """Q-Learner vs S/T ratio learners as the control logit's non-linear term grows
    (``baseline_strength`` s), the conversion rate held at ``target``; RCT, known e_0; at
    ``n`` and ``10 n`` training units (evaluated on ``n`` held-out units)."""
    for n_train, strength in itertools.product([n, 10 * n], [0.0, 0.5, 1.0, 2.0, 3.0]):
        b0 = calibrate_base_logit(target, strength)
        mse: dict[str, list[float]] = {}
        rate = []
        for seed in range(seeds):
            d = make_ratio_data(
                n_train + n, d=5, base_logit=b0, baseline="nonlinear",
                baseline_strength=strength, seed=seed,
            )  # fmt: skip
            rate.append(d.info["conversion_rate"])
            tr, te = slice(0, n_train), slice(n_train, n_train + n)
            fits = learners(0.5)
            for name in ("Q-Learner", "S-ratio", "T-ratio"):
                est, prop = fits[name]
                est.fit(d.X[tr], d.w[tr], d.y[tr], propensity=prop)
                mse.setdefault(name, []).append(log_tau_mse(est.effect(d.X[te]), d.tau[te]))
        mse["T-ratio minus Q-Learner (paired)"] = list(
            np.subtract(mse["T-ratio"], mse["Q-Learner"])
        )
        for name, v in mse.items():
            m, se = mean_se(v)
            rows.append(
                {
                    "n_train": n_train,
                    "strength s": strength,
                    "b_0": round(b0, 3),
                    "conv. rate": float(np.mean(rate)),
                    "learner": name,
                    "log-tau MSE": m,
                    "se": se,
                    "seeds": seeds,
                }
            )


def real(seeds: int, rows: list):
    for ds in ["thornton_hiv", "jtrain2", "jtrain3", "nhefs"]:
        try:
            d = load_ratio_dataset(ds)
        except ImportError:
            print(f"skip {ds}: install the data extra")
            continue
        design = d.info["design"]
        res: dict[str, dict[str, list[float]]] = {}
        for seed in range(seeds):
            half = np.random.default_rng(seed).permutation(len(d.y)) < len(d.y) // 2
            e0 = float(d.w[half].mean()) if design == "rct" else None
            for name, (est, prop) in learners(e0).items():
                est.fit(d.X[half], d.w[half], d.y[half], propensity=prop)
                tau = est.effect(d.X[~half])
                r = res.setdefault(name, {"qini": [], "calib": []})
                r["qini"].append(qini_coefficient(tau, d.w[~half], d.y[~half]))
                try:
                    r["calib"].append(
                        multiplicative_calibration_error(tau, d.w[~half], d.y[~half], n_bins=4)
                    )
                except ValueError:
                    pass
        for name, r in res.items():
            q, qse = mean_se(r["qini"])
            c = float(np.mean(r["calib"])) if r["calib"] else float("nan")
            rows.append(
                {
                    "dataset": f"{ds} ({design})",
                    "learner": name,
                    "Qini": q,
                    "se": qse,
                    "calib. error (mean)": c,
                }
            )


def main():
    args = parse_args(__doc__.splitlines()[0], flags=("--both-only", "--sweep-only", "--real-only"))
    seeds = args.seeds or (3 if args.quick else 10)
    n = 20_000 if args.quick else 100_000
    syn_rows, real_rows, timings = [], [], {}
    if args.both_only:
        synthetic("confounded-both", seeds, n, syn_rows, timings)
        print("## confounded-both (log-tau MSE on a held-out half)\n" + markdown_table(syn_rows))
        path = save("ratio_cate_both", args.out, {"synthetic": syn_rows, "seeds": seeds, "n": n})
        print(f"\nwrote {path}")
        return
    if args.real_only:
        real(seeds, real_rows)
        print("## real data (held-out halves)\n" + markdown_table(real_rows))
        path = save("ratio_cate_real", args.out, {"real": real_rows, "seeds": seeds})
        print(f"\nwrote {path}")
        return
    sweep_rows: list = []
    if args.sweep_only:
        strength_sweep(seeds, n, sweep_rows)
        print("## baseline-strength sweep (RCT, ~0.9% conversion)\n" + markdown_table(sweep_rows))
        path = save("ratio_cate_sweep", args.out, {"sweep": sweep_rows, "seeds": seeds, "n": n})
        print(f"\nwrote {path}")
        return
    for sc in ["rct-linear", "rct-complex", "confounded", "confounded-complex", "confounded-both"]:
        synthetic(sc, seeds, n, syn_rows, timings)
    strength_sweep(seeds, n, sweep_rows)
    real(seeds, real_rows)
    base = float(np.mean(timings["Q-Learner"]))
    time_rows = [
        {
            "learner": k,
            "fit seconds (mean)": float(np.mean(v)),
            "ratio to Q-Learner": float(np.mean(v)) / base,
        }
        for k, v in timings.items()
    ]
    print("## synthetic (log-tau MSE on a held-out half)\n" + markdown_table(syn_rows))
    print("\n## baseline-strength sweep (RCT, ~0.9% conversion)\n" + markdown_table(sweep_rows))
    print("\n## real data (held-out halves)\n" + markdown_table(real_rows))
    print("\n## fit time (same run)\n" + markdown_table(time_rows))
    path = save(
        "ratio_cate",
        args.out,
        {
            "synthetic": syn_rows,
            "sweep": sweep_rows,
            "real": real_rows,
            "timing": time_rows,
            "seeds": seeds,
            "n": n,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
