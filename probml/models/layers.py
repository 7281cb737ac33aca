r"""Transformer building blocks shared by the MoA and scale-vector work.

**Activations and FFNs** (Mixture of Activations, [paper] + [design] in ``docs/moa.md``):

* Type I FFN :math:`W_2\,\sigma(W_1x)`; Type II (SwiGLU-style) :math:`W_3(\sigma(W_1x) \odot W_2x)`.
* :class:`LearnableActivationFFN` (LA): :math:`\sigma_{LA}(z) = \sum_k \alpha_k\sigma_k(z)`,
  :math:`\alpha_k = 1` at init; Type II variants ``one_sided``, ``bi_sided``, ``quadratic``.
* :class:`MixtureOfActivationsFFN` (MoA): token-adaptive mixing weights, one scalar per token
  per activation, :math:`\pi_k(x) = \alpha_k\, 2\sigma(u_k^\top x + b_k)` with :math:`u=b=0`
  at init (so MoA equals LA at init), or the literal bias-free gate
  :math:`\sigma(u_k^\top x)` (``gate="literal"``).

**Scale vectors** ([paper] + [design] in ``docs/scale_vectors.md``):

* :class:`ScaleVector` with a ``role``: ``"input"`` (its output feeds a linear map: weight
  decay applies) or ``"output"`` (applied to a linear map's output: no weight decay), and the
  magnitude-direction reparameterisation :math:`\gamma = \beta\alpha`.
* :class:`Norm`: RMSNorm / LayerNorm, with or without a scale vector.

Shapes: inputs ``... x d``; everything follows the input's dtype and device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from probml.utils import check_int, check_names, check_positive, shape_of

__all__ = [
    "ACTIVATIONS",
    "register_activation",
    "ScaleVector",
    "Norm",
    "ScaledLinear",
    "GELUFFN",
    "SwiGLUFFN",
    "LearnableActivationFFN",
    "MixtureOfActivationsFFN",
    "ShallowNet",
    "FFN_KINDS",
    "register_ffn",
    "ffn_factory",
    "scale_vector_priors",
    "StochasticGates",
]

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda z: z,
    "relu": F.relu,
    "relu2": lambda z: F.relu(z) ** 2,
    "leaky_relu": lambda z: F.leaky_relu(z, 0.01),
    "gelu": F.gelu,
    "silu": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}
DEFAULT_DICTIONARY = ("identity", "relu", "relu2", "leaky_relu", "gelu", "silu", "tanh")
_BUILT_IN = frozenset(ACTIVATIONS)


def _check_registration(
    what: str, table: dict, built_in: frozenset, key: tuple[str, object], fn: tuple[str, object],
    overwrite: bool,
) -> None:  # fmt: skip
    """Shared checks of the name registries: a non-empty string key (argument ``key[0]``), a
    callable value, no built-in replaced, and ``overwrite`` for a key registered before."""
    (key_arg, name), (fn_arg, value) = key, fn
    if not isinstance(name, str) or not name:
        raise ValueError(f"{key_arg} must be a non-empty string, got {name!r}")
    if not callable(value):
        raise TypeError(f"{fn_arg} must be callable, got {type(value).__name__}")
    if name in built_in:
        raise ValueError(f"{key_arg} {name!r} is a built-in {what} and cannot be replaced")
    if name in table and not overwrite:
        raise ValueError(f"the {what} {name!r} is already registered; pass overwrite=True")


def register_activation(
    name: str, fn: Callable[[torch.Tensor], torch.Tensor], overwrite: bool = False
) -> None:
    r"""Add an activation to :data:`ACTIVATIONS`, so that LA / MoA dictionaries can name it.

    Dictionaries hold names, not functions, so that a model's config stays plain data:
    :meth:`probml.models.lm.TinyLM.load` rebuilds the FFN from the names, and a model saved with
    a registered activation loads only after the same ``register_activation`` call.

    Args:
        name: the name dictionaries use (a non-empty string).
        fn: an elementwise map ``... x h -> ... x h`` that keeps shape, dtype and device, and is
            differentiable where it is used. It is checked on a small float32 CPU probe tensor.
        overwrite: replace an activation already registered under ``name``. The built-in names
            (``identity``, ``relu``, ...) cannot be replaced: the tests and the benchmark
            tables refer to them.
    """
    _check_registration("activation", ACTIVATIONS, _BUILT_IN, ("name", name), ("fn", fn), overwrite)
    probe = torch.linspace(-3.0, 3.0, 12, dtype=torch.float32).reshape(2, 2, 3)
    out = fn(probe)
    if not isinstance(out, torch.Tensor) or out.shape != probe.shape or out.dtype != probe.dtype:
        raise ValueError(
            "fn must map a tensor elementwise (same shape and dtype): a float32 2 x 2 x 3 probe "
            f"gave {shape_of(out)}" + (f" of dtype {out.dtype}" if torch.is_tensor(out) else "")
        )
    if not torch.isfinite(out).all():
        raise ValueError("fn must be finite on [-3, 3]")
    ACTIVATIONS[name] = fn


def _check_gate(gate: str) -> None:
    """The MoA gate's form: ``"gated"`` or ``"literal"`` (see :class:`MixtureOfActivationsFFN`)."""
    if gate not in ("gated", "literal"):
        raise ValueError(f"gate must be 'gated' or 'literal', got {gate!r}")


