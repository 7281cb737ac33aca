"""Shared helpers for the benchmark scripts: argument parsing, timing, output paths."""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import torch

from probml.results import to_json

OUT = Path(__file__).resolve().parent / "out"
# exit status of a benchmark that cannot run on this machine (no CUDA, an optional extra not
# installed): `make bench` reports it as skipped and goes on; any other failure stops it
SKIPPED = 3


def parse_args(
    description: str, flags: tuple[str, ...] = (), options: dict[str, str] | None = None
) -> argparse.Namespace:
    """Common options; ``flags`` adds boolean switches (e.g. ``"--drift-only"``), ``options``
    string options (name -> help text; default ``None``)."""
    p = argparse.ArgumentParser(description=description)
    for f in flags:
        p.add_argument(f, action="store_true")
    for name, text in (options or {}).items():
        p.add_argument(name, default=None, help=text)
    p.add_argument("--quick", action="store_true", help="fewer seeds, smaller problems")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (overrides mode)")
    p.add_argument("--out", default=str(OUT), help="folder for the JSON output")
    return p.parse_args()


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``fn(*args, **kwargs)`` and its wall-clock seconds."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def log(message: str) -> None:
    """A progress line on stderr (stdout keeps the tables), flushed at once for logs."""
    print(message, file=sys.stderr, flush=True)


def skip(reason: str) -> NoReturn:
    """Exit with :data:`SKIPPED`, saying why on stderr."""
    print(f"skipped: {reason}", file=sys.stderr, flush=True)
    raise SystemExit(SKIPPED)


def machine() -> str:
    return (
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )


def save(name: str, out_dir: str, payload: dict) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(to_json(payload))  # strict JSON: NaN and inf as null
    return path
