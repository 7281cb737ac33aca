r"""PACE-GGM: private adaptive covariance estimation via maximum-entropy Gaussian inference.

**[paper]** With per-variable bounds :math:`|x_i| \le b_i`, one entry of the second-moment
matrix can be measured with far less noise than the whole matrix. Each round selects a poorly
approximated entry, measures it with the Gaussian mechanism, and reconstructs the covariance by
maximum entropy (a Gaussian graphical model on the measured entries).

**[design]** (after AIM / MWEM and Dempster's covariance selection):

* Data are clipped to :math:`[-b_i, b_i]`; :math:`S = \frac1n\sum_k x_k x_k^\top` with public
  :math:`n`. Neighbouring datasets: ``"replace"`` one row (default) gives
  :math:`\Delta_{ij} = 2 b_i b_j / n` off the diagonal and :math:`b_i^2/n` on it;
  ``"add_remove"`` gives :math:`b_i b_j / n`, where :math:`n` is ``public_n``, a count the
  user declares: a neighbour has one row more or less, so the data's own row count would move
  the normaliser and the noise level with the data.
* Budget :math:`\rho` (zCDP, from :math:`(\varepsilon, \delta)`): 90% to measurements in
  :math:`d + T` equal per-entry shares (the diagonal, one Gaussian vector of :math:`d`
  entries, takes :math:`d` shares; each round's entry one), 10% to the :math:`T` selections
  (exponential mechanism at :math:`\varepsilon_0 = \sqrt{8 \rho_{sel}}`, or permute-and-flip
  at :math:`\sqrt{2\rho_{sel}}`). A relative safety margin of :math:`10^{-9}` keeps rounding
  from ever overspending.
* The diagonal release. ``diagonal="scaled"`` (default) releases :math:`S_{ii}/\Delta_{ii}`
  (every coordinate moves by at most 1, so the L2 sensitivity is :math:`\sqrt d`) and rescales,
  so variance :math:`i` gets noise sd :math:`\Delta_{ii}/\sqrt{2\rho_{entry}}`, in
  proportion to its own bound and equal (in sensitivity units) to a measured off-diagonal
  entry's. ``diagonal="isotropic"`` is the spec's literal form (one noise
  level from the L2 sensitivity :math:`\sqrt{\sum_i b_i^4}/n`); with bounds spanning two
  orders of magnitude it swamps the small variances (the estimate of a variance of 0.01 is
  clamped up to the noise sd) and the KL error grows by two orders of magnitude (measured in
  ``docs/results.md``). Both cost the same :math:`d\,\rho_{entry}`. **[ours]**: the spec
  splits the measurement budget per round, which left the :math:`d` variances (the entries
  that KL and the spectral error depend on most) noisier than any single measured covariance.
* Score of an unmeasured :math:`(i,j)`:
  :math:`q_{ij} = (|S_{ij} - \hat\Sigma_{ij}| - \sqrt{2/\pi}\,\sigma_{ij}) / \Delta_{ij}`
  (sensitivity 1). Every entry is measured at the same :math:`\rho_{entry}`, so
  :math:`\sigma_{ij}/\Delta_{ij} = 1/\sqrt{2\rho_{entry}}` is one number and the correction
  shifts all scores alike: it changes no selection probability of either mechanism (kept
  for the spec's form; it would matter with per-entry budgets).
* Reconstruction: the exact max-entropy completion of the noisy measured entries when one
  exists (the relaxed form's :math:`\lambda \to 0` limit), else the relaxed form
  (:mod:`probml.inference.maxent`); either is symmetric positive definite (``relaxed_``
  says which produced the final estimate).

Baselines with the same interface: :class:`GaussianMechanismCovariance` (all entries in one
Gaussian release) and :class:`PerEntryGaussianCovariance` (every entry its own Gaussian release,
equal shares), each projected to the positive-definite cone (post-processing).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable

import numpy as np
import torch
from sklearn.base import BaseEstimator

from probml.exceptions import NotFittedError
from probml.inference.maxent import CompletionError, exact_completion, relaxed_completion
from probml.inference.privacy import (
    PrivacyBudget,
    exponential_mechanism,
    gaussian_mechanism,
    permute_and_flip,
    selection_cost,
    zcdp_to_dp,
)
from probml.utils import (
    check_data,
    check_int,
    check_interval,
    check_positive,
    check_seed,
    check_tensor,
    keep_global_rng,
    keep_param_store,
    progress,
)

__all__ = [
    "PACEGGM",
    "GaussianMechanismCovariance",
    "PerEntryGaussianCovariance",
    "entry_sensitivities",
    "project_to_pd",
    "covariance_posterior",
]

_SAFETY = 1.0 - 1e-9


def entry_sensitivities(
    bounds: torch.Tensor, n: int, neighbouring: str = "replace"
) -> torch.Tensor:
    r"""Per-entry sensitivities :math:`\Delta_{ij}` of :math:`S = \frac1n \sum x x^\top`
    (``d x d``) for data clipped to :math:`[-b_i, b_i]`."""
    if neighbouring not in ("replace", "add_remove"):
        raise ValueError(f"neighbouring must be 'replace' or 'add_remove', got {neighbouring!r}")
    b = bounds.double()
    D = torch.outer(b, b) / n
    if neighbouring == "replace":
        D = 2.0 * D
        D.diagonal().copy_(b**2 / n)  # x_i^2 in [0, b_i^2]
    return D


def project_to_pd(M: torch.Tensor, floor: float | None = None) -> torch.Tensor:
    """Symmetrise and clip eigenvalues at ``floor`` (default ``1e-6`` x mean diagonal, at
    least ``1e-12``): the nearest positive-definite matrix in Frobenius norm (post-processing)."""
    check_tensor("M", M)
    if M.dim() != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"M must be a square d x d matrix, got shape {tuple(M.shape)}")
    M = 0.5 * (M + M.T)
    if floor is None:
        floor = max(1e-6 * float(M.diagonal().abs().mean()), 1e-12)
    else:  # a negative floor keeps negative eigenvalues: no longer positive definite
        floor = check_positive("floor", floor)
    evals, evecs = torch.linalg.eigh(M)
    return (evecs * evals.clamp_min(floor)) @ evecs.T


class _PrivateCovariance(BaseEstimator):
    """Validation, clipping and budget shared by the private covariance estimators."""

    def _prepare(
        self, X, check_dim: Callable[[int], None] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, PrivacyBudget]:
        """Validate, clip and (if ``center``) release the private mean. Every check, the
        caller's ``check_dim(d)`` included, happens before any noise is drawn."""
        epsilon = check_positive("epsilon", self.epsilon)
        check_interval("delta", self.delta)
        X = torch.tensor(check_data("X", X, min_rows=2))  # a copy: X may be read-only
        b = torch.as_tensor(np.asarray(self.bounds, dtype=float), dtype=torch.float64).reshape(-1)
        if b.numel() == 1:
            b = b.expand(X.shape[1]).clone()
        if b.numel() != X.shape[1]:
            raise ValueError(
                f"bounds must have length {X.shape[1]} (one per column), got {b.numel()}"
            )
        if not bool((b > 0).all()) or not bool(torch.isfinite(b).all()):
            raise ValueError("bounds must be finite and > 0")
        if self.neighbouring not in ("replace", "add_remove"):
            raise ValueError(
                f"neighbouring must be 'replace' or 'add_remove', got {self.neighbouring!r}"
            )
        if self.center and not 0.0 < float(self.mean_fraction) < 1.0:
            raise ValueError(
                f"mean_fraction must be in (0, 1) with center=True, got {self.mean_fraction!r}"
            )
        n = self._public_n(X.shape[0])
        if check_dim is not None:
            check_dim(X.shape[1])
        self._seed_noise()
        budget = PrivacyBudget.from_dp(epsilon, float(self.delta))
        X = torch.maximum(torch.minimum(X, b), -b)  # clip each coordinate to [-b_i, b_i]
        if self.center:
            # private mean (L2 sensitivity 2||b||/n replace, ||b||/n add/remove), then re-clip
            sens = (2.0 if self.neighbouring == "replace" else 1.0) * float(b.norm()) / n
            mu, _ = gaussian_mechanism(
                X.sum(0) / n,
                sens,
                self.mean_fraction * budget.rho * _SAFETY,
                budget,
                generator=self._gen(),
                label="mean",
            )
            X = torch.maximum(torch.minimum(X - mu, b), -b)
            self.mean_ = mu
        else:
            self.mean_ = torch.zeros(X.shape[1], dtype=torch.float64)
        self.n_features_in_ = X.shape[1]
        self.n_samples_ = n
        self.bounds_ = b
        return X, b, budget

    def _public_n(self, rows: int) -> int:
        """The public row count that normalises ``S`` and the mean (see ``public_n``)."""
        if self.public_n is None:
            if self.neighbouring == "add_remove":
                raise ValueError(
                    "public_n is required with neighbouring='add_remove': a neighbour has one "
                    "row more or less, so the data's own row count cannot normalise S"
                )
            return rows
        n = check_int("public_n", self.public_n, 1)
        if self.neighbouring == "replace" and n != rows:
            raise ValueError(
                f"public_n must equal the number of rows ({rows}) with neighbouring='replace', "
                f"whose neighbours share it; got {n}"
            )
        return n

    def _seed_noise(self) -> None:
        """A fresh noise source for this fit: seeded by ``random_state`` (the same release on
        every fit), or from the operating system's entropy when it is ``None``."""
        if self.random_state is None:
            seed = secrets.randbits(63)
        else:  # a fraction was truncated (2.5 and 2 gave the same noise)
            seed = check_seed("random_state", self.random_state)
        self._generator_ = torch.Generator().manual_seed(seed)
        self._rng_ = np.random.default_rng(seed)

    def _gen(self) -> torch.Generator:
        return self._generator_

    def _finish(self, Sigma: torch.Tensor, budget: PrivacyBudget) -> None:
        self.covariance_ = Sigma
        self.precision_ = torch.linalg.inv(Sigma)
        self.precision_ = 0.5 * (self.precision_ + self.precision_.T)
        self.rho_spent_ = budget.spent
        self.privacy_spent_ = (zcdp_to_dp(budget.spent, float(self.delta)), float(self.delta))
        self.budget_ = budget


