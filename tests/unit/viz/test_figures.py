"""The heatmap's images: the gallery's captions never cover its patches; the report's copies."""

from __future__ import annotations

import numpy as np
from PIL import Image

from gigamil.viz.figures import render_gallery, report_copy


def test_gallery_captions_do_not_cover_the_patches(tmp_path):
    k, px = 4, 8
    patches = np.zeros((2 * k, px, px, 3), np.uint8)
    patches[:] = (0, 200, 0)
    png = tmp_path / "g.png"
    captions = [f"#{i + 1}" for i in range(k)] + [f"#{50 - i}" for i in range(k)]
    render_gallery(patches, np.linspace(0.5, 0.001, 2 * k), captions, png, "t", n_patches=50)
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    green = (img == (0, 200, 0)).all(axis=-1)
    up = int(np.ceil(96 / px))
    assert green.sum() == 2 * k * (px * up) ** 2  # every patch pixel, untouched by any text


def test_report_copy_is_a_smaller_rgb_jpeg_of_the_same_figure(tmp_path):
    rng = np.random.default_rng(0)
    ramp = np.linspace(60, 200, 96)[None, :, None, None] + rng.normal(0, 12, (8, 96, 96, 3))
    patches = np.clip(ramp, 0, 255).astype(np.uint8)  # photo-like: a PNG compresses it poorly
    png = tmp_path / "g.png"
    render_gallery(patches, np.linspace(0.5, 0.01, 8), [f"#{i}" for i in range(8)], png, "t")
    jpg = report_copy(png, tmp_path / "sub" / "g.report.jpg")
    with Image.open(png) as a, Image.open(jpg) as b:
        assert b.format == "JPEG" and b.mode == "RGB" and b.size == a.size
        assert b.info["comment"] == a.info["Title"].encode()  # the title travels along
        diff = np.abs(np.asarray(a.convert("RGB"), int) - np.asarray(b, int))
    assert diff.mean() < 8  # the same picture
    assert jpg.stat().st_size < png.stat().st_size / 2


def test_a_narrow_gallery_wraps_its_title_instead_of_cutting_it(tmp_path):
    """With top_k 6 or fewer the gallery is 620 px wide and its ~105-character second title
    line ran past both edges (the patches' width in µm was lost)."""
    k, px = 3, 64
    patches = np.full((2 * k, px, px, 3), 200, np.uint8)
    title = "slide s1 (lesion): P(lesion) 0.93\n" + "top 3 / bottom 3 attention of 812 patches " * 3
    png = tmp_path / "g.png"
    render_gallery(patches, np.linspace(0.5, 0.01, 2 * k), [f"#{i}" for i in range(6)], png, title)
    img = np.asarray(Image.open(png).convert("L")).astype(int)
    band = img[:60]  # the title band
    assert (band[:, :3] > 250).all() and (band[:, -3:] > 250).all()  # no text at the edges
    assert (band < 128).any()  # the title is there
    assert Image.open(png).info["Title"] == title  # the metadata keeps it unwrapped


def test_overlay_title_and_key_wrap_to_a_narrow_figure(tmp_path):
    """A portrait slide's overlay is a narrow figure: its long title (a multi-class prediction)
    and key line are wrapped onto more lines, not cut off at the figure's edges; the key names
    what the boxes' weights are."""
    from PIL import Image

    from gigamil.viz.figures import render_overlay

    thumb = np.full((300, 120, 3), 200, np.uint8)
    canvas = np.full((300, 120), np.nan, np.float32)
    title = "ext / slide_0001\n" + "true: lesion · predicted: lesion, P(lesion) = 0.73, " * 3
    lesion = np.zeros((30, 12), bool)
    lesion[5:10, 3:6] = True
    marks = [(10.0 * i, 10.0 * i, 8.0, f"#{i + 1}") for i in range(8)]
    path = tmp_path / "o.png"
    render_overlay(
        thumb, canvas, path, title, lesion=lesion, marks=marks, weight="patch probability"
    )
    img = np.asarray(Image.open(path).convert("L")).astype(int)
    dark = img < 100
    assert not dark[:, :2].any() and not dark[:, -2:].any()  # no text runs off either edge
    short = tmp_path / "s.png"
    render_overlay(thumb, canvas, short, "s", lesion=lesion, marks=marks)
    assert img.shape[0] >= np.asarray(Image.open(short)).shape[0] + 2 * 16  # more lines
    from gigamil.viz.figures import _keys

    assert (
        "the 8 patches of highest patch probability" in _keys(None, marks, "patch probability")[0]
    )


