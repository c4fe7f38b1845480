"""GeoJSON export of patch attention for QuPath (File > Import objects).

A FeatureCollection with one Polygon per patch in level-0 pixel coordinates (x to the right, y
down, origin at the slide's top-left: QuPath's image space). Each feature's properties carry
``objectType: "tile"``, a ``classification`` (``attention-high`` / ``attention-low`` by the
normalised value, so QuPath colours them) and ``measurements`` with the raw and normalised
attention, which QuPath shows in its measurement table and can colour by.
"""

from __future__ import annotations

import json
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
