"""Patch extraction: cut a slide's planned patches (:mod:`gigamil.wsi.patching`) into a zarr
patch store.

Reading is block-wise: each run of horizontally adjacent kept patches is one region read (tiles
decoded once, shared through one tile cache), resampled once and cut into patches. The work unit
is one store chunk (64-256 consecutive patches): ``threads`` worker threads each read, encode and
write whole chunks (tile decoding, Pillow and the codecs release the GIL), under a temporary store
name that is renamed at the end.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gigamil.wsi.patching import PatchParams, PatchPlan, plan_patches, plan_units
from gigamil.wsi.raster import read_raster
from gigamil.wsi.reader import open_slide, shared_tile_cache
from gigamil.wsi.slide import SlideReader
from gigamil.wsi.stain import normalize_stains
from gigamil.wsi.tissue import TissueParams, compute_tissue_mask

log = logging.getLogger(__name__)


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
        img = read_raster(reader, plan.level, plan.fx, plan.fy, u0, v0, u1 - u0, v1 - v0)
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


def extract_patches(  # noqa: PLR0913 - to group with the typed PatchConfig of issue 12 item 1
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
    case ``mask_params`` defaults to those parameters. ``progress``: a progress bar on a
    terminal; without one (or with False) a log line at most every 30 s.
    """
    from gigamil.data.store_writer import is_patch_store
    from gigamil.fileutil import check_replaceable_store

    check_replaceable_store(out, is_patch_store, "patch store")  # before any work
    t0 = time.perf_counter()
    threads = max(1, int(threads))
    reader, factory, own, src = _open_reader(slide, slide_mpp, cache_mb)
    try:
        warnings: list[str] = []
        if mask is None:
            mask, mask_params = _compute_mask(reader, tissue_params, mask_params, warnings)
        mask_params = _check_mask_slide(reader, mask_params)
        plan = plan_patches(reader, params, mask)
        warnings += plan.warnings
        _log_plan(reader, plan, threads)
        attrs = _store_attrs(reader, plan, params, src, slide_id, mask, mask_params, warnings)
        _write_store(out, reader, factory, plan, params, attrs, threads, progress, t0)
    finally:
        if own:
            reader.close()
    return ExtractResult(Path(out), plan.n, attrs["seconds"], attrs, warnings)


def _check_mask_slide(
    reader: SlideReader, mask_params: dict[str, Any] | None
) -> dict[str, Any] | None:
    """``mask_params`` without the size of the slide the mask was made from (its sidecar's,
    :data:`gigamil.wsi.mask_io.MASK_SLIDE_DIMENSIONS`); GigamilError when that is not this
    slide's size: another slide's mask of similar proportions passes the shape check of
    :func:`gigamil.wsi.patching.mask_shape_problem`."""
    from gigamil.errors import GigamilError
    from gigamil.wsi.mask_io import MASK_SLIDE_DIMENSIONS

    if not mask_params or MASK_SLIDE_DIMENSIONS not in mask_params:
        return mask_params
    rest = {k: v for k, v in mask_params.items() if k != MASK_SLIDE_DIMENSIONS}
    made_from, own = list(mask_params[MASK_SLIDE_DIMENSIONS]), list(reader.dimensions)
    if made_from != own:
        raise GigamilError(
            f"{reader.name}: the tissue mask {rest.get('mask_file', '')} was made from a slide of "
            f"{made_from[0]} x {made_from[1]} px (its JSON sidecar), not this slide's "
            f"{own[0]} x {own[1]} px: is it this slide's mask?"
        )
    return rest


def _open_reader(
    slide: str | Path | SlideReader, slide_mpp: float | None, cache_mb: int
) -> tuple[SlideReader, Callable[[], SlideReader], bool, str]:
    """(reader, factory of the workers' readers, whether we opened it, source path): an open
    ``slide`` is shared; a path is opened with a shared tile cache of ``cache_mb`` MB."""
    if isinstance(slide, SlideReader):
        reader = slide
        factory: Callable[[], SlideReader] = lambda: reader  # noqa: E731
        return reader, factory, False, reader.path
    try:
        cache = shared_tile_cache(cache_mb) if cache_mb > 0 else None
    except (ImportError, OSError):  # openslide missing: the fallback reader has no cache
        cache = None
    reader = open_slide(slide, slide_mpp, cache=cache)
    factory = lambda: open_slide(slide, slide_mpp, cache=cache)  # noqa: E731
    return reader, factory, True, str(slide)


def _compute_mask(
    reader: SlideReader,
    tissue_params: TissueParams | None,
    mask_params: dict[str, Any] | None,
    warnings: list[str],
) -> tuple[np.ndarray, dict[str, Any] | None]:
    """(mask, mask_params) of a slide without a mask: computed with ``tissue_params`` (defaults
    if None), whose values become ``mask_params`` unless given; its warnings join ``warnings``."""
    tp = tissue_params or TissueParams()
    tm = compute_tissue_mask(reader, tp, keep_rgb=False)
    warnings += tm.warnings
    if mask_params is None:
        mask_params = {"computed": True, **asdict(tp)}
    return tm.mask, mask_params


