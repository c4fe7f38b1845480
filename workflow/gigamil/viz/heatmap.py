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
- ``patches.geojson``: one polygon per patch in level-0 pixels, with its attention, for QuPath.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

from gigamil.errors import GigamilError
from gigamil.evaluate.localization import read_store_geometry
from gigamil.viz.geojson import patches_geojson, write_geojson

log = logging.getLogger(__name__)

NORMALIZATIONS = ("rank", "percentile", "minmax")


def normalize_attention(att: np.ndarray, method: str = "rank") -> np.ndarray:
    """Scale attention (N,) to [0, 1] per slide.

    ``rank``: rank / N (ties share their mean rank); ``percentile``: clip to the 1st-99th
    percentiles, then min-max; ``minmax``: min-max. A constant array maps to 0.5.
    """
    att = np.asarray(att, dtype=np.float64)
    if method not in NORMALIZATIONS:
        choices = ", ".join(NORMALIZATIONS)
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
    # Rounded edges: neighbouring patches tile the canvas without sharing pixels.
    x0 = np.round(coords[:, 0] * scale).astype(np.int64)
    y0 = np.round(coords[:, 1] * scale).astype(np.int64)
    x1 = np.maximum(np.round((coords[:, 0] + patch_size_level0) * scale).astype(np.int64), x0 + 1)
    y1 = np.maximum(np.round((coords[:, 1] + patch_size_level0) * scale).astype(np.int64), y0 + 1)
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


def render_overlay(
    thumb: np.ndarray,
    canvas: np.ndarray,
    path: str | Path,
    title: str,
    cmap: str = "jet",
    alpha: float = 0.5,
    tissue: np.ndarray | None = None,
    colorbar_label: str = "attention",
) -> None:
    """Save the thumbnail with the coloured canvas on top (NaN = transparent) and a colour bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError:
        raise GigamilError(f"heatmaps.cmap: {cmap!r} is not a matplotlib colour map") from None
    shown = canvas.copy()
    if tissue is not None:
        shown[~_resize_mask(tissue, canvas.shape)] = np.nan
    h, w = canvas.shape
    dpi = 100
    fig_w = max(4.0, w / dpi + 1.2)
    fig_h = max(3.0, h / dpi + 0.6)
    fig, ax = plt.subplots(figsize=(fig_w, fig_h), dpi=dpi)
    ax.imshow(thumb, interpolation="nearest")
    im = ax.imshow(
        np.ma.masked_invalid(shown),
        cmap=colormap,
        vmin=0.0,
        vmax=1.0,
        alpha=alpha,
        interpolation="nearest",
    )
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label=colorbar_label)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def render_gallery(
    patches: np.ndarray, values: np.ndarray, ranks: Sequence[str], path: str | Path, title: str
) -> None:
    """Save a 2-row gallery: the top-k (first row) and bottom-k patches with their attention.

    The patches are tiled into one mosaic image (one matplotlib image, fast for any k).

    Args:
        patches: (2k, H, W, 3) uint8, the top k then the bottom k.
        values: (2k,) attention of each.
        ranks: (2k,) captions.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(patches)
    k = max(1, int(np.ceil(n / 2)))
    ph, pw = (patches.shape[1], patches.shape[2]) if n else (32, 32)
    up = max(1, int(np.ceil(96 / max(ph, pw))))  # small patches are enlarged (nearest)
    cell_h, cell_w, pad = ph * up, pw * up, 4
    mosaic = np.full((2 * (cell_h + pad) + pad, k * (cell_w + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, k)
        y, x = pad + r * (cell_h + pad), pad + c * (cell_w + pad)
        mosaic[y : y + cell_h, x : x + cell_w] = np.repeat(np.repeat(patches[i], up, 0), up, 1)
    dpi = 100
    fig_w, fig_h = mosaic.shape[1] / dpi + 0.5, mosaic.shape[0] / dpi + 0.35
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=dpi)
    ax = fig.add_axes(
        (0.4 / fig_w, 0.02 / fig_h, mosaic.shape[1] / dpi / fig_w, mosaic.shape[0] / dpi / fig_h)
    )
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()
    for i in range(n):
        r, c = divmod(i, k)
        ax.text(
            pad + c * (cell_w + pad) + 2,
            pad + r * (cell_h + pad) + 2,
            f"{ranks[i]} {values[i]:.3g}",
            fontsize=6,
            va="top",
            ha="left",
            color="black",
            backgroundcolor=(1, 1, 1, 0.7),
        )
    for r, name in enumerate(("top", "bottom")):
        ax.text(
            -2,
            pad + r * (cell_h + pad) + cell_h / 2,
            name,
            rotation=90,
            va="center",
            ha="right",
            fontsize=8,
        )
    fig.suptitle(title, fontsize=9, y=1 - 0.04 / fig_h, va="top")
    fig.savefig(path)
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


@dataclass(frozen=True, kw_only=True)
class HeatmapStyle:
    """How a heatmap is drawn (config.yaml ``heatmaps``, ``gigamil heatmap`` options).

    ``normalize``: rank, percentile or minmax (see :func:`normalize_attention`); ``top_k``:
    patches per gallery row; ``alpha``: overlay opacity; ``cmap``: matplotlib colour map;
    ``thumb_px``: thumbnail long side.
    """

    normalize: str = "rank"
    top_k: int = 8
    alpha: float = 0.5
    cmap: str = "jet"
    thumb_px: int = 800


def make_heatmap(
    store: str | Path,
    attention: np.ndarray,
    out_dir: str | Path,
    *,
    slide_path: str | Path | None = None,
    tissue_mask: str | Path | None = None,
    style: HeatmapStyle = HeatmapStyle(),
    title: str = "",
    mpp_override: float | None = None,
) -> dict[str, Any]:
    """Write overlay.png, attention.npy, gallery.png and patches.geojson for one slide.

    Args:
        store: the slide's zarr patch store (coords, attrs patch_size_level0, slide_dimensions).
        attention: (N,) attention aligned with the store's rows.
        out_dir: output directory (created).
        slide_path: the slide file for the thumbnail (grey background if None/unreadable).
        tissue_mask: tissue mask PNG (covering the whole slide) to clip the overlay to.
        style: normalisation, colours and sizes (:class:`HeatmapStyle`).

    Returns:
        A small dict (n_patches, top indices) for logging and tests.
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
    values = normalize_attention(attention, style.normalize)

    thumb = slide_thumbnail(slide_path, dims, style.thumb_px, mpp_override)
    scale = thumb.shape[1] / dims[0]
    canvas = attention_canvas(coords, psize, values, scale, thumb.shape[:2])
    tissue = load_tissue_mask(tissue_mask)
    label = {
        "rank": "attention (rank)",
        "percentile": "attention (1-99th pct scaled)",
        "minmax": "attention (min-max scaled)",
    }[style.normalize]
    render_overlay(
        thumb,
        canvas,
        out_dir / "overlay.png",
        title or slide_id,
        style.cmap,
        style.alpha,
        tissue,
        label,
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
            f"{slide_id}: top {top.size} / bottom {bottom.size} attention",
        )
    else:
        render_gallery(
            np.zeros((0, 1, 1, 3), np.uint8),
            np.zeros(0),
            [],
            out_dir / "gallery.png",
            f"{slide_id}: no patches",
        )
    geo = patches_geojson(coords, psize, attention, values, slide_id)
    write_geojson(geo, out_dir / "patches.geojson")
    return {
        "slide_id": slide_id,
        "n_patches": int(coords.shape[0]),
        "top": top.tolist(),
        "thumbnail_shape": list(thumb.shape[:2]),
    }
