"""Ground-truth lesion masks: reading a mask PNG (:func:`read_binary_mask`, also for the heatmap's
tissue outline), its downsample (JSON sidecar, else the slide's width over the mask's) and the
check that it spans its slide, from the decoded mask (:func:`load_mask_with_downsample`, the
evaluation) or from the headers alone (:func:`check_mask_geometry`, before any job).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from gigamil.errors import GigamilError
from gigamil.wsi.mask_io import mask_sidecar  # MASK.png -> MASK.json, as a tissue mask's

# a binary mask's pixels are black or white (or 0 and one small label); a file whose pixels are
# mostly grey levels between (more than this share) is not a mask but, e.g., a photo or a
# heatmap; a resampled mask's anti-aliased edges stay far below it
MAX_GREY_FRACTION = 0.5

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_binary_mask(path: str | Path) -> np.ndarray:
    """A mask PNG (lesion or tissue) as bool (H, W).

    The brightest channel of each pixel decides (a palette image by its colours): > 127 is mask
    (white, or a coloured lesion on black). An image whose brightest value stays below 128 is
    a label image (0/1, 0/2; a palette image whose colours are all dark, by its indices): its
    nonzero pixels are mask. Transparent pixels (alpha 0) are background.

    Raises:
        GigamilError: the file cannot be read as an image or is too large to decode; a label
            image with more than one nonzero label (which one is the lesion is not known); or
            more than :data:`MAX_GREY_FRACTION` of its pixels are grey levels (8..247).
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            index = np.asarray(img) if img.mode == "P" else None
            if img.mode in ("1", "L") and "transparency" not in img.info:  # one opaque channel:
                level = np.asarray(img.convert("L"))  # the levels (a quarter of RGBA's cost)
            else:
                rgba = np.asarray(img.convert("RGBA"))
                level = np.where(rgba[..., 3] > 0, rgba[..., :3].max(axis=2), 0)  # (H, W)
    except Image.DecompressionBombError as exc:
        raise GigamilError(
            f"mask {path}: too large to decode ({exc}); save it at a lower resolution with a "
            'JSON sidecar {"downsample": level-0 px per mask px}'
        ) from exc
    except (OSError, ValueError) as exc:
        raise GigamilError(f"mask {path}: cannot be read as an image ({exc})") from exc
    top = int(level.max()) if level.size else 0
    if top < 128 and index is not None:  # a palette of dark colours: the indices are labels
        return _label_mask(path, np.where(rgba[..., 3] > 0, index, 0))
    if 0 < top < 128:  # a label image: 0 background, a small integer the label
        return _label_mask(path, level)
    between = float(np.mean((level >= 8) & (level <= 247))) if level.size else 0.0
    if between > MAX_GREY_FRACTION:
        raise GigamilError(
            f"mask {path}: {100 * between:.0f} % of its pixels are grey levels between black and "
            "white, so it is not a binary mask (lesion / tissue white or 1, the rest black or 0)"
        )
    return level > 127


def _label_mask(path: str | Path, labels: np.ndarray) -> np.ndarray:
    """The nonzero pixels of a label image; GigamilError when it holds several labels."""
    values = np.unique(labels[labels > 0])
    if len(values) > 1:
        raise GigamilError(
            f"mask {path}: a label image with labels {values.tolist()}: which one is the lesion "
            "is not known; save a mask of the lesion alone (lesion 1 or white, the rest 0)"
        )
    return labels > 0


def load_mask_with_downsample(
    path: str | Path,
    slide_mpp: float | None = None,
    slide_dimensions: tuple[int, int] | None = None,
) -> tuple[np.ndarray, float]:
    """A lesion mask PNG as bool (H, W) and its downsample (level-0 px per mask px).

    The downsample comes from the JSON sidecar (same stem) key ``downsample``; else from its
    ``mpp`` divided by ``slide_mpp``; else from the slide width over the mask width. With
    ``slide_dimensions`` (level-0 width, height) the mask must cover the slide at that
    downsample (each side within 2 % or two mask pixels): GigamilError otherwise, since another
    slide's mask, or one of another size, would be scored silently.
    """
    path = Path(path)
    if not path.is_file():
        raise GigamilError(f"lesion mask {path} not found")
    mask = read_binary_mask(path)  # (H, W)
    ds = mask_downsample(path, mask.shape, slide_mpp, slide_dimensions)
    if slide_dimensions is not None:
        _check_mask_covers_slide(path, mask.shape, ds, slide_dimensions)
    return mask, ds


