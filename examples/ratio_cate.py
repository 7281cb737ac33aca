"""Ratio treatment effects: Q-Learner vs S/T-ratio and DR learners, synthetic and real RCT.

A low-conversion synthetic RCT (known tau, complex baseline) and a real RCT shipped inside
`causaldata` (Thornton's HIV-results incentive experiment): log-tau MSE where the truth is
known, Qini coefficient and multiplicative calibration on held-out halves, Qini curves plotted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from probml.datasets.ratio import load_ratio_dataset, make_ratio_data
from probml.inference.metalearners import (
    DRRatioLearner,
    QDRLearner,
    QLearner,
    SRatioLearner,
    TRatioLearner,
)
from probml.metrics import (
    log_tau_mse,
    multiplicative_calibration_error,
    qini_coefficient,
    qini_curve,
)
from probml.registry import ExampleResult, script_main

DESCRIPTION = (
    "Ratio CATE: Q-Learner vs S/T and DR ratio learners (synthetic RCT + causaldata HIV RCT)"
)


def _learners():
    clf = LogisticRegression(C=1e4, max_iter=2000)
    return {
        "Q-Learner": QLearner(classifier=clf),
        "T-ratio": TRatioLearner(model=clf),
        "S-ratio": SRatioLearner(model=clf),
        "DR-ratio": DRRatioLearner(outcome_model=clf, propensity_model=clf),
        "Q-DR": QDRLearner(outcome_model=clf, propensity_model=clf, classifier=clf),
    }


def run(fast: bool, seed: int, device: torch.device, out_dir: Path) -> ExampleResult:
    n = 40_000 if fast else 200_000
    d = make_ratio_data(n, d=5, base_logit=-4.0, baseline="nonlinear", seed=seed)
    rng = np.random.default_rng(seed)
    half = rng.permutation(n) < n // 2
    rows, curves = [], {}
    for name, est in _learners().items():
        prop = 0.5 if name == "Q-Learner" else None
        est.fit(d.X[half], d.w[half], d.y[half], propensity=prop)
        tau = est.effect(d.X[~half])
        test = ~half
        rows.append(
            {
                "data": f"synthetic RCT ({100 * d.info['conversion_rate']:.1f}% conv.)",
                "learner": name,
                "log-tau MSE": log_tau_mse(tau, d.tau[test]),
                "Qini": qini_coefficient(tau, d.w[test], d.y[test]),
                "calib. error": multiplicative_calibration_error(
                    tau, d.w[test], d.y[test], n_bins=5
                ),
            }
        )
        curves["synthetic", name] = qini_curve(tau, d.w[test], d.y[test])
    try:
        real = load_ratio_dataset("thornton_hiv")
    except ImportError:
        real = None
    if real is not None:
        half = rng.permutation(len(real.y)) < len(real.y) // 2
        e0 = float(real.w[half].mean())
        for name, est in _learners().items():
            est.fit(
                real.X[half],
                real.w[half],
                real.y[half],
                propensity=e0 if name == "Q-Learner" else None,
            )
            tau = est.effect(real.X[~half])
            rows.append(
                {
                    "data": "thornton_hiv (RCT)",
                    "learner": name,
                    "log-tau MSE": float("nan"),
                    "Qini": qini_coefficient(tau, real.w[~half], real.y[~half]),
                    "calib. error": multiplicative_calibration_error(
                        tau,
                        real.w[~half],
                        real.y[~half],
                        propensity=np.full((~half).sum(), e0),
                        n_bins=4,
                    ),
                }
            )
            curves["thornton_hiv", name] = qini_curve(tau, real.w[~half], real.y[~half])
    fig = out_dir / "qini_curves.png"
    _plot(curves, fig)
    syn = {r["learner"]: r["log-tau MSE"] for r in rows if r["data"].startswith("synthetic")}
    best = min(syn, key=syn.get)
    return ExampleResult(
        headline=f"synthetic log-tau MSE: Q {syn['Q-Learner']:.3g}, T {syn['T-ratio']:.3g}, "
        f"S {syn['S-ratio']:.3g} (best: {best})",
        table=rows,
        figures=[fig],
    )


def _plot(curves, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({k[0] for k in curves})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.6), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        for (dname, learner), (frac, q) in curves.items():
            if dname == ds:
                ax.plot(frac, q, label=learner, lw=1.2)
        frac, q = next(v for k, v in curves.items() if k[0] == ds)
        ax.plot([0, 1], [0, q[-1]], "k:", label="random")
        ax.set_title(ds)
        ax.set_xlabel("fraction targeted")
        ax.set_ylabel("Qini (incremental outcomes)")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    script_main(run)
