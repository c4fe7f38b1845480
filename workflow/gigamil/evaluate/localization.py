"""Lesion localisation: how well per-patch attention ranks patches inside a ground-truth mask.

For every patch of a slide, the fraction of its area inside the lesion mask is measured with a
summed-area table of the mask; patches with a fraction >= ``threshold`` are lesion patches. The
localisation AUC of a slide is the ROC AUC of attention for lesion vs. non-lesion patches; it is
defined only for slides with both kinds of patches (positive slides with some normal tissue).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gigamil.errors import GigamilError
from gigamil.evaluate.metrics import binary_auc

log = logging.getLogger(__name__)


def read_store_geometry(store: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``coords`` (N, 2) level-0 x,y, ``grid`` (N, 2) row,col and the attrs of a patch store."""
    from gigamil.data.store import read_store

    if not Path(store).exists():
        raise GigamilError(f"{store}: patch store not found")
    _, coords, grid, attrs = read_store(store)
    return coords, grid, attrs


# a binary mask's pixels are black or white: more grey levels between than this share (e.g.
# anti-aliased edges) means the file is not a mask (a photo, a heatmap)
MAX_GREY_FRACTION = 0.05


def read_binary_mask(path: str | Path) -> np.ndarray:
    """A mask PNG (lesion or tissue) as bool (H, W): the brightest channel > 127 (white, or a
    coloured lesion on black), or > 0 for a label image of small values (maximum below 128,
    e.g. 0/1 or 0/2; a palette image's indices), which > 127 would silently read as empty; a
    warning when it holds more than one label, all of which count.

    Raises:
        GigamilError: the file cannot be read as an image, or more than
            :data:`MAX_GREY_FRACTION` of its pixels are grey levels between black and white
            (8..247): a photo or heatmap given as a mask would be scored silently.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.mode == "P":  # a palette image: its indices are the labels (0 background)
                level = np.asarray(img)
            else:
                level = np.asarray(img.convert("RGB")).max(axis=2)  # (H, W) brightest channel
    except (OSError, ValueError) as exc:
        raise GigamilError(f"mask {path}: cannot be read as an image ({exc})") from exc
    top = int(level.max()) if level.size else 0
    if 0 < top < 128:  # a label image: 0 background, small integers the labels
        labels = np.unique(level[level > 0])
        if len(labels) > 1:
            log.warning(
                "mask %s: labels %s; every nonzero label counts as lesion / tissue",
                path,
                labels.tolist(),
            )
        return level > 0
    between = float(np.mean((level >= 8) & (level <= 247))) if level.size else 0.0
    if between > MAX_GREY_FRACTION:
        raise GigamilError(
            f"mask {path}: {100 * between:.0f} % of its pixels are grey levels between black and "
            "white, so it is not a binary mask (lesion / tissue white or 1, the rest black or 0)"
        )
    return level > 127


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


def mask_downsample(
    path: Path,
    shape: tuple[int, ...],
    slide_mpp: float | None,
    slide_dimensions: tuple[int, int] | None,
) -> float:
    """Level-0 px per mask px of the mask ``path`` of ``shape`` (H, W), as
    :func:`load_mask_with_downsample` takes it: the JSON sidecar's ``downsample``, else its
    ``mpp`` / ``slide_mpp``, else the slide's width over the mask's; GigamilError when none."""
    meta_path = path.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if "downsample" in meta:
        return float(meta["downsample"])
    if "mpp" in meta and slide_mpp:
        return float(meta["mpp"]) / float(slide_mpp)
    if slide_dimensions is not None:
        return float(slide_dimensions[0]) / shape[1]
    raise GigamilError(f"lesion mask {path}: no sidecar {meta_path.name} giving its downsample")


def check_mask_geometry(
    path: str | Path, slide_mpp: float | None, slide_dimensions: tuple[int, int]
) -> None:
    """The check of :func:`load_mask_with_downsample` from the PNG's header alone (its size; the
    pixels are not decoded): the lesion mask ``path`` spans a slide of level-0
    ``slide_dimensions`` (W, H) at its downsample. Cheap enough to run on every slide before
    any job (:mod:`gigamil.wsi.preflight`), so a wrong mask stops the run before training.

    Raises:
        GigamilError: unreadable header, no downsample, or a mask of another size.
    """
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as img:
            w, h = img.size
    except (OSError, ValueError) as exc:
        raise GigamilError(f"mask {path}: cannot be read as an image ({exc})") from exc
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


def patch_mask_fraction(
    coords: np.ndarray, patch_size_level0: float, mask: np.ndarray, downsample: float
) -> np.ndarray:
    """Fraction (N,) of each patch's area covered by ``mask``.

    Args:
        coords: (N, 2) level-0 x, y of each patch's top-left corner.
        patch_size_level0: patch side in level-0 pixels.
        mask: bool (H, W), one pixel = ``downsample`` level-0 pixels.
    """
    h, w = mask.shape
    sat = np.zeros((h + 1, w + 1), dtype=np.float64)  # summed-area table
    sat[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.float64), axis=1)
    x0 = np.clip(np.floor(coords[:, 0] / downsample).astype(np.int64), 0, w)
    y0 = np.clip(np.floor(coords[:, 1] / downsample).astype(np.int64), 0, h)
    x1 = np.clip(np.ceil((coords[:, 0] + patch_size_level0) / downsample).astype(np.int64), 0, w)
    y1 = np.clip(np.ceil((coords[:, 1] + patch_size_level0) / downsample).astype(np.int64), 0, h)
    inside = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    return np.where((x1 > x0) & (y1 > y0), inside / area, 0.0)


def localization_auc(
    attention: np.ndarray, lesion_fraction: np.ndarray, threshold: float = 0.5
) -> float:
    """AUC of attention (N,) for lesion patches (fraction >= threshold); nan if one kind only."""
    attention = np.asarray(attention, dtype=float)
    if attention.shape != lesion_fraction.shape:
        raise GigamilError(
            f"attention has {attention.shape[0]} values but the store has "
            f"{lesion_fraction.shape[0]} patches"
        )
    return binary_auc(lesion_fraction >= threshold, attention)


def lesion_fraction(
    coords: np.ndarray, attrs: Mapping[str, Any], mask_path: str | Path
) -> np.ndarray:
    """Fraction (N,) of each of a store's patches in the lesion mask ``mask_path``, from the
    store's geometry (:func:`read_store_geometry`: level-0 ``coords`` and ``attrs`` with
    ``patch_size_level0``, ``slide_mpp``, ``slide_dimensions``)."""
    mask, ds = load_mask_with_downsample(
        mask_path, attrs.get("slide_mpp"), tuple(attrs.get("slide_dimensions") or ()) or None
    )
    return patch_mask_fraction(coords, float(attrs["patch_size_level0"]), mask, ds)


def slide_localization(
    store: str | Path, attention: np.ndarray, mask_path: str | Path, threshold: float = 0.5
) -> dict[str, float]:
    """Localisation of one slide: AUC, number of lesion patches (at least ``threshold`` of
    their area in the mask: :func:`lesion_fraction`) and of patches."""
    coords, _, attrs = read_store_geometry(store)
    frac = lesion_fraction(coords, attrs, mask_path)
    return {
        "localization_auc": localization_auc(attention, frac, threshold),
        "n_lesion_patches": int((frac >= threshold).sum()),
        "n_patches": int(frac.size),
    }


def cohort_localization(
    slides: Mapping[str, tuple[str | Path, str | Path | Sequence[str | Path], str | Path]],
    threshold: float = 0.5,
) -> dict[str, dict[str, float]]:
    """Localisation of many slides: ``{slide_id: (store, attention, mask png)}``.

    ``attention``: one .npy file, or several (e.g. one per fold model of an ensemble), whose mean
    (:func:`mean_attention`) is scored; missing files are ignored, and a slide with none is
    skipped with a warning.
    """
    out = {}
    for slide_id, (store, attention, mask_path) in slides.items():
        paths = [attention] if isinstance(attention, (str, Path)) else list(attention)
        present = [p for p in paths if Path(p).is_file()]
        if not present:
            log.warning(
                "slide %s: no attention file (%s); localisation skipped",
                slide_id,
                ", ".join(map(str, paths)),
            )
            continue
        out[slide_id] = slide_localization(store, mean_attention(present), mask_path, threshold)
    return out


def mean_attention(paths: Sequence[str | Path]) -> np.ndarray:
    """Mean (N,) of the attention arrays of several fold models for one slide.

    Raises:
        GigamilError: no file, a file that is not a readable .npy array (cut short, another
            format), or arrays of different lengths (stores changed between models).
    """
    arrays = [_load_attention(p) for p in paths]
    if not arrays:
        raise GigamilError("no attention files to average")
    sizes = {a.shape for a in arrays}
    if len(sizes) != 1:
        raise GigamilError(
            f"attention files have different lengths {sorted(s[0] for s in sizes)}: "
            f"{', '.join(map(str, paths))}"
        )
    return np.mean(arrays, axis=0).astype(np.float32)


def _load_attention(path: str | Path) -> np.ndarray:
    """One attention .npy as float64; a file numpy cannot read (cut short by a killed job, or
    not a .npy) is an error naming it, not a traceback. A missing file stays an OSError."""
    try:
        return np.load(path, allow_pickle=False).astype(np.float64)
    except (ValueError, EOFError) as exc:
        raise GigamilError(
            f"attention file {path} is damaged or not a .npy array ({exc}): delete it and rerun "
            "the prediction that wrote it"
        ) from None


def localization_label(summaries: Sequence[str | Path], slide_id: str) -> str:
    """A slide's localisation AUC as the report lists it beside its heatmap ("0.917"), from the
    first of ``summaries`` (summary.json files: the cohort's ensemble, the cross-validation)
    whose ``localization_auc_per_slide`` holds it; "-" when none does (no lesion mask, or a slide
    without both lesion and other patches)."""
    for path in summaries:
        try:
            per_slide = json.loads(Path(path).read_text()).get("localization_auc_per_slide")
        except (OSError, ValueError):
            continue
        if isinstance(per_slide, dict) and isinstance(per_slide.get(str(slide_id)), int | float):
            return f"{per_slide[str(slide_id)]:.3f}"
    return "-"
