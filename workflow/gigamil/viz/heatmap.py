"""Attention heatmaps of one slide (rule heatmap).

Attention values (N,) are aligned with the rows of the slide's zarr store, whose ``coords`` give
each patch's level-0 top-left corner and ``patch_size_level0`` its side. Everything is drawn at
thumbnail resolution (at most ``thumb_px`` on the long side), so memory does not depend on the
slide size. Overlapping patches (stride < patch size) are averaged per thumbnail pixel, which gives
smooth maps. Outputs in ``out_dir``:

- ``overlay.png``: the heatmap over the slide thumbnail, clipped to the tissue mask, with a colour
  bar;
- ``attention.npy``: the raw attention (N,) float32 (the mean over fold models for an ensemble);
- ``gallery.png``: the ``top_k`` highest- and lowest-attention patches;
- ``patches.geojson``: one polygon per patch in level-0 pixels, with its attention, for QuPath;
- ``annotations.geojson``: QuPath annotations of the tissue mask (class ``Tissue``), of the
  ``top_k`` highest-attention patches (class ``Attention top-k``) and of the regions where they
  overlap or touch (class ``Attention top-k region``), in level-0 pixels.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

from gigamil.errors import GigamilError
from gigamil.evaluate.localization import read_store_geometry
from gigamil.settings import schema_section
from gigamil.viz.geojson import (
    annotations_geojson,
    patches_geojson,
    tissue_features,
    top_attention_features,
    top_region_features,
    write_geojson,
)
from gigamil.viz.slide_info import SlidePrediction

log = logging.getLogger(__name__)

PER_SLIDE = ("rank", "percentile", "minmax")
SCALES = ("probability", "relative", *PER_SLIDE)
NORMALIZATIONS = SCALES  # the values of heatmaps.normalize / --normalize
DEFAULT_SCALE = "probability"
RELATIVE_RANGE = (0.01, 100.0)  # the relative scale's colour bar: N x attention, log10


def normalize_attention(att: np.ndarray, method: str = "rank") -> np.ndarray:
    """Scale attention (N,) to [0, 1] per slide.

    ``rank``: rank / N (ties share their mean rank); ``percentile``: clip to the 1st-99th
    percentiles, then min-max; ``minmax``: min-max. A constant array maps to 0.5.
    """
    att = np.asarray(att, dtype=np.float64)
    if method not in PER_SLIDE:
        choices = ", ".join(PER_SLIDE)
        raise GigamilError(f"heatmaps.normalize: {method!r} is not one of {choices}")
    if att.size == 0:
        return att
    if method == "rank":
        return rankdata(att) / att.size
    if method == "percentile":
        lo, hi = np.percentile(att, [1.0, 99.0])
        att = np.clip(att, lo, hi)
    lo, hi = float(att.min()), float(att.max())
    if hi - lo <= 1e-12 * max(abs(hi), 1.0):
        return np.full(att.shape, 0.5)
    return (att - lo) / (hi - lo)


@dataclass(frozen=True)
class ColourScale:
    """Colour of every patch: ``values`` (N,) positions on the colour bar in [0, 1], the colour
    bar's ``label`` (what the colour means) and its ``ticks`` (positions) and ``tick_labels``."""

    values: np.ndarray
    label: str
    ticks: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    tick_labels: tuple[str, ...] = ("0", "0.25", "0.5", "0.75", "1")


