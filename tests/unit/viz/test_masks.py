"""The heatmap's masks lie where their own downsample puts them, and a wrong lesion mask is
refused before anything is drawn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gigamil.errors import GigamilError
from gigamil.viz.heatmap import HEATMAP_FILES, HeatmapStyle, make_heatmap
from gigamil.viz.masks import PlacedMask, mask_on_image


def test_a_mask_larger_than_the_slide_is_sampled_by_its_downsample_not_stretched():
    """A 12 x 12 mask at 10 level-0 px a pixel over a 100 x 100 slide (within the 2 % plus two
    pixels accepted): its pixel 9 lies at level-0 90-100, the thumbnail's last tenth."""
    mask = np.zeros((12, 12), bool)
    mask[:, 9] = True
    shown = mask_on_image(PlacedMask(mask, (10.0, 10.0)), (0.1, 0.1), (10, 10))
    assert shown[:, 9].all() and not shown[:, :9].any()
    # beyond a mask smaller than the slide: no tissue, not the last row repeated
    short = mask_on_image(PlacedMask(np.ones((5, 10), bool), (10.0, 10.0)), (0.1, 0.1), (10, 10))
    assert short[:5].all() and not short[5:].any()
    assert mask_on_image(PlacedMask(mask, None), (0.1, 0.1), (10, 10)) is None


def test_any_pixel_keeps_a_lesion_smaller_than_a_thumbnail_pixel():
    """One mask pixel (8 level-0 px) at level-0 (800, 400) on a thumbnail of 100 level-0 px a
    pixel: its thumbnail pixel (4, 8) is set, and only it; the nearest sample misses it."""
    mask = np.zeros((100, 200), bool)
    mask[50, 100] = True
    placed = PlacedMask(mask, (8.0, 8.0))
    shown = mask_on_image(placed, (0.01, 0.01), (8, 16), any_pixel=True)
    assert np.argwhere(shown).tolist() == [[4, 8]]
    assert not mask_on_image(placed, (0.01, 0.01), (8, 16)).any()


def test_any_pixel_sets_every_image_pixel_a_lesion_overlaps_on_both_sides():
    """A lesion at level-0 x 30-60 (mask pixels 3-5 of 10 level-0 px) on an image of 4 level-0
    px a pixel: image pixel 7 (level-0 28-32) overlaps it as pixel 14 (56-60) does, so both are
    set (pixel 7 took only its first mask pixel, 2, and the outline began a pixel late)."""
    mask = np.zeros((10, 10), bool)
    mask[3:6, 3:6] = True
    shown = mask_on_image(PlacedMask(mask, (10.0, 10.0)), (0.25, 0.25), (25, 25), any_pixel=True)
    overlaps = [j for j in range(25) if j * 4 < 60 and (j + 1) * 4 > 30]  # 7 .. 14
    assert np.flatnonzero(shown.any(axis=0)).tolist() == overlaps
    assert np.flatnonzero(shown.any(axis=1)).tolist() == overlaps


def _store(write_store, path: Path, grid: list, side: int, **attrs) -> Path:
    patches = np.full((len(grid), 8, 8, 3), 120, np.uint8)
    return write_store(path, patches, np.array(grid), stride=side, patch_size_level0=side, **attrs)


def test_tissue_mask_of_a_store_without_slide_dimensions_clips_by_its_sidecar(
    write_store, tmp_path, monkeypatch
):
    """A store without slide_dimensions: the thumbnail spans the patches' extent (the top-left
    512 x 512 of a 1000 x 1000 slide); the whole-slide tissue mask, placed by its sidecar's
    slide size, keeps every patch on tissue coloured (stretched over the extent it left 73 %
    of them grey)."""
    import gigamil.viz.heatmap as heatmap

    grid = [(r, c) for r in range(8) for c in range(8)]
    store = _store(write_store, tmp_path / "s.zarr", grid, 64, slide_dimensions=[])
    mask = np.zeros((100, 100), np.uint8)
    mask[:52, :52] = 255  # tissue where the patches are, at 10 level-0 px a mask pixel
    Image.fromarray(mask).save(tmp_path / "tissue.png")
    (tmp_path / "tissue.json").write_text(json.dumps({"slide_dimensions": [1000, 1000]}))
    seen = {}
    real = heatmap.render_overlay

    def spy(thumb, canvas, *args, **kwargs):  # noqa: ANN001, ANN202
        seen.update(canvas=canvas, tissue=args[4])
        return real(thumb, canvas, *args, **kwargs)

    monkeypatch.setattr(heatmap, "render_overlay", spy)
    style = HeatmapStyle(normalize="relative", thumb_px=256)
    make_heatmap(
        store,
        np.full(64, 1 / 64),
        tmp_path / "hm",
        tissue_mask=tmp_path / "tissue.png",
        style=style,
    )
    covered = np.isfinite(seen["canvas"])
    assert covered.all() and seen["tissue"][covered].all()


