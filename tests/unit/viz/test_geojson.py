"""QuPath GeoJSON: the tissue mask and the top-k attention patches as annotations, in level-0
pixels, and both GeoJSON files in the form QuPath's reader takes (qupath-core
``PathObjectTypeAdapters``: FeatureCollection, ``objectType``, ``classification: {name, color}``,
``measurements`` as a name -> number object)."""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import numpy as np
import pytest
from fresh_python import modules_loaded_by
from PIL import Image

from gigamil.viz.geojson import (
    _drop_collinear,
    box_regions,
    mask_polygons,
    tissue_features,
    top_region_features,
)
from gigamil.viz.heatmap import HeatmapStyle, make_heatmap

QUPATH_OBJECT_TYPES = {"annotation", "detection", "tile", "cell", "tmaCore"}


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


def _check_ring(ring: Any, exterior: bool) -> None:
    arr = np.asarray(ring, dtype=np.float64)
    assert arr.ndim == 2 and arr.shape[1] == 2 and arr.shape[0] >= 4, "a ring has >= 4 positions"
    assert np.isfinite(arr).all()
    assert (arr[0] == arr[-1]).all(), "rings are closed"
    # RFC 7946 right-hand rule (y up): exteriors counter-clockwise, holes clockwise
    assert (_signed_area(arr) > 0) == exterior


def assert_qupath_geojson(geo: dict[str, Any]) -> None:
    """The structure QuPath's GeoJSON import reads, checked for every feature."""
    assert geo["type"] == "FeatureCollection"
    assert isinstance(geo["features"], list)
    for feat in geo["features"]:
        assert feat["type"] == "Feature"
        if "id" in feat:  # QuPath >= 0.4 keeps an id that is a UUID, and ignores others
            assert isinstance(feat["id"], str)
        geom = feat["geometry"]
        assert geom["type"] in ("Polygon", "MultiPolygon")
        polygons = [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]
        for rings in polygons:
            assert rings, "a polygon has an exterior ring"
            _check_ring(rings[0], exterior=True)
            for hole in rings[1:]:
                _check_ring(hole, exterior=False)
        props = feat["properties"]
        assert props["objectType"] in QUPATH_OBJECT_TYPES
        cls = props["classification"]
        assert isinstance(cls["name"], str) and cls["name"]
        assert isinstance(cls["color"], list) and len(cls["color"]) == 3
        assert all(isinstance(c, int) and 0 <= c <= 255 for c in cls["color"])
        assert isinstance(props["measurements"], dict) and props["measurements"]
        for key, value in props["measurements"].items():
            assert isinstance(key, str)
            assert isinstance(value, int | float) and not isinstance(value, bool)
            assert math.isfinite(value)
        if "name" in props:
            assert isinstance(props["name"], str)
        if "isLocked" in props:
            assert isinstance(props["isLocked"], bool)


def _class(feature: dict[str, Any]) -> str:
    return feature["properties"]["classification"]["name"]


def _bbox(ring: Any) -> list[float]:
    arr = np.asarray(ring)
    return [arr[:, 0].min(), arr[:, 1].min(), arr[:, 0].max(), arr[:, 1].max()]


