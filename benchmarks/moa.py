"""MoA / LA benchmark: paired-seed LM pretraining on the pydoc corpus, plus overhead.

A 4-layer, d = 128, context-128 TinyLM on the character text of `pydoc_data.topics`; arms:
SwiGLU baseline, LA (bi-sided, 7-activation dictionary) and bi-MoA (gated form); every arm
at its best of 3 learning rates, >= 5 paired seeds (identical initial shared weights and batch
order). Reports validation loss, mean paired difference to SwiGLU with its standard error, and
the wall-clock and activation-memory ratios to SwiGLU measured in the same run.

Run: `python benchmarks/moa.py` (5 seeds, 200 steps of 16 x 128 tokens: CPU-sized) or
`--quick` (2 seeds, 20 steps).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log, machine, parse_args, save  # noqa: E402

from probml.inference.pretrain import activation_bytes, paired_comparison, pydoc_corpus  # noqa: E402
from probml.models.lm import TinyLM, TinyLMConfig  # noqa: E402
from probml.results import markdown_table  # noqa: E402

ARMS = {
    "SwiGLU": {"kind": "swiglu"},
    "LA (bi-sided)": {"kind": "la", "variant": "bi_sided"},
    "bi-MoA (gated)": {"kind": "moa", "variant": "bi_sided"},
}


def main():
    args = parse_args(__doc__.splitlines()[0])
    seeds = list(range(args.seeds or (2 if args.quick else 5)))
    steps = 20 if args.quick else 200
    corpus = pydoc_corpus()
    factories = {
        name: (lambda ffn=ffn: TinyLM(TinyLMConfig(vocab_size=corpus.vocab_size, ffn=ffn)))
        for name, ffn in ARMS.items()
    }
    lrs = [1e-3, 2e-3, 4e-3]
    rows, raw = paired_comparison(
        factories,
        corpus,
        seeds,
        lrs,
        steps=steps,
        batch_size=16,
        warmup=max(2, steps // 10),
        eval_batches=20,
        log=log,
    )
    x = torch.randint(0, corpus.vocab_size, (16, 128))
    mem = {name: activation_bytes(f(), x) for name, f in factories.items()}
    for r in rows:
        r["time ratio"] = r["seconds/run"] / rows[0]["seconds/run"]
        r["activation memory ratio"] = mem[r["arm"]] / mem["SwiGLU"]
        r["params"] = factories[r["arm"]]().num_parameters()
    print(
        f"## paired-seed pretraining (pydoc corpus, {len(seeds)} seeds, {steps} steps, lrs {lrs})"
    )
    print(f"machine: {machine()}\n")
    print(markdown_table(rows))
    path = save(
        "moa",
        args.out,
        {
            "rows": rows,
            "seeds": seeds,
            "steps": steps,
            "lrs": lrs,
            "all": {f"{k[0]}|{k[1]}|{k[2]}": v.val_loss for k, v in raw.items()},
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
