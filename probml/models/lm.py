r"""TinyLM: the project's one decoder-only transformer (pre-norm, causal attention via
:func:`torch.nn.functional.scaled_dot_product_attention`), with a pluggable FFN and the
scale-vector options. Used by the MoA and scale-vector work (and by GRASP and BASIS later).

Block (pre-norm): ``x = x + Attn(Norm_in(x)); x = x + FFN(Norm_in(x))``; a final Input-Norm
before the LM head. Scale-vector options (see ``docs/scale_vectors.md``):

* ``norm_scale=False``: no learnable gamma anywhere ("no gamma" ablation);
* ``qk_norm``: Output-Norms with scales on the per-head queries and keys;
* ``branch_scales`` (HG): the pre-attention / pre-FFN norms lose their shared gamma; separate
  input scales for q, k, v (and gate, up in SwiGLU), each initialised to 1;
* ``placement`` ``"dp"`` / ``"dnp"``: scales on both sides of the output projections
  (attention ``W_o`` and the FFN's down projection), with intermediate norms for DNP;
* ``scale_reparam="magnitude_direction"``: every scale is ``beta * alpha``.

Shapes: ``idx`` is ``B x T`` token ids; ``forward`` returns ``B x T x vocab`` logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from probml.models.layers import Norm, ScaledLinear, ScaleVector, SwiGLUFFN
from probml.utils import check_int

__all__ = ["TinyLMConfig", "TinyLM"]


@dataclass
class TinyLMConfig:
    """Plain-data configuration of :class:`TinyLM` (saved beside its weights).

    Args:
        vocab_size: token ids are ``0 .. vocab_size - 1``.
        d_model: residual width ``d`` (divisible by ``n_heads``); n_layers: blocks (0 gives
            embedding, final norm and head only); n_heads: attention heads of width
            ``d / n_heads``; context: the longest sequence ``T`` (positions are learned).
        d_ff: FFN hidden width (default ``8 d / 3`` rounded to a multiple of 16).
        norm: ``"rms"`` or ``"layer"``; norm_scale: learnable scales on the norms.
        qk_norm: Output-Norms with scales on the per-head queries and keys.
        branch_scales: separate input scales per branch (HG) instead of one per norm.
        placement: ``"none"``, ``"dp"`` or ``"dnp"``: scales around the output projections.
        scale_reparam: ``None`` or ``"magnitude_direction"`` (every scale is ``beta alpha``).
        tie_embeddings: the LM head shares the token embedding.
        ffn: the FFN as a dict: ``{"kind": name, **kwargs}``, ``name`` in
            :data:`~probml.models.layers.FFN_KINDS` (``"swiglu"``, ``"gelu"``, ``"la"``,
            ``"moa"``, or one added with :func:`~probml.models.layers.register_ffn`); without
            ``"kind"`` the dict's arguments go to the SwiGLU FFN.

    Every field is checked here, by name, before any module is built.
    """

    vocab_size: int
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    context: int = 128
    d_ff: int | None = None  # default: SwiGLU-style 8/3 d rounded to a multiple of 16
    norm: str = "rms"
    norm_scale: bool = True
    qk_norm: bool = False
    branch_scales: bool = False
    placement: str = "none"
    scale_reparam: str | None = None
    tie_embeddings: bool = True
    ffn: dict = field(default_factory=lambda: {"kind": "swiglu"})

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_heads", "context"):
            check_int(name, getattr(self, name))
        check_int("n_layers", self.n_layers, 0)
        if self.d_ff is not None:
            check_int("d_ff", self.d_ff)
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.d_ff is None:
            self.d_ff = 16 * round(8 * self.d_model / 3 / 16)
        for name, allowed in (
            ("norm", ("rms", "layer")),
            ("placement", ("none", "dp", "dnp")),
            ("scale_reparam", (None, "magnitude_direction")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("norm_scale", "qk_norm", "branch_scales", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.ffn, dict):
            raise TypeError(f"ffn must be a dict such as {{'kind': 'gelu'}}, got {self.ffn!r}")


def _build_ffn(cfg: TinyLMConfig, down: nn.Module | None) -> nn.Module:
    from probml.models.layers import FFN_KINDS, GELUFFN

    spec = dict(cfg.ffn)
    kind = spec.pop("kind", "swiglu")
    if kind not in FFN_KINDS:
        raise ValueError(
            f"unknown ffn kind {kind!r}; available: {sorted(FFN_KINDS)} (add your own with "
            "probml.models.layers.register_ffn)"
        )
    if kind == "swiglu":
        return SwiGLUFFN(
            cfg.d_model,
            cfg.d_ff,
            down=down,
            branch_scales=cfg.branch_scales,
            reparam=cfg.scale_reparam,
            **spec,
        )
    if kind == "gelu":
        return GELUFFN(cfg.d_model, cfg.d_ff, down=down, **spec)
    if kind in ("la", "moa"):  # they take no down=: the placement's map replaces w3
        ffn = FFN_KINDS[kind](cfg.d_model, cfg.d_ff, **spec)
        if down is not None:
            ffn.w3 = down
        return ffn
    return FFN_KINDS[kind](cfg.d_model, cfg.d_ff, down=down, **spec)  # a registered kind


class Attention(nn.Module):
    def __init__(self, cfg: TinyLMConfig):
        super().__init__()
        d, self.h = cfg.d_model, cfg.n_heads
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, d, bias=False)
        self.o = ScaledLinear(d, d, cfg.placement, cfg.norm, cfg.scale_reparam)
        hd = d // cfg.n_heads
        if cfg.qk_norm:
            self.q_norm = Norm(
                hd, cfg.norm, scale=cfg.norm_scale, role="output", reparam=cfg.scale_reparam
            )
            self.k_norm = Norm(
                hd, cfg.norm, scale=cfg.norm_scale, role="output", reparam=cfg.scale_reparam
            )
        else:
            self.q_norm = self.k_norm = None
        if cfg.branch_scales:
            self.q_scale = ScaleVector(d, "input", cfg.scale_reparam)
            self.k_scale = ScaleVector(d, "input", cfg.scale_reparam)
            self.v_scale = ScaleVector(d, "input", cfg.scale_reparam)
        else:
            self.q_scale = self.k_scale = self.v_scale = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape

        def proj(lin, scale):
            y = lin(scale(x) if scale is not None else x)
            return y.view(B, T, self.h, d // self.h).transpose(1, 2)  # B x h x T x hd

        q, k, v = proj(self.q, self.q_scale), proj(self.k, self.k_scale), proj(self.v, self.v_scale)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(B, T, d))


class Block(nn.Module):
    def __init__(self, cfg: TinyLMConfig):
        super().__init__()
        # with branch-specific scales the shared pre-norm gamma is replaced by per-branch ones
        pre_scale = cfg.norm_scale and not cfg.branch_scales
        self.norm1 = Norm(
            cfg.d_model, cfg.norm, scale=pre_scale, role="input", reparam=cfg.scale_reparam
        )
        self.attn = Attention(cfg)
        self.norm2 = Norm(
            cfg.d_model, cfg.norm, scale=pre_scale, role="input", reparam=cfg.scale_reparam
        )
        down = (
            ScaledLinear(cfg.d_ff, cfg.d_model, cfg.placement, cfg.norm, cfg.scale_reparam)
            if cfg.placement != "none"
            else None
        )
        self.ffn = _build_ffn(cfg, down)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class TinyLM(nn.Module):
    """Decoder-only transformer (see the module docstring)."""

    def __init__(self, cfg: TinyLMConfig):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.norm_f = Norm(
            cfg.d_model, cfg.norm, scale=cfg.norm_scale, role="input", reparam=cfg.scale_reparam
        )
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init)
        if cfg.tie_embeddings:
            self.head.weight = self.tok.weight

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear) and m.weight.requires_grad:
            if m.weight.abs().sum() > 0:  # gate projections start at zero on purpose
                nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None and m.bias.abs().sum() > 0:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits ``B x T x V``; with ``targets`` (``B x T``) also the mean cross-entropy.
        ``idx``: ``B x T`` integer token ids in ``[0, vocab_size)``. The range is checked on
        the CPU, where it costs nothing; not on an accelerator, where the check would cost a
        device synchronisation on every call (there an id out of range trips the embedding's
        device-side assertion)."""
        if idx.dim() != 2 or idx.dtype not in (torch.long, torch.int32):
            raise ValueError(
                f"idx must be a B x T tensor of token ids (long), got shape {tuple(idx.shape)} "
                f"and dtype {idx.dtype}"
            )
        B, T = idx.shape
        if T > self.cfg.context:
            raise ValueError(f"sequence length {T} exceeds the context {self.cfg.context}")
        if idx.device.type == "cpu" and idx.numel():
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= self.cfg.vocab_size:
                raise ValueError(
                    f"idx holds token ids in [{lo}, {hi}] but the model's vocab_size is "
                    f"{self.cfg.vocab_size}: ids must lie in [0, {self.cfg.vocab_size})"
                )
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        logits = self.head(self.norm_f(x))
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    def num_parameters(self) -> int:
        """The number of parameters (tied embeddings counted once)."""
        return sum(p.numel() for p in self.parameters())

    def save(self, path: str | Path) -> None:
        """Write the config and the weights to ``path`` (read back by :meth:`load`)."""
        torch.save({"config": asdict(self.cfg), "state": self.state_dict()}, path)

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device | None = None) -> TinyLM:
        """A model written by :meth:`save` (config and weights; ``weights_only`` loading, so
        only plain data is read). ``map_location`` as in :func:`torch.load`."""
        blob = torch.load(path, map_location=map_location, weights_only=True)
        model = cls(TinyLMConfig(**blob["config"]))
        model.load_state_dict(blob["state"])
        return model


def tinylm_factory(**overrides) -> Callable[[int], TinyLM]:
    """``vocab_size -> TinyLM`` with config ``overrides``."""
    return lambda vocab_size: TinyLM(TinyLMConfig(vocab_size=vocab_size, **overrides))
