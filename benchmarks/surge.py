"""SURGE benchmark: consistency on the exact linear-Gaussian case; Lorenz-63/96 accuracy; speed.

1. Linear-Gaussian, d = 10, half the coordinates observed, R = 0.25^2 I, K = 50 levels of the
   exact-score surrogate, 20 replicates of one assimilation step: error of the posterior mean
   in posterior-sd units (Mahalanobis, against the surrogate's exact Kalman posterior) and the
   variance ratio, for SURGE (inflated and DPS twists), guided-only and bootstrap sampling
   through the surrogate, at N = 1000 and 4000.
2. Lorenz-63 (atan observations) and Lorenz-96 (d = 20, every other coordinate): a score
   network trained on simulated pairs; 32 trajectories x 15 steps; RMSE and CRPS of SURGE,
   guided-only, bootstrap PF with the surrogate and with the true model, EnKF (N = 100 and
   equal N), and Pyro's SMCFilter as the peer bootstrap PF (Lorenz-63, true model).
3. Speed: particles x diffusion levels per second of SURGE, the share spent in the score
   network, and score-network training time.

Run: `python benchmarks/surge.py` or `--quick` (fewer trajectories and replicates).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, parse_args, save, timed  # noqa: E402

from probml.inference.smc import (  # noqa: E402
    SURGE,
    BootstrapPF,
    EnKF,
    GuidedDiffusionFilter,
    evaluate_filter,
    kalman_filter,
)
from probml.metrics import crps_ensemble  # noqa: E402
from probml.models.diffusion import LinearGaussianDiffusion, train_transition_model  # noqa: E402
from probml.models.dynamics import (  # noqa: E402
    LinearGaussianSSM,
    Lorenz63,
    Lorenz96,
    simulate_transition_pairs,
)
from probml.results import markdown_table, mean_se  # noqa: E402

K = 50


def linear_gaussian(reps: int) -> list[dict]:
    d = 10
    ssm = LinearGaussianSSM.random(dim=d, obs_every=2, obs_noise=0.25)
    tr = LinearGaussianDiffusion(ssm.A, ssm.Q)
    Ak, Qk = tr.effective_transition(K)
    xs, ys = ssm.simulate(1, reps, generator=1)
    m0, P0 = xs[0], 0.25 * torch.eye(d, dtype=torch.float64)
    H = ssm.observation.H
    ref = [kalman_filter(Ak, Qk, H, 0.25**2, ys[:, b], m0[b], P0) for b in range(reps)]
    true = [kalman_filter(ssm.A, ssm.Q, H, 0.25**2, ys[:, b], m0[b], P0) for b in range(reps)]
    m_ref = torch.stack([r[0][0] for r in ref])
    P_ref = ref[0][1][0]
    Li = torch.linalg.inv(torch.linalg.cholesky(P_ref))

    def maha(m):
        return ((m - m_ref) @ Li.T).norm(dim=-1).numpy()

    m_true = torch.stack([r[0][0] for r in true])
    rows = [
        {
            "method": "true-model Kalman (K=50 discretisation gap)",
            "N": "-",
            "error (sd units)": float(maha(m_true).mean()),
            "se": float(maha(m_true).std() / np.sqrt(reps)),
            "variance ratio": float(true[0][1][0].diagonal().sum() / P_ref.diagonal().sum()),
            "min ESS / N": float("nan"),
        }
    ]
    methods = {
        "SURGE (inflated twist)": lambda n: SURGE(tr, ssm.observation, n, K, seed=0),
        "SURGE (DPS twist)": lambda n: SURGE(tr, ssm.observation, n, K, twist="dps", seed=0),
        "guided only": lambda n: GuidedDiffusionFilter(tr, ssm.observation, n, K, seed=0),
        "bootstrap through surrogate": lambda n: BootstrapPF(tr, ssm.observation, n, seed=0),
    }
    for n in (1000, 4000):
        g = torch.Generator().manual_seed(n)
        init = m0[:, None] + 0.5 * torch.randn(reps, n, d, dtype=torch.float64, generator=g)
        for name, make in methods.items():
            f = make(n)
            f.verbose = False
            res = f.filter(ys, particles=init)
            e = maha(res.means[0])
            m, se = mean_se(e)
            rows.append(
                {
                    "method": name,
                    "N": n,
                    "error (sd units)": m,
                    "se": se,
                    "variance ratio": float(
                        (res.stds[0] ** 2).sum(-1).mean() / P_ref.diagonal().sum()
                    ),
                    "min ESS / N": float(res.diffusion_ess.min()) / n
                    if res.diffusion_ess is not None
                    else float("nan"),
                }
            )
    return rows


class _TimedNet(torch.nn.Module):
    """Wraps a noise predictor to accumulate its forward wall-clock time."""

    def __init__(self, net):
        super().__init__()
        self.inner = net
        self.seconds = 0.0

    def forward(self, *a):
        t0 = time.perf_counter()
        out = self.inner(*a)
        self.seconds += time.perf_counter() - t0
        return out


def pyro_smcfilter_rmse(ssm, xs, ys, init) -> tuple[float, float, float]:
    """Pyro's SMCFilter (bootstrap proposal, true model), one trajectory at a time."""
    from pyro.infer import SMCFilter

    L = ssm.process_scale_tril

    class Model:
        def init(self, state, initial):
            self.t = 0
            state["x"] = pyro.sample("x_init", dist.Delta(initial, event_dim=1))

        def step(self, state, y=None):
            self.t += 1
            state["x"] = pyro.sample(
                f"x_{self.t}", dist.MultivariateNormal(ssm.drift(state["x"]), scale_tril=L)
            )
            pyro.sample(f"y_{self.t}", ssm.observation.pyro_dist(state["x"]), obs=y)

    class Guide:  # the bootstrap proposal: the prior transition; guides only read state
        def init(self, state, initial):
            self.t = 0
            pyro.sample("x_init", dist.Delta(initial, event_dim=1))

        def step(self, state, y=None):
            self.t += 1
            pyro.sample(f"x_{self.t}", dist.MultivariateNormal(ssm.drift(state["x"]), scale_tril=L))

    B, N = init.shape[:2]
    se, crps = [], []
    t0 = time.perf_counter()
    for b in range(B):
        pyro.set_rng_seed(b)
        smc = SMCFilter(Model(), Guide(), num_particles=N, max_plate_nesting=0)
        smc.init(initial=init[b])
        for t in range(ys.shape[0]):
            smc.step(ys[t, b])
            emp = smc.get_empirical()["x"]
            se.append(float((emp.mean - xs[t + 1, b]).pow(2).mean()))
            crps.append(
                float(crps_ensemble(smc.state["x"], xs[t + 1, b], smc.state._log_weights).mean())
            )
    return float(np.sqrt(np.mean(se))), float(np.mean(crps)), time.perf_counter() - t0