def _check_sizes(**sizes: int) -> None:
    """Each layer size a positive integer, by its name (torch's own errors name none, and a
    zero width built an empty layer without a word)."""
    for name, value in sizes.items():
        check_int(name, value)


def _check_dictionary(dictionary: Sequence[str]) -> tuple[str, ...]:
    dictionary = tuple(check_names("dictionary", dictionary))  # "gelu" is not g, e, l, u
    if not dictionary:
        raise ValueError("the activation dictionary must not be empty")
    unknown = [a for a in dictionary if a not in ACTIVATIONS]
    if unknown:
        raise ValueError(
            f"unknown activations {unknown}; available: {sorted(ACTIVATIONS)} "
            "(add your own with probml.models.layers.register_activation)"
        )
    return dictionary


def _stack_activations(z: torch.Tensor, dictionary: Sequence[str]) -> torch.Tensor:
    """``K x ... x h``: every dictionary activation applied to ``z``."""
    return torch.stack([ACTIVATIONS[a](z) for a in dictionary])


# ----------------------------------------------------------------------------- scale vectors
class ScaleVector(nn.Module):
    r"""Elementwise learnable scale :math:`\gamma \odot x` (``gamma = 1`` at init).

    Args:
        dim: size of the last dimension.
        role: ``"input"`` (feeds a linear map; decayed under the role rule) or ``"output"``.
        reparam: ``None`` or ``"magnitude_direction"``: :math:`\gamma = \beta\alpha` with a
            scalar :math:`\beta` and a vector :math:`\alpha` (both 1 at init).
    """

    def __init__(self, dim: int, role: str = "input", reparam: str | None = None):
        super().__init__()
        if role not in ("input", "output"):
            raise ValueError(f"role must be 'input' or 'output', got {role!r}")
        if reparam not in (None, "magnitude_direction"):
            raise ValueError(f"reparam must be None or 'magnitude_direction', got {reparam!r}")
        dim = check_int("dim", dim)
        self.role, self.reparam = role, reparam
        self.alpha = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.ones(())) if reparam == "magnitude_direction" else None

    @property
    def gamma(self) -> torch.Tensor:
        return self.alpha if self.beta is None else self.beta * self.alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma

    def extra_repr(self) -> str:
        return f"dim={self.alpha.numel()}, role={self.role}, reparam={self.reparam}"


