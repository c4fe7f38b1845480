"""The heatmap's pixels: per-patch values painted on a thumbnail-sized canvas, the slide's
thumbnail, and the two blended (clipped to the tissue mask) into the overlay's image.

Everything is at thumbnail resolution: level-0 coordinates times ``scale`` (thumbnail pixels per
level-0 pixel).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def attention_canvas(
    coords: np.ndarray,
    patch_size_level0: float | tuple[float, float],
    values: np.ndarray,
    scale: float | tuple[float, float],
    shape: tuple[int, int],
) -> np.ndarray:
    """Paint per-patch values on a thumbnail-sized canvas.

    Args:
        coords: (N, 2) level-0 x, y of the patches' top-left corners.
        patch_size_level0: patch side in level-0 pixels, or (width, height) (pixels that are
            not square: :func:`gigamil.data.store.patch_size_xy`).
        values: (N,) value per patch.
        scale: thumbnail pixels per level-0 pixel, or (across, down): a thumbnail's width and
            height are rounded separately, so a tall slide's rows need their own scale.
        shape: (H, W) of the canvas.

    Returns:
        float (H, W): mean value of the patches covering each pixel, NaN where no patch is.
    """
    h, w = shape
    # Rounded edges: neighbouring patches tile the canvas without sharing pixels. The stores'
    # coords are whole level-0 pixels but a resampled patch's side is not (e.g. 443.2 px), so
    # the next patch may start up to 1 level-0 px after this one ends, which the rounding turns
    # into a 1-px seam between patch rows now and then: such ends are moved out by that 1 px.
    from gigamil.data.store import patch_sides

    sw, sh = (s + (0.0 if s.is_integer() else 1.0) for s in patch_sides(patch_size_level0))
    kx, ky = (scale, scale) if np.isscalar(scale) else scale
    x0 = np.round(coords[:, 0] * kx).astype(np.int64)
    y0 = np.round(coords[:, 1] * ky).astype(np.int64)
    x1 = np.maximum(np.round((coords[:, 0] + sw) * kx).astype(np.int64), x0 + 1)
    y1 = np.maximum(np.round((coords[:, 1] + sh) * ky).astype(np.int64), y0 + 1)
    x0, x1 = np.clip(x0, 0, w), np.clip(x1, 0, w)
    y0, y1 = np.clip(y0, 0, h), np.clip(y1, 0, h)
    # 2-D difference arrays: each patch adds its value to a rectangle in O(1).
    dt = np.zeros((h + 1, w + 1), dtype=np.float64)
    dc = np.zeros((h + 1, w + 1), dtype=np.float64)
    for arr, v in ((dt, values), (dc, np.ones_like(values, dtype=np.float64))):
        np.add.at(arr, (y0, x0), v)
        np.add.at(arr, (y0, x1), -v)
        np.add.at(arr, (y1, x0), -v)
        np.add.at(arr, (y1, x1), v)
    total = np.cumsum(np.cumsum(dt, axis=0), axis=1)[:h, :w]
    count = np.cumsum(np.cumsum(dc, axis=0), axis=1)[:h, :w]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0.5, total / np.maximum(count, 1e-12), np.nan)


def slide_thumbnail(
    slide_path: str | Path | None,
    slide_dims: tuple[int, int],
    max_px: int,
    mpp_override: float | None = None,
    check_dims: bool = True,
) -> np.ndarray:
    """RGB uint8 (H, W, 3) thumbnail with the slide's aspect ratio (grey, with a warning, if
    unreadable or if its level-0 size is not ``slide_dims``, the size of the slide the patches
    were cut from). ``check_dims`` False (a store without ``slide_dimensions``): ``slide_dims``
    is only the patches' extent from the origin, and the thumbnail is that part of the slide
    (before, the whole slide was squeezed onto it, so the patches were drawn off their tissue);
    grey if the extent reaches beyond the slide."""
    w0, h0 = slide_dims
    scale = max_px / max(w0, h0)
    size = (max(1, round(w0 * scale)), max(1, round(h0 * scale)))
    if slide_path is not None:
        try:
            from PIL import Image

            from gigamil.wsi.reader import open_slide

            with open_slide(slide_path, mpp_override=mpp_override) as reader:
                w, h = (int(v) for v in reader.dimensions)
                if (w, h) != (w0, h0) if check_dims else (w0 > w or h0 > h):
                    raise ValueError(
                        f"it is {w} x {h} px, the slide the patches were cut from "
                        f"{'' if check_dims else 'at least '}{w0} x {h0} px: not the same slide"
                    )
                zoom = min(4.0, max(w / w0, h / h0))  # the extent's part at about max_px
                thumb = reader.get_thumbnail((round(max_px * zoom), round(max_px * zoom)))
                th, tw = thumb.shape[:2]
                thumb = thumb[: max(1, round(h0 * th / h)), : max(1, round(w0 * tw / w))]
            if thumb.shape[:2] != (size[1], size[0]):
                thumb = np.asarray(Image.fromarray(thumb).resize(size, Image.Resampling.BILINEAR))
            return thumb[..., :3]
        except Exception as exc:  # noqa: BLE001 - a heatmap without background beats none
            log.warning("%s: no thumbnail (%s); drawing on grey", slide_path, exc)
    return np.full((size[1], size[0], 3), 230, dtype=np.uint8)


def resolve_slide_path(
    slide_path: str | Path | None, attrs: Mapping[str, Any]
) -> str | Path | None:
    """The slide file for the thumbnail: ``slide_path``, else the store's recorded
    ``source_path`` when that file exists and has the size the store recorded
    (``source_size``; None: draw on grey, with a warning when the file was replaced since the
    patches were cut: the attention would be drawn over other tissue)."""
    if slide_path is not None:
        return slide_path
    source = attrs.get("source_path")
    if source and Path(str(source)).is_file():
        recorded, size = int(attrs.get("source_size") or 0), Path(str(source)).stat().st_size
        if recorded > 0 and size != recorded:  # 0 / -1: not recorded (older or unreadable)
            log.warning(
                "the store's source_path %s is not the file its patches were cut from (%d "
                "bytes, the store recorded %d): drawing on grey; extract the slide again, or "
                "give the original file (--slide)",
                source,
                size,
                recorded,
            )
            return None
        log.info("thumbnail from the store's source_path %s", source)
        return str(source)
    if source:
        log.warning(
            "the store's source_path %s is not a file (moved?); drawing on grey; give the slide "
            "file with --slide (gigamil heatmap) to draw on it",
            source,
        )
    return None


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to (H, W)."""
    h, w = shape
    rows = np.minimum((np.arange(h) + 0.5) * mask.shape[0] / h, mask.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(w) + 0.5) * mask.shape[1] / w, mask.shape[1] - 1).astype(int)
    return mask[np.ix_(rows, cols)]