_COMMON_DOC = """
        epsilon, delta: the (epsilon, delta)-DP budget (converted to zCDP, never exceeded)
            of one fit. Every fit is a new release: k fits on the same data (refits,
            cross-validation, a grid search) spend k times its rho.
        bounds: public per-coordinate bounds ``b_i`` (length ``d``, or one number); data are
            clipped to ``[-b_i, b_i]``.
        neighbouring: ``"replace"`` (one row replaced; public n) or ``"add_remove"``.
        center: if True, spend ``mean_fraction`` of the budget on a private mean and estimate
            the covariance of the centred (re-clipped) data; else the second-moment matrix.
        public_n: the public number of rows that normalises ``S`` (and the mean). Required
            with ``"add_remove"``: a neighbour there has one row more or less, so dividing
            by the data's own row count would move the normaliser, and the noise level,
            with the data, which the sensitivities do not cover. The rows are not counted
            against it (that check would itself reveal the count): pass the count you
            publish. With ``"replace"`` the count is public already; ``None`` uses it, and
            another value is refused.
        random_state: seed of the noise and the selections; every fit with the same seed
            draws the same noise (reproducible research). ``None`` (the default) draws a fresh
            seed from the operating system on every fit: use it for real releases, since two
            releases that share their noise reveal the exact difference of their statistics.
            The noise comes from torch's and NumPy's default generators, which are not
            cryptographically secure.
"""