def _log_plan(reader: SlideReader, plan: PatchPlan, threads: int) -> None:
    """Log the plan's warnings and a summary of the patches to extract."""
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


def _store_attrs(
    reader: SlideReader,
    plan: PatchPlan,
    params: PatchParams,
    src: str,
    slide_id: str | None,
    mask: np.ndarray | None,
    mask_params: dict[str, Any] | None,
    warnings: list[str],
) -> dict[str, Any]:
    """The patch store's attributes (docs/architecture.md), all but ``seconds``."""
    from gigamil import __version__

    src_abs, size, mtime = source_info(src)
    return {
        "slide_id": slide_id or Path(src).stem,
        "source_path": src_abs,
        "source_size": size,
        "source_mtime": mtime,
        "slide_mpp": reader.mpp,
        "slide_mpp_xy": list(plan.slide_mpp_xy),
        "slide_mpp_source": reader.mpp_source,
        "target_mpp": plan.target_mpp,
        "effective_mpp": plan.effective_mpp,
        "effective_mpp_xy": list(plan.effective_mpp_xy),
        "resampled": plan.resample,
        "patch_px": plan.patch_px,
        "stride_px": plan.stride_px,
        "patch_size_level0": plan.patch_size_level0,
        "patch_size_level0_xy": list(plan.patch_size_level0_xy),
        "level": plan.level,
        "level_downsample": plan.level_downsample,
        "min_tissue": params.min_tissue,
        "mask_params": mask_params or {},
        "tissue_fraction": float(mask.mean()) if mask is not None and mask.size else None,
        "codec": params.codec,
        "jpeg_quality": params.jpeg_quality if params.codec == "jpeg" else None,
        "stain_normalization": params.stain_normalization,
        "gigamil_version": __version__,
        "slide_dimensions": list(reader.dimensions),
        "grid_shape": [plan.n_rows, plan.n_cols],
        "n_patches": plan.n,
        "warnings": warnings,
    }


def _write_store(  # noqa: PLR0913 - the store, the plan and how to run it
    out: str | Path,
    reader: SlideReader,
    factory: Callable[[], SlideReader],
    plan: PatchPlan,
    params: PatchParams,
    attrs: dict[str, Any],
    threads: int,
    progress: bool,
    t0: float,
) -> None:
    """Write the plan's patches into the store ``out`` with ``threads`` workers, then commit it
    with ``attrs`` plus ``seconds`` (since ``t0``, set in ``attrs``)."""
    from tqdm import tqdm

    from gigamil.data.store_writer import StoreWriter
    from gigamil.train import loop

    with StoreWriter(
        out,
        plan.n,
        plan.patch_px,
        plan.coords,
        plan.grid,
        codec=params.codec,
        jpeg_quality=params.jpeg_quality,
    ) as writer:
        bar: Any = (
            tqdm(total=plan.n, unit="patch", desc=attrs["slide_id"], leave=False)
            if progress and sys.stderr.isatty()
            else loop.ProgressCounter(
                f"{attrs['slide_id']}: extracting", plan.n, loop.PROGRESS_EVERY_S, "patches", log
            )
        )
        units = plan_units(plan, writer.chunk, params.block_px)
        stain = params.stain_normalization
        out_writer = writer if stain == "none" else _StainNormalizingWriter(writer, stain)
        _run_units(reader, factory, plan, units, threads, out_writer, bar)
        bar.close()
        if isinstance(out_writer, _StainNormalizingWriter):
            attrs["stain_normalization_skipped"] = out_writer.skipped
            if out_writer.skipped:
                log.warning(
                    "%s: %d of %d patches left without %s stain normalisation (too few stained "
                    "pixels, or the estimate failed)",
                    attrs["slide_id"],
                    out_writer.skipped,
                    plan.n,
                    stain,
                )
        attrs["seconds"] = round(time.perf_counter() - t0, 3)
        writer.commit(attrs)


class _StainNormalizingWriter:
    """A store writer's ``write_chunk`` (thread-safe) behind :func:`normalize_stains` with
    ``method``; ``skipped`` counts the patches it left as they were."""

    def __init__(self, writer: Any, method: str) -> None:
        self._writer, self._method = writer, method
        self.chunk = writer.chunk
        self.skipped = 0
        self._lock = threading.Lock()

    def write_chunk(self, index: int, patches: np.ndarray) -> None:
        normalised, skipped = normalize_stains(patches, self._method)
        with self._lock:
            self.skipped += skipped
        self._writer.write_chunk(index, normalised)


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