def test_mask_with_a_hole_maps_to_level0_pixel_edges():
    mask = np.zeros((20, 30), bool)
    mask[2:12, 3:15] = True  # piece 1: 10 x 12 px ...
    mask[5:8, 6:10] = False  # ... with a 3 x 4 px hole
    mask[6, 7] = True  # ... holding a 1-px island
    mask[15:18, 20:26] = True  # piece 2: 3 x 6 px
    fx, fy = 4.0, 2.5  # non-square: x and y scale apart
    polygons = mask_polygons(mask, (fx, fy))
    assert len(polygons) == 3  # the island is its own piece, not a hole of a hole
    big, small, island = polygons  # largest first
    assert len(big) == 2 and len(small) == 1 and len(island) == 1
    # outlines on the pixel edges: pixel (r, c) covers x [c fx, (c+1) fx], y [r fy, (r+1) fy]
    assert _bbox(big[0]) == [3 * fx, 2 * fy, 15 * fx, 12 * fy]
    assert _bbox(big[1]) == [6 * fx, 5 * fy, 10 * fx, 8 * fy]
    assert _bbox(small[0]) == [20 * fx, 15 * fy, 26 * fx, 18 * fy]
    assert _bbox(island[0]) == [7 * fx, 6 * fy, 8 * fx, 7 * fy]
    for rings in polygons:
        _check_ring(rings[0], exterior=True)
        for hole in rings[1:]:
            _check_ring(hole, exterior=False)
    # the area is the pixels' (corners are cut through half a pixel: +- 1/8 px each)
    area = _signed_area(big[0]) + _signed_area(big[1])
    assert area == pytest.approx((120 - 12) * fx * fy, abs=8 * fx * fy / 8)
    assert mask_polygons(np.zeros((4, 4), bool), (1.0, 1.0)) == []


def test_outlines_keep_every_corner_as_douglas_peucker_does_on_small_masks():
    """The rings are what ``skimage.measure.approximate_polygon(tolerance=0.01)`` gave (it is
    no longer used: its module imports scipy.signal, 1.8 s per heatmap job), on random masks
    small enough that Douglas-Peucker drops only collinear vertices; the heatmap's
    modules do not import scipy.signal."""
    from skimage.measure import approximate_polygon, find_contours

    rng = np.random.default_rng(0)
    n_rings = 0
    for _ in range(20):
        mask = rng.random((12, 15)) < 0.55
        padded = np.pad(mask, 1).astype(np.float32)
        for contour in find_contours(padded, 0.5, positive_orientation="high"):
            ring = contour[:, ::-1] - 0.5
            ours, theirs = _drop_collinear(ring), approximate_polygon(ring, tolerance=0.01)
            # the same vertices in the same order, except that Douglas-Peucker keeps the
            # contour's first vertex (an end of its polyline) even where it is collinear
            theirs = _drop_collinear(theirs)
            start = int(np.flatnonzero((ours[:-1] == theirs[0]).all(axis=1))[0])
            rolled = np.roll(ours[:-1], -start, axis=0)
            np.testing.assert_array_equal(rolled, theirs[:-1])
            n_rings += 1
    assert n_rings > 100
    square = np.array([[0, 0], [1, 0], [2, 0], [2, 2], [0, 2], [0, 1], [0, 0]], float)
    np.testing.assert_array_equal(_drop_collinear(square), square[[0, 2, 3, 4, 0]])
    loaded = modules_loaded_by("gigamil.viz.heatmap", "gigamil.viz.geojson")
    assert "scipy.signal" not in loaded


def test_tissue_features_are_classified_annotations_with_areas():
    mask = np.zeros((10, 10), bool)
    mask[2:8, 2:8] = True
    mask[4:6, 4:6] = False
    feats = tissue_features(mask, (2.0, 2.0), "s", mpp=0.5)
    geo = {"type": "FeatureCollection", "features": feats}
    assert_qupath_geojson(geo)
    (feat,) = feats
    props = feat["properties"]
    assert props["objectType"] == "annotation"
    assert props["classification"]["name"] == "Tissue"
    assert props["measurements"]["holes"] == 1
    assert props["measurements"]["area_level0_px2"] == pytest.approx(32 * 4)
    assert props["measurements"]["area_mm2"] == pytest.approx(32 * 4 * 0.25 / 1e6)
    assert feat["id"] == tissue_features(mask, (2.0, 2.0), "s")[0]["id"]  # the same every run


