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
from gigamil.evaluate.lesion_mask import load_mask_with_downsample
from gigamil.evaluate.metrics import binary_auc

log = logging.getLogger(__name__)


def read_store_geometry(store: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``coords`` (N, 2) level-0 x,y, ``grid`` (N, 2) row,col and the attrs of a patch store."""
    from gigamil.data.store import read_store

    if not Path(store).exists():
        raise GigamilError(f"{store}: patch store not found")
    _, coords, grid, attrs = read_store(store)
    return coords, grid, attrs


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
