"""GRASP's persona world on a Hugging Face Llama architecture (an architecture check).

The main persona world (8 CODE answer groups) and the political-slant variant, with the
TinyLM of `benchmarks/grasp.py` replaced by a randomly initialised `transformers`
`LlamaForCausalLM` of the same size: d = 64, 4 heads, SwiGLU MLP of width 172 (about the
TinyLM's GELU parameter count), RMSNorm, rotary positions. It is pretrained with the same loop
(`pretrain_persona_model(model_factory=...)`, 1500 steps; not cached). Then
`run_persona_methods` runs with our LoRA on q_proj, v_proj, o_proj and down_proj and
`through=HF_THROUGH`. Its protocol is unchanged: fine-tuning seeds 0..S-1, a 10-step
identification run, 300 steps, lr 3e-3, rank 4. Methods: naive, GRASP (weights), GRASP
(residual shift, with and without the pull-back), GRASP (oracle u). Needs the `hf` extra.

Options: `--layers N` (default 2), `--kv-heads K` (default 4; 2 is grouped-query attention),
`--tie` (tie the input and output embeddings, as TinyLM does; Llama's default is untied),
`--world persona|slant` (default persona). Run: `python benchmarks/grasp_llama.py [options]`
(3 seeds; `--seeds N`). About 2.5 minutes per 2-layer world and 3 seeds on one CPU thread.
"""

from __future__ import annotations

import sys
from pathlib import Path

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, parse_args, save  # noqa: E402

from probml.datasets.persona import PersonaWorld, SlantWorld  # noqa: E402
from probml.inference.persona_experiment import (  # noqa: E402
    drift_ratio,
    pretrain_persona_model,
    run_persona_methods,
)
from probml.inference.projection import HF_THROUGH  # noqa: E402
from probml.models.hf import TinyLMCalls  # noqa: E402
from probml.results import markdown_table, mean_se_rows  # noqa: E402

METHODS = (
    "naive",
    "GRASP",
    "GRASP (residual shift)",
    "GRASP (residual shift + pull-back)",
    "GRASP (oracle u)",
)
TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj"]


def llama_factory(world, layers: int, kv_heads: int, tie: bool):
    import transformers

    def build() -> nn.Module:
        cfg = transformers.LlamaConfig(
            vocab_size=world.vocab_size, hidden_size=64, intermediate_size=172,
            num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=kv_heads,
            max_position_embeddings=64, attn_implementation="eager", tie_word_embeddings=tie,
        )  # fmt: skip
        return TinyLMCalls(transformers.LlamaForCausalLM(cfg))

    return build


def main():
    args = parse_args(
        __doc__.splitlines()[0],
        flags=("--tie",),
        options={
            "--layers": "decoder layers (default 2)",
            "--kv-heads": "key-value heads (default 4; 2: grouped-query attention)",
            "--world": "persona (default) or slant",
        },
    )
    seeds = args.seeds or (1 if args.quick else 3)
    steps, pre = (150, 800) if args.quick else (300, 1500)
    layers, kv = int(args.layers or 2), int(args.kv_heads or 4)
    name = args.world or "persona"
    if name not in ("persona", "slant") or layers < 1 or kv not in (1, 2, 4):
        raise SystemExit("--world persona|slant, --layers >= 1, --kv-heads 1, 2 or 4")
    world = (
        PersonaWorld(num_qwords=8, code_variety=8)
        if name == "persona"
        else SlantWorld.left_leaning()
    )
    base = pretrain_persona_model(
        world,
        num_steps=pre,
        verbose=False,
        model_factory=llama_factory(world, layers, kv, args.tie),
    )
    per: dict[str, dict[str, list]] = {}
    cos = []
    for seed in range(seeds):
        rows, diag = run_persona_methods(base, world, seed=seed, num_steps=steps, methods=METHODS,
                                         targets=TARGETS, through=HF_THROUGH)  # fmt: skip
        cos.append(diag["residual_shift_cos_per_block"])
        b = rows[0]["misalignment"]
        naive = next(r for r in rows if r["method"] == "naive")["misalignment"]
        for r in rows:
            d = per.setdefault(r["method"], {})
            for k in ("misalignment", "task", "roleplay"):
                d.setdefault(k, []).append(r[k])
            if name == "slant":
                d.setdefault("drift / naive drift", []).append(
                    drift_ratio(r["misalignment"], b, naive)
                )
        print(seed, {r["method"]: round(r["misalignment"], 4) for r in rows}, flush=True)
    table = mean_se_rows(per, "method")
    label = (
        f"{name} world, Llama, {layers} layers, {kv} kv heads, {'tied' if args.tie else 'untied'}"
    )
    print(f"## {label} (seeds 0-{seeds - 1}; {machine()})\n")
    print(markdown_table(table))
    print("\nresidual-shift |cos| with u_true per block, per seed:", cos)
    path = save(
        f"grasp_llama_{name}_L{layers}_kv{kv}{'_tie' if args.tie else ''}",
        args.out,
        {"label": label, "table": table, "per_seed": per, "shift_cos": cos},
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
