"""`gigamil demo OUTDIR`: write the built-in demo cohort (slides, lesion masks, sheet)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

NAME = "demo"
HELP = (
    "build the demo cohort from the packaged CC0 slide (deterministic for a seed): "
    "OUTDIR/slides/*.tiff, OUTDIR/lesion_masks/*.png and OUTDIR/sheet.csv"
)

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("outdir", metavar="OUTDIR", help="output directory (e.g. results/demo)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--patients",
        type=int,
        default=12,
        help="number of patients, half with lesions (default: 12)",
    )
    parser.add_argument(
        "--slides-per-patient", type=int, default=2, help="slides per patient (default: 2)"
    )


def run(args: argparse.Namespace) -> int:
    from gigamil.demo import make_demo_cohort

    start = time.perf_counter()
    sheet = make_demo_cohort(
        Path(args.outdir),
        seed=args.seed,
        n_patients=args.patients,
        slides_per_patient=args.slides_per_patient,
    )
    log.info(
        "wrote %d slides of %d patients to %s in %.1f s",
        len(sheet),
        sheet.patient_id.nunique(),
        args.outdir,
        time.perf_counter() - start,
    )
    return 0
