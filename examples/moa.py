"""Mixture of Activations: the expressivity separation, then a short paired pretraining run.

1. Width-1 networks on sigmoid(3 x1) * ReLU(x2) over [-2, 2]^2 (L-BFGS with restarts): a
   fixed ReLU unit and LA cannot represent it; MoA's token-adaptive gate can.
2. A paired-seed comparison of SwiGLU, LA and bi-MoA TinyLMs on the pydoc corpus (tiny in
   --fast mode; `benchmarks/moa.py` has the real comparison).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch

from probml.inference.expressivity import fit_shallow_net
from probml.inference.pretrain import paired_comparison, pydoc_corpus
from probml.models.lm import tinylm_factory
from probml.registry import ExampleResult, script_main
from probml.utils import derive_seed

DESCRIPTION = "Mixture of Activations: expressivity separation + paired-seed TinyLM pretraining"


def run(fast: bool, seed: int, device: torch.device, out_dir: Path) -> ExampleResult:
    g = torch.linspace(-2, 2, 41, dtype=torch.float64)
    X = torch.cartesian_prod(g, g)
    y = torch.sigmoid(3 * X[:, 0]) * torch.relu(X[:, 1])
    rows, nets = [], {}
    for kind, dic in [
        ("fixed", ("relu",)),
        ("la", ("relu", "relu2", "sigmoid")),
        ("moa", ("relu",)),
    ]:
        mse, net = fit_shallow_net(kind, dic, X, y, restarts=12)
        nets[kind] = net
        rows.append(
            {
                "part": "expressivity (width 1)",
                "model": f"{kind} {'+'.join(dic)}",
                "value": mse,
                "metric": "MSE on sigmoid(3x1)ReLU(x2)",
            }
        )
    corpus = pydoc_corpus(max_chars=60_000 if fast else None)
    small = dict(d_model=64, n_layers=2, n_heads=4, context=64)
    arms = {
        name: partial(tinylm_factory(**small, ffn=ffn), corpus.vocab_size)
        for name, ffn in [
            ("SwiGLU", {"kind": "swiglu"}),
            ("LA", {"kind": "la"}),
            ("bi-MoA", {"kind": "moa"}),
        ]
    }
    lm_rows, _ = paired_comparison(
        arms,
        corpus,
        seeds=[derive_seed(seed, i) for i in range(2 if fast else 3)],
        lrs=[3e-3],
        steps=30 if fast else 300,
        batch_size=8 if fast else 16,
        warmup=5,
        eval_batches=4 if fast else 20,
        device=device,
    )
    for r in lm_rows:
        rows.append(
            {
                "part": "paired LM (2 layers, d=64)",
                "model": r["arm"],
                "value": r["paired diff vs SwiGLU"],
                "metric": f"val loss {r['val loss']:.3f}; paired diff (se {r['se']:.3g})",
            }
        )
    fig = out_dir / "moa_expressivity.png"
    _plot(nets, X, y, fig)
    exp = {r["model"].split()[0]: r["value"] for r in rows if r["part"].startswith("expr")}
    return ExampleResult(
        headline=f"width-1 MSE: fixed {exp['fixed']:.2g}, LA {exp['la']:.2g}, MoA {exp['moa']:.2g}",
        table=rows,
        figures=[fig],
    )


def _plot(nets, X, y, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = int(np.sqrt(len(y)))
    fig, axes = plt.subplots(1, 4, figsize=(13, 3))
    panels = [("target", y)] + [(k, nets[k](X).detach()) for k in ("fixed", "la", "moa")]
    for ax, (title, z) in zip(axes, panels):
        ax.imshow(z.reshape(n, n).T.numpy(), origin="lower", extent=(-2, 2, -2, 2), cmap="viridis")
        ax.set_title(title)
        ax.set_xlabel("x1")
    axes[0].set_ylabel("x2")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    script_main(run)
