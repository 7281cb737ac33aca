r"""GRASP: identify a spurious direction from naive LoRA weights, then fine-tune without it.

**Identification.** For every adapted module, :math:`\Delta W = s B A`; modules that *write*
to the residual stream contribute the top-``k`` left singular vectors of :math:`\Delta W`,
modules that *read* it the top-``k`` right singular vectors
(:func:`identify_spurious_directions`). A naive fine-tune learns the singular components of
the oracle update in decreasing order of strength, so when a rank-1 spurious part is stronger
than every task component it is the leading direction (Davis-Kahan bounds the angle).

**Projection** (:class:`GRASP`). With :math:`P = I - U U^\top` (hard) or
:math:`I - \alpha U U^\top` (soft), a fresh adapter is initialised with :math:`A \leftarrow A P`
on read modules, and **after every optimizer step** :math:`B \leftarrow P B` (write) and
:math:`A \leftarrow A P` (read), so that :math:`U^\top \Delta W = 0` (write) and
:math:`\Delta W U = 0` (read) hold exactly. Projecting only the gradient would not survive
Adam's per-coordinate rescaling. :math:`W_0` is untouched: pretrained reading and writing along
:math:`u` survive.

**Baselines.** :class:`ResidualIntervention` adds :math:`\alpha u` to (``"add"``) or removes
the :math:`u` component from (``"ablate"``) every block's output: inference-time steering /
ablation, CAFT (ablate during fine-tuning) and preventative steering (add during
fine-tuning). :func:`finetune_lora` trains any of them with a progress bar.
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from probml.models.adapters import LoRAFactors, lora_modules
from probml.utils import (
    check_finite,
    check_int,
    check_interval,
    check_names,
    check_positive,
    make_generator,
    module_list,
    progress,
    shape_of,
)

__all__ = [
    "SpuriousDirections",
    "TINYLM_THROUGH",
    "HF_THROUGH",
    "identify_spurious_directions",
    "residual_shift_directions",
    "GRASP",
    "ResidualIntervention",
    "finetune_lora",
]


#: modules whose output reaches the residual stream through a frozen linear of the same block
#: (TinyLM: the value projection through the attention output; Hugging Face: v_proj -> o_proj)
TINYLM_THROUGH = {"attn.v": "attn.o.linear"}
HF_THROUGH = {"v_proj": "o_proj"}


def _head_dim(attn: nn.Module, out_dim: int, n_rep: int) -> int | None:
    """The value head width of attention module ``attn`` whose value projection writes
    ``out_dim`` features: Hugging Face's ``head_dim``, or ``out_dim`` over the number of value
    heads (``num_key_value_heads``; without grouped queries also TinyLM's ``h`` or
    ``num_heads``, which count query heads). None if the module does not say, or if the width
    does not divide ``out_dim``."""
    attrs = ("num_key_value_heads",) if n_rep > 1 else ("num_key_value_heads", "h", "num_heads")
    hd = getattr(attn, "head_dim", None)
    if not isinstance(hd, int):
        n = next((getattr(attn, a) for a in attrs if isinstance(getattr(attn, a, None), int)), 0)
        hd = out_dim // n if n > 0 and out_dim % n == 0 else None
    return hd if hd and out_dim % hd == 0 else None


def _through_map(
    model: nn.Module, name: str, through: dict[str, str] | None, out_dim: int
) -> tuple[torch.Tensor, int, int | None] | None:
    """``(W, n_rep, head_dim)`` for a module ``name`` (output width ``out_dim``) listed in
    ``through``, else None: ``W`` (``d x n_rep out_dim``) is the frozen linear it writes
    through, ``n_rep`` the query heads per value head (grouped-query attention: 1 without),
    ``head_dim`` the value head width (None where the attention module does not say)."""
    for src, dst in (through or {}).items():
        if name == src or name.endswith("." + src):
            prefix = name[: len(name) - len(src)]
            target = model.get_submodule(prefix + dst)
            base = getattr(target, "base", None) or getattr(target, "base_layer", None) or target
            W = base.weight
            parent = name.rpartition(".")[0]  # the value projection's attention module
            attn = model.get_submodule(parent) if parent else model
            n_rep = W.shape[1] // out_dim
            hd = _head_dim(attn, out_dim, n_rep) if W.shape[1] % out_dim == 0 else None
            if W.shape[1] % out_dim or (n_rep > 1 and hd is None):
                raise ValueError(
                    f"through: {name!r} writes {out_dim} features but {prefix + dst!r} reads "
                    f"{W.shape[1]}; beyond equal widths only grouped-query attention (an "
                    "attention module with head_dim or num_key_value_heads) is handled"
                )
            return W, n_rep, hd
    return None


def _through_weight(
    model: nn.Module, name: str, through: dict[str, str] | None, out_dim: int
) -> torch.Tensor | None:
    """The frozen map ``W`` (``d x out_dim``) through which module ``name`` writes to the
    residual stream, or None when ``name`` is not in ``through``.

    Grouped-query attention: each of the ``kv`` value heads feeds ``n_rep`` query heads, so
    the output projection :math:`W_o` (``d x kv n_rep h``) acts on the value as
    :math:`W_o R`, whose columns for a value head are the sums of :math:`W_o`'s columns for
    its ``n_rep`` copies (Hugging Face's ``repeat_kv`` order: copies of a head are adjacent).
    """
    found = _through_map(model, name, through, out_dim)
    if found is None:
        return None
    W, n_rep, hd = found
    if n_rep == 1:
        return W
    return W.reshape(W.shape[0], out_dim // hd, n_rep, hd).sum(2).reshape(-1, out_dim)


def _per_head_basis(W: torch.Tensor, U: torch.Tensor, n_rep: int, hd: int) -> torch.Tensor:
    r"""Orthonormal basis (``kv hd x r``) of the per-head write-through constraints.

    The attention output adds :math:`\sum_q W_{o,q} \sum_m a_q[n,m]\, \Delta v_{j(q)}[m]`
    to the residual stream (query head :math:`q` reads value head :math:`j(q) = q // n_{rep}`
    with its own weights :math:`a_q`). That is free of :math:`U` for every attention pattern
    iff :math:`U^\top W_{o,q} \Delta W_{v,j(q)} = 0` for every query head: for each value head,
    its rows of :math:`B` must be orthogonal to the ``n_rep k`` vectors :math:`W_{o,q}^\top U`.
    """
    d, k = U.shape
    n_q = W.shape[1] // hd
    C = (W.T @ U).reshape(n_q, hd, k)  # W_{o,q}^T U per query head
    M = torch.zeros(n_q // n_rep, hd, n_q, k, dtype=U.dtype, device=U.device)
    q = torch.arange(n_q, device=U.device)
    M[q // n_rep, :, q, :] = C  # each constraint lives on its value head's rows
    Q, S, _ = torch.linalg.svd(M.reshape(-1, n_q * k), full_matrices=False)
    return Q[:, S > S.max() * 1e-6]


@dataclass
class SpuriousDirections:
    """Per-module directions (orthonormal columns, ``dim x k``) in the residual-side space of
    each module (output space for write modules, input space for read modules)."""

    directions: dict[str, torch.Tensor]
    sides: dict[str, str]
    singular_values: dict[str, torch.Tensor] = field(default_factory=dict)

    def residual_direction(self, k: int = 1) -> torch.Tensor:
        r"""A shared residual-stream basis (``d x k``): top eigenvectors of
        :math:`\sum_j \sigma_j^2 u_j u_j^\top` over modules whose space has the most common
        dimension (the residual width)."""
        dims = [U.shape[0] for U in self.directions.values()]
        d = max(set(dims), key=dims.count)
        M = None
        for name, U in self.directions.items():
            if U.shape[0] != d:
                continue
            s = self.singular_values.get(name, torch.ones(U.shape[1]))[: U.shape[1]]
            term = (U * s.to(U) ** 2) @ U.T
            M = term if M is None else M + term
        _, vecs = torch.linalg.eigh(M)
        return vecs[:, -k:].flip(-1)


def identify_spurious_directions(
    model: nn.Module,
    k: int = 1,
    side: Literal["auto", "write", "read"] = "auto",
    through: dict[str, str] | None = None,
) -> SpuriousDirections:
    """Top-``k`` singular directions of every adapter's :math:`\\Delta W` (see module docs).

    Args:
        model: a model with LoRA adapters (ours or PEFT-style) after a naive fine-tune.
        k: directions per module, at most the adapters' rank (:math:`\\Delta W = BA` has no
            further singular directions).
        side: ``"auto"`` (from the module name), or force ``"write"``/``"read"`` everywhere.
        through: ``{module suffix: frozen-linear suffix}`` for modules that write to the
            residual through a frozen linear (e.g. :data:`TINYLM_THROUGH`): their effective
            residual update :math:`W \\Delta W` is analysed as a write (side ``"through"``).
    """
    if side not in ("auto", "write", "read"):
        raise ValueError(f"side must be 'auto', 'write' or 'read', got {side!r}")
    k = check_int("k", k)
    dirs, sides, svals = {}, {}, {}
    for f in lora_modules(model):
        rank = min(f.A.shape[0], f.A.shape[1], f.B.shape[0])  # Delta W = B A: rank <= this
        if k > rank:  # further singular vectors have singular value 0: noise
            raise ValueError(
                f"k must be <= the LoRA rank of every module: {f.name!r} has rank {rank}, got k={k}"
            )
        W = _through_weight(model, f.name, through, f.B.shape[0])
        with torch.no_grad():
            dW = f.delta_weight().float()
            if W is not None:
                dW = W.float() @ dW  # the update's effect on the residual stream
            U, S, Vh = torch.linalg.svd(dW, full_matrices=False)
        s = "through" if W is not None else (f.side if side == "auto" else side)
        dirs[f.name] = (U[:, :k] if s in ("write", "through") else Vh[:k].T).contiguous()
        sides[f.name] = s
        svals[f.name] = S[:k]
    if not dirs:
        raise ValueError("model has no LoRA adapters (lora_A / lora_B modules)")
    # a zero update (B = 0: an adapter never trained) has no singular direction: the SVD's
    # vectors there are arbitrary, and projecting them out would constrain noise
    idle = [name for name, sv in svals.items() if not bool(sv[0] > 0)]
    if idle:
        raise ValueError(
            f"the adapters of {idle[:5]}{' ...' if len(idle) > 5 else ''} hold no update "
            "(Delta W = 0): identify after the naive fine-tune, on adapters it trained"
        )
    return SpuriousDirections(dirs, sides, svals)


def _residual_blocks(model: nn.Module, path: str | None = None) -> list[tuple[str, nn.Module]]:
    """``(name, block)`` of every residual block: the module list at the dotted ``path``, or
    by default the first module list named ``blocks`` (TinyLM), ``layers`` or ``h`` (Hugging
    Face decoders)."""
    if path is not None:
        return [(f"{path}.{i}", blk) for i, blk in enumerate(module_list(model, path, "blocks"))]
    for name, mod in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(mod, nn.ModuleList) and leaf in ("blocks", "layers", "h"):
            return [(f"{name}.{i}", blk) for i, blk in enumerate(mod)]
    raise TypeError(
        "model needs a `blocks`, `layers` or `h` module list of residual blocks "
        "(or name the list with blocks=...)"
    )


@torch.no_grad()
def _block_outputs(
    model: nn.Module, tokens: torch.Tensor, path: str | None = None
) -> list[torch.Tensor]:
    """Every residual block's output (``N x T x d``) on ``tokens`` (hooks, no grad)."""
    outs: list[torch.Tensor] = []

    def hook(module, inputs, out):
        outs.append((out[0] if isinstance(out, tuple) else out).detach().double())

    handles = [blk.register_forward_hook(hook) for _, blk in _residual_blocks(model, path)]
    try:
        model(tokens.to(next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return outs


def residual_shift_directions(
    tuned: nn.Module,
    base: nn.Module,
    tokens: torch.Tensor,
    k: int = 1,
    through: dict[str, str] | None = None,
    batch_size: int = 256,
    blocks: str | None = None,
    pull_back: bool = False,
) -> SpuriousDirections:
    r"""Spurious directions from what a naive fine-tune changed in the residual stream on
    unlabelled text (**[design]**, ours: an activation-side alternative to
    :func:`identify_spurious_directions`).

    For every residual block :math:`b` the shift :math:`\delta_{b,n} = h^{tuned}_{b,n} -
    h^{base}_{b,n}` of its output is collected over all tokens :math:`n` of ``tokens``. The
    first direction is the mean shift :math:`\bar\delta_b / \lVert\bar\delta_b\rVert`;
    for ``k > 1`` the top ``k - 1`` principal directions of :math:`\delta_b` with the mean
    direction projected out follow. A spurious factor that the narrow fine-tune spreads to
    unrelated text moves every token the same way, so it dominates the mean shift, while the
    task's own changes stay on task-like tokens. No labels are used: ``tokens`` is any text
    of the pretraining distribution.

    With ``pull_back=True`` every block before the last also gets the last block's mean
    shift pulled back through the frozen ``base`` network: the direction :math:`g_b` in which a
    shift added uniformly to every token of block :math:`b`'s output moves the last block's
    output most along :math:`\bar u_L = \bar\delta_L / \lVert\bar\delta_L\rVert`,

    .. math::
        g_b \propto \sum_{n} \frac{\partial}{\partial h_{b,n}} \sum_{m}
        \bar u_L^\top h_{L,m}

    (the gradient at a zero probe added to block :math:`b`'s output). A write in an early block
    need not lie along that block's own shift to reach the readout: the frozen later blocks can
    turn it into a write along :math:`\bar u_L`, as the frozen attention output does for a
    value adapter (``through``). The pull-back closes that route to first order.

    Every write module of block :math:`b` (output into the residual stream; a module listed
    in ``through`` is pulled back by :class:`GRASP`) gets block :math:`b`'s directions; read
    modules get none. Blocks without adapted write modules get nothing (an adapter on some
    blocks only is fine: the others' outputs may not change at all).

    Args:
        tuned: the model after a short naive LoRA fine-tune (adapters active).
        base: the model before it (same architecture, no adapter or a zero one).
        tokens: ``N x T`` token ids of unlabelled text.
        k: directions per block.
        through: ``{module suffix: frozen-linear suffix}`` (e.g. :data:`TINYLM_THROUGH`):
            such modules (a value projection) also get their block's directions; pass the
            same mapping to :class:`GRASP`, which pulls them back.
        batch_size: documents per forward pass. Memory: the block outputs of one batch, plus
            a ``d x d`` second-moment matrix per block when ``k > 1``.
        blocks: the dotted name of the module list of residual blocks, the same in both
            models (default: the first list named ``blocks``, ``layers`` or ``h``; name it
            for a model with several, e.g. an encoder-decoder).
        pull_back: add :math:`g_b` (above) to every block but the last (**[design]**, ours;
            one more forward and backward pass of ``base`` per batch; no effect on a model
            with one block).

    Returns:
        :class:`SpuriousDirections` keyed by ``tuned``'s adapted write modules
        (``singular_values``: the norm of the mean shift, then the principal values; the
        pull-back column carries the last block's mean-shift norm).
    """
    plain, pulled = _residual_shift(tuned, base, tokens, k, through, batch_size, blocks, pull_back)
    return plain if pulled is None else pulled


def _residual_shift(
    tuned: nn.Module,
    base: nn.Module,
    tokens: torch.Tensor,
    k: int,
    through: dict[str, str] | None,
    batch_size: int,
    blocks: str | None,
    pull_back: bool,
) -> tuple[SpuriousDirections, SpuriousDirections | None]:
    """:func:`residual_shift_directions` without and (``pull_back``, when a block before the
    last has adapters) with the pull-back, from one pass over ``tokens``: the plain directions
    are the same tensors a call with ``pull_back=False`` returns."""
    k = check_int("k", k)
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.shape[0] < 1:
        raise ValueError("tokens must be an N x T tensor of token ids with N >= 1")
    batch_size = check_int("batch_size", batch_size)
    names = [n for n, _ in _residual_blocks(tuned, blocks)]
    if len(names) != len(_residual_blocks(base, blocks)):
        raise ValueError("tuned and base must have the same number of residual blocks")
    owner: dict[str, int] = {}  # adapted write (and write-through) modules -> their block
    for f in lora_modules(tuned):
        writes_through = any(f.name == t or f.name.endswith("." + t) for t in (through or {}))
        b = next((i for i, n in enumerate(names) if f.name.startswith(n + ".")), None)
        if (f.side == "write" or writes_through) and b is not None:
            owner[f.name] = b
    if not owner:
        raise ValueError("tuned has no adapted write modules inside its residual blocks")
    was = tuned.training, base.training
    tuned.eval(), base.eval()
    total, gram, count = None, None, 0
    try:
        for start in range(0, tokens.shape[0], int(batch_size)):
            chunk = tokens[start : start + int(batch_size)]
            shifts = [
                (a - b.to(a)).reshape(-1, a.shape[-1])
                for a, b in zip(
                    _block_outputs(tuned, chunk, blocks), _block_outputs(base, chunk, blocks)
                )
            ]
            sums = torch.stack([s.sum(0) for s in shifts])  # blocks x d
            total = sums if total is None else total + sums
            if k > 1:  # second moments only when principal directions are asked for
                grams = torch.stack([s.T @ s for s in shifts])  # blocks x d x d
                gram = grams if gram is None else gram + grams
            count += shifts[0].shape[0]
    finally:
        tuned.train(was[0]), base.train(was[1])
    mean = total / count
    per_block: list[torch.Tensor | None] = [None] * len(names)
    vals: list[torch.Tensor | None] = [None] * len(names)
    for b in sorted(set(owner.values())):  # blocks without adapters get no directions
        norm = mean[b].norm()
        if not bool(norm > 0):
            raise ValueError(f"the fine-tune did not change block {names[b]!r}'s output")
        u = mean[b] / norm
        U, S = u[:, None], [norm]
        if k > 1:
            P = torch.eye(u.shape[0], dtype=u.dtype, device=u.device) - torch.outer(u, u)
            evals, evecs = torch.linalg.eigh(P @ (gram[b] / count) @ P)
            U = torch.cat([U, evecs[:, -(k - 1) :].flip(-1)], 1)
            S += list(evals[-(k - 1) :].flip(-1).clamp_min(0).sqrt())
        per_block[b] = U
        vals[b] = torch.stack([torch.as_tensor(x, dtype=u.dtype) for x in S])

    def result() -> SpuriousDirections:
        dirs = {n: per_block[b].float().cpu().contiguous() for n, b in owner.items()}
        svals = {n: vals[b].float().cpu() for n, b in owner.items()}
        return SpuriousDirections(dirs, dict.fromkeys(owner, "write"), svals)

    plain = result()
    early = [b for b in sorted(set(owner.values())) if b < len(names) - 1]
    if not (pull_back and early):
        return plain, None
    if not bool(mean[-1].norm() > 0):
        raise ValueError(f"the fine-tune did not change block {names[-1]!r}'s output")
    pulled = _pull_back(base, mean[-1] / mean[-1].norm(), tokens, int(batch_size), blocks)
    for b in early:
        g = pulled[b].to(per_block[b])
        if not bool(g.norm() > 0):
            raise ValueError(f"the last block's output does not depend on {names[b]!r}")
        U = torch.cat([per_block[b], (g / g.norm())[:, None]], 1)
        per_block[b] = torch.linalg.qr(U)[0]
        vals[b] = torch.cat([vals[b], mean[-1].norm()[None]])
    return plain, result()


def _pull_back(
    model: nn.Module,
    u_last: torch.Tensor,
    tokens: torch.Tensor,
    batch_size: int,
    path: str | None = None,
) -> list[torch.Tensor]:
    """Per block ``b`` but the last: the gradient of :math:`\\sum_{n,m} u^\\top h_{L,m}` with
    respect to a zero probe added to every token of block ``b``'s output (``d``, float64)."""
    found = [blk for _, blk in _residual_blocks(model, path)]
    param = next(model.parameters())
    probes = [
        torch.zeros(u_last.shape[0], dtype=param.dtype, device=param.device, requires_grad=True)
        for _ in found[:-1]
    ]
    last: list[torch.Tensor] = []

    def hook_for(i: int):
        def hook(module, inputs, out):
            h = out[0] if isinstance(out, tuple) else out
            if i == len(probes):
                last.append(h)
                return None
            h = h + probes[i]
            return (h, *out[1:]) if isinstance(out, tuple) else h

        return hook

    was = model.training
    model.eval()
    handles = [blk.register_forward_hook(hook_for(i)) for i, blk in enumerate(found)]
    total = torch.zeros(len(probes), u_last.shape[0], dtype=torch.float64)
    try:
        with torch.enable_grad():
            for start in range(0, tokens.shape[0], batch_size):
                last.clear()
                model(tokens[start : start + batch_size].to(param.device))
                f = (last[0] @ u_last.to(last[0])).sum()
                grads = torch.autograd.grad(f, probes)
                total += torch.stack([g.detach().double().cpu() for g in grads])
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return list(total)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 or float64 for the projection's linear algebra: half precision goes to float32."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _check_basis(name: str, U) -> None:
    """``U`` is a non-empty, finite ``d`` or ``d x k`` tensor with no zero column."""
    if not isinstance(U, torch.Tensor) or U.dim() not in (1, 2) or U.numel() == 0:
        got = shape_of(U)
        raise ValueError(f"{name} must be a non-empty d or d x k tensor, got {got}")
    if not bool(torch.isfinite(U).all()):
        raise ValueError(f"{name} must be finite (it has NaN/inf entries)")
    norms = U.norm(dim=0) if U.dim() == 2 else U.norm()[None]
    if not bool((norms > 0).all()):
        raise ValueError(f"{name} has a zero direction: it has no direction to project out")


class GRASP:
    """Projection of adapter parameters away from spurious directions.

    Args:
        directions: a :class:`SpuriousDirections` (per-module), or one tensor ``d x k`` (or
            ``d``) applied to every module whose residual-side dimension is ``d``.
        modules: restrict to these module names (default: all adapted modules).
        mode: ``"hard"`` (:math:`I - UU^\\top`) or ``"soft"`` (:math:`I - \\alpha UU^\\top`).
        alpha: the soft strength in ``[0, 1]``.
        through: ``{module suffix: frozen-linear suffix}`` (e.g. :data:`TINYLM_THROUGH`): such a
            module's ``B`` is projected against the pulled-back basis :math:`W^\\top U`, so
            that :math:`U^\\top W \\Delta W = 0`: without it a value adapter can still write
            along ``u`` through the frozen attention output. This summed rule is exact where
            all heads attend alike (at the first position, say); with head-dependent attention
            a little leaks (``per_head``). Grouped-query attention is handled.
        per_head: with ``through``, one constraint per query head instead:
            :math:`U^\\top W_{o,q} \\Delta W_{v,j(q)} = 0` for every head :math:`q` (the value
            head it reads), which keeps the attention output's change off ``U`` for every
            attention pattern (**[design]**, ours; ``n_heads k`` constraints in place of ``k``;
            needs the head width from the attention module: ``head_dim``, or TinyLM's ``h``).
    """

    def __init__(
        self,
        directions: SpuriousDirections | torch.Tensor,
        modules: Iterable[str] | None = None,
        mode: Literal["hard", "soft"] = "hard",
        alpha: float = 1.0,
        through: dict[str, str] | None = None,
        per_head: bool = False,
    ):
        if mode not in ("hard", "soft"):
            raise ValueError(f"mode must be 'hard' or 'soft', got {mode!r}")
        check_interval("alpha", alpha, closed="both")
        if isinstance(directions, SpuriousDirections):
            for name, U in directions.directions.items():
                _check_basis(f"directions[{name!r}]", U)
        elif isinstance(directions, torch.Tensor):
            _check_basis("directions", directions)
        else:
            raise TypeError(
                "directions must be a SpuriousDirections or a d x k (or d) tensor, got "
                f"{type(directions).__name__}"
            )
        self.directions = directions
        self.modules = None if modules is None else set(check_names("modules", modules))
        self.strength = 1.0 if mode == "hard" else float(alpha)
        self.through = through
        self.per_head = bool(per_head)
        self.seconds = 0.0
        self._cache: dict[str, tuple[str, torch.Tensor | None]] = {}
        self._names_checked = False

    def _side_basis(self, model: nn.Module, f: LoRAFactors) -> tuple[str, torch.Tensor | None]:
        """``(side, orthonormal basis)`` for module ``f`` (cached: W_0 and U are fixed)."""
        if f.name in self._cache:
            return self._cache[f.name]
        out: tuple[str, torch.Tensor | None] = (f.side, None)
        if self.modules is None or f.name in self.modules:
            W = _through_weight(model, f.name, self.through, f.B.shape[0])
            side = "through" if W is not None else f.side
            if isinstance(self.directions, SpuriousDirections):
                U = self.directions.directions.get(f.name)
            else:
                U = self.directions if self.directions.dim() == 2 else self.directions[:, None]
            if U is not None:
                # the basis in float32 at least: QR and SVD have no half-precision kernels,
                # and a bf16 basis would leave bf16 round-off in the constraint
                ref = {"device": f.A.device, "dtype": _work_dtype(f.A.dtype)}
                U = U.to(**ref)
                dim = f.A.shape[1] if side == "read" else f.B.shape[0]
                if side == "through" and U.shape[0] == W.shape[0] and self.per_head:
                    Wo, n_rep, hd = _through_map(model, f.name, self.through, dim)
                    if hd is None:
                        raise ValueError(f"per_head: no head width on {f.name!r}'s attention")
                    out = (side, _per_head_basis(Wo.detach().to(**ref), U, n_rep, hd))
                else:
                    if side == "through" and U.shape[0] == W.shape[0]:
                        U = W.detach().to(**ref).T @ U  # pull back: u^T W dW = (W^T u)^T dW
                    if U.shape[0] == dim:
                        Q, R = torch.linalg.qr(U)  # orthonormalise
                        r = R.diagonal().abs()
                        if not bool((r > 1e-6 * r.max()).all()):
                            raise ValueError(
                                f"the directions of {f.name!r} (pulled back through its "
                                "frozen linear where `through` names it) are linearly "
                                "dependent; pass independent columns"
                            )
                        out = (side, Q)
        self._cache[f.name] = out
        return out

    @torch.no_grad()
    def project(self, model: nn.Module, factors: Sequence[LoRAFactors] | None = None) -> None:
        """Apply the constraint in place: ``B <- P B`` (write), ``A <- A P`` (read).

        ``factors``: the model's adapted modules, ``list(lora_modules(model))``, for a loop
        whose adapters do not change between steps (as in :func:`finetune_lora`); by default
        they are found again on every call, which costs a walk over all of ``model``'s
        modules (about two thirds of the projection's time on a CPU for a 6-layer TinyLM)."""
        t0 = time.perf_counter()
        if self.modules is not None and not self._names_checked:
            self._check_module_names(model)
        matched = False
        for f in lora_modules(model) if factors is None else factors:
            side, U = self._side_basis(model, f)
            if U is None:
                continue
            matched = True
            P = f.B if side in ("write", "through") else f.A
            X = P.to(U.dtype)  # P itself unless the adapters are in half precision
            change = U @ (U.T @ X) if side in ("write", "through") else (X @ U) @ U.T
            if X is P:
                P.sub_(change, alpha=self.strength)
            else:  # projected in float32, rounded once
                P.copy_(X - self.strength * change)
        self.seconds += time.perf_counter() - t0
        if not matched:
            raise ValueError(
                "GRASP constrains none of the model's adapted modules: no module is named in "
                "both `directions` and `modules`, or no residual-side dimension matches the "
                "directions' (a projection that does nothing is almost surely a mistake)"
            )

    init = project  # a fresh adapter: B = 0, and A <- A P on read modules

    def _check_module_names(self, model: nn.Module) -> None:
        """Every name in ``modules`` must name an adapted module of ``model`` (once per
        GRASP: a typo would otherwise leave that module unconstrained without a word)."""
        known = {f.name for f in lora_modules(model)}
        unknown = sorted(self.modules - known)
        if unknown:
            raise ValueError(
                f"modules {unknown} name no adapted module of the model; adapted modules: "
                f"{sorted(known)[:8]}{' ...' if len(known) > 8 else ''}"
            )
        self._names_checked = True

    @torch.no_grad()
    def violation(self, model: nn.Module) -> float:
        """Largest :math:`|U^\\top \\Delta W|` (write) or :math:`|\\Delta W U|` (read)."""
        worst = 0.0
        for f in lora_modules(model):
            side, U = self._side_basis(model, f)
            if U is None:
                continue
            dW = f.delta_weight().to(U.dtype)
            v = dW @ U if side == "read" else U.T @ dW
            worst = max(worst, float(v.abs().max()))
        return worst


class ResidualIntervention:
    """Forward hooks on every residual block (each block's output is the residual stream).

    Args:
        model: a model with a ``blocks`` module list (TinyLM), or ``layers`` / ``h`` (most
            Hugging Face decoders), found by name anywhere in the model.
        u: ``d`` residual direction (normalised here).
        mode: ``"add"`` (:math:`h + \\alpha u`) or ``"ablate"`` (:math:`h - (h^\\top u) u`).
        alpha: the steering strength for ``"add"``.
        layers: block indices (default all).
        blocks: the dotted name of the module list of residual blocks (default: the first
            list named ``blocks``, ``layers`` or ``h``).
    """

    def __init__(
        self,
        model: nn.Module,
        u: torch.Tensor,
        mode: Literal["add", "ablate"] = "ablate",
        alpha: float = 1.0,
        layers: Iterable[int] | None = None,
        blocks: str | None = None,
    ):
        if mode not in ("add", "ablate"):
            raise ValueError(f"mode must be 'add' or 'ablate', got {mode!r}")
        found = [blk for _, blk in _residual_blocks(model, blocks)]
        idx = list(range(len(found)) if layers is None else layers)
        for i in idx:  # 1.5 passed the range check as int(1.5) and failed as a list index
            if isinstance(i, bool) or not isinstance(i, numbers.Integral):
                raise TypeError(f"layers must hold integer block indices, got {i!r}")
        bad = [i for i in idx if not -len(found) <= i < len(found)]
        if bad:
            raise ValueError(f"layers {bad} out of range for a model with {len(found)} blocks")
        self.blocks = [found[i] for i in idx]
        u = torch.as_tensor(u).reshape(-1)
        _check_basis("u", u)
        self.u = u / u.norm()
        check_finite("alpha", alpha)  # NaN made every hidden state NaN in "add" mode
        self.mode, self.alpha = mode, float(alpha)
        self._handles: list = []

    def _hook(self, module, inputs, out):
        h = out[0] if isinstance(out, tuple) else out  # Hugging Face layers return tuples
        u = self.u.to(h)
        h = h + self.alpha * u if self.mode == "add" else h - (h @ u).unsqueeze(-1) * u
        return (h, *out[1:]) if isinstance(out, tuple) else h

    def __enter__(self) -> ResidualIntervention:
        self._handles = [b.register_forward_hook(self._hook) for b in self.blocks]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


@contextmanager
def _maybe(ctx):
    if ctx is None:
        yield
    else:
        with ctx:
            yield


def finetune_lora(
    model: nn.Module,
    sample_batch: Callable[[torch.Generator], Any],
    num_steps: int = 300,
    lr: float = 3e-3,
    grasp: GRASP | None = None,
    intervention: ResidualIntervention | None = None,
    seed: int = 0,
    verbose: bool = True,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
) -> dict:
    """Train the model's LoRA parameters (everything else frozen) with AdamW.

    Args:
        model: a model returning ``(logits, loss)`` from ``model(inputs, targets)`` (TinyLM),
            or any model when ``loss_fn`` is given.
        sample_batch: ``generator -> (inputs, targets)``; with ``loss_fn``, any batch.
        grasp: project after every optimizer step (and once at the start).
        intervention: active during training only (CAFT / preventative steering).
        loss_fn: ``(model, batch) -> scalar loss``, e.g. for a Hugging Face causal LM
            ``lambda m, ids: m(input_ids=ids, labels=ids).loss`` (it moves the batch to the
            model's device itself).

    Returns:
        ``{"loss": [...], "seconds": total, "projection_seconds": ...}``.
    """
    check_int("num_steps", num_steps)
    check_positive("lr", lr)
    factors = list(lora_modules(model))  # fixed for the loop: the optimizer holds them
    params = [p for f in factors for p in (f.A, f.B)]
    if not params:
        raise ValueError("model has no LoRA parameters; call add_lora first")
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = make_generator(seed)
    device = params[0].device
    if grasp is not None:
        grasp.seconds = 0.0
        grasp.init(model, factors)
    losses = []
    model.train()
    t0 = time.perf_counter()
    with _maybe(intervention):
        for _ in progress(range(num_steps), verbose=verbose, desc="LoRA fine-tune"):
            batch = sample_batch(gen)
            if loss_fn is None:
                x, y = batch
                _, loss = model(x.to(device), y.to(device))
            else:
                loss = loss_fn(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if grasp is not None:
                grasp.project(model, factors)  # after the step: survives Adam's rescaling
            losses.append(float(loss.detach()))
    model.eval()
    return {
        "loss": losses,
        "seconds": time.perf_counter() - t0,
        "projection_seconds": 0.0 if grasp is None else grasp.seconds,
    }
