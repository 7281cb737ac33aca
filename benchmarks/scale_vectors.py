"""Scale-vector benchmark: paired-seed LM pretraining of normalisation-scale variants.

Same harness and corpus as `benchmarks/moa.py` (4-layer, d = 128, context 128, pydoc text,
SwiGLU FFN), one fixed learning rate, >= 5 paired seeds. Arms against the standard Pre-Norm
baseline (RMSNorm with gamma, decay rule "ndim"): no gamma; QK-norm with and without weight
decay on its (Output-Norm) gamma; each improvement alone (role-aware decay IWD, branch-specific
scales HG, two-sided placement DNP, magnitude-direction MD) and the unified strategy
(HG + DNP + MD + IWD). Mean paired differences with standard errors; time ratio, same run.

Run: `python benchmarks/scale_vectors.py` (5 seeds, 200 steps) or `--quick` (2 seeds, 20 steps).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log, machine, parse_args, save  # noqa: E402

from probml.inference.pretrain import paired_models, pydoc_corpus, train_lm  # noqa: E402
from probml.models.lm import TinyLM, TinyLMConfig  # noqa: E402
from probml.results import markdown_table, mean_se  # noqa: E402

# name -> (config overrides, weight-decay rule)
ARMS = {
    "Pre-Norm baseline": ({}, "ndim"),
    "no gamma": ({"norm_scale": False}, "ndim"),
    "QK-norm, no decay on its gamma": ({"qk_norm": True}, "role"),
    "QK-norm, decay on its gamma": ({"qk_norm": True}, "all_scales"),
    "IWD (role-aware decay)": ({}, "role"),
    "HG (branch-specific scales)": ({"branch_scales": True}, "ndim"),
    "DNP (two-sided + norms)": ({"placement": "dnp"}, "ndim"),
    "MD (magnitude-direction)": ({"scale_reparam": "magnitude_direction"}, "ndim"),
    "unified (HG + DNP + MD + IWD)": (
        {"branch_scales": True, "placement": "dnp", "scale_reparam": "magnitude_direction"},
        "role",
    ),
}


def main():
    args = parse_args(__doc__.splitlines()[0])
    seeds = list(range(args.seeds or (2 if args.quick else 5)))
    steps = 20 if args.quick else 200
    lr, wd = 2e-3, 0.1
    corpus = pydoc_corpus()
    factories = {
        name: (lambda kw=kw: TinyLM(TinyLMConfig(vocab_size=corpus.vocab_size, **kw)))
        for name, (kw, _) in ARMS.items()
    }
    val = {name: [] for name in ARMS}
    secs = {name: [] for name in ARMS}
    for seed in seeds:
        models = paired_models(factories, seed)
        for name, (_, rule) in ARMS.items():
            m = models[name]
            if rule == "all_scales":  # decay every scale vector, Output-Norms included
                from probml.models.layers import ScaleVector

                for mod in m.modules():
                    if isinstance(mod, ScaleVector):
                        mod.role = "input"
                rule = "role"
            r = train_lm(
                m,
                corpus,
                steps=steps,
                batch_size=16,
                lr=lr,
                warmup=max(2, steps // 10),
                weight_decay=wd,
                rule=rule,
                batch_seed=seed,
                eval_batches=20,
            )
            val[name].append(r.val_loss)
            secs[name].append(r.seconds)
            log(f"seed {seed}, {name}: val loss {r.val_loss:.4f} ({r.seconds:.0f} s)")
    base = "Pre-Norm baseline"
    rows = []
    for name in ARMS:
        d = [v - b for v, b in zip(val[name], val[base])]
        m, se = mean_se(d)
        rows.append(
            {
                "arm": name,
                "val loss": mean_se(val[name])[0],
                "paired diff vs baseline": m,
                "se": se,
                "time ratio": sum(secs[name]) / sum(secs[base]),
                "params": factories[name]().num_parameters(),
            }
        )
    print(f"## scale vectors (pydoc corpus, {len(seeds)} seeds, {steps} steps, lr {lr}, wd {wd})")
    print(f"machine: {machine()}\n")
    print(markdown_table(rows))
    path = save(
        "scale_vectors", args.out, {"rows": rows, "val": val, "seeds": seeds, "steps": steps}
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