class Norm(nn.Module):
    """RMSNorm or LayerNorm (no affine of its own) followed by an optional :class:`ScaleVector`.

    Args:
        dim: feature size; kind: ``"rms"`` or ``"layer"``; scale: add a scale vector;
        role: the scale's role; reparam: the scale's reparameterisation; eps: stabiliser.
    """

    def __init__(
        self,
        dim: int,
        kind: str = "rms",
        scale: bool = True,
        role: str = "input",
        reparam: str | None = None,
        eps: float = 1e-6,
    ):
        super().__init__()
        if kind not in ("rms", "layer"):
            raise ValueError(f"kind must be 'rms' or 'layer', got {kind!r}")
        self.kind, self.dim = kind, check_int("dim", dim)
        self.eps = check_positive("eps", eps, strict=False)  # NaN normalised every input to NaN
        self.scale = ScaleVector(dim, role, reparam) if scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "rms":
            y = F.rms_norm(x, (self.dim,), eps=self.eps)
        else:
            y = F.layer_norm(x, (self.dim,), eps=self.eps)
        return self.scale(y) if self.scale is not None else y


class ScaledLinear(nn.Module):
    r"""A linear map with scales on either side and optional intermediate normalisation.

    ``placement="dp"``: :math:`y = \gamma_{out} \odot W(\gamma_{in} \odot x)`;
    ``"dnp"``: :math:`y = \gamma_{out} \odot \mathrm{Norm}(W(\gamma_{in} \odot \mathrm{Norm}(x)))`;
    ``"none"``: :math:`y = Wx`.
    """

    def __init__(
        self,
        d_in: int,
        d_out: int,
        placement: str = "none",
        norm: str = "rms",
        reparam: str | None = None,
        bias: bool = False,
    ):
        super().__init__()
        if placement not in ("none", "dp", "dnp"):
            raise ValueError(f"placement must be 'none', 'dp' or 'dnp', got {placement!r}")
        _check_sizes(d_in=d_in, d_out=d_out)
        self.placement = placement
        self.linear = nn.Linear(d_in, d_out, bias=bias)
        if placement == "none":
            self.pre = self.post = None
        elif placement == "dp":
            self.pre = ScaleVector(d_in, "input", reparam)
            self.post = ScaleVector(d_out, "output", reparam)
        else:
            self.pre = Norm(d_in, norm, scale=True, role="input", reparam=reparam)
            self.post = Norm(d_out, norm, scale=True, role="output", reparam=reparam)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre is not None:
            x = self.pre(x)
        y = self.linear(x)
        return self.post(y) if self.post is not None else y


# ----------------------------------------------------------------------------- FFNs
class GELUFFN(nn.Module):
    """Type I baseline: ``W_2 gelu(W_1 x)``."""

    def __init__(self, d_model: int, d_ff: int, down: nn.Module | None = None):
        super().__init__()
        _check_sizes(d_model=d_model, d_ff=d_ff)
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.down = down if down is not None else nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class SwiGLUFFN(nn.Module):
    """Type II baseline: ``W_3(silu(W_1 x) * W_2 x)``. ``gate_scale``/``up_scale``: optional
    branch-specific input scale vectors (applied to the FFN input of each branch)."""

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        down: nn.Module | None = None,
        branch_scales: bool = False,
        reparam: str | None = None,
    ):
        super().__init__()
        _check_sizes(d_model=d_model, d_ff=d_ff)
        self.gate = nn.Linear(d_model, d_ff, bias=False)
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.down = down if down is not None else nn.Linear(d_ff, d_model, bias=False)
        self.gate_scale = ScaleVector(d_model, "input", reparam) if branch_scales else None
        self.up_scale = ScaleVector(d_model, "input", reparam) if branch_scales else None

    def forward(self, x):
        xg = self.gate_scale(x) if self.gate_scale is not None else x
        xu = self.up_scale(x) if self.up_scale is not None else x
        return self.down(F.silu(self.gate(xg)) * self.up(xu))


