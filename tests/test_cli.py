import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from probml.cli import main
from probml.registry import (
    Example,
    ExampleResult,
    Registry,
    run_demo,
    run_example,
    script_main,
)


def _ok(fast, seed, device, out_dir):
    x = torch.randn(3, generator=torch.Generator().manual_seed(seed))
    return ExampleResult(headline=f"x0={x[0]:.4f}", table=[{"seed": seed, "x0": float(x[0])}])


def _boom(fast, seed, device, out_dir):
    raise RuntimeError("deliberate failure")


def test_list_prints_registered_examples(capsys, tmp_path, monkeypatch):
    reg = Registry([Example("alpha", "first example", _ok), Example("beta", "second", _ok)])
    assert main(["list"], registry=reg) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == ["alpha  first example", "beta   second"]  # one column
    # no examples folder: a message and exit status 2, not a traceback
    monkeypatch.setenv("PROBML_EXAMPLES_DIR", str(tmp_path / "missing"))
    assert main(["list"]) == 2
    assert "probml: examples folder" in capsys.readouterr().err


def test_run_unknown_name_lists_valid_names(capsys):
    reg = Registry([Example("alpha", "first", _ok)])
    assert main(["run", "nope"], registry=reg) == 2
    err = capsys.readouterr().err
    assert "unknown example 'nope'" in err and "alpha" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "alpha", "--seed", "-1"], "argument --seed: must be a non-negative integer"),
        (["run", "alpha", "--seed", "x"], "argument --seed: must be a non-negative integer"),
        (["demo", "--device", "bogus"], "argument --device: device must be"),
        (["demo", "--seed", "-1"], "argument --seed: must be a non-negative integer"),
        # a file in the way of --out: a mkdir traceback before
        (["run", "alpha", "--out", __file__], "argument --out: cannot create the folder"),
        (["demo", "--out", __file__ + "/sub"], "argument --out: cannot create the folder"),
    ],
)
def test_bad_seed_or_device_is_a_usage_error_not_a_traceback(argv, message, capsys):
    reg = Registry([Example("alpha", "first", _ok)])
    with pytest.raises(SystemExit) as exc:
        main(argv, registry=reg)
    assert exc.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # examples/NAME.py shares the options
        script_main(_ok, argv[2:] if argv[0] == "run" else argv[1:])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_run_writes_table_and_is_seeded(tmp_path, capsys):
    reg = Registry([Example("alpha", "first", _ok)])
    assert (
        main(["run", "alpha", "--fast", "--seed", "4", "--out", str(tmp_path / "a")], registry=reg)
        == 0
    )
    assert (
        main(["run", "alpha", "--fast", "--seed", "4", "--out", str(tmp_path / "b")], registry=reg)
        == 0
    )
    a = (tmp_path / "a" / "results.json").read_text()
    b = (tmp_path / "b" / "results.json").read_text()
    assert a == b and '"seed": 4' in a
    assert (tmp_path / "a" / "results.md").read_text().startswith("| seed | x0 |")


def test_demo_reports_failures_and_exit_code(tmp_path):
    reg = Registry([Example("good", "ok", _ok), Example("bad", "fails", _boom)])
    summary, report = run_demo(reg, out_root=tmp_path, echo=lambda s: None)
    status = {r["example"]: r["status"] for r in summary}
    assert status == {"bad": "FAILED", "good": "ok"}
    text = report.read_text()
    assert "deliberate failure" in text and "| good | ok |" in text
    assert main(["demo", "--out", str(tmp_path / "d")], registry=reg) == 1
    ok_reg = Registry([Example("good", "ok", _ok)])
    assert main(["demo", "--out", str(tmp_path / "e")], registry=ok_reg) == 0
    assert (tmp_path / "e" / "report.md").exists()


def test_registry_loads_example_files(tmp_path):
    (tmp_path / "one.py").write_text(
        "from probml.registry import ExampleResult\nDESCRIPTION = 'one file'\n"
        "def run(fast, seed, device, out_dir):\n    return ExampleResult(headline='hi')\n"
    )
    (tmp_path / "_private.py").write_text("raise SystemExit('must not be loaded')\n")
    reg = Registry(directory=tmp_path)
    assert reg.names() == ["one"]
    assert reg.describe() == [("one", "one file")]


def test_default_registry_has_the_examples():
    names = Registry().names()
    assert "importance_sampling" in names
    assert {"surge", "drum", "grasp"} <= set(names)


CALLS = []


def _record(fast, seed, device, out_dir):
    """An example that records its arguments, draws from the global RNG (as real examples
    do after run_example's set_seed) and saves a figure."""
    CALLS.append({"fast": fast, "seed": seed, "device": device})
    fig = out_dir / "fig.png"
    fig.write_bytes(b"png")
    x = float(torch.rand(1))
    return ExampleResult(headline=f"x={x:.6f}", table=[{"x": x}], figures=[fig])


