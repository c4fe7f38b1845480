"""The patch grid at an exact physical resolution: which patches, read from which level.

The patch grid lives on the *target raster* (``target_mpp`` µm/px; ``fx = target_mpp /
slide_mpp_x`` and ``fy = target_mpp / slide_mpp_y`` level-0 px per target px, so non-square slide
pixels give square patches): patch (row, col) covers target pixels
[col*stride, col*stride + patch_px) x [row*stride, row*stride + patch_px), i.e. level-0
x = col * stride * fx, y = row * stride * fy (stored rounded in ``coords``). Only whole patches inside the slide are on
the grid; a patch is kept if its tissue-mask coverage (area-weighted) is >= ``min_tissue``.

Pixels come from the pyramid level whose MPP is the closest finer-or-equal one (1 % tolerance).
If that level's MPP differs from the target by more than ``resample_tolerance`` (relative) the
region is resampled onto the target raster exactly (box/area filter), so ``effective_mpp`` equals
the target; otherwise (e.g. 0.499 vs 0.5 µm/px at the default 0.5 % tolerance) level pixels are cut
as they are and ``effective_mpp`` is the level's MPP.

The extraction itself (reading, encoding, writing) is :mod:`gigamil.wsi.extract`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gigamil.errors import GigamilError
from gigamil.settings import PatchConfig
from gigamil.wsi.raster import level_scale
from gigamil.wsi.slide import SlideReader
from gigamil.wsi.stain import STAIN_NORMALIZATIONS

log = logging.getLogger(__name__)

LEVEL_TOLERANCE = 0.01  # a level up to 1 % coarser than the target still counts as "equal"
# targets finer than a slide's µm/px / 4 are refused (a typo such as 0.005 for 0.5)
MAX_UPSAMPLING = 4.0


def upsampling_problem(slide_mpp: float, target_mpp: float) -> str | None:
    """Why patches at ``target_mpp`` µm/px cannot be cut from a slide scanned at ``slide_mpp``
    µm/px (more than :data:`MAX_UPSAMPLING` times finer: detail the scan does not have, and the
    patch count grows with the square of the factor), or None."""
    factor = slide_mpp / target_mpp
    if factor <= MAX_UPSAMPLING:
        return None
    return (
        f"target {target_mpp:g} µm/px (preprocessing.patches.mpp, gigamil patches --mpp) is "
        f"{factor:.3g}x finer than the slide's "
        f"{slide_mpp:g} µm/px (at most {MAX_UPSAMPLING:g}x upsampling is allowed: it would only "
        f"invent detail and multiply the patches by {factor**2:.3g}); set the target µm/px the "
        "model needs, e.g. 0.5 for 20x or 0.25 for 40x"
    )


MAX_EFFECTIVE_MPP_ERROR = 0.01


_SCHEMA_DEFAULTS = PatchConfig()


@dataclass(frozen=True)
class PatchParams:
    """``preprocessing.patches`` in config.yaml (defaults from the schema, via
    :class:`gigamil.settings.PatchConfig`) plus tuning knobs with defaults."""

    mpp: float = _SCHEMA_DEFAULTS.mpp
    patch_px: int = _SCHEMA_DEFAULTS.patch_px
    stride_px: int | None = _SCHEMA_DEFAULTS.stride_px  # None = patch_px
    min_tissue: float = _SCHEMA_DEFAULTS.min_tissue
    codec: str = _SCHEMA_DEFAULTS.codec
    jpeg_quality: int = _SCHEMA_DEFAULTS.jpeg_quality
    stain_normalization: str = _SCHEMA_DEFAULTS.stain_normalization
    resample_tolerance: float = 0.005
    block_px: int = 4096  # longest single read (a run of patches), in read-level pixels

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> PatchParams:
        """Build from a config sub-dict; unknown keys ignored, missing/None ones take defaults
        (``stride_px: null`` means stride = patch_px)."""
        d = d or {}
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d and d[k] is not None}
        return cls(**known)

    @property
    def stride(self) -> int:
        return int(self.patch_px if self.stride_px is None else self.stride_px)  # 0 is refused

    def validate(self) -> None:
        if not (self.mpp > 0 and math.isfinite(self.mpp)):
            raise GigamilError(f"patch mpp must be a positive number, got {self.mpp}")
        if int(self.patch_px) < 1:
            raise GigamilError(f"patch_px must be >= 1, got {self.patch_px}")
        if self.stride < 1:
            raise GigamilError(f"stride must be >= 1 px, got {self.stride_px}")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise GigamilError(f"min_tissue must be in 0..1, got {self.min_tissue}")
        if self.stain_normalization not in STAIN_NORMALIZATIONS:
            raise GigamilError(
                f"stain_normalization must be one of {STAIN_NORMALIZATIONS}, "
                f"got {self.stain_normalization!r}"
            )
        if not 0.0 <= self.resample_tolerance <= MAX_EFFECTIVE_MPP_ERROR:
            raise GigamilError(
                f"resample_tolerance must be in 0..{MAX_EFFECTIVE_MPP_ERROR}, "
                f"got {self.resample_tolerance}"
            )


@dataclass
class PatchPlan:
    """Where the patches are and how they are read (everything but the pixels)."""

    target_mpp: float
    slide_mpp: float
    patch_px: int
    stride_px: int
    fx: float  # level-0 px per target px (x)
    fy: float  # level-0 px per target px (y)
    level: int
    level_downsample: float
    sx: float  # level px per target px (x)
    sy: float
    resample: bool
    effective_mpp: float  # mean of effective_mpp_xy
    effective_mpp_xy: tuple[float, float]
    slide_mpp_xy: tuple[float, float]
    n_rows: int
    n_cols: int
    grid: np.ndarray  # (N, 2) int64 (row, col), raster order
    coords: np.ndarray  # (N, 2) int64 level-0 (x, y)
    coverage: np.ndarray  # (N,) float tissue coverage of each kept patch
    warnings: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.grid)

    @property
    def f(self) -> float:
        """Level-0 px per target px, the mean of ``fx`` and ``fy`` (equal for square pixels)."""
        return (self.fx + self.fy) / 2.0

    @property
    def patch_size_level0(self) -> float:
        """Patch side in level-0 px (the mean of x and y, see ``patch_size_level0_xy``)."""
        return self.patch_px * self.f

    @property
    def patch_size_level0_xy(self) -> tuple[float, float]:
        """Patch (width, height) in level-0 px."""
        return self.patch_px * self.fx, self.patch_px * self.fy


def mask_coverage(
    mask: np.ndarray,
    slide_dims: tuple[int, int],
    x0: np.ndarray,
    y0: np.ndarray,
    size_x: float,
    size_y: float,
) -> np.ndarray:
    """Area-weighted fraction of mask pixels under level-0 boxes [x0, x0+size_x) x [y0, ...).

    ``mask`` (Hm, Wm) bool spans the whole slide (``slide_dims`` = level-0 (w, h)); ``x0``
    (n_cols,) and ``y0`` (n_rows,) give a separable grid of boxes: returns (n_rows, n_cols).
    Parts of a box outside the mask count as background. The mask is treated as piecewise
    constant, whose integral image is exactly bilinear inside each cell.
    """
    hm, wm = mask.shape
    w0, h0 = slide_dims
    integral = np.zeros((hm + 1, wm + 1), np.float64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.float64), axis=1)

    def interp_axis(values: np.ndarray, n: int, pos: np.ndarray, axis: int) -> np.ndarray:
        pos = np.clip(pos, 0.0, float(n))
        i = np.minimum(np.floor(pos).astype(np.int64), n - 1) if n > 0 else np.zeros_like(pos)
        t = pos - i
        a = np.take(values, i, axis=axis)
        b = np.take(values, np.minimum(i + 1, n), axis=axis)
        shape = [1, 1]
        shape[axis] = -1
        t = t.reshape(shape)
        return a * (1 - t) + b * t

    sx, sy = wm / w0, hm / h0  # mask px per level-0 px
    xa, xb = x0 * sx, (x0 + size_x) * sx
    ya, yb = y0 * sy, (y0 + size_y) * sy
    at_xa = interp_axis(integral, wm, xa, 1)  # (hm+1, n_cols)
    at_xb = interp_axis(integral, wm, xb, 1)
    s_aa = interp_axis(at_xa, hm, ya, 0)  # (n_rows, n_cols)
    s_ab = interp_axis(at_xb, hm, ya, 0)
    s_ba = interp_axis(at_xa, hm, yb, 0)
    s_bb = interp_axis(at_xb, hm, yb, 0)
    area = (size_x * sx) * (size_y * sy)
    return np.clip((s_bb - s_ab - s_ba + s_aa) / area, 0.0, 1.0)


def mask_shape_problem(
    mask_shape: tuple[int, ...],
    dimensions: tuple[int, int],
    mpp_xy: tuple[float, float],
) -> str | None:
    """Why a tissue mask of ``mask_shape`` (Hm, Wm) px cannot be the mask of a slide of level-0
    ``dimensions`` (W, H) px at ``mpp_xy`` (x, y) µm/px, or None: a mask spans the whole slide
    with square pixels in µm (:func:`gigamil.wsi.tissue.compute_tissue_mask`), so its width and
    height must scale the slide's alike, up to the rounding of each side to whole pixels."""
    hm, wm = int(mask_shape[0]), int(mask_shape[1])
    (w0, h0), (mpp_x, mpp_y) = dimensions, mpp_xy
    um_x, um_y = w0 * mpp_x / max(wm, 1), h0 * mpp_y / max(hm, 1)  # µm per mask pixel
    if hm > 0 and wm > 0 and abs(um_x / um_y - 1.0) <= 1.0 / min(hm, wm) + 0.01:
        return None
    return (
        f"the tissue mask ({wm} x {hm} px) does not have the slide's shape ({w0} x {h0} px): "
        f"its pixels would be {um_x:.3g} x {um_y:.3g} µm; is it this slide's mask (made by "
        "gigamil mask from this slide)?"
    )


