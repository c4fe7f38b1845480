"""Otsu's threshold of a tissue mask's saturation (:func:`otsu_threshold`), with the checks
that say when its split is not one of tissue against glass."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("gigamil.wsi.tissue")

# An Otsu threshold below this saturation means the image is (nearly) uniform background:
# splitting JPEG noise on white glass would invent tissue.
MIN_OTSU_SATURATION = 15.0
# Below this fraction of (non-dark, non-ink) pixels above the floor the slide has little or no
# tissue; above it a low Otsu threshold only means the glass is flat (saturation ~0).
LITTLE_TISSUE_FRACTION = 0.005


MIN_CLASS_GAP = 15.0  # saturation between the means of Otsu's two classes, glass vs tissue


def _class_gap_warning(sat: np.ndarray, thr: float, who: str) -> list[str]:
    """A warning when Otsu's two classes of saturation lie less than :data:`MIN_CLASS_GAP`
    apart (or the saturation is uniform): glass and tissue differ by far more, so such a split
    is of the glass's own tint or shading (a blank slide on yellowish glass came out 56 %
    tissue without a word) or of a uniform image; the mask is kept, the QC image says."""
    low, high = sat[sat <= thr], sat[sat > thr]
    gap = float(high.mean() - low.mean()) if low.size and high.size else 0.0
    if gap >= MIN_CLASS_GAP:
        return _no_glass_warning(float(low.mean()), thr, who)
    return [
        f"{who}the saturation splits at Otsu threshold {thr:.1f} into classes only {gap:.1f} "
        "apart (tissue and glass differ by far more): a slide without tissue on tinted glass, "
        "or of uniform colour? Check its QC image"
    ]


GLASS_MAX_SATURATION = 35.0  # mean saturation of Otsu's lower class above which it is not glass
# (2.5-4.5 on the CMU slide and the demo's; pale stroma is about 60)


def _no_glass_warning(low_mean: float, thr: float, who: str) -> list[str]:
    """A warning when Otsu's lower class is not glass (its mean saturation above
    :data:`GLASS_MAX_SATURATION`): an image with no glass, e.g. a crop inside the tissue or a
    TMA core, is split into pale and dense tissue, and the pale part (stroma) is lost."""
    if low_mean <= GLASS_MAX_SATURATION:
        return []
    return [
        f"{who}Otsu's lower class (mean saturation {low_mean:.1f}, glass is usually below 10) "
        f"does not look like glass: an image without glass (a crop inside the tissue?) is split "
        f"into pale and dense tissue at {thr:.1f}, leaving pale tissue out; check its QC image, "
        "or set preprocessing.tissue.threshold to a saturation (gigamil mask --threshold)"
    ]


def otsu_threshold(sat: np.ndarray, name: str = "") -> tuple[float, list[str]]:
    """Otsu's threshold of saturation values (1-D float), computed on their square root (which
    evens out the long tail of dense tissue, so faint stroma is not lumped with the glass), never
    below ``MIN_OTSU_SATURATION``; returns (threshold, warnings). The floor matters when the
    glass is flat: glass of saturation 0 puts Otsu at ~0 on a slide that is mostly tissue (no
    warning then); only when few pixels pass the floor does it warn of little or no tissue."""
    from skimage.filters import threshold_otsu

    if sat.size == 0:
        return MIN_OTSU_SATURATION, []
    root = np.sqrt(sat)
    thr = float(threshold_otsu(root)) ** 2 if np.ptp(root) > 0 else float(sat.flat[0])
    who = f"{name}: " if name else ""
    if thr >= MIN_OTSU_SATURATION:
        return thr, _class_gap_warning(sat, thr, who)
    above = float(np.mean(sat > MIN_OTSU_SATURATION))
    if above < LITTLE_TISSUE_FRACTION:
        return MIN_OTSU_SATURATION, [
            f"{who}Otsu threshold {thr:.1f} is below the minimum saturation "
            f"{MIN_OTSU_SATURATION:g} and only {100 * above:.2f} % of the slide is above it "
            f"(little or no tissue?); using {MIN_OTSU_SATURATION:g}"
        ]
    log.info(
        "%sOtsu threshold %.1f below the minimum saturation %g with %.1f %% of the slide above it "
        "(clean glass); using %g",
        who,
        thr,
        MIN_OTSU_SATURATION,
        100 * above,
        MIN_OTSU_SATURATION,
    )
    return MIN_OTSU_SATURATION, []
