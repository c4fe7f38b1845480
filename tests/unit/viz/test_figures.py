"""The heatmap's images: the gallery's captions never cover its patches."""

from __future__ import annotations

import numpy as np
from PIL import Image

from gigamil.viz.figures import render_gallery


def test_gallery_captions_do_not_cover_the_patches(tmp_path):
    k, px = 4, 8
    patches = np.zeros((2 * k, px, px, 3), np.uint8)
    patches[:] = (0, 200, 0)
    png = tmp_path / "g.png"
    captions = [f"#{i + 1}" for i in range(k)] + [f"-#{i + 1}" for i in range(k)]
    render_gallery(patches, np.linspace(0.5, 0.001, 2 * k), captions, png, "t", n_patches=50)
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    green = (img == (0, 200, 0)).all(axis=-1)
    up = int(np.ceil(96 / px))
    assert green.sum() == 2 * k * (px * up) ** 2  # every patch pixel, untouched by any text
