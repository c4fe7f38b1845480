"""The attention canvas: values on the right thumbnail pixels, overlaps averaged, no seams."""

from __future__ import annotations

import numpy as np
import pytest

from gigamil.viz.canvas import attention_canvas


def test_one_hot_attention_lights_the_right_cell_on_the_canvas(grid_slide):
    grid = np.array([(r, c) for r in range(grid_slide.rows) for c in range(grid_slide.cols)])
    coords = grid[:, ::-1] * grid_slide.patch
    hot = 19  # row 2, col 3
    att = np.zeros(len(grid))
    att[hot] = 1.0
    scale = 0.25  # 16 thumbnail px per patch
    canvas = attention_canvas(
        coords, grid_slide.patch, att, scale, (grid_slide.rows * 16 + 5, grid_slide.cols * 16 + 7)
    )
    r, c = grid[hot]
    assert np.all(canvas[r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16] == 1.0)
    lit = np.argwhere(canvas == 1.0)
    assert lit.min(axis=0).tolist() == [r * 16, c * 16]
    assert lit.max(axis=0).tolist() == [r * 16 + 15, c * 16 + 15]
    assert np.isnan(canvas[grid_slide.rows * 16 :, :]).all()  # outside the patches: nothing


def test_overlapping_patches_are_averaged():
    coords = np.array([[0, 0], [32, 0]])  # half-overlapping 64-px patches
    canvas = attention_canvas(coords, 64, np.array([1.0, 0.0]), 1.0, (64, 96))
    assert canvas[10, 10] == 1.0 and canvas[10, 80] == 0.0
    assert canvas[10, 40] == pytest.approx(0.5)


@pytest.mark.parametrize(("side", "thumb_px"), [(443.2, 333), (1000 / 3, 400), (300.4, 800)])
def test_resampled_patches_leave_no_seam_on_the_canvas(side, thumb_px):
    """Patches of a non-integer level-0 side (resampled to the target µm/px) at whole-pixel
    coords: the canvas has no uncovered row or column between patch rows."""
    rows, cols = 6, 8
    grid = np.array([(r, c) for r in range(rows) for c in range(cols)])
    coords = np.round(grid[:, ::-1] * side).astype(np.int64)
    w0, h0 = round(cols * side) + 40, round(rows * side) + 24
    scale = thumb_px / max(w0, h0)
    canvas = attention_canvas(
        coords, side, np.ones(len(coords)), scale, (round(h0 * scale), round(w0 * scale))
    )
    covered = np.isfinite(canvas)
    ys, xs = np.nonzero(covered)
    assert covered[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()


def test_overlay_is_clipped_to_the_tissue_mask_in_its_own_orientation():
    """composite_overlay colours only tissue pixels: a patch over glass stays the thumbnail's.
    The mask (any size covering the slide) is resized, not transposed, onto the canvas."""
    from gigamil.viz.canvas import composite_overlay

    thumb = np.full((20, 30, 3), 100, np.uint8)
    canvas = np.ones((20, 30))  # every pixel under a patch, at the top of the colour bar
    tissue = np.zeros((10, 15), bool)  # half the canvas's resolution
    tissue[:5, :5] = True  # tissue in the top-left: canvas rows 0-9, columns 0-9
    out = composite_overlay(thumb, canvas, "jet", 1.0, tissue).astype(int)
    coloured = (out != 100).any(axis=-1)
    expected = np.zeros((20, 30), bool)
    expected[:10, :10] = True
    np.testing.assert_array_equal(coloured, expected)
    assert (out[~expected] == 100).all()  # outside the tissue: the thumbnail, untouched


def test_a_patch_smaller_than_a_thumbnail_pixel_still_covers_one():
    """On a large slide a patch may be under one thumbnail pixel (224 level-0 px at 1/300
    scale): it still colours a pixel where both its edges round to the same one."""
    coords = np.array([[180, 0], [3000, 0]])  # x from 0.6 to 1.35 px: both edges round to 1
    canvas = attention_canvas(coords, 224, np.array([0.3, 0.9]), 1 / 300, (2, 12))
    assert canvas[0, 1] == pytest.approx(0.3) and canvas[0, 10] == pytest.approx(0.9)
    assert np.isfinite(canvas).sum() == 2
