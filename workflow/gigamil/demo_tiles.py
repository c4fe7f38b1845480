"""The real-tissue demo cohort: mosaic slides of real PatchCamelyon lymph-node tiles.

``make_tile_cohort(outdir)`` builds, deterministically for a seed, slides from a pool of labelled
tiles (``0/`` no tumour, ``1/`` tumour; by default the CC0 PatchCamelyon subset packaged in
``gigamil/data/pcam_demo_tiles.zip``)::

    outdir/slides/{slide_id}.tiff        pyramidal tiled-JPEG generic TIFF (demo.write_pyramid_tiff:
                                         3 levels, 256-px TIFF tiles, X/YResolution = 1e4 / mpp px
                                         per cm) at the tiles' µm/px (0.972 for PCam). The slide is a
                                         grid of tile cells (96 px for PCam) whose origin is the
                                         slide's origin, so patches of the tile size at the tile MPP
                                         cut from (0, 0) coincide with the tiles. An irregular,
                                         4-connected blob of tiles without holes lies on a plain
                                         glass-coloured background, with at least one empty cell
                                         around it.
    outdir/lesion_masks/{slide_id}.png   ground truth, as in the synthetic demo (demo.py): uint8 0/255
    outdir/lesion_masks/{slide_id}.json  at 1/16 of level 0 (a 96-px tile = 6 x 6 mask px), 255 on
                                         tumour tiles; sidecar with downsample, mpp, fractions.
    outdir/tiles.csv                     slide_id, row, col, label, file, sha256: every placed tile
                                         (cell row/col on the tile grid, source file in the pool).
    outdir/sheet.csv                     slide_id, patient_id, label, path, lesion_mask (as demo.py).

Patients have ``slides_per_patient`` slides each, or with a range (default 1-2) a number drawn per
patient. Half of the patients (rounded down; the same draw as the synthetic demo) are ``lesion`` patients:
every one of their slides has one contiguous (4-connected) region of tumour tiles covering
``lesion_range`` (default 20-35 %) of its tissue tiles, the rest normal tiles; the other patients'
slides have normal tiles only. No tile is used twice in a cohort. The number of tissue tiles of a
slide is drawn from ``tiles_per_slide``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gigamil.demo import MASK_DOWNSAMPLE
from gigamil.demo_io import (
    DEMO_PATIENTS,
    DEMO_SLIDES_PER_PATIENT,
    ID_PREFIX,
    LABELS,
    SHEET_COLUMNS,
    SlidesPerPatient,
    begin_cohort,
    check_cohort_size,
    check_prefix,
    patient_labels,
    slide_counts,
    slides_range,
    write_lesion_mask,
    write_pyramid_tiff,
    write_sheet,
)
from gigamil.errors import GigamilError
from gigamil.tile_layout import lesion_region, tissue_blob
from gigamil.tile_pool import (
    CLASS_DIRS,
    MIN_TILE_TISSUE,
    Tile,
    decode_tile,
    tile_side,
    usable_pool,
)

log = logging.getLogger(__name__)

PCAM_MPP = 0.972  # µm/px of PatchCamelyon tiles (level 2 of 0.243 µm/px CAMELYON16 scans)
TILES_PER_SLIDE = (20, 28)  # tissue tiles per slide (inclusive range)
LESION_RANGE = (0.20, 0.35)  # tumour tiles / tissue tiles of a lesion slide
BACKGROUND = (240, 238, 241)  # glass colour around the tissue


@dataclass(frozen=True)
class _SlidePlan:
    tissue: np.ndarray  # bool (rows, cols) of tile cells
    lesion: np.ndarray  # bool, subset of tissue


def _plan_slide(
    rng: np.random.Generator,
    lesion: bool,
    tiles_per_slide: tuple[int, int],
    lesion_range: tuple[float, float],
) -> _SlidePlan:
    n = int(rng.integers(tiles_per_slide[0], tiles_per_slide[1] + 1))
    tissue = tissue_blob(rng, n)
    region = np.zeros_like(tissue)
    if lesion:
        lo, hi = int(np.ceil(lesion_range[0] * n)), int(np.floor(lesion_range[1] * n))
        if hi < max(lo, 1):
            raise GigamilError(f"{n} tiles per slide are too few for lesion range {lesion_range}")
        region = lesion_region(rng, tissue, int(rng.integers(max(lo, 1), hi + 1)))
    return _SlidePlan(tissue, region)


def _check_args(
    n_patients: int,
    slides_per_patient: SlidesPerPatient,
    tiles_per_slide: tuple[int, int],
    lesion_range: tuple[float, float],
) -> None:
    check_cohort_size(n_patients, slides_per_patient)
    if not 1 <= tiles_per_slide[0] <= tiles_per_slide[1]:
        raise GigamilError(f"tiles per slide: bad range {tiles_per_slide}")
    if not 0.0 < lesion_range[0] <= lesion_range[1] < 1.0:
        raise GigamilError(f"lesion range: bad range {lesion_range}")


def _plan_cohort(
    seed: int,
    n_patients: int,
    slides_per_patient: SlidesPerPatient,
    tiles_per_slide: tuple[int, int],
    lesion_range: tuple[float, float],
) -> list[tuple[str, str, str, _SlidePlan]]:
    """``(slide suffix p01_s1, patient suffix p01, label, plan)`` of every slide of a cohort
    (:func:`gigamil.demo_io.slide_counts` slides per patient)."""
    slides = []
    counts = slide_counts(seed, n_patients, slides_per_patient)
    for p, label in enumerate(patient_labels(seed, n_patients)):
        for s in range(counts[p]):
            rng = np.random.default_rng([seed, 2, p, s])
            plan = _plan_slide(rng, label == LABELS[1], tiles_per_slide, lesion_range)
            slides.append((f"p{p + 1:02d}_s{s + 1}", f"p{p + 1:02d}", label, plan))
    return slides


def _tiles_needed(slides: list[tuple[str, str, str, _SlidePlan]]) -> dict[int, int]:
    return {
        0: sum(int((pl.tissue & ~pl.lesion).sum()) for *_, pl in slides),
        1: sum(int(pl.lesion.sum()) for *_, pl in slides),
    }


def tiles_needed(
    seed: int,
    n_patients: int = DEMO_PATIENTS,
    slides_per_patient: SlidesPerPatient = DEMO_SLIDES_PER_PATIENT,
    tiles_per_slide: tuple[int, int] = TILES_PER_SLIDE,
    lesion_range: tuple[float, float] = LESION_RANGE,
) -> dict[int, int]:
    """Normal (0) and tumour (1) tiles that :func:`make_tile_cohort` with these arguments
    places, without reading any tile (to check several draws before building the first)."""
    _check_args(n_patients, slides_per_patient, tiles_per_slide, lesion_range)
    return _tiles_needed(
        _plan_cohort(seed, n_patients, slides_per_patient, tiles_per_slide, lesion_range)
    )


def make_tile_cohort(  # noqa: PLR0913 - one keyword per cohort setting (gigamil demo flags)
    outdir: str | Path,
    seed: int = 0,
    n_patients: int = DEMO_PATIENTS,
    slides_per_patient: SlidesPerPatient = DEMO_SLIDES_PER_PATIENT,
    tiles: str | Path | None = None,
    exclude: Collection[str] = (),
    tiles_per_slide: tuple[int, int] = TILES_PER_SLIDE,
    lesion_range: tuple[float, float] = LESION_RANGE,
    tile_mpp: float = PCAM_MPP,
    min_tile_tissue: float = MIN_TILE_TISSUE,
    prefix: str = ID_PREFIX,
) -> pd.DataFrame:
    """Write a mosaic cohort of real tiles to ``outdir`` (see module docstring); return its sheet.

    Args:
        tiles: folder with ``0/`` and ``1/`` tile images (or a zip of them); None = the packaged
            PatchCamelyon subset.
        exclude: sha256 digests of tiles not to use (e.g. :func:`packaged_tile_hashes`).
        tiles_per_slide: inclusive range of tissue tiles per slide.
        lesion_range: range of the tumour-tile fraction of a lesion slide's tissue tiles.
        tile_mpp: µm/px of the tiles (written into the TIFFs).
        min_tile_tissue: tiles with a smaller :func:`tile_tissue_fraction` are not used.
        prefix: of the slide and patient ids (``{prefix}_p01_s1``, ``{prefix}_p01``).
    """
    _check_args(n_patients, slides_per_patient, tiles_per_slide, lesion_range)
    if not (math.isfinite(tile_mpp) and tile_mpp > 0):
        raise GigamilError(f"tile µm/px must be a positive number (got {tile_mpp})")
    check_prefix(prefix)
    outdir = Path(outdir)
    pool = usable_pool(tiles, exclude, min_tile_tissue)
    by_class = {c: [t for t in pool if t.label == c] for c in (0, 1)}

    slides = _plan_cohort(seed, n_patients, slides_per_patient, tiles_per_slide, lesion_range)
    slides = [(f"{prefix}_{sid}", f"{prefix}_{pid}", label, pl) for sid, pid, label, pl in slides]
    if not _fits(by_class, need := _tiles_needed(slides)):
        plan = (seed, n_patients, slides_per_patient, tiles_per_slide, lesion_range)
        _check_pool(by_class, need, min_tile_tissue, _smaller_cohort(by_class, *plan))
    draw = np.random.default_rng([seed, 3])
    queues = {c: [by_class[c][i] for i in draw.permutation(len(by_class[c]))] for c in (0, 1)}

    tile_px = tile_side(pool)  # every usable tile, whichever the draw places
    if tile_px % MASK_DOWNSAMPLE and MASK_DOWNSAMPLE % tile_px:
        log.warning("tile size %d px is not a multiple of the mask downsample", tile_px)
    rows_out, tile_rows = [], []
    begin_cohort(outdir)
    for i, (slide_id, patient_id, label, plan) in enumerate(slides):
        rgb, placed = _render(plan, queues, tile_px, np.random.default_rng([seed, 4, i]))
        tile_rows += [{"slide_id": slide_id, **r} for r in placed]
        ids = (slide_id, patient_id, label)
        rows_out.append(_write_slide(outdir, ids, plan, rgb, (tile_px, tile_mpp), tiles))
    sheet = pd.DataFrame(rows_out, columns=SHEET_COLUMNS)
    outdir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(tile_rows, columns=["slide_id", "row", "col", "label", "file", "sha256"]).to_csv(
        outdir / "tiles.csv", index=False, lineterminator="\n"
    )
    write_sheet(outdir, sheet)
    return sheet


def _fits(by_class: dict[int, list[Tile]], need: dict[int, int]) -> bool:
    return all(need[c] <= len(by_class[c]) for c in (0, 1))


def _smaller_cohort(  # noqa: PLR0913 - a cohort plan, field by field
    by_class: dict[int, list[Tile]],
    seed: int,
    n_patients: int,
    slides_per_patient: SlidesPerPatient,
    tiles_per_slide: tuple[int, int],
    lesion_range: tuple[float, float],
) -> str:
    """The largest cohort of this ``seed`` the pool holds, as the options that make it: fewer
    patients with the slides asked for, or one slide each, whichever has more slides (then
    patients), or "" when not even 2 one-slide patients fit."""
    spp = "-".join(dict.fromkeys(str(n) for n in slides_range(slides_per_patient)))
    best = (0, 0, False, "")  # slides, patients, as asked, options
    for option in dict.fromkeys((spp, "1")):
        for n in range(n_patients - (option == spp), 1, -1):
            plan = _plan_cohort(seed, n, option, tiles_per_slide, lesion_range)
            if _fits(by_class, _tiles_needed(plan)):
                fit = f"--patients {n} --slides-per-patient {option}"
                best = max(best, (len(plan), n, option == spp, fit))
                break
    return best[3]


def _check_pool(
    by_class: dict[int, list[Tile]], need: dict[int, int], min_tissue: float, smaller: str = ""
) -> None:
    """GigamilError naming each class with fewer usable tiles (``by_class``) than the cohort
    places (``need``), and ``smaller``, the options of a cohort that fits."""
    short = [
        f"{len(by_class[c])} usable tiles in {CLASS_DIRS[c]}/ but the cohort needs {need[c]}"
        for c in (0, 1)
        if need[c] > len(by_class[c])
    ]
    if short:
        raise GigamilError(
            f"tile pool has {' and '.join(short)} (usable: not excluded, >= "
            f"{min_tissue:g} tissue): use fewer patients or slides per patient "
            "(--patients, --slides-per-patient"
            + (f"; {smaller} fits at this --seed" if smaller else "")
            + ") or more tiles (--tiles DIR)"
        )


def _write_slide(
    outdir: Path,
    ids: tuple[str, str, str],
    plan: _SlidePlan,
    rgb: np.ndarray,
    tile: tuple[int, float],
    tiles: str | Path | None,
) -> dict[str, str]:
    """Write a rendered slide's TIFF and lesion mask (PNG + JSON) under ``outdir``; its row of
    the sheet (:data:`SHEET_COLUMNS`). ``ids``: slide id, patient id, label; ``tile``: the tiles'
    side (px) and µm/px; ``tiles``: their source (None: the packaged PatchCamelyon subset), named
    in the TIFF's description (a user's own tiles are not claimed to be PatchCamelyon's)."""
    (slide_id, patient_id, label), (tile_px, tile_mpp) = ids, tile
    # the folder's own name also when given as "." or "..", whose Path.name is ""
    source = None if tiles is None else Path(os.path.abspath(tiles)).name or str(tiles)
    credit = "PatchCamelyon tiles (CC0)" if source is None else f"tiles of {source}"
    tiff = outdir / "slides" / f"{slide_id}.tiff"
    write_pyramid_tiff(
        tiff,
        rgb,
        tile_mpp,
        description=f"gigamil real-tissue demo slide {slide_id} ({label}); mosaic of "
        f"{credit}; mpp={tile_mpp}",
    )
    mask = _lesion_mask(plan.lesion, tile_px)
    n_tissue, n_lesion = int(plan.tissue.sum()), int(plan.lesion.sum())
    write_lesion_mask(
        outdir / "lesion_masks" / f"{slide_id}.png",
        mask,
        slide_id,
        n_tissue / plan.tissue.size,
        n_lesion / n_tissue,
        level0_mpp=tile_mpp,
        downsample=MASK_DOWNSAMPLE,
    )
    log.info(
        "%s: %s, %d tiles on a %d x %d grid, %d tumour tiles (%.2f)",
        slide_id,
        label,
        n_tissue,
        *plan.tissue.shape,
        n_lesion,
        n_lesion / n_tissue,
    )
    return {
        "slide_id": slide_id,
        "patient_id": patient_id,
        "label": label,
        "path": tiff.as_posix(),
        "lesion_mask": (outdir / "lesion_masks" / f"{slide_id}.png").as_posix(),
    }


