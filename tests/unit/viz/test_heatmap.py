"""Heatmaps put attention on the right grid cells; the GeoJSON is valid and in level-0 pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from gigamil.errors import GigamilError
from gigamil.viz.heatmap import HeatmapStyle, attention_canvas, make_heatmap, normalize_attention


def test_normalizations():
    att = np.array([0.1, 0.4, 0.4, 5.0])
    np.testing.assert_allclose(normalize_attention(att, "rank"), [0.25, 0.625, 0.625, 1.0])
    np.testing.assert_allclose(normalize_attention(att, "minmax"), (att - 0.1) / 4.9)
    pct = normalize_attention(np.r_[np.linspace(0, 1, 999), 1000.0], "percentile")
    assert pct.min() == 0.0 and pct.max() == 1.0 and pct[500] > 0.45  # the outlier is clipped
    np.testing.assert_allclose(normalize_attention(np.ones(3), "minmax"), 0.5)
    with pytest.raises(GigamilError, match="heatmaps.normalize"):
        normalize_attention(att, "zscore")


def test_one_hot_attention_lights_the_right_cell_on_the_canvas(grid_slide):
    grid = np.array([(r, c) for r in range(grid_slide.rows) for c in range(grid_slide.cols)])
    coords = grid[:, ::-1] * grid_slide.patch
    hot = 19  # row 2, col 3
    att = np.zeros(len(grid))
    att[hot] = 1.0
    scale = 0.25  # 16 thumbnail px per patch
    canvas = attention_canvas(
        coords, grid_slide.patch, att, scale, (grid_slide.rows * 16 + 5, grid_slide.cols * 16 + 7)
    )
    r, c = grid[hot]
    assert np.all(canvas[r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16] == 1.0)
    lit = np.argwhere(canvas == 1.0)
    assert lit.min(axis=0).tolist() == [r * 16, c * 16]
    assert lit.max(axis=0).tolist() == [r * 16 + 15, c * 16 + 15]
    assert np.isnan(canvas[grid_slide.rows * 16 :, :]).all()  # outside the patches: nothing


def test_overlapping_patches_are_averaged():
    coords = np.array([[0, 0], [32, 0]])  # half-overlapping 64-px patches
    canvas = attention_canvas(coords, 64, np.array([1.0, 0.0]), 1.0, (64, 96))
    assert canvas[10, 10] == 1.0 and canvas[10, 80] == 0.0
    assert canvas[10, 40] == pytest.approx(0.5)


def test_make_heatmap_outputs_and_one_hot_overlay(grid_slide, tmp_path):
    keep = [
        i for i in range(grid_slide.rows * grid_slide.cols) if i not in (0, 7)
    ]  # two cells without tissue
    store = tmp_path / "s1.zarr"
    coords, grid = grid_slide.write(store, keep=keep)
    hot = keep.index(29)  # grid cell row 3, col 5
    att = np.full(len(keep), 0.01, np.float32)
    att[hot] = 0.9
    out = tmp_path / "hm"
    info = make_heatmap(
        store,
        att,
        out,
        slide_path=None,
        style=HeatmapStyle(normalize="minmax", top_k=3, alpha=1.0, cmap="jet", thumb_px=256),
    )
    assert info["top"][0] == hot and info["n_patches"] == len(keep)
    np.testing.assert_array_equal(np.load(out / "attention.npy"), att)
    for name in ("overlay.png", "gallery.png", "patches.geojson"):
        assert (out / name).stat().st_size > 0
    # the overlay: the hottest (dark red in jet) pixels form one blob at the planted patch
    img = np.asarray(Image.open(out / "overlay.png").convert("RGB")).astype(int)
    img = img[:, : int(0.7 * img.shape[1])]  # leave out the colour bar on the right
    red = (img[..., 0] > 100) & (img[..., 1] < 60) & (img[..., 2] < 60)
    blue = (img[..., 2] > 100) & (img[..., 0] < 60) & (img[..., 1] < 60)
    assert red.sum() > 20 and blue.sum() > 10 * red.sum()
    ys, xs = np.nonzero(blue)
    (ry, rx) = np.nonzero(red)
    # position of the red blob inside the blue heatmap's bounding box = cell (3, 5) of 6 x 8
    fy = (ry.mean() - ys.min()) / (ys.max() - ys.min() + 1)
    fx = (rx.mean() - xs.min()) / (xs.max() - xs.min() + 1)
    assert abs(fy - 3.5 / grid_slide.rows) < 0.05 and abs(fx - 5.5 / grid_slide.cols) < 0.05


def test_geojson_is_valid_and_in_level0_pixels(grid_slide, tmp_path):
    store = tmp_path / "s2.zarr"
    coords, _ = grid_slide.write(store)
    att = np.random.default_rng(0).random(len(coords)).astype(np.float32)
    make_heatmap(store, att, tmp_path / "hm", style=HeatmapStyle(top_k=2, thumb_px=128))
    geo = json.loads((tmp_path / "hm" / "patches.geojson").read_text())
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == len(coords)
    for i, feat in enumerate(geo["features"]):
        assert feat["type"] == "Feature"
        assert feat["geometry"]["type"] == "Polygon"
        ring = np.array(feat["geometry"]["coordinates"][0])
        assert ring.shape == (5, 2) and (ring[0] == ring[-1]).all()  # closed ring
        x, y = coords[i]
        assert ring[:, 0].min() == x and ring[:, 1].min() == y
        assert ring[:, 0].max() == x + grid_slide.patch and ring[:, 1].max() == y + grid_slide.patch
        # exterior ring counter-clockwise (positive shoelace area with y up)
        area = 0.5 * np.sum(ring[:-1, 0] * ring[1:, 1] - ring[1:, 0] * ring[:-1, 1])
        assert area == pytest.approx(grid_slide.patch * grid_slide.patch)
        props = feat["properties"]
        assert props["objectType"] == "tile"
        assert props["measurements"]["attention"] == pytest.approx(float(att[i]))
        assert 0.0 <= props["measurements"]["attention_normalized"] <= 1.0
        assert props["classification"]["name"] in ("attention-high", "attention-low")


def test_gallery_shows_top_and_bottom_patches(grid_slide, tmp_path):
    store = tmp_path / "s3.zarr"
    coords, _ = grid_slide.write(store)
    att = np.arange(len(coords), dtype=np.float32)  # the last patch has the highest attention
    info = make_heatmap(store, att, tmp_path / "hm", style=HeatmapStyle(top_k=4, thumb_px=128))
    assert info["top"] == [len(coords) - 1 - i for i in range(4)]


def test_attention_length_mismatch_is_an_error(grid_slide, tmp_path):
    store = tmp_path / "s4.zarr"
    grid_slide.write(store)
    with pytest.raises(GigamilError, match="attention has 3 values but the store has 48 patches"):
        make_heatmap(store, np.ones(3), tmp_path / "hm")


def test_empty_store_still_gives_outputs(grid_slide, tmp_path):
    store = tmp_path / "s5.zarr"
    grid_slide.write(store, keep=[])
    make_heatmap(store, np.zeros(0, np.float32), tmp_path / "hm", style=HeatmapStyle(thumb_px=64))
    geo = json.loads((tmp_path / "hm" / "patches.geojson").read_text())
    assert geo == {"type": "FeatureCollection", "features": []}
    assert (tmp_path / "hm" / "overlay.png").is_file()


def test_cli_heatmap_averages_attention_files(grid_slide, tmp_path, capsys):
    from gigamil.cli import main

    store = tmp_path / "s6.zarr"
    coords, _ = grid_slide.write(store)
    a = np.zeros(len(coords), np.float32)
    b = np.zeros(len(coords), np.float32)
    a[3], b[3], b[5] = 1.0, 1.0, 0.5
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    args = [
        "heatmap",
        "--store",
        str(store),
        "--attention",
        str(tmp_path / "a.npy"),
        str(tmp_path / "b.npy"),
        "--out",
        str(tmp_path / "hm"),
        "--thumb-px",
        "128",
    ]
    assert main(args) == 0
    np.testing.assert_allclose(np.load(tmp_path / "hm" / "attention.npy"), (a + b) / 2)
    assert "48 patches" in capsys.readouterr().out
