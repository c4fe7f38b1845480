"""Lesion localisation: patch/mask overlap and attention AUC against the lesion mask."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gigamil.errors import GigamilError
from gigamil.evaluate.localization import (
    load_mask_with_downsample,
    localization_auc,
    mean_attention,
    patch_mask_fraction,
    read_binary_mask,
    slide_localization,
)


def test_patch_mask_fraction_exact_overlaps():
    mask = np.zeros((40, 40), bool)  # 1 mask px = 4 level-0 px
    mask[0:8, 0:8] = True  # covers level-0 [0, 32) x [0, 32)
    coords = np.array([[0, 0], [16, 0], [32, 0], [16, 16]])
    frac = patch_mask_fraction(coords, 32.0, mask, 4.0)
    np.testing.assert_allclose(frac, [1.0, 0.5, 0.0, 0.25])


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


def test_read_binary_mask_takes_0_255_and_0_1_masks_and_refuses_a_photo(tmp_path):
    """A 0/1 label PNG read with > 127 would hold no lesion, and the slide would silently
    drop out of the localisation AUC; a photo given as a mask would be scored as one."""
    from PIL import Image

    lesion = np.zeros((40, 60), bool)
    lesion[10:20, 5:30] = True
    for name, values in (("m255.png", lesion * 255), ("m01.png", lesion * 1)):
        Image.fromarray(values.astype(np.uint8)).save(tmp_path / name)
        assert np.array_equal(read_binary_mask(tmp_path / name), lesion)
    edges = lesion * 255
    edges[9, 5:30] = 100  # anti-aliased edge pixels (below half): few, still a mask
    Image.fromarray(edges.astype(np.uint8)).save(tmp_path / "edges.png")
    assert np.array_equal(read_binary_mask(tmp_path / "edges.png"), lesion)
    red = np.zeros((40, 60, 3), np.uint8)  # a coloured lesion on black (RGB label image)
    red[lesion] = (255, 0, 0)
    Image.fromarray(red).save(tmp_path / "red.png")
    assert np.array_equal(read_binary_mask(tmp_path / "red.png"), lesion)
    palette = Image.fromarray((lesion * 1).astype(np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)  # index 1: dark red
    palette.save(tmp_path / "palette.png")
    assert np.array_equal(read_binary_mask(tmp_path / "palette.png"), lesion)
    two = (lesion * 2).astype(np.uint8)  # a label map whose lesion label is 2
    Image.fromarray(two).save(tmp_path / "m02.png")
    assert np.array_equal(read_binary_mask(tmp_path / "m02.png"), lesion)
    photo = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    with pytest.raises(GigamilError, match=r"photo.png: \d+ % of its pixels are grey levels"):
        read_binary_mask(tmp_path / "photo.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(GigamilError, match="text.png: cannot be read as an image"):
        read_binary_mask(tmp_path / "text.png")
