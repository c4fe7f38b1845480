"""benchmarks/centre_crop.py: the copy with whitened patch borders (the diagnostic is run by hand)."""

from __future__ import annotations

import numpy as np
import pytest

from gigamil.data.store import read_patches, read_store
from gigamil.data.store_writer import StoreWriter


def test_whiten_border_keeps_only_the_centre(bench) -> None:
    patches = np.arange(2 * 6 * 6 * 3, dtype=np.uint8).reshape(2, 6, 6, 3)
    out = bench.whiten_border(patches, 2)
    np.testing.assert_array_equal(out[:, 2:4, 2:4], patches[:, 2:4, 2:4])
    inside = np.zeros((6, 6), bool)
    inside[2:4, 2:4] = True
    assert (out[:, ~inside] == 255).all()
    np.testing.assert_array_equal(bench.whiten_border(patches, 6), patches)
    with pytest.raises(ValueError, match="keep 7 must be in 1..6"):
        bench.whiten_border(patches, 7)


def test_copy_draw_whitens_the_copy_and_leaves_the_draw(bench, tmp_path, store_attrs) -> None:
    src = tmp_path / "draw0"
    (src / "results" / "splits" / "x").mkdir(parents=True)
    (src / "results" / "splits" / "x" / "folds.csv").write_text("fold\n0\n")
    (src / "config.yaml").write_text("experiment: x\n")
    patches = np.random.default_rng(0).integers(0, 200, (3, 8, 8, 3), dtype=np.uint8)
    grid = np.array([[0, 0], [0, 1], [1, 0]])
    store = src / "results" / "patches" / "real" / "s1.zarr"
    with StoreWriter(store, 3, 8, grid * 8, grid) as writer:
        writer.append(patches)
        writer.commit(store_attrs(slide_id="s1", patch_px=8, slide_dimensions=(16, 16)))
    assert bench.copy_draw(src, tmp_path / "copy" / "draw0", 4) == 1
    copied = tmp_path / "copy" / "draw0" / "results" / "patches" / "real" / "s1.zarr"
    arr, _, _, _ = read_store(copied)  # the chunk checksums were written anew
    np.testing.assert_array_equal(read_patches(arr, copied, "s1"), bench.whiten_border(patches, 4))
    arr, _, _, _ = read_store(store)
    np.testing.assert_array_equal(read_patches(arr, store, "s1"), patches)
    assert (tmp_path / "copy" / "draw0" / "results" / "splits" / "x" / "folds.csv").is_file()
