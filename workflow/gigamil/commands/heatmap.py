"""``gigamil heatmap``: attention heatmap, patch gallery and QuPath GeoJSON of one slide
(patches.geojson; annotations.geojson: the tissue mask and the top-k patches)."""

from __future__ import annotations

import argparse

from gigamil.commands._argtypes import AT_LEAST_ONE, FRACTION, SLIDE_MPP, bounded

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
    parser.add_argument(
        "--slide",
        metavar="SLIDE",
        help="slide file for the thumbnail (default: the store's recorded source_path)",
    )
    parser.add_argument(
        "--slide-mpp",
        type=SLIDE_MPP,
        metavar="X",
        help="override the slide's µm/px at level 0 (default: the slide file's own)",
    )
    parser.add_argument(
        "--slide-id",
        metavar="ID",
        help="the slide's id in --predictions (default: the slide_id recorded in the store, "
        "gigamil patches --slide-id, else the store's file name)",
    )
    parser.add_argument(
        "--tissue-mask",
        metavar="PNG",
        help="tissue mask to clip the overlay to; also outlined (class Tissue) in "
        "annotations.geojson",
    )
    parser.add_argument(
        "--lesion-mask",
        metavar="PNG",
        help="ground-truth lesion mask (a PNG covering the whole slide: lesion white, or 1 in a "
        "0/1 label image), outlined on the overlay; its scale comes from a JSON sidecar of the "
        'same name ({"downsample": level-0 px per mask px}), else from the slide\'s width over '
        "the mask's",
    )
    parser.add_argument(
        "--predictions",
        nargs="+",
        metavar="CSV",
        help="prediction CSVs of the fold models (results/predictions/.../fold*/{cohort}.csv): "
        "the title states the slide's label, predicted class and probability and the number "
        "of models, and the probability colour scale uses it",
    )
    _add_style_arguments(parser)


