"""Attention heatmaps of one slide (rule heatmap).

Attention values (N,) are aligned with the rows of the slide's zarr store, whose ``coords`` give
each patch's level-0 top-left corner and ``patch_size_level0`` its side. Everything is drawn at
thumbnail resolution (at most ``thumb_px`` on the long side), so memory does not depend on the
slide size. Overlapping patches (stride < patch size) are averaged per thumbnail pixel, which gives
smooth maps. Outputs in ``out_dir``:

- ``overlay.png``: the heatmap over the slide thumbnail, clipped to the tissue mask, colour bar;
- ``attention.npy``: the raw attention (N,) float32 (the mean over fold models for an ensemble);
- ``gallery.png``: the ``top_k`` highest- and lowest-attention patches;
- ``patches.geojson``: one polygon per patch in level-0 pixels, with its attention, for QuPath;
- ``annotations.geojson``: QuPath annotations of the tissue mask (class ``Tissue``), of the
  ``top_k`` highest-attention patches (class ``Attention top-k``) and of the regions where they
  overlap or touch (class ``Attention top-k region``), in level-0 pixels.

The pieces: colour scales in :mod:`gigamil.viz.scales`, the canvas, thumbnail and blending in
:mod:`gigamil.viz.canvas`, the images in :mod:`gigamil.viz.figures`, annotations.geojson in
:mod:`gigamil.viz.annotations`; this module reads the store (non-finite attention is an error)
and puts them together.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gigamil.data.store import patch_size_xy
from gigamil.errors import GigamilError
from gigamil.evaluate.localization import patch_mask_fraction, read_store_geometry
from gigamil.fileutil import scratch_folder
from gigamil.settings import schema_section
from gigamil.viz.annotations import write_annotations
from gigamil.viz.canvas import attention_canvas, resolve_slide_path, slide_thumbnail
from gigamil.viz.figures import patch_width, render_gallery, render_overlay
from gigamil.viz.geojson import patches_geojson, write_geojson
from gigamil.viz.masks import PlacedMask, load_heatmap_masks, mask_on_image
from gigamil.viz.scales import ColourScale, scale_attention
from gigamil.viz.slide_info import SlidePrediction

log = logging.getLogger(__name__)


def top_bottom(att: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the k highest (descending) and k lowest (ascending) attention values."""
    order = np.argsort(-np.asarray(att), kind="stable")
    k = min(k, att.size)
    return order[:k], order[::-1][:k]


def _style_default(key: str) -> Any:
    return schema_section(("heatmaps",))["properties"][key]["default"]


@dataclass(frozen=True, kw_only=True)
class HeatmapStyle:
    """How a heatmap is drawn (config.yaml ``heatmaps``, ``gigamil heatmap`` options); the
    defaults are the schema's.

    ``normalize``: the colour scale (see :func:`scale_attention`); ``top_k``: patches per gallery
    row; ``alpha``: overlay opacity; ``cmap``: matplotlib colour map; ``thumb_px``: thumbnail long
    side; ``weight``: what the per-patch weights are, for the labels (``attention``, or ``patch
    probability`` for ``model.pool: instance``: see :func:`weight_name`); ``mark_top``: box and
    number the ``top_k`` patches on the overlay, as the gallery numbers them.
    """

    normalize: str = _style_default("normalize")
    top_k: int = _style_default("top_k")
    alpha: float = _style_default("alpha")
    cmap: str = _style_default("cmap")
    thumb_px: int = 800
    weight: str = "attention"
    mark_top: bool = True

    def __post_init__(self) -> None:
        """Raises GigamilError for an opacity outside 0..1 or a non-positive size."""
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise GigamilError(f"heatmap alpha (overlay opacity) must be in 0..1, got {self.alpha}")
        if int(self.top_k) < 1 or int(self.thumb_px) < 1:
            raise GigamilError(
                f"heatmap top_k and thumb_px must be >= 1, got {self.top_k} and {self.thumb_px}"
            )


def weight_name(pool: str) -> str:
    """What a model's per-patch weights (attention.npy) are: ``patch probability`` for
    ``model.pool: instance`` (each patch's P(positive) divided by the slide's sum), else
    ``attention`` (softmax attention weights)."""
    return "patch probability" if pool == "instance" else "attention"


#: The files make_heatmap writes into its out_dir.
HEATMAP_FILES = (
    "overlay.png",
    "gallery.png",
    "patches.geojson",
    "annotations.geojson",
    "attention.npy",
)


