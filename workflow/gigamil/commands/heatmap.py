"""``gigamil heatmap``: attention heatmap, patch gallery and QuPath GeoJSON of one slide."""

from __future__ import annotations

import argparse

NAME = "heatmap"
HELP = "draw a slide's attention heatmap, top/bottom patch gallery and QuPath GeoJSON"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, metavar="STORE.zarr", help="the patch store")
    parser.add_argument(
        "--attention",
        required=True,
        nargs="+",
        metavar="NPY",
        help="attention .npy aligned with the store rows (several: averaged)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--slide", metavar="SLIDE", help="slide file for the thumbnail")
    parser.add_argument("--slide-mpp", type=float, metavar="X", help="MPP override of the slide")
    parser.add_argument("--tissue-mask", metavar="PNG", help="tissue mask to clip the overlay to")
    parser.add_argument("--normalize", choices=["rank", "percentile", "minmax"], default="rank")
    parser.add_argument("--top-k", type=int, default=8, help="patches per gallery row (8)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (0.5)")
    parser.add_argument("--cmap", default="jet", help="matplotlib colour map (jet)")
    parser.add_argument("--thumb-px", type=int, default=800, help="thumbnail long side (800)")


def run(args: argparse.Namespace) -> int:
    from gigamil.evaluate.localization import mean_attention
    from gigamil.viz.heatmap import HeatmapStyle, make_heatmap

    info = make_heatmap(
        args.store,
        mean_attention(args.attention),
        args.out,
        slide_path=args.slide,
        tissue_mask=args.tissue_mask,
        style=HeatmapStyle(
            normalize=args.normalize,
            top_k=args.top_k,
            alpha=args.alpha,
            cmap=args.cmap,
            thumb_px=args.thumb_px,
        ),
        mpp_override=args.slide_mpp,
    )
    print(f"{info['slide_id']}: {info['n_patches']} patches -> {args.out}")
    return 0
