"""`gigamil demo OUTDIR`: write a demo cohort (slides, lesion masks, sheet)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from gigamil.commands._argtypes import NON_NEGATIVE_INT, SLIDE_MPP, SLIDES_PER_PATIENT

NAME = "demo"
HELP = (
    "build a demo cohort (deterministic for a seed): by default mosaic slides of the packaged "
    "real PatchCamelyon tiles (CC0); OUTDIR/slides/*.tiff, OUTDIR/lesion_masks/*.png (+ .json), "
    "OUTDIR/sheet.csv and OUTDIR/tiles.csv (the tiles used)"
)

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "outdir",
        metavar="OUTDIR",
        help="output directory (e.g. results/demo); the sheet's paths start with OUTDIR as given, "
        "so a relative OUTDIR makes them relative to the directory the command runs in: run it "
        "in the project directory snakemake runs in (or give an absolute OUTDIR)",
    )
    parser.add_argument(
        "--kind",
        choices=("tiles", "synthetic"),
        default="tiles",
        help="tiles: mosaic slides of real labelled tiles (default); synthetic: the fast test "
        "cohort of planted lesions in the packaged CMU slide",
    )
    _add_tile_arguments(parser)
    parser.add_argument(
        "--prefix",
        default="demo",
        help="prefix of the slide and patient ids, e.g. ext gives ext_p01_s1 (default: demo); "
        "cohorts of one run need distinct ids",
    )
    parser.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--patients",
        type=int,
        default=16,  # gigamil.demo_io.DEMO_PATIENTS
        help="number of patients, half with lesions (default: 16)",
    )
    parser.add_argument(
        "--slides-per-patient",
        type=SLIDES_PER_PATIENT,
        default="1-2",  # gigamil.demo_io.DEMO_SLIDES_PER_PATIENT
        help="slides per patient: N for all, or LO-HI for a number drawn per patient "
        "(default: 1-2)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write over the cohort OUTDIR already holds (OUTDIR/sheet.csv; files of the old cohort "
        "that the new one does not name stay): by default that is an error, since patch "
        "stores and models made from its slides would no longer match them",
    )


def _add_tile_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``--kind tiles`` (the default): which tiles, at what µm/px."""
    parser.add_argument(
        "--tiles",
        metavar="DIR",
        default=None,
        help="--kind tiles: folder with 0/ (normal) and 1/ (tumour) tiles at --tile-mpp, or a "
        "zip of them (default: the packaged PatchCamelyon subset)",
    )
    parser.add_argument(
        "--tile-mpp",
        type=SLIDE_MPP,
        default=None,
        help="--kind tiles: µm/px of the tiles (default: 0.972, PatchCamelyon's)",
    )
    parser.add_argument(
        "--exclude-packaged",
        action="store_true",
        help="--kind tiles: do not use tiles of the packaged subset (e.g. with --tiles on the "
        "full PatchCamelyon data)",
    )
    parser.add_argument(
        "--exclude-tiles",
        metavar="CSV",
        action="append",
        default=[],
        help="--kind tiles: do not use the tiles listed in CSV (its sha256 column), e.g. the "
        "tiles.csv of a cohort built before, so a second cohort (an external one) shares no "
        "tile with it; may be given several times",
    )


def run(args: argparse.Namespace) -> int:
    from gigamil.errors import GigamilError

    start = time.perf_counter()
    if Path(args.outdir).exists() and not Path(args.outdir).is_dir():
        raise GigamilError(f"OUTDIR {args.outdir} exists and is not a directory")
    if (Path(args.outdir) / "sheet.csv").exists() and not args.overwrite:
        raise GigamilError(
            f"OUTDIR {args.outdir} already holds a cohort ({Path(args.outdir) / 'sheet.csv'}); "
            "its slides would be replaced under the same names, and patch stores, models or "
            "heatmaps made from them would no longer match: give another OUTDIR, or "
            "--overwrite to replace it"
        )
    if args.kind == "synthetic":
        if args.tiles or args.tile_mpp is not None or args.exclude_packaged or args.exclude_tiles:
            raise GigamilError(
                "--tiles, --tile-mpp, --exclude-packaged and --exclude-tiles need --kind tiles"
            )
        from gigamil.demo import make_demo_cohort

        sheet = make_demo_cohort(
            Path(args.outdir),
            seed=args.seed,
            n_patients=args.patients,
            slides_per_patient=args.slides_per_patient,
            prefix=args.prefix,
        )
    else:
        from gigamil.demo_tiles import PCAM_MPP, make_tile_cohort

        if args.tiles and args.tile_mpp is None:  # as benchmarks/real_tissue.py says it
            log.warning(
                "--tile-mpp not given: the tiles of %s are taken as PatchCamelyon's %g µm/px "
                "(tiles resized from 96 to 64 px are %g)",
                args.tiles,
                PCAM_MPP,
                PCAM_MPP * 96 / 64,
            )
        sheet = make_tile_cohort(
            Path(args.outdir),
            seed=args.seed,
            n_patients=args.patients,
            slides_per_patient=args.slides_per_patient,
            tiles=args.tiles,
            exclude=_excluded_tiles(args.exclude_tiles, args.exclude_packaged),
            tile_mpp=PCAM_MPP if args.tile_mpp is None else args.tile_mpp,
            prefix=args.prefix,
        )
    log.info(
        "wrote %d slides of %d patients to %s in %.1f s",
        len(sheet),
        sheet.patient_id.nunique(),
        args.outdir,
        time.perf_counter() - start,
    )
    return 0


def _excluded_tiles(csvs: list[str], packaged: bool) -> set[str]:
    """sha256 digests of the tiles not to use: those of the ``--exclude-tiles`` CSVs (their
    ``sha256`` column) and, with ``--exclude-packaged``, the packaged subset's."""
    import pandas as pd

    from gigamil.errors import GigamilError, csv_read_errors
    from gigamil.tile_pool import packaged_tile_hashes

    out = set(packaged_tile_hashes()) if packaged else set()
    for path in csvs:
        try:
            table = pd.read_csv(path, dtype=str)
        except (OSError, *csv_read_errors()) as exc:
            raise GigamilError(f"--exclude-tiles {path}: cannot be read ({exc})") from None
        if "sha256" not in table.columns:
            raise GigamilError(
                f"--exclude-tiles {path}: no sha256 column (give the tiles.csv of a cohort "
                "gigamil demo built)"
            )
        out |= set(table["sha256"].dropna())
    return out
