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


def test_each_fold_trains_on_its_train_and_val_slides_with_their_own_labels(monkeypatch):
    """Out of fold means out of fold: a fold's model learns from its ``train`` and ``val``
    slides only (a test slide among them is leakage, which plain-coloured tiles hide behind an
    AUC of 1 anyway), every patch carrying its own slide's label."""
    rng = np.random.default_rng(0)
    slides = [f"s{i}" for i in range(8)]
    labels = {s: i % 2 for i, s in enumerate(slides)}
    features = {s: rng.normal(labels[s], 1.0, size=(5 + i, 4)) for i, s in enumerate(slides)}
    roles = ["test", "test", "val", "train", "train", "train", "train", "val"]
    folds = pd.DataFrame(
        [
            {"fold": k, "role": roles[(i + 2 * k) % 8], "slide_id": s}
            for k in range(4)
            for i, s in enumerate(slides)
        ]
    )
    seen = []
    fit = baseline.fit_tile_classifier

    def spy(feats, labs, **kw):
        by_id = {id(features[s]): s for s in slides}
        seen.append({by_id[id(f)]: int(lab) for f, lab in zip(feats, labs, strict=True)})
        return fit(feats, labs, **kw)

    monkeypatch.setattr(baseline, "fit_tile_classifier", spy)
    table, scores = baseline.cross_validate(features, labels, folds)
    for k, trained in enumerate(seen):
        part = folds[folds["fold"] == k]
        assert set(trained) == set(part.loc[part["role"] != "test", "slide_id"]), k
        assert trained == {s: labels[s] for s in trained}
    assert len(seen) == 4
    assert sorted(table["slide_id"]) == slides and set(scores) == set(slides)
    assert dict(zip(table["slide_id"], table["label"], strict=True)) == labels


def test_top_fraction_rounds_up_and_sixteen_bins_per_channel():
    """A slide of 7 patches is scored by its top 2 (ceil(0.2 * 7)), not its top 1; the
    histograms have 16 bins per RGB channel (48 features), as the benchmark's records say."""
    assert baseline.slide_score(np.arange(7.0)) == pytest.approx(5.5)
    assert baseline.slide_score(np.arange(11.0)) == pytest.approx(9.0)  # top 3 of 11
    h = baseline.colour_histograms(np.full((1, 4, 4, 3), 255, dtype=np.uint8))
    assert h.shape == (1, 48) and h.reshape(3, 16)[:, -1].tolist() == [1.0, 1.0, 1.0]


