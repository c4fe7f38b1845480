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
