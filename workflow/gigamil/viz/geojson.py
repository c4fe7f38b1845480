"""GeoJSON export of patch attention, the tissue mask and the top-k patches for QuPath
(File > Import objects).

Coordinates are level-0 pixels (x to the right, y down, origin at the slide's top-left: QuPath's
image space). Every feature carries what QuPath's GeoJSON reader takes (``PathObjectTypeAdapters``
in qupath-core): ``properties.objectType`` (``tile``, ``annotation``, ...), ``name``,
``classification: {name, color: [r, g, b]}`` (the class QuPath colours the object by),
``isLocked`` and ``measurements`` (a name -> number object, shown in QuPath's measurement table).

- :func:`patches_geojson` (``patches.geojson``; :mod:`gigamil.viz.tiles_geojson`): one Polygon
  per patch, ``objectType: "tile"``, classified ``attention-high`` / ``attention-low`` by the normalised value, with the raw and
  normalised attention as measurements.
- :func:`annotations_geojson` (``annotations.geojson``): annotations for QuPath's annotation
  list: the tissue mask (class ``Tissue``, one Polygon with its holes per connected piece), the
  ``top_k`` highest-attention patches (class ``Attention top-k``, with their rank) and, where
  two or more of them overlap or touch, their merged outline (class ``Attention top-k region``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gigamil.fileutil import atomic_write_chunks
from gigamil.viz.tiles_geojson import patch_polygon, patches_geojson  # noqa: F401 - re-exported

TISSUE_CLASS = {"name": "Tissue", "color": [0, 170, 80]}
TOP_K_CLASS = {"name": "Attention top-k", "color": [255, 0, 200]}
REGION_CLASS = {"name": "Attention top-k region", "color": [140, 0, 120]}
_ID_NAMESPACE = uuid.UUID("5b1d2c7e-6f0a-4a39-9e43-2f4c7f1d9a10")  # gigamil annotations


def _feature_id(*parts: object) -> str:
    """A UUID (what QuPath >= 0.4 reads as the object's id), the same on every run."""
    return str(uuid.uuid5(_ID_NAMESPACE, "/".join(map(str, parts))))


def _signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a closed (M, 2) x, y ring: positive when counter-clockwise with y up."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """A closed ring (M, 2) without the vertices that lie on the straight line through their
    two neighbours (cross product below 1e-9: both kinds of ring here, marching-squares midpoints
    and pixel corners, lie on the half-pixel grid, so collinearity is exact), closed again. This is what
    ``skimage.measure.approximate_polygon(ring, tolerance=0.01)`` did here, except that
    Douglas-Peucker may also drop a real corner of a long shallow staircase; and it spares each
    heatmap job the 1.8 s import of ``scipy.signal`` that ``skimage.measure._polygon`` makes."""
    pts = ring[:-1]  # the ring repeats its first vertex at the end
    if len(pts) < 3:
        return ring
    prev, nxt = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
    a, b = pts - prev, nxt - pts
    turn = np.abs(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]) > 1e-9
    kept = pts[turn]
    return np.vstack([kept, kept[:1]])


def _outline_rings(mask: np.ndarray, exact: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Exterior rings (counter-clockwise with y up) and hole rings (clockwise) of a binary mask,
    as closed (M, 2) x, y arrays in pixel-edge units (x = 0 .. W, y = 0 .. H); the mask's
    ``True`` pixels are 4-connected.

    Marching squares (:func:`skimage.measure.find_contours` at 0.5) passes through the midpoints
    of the pixel edges between mask and background, cutting each corner through half a pixel;
    ``exact`` replaces each step between two midpoints by the pixel corner they turn around,
    which gives the outline along the pixel edges exactly (collinear corners dropped).
    """
    from skimage.measure import find_contours

    mask = np.asarray(mask, dtype=bool)
    exteriors: list[np.ndarray] = []
    holes: list[np.ndarray] = []
    if not mask.any():
        return exteriors, holes
    padded = np.pad(mask, 1).astype(np.float32)  # every outline closes inside the padding
    for contour in find_contours(padded, 0.5, positive_orientation="high"):
        if exact:
            # consecutive midpoints share one marching square, whose centre is the corner
            # floor(min) + 0.5 in padded pixel-centre units = floor(min) in edge units
            ring = np.floor(np.minimum(contour[:-1], contour[1:]))[:, ::-1]
            ring = _drop_collinear(np.vstack([ring, ring[:1]]))  # keep the corners that turn
        else:
            # (row, col) in padded pixel-centre units -> x, y in edge units
            ring = _drop_collinear(contour[:, ::-1] - 0.5)
        if ring.shape[0] < 4:
            continue
        # with y down, positive_orientation "high" winds clockwise (y up) around the mask
        if _signed_area(ring) < 0:
            exteriors.append(ring[::-1])
        else:
            holes.append(ring[::-1])
    return exteriors, holes


def mask_polygons(mask: np.ndarray, downsample: tuple[float, float]) -> list[list[np.ndarray]]:
    """The outlines of a binary mask as polygons in level-0 pixels.

    Mask pixel (row r, column c) covers level-0 x in [c fx, (c + 1) fx] and y in
    [r fy, (r + 1) fy] (``downsample`` = (fx, fy) level-0 px per mask px; the mask covers the
    whole slide). The outlines run along the pixel edges, cutting each corner diagonally through
    half a pixel (marching squares, :func:`skimage.measure.find_contours` at 0.5); tissue is
    4-connected.

    Returns:
        One polygon per connected piece, largest first: a list of closed (M, 2) x, y rings, the
        exterior first (counter-clockwise with y up, RFC 7946) then its holes (clockwise).
    """
    from skimage.measure import points_in_poly

    fx, fy = float(downsample[0]), float(downsample[1])
    exteriors, holes = _outline_rings(mask, exact=False)
    exteriors = [r * (fx, fy) for r in exteriors]
    holes = [r * (fx, fy) for r in holes]
    exteriors.sort(key=_signed_area, reverse=True)
    areas = [_signed_area(r) for r in exteriors]
    polygons: list[list[np.ndarray]] = [[r] for r in exteriors]
    for hole in holes:
        # the hole belongs to the smallest exterior around it (pieces may lie inside holes)
        x, y = hole[0]
        inside = [
            i
            for i, ext in enumerate(exteriors)
            if ext[:, 0].min() <= x <= ext[:, 0].max()
            and ext[:, 1].min() <= y <= ext[:, 1].max()
            and points_in_poly(hole[:1], ext)[0]
        ]
        if inside:
            polygons[min(inside, key=lambda i: areas[i])].append(hole)
    return polygons


def _snapped_edges(values: np.ndarray, snap: float) -> np.ndarray:
    """The distinct values, those less than ``snap`` above the previous kept one dropped."""
    v = np.unique(values)
    if snap <= 0 or v.size < 2:
        return v
    keep = [0]
    for i in range(1, v.size):
        if v[i] - v[keep[-1]] > snap:
            keep.append(i)
    return v[keep]


def box_regions(boxes: np.ndarray, snap: float = 0.0) -> tuple[list[list[np.ndarray]], np.ndarray]:
    """The union of axis-aligned boxes, one polygon per connected region, exactly.

    Boxes that overlap or share an edge form one region (corner contact does not join). The
    union is traced on the grid of the boxes' distinct edges (coordinate compression), so it is
    exact for any coordinates; edges at most ``snap`` apart are first moved onto the lower one,
    so boxes that leave a gap of up to ``snap`` between them join too.

    Args:
        boxes: (M, 4) x0, y0, x1, y1 (x0 < x1, y0 < y1, sides longer than ``snap``).

    Returns:
        (polygons, region): the regions' polygons (exterior then holes, as
        :func:`mask_polygons`) and the region index of each box.
    """
    from scipy import ndimage

    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if boxes.shape[0] == 0:
        return [], np.zeros(0, dtype=np.int64)
    xe = _snapped_edges(boxes[:, [0, 2]], snap)
    ye = _snapped_edges(boxes[:, [1, 3]], snap)
    cols = np.searchsorted(xe, boxes[:, [0, 2]], side="right") - 1
    rows = np.searchsorted(ye, boxes[:, [1, 3]], side="right") - 1
    cells = np.zeros((ye.size - 1, xe.size - 1), dtype=bool)
    for (c0, c1), (r0, r1) in zip(cols, rows, strict=True):
        cells[r0:r1, c0:c1] = True
    labels, n = ndimage.label(cells)  # 4-connected, as the outlines
    region = labels[rows[:, 0], cols[:, 0]] - 1
    polygons = []
    for lab in range(1, n + 1):
        exteriors, holes = _outline_rings(labels == lab, exact=True)
        rings = [*exteriors[:1], *holes]  # one exterior: a 4-connected region
        polygons.append(
            [
                np.column_stack([xe[r[:, 0].astype(np.int64)], ye[r[:, 1].astype(np.int64)]])
                for r in rings
            ]
        )
    return polygons, region


def _rings_json(rings: Sequence[np.ndarray]) -> list[list[list[float]]]:
    """Rings as GeoJSON positions, rounded to 1/100 level-0 pixel (still closed)."""
    return [np.round(np.asarray(r, dtype=np.float64), 2).tolist() for r in rings]


def tissue_features(
    mask: np.ndarray,
    downsample: tuple[float, float],
    slide_id: str,
    mpp: float | None = None,
) -> list[dict[str, Any]]:
    """The tissue mask as QuPath annotations classified ``Tissue``, one per connected piece.

    Args:
        mask: (H, W) bool tissue mask covering the whole slide.
        downsample: (fx, fy) level-0 pixels per mask pixel.
        mpp: the side in µm of a level-0 pixel's area (sqrt(x × y) µm/px), for mm² (or None).
    """
    features = []
    for i, rings in enumerate(mask_polygons(mask, downsample)):
        area = _signed_area(rings[0]) + sum(_signed_area(h) for h in rings[1:])
        measurements: dict[str, float | int] = {
            "piece": i + 1,
            "holes": len(rings) - 1,
            "area_level0_px2": round(area, 2),
        }
        if mpp:
            measurements["area_mm2"] = area * float(mpp) ** 2 / 1e6
        features.append(
            {
                "type": "Feature",
                "id": _feature_id(slide_id, "tissue", i),
                "geometry": {"type": "Polygon", "coordinates": _rings_json(rings)},
                "properties": {
                    "objectType": "annotation",
                    "name": f"tissue {i + 1}",
                    "classification": dict(TISSUE_CLASS),
                    "measurements": measurements,
                },
            }
        )
    return features


def top_attention_features(
    coords: np.ndarray,
    patch_size_level0: float,
    attention: np.ndarray,
    normalized: np.ndarray,
    top: Sequence[int] | np.ndarray,
    slide_id: str,
) -> list[dict[str, Any]]:
    """The patches ``top`` (highest attention first) as locked QuPath annotations classified
    ``Attention top-k``, with their rank (1 = highest), attention, normalised attention (the
    overlay's colour value), attention x N (1 = uniform) and patch index as measurements."""
    n = int(coords.shape[0])
    features = []
    for rank, i in enumerate(np.asarray(top, dtype=np.int64).tolist(), start=1):
        features.append(
            {
                "type": "Feature",
                "id": _feature_id(slide_id, "top", i),
                "geometry": {
                    "type": "Polygon",
                    "coordinates": patch_polygon(coords[i, 0], coords[i, 1], patch_size_level0),
                },
                "properties": {
                    "objectType": "annotation",
                    "name": f"attention #{rank}",
                    "isLocked": True,
                    "classification": dict(TOP_K_CLASS),
                    "measurements": {
                        "rank": rank,
                        "attention": float(attention[i]),
                        "attention_normalized": float(normalized[i]),
                        "attention_x_n": float(attention[i]) * n,
                        "patch_index": int(i),
                    },
                },
            }
        )
    return features


def top_region_features(
    coords: np.ndarray,
    patch_size_level0: float,
    attention: np.ndarray,
    top: Sequence[int] | np.ndarray,
    slide_id: str,
) -> list[dict[str, Any]]:
    """Regions of two or more of the patches ``top`` (highest attention first) that overlap or
    share an edge (within 1 level-0 px), merged into one outline each (:func:`box_regions`): QuPath annotations
    classified ``Attention top-k region``, with the number of patches, the best (lowest) rank
    and the sum and maximum of their attention. Lone patches make no region."""
    from gigamil.data.store import patch_sides

    top = np.asarray(top, dtype=np.int64).reshape(-1)
    s = np.asarray(patch_sides(patch_size_level0))  # (width, height)
    xy = np.asarray(coords, dtype=np.float64)[top].reshape(-1, 2)
    # a resampled patch's side is fractional (e.g. 443.2 px) but the store's coords are whole
    # pixels, so neighbours may leave up to 1 px between them: they still touch
    polygons, region = box_regions(np.column_stack([xy, xy + s]), snap=1.0)
    groups = [np.flatnonzero(region == r) for r in range(len(polygons))]  # ranks - 1, ascending
    order = sorted((g[0], r) for r, g in enumerate(groups) if g.size >= 2)
    features = []
    for n, (_, r) in enumerate(order, start=1):
        att = attention[top[groups[r]]].astype(np.float64)
        features.append(
            {
                "type": "Feature",
                "id": _feature_id(slide_id, "region", *top[groups[r]].tolist()),
                "geometry": {"type": "Polygon", "coordinates": _rings_json(polygons[r])},
                "properties": {
                    "objectType": "annotation",
                    "name": f"attention region {n}",
                    "isLocked": True,
                    "classification": dict(REGION_CLASS),
                    "measurements": {
                        "region": n,
                        "patches": int(groups[r].size),
                        "best_rank": int(groups[r][0]) + 1,
                        "attention_sum": float(att.sum()),
                        "attention_max": float(att.max()),
                    },
                },
            }
        )
    return features


def annotations_geojson(*groups: list[dict[str, Any]]) -> dict[str, Any]:
    """FeatureCollection of the given features in order (tissue, then regions, then the top-k
    patches: later ones are drawn on top)."""
    return {"type": "FeatureCollection", "features": [f for g in groups for f in g]}


def write_geojson(data: dict[str, Any], path: str | Path) -> None:
    """Write compact GeoJSON (one line per feature keeps large files diff- and grep-friendly),
    feature by feature (``data["features"]`` may be a generator: ``patches_geojson(...,
    lazy=True)``, so a slide's 10^5 patches are never all in memory) and atomically
    (:func:`gigamil.fileutil.atomic_write_chunks`): a failure (e.g. a value JSON cannot hold)
    leaves no cut-off file. Raises ValueError for NaN or infinite values."""

    def chunks() -> Iterator[bytes]:
        head = b'{"type": "FeatureCollection", "features": [\n'
        for feat in data["features"]:  # the header before the first, a comma before the others
            yield head + json.dumps(feat, separators=(",", ":"), allow_nan=False).encode()
            head = b",\n"
        yield b"\n]}\n" if head == b",\n" else head + b"]}\n"

    atomic_write_chunks(Path(path), chunks())
