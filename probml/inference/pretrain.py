r"""Paired-seed pretraining harness shared by the MoA and scale-vector work.

* Corpora: the character-level text of :mod:`pydoc_data.topics` (ships with Python; 90/10
  split by position) and a synthetic language (a sparse second-order Markov source).
* Paired seeds: for a seed, every arm is built with the same torch seed and then receives the
  reference arm's initial values for every parameter it shares (same name and shape); every
  arm sees the identical batch order. Differences are therefore paired.
* Training: AdamW, linear warm-up then cosine decay; weight-decay groups from
  :func:`param_groups` (``rule="role"``: decay matrices and Input-Norm scales, not
  Output-Norm scales; ``rule="ndim"``: the common practice, decay only ``ndim >= 2``).
* Results: each arm at its best learning rate of a small sweep; mean paired difference of the
  final validation loss against the first arm, with its standard error.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from probml.models.layers import ScaleVector
from probml.results import mean_se
from probml.utils import (
    check_int,
    check_interval,
    check_positive,
    check_seed,
    keep_global_rng,
    progress,
    resolve_device,
)

__all__ = [
    "CharCorpus",
    "pydoc_corpus",
    "synthetic_corpus",
    "param_groups",
    "paired_models",
    "TrainResult",
    "train_lm",
    "warmup_cosine",
    "activation_bytes",
    "paired_comparison",
]


class CharCorpus:
    """Character-level corpus: ``vocab``, ``train`` and ``val`` long tensors (90/10 by position)."""

    def __init__(self, text: str, val_fraction: float = 0.1):
        check_interval("val_fraction", val_fraction)
        if len(text) < 1000:
            raise ValueError(f"corpus too small: text has {len(text)} characters, need >= 1000")
        self.vocab = sorted(set(text))
        lookup = {c: i for i, c in enumerate(self.vocab)}
        data = torch.tensor([lookup[c] for c in text], dtype=torch.long)
        cut = int(len(data) * (1 - val_fraction))
        self.train, self.val = data[:cut], data[cut:]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)


def pydoc_corpus(max_chars: int | None = None) -> CharCorpus:
    """The text of ``pydoc_data.topics`` (about 465k characters), topics in sorted order;
    ``max_chars`` (``>= 1``) keeps the first characters only."""
    from pydoc_data.topics import topics

    if max_chars is not None:  # -1 dropped the last character, 0 kept the whole text
        max_chars = check_int("max_chars", max_chars)
    text = "\n".join(topics[k] for k in sorted(topics))
    return CharCorpus(text if max_chars is None else text[:max_chars])


def synthetic_corpus(
    n_chars: int = 200_000, vocab: int = 32, branching: int = 3, seed: int = 0
) -> CharCorpus:
    """A second-order Markov source: each context (a, b) allows ``branching`` next symbols
    with Dirichlet weights; entropy per symbol is known to be at most log(branching)."""
    check_int("n_chars", n_chars, 1000)
    check_int("vocab", vocab, 2)
    check_int("branching", branching)
    rng = np.random.default_rng(check_seed("seed", seed))
    nxt = rng.integers(0, vocab, size=(vocab, vocab, branching))
    probs = rng.dirichlet(np.ones(branching), size=(vocab, vocab))
    seq = np.empty(n_chars, dtype=np.int64)
    seq[:2] = rng.integers(0, vocab, 2)
    u = rng.uniform(size=n_chars)
    cum = np.cumsum(probs, axis=-1)  # once, not per step (the same sums, bit for bit)
    for t in range(2, n_chars):  # a Markov chain: each symbol depends on the last two
        c = np.searchsorted(cum[seq[t - 2], seq[t - 1]], u[t])
        seq[t] = nxt[seq[t - 2], seq[t - 1], min(c, branching - 1)]
    alphabet = [chr(ord("A") + i) if i < 26 else chr(ord("a") + i - 26) for i in range(vocab)]
    return CharCorpus("".join(alphabet[i] for i in seq))


def param_groups(model: nn.Module, weight_decay: float, rule: str = "role") -> list[dict]:
    """AdamW parameter groups.

    ``rule="role"``: decay every ``ndim >= 2`` weight and every Input-Norm scale
    (:class:`ScaleVector` with ``role="input"``); no decay for Output-Norm scales and other
    vectors (biases, gates' biases, LA/MoA coefficients). ``rule="ndim"``: decay exactly the
    ``ndim >= 2`` parameters. Every parameter is in exactly one group (tied weights once).
    """
    if rule not in ("role", "ndim"):
        raise ValueError(f"rule must be 'role' or 'ndim', got {rule!r}")
    weight_decay = check_positive("weight_decay", weight_decay, strict=False)
    role_of: dict[int, str] = {}
    for m in model.modules():
        if isinstance(m, ScaleVector):
            for p in m.parameters(recurse=False):
                role_of[id(p)] = m.role
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        if p.ndim >= 2 or (rule == "role" and role_of.get(id(p)) == "input"):
            decay.append(p)
        else:
            no_decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


@keep_global_rng
def paired_models(factories: dict[str, Callable[[], nn.Module]], seed: int) -> dict[str, nn.Module]:
    """Build every arm with ``torch.manual_seed(seed)``, then copy the first arm's initial values
    into every parameter/buffer the others share by name and shape."""
    if not factories:
        raise ValueError("factories must name at least one arm")
    seed = check_seed("seed", seed)
    models = {}
    for name, make in factories.items():
        torch.manual_seed(seed)
        models[name] = make()
    ref = next(iter(models.values())).state_dict()
    for m in list(models.values())[1:]:
        own = m.state_dict()
        shared = {k: v for k, v in ref.items() if k in own and own[k].shape == v.shape}
        m.load_state_dict(shared, strict=False)
    return models


@dataclass
class TrainResult:
    val_loss: float
    train_curve: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


def _batch(data: torch.Tensor, starts: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = starts[:, None] + torch.arange(T + 1)
    chunk = data[idx]
    return chunk[:, :-1], chunk[:, 1:]


@torch.no_grad()
def _evaluate(model, data, batch_size, T, n_batches, device) -> float:
    model.eval()
    g = torch.Generator().manual_seed(12345)  # the same validation windows for every arm
    losses = []
    for _ in range(n_batches):
        starts = torch.randint(0, len(data) - T - 1, (batch_size,), generator=g)
        x, y = _batch(data, starts, T)
        losses.append(float(model(x.to(device), y.to(device))[1]))
    model.train()
    return float(np.mean(losses))


def _check_corpus_fits(model: nn.Module, corpus: CharCorpus) -> None:
    """Refuse, before any step, a corpus the model cannot train or be scored on: a window is
    ``context + 1`` tokens and must fit strictly inside each split; every token id must be
    below the model's vocabulary size."""
    T = model.cfg.context
    for split in ("train", "val"):
        n = len(getattr(corpus, split))
        if n < T + 2:
            raise ValueError(
                f"corpus.{split} has {n} tokens, fewer than the model's context + 2 = {T + 2}; "
                "use a longer corpus (or a larger val_fraction) or a shorter context"
            )
    if corpus.vocab_size > model.cfg.vocab_size:
        raise ValueError(
            f"corpus has {corpus.vocab_size} symbols but the model's vocab_size is "
            f"{model.cfg.vocab_size}; build the model with vocab_size=corpus.vocab_size"
        )


def warmup_cosine(step: int, warmup: int, steps: int) -> float:
    r"""The learning-rate factor of step ``step`` (0-based) of ``steps``: linear warm-up
    :math:`(s + 1)/w` over the first ``warmup`` steps, then cosine decay to 10%,
    :math:`0.1 + 0.45\,(1 + \cos(\pi (s - w) / \max(1, S - w)))`."""
    if step < warmup:
        return (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))