def _upsampling_note(reader: SlideReader, target: float, f: float) -> list[str]:
    """The warning (a list of 0 or 1) for a target ``f`` level-0 px per target px finer than
    the slide's own resolution (beyond the level tolerance)."""
    if f >= 1.0 / (1.0 + LEVEL_TOLERANCE):
        return []
    return [
        f"{reader.name}: target {target:g} µm/px is finer than the slide's {reader.mpp:g} µm/px; "
        f"patches are upsampled {1 / f:.2f}x"
    ]


def plan_patches(reader: SlideReader, params: PatchParams, mask: np.ndarray | None) -> PatchPlan:
    """Grid, kept patches (by mask coverage), read level and resampling of a slide."""
    params.validate()
    w0, h0 = reader.dimensions
    target = float(params.mpp)
    mpp_x, mpp_y = reader.mpp_xy
    fx, fy = target / mpp_x, target / mpp_y
    # the slide's mean µm/px, as gigamil.wsi.preflight compares it (what it let through passes)
    mask_problem = (
        None if mask is None else mask_shape_problem(mask.shape, reader.dimensions, reader.mpp_xy)
    )
    if problem := upsampling_problem(reader.mpp, target) or mask_problem:
        raise GigamilError(f"{reader.name}: {problem}")
    p, s = int(params.patch_px), params.stride
    level = reader.best_level_for_mpp(target, LEVEL_TOLERANCE)
    sx, sy = level_scale(reader, level, fx, fy)
    warnings = _upsampling_note(reader, target, min(fx, fy))
    resample = max(abs(sx - 1.0), abs(sy - 1.0)) > params.resample_tolerance
    n_rows, n_cols = _grid_shape((w0, h0), fx, fy, p, s)
    if not resample:  # p level px per patch: the last ones must end inside the level
        n_rows, n_cols = _fit_level(n_rows, n_cols, reader.level_dimensions[level], p, s, sx, sy)
    if n_cols == 0 or n_rows == 0:
        size = f"{w0} x {h0} px at {reader.mpp:g} µm/px"
        warnings.append(
            f"{reader.name}: slide ({size}) is smaller than one {p}-px patch at {target:g} µm/px"
        )
    effective_xy = (target, target) if resample else reader.level_mpp(level)
    effective = (effective_xy[0] + effective_xy[1]) / 2.0
    for e in effective_xy:  # guarded by construction
        if abs(e / target - 1.0) > MAX_EFFECTIVE_MPP_ERROR:
            raise GigamilError(f"{reader.name}: effective MPP {e:g} not within 1 % of {target}")

    grid, coords, coverage = _kept_patches(mask, params, (w0, h0), (n_rows, n_cols), fx, fy)
    if len(grid) == 0 and n_cols and n_rows:
        warnings.append(
            f"{reader.name}: no patch reaches min_tissue={params.min_tissue}; 0 patches"
        )
    return PatchPlan(
        target_mpp=target,
        slide_mpp=reader.mpp,
        patch_px=p,
        stride_px=s,
        fx=fx,
        fy=fy,
        level=level,
        level_downsample=float(reader.level_downsamples[level]),
        sx=sx,
        sy=sy,
        resample=resample,
        effective_mpp=effective,
        effective_mpp_xy=(float(effective_xy[0]), float(effective_xy[1])),
        slide_mpp_xy=(float(mpp_x), float(mpp_y)),
        n_rows=n_rows,
        n_cols=n_cols,
        grid=grid,
        coords=coords,
        coverage=coverage,
        warnings=warnings,
    )


