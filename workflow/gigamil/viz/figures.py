"""The heatmap's matplotlib images: overlay.png (the blended thumbnail, title and colour bar)
and gallery.png (the top-k and bottom-k patches with their captions), drawn 1:1 in pixels.

Both carry their title in the PNG's ``Title`` metadata too; :func:`report_copy` makes the
smaller JPEG copies the HTML report embeds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gigamil.viz.canvas import _colormap, composite_overlay
from gigamil.viz.scales import ColourScale

DPI = 100
MIN_FIGURE_PX = 620  # room for the title's second line


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


def _title_px(title: str) -> int:
    """Height of the title band: 16 px per line at 9 pt, plus margins."""
    return 10 + 16 * (title.count("\n") + 1)


def render_overlay(  # noqa: PLR0913 - the image, its masks and drawing options
    thumb: np.ndarray,
    canvas: np.ndarray,
    path: str | Path,
    title: str,
    cmap: str = "jet",
    alpha: float = 0.5,
    tissue: np.ndarray | None = None,
    scale: ColourScale | None = None,
    lesion: np.ndarray | None = None,
    marks: Sequence[tuple[float, float, float, str]] = (),
    mpp: float | None = None,
    weight: str = "attention",
) -> None:
    """Save the thumbnail with the coloured canvas on top (NaN = transparent), 1:1 in pixels,
    the title above and a colour bar on the right labelled with what the colour means
    (``scale``'s label and ticks; None: "attention" on 0..1). ``lesion``: the ground-truth
    lesion mask (bool, any size covering the slide), outlined in white over a black edge (seen
    on every colour map) and named in a line under the image. ``marks``: patches to box and
    number, ``(x, y, side, text)`` in image pixels (top-left corner; boxes of at least
    :data:`MIN_MARK_PX`, so a patch of a few thumbnail pixels is still found), named in the
    same line, which also says that tissue without colour had no patch. ``mpp``: µm per pixel of
    ``thumb``, for a scale bar at the lower left (None: no bar). ``weight``: what the per-patch
    weights are (:func:`gigamil.viz.heatmap.weight_name`), for the boxes' key. The title and
    the key line are wrapped to the figure's width (a portrait slide's figure is narrow)."""
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    image = composite_overlay(thumb, canvas, cmap, alpha, tissue)
    h, w = image.shape[:2]
    lesion = outline_mask(lesion, (h, w))
    bar_px = 130  # colour bar, its ticks and its two-line label
    fig_w = max(w + bar_px + 30, MIN_FIGURE_PX)
    shown = "\n".join(_wrap(line, max(24, (fig_w - 10) // 7)) for line in title.split("\n"))
    top = _title_px(shown)
    left = max(10, (fig_w - bar_px - w) // 2)
    # about 6 px a character at 8.5 pt, from the image's left edge to the figure's right
    key = _wrap(" · ".join(_keys(lesion, marks, weight)), max(24, (fig_w - left - 10) // 6))
    bar_h = SCALE_BAR_PX if mpp else 0  # the scale bar's band under the image
    fig_h = h + top + bar_h + 6 + 14 * (key.count("\n") + 1)  # and the key's lines below it
    fig = _figure(fig_w, fig_h)
    ax = _pixel_axes(fig, left, top, w, h, fig_w, fig_h)
    ax.imshow(image, interpolation="nearest")
    _draw_marks(ax, (h, w), lesion, marks, mpp)
    fig.text(left / fig_w, 2 / fig_h, key, fontsize=8.5, va="bottom")
    fig.text(0.5, 1.0 - 4 / fig_h, shown, ha="center", va="top", fontsize=9)
    cax = fig.add_axes(
        ((fig_w - bar_px + 4) / fig_w, 1.0 - (top + h) / fig_h, 14 / fig_w, h / fig_h)
    )
    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), _colormap(cmap)), cax=cax)
    label = scale.label if scale is not None else "attention"
    bar.set_label(_wrap(label, max(24, h // 8)), fontsize=8.5)
    if scale is not None:
        bar.set_ticks(list(scale.ticks), labels=list(scale.tick_labels))
    bar.ax.tick_params(labelsize=8.5)
    fig.savefig(path, dpi=DPI, metadata={"Title": title})  # the title, also machine-readable
    plt.close(fig)


def _draw_marks(
    ax: Any,
    shape: tuple[int, int],
    lesion: np.ndarray | None,
    marks: Sequence[tuple[float, float, float, str]],
    mpp: float | None,
) -> None:
    """Draw the lesion outline (``lesion``: :func:`outline_mask` of the image's size), the
    marked patches and the scale bar on the axes of the image of ``shape`` (H, W) px."""
    h, w = shape
    if lesion is not None:
        _outline(ax, lesion)
    if marks:
        _mark_patches(ax, marks)
    if mpp:
        _scale_bar(ax, mpp, w)


def _keys(
    lesion: np.ndarray | None, marks: Sequence[tuple[float, float, float, str]], weight: str
) -> list[str]:
    """The parts of the overlay's key line: what the outline and the boxes mark."""
    keys = ["white outline: lesion mask"] if lesion is not None else []
    if marks:
        n = len(marks)
        keys.append(
            f"magenta boxes: the {n} patches of highest {weight} (#1..., as in the gallery)"
        )
    return [*keys, "no colour: no patch, or outside the tissue mask"]


MIN_MARK_PX = 12  # the smallest box drawn around a marked patch


def _mark_patches(ax: Any, marks: Sequence[tuple[float, float, float, str]]) -> None:
    """A magenta box around each marked patch, its text in a magenta tag at the box's corner."""
    from matplotlib.patches import Rectangle

    for x, y, side, text in marks:
        box = max(side, MIN_MARK_PX)
        x0, y0 = x + side / 2 - box / 2, y + side / 2 - box / 2
        ax.add_patch(Rectangle((x0, y0), box, box, fill=False, ec="magenta", lw=1.6))
        ax.text(
            x0 + 1, y0 + 1, text, color="white", fontsize=7.5, va="top", ha="left",
            bbox={"facecolor": "magenta", "edgecolor": "none", "pad": 0.8, "alpha": 0.9},
        )  # fmt: skip


SCALE_BAR_PX = 26  # height of the band under the overlay that holds its scale bar


def _scale_bar(ax: Any, mpp: float, width_px: int) -> None:
    """A black scale bar of a round length (:func:`gigamil.wsi.qc.scale_bar_um`, about a fifth
    of the image width), its length under it, just below the lower left corner of ``ax`` (for
    ``mpp`` µm per image pixel): outside the image, so it hides no tissue."""
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    from gigamil.wsi.qc import scale_bar_um, um_text

    um = scale_bar_um(mpp, width_px)
    bar = AnchoredSizeBar(
        ax.transData, um / mpp, um_text(um), "upper left", pad=0.1, borderpad=0.0, sep=2,
        frameon=False, size_vertical=3, fontproperties={"size": 8},
        bbox_to_anchor=(0.0, -0.004), bbox_transform=ax.transAxes,
    )  # fmt: skip
    bar.set_clip_on(False)
    ax.add_artist(bar)


def outline_mask(lesion: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    """The lesion mask (bool, any size covering the slide) at the image's ``shape`` (H, W), a
    pixel set when any mask pixel it covers is (block maximum: a lesion smaller than a
    thumbnail pixel still shows; a nearest-neighbour resize could drop it while the key line
    still named the outline); None when there is no lesion."""
    if lesion is None or not lesion.any():
        return None
    h, w = shape
    rows = (np.arange(h) * lesion.shape[0]) // h  # first mask row of each image row
    cols = (np.arange(w) * lesion.shape[1]) // w
    return np.logical_or.reduceat(np.logical_or.reduceat(lesion, rows, axis=0), cols, axis=1)


def _outline(ax: Any, mask: np.ndarray) -> None:
    """The border of ``mask`` (bool (H, W), the image's size): a broad white line on a thin
    black edge, so it reads as white on every colour map and on the glass."""
    z = mask.astype(np.float32)
    for colour, width in (("black", 3.6), ("white", 2.4)):
        ax.contour(z, levels=[0.5], colors=colour, linewidths=width)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width=width)) or text


