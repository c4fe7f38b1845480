"""``gigamil mask``: tissue mask, QC image and JSON sidecar of one slide."""

from __future__ import annotations

import argparse
from pathlib import Path

from gigamil.commands._argtypes import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, SLIDE_MPP, bounded
from gigamil.commands._preprocessing import CONFIG_HELP

NAME = "mask"
HELP = "compute the tissue mask of a slide (PNG), with an optional QC image and JSON summary"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("slide", metavar="SLIDE", help="slide file (anything OpenSlide opens)")
    parser.add_argument("--out", required=True, metavar="MASK.png", help="mask PNG (0/255)")
    parser.add_argument("--qc", metavar="QC.png", help="QC image: the slide with the mask outline")
    parser.add_argument(
        "--json",
        metavar="MASK.json",
        help="JSON summary (tissue_fraction, mask_mpp, warnings); default: none. Write it as "
        "MASK.json beside MASK.png: gigamil patches --mask reads the mask's settings from there",
    )
    parser.add_argument(
        "--slide-mpp", type=SLIDE_MPP, metavar="X", help="override the slide's µm/px at level 0"
    )
    parser.add_argument("--config", metavar="CONFIG.yaml", help=CONFIG_HELP + " (.tissue)")
    add_tissue_arguments(parser)


def add_tissue_arguments(parser: argparse.ArgumentParser) -> None:
    """The preprocessing.tissue flags (defaults: --config's, else the schema's, in brackets)."""
    parser.add_argument(
        "--mask-mpp", type=POSITIVE, metavar="X", help="µm/px of the mask (default 8)"
    )
    parser.add_argument(
        "--threshold", help="'otsu' or a fixed HSV-saturation threshold 0..255 (default otsu)"
    )
    parser.add_argument("--median-px", type=AT_LEAST_ONE, help="median blur kernel (px; default 5)")
    parser.add_argument("--close-um", type=NON_NEGATIVE, help="closing radius (µm; default 32)")
    parser.add_argument("--open-um", type=NON_NEGATIVE, help="opening radius (µm; default 16)")
    parser.add_argument(
        "--min-area-um2", type=NON_NEGATIVE, help="drop smaller tissue pieces (µm²; default 20000)"
    )
    parser.add_argument(
        "--dark-value",
        type=bounded(int, 0, 255),
        metavar="V",
        help="pixels whose brightest channel is below V are background (dark border; default 60)",
    )
    parser.add_argument(
        "--keep-pen-ink",
        action="store_true",
        default=None,
        help="do not exclude green/blue pen ink from the tissue (default: excluded)",
    )


def tissue_settings(args: argparse.Namespace) -> dict:
    """preprocessing.tissue: --config's (else the schema's defaults) under the flags given."""
    from gigamil.commands._preprocessing import preprocessing_section, with_flags

    flags = {
        "mask_mpp": args.mask_mpp,
        "threshold": threshold_arg(args.threshold) if args.threshold is not None else None,
        "median_px": args.median_px,
        "close_um": args.close_um,
        "open_um": args.open_um,
        "min_area_um2": args.min_area_um2,
        "dark_value": args.dark_value,
        "pen_ink": False if args.keep_pen_ink else None,
    }
    return with_flags(preprocessing_section(args.config)["tissue"], flags)


def threshold_arg(value: str) -> str | float:
    """'otsu' or a float in 0..255 (GigamilError otherwise)."""
    from gigamil.errors import GigamilError

    if value == "otsu":
        return value
    try:
        thr = float(value)
    except ValueError:
        thr = -1.0
    if not 0.0 <= thr <= 255.0:
        raise GigamilError(f"--threshold must be 'otsu' or a number in 0..255, got {value!r}")
    return thr


def run(args: argparse.Namespace) -> int:
    import logging

    from gigamil.commands._preprocessing import check_slide_scale
    from gigamil.config import even_median_message
    from gigamil.wsi.mask_io import mask_sidecar
    from gigamil.wsi.tissue import TissueParams, make_mask

    params = TissueParams.from_dict(tissue_settings(args))
    if params.median_px % 2 == 0:  # as config.yaml's preprocessing.tissue.median_px warns
        given = (
            "--median-px"
            if args.median_px is not None
            else f"{args.config}: preprocessing.tissue.median_px"
        )
        logging.getLogger("gigamil").warning(even_median_message(given, params.median_px))
    check_outputs(args.slide, {"--out": args.out, "--qc": args.qc, "--json": args.json})
    check_slide_scale(args.slide, args.slide_mpp, mask_mpp=params.mask_mpp)  # before any work
    beside = mask_sidecar(args.out)
    if not args.json and beside.is_file():  # it describes the mask this run replaces
        logging.getLogger("gigamil").warning(
            "%s: the sidecar of an earlier mask; written again with this mask's settings, "
            "which gigamil patches --mask records from it",
            beside,
        )
        args.json = str(beside)
    if args.json and Path(args.json).resolve() != beside.resolve():
        logging.getLogger("gigamil").warning(
            "--json %s: gigamil patches --mask %s reads the mask's settings from %s only; "
            "under another name they are not recorded in the patch store",
            args.json,
            args.out,
            beside,
        )
    make_mask(args.slide, Path(args.out), args.qc, args.json, params, args.slide_mpp)
    return 0


QC_SUFFIXES = (".png", ".jpg", ".jpeg")


def check_outputs(slide: str, outputs: dict[str, str | None]) -> None:
    """GigamilError, before any work, for an output (``{flag: path}``, None: not given) that is
    the slide itself or a folder, two flags naming one file, or a ``--qc`` image of a type it
    cannot be saved as: a trial overwrote the slide with its QC image (``--qc SLIDE``), and
    ``--qc DIR`` ended in a traceback after the mask was written."""
    from gigamil.errors import GigamilError

    given = {flag: Path(path) for flag, path in outputs.items() if path is not None}
    slide_file = Path(slide).resolve()
    seen: dict[Path, str] = {}
    for flag, path in given.items():
        where = path.resolve()
        if where == slide_file:
            raise GigamilError(f"{flag} {path}: that is the slide itself; name another file")
        if path.is_dir():
            raise GigamilError(f"{flag} {path}: a folder; give a file name")
        if where in seen:
            raise GigamilError(f"{seen[where]} and {flag} both name {path}: give each its own file")
        seen[where] = flag
    qc = given.get("--qc")
    if qc is not None and qc.suffix.lower() not in QC_SUFFIXES:
        raise GigamilError(f"--qc {qc}: the QC image is written as PNG or JPEG; name it *.png")
