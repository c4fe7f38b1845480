"""GeoJSON export of patch attention, the tissue mask and the top-k patches for QuPath
(File > Import objects).

Coordinates are level-0 pixels (x to the right, y down, origin at the slide's top-left: QuPath's
image space). Every feature carries what QuPath's GeoJSON reader takes (``PathObjectTypeAdapters``
in qupath-core): ``properties.objectType`` (``tile``, ``annotation``, ...), ``name``,
``classification: {name, color: [r, g, b]}`` (the class QuPath colours the object by),
``isLocked`` and ``measurements`` (a name -> number object, shown in QuPath's measurement table).

- :func:`patches_geojson` (``patches.geojson``): one Polygon per patch, ``objectType: "tile"``,
  classified ``attention-high`` / ``attention-low`` by the normalised value, with the raw and
  normalised attention as measurements.
- :func:`annotations_geojson` (``annotations.geojson``): annotations for QuPath's annotation
  list: the tissue mask (class ``Tissue``, one Polygon with its holes per connected piece) and the
  ``top_k`` highest-attention patches (class ``Attention top-k``, with their rank).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def patch_polygon(x: float, y: float, size: float) -> list[list[list[float]]]:
    """Closed ring of a square patch, counter-clockwise with y up (RFC 7946's right-hand rule)."""
    x, y, s = float(x), float(y), float(size)
    return [[[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]]


def patches_geojson(
    coords: np.ndarray,
    patch_size_level0: float,
    attention: np.ndarray,
    normalized: np.ndarray,
    slide_id: str,
) -> dict[str, Any]:
    """FeatureCollection of patch polygons with their attention.

    Args:
        coords: (N, 2) level-0 x, y of each patch's top-left corner.
        patch_size_level0: patch side in level-0 pixels.
        attention: (N,) raw attention; normalized: (N,) its colour-scale value in [0, 1]
            (:func:`gigamil.viz.heatmap.scale_attention`).
    """
    features = []
    for i in range(coords.shape[0]):
        high = bool(normalized[i] >= 0.5)
        features.append(
            {
                "type": "Feature",
                "id": f"{slide_id}-{i}",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": patch_polygon(coords[i, 0], coords[i, 1], patch_size_level0),
                },
                "properties": {
                    "objectType": "tile",
                    "name": f"patch {i}",
                    "isLocked": True,
                    "classification": {
                        "name": "attention-high" if high else "attention-low",
                        "color": [220, 40, 30] if high else [40, 90, 220],
                    },
                    "measurements": {
                        "attention": float(attention[i]),
                        "attention_normalized": float(normalized[i]),
                        "patch_index": int(i),
                    },
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


TISSUE_CLASS = {"name": "Tissue", "color": [0, 170, 80]}
TOP_K_CLASS = {"name": "Attention top-k", "color": [255, 0, 200]}
_ID_NAMESPACE = uuid.UUID("5b1d2c7e-6f0a-4a39-9e43-2f4c7f1d9a10")  # gigamil annotations


def _feature_id(*parts: object) -> str:
    """A UUID (what QuPath >= 0.4 reads as the object's id), the same on every run."""
    return str(uuid.uuid5(_ID_NAMESPACE, "/".join(map(str, parts))))


def _signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a closed (M, 2) x, y ring: positive when counter-clockwise with y up."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


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
    from skimage.measure import approximate_polygon, find_contours, points_in_poly

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return []
    fx, fy = float(downsample[0]), float(downsample[1])
    padded = np.pad(mask, 1).astype(np.float32)  # every outline closes inside the padding
    exteriors: list[np.ndarray] = []
    holes: list[np.ndarray] = []
    for contour in find_contours(padded, 0.5, positive_orientation="high"):
        # (row, col) of the padded mask -> x, y in mask pixels, then level-0 pixels
        ring = approximate_polygon(contour[:, ::-1] - 0.5, tolerance=0.01)
        if ring.shape[0] < 4:
            continue
        ring = ring * (fx, fy)
        # with y down, positive_orientation "high" winds clockwise (y up) around tissue
        if _signed_area(ring) < 0:
            exteriors.append(ring[::-1])
        else:
            holes.append(ring[::-1])
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
        mpp: the slide's level-0 µm/px, for the area in mm² (None: level-0 px² only).
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


def annotations_geojson(tissue: list[dict[str, Any]], top: list[dict[str, Any]]) -> dict[str, Any]:
    """FeatureCollection of the tissue annotations, then the top-k ones (drawn on top)."""
    return {"type": "FeatureCollection", "features": [*tissue, *top]}


def write_geojson(data: dict[str, Any], path: str | Path) -> None:
    """Write compact GeoJSON (one line per feature keeps large files diff- and grep-friendly)."""
    path = Path(path)
    with path.open("w") as fh:
        fh.write('{"type": "FeatureCollection", "features": [\n')
        feats = data["features"]
        for i, feat in enumerate(feats):
            fh.write(json.dumps(feat, separators=(",", ":"), allow_nan=False))
            fh.write(",\n" if i < len(feats) - 1 else "\n")
        fh.write("]}\n")
