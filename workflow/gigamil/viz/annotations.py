"""annotations.geojson of a heatmap: the tissue mask, the top-k patches and their regions as
QuPath annotations (the GeoJSON itself is :mod:`gigamil.viz.geojson`'s), in level-0 pixels."""

from __future__ import annotations

import logging
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

        sidecar = Path(mask_path).with_suffix(".json")
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
    tissue: np.ndarray | None,
    tissue_mask: str | Path | None = None,
) -> dict[str, Any]:
    """Write annotations.geojson: the tissue mask (if given and the slide's level-0 size is
    known), the patches ``top`` and the regions where they touch as QuPath annotations
    (:mod:`gigamil.viz.geojson`)."""
    tissue_annotations: list[dict[str, Any]] = []
    if tissue is not None:
        downsample = mask_downsample(tissue.shape, attrs, tissue_mask)
        if downsample is None:
            log.warning(
                "%s: the slide's level-0 size is unknown (no slide_dimensions in the store or "
                "the mask's JSON), so annotations.geojson has no tissue outline",
                slide_id,
            )
        else:
            slide_mpp = attrs.get("slide_mpp")
            mpp = float(slide_mpp) if isinstance(slide_mpp, int | float) and slide_mpp > 0 else None
            tissue_annotations = tissue_features(tissue, downsample, slide_id, mpp)
    top_annotations = top_attention_features(
        coords, patch_size_level0, attention, normalized, top, slide_id
    )
    regions = top_region_features(coords, patch_size_level0, attention, top, slide_id)
    geo = annotations_geojson(tissue_annotations, regions, top_annotations)
    write_geojson(geo, path)
    return geo
