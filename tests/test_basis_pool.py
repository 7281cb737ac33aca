"""benchmarks/basis_pool.py: pooling per-seed sweep JSON by seed, paired differences."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "basis_pool.py"
_spec = importlib.util.spec_from_file_location("basis_pool", _PATH)
basis_pool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(basis_pool)


def _write(path, seeds, per_seed, rows=()):
    path.write_text(json.dumps({"seeds": seeds, "per_seed": per_seed, "rows": list(rows)}))
    return str(path)


def test_pooling_by_seed_paired_differences_and_contrast(tmp_path):
    a = _write(
        tmp_path / "a.json",
        [0, 1],
        {"0.0001|eta": [0.010, 0.020], "0.0001|grpo": [0.012, 0.019]},
        [{"lr": 1e-4, "estimator": "eta", "batch-wide floor (oracle)": 0.01}],
    )
    b = _write(
        tmp_path / "b.json",
        [2],
        {"1e-4|eta": [0.030], "1e-4|grpo": [0.025], "3e-05|eta": [0.5], "3e-05|grpo": [0.5]},
        [{"lr": 1e-4, "estimator": "eta", "batch-wide floor (oracle)": 0.04}],
    )
    values, floors = basis_pool.load([a, b], lr=1e-4)
    assert set(values) == {(1e-4, "eta"), (1e-4, "grpo")}  # "0.0001" and "1e-4" match
    rows = {r["estimator"]: r for r in basis_pool.pooled_rows(values, floors)}
    eta = rows["eta"]
    d = np.array([0.010 - 0.012, 0.020 - 0.019, 0.030 - 0.025])
    assert eta["seeds"] == 3 and eta["value MSE"] == pytest.approx(0.02)
    assert eta["minus GRPO-8 (paired)"] == pytest.approx(d.mean())
    assert eta["paired se"] == pytest.approx(d.std(ddof=1) / np.sqrt(3))
    assert eta["seeds below GRPO-8"] == "1/3"
    # the floor is weighted by each file's number of seeds
    assert eta["batch-wide floor (oracle)"] == pytest.approx((2 * 0.01 + 0.04) / 3)
    assert rows["grpo-8"]["minus GRPO-8 (paired)"] == "-"
    # contrast: set A minus set B of each estimator's difference to GRPO-8, same seeds
    c = _write(
        tmp_path / "c.json",
        [0, 1, 2],
        {"0.0001|eta": [0.012, 0.018, 0.020], "0.0001|grpo": [0.012, 0.019, 0.025]},
    )
    other, _ = basis_pool.load([c], lr=1e-4)
    (row,) = basis_pool.contrast_rows(values, other)
    want = d - np.array([0.0, -0.001, -0.005])
    assert row["(A - GRPO-8) - (B - GRPO-8)"] == pytest.approx(want.mean())


def test_log_ratio_columns_are_the_paired_log_ratio_to_grpo(tmp_path):
    a = _write(
        tmp_path / "a.json",
        [3, 4, 5],
        {"0.0001|eta": [0.010, 0.040, 0.012], "0.0001|grpo": [0.020, 0.020, 0.012]},
    )
    values, floors = basis_pool.load([a])
    plain = {r["estimator"]: r for r in basis_pool.pooled_rows(values, floors)}
    assert "log ratio to GRPO-8 (paired)" not in plain["eta"]  # opt-in: old tables unchanged
    rows = {r["estimator"]: r for r in basis_pool.pooled_rows(values, floors, log_ratio=True)}
    want = np.log([0.5, 2.0, 1.0])  # a halving and a doubling cancel; the arithmetic mean does not
    assert rows["eta"]["log ratio to GRPO-8 (paired)"] == pytest.approx(0.0, abs=1e-12)
    assert rows["eta"]["log ratio se"] == pytest.approx(want.std(ddof=1) / np.sqrt(3))
    assert rows["eta"]["minus GRPO-8 (paired)"] == pytest.approx(0.01 / 3)
    assert rows["grpo-8"]["log ratio to GRPO-8 (paired)"] == "-"
    png = tmp_path / "lr.png"
    basis_pool.main([a, "--log-ratio", "--plot", str(png)])
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    bad = _write(tmp_path / "b.json", [0, 1], {"0.0001|eta": [0.0, 0.1], "0.0001|grpo": [0.1, 0.1]})
    values, floors = basis_pool.load([bad])
    with pytest.raises(SystemExit, match="seed 0"):
        basis_pool.pooled_rows(values, floors, log_ratio=True)


def test_conflicting_or_malformed_files_stop_with_a_message(tmp_path):
    a = _write(tmp_path / "a.json", [0], {"0.0001|eta": [0.01], "0.0001|grpo": [0.02]})
    same = _write(tmp_path / "s.json", [0], {"0.0001|eta": [0.01]})
    basis_pool.load([a, same])  # a reproduced seed with the same value is fine
    clash = _write(tmp_path / "b.json", [0], {"0.0001|eta": [0.03]})
    with pytest.raises(SystemExit, match="seed 0"):
        basis_pool.load([a, clash])
    short = _write(tmp_path / "c.json", [0, 1], {"0.0001|eta": [0.03]})
    with pytest.raises(SystemExit, match="1 values for 2 seeds"):
        basis_pool.load([short])
    (tmp_path / "d.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(SystemExit, match="per_seed"):
        basis_pool.load([str(tmp_path / "d.json")])
