"""CUDA vs CPU timings of the heavy paths, side by side in one run on the same machine, plus a
GPU-sized MoA pretraining comparison.

Paths timed (median of 5 after 2 warm-ups, `torch.cuda.synchronize` around CUDA timings):
TinyLM training step (d = 256, 6 layers, context 256, batch 32) with SwiGLU and bi-MoA FFNs;
one SURGE assimilation step (linear-Gaussian, d = 10, 8 filters x 8192 particles, 50 diffusion
levels); `basis_advantages` on a batch of 1024 prompts. Then (CUDA only) SwiGLU vs bi-MoA vs LA
TinyLM pretraining on the pydoc corpus, d = 256, 6 layers, 3 paired seeds, 600 steps of 32 x 256
tokens at lr 2e-3.

`--grasp` runs only the GRASP overhead: a LoRA fine-tuning step of the same TinyLM (rank 8 on
the query, value, attention-output and MLP-down projections) plain, with GRASP's projection
after it (one random residual direction, the write-through rule for the value adapters), and
with the per-head write-through rule; each as a ratio to the plain step on the same device. The
projection alone is timed too (median of 20), since on the GPU the whole-step ratio is within
the step's own timing noise: with the adapted modules held by the loop (as `finetune_lora`
does) and found again on every call (`GRASP.project(model)` without `factors`). Without CUDA,
`--grasp` times the CPU rows only.

`--moa-sweep` runs only the MoA comparison, over lr in {1e-3, 2e-3, 4e-3} with 2 paired seeds,
writing one JSON per learning rate as it goes (so a run cut short keeps what it finished).

Run: `python benchmarks/gpu_timing.py [--quick] [--moa-sweep | --grasp] [--out DIR]` on a
machine with CUDA (`--grasp` also runs without one).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log, machine, parse_args, save, skip  # noqa: E402

from probml.inference.advantage import basis_advantages  # noqa: E402
from probml.inference.persona_experiment import LORA_TARGETS  # noqa: E402
from probml.inference.pretrain import paired_comparison, pydoc_corpus  # noqa: E402
from probml.inference.projection import GRASP, TINYLM_THROUGH  # noqa: E402
from probml.inference.smc import SURGE  # noqa: E402
from probml.models.adapters import add_lora, lora_modules, lora_parameters  # noqa: E402
from probml.models.diffusion import LinearGaussianDiffusion  # noqa: E402
from probml.models.dynamics import LinearGaussianSSM  # noqa: E402
from probml.models.lm import TinyLM, TinyLMConfig  # noqa: E402
from probml.results import markdown_table  # noqa: E402


def _time(fn, device: str, reps: int = 5, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def lm_step(device: str, ffn: dict, quick: bool):
    torch.manual_seed(0)
    d, L, T, B = (128, 2, 128, 8) if quick else (256, 6, 256, 32)
    m = TinyLM(TinyLMConfig(vocab_size=128, d_model=d, n_layers=L, context=T, ffn=ffn)).to(device)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    x = torch.randint(0, 128, (B, T), device=device)

    def step():
        _, loss = m(x, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def lora_step(device: str, quick: bool, grasp: str | None):
    """One LoRA step of the TinyLM above; ``grasp``: None, ``"summed"`` or ``"per-head"``."""
    torch.manual_seed(0)
    d, L, T, B = (128, 2, 128, 8) if quick else (256, 6, 256, 32)
    cfg = TinyLMConfig(vocab_size=128, d_model=d, n_layers=L, context=T, ffn={"kind": "gelu"})
    m = TinyLM(cfg)
    add_lora(m, LORA_TARGETS, rank=8)
    m = m.to(device)
    factors = list(lora_modules(m))  # held by the loop, as finetune_lora does
    opt = torch.optim.AdamW(lora_parameters(m), lr=1e-3)
    for p in lora_parameters(m):
        p.requires_grad_(True)
    x = torch.randint(0, 128, (B, T), device=device)
    u = torch.randn(d, generator=torch.Generator().manual_seed(1))
    g = None if grasp is None else GRASP(u, through=TINYLM_THROUGH, per_head=grasp == "per-head")
    if g is not None:
        g.init(m)  # builds the cached bases outside the timed steps

    def step():
        _, loss = m(x, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if g is not None:
            g.project(m, factors)

    # the projection alone, with the loop's modules and with a walk over the model per call
    step.project = None if g is None else (lambda: g.project(m, factors))
    step.project_walk = None if g is None else (lambda: g.project(m))
    return step


def grasp_overhead(args, name: str) -> None:
    rows = []
    for dev in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        steps = {a: lora_step(dev, args.quick, a) for a in (None, "summed", "per-head")}
        # three rounds, the arms in turn in each (median of 10 after 3 warm-ups); best round
        rounds = [{a: _time(f, dev, reps=10, warmup=3) for a, f in steps.items()} for _ in range(3)]
        t = {a: min(r[a] for r in rounds) for a in steps}
        for a in ("summed", "per-head"):
            proj = _time(steps[a].project, dev, reps=20, warmup=3)
            walk = _time(steps[a].project_walk, dev, reps=20, warmup=3)
            rows.append({"device": dev, "GRASP rule": a, "plain LoRA step ms": 1e3 * t[None],
                         "GRASP step ms": 1e3 * t[a], "ratio": t[a] / t[None],
                         "projection alone ms": 1e3 * proj,
                         "(plain + projection) / plain": 1 + proj / t[None],
                         "projection, modules found per call ms": 1e3 * walk})  # fmt: skip
            print(rows[-1], flush=True)
    print(f"## GRASP overhead ({name}; {machine()})\n" + markdown_table(rows))
    path = save("gpu_grasp_overhead", args.out, {"device": name, "rows": rows})
    print(f"\nwrote {path}")


def surge_step(device: str, quick: bool):
    ssm = LinearGaussianSSM.random(dim=10, obs_every=2, obs_noise=0.25)
    tr = LinearGaussianDiffusion(ssm.A, ssm.Q).to(device)
    n = 1024 if quick else 8192
    _, ys = ssm.simulate(1, 8, generator=1)
    parts = torch.randn(8, n, 10, dtype=torch.float64, device=device)
    f = SURGE(tr, ssm.observation, n, 50, seed=0, verbose=False)
    y = ys.to(device)
    return lambda: f.filter(y, particles=parts)


def basis_call(device: str):
    g = torch.Generator().manual_seed(0)
    r = (torch.rand(1024, generator=g) < 0.3).double().to(device)
    p0 = (0.1 + 0.8 * torch.rand(1024, generator=g, dtype=torch.float64)).to(device)
    return lambda: basis_advantages(r, p0)


MOA_ARMS = {
    "SwiGLU": {"kind": "swiglu"},
    "LA (bi-sided)": {"kind": "la", "variant": "bi_sided"},
    "bi-MoA (gated)": {"kind": "moa", "variant": "bi_sided"},
}


def _moa_factories(corpus, quick: bool):
    d, L, T = (128, 2, 128) if quick else (256, 6, 256)
    return {
        a: (
            lambda ffn=ffn: TinyLM(
                TinyLMConfig(
                    vocab_size=corpus.vocab_size, d_model=d, n_layers=L, context=T, ffn=ffn
                )
            )
        )
        for a, ffn in MOA_ARMS.items()
    }, (d, L, T)


def moa_sweep(args, name: str) -> None:
    corpus = pydoc_corpus()
    factories, (d, L, T) = _moa_factories(corpus, args.quick)
    steps = 50 if args.quick else 600
    for lr in (4e-3, 1e-3, 2e-3):  # the new rates first: a cut-short run keeps them
        rows, raw = paired_comparison(factories, corpus, [0, 1], [lr], steps=steps,
                                      batch_size=32, warmup=steps // 10, eval_batches=20,
                                      device="cuda", log=log)  # fmt: skip
        per_seed = {f"{a}|{s}": r.val_loss for (a, _, s), r in raw.items()}
        print(f"## lr {lr} ({name}; d = {d}, {L} layers, {steps} steps)\n" + markdown_table(rows))
        save(f"moa_sweep_lr{lr:g}", args.out, {"device": name, "rows": rows, "val": per_seed})


def main():
    args = parse_args(__doc__.splitlines()[0], flags=("--moa-sweep", "--grasp"))
    if args.grasp and not torch.cuda.is_available():  # the CPU rows alone
        return grasp_overhead(args, "no CUDA device")
    if not torch.cuda.is_available():
        skip("needs CUDA (only --grasp runs without it, giving the CPU rows)")
    name = torch.cuda.get_device_name()
    if args.moa_sweep:
        return moa_sweep(args, name)
    torch.set_num_threads(min(16, torch.get_num_threads()))
    if args.grasp:
        return grasp_overhead(args, name)
    paths = {
        "TinyLM step, SwiGLU": lambda dev: lm_step(dev, {"kind": "swiglu"}, args.quick),
        "TinyLM step, bi-MoA": lambda dev: lm_step(
            dev, {"kind": "moa", "variant": "bi_sided"}, args.quick
        ),
        "SURGE step (8 x 8192 particles, 50 levels)": lambda dev: surge_step(dev, args.quick),
        "basis_advantages (B = 1024)": basis_call,
    }
    rows = []
    for label, make in paths.items():
        t = {dev: _time(make(dev), dev) for dev in ("cpu", "cuda")}
        rows.append(
            {
                "path": label,
                "cpu ms": 1e3 * t["cpu"],
                "cuda ms": 1e3 * t["cuda"],
                "speed-up cpu/cuda": t["cpu"] / t["cuda"],
            }
        )
        print(rows[-1], flush=True)
    corpus = pydoc_corpus()
    factories, (d, L, T) = _moa_factories(corpus, args.quick)
    steps = 50 if args.quick else 600
    moa_rows, _ = paired_comparison(
        factories,
        corpus,
        [0, 1, 2],
        [2e-3],
        steps=steps,
        batch_size=32,
        warmup=steps // 10,
        eval_batches=20,
        device="cuda",
    )
    header = f"{name}; {machine()}"
    print(f"## CUDA vs CPU ({header})\n" + markdown_table(rows))
    print(f"\n## MoA at GPU scale, d = {d}, {L} layers, {steps} steps\n" + markdown_table(moa_rows))
    path = save("gpu_timing", args.out, {"device": name, "paths": rows, "moa": moa_rows})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
