"""Small shared utilities: seeding, device resolution, progress bars, validation.

Everything random in probml takes a ``seed`` (an int in ``[0, 2**32)``, checked by
:func:`check_seed` before any RNG reads it) or a :class:`torch.Generator`;
:func:`set_seed` seeds every generator a routine may touch (``random``, NumPy, torch and
Pyro's parameter store RNG) so that the same seed gives the same result. Library routines
that seed the global RNGs themselves are wrapped in :func:`keep_global_rng`, so they leave the
caller's states as they found them.
"""

from __future__ import annotations

import functools
import numbers
import os
import random
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")

__all__ = [
    "set_seed",
    "check_seed",
    "derive_seed",
    "make_generator",
    "numpy_generator",
    "resolve_device",
    "progress",
    "check_finite",
    "check_positive",
    "check_int",
    "check_interval",
    "check_names",
    "check_tensor",
    "check_binary",
    "cholesky_factor",
    "plate_matvec",
    "check_prior",
    "shape_of",
    "check_data",
    "keep_global_rng",
    "keep_param_store",
    "module_list",
    "SavableModule",
]


def set_seed(seed: int) -> None:
    """Seed ``random``, NumPy, torch (CPU and CUDA) and Pyro with one integer.

    Args:
        seed: an integer in ``[0, 2**32)`` (:func:`check_seed`).
    """
    seed = check_seed("seed", seed)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - user code may use the legacy global RNG
    torch.manual_seed(seed)
    try:  # pyro is a hard dependency, but keep utils importable on its own
        import pyro

        pyro.set_rng_seed(seed)
    except ImportError:  # pragma: no cover
        pass


_RNG_GUARD = threading.local()
F = TypeVar("F", bound=Callable[..., Any])


def keep_global_rng(fn: F) -> F:
    """Decorator: ``fn`` may seed and draw from the global random number generators (torch's
    CPU generator and, once CUDA is initialised, every CUDA device's; NumPy's legacy
    ``np.random``; Python's ``random``; Pyro seeds all three) so that its own results are
    reproducible from its ``seed``, and the caller's states are restored when it returns or
    raises. Only the outermost guarded call saves and restores, so guarded functions that call
    each other behave exactly as they would unguarded."""

    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        if getattr(_RNG_GUARD, "active", False):
            return fn(*args, **kwargs)
        py_state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        devices = list(range(torch.cuda.device_count())) if cuda else []
        _RNG_GUARD.active = True
        try:
            with torch.random.fork_rng(devices=devices):
                return fn(*args, **kwargs)
        finally:
            _RNG_GUARD.active = False
            random.setstate(py_state)
            np.random.set_state(np_state)  # noqa: NPY002

    return guarded  # type: ignore[return-value]


def keep_param_store(fn: F) -> F:
    """Decorator: ``fn`` runs its Pyro inference on an empty parameter store, and the caller's
    parameters are put back when it returns or raises (for routines that return draws, not a
    guide whose parameters must outlive the call)."""

    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        import pyro

        store = pyro.get_param_store()
        saved = store.get_state()
        store.clear()
        try:
            return fn(*args, **kwargs)
        finally:
            store.clear()
            store.set_state(saved)

    return guarded  # type: ignore[return-value]


