"""Stain normalisation of patches (``preprocessing.patches.stain_normalization``).

``macenko``: each patch is normalised on its own with the method of Macenko et al. 2009 ("A
method for normalizing histology slides for quantitative analysis", ISBI 2009), as implemented by
torchstain's numpy backend (MIT licence; Barbano & Pedersen): the patch's haematoxylin and eosin
stain vectors are estimated from its optical densities (the extreme angles of the pixels in the
plane of the two largest eigenvectors), its stain concentrations are scaled so that their 99th
percentiles match the reference's, and the patch is recomposed with the reference stain vectors
(torchstain's defaults, those of Macenko's reference implementation). Per-tile Macenko
normalisation before a CNN is the recipe of Kather et al. 2019 (Nat Med 25:1054). It takes each
patch's stain hue and strength away (pale or dark slides, one lab against another) and keeps its
morphology; it runs once, at patch extraction, so the stores hold normalised pixels.

A patch with fewer than :data:`MIN_STAINED_PX` stained pixels, or under
:data:`MIN_STAINED_FRACTION` of its pixels stained (optical density below ``beta`` in some
channel everywhere else), or whose estimate fails, is left as it is and counted: torchstain
scales a patch by the 99th percentile of its stain concentrations over all its pixels, glass
included, so on a patch with under about 1 % stained pixels that percentile falls on glass and
the glass is stretched to the reference's full stain strength (a review turned a CMU patch's
glass and PCam normal tiles dark purple).
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["MIN_STAINED_FRACTION", "MIN_STAINED_PX", "STAIN_NORMALIZATIONS", "normalize_stains"]

log = logging.getLogger(__name__)

STAIN_NORMALIZATIONS = ("none", "macenko")
IO = 240  # transmitted light intensity (torchstain's and Macenko's default)
BETA = 0.15  # optical density below which a pixel counts as unstained (ditto)
MIN_STAINED_PX = 64  # fewer stained pixels than this: the stain vectors are not estimated
MIN_STAINED_FRACTION = 0.05  # nor under this share of the patch (module docstring)


def _stained_px(patch: np.ndarray) -> int:
    od = -np.log((patch.reshape(-1, 3).astype(np.float64) + 1.0) / IO)
    return int((~(od < BETA).any(axis=1)).sum())


def normalize_stains(patches: np.ndarray, method: str = "macenko") -> tuple[np.ndarray, int]:
    """Stain-normalise uint8 RGB patches (n, H, W, 3) with ``method`` (``none`` or
    ``macenko``, module docstring). Returns the normalised patches (n, H, W, 3) uint8 (a new
    array; ``none`` returns ``patches`` itself) and the number of patches left unchanged because
    they have too few stained pixels or their estimate failed. ValueError for another method or
    another array shape or dtype."""
    if method not in STAIN_NORMALIZATIONS:
        raise ValueError(
            f"stain normalisation must be one of {STAIN_NORMALIZATIONS}, got {method!r}"
        )
    if patches.ndim != 4 or patches.shape[-1] != 3 or patches.dtype != np.uint8:
        raise ValueError(
            f"patches must be uint8 (n, H, W, 3), got {patches.dtype} {tuple(patches.shape)}"
        )
    if method == "none":
        return patches, 0
    from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

    normalizer = NumpyMacenkoNormalizer()  # reference stain vectors and maxima: its defaults
    out = patches.copy()
    skipped = 0
    for i, patch in enumerate(patches):
        needed = max(MIN_STAINED_PX, MIN_STAINED_FRACTION * patch.shape[0] * patch.shape[1])
        if _stained_px(patch) < needed:
            skipped += 1
            continue
        try:
            with np.errstate(all="raise"):
                norm, _, _ = normalizer.normalize(I=patch, Io=IO, beta=BETA, stains=False)
        except (np.linalg.LinAlgError, FloatingPointError, ValueError, IndexError):
            skipped += 1
            continue
        out[i] = norm
    return out, skipped
