"""Scale vectors: the preconditioning invariant, and the scale-vector variants on TinyLM.

1. Gradient descent on y = W diag(gamma) x: gamma_j^2 - ||w_j||^2 stays constant while gamma
   grows with the weights (the self-amplifying preconditioning), plotted.
2. A paired-seed comparison of the Pre-Norm baseline, no gamma and the unified strategy
   (tiny in --fast mode; `benchmarks/scale_vectors.py` has the real comparison).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from probml.inference.pretrain import paired_models, pydoc_corpus, train_lm
from probml.models.lm import tinylm_factory
from probml.registry import ExampleResult, script_main
from probml.results import mean_se
from probml.utils import derive_seed

DESCRIPTION = "Scale vectors: gamma^2 - ||w||^2 invariant, role-aware decay and the unified strategy on TinyLM"


def run(fast: bool, seed: int, device: torch.device, out_dir: Path) -> ExampleResult:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(128, 6, generator=g, dtype=torch.float64)
    Y = X @ (3 * torch.randn(6, 2, generator=g, dtype=torch.float64))
    W = (0.3 * torch.randn(2, 6, generator=g, dtype=torch.float64)).requires_grad_()
    gamma = torch.ones(6, dtype=torch.float64, requires_grad=True)
    hist_g, hist_inv = [], []
    for _ in range(2000):
        loss = ((X * gamma) @ W.T - Y).pow(2).mean()
        gW, gg = torch.autograd.grad(loss, (W, gamma))
        with torch.no_grad():
            W -= 1e-3 * gW
            gamma -= 1e-3 * gg
            hist_g.append(gamma.abs().clone())
            hist_inv.append((gamma**2 - (W**2).sum(0)).clone())
    drift = float((hist_inv[-1] - hist_inv[0]).abs().max())
    growth = float(hist_g[-1].max())
    rows = [
        {
            "part": "invariant",
            "arm": "one-layer GD",
            "value": drift,
            "note": f"max |change of gamma^2 - ||w||^2|| (gamma grew to {growth:.2f})",
        }
    ]
    corpus = pydoc_corpus(max_chars=60_000 if fast else None)
    arms = {
        "Pre-Norm baseline": ({}, "ndim"),
        "no gamma": ({"norm_scale": False}, "ndim"),
        "unified": (
            {"branch_scales": True, "placement": "dnp", "scale_reparam": "magnitude_direction"},
            "role",
        ),
    }
    small = dict(d_model=64, n_layers=2, n_heads=4, context=64)
    factories = {
        k: partial(tinylm_factory(**small, **kw), corpus.vocab_size) for k, (kw, _) in arms.items()
    }
    seeds = [derive_seed(seed, i) for i in range(2 if fast else 3)]
    vals = {k: [] for k in arms}
    for s in seeds:
        models = paired_models(factories, s)
        for k, (_, rule) in arms.items():
            r = train_lm(
                models[k],
                corpus,
                steps=30 if fast else 300,
                batch_size=8 if fast else 16,
                lr=3e-3,
                warmup=5,
                rule=rule,
                batch_seed=s,
                eval_batches=4 if fast else 20,
                device=device,
            )
            vals[k].append(r.val_loss)
    for k in arms:
        m, se = mean_se([v - b for v, b in zip(vals[k], vals["Pre-Norm baseline"])])
        rows.append(
            {
                "part": "paired LM (2 layers, d=64)",
                "arm": k,
                "value": m,
                "note": f"paired diff vs baseline (se {se:.3g}); val loss {mean_se(vals[k])[0]:.3f}",
            }
        )
    fig = out_dir / "scale_invariant.png"
    _plot(hist_g, hist_inv, fig)
    return ExampleResult(
        headline=f"invariant drift {drift:.2e} while gamma grew to {growth:.2f}",
        table=rows,
        figures=[fig],
    )


def _plot(hist_g, hist_inv, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    G, inv = torch.stack(hist_g).numpy(), torch.stack(hist_inv).numpy()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.3))
    a1.plot(G)
    a1.set_title("|gamma_j| during gradient descent")
    a2.plot(inv)
    a2.set_title("gamma_j^2 - ||w_j||^2 (conserved)")
    for a in (a1, a2):
        a.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    script_main(run)