def test_lesion_outline_in_geojson_uses_the_sidecar_downsample(write_store, tmp_path):
    """A lesion mask at 64 level-0 px a pixel (its sidecar), 2 % wider than the 6400 x 3200
    slide: the lesion's GeoJSON outline lies on the patch the localisation AUC counts as lesion
    (x 5760-6400, y 640-1280), not 113-125 px left and up of it."""
    grid = [(r, c) for r in range(5) for c in range(10)]
    store = _store(write_store, tmp_path / "s.zarr", grid, 640, slide_dimensions=[6400, 3200])
    mask = np.zeros((51, 102), np.uint8)
    mask[10:20, 90:100] = 255
    Image.fromarray(mask).save(tmp_path / "lesion.png")
    (tmp_path / "lesion.json").write_text(json.dumps({"downsample": 64}))
    out = tmp_path / "hm"
    make_heatmap(store, np.full(50, 0.02), out, lesion_mask=tmp_path / "lesion.png")
    geo = json.loads((out / "annotations.geojson").read_text())
    (lesion,) = [
        f for f in geo["features"] if f["properties"]["classification"]["name"].startswith("Les")
    ]
    ring = np.array(lesion["geometry"]["coordinates"][0])
    assert ring[:, 0].min() == pytest.approx(5760, abs=33)  # half a mask pixel at the corners
    assert ring[:, 0].max() == pytest.approx(6400, abs=33)
    assert ring[:, 1].min() == pytest.approx(640, abs=33)
    assert ring[:, 1].max() == pytest.approx(1280, abs=33)


def test_a_wrong_lesion_mask_leaves_the_earlier_heatmap_untouched(write_store, tmp_path):
    """Another slide's lesion mask (10 x 40 px for a 256 x 256 slide) is refused before
    anything is drawn: the heatmap of the run before stays whole, and no scratch folder is
    left behind."""
    grid = [(r, c) for r in range(4) for c in range(4)]
    store = _store(write_store, tmp_path / "s.zarr", grid, 64, slide_dimensions=[256, 256])
    out = tmp_path / "hm"
    make_heatmap(store, np.full(16, 1 / 16), out)
    before = {name: (out / name).read_bytes() for name in HEATMAP_FILES}
    Image.fromarray(np.full((40, 10), 255, np.uint8)).save(tmp_path / "wrong.png")
    attention = np.r_[np.full(15, 0.01), 0.85]
    with pytest.raises(GigamilError, match="does not cover the slide"):
        make_heatmap(store, attention, out, lesion_mask=tmp_path / "wrong.png")
    assert {name: (out / name).read_bytes() for name in HEATMAP_FILES} == before
    assert sorted(p.name for p in out.iterdir()) == sorted(HEATMAP_FILES)


def test_a_failure_while_drawing_leaves_the_earlier_heatmap_untouched(
    write_store, tmp_path, monkeypatch
):
    """A failure after overlay.png is drawn (here: in the gallery) replaces none of the files
    of the run before."""
    import gigamil.viz.heatmap as heatmap

    grid = [(r, c) for r in range(4) for c in range(4)]
    store = _store(write_store, tmp_path / "s.zarr", grid, 64, slide_dimensions=[256, 256])
    out = tmp_path / "hm"
    make_heatmap(store, np.full(16, 1 / 16), out)
    before = {name: (out / name).read_bytes() for name in HEATMAP_FILES}

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise GigamilError("a damaged patch chunk")

    monkeypatch.setattr(heatmap, "_write_gallery", broken)
    with pytest.raises(GigamilError, match="damaged"):
        make_heatmap(store, np.r_[np.full(15, 0.01), 0.85], out)
    assert {name: (out / name).read_bytes() for name in HEATMAP_FILES} == before
    assert sorted(p.name for p in out.iterdir()) == sorted(HEATMAP_FILES)


def test_attention_of_another_length_leaves_no_output_folder(write_store, tmp_path):
    grid = [(r, c) for r in range(2) for c in range(2)]
    store = _store(write_store, tmp_path / "s.zarr", grid, 64, slide_dimensions=[128, 128])
    with pytest.raises(GigamilError, match="attention has 3 values"):
        make_heatmap(store, np.full(3, 1 / 3), tmp_path / "hm")
    assert not (tmp_path / "hm").exists()


def test_a_heatmap_killed_while_drawing_leaves_no_scratch_folder_after_the_next_run(
    write_store, tmp_path, monkeypatch
):
    """A heatmap process killed with SIGKILL (a node failure: no clean-up runs) while drawing
    left its scratch folder of half-drawn files in the output folder; the next run, which drew
    the heatmap again, left it there for good (found by killing the heatmap job)."""
    import multiprocessing
    import os
    import signal

    import gigamil.viz.heatmap as heatmap

    grid = [(r, c) for r in range(4) for c in range(4)]
    store = _store(write_store, tmp_path / "s.zarr", grid, 64, slide_dimensions=[256, 256])
    out = tmp_path / "hm"

    def killed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(heatmap, "_write_gallery", killed)
    child = multiprocessing.get_context("fork").Process(
        target=make_heatmap, args=(store, np.full(16, 1 / 16), out)
    )
    child.start()
    child.join()
    assert child.exitcode == -signal.SIGKILL
    assert [p.name for p in out.iterdir() if p.name.startswith(".drawing")]  # its scratch
    monkeypatch.undo()
    make_heatmap(store, np.full(16, 1 / 16), out)
    assert sorted(p.name for p in out.iterdir()) == sorted(HEATMAP_FILES)
