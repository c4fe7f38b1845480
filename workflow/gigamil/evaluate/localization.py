"""Lesion localisation: how well per-patch attention ranks patches inside a ground-truth mask.

For every patch of a slide, the fraction of its area inside the lesion mask is measured with a
summed-area table of the mask; patches with a fraction >= ``threshold`` are lesion patches. The
localisation AUC of a slide is the ROC AUC of attention for lesion vs. non-lesion patches; it is
defined only for slides with both kinds of patches (positive slides with some normal tissue).
Where prediction wrote patch logits, the AUC of the patch score (attention and patch logits,
:mod:`gigamil.evaluate.patch_score`) is reported beside it (``patch_score_localization_auc``).
"""

from __future__ import annotations

import json
import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gigamil.errors import GigamilError
from gigamil.evaluate.lesion_mask import load_mask_with_downsample
from gigamil.evaluate.metrics import binary_auc

log = logging.getLogger(__name__)
PATCH_KEY = "patch_score_localization_auc"


def read_store_geometry(store: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``coords`` (N, 2) level-0 x,y, ``grid`` (N, 2) row,col and the attrs of a patch store."""
    from gigamil.data.store import read_store

    if not Path(store).exists():
        raise GigamilError(f"{store}: patch store not found")
    _, coords, grid, attrs = read_store(store)
    return coords, grid, attrs


def _axis_span(lo: np.ndarray, hi: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    """Per patch, its span ``[lo, hi)`` (in mask pixels) clipped to ``[0, n]``: the first and
    one-past-last mask pixel it touches (``i0``, ``i1``), the uncovered parts of those two edge
    pixels (``e0``, ``e1``, each in [0, 1)) and the covered length."""
    a, b = np.clip(lo, 0, n), np.clip(hi, 0, n)
    i0 = np.floor(a).astype(np.int64)
    i1 = np.maximum(np.ceil(b).astype(np.int64), i0)
    return i0, i1, a - i0, i1 - b, np.maximum(b - a, 0.0)


def patch_mask_fraction(
    coords: np.ndarray,
    patch_size_level0: float | tuple[float, float],
    mask: np.ndarray,
    downsample: float,
) -> np.ndarray:
    """Fraction (N,) of each patch's area covered by ``mask``, exact: a mask pixel at the
    patch's edge counts by the part of it inside the patch (area-weighted box coverage, from a
    summed-area table); the part of a patch beyond the mask is left out of its area.

    Args:
        coords: (N, 2) level-0 x, y of each patch's top-left corner.
        patch_size_level0: patch side in level-0 pixels, or (width, height).
        mask: bool (H, W), one pixel = ``downsample`` level-0 pixels.
    """
    from gigamil.data.store import patch_sides

    h, w = mask.shape
    sat = np.zeros((h + 1, w + 1), dtype=np.float64)  # summed-area table
    sat[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.float64), axis=1)
    xy = np.asarray(coords, dtype=np.float64) / downsample
    sw, sh = (s / downsample for s in patch_sides(patch_size_level0))
    x0, x1, ex0, ex1, width = _axis_span(xy[:, 0], xy[:, 0] + sw, w)
    y0, y1, ey0, ey1, height = _axis_span(xy[:, 1], xy[:, 1] + sh, h)
    xl, yl = np.maximum(x1 - 1, x0), np.maximum(y1 - 1, y0)  # the last touched pixel

    def box(r0, r1, c0, c1):  # mask pixels in rows [r0, r1) x columns [c0, c1), within the mask
        r0, r1, c0, c1 = np.minimum(r0, h), np.minimum(r1, h), np.minimum(c0, w), np.minimum(c1, w)
        return sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0]

    # sum of mask x (row weight) x (column weight); the weights are 1 inside and 1 - e at the
    # edge pixels: expand (1 - ex0 [x0] - ex1 [xl]) (1 - ey0 [y0] - ey1 [yl])
    inside = (
        box(y0, y1, x0, x1)
        - ex0 * box(y0, y1, x0, x0 + 1)
        - ex1 * box(y0, y1, xl, xl + 1)
        - ey0 * box(y0, y0 + 1, x0, x1)
        - ey1 * box(yl, yl + 1, x0, x1)
        + ex0 * ey0 * box(y0, y0 + 1, x0, x0 + 1)
        + ex0 * ey1 * box(yl, yl + 1, x0, x0 + 1)
        + ex1 * ey0 * box(y0, y0 + 1, xl, xl + 1)
        + ex1 * ey1 * box(yl, yl + 1, xl, xl + 1)
    )
    area = width * height
    return np.where(area > 0, np.clip(inside / np.where(area > 0, area, 1.0), 0.0, 1.0), 0.0)


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
    from gigamil.data.store import patch_size_xy

    return patch_mask_fraction(coords, patch_size_xy(attrs), mask, ds)


def slide_localization(
    store: str | Path,
    attention: np.ndarray,
    mask_path: str | Path,
    threshold: float = 0.5,
    patch_logits: np.ndarray | None = None,
) -> dict[str, float]:
    """Localisation of one slide: AUC of the attention, of the patch score (with
    ``patch_logits``: :func:`gigamil.evaluate.patch_score.patch_score`), number of
    lesion patches (at least ``threshold`` of their area in the mask: :func:`lesion_fraction`)
    and of patches."""
    from gigamil.evaluate.patch_score import patch_score

    coords, _, attrs = read_store_geometry(store)
    frac = lesion_fraction(coords, attrs, mask_path)
    out = {
        "localization_auc": localization_auc(attention, frac, threshold),
        "n_lesion_patches": int((frac >= threshold).sum()),
        "n_patches": int(frac.size),
    }
    if patch_logits is not None:
        out[PATCH_KEY] = localization_auc(patch_score(attention, patch_logits), frac, threshold)
    return out


def cohort_localization(
    slides: Mapping[str, tuple[str | Path, str | Path | Sequence[str | Path], str | Path]],
    threshold: float = 0.5,
) -> dict[str, dict[str, float]]:
    """Localisation of many slides: ``{slide_id: (store, attention, mask png)}``.

    ``attention``: one .npy file, or several (e.g. one per fold model of an ensemble), whose mean
    (:func:`mean_attention`) is scored; a file whose fold model did not predict the slide (a
    train cohort's other folds) may be missing, one whose fold's predictions list the slide is
    an error (:func:`~gigamil.evaluate.predictions.check_attention_present`), and a slide
    with no file at all is skipped with a warning.
    """
    from gigamil.evaluate.patch_score import mean_patch_logits, patch_logit_files
    from gigamil.evaluate.predictions import check_attention_present

    out = {}
    for slide_id, (store, attention, mask_path) in slides.items():
        paths = [attention] if isinstance(attention, (str, Path)) else list(attention)
        check_attention_present(paths, slide_id)
        present = [p for p in paths if Path(p).is_file()]
        if not present:
            log.warning(
                "slide %s: no attention file (%s); localisation skipped",
                slide_id,
                ", ".join(map(str, paths)),
            )
            continue
        attention = mean_attention(present)
        logit_files = patch_logit_files(present)  # None: predicted before patch logits
        patch_logits = (
            None if logit_files is None else mean_patch_logits(logit_files, len(attention))
        )
        out[slide_id] = slide_localization(store, attention, mask_path, threshold, patch_logits)
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
    not a .npy) or that holds NaN or infinite values (the slide would drop out of the
    localisation AUC) is an error naming it, not a traceback. A missing file stays an OSError."""
    from gigamil.evaluate.patch_score import attention_of
    from gigamil.evaluate.predictions import redo_hint

    kind = "attention" if attention_of(path) == Path(path) else "patch-logit"
    try:
        att = np.load(path, allow_pickle=False).astype(np.float64)
    except (ValueError, EOFError) as exc:
        raise GigamilError(
            f"{kind} file {path} is damaged or not a .npy array ({exc}): {redo_hint(path)}"
        ) from None
    if not np.isfinite(att).all():
        raise GigamilError(
            f"{kind} file {path} holds {int((~np.isfinite(att)).sum())} NaN or infinite "
            f"value(s): {redo_hint(path)}"
        )
    return att


def localization_label(
    summaries: Sequence[str | Path], slide_id: str, key: str = "localization_auc"
) -> str:
    """A slide's localisation AUC as the report lists it beside its heatmap ("0.917"), from the
    first of ``summaries`` (summary.json files: the cohort's ensemble, the cross-validation)
    whose ``{key}_per_slide`` holds it (``key``: the attention's, or :data:`PATCH_KEY` for the
    patch score's); "-" when none does (no lesion mask, or a slide without both lesion and
    other patches)."""
    for path in summaries:
        try:
            per_slide = json.loads(Path(path).read_text()).get(f"{key}_per_slide")
        except (OSError, ValueError):
            continue
        if isinstance(per_slide, dict) and isinstance(per_slide.get(str(slide_id)), int | float):
            return f"{per_slide[str(slide_id)]:.3f}"
    return "-"


def add_localization_columns(table: pd.DataFrame, loc: Mapping[str, Mapping[str, float]]) -> None:
    """Add ``localization_auc``, ``patch_score_localization_auc`` (where every slide with an
    attention AUC has patch logits: :func:`_patch_scores`) and ``n_lesion_patches`` (by
    ``slide_id``) to ``table``."""
    table["localization_auc"] = table["slide_id"].map(
        {s: v["localization_auc"] for s, v in loc.items()}
    )
    if scores := _patch_scores(loc)[0]:
        table[PATCH_KEY] = table["slide_id"].map(scores)
    table["n_lesion_patches"] = table["slide_id"].map(
        {s: v["n_lesion_patches"] for s, v in loc.items()}
    )


def _no_localization_note(loc: Mapping[str, Mapping[str, float]]) -> str:
    """Why no slide has a localisation AUC: it needs lesion and non-lesion patches on a slide;
    names how many masked slides have every patch in the lesion and how many none."""
    full = sum(
        1 for v in loc.values() if v["n_patches"] and v["n_lesion_patches"] == v["n_patches"]
    )
    empty = sum(1 for v in loc.values() if not v["n_lesion_patches"])
    return (
        f"no slide of the {len(loc)} with a lesion mask has both lesion and non-lesion patches "
        f"({full} with every patch in the lesion, {empty} without a lesion patch; a patch is "
        "lesion when at least half of it is in the mask): the AUC ranks one against the other"
    )


def localization_block(loc: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """Summary fields of per-slide localisation results (``{slide_id: slide_localization()}``):
    ``localization_auc`` (mean over the slides where it is defined, i.e. with lesion and normal
    patches), ``localization_auc_sd``, ``localization_n_slides``, ``localization_auc_per_slide``;
    the same of :data:`PATCH_KEY` where every such slide has a patch score (:func:`_patch_scores`)."""
    values = {s: v["localization_auc"] for s, v in loc.items()}
    finite = [v for v in values.values() if _finite(v)]
    note = _no_localization_note(loc) if not finite else None
    if finite:
        log.info("localisation AUC: mean %.3f over %d slides", float(np.mean(finite)), len(finite))
    else:
        log.warning("localisation AUC: n/a: %s", note)
    scored, missing = _patch_scores(loc)
    if scored:
        mean = float(np.mean(list(scored.values())))
        log.info("patch-score localisation AUC: mean %.3f over %d slides", mean, len(scored))
    elif missing and len(missing) < len(finite):
        log.warning(
            "no patch-score localisation AUC: %d of the %d slides have no patch logits (%s; "
            "predicted before gigamil wrote them?), and a mean over the others would not be "
            "over the attention's slides; predict them again to have it",
            len(missing),
            len(finite),
            ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else ""),
        )
    return {
        **({"localization_note": note} if note else {}),
        "localization_auc": float(np.mean(finite)) if finite else float("nan"),
        "localization_auc_sd": float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
        "localization_n_slides": len(finite),
        "localization_auc_per_slide": {s: v for s, v in sorted(values.items()) if _finite(v)},
        **(_mean_sd_per_slide(PATCH_KEY, scored) if scored else {}),
    }


def _finite(v: Any) -> bool:
    """A finite real number (None, NaN and infinities are not; numpy floats are)."""
    return isinstance(v, numbers.Real) and math.isfinite(v)


def _patch_scores(loc: Mapping[str, Mapping[str, float]]) -> tuple[dict[str, float], list[str]]:
    """The slides' patch-score AUCs (finite, by slide) and the slides with an attention AUC
    but no patch score; no scores while any slide lacks one (a mean over some of the slides
    would stand beside the attention's over all of them as if over the same)."""
    missing = sorted(
        s
        for s, v in loc.items()
        if _finite(v["localization_auc"]) and not _finite(v.get(PATCH_KEY))
    )
    if missing:
        return {}, missing
    return {s: v[PATCH_KEY] for s, v in sorted(loc.items()) if _finite(v.get(PATCH_KEY))}, []


def _mean_sd_per_slide(key: str, values: Mapping[str, float]) -> dict[str, Any]:
    """``key``, ``key_sd`` and ``key_per_slide`` of per-slide values (all finite)."""
    v = list(values.values())
    return {
        key: float(np.mean(v)),
        f"{key}_sd": float(np.std(v, ddof=1)) if len(v) > 1 else None,
        f"{key}_per_slide": dict(values),
    }
