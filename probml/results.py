"""Results writer shared by examples and benchmarks: markdown tables and JSON.

A *table* is a list of rows, each a ``dict`` from column name to value. Floats are formatted
with a fixed number of significant digits; the JSON copy keeps full precision. The JSON is
strict: a NaN or infinite value (a cell that does not apply, a standard error of one seed)
is written as ``null``, since JSON has no NaN and strict parsers refuse Python's ``NaN``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["markdown_table", "write_table", "to_json", "mean_se", "mean_se_rows", "format_value"]


def format_value(v: Any, digits: int = 4) -> str:
    """Format one table cell: floats to ``digits`` significant digits, the rest with ``str``."""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.{digits}g}"  # nan, inf and -inf print as themselves
    return str(v)


def markdown_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, digits: int = 4
) -> str:
    """Render ``rows`` as a GitHub-flavoured markdown table.

    Args:
        rows: the table, one mapping per row.
        columns: column order (default: keys in first-seen order over all rows).
        digits: significant digits for floats.
    """
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = [
        "| " + " | ".join(format_value(r.get(c, ""), digits) for c in columns) + " |" for r in rows
    ]
    return "\n".join([head, rule, *body])


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if hasattr(v, "tolist"):  # NumPy arrays and scalars, torch tensors
        return _jsonable(v.tolist())
    if isinstance(v, float) and not math.isfinite(v):
        return None  # strict JSON has no NaN or inf
    return v


def to_json(payload: Any, indent: int | None = 2) -> str:
    """``payload`` as strict JSON: NumPy and torch values as plain numbers and lists, NaN and
    infinities as ``null``."""
    return json.dumps(_jsonable(payload), indent=indent, allow_nan=False, default=float)


def write_table(
    out_dir: str | Path,
    name: str,
    rows: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any] | None = None,
    columns: Sequence[str] | None = None,
) -> tuple[Path, Path]:
    """Write ``rows`` as ``out_dir/name.md`` (markdown) and ``out_dir/name.json``.

    Returns:
        The two paths written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md_path, json_path = out / f"{name}.md", out / f"{name}.json"
    md_path.write_text(markdown_table(rows, columns) + "\n")
    json_path.write_text(to_json({"meta": dict(meta or {}), "rows": list(rows)}))
    return md_path, json_path


def mean_se(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and standard error (``std(ddof=1)/sqrt(n)``; ``nan`` for one value)."""
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        raise ValueError("mean_se needs at least one value")
    se = float(a.std(ddof=1) / math.sqrt(a.size)) if a.size > 1 else float("nan")
    return float(a.mean()), se


def mean_se_rows(groups: dict[str, dict[str, Sequence[float]]], label: str) -> list[dict]:
    """One table row per group: ``{label: name, metric: mean, "metric se": se, ...}``.

    Args:
        groups: ``name -> metric -> values over seeds``.
        label: the column holding the group's name.
    """
    rows = []
    for name, metrics in groups.items():
        row: dict[str, Any] = {label: name}
        for k, v in metrics.items():
            row[k], row[f"{k} se"] = mean_se(v)
        rows.append(row)
    return rows