def _grid_shape(dims: tuple[int, int], fx: float, fy: float, p: int, s: float) -> tuple[int, int]:
    """(rows, cols) of whole ``p``-px patches at stride ``s`` (target px) on a slide of level-0
    ``dims`` (w, h) with ``fx``, ``fy`` level-0 px per target px; 0 where one patch does not fit.
    A side of exactly ``p`` target px holds one patch even where the division leaves it a
    rounding error short (240 / (0.9 / 0.24) is 63.99999999999999, not 64)."""
    wt, ht = dims[0] / fx, dims[1] / fy  # slide size in target px
    n_cols = max(0, int(math.floor((wt - p) / s + 1e-9)) + 1)
    n_rows = max(0, int(math.floor((ht - p) / s + 1e-9)) + 1)
    return n_rows, n_cols


def _fit_level(  # noqa: PLR0913 - the grid's geometry, axis by axis
    n_rows: int, n_cols: int, level_dims: tuple[int, int], p: int, s: float, sx: float, sy: float
) -> tuple[int, int]:
    """(rows, cols) of the grid whose patches, read without resampling as ``p`` level pixels
    from the level pixel ``round(col * s * sx)`` (``round(row * s * sy)``), end inside the
    level of ``level_dims`` (w, h). A level up to ``resample_tolerance`` coarser than the target
    (``sx`` < 1) is narrower than the target grid: its last patch would run past the slide's
    edge by up to ``p * (1 - sx)`` px (read as background)."""
    lw, lh = level_dims
    while n_cols and round((n_cols - 1) * s * sx) + p > lw:
        n_cols -= 1
    while n_rows and round((n_rows - 1) * s * sy) + p > lh:
        n_rows -= 1
    return n_rows, n_cols


