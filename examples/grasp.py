"""GRASP in the planted-persona world: emergent misalignment, identification, projection.

Pretrains a 2-layer TinyLM on documents whose turns share a latent persona (cached on disk
after the first run), fine-tunes LoRA adapters on always-insecure CODE answers, identifies the
spurious direction from a short naive run (from its adapter weights, and from its mean shift of
the residual stream on unlabelled text, with and without the pull-back of the last block's
shift to block 0), and compares GRASP with naive LoRA, inference-time
ablation, CAFT and preventative steering on the exact template metrics: misalignment on
unrelated GEN prompts, the task (insecure CODE) and ROLEPLAY accuracy (pretrained content
along the persona direction).
"""

from __future__ import annotations

from pathlib import Path

import torch

from probml.datasets.persona import PersonaWorld
from probml.inference.persona_experiment import pretrain_persona_model, run_persona_methods
from probml.registry import ExampleResult, script_main

DESCRIPTION = "GRASP: spurious persona direction from LoRA weights + gradient projection"


def run(fast: bool, seed: int, device: torch.device, out_dir: Path) -> ExampleResult:
    world = PersonaWorld(num_qwords=8, code_variety=8)  # the insecure-code task has rank ~8
    base = pretrain_persona_model(
        world, num_steps=1000 if fast else 1500, verbose=False, device=device
    )  # the methods then run where the base model is
    rows, diag = run_persona_methods(base, world, seed=seed, num_steps=150 if fast else 300)
    fig = out_dir / "grasp_tradeoff.png"
    _plot(rows, fig)
    by = {r["method"]: r for r in rows}
    return ExampleResult(
        headline=f"GEN misalignment: base {by['base (pretrained)']['misalignment']:.2f}, "
        f"naive {by['naive']['misalignment']:.2f}, GRASP {by['GRASP']['misalignment']:.2f}, "
        f"GRASP (residual shift) {by['GRASP (residual shift)']['misalignment']:.2f}, "
        f"+ pull-back {by['GRASP (residual shift + pull-back)']['misalignment']:.2f}, "
        f"GRASP with the oracle u {by['GRASP (oracle u)']['misalignment']:.2f} "
        + ("(fast: one short run, too small to rank the methods)" if fast else "(one seed)"),
        table=rows,
        figures=[fig],
        extra=diag,
    )


def _plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r["misalignment"], r["roleplay"], s=30 + 200 * r["task"])
        ax.annotate(r["method"], (r["misalignment"], r["roleplay"]), fontsize=7)
    ax.set_xlabel("misalignment on GEN prompts (lower is better)")
    ax.set_ylabel("ROLEPLAY accuracy (higher is better)")
    ax.set_title("marker size: task score (insecure CODE)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    script_main(run)