def test_a_lesion_smaller_than_a_thumbnail_pixel_is_still_outlined():
    """The outline was drawn on a nearest-neighbour resize of the lesion mask, which can miss a
    small lesion entirely while the key line still said "white outline: lesion mask"."""
    from gigamil.viz.figures import outline_mask

    mask = np.zeros((1000, 800), bool)
    mask[0:3, 0:3] = True  # between the nearest-neighbour samples of a 100 x 80 thumbnail
    small = outline_mask(mask, (100, 80))
    assert small.shape == (100, 80) and small[0, 0] and small.sum() == 1
    assert outline_mask(np.zeros((10, 10), bool), (5, 5)) is None
    assert outline_mask(None, (5, 5)) is None
    up = outline_mask(np.eye(2, dtype=bool), (4, 4))  # a mask smaller than the image: upscaled
    assert up.tolist() == np.kron(np.eye(2, dtype=bool), np.ones((2, 2), bool)).tolist()


def _saved_figures(monkeypatch) -> list:
    """The matplotlib figures saved from now on (kept for inspection after plt.close)."""
    from matplotlib.figure import Figure

    figs: list = []
    savefig = Figure.savefig
    monkeypatch.setattr(
        Figure, "savefig", lambda f, *a, **kw: figs.append(f) or savefig(f, *a, **kw)
    )
    return figs


def test_overlay_colour_bar_has_the_scale_s_colour_map_label_and_ticks(tmp_path, monkeypatch):
    """The colour bar says what a colour means: the overlay's colour map (not always jet), the
    scale's label and its tick labels (the relative scale's ≤0.01 .. ≥100, not 0 .. 1)."""
    from gigamil.viz.figures import render_overlay
    from gigamil.viz.scales import scale_attention

    figs = _saved_figures(monkeypatch)
    scale = scale_attention(np.array([0.7, 0.2, 0.1]), "relative")
    thumb = np.full((60, 80, 3), 200, np.uint8)
    canvas = np.full((60, 80), 0.5)
    render_overlay(thumb, canvas, tmp_path / "o.png", "t", cmap="viridis", scale=scale)
    (fig,) = figs
    cax = fig.axes[-1]
    assert [t.get_text() for t in cax.get_yticklabels()] == list(scale.tick_labels)
    assert cax.get_ylabel().replace("\n", " ") == scale.label
    (mesh,) = [c for c in cax.collections if type(c).__name__ == "QuadMesh"]  # the bar
    assert mesh.get_cmap().name == "viridis"


def test_gallery_puts_the_top_patches_in_the_first_row_with_their_captions(tmp_path, monkeypatch):
    """Row 1 holds the top k patches left to right, row 2 the bottom k; each caption gives the
    rank, the attention weight a and a × N (relative to uniform)."""
    figs = _saved_figures(monkeypatch)
    k, px = 3, 32
    patches = np.zeros((2 * k, px, px, 3), np.uint8)
    patches[:k] = (250, 0, 0)  # top: red
    patches[k:] = (0, 0, 250)  # bottom: blue
    values = np.array([0.4, 0.2, 0.1, 0.001, 0.002, 0.003])
    ranks = ["#1", "#2", "#3", "#100", "#99", "#98"]
    png = tmp_path / "g.png"
    render_gallery(patches, values, ranks, png, "t", n_patches=100)
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    red = np.nonzero((img == (250, 0, 0)).all(axis=-1))[0]
    blue = np.nonzero((img == (0, 0, 250)).all(axis=-1))[0]
    assert red.size == blue.size == k * (px * 3) ** 2
    assert red.max() < blue.min()  # every top patch above every bottom patch
    (fig,) = figs
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "#1  a=0.4\n×N = 40" in texts and "#100  a=0.001\n×N = 0.1" in texts


def test_a_lesion_smaller_than_an_overlay_pixel_is_still_outlined():
    """outline_mask takes the block maximum: a one-pixel lesion of a 100 x 100 mask shrunk to
    10 x 10 lights the image pixel that covers it, not none (a nearest-neighbour resize drops
    it while the key line still names the outline)."""
    from gigamil.viz.figures import outline_mask

    lesion = np.zeros((100, 100), bool)
    lesion[57, 23] = True
    out = outline_mask(lesion, (10, 10))
    assert out is not None and out.shape == (10, 10)
    assert np.argwhere(out).tolist() == [[5, 2]]


def test_a_marked_patch_smaller_than_the_minimum_gets_a_box_of_the_minimum_centred_on_it():
    """A top patch of 2 thumbnail px is boxed at MIN_MARK_PX (12 px), centred on the patch, so
    it can still be found on the overlay."""
    from gigamil.viz import figures

    class Axes:
        def __init__(self):
            self.patches, self.texts = [], []

        def add_patch(self, p):
            self.patches.append(p)

        def text(self, *args, **kwargs):
            self.texts.append(args)

    ax = Axes()
    figures._mark_patches(ax, [(50.0, 40.0, 2.0, "#1")])
    (box,) = ax.patches
    assert (box.get_width(), box.get_height()) == (12, 12)
    assert box.get_xy() == (45.0, 35.0)  # centre (51, 41), the patch's
    assert ax.texts[0][2] == "#1"
