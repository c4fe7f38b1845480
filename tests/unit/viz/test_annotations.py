"""annotations.geojson: the tissue mask's scale from the store or the mask's sidecar."""

from __future__ import annotations

import json

from gigamil.viz.annotations import mask_downsample


def test_mask_downsample_from_the_store_or_the_mask_sidecar(tmp_path):
    assert mask_downsample((50, 100), {"slide_dimensions": [1000, 600]}) == (10.0, 12.0)
    mask = tmp_path / "m.png"
    assert mask_downsample((50, 100), {}, mask) is None
    mask.with_suffix(".json").write_text(json.dumps({"slide_dimensions": [400, 200]}))
    assert mask_downsample((50, 100), {}, mask) == (4.0, 4.0)
