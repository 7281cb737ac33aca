"""The example registry behind ``probml list | run | demo``.

An example is **one file** ``examples/NAME.py`` that defines

* ``DESCRIPTION``: a one-line description shown by ``probml list``;
* ``run(fast: bool, seed: int, device: torch.device, out_dir: pathlib.Path) -> ExampleResult``.

Files whose name starts with ``_`` are skipped. The examples folder is found from
``$PROBML_EXAMPLES_DIR`` or, by default, next to the ``probml`` package in the source
checkout (``make`` installs probml in editable mode, so this is always the case there).
Example scripts end with ``if __name__ == "__main__": script_main(run)`` so that
``python examples/NAME.py --fast`` works too.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from probml.results import markdown_table, write_table
from probml.utils import check_seed, resolve_device, set_seed

__all__ = [
    "ExampleResult",
    "Example",
    "Registry",
    "default_examples_dir",
    "run_example",
    "run_demo",
    "script_main",
]


@dataclass
class ExampleResult:
    """What an example returns.

    Attributes:
        headline: one short figure of merit for the demo's summary table.
        table: rows of the example's results table.
        figures: paths of the plots it saved (inside its ``out_dir``).
        extra: anything else worth keeping in the JSON copy.
    """

    headline: str
    table: list[dict[str, Any]] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


RunFn = Callable[[bool, int, torch.device, Path], ExampleResult]


@dataclass
class Example:
    name: str
    description: str
    run: RunFn


def default_examples_dir() -> Path:
    """``$PROBML_EXAMPLES_DIR``, else ``examples/`` beside the package in the checkout."""
    env = os.environ.get("PROBML_EXAMPLES_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "examples"


def _load_example(path: Path) -> Example:
    spec = importlib.util.spec_from_file_location(f"probml_example_{path.stem}", path)
    if spec is None or spec.loader is None:  # pragma: no cover
        raise ImportError(f"cannot load example {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run = getattr(module, "run", None)
    if not callable(run):
        raise TypeError(f"example {path} defines no run(fast, seed, device, out_dir) function")
    desc = str(getattr(module, "DESCRIPTION", "")).strip() or "(no description)"
    return Example(path.stem, desc, run)


class Registry:
    """The set of runnable examples, by name.

    Args:
        examples: explicit :class:`Example` objects (used by tests); if ``None`` the files of
            ``directory`` are loaded lazily.
        directory: the examples folder (default :func:`default_examples_dir`).
    """

    def __init__(self, examples: Iterable[Example] | None = None, directory: Path | None = None):
        self._directory = Path(directory) if directory is not None else None
        self._examples: dict[str, Example] | None = None
        self._paths: dict[str, Path] = {}
        if examples is not None:
            self._examples = {e.name: e for e in examples}
        else:
            d = self._directory or default_examples_dir()
            if not d.is_dir():
                raise FileNotFoundError(
                    f"examples folder {d} not found: set PROBML_EXAMPLES_DIR or use the "
                    "source checkout (make installs probml in editable mode)"
                )
            self._paths = {p.stem: p for p in sorted(d.glob("*.py")) if not p.stem.startswith("_")}

    def names(self) -> list[str]:
        """The registered example names, sorted."""
        return sorted(self._examples) if self._examples is not None else sorted(self._paths)

    def get(self, name: str) -> Example:
        """The example ``name`` (loaded on first use); a ``KeyError`` lists the valid names."""
        if name not in self.names():
            valid = ", ".join(self.names()) or "(none)"
            raise KeyError(f"unknown example {name!r}; valid names: {valid}")
        if self._examples is not None:
            return self._examples[name]
        return _load_example(self._paths[name])

    def describe(self) -> list[tuple[str, str]]:
        """``(name, description)`` of every example, as ``probml list`` prints them."""
        return [(n, self.get(n).description) for n in self.names()]


def run_example(
    example: Example,
    *,
    fast: bool = True,
    seed: int = 0,
    device: str | torch.device | None = "cpu",
    out_dir: str | Path | None = None,
) -> ExampleResult:
    """Seed everything, run one example, write its table (``results.md``/``.json``)."""
    seed = check_seed("seed", seed)  # before the output directory is made
    out = Path(out_dir) if out_dir is not None else _timestamp_dir() / example.name
    out.mkdir(parents=True, exist_ok=True)
    set_seed(seed)
    result = example.run(fast, seed, resolve_device(device), out)
    if not isinstance(result, ExampleResult):
        raise TypeError(
            f"example {example.name} returned {type(result).__name__}, not ExampleResult"
        )
    write_table(
        out,
        "results",
        result.table,
        meta={
            "example": example.name,
            "fast": fast,
            "seed": seed,
            "headline": result.headline,
            **result.extra,
        },
    )
    return result


def _timestamp_dir(root: str | Path = "runs") -> Path:
    return Path(root) / datetime.now().strftime("%Y%m%d-%H%M%S")


def run_demo(
    registry: Registry,
    *,
    fast: bool = True,
    seed: int = 0,
    device: str | torch.device | None = "cpu",
    out_root: str | Path | None = None,
    echo: Callable[[str], None] = print,
) -> tuple[list[dict[str, Any]], Path]:
    """Run every registered example; write ``report.md``; return the summary and report path.

    A failing example is recorded (status ``FAILED`` and its traceback in the report) and the
    demo goes on with the next one.
    """
    seed = check_seed("seed", seed)  # not once per example, as a FAILED row each
    root = Path(out_root) if out_root is not None else _timestamp_dir()
    root.mkdir(parents=True, exist_ok=True)
    summary: list[dict[str, Any]] = []
    sections: list[str] = []
    names = registry.names()
    for i, name in enumerate(names, 1):
        echo(f"[{i}/{len(names)}] {name} ...")
        t0 = time.perf_counter()
        try:
            ex = registry.get(name)
            res = run_example(ex, fast=fast, seed=seed, device=device, out_dir=root / name)
            status, headline = "ok", res.headline
            body = [markdown_table(res.table)] if res.table else []
            body += [
                f"![{p.name}]({Path(p).resolve().relative_to(root.resolve())})" for p in res.figures
            ]
        except Exception as exc:  # noqa: BLE001 - the demo reports and moves on
            status, headline = "FAILED", f"{type(exc).__name__}: {exc}"
            body = ["```", traceback.format_exc().rstrip(), "```"]
        secs = time.perf_counter() - t0
        echo(f"[{i}/{len(names)}] {name}: {status} in {secs:.1f}s  {headline}")
        summary.append(
            {"example": name, "status": status, "seconds": round(secs, 2), "headline": headline}
        )
        sections.append(f"## {name}\n\n" + "\n\n".join(body))
    mode = "fast" if fast else "full"
    report = root / "report.md"
    report.write_text(
        f"# probml demo report ({mode} mode, seed {seed})\n\n"
        + markdown_table(summary, ["example", "status", "seconds", "headline"])
        + "\n\n"
        + "\n\n".join(sections)
        + "\n"
    )
    return summary, report


def seed_arg(text: str) -> int:
    """``--seed``: an integer in ``[0, 2**32)`` (argparse turns the error into a usage
    message)."""
    try:
        return check_seed("seed", int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a non-negative integer below 2**32, got {text!r}"
        ) from None


def device_arg(text: str) -> str:
    """``--device``: checked before any example starts (CUDA asked for but absent included)."""
    try:
        resolve_device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def out_arg(text: str) -> str:
    """``--out``: a folder, created here, before any example runs (a file in the way, or a
    parent that cannot be written, used to end the run with a traceback from ``mkdir``)."""
    try:
        Path(text).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise argparse.ArgumentTypeError(
            f"cannot create the folder {text!r}: {exc.strerror}"
        ) from None
    return text


def add_run_options(p: argparse.ArgumentParser) -> None:
    """``--fast``, ``--seed``, ``--device`` and ``--out`` of ``probml run`` and of every
    ``examples/NAME.py`` (one definition, so both check their input the same way)."""
    p.add_argument("--fast", action="store_true", help="small problem, under a minute on 2 cores")
    p.add_argument("--seed", type=seed_arg, default=0, help="random seed (default 0)")
    p.add_argument(
        "--device", type=device_arg, default="cpu", help="cpu | cuda | cuda:N (default cpu)"
    )
    p.add_argument(
        "--out", type=out_arg, default=None, help="output folder (default runs/<timestamp>/NAME)"
    )


def script_main(run: RunFn, argv: list[str] | None = None) -> None:
    """``python examples/NAME.py [--fast] [--seed N] [--device D] [--out DIR]``."""
    import inspect

    caller = Path(inspect.stack()[1].filename).stem
    p = argparse.ArgumentParser(prog=f"examples/{caller}.py")
    add_run_options(p)
    a = p.parse_args(argv)
    res = run_example(
        Example(caller, "", run), fast=a.fast, seed=a.seed, device=a.device, out_dir=a.out
    )
    if res.table:
        print(markdown_table(res.table))
    print(res.headline)