def make_heatmap(  # noqa: PLR0913 - public API (script, CLI, tests)
    store: str | Path,
    attention: np.ndarray,
    out_dir: str | Path,
    *,
    slide_path: str | Path | None = None,
    tissue_mask: str | Path | None = None,
    style: HeatmapStyle = HeatmapStyle(),
    title: str = "",
    mpp_override: float | None = None,
    prediction: SlidePrediction | None = None,
    lesion_mask: str | Path | None = None,
) -> dict[str, Any]:
    """Write overlay.png, attention.npy, gallery.png, patches.geojson and annotations.geojson
    for one slide.

    Args:
        store: the slide's zarr patch store (coords, attrs patch_size_level0, slide_dimensions).
        attention: (N,) attention aligned with the store's rows.
        out_dir: output directory (created).
        slide_path: the thumbnail's slide file; None: the store's ``source_path`` (or grey).
        mpp_override: the slide's µm/px if its file has none (default: the store's
            ``slide_mpp``, the value the patches were cut with).
        tissue_mask: tissue mask PNG (covering the whole slide) to clip the overlay to; also
            written to annotations.geojson as ``Tissue`` annotations.
        style: colour scale, colours and sizes (:class:`HeatmapStyle`).
        title: the title when there is no ``prediction`` (default: the slide id).
        prediction: the slide's cohort, label, predicted class and probability and number of
            fold models (:func:`gigamil.viz.slide_info.read_slide_prediction`): the title of both
            images, and the probability the ``probability`` colour scale needs. Without it that
            scale falls back to ``relative`` (with a warning; the colour bar says which).
        lesion_mask: the slide's ground-truth lesion PNG (whole slide; :func:`gigamil.evaluate.lesion_mask.read_binary_mask`):
            outlined on overlay.png, its lesion patches framed in the gallery.

    Returns:
        A small dict (n_patches, top indices, the scale used) for logging and tests.
    """
    slide = _read_slide(store, attention)
    masks = load_heatmap_masks(tissue_mask, lesion_mask, slide.attrs)  # checked before drawing
    (out_dir := Path(out_dir)).mkdir(parents=True, exist_ok=True)  # not before: no empty folder
    method, scale = _colour_scale(slide, style, prediction)
    head = prediction.title() if prediction is not None else (title or slide.slide_id)
    thumb = _thumbnail(slide, slide_path, style.thumb_px, mpp_override)
    top, bottom = top_bottom(slide.attention, style.top_k)
    # drawn in a scratch folder, moved into out_dir at the end: a failure leaves the old whole
    with scratch_folder(out_dir / ".drawing") as tmp:
        _write_overlay(slide, thumb, scale, masks, style, head, tmp / "overlay.png", top)
        _write_gallery(slide, top, bottom, head, style, tmp / "gallery.png", masks[1])
        _write_geojsons(slide, scale, top, masks, (tissue_mask, lesion_mask), tmp)
        _move_into(tmp, out_dir, slide.attention)
    return {
        "slide_id": slide.slide_id,
        "n_patches": int(slide.coords.shape[0]),
        "top": top.tolist(),
        "thumbnail_shape": list(thumb.shape[:2]),
        "scale": method,
        "values": scale.values,
        "title": head,
    }


def _move_into(draft: Path, out_dir: Path, attention: np.ndarray) -> None:
    """Save attention.npy in ``draft`` and move the heatmap's files into ``out_dir``,
    attention.npy last (the others were drawn from it)."""
    np.save(draft / "attention.npy", attention)
    for name in HEATMAP_FILES:
        os.replace(draft / name, out_dir / name)


@dataclass(frozen=True)
class _Slide:
    """What make_heatmap reads of a slide's store: the store, the patches' level-0 ``coords``
    (N, 2), the store's ``attrs``, the ``attention`` (N,) float32, the slide's id, the patch
    side ``psize`` and the slide's ``dims`` (W, H), both in level-0 pixels."""

    store: str | Path
    coords: np.ndarray
    attrs: Mapping[str, Any]
    attention: np.ndarray
    slide_id: str
    psize: tuple[float, float]
    dims: tuple[int, int]


