"""Patches at an exact physical resolution, written to a zarr patch store.

The patch grid lives on the *target raster* (``target_mpp`` µm/px; ``f = target_mpp / slide_mpp``
level-0 px per target px): patch (row, col) covers target pixels
[col*stride, col*stride + patch_px) x [row*stride, row*stride + patch_px), i.e. level-0
x = col * stride * f (stored rounded in ``coords``). Only whole patches inside the slide are on
the grid; a patch is kept if its tissue-mask coverage (area-weighted) is >= ``min_tissue``.

Pixels come from the pyramid level whose MPP is the closest finer-or-equal one (1 % tolerance).
If that level's MPP differs from the target by more than ``resample_tolerance`` (relative) the
region is resampled onto the target raster exactly (box/area filter), so ``effective_mpp`` equals
the target; otherwise (e.g. 0.499 vs 0.5 µm/px at the default 0.5 % tolerance) level pixels are cut
as they are and ``effective_mpp`` is the level's MPP.

Reading is block-wise: each run of horizontally adjacent kept patches is one region read (tiles
decoded once, shared through one tile cache), resampled once and cut into patches. The work unit
is one store chunk (64-256 consecutive patches): ``threads`` worker threads each read, encode and
write whole chunks (tile decoding, Pillow and the codecs release the GIL), under a temporary store
name that is renamed at the end.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gigamil.errors import GigamilError
from gigamil.settings import PatchConfig
from gigamil.wsi.raster import level_scale, read_raster
from gigamil.wsi.reader import SlideReader, open_slide, shared_tile_cache
from gigamil.wsi.tissue import TissueParams, compute_tissue_mask

log = logging.getLogger(__name__)

LEVEL_TOLERANCE = 0.01  # a level up to 1 % coarser than the target still counts as "equal"
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
        return int(self.stride_px or self.patch_px)

    def validate(self) -> None:
        if not (self.mpp > 0 and math.isfinite(self.mpp)):
            raise GigamilError(f"patch mpp must be a positive number, got {self.mpp}")
        if int(self.patch_px) < 1:
            raise GigamilError(f"patch_px must be >= 1, got {self.patch_px}")
        if self.stride < 1:
            raise GigamilError(f"stride must be >= 1 px, got {self.stride_px}")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise GigamilError(f"min_tissue must be in 0..1, got {self.min_tissue}")
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
    f: float  # level-0 px per target px
    level: int
    level_downsample: float
    sx: float  # level px per target px (x)
    sy: float
    resample: bool
    effective_mpp: float
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
    def patch_size_level0(self) -> float:
        return self.patch_px * self.f


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


def plan_patches(reader: SlideReader, params: PatchParams, mask: np.ndarray | None) -> PatchPlan:
    """Grid, kept patches (by mask coverage), read level and resampling of a slide."""
    params.validate()
    warnings: list[str] = []
    w0, h0 = reader.dimensions
    target = float(params.mpp)
    f = target / reader.mpp
    p, s = int(params.patch_px), params.stride
    wt, ht = w0 / f, h0 / f  # slide size in target px
    n_cols = int(math.floor((wt - p) / s + 1e-9)) + 1 if wt >= p else 0
    n_rows = int(math.floor((ht - p) / s + 1e-9)) + 1 if ht >= p else 0
    if n_cols == 0 or n_rows == 0:
        warnings.append(
            f"{reader.name}: slide ({w0} x {h0} px at {reader.mpp:g} µm/px) is smaller than one "
            f"{p}-px patch at {target:g} µm/px"
        )
    level = reader.best_level_for_mpp(target, LEVEL_TOLERANCE)
    sx, sy = level_scale(reader, level, f, f)
    if f < 1.0 / (1.0 + LEVEL_TOLERANCE):
        warnings.append(
            f"{reader.name}: target {target:g} µm/px is finer than the slide's "
            f"{reader.mpp:g} µm/px; patches are upsampled {1 / f:.2f}x"
        )
    resample = max(abs(sx - 1.0), abs(sy - 1.0)) > params.resample_tolerance
    if resample:
        effective = target
    else:
        lmx, lmy = reader.level_mpp(level)
        effective = (lmx + lmy) / 2.0
    if abs(effective / target - 1.0) > MAX_EFFECTIVE_MPP_ERROR:  # guarded by construction
        raise GigamilError(f"{reader.name}: effective MPP {effective:g} not within 1 % of {target}")

    cols = np.arange(n_cols, dtype=np.int64)
    rows = np.arange(n_rows, dtype=np.int64)
    x0 = cols * s * f
    y0 = rows * s * f
    if mask is None or n_cols == 0 or n_rows == 0:
        cov = np.ones((n_rows, n_cols))
    else:
        cov = mask_coverage(mask, (w0, h0), x0, y0, p * f, p * f)
    keep = cov >= params.min_tissue if params.min_tissue > 0 else np.ones_like(cov, bool)
    if mask is not None and params.min_tissue > 0 and not mask.any():
        keep[:] = False
    rr, cc = np.nonzero(keep)  # raster order
    grid = np.stack([rr, cc], axis=1).astype(np.int64).reshape(-1, 2)
    coords = np.stack([np.round(x0[cc]), np.round(y0[rr])], axis=1).astype(np.int64).reshape(-1, 2)
    if len(grid) == 0 and n_cols and n_rows:
        warnings.append(
            f"{reader.name}: no patch reaches min_tissue={params.min_tissue}; 0 patches"
        )
    return PatchPlan(
        target_mpp=target,
        slide_mpp=reader.mpp,
        patch_px=p,
        stride_px=s,
        f=f,
        level=level,
        level_downsample=float(reader.level_downsamples[level]),
        sx=sx,
        sy=sy,
        resample=resample,
        effective_mpp=effective,
        n_rows=n_rows,
        n_cols=n_cols,
        grid=grid,
        coords=coords,
        coverage=cov[rr, cc].astype(np.float64),
        warnings=warnings,
    )


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


def read_window(
    reader: SlideReader, plan: PatchPlan, idx: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """Patches ``idx`` of the plan, (k, P, P, 3) uint8, from one region read (into ``out``)."""
    p, s = plan.patch_px, plan.stride_px
    rows, cols = plan.grid[idx, 0], plan.grid[idx, 1]
    if out is None:
        out = np.empty((len(idx), p, p, 3), np.uint8)
    if plan.resample:
        u0, v0 = int(cols.min()) * s, int(rows.min()) * s
        u1, v1 = int(cols.max()) * s + p, int(rows.max()) * s + p
        img = read_raster(reader, plan.level, plan.f, plan.f, u0, v0, u1 - u0, v1 - v0)
        for k, (r, c) in enumerate(zip(rows, cols, strict=True)):
            y, x = int(r) * s - v0, int(c) * s - u0
            out[k] = img[y : y + p, x : x + p]
        return out
    # no resampling: level pixels as they are, patch origin rounded to the level pixel
    lx = np.round(cols * s * plan.sx).astype(np.int64)
    ly = np.round(rows * s * plan.sy).astype(np.int64)
    if getattr(reader, "fast_tiff", False):  # straight from the cached tiles, one copy
        for k in range(len(idx)):
            reader.read_level_into(plan.level, int(lx[k]), int(ly[k]), out[k])
        return out
    rx0, ry0 = int(lx.min()), int(ly.min())
    rw, rh = int(lx.max()) + p - rx0, int(ly.max()) + p - ry0
    ds = plan.level_downsample
    img = reader.read_region_view((round(rx0 * ds), round(ry0 * ds)), plan.level, (rw, rh))
    for k in range(len(idx)):
        y, x = int(ly[k]) - ry0, int(lx[k]) - rx0
        out[k] = img[y : y + p, x : x + p]
    return out


@dataclass
class ExtractResult:
    """What :func:`extract_patches` did."""

    out: Path
    n_patches: int
    seconds: float
    attrs: dict[str, Any]
    warnings: list[str]


def source_info(path: str | Path) -> tuple[str, int, float]:
    """(absolute path, size in bytes, mtime) of a slide file, for staleness checks."""
    p = Path(path)
    try:
        st = p.stat()
        return str(p.resolve()), int(st.st_size), float(st.st_mtime)
    except OSError:
        return str(path), -1, -1.0


def extract_patches(
    slide: str | Path | SlideReader,
    out: str | Path,
    params: PatchParams,
    mask: np.ndarray | None = None,
    mask_params: dict[str, Any] | None = None,
    tissue_params: TissueParams | None = None,
    slide_mpp: float | None = None,
    slide_id: str | None = None,
    threads: int = 1,
    progress: bool = True,
    cache_mb: int = 256,
) -> ExtractResult:
    """Cut the patches of one slide into the zarr store ``out`` (see the module docstring).

    ``slide``: a path (each worker thread opens its own handle, sharing one tile cache) or an
    open reader (shared by the workers). ``mask``: (H, W) bool tissue mask over the whole slide
    (any resolution); None computes one with ``tissue_params`` (defaults if None), in which
    case ``mask_params`` defaults to those parameters.
    """
    from tqdm import tqdm

    from gigamil import __version__
    from gigamil.data.store import StoreWriter

    t0 = time.perf_counter()
    threads = max(1, int(threads))
    cache = None
    if isinstance(slide, SlideReader):
        reader = slide
        factory: Callable[[], SlideReader] = lambda: reader  # noqa: E731
        own = False
        src = reader.path
    else:
        src = str(slide)
        try:
            cache = shared_tile_cache(cache_mb) if cache_mb > 0 else None
        except Exception:  # openslide missing: the fallback reader has no cache
            cache = None
        reader = open_slide(slide, slide_mpp, cache=cache)
        factory = lambda: open_slide(slide, slide_mpp, cache=cache)  # noqa: E731
        own = True
    try:
        warnings: list[str] = []
        if mask is None:
            tp = tissue_params or TissueParams()
            tm = compute_tissue_mask(reader, tp, keep_rgb=False)
            mask = tm.mask
            warnings += tm.warnings
            if mask_params is None:
                mask_params = {"computed": True, **asdict(tp)}
        plan = plan_patches(reader, params, mask)
        warnings += plan.warnings
        for w in plan.warnings:
            log.warning("%s", w)
        log.info(
            "%s: %d patches (%d x %d grid), level %d (downsample %.3f), %s, %d thread(s)",
            reader.name,
            plan.n,
            plan.n_rows,
            plan.n_cols,
            plan.level,
            plan.level_downsample,
            f"resampled to {plan.target_mpp:g} µm/px" if plan.resample else "not resampled",
            threads,
        )
        src_abs, size, mtime = source_info(src)
        attrs = {
            "slide_id": slide_id or Path(src).stem,
            "source_path": src_abs,
            "source_size": size,
            "source_mtime": mtime,
            "slide_mpp": reader.mpp,
            "slide_mpp_source": reader.mpp_source,
            "target_mpp": plan.target_mpp,
            "effective_mpp": plan.effective_mpp,
            "resampled": plan.resample,
            "patch_px": plan.patch_px,
            "stride_px": plan.stride_px,
            "patch_size_level0": plan.patch_size_level0,
            "level": plan.level,
            "level_downsample": plan.level_downsample,
            "min_tissue": params.min_tissue,
            "mask_params": mask_params or {},
            "tissue_fraction": float(mask.mean()) if mask is not None and mask.size else None,
            "codec": params.codec,
            "jpeg_quality": params.jpeg_quality if params.codec == "jpeg" else None,
            "gigamil_version": __version__,
            "slide_dimensions": list(reader.dimensions),
            "grid_shape": [plan.n_rows, plan.n_cols],
            "n_patches": plan.n,
            "warnings": warnings,
        }
        with StoreWriter(
            out,
            plan.n,
            plan.patch_px,
            plan.coords,
            plan.grid,
            codec=params.codec,
            jpeg_quality=params.jpeg_quality,
        ) as writer:
            bar = tqdm(
                total=plan.n,
                unit="patch",
                desc=attrs["slide_id"],
                disable=not progress or None,
                leave=False,
            )
            units = plan_units(plan, writer.chunk, params.block_px)
            _run_units(reader, factory, plan, units, threads, writer, bar)
            bar.close()
            attrs["seconds"] = round(time.perf_counter() - t0, 3)
            writer.commit(attrs)
    finally:
        if own:
            reader.close()
    return ExtractResult(Path(out), plan.n, attrs["seconds"], attrs, warnings)


def _run_units(
    reader: SlideReader,
    factory: Callable[[], SlideReader],
    plan: PatchPlan,
    units: list[tuple[int, int, list[np.ndarray]]],
    threads: int,
    writer: Any,
    bar: Any,
) -> None:
    """Each unit (one store chunk) is read, encoded and written by one of ``threads`` workers,
    each with its own slide handle (the first worker takes over ``reader``, which the calling
    thread no longer uses); the calling thread only schedules and reports progress."""
    import threading

    local = threading.local()
    handles: list[SlideReader] = []
    spare = [reader]
    lock = threading.Lock()

    def worker_reader() -> SlideReader:
        r = getattr(local, "reader", None)
        if r is None:
            with lock:
                r = spare.pop() if spare else None
            if r is None:
                r = factory()
                with lock:
                    handles.append(r)
            local.reader = r
        return r

    def do_unit(a: int, b: int, windows: list[np.ndarray]) -> int:
        r = worker_reader()
        out = np.empty((b - a, plan.patch_px, plan.patch_px, 3), np.uint8)
        for idx in windows:  # each window is a contiguous run of plan rows
            read_window(r, plan, idx, out[idx[0] - a : idx[-1] + 1 - a])
        writer.write_chunk(a // writer.chunk, out)
        return b - a

    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gigamil-patches")
    pending: deque[Future[int]] = deque()
    try:
        it = iter(units)
        for unit in it:
            pending.append(pool.submit(do_unit, *unit))
            if len(pending) >= 2 * threads:
                break
        while pending:
            done = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(do_unit, *nxt))
            bar.update(done)
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True)
        for r in handles:
            if r is not reader:
                r.close()


def default_threads() -> int:
    """CPU cores available to this process."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