CAPTION_PX = 26  # two caption lines under each gallery patch
GALLERY_PAD = 6  # white px around the gallery's cells


@dataclass(frozen=True)
class _GalleryGrid:
    """The gallery's layout: ``k`` cells per row of ``cell_h`` x ``cell_w`` px (the patches
    enlarged ``up`` times), each with its caption strip below; cells GALLERY_PAD px apart."""

    k: int
    up: int
    cell_h: int
    cell_w: int

    @classmethod
    def of(cls, patches: np.ndarray) -> _GalleryGrid:
        """The layout of 2 rows of ``patches`` (2k, H, W, 3) (32 x 32 cells if there are none)."""
        n = len(patches)
        k = max(1, int(np.ceil(n / 2)))
        ph, pw = (patches.shape[1], patches.shape[2]) if n else (32, 32)
        up = max(1, int(np.ceil(96 / max(ph, pw))))  # small patches are enlarged (nearest)
        return cls(k, up, ph * up, pw * up)

    @property
    def row_h(self) -> int:
        """Height of a row: cell, caption strip and padding."""
        return self.cell_h + CAPTION_PX + GALLERY_PAD

    def corner(self, i: int) -> tuple[int, int]:
        """(y, x) of the top-left corner of cell ``i`` in the mosaic."""
        r, c = divmod(i, self.k)
        return GALLERY_PAD + r * self.row_h, GALLERY_PAD + c * (self.cell_w + GALLERY_PAD)


