"""Reading slide regions on a raster of a requested physical resolution.

A *raster* at ``mpp`` covers the slide with pixels of ``f = mpp / slide_mpp`` level-0 pixels
(per axis ``fx``, ``fy``): raster pixel (u, v) covers level-0 [u*fx, (u+1)*fx) x [v*fy, (v+1)*fy).
:func:`read_raster` reads a raster window from one pyramid level and resamples it there with
area (box) interpolation, mapping the window's edges exactly (sub-pixel) onto the level.
"""

from __future__ import annotations

import math

import numpy as np

from gigamil.wsi.slide import SlideReader


def level_scale(reader: SlideReader, level: int, fx: float, fy: float) -> tuple[float, float]:
    """Level pixels per raster pixel (x, y) for a raster of ``fx``, ``fy`` level-0 px per pixel."""
    w0, h0 = reader.dimensions
    lw, lh = reader.level_dimensions[level]
    return fx * lw / w0, fy * lh / h0


def read_raster(
    reader: SlideReader,
    level: int,
    fx: float,
    fy: float,
    u0: int,
    v0: int,
    w: int,
    h: int,
) -> np.ndarray:
    """Raster pixels [u0, u0+w) x [v0, v0+h) as RGB uint8 (h, w, 3), read from ``level``.

    Outside the slide is white. Downscaling uses box (area) averaging, upscaling bilinear (which
    looks a pixel past the slide's edge: there it sees the edge pixels repeated, not white).
    """
    from PIL import Image

    sx, sy = level_scale(reader, level, fx, fy)
    bx0, bx1 = u0 * sx, (u0 + w) * sx  # window edges in level px
    by0, by1 = v0 * sy, (v0 + h) * sy
    # one spare level pixel each side: OpenSlide may start a level > 0 read at a fractional
    # level coordinate, and bilinear upsampling looks one pixel further
    margin = 2 if min(sx, sy) < 1.0 else 1
    rx0, ry0 = math.floor(bx0) - margin, math.floor(by0) - margin
    rx1, ry1 = math.ceil(bx1) + margin, math.ceil(by1) + margin
    ds = reader.level_downsamples[level]
    location = (round(rx0 * ds), round(ry0 * ds))
    ox, oy = reader.level_origin(location, level)
    region = reader.read_region_view(location, level, (rx1 - rx0, ry1 - ry0))  # (rh, rw, 3)
    filt = Image.Resampling.BOX if min(sx, sy) >= 1.0 else Image.Resampling.BILINEAR
    if filt == Image.Resampling.BILINEAR:
        region = _repeat_edges(region, (ox, oy), reader.level_dimensions[level], margin)
    img = Image.fromarray(np.ascontiguousarray(region))
    rw, rh = rx1 - rx0, ry1 - ry0
    box = (
        min(max(bx0 - ox, 0.0), rw),
        min(max(by0 - oy, 0.0), rh),
        min(max(bx1 - ox, 0.0), rw),
        min(max(by1 - oy, 0.0), rh),
    )
    return np.asarray(img.resize((w, h), filt, box=box))


def _repeat_edges(
    region: np.ndarray, origin: tuple[float, float], level_dims: tuple[int, int], margin: int
) -> np.ndarray:
    """``region`` (rh, rw, 3), whose pixel (0, 0) is at level coordinate ``origin``, with the
    white read past the level's edge (``level_dims`` (w, h)) replaced, up to ``margin`` pixels
    out, by the slide's edge pixels: bilinear upsampling looks one pixel past the edge, and the
    white there would lighten a patch's border pixels (a uniform slide gave patches with a pale
    rim). Further out stays white."""
    rh, rw = region.shape[:2]
    (ox, oy), (lw, lh) = origin, level_dims
    x0, y0 = max(0, math.ceil(-ox - 1e-6)), max(0, math.ceil(-oy - 1e-6))
    x1, y1 = min(rw, math.floor(lw - ox + 1e-6)), min(rh, math.floor(lh - oy + 1e-6))
    if x0 >= x1 or y0 >= y1 or (x0, y0, x1, y1) == (0, 0, rw, rh):
        return region
    pad = ((min(margin, y0), min(margin, rh - y1)), (min(margin, x0), min(margin, rw - x1)))
    out = np.array(region)
    out[y0 - pad[0][0] : y1 + pad[0][1], x0 - pad[1][0] : x1 + pad[1][1]] = np.pad(
        region[y0:y1, x0:x1], (*pad, (0, 0)), mode="edge"
    )
    return out


def raster_shape(
    dimensions: tuple[int, int], mpp_xy: tuple[float, float], mpp: float
) -> tuple[int, int]:
    """(width, height) px of the raster of a slide of level-0 ``dimensions`` (W, H) at
    ``mpp_xy`` µm/px read at about ``mpp`` µm/px: round(W0 / f_x) x round(H0 / f_y), at least 1,
    with f = mpp / the slide's µm/px per axis (:func:`read_raster_image`)."""
    (w0, h0), (mpp_x, mpp_y) = dimensions, mpp_xy
    return max(1, round(w0 * mpp_x / mpp)), max(1, round(h0 * mpp_y / mpp))


def read_raster_image(
    reader: SlideReader, mpp: float, max_block: int = 4096
) -> tuple[np.ndarray, float, float, int]:
    """The whole slide on a raster of about ``mpp`` µm/px, read block-wise.

    The raster has round(W0 / f_x) x round(H0 / f_y) pixels (f_x = mpp / slide mpp x, f_y the same
    in y: non-square slide pixels give square raster pixels), so its exact per-axis scale is
    ``fx = W0 / width``, ``fy = H0 / height`` level-0 px per pixel.
    Returns (image (H, W, 3) uint8, fx, fy, level read).
    """
    w0, h0 = reader.dimensions
    width, height = raster_shape((w0, h0), reader.mpp_xy, mpp)
    fx, fy = w0 / width, h0 / height
    level = reader.best_level_for_mpp(mpp)
    return read_raster_blocks(reader, level, fx, fy, (width, height), max_block), fx, fy, level


def read_raster_blocks(
    reader: SlideReader,
    level: int,
    fx: float,
    fy: float,
    size: tuple[int, int],
    max_block: int = 4096,
) -> np.ndarray:
    """The raster of ``fx``, ``fy`` level-0 px per pixel, ``size`` (width, height) pixels from
    its origin, as RGB uint8 (height, width, 3), read from ``level`` in blocks of at most about
    ``max_block``² level pixels (:func:`read_raster`)."""
    width, height = size
    out = np.empty((height, width, 3), np.uint8)
    sx, sy = level_scale(reader, level, fx, fy)
    bw = max(1, int(max_block / max(sx, 1.0)))
    bh = max(1, int(max_block / max(sy, 1.0)))
    for v in range(0, height, bh):
        for u in range(0, width, bw):
            w, h = min(bw, width - u), min(bh, height - v)
            out[v : v + h, u : u + w] = read_raster(reader, level, fx, fy, u, v, w, h)
    return out