def _render(
    plan: _SlidePlan, queues: dict[int, list[Tile]], tile_px: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[dict]]:
    """Level-0 RGB of a slide plan, taking tiles off the class queues (consumed)."""
    h, w = plan.tissue.shape
    rgb = np.empty((h * tile_px, w * tile_px, 3), dtype=np.uint8)
    noise = rng.normal(0.0, 1.5, size=rgb.shape)
    rgb[:] = np.clip(np.asarray(BACKGROUND, dtype=np.float64) + noise, 0, 255).round()
    placed = []
    for r, c in zip(*np.nonzero(plan.tissue), strict=True):
        cls = int(plan.lesion[r, c])
        tile = queues[cls].pop()
        img = decode_tile(tile)
        if img.shape != (tile_px, tile_px, 3):
            raise GigamilError(
                f"tile {tile.file}: {img.shape[:2]} px, expected {tile_px} x {tile_px}"
            )
        rgb[r * tile_px : (r + 1) * tile_px, c * tile_px : (c + 1) * tile_px] = img
        placed.append(
            {"row": int(r), "col": int(c), "label": cls, "file": tile.file, "sha256": tile.sha256}
        )
    return rgb, placed


def _lesion_mask(lesion_cells: np.ndarray, tile_px: int) -> np.ndarray:
    """Lesion mask at 1/MASK_DOWNSAMPLE of level 0 from the tumour cells."""
    full = np.repeat(np.repeat(lesion_cells, tile_px, axis=0), tile_px, axis=1)
    h, w = full.shape
    hm, wm = h // MASK_DOWNSAMPLE, w // MASK_DOWNSAMPLE
    blocks = full[: hm * MASK_DOWNSAMPLE, : wm * MASK_DOWNSAMPLE]
    return blocks.reshape(hm, MASK_DOWNSAMPLE, wm, MASK_DOWNSAMPLE).mean(axis=(1, 3)) >= 0.5


