"""annotations.geojson of a heatmap: the tissue mask, the top-k patches and their regions as
QuPath annotations (the GeoJSON itself is :mod:`gigamil.viz.geojson`'s), in level-0 pixels."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gigamil.viz.geojson import (
    annotations_geojson,
    tissue_features,
    top_attention_features,
    top_region_features,
    write_geojson,
)
from gigamil.viz.masks import PlacedMask

log = logging.getLogger(__name__)


def mask_downsample(
    mask_shape: tuple[int, int],
    attrs: Mapping[str, Any],
    mask_path: str | Path | None = None,
) -> tuple[float, float] | None:
    """Level-0 pixels per tissue-mask pixel in x and y, or None if unknown.

    A tissue mask covers the whole slide (:func:`gigamil.wsi.raster.read_raster_image`: level-0
    width / mask width, height / mask height), so the slide's level-0 dimensions give the exact
    scale: the store's ``slide_dimensions``, else those in the mask's JSON sidecar.
    """
    dims = attrs.get("slide_dimensions")
    if not dims and mask_path is not None:
        import json

        from gigamil.wsi.mask_io import mask_sidecar

        sidecar = mask_sidecar(mask_path)
        if sidecar.is_file():
            try:
                dims = json.loads(sidecar.read_text()).get("slide_dimensions")
            except (OSError, ValueError):
                dims = None
    if not dims or min(mask_shape) < 1:
        return None
    return float(dims[0]) / mask_shape[1], float(dims[1]) / mask_shape[0]


def write_annotations(  # noqa: PLR0913 - the heatmap's pieces
    path: str | Path,
    coords: np.ndarray,
    patch_size_level0: float,
    attention: np.ndarray,
    normalized: np.ndarray,
    top: np.ndarray,
    slide_id: str,
    attrs: Mapping[str, Any],
    tissue: np.ndarray | PlacedMask | None,
    tissue_mask: str | Path | None = None,
    lesion: tuple[np.ndarray | PlacedMask | None, str | Path | None] = (None, None),
) -> dict[str, Any]:
    """Write annotations.geojson: the tissue mask (if given and the slide's level-0 size is
    known; a :class:`~gigamil.viz.masks.PlacedMask` brings its own downsample), the ground-truth lesion mask (``lesion``: the bool mask and its PNG, if given;
    class ``Lesion (ground truth)``, cyan as the gallery's lesion frames, so a QuPath review
    compares where the model looked with the truth), the patches ``top`` and the regions where
    they touch as QuPath annotations (:mod:`gigamil.viz.geojson`)."""
    tissue_annotations = _mask_features(tissue, tissue_mask, attrs, slide_id, "tissue")
    lesion_annotations = _mask_features(*lesion, attrs, slide_id, "lesion")
    for i, feat in enumerate(lesion_annotations, start=1):
        feat["properties"].update(name=f"lesion {i}", classification=dict(LESION_CLASS))
    top_annotations = top_attention_features(
        coords, patch_size_level0, attention, normalized, top, slide_id
    )
    regions = top_region_features(coords, patch_size_level0, attention, top, slide_id)
    geo = annotations_geojson(tissue_annotations, lesion_annotations, regions, top_annotations)
    write_geojson(geo, path)
    return geo


LESION_CLASS = {"name": "Lesion (ground truth)", "color": [0, 200, 255]}


def _mask_features(
    mask: np.ndarray | PlacedMask | None,
    mask_path: str | Path | None,
    attrs: Mapping[str, Any],
    slide_id: str,
    kind: str,
) -> list[dict[str, Any]]:
    """A whole-slide mask's pieces as annotations (:func:`tissue_features`; a lesion mask's ids
    differ from the tissue's), or none when there is no mask or the slide's size is unknown."""
    if mask is None:
        return []
    if isinstance(mask, PlacedMask):  # placed by the heatmap (gigamil.viz.masks)
        mask, downsample = mask.mask, mask.downsample
    else:
        downsample = mask_downsample(mask.shape, attrs, mask_path)
    if downsample is None:
        log.warning(
            "%s: the slide's level-0 size is unknown (no slide_dimensions in the store or "
            "the mask's JSON), so annotations.geojson has no %s outline%s",
            slide_id,
            kind,
            " and overlay.png is not clipped to the tissue" if kind == "tissue" else "",
        )
        return []
    owner = slide_id if kind == "tissue" else f"{slide_id}:{kind}"  # the tissue's ids as before
    return tissue_features(mask, downsample, owner, area_mpp(attrs))


def area_mpp(attrs: dict) -> float | None:
    """The µm/px whose square is a level-0 pixel's area: sqrt(x × y) of the store's
    ``slide_mpp_xy`` (non-square pixels: the mean ``slide_mpp`` would overstate the area, by
    12.5 % at 0.25 × 0.5), else ``slide_mpp``; None when the store records neither."""
    xy = attrs.get("slide_mpp_xy")
    if isinstance(xy, list | tuple) and len(xy) == 2 and all(_positive(v) for v in xy):
        return math.sqrt(float(xy[0]) * float(xy[1]))
    mpp = attrs.get("slide_mpp")
    return float(mpp) if _positive(mpp) else None


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0
