"""Helpers of benchmarks/real_tissue.py (the benchmark itself is run by hand)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml


def test_set_overrides_and_config(bench, tmp_path):
    over = bench.parse_set(["training.epochs=2", "cv.folds=4", "model.pool=abmil"])
    assert over == {"training": {"epochs": 2}, "cv": {"folds": 4}, "model": {"pool": "abmil"}}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        bench.parse_set(["training.epochs"])
    cfg = yaml.safe_load(bench.write_config(tmp_path, over).read_text())
    repo_cfg = yaml.safe_load((bench.REPO / "config.yaml").read_text())
    assert cfg["cohorts"] == {"real": {"sheet": str(tmp_path / "sheet.csv"), "role": "train"}}
    assert cfg["training"]["epochs"] == 2 and cfg["cv"]["folds"] == 4
    assert cfg["training"]["lr"] == repo_cfg["training"]["lr"]
    assert cfg["preprocessing"] == repo_cfg["preprocessing"]


def test_summary_statistics_and_json(bench):
    stat = bench.mean_sd([0.5, 0.7, float("nan"), None])
    assert stat["n"] == 2 and stat["mean"] == pytest.approx(0.6)
    assert stat["sd"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert bench.fmt(stat) == "0.600 ± 0.141"
    safe = bench.json_safe({"a": [np.float64("nan"), np.int64(3)], "b": float("inf")})
    assert json.dumps(safe, allow_nan=False) == '{"a": [null, 3], "b": null}'
