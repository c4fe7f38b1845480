"""benchmarks/draw_ceiling.py: the slide scores it computes from tile scores (the probe itself is
run by hand)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def _placed() -> pd.DataFrame:
    """Two 2 x 3 slides: 'a' with tumour tiles in its first column, 'b' without."""
    rows = [
        {"slide_id": s, "row": r, "col": c, "label": int(s == "a" and c == 0)}
        for s in ("a", "b")
        for r in range(2)
        for c in range(3)
    ]
    return pd.DataFrame(rows)


def test_slide_scores_top20_and_localisation(bench) -> None:
    placed = _placed()
    score = np.where(placed["label"] == 1, 2.0, 0.0) + np.arange(len(placed)) * 0.01
    out = bench.slide_scores(placed, score).set_index("slide_id")
    assert out["y"].to_dict() == {"a": 1, "b": 0}
    # ceil(0.2 * 6) = 2 tiles: slide a's two tumour tiles, slide b's two highest
    assert np.isclose(out.loc["a", "top20"], np.mean([2.0, 2.03]))
    assert np.isclose(out.loc["b", "top20"], np.mean([0.10, 0.11]))
    assert out.loc["a", "loc"] == 1.0 and np.isnan(out.loc["b", "loc"])
    # smoothing over the grid spreads the tumour column's score to its neighbours, keeps order
    assert out.loc["a", "top20_smoothed"] < out.loc["a", "top20"]
    assert out.loc["a", "top20_smoothed"] > out.loc["b", "top20_smoothed"]


def test_a_stray_tile_counts_less_after_smoothing(bench) -> None:
    """Two high tiles apart in a normal slide are damped by the Sm smoothing more than two
    touching ones: the spatial prior the smoothed slide score uses."""
    placed = _placed()
    score = np.zeros(len(placed))
    score[(placed["slide_id"] == "a").to_numpy() & (placed["col"] == 0).to_numpy()] = 1.0
    b = (placed["slide_id"] == "b").to_numpy()
    corners = ((placed["row"] == 0) & (placed["col"] == 0)) | (
        (placed["row"] == 1) & (placed["col"] == 2)
    )
    score[b & corners.to_numpy()] = 1.0  # two stray tiles in b, not neighbours
    out = bench.slide_scores(placed, score).set_index("slide_id")
    assert np.isclose(out.loc["a", "top20"], out.loc["b", "top20"])  # raw: a tie
    assert out.loc["a", "top20_smoothed"] > out.loc["b", "top20_smoothed"]
