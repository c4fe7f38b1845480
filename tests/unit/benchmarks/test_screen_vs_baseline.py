"""benchmarks/screen_vs_baseline.py: a screened variant against the baseline, draw by draw."""

from __future__ import annotations

import json

import pandas as pd
import pytest


def _cohort(tmp_path, baseline_scores):
    slides = [f"p{i // 2}_s{i % 2}" for i in range(8)]  # 4 patients of 2 slides
    y = [i // 4 for i in range(8)]  # patients 0-1 normal, 2-3 lesion
    (tmp_path / "draws" / "draw3").mkdir(parents=True)
    pd.DataFrame({"slide_id": slides, "patient_id": [s[:2] for s in slides]}).to_csv(
        tmp_path / "draws" / "draw3" / "sheet.csv", index=False
    )
    per_slide = [
        {"slide_id": s, "label": t, "score": b}
        for s, t, b in zip(slides, y, baseline_scores, strict=True)
    ]
    results = tmp_path / "real_tissue.json"
    results.write_text(json.dumps({"draws": [{"seed": 3, "baseline": {"per_slide": per_slide}}]}))
    return slides, y, results


def test_difference_to_the_baseline_on_the_same_slides(bench, tmp_path) -> None:
    baseline = [0.1, 0.2, 0.6, 0.3, 0.5, 0.4, 0.9, 0.8]  # one normal slide above two lesions
    slides, y, results = _cohort(tmp_path, baseline)
    (tmp_path / "screen" / "v").mkdir(parents=True)
    ours = [0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9]  # perfect ranking
    pd.DataFrame({"draw": "draw3", "seed": 0, "slide_id": slides, "y": y, "p": ours}).to_csv(
        tmp_path / "screen" / "v" / "predictions.csv", index=False
    )
    (row,) = bench.compare(
        "v", bench.baseline_scores([results]), tmp_path / "screen", tmp_path / "draws"
    )
    assert row["draw"] == "draw3" and row["seed"] == 0
    assert row["auc_a"] == 1.0 and row["auc_b"] == pytest.approx(14 / 16)
    assert row["difference"] == pytest.approx(2 / 16) and row["p_a_better"] > 0.5


def test_other_slides_than_the_baseline_are_refused(bench, tmp_path) -> None:
    slides, y, results = _cohort(tmp_path, [0.5] * 8)
    (tmp_path / "screen" / "v").mkdir(parents=True)
    pd.DataFrame({"draw": "draw3", "seed": 0, "slide_id": slides[:6], "y": y[:6], "p": 0.5}).to_csv(
        tmp_path / "screen" / "v" / "predictions.csv", index=False
    )
    with pytest.raises(RuntimeError, match="scored different slides"):
        bench.compare(
            "v", bench.baseline_scores([results]), tmp_path / "screen", tmp_path / "draws"
        )
