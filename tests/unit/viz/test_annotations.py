"""annotations.geojson: the tissue mask's scale from the store or the mask's sidecar."""

from __future__ import annotations

import json

import pytest

from gigamil.viz.annotations import mask_downsample


def test_mask_downsample_from_the_store_or_the_mask_sidecar(tmp_path):
    assert mask_downsample((50, 100), {"slide_dimensions": [1000, 600]}) == (10.0, 12.0)
    mask = tmp_path / "m.png"
    assert mask_downsample((50, 100), {}, mask) is None
    mask.with_suffix(".json").write_text(json.dumps({"slide_dimensions": [400, 200]}))
    assert mask_downsample((50, 100), {}, mask) == (4.0, 4.0)


def test_tissue_and_lesion_annotations_have_their_own_ids_and_areas_in_mm2(tmp_path):
    """annotations.geojson: a tissue piece and a lesion piece of the same index get different
    UUIDs (QuPath keeps one object per id), and both their area in mm² from the store's µm/px."""
    import numpy as np

    from gigamil.viz.annotations import write_annotations

    mask = np.zeros((10, 10), bool)
    mask[2:8, 2:8] = True  # 60 x 60 level-0 px at 10 px a mask pixel
    lesion = np.zeros((10, 10), bool)
    lesion[3:5, 3:5] = True
    coords = np.array([[0, 0], [64, 0]])
    geo = write_annotations(
        tmp_path / "a.geojson",
        coords,
        64.0,
        np.array([0.6, 0.4]),
        np.array([1.0, 0.6]),
        np.array([0]),
        "s",
        {"slide_dimensions": [100, 100], "slide_mpp": 0.5},
        mask,
        lesion=(lesion, None),
    )
    ids = [f["id"] for f in geo["features"]]
    assert len(ids) == len(set(ids)) == 3  # tissue, lesion, top patch
    tissue, les = geo["features"][:2]
    assert tissue["properties"]["classification"]["name"] == "Tissue"
    assert les["properties"]["classification"]["name"] == "Lesion (ground truth)"
    area = tissue["properties"]["measurements"]["area_mm2"]
    assert area == pytest.approx(3600 * 0.25 / 1e6, rel=0.02)  # corners cut: -1.4 %
    assert les["properties"]["measurements"]["area_mm2"] > 0


def test_the_area_in_mm2_of_non_square_pixels_is_x_times_y(tmp_path):
    """0.25 x 0.5 µm/px: a level-0 pixel covers 0.125 µm², not the mean 0.375² = 0.141 (12.5 %
    too much); square pixels and stores without slide_mpp_xy keep slide_mpp."""
    import numpy as np

    from gigamil.viz.annotations import write_annotations

    mask = np.zeros((10, 10), bool)
    mask[2:8, 2:8] = True  # 600 x 600 level-0 px of a 1000 x 1000 slide
    empty = (np.zeros((0, 2)), 64.0, np.zeros(0), np.zeros(0), np.zeros(0, int), "s")

    def area(attrs: dict) -> float:
        geo = write_annotations(tmp_path / "a.geojson", *empty, attrs, mask)
        measurements = geo["features"][0]["properties"]["measurements"]
        return measurements["area_level0_px2"], measurements["area_mm2"]

    px2, mm2 = area(
        {"slide_dimensions": [1000, 1000], "slide_mpp": 0.375, "slide_mpp_xy": [0.25, 0.5]}
    )
    assert mm2 == pytest.approx(px2 * 0.25 * 0.5 / 1e6)
    px2, mm2 = area({"slide_dimensions": [1000, 1000], "slide_mpp": 0.5})  # an older store
    assert mm2 == pytest.approx(px2 * 0.25 / 1e6)