def mask_sidecars(masks: Iterable[str | Path], existing_only: bool = True) -> list[str]:
    """The JSON sidecars of lesion ``masks``, as rule inputs: those that exist now (a sheet's
    mask may have none), or all (``existing_only`` False: a demo cohort's, written by a job)."""
    sidecars = [str(mask_sidecar(m)) for m in masks]
    return [s for s in sidecars if not existing_only or Path(s).is_file()]


def mask_downsample(
    path: Path,
    shape: tuple[int, ...],
    slide_mpp: float | None,
    slide_dimensions: tuple[int, int] | None,
) -> float:
    """Level-0 px per mask px of the mask ``path`` of ``shape`` (H, W), as
    :func:`load_mask_with_downsample` takes it: the JSON sidecar's ``downsample``, else its
    ``mpp`` / ``slide_mpp``, else the slide's width over the mask's. GigamilError when there is
    none, when the sidecar is not JSON, or when its value is not a positive number."""
    meta_path = mask_sidecar(path)
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        if "downsample" in meta:
            ds = float(meta["downsample"])
        elif "mpp" in meta and slide_mpp:
            ds = float(meta["mpp"]) / float(slide_mpp)
        elif slide_dimensions is not None:
            ds = float(slide_dimensions[0]) / shape[1]
        else:
            raise GigamilError(
                f"lesion mask {path}: no sidecar {meta_path.name} giving its downsample"
            )
    except (ValueError, TypeError, AttributeError) as exc:  # JSONDecodeError is a ValueError
        raise GigamilError(
            f"lesion mask sidecar {meta_path}: {exc} (expected e.g. "
            '{"downsample": 16} or {"mpp": 8.0})'
        ) from exc
    if not ds > 0:
        raise GigamilError(f"lesion mask sidecar {meta_path}: downsample {ds:g} is not positive")
    return ds


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image from its header: a PNG's IHDR chunk (whatever its size;
    Pillow refuses to open images beyond its decompression-bomb limit), else Pillow's header
    reader. GigamilError when neither reads it."""
    from PIL import Image

    try:
        with open(path, "rb") as fh:
            head = fh.read(24)
        if head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR":
            w, h = struct.unpack(">II", head[16:24])
            return int(w), int(h)
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise GigamilError(f"mask {path}: cannot be read as an image ({exc})") from exc


def check_mask_geometry(
    path: str | Path, slide_mpp: float | None, slide_dimensions: tuple[int, int]
) -> None:
    """The check of :func:`load_mask_with_downsample` from the PNG's header alone (its size; the
    pixels are not decoded): the lesion mask ``path`` spans a slide of level-0
    ``slide_dimensions`` (W, H) at its downsample. Cheap enough to run on every slide before
    any job (:mod:`gigamil.wsi.preflight`), so a wrong mask stops the run before training.

    Raises:
        GigamilError: unreadable header or sidecar, no downsample, or a mask of another size.
    """
    path = Path(path)
    w, h = image_size(path)
    ds = mask_downsample(path, (h, w), slide_mpp, slide_dimensions)
    _check_mask_covers_slide(path, (h, w), ds, slide_dimensions)


def _check_mask_covers_slide(
    path: Path, shape: tuple[int, ...], ds: float, slide_dimensions: tuple[int, int]
) -> None:
    """Raises GigamilError when a mask of ``shape`` (H, W) at downsample ``ds`` does not span
    the slide's level-0 ``slide_dimensions`` (W, H)."""
    (w0, h0), (hm, wm) = slide_dimensions, shape[:2]
    off = [abs(m * ds - s) > max(2 * ds, 0.02 * s) for m, s in ((wm, float(w0)), (hm, float(h0)))]
    if any(off):
        raise GigamilError(
            f"lesion mask {path} ({wm} x {hm} px, {ds:g} slide px per mask px) does not cover "
            f"the slide ({w0} x {h0} px; it would span {wm * ds:.0f} x {hm * ds:.0f}): is it this "
            "slide's mask, of the whole slide? (its JSON sidecar's downsample or mpp, if any, "
            "must fit too)"
        )
