"""Tiles that are copies of others in content, not in bytes: a tile resized (96 to 64 px) or
re-encoded (JPEG to PNG) has other bytes, so the sha256 of :func:`gigamil.tile_pool.unique_tiles`
and of ``--exclude-packaged`` missed it, and a benchmark "on other tiles" drew half its tiles
from the demo's (a new user's trial of ``--exclude-packaged`` on 64-px copies of PCam)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

THUMB_PX = 8  # tiles are compared as 8 x 8 px colour thumbnails (area averages)
MAX_THUMB_DIFF = 3.0  # mean absolute difference (0-255) below which two tiles are one image:
# 96-px packaged tiles against their 64-px LANCZOS resized PNGs differ by 0.39 on average (at
# most 0.76); the 2,107 other usable pcam-valid tiles differ from every packaged one by 6.3 or
# more (1st percentile 8.1)


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """(THUMB_PX² · 3,) float32: the tile's colour thumbnail (OpenCV area averaging), the same
    for a tile of any size and encoding up to resampling and compression error."""
    import cv2

    small = cv2.resize(
        np.ascontiguousarray(rgb), (THUMB_PX, THUMB_PX), interpolation=cv2.INTER_AREA
    )
    return small.astype(np.float32).reshape(-1)


def lookalikes(tiles: Sequence[Any], others: Sequence[Any], decode: Any) -> list[Any]:
    """The ``tiles`` whose thumbnail is within :data:`MAX_THUMB_DIFF` of one of ``others``'
    (``decode(tile)``: its (H, W, 3) uint8 pixels), i.e. copies of them at another size or in
    another encoding; [] when either is empty."""
    if not tiles or not others:
        return []
    ref = np.stack([thumbnail(decode(t)) for t in others])
    return [
        t
        for t in tiles
        if float(np.abs(ref - thumbnail(decode(t))).mean(axis=1).min()) < MAX_THUMB_DIFF
    ]
