"""Microns per pixel (MPP) of a slide: validation and the trust order of its sources.

Trust order: the caller's override (sheet ``mpp`` column / ``--slide-mpp``) > OpenSlide's
``openslide.mpp-x/-y`` > TIFF resolution tags (unit centimetre or inch). An MPP outside
[MPP_MIN, MPP_MAX] or with x/y differing by more than 5 % is rejected (typical of a 72 dpi default
written by image editors), as is a slide without any MPP: :class:`~gigamil.errors.SlideError`
says which slide and how to fix it. Within that tolerance x and y are kept apart
(:func:`resolve_mpp_xy`): rasters and patches are resampled per axis, so non-square pixels come
out square at the requested µm/px.
"""

from __future__ import annotations

import math

from gigamil.errors import SlideError

MPP_MIN = 0.05  # µm/px; finer than any optical scanner
MPP_MAX = 100.0  # µm/px; coarser than any useful slide scan
MPP_XY_TOLERANCE = 0.05  # relative x/y difference accepted
OVERRIDE_SOURCE = "the override (sheet/--slide-mpp)"
FIX_HINT = (
    "set the slide's `mpp` column in the cohort sheet or the cohort's `mpp` in config.yaml "
    "(gigamil mask / patches: --slide-mpp)"
)


def check_mpp(name: str, mpp_x: float, mpp_y: float, source: str) -> float:
    """Validate an (x, y) MPP pair read from ``source``; return their mean.

    Raises SlideError if either value is not finite, outside [MPP_MIN, MPP_MAX], or if x and y
    differ by more than MPP_XY_TOLERANCE (relative).
    """
    for v in (mpp_x, mpp_y):
        if not (math.isfinite(v) and MPP_MIN <= v <= MPP_MAX):
            typed = source == OVERRIDE_SOURCE  # a value the user typed, not a file's dpi
            detail = (
                "a typo, or another unit? µm per pixel, e.g. 0.25 at 40x, 0.5 at 20x"
                if typed
                else "a 72/96 dpi image default?"  # 25400 µm per inch / 96 or 72 dpi
                if 200 <= v <= 400
                else "not the scan's resolution; 0.25 is 40x, 0.5 20x"
            )
            fix = (
                "fix the sheet's `mpp` column, the cohort's `mpp` in config.yaml or --slide-mpp"
                if typed
                else FIX_HINT
            )
            raise SlideError(
                f"{name}: implausible microns-per-pixel {mpp_x:g} x {mpp_y:g} from {source} "
                f"(expected {MPP_MIN:g}..{MPP_MAX:g}; {detail}); {fix}",
                reason="mpp",
            )
    if abs(mpp_x - mpp_y) > MPP_XY_TOLERANCE * max(mpp_x, mpp_y):
        raise SlideError(
            f"{name}: non-square pixels, MPP x={mpp_x:g} y={mpp_y:g} from {source}; {FIX_HINT}",
            reason="mpp",
        )
    return (mpp_x + mpp_y) / 2.0


def mpp_from_resolution(
    x_res: float | None, y_res: float | None, unit: str | int | None
) -> tuple[float, float] | None:
    """MPP (x, y) from TIFF XResolution/YResolution (pixels per unit) and ResolutionUnit.

    ``unit`` is the TIFF code (2 inch, 3 centimetre) or a name ("inch", "centimeter", ...).
    Returns None when the resolution is absent or has no absolute unit.
    """
    if x_res is None or y_res is None:
        return None
    name = str(unit).strip().lower() if unit is not None else ""
    if name in ("2", "inch", "in", "resunit.inch"):
        microns = 25400.0
    elif name in ("3", "centimeter", "centimetre", "cm", "resunit.centimeter"):
        microns = 10000.0
    elif name in ("4", "millimeter", "millimetre", "mm"):
        microns = 1000.0
    elif name in ("5", "micrometer", "micrometre", "um"):
        microns = 1.0
    else:
        return None
    x_res, y_res = float(x_res), float(y_res)
    if x_res <= 0 or y_res <= 0:
        return None
    return microns / x_res, microns / y_res


def resolve_mpp_xy(
    name: str,
    override: float | None,
    vendor_mpp: tuple[float, float] | None,
    tiff_mpp: tuple[float, float] | None,
) -> tuple[tuple[float, float], str]:
    """Pick the level-0 MPP by trust order; return ((mpp_x, mpp_y), source description).
    An override applies to both axes."""
    if override is not None:
        check_mpp(name, float(override), float(override), OVERRIDE_SOURCE)
        return (float(override), float(override)), "override"
    if vendor_mpp is not None:
        check_mpp(name, *vendor_mpp, "openslide.mpp-x/y")
        return (float(vendor_mpp[0]), float(vendor_mpp[1])), "openslide"
    if tiff_mpp is not None:
        check_mpp(name, *tiff_mpp, "the resolution tags (TIFF resolution / image dpi)")
        return (float(tiff_mpp[0]), float(tiff_mpp[1])), "tiff"
    raise SlideError(f"{name}: no microns-per-pixel (MPP) in the file; {FIX_HINT}", reason="mpp")


def resolve_mpp(
    name: str,
    override: float | None,
    vendor_mpp: tuple[float, float] | None,
    tiff_mpp: tuple[float, float] | None,
) -> tuple[float, str]:
    """Like :func:`resolve_mpp_xy`, with the mean of x and y: (mpp, source description)."""
    (mpp_x, mpp_y), source = resolve_mpp_xy(name, override, vendor_mpp, tiff_mpp)
    return (mpp_x + mpp_y) / 2.0, source
