r"""DRUM: distributionally robust transfer when covariates ``A`` are missing in the target.

Given source :math:`(Y, X, A)` and target :math:`X`, DRUM solves

.. math::
    \min_f \max_{Q \in U_\rho} \; \mathbb E_{X \sim p_T} \mathbb E_{A \sim Q(\cdot\mid X)}
    \ell\big(f(X); \mu(X, A)\big), \qquad
    U_\rho = \{Q : \mathbb E_{p_T} D(Q(\cdot \mid X) \,\|\, P_S(\cdot \mid X)) \le \rho\},

with :math:`\ell` the conditional Brier or log risk (affine in :math:`\mu`), ``D`` the KL
divergence (a density-bearing generator: a conditional flow, or a tilted Bernoulli for binary
``A``) or a transport cost :math:`\mathbb E\|G_\phi(X, Z) - G_0(X, Z)\|^2` with shared noise.
Alternating gradient play: the adversary ascends :math:`\mathbb E_Q \ell - \lambda D` (the
ELBO of :func:`~probml.models.transfer.tilted_model` times :math:`\lambda`; reparameterised
draws, or exact enumeration for binary ``A``), :math:`\lambda` follows a multiplicative dual
update so that :math:`D \approx \rho` (or stays fixed when ``penalty`` is given), and the
predictor descends the same objective. ``rho = 0`` gives the plug-in
:math:`f(x) = \mathbb E_{P_S}[\mu(x, A)]`.

**Bias correction** [reconstruction]. Both losses are proper, so the minimax ``f`` is the
Brier/log-optimal response :math:`\mathbb E_Q[\mu(x, A)]`. With a linear sieve
:math:`\phi(x) = (1, x)`, the corrected predictor :math:`f + c^\top\phi` solves the cross-fitted
estimating equation

.. math::
    \mathbb E_T \mathbb E_Q[\phi(X)(f(X) + c^\top\phi(X) - \hat\mu(X, A))]
    = \mathbb E_S[\hat\omega(X)\, r_Q(A, X)\, \phi(X)(Y - \hat\mu(X, A))],

:math:`\hat\omega = p_T(x)/p_S(x)` from a domain classifier and
:math:`r_Q = q(a \mid x)/p_S(a \mid x)` exact from the generators; the equation holds at the
truth when either :math:`\hat\mu` or :math:`(\hat\omega, r_Q)` is right. Needs
``divergence="kl"`` (density ratios); predictions are clipped to ``[1e-4, 1 - 1e-4]``.

Baselines with the same interface: :class:`ERMOnX` (a classifier of ``Y`` on ``X`` only) and
:class:`ImputationBaseline` (plug :math:`\mathbb E_{P_S}[A \mid x]` into :math:`\hat\mu`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from sklearn.base import BaseEstimator
from torch import nn

from probml.exceptions import NotFittedError
from probml.guides.generators import (
    ConditionalBernoulli,
    ConditionalFlow,
    TransportPerturbation,
    fit_source_conditional,
)
from probml.models.transfer import brier_risk, log_risk
from probml.utils import (
    check_data,
    check_finite,
    check_int,
    check_interval,
    check_positive,
    check_seed,
    derive_seed,
    keep_global_rng,
    make_generator,
    progress,
)

__all__ = [
    "DRUM",
    "ERMOnX",
    "ImputationBaseline",
    "bernoulli_kl_interval",
    "binary_brier_minimax",
    "fit_outcome_model",
]


# ----------------------------------------------------------------------------- closed forms
def bernoulli_kl_interval(p: float, rho: float) -> tuple[float, float]:
    r"""``[q_lo, q_hi]`` = :math:`\{q : \mathrm{KL}(\mathrm{Ber}(q) \| \mathrm{Ber}(p)) \le
    \rho\}` (root finding; the KL is convex in ``q`` with minimum 0 at ``p``)."""
    from scipy.optimize import brentq

    check_interval("p", p)
    if not rho >= 0:  # NaN fails too
        raise ValueError(f"rho must be >= 0, got {rho!r}")

    def kl(q):
        out = 0.0
        if q > 0:
            out += q * math.log(q / p)
        if q < 1:
            out += (1 - q) * math.log((1 - q) / (1 - p))
        return out - rho

    lo = 0.0 if kl(0.0) <= 0 else brentq(kl, 0.0, p)
    hi = 1.0 if kl(1.0) <= 0 else brentq(kl, p, 1.0)
    return lo, hi


def binary_brier_minimax(
    p: float, rho: float, mu: tuple[float, float]
) -> tuple[float, tuple[float, float], float]:
    r"""Closed-form minimax Brier prediction for binary ``A`` in a per-x KL ball.

    The risk :math:`q[(f-\mu_1)^2 + \mu_1(1-\mu_1)] + (1-q)[(f-\mu_0)^2 + \mu_0(1-\mu_0)]`
    is linear in ``q`` with slope :math:`2(\mu_1-\mu_0)(\tfrac12 - f)`, so
    :math:`f^* = \mathrm{clip}(\tfrac12, f(q_{lo}), f(q_{hi}))`, :math:`f(q) = q\mu_1 +
    (1-q)\mu_0`.

    Args:
        p: the source :math:`P(A = 1 | x)`, in (0, 1); rho: the ball's radius (>= 0).
        mu: :math:`(\mu_0, \mu_1)`, :math:`\mu_a = P(Y = 1 | A = a, x)`, each in [0, 1].

    Returns:
        ``(f_star, (q_lo, q_hi), worst_case_brier)``.
    """
    lo, hi = bernoulli_kl_interval(p, rho)
    if isinstance(mu, (str, bytes)) or np.ndim(mu) != 1 or len(mu) != 2:  # 0.5 failed in len()
        raise ValueError(f"mu must be a pair (mu_0, mu_1), got {mu!r}")
    m0 = check_interval("mu[0]", mu[0], closed="both")  # E[Y | A = 0, x], a probability
    m1 = check_interval("mu[1]", mu[1], closed="both")
    fl, fh = lo * m1 + (1 - lo) * m0, hi * m1 + (1 - hi) * m0
    f = min(max(0.5, min(fl, fh)), max(fl, fh))

    def risk(q):
        return q * ((f - m1) ** 2 + m1 * (1 - m1)) + (1 - q) * ((f - m0) ** 2 + m0 * (1 - m0))

    return f, (lo, hi), max(risk(lo), risk(hi))


# ----------------------------------------------------------------------------- nuisances
class _MLP(nn.Module):
    def __init__(self, d_in: int, hidden: int, linear: bool = False):
        super().__init__()
        if linear:
            self.net = nn.Linear(d_in, 1)
        else:
            self.net = nn.Sequential(
                nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                nn.Linear(hidden, 1),
            )  # fmt: skip
        self.register_buffer("loc", torch.zeros(d_in))
        self.register_buffer("scale", torch.ones(d_in))

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # logits
        return self.net((z - self.loc) / self.scale).squeeze(-1)


class _PerRow(nn.Module):
    """A user's predictor or outcome model, held to one value per row of its first argument
    ``x`` (``... x d -> ...``): an ``... x 1`` output (``nn.Linear(d, 1)``) is squeezed; any
    other shape names the argument, where broadcasting would silently pair every row with
    every other."""

    def __init__(self, fn: Callable, name: str):
        super().__init__()
        self.fn, self.name = fn, name

    def forward(self, x: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        out = self.fn(x, *rest)
        rows = x.shape[:-1]
        if out.shape == (*rows, 1):
            out = out.squeeze(-1)
        if out.shape != rows:
            raise ValueError(
                f"{self.name} must return one value per row of x: x of shape "
                f"{tuple(x.shape)} gave {tuple(out.shape)}"
            )
        return out


def _check_source_conditional(g, binary: bool, Xs: torch.Tensor, As: torch.Tensor) -> None:
    """A given ``source_conditional`` must be the generator for this A (binary or not) and
    have the data's widths; otherwise a broadcast deep in the fit names nothing."""
    want = ConditionalBernoulli if binary else ConditionalFlow
    if not isinstance(g, want):
        kind = "binary" if binary else "continuous"
        raise TypeError(
            f"source_conditional must be a {want.__name__} for a {kind} A, got {type(g).__name__}"
        )
    got = (g.base[0].in_features, 1) if binary else (g.x_dim, g.a_dim)
    data = (Xs.shape[1], 1 if binary else As.reshape(As.shape[0], -1).shape[1])
    if got != data:
        raise ValueError(f"source_conditional is for (d_x, d_a) = {got}, but the data have {data}")


