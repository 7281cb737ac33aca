"""The Python examples in README.md and docs/*.md: every one parses and imports only names that
exist, and every one not marked otherwise runs.

A block is left out of the run by the line just before its fence:
``<!-- snippet: not run by tests/test_docs.py: <reason> -->`` (a slow real-size run, or a
fragment whose inputs are the reader's, listed as ``the reader's inputs: a, b``). Blocks of one
file run in order in one namespace, so a later block may continue an earlier one; every name a
block uses, run or not, must be bound by it, by an earlier block or by the reader's inputs.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = re.compile(r"<!-- snippet: not run by tests/test_docs\.py: (.+) -->")
INPUTS = re.compile(r"the reader's inputs: ([\w, ]+)$")


@dataclass
class Snippet:
    path: Path
    line: int  # line of the opening fence, 1-based
    code: str
    skip: str | None  # the reason it is not run, or None


def snippets(path: Path) -> list[Snippet]:
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start, body = i, []
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            marker = SKIP.fullmatch(lines[start - 1].strip()) if start else None
            out.append(Snippet(path, start + 1, "\n".join(body) + "\n", marker and marker.group(1)))
        i += 1
    return out


ALL = [s for p in DOCS for s in snippets(p)]
RUN_FILES = sorted({s.path for s in ALL if s.skip is None})


def test_the_docs_have_examples_and_markers_are_well_formed():
    assert len(ALL) >= 15
    assert any(s.skip is None for s in ALL) and any(s.skip for s in ALL)
    for p in DOCS:  # a misspelt marker would silently run a slow block
        for k, line in enumerate(p.read_text().splitlines(), 1):
            if line.strip().startswith("<!-- snippet"):
                assert SKIP.fullmatch(line.strip()), f"{p.name}:{k}: malformed marker {line!r}"


@pytest.mark.parametrize("snip", ALL, ids=lambda s: f"{s.path.name}:{s.line}")
def test_example_parses_and_its_probml_imports_exist(snip):
    tree = ast.parse(snip.code, filename=f"{snip.path.name}:{snip.line}")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "probml":
            mod = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(mod, alias.name) or importlib.util.find_spec(
                    f"{node.module}.{alias.name}"
                ), f"{snip.path.name}:{snip.line}: {node.module} has no {alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "probml":
                    importlib.import_module(alias.name)


@pytest.mark.parametrize("path", sorted({s.path for s in ALL}), ids=lambda p: p.name)
def test_examples_use_no_undefined_names(path):
    # ruff's undefined-name rule (F821) over the file's blocks in order, the reader's inputs
    # bound first; this reaches the blocks that are not run as well
    blocks = snippets(path)
    inputs = [
        n.strip()
        for b in blocks
        if b.skip
        for m in [INPUTS.search(b.skip)]
        if m
        for n in m.group(1).split(",")
    ]
    code = "".join(f"{n} = None\n" for n in inputs) + "".join(b.code for b in blocks)
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (the dev extra)")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--isolated",
            "--select",
            "F821",
            "--output-format",
            "concise",
            "--stdin-filename",
            "example.py",
            "-",
        ],
        input=code,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, f"{path.name}: undefined names\n{res.stdout}{res.stderr}"


@pytest.mark.parametrize("path", RUN_FILES, ids=lambda p: p.name)
def test_examples_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything an example writes lands here
    namespace: dict = {"__name__": "__doc_example__"}
    for snip in snippets(path):
        if snip.skip is None:
            code = compile(snip.code, f"{path.name}:{snip.line}", "exec")
            exec(code, namespace)  # noqa: S102 - the project's own documentation
