"""Tissue masks on a raster of ``mask_mpp`` µm/px: HSV saturation -> median blur -> dark
background and pen ink set aside -> Otsu (on sqrt saturation, never below a floor) or fixed
threshold -> close -> ink/dark removed -> open -> holes filled (not those touching ink) -> small
components dropped (µm²).

Outputs (:func:`gigamil.wsi.mask_io.write_mask_outputs`): the mask PNG (uint8 0/255, one pixel = mask_mpp µm), a QC PNG
(the slide at mask resolution with the mask outline drawn on it, a title with the tissue fraction
and threshold, and a scale bar; :mod:`gigamil.wsi.qc`) and a JSON sidecar
(tissue_fraction, mask_mpp, warnings, ...).
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gigamil.errors import ConfigError, GigamilError
from gigamil.settings import TissueConfig
from gigamil.wsi.mask_io import write_mask_outputs
from gigamil.wsi.otsu import otsu_threshold
from gigamil.wsi.patching import MAX_UPSAMPLING
from gigamil.wsi.raster import raster_shape, read_raster_image
from gigamil.wsi.slide import SlideReader

log = logging.getLogger(__name__)

# Pen ink: green to blue hues (degrees) with at least this saturation (0..255). H&E is pink to
# purple (hue ~240-360 and 0-20); the blue-grey of pale haematoxylin stays below the saturation.
INK_HUE_DEG = (60.0, 235.0)
INK_MIN_SATURATION = 60.0


# a mask raster above this many pixels is refused (3 bytes each, several working copies): the
# mask is a low-resolution map, and a mask_mpp typo (0.01 for 8) would ask for tens of GiB
MAX_MASK_PIXELS = 2**28

_SCHEMA_DEFAULTS = TissueConfig()


@dataclass(frozen=True)
class TissueParams:
    """``preprocessing.tissue`` in config.yaml (defaults from the schema, via
    :class:`gigamil.settings.TissueConfig`)."""

    mask_mpp: float = _SCHEMA_DEFAULTS.mask_mpp
    threshold: str | float = _SCHEMA_DEFAULTS.threshold  # "otsu" or a saturation value 0..255
    median_px: int = _SCHEMA_DEFAULTS.median_px
    close_um: float = _SCHEMA_DEFAULTS.close_um
    open_um: float = _SCHEMA_DEFAULTS.open_um
    min_area_um2: float = _SCHEMA_DEFAULTS.min_area_um2
    dark_value: int = _SCHEMA_DEFAULTS.dark_value  # max(R, G, B) below this: background
    pen_ink: bool = _SCHEMA_DEFAULTS.pen_ink  # exclude green/blue pen ink

    def __post_init__(self) -> None:
        """ConfigError for a ``mask_mpp`` that is not a positive finite number (the schema's
        rule, for callers of the Python API: 0 divided by zero, -8 gave a 1 x 1 empty mask)."""
        mpp = self.mask_mpp
        if isinstance(mpp, bool) or not isinstance(mpp, numbers.Real) or not 0 < mpp < math.inf:
            raise ConfigError(
                f"preprocessing.tissue.mask_mpp {mpp!r}: the tissue mask's µm/px must be a "
                "positive number (default 8.0)"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> TissueParams:
        """Build from a config sub-dict; unknown keys are ignored, missing ones take defaults."""
        d = d or {}
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d and d[k] is not None}
        return cls(**known)


@dataclass
class TissueMask:
    """A tissue mask on a raster of ``mpp_x``/``mpp_y`` µm/px over the whole slide."""

    mask: np.ndarray  # (H, W) bool
    mpp_x: float
    mpp_y: float
    threshold_value: float
    tissue_fraction: float
    level: int
    warnings: list[str] = field(default_factory=list)
    rgb: np.ndarray | None = None  # (H, W, 3) uint8, the image the mask was computed on


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation 255 * (max - min) / max (Pillow's HSV conversion).
    (H, W, 3) uint8 -> (H, W) uint8."""
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("HSV"))[..., 1]


