"""Bounds of the colour jitter of gigamil.nn.augment.PatchPreprocess."""

from __future__ import annotations

import pytest

from gigamil.nn.augment import PatchPreprocess


def test_color_jitter_above_one_is_refused() -> None:
    # factors 1 ± s: above s = 1 a negative brightness/contrast/saturation factor inverts the
    # patch (about 12 % of patches had their luma contrast inverted at 1.5)
    PatchPreprocess(color_jitter=1.0)
    with pytest.raises(ValueError, match="color_jitter"):
        PatchPreprocess(color_jitter=1.5)
