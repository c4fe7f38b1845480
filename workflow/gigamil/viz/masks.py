"""The heatmap's tissue and lesion masks, placed on the slide by their own downsample.

A mask PNG covers its whole slide at some downsample (level-0 px per mask px). The overlay and
annotations.geojson draw it where it lies on the slide, from that downsample:

- the tissue mask's from the slide's level-0 size (the store's ``slide_dimensions``, else its JSON
  sidecar's: :func:`gigamil.viz.annotations.mask_downsample`), unknown without either;
- the lesion mask's as the localisation AUC and the gallery's lesion frames take it
  (:func:`gigamil.evaluate.lesion_mask.load_mask_with_downsample`: the sidecar's ``downsample``
  or ``mpp``, else the slide's width over the mask's), checked against the slide's size.

Stretching a mask over the thumbnail instead misplaced it where the thumbnail spans only the
patches' extent (a store without ``slide_dimensions``: tissue clipped away under the patches) or
where the mask is a little larger than the slide (up to 2 % is accepted: the lesion outline off
by that much from the patches the localisation AUC counts as lesion).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gigamil.evaluate.lesion_mask import load_mask_with_downsample, read_binary_mask


@dataclass(frozen=True)
class PlacedMask:
    """A whole-slide ``mask`` (bool (H, W)) and its ``downsample``: level-0 px per mask px
    across and down, or None when unknown (it cannot be placed on the slide)."""

    mask: np.ndarray
    downsample: tuple[float, float] | None


def load_heatmap_masks(
    tissue_path: str | Path | None, lesion_path: str | Path | None, attrs: Mapping[str, Any]
) -> tuple[PlacedMask | None, PlacedMask | None]:
    """The tissue mask (None when not given or not a file) and the lesion mask (None when not
    given) of a slide whose store has ``attrs``, each with its downsample.

    Raises:
        GigamilError: a lesion mask that is missing, unreadable, without a known downsample or
            not covering the slide (read before anything is drawn, so a wrong mask leaves no
            half-redrawn heatmap).
    """
    from gigamil.viz.annotations import mask_downsample

    tissue = None
    if tissue_path is not None and Path(tissue_path).is_file():
        mask = read_binary_mask(tissue_path)
        tissue = PlacedMask(mask, mask_downsample(mask.shape, attrs, tissue_path))
    lesion = None
    if lesion_path is not None:
        dims = tuple(attrs.get("slide_dimensions") or ()) or None
        mask, ds = load_mask_with_downsample(lesion_path, attrs.get("slide_mpp"), dims)
        lesion = PlacedMask(mask, (ds, ds))
    return tissue, lesion


def mask_on_image(
    placed: PlacedMask | None,
    scale: tuple[float, float],
    shape: tuple[int, int],
    *,
    any_pixel: bool = False,
) -> np.ndarray | None:
    """``placed`` sampled on an image of ``shape`` (H, W) whose pixel (i, j) covers level-0
    ``[j / kx, (j + 1) / kx) × [i / ky, (i + 1) / ky)`` (``scale`` = (kx, ky), image px per
    level-0 px): bool (H, W), each pixel the mask pixel under its centre, or with ``any_pixel``
    set when any mask pixel it overlaps is (a lesion smaller than an image pixel still shows).
    Image pixels beyond the mask are False. None when there is no mask or its downsample is
    unknown."""
    if placed is None or placed.downsample is None:
        return None
    mask = np.asarray(placed.mask, dtype=bool)
    (kx, ky), (dx, dy) = scale, placed.downsample
    if not any_pixel:
        rows, row_ok = _centres(shape[0], ky * dy, mask.shape[0])
        cols, col_ok = _centres(shape[1], kx * dx, mask.shape[1])
        return mask[np.ix_(rows, cols)] & row_ok[:, None] & col_ok[None, :]
    # block maximum: OR over the mask pixels each image pixel overlaps, from the first to the
    # last one it touches (a prefix sum per axis; OR over a box is separable)
    out = mask.astype(np.int32)
    for axis, (n, k) in enumerate(((shape[0], ky * dy), (shape[1], kx * dx))):
        i = np.arange(n)
        start = np.minimum(np.floor(i / k + 1e-9).astype(np.int64), mask.shape[axis])
        end = np.clip(np.ceil((i + 1) / k - 1e-9).astype(np.int64), start, mask.shape[axis])
        total = np.cumsum(np.insert(out, 0, 0, axis=axis), axis=axis)
        out = total.take(end, axis=axis) - total.take(start, axis=axis)
    return out > 0


def _centres(n: int, k: float, n_mask: int) -> tuple[np.ndarray, np.ndarray]:
    """The mask index under each of ``n`` image pixels' centres (``k`` image px per mask px),
    clipped to the mask, and whether it lies inside the mask."""
    idx = np.floor((np.arange(n) + 0.5) / k).astype(np.int64)
    return np.minimum(idx, n_mask - 1), idx < n_mask