def _gallery_mosaic(patches: np.ndarray, grid: _GalleryGrid) -> np.ndarray:
    """The patches tiled on white, enlarged ``grid.up`` times: uint8 (2 row_h + pad, W, 3)."""
    pad = GALLERY_PAD
    mosaic = np.full((2 * grid.row_h + pad, grid.k * (grid.cell_w + pad) + pad, 3), 255, np.uint8)
    for i in range(len(patches)):
        y, x = grid.corner(i)
        mosaic[y : y + grid.cell_h, x : x + grid.cell_w] = np.repeat(
            np.repeat(patches[i], grid.up, 0), grid.up, 1
        )
    return mosaic


def _gallery_captions(
    ax: Any,
    grid: _GalleryGrid,
    n: int,
    values: np.ndarray,
    ranks: Sequence[str],
    n_patches: int | None,
) -> None:
    """The captions of the ``n`` patches, each in the strip under it; the rows' names ("top",
    "bottom") on their left."""
    for i in range(n):
        y, x = grid.corner(i)
        caption = f"{ranks[i]}  a={values[i]:.3g}"
        if n_patches:
            caption += f"\n×N = {values[i] * n_patches:.3g}"
        ax.text(
            x,
            y + grid.cell_h + 2,
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
            GALLERY_PAD + r * grid.row_h + grid.cell_h / 2,
            name,
            rotation=90,
            va="center",
            ha="right",
            fontsize=8,
        )


def render_gallery(
    patches: np.ndarray,
    values: np.ndarray,
    ranks: Sequence[str],
    path: str | Path,
    title: str,
    n_patches: int | None = None,
    lesion: Sequence[bool] | None = None,
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
        lesion: (2k,) whether each is a lesion patch: framed in :data:`LESION_FRAME`.
    """
    import matplotlib.pyplot as plt

    grid = _GalleryGrid.of(patches)
    mosaic = _gallery_mosaic(patches, grid)
    mh, mw = mosaic.shape[:2]
    margin = 26  # the "top" / "bottom" row names
    fig_w = max(mw + margin + 10, MIN_FIGURE_PX)
    # each line wrapped to the figure (about 7 px a character at 9 pt): a narrow gallery (top_k
    # of 6 or fewer) cut the ends of its title, e.g. the patches' width in µm
    shown = "\n".join(_wrap(line, max(24, (fig_w - 10) // 7)) for line in title.split("\n"))
    top = _title_px(shown)
    fig_h = mh + top + 4
    fig = _figure(fig_w, fig_h)
    left = max(margin, (fig_w - mw) // 2)
    ax = _pixel_axes(fig, left, top, mw, mh, fig_w, fig_h)
    ax.imshow(mosaic, interpolation="nearest")
    _gallery_captions(ax, grid, len(patches), values, ranks, n_patches)
    _frame_cells(ax, grid, [i for i, flag in enumerate(lesion or []) if flag])
    fig.text(0.5, 1.0 - 4 / fig_h, shown, ha="center", va="top", fontsize=9)
    fig.savefig(path, dpi=DPI, metadata={"Title": title})  # the title, also machine-readable
    plt.close(fig)


LESION_FRAME = "#00c8ff"  # cyan: a colour no patch has (H&E is pink and purple)


def _frame_cells(ax: Any, grid: _GalleryGrid, cells: Sequence[int]) -> None:
    """A :data:`LESION_FRAME` frame around each of the gallery's ``cells``."""
    from matplotlib.patches import Rectangle

    for i in cells:
        y, x = grid.corner(i)
        ax.add_patch(
            Rectangle(
                (x - 1.5, y - 1.5), grid.cell_w + 2, grid.cell_h + 2, fill=False,
                ec=LESION_FRAME, lw=2.4,
            )
        )  # fmt: skip


REPORT_JPEG_QUALITY = 85


def report_copy(png: str | Path, jpg: str | Path, quality: int = REPORT_JPEG_QUALITY) -> Path:
    """A JPEG copy of the figure ``png`` for the HTML report (RGB, ``quality`` 85, the PNG's
    ``Title`` kept as the JPEG comment): a quarter to a fifth of the PNG's bytes, since the report
    embeds every image (base64). The PNG stays the lossless original. Returns ``jpg``."""
    from PIL import Image

    with Image.open(png) as im:
        title = im.info.get("Title", "")
        rgb = im.convert("RGB")
    jpg = Path(jpg)
    jpg.parent.mkdir(parents=True, exist_ok=True)
    rgb.save(jpg, "JPEG", quality=int(quality), optimize=True, comment=title.encode())
    return jpg


def patch_width(attrs: Mapping[str, Any]) -> str:
    """The gallery title's "; each 93 µm wide", from a store's ``patch_size_level0`` (px) and
    ``slide_mpp`` (µm/px); "" without them."""
    px, mpp = attrs.get("patch_size_level0"), attrs.get("slide_mpp")
    if not isinstance(px, int | float) or not isinstance(mpp, int | float) or mpp <= 0:
        return ""
    return f"; each {px * mpp:.0f} µm wide"