def _median(img: np.ndarray, size: int) -> np.ndarray:
    """Median filter of an (H, W) uint8 image with a size x size window (edges replicated).
    OpenCV's medianBlur: the same values as a padded scikit-image rank median, ~50x faster."""
    import cv2

    return cv2.medianBlur(np.ascontiguousarray(img, dtype=np.uint8), size)


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (xx * xx + yy * yy) <= radius * radius


def _binary_morph(mask: np.ndarray, radius: int, op: str) -> np.ndarray:
    """Closing or opening with a Euclidean disk of ``radius`` px; edges are replicated so the
    border does not erode. Small radii use the disk directly, large ones distance transforms
    (cost independent of the radius)."""
    from scipy import ndimage

    if radius <= 0:
        return mask
    pad = radius + 1
    m = np.pad(mask, pad, mode="edge")
    if radius <= 8:  # OpenCV with the disk as kernel (borders: dilate 0, erode 1, as scipy)
        import cv2

        se = _disk(radius).astype(np.uint8)

        def dilate(x: np.ndarray) -> np.ndarray:
            return cv2.dilate(x.view(np.uint8), se).view(bool)

        def erode(x: np.ndarray) -> np.ndarray:
            return cv2.erode(x.view(np.uint8), se).view(bool)

    else:

        def dilate(x: np.ndarray) -> np.ndarray:
            return ndimage.distance_transform_edt(~x) <= radius if (~x).any() else x

        def erode(x: np.ndarray) -> np.ndarray:
            return ndimage.distance_transform_edt(x) > radius if (~x).any() else x

    m = erode(dilate(m)) if op == "close" else dilate(erode(m))
    return m[pad:-pad, pad:-pad]


