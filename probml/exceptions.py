"""The library's own exception types."""

from __future__ import annotations

from sklearn.exceptions import NotFittedError as _SklearnNotFittedError

__all__ = ["NotFittedError"]


class NotFittedError(_SklearnNotFittedError, RuntimeError):
    """An estimator used before ``fit``.

    It is scikit-learn's :class:`~sklearn.exceptions.NotFittedError` (so code written for
    scikit-learn's estimators catches it, as a ``ValueError`` or an ``AttributeError``) and a
    ``RuntimeError`` (what the library raised before, so earlier ``except RuntimeError``
    clauses still catch it)."""