def train_lm(
    model: nn.Module,
    corpus: CharCorpus,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 3e-3,
    warmup: int = 30,
    weight_decay: float = 0.1,
    rule: str = "role",
    batch_seed: int = 0,
    device: str | torch.device | None = "cpu",
    eval_batches: int = 20,
    verbose: bool = False,
) -> TrainResult:
    """Train ``model`` (a :class:`~probml.models.lm.TinyLM`) for ``steps`` AdamW steps
    (betas 0.9, 0.95; the schedule :func:`warmup_cosine`; gradients clipped to norm 1).

    The batch order depends only on ``batch_seed`` (identical across arms). Returns the final
    validation loss (mean cross-entropy in nats over fixed validation windows)."""
    for name, value, low in (
        ("steps", steps, 1), ("batch_size", batch_size, 1), ("warmup", warmup, 0),
        ("eval_batches", eval_batches, 1),
    ):  # fmt: skip
        check_int(name, value, low)
    check_positive("lr", lr, strict=False)
    batch_seed = check_seed("batch_seed", batch_seed)
    T = model.cfg.context
    _check_corpus_fits(model, corpus)
    dev = resolve_device(device)
    model.to(dev).train()
    opt = torch.optim.AdamW(param_groups(model, weight_decay, rule), lr=lr, betas=(0.9, 0.95))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, steps))
    g = torch.Generator().manual_seed(batch_seed)
    curve = []
    t0 = time.perf_counter()
    for _ in progress(range(steps), verbose=verbose, desc="pretrain"):
        starts = torch.randint(0, len(corpus.train) - T - 1, (batch_size,), generator=g)
        x, y = _batch(corpus.train, starts, T)
        _, loss = model(x.to(dev), y.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        curve.append(float(loss.detach()))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    val = _evaluate(model, corpus.val, batch_size, T, eval_batches, dev)
    return TrainResult(val, curve, secs, steps)


def activation_bytes(model: nn.Module, idx: torch.Tensor) -> int:
    """Bytes of tensors saved for the backward pass in one forward on ``idx`` (the activation
    memory of a training step; device-independent, so comparable on CPU)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, loss = model(idx, idx)
    del loss
    return total


def paired_comparison(
    factories: dict[str, Callable[[], nn.Module]],
    corpus: CharCorpus,
    seeds: Sequence[int],
    lrs: Sequence[float] | dict[str, Sequence[float]],
    verbose: bool = False,
    log: Callable[[str], None] | None = None,
    **train_kwargs,
) -> tuple[list[dict], dict]:
    """Train every arm at every learning rate for every seed (paired init and batches).

    ``log``, if given, receives one line per finished run (seed, arm, learning rate,
    validation loss, seconds): long benchmarks pass ``print`` to stderr to show progress.

    Returns ``(rows, raw)``: one row per arm with its best learning rate (lowest mean
    validation loss over seeds), its mean validation loss, and the mean paired difference to
    the first arm at each arm's best learning rate with the standard error; ``raw`` maps
    ``(arm, lr, seed)`` to the :class:`TrainResult`.
    """
    raw: dict = {}
    names = list(factories)
    for seed in seeds:
        for lr_i in range(max(len(v) for v in (lrs.values() if isinstance(lrs, dict) else [lrs]))):
            models = paired_models(factories, seed)
            for name in names:
                arm_lrs = lrs[name] if isinstance(lrs, dict) else lrs
                if lr_i >= len(arm_lrs):
                    continue
                r = raw[name, arm_lrs[lr_i], seed] = train_lm(
                    models[name],
                    corpus,
                    lr=arm_lrs[lr_i],
                    batch_seed=seed,
                    verbose=verbose,
                    **train_kwargs,
                )
                if log is not None:
                    log(
                        f"seed {seed}, {name}, lr {arm_lrs[lr_i]:g}: "
                        f"val loss {r.val_loss:.4f} ({r.seconds:.0f} s)"
                    )
    rows = []
    best = {}
    for name in names:
        arm_lrs = lrs[name] if isinstance(lrs, dict) else lrs
        means = {lr: np.mean([raw[name, lr, s].val_loss for s in seeds]) for lr in arm_lrs}
        best[name] = min(means, key=means.get)
    base = names[0]
    for name in names:
        v = np.array([raw[name, best[name], s].val_loss for s in seeds])
        b = np.array([raw[base, best[base], s].val_loss for s in seeds])
        d = v - b
        _, se = mean_se(d)  # paired: the standard error of the difference
        secs = np.mean([raw[name, best[name], s].seconds for s in seeds])
        rows.append(
            {
                "arm": name,
                "best lr": best[name],
                "val loss": float(v.mean()),
                f"paired diff vs {base}": float(d.mean()),
                "se": se,
                "seconds/run": float(secs),
            }
        )
    return rows, raw
