"""Command line: ``probml list | run NAME | demo`` (also ``python -m probml``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from probml import __version__
from probml.registry import (
    Registry,
    add_run_options,
    device_arg,
    out_arg,
    run_demo,
    run_example,
    seed_arg,
)
from probml.results import markdown_table


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="probml",
        description="Reference Pyro implementations of ten recent methods: run their examples.",
    )
    p.add_argument("--version", action="version", version=f"probml {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the registered examples")
    r = sub.add_parser("run", help="run one example")
    r.add_argument("name", help="example name (see `probml list`)")
    add_run_options(r)
    d = sub.add_parser("demo", help="run every example (fast mode unless --full)")
    d.add_argument("--full", action="store_true", help="full-size problems (slow)")
    d.add_argument("--seed", type=seed_arg, default=0, help="random seed (default 0)")
    d.add_argument(
        "--device", type=device_arg, default="cpu", help="cpu | cuda | cuda:N (default cpu)"
    )
    d.add_argument(
        "--out", type=out_arg, default=None, help="report folder (default runs/<timestamp>)"
    )
    return p


def main(argv: list[str] | None = None, registry: Registry | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        reg = registry if registry is not None else Registry()
    except FileNotFoundError as exc:
        print(f"probml: {exc}", file=sys.stderr)
        return 2
    if args.command == "list":
        rows = reg.describe()
        width = max((len(n) for n, _ in rows), default=0)
        for name, desc in rows:
            print(f"{name:<{width}}  {desc}")
        return 0
    if args.command == "run":
        try:
            ex = reg.get(args.name)
        except KeyError as exc:
            print(f"probml: {exc.args[0]}", file=sys.stderr)
            return 2
        res = run_example(ex, fast=args.fast, seed=args.seed, device=args.device, out_dir=args.out)
        if res.table:
            print(markdown_table(res.table))
        print(res.headline)
        for f in res.figures:
            print(f"figure: {f}")
        return 0
    summary, report = run_demo(
        reg,
        fast=not args.full,
        seed=args.seed,
        device=args.device,
        out_root=Path(args.out) if args.out else None,
    )
    print()
    print(markdown_table(summary, ["example", "status", "seconds", "headline"]))
    print(f"\nreport: {report}")
    return 0 if all(s["status"] == "ok" for s in summary) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
