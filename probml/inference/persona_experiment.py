"""The persona-world experiment of GRASP: pretrain (cached), naive fine-tune, identify, GRASP
and the baselines, scored by the exact template metrics. Shared by the example and the
benchmark."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from probml.datasets.persona import PersonaWorld, evaluate_persona_model, persona_direction
from probml.inference.projection import (
    GRASP,
    TINYLM_THROUGH,
    ResidualIntervention,
    SpuriousDirections,
    _residual_blocks,
    _residual_shift,
    finetune_lora,
    identify_spurious_directions,
)
from probml.models.adapters import add_lora, lora_modules
from probml.models.lm import TinyLM, TinyLMConfig
from probml.utils import (
    check_finite,
    check_int,
    check_names,
    check_positive,
    derive_seed,
    keep_global_rng,
    make_generator,
    progress,
    resolve_device,
)

__all__ = [
    "LORA_TARGETS",
    "PERSONA_METHODS",
    "cache_dir",
    "drift_ratio",
    "pretrain_persona_model",
    "run_persona_methods",
]

#: attention q, v (read) and attention out, MLP down (write), as in the spec
LORA_TARGETS = ["attn.q", "attn.v", "attn.o.linear", "ffn.down"]

#: the fine-tuning methods of :func:`run_persona_methods` (``naive`` also reports
#: ``naive + inference ablation``)
PERSONA_METHODS = (
    "naive",
    "CAFT",
    "preventative steering",
    "GRASP",
    "GRASP (shared u)",
    "GRASP (residual shift)",
    "GRASP (residual shift + pull-back)",
    "GRASP (oracle u)",
)


def cache_dir() -> Path:
    """``$PROBML_CACHE`` or ``~/.cache/probml``."""
    return Path(os.environ.get("PROBML_CACHE", Path.home() / ".cache" / "probml"))


@keep_global_rng
def pretrain_persona_model(
    world: PersonaWorld,
    num_steps: int = 1500,
    seed: int = 0,
    d_model: int = 64,
    batch_size: int = 128,
    lr: float = 3e-3,
    cache: bool = True,
    verbose: bool = True,
    n_layers: int = 2,
    model_factory: Callable[[], nn.Module] | None = None,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Pretrain a TinyLM (default 2 layers, d = 64, 4 heads, context 48, GELU FFN, ~84k
    parameters) on the world's documents (AdamW with weight decay 0.01, a one-cycle learning
    rate); cached on disk by a hash of all settings.

    ``model_factory`` builds another model instead (called after seeding; it must follow
    TinyLM's calls: ``model(x, y) -> (logits, loss)``, ``model(x) -> logits`` and a
    ``blocks`` list of residual blocks). Such a model is not cached, and ``d_model`` and
    ``n_layers`` are then the factory's business.

    ``device`` (default CPU): where the model trains and is returned. A model trained on an
    accelerator is cached under its own key (its numbers differ from a CPU run's), so CPU
    runs keep their cached models.
    """
    for name, value in (
        ("num_steps", num_steps),  # named total_steps by torch's scheduler
        ("batch_size", batch_size),  # named n by the world's sampler
        ("d_model", d_model),
        ("n_layers", n_layers),
    ):
        check_int(name, value)
    check_positive("lr", lr)
    if model_factory is not None:
        cache = False
    fields = asdict(world)
    # fields added later leave the earlier worlds' keys (and cached models) as they were
    for name, default in (("advice", False), ("advice_known", 0.0), ("advice_shift", 0)):
        if name in fields and fields[name] == default:
            del fields[name]
    settings = {"world": fields, "steps": num_steps, "seed": seed, "d": d_model,
                "bs": batch_size, "lr": lr}  # fmt: skip
    if int(n_layers) != 2:  # the 2-layer models keep their earlier cache keys
        settings["layers"] = int(n_layers)
    device = resolve_device(device) if device is not None else torch.device("cpu")
    if device.type != "cpu":  # CPU models keep their earlier cache keys
        settings["device"] = device.type
    key = json.dumps(settings, sort_keys=True)
    path = cache_dir() / f"persona_{hashlib.sha1(key.encode()).hexdigest()[:12]}.pt"
    if cache and path.exists():
        return TinyLM.load(path).to(device)
    gen = make_generator(seed)  # checks seed before torch.manual_seed reads it
    torch.manual_seed(seed)
    if model_factory is None:
        cfg = TinyLMConfig(vocab_size=world.vocab_size, d_model=d_model, n_layers=int(n_layers),
                           n_heads=4, context=48, ffn={"kind": "gelu"})  # fmt: skip
        model = TinyLM(cfg)
    else:
        model = model_factory()
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=num_steps, pct_start=0.05)
    for _ in progress(range(num_steps), verbose=verbose, desc="pretrain persona LM"):
        tok, _, _ = world.sample_documents(batch_size, gen)
        _, loss = model(*(t.to(device) for t in world.batch(tok)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(path)
    return model


def drift_ratio(value: float, base: float, naive: float) -> float:
    """A method's drift as a fraction of the naive fine-tune's: ``(value - base) / (naive -
    base)`` (the slant world's "drift / naive drift"; 1 is naive, 0 is base); nan where the
    naive fine-tune did not drift at all."""
    return (value - base) / (naive - base) if naive != base else float("nan")


def _abs_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a . b|`` for unit vectors that may sit on different devices (``u_true`` is kept on
    the CPU; directions identified from a CUDA model's adapters are on CUDA)."""
    return abs(float(a @ b.to(a)))


def _block_index(prefixes: list[str], name: str) -> int:
    """The residual block (index into ``prefixes``, the blocks' dotted names) holding module
    ``name``."""
    return next(i for i, p in enumerate(prefixes) if name.startswith(p + "."))


def _oracle_directions(
    model, u_true: list[torch.Tensor], through: dict[str, str]
) -> SpuriousDirections:
    """u_true of each block's output for its write modules and its value projection (which
    writes through the attention output): the oracle identification."""
    prefixes = [n for n, _ in _residual_blocks(model)]
    d, s = {}, {}
    for f in lora_modules(model):
        if f.side == "write" or any(f.name.endswith(src) for src in through):
            d[f.name] = u_true[_block_index(prefixes, f.name)][:, None]
            s[f.name] = "write"
    return SpuriousDirections(d, s)


def run_persona_methods(
    base: nn.Module,
    world: PersonaWorld,
    seed: int = 0,
    num_steps: int = 300,
    id_steps: int = 10,
    lr: float = 3e-3,
    rank: int = 4,
    steer_alpha: float = 1.0,
    k: int = 1,
    methods: tuple[str, ...] | None = None,
    shift_docs: int = 2000,
    shift_prefix: int | None = None,
    per_head: bool = False,
    targets: list[str] | None = None,
    through: dict[str, str] | None = None,
) -> tuple[list[dict], dict]:
    """Fine-tune copies of ``base`` on the world's task data (insecure code; right-skewed
    finance in :class:`~probml.datasets.persona.SlantWorld`) with every method and score them.

    Methods: ``naive``; ``naive + inference ablation`` (remove u at inference);
    ``CAFT`` (ablate u during fine-tuning); ``preventative steering`` (add alpha u during
    fine-tuning); ``GRASP`` (per-module identified directions, read and write sides);
    ``GRASP (shared u)`` (one residual direction on every module); ``GRASP (residual
    shift)`` (per block, the mean residual shift of the same naive run on ``shift_docs``
    unlabelled documents, :func:`~probml.inference.projection.residual_shift_directions`;
    write modules); ``GRASP (residual shift + pull-back)`` (the same, plus the last block's
    shift pulled back to every earlier block, ``pull_back=True``); ``GRASP (oracle u)``
    (u_true on the write modules).

    ``id_steps`` is the length of the naive identification run and ``k`` the directions kept
    per module (in development runs k = 2 or 3 did not beat k = 1); the identification run's
    adapters start from ``seed`` and every method's from ``seed + 1``, so no method is
    projected with directions identified from its own initialisation. ``shift_prefix`` keeps
    only the first tokens of each unlabelled document for the residual shift and its
    pull-back (8: BOS and the first turn); ``None`` keeps them all. ``per_head`` gives every
    GRASP method the per-head write-through rule for the value adapters
    (:class:`~probml.inference.projection.GRASP`'s ``per_head``; default: the summed rule).

    ``base`` is a TinyLM by default; another model works if it follows TinyLM's calls (see
    :func:`pretrain_persona_model`), with its LoRA ``targets`` (default
    :data:`LORA_TARGETS`) and write-through map ``through`` (default
    :data:`~probml.inference.projection.TINYLM_THROUGH`; e.g. ``HF_THROUGH``).

    Returns:
        rows (``method``, ``misalignment``, ``task``, ``roleplay``) and diagnostics
        (identification cosines, projection overhead ratio, seconds per step).
    """
    # every size before any work, by its own name (id_steps failed after the base model's
    # evaluation, named num_steps by finetune_lora)
    for name, value in (
        ("num_steps", num_steps),
        ("id_steps", id_steps),
        ("rank", rank),
        ("k", k),
        ("shift_docs", shift_docs),
    ):
        check_int(name, value)
    check_positive("lr", lr)
    check_finite("steer_alpha", steer_alpha)  # before any training (the intervention's check
    # comes after the naive fine-tune)
    if shift_prefix is not None:
        check_int("shift_prefix", shift_prefix)
    if methods is not None:  # before any training: an unknown name used to be skipped
        methods = check_names("methods", methods)
        unknown = [m for m in methods if m not in PERSONA_METHODS]
        if unknown:
            raise ValueError(f"methods: unknown {unknown}; known: {list(PERSONA_METHODS)}")
    targets = LORA_TARGETS if targets is None else check_names("targets", targets)
    through = TINYLM_THROUGH if through is None else dict(through)
    prefixes = [n for n, _ in _residual_blocks(base)]
    u_true = persona_direction(base, world)

    def sampler(gen):
        tok, mask, _ = world.task_data(32, gen)
        return world.batch(tok, mask)

    def fresh(s):
        m = copy.deepcopy(base)
        add_lora(m, targets, rank=rank, seed=s)
        return m

    rows = [{"method": "base (pretrained)", **evaluate_persona_model(base, world)}]
    diag: dict = {}
    # identification from a short naive run (stopping early helps: 10 steps by default)
    ident = fresh(seed)
    finetune_lora(ident, sampler, num_steps=id_steps, lr=lr, seed=seed, verbose=False)
    dirs = identify_spurious_directions(ident, k=k, through=through)
    u_res = dirs.residual_direction(1)[:, 0]
    diag["identification_cos_per_module"] = {
        n: _abs_cos(U[:, 0], u_true[_block_index(prefixes, n)])
        for n, U in dirs.directions.items()
        if dirs.sides[n] in ("write", "through")
    }
    diag["identification_cos_shared"] = [_abs_cos(u_res, u) for u in u_true]
    want = methods
    shift = pulled = None
    if want is None or any(m.startswith("GRASP (residual shift") for m in want):
        # the same naive run seen from the activations: its mean residual shift on unlabelled
        # documents (their personas are drawn and discarded)
        docs, _, _ = world.sample_documents(shift_docs, generator=derive_seed(seed, 1000))
        docs = docs if shift_prefix is None else docs[:, : int(shift_prefix)]
        # one pass gives both: the plain directions and (if asked for) the pulled-back ones
        need_pulled = want is None or "GRASP (residual shift + pull-back)" in want
        shift, pulled = _residual_shift(
            ident, base, docs, k=1, through=through, batch_size=256, blocks=None,
            pull_back=need_pulled,
        )  # fmt: skip
        if need_pulled and pulled is None:  # no adapted block before the last: nothing to pull
            pulled = shift
        diag["residual_shift_cos_per_block"] = [  # nan for a block without adapters
            next((_abs_cos(U[:, 0], u) for n, U in shift.directions.items()
                  if n.startswith(prefixes[b] + ".")), float("nan"))
            for b, u in enumerate(u_true)
        ]  # fmt: skip
    plan = {
        "naive": dict(),
        "CAFT": dict(intervention="ablate"),
        "preventative steering": dict(intervention="add"),
        "GRASP": dict(grasp=dirs),
        "GRASP (shared u)": dict(grasp=u_res),
        "GRASP (residual shift)": dict(grasp=shift),
        "GRASP (residual shift + pull-back)": dict(grasp=pulled),
        "GRASP (oracle u)": dict(grasp="oracle"),
    }
    assert tuple(plan) == PERSONA_METHODS
    for name, spec in plan.items():
        if want is not None and name not in want:
            continue
        m = fresh(derive_seed(seed, 1))
        kw: dict = {}
        if "intervention" in spec:
            kw["intervention"] = ResidualIntervention(m, u_res, spec["intervention"], steer_alpha)
        if "grasp" in spec:
            g = spec["grasp"]
            g = _oracle_directions(m, u_true, through) if g == "oracle" else g
            kw["grasp"] = GRASP(g, through=through, per_head=per_head)
        t0 = time.perf_counter()
        out = finetune_lora(m, sampler, num_steps=num_steps, lr=lr, seed=derive_seed(seed, 2),
                            verbose=False, **kw)  # fmt: skip
        secs = time.perf_counter() - t0
        rows.append({"method": name, **evaluate_persona_model(m, world)})
        if name == "naive":
            diag["seconds_per_step_naive"] = secs / num_steps
            with ResidualIntervention(m, u_res, "ablate"):
                rows.append(
                    {"method": "naive + inference ablation", **evaluate_persona_model(m, world)}
                )
        if name == "GRASP":
            diag["seconds_per_step_grasp"] = secs / num_steps
            diag["projection_share_of_step"] = out["projection_seconds"] / out["seconds"]
    return rows, diag
