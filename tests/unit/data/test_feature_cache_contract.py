"""The feature cache's contract: what its encoder id hashes, rows of a feature store opened on
some rows, all-zero features, the patch store's provenance and a failed rewrite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gigamil.data.bags import ZarrBag, store_digests
from gigamil.data.feature_extract import extract_features, write_feature_store
from gigamil.data.feature_spec import encoder_id, encoder_spec
from gigamil.data.features import FeatureBag

PATCHES = {"mpp": 0.5, "patch_px": 32}
SMALLCNN = {"encoder": "smallcnn", "trainable_blocks": 0}


def _patches(n: int, px: int = 32) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, px, px, 3), dtype=np.uint8)


def _store(path: Path, n: int = 6) -> tuple[Path, np.ndarray, np.ndarray]:
    """A feature store whose row i holds i in every feature; coords 10 * grid."""
    feats = np.repeat(np.arange(n, dtype=np.float32)[:, None], 4, axis=1)
    grid = np.stack([np.arange(n), np.arange(n)[::-1]], axis=1)
    attrs = {"slide_id": "s", "patch_px": 8}
    return write_feature_store(path, feats, grid * 10, grid, attrs), feats, grid


def test_encoder_id_changes_with_the_input_normalisation(monkeypatch: pytest.MonkeyPatch):
    """Another mean/std (e.g. a timm release with another pretrained config) gives other
    features from the same weights: the cache of the old normalisation must not be reused."""
    import gigamil.nn.encoders as encoders

    ref = encoder_id(encoder_spec(SMALLCNN, PATCHES))
    mean, std = encoders.encoder_normalisation("smallcnn")
    other = (tuple(0.5 for _ in mean), std)
    monkeypatch.setattr(encoders, "encoder_normalisation", lambda name: other)
    assert encoder_id(encoder_spec(SMALLCNN, PATCHES)) != ref
    monkeypatch.setattr(encoders, "encoder_normalisation", lambda name: (mean, std))
    assert encoder_id(encoder_spec(SMALLCNN, PATCHES)) == ref


@pytest.mark.parametrize("budget", [None, 0], ids=["resident", "from-disk"])
def test_a_bag_opened_on_rows_keeps_features_coords_and_grid_aligned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget: int | None
) -> None:
    """FeatureBag(path, indices): grid, coords and features are those rows, and a subsample's
    indices stay store rows (not positions in the view), resident or read from disk."""
    if budget is not None:
        monkeypatch.setattr(FeatureBag, "RESIDENT_BYTES", budget)
    out, feats, grid = _store(tmp_path / "f.zarr")
    rows = np.array([1, 3, 4, 5])
    bag = FeatureBag(out, indices=rows)
    assert len(bag) == 4
    np.testing.assert_array_equal(bag.grid, grid[rows])
    np.testing.assert_array_equal(bag.coords, grid[rows] * 10)
    np.testing.assert_array_equal(bag.load().numpy(), feats[rows])
    sub = bag.subsample(2, torch.Generator().manual_seed(0))
    assert set(sub.indices) <= set(rows.tolist())
    for view in (sub, sub.with_cache()):
        np.testing.assert_array_equal(view.load().numpy(), feats[sub.indices])
        np.testing.assert_array_equal(view.grid, grid[sub.indices])


def test_a_feature_store_of_all_zero_features_opens(tmp_path: Path) -> None:
    """Zero features (a dead ReLU, a blank patch) and a grid at the origin are data: their
    chunks are written, so the open-time check that every chunk exists must not refuse them."""
    n = 3
    out = write_feature_store(
        tmp_path / "f.zarr",
        np.zeros((n, 4)),
        np.zeros((n, 2)),
        np.zeros((n, 2)),
        {"slide_id": "s", "patch_px": 8},
    )
    bag = FeatureBag(out)
    assert len(bag) == n and not bag.load().any()


def test_a_feature_store_records_its_patch_store(write_store, tmp_path: Path) -> None:
    """The feature store carries the patch store's digest (so a re-cut slide retrains), its
    stain normalisation (checked against the model's at prediction) and its slide id (not the
    file name)."""
    patches = {**PATCHES, "stain_normalization": "macenko"}
    store = write_store(
        tmp_path / "copy_of_s1.zarr",
        _patches(4),
        slide_id="s1",
        target_mpp=0.5,
        stain_normalization="macenko",
    )
    bag = FeatureBag(extract_features(store, tmp_path / "f.zarr", SMALLCNN, patches, "cpu"))
    digests = store_digests(ZarrBag(store))
    assert digests and store_digests(bag) == digests
    assert bag.attrs["stain_normalization"] == "macenko"
    assert bag.slide_id == "s1"


def test_a_failed_rewrite_keeps_the_previous_store(tmp_path: Path) -> None:
    """Re-extraction writes under a temporary name: when it fails, the store written before
    is still there and whole."""
    out, feats, _ = _store(tmp_path / "f.zarr")
    bad_coords = np.zeros((5, 3))  # not (6, 2): the rewrite fails while writing
    with pytest.raises(ValueError):
        write_feature_store(out, feats, bad_coords, bad_coords, {"slide_id": "s"})
    np.testing.assert_array_equal(FeatureBag(out).load().numpy(), feats)
    assert [p.name for p in tmp_path.iterdir()] == ["f.zarr"]


def test_a_killed_extraction_leaves_no_partial_store_behind(tmp_path: Path) -> None:
    """The temporary store of an extraction killed mid-write (a SLURM time limit) is deleted
    by the next write of that store, not left next to it (each one a slide's features)."""
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    partial = tmp_path / f"f.zarr.tmp-{int(dead.stdout)}"
    (partial / "features").mkdir(parents=True)
    out, feats, _ = _store(tmp_path / "f.zarr")
    assert not partial.exists()
    np.testing.assert_array_equal(FeatureBag(out).load().numpy(), feats)