def _kept_patches(  # noqa: PLR0913 - the grid's geometry, axis by axis
    mask: np.ndarray | None,
    params: PatchParams,
    dims: tuple[int, int],
    shape: tuple[int, int],
    fx: float,
    fy: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The grid's patches whose mask coverage reaches ``params.min_tissue``, in raster order:
    ``(grid (n, 2) row, col; coords (n, 2) level-0 x, y of the top-left corner, rounded;
    coverage (n,))``. ``dims``: level-0 (w, h); ``shape``: (rows, cols); ``fx``, ``fy``:
    level-0 px per target px. Without a mask every patch is kept."""
    (w0, h0), (n_rows, n_cols) = dims, shape
    p, s = int(params.patch_px), params.stride
    x0 = np.arange(n_cols, dtype=np.int64) * s * fx
    y0 = np.arange(n_rows, dtype=np.int64) * s * fy
    if mask is None or n_cols == 0 or n_rows == 0:
        cov = np.ones((n_rows, n_cols))
    else:
        cov = mask_coverage(mask, (w0, h0), x0, y0, p * fx, p * fy)
    # the coverage of a box wholly in tissue can come out 1 - 2e-15 (summed-area differences):
    # compared with a tolerance, min_tissue 1.0 keeps it (and 0.5 an exact half)
    keep = cov >= params.min_tissue - 1e-9 if params.min_tissue > 0 else np.ones_like(cov, bool)
    if mask is not None and params.min_tissue > 0 and not mask.any():
        keep[:] = False
    rr, cc = np.nonzero(keep)  # raster order
    grid = np.stack([rr, cc], axis=1).astype(np.int64).reshape(-1, 2)
    coords = np.stack([np.round(x0[cc]), np.round(y0[rr])], axis=1).astype(np.int64).reshape(-1, 2)
    return grid, coords, cov[rr, cc].astype(np.float64)


def plan_units(
    plan: PatchPlan, chunk: int, block_px: int
) -> list[tuple[int, int, list[np.ndarray]]]:
    """Split the kept patches into work units, one per store chunk, each a list of reads.

    A unit is the ``chunk`` consecutive store rows [k*chunk, (k+1)*chunk) (raster order), so a
    worker can encode and write its chunk itself. A read ("window") is a run of horizontally
    adjacent kept patches of one grid row, at most about ``block_px`` read-level px wide:
    reading only runs never decodes the background between tissue pieces, and the tile rows
    shared by consecutive patch rows come from the tile cache.
    Returns [(first plan index, end plan index, [window index arrays])].
    """
    if plan.n == 0:
        return []
    step = plan.stride_px * max(plan.sx, plan.sy)  # read-level px per grid step
    cols_per_window = max(1, int(block_px // step))
    rows, cols = plan.grid[:, 0], plan.grid[:, 1]
    index = np.arange(plan.n)
    # a new run starts at a new row, after a gap, or at a chunk boundary
    new_run = np.ones(plan.n, bool)
    new_run[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1] + 1) | (index[1:] % chunk == 0)
    run_start = np.flatnonzero(new_run)
    pos_in_run = index - run_start[np.cumsum(new_run) - 1]
    new_window = new_run | (pos_in_run % cols_per_window == 0)
    starts = np.flatnonzero(new_window)
    ends = np.append(starts[1:], plan.n)
    units: list[tuple[int, int, list[np.ndarray]]] = []
    for a, b in zip(starts, ends, strict=True):
        k = a // chunk
        if units and units[-1][0] // chunk == k:
            units[-1] = (units[-1][0], int(b), [*units[-1][2], np.arange(a, b)])
        else:
            units.append((int(k * chunk), int(b), [np.arange(a, b)]))
    return units