def _resolve_outcome(outcome_model, Xs, As, ys, seed: int) -> Callable:
    """The user's callable ``mu(x, a)`` (held to one value per row), or a model of the named
    kind fitted to the given source rows."""
    if callable(outcome_model) and not isinstance(outcome_model, str):
        return _PerRow(outcome_model, "outcome_model")
    return fit_outcome_model(Xs, As, ys, outcome_model, seed=seed)


class _Outcome(nn.Module):
    """mu(x, a) = sigmoid(net([x, a]))."""

    def __init__(self, net: _MLP):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        a = a.reshape(*x.shape[:-1], -1).to(x)
        return torch.sigmoid(self.net(torch.cat((x, a), -1)))


def _fit_logistic_net(
    Z: torch.Tensor, y: torch.Tensor, linear: bool, hidden: int, num_iters: int, seed: int
) -> _MLP:
    hidden, num_iters = check_int("hidden", hidden), check_int("num_iters", num_iters)
    torch.manual_seed(check_seed("seed", seed))
    net = _MLP(Z.shape[1], hidden, linear).to(Z)
    net.loc.copy_(Z.mean(0))
    net.scale.copy_(Z.std(0).clamp_min(1e-6))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-4)
    bce = nn.BCEWithLogitsLoss()
    for _ in range(num_iters):  # full batch
        loss = bce(net(Z), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval().requires_grad_(False)


@keep_global_rng
def fit_outcome_model(
    X: torch.Tensor,
    A: torch.Tensor,
    y: torch.Tensor,
    kind: Literal["mlp", "linear"] = "mlp",
    hidden: int = 32,
    num_iters: int = 500,
    seed: int = 0,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Fit :math:`\\hat\\mu(x, a) = P_S(Y = 1 \\mid x, a)`: a logistic MLP or (deliberately
    simple) logistic-linear model; returns a differentiable ``mu(x, a)``."""
    if kind not in ("mlp", "linear"):
        raise ValueError(f"outcome_model must be 'mlp', 'linear' or a callable, got {kind!r}")
    Z = torch.cat((X, A.reshape(X.shape[0], -1).to(X)), -1)
    return _Outcome(_fit_logistic_net(Z, y, kind == "linear", hidden, num_iters, seed))


def _as_tensor(name: str, v, ndim: tuple[int, ...], min_rows: int = 1) -> torch.Tensor:
    """``v`` as a real, finite floating tensor with a dimension count in ``ndim`` and at least
    ``min_rows`` rows. A tensor keeps its device (and floating dtype); anything else goes
    through :func:`probml.utils.check_data` (dense, real, float64)."""
    if not isinstance(v, torch.Tensor):
        k = np.ndim(v) if np.ndim(v) in ndim else ndim[-1]
        return torch.tensor(check_data(name, v, ndim=k, min_rows=min_rows))  # may be read-only
    if v.is_complex():
        raise ValueError(f"{name} must be real, got a complex tensor ({v.dtype})")
    t = v if v.is_floating_point() else v.to(torch.get_default_dtype())
    if t.dim() not in ndim:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndim))} dims, got {t.dim()}")
    if t.shape[0] < min_rows or (t.dim() == 2 and t.shape[1] < 1):
        raise ValueError(
            f"{name} must have at least {min_rows} row(s) and one column, got shape "
            f"{tuple(t.shape)}"
        )
    check_finite(name, t)
    return t


def _is_binary(A: torch.Tensor) -> bool:
    """A 1-D 0/1 ``A`` (an ``n x 1`` one is squeezed to it first): handled by the exact
    tilted-Bernoulli adversary."""
    return A.dim() == 1 and bool(((A == 0) | (A == 1)).all())


class _Validated(BaseEstimator):
    """Shared input validation and prediction plumbing for DRUM and its baselines."""

    def _check_fit(self, X_source, A_source, y_source, X_target):
        # X_source sets the working dtype and device; the others follow it
        Xs = _as_tensor("X_source", X_source, (2,), min_rows=2)
        As = _as_tensor("A_source", A_source, (1, 2)).to(Xs)
        if As.dim() == 2 and As.shape[1] == 1 and _is_binary(As[:, 0]):
            As = As[:, 0]  # a single 0/1 column is a binary A, as a 1-D one is
        ys = _as_tensor("y_source", y_source, (1,)).to(Xs)
        Xt = _as_tensor("X_target", X_target, (2,)).to(Xs)
        if not (Xs.shape[0] == As.shape[0] == ys.shape[0]):
            raise ValueError(
                "X_source, A_source and y_source must have the same number of rows, got "
                f"{Xs.shape[0]}, {As.shape[0]} and {ys.shape[0]}"
            )
        if Xt.shape[1] != Xs.shape[1]:
            raise ValueError(
                f"X_target must have {Xs.shape[1]} columns like X_source, got {Xt.shape[1]}"
            )
        if not bool(((ys == 0) | (ys == 1)).all()):
            raise ValueError("y_source must be binary (0/1)")
        if not 0 < float(ys.sum()) < ys.shape[0]:
            raise ValueError("y_source must contain both classes (0 and 1)")
        self.x_dim_ = Xs.shape[1]
        self.dtype_, self.device_ = Xs.dtype, Xs.device
        self.a_dim_ = 1 if As.dim() == 1 else As.shape[1]
        return Xs, As, ys, Xt

    def _check_predict(self, X) -> torch.Tensor:
        if not hasattr(self, "x_dim_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit first")
        X = _as_tensor("X", X, (2,)).to(self.device_, self.dtype_)
        if X.shape[1] == self.x_dim_ + self.a_dim_:
            raise ValueError(
                f"X has {X.shape[1]} columns = X and A: A is not available at prediction "
                f"time; pass the {self.x_dim_} shared covariates only"
            )
        if X.shape[1] != self.x_dim_:
            raise ValueError(f"X must have {self.x_dim_} columns, got {X.shape[1]}")
        return X

    def predict_proba(self, X) -> np.ndarray:
        """``n x 2`` class probabilities from the shared covariates ``X`` only."""
        p = self._predict(self._check_predict(X)).detach().cpu().numpy()
        return np.stack((1 - p, p), axis=1)

    def predict(self, X) -> np.ndarray:
        """``n`` labels in {0, 1}: 1 where the class probability exceeds 0.5 (a tie at exactly
        0.5 is labelled 0, as scikit-learn's linear classifiers label a zero decision value)."""
        return (self.predict_proba(X)[:, 1] > 0.5).astype(int)


class ERMOnX(_Validated):
    """Baseline: a logistic MLP (or ``linear=True``: logistic regression) of ``Y`` on ``X``
    only, fitted on the source."""

    def __init__(self, hidden: int = 32, num_iters: int = 500, seed: int = 0, linear: bool = False):
        self.hidden, self.num_iters, self.seed, self.linear = hidden, num_iters, seed, linear

    @keep_global_rng
    def fit(self, X_source, A_source, y_source, X_target=None):
        """Fit on the source sample (``n_S x d_x``, ``A`` ``n_S [x d_a]``, binary ``y``);
        ``X_target`` (default ``X_source``) is only checked, for the same call as :class:`DRUM`."""
        X_target = X_source if X_target is None else X_target
        Xs, _, ys, _ = self._check_fit(X_source, A_source, y_source, X_target)
        self.net_ = _fit_logistic_net(Xs, ys, self.linear, self.hidden, self.num_iters, self.seed)
        return self

    def _predict(self, X):
        return torch.sigmoid(self.net_(X))


class ImputationBaseline(_Validated):
    """Baseline: :math:`f(x) = \\hat\\mu(x, \\mathbb E_{G_0}[A \\mid x])` (mean imputation from
    the source conditional; for binary ``A`` the conditional probability is imputed). The
    expectation is a mean over ``num_draws`` draws whose base noise comes from a generator
    seeded by ``seed``, so :meth:`predict` gives the same answer for the same rows (and
    leaves torch's global RNG alone)."""

    def __init__(self, outcome_model="mlp", num_draws: int = 16, seed: int = 0):
        self.outcome_model, self.num_draws, self.seed = outcome_model, num_draws, seed

    @keep_global_rng
    def fit(self, X_source, A_source, y_source, X_target=None):
        """Fit on the source sample (``n_S x d_x``, ``A`` ``n_S [x d_a]``, binary ``y``);
        ``X_target`` (default ``X_source``) is only checked, for the same call as :class:`DRUM`."""
        X_target = X_source if X_target is None else X_target
        check_int("num_draws", self.num_draws)
        check_seed("seed", self.seed)  # before either model is fitted
        Xs, As, ys, _ = self._check_fit(X_source, A_source, y_source, X_target)
        binary = _is_binary(As)
        self.mu_ = _resolve_outcome(self.outcome_model, Xs, As, ys, self.seed)
        self.g0_ = fit_source_conditional(As, Xs, binary=binary, seed=self.seed, verbose=False)
        return self

    def _predict(self, X):
        with torch.no_grad():
            if isinstance(self.g0_, ConditionalBernoulli):
                a_bar = self.g0_.prob(X)
            else:  # base noise from a generator seeded by ``seed``: predict is deterministic
                gen = make_generator(self.seed, device=X.device)
                a_bar = self.g0_.rsample(X.expand(self.num_draws, *X.shape), gen).mean(0)
            return self.mu_(X, a_bar)


class DRUM(_Validated):
    """Distributionally robust transfer with a generator adversary (scikit-learn style).

    Args:
        rho: radius of the ball (``>= 0``); ``0`` gives the plug-in.
        penalty: a fixed :math:`\\lambda > 0` (penalised form) instead of the radius.
        divergence: ``"kl"`` (flow or tilted Bernoulli) or ``"transport"``.
        loss: ``"brier"`` or ``"log"``.
        bias_correction: apply the cross-fitted correction (``divergence="kl"`` only).
        n_folds: cross-fitting folds of the correction.
        predictor: ``"mlp"`` (default), ``"linear"`` (logistic), ``"constant"`` or an
            ``nn.Module`` mapping ``n x d_x`` to logits ``n`` (an ``n x 1`` output is
            squeezed, any other shape is an error). A copy is trained, your module is left
            as it was: ``predictor_`` holds the trained copy wrapped, and the copy itself is
            ``predictor_.fn``. The built-in predictors' output bias starts at the logit of
            the source's mean outcome.
        outcome_model: ``"mlp"``, ``"linear"`` or a callable ``mu(x, a)``: ``... x d_x`` and
            ``... x d_a`` to probabilities ``...`` (then treated as known; ``... x 1`` is
            squeezed).
        source_conditional: a fitted generator from
            :func:`~probml.guides.generators.fit_source_conditional` (then treated as known).
        domain_classifier: a scikit-learn classifier for :math:`p_T(x)/p_S(x)` (default
            logistic regression).
        num_iters, inner_steps, lr, adversary_lr, dual_lr: the alternating play.
        num_draws: draws of ``A`` per target ``x`` and step (continuous ``A``).
        batch_size: target rows per step (``None``: all); a fresh minibatch each iteration.
        seed, verbose.

    Attributes (after ``fit``): ``predictor_``, ``adversary_``, ``source_conditional_``,
    ``outcome_model_``, ``lambda_``, ``divergence_`` (achieved ``D``), ``history_``,
    ``correction_`` (the sieve coefficients ``c``, or ``None``; predictions are then
    ``f + phi(x)^T c`` clamped to ``[1e-4, 1 - 1e-4]``).
    """

    def __init__(
        self,
        rho: float = 0.1,
        penalty: float | None = None,
        divergence: Literal["kl", "transport"] = "kl",
        loss: Literal["brier", "log"] = "brier",
        bias_correction: bool = False,
        n_folds: int = 5,
        predictor: str | nn.Module = "mlp",
        outcome_model: str | Callable = "mlp",
        source_conditional: nn.Module | None = None,
        domain_classifier=None,
        num_iters: int = 400,
        inner_steps: int = 3,
        lr: float = 1e-2,
        adversary_lr: float = 1e-2,
        dual_lr: float = 0.05,
        num_draws: int = 8,
        batch_size: int | None = 256,
        seed: int = 0,
        verbose: bool = True,
    ):
        self.rho = rho
        self.penalty = penalty
        self.divergence = divergence
        self.loss = loss
        self.bias_correction = bias_correction
        self.n_folds = n_folds
        self.predictor = predictor
        self.outcome_model = outcome_model
        self.source_conditional = source_conditional
        self.domain_classifier = domain_classifier
        self.num_iters = num_iters
        self.inner_steps = inner_steps
        self.lr = lr
        self.adversary_lr = adversary_lr
        self.dual_lr = dual_lr
        self.num_draws = num_draws
        self.batch_size = batch_size
        self.seed = seed
        self.verbose = verbose

    # ------------------------------------------------------------------ validation
    def _check_params(self):
        if not isinstance(self.rho, (int, float)) or not math.isfinite(self.rho) or self.rho < 0:
            raise ValueError(f"rho must be a finite number >= 0, got {self.rho!r}")
        if self.penalty is not None and not (
            isinstance(self.penalty, (int, float)) and 0 < self.penalty < math.inf
        ):
            raise ValueError(f"penalty must be None or finite and > 0, got {self.penalty!r}")
        for name in ("lr", "adversary_lr", "dual_lr"):
            check_positive(name, getattr(self, name))
        for name in ("num_iters", "inner_steps", "num_draws"):
            check_int(name, getattr(self, name))
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size)
        if self.divergence not in ("kl", "transport"):
            raise ValueError(f"divergence must be 'kl' or 'transport', got {self.divergence!r}")
        if self.loss not in ("brier", "log"):
            raise ValueError(f"loss must be 'brier' or 'log', got {self.loss!r}")
        if self.bias_correction and self.divergence != "kl":
            raise ValueError(
                "bias_correction needs density ratios r_Q, i.e. divergence='kl'; "
                "set bias_correction=False for the transport ball"
            )
        check_int("n_folds", self.n_folds, 2)
        check_seed("seed", self.seed)

    # ------------------------------------------------------------------ pieces
    def _risk(self, f: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        return brier_risk(f, mu) if self.loss == "brier" else log_risk(f, mu)

    def _make_predictor(self, ys: torch.Tensor) -> nn.Module:
        if isinstance(self.predictor, nn.Module):  # trained as a copy; the fit is predictor_
            return _PerRow(copy.deepcopy(self.predictor), "predictor")
        if self.predictor == "constant":
            net: nn.Module = _ConstantLogit()
        elif self.predictor in ("mlp", "linear"):
            net = _MLP(self.x_dim_, 32, linear=self.predictor == "linear")
        else:
            raise ValueError(
                "predictor must be 'mlp', 'linear', 'constant' or an nn.Module, "
                f"got {self.predictor!r}"
            )
        if isinstance(net, _ConstantLogit):
            last = net.bias
        else:
            last = net.net.bias if isinstance(net.net, nn.Linear) else net.net[-1].bias
        with torch.no_grad():
            ybar = float(ys.mean().clamp(1e-3, 1 - 1e-3))
            last.fill_(math.log(ybar / (1 - ybar)))
        return net

    def _expected_risk(self, adv, f, x, mu, grad_adv: bool, generator=None):
        """``(E_Q risk per x, divergence per x)`` for the current adversary. With
        ``grad_adv=False`` (the predictor's step and evaluation) a flow adversary's divergence
        is not needed and is returned as zeros. The draws of a continuous adversary come from
        ``generator`` where given (not with ``grad_adv``), else from torch's global RNG (seeded
        by :meth:`fit`)."""
        if isinstance(adv, ConditionalBernoulli):  # exact enumeration over a in {0, 1}
            q = adv.prob(x)
            p0 = self.source_conditional_.prob(x).detach()
            ones, zeros = torch.ones_like(q), torch.zeros_like(q)
            r1, r0 = self._risk(f, mu(x, ones)), self._risk(f, mu(x, zeros))
            eps = 1e-7
            kl = (
                q * ((q + eps) / (p0 + eps)).log()
                + (1 - q) * ((1 - q + eps) / (1 - p0 + eps)).log()
            )
            return q * r1 + (1 - q) * r0, kl
        xs = x.expand(self.num_draws, *x.shape)
        if isinstance(adv, TransportPerturbation):
            shape = (*xs.shape[:-1], self.a_dim_)
            z = torch.randn(shape, dtype=x.dtype, device=x.device, generator=generator)
            a, cost = adv(xs, z)
            return self._risk(f, mu(xs, a)).mean(0), cost.mean(0)
        if not grad_adv:
            a = adv.rsample(xs, generator).detach()
            return self._risk(f, mu(xs, a)).mean(0), x.new_zeros(x.shape[:-1])
        a, log_q = adv.rsample_and_log_prob(xs)  # S x n x d_a, reparameterised
        kl = log_q - self.source_conditional_.log_prob(a, xs)
        return self._risk(f, mu(xs, a)).mean(0), kl.mean(0)

    # ------------------------------------------------------------------ fit
    @keep_global_rng
    def fit(self, X_source, A_source, y_source, X_target) -> DRUM:
        """Fit nuisances, play the minimax game, then (optionally) bias-correct.

        Args:
            X_source: ``n_S x d_x``; A_source: ``n_S x d_a`` (or ``n_S`` binary; a single
                0/1 column ``n_S x 1`` is binary too);
            y_source: ``n_S`` in {0, 1}; X_target: ``n_T x d_x``.
        """
        self._check_params()
        Xs, As, ys, Xt = self._check_fit(X_source, A_source, y_source, X_target)
        torch.manual_seed(self.seed)
        binary = _is_binary(As)
        if binary and self.divergence == "transport":
            raise ValueError("divergence='transport' needs a continuous A")
        self.binary_ = binary
        # nuisances: mu(x, a) and G0 = P_S(A | X)
        if self.source_conditional is not None:  # before any nuisance is fitted
            _check_source_conditional(self.source_conditional, binary, Xs, As)
        self.outcome_model_ = _resolve_outcome(self.outcome_model, Xs, As, ys, self.seed)
        # a given generator is copied into the fit's dtype and device: the user's module is
        # neither frozen nor moved in place (scikit-learn's rule: fit leaves params alone)
        self.source_conditional_ = (
            copy.deepcopy(self.source_conditional).to(Xs)
            if self.source_conditional is not None
            else fit_source_conditional(As, Xs, binary=binary, seed=self.seed, verbose=False)
        )
        self.source_conditional_.requires_grad_(False)
        g0 = self.source_conditional_
        if self.divergence == "transport":
            adv: nn.Module = TransportPerturbation(g0)
        else:
            adv = g0.copy()
        adv_params = [p for p in adv.parameters() if p.requires_grad]
        f_net = self._make_predictor(ys).to(Xs)
        opt_f = torch.optim.Adam(f_net.parameters(), lr=self.lr)
        opt_a = torch.optim.Adam(adv_params, lr=self.adversary_lr)
        robust = self.rho > 0 or self.penalty is not None
        log_lam = math.log(self.penalty) if self.penalty is not None else 0.0
        mu = self.outcome_model_
        hist = {"objective": [], "divergence": [], "lambda": []}
        # Polyak-style average of the predictor over the second half of the play: plain
        # gradient descent-ascent cycles around a saddle, its average converges
        avg_f = torch.optim.swa_utils.AveragedModel(f_net)
        start_avg = int(self.num_iters) // 2
        gen = torch.Generator(device=Xt.device).manual_seed(self.seed)
        n_t = Xt.shape[0]
        bs = n_t if self.batch_size is None else min(int(self.batch_size), n_t)
        X_all = Xt
        for it in progress(range(int(self.num_iters)), verbose=self.verbose, desc="DRUM"):
            Xt = X_all[torch.randint(0, n_t, (bs,), generator=gen, device=X_all.device)]
            with torch.no_grad():
                f_det = torch.sigmoid(f_net(Xt))
            div = torch.tensor(0.0)
            if robust:
                for _ in range(int(self.inner_steps)):  # adversary ascent (SVI on the tilt)
                    r, d = self._expected_risk(adv, f_det, Xt, mu, grad_adv=True)
                    lam = math.exp(log_lam)
                    obj = r.mean() - lam * d.mean()
                    opt_a.zero_grad(set_to_none=True)
                    (-obj).backward()
                    opt_a.step()
                    div = d.mean().detach()
                if self.penalty is None:  # dual ascent on lambda: D -> rho
                    step = self.dual_lr * float(div - self.rho) / max(self.rho, 1e-3)
                    # dual descent on the Lagrangian E r - lam (D - rho): lam grows if D > rho
                    log_lam = float(np.clip(log_lam + step, -12.0, 8.0))
            # predictor descent against the current adversary
            f = torch.sigmoid(f_net(Xt))
            r, _ = self._expected_risk(adv, f, Xt, mu, grad_adv=False)
            loss = r.mean()
            opt_f.zero_grad(set_to_none=True)
            loss.backward()
            opt_f.step()
            opt_a.zero_grad(set_to_none=True)
            if it >= start_avg:
                avg_f.update_parameters(f_net)
            hist["objective"].append(float(loss.detach()))
            hist["divergence"].append(float(div))
            hist["lambda"].append(math.exp(log_lam))
        self.predictor_ = (avg_f.module if self.num_iters > 1 else f_net).eval()
        self.adversary_ = adv.eval()
        self.lambda_ = math.exp(log_lam)
        self.divergence_ = float(div)
        self.history_ = hist
        self.correction_ = None
        Xt = X_all
        if self.bias_correction:
            self.correction_ = self._bias_correction(Xs, As, ys, Xt)
        return self

    # ------------------------------------------------------------------ bias correction
    @staticmethod
    def _phi(x: torch.Tensor) -> torch.Tensor:
        return torch.cat((torch.ones_like(x[..., :1]), x), -1)

    def _log_ratio_q(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.adversary_.log_prob(a, x) - self.source_conditional_.log_prob(a, x)

    def _bias_correction(self, Xs, As, ys, Xt) -> torch.Tensor:
        from sklearn.linear_model import LogisticRegression

        n_s, n_t = Xs.shape[0], Xt.shape[0]
        gen = np.random.default_rng(self.seed)
        folds = gen.permutation(n_s) % int(self.n_folds)
        rhs = Xs.new_zeros(self.x_dim_ + 1)
        plug = Xs.new_zeros(self.x_dim_ + 1)
        phi_t = self._phi(Xt)
        with torch.no_grad():
            f_t = torch.sigmoid(self.predictor_(Xt))
        for k in range(int(self.n_folds)):
            tr, te = folds != k, folds == k
            tr_t = torch.as_tensor(tr, device=Xs.device)
            te_t = torch.as_tensor(te, device=Xs.device)
            # nuisances on the other folds
            mu_k = _resolve_outcome(
                self.outcome_model, Xs[tr_t], As[tr_t], ys[tr_t], derive_seed(self.seed, k + 1)
            )
            clf = self.domain_classifier
            if clf is None:
                clf = LogisticRegression(max_iter=1000)
            else:
                from sklearn.base import clone

                clf = clone(clf)
            Z = np.concatenate((Xs[tr_t].cpu().numpy(), Xt.cpu().numpy()))
            lab = np.concatenate((np.zeros(int(tr.sum())), np.ones(n_t)))
            clf.fit(Z, lab)
            pt = clf.predict_proba(Xs[te_t].cpu().numpy())[:, 1].clip(1e-6, 1 - 1e-6)
            omega = torch.as_tensor(pt / (1 - pt) * tr.sum() / n_t).to(Xs)
            with torch.no_grad():
                x_k, a_k, y_k = Xs[te_t], As[te_t], ys[te_t]
                r_q = self._log_ratio_q(a_k, x_k).exp()
                resid = y_k - mu_k(x_k, a_k)
                rhs += (omega * r_q * resid)[:, None].mul(self._phi(x_k)).sum(0) / n_s
                # plug-in part: E_T E_Q[phi (f - mu_k)]
                m_q = self._q_mean_mu(mu_k, Xt)
                plug += (phi_t * (f_t - m_q)[:, None]).mean(0) / int(self.n_folds)
        gram = phi_t.T @ phi_t / n_t
        return torch.linalg.solve(gram, rhs - plug)

    def _q_mean_mu(self, mu, X: torch.Tensor) -> torch.Tensor:
        if isinstance(self.adversary_, ConditionalBernoulli):
            q = self.adversary_.prob(X)
            return q * mu(X, torch.ones_like(q)) + (1 - q) * mu(X, torch.zeros_like(q))
        xs = X.expand(64, *X.shape)
        return mu(xs, self.adversary_.rsample(xs)).mean(0)

    # ------------------------------------------------------------------ predict
    def _predict(self, X: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            p = torch.sigmoid(self.predictor_(X))
            if self.correction_ is not None:
                p = (p + self._phi(X) @ self.correction_.to(X)).clamp(1e-4, 1 - 1e-4)
        return p

    def worst_case_risk(self, X_target) -> float:
        """The fitted adversary's expected risk of the fitted predictor on ``X_target``. For a
        continuous ``A`` it is a Monte Carlo mean over ``num_draws`` draws per row, from a
        generator seeded by ``seed``: the same answer on every call, and torch's global RNG
        is left alone."""
        X = self._check_predict(X_target)
        gen = make_generator(self.seed, device=X.device)
        with torch.no_grad():
            r, _ = self._expected_risk(
                self.adversary_, self._predict(X), X, self.outcome_model_, False, gen
            )
        return float(r.mean())


class _ConstantLogit(nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[:-1])