def scale_attention(
    att: np.ndarray,
    method: str = DEFAULT_SCALE,
    *,
    probability: float | None = None,
    positive: str = "positive",
    weight: str = "attention",
) -> ColourScale:
    """The colour of each patch of a slide (``heatmaps.normalize``).

    Attention says where the model looked, not what it saw: the softmax weights of every slide sum
    to 1, so any per-slide normalisation (``rank``, ``percentile``, ``minmax``) paints the
    most-attended patches of a slide the model calls normal (P(lesion) = 3e-6) as red as the
    tumour of a lesion slide. Two scales compare across slides:

    - ``probability`` (the default): P(positive) x attention / the slide's largest attention. The
      map keeps its shape (where the model looked, relative to the patch that weighed most) and the
      slide's predicted probability sets its height, so red means "the model calls this slide
      positive and this patch carried the decision"; a confidently-normal slide stays cool
      everywhere, and two slides' colours mean the same. This is the honest default.
    - ``relative``: N x attention (1 = uniform attention over the N patches), on a fixed log
      scale from 0.01 to 100: how concentrated the model's attention is, comparable across slides,
      but it says nothing about the predicted class (a normal slide may be concentrated too).

    Args:
        att: (N,) attention (softmax weights, or their mean over fold models).
        method: ``probability``, ``relative``, ``rank``, ``percentile`` or ``minmax``.
        probability: the slide's predicted P(positive) in [0, 1]; required by ``probability``.
        positive: the positive class's name, for the colour bar's label.
        weight: what ``att`` is, for the labels: ``attention``, or ``patch probability`` for
            ``model.pool: instance`` (each patch's P(positive) divided by the slide's sum).
    """
    att = np.asarray(att, dtype=np.float64).reshape(-1)
    if method not in SCALES:
        raise GigamilError(f"heatmaps.normalize: {method!r} is not one of {', '.join(SCALES)}")
    if method in PER_SLIDE:
        label = {
            "rank": f"{weight} rank within the slide (not comparable across slides)",
            "percentile": f"{weight}, 1-99th pct of the slide (not comparable across slides)",
            "minmax": f"{weight}, min-max of the slide (not comparable across slides)",
        }[method]
        return ColourScale(normalize_attention(att, method), label)
    if method == "relative":
        lo, hi = np.log10(RELATIVE_RANGE)
        with np.errstate(divide="ignore"):
            rel = np.log10(np.maximum(att * att.size, 1e-300))
        values = np.clip((rel - lo) / (hi - lo), 0.0, 1.0)
        exps = np.arange(int(lo), int(hi) + 1)
        labels = [f"{10.0**e:g}" for e in exps]
        labels[0], labels[-1] = f"≤{labels[0]}", f"≥{labels[-1]}"
        return ColourScale(
            values,
            f"{weight} share × N (1 = uniform; log scale)"
            if weight != "attention"
            else "attention × N (1 = uniform; log scale)",
            tuple(float((e - lo) / (hi - lo)) for e in exps),
            tuple(labels),
        )
    if probability is None or not np.isfinite(probability):
        raise GigamilError(
            "heatmaps.normalize: probability needs the slide's predicted probability "
            "(gigamil heatmap --predictions), or choose relative, rank, percentile or minmax"
        )
    if not 0.0 <= probability <= 1.0:
        raise GigamilError(f"probability {probability} is not in [0, 1]")
    top = float(att.max()) if att.size else 0.0
    rel = att / top if top > 0 else np.zeros_like(att)
    return ColourScale(float(probability) * rel, f"P({positive}) × {weight} / slide's top {weight}")


def attention_canvas(
    coords: np.ndarray,
    patch_size_level0: float,
    values: np.ndarray,
    scale: float,
    shape: tuple[int, int],
) -> np.ndarray:
    """Paint per-patch values on a thumbnail-sized canvas.

    Args:
        coords: (N, 2) level-0 x, y of the patches' top-left corners.
        patch_size_level0: patch side in level-0 pixels.
        values: (N,) value per patch.
        scale: thumbnail pixels per level-0 pixel.
        shape: (H, W) of the canvas.

    Returns:
        float (H, W): mean value of the patches covering each pixel, NaN where no patch is.
    """
    h, w = shape
    # Rounded edges: neighbouring patches tile the canvas without sharing pixels. The stores'
    # coords are whole level-0 pixels but a resampled patch's side is not (e.g. 443.2 px), so
    # the next patch may start up to 1 level-0 px after this one ends, which the rounding turns
    # into a 1-px seam between patch rows now and then: such ends are moved out by that 1 px.
    side = float(patch_size_level0) + (0.0 if float(patch_size_level0).is_integer() else 1.0)
    x0 = np.round(coords[:, 0] * scale).astype(np.int64)
    y0 = np.round(coords[:, 1] * scale).astype(np.int64)
    x1 = np.maximum(np.round((coords[:, 0] + side) * scale).astype(np.int64), x0 + 1)
    y1 = np.maximum(np.round((coords[:, 1] + side) * scale).astype(np.int64), y0 + 1)
    x0, x1 = np.clip(x0, 0, w), np.clip(x1, 0, w)
    y0, y1 = np.clip(y0, 0, h), np.clip(y1, 0, h)
    # 2-D difference arrays: each patch adds its value to a rectangle in O(1).
    dt = np.zeros((h + 1, w + 1), dtype=np.float64)
    dc = np.zeros((h + 1, w + 1), dtype=np.float64)
    for arr, v in ((dt, values), (dc, np.ones_like(values, dtype=np.float64))):
        np.add.at(arr, (y0, x0), v)
        np.add.at(arr, (y0, x1), -v)
        np.add.at(arr, (y1, x0), -v)
        np.add.at(arr, (y1, x1), v)
    total = np.cumsum(np.cumsum(dt, axis=0), axis=1)[:h, :w]
    count = np.cumsum(np.cumsum(dc, axis=0), axis=1)[:h, :w]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0.5, total / np.maximum(count, 1e-12), np.nan)


