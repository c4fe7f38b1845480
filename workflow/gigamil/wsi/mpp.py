"""Microns per pixel (MPP) of a slide: validation and the trust order of its sources.

Trust order: the caller's override (sheet ``mpp`` column / ``--slide-mpp``) > OpenSlide's
``openslide.mpp-x/-y`` > TIFF resolution tags (unit centimetre or inch; :func:`property_mpps`
and, for a plain TIFF, :func:`tiff_page_mpp`). An MPP outside
[MPP_MIN, MPP_MAX] or with x/y differing by more than 5 % is rejected (typical of a 72 dpi default
written by image editors), as is a slide without any MPP: :class:`~gigamil.errors.SlideError`
says which slide and how to fix it. Within that tolerance x and y are kept apart
(:func:`resolve_mpp_xy`): rasters and patches are resampled per axis, so non-square pixels come
out square at the requested µm/px.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

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


def _float_or_none(v: Any) -> float | None:
    try:
        return float(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def _rational(v: Any) -> float:
    if isinstance(v, tuple):
        return v[0] / v[1] if v[1] else 0.0
    return float(v)


def tiff_page_mpp(page: Any) -> tuple[float, float] | None:
    """The (x, y) µm/px of a tifffile page's resolution tags (None without them); a missing
    ResolutionUnit is an inch, TIFF's default (as OpenSlide reads it)."""
    tags = page.tags
    xr = tags.get("XResolution")
    yr = tags.get("YResolution")
    unit = tags.get("ResolutionUnit")
    return mpp_from_resolution(
        _rational(xr.value) if xr else None,
        _rational(yr.value) if yr else None,
        int(unit.value) if unit else 2,
    )


def property_mpps(
    props: Mapping[str, str], generic_tiff: str | None = None
) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """The (x, y) µm/px an OpenSlide property set states: the vendor's (``openslide.mpp-x/y``)
    and the TIFF resolution tags' (:func:`mpp_from_resolution`), each None when absent or
    unreadable; :func:`resolve_mpp_xy` chooses between them.

    OpenSlide takes a generic tiled TIFF's properties from the file's first directory, which
    need not be level 0 (a pyramid written smallest level first): with ``generic_tiff`` (the
    file's path) the resolution tags of the page OpenSlide lists as level 0 are used instead
    (:func:`_level0_page_mpp`), as the TIFF tags' MPP."""
    if generic_tiff is not None:
        level0 = (props.get("openslide.level[0].width"), props.get("openslide.level[0].height"))
        moved, level0_mpp = _level0_page_mpp(generic_tiff, level0)
        if moved:
            return None, level0_mpp
    vendor = None
    if "openslide.mpp-x" in props and "openslide.mpp-y" in props:
        try:
            vendor = float(props["openslide.mpp-x"]), float(props["openslide.mpp-y"])
        except ValueError:
            vendor = None
    tiff = mpp_from_resolution(
        _float_or_none(props.get("tiff.XResolution")),
        _float_or_none(props.get("tiff.YResolution")),
        props.get("tiff.ResolutionUnit"),
    )
    return vendor, tiff


def _level0_page_mpp(
    path: str, level0: tuple[str | None, str | None] = (None, None)
) -> tuple[bool, tuple[float, float] | None]:
    """``(True, MPP of its resolution tags)`` for the tiled page of the TIFF ``path`` that
    OpenSlide lists as level 0 when that is not the file's first page; ``(False, None)`` when
    it is, or when tifffile cannot read the file (OpenSlide's properties stand).

    That page has OpenSlide's level-0 size ``level0`` (width, height) and is one OpenSlide
    admits: the first page, or one marked reduced-resolution (NewSubfileType bit 1). A
    full-resolution page (NewSubfileType 0) written after the reduced ones is skipped by
    OpenSlide: its µm/px is not level 0's. Without ``level0`` the largest tiled page is taken."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            tiled = [p for p in tif.pages if isinstance(p, tifffile.TiffPage) and p.is_tiled]
            admitted = [p for p in tiled if p.index == 0 or int(p.subfiletype) & 1]
            if None not in level0:
                size = (int(level0[0] or 0), int(level0[1] or 0))
                tiled = [p for p in admitted if (p.imagewidth, p.imagelength) == size]
            if not tiled:
                return False, None
            largest = max(tiled, key=lambda p: int(p.imagewidth) * int(p.imagelength))
            if largest.index == 0:
                return False, None
            return True, tiff_page_mpp(largest)
    except Exception:  # noqa: BLE001 - OpenSlide opened it: its properties stand
        return False, None