def _add_style_arguments(parser: argparse.ArgumentParser) -> None:
    """How the heatmap is drawn: colour scale, top-k, what the weights are, opacity, map."""
    parser.add_argument(
        "--normalize",
        choices=["probability", "relative", "rank", "percentile", "minmax"],  # viz.scales.SCALES
        default=None,
        help="colour scale (default: probability with --predictions, else relative): "
        "probability = the slide's P(positive) x attention / its top attention (a slide called "
        "normal stays cool), relative = attention x patches (log scale); both compare across "
        "slides; rank, percentile and minmax spread each slide's own attention over the colours",
    )
    parser.add_argument(
        "--top-k",
        type=AT_LEAST_ONE,
        default=8,
        help="patches per gallery row, and top-attention annotations in annotations.geojson (8)",
    )
    parser.add_argument(
        "--pool",
        choices=("abmil", "gated_abmil", "smabmil", "instance"),
        default="abmil",
        help="model.pool of the model(s) behind --attention: with instance the weights are "
        "patch probabilities, and the labels say so (default abmil: attention)",
    )
    parser.add_argument(
        "--weights",
        choices=("attention", "patch_score"),
        default="attention",
        help="what is drawn per patch (heatmaps.weights): the mean attention (default), or the "
        "patch score of patch_score_localization_auc (attention and the patch logits that "
        "gigamil predict writes in patch_logits/ beside each attention file)",
    )
    parser.add_argument("--alpha", type=FRACTION, default=0.5, help="overlay opacity (0.5)")
    parser.add_argument("--cmap", default="jet", help="matplotlib colour map (jet)")
    parser.add_argument(
        "--thumb-px", type=bounded(int, 16), default=800, help="thumbnail long side (800)"
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gigamil.config import check_cmap
    from gigamil.errors import GigamilError
    from gigamil.evaluate.localization import read_store_geometry
    from gigamil.evaluate.patch_score import heatmap_weights
    from gigamil.viz.heatmap import HeatmapStyle, make_heatmap, weight_name
    from gigamil.viz.slide_info import SlideNotPredicted, read_slide_prediction

    check_cmap(args.cmap, key="--cmap")  # before any work, named as the user typed it
    if args.lesion_mask and not Path(args.lesion_mask).is_file():
        raise GigamilError(f"--lesion-mask: {args.lesion_mask} not found")
    _check_attention_files(args.attention)  # before the naming warning: none may exist
    attrs = read_store_geometry(args.store)[2]
    _warn_attention_names(args.attention, args.slide_id or attrs.get("slide_id"))
    if args.tissue_mask:
        _check_tissue_mask(args.tissue_mask, attrs)
    prediction = None
    if args.predictions:
        slide_id = args.slide_id or str(attrs.get("slide_id", Path(args.store).stem))
        try:
            prediction = read_slide_prediction(args.predictions, slide_id)
        except SlideNotPredicted as exc:
            if args.slide_id:
                raise
            raise GigamilError(
                f"{exc} (the id recorded in the store {args.store}; if the predictions name the "
                "slide otherwise, give that id with --slide-id)"
            ) from exc
    if prediction is not None:
        _warn_model_counts(len(args.attention), prediction.n_models, prediction.slide_id)
    normalize = args.normalize or ("probability" if prediction is not None else "relative")
    if normalize == "probability" and prediction is None:
        raise GigamilError("--normalize probability needs --predictions (the slide's probability)")
    weights, weight = heatmap_weights(args.attention, args.weights, weight_name(args.pool))
    info = make_heatmap(
        args.store,
        weights,
        args.out,
        slide_path=args.slide,
        tissue_mask=args.tissue_mask,
        style=HeatmapStyle(
            normalize=normalize,
            top_k=args.top_k,
            alpha=args.alpha,
            cmap=args.cmap,
            thumb_px=args.thumb_px,
            weight=weight,
        ),
        mpp_override=args.slide_mpp,
        prediction=prediction,
        lesion_mask=args.lesion_mask,
    )
    print(f"{info['slide_id']}: {info['n_patches']} patches -> {args.out}")
    return 0


def _check_tissue_mask(path: str, attrs: dict) -> None:
    """GigamilError when ``--tissue-mask`` is missing (it was ignored: no clipping, no outline)
    or cannot be the mask of the slide the store of ``attrs`` was cut from (its size, from the
    PNG header, against the store's ``slide_dimensions`` and ``slide_mpp_xy``, as ``gigamil
    patches --mask`` checks it)."""
    from pathlib import Path

    from gigamil.errors import GigamilError
    from gigamil.evaluate.lesion_mask import image_size
    from gigamil.wsi.patching import mask_shape_problem

    if not Path(path).is_file():
        raise GigamilError(f"--tissue-mask: {path} not found")
    dims, mpp = attrs.get("slide_dimensions"), attrs.get("slide_mpp")
    mpp_xy = attrs.get("slide_mpp_xy") or (mpp and [mpp, mpp])
    if dims and mpp_xy:
        w, h = image_size(path)
        if problem := mask_shape_problem((h, w), tuple(dims), tuple(mpp_xy)):
            raise GigamilError(f"--tissue-mask {path}: {problem}")


def _check_attention_files(attention: list[str]) -> None:
    """GigamilError naming the ``--attention`` paths that are no file: a pattern that matched
    none reached the command as typed, and a trial got a warning that it was named after
    another slide, then a bare "No such file or directory"."""
    from pathlib import Path

    from gigamil.errors import GigamilError

    missing = [a for a in attention if not Path(a).is_file()]
    if not missing:
        return
    named = ", ".join(missing[:3]) + (f" (+{len(missing) - 3})" if len(missing) > 3 else "")
    pattern = any(c in a for a in missing for c in "*?[")  # the shell passes it on as typed
    raise GigamilError(
        f"--attention {named}: no such file"
        + (" (no file matches the pattern)" if pattern else "")
        + "; gigamil predict --attention-dir DIR writes DIR/<slide_id>.npy"
    )


def _warn_attention_names(attention: list[str], slide_id: str | None) -> None:
    """A warning when an ``--attention`` file is named after another slide than the store's
    (``gigamil predict`` names each file ``<slide_id>.npy``): a slide's attention drawn on
    another slide with as many patches passed unnoticed in a trial."""
    from pathlib import Path

    if not slide_id:
        return
    other = [a for a in attention if Path(a).stem != str(slide_id)]
    if other:
        import logging

        logging.getLogger(__name__).warning(
            "--attention %s: named after another slide than the store's (%s; gigamil predict "
            "writes <slide_id>.npy): check that the attention is this slide's",
            ", ".join(other[:3]) + (f" (+{len(other) - 3})" if len(other) > 3 else ""),
            slide_id,
        )


def _warn_model_counts(n_attention: int, n_models: int, slide_id: str) -> None:
    """A warning when the title's probability (the mean of ``n_models`` models' predictions)
    and the map (the mean of ``n_attention`` attention files) are not of the same models, or
    when no model predicted the slide (it had no patches then)."""
    import logging

    if n_models == 0:
        logging.getLogger(__name__).warning(
            "--predictions give slide %s no probability (it had no patches when predicted): the "
            "map is drawn without a prediction",
            slide_id,
        )
        return
    if n_models == n_attention:
        return
    logging.getLogger(__name__).warning(
        "%d --attention file(s) beside predictions of %d model(s): the title's probability is "
        "the mean of %d models, the map the mean attention of %d; give each fold model's "
        "attention and predictions, or one fold's of each",
        n_attention,
        n_models,
        n_models,
        n_attention,
    )
