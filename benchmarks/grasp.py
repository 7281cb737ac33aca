"""GRASP benchmark: the linear toy and the planted-persona world, several seeds.

1. Linear toy (d = 32, LoRA r = 4, task rank 12; spurious strength 3 and 0.3): identification
   cosine, shift along u and task error for naive LoRA and GRASP; projection share of a step.
2. Persona world with 8 CODE answer groups (one pretrained TinyLM per world, cached;
   fine-tuning seeds 0..S-1; identification from a 10-step naive run): GEN
   misalignment, task (insecure CODE) and ROLEPLAY accuracy for the base model, naive LoRA,
   naive + inference ablation, CAFT, preventative steering, GRASP (per-module, shared u,
   residual shift of the same 10-step naive run on 2000 unlabelled documents, the same plus
   the pull-back of the last block's shift to block 0, oracle u);
   identification cosines; projection overhead per step as a ratio to the plain LoRA step
   of the same run. Control world (persona not shared across turns): naive only. The
   simple world (one CODE answer group: a rank ~1 task): naive, GRASP, GRASP (residual
   shift, with and without the pull-back), GRASP (oracle u).
3. Political-slant variant (`SlantWorld`: continuous slant shared across turns, gain 3,
   left-leaning population (offset 1.5), 8 FIN answer groups, fine-tuning on all-right FIN
   advice): GEN slant drift (right-template mass minus the base model's) for naive LoRA, CAFT,
   GRASP (per-module, shared u, residual shift with and without the pull-back, oracle u), and
   the ratio of each drift to naive's.

Run: `python benchmarks/grasp.py` (3 seeds; `--seeds 10` for the table in docs/results.md) or
`--quick` (1 seed, shorter runs); `--slant-only` runs section 3 alone, and with `--advice`
in the slant world whose financial task is the correct advice, not the slant
(`SlantWorld.left_leaning(advice=True)`, the session-16 pre-registered test in
docs/results.md); `--advice-known 0.5` in the same world with half the pretraining FIN
answers giving the correct advice (session 20's pre-registered test); `--advice-known 1
--advice-shift 1` with every pretraining FIN answer giving group (q + 1) mod 8 instead of the
correct q (session 21's pre-registered test). `--first-seed N`
starts the persona worlds' fine-tuning seeds at N (the held-out tests in docs/results.md: 10
and 20); `--shift-prefix 8` reads the residual shift (and its pull-back) from the documents'
first turn only (BOS and 7 tokens). `--layers 4`
pretrains 4-layer TinyLMs instead of the spec's 2 (the depth check in docs/grasp.md). The
JSON also holds every method's per-seed values (`persona_per_seed`, `slant_per_seed`).
`python benchmarks/grasp.py --plot-from benchmarks/out/grasp.json --plot FILE.png` draws
the trade-off of a finished run (no training): GEN misalignment against ROLEPLAY in the main
persona world, and the slant drift ratio against ROLEPLAY, each method's mean +- SE over
seeds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, parse_args, save  # noqa: E402

from probml.datasets.persona import LinearToy, PersonaWorld, SlantWorld, advice_score  # noqa: E402
from probml.inference.persona_experiment import (  # noqa: E402
    drift_ratio,
    pretrain_persona_model,
    run_persona_methods,
)
from probml.inference.projection import (  # noqa: E402
    GRASP,
    finetune_lora,
    identify_spurious_directions,
)
from probml.models.adapters import add_lora, lora_modules  # noqa: E402
from probml.results import markdown_table, mean_se, mean_se_rows  # noqa: E402


def linear_toy(seeds: int) -> list[dict]:
    rows = []
    for strength in (3.0, 0.3):
        acc: dict[str, list] = {}
        for seed in range(seeds):
            toy = LinearToy(strength=strength, seed=seed)
            naive = toy.model()
            add_lora(naive, ["out"], rank=4, seed=seed)
            r0 = finetune_lora(naive, toy.sample_batch(), 400, lr=1e-2, seed=seed, verbose=False)
            dirs = identify_spurious_directions(naive)
            m = toy.model()
            add_lora(m, ["out"], rank=4, seed=seed + 1)
            g = GRASP(dirs)
            r1 = finetune_lora(m, toy.sample_batch(), 400, lr=1e-2, grasp=g, seed=seed,
                               verbose=False)  # fmt: skip
            dn = next(lora_modules(naive)).delta_weight().detach()
            dg = next(lora_modules(m)).delta_weight().detach()
            for k, v in {
                "|cos(u_hat, u)|": abs(float(dirs.directions["out"][:, 0] @ toy.u)),
                "naive shift along u": toy.shift_along_u(dn),
                "GRASP shift along u": toy.shift_along_u(dg),
                "naive task error": toy.task_error(dn),
                "GRASP task error": toy.task_error(dg),
                "GRASP step / naive step": r1["seconds"] / r0["seconds"],
            }.items():
                acc.setdefault(k, []).append(v)
        row = {"spurious strength": strength}
        for k, v in acc.items():
            row[k] = float(np.mean(v))
        rows.append(row)
    return rows


SLANT_METHODS = (
    "naive",
    "CAFT",
    "GRASP",
    "GRASP (shared u)",
    "GRASP (residual shift)",
    "GRASP (residual shift + pull-back)",
    "GRASP (oracle u)",
)


SIMPLE_METHODS = (
    "naive",
    "GRASP",
    "GRASP (residual shift)",
    "GRASP (residual shift + pull-back)",
    "GRASP (oracle u)",
)


def slant_variant(
    seeds: range,
    steps: int,
    pre: int,
    shift_prefix: int | None = None,
    layers: int = 2,
    advice: bool = False,
    advice_known: float = 0.0,
    advice_shift: int = 0,
) -> tuple[list[dict], list[dict], dict[str, dict[str, list]]]:
    """Section 3: the table, the identification cosines and the per-seed values. ``advice``:
    the world whose financial task is the correct advice, not the slant; ``advice_known``:
    the share of pretraining FIN answers that give the known advice (implies ``advice``);
    ``advice_shift``: the known advice is group ``(q + advice_shift) mod 8``, not ``q``."""
    advice = advice or advice_known > 0
    world = SlantWorld.left_leaning(advice=advice, advice_known=advice_known,
                                    advice_shift=advice_shift)  # fmt: skip
    task_key = "task (correct advice)" if advice else "task (right FIN)"
    base = pretrain_persona_model(world, num_steps=pre, verbose=False, n_layers=layers)
    per: dict[str, dict[str, list]] = {}
    cos, shift_cos = [], []
    for seed in seeds:
        rows, diag = run_persona_methods(base, world, seed=seed, num_steps=steps,
                                         methods=SLANT_METHODS,
                                         shift_prefix=shift_prefix)  # fmt: skip
        cos.append(max(diag["identification_cos_shared"]))
        shift_cos.append(diag["residual_shift_cos_per_block"])
        base_slant = rows[0]["misalignment"]
        naive = next(r for r in rows if r["method"] == "naive")["misalignment"]
        for r in rows:
            d = per.setdefault(r["method"], {})
            ratio = drift_ratio(r["misalignment"], base_slant, naive)
            for k, v in (("GEN slant", r["misalignment"]), ("drift", r["misalignment"] - base_slant),
                         ("drift / naive drift", ratio), (task_key, r["task"]),
                         ("roleplay", r["roleplay"])):  # fmt: skip
                d.setdefault(k, []).append(v)
    table = mean_se_rows(per, "method")
    ident = {"identification |cos| (shared u), mean over seeds": float(np.mean(cos))}
    for b, c in enumerate(np.mean(shift_cos, 0)):
        ident[f"residual shift |cos|, block {b}"] = float(c)
    if advice_shift:  # does the base model give the pretraining's (shifted) advice?
        ident["base: mass on the pretraining's advice"] = advice_score(base, world, advice_shift)
    return table, [ident], per


def plot_tradeoff(payload: dict, path: str) -> None:
    """Two panels from a finished run's JSON: main persona world (GEN misalignment vs
    ROLEPLAY, with the base rate and the control world's naive rise as vertical lines) and the
    slant variant (drift / naive drift vs ROLEPLAY, with the spec's bar of one half)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    missing = [k for k in ("persona_per_seed", "slant_per_seed") if k not in payload]
    if missing:
        raise SystemExit(f"--plot-from: the JSON lacks {missing} (a full run writes both)")
    persona, slant = payload["persona_per_seed"], payload["slant_per_seed"]

    def _mean_se(values) -> tuple[float, float]:  # one seed: no error bar
        m, se = mean_se(values)
        return m, float(np.nan_to_num(se))

    names = [n for n in persona if ":" not in n]  # not the simple and control worlds
    names += [n for n in slant if n not in names]
    colour = {n: plt.cm.tab10(i % 10) for i, n in enumerate(names)}
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 5.2))
    for n in names:
        if n in persona:
            (x, xe), (y, ye) = (
                _mean_se(persona[n]["misalignment"]),
                _mean_se(persona[n]["roleplay"]),
            )
            a.errorbar(x, y, xerr=xe, yerr=ye, fmt="o", capsize=2, color=colour[n], label=n)
        if n in slant and n != "base (pretrained)":
            d = slant[n]
            (x, xe), (y, ye) = _mean_se(d["drift / naive drift"]), _mean_se(d["roleplay"])
            b.errorbar(x, y, xerr=xe, yerr=ye, fmt="o", capsize=2, color=colour[n])
    base = persona.get("base (pretrained)", {}).get("misalignment")
    if base:
        a.axvline(base[0], color="grey", ls="--", lw=0.8)
    control = persona.get("control world: naive", {}).get("misalignment")
    if control:
        a.axvline(_mean_se(control)[0], color="grey", ls=":", lw=0.8)
        a.text(_mean_se(control)[0], a.get_ylim()[0], " control world, naive", fontsize=7,
               va="bottom", rotation=90)  # fmt: skip
    a.set_xlabel("GEN misalignment (lower is better; dashed: base)")
    a.set_ylabel("ROLEPLAY accuracy (higher is better)")
    a.set_title("persona world, mean +- SE over seeds", fontsize=9)
    b.axvline(0.5, color="grey", ls="--", lw=0.8)
    b.set_xlabel("GEN slant drift / naive drift (lower is better; dashed: halved)")
    b.set_ylabel("ROLEPLAY accuracy")
    b.set_title("political-slant variant, mean +- SE over seeds", fontsize=9)
    fig.legend(loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    args = parse_args(
        __doc__.splitlines()[0],
        flags=("--slant-only", "--advice"),
        options={
            "--plot-from": "a finished run's JSON",
            "--plot": "PNG file for the trade-off",
            "--first-seed": "first fine-tuning seed (default 0; held-out tests used 10 and 20)",
            "--shift-prefix": "residual shift from the first N tokens of each document",
            "--layers": "TinyLM depth of the persona worlds (default 2, the spec's)",
            "--advice-known": "with --slant-only: the advice world, this share of pretraining "
            "FIN answers giving the correct advice (session 20's test: 0.5)",
            "--advice-shift": "with --advice-known: the pretraining's known advice is group "
            "(q + this) mod 8, not the correct q (session 21's test: 1, with --advice-known 1)",
        },
    )
    if args.plot_from or args.plot:
        if not (args.plot_from and args.plot):
            raise SystemExit("--plot-from and --plot go together")
        plot_tradeoff(json.loads(Path(args.plot_from).read_text()), args.plot)
        print(f"wrote {args.plot}")
        return
    seeds = args.seeds or (1 if args.quick else 3)
    steps, pre = (150, 800) if args.quick else (300, 1500)
    first = int(args.first_seed or 0)
    shift_prefix = None if args.shift_prefix is None else int(args.shift_prefix)
    if first < 0:
        raise SystemExit(f"--first-seed must be >= 0, got {first}")
    fine_seeds = range(first, first + seeds)
    layers = int(args.layers or 2)
    if layers < 1:
        raise SystemExit(f"--layers must be >= 1, got {layers}")
    known = 0.0 if args.advice_known is None else float(args.advice_known)
    if not 0 <= known <= 1:
        raise SystemExit(f"--advice-known must be in [0, 1], got {args.advice_known}")
    advice = bool(args.advice) or known > 0
    if advice and not args.slant_only:
        raise SystemExit("--advice and --advice-known go with --slant-only")
    shift = 0 if args.advice_shift is None else int(args.advice_shift)
    if shift and not (known > 0 and 0 < shift < 8):
        raise SystemExit(f"--advice-shift must be in [1, 7] with --advice-known > 0, "
                         f"got {args.advice_shift}")  # fmt: skip
    if args.slant_only:
        table, ident, per_seed = slant_variant(fine_seeds, steps, pre, shift_prefix, layers,
                                               advice=advice, advice_known=known,
                                               advice_shift=shift)  # fmt: skip
        label = " with the advice task" if advice else ""
        what = f"shifted by {shift}" if shift else "correct"
        label += f" ({known:g} of the pretraining advice {what})" if known else ""
        print(f"## Political-slant variant{label} (seeds {first}-{first + seeds - 1}, "
              f"{steps} steps)\n")  # fmt: skip
        print(markdown_table(table) + "\n\n" + markdown_table(ident))
        name = "grasp_slant_advice" if advice else "grasp_slant"
        name += f"_known{known:g}" if known else ""
        name += f"_shift{shift}" if shift else ""
        path = save(name, args.out, {"machine": machine(), "slant": table, "id": ident,
                                     "slant_per_seed": per_seed,
                                     "fine_tuning_seeds": list(fine_seeds),
                                     "shift_prefix": shift_prefix, "layers": layers,
                                     "advice": advice, "advice_known": known,
                                     "advice_shift": shift})  # fmt: skip
        print(f"\nwrote {path}")
        return
    toy = linear_toy(seeds)
    print("## Linear toy\n")
    print(markdown_table(toy))
    # the main world: CODE answers depend on the question word (8 groups), so the insecure-code
    # task has rank ~8 > r = 4 (the identifiability premise); the simple world has rank ~1
    world = PersonaWorld(num_qwords=8, code_variety=8)
    base = pretrain_persona_model(world, num_steps=pre, verbose=False, n_layers=layers)
    per: dict[str, dict[str, list]] = {}
    diags = []
    for seed in fine_seeds:
        rows, diag = run_persona_methods(base, world, seed=seed, num_steps=steps,
                                         shift_prefix=shift_prefix)  # fmt: skip
        diags.append(diag)
        for r in rows:
            d = per.setdefault(r["method"], {})
            for k in ("misalignment", "task", "roleplay"):
                d.setdefault(k, []).append(r[k])
        print(f"seed {seed} done", flush=True)
    others = (
        (
            "simple world (task rank ~1): ",
            PersonaWorld(),
            SIMPLE_METHODS,
        ),
        ("control world: ", PersonaWorld(num_qwords=8, code_variety=8, shared=False), ("naive",)),
    )
    for label, w, methods in others:
        wbase = pretrain_persona_model(w, num_steps=pre, verbose=False, n_layers=layers)
        for seed in fine_seeds:
            rows, _ = run_persona_methods(wbase, w, seed=seed, num_steps=steps, methods=methods,
                                          shift_prefix=shift_prefix)  # fmt: skip
            for r in rows:
                if r["method"] == "naive + inference ablation":
                    continue
                d = per.setdefault(label + r["method"], {})
                for k in ("misalignment", "task", "roleplay"):
                    d.setdefault(k, []).append(r[k])
    table = mean_se_rows(per, "method")
    cos_shared = np.mean([max(d["identification_cos_shared"]) for d in diags])
    cos_mod = np.mean([np.mean(list(d["identification_cos_per_module"].values())) for d in diags])
    cos_shift = np.mean([d["residual_shift_cos_per_block"] for d in diags], 0)
    overhead = np.mean([d["seconds_per_step_grasp"] / d["seconds_per_step_naive"] for d in diags])
    share = np.mean([d["projection_share_of_step"] for d in diags])
    print(f"\n## Persona world (fine-tuning seeds {first}-{first + seeds - 1}, {steps} steps)\n")
    print(markdown_table(table))
    print(
        f"\nidentification |cos(u_hat, u_true)|: shared residual direction {cos_shared:.3f}, "
        f"per write module (mean) {cos_mod:.3f}; residual shift per block "
        f"{', '.join(f'{c:.3f}' for c in cos_shift)}; GRASP step / plain LoRA step "
        f"{overhead:.3f}; projection share of a GRASP step {share:.3f}"
    )
    slant, ident, slant_per_seed = slant_variant(fine_seeds, steps, pre, shift_prefix, layers)
    print(f"\n## Political-slant variant (seeds {first}-{first + seeds - 1}, {steps} steps)\n")
    print(markdown_table(slant) + "\n\n" + markdown_table(ident))
    path = save("grasp", args.out, {"machine": machine(), "linear_toy": toy,
                                    "persona": table, "diagnostics": diags,
                                    "persona_per_seed": per, "slant": slant,
                                    "slant_id": ident,
                                    "slant_per_seed": slant_per_seed,
                                    "fine_tuning_seeds": list(fine_seeds),
                                    "shift_prefix": shift_prefix, "layers": layers})  # fmt: skip
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