def test_run_passes_its_options_seeds_and_prints_table_headline_and_figures(tmp_path, capsys):
    reg = Registry([Example("rec", "records", _record)])
    CALLS.clear()
    outs = []
    for argv in (["--seed", "4"], ["--fast", "--seed", "4"]):
        torch.manual_seed(len(outs))  # another caller state each time: run_example seeds
        assert main(["run", "rec", *argv, "--out", str(tmp_path / str(len(outs)))], reg) == 0
        outs.append(capsys.readouterr().out)
    assert [c["fast"] for c in CALLS] == [False, True]
    assert all(c["seed"] == 4 and c["device"] == torch.device("cpu") for c in CALLS)
    assert isinstance(CALLS[0]["device"], torch.device)  # resolved, not the string
    torch.manual_seed(4)
    expected = f"x={float(torch.rand(1)):.6f}"
    for i, out in enumerate(outs):
        assert out.startswith("| x |") and expected in out
        assert f"figure: {tmp_path / str(i) / 'fig.png'}" in out
    meta = json.loads((tmp_path / "1" / "results.json").read_text())["meta"]
    assert meta == {"example": "rec", "fast": True, "seed": 4, "headline": expected}
    script_main(_record, ["--fast", "--seed", "4", "--out", str(tmp_path / "s")])  # NAME.py
    out = capsys.readouterr().out
    assert out.startswith("| x |") and out.strip().splitlines()[-1] == expected
    assert CALLS[-1]["seed"] == 4


def test_demo_modes_and_its_report_sections(tmp_path):
    reg = Registry([Example("rec", "records", _record)])
    CALLS.clear()
    assert main(["demo", "--out", str(tmp_path / "f")], registry=reg) == 0
    assert main(["demo", "--full", "--out", str(tmp_path / "u")], registry=reg) == 0
    assert [c["fast"] for c in CALLS] == [True, False]
    fast, full = (
        (tmp_path / "f" / "report.md").read_text(),
        (tmp_path / "u" / "report.md").read_text(),
    )
    assert fast.startswith("# probml demo report (fast mode, seed 0)")
    assert full.startswith("# probml demo report (full mode, seed 0)")
    assert main(["demo", "--seed", "4", "--out", str(tmp_path / "s")], registry=reg) == 0
    assert CALLS[-1]["seed"] == 4
    assert (
        (tmp_path / "s" / "report.md")
        .read_text()
        .startswith("# probml demo report (fast mode, seed 4)")
    )
    section = full.split("## rec\n\n")[1]
    assert section.startswith("| x |") and "![fig.png](rec/fig.png)" in section


def test_registry_files_and_results_are_checked(tmp_path, monkeypatch):
    (tmp_path / "bare.py").write_text(
        "from probml.registry import ExampleResult\n"
        "def run(fast, seed, device, out_dir):\n    return {'headline': 'not a result'}\n"
    )
    monkeypatch.setenv("PROBML_EXAMPLES_DIR", str(tmp_path))
    reg = Registry()
    assert reg.describe() == [("bare", "(no description)")]
    with pytest.raises(TypeError, match="example bare returned dict, not ExampleResult"):
        run_example(reg.get("bare"), out_dir=tmp_path / "out")


@pytest.mark.skipif(
    shutil.which("probml") is None and not (Path(sys.executable).parent / "probml").exists(),
    reason="console script not installed",
)
def test_console_script(tmp_path):
    exe = shutil.which("probml") or str(Path(sys.executable).parent / "probml")
    assert (
        "run" in subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    )
    assert (
        "importance_sampling"
        in subprocess.run([exe, "list"], capture_output=True, text=True, check=True).stdout
    )
    r = subprocess.run(
        [exe, "run", "importance_sampling", "--fast", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "results.json").exists() and (tmp_path / "is_error.png").exists()
    r = subprocess.run(
        [sys.executable, "-m", "probml", "run", "zzz"], capture_output=True, text=True
    )
    assert r.returncode == 2 and "valid names" in r.stderr


def test_registry_order_failures_and_extras(tmp_path):
    """Names are listed sorted whatever the order given; a file whose ``run`` is not callable
    is refused by name; a failing example's headline names the exception's type; an
    example's ``extra`` lands in its JSON metadata."""
    reg = Registry([Example("zeta", "z", _ok), Example("alpha", "a", _ok)])
    assert reg.names() == ["alpha", "zeta"]
    (tmp_path / "notrun.py").write_text("run = 3\n")
    with pytest.raises(TypeError, match="notrun.py defines no run"):
        Registry(directory=tmp_path).get("notrun")
    summary, _ = run_demo(
        Registry([Example("bad", "fails", _boom)]), out_root=tmp_path / "d", echo=lambda s: None
    )
    assert summary[0]["headline"] == "RuntimeError: deliberate failure"

    def extra(fast, seed, device, out_dir):
        return ExampleResult(headline="h", extra={"note": "kept", "n": 3})

    run_example(Example("ex", "", extra), out_dir=tmp_path / "e")
    meta = json.loads((tmp_path / "e" / "results.json").read_text())["meta"]
    assert meta["note"] == "kept" and meta["n"] == 3 and meta["headline"] == "h"


def test_a_bad_seed_is_refused_before_anything_is_written(tmp_path):
    """``run_example`` checks the seed before it makes its folder, and ``run_demo`` once,
    before any example (not a FAILED row per example); an empty registry still gets its
    report folder; a failure's traceback lands in the report."""
    reg = Registry([Example("good", "ok", _ok)])
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        run_example(reg.get("good"), seed=-1, out_dir=tmp_path / "ex")
    assert not (tmp_path / "ex").exists()
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        run_demo(reg, seed=2.5, out_root=tmp_path / "demo", echo=lambda s: None)
    assert not (tmp_path / "demo").exists()
    summary, report = run_demo(Registry([]), out_root=tmp_path / "empty", echo=lambda s: None)
    assert summary == [] and report.read_text().startswith("# probml demo report")
    _, report = run_demo(
        Registry([Example("bad", "fails", _boom)]), out_root=tmp_path / "b", echo=lambda s: None
    )
    text = report.read_text()
    assert "Traceback (most recent call last)" in text and 'raise RuntimeError("deliberate' in text
