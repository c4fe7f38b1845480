"""benchmarks/gpu.py: its methods compute the same gradients (else its timings would compare
different computations), and its CPU smoke path runs end to end without touching gpu.json."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_bare_gradcache_gigamil_and_full_bag_agree(bench) -> None:
    diffs = bench.check_gradients(n=21, k=8, px=32)
    assert set(diffs) == {"full", "bare", "gigamil"}
    for method, d in diffs.items():  # NaN fails too
        assert d < 1e-10, (method, d)


def test_cpu_smoke_run_and_refusal_to_write_cpu_figures(bench, tmp_path: Path) -> None:
    res = bench.main(["--device", "cpu", "--tiny", "--out", str(tmp_path / "smoke.json")])
    assert (tmp_path / "smoke.json").exists()
    for p in ("bf16", "fp32"):
        speed = res["speed"][p]
        for m in bench.METHODS:
            assert speed[m]["patches_per_s"] > 0, (p, m)
        assert set(speed["ratios"]) >= {"gigamil/bare (c/b)", "zarr/gigamil (d/c)"}
        assert [r["n"] for r in res["memory"][p]["rows"]] == [16, 32, 64]
    assert "bf16 / fp32 patches/s (gigamil) >= 1.8" in res["targets"]
    with pytest.raises(SystemExit, match="not written to"):
        bench.main(["--device", "cpu", "--tiny", "--out", str(bench.RESULT)])


def test_memory_growth_allowance(bench) -> None:
    rows = [
        {"n": 1000, "gigamil": {"peak_bytes": 10_000_000}},
        {"n": 16000, "gigamil": {"peak_bytes": 10_000_000 + 16000 * 8 * 4}},
    ]
    g = bench.growth(rows, 8)
    assert g["feature_matrix_bytes"] == 16000 * 8 * 4 and g["within_target"]
    rows[-1]["gigamil"]["peak_bytes"] += 600_000  # beyond N x D + 5 % of 10 MB
    assert not bench.growth(rows, 8)["within_target"]
