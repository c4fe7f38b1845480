"""patches.geojson: one QuPath tile (a Polygon in level-0 pixels) per patch, with its attention
(the collection's other parts and the writer: :mod:`gigamil.viz.geojson`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


def patch_polygon(x: float, y: float, size: float | tuple[float, float]) -> list[list[list[float]]]:
    """Closed ring of a patch of side ``size`` (or (width, height)), counter-clockwise with y up
    (RFC 7946's right-hand rule)."""
    from gigamil.data.store import patch_sides

    (x, y), (w, h) = (float(x), float(y)), patch_sides(size)
    return [[[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]]


def patches_geojson(
    coords: np.ndarray,
    patch_size_level0: float,
    attention: np.ndarray,
    normalized: np.ndarray,
    slide_id: str,
    *,
    lazy: bool = False,
) -> dict[str, Any]:
    """FeatureCollection of patch polygons with their attention. ``lazy``: ``features`` is a
    generator, for :func:`gigamil.viz.geojson.write_geojson` to write one by one (the heatmap's
    patches.geojson: a list of them took about 4 kB of memory a patch, 1.2 GB for 3 x 10^5).

    Args:
        coords: (N, 2) level-0 x, y of each patch's top-left corner.
        patch_size_level0: patch side in level-0 pixels.
        attention: (N,) raw attention; normalized: (N,) its colour-scale value in [0, 1]
            (:func:`gigamil.viz.scales.scale_attention`).

    Measurements: ``attention``, ``attention_normalized`` (the colour scale's value, which
    classifies the patch high at 0.5 or more), ``attention_relative`` (attention / the slide's
    top attention: where the model looked, whatever the slide's probability; under the default
    probability scale a slide called normal has no high patch) and ``patch_index``.
    """
    top = float(np.max(attention)) if len(attention) else 0.0
    relative = np.asarray(attention, dtype=np.float64) / top if top > 0 else np.zeros(len(coords))

    def features() -> Iterator[dict[str, Any]]:
        for i in range(coords.shape[0]):
            name, colour = _HIGH if normalized[i] >= 0.5 else _LOW
            ring = patch_polygon(coords[i, 0], coords[i, 1], patch_size_level0)
            measurements = {
                "attention": float(attention[i]),
                "attention_normalized": float(normalized[i]),
                "attention_relative": float(relative[i]),
                "patch_index": int(i),
            }
            yield {
                "type": "Feature",
                "id": f"{slide_id}-{i}",
                "geometry": {"type": "Polygon", "coordinates": ring},
                "properties": {
                    "objectType": "tile",
                    "name": f"patch {i}",
                    "isLocked": True,
                    "classification": {"name": name, "color": list(colour)},
                    "measurements": measurements,
                },
            }

    return {"type": "FeatureCollection", "features": features() if lazy else list(features())}


_HIGH, _LOW = ("attention-high", (220, 40, 30)), ("attention-low", (40, 90, 220))