def slide_thumbnail(
    slide_path: str | Path | None,
    slide_dims: tuple[int, int],
    max_px: int,
    mpp_override: float | None = None,
) -> np.ndarray:
    """RGB uint8 (H, W, 3) thumbnail with the slide's aspect ratio (grey if unreadable)."""
    w0, h0 = slide_dims
    scale = max_px / max(w0, h0)
    size = (max(1, round(w0 * scale)), max(1, round(h0 * scale)))
    if slide_path is not None:
        try:
            from PIL import Image

            from gigamil.wsi.reader import open_slide

            with open_slide(slide_path, mpp_override=mpp_override) as reader:
                thumb = reader.get_thumbnail((max_px, max_px))
            if thumb.shape[:2] != (size[1], size[0]):
                thumb = np.asarray(Image.fromarray(thumb).resize(size, Image.Resampling.BILINEAR))
            return thumb[..., :3]
        except Exception as exc:  # noqa: BLE001 - a heatmap without background beats none
            log.warning("%s: no thumbnail (%s); drawing on grey", slide_path, exc)
    return np.full((size[1], size[0], 3), 230, dtype=np.uint8)


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to (H, W)."""
    h, w = shape
    rows = np.minimum((np.arange(h) + 0.5) * mask.shape[0] / h, mask.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(w) + 0.5) * mask.shape[1] / w, mask.shape[1] - 1).astype(int)
    return mask[np.ix_(rows, cols)]


def _colormap(cmap: str) -> Any:
    import matplotlib

    from gigamil.config import check_cmap

    check_cmap(cmap)  # the workflow's own check: one message, with the nearest name
    return matplotlib.colormaps[cmap]


def composite_overlay(
    thumb: np.ndarray,
    canvas: np.ndarray,
    cmap: str = "jet",
    alpha: float = 0.5,
    tissue: np.ndarray | None = None,
) -> np.ndarray:
    """The thumbnail with the coloured canvas blended on top, pixel for pixel (uint8 RGB).

    Blended here rather than by matplotlib, so no resampling of the canvas or of its mask can
    leave seams (light lines) between patch rows: every canvas pixel colours exactly its
    thumbnail pixel. NaN (no patch) and pixels outside ``tissue`` stay the thumbnail's.
    """
    shown = np.array(canvas, dtype=np.float64)
    if tissue is not None:
        shown[~_resize_mask(tissue, canvas.shape)] = np.nan
    covered = np.isfinite(shown)
    rgb = _colormap(cmap)(np.clip(np.where(covered, shown, 0.0), 0.0, 1.0))[..., :3]
    a = np.where(covered, float(alpha), 0.0)[..., None]
    out = thumb[..., :3].astype(np.float64) / 255.0 * (1.0 - a) + rgb * a
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def _figure(width_px: int, height_px: int) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI)


def _pixel_axes(fig: Any, x: int, y_top: int, w: int, h: int, fig_w: int, fig_h: int) -> Any:
    """Axes at whole pixels (x, y from the top-left), so an image of w x h px is drawn 1:1."""
    ax = fig.add_axes((x / fig_w, 1.0 - (y_top + h) / fig_h, w / fig_w, h / fig_h))
    ax.set_axis_off()
    return ax


DPI = 100
MIN_FIGURE_PX = 620  # room for the title's second line


def _title_px(title: str) -> int:
    """Height of the title band: 16 px per line at 9 pt, plus margins."""
    return 10 + 16 * (title.count("\n") + 1)


def render_overlay(
    thumb: np.ndarray,
    canvas: np.ndarray,
    path: str | Path,
    title: str,
    cmap: str = "jet",
    alpha: float = 0.5,
    tissue: np.ndarray | None = None,
    scale: ColourScale | None = None,
) -> None:
    """Save the thumbnail with the coloured canvas on top (NaN = transparent), 1:1 in pixels,
    the title above and a colour bar on the right labelled with what the colour means
    (``scale``'s label and ticks; None: "attention" on 0..1)."""
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    image = composite_overlay(thumb, canvas, cmap, alpha, tissue)
    h, w = image.shape[:2]
    bar_px = 110  # colour bar, its ticks and its two-line label
    fig_w = max(w + bar_px + 30, MIN_FIGURE_PX)
    top = _title_px(title)
    fig_h = h + top + 16
    fig = _figure(fig_w, fig_h)
    left = max(10, (fig_w - bar_px - w) // 2)
    ax = _pixel_axes(fig, left, top, w, h, fig_w, fig_h)
    ax.imshow(image, interpolation="nearest")
    fig.text(0.5, 1.0 - 4 / fig_h, title, ha="center", va="top", fontsize=9)
    cax = fig.add_axes(
        ((fig_w - bar_px + 4) / fig_w, 1.0 - (top + h) / fig_h, 14 / fig_w, h / fig_h)
    )
    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), _colormap(cmap)), cax=cax)
    label = scale.label if scale is not None else "attention"
    bar.set_label(_wrap(label, max(24, h // 6)), fontsize=7)
    if scale is not None:
        bar.set_ticks(list(scale.ticks), labels=list(scale.tick_labels))
    bar.ax.tick_params(labelsize=7)
    fig.savefig(path, dpi=DPI, metadata={"Title": title})  # the title, also machine-readable
    plt.close(fig)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width=width)) or text


CAPTION_PX = 26  # two caption lines under each gallery patch


def render_gallery(
    patches: np.ndarray,
    values: np.ndarray,
    ranks: Sequence[str],
    path: str | Path,
    title: str,
    n_patches: int | None = None,
) -> None:
    """Save a 2-row gallery: the top-k (first row) and bottom-k patches with their attention.

    The patches are tiled into one mosaic image drawn 1:1 in pixels (one matplotlib image, fast
    for any k); each patch's caption (rank, attention weight ``a`` and, given ``n_patches``, the
    weight relative to uniform ``×N``) is written in a white strip under it, never over it.

    Args:
        patches: (2k, H, W, 3) uint8, the top k then the bottom k.
        values: (2k,) attention of each.
        ranks: (2k,) captions.
        n_patches: N, the slide's number of patches (for ``×N``).
    """
    import matplotlib.pyplot as plt

    n = len(patches)
    k = max(1, int(np.ceil(n / 2)))
    ph, pw = (patches.shape[1], patches.shape[2]) if n else (32, 32)
    up = max(1, int(np.ceil(96 / max(ph, pw))))  # small patches are enlarged (nearest)
    cell_h, cell_w, pad = ph * up, pw * up, 6
    row_h = cell_h + CAPTION_PX + pad
    mosaic = np.full((2 * row_h + pad, k * (cell_w + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, k)
        y, x = pad + r * row_h, pad + c * (cell_w + pad)
        mosaic[y : y + cell_h, x : x + cell_w] = np.repeat(np.repeat(patches[i], up, 0), up, 1)
    mh, mw = mosaic.shape[:2]
    margin = 26  # the "top" / "bottom" row names
    fig_w = max(mw + margin + 10, MIN_FIGURE_PX)
    top = _title_px(title)
    fig_h = mh + top + 4
    fig = _figure(fig_w, fig_h)
    left = max(margin, (fig_w - mw) // 2)
    ax = _pixel_axes(fig, left, top, mw, mh, fig_w, fig_h)
    ax.imshow(mosaic, interpolation="nearest")
    for i in range(n):
        r, c = divmod(i, k)
        caption = f"{ranks[i]}  a={values[i]:.3g}"
        if n_patches:
            caption += f"\n×N = {values[i] * n_patches:.3g}"
        ax.text(
            pad + c * (cell_w + pad),
            pad + r * row_h + cell_h + 2,
            caption,
            fontsize=6.5,
            va="top",
            ha="left",
            color="black",
            linespacing=1.1,
        )
    for r, name in enumerate(("top", "bottom")):
        ax.text(
            -4,
            pad + r * row_h + cell_h / 2,
            name,
            rotation=90,
            va="center",
            ha="right",
            fontsize=8,
        )
    fig.text(0.5, 1.0 - 4 / fig_h, title, ha="center", va="top", fontsize=9)
    fig.savefig(path, dpi=DPI, metadata={"Title": title})  # the title, also machine-readable
    plt.close(fig)


def top_bottom(att: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the k highest (descending) and k lowest (ascending) attention values."""
    order = np.argsort(-np.asarray(att), kind="stable")
    k = min(k, att.size)
    return order[:k], order[::-1][:k]


def load_tissue_mask(path: str | Path | None) -> np.ndarray | None:
    """The tissue mask PNG as bool (H, W), or None if no path / no file."""
    if path is None or not Path(path).is_file():
        return None
    from PIL import Image

    return np.asarray(Image.open(path).convert("L")) > 127


def mask_downsample(
    mask_shape: tuple[int, int],
    attrs: Mapping[str, Any],
    mask_path: str | Path | None = None,
) -> tuple[float, float] | None:
    """Level-0 pixels per tissue-mask pixel in x and y, or None if unknown.

    A tissue mask covers the whole slide (:func:`gigamil.wsi.raster.read_raster_image`: level-0
    width / mask width, height / mask height), so the slide's level-0 dimensions give the exact
    scale: the store's ``slide_dimensions``, else those in the mask's JSON sidecar.
    """
    dims = attrs.get("slide_dimensions")
    if not dims and mask_path is not None:
        import json

        sidecar = Path(mask_path).with_suffix(".json")
        if sidecar.is_file():
            try:
                dims = json.loads(sidecar.read_text()).get("slide_dimensions")
            except (OSError, ValueError):
                dims = None
    if not dims or min(mask_shape) < 1:
        return None
    return float(dims[0]) / mask_shape[1], float(dims[1]) / mask_shape[0]


def write_annotations(  # noqa: PLR0913 - the heatmap's pieces
    path: str | Path,
    coords: np.ndarray,
    patch_size_level0: float,
    attention: np.ndarray,
    normalized: np.ndarray,
    top: np.ndarray,
    slide_id: str,
    attrs: Mapping[str, Any],
    tissue: np.ndarray | None,
    tissue_mask: str | Path | None = None,
) -> dict[str, Any]:
    """Write annotations.geojson: the tissue mask (if given and the slide's level-0 size is
    known), the patches ``top`` and the regions where they touch as QuPath annotations
    (:mod:`gigamil.viz.geojson`)."""
    tissue_annotations: list[dict[str, Any]] = []
    if tissue is not None:
        downsample = mask_downsample(tissue.shape, attrs, tissue_mask)
        if downsample is None:
            log.warning(
                "%s: the slide's level-0 size is unknown (no slide_dimensions in the store or "
                "the mask's JSON), so annotations.geojson has no tissue outline",
                slide_id,
            )
        else:
            slide_mpp = attrs.get("slide_mpp")
            mpp = float(slide_mpp) if isinstance(slide_mpp, int | float) and slide_mpp > 0 else None
            tissue_annotations = tissue_features(tissue, downsample, slide_id, mpp)
    top_annotations = top_attention_features(
        coords, patch_size_level0, attention, normalized, top, slide_id
    )
    regions = top_region_features(coords, patch_size_level0, attention, top, slide_id)
    geo = annotations_geojson(tissue_annotations, regions, top_annotations)
    write_geojson(geo, path)
    return geo


def _style_default(key: str) -> Any:
    return schema_section(("heatmaps",))["properties"][key]["default"]


@dataclass(frozen=True, kw_only=True)
class HeatmapStyle:
    """How a heatmap is drawn (config.yaml ``heatmaps``, ``gigamil heatmap`` options); the
    defaults are the schema's.

    ``normalize``: the colour scale (see :func:`scale_attention`); ``top_k``: patches per gallery
    row; ``alpha``: overlay opacity; ``cmap``: matplotlib colour map; ``thumb_px``: thumbnail long
    side; ``weight``: what the per-patch weights are, for the labels (``attention``, or ``patch
    probability`` for ``model.pool: instance``: see :func:`weight_name`).
    """

    normalize: str = _style_default("normalize")
    top_k: int = _style_default("top_k")
    alpha: float = _style_default("alpha")
    cmap: str = _style_default("cmap")
    thumb_px: int = 800
    weight: str = "attention"

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


def resolve_slide_path(
    slide_path: str | Path | None, attrs: Mapping[str, Any]
) -> str | Path | None:
    """The slide file for the thumbnail: ``slide_path``, else the store's recorded
    ``source_path`` when that file exists (None: draw on grey)."""
    if slide_path is not None:
        return slide_path
    source = attrs.get("source_path")
    if source and Path(str(source)).is_file():
        log.info("thumbnail from the store's source_path %s", source)
        return str(source)
    if source:
        log.warning("the store's source_path %s is not a file; drawing on grey", source)
    return None


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
) -> dict[str, Any]:
    """Write overlay.png, attention.npy, gallery.png, patches.geojson and annotations.geojson
    for one slide.

    Args:
        store: the slide's zarr patch store (coords, attrs patch_size_level0, slide_dimensions).
        attention: (N,) attention aligned with the store's rows.
        out_dir: output directory (created).
        slide_path: the slide file for the thumbnail; None: the store's ``source_path`` (grey
            background if that is missing or unreadable).
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

    Returns:
        A small dict (n_patches, top indices, the scale used) for logging and tests.
    """
    from gigamil.data.store import open_store

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    coords, _, attrs = read_store_geometry(store)
    attention = np.asarray(attention, dtype=np.float32).reshape(-1)
    if attention.shape[0] != coords.shape[0]:
        raise GigamilError(
            f"{store}: attention has {attention.shape[0]} values but the store has "
            f"{coords.shape[0]} patches (was the store rebuilt after prediction?)"
        )
    slide_id = str(attrs.get("slide_id", Path(store).stem))
    dims = attrs.get("slide_dimensions")
    psize = float(attrs["patch_size_level0"])
    if not dims:
        dims = (int(coords[:, 0].max(initial=0) + psize), int(coords[:, 1].max(initial=0) + psize))
    dims = (int(dims[0]), int(dims[1]))
    np.save(out_dir / "attention.npy", attention)
    method = style.normalize
    if method == "probability" and prediction is None:
        log.warning(
            "%s: no prediction given, so the probability colour scale cannot be drawn; "
            "using relative (attention × N)",
            slide_id,
        )
        method = "relative"
    prob = prediction.probability if prediction is not None else None
    if method == "probability" and prob is not None and not np.isfinite(prob):
        prob = 0.0  # no patches: nothing is drawn
    scale = scale_attention(
        attention,
        method,
        probability=prob,
        positive=prediction.positive if prediction is not None else "positive",
        weight=style.weight,
    )
    head = prediction.title() if prediction is not None else (title or slide_id)

    if mpp_override is None and isinstance(attrs.get("slide_mpp"), int | float):
        # the µm/px the patches were cut with: a slide file without MPP still gives a thumbnail
        mpp_override = float(attrs["slide_mpp"]) if attrs["slide_mpp"] > 0 else None
    thumb = slide_thumbnail(
        resolve_slide_path(slide_path, attrs), dims, style.thumb_px, mpp_override
    )
    scale_xy = thumb.shape[1] / dims[0]
    canvas = attention_canvas(coords, psize, scale.values, scale_xy, thumb.shape[:2])
    tissue = load_tissue_mask(tissue_mask)
    render_overlay(
        thumb,
        canvas,
        out_dir / "overlay.png",
        head,
        style.cmap,
        style.alpha,
        tissue,
        scale=scale,
    )

    top, bottom = top_bottom(attention, style.top_k)
    idx = np.r_[top, bottom].astype(np.int64)
    if idx.size:
        group = open_store(store)
        order = np.argsort(idx)
        tiles = np.empty((idx.size, *group["patches"].shape[1:]), dtype=np.uint8)
        tiles[order] = group["patches"].get_orthogonal_selection((idx[order],))
        captions = [f"#{i + 1}" for i in range(top.size)]
        captions += [f"-#{i + 1}" for i in range(bottom.size)]
        render_gallery(
            tiles,
            attention[idx],
            captions,
            out_dir / "gallery.png",
            f"{head}\ntop {top.size} / bottom {bottom.size} {style.weight} of {coords.shape[0]} "
            + (
                "patches (a: attention weight; ×N: relative to uniform)"
                if style.weight == "attention"
                else f"patches (a: {style.weight} / slide's sum; ×N: relative to uniform)"
            ),
            n_patches=int(coords.shape[0]),
        )
    else:
        render_gallery(
            np.zeros((0, 1, 1, 3), np.uint8),
            np.zeros(0),
            [],
            out_dir / "gallery.png",
            f"{head}\nno patches",
        )
    geo = patches_geojson(coords, psize, attention, scale.values, slide_id)
    write_geojson(geo, out_dir / "patches.geojson")
    write_annotations(
        out_dir / "annotations.geojson",
        coords,
        psize,
        attention,
        scale.values,
        top,
        slide_id,
        attrs,
        tissue,
        tissue_mask,
    )
    return {
        "slide_id": slide_id,
        "n_patches": int(coords.shape[0]),
        "top": top.tolist(),
        "thumbnail_shape": list(thumb.shape[:2]),
        "scale": method,
        "values": scale.values,
        "title": head,
    }