def write_tile_bags(  # noqa: PLR0913 - one keyword per cohort setting
    outdir: str | Path,
    tiles: list[Tile],
    n_bags: int,
    seed: int = 0,
    side: int = 4,
    tumour_tiles: tuple[int, int] = (6, 9),
    tile_mpp: float = PCAM_MPP,
) -> pd.DataFrame:
    """Small bags of real tiles written straight to patch stores (no slide, no tissue mask),
    for learning checks: bag b is ``lesion`` when b is odd, with ``tumour_tiles`` (inclusive
    range) tumour tiles first, the rest normal; ``side`` x ``side`` tiles per bag on a grid.

    ``tiles``: the pool (e.g. :func:`gigamil.tile_pool.read_tile_pool`); each tile is used once.
    Returns the slide table (``cohort, slide_id, patient_id, label, store``; one patient per
    bag). GigamilError when the pool has too few tiles of a class.
    """
    from gigamil.data.store_writer import StoreWriter, unresampled_store_attrs

    rng = np.random.default_rng(seed)
    queues = {c: [t for t in tiles if t.label == c] for c in (0, 1)}
    queues = {c: [q[i] for i in rng.permutation(len(q))] for c, q in queues.items()}
    n = side * side
    grid = np.array([(i // side, i % side) for i in range(n)], np.int64)
    rows = []
    for b in range(n_bags):
        label = b % 2
        k = int(rng.integers(tumour_tiles[0], tumour_tiles[1] + 1)) if label else 0
        if len(queues[1]) < k or len(queues[0]) < n - k:
            raise GigamilError(f"tile pool too small for {n_bags} bags of {n} tiles")
        patches = np.stack(
            [decode_tile(queues[1].pop()) for _ in range(k)]
            + [decode_tile(queues[0].pop()) for _ in range(n - k)]
        )
        px = patches.shape[1]
        sid = f"b{b:02d}"
        store = Path(outdir) / f"{sid}.zarr"
        with StoreWriter(store, n, px, grid[:, ::-1] * px, grid) as w:
            w.append(patches)
            w.commit(unresampled_store_attrs(sid, px, tile_mpp, [side * px, side * px]))
        rows.append(
            {
                "cohort": "c",
                "slide_id": sid,
                "patient_id": f"p{b:02d}",
                "label": LABELS[label],
                "store": str(store),
            }
        )
    return pd.DataFrame(rows)