def _read_slide(store: str | Path, attention: np.ndarray) -> _Slide:
    """The store's geometry with ``attention`` as float32 (N,); GigamilError if N differs from
    the store's number of patches. Without ``slide_dimensions`` the patches' extent is used."""
    coords, _, attrs = read_store_geometry(store)
    attention = np.asarray(attention, dtype=np.float32)
    if attention.ndim != 1:  # one value per patch; a (2, N/2) array is no slide's attention
        raise GigamilError(
            f"{store}: attention of shape {attention.shape}, not one value per patch"
        )
    bad = int((~np.isfinite(attention)).sum())
    if attention.shape[0] != coords.shape[0]:
        raise GigamilError(
            f"{store}: attention has {attention.shape[0]} values but the store has "
            f"{coords.shape[0]} patches (another slide's attention file, or a store rebuilt after "
            "prediction?)"
        )
    if bad:
        raise GigamilError(f"{store}: the attention holds {bad} NaN or infinite value(s)")
    slide_id = str(attrs.get("slide_id", Path(store).stem))
    dims = attrs.get("slide_dimensions")
    psize = patch_size_xy(attrs)
    if not dims:
        dims = tuple(int(coords[:, i].max(initial=0) + psize[i]) for i in (0, 1))
    dims = (int(dims[0]), int(dims[1]))
    return _Slide(store, coords, attrs, attention, slide_id, psize, dims)


def _colour_scale(
    slide: _Slide, style: HeatmapStyle, prediction: SlidePrediction | None
) -> tuple[str, ColourScale]:
    """The scale's name and the colour scale of ``style.normalize``; ``probability`` without a
    prediction, or with a probability that is not finite for a slide that has patches (e.g.
    predictions older than its store), falls back to ``relative`` (with a warning)."""
    method = style.normalize
    prob = prediction.probability if prediction is not None else None
    no_prob = prob is None or (len(slide.attention) > 0 and not np.isfinite(prob))
    if method == "probability" and no_prob:
        why = "no prediction given" if prob is None else f"its predicted probability is {prob}"
        msg = "%s: %s, so the probability colour scale cannot be drawn; using relative"
        msg += " (attention × N)"
        log.warning(msg, slide.slide_id, why)
        method = "relative"
    if method == "probability" and not np.isfinite(prob):
        prob = 0.0  # no patches: nothing is drawn
    scale = scale_attention(
        slide.attention,
        method,
        probability=prob,
        positive=prediction.positive if prediction is not None else "positive",
        weight=style.weight,
    )
    return method, scale


def _thumbnail(
    slide: _Slide, slide_path: str | Path | None, thumb_px: int, mpp_override: float | None
) -> np.ndarray:
    """The slide's thumbnail (:func:`gigamil.viz.canvas.slide_thumbnail`), at the store's µm/px
    unless ``mpp_override`` is given."""
    attrs = slide.attrs
    if mpp_override is None and isinstance(attrs.get("slide_mpp"), int | float):
        # the µm/px the patches were cut with: a slide file without MPP still gives a thumbnail
        mpp_override = float(attrs["slide_mpp"]) if attrs["slide_mpp"] > 0 else None
    return slide_thumbnail(
        resolve_slide_path(slide_path, attrs),
        slide.dims,
        thumb_px,
        mpp_override,
        check_dims=bool(attrs.get("slide_dimensions")),  # else dims is the patches' extent
    )


def _write_overlay(
    slide: _Slide,
    thumb: np.ndarray,
    scale: ColourScale,
    masks: tuple[PlacedMask | None, PlacedMask | None],
    style: HeatmapStyle,
    head: str,
    path: Path,
    top: np.ndarray,
) -> None:
    """Write overlay.png, clipped to the tissue mask, with the lesion mask outlined (``masks``,
    each placed on the slide by its own downsample: :mod:`gigamil.viz.masks`; a tissue mask of
    unknown downsample clips nothing) and the ``top`` patches boxed and numbered as in the
    gallery."""
    # thumbnail px per level-0 px, across and down (the thumbnail rounds its sides separately)
    kx, ky = thumb.shape[1] / slide.dims[0], thumb.shape[0] / slide.dims[1]
    canvas = attention_canvas(slide.coords, slide.psize, scale.values, (kx, ky), thumb.shape[:2])
    tissue = mask_on_image(masks[0], (kx, ky), thumb.shape[:2])
    lesion = mask_on_image(masks[1], (kx, ky), thumb.shape[:2], any_pixel=True)
    side = sum(slide.psize) / 2 * kx  # the boxes are square (at least 12 px)
    marks = [
        (
            float(slide.coords[i, 0]) * kx,
            float(slide.coords[i, 1]) * ky,
            side,
            f"#{r + 1}",
        )
        for r, i in enumerate(top if style.mark_top else [])
    ]
    render_overlay(
        thumb,
        canvas,
        path,
        head,
        style.cmap,
        style.alpha,
        tissue,
        scale=scale,
        lesion=lesion,
        marks=marks,
        mpp=_thumbnail_mpp(slide.attrs, kx),
        weight=style.weight,
    )


