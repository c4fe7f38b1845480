"""``gigamil patches``: cut a slide into patches at an exact µm/px into a zarr store."""

from __future__ import annotations

import argparse

from gigamil.commands._argtypes import AT_LEAST_ONE, FRACTION, POSITIVE, SLIDE_MPP, bounded
from gigamil.commands._preprocessing import CONFIG_HELP

NAME = "patches"
# gigamil.wsi.patching.MAX_EFFECTIVE_MPP_ERROR (not imported here: `gigamil --help` stays fast)
MAX_RESAMPLE_TOLERANCE = 0.01
HELP = "extract tissue patches at a given µm/px into a zarr v3 store"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("slide", metavar="SLIDE", help="slide file (anything OpenSlide opens)")
    parser.add_argument("--out", required=True, metavar="STORE.zarr", help="output zarr store")
    parser.add_argument(
        "--config",
        metavar="CONFIG.yaml",
        help=CONFIG_HELP + " (.patches, and .tissue for the mask computed without --mask)",
    )
    parser.add_argument(
        "--mpp", type=POSITIVE, help="target µm/px of the patches (required without --config)"
    )
    parser.add_argument(
        "--patch-px",
        type=bounded(int, 8),
        help="patch side (px at --mpp; required without --config)",
    )
    parser.add_argument(
        "--stride",
        type=AT_LEAST_ONE,
        metavar="PX",
        help="grid step in px at --mpp (default: --config's, else --patch-px)",
    )
    parser.add_argument(
        "--slide-mpp", type=SLIDE_MPP, metavar="X", help="override the slide's µm/px at level 0"
    )
    parser.add_argument(
        "--mask",
        metavar="MASK.png",
        help="tissue mask PNG from `gigamil mask` (default: computed with --config's tissue "
        "settings, else the defaults); its settings and slide size are recorded from MASK.json "
        "beside it (gigamil mask --json)",
    )
    parser.add_argument(
        "--threads", type=AT_LEAST_ONE, default=1, metavar="N", help="reader threads (default 1)"
    )
    parser.add_argument(
        "--min-tissue",
        type=FRACTION,
        help="keep patches whose mask coverage is at least this (0..1; default 0.5)",
    )
    parser.add_argument("--codec", choices=("zstd", "jpeg"), help="patch codec (default zstd)")
    parser.add_argument(
        "--jpeg-quality", type=bounded(int, 1, 100), help="JPEG quality (default 90)"
    )
    parser.add_argument(
        "--stain-normalization",
        choices=("none", "macenko"),
        help="stain-normalise every patch (macenko: Macenko et al. 2009, per patch; default none)",
    )
    parser.add_argument(
        "--resample-tolerance",
        type=bounded(float, 0, MAX_RESAMPLE_TOLERANCE),
        default=0.005,
        help="read-level MPP within this relative distance of --mpp is not resampled "
        "(0..0.01; 0 = always resample; default 0.005)",
    )
    parser.add_argument("--slide-id", help="slide_id attribute (default: file name stem)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import logging

    from gigamil.commands._preprocessing import (
        check_slide_scale,
        preprocessing_section,
        with_flags,
    )
    from gigamil.errors import GigamilError
    from gigamil.wsi.extract import extract_patches
    from gigamil.wsi.mask_io import read_mask_png
    from gigamil.wsi.patching import PatchParams
    from gigamil.wsi.tissue import TissueParams

    if not args.config and (args.mpp is None or args.patch_px is None):
        raise GigamilError("give --mpp and --patch-px, or --config (its preprocessing.patches)")
    flags = {
        "mpp": args.mpp,
        "patch_px": args.patch_px,
        "stride_px": args.stride,
        "min_tissue": args.min_tissue,
        "codec": args.codec,
        "jpeg_quality": args.jpeg_quality,
        "stain_normalization": args.stain_normalization,
    }
    section = preprocessing_section(args.config)  # the file read once
    settings = with_flags(section["patches"], flags)
    params = PatchParams.from_dict({**settings, "resample_tolerance": args.resample_tolerance})
    params.validate()
    tissue = None
    if args.config and not args.mask:  # the mask computed here: the config's settings too
        tissue = TissueParams.from_dict(section["tissue"])
    mask_mpp = None if args.mask else (tissue or TissueParams()).mask_mpp  # computed here
    check_slide_scale(args.slide, args.slide_mpp, params.mpp, mask_mpp)  # before any work
    mask = read_mask_png(args.mask) if args.mask else None
    mask_params = _mask_provenance(args.mask) if args.mask else None
    result = extract_patches(
        args.slide,
        args.out,
        params,
        mask=mask,
        mask_params=mask_params,
        tissue_params=tissue,
        slide_mpp=args.slide_mpp,
        slide_id=args.slide_id,
        threads=args.threads,
        progress=not args.no_progress,
    )
    logging.getLogger(__name__).info(
        "%s: %d patches of %d px at %g µm/px (effective %.4g) in %.1f s -> %s",
        args.slide,
        result.n_patches,
        params.patch_px,
        params.mpp,
        result.attrs["effective_mpp"],
        result.seconds,
        args.out,
    )
    return 0


def _mask_provenance(mask: str) -> dict:
    """The ``--mask``'s provenance for the store (:func:`gigamil.wsi.mask_io.mask_params_for`),
    with a warning when no sidecar gives its settings (gigamil predict then compares none)."""
    import logging

    from gigamil.wsi.mask_io import mask_params_for, mask_sidecar

    params = mask_params_for(mask)
    if len(params) == 1:  # only its path: no settings known
        logging.getLogger(__name__).warning(
            "--mask %s: no readable %s beside it (gigamil mask --json, named like the mask): "
            "the mask's tissue settings are not recorded, so gigamil predict cannot compare "
            "them with a model's",
            mask,
            mask_sidecar(mask).name,
        )
    return params