class _MixedFFN(nn.Module):
    """Shared forward of the LA and MoA FFNs: ``w3(hidden(x))``, the hidden layer optionally
    recomputed in the backward pass (activation checkpointing keeps memory flat)."""

    checkpointing: bool = False

    def _setup(self, d_model, d_ff, ffn_type, variant, variants, dictionary, checkpointing) -> None:
        """Validate the options and build the projections ``w1`` (``w2`` for Type II), ``w3``."""
        _check_sizes(d_model=d_model, d_ff=d_ff)
        if ffn_type not in ("I", "II"):
            raise ValueError(f"ffn_type must be 'I' or 'II', got {ffn_type!r}")
        if variant not in variants:
            raise ValueError(
                f"variant must be one of {variants} for {type(self).__name__}, got {variant!r}"
            )
        self.dictionary = _check_dictionary(dictionary)
        self.ffn_type, self.variant, self.checkpointing = ffn_type, variant, checkpointing
        self.w1 = nn.Linear(d_model, d_ff, bias=False)
        self.w2 = nn.Linear(d_model, d_ff, bias=False) if ffn_type == "II" else None
        self.w3 = nn.Linear(d_ff, d_model, bias=False)

    def _hidden(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = (
            checkpoint(self._hidden, x, use_reentrant=False)
            if self.checkpointing and self.training
            else self._hidden(x)
        )
        return self.w3(h)


class LearnableActivationFFN(_MixedFFN):
    r"""LA FFN: fixed dictionary, input-independent coefficients :math:`\alpha` (1 at init).

    Args:
        d_model, d_ff: sizes. ffn_type: ``"I"`` or ``"II"``.
        variant: Type II only: ``"one_sided"`` (mix the :math:`W_1` branch), ``"bi_sided"``
            (mix both branches), ``"quadratic"`` (:math:`\sum_{kl}\alpha_{kl}\sigma_k(W_1x)\sigma_l(W_2x)`).
        dictionary: activation names (see :data:`ACTIVATIONS`).
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        ffn_type: str = "II",
        variant: str = "bi_sided",
        dictionary: Sequence[str] = DEFAULT_DICTIONARY,
        checkpointing: bool = False,
    ):
        super().__init__()
        self._setup(
            d_model,
            d_ff,
            ffn_type,
            variant,
            ("one_sided", "bi_sided", "quadratic"),
            dictionary,
            checkpointing,
        )
        K = len(self.dictionary)
        self.alpha = nn.Parameter(
            torch.ones(K, K) if variant == "quadratic" and ffn_type == "II" else torch.ones(K)
        )
        self.alpha2 = (
            nn.Parameter(torch.ones(K)) if ffn_type == "II" and variant == "bi_sided" else None
        )

    def _mix(self, z: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        # sum_k alpha_k sigma_k(z), accumulated without storing a K x ... x h stack
        out = torch.zeros_like(z)
        for k, name in enumerate(self.dictionary):
            out = out + coef[k].to(z.dtype) * ACTIVATIONS[name](z)
        return out

    def _hidden(self, x: torch.Tensor) -> torch.Tensor:
        z1 = self.w1(x)
        if self.ffn_type == "I":
            return self._mix(z1, self.alpha)
        z2 = self.w2(x)
        if self.variant == "one_sided":
            return self._mix(z1, self.alpha) * z2
        if self.variant == "bi_sided":
            return self._mix(z1, self.alpha) * self._mix(z2, self.alpha2)
        a1, a2 = _stack_activations(z1, self.dictionary), _stack_activations(z2, self.dictionary)
        return torch.einsum("kl,k...,l...->...", self.alpha.to(z1.dtype), a1, a2)


class MixtureOfActivationsFFN(_MixedFFN):
    r"""MoA FFN: token-adaptive mixing of a dictionary of activations.

    For each token and activation :math:`k`, a scalar gate shared across hidden units:
    ``gate="gated"`` (default) :math:`\pi_k(x) = \alpha_k\,2\sigma(u_k^\top x + b_k)`, with
    :math:`u = b = 0` and :math:`\alpha = 1` at init (equal to LA at init);
    ``gate="literal"`` :math:`\pi_k(x) = \sigma(u_k^\top x)` (bias-free, the paper's literal form).
    Type II ``bi_sided`` (the best variant reported):
    :math:`W_3[\sum_k\rho_k(x)\sigma_k(W_1x)] \odot [\sum_l\pi_l(x)\sigma_l(W_2x)]`.
    ``checkpointing`` recomputes the activation stack in the backward pass (flat memory).
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        ffn_type: str = "II",
        variant: str = "bi_sided",
        dictionary: Sequence[str] = DEFAULT_DICTIONARY,
        gate: str = "gated",
        checkpointing: bool = False,
    ):
        super().__init__()
        _check_gate(gate)
        self._setup(
            d_model, d_ff, ffn_type, variant, ("one_sided", "bi_sided"), dictionary, checkpointing
        )
        self.gate_kind = gate
        K = len(self.dictionary)
        n_gates = 2 if (ffn_type == "II" and variant == "bi_sided") else 1
        self.gate_proj = nn.Linear(d_model, n_gates * K, bias=(gate == "gated"))
        nn.init.zeros_(self.gate_proj.weight)
        if gate == "gated":
            nn.init.zeros_(self.gate_proj.bias)
            self.alpha = nn.Parameter(torch.ones(n_gates * K))
        else:
            self.alpha = None
        self.K, self.n_gates = K, n_gates

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """``... x n_gates x K`` mixing weights for each token."""
        logits = self.gate_proj(x)
        g = (
            2.0 * torch.sigmoid(logits) * self.alpha
            if self.gate_kind == "gated"
            else torch.sigmoid(logits)
        )
        return g.unflatten(-1, (self.n_gates, self.K))

    @staticmethod
    def _mix(z: torch.Tensor, g: torch.Tensor, dictionary) -> torch.Tensor:
        # sum_k g_k(x) sigma_k(z): g is ... x K (per token), z is ... x h
        out = torch.zeros_like(z)
        for k, name in enumerate(dictionary):  # K is small; avoids storing a K x ... x h stack
            out = out + g[..., k : k + 1] * ACTIVATIONS[name](z)
        return out

    def _hidden(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gates(x)
        z1 = self.w1(x)
        if self.ffn_type == "I":
            return self._mix(z1, g[..., 0, :], self.dictionary)
        z2 = self.w2(x)
        if self.variant == "one_sided":
            return self._mix(z1, g[..., 0, :], self.dictionary) * z2
        return self._mix(z1, g[..., 0, :], self.dictionary) * self._mix(
            z2, g[..., 1, :], self.dictionary
        )


class ShallowNet(nn.Module):
    r"""One hidden layer of width ``width`` with biases, for the expressivity checks:
    ``fixed``: :math:`W_2\sigma(W_1x+b_1)+b_2`; ``la``: :math:`\sigma \to \sum_k\alpha_k\sigma_k`;
    ``moa``: :math:`\sigma \to \sum_k\pi_k(x)\sigma_k` with the gated (or literal) gate."""

    def __init__(
        self,
        in_dim: int,
        width: int,
        kind: str = "fixed",
        dictionary: Sequence[str] = ("relu",),
        gate: str = "gated",
    ):
        super().__init__()
        if kind not in ("fixed", "la", "moa"):
            raise ValueError(f"kind must be fixed, la or moa, got {kind!r}")
        _check_sizes(in_dim=in_dim, width=width)
        _check_gate(gate)  # as the MoA layer's (any other word was the literal gate)
        self.kind, self.dictionary, self.gate_kind = kind, _check_dictionary(dictionary), gate
        K = len(self.dictionary)
        if kind == "fixed" and K != 1:
            raise ValueError("a fixed network takes a dictionary of exactly one activation")
        self.l1 = nn.Linear(in_dim, width)
        self.l2 = nn.Linear(width, 1)
        self.alpha = nn.Parameter(torch.ones(K)) if kind != "fixed" else None
        if kind == "moa":
            self.gate = nn.Linear(in_dim, K, bias=(gate == "gated"))
            nn.init.zeros_(self.gate.weight)
            if gate == "gated":
                nn.init.zeros_(self.gate.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.l1(x)
        if self.kind == "fixed":
            h = ACTIVATIONS[self.dictionary[0]](z)
        elif self.kind == "la":
            h = sum(a * ACTIVATIONS[n](z) for a, n in zip(self.alpha, self.dictionary))
        else:
            g = self.gate(x)
            g = self.alpha * 2 * torch.sigmoid(g) if self.gate_kind == "gated" else torch.sigmoid(g)
            h = sum(g[..., k : k + 1] * ACTIVATIONS[n](z) for k, n in enumerate(self.dictionary))
        return self.l2(h).squeeze(-1)


FFN_KINDS: dict[str, Callable[..., nn.Module]] = {
    "swiglu": SwiGLUFFN,
    "gelu": GELUFFN,
    "la": LearnableActivationFFN,
    "moa": MixtureOfActivationsFFN,
}
_BUILT_IN_FFN = frozenset(FFN_KINDS)


def register_ffn(kind: str, factory: Callable[..., nn.Module], overwrite: bool = False) -> None:
    r"""Add an FFN kind that :class:`probml.models.lm.TinyLM` configs can name
    (``TinyLMConfig(ffn={"kind": kind, **options})``) and :func:`ffn_factory` can build.

    Args:
        kind: the name (a non-empty string); the built-in kinds cannot be replaced.
        factory: ``factory(d_model, d_ff, down=None, **options) -> nn.Module`` mapping
            ``... x d_model`` to ``... x d_model``. ``down`` is the ``d_ff -> d_model`` map to
            end with when TinyLM's ``placement`` supplies one (``None``: make your own). The
            factory is checked once on a small probe (``d_model = 8``, ``d_ff = 16``).
        overwrite: replace a kind registered before under ``kind``.

    A model saved with a registered kind loads after the same ``register_ffn`` call.
    """
    _check_registration(
        "FFN kind", FFN_KINDS, _BUILT_IN_FFN, ("kind", kind), ("factory", factory), overwrite
    )
    module = factory(8, 16, down=None)
    if not isinstance(module, nn.Module):
        raise TypeError(f"factory must return an nn.Module, got {type(module).__name__}")
    out = module(torch.zeros(2, 3, 8))
    if not isinstance(out, torch.Tensor) or out.shape != (2, 3, 8):
        got = shape_of(out)
        raise ValueError(f"factory(8, 16) must map ... x 8 to ... x 8: 2 x 3 x 8 gave {got}")
    FFN_KINDS[kind] = factory


def ffn_factory(kind: str = "swiglu", **kwargs) -> Callable[[int, int], nn.Module]:
    """A ``(d_model, d_ff) -> FFN`` factory for :class:`probml.models.lm.TinyLM`.

    ``kind``: ``"swiglu"``, ``"gelu"``, ``"la"`` (:class:`LearnableActivationFFN`), ``"moa"``
    (:class:`MixtureOfActivationsFFN`) or a kind added by :func:`register_ffn`; ``kwargs`` go
    to the module."""
    if kind not in FFN_KINDS:
        raise ValueError(
            f"kind must be one of {sorted(FFN_KINDS)} (add your own with register_ffn), "
            f"got {kind!r}"
        )
    cls = FFN_KINDS[kind]
    return lambda d_model, d_ff: cls(d_model, d_ff, **kwargs)


# ----------------------------------------------------------------------------- Pyro views
def _check_store_names(named, what: str, advice: str) -> None:
    """Raise if Pyro's parameter store holds another tensor under one of the ``(key, tensor)``
    pairs ``named``: Pyro keys the store by name, so SVI would step the stored tensor and never
    this one (the store's value is the parameter itself for an unconstrained parameter)."""
    import pyro

    store = pyro.get_param_store()
    for key, p in named:
        if key in store and store[key] is not p:
            raise ValueError(
                f"Pyro's parameter store already holds another tensor under {key!r} (another "
                f"{what}'s, or one loaded into the store): SVI would step that tensor and never "
                f"this {what}'s. {advice}{'c' if advice else 'C'}all pyro.clear_param_store() "
                f"first; restore saved weights with the {what}'s load_state_dict"
            )


def scale_vector_priors(model: nn.Module, weight_decay: float) -> nn.Module:
    r"""The Pyro view of role-aware weight decay (in place; returns ``model``).

    Every Input-Norm scale (``role="input"``) becomes a latent site with a Gaussian prior
    :math:`\gamma \sim \mathcal N(0, 1/\lambda)`, so :math:`-\log p(\gamma) = \frac\lambda2\|\gamma\|^2 +`
    const and MAP estimation adds exactly the L2 penalty of the weight-decay rule; Output-Norm
    scales stay plain parameters (a flat prior: no decay). The module tree is converted with
    :func:`pyro.nn.module.to_pyro_module_`; sites are named by module path. Use with a likelihood
    such as ``pyro.factor("lm", -n_tokens * loss)`` and an ``AutoDelta`` guide for MAP.

    The priors' locations are (non-persistent) buffers of the scale modules, so they follow
    the model: ``model.to(device)`` or ``model.double()`` before or after the call moves them
    with the scales (a ``PyroSample`` built from fixed tensors would stay where it was made).

    Pyro keys its parameter store by module path, the same for every converted TinyLM. SVI on
    a second converted model would step the tensors the store holds for the first and leave
    the second's unchanged. So the call raises if the store already holds another tensor under
    one of the model's parameter names: call ``pyro.clear_param_store()`` before fitting each
    converted model.
    """
    import pyro.distributions as dist
    from pyro.nn import PyroSample
    from pyro.nn.module import to_pyro_module_

    # finite and > 0: an infinite decay gave a prior scale of 0, refused by Pyro at sampling
    weight_decay = check_positive("weight_decay", weight_decay)
    if not any(isinstance(m, ScaleVector) and m.role == "input" for m in model.modules()):
        raise ValueError(  # a view with no latent site would look like one that works
            "model has no Input-Norm scale (ScaleVector with role='input'): nothing to put the "
            "prior on (TinyLM's norms carry one unless norm_scale=False)"
        )
    _check_store_names(model.named_parameters(), "model", "")
    to_pyro_module_(model)
    scale = 1.0 / math.sqrt(weight_decay)
    for m in model.modules():
        if isinstance(m, ScaleVector) and m.role == "input":
            # prior locations as buffers: they move with the model (a CUDA model draws on CUDA)
            loc = m.alpha.detach().new_zeros(m.alpha.shape)
            m.register_buffer("alpha_prior_loc", loc, persistent=False)
            m.alpha = PyroSample(lambda mod: dist.Normal(mod.alpha_prior_loc, scale).to_event(1))
            if m.beta is not None:
                loc = m.beta.detach().new_zeros(())
                m.register_buffer("beta_prior_loc", loc, persistent=False)
                m.beta = PyroSample(lambda mod: dist.Normal(mod.beta_prior_loc, scale))
    return model


class StochasticGates:
    r"""The Pyro view of MoA gates as per-token inclusion variables.

    For a :class:`MixtureOfActivationsFFN` with the gated form, write
    :math:`\pi_k(x) = 2\alpha_k q_k(x)` with :math:`q_k(x) = \sigma(u_k^\top x + b_k)`. The
    model has inclusion variables :math:`z_{tk} \sim \mathrm{Bernoulli}(1/2)` and output
    :math:`W_3[\sum_k 2\alpha_k z_{tk}\sigma_k(\cdot)]`; the amortised guide is
    :math:`z_{tk} \sim \mathrm{RelaxedBernoulliStraightThrough}(T, q_k(x))`. Since
    :math:`\mathbb E_q[2\alpha_k z_{tk}] = \pi_k(x)` and the two branches' gates are independent,
    the deterministic MoA layer is the mean-field plug-in of this model.

    Args:
        layer: a gated :class:`MixtureOfActivationsFFN`.
        noise: observation noise of the regression likelihood ``y ~ N(layer(x; z), noise^2)``.
        temperature: relaxation temperature of the guide.
        name: the name under which the layer's parameters enter Pyro's parameter store
            (``pyro.module(name, layer)``). Pyro keys the store by name, so a second layer
            under a name the store already holds would be trained through the first layer's
            tensors: its own would never move. That case raises; give each layer its own
            ``name`` or call ``pyro.clear_param_store()`` between fits.
    """

    def __init__(
        self,
        layer: MixtureOfActivationsFFN,
        noise: float = 0.1,
        temperature: float = 0.5,
        name: str = "moa_layer",
    ):
        if layer.gate_kind != "gated":
            raise ValueError("StochasticGates needs the gated form (gate='gated')")
        noise, temperature = (
            check_positive("noise", noise),
            check_positive("temperature", temperature),
        )
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty string, got {name!r}")
        self.layer, self.noise, self.temperature, self.name = layer, noise, temperature, name

    def _register(self) -> None:
        """``pyro.module(self.name, self.layer)``, refusing a store entry of another tensor."""
        import pyro
        from pyro.params.param_store import param_with_module_name

        named = (
            (param_with_module_name(self.name, k), p) for k, p in self.layer.named_parameters()
        )
        _check_store_names(
            named, "layer", f"Pass StochasticGates a distinct name (got name={self.name!r}) or "
        )
        pyro.module(self.name, self.layer)

    def _output(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        lay = self.layer
        g = (2.0 * lay.alpha * z).unflatten(-1, (lay.n_gates, lay.K))
        z1 = lay.w1(x)
        if lay.ffn_type == "I":
            h = lay._mix(z1, g[..., 0, :], lay.dictionary)
        elif lay.variant == "one_sided":
            h = lay._mix(z1, g[..., 0, :], lay.dictionary) * lay.w2(x)
        else:
            h = lay._mix(z1, g[..., 0, :], lay.dictionary) * lay._mix(
                lay.w2(x), g[..., 1, :], lay.dictionary
            )
        return lay.w3(h)

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``N x d`` tokens; ``y``: ``N x d`` targets (or ``None``)."""
        import pyro
        import pyro.distributions as dist

        self._register()
        n_gate = self.layer.n_gates * self.layer.K
        with pyro.plate("tokens", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(x.new_full((x.shape[0], n_gate), 0.5)).to_event(1))
            out = self._output(x, z)
            pyro.sample("y", dist.Normal(out, self.noise).to_event(1), obs=y)
        return out

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        import pyro
        import pyro.distributions as dist

        self._register()
        q = torch.sigmoid(self.layer.gate_proj(x))
        with pyro.plate("tokens", x.shape[0]):
            pyro.sample(
                "z",
                dist.RelaxedBernoulliStraightThrough(
                    torch.tensor(self.temperature, dtype=x.dtype, device=x.device), probs=q
                ).to_event(1),
            )

    def mean_output(
        self,
        x: torch.Tensor,
        num_samples: int = 2000,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        r"""Monte Carlo mean of the output over ``num_samples`` hard gate draws
        :math:`z \sim \mathrm{Bernoulli}(q(x))` (the guide's zero-temperature limit), which
        equals ``layer(x)`` in expectation. ``x``: ``... x d``; returns ``... x d``. Draws come
        from ``generator`` if given, else from torch's global RNG (as Pyro's samplers do)."""
        num_samples = check_int("num_samples", num_samples)
        q = torch.sigmoid(self.layer.gate_proj(x))
        z = torch.bernoulli(q.expand(num_samples, *q.shape), generator=generator)
        return self._output(x.expand(num_samples, *x.shape), z).mean(0)