def test_touching_boxes_merge_into_exact_regions():
    s = 443.2  # a resampled patch's side: not a whole number of pixels
    boxes = [
        (0, 0),  # 0: with 1 and 2 an L of three patches
        (s, 0),  # 1: shares an edge with 0
        (0, s),  # 2
        (3 * s, 3 * s),  # 3: alone (touches 4 at a corner only)
        (4 * s, 4 * s),  # 4: alone
        (10 * s, 0),  # 5: with 6, overlapping it by half
        (10.5 * s, 0),  # 6
    ]
    xy = np.array(boxes, dtype=np.float64)
    polygons, region = box_regions(np.column_stack([xy, xy + s]))
    assert region.tolist() == [0, 0, 0, 2, 3, 1, 1]
    ell = polygons[0]
    assert len(ell) == 1
    assert sorted(map(tuple, ell[0][:-1].tolist())) == sorted(
        [(0, 0), (2 * s, 0), (2 * s, s), (s, s), (s, 2 * s), (0, 2 * s)]
    )
    _check_ring(ell[0], exterior=True)
    assert _signed_area(ell[0]) == pytest.approx(3 * s * s)
    assert _bbox(polygons[1][0]) == pytest.approx([10 * s, 0, 11.5 * s, s])
    assert len(polygons[1][0]) == 5  # a plain rectangle: the overlap leaves no extra corners
    # whole-pixel coords of resampled patches leave gaps under 1 px: snap=1 joins them
    xy = np.array([[0, 0], [444, 0], [0, 444]], dtype=np.float64)
    boxes = np.column_stack([xy, xy + s])
    assert box_regions(boxes)[1].tolist() == [0, 1, 2]
    (joined,), region = box_regions(boxes, snap=1.0)
    assert region.tolist() == [0, 0, 0] and len(joined) == 1
    assert _bbox(joined[0]) == pytest.approx([0, 0, 444 + s, 444 + s])
    assert _signed_area(joined[0]) == pytest.approx(3 * s * s, rel=0.01)
    # eight patches around a gap: a ring with a hole
    xy = np.array([(x, y) for x in range(3) for y in range(3) if (x, y) != (1, 1)], float) * s
    (ring,), region = box_regions(np.column_stack([xy, xy + s]))
    assert (region == 0).all() and len(ring) == 2
    _check_ring(ring[0], exterior=True)
    _check_ring(ring[1], exterior=False)
    assert _bbox(ring[1]) == [s, s, 2 * s, 2 * s]


def test_region_features_group_the_top_patches_that_touch():
    coords = np.array([[0, 0], [64, 0], [500, 500], [128, 0], [64, 64]], dtype=np.int64)
    att = np.array([0.1, 0.4, 0.3, 0.05, 0.15])
    top = np.argsort(-att, kind="stable")[:4]  # 1, 2, 4, 0: 1, 4 and 0 touch, 2 is alone
    feats = top_region_features(coords, 64, att, top, "s")
    assert_qupath_geojson({"type": "FeatureCollection", "features": feats})
    (feat,) = feats
    m = feat["properties"]["measurements"]
    assert m == {
        "region": 1,
        "patches": 3,
        "best_rank": 1,
        "attention_sum": pytest.approx(0.65),
        "attention_max": pytest.approx(0.4),
    }
    assert _class(feat) == "Attention top-k region"
    assert _bbox(feat["geometry"]["coordinates"][0]) == [0, 0, 128, 128]


def test_patches_of_a_slide_with_non_square_pixels_are_drawn_with_both_sides():
    """At 0.48 x 0.50 µm/px a patch is 133.3 x 128 level-0 px; every figure used the mean side
    (130.7): side-by-side top patches 133 px apart made no region and the canvas had seams."""
    from gigamil.data.store import patch_size_xy
    from gigamil.viz.canvas import attention_canvas
    from gigamil.viz.geojson import patch_polygon

    attrs = {"patch_size_level0": 130.67, "patch_size_level0_xy": [133.33, 128.0]}
    assert patch_size_xy(attrs) == (133.33, 128.0)
    assert patch_size_xy({"patch_size_level0": 64}) == (64.0, 64.0)  # older stores
    size = patch_size_xy(attrs)
    assert _bbox(patch_polygon(10, 20, size)[0]) == [10, 20, 143.33, 148.0]
    coords = np.array([[1333, 640], [1467, 640], [1333, 768]], dtype=np.int64)
    (region,) = top_region_features(coords, size, np.array([0.5, 0.3, 0.2]), [0, 1, 2], "s")
    assert region["properties"]["measurements"]["patches"] == 3
    canvas = attention_canvas(coords, size, np.ones(3), 0.3, (300, 600))
    lit = np.isfinite(canvas)
    rows, cols = np.flatnonzero(lit.any(axis=1)), np.flatnonzero(lit.any(axis=0))
    assert lit[rows[0] : rows[0] + 35, cols[0] : cols[-1] + 1].all()  # the top row: no seam