class PACEGGM(_PrivateCovariance):
    __doc__ = (
        """PACE-GGM estimator (see the module docstring for the algorithm).

    Args:"""
        + _COMMON_DOC
        + """        rounds: number of adaptively measured off-diagonal entries ``T``, at most the
            ``d(d-1)/2`` there are (default ``d``, capped there: 1 for ``d = 2``, 0 for
            ``d = 1``).
        selection: ``"exponential"`` or ``"permute_and_flip"``.
        lam: weight of the log-det term in the relaxed completion.
        diagonal: ``"scaled"`` (noise on variance ``i`` proportional to ``b_i^2``) or
            ``"isotropic"`` (one noise level for all ``d`` variances, the spec's literal form).
        verbose: progress bar over rounds.

    Attributes:
        covariance_, precision_: ``d x d`` float64, symmetric positive definite.
        measured_: the selected ``(i, j)`` entries in order.
        measurements_: ``(entries, values, noise_scales)`` of every noisy measurement (the
            private release; anything computed from it is free post-processing).
        privacy_spent_: ``(epsilon, delta)`` spent; ``rho_spent_``: zCDP spent.
        n_samples_: the public count that normalised ``S`` (the rows, or ``public_n``).
    """
    )

    def __init__(
        self,
        epsilon: float = 1.0,
        delta: float = 1e-5,
        bounds=1.0,
        rounds: int | None = None,
        selection: str = "exponential",
        neighbouring: str = "replace",
        center: bool = False,
        mean_fraction: float = 0.05,
        lam: float = 1.0,
        diagonal: str = "scaled",
        random_state: int | None = None,
        verbose: bool = False,
        public_n: int | None = None,
    ):
        self.epsilon = epsilon
        self.delta = delta
        self.bounds = bounds
        self.rounds = rounds
        self.selection = selection
        self.neighbouring = neighbouring
        self.center = center
        self.mean_fraction = mean_fraction
        self.lam = lam
        self.diagonal = diagonal
        self.random_state = random_state
        self.verbose = verbose
        self.public_n = public_n

    def _rounds(self, d: int) -> int:
        if self.rounds is None:
            return min(d, d * (d - 1) // 2)
        return check_int("rounds", self.rounds, 0)

    def fit(self, X, y=None) -> PACEGGM:
        """Release the covariance of ``X`` (``n x d``, clipped to ``bounds`` per coordinate)
        under the privacy budget; ``y`` is ignored (scikit-learn convention). Every check
        runs before any noise is drawn."""
        if self.diagonal not in ("scaled", "isotropic"):
            raise ValueError(f"diagonal must be 'scaled' or 'isotropic', got {self.diagonal!r}")
        if self.selection not in ("exponential", "permute_and_flip"):
            raise ValueError(
                f"selection must be 'exponential' or 'permute_and_flip', got {self.selection!r}"
            )
        lam = float(self.lam)
        if not lam > 0 or not math.isfinite(lam):
            raise ValueError(f"lam must be finite and > 0, got {self.lam!r}")

        def check_rounds(d: int) -> None:
            T = self._rounds(d)
            if not 0 <= T <= d * (d - 1) // 2:
                raise ValueError(f"rounds must be in [0, {d * (d - 1) // 2}] for d={d}, got {T}")

        X, b, budget = self._prepare(X, check_rounds)
        n, d = self.n_samples_, X.shape[1]  # n: the public count (public_n)
        T = self._rounds(d)
        rho = budget.remaining * _SAFETY
        # measurement budget in per-entry shares: d for the diagonal vector, one per round
        rho_entry = (0.9 * rho if T > 0 else rho) / (d + T)
        rho_diag, rho_meas = d * rho_entry, rho_entry
        rho_sel = 0.1 * rho / T if T > 0 else 0.0
        eps0 = math.sqrt((8.0 if self.selection == "exponential" else 2.0) * rho_sel) if T else 0.0
        if T:
            assert abs(selection_cost(eps0, self.selection) - rho_sel) <= 1e-12 * rho_sel + 1e-300
        gen, rng = self._gen(), self._rng_
        S = X.T @ X / n
        Delta = entry_sensitivities(b, n, self.neighbouring)
        # 1. the diagonal as one Gaussian vector
        if self.diagonal == "scaled":
            # release S_ii / Delta_ii (each coordinate moves by <= 1: L2 sensitivity sqrt(d)),
            # then rescale (post-processing): noise sd proportional to each variable's bound
            unit = Delta.diagonal().clone()
            z, s_z = gaussian_mechanism(
                S.diagonal() / unit,
                math.sqrt(d),
                rho_diag,
                budget,
                generator=gen,
                label="diagonal",
            )
            y_diag, s_diag = z * unit, s_z * unit
        else:
            diag_sens = float(torch.sqrt((b**4).sum()) / n)
            y_diag, s = gaussian_mechanism(
                S.diagonal().clone(),
                diag_sens,
                rho_diag,
                budget,
                generator=gen,
                label="diagonal",
            )
            s_diag = torch.full((d,), s, dtype=torch.float64)
        y_diag = torch.maximum(y_diag, s_diag)  # post-processing: a variance is positive
        entries = [(i, i) for i in range(d)]
        values = y_diag.tolist()
        scales = s_diag.tolist()
        Sigma = torch.diag(y_diag)
        measured = torch.zeros(d, d, dtype=torch.bool)
        measured.fill_diagonal_(True)
        iu = torch.triu_indices(d, d, offset=1)
        sigma_mat = Delta / math.sqrt(2.0 * rho_meas)
        self.measured_ = []
        for t in progress(range(T), verbose=self.verbose, desc="PACE-GGM rounds", total=T):
            cand = ~measured[iu[0], iu[1]]
            ci, cj = iu[0][cand], iu[1][cand]
            q = (
                (S[ci, cj] - Sigma[ci, cj]).abs() - math.sqrt(2 / math.pi) * sigma_mat[ci, cj]
            ) / Delta[ci, cj]
            pick = exponential_mechanism if self.selection == "exponential" else permute_and_flip
            k = pick(q.numpy(), eps0, 1.0, budget, generator=rng, label=f"select {t}")
            i, j = int(ci[k]), int(cj[k])
            yij, sij = gaussian_mechanism(
                S[i, j].reshape(1),
                float(Delta[i, j]),
                rho_meas,
                budget,
                generator=gen,
                label=f"measure ({i},{j})",
            )
            measured[i, j] = measured[j, i] = True
            self.measured_.append((i, j))
            entries.append((i, j))
            values.append(float(yij))
            scales.append(sij)
            Sigma, relaxed = self._complete(entries, values, scales, d, Sigma)
        if T == 0 or relaxed:
            Sigma, _ = relaxed_completion(entries, values, d, scales, lam=self.lam, init=Sigma)
        else:  # polish to full precision
            Sigma, relaxed = self._complete(entries, values, scales, d, Sigma, tol=1e-11)
        self.relaxed_ = T == 0 or relaxed
        self.measurements_ = (entries, values, scales)
        self._finish(Sigma, budget)
        return self

    def _complete(self, entries, values, scales, d, init, tol=1e-7):
        """Exact completion of the noisy entries when one exists, else the relaxed form."""
        try:
            # scoring only needs an approximate Sigma_hat: a loose tolerance inside the rounds
            return exact_completion(entries, values, d, init=init, tol=tol, max_sweeps=100)[
                0
            ], False
        except CompletionError:
            return relaxed_completion(entries, values, d, scales, lam=self.lam, init=init)[0], True


class GaussianMechanismCovariance(_PrivateCovariance):
    __doc__ = (
        """Baseline: all ``d(d+1)/2`` entries of ``S`` in one Gaussian release whose L2
    sensitivity is the norm of the per-entry sensitivities (``||b||^2/n``-type; e.g.
    ``sqrt(sum_i b_i^4 + sum_{i<j} b_i^2 b_j^2)/n <= ||b||^2/n`` for add/remove), then
    projected to the positive-definite cone.

    Args:"""
        + _COMMON_DOC
    )

    def __init__(
        self,
        epsilon: float = 1.0,
        delta: float = 1e-5,
        bounds=1.0,
        neighbouring: str = "replace",
        center: bool = False,
        mean_fraction: float = 0.05,
        random_state: int | None = None,
        public_n: int | None = None,
    ):
        self.epsilon = epsilon
        self.delta = delta
        self.bounds = bounds
        self.neighbouring = neighbouring
        self.center = center
        self.mean_fraction = mean_fraction
        self.random_state = random_state
        self.public_n = public_n

    def fit(self, X, y=None):
        """Release the covariance of ``X`` (``n x d``) as the baseline does; ``y`` is ignored."""
        X, b, budget = self._prepare(X)
        n, d = self.n_samples_, X.shape[1]  # n: the public count (public_n)
        S = X.T @ X / n
        Delta = entry_sensitivities(b, n, self.neighbouring)
        iu = torch.triu_indices(d, d)
        rho = budget.remaining * _SAFETY
        noisy = self._release(S[iu[0], iu[1]], Delta[iu[0], iu[1]], rho, budget)
        M = torch.zeros(d, d, dtype=torch.float64)
        M[iu[0], iu[1]] = noisy
        M[iu[1], iu[0]] = noisy
        self._finish(project_to_pd(M), budget)
        return self

    def _release(self, values, deltas, rho, budget):
        l2 = float(torch.sqrt((deltas**2).sum()))
        out, _ = gaussian_mechanism(
            values, l2, rho, budget, generator=self._gen(), label="all entries"
        )
        return out


class PerEntryGaussianCovariance(GaussianMechanismCovariance):
    __doc__ = (
        """Baseline: every one of the ``m = d(d+1)/2`` entries released by its own Gaussian
    mechanism with its own sensitivity ``Delta_ij`` at ``rho/m``, then projected to the
    positive-definite cone.

    Args:"""
        + _COMMON_DOC
    )

    def _release(self, values, deltas, rho, budget):
        m = values.numel()
        budget.charge(rho, f"{m} entries at rho/{m} each")  # the sum of the m equal shares
        sigma = deltas / math.sqrt(2.0 * rho / m)
        noise = torch.randn(values.shape, generator=self._gen(), dtype=values.dtype)
        return values + sigma * noise


@keep_global_rng
@keep_param_store
def covariance_posterior(
    estimator: PACEGGM,
    method: str = "auto",
    num_samples: int = 300,
    warmup_steps: int = 200,
    svi_steps: int = 1500,
    scale_prior: torch.Tensor | float | None = None,
    prior=None,
    seed: int = 0,
) -> torch.Tensor:
    """Posterior draws of ``Sigma`` given a fitted :class:`PACEGGM`'s noisy measurements
    (:func:`probml.models.gaussian.private_covariance_model`): free post-processing.

    Args:
        estimator: a fitted PACEGGM (its ``measurements_`` are the only data used).
        method: ``"nuts"``, ``"svi"`` (AutoMultivariateNormal) or ``"auto"`` (NUTS for d <= 20).
        num_samples: posterior draws returned (``>= 1``); warmup_steps: NUTS warm-up steps
            (``>= 0``); svi_steps: SVI steps (``>= 1``).
        scale_prior: HalfNormal scales of the marginal sds (default: the public bounds / 2), or
            a distribution over the ``d`` scales.
        prior: a user prior over the Cholesky factor of ``Sigma`` (support ``lower_cholesky``;
            see :func:`probml.models.gaussian.private_covariance_model` for how NUTS and the
            autoguide reach it).

    Returns:
        ``num_samples x d x d`` posterior draws.
    """
    import pyro
    from pyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO
    from pyro.infer.autoguide import AutoMultivariateNormal, init_to_median

    from probml.models.gaussian import private_covariance_model

    if not hasattr(estimator, "measurements_"):
        raise NotFittedError("estimator is not fitted; call estimator.fit(X) first")
    if scale_prior is not None and prior is not None:  # prior replaces the scales' prior
        raise ValueError("pass scale_prior or prior, not both: prior replaces LKJ x scales")
    entries, values, scales = estimator.measurements_
    d = estimator.n_features_in_
    if method == "auto":
        method = "nuts" if d <= 20 else "svi"
    if method not in ("nuts", "svi"):
        raise ValueError(f"method must be 'auto', 'nuts' or 'svi', got {method!r}")
    # as BayesianQLearner's: a fraction failed inside Pyro, svi_steps <= 0 drew from the
    # untrained guide without a word
    num_samples = check_int("num_samples", num_samples)
    warmup_steps = check_int("warmup_steps", warmup_steps, 0)
    svi_steps = check_int("svi_steps", svi_steps)
    seed = check_seed("seed", seed)
    kw = dict(
        entries=torch.as_tensor(entries, dtype=torch.long),
        values=torch.as_tensor(values, dtype=torch.float64),
        noise_scales=torch.as_tensor(scales, dtype=torch.float64),
        dim=d,
        n=estimator.n_samples_,
        scale_prior=estimator.bounds_ / 2.0 if scale_prior is None else scale_prior,
        prior=prior,
    )
    pyro.set_rng_seed(seed)  # on an empty parameter store (keep_param_store)
    if method == "nuts":
        mcmc = MCMC(
            NUTS(private_covariance_model, init_strategy=init_to_median),
            num_samples=num_samples,
            warmup_steps=warmup_steps,
            disable_progbar=True,
        )
        mcmc.run(**kw)
        pred = Predictive(
            private_covariance_model, posterior_samples=mcmc.get_samples(), return_sites=["Sigma"]
        )
    else:
        guide = AutoMultivariateNormal(private_covariance_model, init_loc_fn=init_to_median)
        svi = SVI(private_covariance_model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
        for _ in range(svi_steps):
            svi.step(**kw)
        pred = Predictive(
            private_covariance_model, guide=guide, num_samples=num_samples, return_sites=["Sigma"]
        )
    draws = pred(**kw)["Sigma"].detach()
    return draws.reshape(-1, d, d)
