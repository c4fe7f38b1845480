"""The colour-histogram baseline (gigamil.evaluate.baseline) on a tiny generated mosaic cohort."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gigamil.cli import main
from gigamil.demo_tiles import make_tile_cohort
from gigamil.errors import GigamilError
from gigamil.evaluate import baseline


def _tile_folder(root: Path, n_normal: int, n_tumour: int) -> Path:
    """Plain coloured 96-px tiles with noise: pink normal, purple tumour."""
    rng = np.random.default_rng(0)
    for cls, n, colour in ((0, n_normal, (225, 150, 190)), (1, n_tumour, (130, 70, 165))):
        (root / str(cls)).mkdir(parents=True)
        for i in range(n):
            img = np.clip(np.array(colour) + rng.normal(0, 14, size=(96, 96, 3)), 0, 255)
            Image.fromarray(img.astype(np.uint8)).save(root / str(cls) / f"patch{i:07d}.jpg")
    return root


def test_colour_histograms_and_slide_score():
    patches = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    patches[0, ..., 0] = 255  # red
    patches[1, :2] = 128
    h = baseline.colour_histograms(patches, bins=4)
    assert h.shape == (2, 12) and h.dtype == np.float32
    assert np.allclose(h.reshape(2, 3, 4).sum(axis=2), 1.0)
    assert h[0].tolist() == [0, 0, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0]
    assert h[1].reshape(3, 4)[:, 2].tolist() == [0.5, 0.5, 0.5]
    assert baseline.slide_score(np.arange(10.0)) == pytest.approx(8.5)  # top 2 of 10
    assert baseline.slide_score(np.array([0.3])) == pytest.approx(0.3)
    assert np.isnan(baseline.slide_score(np.array([])))
    with pytest.raises(GigamilError, match="both classes"):
        baseline.fit_tile_classifier([np.zeros((3, 2))], [1])


def test_baseline_out_of_fold_on_tiny_cohort(tmp_path):
    folder = _tile_folder(tmp_path / "tiles", n_normal=70, n_tumour=15)
    sheet = make_tile_cohort(
        tmp_path / "cohort",
        tiles=folder,
        n_patients=6,
        slides_per_patient=1,
        tiles_per_slide=(8, 10),
    )
    stores, masks = {}, {}
    for row in sheet.itertuples():
        stores[row.slide_id] = tmp_path / "patches" / f"{row.slide_id}.zarr"
        args = ["patches", row.path, "--out", str(stores[row.slide_id]), "--mpp", "0.972"]
        assert main([*args, "--patch-px", "96", "--no-progress"]) == 0
        masks[row.slide_id] = tmp_path / "cohort" / "lesion_masks" / f"{row.slide_id}.png"
    labels = dict(zip(sheet["slide_id"], (sheet["label"] == "lesion").astype(int), strict=True))
    # two folds, each with both classes among its test slides
    order = sheet.sort_values(["label", "slide_id"])["slide_id"].tolist()
    test_fold = {s: i % 2 for i, s in enumerate(order)}
    folds = pd.DataFrame(
        [
            {"fold": k, "role": "test" if test_fold[s] == k else "train", "slide_id": s}
            for k in (0, 1)
            for s in order
        ]
    )
    result = baseline.evaluate_stores(stores, labels, folds, masks)
    per_slide = pd.DataFrame(result["per_slide"])
    assert sorted(per_slide["slide_id"]) == sorted(sheet["slide_id"])  # every slide once, OOF
    assert (per_slide["fold"] == per_slide["slide_id"].map(test_fold)).all()
    assert result["oof_auc"] == 1.0
    assert result["localization_n_slides"] == 3  # the lesion slides
    assert result["localization_auc"] > 0.95
    assert per_slide.loc[per_slide["label"] == 0, "localization_auc"].isna().all()
    # with gigamil's spatial prior: the same slides, scores smoothed over the grid
    smoothed = baseline.evaluate_stores(stores, labels, folds, masks, sm_alpha=0.8)["smoothed"]
    assert smoothed["sm_alpha"] == 0.8 and smoothed["localization_n_slides"] == 3
    assert smoothed["oof_auc"] == 1.0 and smoothed["localization_auc"] > 0.9


def test_smooth_scores_is_the_sm_operator_on_log_odds():
    """A stray high patch far from the others is pulled down, a contiguous run keeps its rank:
    the spatial prior gigamil's smabmil pool gives its attention, for the baseline."""
    import torch

    from gigamil.nn.pooling import grid_adjacency, smooth

    grid = np.array([[0, c] for c in range(8)])  # one row of 8 patches
    p = np.array([0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.95, 0.1])  # a run of 3, a stray at 6
    out = baseline.smooth_scores(p, grid, 0.8)
    logit = torch.from_numpy(np.log(p / (1 - p)))
    ref = smooth(logit, grid_adjacency(grid, dtype=torch.float64), 0.8).numpy()
    np.testing.assert_allclose(out, ref)
    assert out[6] < out[1] and np.argsort(-p)[0] == 6  # the stray no longer ranks first
    assert baseline.smooth_scores(np.zeros(0), np.zeros((0, 2), int), 0.8).size == 0
