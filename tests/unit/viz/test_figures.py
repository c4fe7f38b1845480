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
