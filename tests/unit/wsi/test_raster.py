"""gigamil.wsi.raster: reading a slide on a raster of a given µm/px, block-wise."""

from __future__ import annotations

import numpy as np
from PIL import Image

from gigamil.wsi.memory import ArrayReader
from gigamil.wsi.raster import read_raster, read_raster_image


def _image(h=300, w=420, seed=0):
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 255, (h // 10, w // 10, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(low).resize((w, h), Image.Resampling.BILINEAR))


def test_blockwise_equals_one_block():
    reader = ArrayReader(_image(), 0.5, downsamples=(2,))
    whole, fx, fy, level = read_raster_image(reader, 2.0, max_block=10_000)
    blocks, fx2, fy2, level2 = read_raster_image(reader, 2.0, max_block=37)
    assert whole.shape == (75, 105, 3) and (fx, fy, level) == (fx2, fy2, level2) == (4.0, 4.0, 1)
    assert np.abs(whole.astype(int) - blocks).max() <= 1


def test_unit_scale_is_a_plain_crop_and_downscale_is_area_average():
    img = _image()
    reader = ArrayReader(img, 1.0)
    np.testing.assert_array_equal(
        read_raster(reader, 0, 1.0, 1.0, 10, 20, 50, 40), img[20:60, 10:60]
    )
    half = read_raster(reader, 0, 2.0, 2.0, 5, 5, 20, 10)  # raster px (5, 5) = level-0 (10, 10)
    want = img[10:30, 10:50].reshape(10, 2, 20, 2, 3).mean(axis=(1, 3))
    assert np.abs(half - want).max() <= 1


def test_outside_the_slide_is_white():
    reader = ArrayReader(_image(), 1.0)
    out = read_raster(reader, 0, 1.5, 1.5, 270, 190, 20, 20)  # crosses the right/bottom edges
    assert (out[-3:, :] == 255).all() and (out[:, -3:] == 255).all()
