"""PACE-GGM benchmark: private covariance error vs the Gaussian-mechanism baselines.

Synthetic sparse-precision Gaussians (chain + 10 random edges, marginal sds log-uniform in
[0.1, 10], n = 10 000, b_i = 3 sqrt(Sigma_ii)), d in {10, 30, 50}, rho in {0.01, 0.1, 1}
(zCDP; converted to (epsilon, 1e-5) and back), several seeds: relative Frobenius and spectral
error and KL(N(0, Sigma) || N(0, Sigma_hat)). The same on scikit-learn's bundled data (error
against the non-private centred covariance). Fit time at d = 50 and d = 100, as a ratio to
the whole-matrix Gaussian mechanism in the same run.

Run: `python benchmarks/pace_ggm.py` (10 seeds) or `--quick` (2 seeds, d in {10, 30});
`--rounds-only`: PACE-GGM's error for T in {d, 2d, 4d} rounds at d in {10, 50}.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parse_args, save, timed  # noqa: E402

from probml.datasets.gaussian import (  # noqa: E402
    COVARIANCE_DATASETS,
    load_covariance_dataset,
    make_sparse_precision,
    sample_gaussian,
)
from probml.inference.pace import (  # noqa: E402
    PACEGGM,
    GaussianMechanismCovariance,
    PerEntryGaussianCovariance,
)
from probml.inference.privacy import zcdp_to_dp  # noqa: E402
from probml.metrics import gaussian_kl, relative_error  # noqa: E402
from probml.results import markdown_table, mean_se  # noqa: E402

DELTA = 1e-5
METHODS = {
    "PACE-GGM": PACEGGM,
    # the spec's literal diagonal release (one noise level for all variances), for contrast
    "PACE-GGM (isotropic diag.)": partial(PACEGGM, diagonal="isotropic"),
    "Gaussian (whole)": GaussianMechanismCovariance,
    "Gaussian (per entry)": PerEntryGaussianCovariance,
}


def evaluate(X, bounds, truth, rho, seeds, center, with_kl=True):
    out = {}
    for name, cls in METHODS.items():
        fro, spec, kl = [], [], []
        for s in range(seeds):
            est = cls(
                epsilon=zcdp_to_dp(rho, DELTA),
                delta=DELTA,
                bounds=bounds,
                center=center,
                random_state=s,
            ).fit(X)
            fro.append(relative_error(est.covariance_, truth))
            spec.append(relative_error(est.covariance_, truth, ord=2))
            if with_kl:
                kl.append(gaussian_kl(truth, est.covariance_))
        out[name] = (mean_se(fro), mean_se(spec), mean_se(kl) if kl else (float("nan"),) * 2)
    return out


def rounds_sweep(seeds: int, quick: bool) -> list[dict]:
    """PACE-GGM's error against the number of rounds T in {d, 2d, 4d} (coverage vs noise per
    measured entry), beside the per-entry baseline, on the synthetic design."""
    rows = []
    for d in [10] if quick else [10, 50]:
        Sigma, _ = make_sparse_precision(d, seed=d)
        X = sample_gaussian(Sigma, 10_000, seed=d + 1).numpy()
        b = (3 * Sigma.diagonal().sqrt()).numpy()
        for rho in (0.1, 1.0):
            eps = zcdp_to_dp(rho, DELTA)
            arms = {f"PACE-GGM, T = {m}d": partial(PACEGGM, rounds=m * d) for m in (1, 2, 4)}
            arms["Gaussian (per entry)"] = PerEntryGaussianCovariance
            for name, cls in arms.items():
                ests = [cls(eps, DELTA, b, random_state=s).fit(X) for s in range(seeds)]
                fro = mean_se([relative_error(e.covariance_, Sigma) for e in ests])
                kl = mean_se([gaussian_kl(Sigma, e.covariance_) for e in ests])
                rows.append(
                    {"d": d, "rho": rho, "method": name, "rel. Frobenius": fro[0], "se": fro[1],
                     "KL": kl[0], "se ": kl[1]}
                )  # fmt: skip
    return rows


def main():
    args = parse_args(__doc__.splitlines()[0], flags=("--rounds-only",))
    seeds = args.seeds or (2 if args.quick else 10)
    if args.rounds_only:
        rows = rounds_sweep(seeds, args.quick)
        print("## rounds sweep (n = 10 000)\n" + markdown_table(rows))
        print(f"\nwrote {save('pace_ggm_rounds', args.out, {'rounds': rows, 'seeds': seeds})}")
        return
    dims = [10, 30] if args.quick else [10, 30, 50]
    rhos = [0.01, 0.1, 1.0]
    syn_rows, real_rows, time_rows = [], [], []
    for d in dims:
        Sigma, _ = make_sparse_precision(d, seed=d)
        X = sample_gaussian(Sigma, 10_000, seed=d + 1).numpy()
        b = (3 * Sigma.diagonal().sqrt()).numpy()
        for rho in rhos:
            for name, ((f, fse), (s2, sse), (k, kse)) in evaluate(
                X, b, Sigma, rho, seeds, False
            ).items():
                syn_rows.append(
                    {
                        "d": d,
                        "rho": rho,
                        "method": name,
                        "rel. Frobenius": f,
                        "se": fse,
                        "rel. spectral": s2,
                        "se ": sse,
                        "KL": k,
                        "se  ": kse,
                    }
                )
    for ds in COVARIANCE_DATASETS:
        Xr, br, _ = load_covariance_dataset(ds)
        truth = torch.as_tensor(np.cov(Xr.T, bias=True))
        for rho in rhos:
            res = evaluate(Xr, br, truth, rho, seeds, True, with_kl=False)
            for name, ((f, fse), (s2, sse), _) in res.items():
                real_rows.append(
                    {
                        "data": f"{ds} (n={len(Xr)}, d={Xr.shape[1]})",
                        "rho": rho,
                        "method": name,
                        "rel. Frobenius": f,
                        "se": fse,
                        "rel. spectral": s2,
                        "se ": sse,
                    }
                )
    for d in [30] if args.quick else [50, 100]:
        Sigma, _ = make_sparse_precision(d, seed=d)
        X = sample_gaussian(Sigma, 10_000, seed=d + 1).numpy()
        b = (3 * Sigma.diagonal().sqrt()).numpy()
        eps = zcdp_to_dp(0.1, DELTA)
        times = {
            name: np.median(
                [
                    timed(cls(epsilon=eps, delta=DELTA, bounds=b, random_state=s).fit, X)[1]
                    for s in range(3)
                ]
            )
            for name, cls in METHODS.items()
            if "isotropic" not in name
        }
        for name, t in times.items():
            time_rows.append(
                {
                    "d": d,
                    "method": name,
                    "fit seconds (median of 3)": t,
                    "ratio to whole-matrix Gaussian": t / times["Gaussian (whole)"],
                }
            )
    print("## synthetic sparse-precision Gaussians (n = 10 000)\n" + markdown_table(syn_rows))
    print(
        "\n## scikit-learn bundled data (centred; error vs non-private covariance)\n"
        + markdown_table(real_rows)
    )
    print("\n## fit time (rho = 0.1, same run)\n" + markdown_table(time_rows))
    path = save(
        "pace_ggm",
        args.out,
        {"synthetic": syn_rows, "real": real_rows, "timing": time_rows, "seeds": seeds},
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
