r"""LoRA adapters and the spurious-factor model over adapter updates (GRASP).

**LoRA.** A frozen ``nn.Linear`` with weight :math:`W_0` (``out x in``) gains a low-rank update
:math:`\Delta W = s\, B A`, :math:`A \in \mathbb R^{r \times in}`, :math:`B \in
\mathbb R^{out \times r}`, :math:`s = \alpha / r`; :math:`B = 0` at initialisation.
:func:`add_lora` wraps the targeted linears of any model in :class:`LoRALinear`;
:func:`lora_modules` also recognises **PEFT-style** modules (attributes ``lora_A`` / ``lora_B``
that are ``nn.Linear`` s or ``ModuleDict`` s of them, plus ``scaling``), so identification
and projection run unchanged on a Hugging Face model with PEFT adapters.

**Sides.** A module *writes* to the residual stream when its output lands there (attention
output, MLP down projection) and *reads* it when its input comes from there (q, k, v, MLP up).
:func:`module_side` decides from the module name (configurable).

**Spurious-factor model** (:func:`spurious_factor_model`), a Pyro model over update vectors
:math:`b_j \in \mathbb R^D` (for example the leading singular vectors of several naive runs'
:math:`\Delta W`, scaled by their singular values):

.. math::
    v \sim \mathcal N(0, I_D),\; u = v / \|v\|, \quad
    \lambda_j \sim \mathcal N(0, s_\lambda^2), \quad
    \tau_k \sim \mathrm{HalfCauchy}(1),\; T_{:k} \sim \mathcal N(0, \tau_k^2 I), \quad
    \eta_j \sim \mathcal N(0, I_K), \quad
    b_j \sim \mathcal N(\lambda_j u + T \eta_j, \sigma^2 I),

i.e. a shared unit direction (uniform on the sphere a priori, the ``ProjectedNormal`` with
zero concentration) plus task loadings with ARD scales. :func:`fit_spurious_factor` runs SVI
and returns the soft projector :math:`I - \mathbb E[u u^\top]` and a detection score
(the ELBO gain of the model with the shared factor over the same model without it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from probml.utils import (
    check_finite,
    check_int,
    check_names,
    check_positive,
    check_seed,
    keep_global_rng,
    keep_param_store,
    make_generator,
    shape_of,
)

__all__ = [
    "LoRALinear",
    "LoRAFactors",
    "add_lora",
    "lora_modules",
    "lora_parameters",
    "merge_lora",
    "unmerge_lora",
    "module_side",
    "WRITE_NAMES",
    "spurious_factor_model",
    "fit_spurious_factor",
]

#: last name components of modules that write to the residual stream
WRITE_NAMES = (
    "o", "out", "o_proj", "out_proj", "down", "down_proj", "c_proj", "dense_4h_to_h", "w3",
    "wo", "fc2",
)  # fmt: skip


class LoRALinear(nn.Module):
    """``base(x) + scaling * x A^T B^T`` with a frozen ``base`` ``nn.Linear``.

    Args:
        base: the linear layer to adapt (its parameters are frozen).
        rank: ``r``; alpha: the scaling numerator (``scaling = alpha / r``).
        generator: seeds ``A``'s initialisation (Kaiming-uniform like PEFT; ``B = 0``).
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float = 1.0,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        rank = check_int("rank", rank)
        check_positive("alpha", alpha)  # 0 adapts nothing, a negative one flips the update
        self.base = base.requires_grad_(False)
        out_f, in_f = base.weight.shape
        w = base.weight
        bound = 1.0 / math.sqrt(in_f)
        a = (torch.rand(rank, in_f, generator=generator, dtype=w.dtype) * 2 - 1) * bound
        self.lora_A = nn.Parameter(a.to(w.device))
        self.lora_B = nn.Parameter(torch.zeros(out_f, rank, dtype=w.dtype, device=w.device))
        self.scaling = float(alpha) / int(rank)
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * self.lora_B @ self.lora_A

    # ``merged`` travels with the weights: a merged state loaded into an unmerged module
    # would otherwise add the update a second time (its base weight already holds it)
    def get_extra_state(self) -> dict:
        return {"merged": bool(self.merged)}

    def set_extra_state(self, state: dict) -> None:
        self.merged = bool(state["merged"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        return y + self.scaling * (x @ self.lora_A.T) @ self.lora_B.T


@dataclass
class LoRAFactors:
    """The adapter of one module: ``A`` (``r x in``), ``B`` (``out x r``) as the live
    parameters (in-place edits change the model), the scaling and the module's side."""

    name: str
    A: torch.Tensor
    B: torch.Tensor
    scaling: float
    side: str

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * self.B @ self.A


def module_side(name: str, write_names: Iterable[str] = WRITE_NAMES) -> str:
    """``"write"`` if the module's output joins the residual stream, else ``"read"``.

    Decided from the name: the last component (skipping wrappers such as ``linear``/``base``)
    in ``write_names``.
    """
    parts = [p for p in name.split(".") if p not in ("linear", "base", "base_layer")]
    return (
        "write" if parts and parts[-1] in set(check_names("write_names", write_names)) else "read"
    )


def _peft_weight(obj, key: str | None = None) -> torch.Tensor | None:
    if isinstance(obj, nn.Linear):
        return obj.weight
    if isinstance(obj, nn.ModuleDict) and len(obj):
        first = obj[key] if key is not None else next(iter(obj.values()))
        return first.weight if isinstance(first, nn.Linear) else None
    if isinstance(obj, (torch.Tensor, nn.Parameter)):
        return obj
    return None


_INACTIVE = object()  # a PEFT layer none of whose adapters is active


def _peft_key(name: str, mod: nn.Module):
    """Which adapter of a PEFT layer (``lora_A`` a ``ModuleDict``) to read: its one active
    adapter, or :data:`_INACTIVE` if none of its adapters is active (PEFT sets the active
    name on every layer, also where that adapter is absent); None for one adapter on a layer
    that does not say which is active, or for other layouts."""
    A = mod.lora_A
    if not isinstance(A, nn.ModuleDict):
        return None
    active = getattr(mod, "active_adapters", None)
    if active is None:
        if len(A) > 1:
            raise ValueError(
                f"{name!r} holds adapters {list(A.keys())} and does not say which is active"
            )
        return None
    active = [active] if isinstance(active, str) else list(active)
    active = [a for a in active if a in A]
    if len(active) > 1:
        raise ValueError(
            f"{name!r} holds adapters {list(A.keys())} with {len(active)} of them active "
            f"({active}); GRASP and the identification work on one: activate one (PEFT's "
            "set_adapter)"
        )
    return active[0] if active else _INACTIVE


def lora_modules(
    model: nn.Module, write_names: Iterable[str] = WRITE_NAMES
) -> Iterator[LoRAFactors]:
    """Every adapted module of ``model``: ours (:class:`LoRALinear`) or PEFT-style (attributes
    ``lora_A``/``lora_B`` holding ``nn.Linear`` s, ``ModuleDict`` s of them or tensors;
    ``scaling`` a float or a dict). A PEFT layer gives its active adapter; one whose
    adapters are all inactive is left out; several active on one layer are an error."""
    for name, mod in model.named_modules():
        if not (hasattr(mod, "lora_A") and hasattr(mod, "lora_B")):
            continue
        key = _peft_key(name, mod)
        if key is _INACTIVE:
            continue
        A, B = _peft_weight(mod.lora_A, key), _peft_weight(mod.lora_B, key)
        if A is None or B is None:
            continue
        s = getattr(mod, "scaling", 1.0)
        if isinstance(s, dict):
            s = s[key] if key is not None else next(iter(s.values()))
        yield LoRAFactors(name, A, B, float(s), module_side(name, write_names))


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable adapter parameters (``A`` and ``B`` of every adapted module)."""
    return [p for f in lora_modules(model) for p in (f.A, f.B)]


def add_lora(
    model: nn.Module,
    targets: Iterable[str],
    rank: int = 4,
    alpha: float | None = None,
    seed: int = 0,
    freeze: bool = True,
) -> list[str]:
    """Wrap every ``nn.Linear`` whose dotted name matches one of ``targets`` (regular
    expressions matched at the end of the name) in a :class:`LoRALinear`.

    Args:
        model: any module; all its parameters are frozen first when ``freeze``.
        targets: e.g. ``["attn.q", "attn.v", "attn.o.linear", "ffn.down"]``.
        rank, alpha: LoRA rank and scaling numerator (default ``alpha = rank``: scaling 1).
        seed: seeds the ``A`` initialisations.

    Returns:
        The names of the adapted modules (raises if none matched).
    """
    gen = make_generator(seed)  # checked before the model is touched
    targets = check_names("targets", targets)  # one string's characters would be patterns
    pats = [re.compile(f"(^|\\.){t}$") for t in targets]
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and any(p.search(n) for p in pats)
    ]
    if not names:  # before anything is frozen: a failed call leaves the model as it was
        raise ValueError(f"no nn.Linear matched targets {targets}")
    if freeze:
        model.requires_grad_(False)
    for n in names:
        parent_name, _, child = n.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        lin = getattr(parent, child)
        setattr(parent, child, LoRALinear(lin, rank, rank if alpha is None else alpha, gen))
    return names


def merge_lora(model: nn.Module) -> None:
    """Fold every :class:`LoRALinear`'s update into its base weight (forward unchanged)."""
    for m in model.modules():
        if isinstance(m, LoRALinear) and not m.merged:
            with torch.no_grad():
                m.base.weight += m.delta_weight()
            m.merged = True


def unmerge_lora(model: nn.Module) -> None:
    """Undo :func:`merge_lora`."""
    for m in model.modules():
        if isinstance(m, LoRALinear) and m.merged:
            with torch.no_grad():
                m.base.weight -= m.delta_weight()
            m.merged = False


# ----------------------------------------------------------------------------- Pyro model
def spurious_factor_model(
    b: torch.Tensor,
    num_task: int = 4,
    shared: bool = True,
    loading_scale: float = 1.0,
) -> None:
    """Pyro model of update vectors ``b`` (``J x D``): shared unit direction + ARD task
    loadings (see the module docstring). ``shared=False`` drops the shared factor (the null
    model of the detection score). It has no plates, and it vectorises under an outer one
    at ``dim=-1`` (``Trace_ELBO(vectorize_particles=True, max_plate_nesting=0)``)."""
    J, D = b.shape
    if shared:
        v = pyro.sample("v", dist.Normal(b.new_zeros(D), 1.0).to_event(1))
        u = pyro.deterministic("u", v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        lam = pyro.sample("lam", dist.Normal(b.new_zeros(J), loading_scale).to_event(1))
        mean = lam.unsqueeze(-1) * u.unsqueeze(-2)
    else:
        mean = b.new_zeros(J, D)
    tau = pyro.sample("tau", dist.HalfCauchy(b.new_ones(num_task)).to_event(1))
    # the unsqueezes keep batch dims (outer plates: Predictive(parallel=True), vectorised
    # particles) apart from the event dims: tau is (batch x) K, sigma (batch)
    Tm = pyro.sample("T", dist.Normal(b.new_zeros(D, num_task), tau.unsqueeze(-2)).to_event(2))
    eta = pyro.sample("eta", dist.Normal(b.new_zeros(J, num_task), 1.0).to_event(2))
    sigma = pyro.sample("sigma", dist.HalfNormal(b.new_tensor(1.0)))
    mean = mean + eta @ Tm.transpose(-1, -2)
    pyro.sample("b", dist.Normal(mean, sigma[..., None, None]).to_event(2), obs=b)


@keep_global_rng
@keep_param_store
def fit_spurious_factor(
    b: torch.Tensor,
    num_task: int = 4,
    num_steps: int = 1500,
    lr: float = 0.02,
    num_samples: int = 200,
    seed: int = 0,
) -> dict:
    """SVI (AutoNormal) on :func:`spurious_factor_model` with and without the shared factor.

    Args:
        b: ``J x D`` update vectors (rows are scaled to unit mean norm first).

    Returns:
        ``u`` (posterior mean direction, unit), ``projector`` (the soft projector
        :math:`I - \\mathbb E[u u^\\top]`, ``D x D``), ``detection`` (final ELBO of the shared
        model minus the null model, averaged over the last 100 steps: > 0 favours a shared
        factor) and the two loss curves.
    """
    from pyro.infer import SVI, Predictive, Trace_ELBO
    from pyro.infer.autoguide import AutoNormal

    if not isinstance(b, torch.Tensor) or b.dim() != 2 or b.shape[0] < 2:
        raise ValueError(f"b must be a J x D tensor with J >= 2, got {shape_of(b)}")
    check_finite("b", b)  # NaN failed inside Pyro's support check at site 'b'
    if not bool((b.norm(dim=-1) > 0).any()):
        raise ValueError("b is all zeros: there is no update to find a direction in")
    for name, value in (
        ("num_task", num_task),
        ("num_steps", num_steps),
        ("num_samples", num_samples),
    ):
        check_int(name, value)
    check_positive("lr", lr)
    seed = check_seed("seed", seed)
    b = b / b.norm(dim=-1).mean().clamp_min(1e-12)
    out = {}
    for shared in (True, False):
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)

        def model(b=b, shared=shared):
            spurious_factor_model(b, num_task, shared)

        guide = AutoNormal(model, init_scale=0.05)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO())
        losses = [svi.step() for _ in range(num_steps)]
        out[shared] = losses
        if shared:
            post = Predictive(model, guide=guide, num_samples=num_samples, return_sites=["u"])()
            us = post["u"].reshape(num_samples, -1)
            uu = (us.unsqueeze(-1) * us.unsqueeze(-2)).mean(0)
            _, evecs = torch.linalg.eigh(uu)
            u_mean = evecs[:, -1]
    tail = min(100, num_steps)
    detection = -(sum(out[True][-tail:]) - sum(out[False][-tail:])) / tail
    return {
        "u": u_mean,
        "projector": torch.eye(b.shape[1], dtype=b.dtype, device=b.device) - uu,
        "detection": detection,
        "loss_shared": out[True],
        "loss_null": out[False],
    }