def _colormap(cmap: str) -> Any:
    import matplotlib

    from gigamil.config import check_cmap

    check_cmap(cmap)  # the workflow's own check: one message, with the nearest name
    return matplotlib.colormaps[cmap]


def composite_overlay(
    thumb: np.ndarray,
    canvas: np.ndarray,
    cmap: str = "jet",
    alpha: float = 0.5,
    tissue: np.ndarray | None = None,
) -> np.ndarray:
    """The thumbnail with the coloured canvas blended on top, pixel for pixel (uint8 RGB).

    Blended here rather than by matplotlib, so no resampling of the canvas or of its mask can
    leave seams (light lines) between patch rows: every canvas pixel colours exactly its
    thumbnail pixel. NaN (no patch) and pixels outside ``tissue`` stay the thumbnail's.
    """
    shown = np.array(canvas, dtype=np.float64)
    if tissue is not None:
        shown[~_resize_mask(tissue, canvas.shape)] = np.nan
    covered = np.isfinite(shown)
    rgb = _colormap(cmap)(np.clip(np.where(covered, shown, 0.0), 0.0, 1.0))[..., :3]
    a = np.where(covered, float(alpha), 0.0)[..., None]
    out = thumb[..., :3].astype(np.float64) / 255.0 * (1.0 - a) + rgb * a
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