def _bag_cohort(tmp_path: Path):
    """Eight 3 x 3 bags of packaged PatchCamelyon tiles written straight to patch stores (odd
    bags lesion, tumour tiles first) and two folds, each with train, val and test slides."""
    from gigamil.demo_tiles import write_tile_bags
    from gigamil.tile_pool import read_tile_pool

    bags = write_tile_bags(tmp_path, read_tile_pool(None), 8, side=3, tumour_tiles=(3, 5))
    stores = dict(zip(bags["slide_id"], bags["store"], strict=True))
    labels = dict(zip(bags["slide_id"], (bags["label"] == "lesion").astype(int), strict=True))
    folds = pd.DataFrame(
        [
            {
                "fold": k,
                "role": "test" if (i // 2) % 2 == k else ("val" if i == 2 * (1 - k) else "train"),
                "slide_id": s,
            }
            for k in (0, 1)
            for i, s in enumerate(stores)
        ]
    )
    return stores, labels, folds


def _oof_patch_scores(stores, labels, folds) -> dict[str, np.ndarray]:
    from gigamil.data.store import read_store

    features = {s: baseline.colour_histograms(read_store(p)[0][...]) for s, p in stores.items()}
    return baseline.cross_validate(features, labels, folds)[1]


def test_fold_aucs_and_smoothed_slide_scores_are_the_folds_and_the_smoothed_patches(tmp_path):
    """``fold_auc`` is one AUC per fold of its own test slides (not the pooled AUC repeated);
    with ``sm_alpha`` a slide's ``score_smoothed`` is the top-20 % mean of its smoothed
    log-odds, not of the raw patch probabilities."""
    from gigamil.data.store import read_store
    from gigamil.evaluate.metrics import binary_auc

    stores, labels, folds = _bag_cohort(tmp_path)
    out = baseline.evaluate_stores(stores, labels, folds, sm_alpha=0.8)
    per_slide = pd.DataFrame(out["per_slide"]).set_index("slide_id")
    expected = [
        binary_auc(p["label"].to_numpy(), p["score"].to_numpy())
        for _, p in per_slide.groupby("fold", sort=True)
    ]
    assert out["fold_auc"] == pytest.approx(expected) and len(expected) == 2
    assert out["oof_auc"] == pytest.approx(binary_auc(per_slide["label"], per_slide["score"]))
    scores = _oof_patch_scores(stores, labels, folds)
    for s, path in stores.items():
        grid = read_store(path)[2]
        smoothed = baseline.smooth_scores(scores[s], grid, 0.8)
        assert per_slide.loc[s, "score"] == pytest.approx(baseline.slide_score(scores[s]))
        assert per_slide.loc[s, "score_smoothed"] == pytest.approx(baseline.slide_score(smoothed))
    assert not np.allclose(per_slide["score_smoothed"], per_slide["score"])


def test_localisation_reads_each_slides_own_mask_and_counts_half_lesion_patches(
    tmp_path, monkeypatch
):
    """A slide's patch scores are scored against its own mask, a patch counting as lesion from
    50 % of its area (as gigamil's attention is scored): partly covered patches at the edge of
    a lesion are not lesion."""
    from gigamil.evaluate import localization
    from gigamil.evaluate.metrics import binary_auc

    stores, labels, folds = _bag_cohort(tmp_path)
    masks = {s: tmp_path / f"{s}_mask.png" for s in stores}
    fractions = {}
    for i, s in enumerate(stores):  # the first 3 patches tumour, 2 more touched at the edge
        fractions[str(masks[s])] = np.r_[[1.0] * 3, [0.3, 0.45], [0.0] * 4] if i % 2 else None
    read = []

    def fake_fraction(coords, attrs, mask_path):
        read.append((attrs["slide_id"], str(mask_path)))
        frac = fractions[str(mask_path)]
        return np.zeros(len(coords)) if frac is None else frac

    monkeypatch.setattr(localization, "lesion_fraction", fake_fraction)
    out = baseline.evaluate_stores(stores, labels, folds, masks)
    assert sorted(read) == sorted((s, str(masks[s])) for s in stores)
    scores = _oof_patch_scores(stores, labels, folds)
    per_slide = pd.DataFrame(out["per_slide"]).set_index("slide_id")
    lesion = [s for s in stores if labels[s]]
    for s in lesion:
        truth = fractions[str(masks[s])] >= 0.5
        assert per_slide.loc[s, "localization_auc"] == pytest.approx(binary_auc(truth, scores[s]))
    assert out["localization_n_slides"] == len(lesion) == 4
    assert per_slide.loc[[s for s in stores if not labels[s]], "localization_auc"].isna().all()


def test_a_slide_without_patches_is_left_out_not_a_crash_or_nan():
    """gigamil writes an empty store for a slide without enough tissue and leaves it out of
    its metrics; the baseline crashed on it (reshape of 0 patches) and, past that, gave a NaN
    OOF AUC. Its histograms are now (0, 48) and its slide is left out of the AUCs."""
    assert baseline.colour_histograms(np.zeros((0, 96, 96, 3), np.uint8)).shape == (0, 48)
    table = pd.DataFrame(
        {
            "slide_id": ["a", "b", "c", "d", "e"],
            "fold": [0, 0, 1, 1, 1],
            "label": [0, 1, 0, 1, 1],
            "score": [0.2, 0.8, 0.3, 0.9, float("nan")],  # e: no patches
        }
    )
    out = baseline._summary(table, "score", {"b": 0.7, "d": float("nan")})
    assert out["oof_auc"] == 1.0 and out["fold_auc"] == [1.0, 1.0]
    assert out["localization_auc"] == 0.7 and out["localization_n_slides"] == 1