def lorenz(name: str, ssm, B: int, T: int, N: int, iters: int, hidden: int) -> tuple:
    xp, xn = simulate_transition_pairs(ssm, 4000, generator=0)
    (transition, info), train_s = timed(
        train_transition_model, xp, xn, hidden=hidden, num_iters=iters, verbose=False
    )
    x0 = ssm.attractor_states(B, generator=11)
    xs, ys = ssm.simulate(T, B, x0=x0, generator=12)
    g = torch.Generator().manual_seed(13)
    d = ssm.dim

    def init(n):
        return x0[:, None] + torch.randn(B, n, d, generator=g)

    obs = ssm.observation
    timed_net = _TimedNet(transition.net)
    transition.net = timed_net
    filters = {
        "SURGE": (SURGE(transition, obs, N, K, seed=0, verbose=False), N),
        "guided only": (GuidedDiffusionFilter(transition, obs, N, K, seed=0, verbose=False), N),
        "bootstrap PF (surrogate)": (BootstrapPF(transition, obs, N, seed=0, verbose=False), N),
        "bootstrap PF (true model)": (BootstrapPF(ssm, obs, N, seed=0, verbose=False), N),
        f"EnKF (true model, N={N})": (EnKF(ssm, obs, N, seed=0, verbose=False), N),
        "EnKF (true model, N=100)": (EnKF(ssm, obs, 100, seed=0, verbose=False), 100),
    }
    rows, speed = [], {}
    for fname, (f, n) in filters.items():
        torch.manual_seed(0)
        timed_net.seconds = 0.0
        out = evaluate_filter(f, xs, ys, init(n))
        out.pop("result")
        rows.append({"system": name, "filter": fname, "N": n, **out})
        if fname == "SURGE":
            speed = {
                "system": name,
                "particle-levels per s": B * N * K * T / out["seconds"],
                "score-net forward share": timed_net.seconds / out["seconds"],
                "score training s": train_s,
                "final DSM loss": float(np.mean(info["loss"][-100:])),
            }
    if isinstance(ssm, Lorenz63) and not isinstance(ssm, Lorenz96):
        rmse, crps, secs = pyro_smcfilter_rmse(ssm, xs, ys, init(N))
        rows.append(
            {
                "system": name,
                "filter": "pyro SMCFilter (true model)",
                "N": N,
                "rmse": rmse,
                "crps": crps,
                "mean_ess": float("nan"),
                "min_diffusion_ess": float("nan"),
                "seconds": secs,
            }
        )
    return rows, speed


def main():
    args = parse_args(__doc__.splitlines()[0])
    reps = args.seeds or (5 if args.quick else 20)
    B = 8 if args.quick else 32
    N = 256
    lg = linear_gaussian(reps)
    print("## Linear-Gaussian (d = 10, K = 50)\n")
    print(markdown_table(lg))
    rows, speeds = [], []
    for name, ssm, iters, hidden in (
        ("Lorenz-63 (atan obs)", Lorenz63(), 4000, 128),
        ("Lorenz-96 (d=20)", Lorenz96(dim=20), 6000, 256),
    ):
        r, s = lorenz(name, ssm, B, 15, N, 1500 if args.quick else iters, hidden)
        rows += r
        speeds.append(s)
    print(f"\n## Lorenz systems ({B} trajectories x 15 steps)\n")
    print(markdown_table(rows))
    print("\n## Speed\n")
    print(markdown_table(speeds))
    path = save(
        "surge",
        args.out,
        {"machine": machine(), "linear_gaussian": lg, "lorenz": rows, "speed": speeds},
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