def fill_holes(mask: np.ndarray, keep_open: np.ndarray | None = None) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes`` (background not 4-connected to the border is filled)
    by one labelling pass instead of iterated erosions (several times faster). A hole holding
    any pixel of ``keep_open`` (bool, same shape, e.g. pen ink) is not filled."""
    from scipy import ndimage

    if mask.size == 0:
        return mask.astype(bool)
    labels, _ = ndimage.label(~mask)
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    outside = np.zeros(labels.max() + 1, bool)
    outside[edge] = True
    if keep_open is not None:
        outside[labels[keep_open & ~mask]] = True
    outside[0] = False  # label 0 = the mask itself
    return ~outside[labels]


def hue_degrees(rgb: np.ndarray) -> np.ndarray:
    """HSV hue in degrees 0..360 of an (H, W, 3) uint8 image (0 where the pixel is grey)."""
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.float32) / 255.0, cv2.COLOR_RGB2HSV)[
        ..., 0
    ]


def pen_ink_mask(hue: np.ndarray, sat: np.ndarray, low: float, open_px: int) -> np.ndarray:
    """Green/blue pen ink: pixels of hue ``INK_HUE_DEG`` (degrees) with saturation >=
    ``INK_MIN_SATURATION`` in strokes wider than 2 * ``open_px``, grown into the connected
    ink-hued pixels with saturation above ``low`` (the faint edges of the strokes)."""
    from skimage.morphology import reconstruction

    inky = (hue >= INK_HUE_DEG[0]) & (hue <= INK_HUE_DEG[1])
    strong = _binary_morph(inky & (sat >= INK_MIN_SATURATION), max(1, open_px), "open")
    if not strong.any():
        return strong
    weak = inky & (sat > low)
    seed = (strong & weak).astype(np.uint8)
    return reconstruction(seed, weak.astype(np.uint8), method="dilation").astype(bool) | strong


def mask_from_rgb(
    rgb: np.ndarray, mpp: float, params: TissueParams, name: str = ""
) -> tuple[np.ndarray, float, list[str]]:
    """Tissue mask of an (H, W, 3) uint8 image of ``mpp`` µm/px: (mask bool (H, W), threshold,
    warnings). Dark background (max(R, G, B) < ``dark_value``) and, with ``pen_ink``, green/blue
    pen ink are never tissue, and holes touching ink are not filled (the dark pixels of a filled
    hole, e.g. a black pen dot on the tissue, stay background)."""
    from scipy import ndimage

    warnings: list[str] = []
    sat = saturation(rgb)
    k = int(params.median_px) | 1
    smooth = rgb
    if k > 1:
        sat = _median(sat, k)
        import cv2

        smooth = cv2.medianBlur(np.ascontiguousarray(rgb, dtype=np.uint8), k)
    sat = sat.astype(np.float32)
    dark = smooth.max(axis=2) < int(params.dark_value)
    r_close, r_open = round(params.close_um / mpp), round(params.open_um / mpp)
    ink_core = np.zeros_like(dark)
    if params.pen_ink:
        hue = hue_degrees(smooth)
        inky = (hue >= INK_HUE_DEG[0]) & (hue <= INK_HUE_DEG[1])
        ink_core = inky & (sat >= INK_MIN_SATURATION)
    if isinstance(params.threshold, str):
        if params.threshold != "otsu":
            raise ValueError(f"threshold must be 'otsu' or a number, got {params.threshold!r}")
        thr, otsu_warnings = otsu_threshold(sat[~dark & ~ink_core], name)
        warnings += otsu_warnings
    else:
        thr = float(params.threshold)
    ink = (pen_ink_mask(hue, sat, thr, r_open) if params.pen_ink else ink_core) & ~dark
    not_tissue = dark | ink
    mask = _binary_morph((sat > thr) & ~not_tissue, r_close, "close") & ~not_tissue
    mask = _binary_morph(mask, r_open, "open")
    mask = fill_holes(mask, keep_open=ink) & ~dark  # filling must not bring dark pixels back
    min_px = params.min_area_um2 / (mpp * mpp)
    if min_px > 1 and mask.any():
        labels, n = ndimage.label(mask)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes >= min_px
        keep[0] = False
        if not keep.any():  # tissue was found, and all of it is too small
            largest = float(sizes[1:].max()) * mpp * mpp
            warnings.append(
                f"{name + ': ' if name else ''}every tissue piece is smaller than min_area_um2 "
                f"{params.min_area_um2:g} µm² (the largest {largest:.0f} µm², measured with the "
                "slide's µm/px): is that µm/px wrong (e.g. the sheet's mpp column), or should "
                "min_area_um2 be lower?"
            )
        mask = keep[labels]
    if ink.any():
        log.info(
            "%spen ink excluded: %.2f %% of the image",
            f"{name}: " if name else "",
            100 * ink.mean(),
        )
    return mask.astype(bool), thr, warnings


def mask_mpp_problem(slide_mpp: float, mask_mpp: float) -> str | None:
    """Why a slide scanned at ``slide_mpp`` µm/px cannot be masked at ``mask_mpp`` µm/px (more
    than :data:`~gigamil.wsi.patching.MAX_UPSAMPLING` times finer than the scan), or None."""
    factor = slide_mpp / mask_mpp
    if factor <= MAX_UPSAMPLING:
        return None
    return (
        f"preprocessing.tissue.mask_mpp {mask_mpp:g} µm/px (gigamil mask --mask-mpp) is "
        f"{factor:.3g}x finer than the slide's {slide_mpp:g} µm/px: the tissue mask is a "
        f"low-resolution map (default {_SCHEMA_DEFAULTS.mask_mpp:g} µm/px)"
    )


def mask_raster_problem(
    dimensions: tuple[int, int], mpp_xy: tuple[float, float], mask_mpp: float
) -> str | None:
    """Why a slide of ``dimensions`` (W, H) level-0 px at ``mpp_xy`` µm/px cannot be masked at
    ``mask_mpp`` µm/px (its raster would exceed :data:`MAX_MASK_PIXELS`), or None."""
    width, height = raster_shape(dimensions, mpp_xy, mask_mpp)
    if width * height <= MAX_MASK_PIXELS:
        return None
    (w0, h0), (mx, my) = dimensions, mpp_xy
    coarsest = math.sqrt(w0 * mx * h0 * my / MAX_MASK_PIXELS)
    return (
        f"a tissue mask at {mask_mpp:g} µm/px (preprocessing.tissue.mask_mpp, gigamil mask "
        f"--mask-mpp) would be {width} x {height} px, more than the {MAX_MASK_PIXELS} px "
        f"allowed: the mask is a low-resolution map (default {_SCHEMA_DEFAULTS.mask_mpp:g} "
        f"µm/px); use at least {math.ceil(coarsest * 100) / 100:g} µm/px for this slide"
    )


def compute_tissue_mask(
    reader: SlideReader, params: TissueParams, keep_rgb: bool = True
) -> TissueMask:
    """Read the slide at ``params.mask_mpp`` (best level + box downsampling) and mask it.

    Raises:
        ConfigError: ``mask_mpp`` is far finer than the scan (:func:`mask_mpp_problem`) or
            its raster would have more than :data:`MAX_MASK_PIXELS` pixels
            (:func:`mask_raster_problem`).
    """
    problem = mask_mpp_problem(reader.mpp, params.mask_mpp) or mask_raster_problem(
        reader.dimensions, reader.mpp_xy, params.mask_mpp
    )
    if problem:
        raise ConfigError(f"{reader.name}: {problem}")
    rgb, fx, fy, level = read_raster_image(reader, params.mask_mpp)
    mpp_x, mpp_y = fx * reader.mpp_xy[0], fy * reader.mpp_xy[1]
    mask, thr, warnings = mask_from_rgb(rgb, (mpp_x + mpp_y) / 2, params, reader.name)
    frac = float(mask.mean()) if mask.size else 0.0
    if not mask.any():
        warnings.append(f"{reader.name}: no tissue found; the mask is empty")
    for w in warnings:
        log.warning("%s", w)
    return TissueMask(mask, mpp_x, mpp_y, thr, frac, level, warnings, rgb if keep_rgb else None)


def make_mask(
    slide: str | Path,
    out_png: str | Path,
    qc_png: str | Path | None,
    json_path: str | Path | None,
    params: TissueParams,
    slide_mpp: float | None = None,
) -> dict[str, Any]:
    """Open ``slide``, compute its tissue mask and write the outputs; return the JSON summary.

    What ``gigamil mask`` and rule ``tissue_mask`` run.

    Raises:
        GigamilError: ``out_png`` not named ``*.png`` (a JPEG would blur the 0/255 mask), a
            ``params.mask_mpp`` too coarse for the slide
            (:func:`gigamil.wsi.preflight.coarse_mask_problem`), or the slide's errors (:func:`gigamil.wsi.reader.open_slide`).
    """
    import time

    from gigamil.wsi.preflight import coarse_mask_problem
    from gigamil.wsi.reader import open_slide

    if Path(out_png).suffix.lower() != ".png":
        raise GigamilError(
            f"{out_png}: the mask is written as a PNG (lossless 0/255); name it *.png"
        )
    t0 = time.perf_counter()
    with open_slide(slide, slide_mpp) as reader:
        dims = (int(reader.dimensions[0]), int(reader.dimensions[1]))
        if problem := coarse_mask_problem(float(reader.mpp), dims, params.mask_mpp):
            raise GigamilError(f"{slide}: {problem}")  # e.g. 5000 typed for 5: 1 x 1 px
        tm = compute_tissue_mask(reader, params)
        seconds = round(time.perf_counter() - t0, 3)
        summary = write_mask_outputs(reader, tm, params, out_png, qc_png, json_path, seconds)
    log.info(
        "%s: tissue fraction %.3f, mask %d x %d px (width x height, as slide dimensions) at "
        "%g µm/px -> %s",
        slide,
        summary["tissue_fraction"],
        summary["mask_shape"][1],  # mask_shape is numpy's (height, width)
        summary["mask_shape"][0],
        params.mask_mpp,
        out_png,
    )
    return summary
