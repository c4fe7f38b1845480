"""gigamil.wsi.raster: reading a slide on a raster of a given µm/px, block-wise."""

from __future__ import annotations

import numpy as np
from PIL import Image

from gigamil.wsi.memory import ArrayReader
from gigamil.wsi.raster import _repeat_edges, read_raster, read_raster_image
from gigamil.wsi.slide import SlideReader


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


class _FlatSlide(SlideReader):
    """A 12,000 x 9,000 px slide without a pyramid whose reads are recorded (pixels: a
    horizontal grey ramp, 0 at the left edge to 255 at the right)."""

    def __init__(self) -> None:
        self.name = self.path = "flat"
        self.set_mpp((0.25, 0.25), "test")
        self.level_dimensions, self.level_downsamples = ((12_000, 9_000),), (1.0,)
        self.reads: list[tuple[int, int]] = []

    def _read(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        self.reads.append((w, h))
        ramp = np.clip((np.arange(x, x + w) + 0.5) * 256 / 12_000, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.broadcast_to(ramp[None, :, None], (h, w, 3)))


def test_a_thumbnail_of_a_slide_without_pyramid_is_read_in_blocks():
    """The thumbnail (heatmaps, QC) of a flat slide is box-averaged block by block: no read of
    more than about 4096² pixels (a real one of 100,000² px would need 30 GB at once)."""
    slide = _FlatSlide()
    thumb = slide.get_thumbnail((800, 800))
    assert thumb.shape == (600, 800, 3)
    assert max(w * h for w, h in slide.reads) <= 4100 * 4100
    assert sum(w * h for w, h in slide.reads) >= 12_000 * 9_000  # every pixel averaged
    expected = (np.arange(800) + 0.5) * 15 * 256 / 12_000  # the ramp's mean over 15 px
    np.testing.assert_allclose(thumb[300, :, 0], expected, atol=1.0)


def test_level_scale_takes_each_axis_from_its_own_level_dimensions():
    """A 401 x 301 slide's 4x level is 100 x 75 px: 4.01 level-0 px per level px in x, 4.013 in
    y. Each axis keeps its own ratio; one mean downsample for both would drift by 0.08 % of the
    slide's height (16 px on a 20,000-px slide)."""
    from gigamil.wsi.raster import level_scale

    reader = ArrayReader(np.zeros((301, 401, 3), np.uint8), 0.25, downsamples=(4,))
    assert reader.level_dimensions[1] == (100, 75)
    sx, sy = level_scale(reader, 1, 2.0, 3.0)
    assert (sx, sy) == (2.0 * 100 / 401, 3.0 * 75 / 301)
    assert sx / 2.0 != sy / 3.0  # the axes differ: a mean would be wrong on one of them


def test_repeat_edges_copies_each_edge_pixel_margin_pixels_out_then_white():
    """A region whose (0, 0) is at level (-2, -1) over a 5 x 3 px level: the slide's pixels are
    kept, each edge pixel (not its mirror) fills up to ``margin`` (2) pixels past its edge, and
    further out stays white."""
    slide = np.random.default_rng(0).integers(0, 200, (3, 5, 3), dtype=np.uint8)
    region = np.full((9, 12, 3), 255, np.uint8)
    region[1:4, 2:7] = slide
    out = _repeat_edges(region, (-2.0, -1.0), (5, 3), 2)
    np.testing.assert_array_equal(out[1:4, 2:7], slide)
    for col in (0, 1):
        np.testing.assert_array_equal(out[1:4, col], slide[:, 0])
    for col in (7, 8):
        np.testing.assert_array_equal(out[1:4, col], slide[:, -1])
    np.testing.assert_array_equal(out[0, 2:7], slide[0])
    for row in (4, 5):
        np.testing.assert_array_equal(out[row, 2:7], slide[-1])
    assert (out[0, 0] == slide[0, 0]).all() and (out[5, 8] == slide[-1, -1]).all()
    assert (out[6:] == 255).all() and (out[:, 9:] == 255).all()


def test_a_downscaled_pixel_across_the_edge_averages_the_slide_and_the_white():
    """Box downscaling does not repeat the edge: a raster pixel over 1 slide and 2 white level
    pixels is their mean, (100 + 2 * 255) / 3."""
    reader = ArrayReader(np.full((10, 10, 3), 100, np.uint8), 1.0)
    out = read_raster(reader, 0, 3.0, 3.0, 0, 0, 4, 4)
    assert (out[:3, :3] == 100).all()
    assert np.abs(out[0, 3].astype(int) - (100 + 2 * 255) / 3).max() <= 1
