"""benchmarks/grasp.py --plot-from: the trade-off figure of a finished run (no training)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "grasp.py"
_spec = importlib.util.spec_from_file_location("grasp_benchmark", _PATH)
grasp_benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(grasp_benchmark)


def _payload():
    def m(a, b):
        return {"misalignment": [a, b], "roleplay": [0.9, 0.92], "task": [0.99, 0.99]}

    def s(a, b):
        return {"drift / naive drift": [a, b], "roleplay": [0.7, 0.72]}

    persona = {"base (pretrained)": m(0.16, 0.16), "naive": m(0.3, 0.32),
               "GRASP": m(0.2, 0.22), "control world: naive": m(0.2, 0.21)}  # fmt: skip
    slant = {"base (pretrained)": s(0.0, 0.0), "naive": s(1.0, 1.0), "GRASP": s(0.5, 0.6)}
    return {"persona_per_seed": persona, "slant_per_seed": slant}


def test_plot_from_a_run_and_clear_errors(tmp_path):
    out = tmp_path / "t.png"
    grasp_benchmark.plot_tradeoff(_payload(), str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    one = {k: {m: {q: v[:1] for q, v in d.items()} for m, d in w.items()}
           for k, w in _payload().items()}  # fmt: skip
    grasp_benchmark.plot_tradeoff(one, str(tmp_path / "one.png"))  # one seed: no error bars
    assert (tmp_path / "one.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="slant_per_seed"):
        grasp_benchmark.plot_tradeoff({"persona_per_seed": {}}, str(out))
    # the command line: both options or neither
    run = tmp_path / "run.json"
    run.write_text(json.dumps(_payload()))
    cmd = [sys.executable, str(_PATH), "--plot-from", str(run)]
    bad = subprocess.run(cmd, capture_output=True, text=True)
    assert bad.returncode != 0 and "go together" in bad.stderr
    good = subprocess.run([*cmd, "--plot", str(tmp_path / "c.png")], capture_output=True, text=True)
    assert good.returncode == 0 and (tmp_path / "c.png").exists()