def _thumbnail_mpp(attrs: Mapping[str, Any], scale_xy: float) -> float | None:
    """µm per thumbnail pixel across (the scale bar's direction): the store's level-0 µm/px in
    x (``slide_mpp_xy``, else ``slide_mpp``) over the thumbnail's scale (thumbnail px per level-0
    px); None when the store records no positive µm/px."""
    mpp = (attrs.get("slide_mpp_xy") or [attrs.get("slide_mpp")])[0]
    ok = isinstance(mpp, int | float) and not isinstance(mpp, bool) and mpp > 0 and scale_xy > 0
    return float(mpp) / scale_xy if ok else None


def _write_gallery(
    slide: _Slide,
    top: np.ndarray,
    bottom: np.ndarray,
    head: str,
    style: HeatmapStyle,
    path: Path,
    lesion_mask: PlacedMask | None = None,
) -> None:
    """Write gallery.png of the patches ``top`` and ``bottom`` ("no patches" if both are empty);
    with ``lesion_mask`` (as :func:`load_heatmap_masks` read it), its lesion patches (at least
    half their area in it, as the localisation AUC counts them) framed in cyan."""
    from gigamil.data.store import open_store

    idx = np.r_[top, bottom].astype(np.int64)
    if not idx.size:
        render_gallery(
            np.zeros((0, 1, 1, 3), np.uint8), np.zeros(0), [], path, f"{head}\nno patches"
        )
        return
    group = open_store(slide.store)
    order = np.argsort(idx)
    tiles = np.empty((idx.size, *group["patches"].shape[1:]), dtype=np.uint8)
    tiles[order] = group["patches"].get_orthogonal_selection((idx[order],))
    n = slide.coords.shape[0]
    # each patch's rank among the slide's n patches, 1 = highest: the bottom row ends at #n
    captions = [f"#{i + 1}" for i in range(top.size)]
    captions += [f"#{n - i}" for i in range(bottom.size)]
    what = (
        "patches (a: attention weight; ×N: relative to uniform)"
        if style.weight == "attention"
        else f"patches (a: {style.weight} / slide's sum; ×N: relative to uniform)"
    )
    title = f"{head}\ntop {top.size} / bottom {bottom.size} {style.weight} of {n} {what}"
    title += patch_width(slide.attrs)
    lesion = None
    if lesion_mask is not None:
        mask, (ds, _) = lesion_mask.mask, lesion_mask.downsample  # as lesion_fraction reads it
        in_lesion = patch_mask_fraction(slide.coords, slide.psize, mask, ds) >= 0.5
        lesion = [bool(in_lesion[i]) for i in idx]
        title += (
            f"\ncyan frame: lesion patch (at least half in the lesion mask; "
            f"{int(in_lesion.sum())} of {n})"
        )
    render_gallery(
        tiles, slide.attention[idx], captions, path, title, n_patches=int(n), lesion=lesion
    )


def _write_geojsons(
    slide: _Slide,
    scale: ColourScale,
    top: np.ndarray,
    placed: tuple[PlacedMask | None, PlacedMask | None],
    masks: tuple[str | Path | None, str | Path | None],
    out_dir: Path,
) -> None:
    """Write patches.geojson and annotations.geojson (tissue, lesion: ``placed``, read from
    ``masks``)."""
    geo = patches_geojson(
        slide.coords, slide.psize, slide.attention, scale.values, slide.slide_id, lazy=True
    )  # written feature by feature: memory does not grow with the number of patches
    write_geojson(geo, out_dir / "patches.geojson")
    write_annotations(
        out_dir / "annotations.geojson",
        slide.coords,
        slide.psize,
        slide.attention,
        scale.values,
        top,
        slide.slide_id,
        slide.attrs,
        placed[0],
        masks[0],
        (placed[1], masks[1]),
    )