def check_seed(name: str, seed) -> int:
    """Return ``seed`` as an ``int`` after checking that it is an integer in ``[0, 2**32)``.

    Every seed of the library goes through here before it reaches an RNG: ``torch.manual_seed``
    itself truncates ``2.5`` to 2 and reads ``"3"`` as 3 without a word, NumPy refuses a
    negative seed, and ``pyro.set_rng_seed`` (through ``np.random.seed``) one of ``2**32`` or
    more, with messages that name no argument. A bool is refused too (``True`` is not a seed).
    Errors are ``ValueError`` naming ``name``.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**32:
        raise ValueError(f"{name} must be a non-negative int below 2**32, got {seed!r}")
    return int(seed)


def derive_seed(seed, offset: int, name: str = "seed") -> int:
    """A seed derived from the user's: ``(seed + offset) % 2**32``.

    Where one seed feeds several streams (a fit and its restarts, a data set and a model),
    the others are ``seed + offset``; taken modulo ``2**32`` they stay valid seeds for every
    ``seed`` :func:`check_seed` accepts (``seed + 1000`` was refused for a seed near the top of
    the range, in words naming the derived value, not the user's). ``seed`` is checked under
    ``name``; below ``2**32 - offset`` the result is plainly ``seed + offset``.
    """
    return (check_seed(name, seed) + int(offset)) % 2**32


def make_generator(
    seed: int | torch.Generator | None,
    device: torch.device | str | None = None,
    name: str = "seed",
) -> torch.Generator:
    """Return a :class:`torch.Generator` on ``device`` seeded by ``seed``.

    A generator passed in is returned unchanged; ``None`` draws a fresh seed from torch's
    global RNG (so :func:`set_seed` still makes the result reproducible); an integer must be
    in ``[0, 2**32)`` (:func:`check_seed`, whose error names ``name``: the caller's argument,
    e.g. ``generator``).
    """
    if isinstance(seed, torch.Generator):
        return seed
    dev = torch.device(device) if device is not None else torch.device("cpu")
    gen = torch.Generator(device=dev)
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    else:
        seed = check_seed(name, seed)
    gen.manual_seed(seed)
    return gen


def numpy_generator(seed, name: str = "seed") -> np.random.Generator:
    """``np.random.default_rng(seed)`` for ``seed`` ``None`` (fresh entropy), a
    :class:`numpy.random.Generator` (returned unchanged) or an integer checked by
    :func:`check_seed` under ``name``."""
    if seed is None or isinstance(seed, np.random.Generator):
        return np.random.default_rng(seed)
    return np.random.default_rng(check_seed(name, seed))


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Turn ``None``/``"auto"``/``"cpu"``/``"cuda"``/``"cuda:N"`` into a :class:`torch.device`.

    ``None`` and ``"auto"`` give CUDA when available, else CPU. Asking for CUDA on a machine
    without it is an error rather than a silent fallback.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}"
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} requested but CUDA is not available")
    return dev


def progress(
    iterable: Iterable[T],
    *,
    verbose: bool = True,
    desc: str | None = None,
    total: int | None = None,
    leave: bool = False,
) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar when ``verbose`` and stderr is a terminal.

    Quiet otherwise (tests, CI, logs), and always quiet when ``PROBML_QUIET=1``.
    """
    show = verbose and sys.stderr.isatty() and os.environ.get("PROBML_QUIET", "") != "1"
    if not show:
        return iter(iterable)
    from tqdm.auto import tqdm

    return iter(tqdm(iterable, desc=desc, total=total, leave=leave, dynamic_ncols=True))


def check_finite(name: str, x: torch.Tensor | np.ndarray) -> None:
    """Raise ``ValueError`` naming ``name`` if ``x`` has a NaN or infinite entry (a tensor is
    checked by torch on its device; anything else by NumPy, without a copy to torch, so a
    read-only array such as a pandas column's is fine)."""
    if isinstance(x, torch.Tensor):
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            n_bad = int((~torch.isfinite(x)).sum())
            raise ValueError(f"{name} must be finite; it has {n_bad} NaN/inf entries")
        return
    a = np.asarray(x)
    if a.dtype.kind not in "biufc":  # None, strings, mixed objects: not numbers at all
        raise TypeError(f"{name} must be numeric, got {type(x).__name__} of {a.dtype}")
    if a.dtype.kind in "fc" and not np.isfinite(a).all():
        n_bad = int((~np.isfinite(a)).sum())
        raise ValueError(f"{name} must be finite; it has {n_bad} NaN/inf entries")


def check_tensor(name: str, x) -> torch.Tensor:
    """``x`` itself, after checking that it is a :class:`torch.Tensor` (a ``TypeError`` naming
    ``name`` otherwise: a NumPy array failed later on a missing tensor method, naming
    nothing). No copy and no conversion: the caller's dtype and device are kept."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_binary(name: str, values) -> np.ndarray:
    """``values`` as a float NumPy array of 0s and 1s, or a ``ValueError`` naming ``name`` and
    the first other values found (NaN included; an int cast would have truncated 0.5 to 0 or
    kept a third group). The array's shape is kept."""
    v = np.asarray(values, dtype=float)
    ok = np.isin(v, (0.0, 1.0))
    if not ok.all():
        bad = np.unique(v[~ok])
        shown = ", ".join(f"{x:g}" for x in bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise ValueError(f"{name} must be binary (0/1); found the values {shown}")
    return v


def check_positive(name: str, value: float, *, strict: bool = True) -> float:
    """Return ``float(value)`` after checking ``value > 0`` (or ``>= 0`` when not strict)."""
    v = _as_number(name, value)
    if not np.isfinite(v) or (v <= 0 if strict else v < 0):
        bound = "> 0" if strict else ">= 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return v


def check_interval(
    name: str, value, low: float = 0.0, high: float = 1.0, *, closed: str = "neither"
) -> float:
    """Return ``float(value)`` after checking that it lies between ``low`` and ``high``:
    ``closed`` is ``"neither"`` (``(low, high)``), ``"left"`` (``[low, high)``), ``"right"``
    (``(low, high]``) or ``"both"`` (``[low, high]``). NaN fails. Errors name ``name``: a
    ``TypeError`` for what is not a single number (a string, an array of several values), a
    ``ValueError`` outside the interval, in the form ``"p must be in (0, 1), got 1.5"``."""
    if closed not in ("neither", "left", "right", "both"):
        raise ValueError(f"closed must be 'neither', 'left', 'right' or 'both', got {closed!r}")
    v = _as_number(name, value)
    left, right = closed in ("left", "both"), closed in ("right", "both")
    if not ((v >= low if left else v > low) and (v <= high if right else v < high)):
        lb, rb = "[" if left else "(", "]" if right else ")"
        raise ValueError(f"{name} must be in {lb}{low:g}, {high:g}{rb}, got {value!r}")
    return v


def _as_number(name: str, value) -> float:
    """``float(value)``, or a ``TypeError`` naming ``name`` for a string (``float("0.5")``
    would read it), ``None``, or an array or tensor with a dimension (``float`` read a
    one-element one, which NumPy deprecates; a zero-dimensional one is a number)."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if getattr(value, "ndim", 0) != 0:
        raise TypeError(
            f"{name} must be a number (a scalar), got {type(value).__name__} of shape "
            f"{tuple(value.shape)}"
        )
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}") from None


def check_int(name: str, value, minimum: int | None = 1) -> int:
    """Return ``value`` as an ``int`` after checking that it is an integer (not a bool, not a
    float such as ``2.5``) and at least ``minimum`` (``None``: any integer, e.g. a number of
    decimals); errors name ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def check_names(name: str, value) -> list[str]:
    """``value`` as a list of strings: any iterable of names (a list, a tuple, a generator),
    but not one string, whose characters would each be read as a name. Errors name
    ``name``."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a list of names, got the string {value!r}")
    try:
        out = list(value)
    except TypeError:
        raise TypeError(f"{name} must be a list of names, got {type(value).__name__}") from None
    bad = [v for v in out if not isinstance(v, str)]
    if bad:
        raise TypeError(f"{name} must hold strings, got {bad[:3]!r}")
    return out


def cholesky_factor(name: str, M: torch.Tensor) -> torch.Tensor:
    """The lower Cholesky factor of ``M`` (``[...] x d x d``); a ``ValueError`` naming ``name``
    when it has none (torch's own error names no argument). Only the lower triangle is read."""
    L, info = torch.linalg.cholesky_ex(M)
    if bool((info != 0).any()):
        raise ValueError(f"{name} must be symmetric positive definite (its Cholesky factor failed)")
    return L


def plate_matvec(X: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    r"""The linear predictor :math:`X w` of a Pyro model whose data plate is ``dim=-1``.

    ``X``: ``n x d``; ``w``: ``d`` (a plain draw) or ``batch x 1 x d``, the shape a global
    coefficient takes under outer plates (``Predictive(parallel=True)``,
    ``vectorize_particles=True``, a particle plate): its size-1 slot is the data plate's.
    Returns ``n`` or ``batch x n``. ``X @ w`` would treat a batched ``w`` as a stack of
    ``1 x d`` matrices and fail; a plain ``w`` takes exactly ``X @ w``, so an unbatched model
    (NUTS, per-draw inference) computes what it did before.
    """
    if w.dim() == 1:
        return X @ w
    return (X * w).sum(-1)  # batch x 1 x d broadcast against n x d -> batch x n x d


def shape_of(x) -> tuple[int, ...] | str:
    """``x``'s shape as a tuple, or its type's name when it is not a tensor (for messages)."""
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def check_data(
    name: str,
    X,
    *,
    ndim: int = 2,
    min_rows: int = 1,
    n_features: int | None = None,
    column_from_1d: bool = False,
) -> np.ndarray:
    """``X`` as a dense, finite, real float64 NumPy array with ``ndim`` (1 or 2) dimensions,
    for the scikit-learn-style estimators.

    This is scikit-learn's ``check_array``, which refuses sparse, complex, NaN/inf and empty
    input where ``np.asarray(X, float)`` would densify, drop imaginary parts (with only a
    warning) or fail on an unnamed element; every message names ``name``.

    Args:
        ndim: 2 for a design (``n x d``, at least one column), 1 for a vector (``n``).
        min_rows: the fewest rows (``n``) accepted.
        n_features: when given, the number of columns ``X`` must have (the fitted width).
        column_from_1d: read a 1-D ``X`` as one column (``n x 1``) when ``ndim`` is 2.
    """
    from scipy import sparse
    from sklearn.utils import check_array

    if ndim not in (1, 2):
        raise ValueError(f"ndim must be 1 or 2, got {ndim!r}")
    if n_features is not None and ndim != 2:
        raise ValueError("n_features is the width of a design: it needs ndim=2")
    if column_from_1d and ndim == 2 and not sparse.issparse(X) and np.ndim(X) == 1:
        X = np.reshape(X, (-1, 1))
    try:
        A = check_array(
            X,
            dtype=np.float64,
            ensure_2d=ndim == 2,
            ensure_min_samples=min_rows,
            input_name=name,
        )
    except (TypeError, ValueError) as e:
        named = re.search(rf"(?<!\w){re.escape(name)}(?!\w)", str(e))
        raise type(e)(str(e) if named else f"{name}: {e}") from e
    if A.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {A.shape}")
    if n_features is not None and A.shape[1] != n_features:
        raise ValueError(f"{name} must have {n_features} columns (as in fit), got shape {A.shape}")
    return A


def _missing_objects(values: np.ndarray) -> np.ndarray:
    """Which entries of a 1-D object array are missing: ``None``, a float NaN, pandas' ``NA``
    or ``NaT`` (one Python check per label: object arrays have no vector op)."""
    return np.array(
        [
            v is None
            or (isinstance(v, float) and v != v)
            or type(v).__name__ in ("NAType", "NaTType")
            for v in values.tolist()
        ],
        dtype=bool,
    )


def group_labels(name: str, labels) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, groups)``: the labels as a 1-D array and their sorted distinct values.

    A missing label (``None``, NaN, pandas' ``NA``) is refused by ``name``: it is no group,
    and NaN never equals itself, so its rows would match no group and drop out of every
    per-group computation. A NaN in a list of strings is caught too (NumPy would have made it
    the string ``"nan"``, a group of its own); the string ``"nan"`` in an array is a label.
    Labels of types that do not sort together (``1`` and ``"a"``) are refused too."""
    s = np.asarray(labels).reshape(-1)
    if s.dtype.kind == "f":
        missing = np.isnan(s)
    elif s.dtype.kind == "O":
        missing = _missing_objects(s)
    elif s.dtype.kind in "US" and not isinstance(labels, np.ndarray):
        # NumPy turns a NaN among strings in a list into the string "nan", a group of its own
        missing = _missing_objects(np.asarray(labels, dtype=object).reshape(-1))
    else:
        missing = np.zeros(s.shape, dtype=bool)
    if missing.any():
        raise ValueError(
            f"{name} has {int(missing.sum())} missing label(s) (None or NaN), e.g. at index "
            f"{int(np.flatnonzero(missing)[0])}: give every row a group or drop the row"
        )
    try:
        groups = np.unique(s)
    except TypeError:
        kinds = sorted({type(v).__name__ for v in s.tolist()})
        raise ValueError(f"{name} mixes label types that do not sort together: {kinds}") from None
    return s, groups


def check_prior(
    name: str,
    prior: torch.distributions.Distribution,
    event_shape: tuple[int, ...],
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.distributions.Distribution:
    """Check a user prior: a distribution with event shape ``event_shape`` and no batch shape.
    When ``dtype`` (``device``) is given and the prior has a mean, its mean must have that
    dtype (lie on that device): a float32 prior meets a float64 design, or a CPU prior CUDA
    data, in a matrix product whose error names no argument. A prior with the right shape as
    a batch names ``.to_event``. Returns ``prior``."""
    if not isinstance(prior, torch.distributions.Distribution):
        raise TypeError(f"{name} must be a distribution, got {type(prior).__name__}")
    batch, event = tuple(prior.batch_shape), tuple(prior.event_shape)
    if batch or event != tuple(event_shape):
        hint = ""
        if batch + event == tuple(event_shape):
            hint = f" (declare the batch dimensions as event: .to_event({len(batch)}))"
        raise ValueError(
            f"{name} must have event shape {tuple(event_shape)} and no batch shape, got batch "
            f"shape {batch} and event shape {event}{hint}"
        )
    if dtype is None and device is None:
        return prior
    try:
        mean = prior.mean
    except (NotImplementedError, AttributeError):  # no closed-form mean: dtype/device unknown
        return prior
    if dtype is not None and mean.dtype != dtype:
        raise ValueError(
            f"{name} must be built from {dtype} tensors like the data, got {mean.dtype}"
        )
    if device is not None and mean.device != torch.device(device):
        raise ValueError(
            f"{name} must be built from tensors on {torch.device(device)} like the data, got "
            f"{mean.device}"
        )
    return prior


def module_list(model: torch.nn.Module, path: str, arg: str) -> torch.nn.ModuleList:
    """The ``nn.ModuleList`` at the dotted ``path`` inside ``model``; errors name ``arg``."""
    try:
        mod = model.get_submodule(path)
    except AttributeError:
        raise ValueError(f"{arg}: the model has no submodule {path!r}") from None
    if not isinstance(mod, torch.nn.ModuleList):
        raise ValueError(f"{arg}: {path!r} is a {type(mod).__name__}, not a ModuleList")
    return mod


def check_indices(name: str, idx, n: int, shape: tuple[int, ...], device=None) -> torch.Tensor:
    """``idx`` as a long tensor on ``device`` after checking that it holds integer indices
    (not floats, which would be truncated, nor a bool mask) of shape ``shape``, each in
    ``[0, n)``; errors name ``name``."""
    t = torch.as_tensor(idx, device=device)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be integer indices, got dtype {t.dtype}")
    t = t.long()
    if t.shape != shape or bool(((t < 0) | (t >= n)).any()):
        raise ValueError(
            f"{name} must be {tuple(shape)} indices in [0, {n}), got shape {tuple(t.shape)}"
        )
    return t


def check_batch_probabilities(
    name: str, values, like: torch.Tensor, like_name: str, hint: str = ""
) -> torch.Tensor:
    """``values`` as a float64 tensor on ``like``'s device, after checking that both have shape
    ``(B,)`` and that every entry lies strictly inside (0, 1); errors name both arguments."""
    p = torch.as_tensor(values, dtype=torch.float64, device=like.device)
    if like.dim() != 1 or p.shape != like.shape:
        raise ValueError(
            f"{like_name} and {name} must both have shape (B,); got "
            f"{tuple(like.shape)} and {tuple(p.shape)}"
        )
    if not bool(((p > 0) & (p < 1)).all()):
        raise ValueError(f"{name} must lie strictly inside (0, 1){hint}")
    return p


class SavableModule(torch.nn.Module):
    """An ``nn.Module`` that stores its constructor arguments in ``self.config`` and saves /
    loads them together with its weights through ``torch.save`` (``weights_only`` loading)."""

    config: dict

    def save(self, path) -> None:
        """Write the constructor config and the weights to ``path`` (see ``load``)."""
        torch.save({"config": self.config, "state_dict": self.state_dict()}, path)

    @classmethod
    def load(cls, path, map_location=None):
        blob = torch.load(path, map_location=map_location, weights_only=True)
        model = cls(**blob["config"])
        model.load_state_dict(blob["state_dict"])
        return model
