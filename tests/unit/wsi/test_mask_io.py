"""gigamil.wsi.mask_io: the QC image of a tissue mask."""

from __future__ import annotations

import numpy as np

from gigamil.wsi.mask_io import OUTLINE_RGB, qc_image


def test_qc_image_outline_on_mask_boundary():
    rgb = np.full((20, 30, 3), 200, np.uint8)
    mask = np.zeros((20, 30), bool)
    mask[5:15, 10:20] = True
    qc = qc_image(rgb, mask, min_side=20)
    edge = (qc == OUTLINE_RGB).all(axis=2)
    assert edge[5, 12] and edge[14, 12] and edge[8, 10] and not edge[10, 15] and not edge[0, 0]


def test_a_narrow_strip_is_not_upscaled_past_what_an_image_file_holds():
    """A 1024 x 8 px mask was upscaled 64 times to 65,536 px wide, past JPEG's 65,535 (the
    report's copy of the QC image); square and small masks are upscaled as before."""
    from gigamil.wsi.mask_io import QC_MAX_SIDE

    mask = np.ones((8, 1024), bool)
    qc = qc_image(np.zeros((8, 1024, 3), np.uint8), mask)
    assert qc.shape == (64, 8192, 3) and max(qc.shape) <= QC_MAX_SIDE
    assert qc_image(np.zeros((16, 16, 3), np.uint8), np.ones((16, 16), bool)).shape == (512, 512, 3)
