"""Chunk files at another chunk's place (swapped, or copied from another store) pass their own
CRC-32C: the stores record what each chunk file ends in (``chunk_crc32c``), and the readers
refuse a chunk file that is not the one written there instead of pairing its patches (or
features) with other rows' coordinates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import gigamil.data.feature_extract as feature_extract
from gigamil.data.bags import ZarrBag
from gigamil.data.features import FeatureBag
from gigamil.errors import GigamilError


def _patches(n: int, px: int = 8) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, px, px, 3), dtype=np.uint8)


def _swap(a: Path, b: Path) -> None:
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)


def _drop_record(store: Path) -> None:
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"].pop("chunk_crc32c", None)
    (store / "zarr.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("other", [1, 2])
def test_swapped_patch_chunk_files_are_damage_not_data(write_store, tmp_path, other) -> None:
    """150 patches in chunks of 64: chunk 0 swapped with chunk 1 (whole) or 2 (the padded
    last): both pass their checksums, and the bag read 150 patches, most of them at other
    rows' coordinates (black ones where the padding landed), without a word."""
    patches = _patches(150)
    store = write_store(tmp_path / "s.zarr", patches, chunk=64, n_patches=150)
    assert np.array_equal(ZarrBag(store).load().numpy(), patches)
    _swap(store / "patches/c/0/0/0/0", store / f"patches/c/{other}/0/0/0")
    with pytest.raises(GigamilError, match=r"chunk patches/c/0/0/0/0 is not the chunk written"):
        ZarrBag(store)
    _drop_record(store)  # a store written before the record: read as before (unchecked)
    assert len(ZarrBag(store).load()) == 150


def test_a_damaged_chunk_is_still_named_as_failing_its_checksum(write_store, tmp_path) -> None:
    store = write_store(tmp_path / "s.zarr", _patches(150), chunk=64)
    chunk = store / "patches/c/1/0/0/0"
    chunk.write_bytes(chunk.read_bytes()[:-3])
    with pytest.raises(GigamilError, match=r"chunk patches/c/1/0/0/0 fails its checksum"):
        ZarrBag(store).load()


def test_swapped_feature_chunk_files_are_damage_not_data(
    write_store, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(feature_extract, "CHUNK_ROWS", 8)
    store = write_store(tmp_path / "s.zarr", _patches(20, 32), chunk=8)
    cfg = {"encoder": "smallcnn", "trainable_blocks": 0}
    out = feature_extract.extract_features(
        store, tmp_path / "f.zarr", cfg, {"mpp": 0.5, "patch_px": 32}, device="cpu"
    )
    assert len(FeatureBag(out).load()) == 20
    _swap(out / "features/c/0/0", out / "features/c/1/0")
    with pytest.raises(GigamilError, match=r"feature store .* chunk features/c/0/0 is not the"):
        FeatureBag(out)
