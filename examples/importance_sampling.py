"""Importance sampling with resampling on conjugate Bayesian linear regression vs the exact posterior.

The plumbing example: a Pyro model, the prior as proposal, vectorised importance weights, the
particle toolkit's ESS and systematic resampling, and the results writer. The posterior-mean
error of the weighted and of the resampled particles falls like 1/sqrt(ESS).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from probml.inference.importance import importance_sample
from probml.models.linear import (
    bayesian_linear_regression,
    linear_regression_posterior,
    simulate_linear_data,
)
from probml.registry import ExampleResult, script_main
from probml.results import mean_se
from probml.utils import derive_seed

DESCRIPTION = "Importance sampling + resampling on Bayesian linear regression vs exact posterior"


def run(fast: bool, seed: int, device: torch.device, out_dir: Path) -> ExampleResult:
    gen = torch.Generator().manual_seed(seed)
    X, y, _ = simulate_linear_data(n=12, d=3, generator=gen)
    X, y = X.to(device), y.to(device)
    mean, cov = linear_regression_posterior(X, y)
    sizes = [100, 1000, 10000] if fast else [100, 1000, 10000, 100000]
    reps = 5 if fast else 20
    rows = []
    for n in sizes:
        err_w, err_r, err_c, ess = [], [], [], []
        for _ in range(reps):
            ws = importance_sample(bayesian_linear_regression, None, X, y, num_particles=n)
            err_w.append(float((ws.mean("w").double() - mean).norm()))
            err_c.append(float((ws.covariance("w").double() - cov).norm() / cov.norm()))
            draws = ws.resample(
                scheme="systematic", generator=derive_seed(seed, 7919 * len(ess) + n)
            )["w"]
            err_r.append(float((draws.double().mean(0) - mean).norm()))
            ess.append(ws.ess)
        m_w, se_w = mean_se(err_w)
        rows.append(
            {
                "particles": n,
                "ESS": float(np.mean(ess)),
                "mean err (weighted)": m_w,
                "se": se_w,
                "mean err (resampled)": float(np.mean(err_r)),
                "rel cov err": float(np.mean(err_c)),
            }
        )
    fig_path = out_dir / "is_error.png"
    _plot(rows, fig_path)
    ratio = rows[0]["mean err (weighted)"] / rows[-1]["mean err (weighted)"]
    return ExampleResult(
        headline=f"mean error {rows[0]['mean err (weighted)']:.3g} -> "
        f"{rows[-1]['mean err (weighted)']:.3g} ({ratio:.1f}x lower)",
        table=rows,
        figures=[fig_path],
    )


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = np.array([r["particles"] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.loglog(n, [r["mean err (weighted)"] for r in rows], "o-", label="weighted mean")
    ax.loglog(
        n, [r["mean err (resampled)"] for r in rows], "s--", label="after systematic resampling"
    )
    ax.loglog(n, [r["rel cov err"] for r in rows], "^-", label="relative covariance error")
    ref = rows[0]["mean err (weighted)"] * np.sqrt(n[0] / n)
    ax.loglog(n, ref, "k:", label=r"$\propto N^{-1/2}$")
    ax.set_xlabel("particles N")
    ax.set_ylabel("error vs exact posterior")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    script_main(run)
