"""Lesion localisation: patch/mask overlap and attention AUC against the lesion mask."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from gigamil.errors import GigamilError
from gigamil.evaluate.lesion_mask import load_mask_with_downsample, read_binary_mask
from gigamil.evaluate.localization import (
    localization_auc,
    mean_attention,
    patch_mask_fraction,
    slide_localization,
)


def test_patch_mask_fraction_exact_overlaps():
    mask = np.zeros((40, 40), bool)  # 1 mask px = 4 level-0 px
    mask[0:8, 0:8] = True  # covers level-0 [0, 32) x [0, 32)
    coords = np.array([[0, 0], [16, 0], [32, 0], [16, 16]])
    frac = patch_mask_fraction(coords, 32.0, mask, 4.0)
    np.testing.assert_allclose(frac, [1.0, 0.5, 0.0, 0.25])


def test_patch_mask_fraction_weights_the_edge_pixels_by_their_overlap():
    """The window was snapped outward to whole mask pixels: a 96-px patch over a 64-px mask
    pixel of normal tissue and half of a lesion one counted as 0.5 lesion (a lesion patch)
    instead of 1/3."""
    mask = np.array([[False, True]] * 2)
    np.testing.assert_allclose(patch_mask_fraction(np.array([[0, 0]]), 96.0, mask, 64.0), [1 / 3])
    rng = np.random.default_rng(0)  # against a brute-force count of 200 x 200 sample points
    mask = rng.random((9, 7)) < 0.5
    coords = np.column_stack([rng.uniform(0, 5 * 3.7, 40), rng.uniform(0, 7 * 3.7, 40)])
    got = patch_mask_fraction(coords, 6.1, mask, 3.7)
    t = (np.arange(200) + 0.5) / 200 * 6.1
    for (x, y), frac in zip(coords, got, strict=True):
        rows, cols = np.floor((y + t) / 3.7).astype(int), np.floor((x + t) / 3.7).astype(int)
        assert frac == pytest.approx(mask[np.ix_(rows, cols)].mean(), abs=0.01)


def test_localization_auc_perfect_and_reversed():
    frac = np.array([0.0, 0.1, 0.6, 1.0, 0.0])
    assert localization_auc(np.array([0.1, 0.2, 0.8, 0.9, 0.0]), frac) == 1.0
    assert localization_auc(np.array([0.9, 0.8, 0.1, 0.2, 1.0]), frac) == 0.0
    assert np.isnan(localization_auc(np.ones(3), np.zeros(3)))
    with pytest.raises(GigamilError, match="attention has 2 values but the store has 3"):
        localization_auc(np.ones(2), np.zeros(3))


def test_slide_localization_with_sidecar_and_fallbacks(grid_slide, tmp_path):
    store = tmp_path / "s.zarr"
    _, grid = grid_slide.write(store)
    mask_path = tmp_path / "s.png"
    grid_slide.write_mask(mask_path, rows=[1, 2], cols=[2, 3, 4], downsample=16)
    lesion = np.isin(grid[:, 0], [1, 2]) & np.isin(grid[:, 1], [2, 3, 4])
    att = np.where(lesion, 0.05, 0.01) + np.random.default_rng(0).random(len(grid)) * 1e-3
    res = slide_localization(store, att, mask_path)
    assert res == {"localization_auc": 1.0, "n_lesion_patches": 6, "n_patches": len(grid)}
    # sidecar without "downsample": mpp / slide_mpp (8.0 / 0.5 = 16)
    mask_path.with_suffix(".json").write_text(json.dumps({"mpp": 8.0}))
    assert slide_localization(store, -att, mask_path)["localization_auc"] == 0.0
    # no sidecar: slide width / mask width
    mask_path.with_suffix(".json").unlink()
    _, ds = load_mask_with_downsample(
        mask_path,
        None,
        (grid_slide.cols * grid_slide.patch + 40, grid_slide.rows * grid_slide.patch + 24),
    )
    assert ds == pytest.approx(16.0, rel=0.05)
    # a mask that cannot be this slide's: refused, not scored (a new user's 100 x 100 px mask of
    # a 2220 x 2967 px slide got a localisation AUC without a word)
    from PIL import Image

    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "square.png")
    dims = (grid_slide.cols * grid_slide.patch + 40, grid_slide.rows * grid_slide.patch + 24)
    with pytest.raises(GigamilError, match=r"square.png \(20 x 20 px, .* does not cover the slide"):
        load_mask_with_downsample(tmp_path / "square.png", None, dims)
    (tmp_path / "square.json").write_text(json.dumps({"downsample": 4}))  # a sidecar that lies
    with pytest.raises(GigamilError, match=r"it would span 80 x 80\)"):
        load_mask_with_downsample(tmp_path / "square.png", None, dims)


@pytest.mark.parametrize("content", [b"", b"not an array", None], ids=["empty", "text", "cut"])
def test_mean_attention_names_an_unreadable_file(tmp_path, content):
    path = tmp_path / "s.npy"
    np.save(path, np.full(35, 1 / 35, np.float32))
    path.write_bytes(path.read_bytes()[:60] if content is None else content)
    with pytest.raises(GigamilError, match=r"attention file .*s\.npy is damaged"):
        mean_attention([path])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_mean_attention_refuses_non_finite_values(tmp_path, bad):
    """A NaN made the slide's AUC NaN, and the slide dropped out of the localisation mean
    without a word (the heatmap refused the same file)."""
    good, path = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(good, np.full(4, 0.25, np.float32))
    np.save(path, np.array([0.5, bad, 0.25, 0.25], np.float32))
    assert mean_attention([good]).shape == (4,)
    with pytest.raises(GigamilError, match=r"b\.npy holds 1 NaN or infinite value"):
        mean_attention([good, path])


def test_read_binary_mask_takes_the_usual_kinds_of_mask(tmp_path):
    """0/255 and 0/1 (read with > 127 a 0/1 PNG held no lesion, and its slide silently left the
    localisation AUC), 0/2, a coloured lesion on black, palettes whether their index 0 is black
    or white (Pillow's quantize puts white first), a transparent background, and a mask
    resampled with anti-aliased edges."""
    from PIL import Image

    lesion = np.zeros((40, 60), bool)
    lesion[10:20, 5:30] = True
    white = (lesion * 255).astype(np.uint8)
    rgb = np.stack([white] * 3, axis=-1)
    red = np.zeros_like(rgb)
    red[lesion] = (255, 0, 0)
    dark = Image.fromarray(lesion.astype(np.uint8), mode="P")
    dark.putpalette([0, 0, 0, 90, 10, 10] + [0] * 762)  # index 1: a dark colour
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere, transparent outside the lesion
    rgba[lesion, 3] = 255
    images = {
        "m255.png": Image.fromarray(white),
        "m01.png": Image.fromarray(lesion.astype(np.uint8)),
        "m02.png": Image.fromarray((lesion * 2).astype(np.uint8)),
        "red.png": Image.fromarray(red),
        "quantized.png": Image.fromarray(rgb).quantize(2),
        "web.png": Image.fromarray(rgb).convert("P"),
        "dark_palette.png": dark,
        "transparent.png": Image.fromarray(rgba),
        "bilevel.png": Image.fromarray(white).convert("1"),  # 1 bit per pixel
        "keyed.png": Image.fromarray(np.where(lesion, 255, 128).astype(np.uint8)),  # grey key
    }
    for name, image in images.items():
        # a one-channel PNG whose grey 128 is its transparent colour (tRNS): background
        image.save(tmp_path / name, **({"transparency": 128} if name == "keyed.png" else {}))
        assert np.array_equal(read_binary_mask(tmp_path / name), lesion), name
    foci = np.zeros((4000, 8000), np.uint8)  # many small foci, downsampled with anti-aliasing
    for i in range(300):
        y, x = 100 + 60 * (i // 60) * 2, 100 + 120 * (i % 60)
        foci[y : y + 60, x : x + 60] = 255
    Image.fromarray(foci).resize((250, 125), Image.BILINEAR).save(tmp_path / "foci.png")
    assert read_binary_mask(tmp_path / "foci.png").any()


def test_read_binary_mask_refuses_what_is_not_one_mask(tmp_path):
    from PIL import Image

    photo = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    with pytest.raises(GigamilError, match=r"photo.png: \d+ % of its pixels are grey levels"):
        read_binary_mask(tmp_path / "photo.png")
    Image.fromarray(photo[..., 0]).save(tmp_path / "grey.png")  # one channel: read without RGBA
    with pytest.raises(GigamilError, match=r"grey.png: \d+ % of its pixels are grey levels"):
        read_binary_mask(tmp_path / "grey.png")
    classes = np.zeros((40, 60), np.uint8)
    classes[:10], classes[20:] = 1, 2  # tumour 1, stroma 2: which is the lesion?
    Image.fromarray(classes).save(tmp_path / "classes.png")
    with pytest.raises(GigamilError, match=r"labels \[1, 2\]: which one is the lesion"):
        read_binary_mask(tmp_path / "classes.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(GigamilError, match="text.png: cannot be read as an image"):
        read_binary_mask(tmp_path / "text.png")


def test_a_bad_sidecar_is_named(tmp_path):
    from PIL import Image

    from gigamil.evaluate.lesion_mask import check_mask_geometry

    Image.fromarray(np.zeros((30, 50), np.uint8)).save(tmp_path / "m.png")
    for text, match in (
        ('{"downsample": 32,}', "lesion mask sidecar .*m.json: .*expected e.g."),
        ('{"downsample": "x"}', "lesion mask sidecar .*m.json: could not convert"),
        ('{"downsample": 0}', "downsample 0 is not positive"),
    ):
        (tmp_path / "m.json").write_text(text)
        with pytest.raises(GigamilError, match=match):
            check_mask_geometry(tmp_path / "m.png", None, (1600, 960))
    (tmp_path / "m.json").write_text('{"downsample": 32}')
    check_mask_geometry(tmp_path / "m.png", None, (1600, 960))  # 50 x 30 px x 32: the slide


def test_a_lost_attention_file_of_a_predicted_slide_is_an_error_not_a_smaller_mean(tmp_path):
    """A deleted fold{k}/attention/{cohort}/{slide}.npy dropped that fold model from the
    ensemble's mean attention (or the slide from the localisation AUC) with a warning at most;
    the advice to redo it names the predictions CSV whose deletion makes Snakemake rerun it.
    A fold that did not predict the slide (a train cohort's other folds) may lack the file."""
    from gigamil import layout
    from gigamil.evaluate.localization import cohort_localization

    root = tmp_path / "predictions" / "exp"
    for k, listed in ((0, ["s1", "s2"]), (1, ["s2"])):
        (root / f"fold{k}" / "attention" / "ext").mkdir(parents=True)
        pd.DataFrame({"slide_id": listed}).to_csv(root / f"fold{k}" / "ext.csv", index=False)
    np.save(root / "fold1" / "attention" / "ext" / "s2.npy", np.ones(3, np.float32))
    dirs = [root / f"fold{k}" / "attention" / "ext" for k in (0, 1)]
    assert layout.attention_files(dirs[1:], "s2") == [dirs[1] / "s2.npy"]
    with pytest.raises(GigamilError) as err:
        layout.attention_files(dirs, "s2")  # fold0 predicted s2 but its file is gone
    assert f"attention file {dirs[0] / 's2.npy'} is missing, but {root / 'fold0' / 'ext.csv'}" in (
        str(err.value)
    ) and "delete " in str(err.value)
    with pytest.raises(GigamilError, match="is missing, but"):
        cohort_localization({"s2": ("store", [d / "s2.npy" for d in dirs], "mask.png")})
    (root / "fold1" / "attention" / "ext" / "s2.npy").write_bytes(b"not npy")
    np.save(root / "fold0" / "attention" / "ext" / "s2.npy", np.ones(3, np.float32))
    with pytest.raises(GigamilError, match=r"damaged or not a .npy array .*: delete .*fold1"):
        cohort_localization({"s2": ("store", [d / "s2.npy" for d in dirs], "mask.png")})
    # a slide whose id is "NA" (an id like any other in the sheets and predictions) was read as
    # missing from the CSV, so its lost file went unnoticed (a review, 2026-12-06)
    pd.DataFrame({"slide_id": ["s1", "s2", "NA"]}).to_csv(root / "fold0" / "ext.csv", index=False)
    with pytest.raises(GigamilError, match="attention file .*NA.npy is missing, but"):
        layout.attention_files(dirs[:1], "NA")


def test_a_lesion_patch_has_at_least_half_its_area_in_the_mask(grid_slide, tmp_path, monkeypatch):
    """The boundary: 0.5 counts, 0.49 and 0.3 do not; the attention ranks exactly the patches
    with at least half their area in the mask first, so only that rule gives AUC 1.0."""
    from gigamil.evaluate import localization as loc

    frac = np.array([0.0, 0.3, 0.49, 0.5, 0.51, 1.0])
    att = np.array([0.05, 0.02, 0.03, 0.13, 0.11, 0.12])  # the 0.5 patch ranked first
    assert localization_auc(att, frac) == 1.0
    assert localization_auc(att, frac, threshold=0.25) < 1.0  # 0.3 and 0.49 would be lesion
    assert localization_auc(att, frac, threshold=0.5 + 1e-9) < 1.0  # 0.5 would not
    store = tmp_path / "s.zarr"
    _, grid = grid_slide.write(store)
    frac = np.resize(frac, len(grid))
    monkeypatch.setattr(loc, "lesion_fraction", lambda *_: frac)
    res = slide_localization(store, np.resize(att, len(grid)), tmp_path / "unused.png")
    assert res["n_lesion_patches"] == int((frac >= 0.5).sum()) < int((frac > 0).sum())
    assert res["localization_auc"] == 1.0


def test_patch_mask_fraction_of_a_patch_taller_than_wide():
    """Patches of a slide with non-square pixels are (width, height) rectangles in level-0
    pixels: the height, not the width, bounds a patch vertically."""
    mask = np.zeros((40, 40), bool)  # 1 mask px = 4 level-0 px
    mask[0:8, :] = True  # level-0 rows [0, 32): lesion
    coords = np.array([[0, 0], [0, 16], [64, 32]])
    frac = patch_mask_fraction(coords, (16.0, 64.0), mask, 4.0)  # 16 wide, 64 tall
    np.testing.assert_allclose(frac, [0.5, 0.25, 0.0])
    frac = patch_mask_fraction(coords, (64.0, 16.0), mask, 4.0)  # 64 wide, 16 tall
    np.testing.assert_allclose(frac, [1.0, 1.0, 0.0])


def test_without_a_sidecar_the_downsample_is_the_slide_width_over_the_mask_width(tmp_path):
    """A 100 x 51 px mask of a 1000 x 500 px slide (its height rounded up): 10 level-0 px per
    mask px, from the widths (the heights would give 9.8, within the 2 % the check allows)."""
    from PIL import Image

    Image.fromarray(np.zeros((51, 100), np.uint8)).save(tmp_path / "m.png")
    _, ds = load_mask_with_downsample(tmp_path / "m.png", None, (1000, 500))
    assert ds == 10.0


def test_the_localisation_summary_is_the_mean_and_sample_sd_of_the_defined_slides():
    from gigamil.evaluate.aggregate import localization_block

    loc = {
        "s3": {"localization_auc": 0.9, "n_lesion_patches": 4},
        "s1": {"localization_auc": 0.6, "n_lesion_patches": 2},
        "s2": {"localization_auc": 0.75, "n_lesion_patches": 3},
        "s0": {"localization_auc": float("nan"), "n_lesion_patches": 0},  # no lesion patch
    }
    block = localization_block(loc)
    assert block["localization_auc"] == pytest.approx(0.75)
    assert block["localization_auc_sd"] == pytest.approx(0.15)  # ddof=1 (0.122 with ddof=0)
    assert block["localization_n_slides"] == 3
    assert block["localization_auc_per_slide"] == {"s1": 0.6, "s2": 0.75, "s3": 0.9}
    one = localization_block({"s1": {"localization_auc": 0.6, "n_lesion_patches": 2}})
    assert one["localization_auc_sd"] is None and one["localization_n_slides"] == 1


def test_no_localisation_auc_says_why(caplog):
    """One masked slide with all 8 of its patches in the lesion: the log said 'mean nan over 0
    slides' and metrics.html a blank '(0 slides)', without a reason (a new user's trial)."""
    from gigamil.evaluate.aggregate import localization_block
    from gigamil.evaluate.tables import summary_rows

    loc = {"s1": {"localization_auc": float("nan"), "n_lesion_patches": 8, "n_patches": 8}}
    block = localization_block(loc)
    assert (
        "1 with every patch in the lesion, 0 without a lesion patch" in block["localization_note"]
    )
    assert "mean nan" not in caplog.text and "localisation AUC: n/a" in caplog.text
    rows = dict(summary_rows({**block, "n_slides": 1, "n_patients": 1}, "auc"))
    assert rows["localisation AUC of the attention (lesion masks)"].startswith("n/a: no slide")