def _tissue_png(grid_slide, path, downsample: int = 8) -> np.ndarray:
    """A mask over the whole grid slide: grid rows 1-4, cols 1-6, minus grid cell (2, 3)."""
    w0 = grid_slide.cols * grid_slide.patch + 40
    h0 = grid_slide.rows * grid_slide.patch + 24
    mask = np.zeros((h0 // downsample, w0 // downsample), np.uint8)
    s = grid_slide.patch // downsample
    mask[1 * s : 5 * s, 1 * s : 7 * s] = 255
    mask[2 * s : 3 * s, 3 * s : 4 * s] = 0
    Image.fromarray(mask).save(path)
    return mask


def test_heatmap_writes_tissue_and_top_k_annotations(grid_slide, tmp_path):
    store = tmp_path / "s.zarr"
    coords, _ = grid_slide.write(store)
    _tissue_png(grid_slide, tmp_path / "mask.png")
    att = np.random.default_rng(3).random(len(coords)).astype(np.float32)
    att /= att.sum()
    out = tmp_path / "hm"
    info = make_heatmap(
        store,
        att,
        out,
        tissue_mask=tmp_path / "mask.png",
        style=HeatmapStyle(normalize="minmax", top_k=5, thumb_px=128),
    )
    patches = json.loads((out / "patches.geojson").read_text())
    geo = json.loads((out / "annotations.geojson").read_text())
    assert_qupath_geojson(patches)
    assert_qupath_geojson(geo)
    assert len(patches["features"]) == len(coords)  # today's file is unchanged beside it

    tissue = [f for f in geo["features"] if f["properties"]["classification"]["name"] == "Tissue"]
    top = [f for f in geo["features"] if _class(f) == "Attention top-k"]
    (piece,) = tissue
    rings = piece["geometry"]["coordinates"]
    p = grid_slide.patch  # the mask's 8 px = one grid cell = 64 level-0 px
    assert _bbox(rings[0]) == [1 * p, 1 * p, 7 * p, 5 * p]
    assert len(rings) == 2 and _bbox(rings[1]) == [3 * p, 2 * p, 4 * p, 3 * p]
    assert piece["properties"]["objectType"] == "annotation"
    for feat in geo["features"]:
        uuid.UUID(feat["id"])  # ids QuPath keeps

    # the top k: the k highest-attention patches, highest first, each on its patch
    expected = np.argsort(-att, kind="stable")[:5]
    assert [f["properties"]["measurements"]["patch_index"] for f in top] == expected.tolist()
    assert info["top"] == expected.tolist()
    for rank, (feat, i) in enumerate(zip(top, expected, strict=True), start=1):
        props = feat["properties"]
        assert props["objectType"] == "annotation"
        assert props["classification"]["name"] == "Attention top-k"
        assert props["classification"]["color"] != piece["properties"]["classification"]["color"]
        assert props["measurements"]["rank"] == rank
        assert props["measurements"]["attention"] == pytest.approx(float(att[i]))
        assert props["measurements"]["attention_x_n"] == pytest.approx(float(att[i]) * len(att))
        assert 0.0 <= props["measurements"]["attention_normalized"] <= 1.0
        x, y = coords[i]
        assert _bbox(feat["geometry"]["coordinates"][0]) == [x, y, x + p, y + p]
    values = [f["properties"]["measurements"]["attention"] for f in top]
    assert values == sorted(values, reverse=True) and min(values) >= np.sort(att)[-5]


def test_annotations_without_a_mask_or_patches(grid_slide, tmp_path):
    store = tmp_path / "e.zarr"
    grid_slide.write(store, keep=[])
    _tissue_png(grid_slide, tmp_path / "mask.png")
    make_heatmap(
        store,
        np.zeros(0, np.float32),
        tmp_path / "a",
        tissue_mask=tmp_path / "mask.png",
        style=HeatmapStyle(thumb_px=64),
    )
    geo = json.loads((tmp_path / "a" / "annotations.geojson").read_text())
    assert_qupath_geojson(geo)
    assert [f["properties"]["classification"]["name"] for f in geo["features"]] == ["Tissue"]
    store2 = tmp_path / "f.zarr"
    coords, _ = grid_slide.write(store2)
    att = np.linspace(0, 1, len(coords), dtype=np.float32)
    make_heatmap(store2, att, tmp_path / "b", style=HeatmapStyle(top_k=3, thumb_px=64))
    geo = json.loads((tmp_path / "b" / "annotations.geojson").read_text())
    assert_qupath_geojson(geo)
    # the top 3 are the last three cells of the bottom row: one region of 3 patches under them
    names = [f["properties"]["name"] for f in geo["features"]]
    assert names == ["attention region 1", "attention #1", "attention #2", "attention #3"]
    region = geo["features"][0]
    assert _class(region) == "Attention top-k region"
    assert region["properties"]["measurements"]["patches"] == 3
    p = grid_slide.patch
    assert region["geometry"]["coordinates"] == [
        [[8 * p, 6 * p], [5 * p, 6 * p], [5 * p, 5 * p], [8 * p, 5 * p], [8 * p, 6 * p]]
    ]


def test_cli_heatmap_writes_annotations_with_the_tissue_mask(grid_slide, tmp_path):
    from gigamil.cli import main

    store = tmp_path / "c.zarr"
    coords, _ = grid_slide.write(store)
    _tissue_png(grid_slide, tmp_path / "mask.png")
    att = np.zeros(len(coords), np.float32)
    att[[4, 9]] = (1.0, 0.5)
    np.save(tmp_path / "a.npy", att)
    args = ["heatmap", "--store", str(store), "--attention", str(tmp_path / "a.npy")]
    args += ["--out", str(tmp_path / "hm"), "--tissue-mask", str(tmp_path / "mask.png")]
    assert main([*args, "--top-k", "2", "--thumb-px", "64"]) == 0
    geo = json.loads((tmp_path / "hm" / "annotations.geojson").read_text())
    assert_qupath_geojson(geo)
    classes = [f["properties"]["classification"]["name"] for f in geo["features"]]
    assert classes == ["Tissue", "Attention top-k", "Attention top-k"]
    assert [f["properties"]["measurements"]["patch_index"] for f in geo["features"][1:]] == [4, 9]


def test_patch_tiles_carry_the_attention_relative_to_the_slides_top():
    """attention_normalized (the overlay's scale) is P(positive) x relative attention by default,
    so a missed lesion slide had no high tile to show where the model looked; the relative
    attention shows it whatever the prediction."""
    from gigamil.viz.geojson import patches_geojson

    coords = np.array([[0, 0], [96, 0], [192, 0]])
    attention = np.array([0.2, 0.5, 0.3])
    normalized = 0.3 * attention / attention.max()  # a slide at P(lesion) = 0.3
    geo = patches_geojson(coords, 96.0, attention, normalized, "s")
    measured = [f["properties"]["measurements"] for f in geo["features"]]
    assert [m["attention_relative"] for m in measured] == pytest.approx([0.4, 1.0, 0.6])
    assert {f["properties"]["classification"]["name"] for f in geo["features"]} == {"attention-low"}
    assert patches_geojson(coords[:0], 96.0, attention[:0], normalized[:0], "e")["features"] == []


def test_patch_tiles_are_high_from_0_5_and_coloured_by_class():
    """patches.geojson classifies a tile ``attention-high`` (red) at a colour-scale value of 0.5
    or more, ``attention-low`` (blue) below (a constant slide under minmax is exactly 0.5); each
    tile has its own id."""
    from gigamil.viz.geojson import patches_geojson

    coords = np.array([[0, 0], [96, 0], [192, 0]])
    geo = patches_geojson(coords, 96.0, np.ones(3) / 3, np.array([0.5, 0.4999, 0.9]), "s")
    classes = [f["properties"]["classification"] for f in geo["features"]]
    assert [c["name"] for c in classes] == ["attention-high", "attention-low", "attention-high"]
    high, low = classes[0]["color"], classes[1]["color"]
    assert high[0] > high[2] and low[2] > low[0]  # red, blue
    assert len({f["id"] for f in geo["features"]}) == 3


def test_a_hole_belongs_to_the_smallest_piece_around_it():
    """A ring of tissue inside another ring's hole: its own hole is inside both exteriors and
    belongs to the inner piece (the smallest around it), not to the outer one."""
    mask = np.zeros((22, 22), bool)
    mask[1:21, 1:21] = True
    mask[3:19, 3:19] = False  # outer ring, hole 16 x 16
    mask[6:16, 6:16] = True
    mask[9:13, 9:13] = False  # inner ring, hole 4 x 4
    outer, inner = mask_polygons(mask, (1.0, 1.0))  # largest first
    assert len(outer) == 2 and len(inner) == 2
    assert _bbox(outer[1]) == [3, 3, 19, 19]
    assert _bbox(inner[0]) == [6, 6, 16, 16] and _bbox(inner[1]) == [9, 9, 13, 13]


def test_top_patches_one_level0_pixel_apart_still_form_one_region():
    """Whole-pixel coords of resampled patches leave up to 1 level-0 px between neighbours:
    a gap of exactly 1 px still joins them into one region, outlined over the gap."""
    coords = np.array([[0, 0], [65, 0]], dtype=np.int64)  # 64-px patches, 1 px apart
    (feat,) = top_region_features(coords, 64, np.array([0.6, 0.4]), np.array([0, 1]), "s")
    assert feat["properties"]["measurements"]["patches"] == 2
    (ring,) = feat["geometry"]["coordinates"]
    assert sorted({tuple(p) for p in ring}) == [(0, 0), (0, 64), (129, 0), (129, 64)]


def test_patches_geojson_is_written_feature_by_feature_in_little_memory(tmp_path):
    """patches.geojson held every patch's Feature (about 4 kB of Python objects each) and its
    whole text at once: 930 MB peak for a slide of 2 x 10^5 patches, past the heatmap rule's
    2000 MB at about 4.5 x 10^5. Written from a generator it takes little more than the arrays,
    and the bytes are those of the list."""
    import json
    import tracemalloc

    from gigamil.viz.geojson import patch_polygon, patches_geojson, write_geojson

    patch_polygon(0, 0, 1.0)  # its lazy import outside the count
    n = 4000
    coords = np.stack([np.arange(n) % 64, np.arange(n) // 64], axis=1) * 224
    att = np.linspace(1.0, 2.0, n) / n
    args = (coords, 224.0, att, att / att.max(), "s")
    tracemalloc.start()
    try:
        write_geojson(patches_geojson(*args, lazy=True), tmp_path / "lazy.geojson")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"{peak / 1e6:.1f} MB for {n} patches"  # the list: about 8 MB
    write_geojson(patches_geojson(*args), tmp_path / "list.geojson")
    assert (tmp_path / "lazy.geojson").read_bytes() == (tmp_path / "list.geojson").read_bytes()
    assert len(json.loads((tmp_path / "lazy.geojson").read_text())["features"]) == n
    empty = patches_geojson(coords[:0], 224.0, att[:0], att[:0], "e", lazy=True)
    write_geojson(empty, tmp_path / "e.geojson")
    assert json.loads((tmp_path / "e.geojson").read_text())["features"] == []
