"""Per-step overhead of the MoA / LA FFNs and the scale-vector variants on TinyLM.

Wall-clock of one training step (forward, backward, AdamW) for 4-layer, d = 128, context-128
TinyLMs at batch 16, measured round-robin (every configuration once per round, median over
rounds) so that drifting machine load affects all of them alike, and the activation memory
(bytes saved for backward in one forward). Ratios are to SwiGLU / the Pre-Norm baseline.

Run: `python benchmarks/lm_overhead.py` (10 rounds x 5 steps) or `--quick` (3 x 2).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, parse_args, save  # noqa: E402

from probml.inference.pretrain import activation_bytes, param_groups  # noqa: E402
from probml.models.lm import TinyLM, TinyLMConfig  # noqa: E402
from probml.results import markdown_table  # noqa: E402

V = 103
CONFIGS = {
    "SwiGLU (baseline)": {},
    "LA (bi-sided, 7 acts)": {"ffn": {"kind": "la"}},
    "bi-MoA (7 acts)": {"ffn": {"kind": "moa"}},
    "bi-MoA (7 acts, checkpointed)": {"ffn": {"kind": "moa", "checkpointing": True}},
    "no gamma": {"norm_scale": False},
    "HG": {"branch_scales": True},
    "DNP": {"placement": "dnp"},
    "MD": {"scale_reparam": "magnitude_direction"},
    "unified": {"branch_scales": True, "placement": "dnp", "scale_reparam": "magnitude_direction"},
}


def main():
    args = parse_args(__doc__.splitlines()[0])
    rounds, steps = (3, 2) if args.quick else (10, 5)
    torch.manual_seed(0)
    x = torch.randint(0, V, (16, 128))
    models = {k: TinyLM(TinyLMConfig(vocab_size=V, **kw)) for k, kw in CONFIGS.items()}
    opts = {k: torch.optim.AdamW(param_groups(m, 0.1), lr=1e-4) for k, m in models.items()}
    times = {k: [] for k in models}
    for _ in range(rounds + 1):  # the first round warms up and is discarded
        for k, m in models.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                _, loss = m(x, x)
                opts[k].zero_grad(set_to_none=True)
                loss.backward()
                opts[k].step()
            times[k].append((time.perf_counter() - t0) / steps)
    rows = []
    base_t = statistics.median(times["SwiGLU (baseline)"][1:])
    base_m = activation_bytes(models["SwiGLU (baseline)"], x)
    for k, m in models.items():
        t = statistics.median(times[k][1:])
        mem = activation_bytes(m, x)
        rows.append(
            {
                "configuration": k,
                "ms/step (median)": 1e3 * t,
                "time ratio": t / base_t,
                "activation MiB": mem / 2**20,
                "memory ratio": mem / base_m,
                "params": m.num_parameters(),
            }
        )
    print(
        f"## per-step overhead (batch 16 x 128, {rounds} rounds x {steps} steps)\nmachine: {machine()}\n"
    )
    print(markdown_table(rows))
    path = save("lm_overhead", args.out, {"rows": rows})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
